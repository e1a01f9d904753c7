--- What every part of gauth.media shares: the tunables (read at each use,
-- so that setting them on gauth.media counts), the module's failures, the
-- checks of the run options, a transfer's time limit and the pacing of its
-- retries, and file sizes and copies. Internal.
-- @module gauth.media.common

local errors = require "gauth.errors"
local seam = require "gauth.lib.seam"
local time = require "gauth.lib.time"
local retry = require "gauth.retry"
local request = require "gauth.request"

local type = type
local error = error
local tonumber = tonumber
local require = require
local io_open = io.open

local _M = {}

_M.VERSION = "0.1.0"

-- The tunables, documented on gauth.media (which reads and sets them here).
_M.DEFAULT_CHUNK_SIZE = 100 * 1024 * 1024
_M.CHUNK_GRANULARITY = 256 * 1024
_M.RESUMABLE_THRESHOLD = 5 * 1024 * 1024
_M.MULTIPART_MEMORY_MAX = 8 * 1024 * 1024
_M.DEFAULT_RETRIES = request.DEFAULT_RETRIES

local MiB = 1024 * 1024
-- Files are copied in blocks of this size: memory stays flat.
local COPY_BLOCK = 1024 * 1024

--- A failure of gauth.media: `nil, msg, err`.
function _M.fail(step, message, fields)
  return errors.fail("media", step, message, fields)
end

--- A MIME type goes into a header line (Content-Type, X-Upload-Content-Type)
-- or a multipart part's MIME header: a line break in it would add headers
-- or a body there. Refused as `nil, msg, err`, naming the option (`what`),
-- never the value; nothing is sent.
function _M.bad_mime_type(step, what)
  return errors.fail("media", step, what .. " has CR, LF, NUL or another control character"
                     .. " (not a valid header value)",
                     { kind = "bad_mime_type", retryable = false })
end

--- The size of the file at `path`, or nil when it cannot be opened.
function _M.file_size(path)
  local f = io_open(path, "rb")
  if not f then return nil end
  local n = f:seek("end")
  f:close()
  return n
end

--- Copy `len` bytes (nil: to the end) of the file `src` from `offset` to
-- the open file `out`, a block at a time.
-- @return the bytes copied (fewer than `len` when `src` ends first) |
--   nil, what failed
function _M.copy_range(src, offset, len, out)
  local f, err = io_open(src, "rb")
  if not f then return nil, "cannot open " .. src .. ": " .. tostring(err) end
  f:seek("set", offset)
  local left, copied = len, 0
  while left == nil or left > 0 do
    local want = COPY_BLOCK
    if left and left < want then want = left end
    local block = f:read(want)
    if not block then break end
    local ok, werr = out:write(block)
    if not ok then f:close(); return nil, werr end
    copied = copied + #block
    if left then left = left - #block end
  end
  f:close()
  return copied
end

--- The options of execute, next_chunk and download, checked (a wrong
-- type raises at the caller of the public function).
-- @return opts (a new empty table for nil)
function _M.check_run_opts(opts, fname)
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

--- The transport of a transfer: the call's, the service's, else the
-- default one.
-- @return transport | nil, msg, err
function _M.transport_of(svc, opts)
  local http = opts.http or svc.http
  if http then return http end
  return require("gauth.http").default()
end

--- A transfer's time limit: what the caller asked for, else one that
-- grows with the bytes moved (the transport's 30 s default would cut a
-- 100 MiB chunk short on a link slower than 3.4 MB/s): 60 s + 1 s per MiB.
function _M.timeout_for(opts, svc, bytes)
  if opts.timeout then return opts.timeout end
  local t = 60 + bytes / MiB
  if svc.timeout and svc.timeout > t then t = svc.timeout end
  return t
end

--- The sleep function of a transfer: the call's seam, the service's, or
-- the real one.
function _M.sleeper(opts, svc)
  return seam.get(opts, "sleep") or svc.sleep or time.sleep
end

--- The delay before retry number `n` after `err`: its Retry-After, else
-- backoff with jitter.
function _M.delay_for(n, err, opts)
  local ra = type(err) == "table" and tonumber(err.retry_after)
  if ra and ra >= 0 then return ra end
  return retry.backoff(n, { random = seam.get(opts, "random") })
end

return _M
