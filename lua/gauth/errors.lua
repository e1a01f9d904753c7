--- The one error object of gauth.
-- Every expected failure of a public gauth function returns
-- `nil, message, err`: `message` the string
-- `"gauth.<module>: <step>: <detail>"` (what `assert` and `ngx.log`
-- print), `err` one of these objects. Its fields are API; the text of its
-- message is not.
--
-- Fields (absent when they do not apply):
--
-- * `module`, `step`: where it failed ("service_account", "token request")
-- * `message`: the detail, on one line (text, not API)
-- * `status`: the HTTP status number of the answer that failed
-- * `retryable`: decided by `classify` (one rule for every request)
-- * `retry_after`: seconds, from a Retry-After header
-- * `reason`: Google's `error.errors[1].reason` ("rateLimitExceeded") only
-- * `google_status`: Google's `error.status` ("PERMISSION_DENIED")
-- * `details`: Google's `error.details` (else `error.errors`)
-- * `oauth_error`, `error_description`: a token endpoint's OAuth error
--   (RFC 6749 5.2: "invalid_grant", and its description)
-- * `http_reason`: the HTTP reason phrase ("Not Found")
-- * `kind`: gauth's own name for the failure where no HTTP answer says it
--   ("connect", "timeout", "tls", "tls_verify", "read", "max_body", "phase", ...)
-- * `uri` (queries with secrets redacted), `body`, `attempts`, `cause`
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
    -- the most telling of Google's codes, for people reading logs; the
    -- fields themselves are what programs read
    local code = e.reason or e.google_status or e.oauth_error or e.http_reason
    if code and code ~= "" then
      parts[#parts + 1] = " " .. tostring(code)
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

--- Return `nil, message, err` for an error wrapped from a lower layer
-- (`wrap`'s arguments): `errors.ret(errors.wrap(...))` in one call.
-- @return nil, string, error object
function _M.fail_with(module, step, cause, fields)
  return _M.ret(_M.wrap(module, step, cause, fields))
end

--- OAuth errors (RFC 6749 5.2 `error`, or its description) that say "try
-- again": google-auth's token-endpoint request retries these whatever the
-- status.
_M.RETRYABLE_OAUTH = { internal_failure = true, server_error = true,
                       temporarily_unavailable = true }

--- OAuth errors that no retry can fix, whatever the status.
_M.FINAL_OAUTH = { invalid_grant = true, invalid_scope = true,
                   invalid_client = true, unauthorized_client = true,
                   invalid_request = true, unsupported_grant_type = true,
                   access_denied = true }

--- Google's `error.errors[].reason` values of a 403 that a later attempt
-- may pass (google-api-python-client retries these).
_M.RETRYABLE_REASONS = { rateLimitExceeded = true, userRateLimitExceeded = true }

local RETRYABLE_OAUTH, FINAL_OAUTH = _M.RETRYABLE_OAUTH, _M.FINAL_OAUTH
local RETRYABLE_REASONS = _M.RETRYABLE_REASONS

--- The one rule of gauth for "is this failure worth another attempt?",
-- used by every request (token endpoints, the metadata server, IAM,
-- Discovery methods, media, batch). From the error's fields:
--
-- 1. an OAuth `oauth_error` no retry fixes (`FINAL_OAUTH`): no;
-- 2. HTTP 408, 429 and every 5xx: yes (Google's Node libraries retry
--    these for tokens and APIs alike; google-api-python-client every 5xx
--    and 429);
-- 3. a 403 whose `reason` is a rate limit (`RETRYABLE_REASONS`): yes
--    (google-api-python-client's `_should_retry_response`);
-- 4. an `oauth_error` or `error_description` that says "try again"
--    (`RETRYABLE_OAUTH`), at any status: yes (google-auth's token
--    endpoint rule);
-- 5. no HTTP status (the request never got an answer): the `retryable`
--    the transport gave (a refused connection or a timeout yes; a TLS
--    verification failure, a bad URL or an answer over `max_body` no);
-- 6. anything else: no.
-- @tparam table e an error object or its fields
-- @treturn boolean
function _M.classify(e)
  local oerr = e.oauth_error
  if oerr ~= nil and FINAL_OAUTH[oerr] then return false end
  local status = e.status
  if type(status) == "number" then
    if status == 408 or status == 429 or (status >= 500 and status <= 599) then
      return true
    end
    if status == 403 and e.reason ~= nil and RETRYABLE_REASONS[e.reason] then
      return true
    end
  end
  if (oerr ~= nil and RETRYABLE_OAUTH[oerr]) or
     (e.error_description ~= nil and RETRYABLE_OAUTH[e.error_description]) then
    return true
  end
  if status == nil then return e.retryable == true end
  return false
end

--- The value and the error object out of what a gauth call returned,
-- whichever shape it has (`v`, or `nil, msg, err`, or `nil, err`): for
-- gauth's own modules, which keep working with the object and give it
-- back with `ret`. A string from `gauth.core` comes back as it is.
-- @return v, err
function _M.pair(v, second, third)
  if v ~= nil and v ~= false then return v, second, third end
  if _M.is(third) then return v, third end
  return v, second
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

--- The error object for a non-2xx answer of a Google server, with the
-- fields of the vocabulary above that the answer carries: `status`,
-- `http_reason`, `reason` (Google's `error.errors[1].reason`),
-- `google_status` (`error.status`), `details`, or for OAuth's shape
-- `{"error": "invalid_grant", "error_description": ...}` `oauth_error`
-- and `error_description`; `message` (Google's `error.message` or the
-- OAuth description, on one line; the body as sent stays in `body`),
-- `uri` (redacted), `retryable` (`classify`) and `retry_after`.
-- @tparam string module
-- @tparam string step
-- @tparam table res the transport's answer (`status`, `headers`, `body`, `reason`)
-- @tparam[opt] string uri the request's URI
-- @tparam[opt] number now for a Retry-After date
-- @return the error object
function _M.from_response(module, step, res, uri, now)
  local status, body = res.status, res.body
  local fields = { status = status, body = body, uri = _M.redact_uri(uri) }
  if type(res.reason) == "string" and res.reason ~= "" then
    fields.http_reason = res.reason
  end
  local message
  local decoded = type(body) == "string" and body ~= "" and json_decode(body)
  if type(decoded) == "table" and decoded[1] ~= nil then decoded = decoded[1] end
  local e = type(decoded) == "table" and decoded.error
  if type(e) == "table" then
    if type(e.message) == "string" then message = e.message end
    local first = type(e.errors) == "table" and e.errors[1]
    if type(first) == "table" and type(first.reason) == "string" then
      fields.reason = first.reason
    end
    if type(e.status) == "string" then fields.google_status = e.status end
    fields.details = e.details or e.errors
  elseif type(e) == "string" then
    fields.oauth_error = e
    if type(decoded.error_description) == "string" then
      fields.error_description = decoded.error_description
      message = decoded.error_description
    end
  end
  message = message or fields.http_reason or ("HTTP " .. tostring(status))
  -- One line when printed: Google's messages may run over several.
  if find(message, "[\r\n]") then
    message = gsub(gsub(message, "%s*[\r\n]+%s*", " "), "^ +", "")
  end
  fields.retryable = _M.classify(fields)
  local ra = res.headers and res.headers["retry-after"]
  if ra ~= nil then
    -- loaded here: gauth.retry itself makes errors
    fields.retry_after = require("gauth.retry").parse_retry_after(ra, now)
  end
  return _M.new(module, step, message, fields)
end

--- `nil, message, err` for a non-2xx answer (`from_response`'s arguments).
-- @return nil, string, error object
function _M.fail_response(module, step, res, uri, now)
  return _M.ret(_M.from_response(module, step, res, uri, now))
end

_M.mt = mt

return _M
