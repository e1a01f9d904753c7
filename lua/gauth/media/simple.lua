--- Simple (`uploadType=media`: the bytes alone) and multipart
-- (`uploadType=multipart`: `multipart/related`, the JSON metadata then the
-- media) uploads: one request, sent with gauth.request's retries.
-- Internal: the `execute` of gauth.media's upload requests.
-- @module gauth.media.simple

local errors = require "gauth.errors"
local seam = require "gauth.lib.seam"
local request = require "gauth.request"
local common = require "gauth.media.common"
local exchange = require "gauth.media.exchange"
local multipart = require "gauth.media.multipart"

local tostring = tostring
local io_open = io.open
local os_remove = os.remove

local _M = {}

local fail = common.fail
local IDEMPOTENT = request.IDEMPOTENT

-- The multipart/related body of upload `up`: in memory up to
-- MULTIPART_MEMORY_MAX (or for string media), else spooled to a temporary
-- file, the media copied in blocks.
-- @return body string | nil, tmp path | nil, nil, what failed; and the
--   content type
local function related_body(up)
  local media = up.media
  local boundary = multipart.boundary(16, up.body, media.data)
  local head, tail = multipart.frame(boundary, {
    "Content-Type: application/json\r\nMIME-Version: 1.0\r\n\r\n" .. up.body,
    "Content-Type: " .. media.mime_type .. "\r\nMIME-Version: 1.0\r\n"
      .. "Content-Transfer-Encoding: binary\r\n\r\n",
  })
  local ctype = 'multipart/related; boundary="' .. boundary .. '"'
  if media.data or media.size <= common.MULTIPART_MEMORY_MAX then
    local data, err = media.data
    if not data then
      data, err = errors.pair(media:read(0, media.size))
      if not data or #data ~= media.size then
        return nil, nil, "reading " .. media.path .. ": " .. tostring(err or "file changed size"), ctype
      end
    end
    return head .. data .. tail, nil, nil, ctype
  end
  local tmp = os.tmpname()  -- looked up at each call: specs count the spool files
  local out, oerr = io_open(tmp, "wb")
  if not out then return nil, nil, "temporary file: " .. tostring(oerr), ctype end
  local ok = out:write(head)
  local n, cerr
  if ok then
    n, cerr = common.copy_range(media.path, 0, media.size, out)
    ok = n == media.size and out:write(tail)
  end
  ok = out:close() and ok
  if not ok then
    os_remove(tmp)
    if n and n ~= media.size then return nil, nil, media.path .. " changed size while read", ctype end
    return nil, nil, cerr or "writing the temporary multipart body failed", ctype
  end
  return nil, tmp, nil, ctype
end

--- Send a simple or multipart upload: one call of gauth.request's loop
-- (retries, Retry-After, one deadline for everything, the token fetch
-- included); the answer decoded as the method's.
-- @tparam table up the upload request (of gauth.media.upload)
-- @tparam table opts the checked options of `execute`
-- @return the decoded response | nil, msg, err
function _M.send(up, opts)
  local svc, spec = up._svc, up._spec
  local step = spec.id
  local media = up.media
  local http, herr = errors.pair(common.transport_of(svc, opts))
  if not http then return errors.fail_with("media", step, herr) end
  local treq = { method = up.method, url = up.uri,
                 timeout = common.timeout_for(opts, svc, media.size) }
  local extra, tmp
  if up.upload_type == "media" then
    extra = { ["content-type"] = media.mime_type }
    if media.data then
      treq.body = media.data
    else
      treq.upload_file, treq.upload_offset, treq.upload_length = media.path, 0, media.size
    end
  else
    local body, path, err, ctype = related_body(up)
    if err then return fail(step, err, { retryable = false }) end
    extra = { ["content-type"] = ctype }
    treq.body, treq.upload_file, tmp = body, path, path
  end
  local base = exchange.base_headers(up._req)
  local n = opts.num_retries
  if n == nil then n = svc.num_retries end
  if n == nil then n = IDEMPOTENT[up.method] and common.DEFAULT_RETRIES or 0 end

  local op = exchange.op_for(svc, "media", step, treq, base, extra, http)
  op.retries, op.deadline = n, opts.deadline
  op.sleep, op.random = common.sleeper(opts, svc), seam.get(opts, "random")
  op.decode = function(_, res)
    return errors.pair(exchange.decode("media", step, spec, up.uri, res))
  end
  local v, err = errors.pair(request.send(op))
  if tmp then os_remove(tmp) end
  if v == nil then return errors.ret(err) end
  up.resumable_progress = media.size
  up.response = v
  if opts.progress then opts.progress(media.size, media.size) end
  return v
end

return _M
