--- The token request of credentials that POST for their tokens: Google's
-- OAuth 2.0 token endpoint (service accounts' JWT-bearer grant, authorized
-- users' refresh-token grant), and for the request alone IAM Credentials'
-- `generateAccessToken` (impersonated credentials). Internal to gauth.
--
-- One attempt, as `gauth.service_account` and `gauth.authorized_user`
-- make it inside `gauth.retry.call`:
--
--     local ok, msg, err = oauth.check_url(uri, module, "token_uri", "an assertion")
--     local timeout, tmsg, terr = oauth.attempt_timeout(self, http, remaining, module, uri)
--     local res, rmsg, rerr = oauth.post(http, module, uri, oauth.FORM_HEADERS, body,
--                                        timeout, max_body)
--     if res.status ~= 200 then
--       local fields, detail = oauth.refusal(res, now, uri)
--       return errors.fail(module, "token response",
--                          oauth.refusal_message("request", fields, detail), fields)
--     end
--     local data, dmsg, derr = oauth.decode(res, module, uri)
--     return oauth.access_entry(data, now, module, uri)
--
-- Every function fails with `nil, message, err` (`gauth.errors`).
-- Every error keeps the calling module's name (`module`) and the steps the
-- modules document: "token request" (transport failures, no time left),
-- "token response" (the answer). A 200 body holds a token: nothing of it
-- ever goes into an error.
-- @module gauth.oauth

local credentials = require "gauth.credentials"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local util = require "gauth.util"
local cjson = require "cjson.safe"

local type = type
local tostring = tostring
local require = require
local sub = string.sub
local json_decode = cjson.decode
local classify = errors.classify
local gsub = string.gsub
local parse_retry_after = retry.parse_retry_after
local lifetime = credentials.lifetime

local _M = { _VERSION = "0.1.0" }

--- The headers of a form POST to a token endpoint. Never changed by a
-- transport: one table serves every request.
_M.FORM_HEADERS = {
  ["content-type"] = "application/x-www-form-urlencoded",
  accept = "application/json",
}


--- Check that an URL may receive a secret: https, or http to a loopback
-- host (tests, local emulators). Nothing is sent otherwise.
-- @tparam string url
-- @tparam string module the module named in the error
-- @tparam string step e.g. "token_uri", "endpoint"
-- @tparam string what the secret, for the message: "an assertion", ...
-- @return true | nil, message, err
function _M.check_url(url, module, step, what)
  local scheme, host = util.parse_url(url)
  if not scheme then
    return errors.fail(module, step, "not an absolute http(s) URL: "
      .. sub(tostring(url), 1, 200))
  end
  if scheme == "https" then return true end
  if scheme == "http" then
    if util.is_loopback_host(host) then return true end
    return errors.fail(module, step, "refusing to send " .. what
      .. " in clear text to " .. host .. " (https is required except for a loopback host)",
      { uri = url })
  end
  return errors.fail(module, step, "unsupported scheme " .. scheme, { uri = url })
end

--- The transport of credentials whose `_shared` table (kept by every copy
-- of them) holds `http`, `ca_file`, `timeout`, `proxy` and `no_proxy`
-- from their options: the
-- given transport; else one of their own, made once, for their own CA
-- bundle or timeout; else the process-wide one (not stored, so that
-- `gauth.http.set_default()` applies to existing credentials).
-- @tparam table shared
-- @tparam string module the module named in the error
-- @return transport | nil, message, err
function _M.transport(shared, module)
  local http = shared.http
  if http then return http end
  if shared.ca_file or shared.timeout or shared.proxy ~= nil or shared.no_proxy
      or shared.client_cert or shared.client_key then
    local e2, e3
    -- client_cert/client_key: mutual TLS (an mTLS token endpoint).
    http, e2, e3 = require("gauth.http").new({ ca_file = shared.ca_file,
                                               timeout = shared.timeout,
                                               proxy = shared.proxy,
                                               no_proxy = shared.no_proxy,
                                               client_cert = shared.client_cert,
                                               client_key = shared.client_key })
    if not http then
      return errors.fail_with(module, "token request", errors.of(e2, e3, "http", "new"))
    end
    shared.http = http
    return http
  end
  return require("gauth.http").default()
end

--- The timeout of one attempt: the seconds `remaining` before the retry
-- policy's deadline, capped by the credentials' own timeout (`_timeout`)
-- or else the transport's.
-- @tparam table self the credentials
-- @tparam table http the transport
-- @param remaining seconds left (nil: no deadline)
-- @tparam string module
-- @tparam string uri for the error
-- @return timeout (nil without a deadline) | nil, message, err when too little time
--   is left for an attempt
function _M.attempt_timeout(self, http, remaining, module, uri)
  local timeout = remaining
  if timeout then
    if timeout < 0.05 then
      return errors.fail(module, "token request", "no time left before the deadline",
                             { retryable = false, uri = uri })
    end
    local cap = self._timeout or (type(http.timeout) == "number" and http.timeout)
    if cap and cap < timeout then timeout = cap end
  end
  return timeout
end

--- POST `body` to `url`: no redirects (a secret never follows one), the
-- answer capped at `max_body` bytes.
-- @return res | nil, message, err (the transport's, as a "token request" error of
--   `module` with `uri`; an answer over `max_body` is not retryable)
function _M.post(http, module, url, headers, body, timeout, max_body)
  local res, e2, e3 = http:request({
    method = "POST", url = url, headers = headers, body = body,
    timeout = timeout, max_body = max_body, follow_redirects = false,
  })
  if not res then
    local err = errors.of(e2, e3, "http", "request")
    local fields = { uri = url }
    if err.too_large or err.kind == "too_large" then fields.retryable = false end
    return errors.fail_with(module, "token request", err, fields)
  end
  return res
end

--- What a token endpoint's refusal (an answer other than 200) says, as the
-- fields of an error: `status`, `http_reason`, `oauth_error` and
-- `error_description` (OAuth's `{ error=, error_description= }`), or for
-- Google's API error shape `{ error = { status=, message= } }` seen from
-- some front ends `google_status` and `reason`; `retryable` (the one rule,
-- `gauth.errors.classify`: one rule for every grant, as google-auth's
-- token-endpoint request retries the JWT-bearer and the refresh-token
-- grants alike), `retry_after`, `uri`.
-- @tparam table res the answer
-- @tparam number now for a Retry-After date
-- @tparam string uri
-- @return fields (a new table), the detail for the message (Google's
--   message when the answer had the API shape) or nil
function _M.refusal(res, now, uri)
  local status, body = res.status, res.body
  local data = type(body) == "string" and json_decode(body) or nil
  local fields = {
    status = status, uri = uri,
    http_reason = type(res.reason) == "string" and res.reason ~= "" and res.reason or nil,
    retry_after = parse_retry_after(res.headers and res.headers["retry-after"], now),
  }
  local detail
  if type(data) == "table" then
    if type(data.error) == "string" then
      fields.oauth_error = data.error
      fields.error_description = type(data.error_description) == "string"
                                 and data.error_description or nil
    elseif type(data.error) == "table" then
      local e = data.error
      fields.google_status = type(e.status) == "string" and e.status or nil
      local first = type(e.errors) == "table" and e.errors[1]
      if type(first) == "table" and type(first.reason) == "string" then
        fields.reason = first.reason
      end
      detail = type(e.message) == "string" and e.message or nil
    end
  end
  fields.retryable = classify(fields)
  return fields, detail
end

--- The message of a refusal: "the token endpoint refused the <what>",
-- then the OAuth error and its description when there are.
-- @tparam string what "request", "refresh"
-- @tparam table fields from `refusal`
-- @tparam[opt] string detail `refusal`'s second value
-- @return string
function _M.refusal_message(what, fields, detail)
  local msg = "the token endpoint refused the " .. what
  local oerr, desc = fields.oauth_error, fields.error_description
  if oerr then
    msg = msg .. ": " .. oerr .. (desc and (": " .. desc) or "")
  elseif fields.google_status or detail then
    msg = msg .. ": " .. (fields.google_status or "")
        .. ((fields.google_status and detail) and ": " or "") .. (detail or "")
  end
  return (gsub(msg, "%s*[\r\n]+%s*", " "))
end

--- The JSON object of a 200 answer.
-- @return table | nil, message, err ("token response")
function _M.decode(res, module, uri)
  local data = json_decode(res.body)
  if type(data) ~= "table" then
    return errors.fail(module, "token response",
      "the token endpoint's answer is not a JSON object",
      { status = res.status, retryable = false, uri = uri })
  end
  return data
end

--- The cache entry of a decoded access-token answer: `access_token`,
-- `expires_at` (`now` + `expires_in`, 3600 s when absent), and the
-- `id_token`, `token_type` and `scope` that came with it.
-- @return entry | nil, message, err ("token response")
function _M.access_entry(data, now, module, uri)
  local tok = data.access_token
  if type(tok) ~= "string" or tok == "" then
    return errors.fail(module, "token response",
      "no access_token in the token endpoint's answer",
      { status = 200, retryable = false, uri = uri })
  end
  local life = lifetime(data.expires_in)
  if not life then
    return errors.fail(module, "token response", "expires_in is not a positive number",
                           { status = 200, retryable = false, uri = uri })
  end
  return {
    access_token = tok,
    expires_at = now + life,
    id_token = type(data.id_token) == "string" and data.id_token or nil,
    token_type = type(data.token_type) == "string" and data.token_type or nil,
    scope = type(data.scope) == "string" and data.scope or nil,
  }
end

return _M
