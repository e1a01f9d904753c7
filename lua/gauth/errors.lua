--- The one error object of gauth.
-- Every expected failure in gauth returns `nil, err` where `err` is one of
-- these. Its fields are API; the text of its message is not.
-- @module gauth.errors

local setmetatable = setmetatable
local getmetatable = getmetatable
local tostring = tostring
local type = type
local pairs = pairs
local concat = table.concat
local json_decode = require("cjson.safe").decode

local _M = { _VERSION = "0.1.0" }

local mt = {}
mt.__index = mt

local function render(e)
  local parts = { "gauth.", tostring(e.module), ": ", tostring(e.step), ": ",
                  tostring(e.message) }
  if e.status then
    parts[#parts + 1] = " (HTTP " .. tostring(e.status)
    if e.reason and e.reason ~= "" then
      parts[#parts + 1] = " " .. tostring(e.reason)
    end
    parts[#parts + 1] = ")"
  end
  if e.uri then
    parts[#parts + 1] = " [" .. tostring(e.uri) .. "]"
  end
  return concat(parts)
end

mt.__tostring = render

-- So that `"failed: " .. err` works as it does with string errors.
mt.__concat = function(a, b)
  return tostring(a) .. tostring(b)
end

--- Make an error object.
-- @tparam string module short module name, e.g. "service_account"
-- @tparam string step what was being done, e.g. "token exchange"
-- @tparam string message what went wrong (never a secret)
-- @tparam[opt] table fields extra fields (`status`, `retryable`, ...)
-- @return the error object
function _M.new(module, step, message, fields)
  local e = {}
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  e.module, e.step, e.message = module, step, message
  return setmetatable(e, mt)
end

--- Is `x` a gauth error object?
function _M.is(x)
  return type(x) == "table" and getmetatable(x) == mt
end

--- Wrap an error from a lower layer (a string from gauth.core, or another
-- error object) under a new module/step, keeping its fields.
-- @return a new error object
function _M.wrap(module, step, err, fields)
  if _M.is(err) then
    local e = _M.new(module, step, tostring(err.step) .. ": " .. tostring(err.message), err)
    e.module, e.step = module, step
    e.cause = err
    if fields then for k, v in pairs(fields) do e[k] = v end end
    return e
  end
  local msg = tostring(err)
  -- "gauth.core: step: detail" -> keep only the detail
  msg = msg:gsub("^gauth%.[%w_]+: ", "")
  return _M.new(module, step, msg, fields)
end

--- The public shape of an expected failure: `nil, message, err`.
-- `message` is the string `"gauth.<module>: <step>: <detail>"` (what
-- `assert` and `ngx.log` print), `err` the error object with the fields.
-- @usage return errors.fail("storage", "options", "bucket is required")
-- @return nil, string, error object
function _M.fail(module, step, message, fields)
  local e = _M.new(module, step, message, fields)
  return nil, render(e), e
end

--- Return an error object (or a `gauth.core` string, wrapped under
-- `module`/`step` when given) in the public shape `nil, message, err`.
-- @return nil, string, error object
function _M.ret(err, module, step)
  if not _M.is(err) then
    err = _M.wrap(module or "core", step or "call", err)
  end
  return nil, render(err), err
end

--- The error object out of what a gauth call returned after its `nil`,
-- whichever shape it has: `nil, msg, err`, `nil, err` (an object), or
-- `nil, "string"` (from `gauth.core`, wrapped under `module`/`step`).
-- @return error object
function _M.of(second, third, module, step)
  if _M.is(third) then return third end
  if _M.is(second) then return second end
  return _M.wrap(module or "core", step or "call", second)
end

local gsub, find = string.gsub, string.find

--- Hide the secrets a URI may carry in its query (an API key, a token, a
-- resumable upload's id) before it goes into an error.
-- @tparam string uri
-- @treturn string the URI with those values replaced by REDACTED
function _M.redact_uri(uri)
  if type(uri) ~= "string" then return uri end
  uri = gsub(uri, "([?&]key=)[^&#]*", "%1REDACTED")
  uri = gsub(uri, "([?&]access_token=)[^&#]*", "%1REDACTED")
  uri = gsub(uri, "([?&]oauth_token=)[^&#]*", "%1REDACTED")
  uri = gsub(uri, "([?&]upload_id=)[^&#]*", "%1REDACTED")
  return uri
end

--- The error object for a non-2xx answer of a Google API: `status`,
-- `reason` (Google's `error.errors[1].reason`, else `error.status`, else an
-- OAuth `error`), `message` (Google's `error.message`, on one line; the body
-- as sent stays in `body`), `details`, `body`, `uri` (redacted),
-- `retryable` (5xx, 408, 429, and 403 rate limits) and `retry_after`.
-- @tparam string module
-- @tparam string step
-- @tparam table res the transport's answer (`status`, `headers`, `body`, `reason`)
-- @tparam[opt] string uri the request's URI
-- @return the error object
function _M.from_response(module, step, res, uri)
  local status, body = res.status, res.body
  local fields = { status = status, body = body, uri = _M.redact_uri(uri) }
  local message
  local decoded = type(body) == "string" and body ~= "" and json_decode(body)
  if type(decoded) == "table" and decoded[1] ~= nil then decoded = decoded[1] end
  local e = type(decoded) == "table" and decoded.error
  if type(e) == "table" then
    if type(e.message) == "string" then message = e.message end
    local first = type(e.errors) == "table" and e.errors[1]
    if type(first) == "table" and type(first.reason) == "string" then
      fields.reason = first.reason
    elseif type(e.status) == "string" then
      fields.reason = e.status
    end
    fields.details = e.details or e.errors
  elseif type(e) == "string" then
    -- OAuth-style {"error": "invalid_grant", "error_description": ...}
    fields.reason = e
    if type(decoded.error_description) == "string" then
      message = decoded.error_description
    end
  end
  message = message or (res.reason and res.reason ~= "" and res.reason)
            or ("HTTP " .. tostring(status))
  -- One line when printed: Google's messages may run over several.
  if find(message, "[\r\n]") then
    message = gsub(gsub(message, "%s*[\r\n]+%s*", " "), "^ +", "")
  end
  local retryable = status >= 500 or status == 429 or status == 408
  if status == 403 then
    retryable = fields.reason == "rateLimitExceeded" or fields.reason == "userRateLimitExceeded"
  end
  fields.retryable = retryable
  local ra = res.headers and res.headers["retry-after"]
  if ra ~= nil then
    -- loaded here: gauth.retry itself makes errors
    fields.retry_after = require("gauth.retry").parse_retry_after(ra)
  end
  return _M.new(module, step, message, fields)
end

_M.mt = mt

return _M
