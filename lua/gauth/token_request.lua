--- The token requests of the credentials: the one skeleton of a request
-- that gets (or uses) a credential, and what its answer means. Google's
-- OAuth 2.0 token endpoint (service accounts' JWT-bearer grant, the
-- refresh-token grant of authorized users and of external-account
-- authorized users), STS's token exchange (`gauth.sts`) and IAM
-- Credentials' methods (`gauth.impersonated`, `gauth.iam`) all send
-- through `send`, which sends through `gauth.request.send`, the one send
-- loop of gauth: one https-or-loopback rule, one per-attempt timeout within
-- the deadline, one classifier (`gauth.errors.classify`), one retry loop
-- (`gauth.retry`) under one default policy (`RETRY`). Internal to gauth;
-- `gauth.oauth` is its old name.
--
--     local entry, msg, err = token_request.send({
--       module = "authorized_user", url = uri, body = form, http = http,
--       policy = self._retry, timeout = self._timeout, now = self._clock,
--       what = "refresh", max_body = MAX_RESPONSE,
--     })
--
-- Every function fails with `nil, message, err` (`gauth.errors`).
-- Every error keeps the calling module's name (`module`) and the steps the
-- modules document: "token request" (transport failures, no time left),
-- "token response" (the answer). A 200 body holds a token: nothing of it
-- ever goes into an error.
-- @module gauth.token_request

local credentials = require "gauth.credentials"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local url_lib = require "gauth.lib.url"
local cjson = require "cjson.safe"

local type = type
local tostring = tostring
local require = require
local setmetatable = setmetatable
local sub = string.sub
local json_decode = cjson.decode
local classify = errors.classify
local gsub = string.gsub
local parse_retry_after = retry.parse_retry_after
local lifetime = credentials.lifetime

local _M = { _VERSION = "0.1.0" }

--- The retry policy of every token request (see `gauth.retry.call`): 3
-- attempts, backoff from 1 s doubling with jitter, Retry-After honoured,
-- all within 60 s. The types' `RETRY` tables are this one; their
-- `opts.retry` overrides fields of it (`gauth.retry.policy`), or `false`
-- for one attempt.
_M.RETRY = { attempts = 3, initial = 1, multiplier = 2, max_delay = 32,
             jitter = true, deadline = 60 }

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
  local scheme, host = url_lib.parse(url)
  if not scheme then
    return errors.fail(module, step, "not an absolute http(s) URL: "
      .. sub(tostring(url), 1, 200))
  end
  if scheme == "https" then return true end
  if scheme == "http" then
    if url_lib.is_loopback_host(host) then return true end
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


-- ------------------------------------------------------------------------
-- The skeleton

local request_send  -- gauth.request.send, loaded at first use (it loads gauth.http)

-- The source credentials of an IAM request as `gauth.request` applies
-- credentials: their bearer token alone (sources need only `token()`,
-- as documented), dropped on a 401.
local Bearer = {}
local bearer_mt = { __index = Bearer }

function Bearer:apply(headers)
  local tok, m, x = self.source:token()
  if not tok then return nil, m, x end
  headers.authorization = "Bearer " .. tok
  return true
end

function Bearer:invalidate()
  local source = self.source
  if type(source.invalidate) == "function" then source:invalidate() end
end

-- The error of an OAuth refusal, as the token-endpoint types word it.
local function oauth_refused(op, res, now)
  local fields, detail = _M.refusal(res, now, op.url)
  local message = _M.refusal_message(op.what or "request", fields, detail)
  local adjust = op.adjust
  if adjust then message = adjust(op, fields, res, now, message) end
  return errors.new(op.module, "token response", message, fields)
end

-- An access-token answer: the JSON object's cache entry.
local function access_accepted(op, res, now)
  local data, err = errors.pair(_M.decode(res, op.module, op.url))
  if not data then return nil, err end
  local entry
  entry, err = errors.pair(_M.access_entry(data, now, op.module, op.url))
  if not entry then return nil, err end
  local seen = op.seen
  if seen then seen(op, data) end
  return entry
end

-- `gauth.request`'s hooks: any answer but a 200 is a refusal.
local function refusal_of(op, res)
  return (op.refused or oauth_refused)(op, res, op.now())
end

local function decode_of(op, res)
  local now = op.now()
  if res.status ~= 200 then return nil, (op.refused or oauth_refused)(op, res, now) end
  return (op.accept or access_accepted)(op, res, now)
end

--- Send one token request: a POST through `gauth.request.send`, with no
-- redirects, the answer capped at `max_body`, retried under `policy`.
-- @tparam table op the request (the call's own: it is `gauth.request`'s op):
--
-- * `module`: named in errors; `step`: of the request (default "token
--   request": transport failures, no time left before the deadline)
-- * `url`, `body`, `headers` (default `FORM_HEADERS`; with `source`, a
--   table of the call's own: the token is written in it), `http` (the
--   transport), `max_body`, `timeout` (the credentials' own, per attempt;
--   else the transport's; a deadline shortens it)
-- * `policy`: the retry policy (`RETRY` with the caller's `opts.retry`);
--   none: one attempt
-- * `now`: the clock (a function) of the answer's entry and Retry-After
-- * `source`, `source_step`: credentials whose bearer token authorises the
--   request (IAM; a 401 drops it and sends once more at once); their
--   failure is an error of `source_step`, not retried
-- * `refused(op, res, now)` -> err: the error of an answer other than 200
--   (default: the OAuth refusal, step "token response", worded
--   "the token endpoint refused the <`what`>", then `adjust(op, fields,
--   res, now, message)` -> message when given)
-- * `accept(op, res, now)` -> value | nil, err: a 200 answer (default: its
--   access-token entry; `seen(op, data)` sees the decoded answer)
-- * `again(op, err)` -> body | nil: once, after the request failed, a
--   corrected body to send it again with (service accounts' clock skew),
--   within what is left of the policy's deadline
-- @return what `accept` made | nil, message, err
function _M.send(op)
  if not request_send then request_send = require("gauth.request").send end
  op.method = "POST"
  op.step = op.step or "token request"
  op.headers = op.headers or _M.FORM_HEADERS
  op.follow_redirects = false
  op.metrics = false
  op.decode, op.refusal = decode_of, refusal_of
  if not op.policy then op.retries = 0 end
  local source = op.source
  if source then
    op.credentials = setmetatable({ source = source }, bearer_mt)
    op.apply_step = op.source_step or "source credentials"
  end
  local again = op.again
  local started = again and op.now()
  local v, msg, err = request_send(op)
  if v ~= nil or not again then return v, msg, err end
  local body = again(op, err)
  if not body then return nil, msg, err end
  local policy = op.policy
  if policy and policy.deadline then
    -- One deadline for both sends.
    local left = policy.deadline - (op.now() - started)
    if left <= 0 then return nil, msg, err end
    policy = retry.policy(policy)
    policy.deadline = left
  end
  op.body, op.policy, op.again, op.refreshed = body, policy, nil, nil
  return request_send(op)
end

return _M
