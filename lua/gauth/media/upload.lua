--- Upload requests: what a method call with `media_body` returns. The
-- media checked against the method's `mediaUpload` (accept, maxSize), the
-- upload URL placed and the upload type chosen; `execute` and
-- `next_chunk` hand the sending to gauth.media.simple and
-- gauth.media.resumable. Internal: gauth.media makes these public.
-- @module gauth.media.upload

local errors = require "gauth.errors"
local http_header = require "gauth.lib.http_header"
local common = require "gauth.media.common"
local exchange = require "gauth.media.exchange"
local mime = require "gauth.media.mime"
local body = require "gauth.media.body"
local simple = require "gauth.media.simple"
local resumable = require "gauth.media.resumable"
local spec_of = require("gauth.discovery.method").spec_of

local type = type
local pairs = pairs
local error = error
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local sub = string.sub
local find = string.find
local match = string.match
local gmatch = string.gmatch
local format = string.format
local concat = table.concat

local _M = {}

local fail = common.fail
local bad_mime_type = common.bad_mime_type
local check_run_opts = common.check_run_opts
local header_value_ok = http_header.value_ok
local redact = errors.redact_uri

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
  for piece in gmatch(query, "[^&]+") do
    if not find(piece, "^uploadType=") then kept[#kept + 1] = piece end
  end
  kept[#kept + 1] = "uploadType=" .. t
  return path .. "?" .. concat(kept, "&")
end

-- The media of `media_body`: a media object as it is, a path made into
-- one (its type given or guessed; unknown is an error, as in
-- googleapiclient).
-- @return media | nil, msg, err
local function media_of(step, media_body, media_mime_type, level)
  if body.is_media(media_body) then return media_body end
  if type(media_body) ~= "string" then
    error("gauth.media: " .. step .. ": media_body must be a file path or a media object"
          .. " (gauth.media.media_file / media_string)", level + 1)
  end
  local mt = media_mime_type
  if mt ~= nil and type(mt) ~= "string" then
    error("gauth.media: " .. step .. ": media_mime_type must be a string", level + 1)
  end
  if mt ~= nil and not header_value_ok(mt) then
    return bad_mime_type(step, "media_mime_type")
  end
  if mt == nil then
    mt = mime.guess_type(media_body)
    if not mt then
      return fail(step, "cannot tell the MIME type of " .. media_body ..
                  ": give media_mime_type", { file = media_body, kind = "unknown_mime_type" })
    end
  end
  local media, e2, e3 = body.media_file(media_body, { mime_type = mt })
  if not media then
    local err = errors.of(e2, e3)
    err.step = step
    return errors.ret(err)
  end
  return media
end

--- Make the upload request for a built discovery request `req` of a
-- method with `mediaUpload` (`mdesc`), given `media_body` and
-- `media_mime_type`.
-- @param req the built request (of gauth.discovery)
-- @tparam table mdesc the method's Discovery description
-- @param media_body a file path or a media object
-- @tparam[opt] string media_mime_type the type of a path's media
-- @tparam[opt] number level where programming errors point (1, the
--   default: the caller)
-- @return upload request | nil, msg, err
function _M.upload_request(req, mdesc, media_body, media_mime_type, level)
  level = (level or 1) + 1
  local spec = spec_of(req)
  local svc = spec.svc
  local step = spec.id
  local media, e2, e3 = media_of(step, media_body, media_mime_type, level)
  if not media then return media, e2, e3 end

  -- A media object's type may have been set by hand after it was made.
  if type(media.mime_type) ~= "string" or not header_value_ok(media.mime_type) then
    return bad_mime_type(step, "the media's mime_type")
  end
  local mu = type(mdesc.mediaUpload) == "table" and mdesc.mediaUpload or {}
  if not mime.accepts(mu.accept, media.mime_type) then
    return fail(step, format("media type %s is not accepted by the method (accept: %s)",
                             media.mime_type, concat(mu.accept, ", ")),
                { kind = "unacceptable_mime_type", mime_type = media.mime_type })
  end
  local max = body.parse_max_size(mu.maxSize or "")
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
  local upload_base = exchange.root_for(svc) .. "upload/" .. service_path
  local rel = sub(uri, #base + 1)

  local is_resumable = media:is_resumable()
  local upload_type
  if is_resumable then
    upload_type = "resumable"
  elseif req.body == nil then
    upload_type = "media"
  else
    upload_type = "multipart"
  end
  local up = setmetatable({
    method = req.method, uri = with_upload_type(upload_base .. rel, upload_type),
    body = req.body, media = media, upload_type = upload_type,
    resumable = is_resumable and media or nil,
    resumable_uri = nil, resumable_progress = 0,
    _req = req, _spec = spec, _svc = svc,
  }, upload_mt)
  return up
end
local upload_request = _M.upload_request

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
  return resumable.next_chunk(self, opts)
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
  if not self.resumable then return simple.send(self, opts) end
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
    local up, err, e3 = upload_request(req, mdesc, mb, mt, 2)
    return up, err, e3
  end
end

return _M
