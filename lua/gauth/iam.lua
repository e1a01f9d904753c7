--- A client of the IAM Credentials API for one service account: signs
-- bytes (`signBlob`) and JWTs (`signJwt`) and issues ID tokens
-- (`generateIdToken`), asked with the token of credentials that may act
-- as that account (role "Service Account Token Creator", or the account
-- itself on Compute Engine).
--
--     local iam = require "gauth.iam"
--     local client = iam.new({ source = creds, email = "sa@p.iam.gserviceaccount.com" })
--     local sig, msg, err = client:sign_blob("bytes")
--
-- This is the signer of every credentials type without a private key of
-- its own (Compute Engine, impersonated, and external accounts with
-- impersonation): they make one client and answer `sign_bytes`,
-- `sign_jwt` and `signer_email` through it.
--
-- The endpoint is `opts.endpoint` (a base URL), else the
-- `GAUTH_IAM_ENDPOINT` environment variable (tests, emulators), else
-- `https://iamcredentials.<universe_domain>`. The source's token goes only
-- over https, or http to a loopback host.
--
-- Errors (`nil, msg, err`, module "iam"): step "options" (the account's
-- email could not be learnt: the source's error is `cause`), "endpoint",
-- "source credentials", "request" (transport), "response" (the API's
-- refusal: `status`, `google_status`, `reason`, `http_reason`, `details`,
-- `account`, `permission`, `method`, `retryable`, `retry_after`). A 403 or 404 says which account and which
-- permission (`iam.serviceAccounts.signBlob`, ...) it is about. 5xx, 429
-- and transport failures are retried (`RETRY`); a 401 once, with a new
-- source token. No signature, token or signed payload is ever in an error.
-- @module gauth.iam

local errors = require "gauth.errors"
local retry = require "gauth.retry"
local token_request = require "gauth.token_request"
local core = require "gauth.core"
local cjson = require "cjson.safe"
local universe = require "gauth.universe"

local type = type
local ipairs = ipairs
local tostring = tostring
local error = error
local require = require
local setmetatable = setmetatable
local find = string.find
local gsub = string.gsub

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

--- The environment variable that replaces the endpoint (a base URL).
_M.ENDPOINT_VAR = "GAUTH_IAM_ENDPOINT"

--- Google's universe, whose IAM Credentials host is
-- `iamcredentials.googleapis.com`.
_M.DEFAULT_UNIVERSE = universe.DEFAULT

--- The permission each method needs on the account (what a 403 names).
_M.PERMISSIONS = {
  signBlob = "iam.serviceAccounts.signBlob",
  signJwt = "iam.serviceAccounts.signJwt",
  generateIdToken = "iam.serviceAccounts.getOpenIdToken",
  generateAccessToken = "iam.serviceAccounts.getAccessToken",
}

--- Retry policy: `gauth.token_request.RETRY`, the one table of every
-- token request (5xx, 429, transport errors).
_M.RETRY = token_request.RETRY

_M.MAX_RESPONSE = 256 * 1024

local DELEGATE_PREFIX = "projects/-/serviceAccounts/"

local function fail(step, message, fields)
  return errors.fail("iam", step, message, fields)
end

-- An email or unique id: nothing that changes the URL's path.
local function valid_account(p)
  return type(p) == "string" and find(p, "^[%w@._+-]+$") ~= nil
end
_M.valid_account = valid_account

--- A client for one account.
-- @tparam table opts `source` (credentials with `token()`; required),
--   `email` (the account; or `email_source`, a function returning it or
--   `nil, msg, err`, called once, when first needed: the metadata server's
--   answer), `delegates` (emails or `projects/-/serviceAccounts/<email>`),
--   `universe_domain` (a string, or a function returning one or
--   `nil, msg, err`; default "googleapis.com"), `endpoint` (base URL),
--   `env` (a table or function standing in for the environment), `http`,
--   `ca_file`, `timeout`, `retry` (fields over `RETRY`, or false), `now`
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   (a clock function, for Retry-After dates)
-- @return the client (raises on a wrong argument)
function _M.new(opts)
  if type(opts) ~= "table" then error("gauth.iam: new: opts must be a table", 2) end
  local source = opts.source
  if type(source) ~= "table" or type(source.token) ~= "function" then
    error("gauth.iam: opts.source must be credentials (with :token)", 2)
  end
  local email, email_source = opts.email, opts.email_source
  if email ~= nil and not valid_account(email) then
    error("gauth.iam: opts.email must be a service account email", 2)
  end
  if email == nil and type(email_source) ~= "function" then
    error("gauth.iam: opts.email or opts.email_source is required", 2)
  end
  local delegates
  if opts.delegates ~= nil then
    if type(opts.delegates) ~= "table" then error("gauth.iam: opts.delegates must be an array", 2) end
    delegates = {}
    for i, d in ipairs(opts.delegates) do
      if type(d) ~= "string" or d == "" then
        error("gauth.iam: opts.delegates[" .. i .. "] must be a non-empty string", 2)
      end
      if not find(d, "/", 1, true) then
        if not valid_account(d) then error("gauth.iam: opts.delegates[" .. i .. "] is not an email", 2) end
        d = DELEGATE_PREFIX .. d
      end
      delegates[i] = d
    end
    if #delegates == 0 then delegates = nil end
  end
  local ud = opts.universe_domain
  if ud ~= nil and type(ud) ~= "function" and not universe.is_domain(ud) then
    error("gauth.iam: opts.universe_domain must be a domain name or a function", 2)
  end
  if opts.endpoint ~= nil and (type(opts.endpoint) ~= "string" or opts.endpoint == "") then
    error("gauth.iam: opts.endpoint must be a non-empty string", 2)
  end
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then error("gauth.iam: opts.retry must be a table or false", 2) end
  local endpoint = opts.endpoint or require("gauth.metadata").getenv_for(opts)(_M.ENDPOINT_VAR)
  local shared = require("gauth.credentials").transport_opts(opts, "iam", 3)
  return setmetatable({
    source = source,
    _email = email,
    _email_source = email_source,
    delegates = delegates,
    _universe = ud,
    _endpoint = endpoint,
    _retry = policy,
    _clock = opts.now or require("gauth.lib.time").now,
    _timeout = opts.timeout,
    _shared = shared,
  }, mt)
end

--- The account's email: given, or asked of `email_source` once.
-- @return email | nil, msg, err
function _M:email()
  local e = self._email
  if e then return e end
  local v, m, x = self._email_source()
  if not v then
    local cause = errors.of(m, x)
    return fail("options", "cannot learn the service account's email: " .. tostring(cause),
                { cause = cause, retryable = cause.retryable })
  end
  if not valid_account(v) then
    return fail("options", "the service account's email is not an email: "
                .. tostring(v):sub(1, 80))
  end
  self._email = v
  return v
end

--- The base URL of the API.
-- @return URL | nil, msg, err
function _M:endpoint()
  if self._endpoint then return (gsub(self._endpoint, "/+$", "")) end
  local ud = self._universe
  if type(ud) == "function" then
    local v, m, x = ud()
    if not v then
      local cause = errors.of(m, x)
      return fail("endpoint", "cannot learn the universe domain: " .. tostring(cause),
                  { cause = cause })
    end
    ud = v
  end
  return "https://iamcredentials." .. (ud or _M.DEFAULT_UNIVERSE)
end

-- The API's refusal. A first 401 does not come here: gauth.request drops
-- the source's token and sends once more with a new one.
local function refusal(op, res, now)
  local status = res.status
  local data = type(res.body) == "string" and cjson.decode(res.body) or nil
  local e = type(data) == "table" and type(data.error) == "table" and data.error or nil
  local method, email = op.iam_method, op.account
  local permission = _M.PERMISSIONS[method]
  local msg
  if status == 403 then
    msg = "permission " .. permission .. " denied on service account " .. email
          .. " (the caller needs it, e.g. through roles/iam.serviceAccountTokenCreator)"
  elseif status == 404 then
    msg = "service account " .. email .. " not found (or the caller lacks "
          .. permission .. " on it)"
  else
    msg = method .. " for " .. email .. " refused"
  end
  if e and type(e.message) == "string" then
    msg = msg .. ": " .. gsub(e.message, "%s*[\r\n]+%s*", " ")
  end
  -- Google's error fields (status, reason, google_status, http_reason,
  -- details) and retryable by the one rule (gauth.errors.classify).
  local err = errors.from_response("iam", "response", res, nil, now)
  err.message, err.body = msg, nil
  err.account, err.permission, err.method = email, permission, method
  return err
end

-- A 200 answer: its JSON object.
local function answer(op, res)
  local data = cjson.decode(res.body)
  if type(data) ~= "table" then
    return nil, errors.new("iam", "response", op.iam_method .. " answered 200 without a JSON object",
                           { retryable = false, method = op.iam_method, account = op.account })
  end
  return data
end

--- Call `method` (signBlob, signJwt, generateIdToken, generateAccessToken)
-- on the account with the request object `req` (delegates added).
-- @return the decoded answer | nil, msg, err
function _M:call(method, req)
  if not _M.PERMISSIONS[method] then error("gauth.iam: unknown method " .. tostring(method), 2) end
  local email, m, x = self:email()
  if not email then return nil, m, x end
  local base
  base, m, x = self:endpoint()
  if not base then return nil, m, x end
  local url = base .. "/v1/projects/-/serviceAccounts/" .. email .. ":" .. method
  local ok, umsg, uerr = token_request.check_url(url, "iam", "endpoint", "a token")
  if not ok then return nil, umsg, uerr end
  local http, hmsg, herr = token_request.transport(self._shared, "iam")
  if not http then return errors.ret(errors.of(hmsg, herr)) end
  if self.delegates then req.delegates = self.delegates end
  -- The source's bearer token authorises it ("source credentials" when it
  -- cannot be had: the source retried already).
  return token_request.send({
    module = "iam", step = "request", url = url, body = cjson.encode(req), http = http,
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    source = self.source, max_body = _M.MAX_RESPONSE, timeout = self._timeout,
    policy = self._retry, now = self._clock, refused = refusal, accept = answer,
    iam_method = method, account = email,
  })
end

--- Sign bytes with the account's Google-managed key (RSA-SHA256).
-- @tparam string bytes
-- @return raw signature bytes, key id | nil, msg, err
function _M:sign_blob(bytes)
  if type(bytes) ~= "string" then error("gauth.iam: sign_blob: bytes must be a string", 2) end
  local data, m, x = self:call("signBlob", { payload = core.b64_encode(bytes) })
  if not data then return nil, m, x end
  local sig = type(data.signedBlob) == "string" and core.b64_decode(data.signedBlob)
  if not sig or sig == "" then
    return fail("response", "signBlob answered without a base64 signedBlob",
                { method = "signBlob", account = self._email, retryable = false })
  end
  return sig, type(data.keyId) == "string" and data.keyId or nil
end

--- Sign a JWT with the account's Google-managed key: IAM sets the header
-- (RS256, its key id).
-- @tparam table claims JSON-encodable claims
-- @return the signed JWT, key id | nil, msg, err
function _M:sign_jwt(claims)
  if type(claims) ~= "table" then error("gauth.iam: sign_jwt: claims must be a table", 2) end
  local payload = cjson.encode(claims)
  if not payload then error("gauth.iam: sign_jwt: claims are not JSON-encodable", 2) end
  local data, m, x = self:call("signJwt", { payload = payload })
  if not data then return nil, m, x end
  if type(data.signedJwt) ~= "string" or data.signedJwt == "" then
    return fail("response", "signJwt answered without signedJwt",
                { method = "signJwt", account = self._email, retryable = false })
  end
  return data.signedJwt, type(data.keyId) == "string" and data.keyId or nil
end

--- A Google-signed ID token of the account for `audience`.
-- @tparam string audience
-- @tparam[opt] boolean include_email add the `email` and `email_verified` claims
-- @return the ID token | nil, msg, err
function _M:generate_id_token(audience, include_email)
  if type(audience) ~= "string" or audience == "" then
    error("gauth.iam: generate_id_token: audience must be a non-empty string", 2)
  end
  local data, m, x = self:call("generateIdToken",
    { audience = audience, includeEmail = include_email and true or false })
  if not data then return nil, m, x end
  if type(data.token) ~= "string" or data.token == "" then
    return fail("response", "generateIdToken answered without a token",
                { method = "generateIdToken", account = self._email, retryable = false })
  end
  return data.token
end

return _M
