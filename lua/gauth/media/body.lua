--- Media bodies: the media objects an upload sends (from a file, streamed
-- from disk, or from a string), their options checked, and a method's
-- `maxSize` read. Internal: gauth.media makes these public.
-- @module gauth.media.body

local http_header = require "gauth.lib.http_header"
local common = require "gauth.media.common"
local mime = require "gauth.media.mime"

local type = type
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local io_open = io.open
local sub = string.sub
local find = string.find
local upper = string.upper
local format = string.format

local _M = {}

local fail = common.fail
local bad_mime_type = common.bad_mime_type
local header_value_ok = http_header.value_ok
local guess_type = mime.guess_type

local media_mt = { __index = {}, gauth_media = true }
local media_methods = media_mt.__index

-- The options of media_file and media_string: a wrong type raises at
-- their caller; a MIME type that is not a valid header value is refused.
-- @return opts (a new empty table for nil) | nil, msg, err
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
                                 or cs % common.CHUNK_GRANULARITY ~= 0) then
    error("gauth.media: " .. fname .. ": chunk_size must be -1 (one chunk) or a"
          .. " positive multiple of 256 KiB (Google's rule)", 3)
  end
  if opts.resumable ~= nil and type(opts.resumable) ~= "boolean" then
    error("gauth.media: " .. fname .. ": resumable must be a boolean", 3)
  end
  if opts.mime_type and not header_value_ok(opts.mime_type) then
    return bad_mime_type(fname, "mime_type")
  end
  return opts
end

-- A media object: `fields` (path or data, size) with its MIME type and
-- the options' chunk size and resumable choice.
local function new_media(fields, opts, mime_type)
  fields.mime_type = mime_type
  fields.chunk_size = opts.chunk_size or common.DEFAULT_CHUNK_SIZE
  fields.resumable = opts.resumable
  return setmetatable(fields, media_mt)
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
  local e2, e3
  opts, e2, e3 = check_media_opts(opts, "media_file")
  if not opts then return nil, e2, e3 end
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
  return new_media({ path = path, size = size }, opts,
                   opts.mime_type or guess_type(path) or "application/octet-stream")
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
  local e2, e3
  opts, e2, e3 = check_media_opts(opts, "media_string")
  if not opts then return nil, e2, e3 end
  return new_media({ data = data, size = #data }, opts,
                   opts.mime_type or "application/octet-stream")
end

--- Is `x` a media object?
function _M.is_media(x)
  return type(x) == "table" and getmetatable(x) == media_mt
end

--- Will this media be uploaded resumably?
function media_methods:is_resumable()
  if self.resumable ~= nil then return self.resumable end
  return self.size > common.RESUMABLE_THRESHOLD
end

-- `len` bytes from `offset` (for multipart bodies and string chunks).
function media_methods:read(offset, len)
  if self.data then return sub(self.data, offset + 1, offset + len) end
  local f, err = io_open(self.path, "rb")
  if not f then return fail("read", tostring(err), { file = self.path }) end
  f:seek("set", offset)
  local s = f:read(len) or ""
  f:close()
  return s
end

media_mt.__tostring = function(self)
  return format("gauth.media %s (%s, %d bytes)", self.path or "string",
                self.mime_type, self.size)
end

local SIZE_UNITS = { KB = 10, MB = 20, GB = 30, TB = 40 }

--- A Discovery `maxSize` ("10MB", "5497558138880") in bytes; 0 for none
-- (googleapiclient's _media_size_to_long).
function _M.parse_max_size(s)
  if type(s) == "number" then return s end
  if type(s) ~= "string" or #s < 2 then return 0 end
  local shift = SIZE_UNITS[upper(sub(s, -2))]
  if shift then
    local n = tonumber(sub(s, 1, -3))
    return n and n * 2 ^ shift or 0
  end
  return tonumber(s) or 0
end

return _M
