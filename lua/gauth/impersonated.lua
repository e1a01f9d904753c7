--- Impersonated credentials: act as another service account (the target)
-- with tokens from the IAM Credentials API's `generateAccessToken`, asked
-- for with the token of source credentials that may act as it (role
-- "Service Account Token Creator"), possibly through a chain of
-- delegates.
--
--     local imp = require "gauth.impersonated"
--     local creds = assert(imp.new({
--       source = assert(gauth.default()),
--       target_principal = "reader@my-project.iam.gserviceaccount.com",
--       scopes = { "https://www.googleapis.com/auth/devstorage.read_only" },
--       lifetime = 600,
--     }))
--
-- Also from files of type `impersonated_service_account` (what
-- `gcloud auth application-default login --impersonate-service-account`
-- writes): `from_file`, `from_info`, and `gauth.default()`.
--
-- The endpoint is `opts.iam_endpoint`, else the `GAUTH_IAM_ENDPOINT`
-- environment variable (a base URL such as `http://127.0.0.1:8080`: tests,
-- emulators), else the file's `service_account_impersonation_url`, else
-- `https://iamcredentials.googleapis.com`. The source's token is sent only
-- over https, or http to a loopback host.
--
-- Errors are `gauth.errors` objects with module "impersonated"; steps
-- "key file", "endpoint", "source credentials" (the source's error as
-- `cause`), "token request", "token response" (`status`, `reason` = the
-- API's status name, `retryable`, `retry_after`).
-- @module gauth.impersonated

local credentials = require "gauth.credentials"
local token_request = require "gauth.token_request"
local metadata = require "gauth.metadata"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local json = require "gauth.lib.json"
local seam = require "gauth.lib.seam"
local cjson = require "cjson.safe"
local universe_rule = require "gauth.universe"

local type = type
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local error = error
local require = require
local setmetatable = setmetatable
local getmetatable = getmetatable
local find = string.find
local sub = string.sub
local match = string.match
local format = string.format
local concat = table.concat

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "impersonated" })
local mt = credentials.metatable(_M)

--- The IAM Credentials API.
_M.DEFAULT_IAM_ENDPOINT = "https://iamcredentials.googleapis.com"
local DEFAULT_UNIVERSE = universe_rule.DEFAULT

--- The environment variable that replaces the endpoint (a base URL).
_M.ENDPOINT_VAR = "GAUTH_IAM_ENDPOINT"

--- Scopes of the target's tokens when none are given (and of a service
-- account source, which needs a token that may call IAM Credentials).
_M.DEFAULT_SCOPES = { "https://www.googleapis.com/auth/cloud-platform" }

--- Lifetime of the target's tokens (seconds) when none is given; longer
-- than 3600 needs an organisation policy, and 43200 is the most there is.
_M.DEFAULT_LIFETIME = 3600
_M.MAX_LIFETIME = 43200

--- Retry policy of the request: `gauth.token_request.RETRY`, the one
-- table of every token request.
_M.RETRY = token_request.RETRY

_M.MAX_RESPONSE = 256 * 1024

local fail, arg_error = credentials.error_helpers("impersonated")
local normalise_scopes = credentials.normalise_scopes

local function copy_list(l)
  local o = {}
  for i, v in ipairs(l) do o[i] = v end
  return o
end

-- An email or unique id: nothing that changes the URL's path.
local function valid_principal(p)
  return type(p) == "string" and find(p, "^[%w@._+-]+$") ~= nil
end

local DELEGATE_PREFIX = "projects/-/serviceAccounts/"

local function normalise_delegates(d)
  if d == nil or d == json.null then return nil end
  if type(d) ~= "table" then arg_error("delegates must be an array of service account emails") end
  local list = {}
  for i, v in ipairs(d) do
    if type(v) ~= "string" or v == "" then
      arg_error("delegates[" .. i .. "] must be a non-empty string")
    end
    -- The API wants resource names; an email alone is made into one.
    if not find(v, "/", 1, true) then
      if not valid_principal(v) then arg_error("delegates[" .. i .. "] is not an email") end
      v = DELEGATE_PREFIX .. v
    end
    list[i] = v
  end
  if #list == 0 then return nil end
  return list
end

--- Check that an endpoint may receive the source's token: https, or http
-- to a loopback host.
-- @return true | nil, message, err
function _M.check_endpoint(url)
  return token_request.check_url(url, "impersonated", "endpoint", "a token")
end

local function endpoint_url(base, target)
  base = base:gsub("/+$", "")
  return base .. "/v1/projects/-/serviceAccounts/" .. target .. ":generateAccessToken"
end

--- Impersonated credentials: `impersonated.new{ source = , target_principal = }`
-- (the old name `credentials` stays an alias).
-- @tparam table opts `source` (credentials whose token may act as the
--   target; required), `target_principal` (the target's email; required),
--   `scopes` (array or space-separated string; default `DEFAULT_SCOPES`),
--   `delegates` (emails or `projects/-/serviceAccounts/<email>` names: the
--   chain from source to target), `lifetime` (seconds, 1..43200, default
--   3600), `iam_endpoint` (base URL; else `GAUTH_IAM_ENDPOINT`, else
--   `https://iamcredentials.<universe>`, the source's `universe_domain`),
--   `impersonation_url` (the full `...:generateAccessToken`
--   URL, as in key files; below the two others), `env`, `quota_project`,
--   `http`, `ca_file`, `timeout`, `retry` (fields over `RETRY`, or false),
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   `cache`, `now`
-- @return credentials | nil, message, err (an endpoint that would get the token in
--   clear text)
function _M.new(opts)
  if type(opts) ~= "table" then
    error("gauth.impersonated: new: opts with source and target_principal required", 2)
  end
  local source = opts.source
  if type(source) ~= "table" or type(source.token) ~= "function" then
    error("gauth.impersonated: opts.source must be credentials (with :token)", 2)
  end
  if not valid_principal(opts.target_principal) then
    error("gauth.impersonated: opts.target_principal must be a service account email", 2)
  end
  local lifetime = opts.lifetime or _M.DEFAULT_LIFETIME
  if type(lifetime) ~= "number" or lifetime % 1 ~= 0 or lifetime < 1
      or lifetime > _M.MAX_LIFETIME then
    error("gauth.impersonated: lifetime must be a whole number of seconds in 1.."
          .. _M.MAX_LIFETIME, 2)
  end
  local shared = credentials.transport_opts(opts, "impersonated", 3)
  for _, k in ipairs({ "iam_endpoint", "impersonation_url" }) do
    if opts[k] ~= nil and (type(opts[k]) ~= "string" or opts[k] == "") then
      error("gauth.impersonated: " .. k .. " must be a non-empty string", 2)
    end
  end
  local target = opts.target_principal
  local base = opts.iam_endpoint or metadata.getenv_for(opts)(_M.ENDPOINT_VAR)
  -- The source's universe (as google-auth and Node's Impersonated take it):
  -- IAM Credentials at iamcredentials.<universe> unless a URL is given.
  -- A source whose universe is known only to the metadata server counts
  -- as googleapis.com here.
  local universe = type(source.universe_domain) == "string" and source.universe_domain
    or DEFAULT_UNIVERSE
  local url
  if base then
    url = endpoint_url(base, target)
  else
    url = opts.impersonation_url or endpoint_url(universe == DEFAULT_UNIVERSE
      and _M.DEFAULT_IAM_ENDPOINT or ("https://iamcredentials." .. universe), target)
  end
  local ok, err = errors.pair(_M.check_endpoint(url))
  if not ok then return errors.ret(err) end
  local self = setmetatable({
    source = source,
    target_principal = target,
    universe_domain = universe,
    scopes = normalise_scopes(opts.scopes, "impersonated") or copy_list(_M.DEFAULT_SCOPES),
    delegates = normalise_delegates(opts.delegates),
    lifetime = lifetime,
    url = url,
    _retry = metadata.retry_policy(opts.retry, _M.RETRY),
    _retry_opt = opts.retry,
    _timeout = opts.timeout,
    _shared = shared,
  }, mt)
  credentials.init(self, opts)
  return self
end

--- The old name of `new` (DECISIONS, Constructors): kept as an alias
-- until 1.0.
_M.credentials = _M.new

-- Key files --------------------------------------------------------------

local function key_error(source, field, message, fields)
  return credentials.key_error("impersonated", source, field, message, fields)
end

-- The options the source is made with: the transport and test hooks, not
-- the target's scopes or quota project.
local function source_opts(opts, scopes)
  return credentials.shared_transport(opts, { retry = opts.retry, cache = opts.cache,
                                              now = opts.now, scopes = scopes })
end

local function from_parsed(info, source, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.impersonated: opts must be a table", 3)
  end
  opts = opts or {}
  local t = info.type
  if t ~= nil and t ~= "impersonated_service_account" then
    return errors.ret(credentials.key_type_error("impersonated", source, t, "impersonated_service_account"))
  end
  local url = info.service_account_impersonation_url
  if type(url) ~= "string" or url == "" then
    return errors.ret(key_error(source, "service_account_impersonation_url", "missing or not a string"))
  end
  local target = match(url, "/serviceAccounts/([^/:]+):generateAccessToken$")
  if not target or not valid_principal(target) then
    return errors.ret(key_error(source, "service_account_impersonation_url",
      "does not end in /serviceAccounts/<email>:generateAccessToken"))
  end
  local delegates = info.delegates
  if delegates ~= nil and delegates ~= json.null then
    if type(delegates) ~= "table" then
      return errors.ret(key_error(source, "delegates", "must be an array of strings"))
    end
    for i, v in ipairs(delegates) do
      if type(v) ~= "string" or v == "" or (not find(v, "/", 1, true) and not valid_principal(v)) then
        return errors.ret(key_error(source, "delegates", "entry " .. i .. " is not a service account"))
      end
    end
  else
    delegates = nil
  end
  local qp = info.quota_project_id
  if qp ~= nil and qp ~= json.null and (type(qp) ~= "string" or qp == "") then
    return errors.ret(key_error(source, "quota_project_id", "must be a non-empty string"))
  end
  if qp == json.null then qp = nil end
  local src = info.source_credentials
  if type(src) ~= "table" then
    return errors.ret(key_error(source, "source_credentials", "missing or not an object"))
  end
  local st = src.type
  local creds, err
  if st == "service_account" then
    creds, err = errors.pair(require("gauth.service_account").from_info(src,
      source_opts(opts, copy_list(_M.DEFAULT_SCOPES))))
  elseif st == "authorized_user" then
    creds, err = errors.pair(require("gauth.authorized_user").from_info(src, source_opts(opts)))
  else
    local shown = type(st) == "string" and ('"' .. sub(st, 1, 40) .. '"') or "missing"
    return errors.ret(key_error(source, "source_credentials",
      "source credentials of type " .. shown .. " are not supported yet"
      .. ' (supported: "service_account", "authorized_user")',
      { type = type(st) == "string" and st or nil, unsupported = true }))
  end
  if not creds then
    return errors.fail_with("impersonated", "key file", err,
      { file = source, field = "source_credentials",
        message = source .. ": field source_credentials: " .. tostring(err.message) })
  end
  return _M.new({
    source = creds, target_principal = target, impersonation_url = url,
    delegates = delegates, scopes = opts.scopes, lifetime = opts.lifetime,
    iam_endpoint = opts.iam_endpoint, env = seam.get(opts, "env"),
    quota_project = opts.quota_project or qp,
    http = opts.http, ca_file = opts.ca_file, timeout = opts.timeout,
    client_cert = opts.client_cert, client_key = opts.client_key,
    proxy = opts.proxy, no_proxy = opts.no_proxy,
    retry = opts.retry, cache = opts.cache, now = opts.now,
  })
end

--- Credentials from a decoded `impersonated_service_account` file, or
-- its JSON text.
-- @param info table or JSON string
-- @tparam[opt] table opts `scopes`, `lifetime`, `iam_endpoint`, `env`,
--   `quota_project` (over the file's `quota_project_id`), `http`,
--   `ca_file`, `timeout`, `retry`, `cache`, `now` (the transport and test
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   options go to the source credentials too)
-- @return credentials | nil, message, err
-- @function from_info

--- Credentials from an `impersonated_service_account` file.
-- @tparam string path
-- @tparam[opt] table opts as for `from_info`
-- @return credentials | nil, message, err
-- @function from_file
_M.from_info, _M.from_file = credentials.constructors("impersonated",
  "impersonated service account info", from_parsed)

-- generateAccessToken ----------------------------------------------------

--- Parse an RFC 3339 time ("2024-05-01T12:00:00.5Z", "...+02:00").
-- @return epoch seconds | nil
function _M.parse_rfc3339(s)
  if type(s) ~= "string" then return nil end
  local y, mo, d, h, mi, sec, frac, zone =
    match(s, "^(%d%d%d%d)%-(%d%d)%-(%d%d)[Tt ](%d%d):(%d%d):(%d%d)(%.?%d*)(.*)$")
  if not y then return nil end
  local t = retry.utc_epoch(tonumber(y), tonumber(mo), tonumber(d), tonumber(h),
                         tonumber(mi), tonumber(sec))
  if not t then return nil end
  if frac ~= "" then
    local f = tonumber("0" .. frac)
    if not f then return nil end
    t = t + f
  end
  if zone == "Z" or zone == "z" then return t end
  local sign, zh, zm = match(zone, "^([+-])(%d%d):(%d%d)$")
  if not sign then return nil end
  local off = tonumber(zh) * 3600 + tonumber(zm) * 60
  if sign == "+" then return t - off end
  return t + off
end

local function api_error(op, res, now)
  -- Google's API error shape: status, reason, google_status, details and
  -- retryable by the one rule (gauth.errors.classify). A first 401 does
  -- not come here: gauth.request drops the source's token and sends once
  -- more with a new one.
  local e = errors.from_response("impersonated", "token response", res, op.url, now)
  local data = type(res.body) == "string" and cjson.decode(res.body) or nil
  local ge = type(data) == "table" and type(data.error) == "table" and data.error or nil
  e.message = "IAM Credentials refused generateAccessToken for " .. op.owner.target_principal
              .. (ge and type(ge.message) == "string" and (": " .. e.message) or "")
  return e
end

-- A 200 answer. Its body holds a token: it never goes into an error.
local function access_entry(op, res, now)
  local self = op.owner
  local data = cjson.decode(res.body)
  if type(data) ~= "table" or type(data.accessToken) ~= "string" or data.accessToken == "" then
    return nil, errors.new("impersonated", "token response", "no accessToken in the answer",
                           { status = 200, retryable = false, uri = self.url })
  end
  local exp = _M.parse_rfc3339(data.expireTime)
  if not exp then
    return nil, errors.new("impersonated", "token response", "expireTime is not an RFC 3339 time",
                           { status = 200, retryable = false, uri = self.url })
  end
  -- The lifetime on the API's clock (its Date header), so that a skew of
  -- this machine's clock does not make the token look expired, or good
  -- for longer than it is.
  local date = retry.parse_http_date(res.headers and res.headers.date)
  local life = date and (exp - date) or (exp - now)
  if life > self.lifetime + 60 then life = self.lifetime end
  if life <= 0 then
    return nil, errors.new("impersonated", "token response", "the token has already expired",
                           { status = 200, retryable = false, uri = self.url })
  end
  return { access_token = data.accessToken, expires_at = now + life }
end

--- Get a new token for the target (used by `token()`; call that instead:
-- it caches).
-- @return entry `{ access_token=, expires_at= }` | nil, message, err
function _M:fetch_token()
  local http, terr = errors.pair(token_request.transport(self._shared, "impersonated"))
  if not http then return errors.ret(terr) end
  local url = self.url
  local ok, uerr = errors.pair(_M.check_endpoint(url))
  if not ok then return errors.ret(uerr) end
  local body = { scope = self.scopes, lifetime = format("%ds", self.lifetime) }
  if self.delegates then body.delegates = self.delegates end
  -- The source's bearer token authorises it ("source credentials" when it
  -- cannot be had: the source retried already).
  return token_request.send({
    module = "impersonated", url = url, body = cjson.encode(body), http = http,
    headers = { ["content-type"] = "application/json", accept = "application/json" },
    source = self.source, max_body = _M.MAX_RESPONSE, timeout = self._timeout,
    policy = self._retry, now = self._clock, refused = api_error, accept = access_entry,
    owner = self,
  })
end

function _M:cache_key_parts()
  local scopes = credentials.sorted(self.scopes)
  local src = self.source
  -- gauth credentials have a cache key (which binds their secret); any
  -- other token source has an id of its own (see source_id).
  local sk = type(src.cache_key) == "function" and src:cache_key() or credentials.source_id(src)
  return { source = sk, target = self.target_principal,
           scopes = scopes, delegates = self.delegates, lifetime = self.lifetime,
           url = self.url }
end

-- Signing and ID tokens through IAM Credentials ---------------------------

-- The IAM client of the target, asked with the source's tokens through
-- the same chain of delegates (made once for all copies).
local function iam_client(self)
  local c = self._shared.iam
  if c then return c end
  c = require("gauth.iam").new({
    source = self.source, email = self.target_principal, delegates = self.delegates,
    -- The host that gives the target's tokens signs for it too.
    endpoint = match(self.url, "^(.-)/v1/projects/"),
    http = self._shared.http, ca_file = self._shared.ca_file,
    timeout = self._shared.timeout, proxy = self._shared.proxy, no_proxy = self._shared.no_proxy,
    client_cert = self._shared.client_cert, client_key = self._shared.client_key,
    retry = self._retry_opt, now = self._clock,
  })
  self._shared.iam = c
  return c
end

--- The target's email (the signer of `sign_bytes` and `sign_jwt`).
-- @return email
function _M:signer_email()
  return self.target_principal
end

--- Sign bytes as the target through IAM Credentials' `signBlob`, asked
-- with the source's token (which needs `iam.serviceAccounts.signBlob` on
-- the target).
-- @tparam string bytes
-- @return raw signature bytes | nil, msg, err
function _M:sign_bytes(bytes)
  if type(bytes) ~= "string" then
    error("gauth.impersonated: sign_bytes: bytes must be a string", 2)
  end
  local sig, m, x = iam_client(self):sign_blob(bytes)
  if not sig then return nil, m, x end
  return sig
end

--- A JWT of `claims` signed as the target through `signJwt`.
-- @tparam table claims
-- @return the JWT | nil, msg, err
function _M:sign_jwt(claims)
  if type(claims) ~= "table" then
    error("gauth.impersonated: sign_jwt: claims must be a table", 2)
  end
  local tok, m, x = iam_client(self):sign_jwt(claims)
  if not tok then return nil, m, x end
  return tok
end

--- A Google-signed ID token of the target for `audience`, through IAM
-- Credentials' `generateIdToken` (one request, not cached: see
-- `id_token_credentials` for a cached source of them).
-- @tparam string audience
-- @tparam[opt] boolean include_email add the `email` claims
-- @return the ID token | nil, msg, err
function _M:fetch_id_token(audience, include_email)
  if type(audience) ~= "string" or audience == "" then
    error("gauth.impersonated: fetch_id_token: audience must be a non-empty string", 2)
  end
  return iam_client(self):generate_id_token(audience, include_email)
end

local IdTokens = credentials.extend({ _VERSION = _M._VERSION, kind = "impersonated_id_token" })
local id_mt = credentials.metatable(IdTokens)

--- ID token credentials of the target: `token()` returns a Google-signed
-- ID token for `opts.audience` (from `generateIdToken`), cached and
-- refreshed like any token (until its `exp`, less the refresh window).
-- @tparam table imp impersonated credentials
-- @tparam table opts `audience` (required), `include_email` (boolean),
--   `quota_project`, `cache`, `now`
-- @return credentials
function _M.id_token_credentials(imp, opts)
  if getmetatable(imp) ~= mt then
    error("gauth.impersonated: id_token_credentials: impersonated credentials required", 2)
  end
  if type(opts) ~= "table" or type(opts.audience) ~= "string" or opts.audience == "" then
    error("gauth.impersonated: id_token_credentials: opts.audience (a non-empty string) required", 2)
  end
  if opts.include_email ~= nil and type(opts.include_email) ~= "boolean" then
    error("gauth.impersonated: include_email must be a boolean", 2)
  end
  local self = setmetatable({ target = imp, target_principal = imp.target_principal,
                              universe_domain = imp.universe_domain,
                              audience = opts.audience,
                              include_email = opts.include_email or false,
                              mode = "id_token" }, id_mt)
  credentials.init(self, { quota_project = opts.quota_project, cache = opts.cache,
                           now = opts.now or imp._clock })
  return self
end

function IdTokens:fetch_token()
  local tok, m, x = self.target:fetch_id_token(self.audience, self.include_email)
  if not tok then return errors.ret(errors.of(m, x)) end
  local entry = credentials.id_token_entry(tok, self._clock())
  if not entry then
    return fail("token response", "generateIdToken gave no JWT with an exp claim",
                { retryable = false })
  end
  return entry
end

function IdTokens:cache_key_parts()
  return { target = self.target:cache_key(), audience = self.audience,
           include_email = self.include_email }
end

function IdTokens:describe()
  return "ID token of " .. self.target_principal .. " for " .. self.audience
end

function IdTokens:signer_email() return self.target:signer_email() end
function IdTokens:sign_bytes(b) return self.target:sign_bytes(b) end
function IdTokens:sign_jwt(c) return self.target:sign_jwt(c) end

--- False: impersonated credentials always have scopes (`DEFAULT_SCOPES`
-- when none were given).
function _M:requires_scopes()  -- luacheck: no unused args
  return false
end

function _M:describe()
  local parts = { "as " .. self.target_principal, "source " .. tostring(self.source) }
  if self.delegates then
    parts[#parts + 1] = #self.delegates .. (#self.delegates == 1 and " delegate" or " delegates")
  end
  local n = #self.scopes
  parts[#parts + 1] = n .. (n == 1 and " scope" or " scopes")
  return concat(parts, ", ")
end

--- A copy with other target scopes (nil: `DEFAULT_SCOPES`).
function _M:with_scopes(scopes)
  local o = self:copy()
  o.scopes = normalise_scopes(scopes, "impersonated") or copy_list(_M.DEFAULT_SCOPES)
  return o
end

return _M
