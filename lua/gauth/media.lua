--- Media uploads and downloads for discovery services, as Google's Python
-- client (googleapiclient 1.7.12) makes them, with files streamed from and
-- to disk.
--
--     local discovery = require "gauth.discovery"
--     local drive = assert(discovery.build("drive", "v3", { credentials = creds }))
--     -- upload: a path (MIME type guessed from its extension) or a media object
--     local req = assert(drive:files():create{ body = { name = "big.bin" },
--       media_body = discovery.media_file("big.bin", { mime_type = "application/octet-stream" }) })
--     local file, err = req:execute{ progress = function(done, total) ... end }
--     -- stepwise (resumable uploads):
--     repeat local status, file = assert(req:next_chunk()) until file
--     -- download: the `_media` variant of a method, streamed to a file
--     local n, err = drive:files():get_media{ fileId = id }:download("out.bin")
--
-- Upload type, as googleapiclient chooses it: `resumable` when the media
-- object asks for it; otherwise `media` (the bytes alone) without a request
-- body and `multipart` (`multipart/related`: the JSON metadata, then the
-- media) with one. googleapiclient 1.7.12 has no size threshold: a media
-- object is resumable only when made with `resumable = True`. Here a media
-- object made without `resumable` (and a path given as `media_body`) is
-- resumable when larger than `RESUMABLE_THRESHOLD` (5 MiB: Google's limit
-- for simple and multipart uploads); `resumable = true` / `false` decide
-- as in googleapiclient.
--
-- The upload URL is googleapiclient's: `rootUrl .. "upload/" ..
-- servicePath .. <the method's expanded path and query>` (the same as the
-- method's `mediaUpload.protocols.simple.path` in Google's documents), plus
-- `uploadType=`. When the service was built with an `api_endpoint` or a
-- universe domain, its scheme, host and port replace rootUrl's (as
-- googleapiclient 2.x does for the host), so uploads follow the service.
--
-- An upload request (what a method call with `media_body` returns) has
-- `method`, `uri` (with `uploadType`), `body` (the JSON metadata or nil),
-- `media`, `upload_type` ("media", "multipart" or "resumable"), and for
-- resumable uploads `resumable_uri` (the session, once opened) and
-- `resumable_progress` (bytes the server has); `response` once done.
--
-- Memory: a file is never read whole. Simple uploads and resumable chunks
-- are streamed from the file by the transport (`upload_file`); downloads
-- are appended to the file by the transport (`download_file`); a
-- multipart body larger than `MULTIPART_MEMORY_MAX` is spooled to a
-- temporary file first.
-- @module gauth.media

local errors = require "gauth.errors"
local util = require "gauth.util"
local retry = require "gauth.retry"
local request = require "gauth.request"
local core = require "gauth.core"

local type = type
local pairs = pairs
local error = error
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawget = rawget
local require = require
local io_open = io.open
local io_type = io.type
local os_remove = os.remove
local os_rename = os.rename
local sub = string.sub
local gsub = string.gsub
local find = string.find
local match = string.match
local lower = string.lower
local byte = string.byte
local format = string.format
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

local request_send = request.send

--- googleapiclient's DEFAULT_CHUNK_SIZE (100 MiB), for resumable uploads
-- and ranged downloads. Chunks are streamed, so their size costs no memory.
_M.DEFAULT_CHUNK_SIZE = 100 * 1024 * 1024
--- Google wants every chunk but the last to be a multiple of this.
_M.CHUNK_GRANULARITY = 256 * 1024
--- Media larger than this go resumable unless told otherwise (5 MiB).
_M.RESUMABLE_THRESHOLD = 5 * 1024 * 1024
--- A multipart body up to this size is made in memory; larger ones are
-- spooled to a temporary file.
_M.MULTIPART_MEMORY_MAX = 8 * 1024 * 1024
--- Retries after a failed chunk (or a failed idempotent request), counted
-- since the last progress: gauth.request's.
_M.DEFAULT_RETRIES = request.DEFAULT_RETRIES

local MiB = 1024 * 1024
local COPY_BLOCK = 1024 * 1024
local IDEMPOTENT = request.IDEMPOTENT

local function fail(step, message, fields)
  return errors.fail("media", step, message, fields)
end

local redact = errors.redact_uri
local header_value_ok = util.header_value_ok

-- A MIME type goes into a header line (Content-Type, X-Upload-Content-Type)
-- or a multipart part's MIME header: a line break in it would add headers
-- or a body there. Refused as `nil, msg, err`, naming the option, never
-- the value; nothing is sent.
local function bad_mime_type(step, what)
  return errors.fail("media", step, what .. " has CR, LF, NUL or another control character"
                     .. " (not a valid header value)",
                     { kind = "bad_mime_type", retryable = false })
end
_M._redact = redact

local function random_hex(n)
  local raw = core.random_bytes(n)
  return (gsub(raw, ".", function(c) return format("%02x", byte(c)) end))
end
_M._random_hex = random_hex

local function file_size(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

-- ------------------------------------------------------------------------
-- MIME types: Python's mimetypes (what googleapiclient guesses with): its
-- built-in table for the common types, then /etc/mime.types over it.

local MIME = {
  txt = "text/plain", text = "text/plain", html = "text/html",
  htm = "text/html", css = "text/css", csv = "text/csv",
  js = "application/javascript", json = "application/json",
  xml = "text/xml", pdf = "application/pdf", zip = "application/zip",
  tar = "application/x-tar", png = "image/png", jpg = "image/jpeg",
  jpeg = "image/jpeg", gif = "image/gif", svg = "image/svg+xml",
  ico = "image/vnd.microsoft.icon", bmp = "image/bmp", tif = "image/tiff",
  tiff = "image/tiff", mp3 = "audio/mpeg", wav = "audio/x-wav",
  mp4 = "video/mp4", mpeg = "video/mpeg", mov = "video/quicktime",
  webm = "video/webm", bin = "application/octet-stream",
  doc = "application/msword", xls = "application/vnd.ms-excel",
  ppt = "application/vnd.ms-powerpoint",
  docx = "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
  xlsx = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
  pptx = "application/vnd.openxmlformats-officedocument.presentationml.presentation",
  wasm = "application/wasm", py = "text/x-python", sh = "application/x-sh",
}
local mime_loaded = false

local function load_mime_types()
  mime_loaded = true
  local f = io_open("/etc/mime.types", "r")
  if not f then return end
  for line in f:lines() do
    local t, exts = match(line, "^%s*([%w!#$&^_.+-]+/[%w!#$&^_.+-]+)%s+([^#]+)")
    if t then
      for ext in string.gmatch(exts, "%S+") do MIME[lower(ext)] = t end
    end
  end
  f:close()
end

--- The MIME type Python's mimetypes.guess_type gives for a file name (by
-- its extension, case-insensitively), or nil.
function _M.guess_type(path)
  if not mime_loaded then load_mime_types() end
  local name = match(path, "([^/]*)$")
  local ext = match(name, "%.([^.]+)$")
  if not ext then return nil end
  -- "a.tar.gz" is application/x-tar with gzip encoding in Python: the
  -- encoding suffix is not a type of its own.
  if ext == "gz" or ext == "bz2" or ext == "xz" or ext == "Z" then
    local inner = match(name, "%.([^.]+)%.[^.]+$")
    if inner then return MIME[lower(inner)] end
    return nil
  end
  return MIME[lower(ext)]
end

-- ------------------------------------------------------------------------
-- Media objects.

local media_mt = { __index = {}, gauth_media = true }
local media_methods = media_mt.__index

local function check_media_opts(opts, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("gauth.media: " .. fname .. ": opts must be a table", 3)
  end
  if opts.mime_type ~= nil and (type(opts.mime_type) ~= "string"
                                or not find(opts.mime_type, "^[^/%s]+/[^/%s]+")) then
    error("gauth.media: " .. fname .. ": mime_type must be a MIME type (type/subtype)", 3)
  end
  local cs = opts.chunk_size
  if cs ~= nil and cs ~= -1 and (type(cs) ~= "number" or cs <= 0 or cs % 1 ~= 0
                                 or cs % _M.CHUNK_GRANULARITY ~= 0) then
    error("gauth.media: " .. fname .. ": chunk_size must be -1 (one chunk) or a"
          .. " positive multiple of 256 KiB (Google's rule)", 3)
  end
  if opts.resumable ~= nil and type(opts.resumable) ~= "boolean" then
    error("gauth.media: " .. fname .. ": resumable must be a boolean", 3)
  end
  return opts
end

--- Media from a file, streamed from disk when sent.
-- @tparam string path
-- @tparam[opt] table opts `mime_type` (default: guessed from the extension,
--   else `application/octet-stream`, as googleapiclient's MediaFileUpload),
--   `chunk_size` (bytes per resumable chunk: a multiple of 256 KiB, or -1
--   for one chunk; default 100 MiB), `resumable` (true / false; default:
--   when the file is larger than `RESUMABLE_THRESHOLD`)
-- @return media | nil, msg, err (the file cannot be opened, or a mime_type
--   with CR, LF, NUL or another control character)
function _M.media_file(path, opts)
  if type(path) ~= "string" or path == "" then
    error("gauth.media: media_file: path must be a non-empty string", 2)
  end
  opts = check_media_opts(opts, "media_file")
  if opts.mime_type and not header_value_ok(opts.mime_type) then
    return bad_mime_type("media_file", "mime_type")
  end
  local f, ferr = io_open(path, "rb")
  if not f then
    return fail("media_file", "cannot open the file: " .. tostring(ferr), { file = path })
  end
  local size = f:seek("end")
  f:close()
  if not size then
    return fail("media_file", "cannot tell the size of " .. path .. " (not a file?)",
                { file = path })
  end
  return setmetatable({
    path = path, size = size,
    mime_type = opts.mime_type or _M.guess_type(path) or "application/octet-stream",
    chunk_size = opts.chunk_size or _M.DEFAULT_CHUNK_SIZE,
    resumable = opts.resumable,
  }, media_mt)
end

--- Media from a string (held in memory: for small data).
-- @tparam string data
-- @tparam[opt] table opts `mime_type` (default `application/octet-stream`),
--   `chunk_size`, `resumable` as for `media_file`
-- @return media | nil, msg, err (a mime_type with CR, LF, NUL or another
--   control character: it would inject MIME headers)
function _M.media_string(data, opts)
  if type(data) ~= "string" then
    error("gauth.media: media_string: data must be a string", 2)
  end
  opts = check_media_opts(opts, "media_string")
  if opts.mime_type and not header_value_ok(opts.mime_type) then
    return bad_mime_type("media_string", "mime_type")
  end
  return setmetatable({
    data = data, size = #data,
    mime_type = opts.mime_type or "application/octet-stream",
    chunk_size = opts.chunk_size or _M.DEFAULT_CHUNK_SIZE,
    resumable = opts.resumable,
  }, media_mt)
end

--- Is `x` a media object?
function _M.is_media(x)
  return type(x) == "table" and getmetatable(x) == media_mt
end

--- Will this media be uploaded resumably?
function media_methods:is_resumable()
  if self.resumable ~= nil then return self.resumable end
  return self.size > _M.RESUMABLE_THRESHOLD
end

-- `len` bytes from `offset` (for multipart bodies and string chunks).
function media_methods:read(offset, len)
  if self.data then return sub(self.data, offset + 1, offset + len) end
  local f, err = io_open(self.path, "rb")
  if not f then return errors.fail("media", "read", tostring(err), { file = self.path }) end
  f:seek("set", offset)
  local s = f:read(len) or ""
  f:close()
  return s
end

media_mt.__tostring = function(self)
  return format("gauth.media %s (%s, %d bytes)", self.path or "string",
                self.mime_type, self.size)
end

-- ------------------------------------------------------------------------
-- mediaUpload checks.

local SIZE_UNITS = { KB = 10, MB = 20, GB = 30, TB = 40 }

--- A Discovery `maxSize` ("10MB", "5497558138880") in bytes; 0 for none
-- (googleapiclient's _media_size_to_long).
function _M.parse_max_size(s)
  if type(s) == "number" then return s end
  if type(s) ~= "string" or #s < 2 then return 0 end
  local shift = SIZE_UNITS[string.upper(sub(s, -2))]
  if shift then
    local n = tonumber(sub(s, 1, -3))
    return n and n * 2 ^ shift or 0
  end
  return tonumber(s) or 0
end

local function media_type(t)
  local ty, st = match(lower(t), "^%s*([^/%s;]+)/([^%s;]+)")
  return ty, st
end

--- Does a MIME type match one of the `accept` patterns ("*/*", "image/*",
-- "image/png")? Parameters (";charset=...") are ignored, case does not
-- count. An empty or absent list accepts everything.
function _M.accepts(accept, mime)
  if type(accept) ~= "table" or #accept == 0 then return true end
  local ty, st = media_type(mime)
  if not ty then return false end
  for i = 1, #accept do
    local a = accept[i]
    local aty, ast = media_type(type(a) == "string" and a or "")
    if aty and (aty == "*" or aty == ty) and (ast == "*" or ast == st) then
      return true
    end
  end
  return false
end

-- ------------------------------------------------------------------------
-- HTTP pieces shared with gauth.batch.

--- The error object for a non-2xx answer in Google's error shape (see
-- `gauth.errors.from_response`).
-- @local
function _M._http_error(module, step, uri, res)
  return errors.from_response(module, step, res, uri)
end
local http_error = _M._http_error

--- Decode a 2xx body as the request's method wants it (JSON, or the raw
-- text for methods without a response schema).
-- @local
function _M._decode(module, step, spec, uri, res)
  local body = res.body or ""
  if spec.raw then return body end
  if body == "" or res.status == 204 then return {} end
  local v = util.json_decode(body)
  if v == nil then
    return errors.fail(module, step, "malformed JSON response",
                           { status = res.status, body = body, uri = redact(uri) })
  end
  local svc = spec.svc
  if svc and svc.data_wrapper and type(v) == "table" and v.data ~= nil then v = v.data end
  return v
end
local decode = _M._decode

local function transport_of(svc, opts)
  local http = opts.http or svc.http
  if http then return http end
  return require("gauth.http").default()
end

-- The service's credentials on universe check (see discovery), once per
-- exchange before any token is asked for.
local function universe_check(op)
  return require("gauth.discovery")._check_universe(op.svc, op.module, op.step)
end

-- A gauth.request exchange for `treq` with the service's credentials:
-- headers `base_headers` + `extra`, no retries (the callers that retry set
-- `retries`, `deadline`, `decode`).
local function op_for(svc, module, step, treq, base_headers, extra, http)
  local h = {}
  for k, v in pairs(base_headers) do h[k] = v end
  if extra then for k, v in pairs(extra) do h[k] = v end end
  local creds = svc.credentials
  return {
    module = module, step = step, svc = svc, http = http,
    method = treq.method, url = treq.url, headers = h, body = treq.body,
    upload_file = treq.upload_file, upload_offset = treq.upload_offset,
    upload_length = treq.upload_length, download_file = treq.download_file,
    timeout = treq.timeout, credentials = creds, api_key = svc.api_key ~= nil,
    check = creds and universe_check or nil, retries = 0,
  }
end
_M._op_for = op_for

-- Send one exchange through gauth.request's loop (https or loopback only,
-- the universe check, credentials, one refresh on 401), without retries:
-- the resumable and ranged protocols below decide those themselves.
-- @return res (any HTTP answer) | nil, msg, err
local function send(svc, step, treq, base_headers, extra, http)
  return request_send(op_for(svc, "media", step, treq, base_headers, extra, http))
end
_M._send = send

-- A transfer's time limit: what the caller asked for, else one that grows
-- with the bytes moved (the transport's 30 s default would cut a 100 MiB
-- chunk short on a link slower than 3.4 MB/s): 60 s + 1 s per MiB.
local function timeout_for(opts, svc, bytes)
  if opts.timeout then return opts.timeout end
  local t = 60 + bytes / MiB
  if svc.timeout and svc.timeout > t then t = svc.timeout end
  return t
end

local function sleeper(opts, svc)
  return util.seam(opts, "sleep") or svc.sleep or util.sleep
end

-- The delay before retry number `n` after `err`.
local function delay_for(n, err, opts)
  local ra = type(err) == "table" and tonumber(err.retry_after)
  if ra and ra >= 0 then return ra end
  return retry.backoff(n, { random = util.seam(opts, "random") })
end

local function check_run_opts(opts, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("gauth.media: " .. fname .. ": opts must be a table", 3)
  end
  if opts.progress ~= nil and type(opts.progress) ~= "function" then
    error("gauth.media: " .. fname .. ": opts.progress must be a function", 3)
  end
  local n = opts.num_retries
  if n ~= nil and (type(n) ~= "number" or n < 0 or n % 1 ~= 0) then
    error("gauth.media: " .. fname .. ": opts.num_retries must be a non-negative integer", 3)
  end
  if opts.http ~= nil and (type(opts.http) ~= "table" or type(opts.http.request) ~= "function") then
    error("gauth.media: " .. fname .. ": opts.http must be a transport (with :request)", 3)
  end
  return opts
end

-- Origin ("scheme://host:port") of an URL.
local function origin_of(url)
  return match(url, "^(%a[%w+.-]*://[^/?#]*)")
end

--- The root URL media and batch requests go to: the document's rootUrl,
-- with the scheme, host and port of the service's base URL when these
-- differ (an `api_endpoint`, a universe domain).
-- @local
function _M._root_for(svc)
  local root = svc.root_url or svc.base
  local ro, bo = origin_of(root), origin_of(svc.base)
  if ro and bo and ro ~= bo then root = bo .. sub(root, #ro + 1) end
  if sub(root, -1) ~= "/" then root = root .. "/" end
  return root
end

-- ------------------------------------------------------------------------
-- Upload requests.

local upload = {}
local upload_mt = { __index = upload, gauth_media_upload = true }

--- Is `x` a media upload request (made by a method call with
-- `media_body`)?
function _M.is_upload(x)
  return type(x) == "table" and getmetatable(x) == upload_mt
end

-- "uploadType=<t>" in place of any the caller gave (googleapiclient's
-- _add_query_parameter).
local function with_upload_type(uri, t)
  local path, query = match(uri, "^([^?]*)%??(.*)$")
  local kept = {}
  for piece in string.gmatch(query, "[^&]+") do
    if not find(piece, "^uploadType=") then kept[#kept + 1] = piece end
  end
  kept[#kept + 1] = "uploadType=" .. t
  return path .. "?" .. concat(kept, "&")
end

-- Make the upload request for a built discovery request `req` of a method
-- with `mediaUpload` (`mdesc`), given `media_body` and `media_mime_type`.
-- @return upload request | nil, msg, err
function _M.upload_request(req, mdesc, media_body, media_mime_type, level)
  level = (level or 1) + 1
  local spec = rawget(req, "_spec") or req._spec
  local svc = spec.svc
  local step = spec.id
  local media
  if type(media_body) == "string" then
    local mt = media_mime_type
    if mt ~= nil and type(mt) ~= "string" then
      error("gauth.media: " .. step .. ": media_mime_type must be a string", level)
    end
    if mt ~= nil and not header_value_ok(mt) then
      return bad_mime_type(step, "media_mime_type")
    end
    if mt == nil then
      -- googleapiclient: a path's type is guessed, and unknown is an error
      mt = _M.guess_type(media_body)
      if not mt then
        return fail(step, "cannot tell the MIME type of " .. media_body ..
                    ": give media_mime_type", { file = media_body, kind = "unknown_mime_type" })
      end
    end
    local e2, e3
    media, e2, e3 = _M.media_file(media_body, { mime_type = mt })
    if not media then
      local err = errors.of(e2, e3)
      err.step = step
      return errors.ret(err)
    end
  elseif _M.is_media(media_body) then
    media = media_body
  else
    error("gauth.media: " .. step .. ": media_body must be a file path or a media object"
          .. " (gauth.media.media_file / media_string)", level)
  end

  -- A media object's type may have been set by hand after it was made.
  if type(media.mime_type) ~= "string" or not header_value_ok(media.mime_type) then
    return bad_mime_type(step, "the media's mime_type")
  end
  local mu = type(mdesc.mediaUpload) == "table" and mdesc.mediaUpload or {}
  if not _M.accepts(mu.accept, media.mime_type) then
    return fail(step, format("media type %s is not accepted by the method (accept: %s)",
                             media.mime_type, concat(mu.accept, ", ")),
                { kind = "unacceptable_mime_type", mime_type = media.mime_type })
  end
  local max = _M.parse_max_size(mu.maxSize or "")
  if max > 0 and media.size > max then
    return fail(step, format("media of %d bytes is larger than the method's maxSize %s",
                             media.size, tostring(mu.maxSize)),
                { kind = "media_too_large", size = media.size, max_size = max })
  end

  -- The expanded path and query of the method, under the upload root.
  local uri = req.uri
  local base = svc.base_slash or svc.base
  if sub(uri, 1, #base) ~= base then
    error("gauth.media: " .. step .. ": cannot place an upload URL for " .. redact(uri), level)
  end
  local doc = svc.doc or {}
  local service_path = type(doc.servicePath) == "string" and doc.servicePath or ""
  local upload_base = _M._root_for(svc) .. "upload/" .. service_path
  local rel = sub(uri, #base + 1)

  local resumable = media:is_resumable()
  local upload_type
  if resumable then
    upload_type = "resumable"
  elseif req.body == nil then
    upload_type = "media"
  else
    upload_type = "multipart"
  end
  local up = setmetatable({
    method = req.method, uri = with_upload_type(upload_base .. rel, upload_type),
    body = req.body, media = media, upload_type = upload_type,
    resumable = resumable and media or nil,
    resumable_uri = nil, resumable_progress = 0,
    _req = req, _spec = spec, _svc = svc,
  }, upload_mt)
  return up
end

-- The headers every request of an upload carries (content-type aside).
local function base_headers_of(up)
  local h = {}
  for k, v in pairs(up._req.headers) do h[k] = v end
  h["content-type"] = nil
  return h
end

local function status_of(up, done)
  return { bytes = up.resumable_progress, total = up.media.size, done = done or false }
end

-- The multipart/related body: in memory, or spooled to a temporary file.
-- @return body string | nil, tmp path | nil, nil, err; and the content type
local function multipart_body(up)
  local media = up.media
  local boundary
  repeat
    boundary = "===============" .. random_hex(16) .. "=="
  until not (media.data and find(media.data, boundary, 1, true))
    and not find(up.body, boundary, 1, true)
  local head = concat({
    "--", boundary, "\r\n",
    "Content-Type: application/json\r\n",
    "MIME-Version: 1.0\r\n\r\n",
    up.body, "\r\n",
    "--", boundary, "\r\n",
    "Content-Type: ", media.mime_type, "\r\n",
    "MIME-Version: 1.0\r\n",
    "Content-Transfer-Encoding: binary\r\n\r\n",
  })
  local tail = "\r\n--" .. boundary .. "--\r\n"
  local ctype = 'multipart/related; boundary="' .. boundary .. '"'
  if media.data or media.size <= _M.MULTIPART_MEMORY_MAX then
    local data, err = media.data
    if not data then
      data, err = errors.pair(media:read(0, media.size))
      if not data or #data ~= media.size then
        return nil, nil, "reading " .. media.path .. ": " .. tostring(err or "file changed size"), ctype
      end
    end
    return head .. data .. tail, nil, nil, ctype
  end
  local tmp = os.tmpname()
  local out, oerr = io_open(tmp, "wb")
  if not out then return nil, nil, "temporary file: " .. tostring(oerr), ctype end
  local inp, ierr = io_open(media.path, "rb")
  if not inp then
    out:close(); os_remove(tmp)
    return nil, nil, "cannot open " .. media.path .. ": " .. tostring(ierr), ctype
  end
  local ok = out:write(head)
  local left = media.size
  while ok and left > 0 do
    local block = inp:read(left < COPY_BLOCK and left or COPY_BLOCK)
    if not block then break end
    ok = out:write(block)
    left = left - #block
  end
  inp:close()
  ok = ok and out:write(tail)
  ok = out:close() and ok
  if not ok or left ~= 0 then
    os_remove(tmp)
    return nil, nil, left ~= 0 and (media.path .. " changed size while read")
                     or "writing the temporary multipart body failed", ctype
  end
  return nil, tmp, nil, ctype
end

-- Simple and multipart uploads: one request.
local function send_whole(up, opts)
  local svc, spec = up._svc, up._spec
  local step = spec.id
  local media = up.media
  local http, herr = errors.pair(transport_of(svc, opts))
  if not http then return errors.fail_with("media", step, herr) end
  local treq = { method = up.method, url = up.uri,
                 timeout = timeout_for(opts, svc, media.size) }
  local extra, tmp
  if up.upload_type == "media" then
    extra = { ["content-type"] = media.mime_type }
    if media.data then
      treq.body = media.data
    else
      treq.upload_file, treq.upload_offset, treq.upload_length = media.path, 0, media.size
    end
  else
    local body, path, err, ctype = multipart_body(up)
    if err then return fail(step, err, { retryable = false }) end
    extra = { ["content-type"] = ctype }
    treq.body, treq.upload_file, tmp = body, path, path
  end
  local base = base_headers_of(up)
  local n = opts.num_retries
  if n == nil then n = svc.num_retries end
  if n == nil then n = IDEMPOTENT[up.method] and _M.DEFAULT_RETRIES or 0 end

  -- One call of gauth.request's loop: retries, Retry-After, one deadline
  -- for everything, the token fetch included.
  local op = op_for(svc, "media", step, treq, base, extra, http)
  op.retries, op.deadline = n, opts.deadline
  op.sleep, op.random = sleeper(opts, svc), util.seam(opts, "random")
  op.decode = function(_, res)
    return errors.pair(decode("media", step, spec, up.uri, res))
  end
  local v, err = errors.pair(request_send(op))
  if tmp then os_remove(tmp) end
  if v == nil then return errors.ret(err) end
  up.resumable_progress = media.size
  up.response = v
  if opts.progress then opts.progress(media.size, media.size) end
  return v
end

-- Resumable: an answer to a chunk or to a status query.
-- @return true when done (up.response set) | false to go on | nil, msg, err
local function take_answer(up, res, step)
  local st = res.status
  if st == 200 or st == 201 then
    local v, err = errors.pair(decode("media", step, up._spec, up.uri, res))
    if v == nil then return errors.ret(err) end
    up.resumable_progress = up.media.size
    up.response = v
    up._in_error = false
    return true
  end
  if st == 308 then
    local range = res.headers.range
    local last = range and tonumber(match(range, "^%s*bytes=%d+%-(%d+)"))
    local p = last and last + 1 or 0
    if p > up.media.size then p = up.media.size end
    up.resumable_progress = p
    local loc = res.headers.location
    if loc and loc ~= "" then up.resumable_uri = loc end
    up._in_error = false
    return false
  end
  if st == 404 or st == 410 then
    -- The session is gone (expired, or cancelled): Google says to start
    -- over. The next execute() / next_chunk() opens a new session.
    up.resumable_uri = nil
    up.resumable_progress = 0
    up._in_error = false
    local e = http_error("media", step, up.uri, res)
    e.message = "the upload session expired or is unknown (" .. tostring(e.message)
                .. "); the next call starts a new one"
    e.retryable = false
    e.session_lost = true
    return errors.ret(e)
  end
  up._in_error = true
  return errors.ret(http_error("media", step, up.uri, res))
end

-- Resumable: open the session.
local function start_session(up, http, base, opts)
  local svc, step, media = up._svc, up._spec.id, up.media
  local extra = { ["x-upload-content-type"] = media.mime_type,
                  ["x-upload-content-length"] = tostring(media.size) }
  if up.body ~= nil then extra["content-type"] = "application/json" end
  local treq = { method = up.method, url = up.uri, body = up.body,
                 timeout = timeout_for(opts, svc, 0) }
  local res, err = errors.pair(send(svc, step, treq, base, extra, http))
  if not res then return errors.ret(err) end
  local loc = res.headers.location
  if res.status >= 200 and res.status < 300 and loc and loc ~= "" then
    if not find(loc, "^%a[%w+.-]*://") then
      -- a relative Location: under the upload URL's origin
      loc = origin_of(up.uri) .. (sub(loc, 1, 1) == "/" and "" or "/") .. loc
    end
    up.resumable_uri = loc
    up.resumable_progress = 0
    return true
  end
  if res.status >= 200 and res.status < 300 then
    return fail(step, "the server opened no upload session (no Location header)",
                { status = res.status, body = res.body, uri = redact(up.uri), retryable = false })
  end
  return errors.ret(http_error("media", step, up.uri, res))
end

-- Resumable: ask the server how much it has ("bytes */size").
local function query_session(up, http, base, opts)
  local svc, step = up._svc, up._spec.id
  local treq = { method = "PUT", url = up.resumable_uri, body = "",
                 timeout = timeout_for(opts, svc, 0) }
  local res, err = errors.pair(send(svc, step, treq, base,
                        { ["content-range"] = "bytes */" .. up.media.size }, http))
  if not res then return errors.ret(err) end
  return take_answer(up, res, step)
end

-- Resumable: send the next chunk.
local function send_chunk(up, http, base, opts)
  local svc, step, media = up._svc, up._spec.id, up.media
  local from = up.resumable_progress
  local size = media.size
  local len = media.chunk_size
  if len == -1 or from + len > size then len = size - from end
  local treq = { method = "PUT", url = up.resumable_uri,
                 timeout = timeout_for(opts, svc, len) }
  local range
  if size == 0 then
    range = "bytes */0"
    treq.body = ""
  else
    range = format("bytes %d-%d/%d", from, from + len - 1, size)
    if media.data then
      treq.body = sub(media.data, from + 1, from + len)
    else
      treq.upload_file, treq.upload_offset, treq.upload_length = media.path, from, len
    end
  end
  local res, err = errors.pair(send(svc, step, treq, base, { ["content-range"] = range }, http))
  if not res then
    up._in_error = true
    return errors.ret(err)
  end
  local done, aerr = errors.pair(take_answer(up, res, step))
  if aerr and (res.status == 400 or res.status == 416) then
    -- Maybe a stale offset: libcurl silently sends a request again on a
    -- new connection when a kept-alive one dies before any answer, so a
    -- chunk cut off mid-way can arrive a second time, behind what the
    -- server kept. Whether that is what happened is the server's to say.
    aerr.chunk_from = from
  end
  return done, aerr
end

local retryable = request.retryable

--- One step of a resumable upload: opens the session when there is none,
-- then sends one chunk (after asking the server where it stands when the
-- previous step failed). Chunks failing with 5xx, 429 or a transport error
-- are retried (backoff with jitter; `Retry-After` honoured), asking the
-- server how much it has before each new attempt.
-- @tparam[opt] table opts `num_retries` (failed attempts retried since the
--   last progress; default 3), `timeout` (seconds per request; default 60
--   + 1 per MiB sent), `http`, `sleep`, `random`
-- @return status `{ bytes =, total =, done = }`, and the decoded response
--   once the upload is complete (nil before) | nil, msg, err
function upload:next_chunk(opts)
  if getmetatable(self) ~= upload_mt then
    error("gauth.media: next_chunk: call it with a colon (req:next_chunk())", 2)
  end
  if not self.resumable then
    error("gauth.media: next_chunk: not a resumable upload (uploadType="
          .. tostring(self.upload_type) .. "); use execute()", 2)
  end
  opts = check_run_opts(opts, "next_chunk")
  if self.response ~= nil then return status_of(self, true), self.response end
  local svc = self._svc
  local http, herr = errors.pair(transport_of(svc, opts))
  if not http then return errors.fail_with("media", self._spec.id, herr) end
  local base = base_headers_of(self)
  local n = opts.num_retries
  if n == nil then n = _M.DEFAULT_RETRIES end
  local sleep = sleeper(opts, svc)
  local failures = 0
  local started = self.resumable_progress
  local checked = false
  while true do
    local done, err
    if not self.resumable_uri then
      done, err = errors.pair(start_session(self, http, base, opts))
      if done then
        done, err = errors.pair(send_chunk(self, http, base, opts))
      end
    elseif self._in_error then
      done, err = errors.pair(query_session(self, http, base, opts))
      if done == false then
        done, err = errors.pair(send_chunk(self, http, base, opts))
      end
    else
      done, err = errors.pair(send_chunk(self, http, base, opts))
    end
    if done == nil and err and err.chunk_from and not checked then
      -- A refused chunk: ask where the server stands; an offset other
      -- than the chunk's explains the refusal, and the upload goes on.
      checked = true
      local qdone, qerr = errors.pair(query_session(self, http, base, opts))
      if qdone then
        done, err = true, nil
      elseif qdone == false and self.resumable_progress ~= err.chunk_from then
        done, err = false, nil
        if self.resumable_progress <= started then
          -- nothing gained yet: send the right chunk now
          done, err = errors.pair(send_chunk(self, http, base, opts))
        end
      elseif qdone == nil then
        err = qerr
      else
        self._in_error = false
      end
    end
    if done then return status_of(self, true), self.response end
    if done == false and self.resumable_progress > started then
      return status_of(self, false), nil
    end
    if done == false then
      -- A 308 that took nothing: the server wants the chunk again.
      err = errors.new("media", self._spec.id, "the server kept none of the chunk",
                       { retryable = true, kind = "no_progress", uri = redact(self.uri) })
      self._in_error = true
    end
    if not retryable(err) or failures >= n then
      if failures > 0 and errors.is(err) then
        err = errors.new(err.module, err.step, tostring(err.message) ..
                         format(" (gave up after %d attempts)", failures + 1), err)
      end
      return errors.ret(err)
    end
    failures = failures + 1
    sleep(delay_for(failures, err, opts))
  end
end

--- Send the whole upload: one request for `media` and `multipart`; for
-- `resumable`, chunks until the server has everything.
-- @tparam[opt] table opts `progress` (function(bytes_sent, total), called
--   after each chunk and at the end), `num_retries` (simple/multipart:
--   retries of the request, default 3 for PUT and none for POST/PATCH as
--   `execute` of discovery; resumable: per chunk since the last progress,
--   default 3), `timeout`, `deadline` (simple/multipart), `http`, `sleep`,
--   `random`
-- @return the decoded response | nil, msg, err (`gauth.errors`, module "media",
--   step the method id, with `status`, `reason`, `retryable`, `uri`)
function upload:execute(opts)
  if getmetatable(self) ~= upload_mt then
    error("gauth.media: execute: call it with a colon (req:execute())", 2)
  end
  opts = check_run_opts(opts, "execute")
  if self.response ~= nil then return self.response end
  if not self.resumable then return send_whole(self, opts) end
  local progress = opts.progress
  while true do
    local status, res, err = self:next_chunk(opts)
    if not status then return nil, res, err end
    if progress then progress(status.bytes, status.total) end
    if res ~= nil then return res end
  end
end

upload_mt.__tostring = function(self)
  return format("gauth.media upload %s (%s, uploadType=%s)", tostring(self._spec.id),
                tostring(self.media), self.upload_type)
end

--- Wrap the request builder of a method with `mediaUpload` so that it takes
-- `media_body` and `media_mime_type` (used by gauth.discovery).
-- @local
function _M.wrap_builder(build, mdesc)
  return function(s, params)
    if type(params) ~= "table" or (params.media_body == nil and params.media_mime_type == nil) then
      return build(s, params)  -- a tail call: errors point at the caller
    end
    local p = {}
    for k, v in pairs(params) do p[k] = v end
    local mb, mt = p.media_body, p.media_mime_type
    p.media_body, p.media_mime_type = nil, nil
    -- The builder's own errors name the caller's line: through pcall they
    -- carry no position, and are raised again from here at level 2.
    local ok, req = pcall(build, s, p)
    if not ok then error(req, 2) end
    -- googleapiclient ignores media_mime_type without media_body
    if mb == nil then return req end
    -- Not a tail call: the level of its errors counts this frame.
    local up, err, e3 = _M.upload_request(req, mdesc, mb, mt, 2)
    return up, err, e3
  end
end

-- ------------------------------------------------------------------------
-- Downloads.

-- Copy `len` bytes (nil: to the end) of file `src` from `offset` to the
-- open file `out`.
local function copy_range(src, offset, len, out)
  local f, err = io_open(src, "rb")
  if not f then return nil, err end
  f:seek("set", offset)
  local left = len
  while left == nil or left > 0 do
    local want = COPY_BLOCK
    if left and left < want then want = left end
    local block = f:read(want)
    if not block then break end
    local ok, werr = out:write(block)
    if not ok then f:close(); return nil, werr end
    if left then left = left - #block end
  end
  f:close()
  return true
end

-- Rewrite `path` as its first `keep` bytes followed by the bytes from
-- `from` on (for answers that did not start where asked): copies, since
-- plain Lua cannot truncate a file.
local function splice(path, keep, from)
  local tmp = path .. ".gauth-splice"
  local out, err = io_open(tmp, "wb")
  if not out then return nil, err end
  local ok, cerr = true, nil
  if keep > 0 then ok, cerr = copy_range(path, 0, keep, out) end
  if ok and from then ok, cerr = copy_range(path, from, nil, out) end
  ok = out:close() and ok
  if not ok then os_remove(tmp); return nil, cerr or "write failed" end
  local rok, rerr = os_rename(tmp, path)
  if not rok then os_remove(tmp); return nil, rerr end
  return true
end

--- Download what a request answers (a `_media` method's request) into a
-- file, in ranged requests, appending each answer to the file as it
-- arrives (memory stays flat whatever the size). A dropped connection is
-- resumed from the bytes already on disk; a 416 once everything is there
-- ends the download.
-- @param req a GET request of gauth.discovery (`files():get_media{...}`)
-- @param dest a path (truncated first, unless `opts.resume`) or a file
--   opened for writing (written from its current position)
-- @tparam[opt] table opts `chunk_size` (bytes per ranged request; default
--   100 MiB), `progress` (function(bytes, total_or_nil) after each answer),
--   `resume` (a path only: keep its bytes and ask for the rest),
--   `num_retries` (failed attempts retried since the last progress;
--   default 3), `timeout` (seconds per request; default 60 + 1 per MiB of
--   chunk), `http`, `sleep`, `random`
-- @return bytes in the file (from the object), total size (nil when the
--   server never said) | nil, msg, err (with `bytes`: what arrived)
function _M.download(req, dest, opts)
  local spec = type(req) == "table" and req._spec
  if type(spec) ~= "table" or type(spec.svc) ~= "table" then
    error("gauth.media: download: needs a request of gauth.discovery", 2)
  end
  if req.method ~= "GET" then
    error("gauth.media: download: needs a GET request (got " .. tostring(req.method) .. ")", 2)
  end
  local handle
  if io_type(dest) == "file" then
    handle = dest
  elseif type(dest) ~= "string" or dest == "" then
    error("gauth.media: download: dest must be a path or an open file", 2)
  end
  opts = check_run_opts(opts, "download")
  local chunk = opts.chunk_size or _M.DEFAULT_CHUNK_SIZE
  if type(chunk) ~= "number" or chunk < 1 or chunk % 1 ~= 0 then
    error("gauth.media: download: chunk_size must be a positive integer", 2)
  end
  if opts.resume and handle then
    error("gauth.media: download: resume needs a path", 2)
  end
  local svc, step, uri = spec.svc, spec.id, req.uri
  local http, herr = errors.pair(transport_of(svc, opts))
  if not http then return errors.fail_with("media", step, herr) end

  -- Raw bytes: no Accept-Encoding, so that ranges count what is stored.
  local base = {}
  for k, v in pairs(req.headers) do base[k] = v end
  base["accept-encoding"] = nil

  local progress, total = 0, nil
  local land, start_pos
  if handle then
    start_pos = handle:seek() or 0
    land = os.tmpname()
  else
    land = dest
    if opts.resume then
      progress = file_size(dest) or 0
    end
    if progress == 0 then
      local f, ferr = io_open(dest, "wb")
      if not f then return fail(step, "cannot write " .. dest .. ": " .. tostring(ferr),
                                { file = dest, retryable = false, bytes = 0 }) end
      f:close()
    end
  end
  -- finish(true, bytes, total) | finish(false, nil, err) | finish(false,
  -- fail(...)) (nil, msg, err): the public shape, with `bytes` on the error
  local function finish(ok, a, b, c)
    if handle then os_remove(land) end
    if ok then return a, b end
    local e = errors.is(c) and c or b
    if errors.is(e) then
      e.bytes = progress
      return errors.ret(e)
    end
    return errors.fail("media", step, tostring(e), { bytes = progress })
  end
  -- Move what landed in the temporary file to the caller's file, at the
  -- object offset `at`.
  local function deliver(at)
    if not handle then return true end
    local n = file_size(land) or 0
    if n == 0 then return true end
    handle:seek("set", start_pos + at)
    local ok, err = errors.pair(copy_range(land, 0, n, handle))
    local f = io_open(land, "wb"); if f then f:close() end
    if not ok then
      return fail(step, "writing to the file failed: " .. tostring(err), { retryable = false })
    end
    return true
  end

  local n_retries = opts.num_retries
  if n_retries == nil then n_retries = _M.DEFAULT_RETRIES end
  local sleep = sleeper(opts, svc)
  local failures = 0
  local treq = { method = "GET", url = uri, download_file = land }
  local extra = {}
  while true do
    local first = progress
    local last = first + chunk - 1
    if total and last > total - 1 then last = total - 1 end
    extra.range = format("bytes=%d-%d", first, last)
    treq.timeout = timeout_for(opts, svc, last - first + 1)
    local before = handle and 0 or (file_size(land) or 0)
    local res, err = errors.pair(send(svc, step, treq, base, extra, http))
    local written = (file_size(land) or 0) - before
    local done = false
    if not res then
      -- What arrived before the failure stays: resume after it, at once
      -- (the connection broke, the server did not refuse).
      if written > 0 then
        local ok, derr = errors.pair(deliver(first))
        if not ok then return finish(false, nil, derr) end
        progress = progress + written
        failures = 0
        if opts.progress then opts.progress(progress, total) end
        if retryable(err) then err = nil end
      end
    elseif res.status == 206 then
      local a, b, t = match(res.headers["content-range"] or "", "^%s*bytes%s+(%d+)%-(%d+)/(%S+)")
      a = tonumber(a)
      if not a or not tonumber(b) then
        if not handle then splice(land, first, nil) end
        return finish(false, fail(step, "a 206 answer without a valid Content-Range",
                                  { status = 206, retryable = false, uri = redact(uri) }))
      end
      if a ~= first then
        if a > first then
          if not handle then splice(land, first, nil) end
          return finish(false, fail(step, format("asked for bytes from %d, got from %d", first, a),
                                    { status = 206, retryable = false, uri = redact(uri) }))
        end
        -- An earlier start: the bytes before `first` came twice.
        if not handle then
          local ok, serr = errors.pair(splice(land, a, first))
          if not ok then return finish(false, fail(step, "rewriting " .. land .. ": " .. tostring(serr))) end
        end
        first = a
      end
      local ok, derr = errors.pair(deliver(first))
      if not ok then return finish(false, nil, derr) end
      progress = first + written
      total = tonumber(t) or total
      if total then
        done = progress >= total
      else
        done = written < last - first + 1
      end
      if written > 0 then
        failures = 0
        if opts.progress then opts.progress(progress, total) end
      elseif not done then
        -- a 206 without a byte would have us ask for ever
        err = errors.new("media", step, "a 206 answer carried no bytes",
                         { status = 206, retryable = true, kind = "no_progress",
                           uri = redact(uri) })
      end
    elseif res.status >= 200 and res.status < 300 then
      -- The whole object (the server ignored Range).
      if first > 0 and not handle then
        local ok, serr = errors.pair(splice(land, 0, first))
        if not ok then return finish(false, fail(step, "rewriting " .. land .. ": " .. tostring(serr))) end
      end
      local ok, derr = errors.pair(deliver(0))
      if not ok then return finish(false, nil, derr) end
      progress = written
      total = written
      done = true
      if opts.progress then opts.progress(progress, total) end
    elseif res.status == 416 then
      -- Asked past the end: fine when everything is here.
      local t = tonumber(match(res.headers["content-range"] or "", "^%s*bytes%s+%*/(%d+)"))
      if t == nil or t == progress then
        total = t or progress
        done = true
        if opts.progress then opts.progress(progress, total) end
      else
        return finish(false, fail(step, format(
          "the object has %d bytes and %d are already here (a different object?)", t, progress),
          { status = 416, retryable = false, uri = redact(uri) }))
      end
    else
      err = http_error("media", step, uri, res)
    end
    if done then return finish(true, progress, total) end
    if err then
      if not retryable(err) or failures >= n_retries then
        return finish(false, nil, err)
      end
      failures = failures + 1
      sleep(delay_for(failures, err, opts))
    end
  end
end

return _M
