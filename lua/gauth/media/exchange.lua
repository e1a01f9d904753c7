--- One exchange of an upload, a download or a batch with a discovery
-- service, through gauth.request: the root URL these go to, the exchange
-- made with the service's credentials and universe check, and a 2xx
-- answer decoded as the method wants it. Internal: used by the parts of
-- gauth.media and by gauth.batch.
-- @module gauth.media.exchange

local errors = require "gauth.errors"
local json = require "gauth.lib.json"
local request = require "gauth.request"

local type = type
local pairs = pairs
local require = require
local sub = string.sub
local match = string.match

local _M = {}

local request_send = request.send
local redact = errors.redact_uri

--- The origin ("scheme://host:port") of an URL, or nil.
local function origin_of(url)
  return match(url, "^(%a[%w+.-]*://[^/?#]*)")
end
_M.origin_of = origin_of

--- The root URL media and batch requests go to: the document's rootUrl,
-- with the scheme, host and port of the service's base URL when these
-- differ (an `api_endpoint`, a universe domain); it ends with "/".
-- @tparam table svc the service's internal table (of gauth.discovery)
function _M.root_for(svc)
  local root = svc.root_url or svc.base
  local ro, bo = origin_of(root), origin_of(svc.base)
  if ro and bo and ro ~= bo then root = bo .. sub(root, #ro + 1) end
  if sub(root, -1) ~= "/" then root = root .. "/" end
  return root
end

--- A copy of a request's headers without its content type: what every
-- exchange of an upload carries (each sets its own content type).
function _M.base_headers(req)
  local h = {}
  for k, v in pairs(req.headers) do h[k] = v end
  h["content-type"] = nil
  return h
end

-- The service's credentials on universe check (gauth.universe), once per
-- exchange before any token is asked for.
local check_universe = require("gauth.universe").check
local function universe_check(op)
  return check_universe(op.svc, op.module, op.step)
end

--- A gauth.request exchange (`op`) for `treq` with the service's
-- credentials: headers `base_headers` + `extra`, no retries (the callers
-- that retry set `retries`, `deadline`, `decode`, `sleep`, `random`).
-- @tparam table svc the service's internal table
-- @tparam string module the module named in errors ("media", "batch")
-- @tparam string step
-- @tparam table treq `method`, `url`, `body`, `timeout`, `upload_file`,
--   `upload_offset`, `upload_length`, `download_file`
-- @tparam table base_headers
-- @tparam[opt] table extra headers over `base_headers`
-- @param http the transport
function _M.op_for(svc, module, step, treq, base_headers, extra, http)
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
local op_for = _M.op_for

--- Send one exchange of gauth.media through gauth.request's loop (https or
-- loopback only, the universe check, credentials, one refresh on 401),
-- without retries: the resumable and ranged protocols decide those
-- themselves. Arguments as for `op_for`, the module being "media".
-- @return res (any HTTP answer) | nil, msg, err
function _M.send(svc, step, treq, base_headers, extra, http)
  return request_send(op_for(svc, "media", step, treq, base_headers, extra, http))
end

--- Decode a 2xx answer as the request's method wants it: the raw text for
-- methods without a response schema, else the JSON (an empty table for
-- an empty body or a 204; the `data` inside for services that wrap it).
-- @tparam string module the module named in errors
-- @tparam string step
-- @tparam table spec the method's prepared spec (of gauth.discovery)
-- @tparam string uri the request's (redacted in errors)
-- @tparam table res the answer
-- @return the value | nil, msg, err
function _M.decode(module, step, spec, uri, res)
  local body = res.body or ""
  if spec.raw then return body end
  if body == "" or res.status == 204 then return {} end
  local v = json.decode(body)
  if v == nil then
    return errors.fail(module, step, "malformed JSON response",
                       { status = res.status, body = body, uri = redact(uri) })
  end
  local svc = spec.svc
  if svc and svc.data_wrapper and type(v) == "table" and v.data ~= nil then v = v.data end
  return v
end

return _M
