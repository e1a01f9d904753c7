--- Service-account credentials: a key file, the scopes an application
-- needs, optionally a user to act for (domain-wide delegation), and access
-- tokens from Google's OAuth 2.0 token endpoint (the JWT-bearer grant,
-- RFC 7523). Also self-signed JWTs used directly as bearer tokens, and ID
-- tokens for Cloud Run, IAP and Cloud Functions.
--
--     local sa = require "gauth.service_account"
--     local creds = assert(sa.from_file("/path/to/service.json", {
--       scopes = { "https://www.googleapis.com/auth/sqlservice.admin" } }))
--     local headers = assert(creds:apply({}))   -- authorization: Bearer ...
--
-- Three modes, one class:
--
-- * **exchange** (default): `token()` signs a grant assertion (RS256, kid =
--   `private_key_id`, claims iss, scope, aud = token_uri, iat, exp = iat +
--   3600, sub with `subject`) and trades it for an access token.
-- * **self-signed JWT** (`jwt_access = true`, `with_audience`, or any key
--   outside googleapis.com; `audience` alone is refused): no exchange;
--   the token is a JWT signed with the key (iss = sub = the account's email,
--   iat, exp = iat + 3600) that Google accepts as a bearer token for many
--   APIs. Its audience: `opts.audience` when given, as `aud` (for an API,
--   `https://<service>.googleapis.com/`: see `audience_for`); otherwise the
--   scopes, as a `scope` claim with no `aud` (Google accepts either). With
--   neither, `token()` fails: make one with `with_audience`. Not with a
--   subject: delegation needs the exchange.
-- * **ID token** (`gauth.id_token.credentials` makes a copy in this mode;
--   `id_token_credentials` is its deprecated alias): the assertion carries
--   `target_audience` and the endpoint answers with a Google-signed ID
--   token, which `token()` returns. Outside googleapis.com (no token
--   exchange there) the ID token comes from IAM Credentials'
--   `generateIdToken` at `iamcredentials.<universe>` (`iam_endpoint` or
--   `GAUTH_IAM_ENDPOINT` instead), asked with a self-signed JWT of the
--   account (scope `https://www.googleapis.com/auth/iam`), with
--   `includeEmail` and `useEmailAzp`, as google-auth's
--   `service_account.IDTokenCredentials` does there.
--
-- Tokens are cached by `gauth.credentials` (refreshed within 225 s of
-- expiry), self-signed JWTs too (re-signed inside the same window).
--
-- Errors are `gauth.errors` objects with module "service_account"; steps:
-- "key file" (fields `file`, `field`), "token_uri", "assertion", "token
-- request" (transport failures, with the transport's `retryable`,
-- `curl_code`), "token response" (fields `status`, `error`,
-- `error_description`, `retryable`, `retry_after`, and `clock_skew` when
-- the endpoint refused the assertion's time window). No error or
-- `tostring` ever holds key material or a token.
-- @module gauth.service_account

local core = require "gauth.core"
local credentials = require "gauth.credentials"
local token_request = require "gauth.token_request"
local errors = require "gauth.errors"
local jwt = require "gauth.jwt"
local retry = require "gauth.retry"
local seam = require "gauth.lib.seam"
local url_lib = require "gauth.lib.url"
local universe_rule = require "gauth.universe"

local type = type
local pairs = pairs
local next = next
local tostring = tostring
local error = error
local setmetatable = setmetatable
local floor = math.floor
local find = string.find
local lower = string.lower
local concat = table.concat
local jwt_encode = jwt.encode

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "service_account" })
local mt = credentials.metatable(_M)

--- Google's token endpoint, used when the key file names none.
_M.DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"

--- Google's own universe (AIP-4120): the one with a token exchange for
-- service accounts.
_M.DEFAULT_UNIVERSE = universe_rule.DEFAULT

--- Lifetime of assertions and self-signed JWTs (seconds): the most Google
-- accepts.
_M.LIFETIME = 3600

--- Largest token response accepted (bytes). Google's are under 4 KiB; a
-- bigger answer is not a token response.
_M.MAX_RESPONSE = 256 * 1024

--- Retry policy of the token request: `gauth.token_request.RETRY` (3
-- attempts, backoff from 1 s doubling with jitter, Retry-After honoured,
-- all within 60 s), the one table of every token request. `opts.retry`
-- overrides fields of it.
_M.RETRY = token_request.RETRY

local GRANT_PREFIX = "grant_type=" ..
  url_lib.encode("urn:ietf:params:oauth:grant-type:jwt-bearer") .. "&assertion="

-- Only a skew this large is worth a corrected retry: below it, the time
-- window was not what the endpoint minded (and an HTTP Date has 1 s
-- resolution).
local MIN_SKEW = 5

local fail, arg_error = credentials.error_helpers("service_account")
local normalise_scopes = credentials.normalise_scopes

-- ------------------------------------------------------------------------
-- Options
-- ------------------------------------------------------------------------

local function opt_string(v, name)
  if v ~= nil and (type(v) ~= "string" or v == "") then
    arg_error(name .. " must be a non-empty string")
  end
  return v
end

local function copy_claims(claims, into)
  if claims == nil then return into end
  if type(claims) ~= "table" then arg_error("claims must be a table") end
  into = into or {}
  for k, v in pairs(claims) do
    if type(k) ~= "string" then arg_error("claim names must be strings") end
    if k == "iat" or k == "exp" then
      arg_error("claims may not set " .. k .. " (the lifetime is gauth's)")
    end
    into[k] = v
  end
  return into
end

local function is_empty(t)
  return t == nil or next(t) == nil
end

--- Check that a token URI may carry an assertion: https, or http to a
-- loopback host (tests, local emulators). Nothing is sent otherwise.
-- @return true | nil, message, err
function _M.check_token_uri(uri)
  return token_request.check_url(uri, "service_account", "token_uri", "an assertion")
end

--- The self-signed JWT audience Google expects for the API at `url`:
-- `https://<host>/` (e.g. "https://pubsub.googleapis.com/").
-- @tparam string url an API's root URL or any URL on its host
-- @return audience | nil
function _M.audience_for(url)
  local scheme, host = url_lib.parse(url)
  if not scheme then return nil end
  return "https://" .. lower(host) .. "/"
end

-- ------------------------------------------------------------------------
-- Construction
-- ------------------------------------------------------------------------

local function key_error(source, field, message)
  return credentials.key_error("service_account", source, field, message)
end

-- info (table) -> the parts of a credentials object | nil, err
local function parse_info(info, source)
  local function str(field, required)
    return credentials.key_field("service_account", info, source, field, required)
  end
  local t = info.type
  if t ~= "service_account" then
    if t == nil then
      return errors.ret(key_error(source, "type", 'missing (expected "service_account")'))
    end
    return errors.ret(credentials.key_type_error("service_account", source, t, "service_account"))
  end
  local email, err = errors.pair(str("client_email", true))
  if not email then return errors.ret(err) end
  local pem
  pem, err = errors.pair(str("private_key", true))
  if not pem then return errors.ret(err) end
  local kid
  kid, err = errors.pair(str("private_key_id", false))
  if kid == nil then return errors.ret(err) end
  local token_uri
  token_uri, err = errors.pair(str("token_uri", false))
  if token_uri == nil then return errors.ret(err) end
  local project
  project, err = errors.pair(str("project_id", false))
  if project == nil then return errors.ret(err) end
  local universe
  universe, err = errors.pair(str("universe_domain", false))
  if universe == nil then return errors.ret(err) end
  if universe and not universe_rule.is_dotted_domain(universe) then
    return errors.ret(key_error(source, "universe_domain", "not a domain name"))
  end
  local key, kerr = errors.pair(jwt.load_key(pem))
  if not key then
    -- kerr comes from gauth.core/OpenSSL and describes, never quotes, the key.
    return errors.ret(key_error(source, "private_key", tostring(kerr.message or kerr)))
  end
  return {
    service_account_email = email,
    private_key_id = kid or nil,
    token_uri = token_uri or nil,
    project_id = project or nil,
    universe_domain = universe or nil,
    key = key,
    -- What the cache key binds: a file with this email and key id but
    -- another key (a forgery uploaded to a multi-tenant gateway) must
    -- never be handed the tokens this key earned.
    key_digest = core.b64url_encode(core.sha256(key:public_pem())),
  }
end

local function build(parts, source, opts, mode)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.service_account: opts must be a table", 3)
  end
  opts = opts or {}
  local token_uri = opt_string(opts.token_uri, "token_uri") or parts.token_uri
                    or _M.DEFAULT_TOKEN_URI
  local ok, err = errors.pair(_M.check_token_uri(token_uri))
  if not ok then return errors.ret(err) end

  local subject = opt_string(opts.subject, "subject")
  local universe = opt_string(opts.universe_domain, "universe_domain")
  if universe and not universe_rule.is_dotted_domain(universe) then
    arg_error("universe_domain must be a domain name")
  end
  universe = universe or parts.universe_domain or _M.DEFAULT_UNIVERSE
  local other_universe = universe ~= _M.DEFAULT_UNIVERSE
  if other_universe and subject then
    -- As google-auth: outside Google's universe there is no token
    -- exchange, so no delegation (a self-signed JWT cannot carry a user).
    return fail("subject", "domain-wide delegation (subject) is not supported outside "
      .. _M.DEFAULT_UNIVERSE .. " (this key's universe is " .. universe .. ")",
      { retryable = false, universe_domain = universe })
  end
  local audience = opt_string(opts.audience, "audience")
  local jwt_access = opts.jwt_access
  if jwt_access ~= nil and type(jwt_access) ~= "boolean" then
    arg_error("jwt_access must be a boolean")
  end
  local target = opt_string(opts.target_audience, "target_audience")
  -- ID-token credentials are gauth.id_token's (a copy in mode "id_token").
  if target then arg_error("target_audience is for id_token_credentials") end
  -- Self-signed JWTs are asked for, never switched on by an audience
  -- alone (DECISIONS): an `audience` without `jwt_access = true` would
  -- otherwise change how every token is made behind the caller's back.
  -- Outside Google's universe a service account always signs its own
  -- JWTs (AIP-4120; google-auth's always_use_jwt_access).
  if audience and not jwt_access and not other_universe then
    arg_error("audience is the aud of a self-signed JWT: ask for one with jwt_access = true"
      .. " (or use with_audience)")
  end
  if jwt_access or other_universe then mode = "jwt" end
  if mode == "jwt" and subject then
    arg_error("a self-signed JWT cannot act for a subject (delegation needs the token exchange)")
  end
  local claims = copy_claims(opts.claims)
  local iam_endpoint = opt_string(opts.iam_endpoint, "iam_endpoint")
  -- The transport options, shared by every copy made with the with_*
  -- modifiers (with the transport and its kept-alive connection) and the
  -- clock offset learnt from the endpoint.
  local shared = credentials.transport_opts(opts, "service_account", 4, { skew = 0 })
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then arg_error("retry must be a table or false") end

  local self = setmetatable({
    service_account_email = parts.service_account_email,
    project_id = parts.project_id,
    private_key_id = parts.private_key_id,
    token_uri = token_uri,
    universe_domain = universe,
    scopes = normalise_scopes(opts.scopes, "service_account"),
    subject = subject,
    claims = claims,
    audience = audience,
    target_audience = target,
    mode = mode,
    source = source,
    _signing_key = parts.key,
    _key_digest = parts.key_digest,
    -- jwt.encode's options, made once: ES256 for an EC key (Google's own
    -- keys are RSA; an uploaded key may not be).
    _jwt_opts = { alg = parts.key:type() == "EC" and "ES256" or "RS256",
                  kid = parts.private_key_id },
    _retry = policy,
    _retry_opt = opts.retry,
    _timeout = opts.timeout,
    _iam_endpoint = iam_endpoint,
    _env = seam.get(opts, "env"),
    _shared = shared,
  }, mt)
  credentials.init(self, opts)
  return self
end

--- Credentials from a decoded key file, or its JSON text.
-- @param info table or JSON string (the content of a key file)
-- @tparam[opt] table opts `scopes` (array or space-separated string),
--   `subject` (user to act for: domain-wide delegation), `claims` (extra
--   assertion claims; they may replace iss, aud, scope and sub, as in
--   google-auth, but not iat/exp), `token_uri` (overrides the file's),
--   `quota_project`, `jwt_access` (boolean: self-signed JWT mode) and
--   `audience` (its `aud`; only with `jwt_access = true` or outside
--   googleapis.com: alone it raises), `http` (a transport; default `gauth.http.default()`), `ca_file`
--   and `timeout` (make a transport of its own for these credentials),
--   `retry` (fields overriding `RETRY`, or false for one attempt), `cache`,
--   `now` (see `gauth.credentials.init`)
-- @return credentials | nil, message, err
-- @function from_info

-- A service account's file is a "key file" (as the Cloud console calls it).
local FILE_TEXTS = { unreadable = "cannot read key file ", too_large = "too large for a key file",
                     not_json = "not a JSON object (is this a service account key file?)" }

--- Credentials from a key file (as downloaded from the Cloud console).
-- @tparam string path
-- @tparam[opt] table opts as for `from_info`
-- @return credentials | nil, message, err (naming the file and the field at fault,
--   never the key)
-- @function from_file
_M.from_info, _M.from_file = credentials.constructors("service_account", "service account info",
  function(info, source, opts)
    local parts, err = errors.pair(parse_info(info, source))
    if not parts then return errors.ret(err) end
    return build(parts, source, opts, "exchange")
  end, FILE_TEXTS)

--- Deprecated alias (until 1.0) of the one way to make ID-token
-- credentials: `id_token.credentials(from_file(path, opts) or
-- from_info(info, opts), { audience = opts.target_audience })`.
-- @param info_or_path a key file's path, its decoded table or its JSON text
-- @tparam table opts `target_audience` (required), and the options of
--   `from_info` but scopes, subject, audience and jwt_access
-- @return credentials (`gauth.id_token`'s) | nil, message, err
function _M.id_token_credentials(info_or_path, opts)
  if type(opts) ~= "table" or type(opts.target_audience) ~= "string" or opts.target_audience == "" then
    error("gauth.service_account: id_token_credentials: opts.target_audience (a non-empty string) required", 2)
  end
  if opts.scopes or opts.subject or opts.jwt_access or opts.audience then
    error("gauth.service_account: id_token_credentials takes no scopes, subject or audience", 2)
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.target_audience = nil
  local src, msg, err
  if type(info_or_path) == "table" or
      (type(info_or_path) == "string" and find(info_or_path, "^%s*{")) then
    src, msg, err = _M.from_info(info_or_path, o)
  elseif type(info_or_path) == "string" then
    src, msg, err = _M.from_file(info_or_path, o)
  else
    error("gauth.service_account: id_token_credentials: need a path, a table or JSON text", 2)
  end
  if not src then return nil, msg, err end
  return require("gauth.id_token").credentials(src, { audience = opts.target_audience,
                                                      cache = opts.cache, now = opts.now })
end

-- ------------------------------------------------------------------------
-- Signing
-- ------------------------------------------------------------------------

local function scope_string(self)
  local s = self.scopes
  if not s then return nil end
  return concat(s, " ")
end

-- Now on the endpoint's clock, whole seconds.
local function issued_at(self)
  return floor(self._clock() + self._shared.skew)
end

local function sign(self, claims)
  local tok, err = errors.pair(jwt_encode(claims, self._signing_key, self._jwt_opts))
  if not tok then return errors.fail_with("service_account", "assertion", err) end
  return tok
end

-- The claims both kinds of JWT start from: those given in opts.claims
-- (which may replace gauth's, as in google-auth), and the account as the
-- issuer unless they name another.
local function own_claims(self)
  local claims = {}
  local extra = self.claims
  if extra then
    for k, v in pairs(extra) do claims[k] = v end
  end
  if claims.iss == nil then claims.iss = self.service_account_email end
  return claims
end

local function grant_claims(self, iat)
  local claims = own_claims(self)
  if claims.aud == nil then claims.aud = self.token_uri end
  if self.mode == "id_token" then
    claims.target_audience = self.target_audience
  else
    if claims.scope == nil then claims.scope = scope_string(self) end
    if claims.sub == nil then claims.sub = self.subject end
  end
  claims.iat = iat
  claims.exp = iat + _M.LIFETIME
  return claims
end

--- The signed grant assertion the token exchange sends: RS256 (ES256 for
-- an EC key), header kid = `private_key_id`; claims iss, scope, aud =
-- token_uri, iat, exp = iat + 3600, sub when a subject is set,
-- target_audience for ID token credentials, plus `claims`.
-- @return assertion | nil, message, err
function _M:assertion()
  return sign(self, grant_claims(self, issued_at(self)))
end

-- ------------------------------------------------------------------------
-- The token exchange
-- ------------------------------------------------------------------------

local function is_time_window(desc)
  if type(desc) ~= "string" then return false end
  desc = lower(desc)
  -- Whole words: "exp" is also the start of "expected" (as in Google's
  -- "Failed audience check. The expected value is ...").
  return find(desc, "%f[%w]iat%f[%W]") ~= nil or find(desc, "%f[%w]exp%f[%W]") ~= nil
      or find(desc, "timeframe", 1, true) ~= nil
      or find(desc, "time window", 1, true) ~= nil
end

-- A refusal of the assertion's time window: the endpoint's clock (its
-- Date header) against ours, for the corrected retry (`skew_again`).
local function clock_skew(op, fields, res, now, message)  -- luacheck: no unused args
  if fields.oauth_error == "invalid_grant" and is_time_window(fields.error_description) then
    local date = retry.parse_http_date(res.headers and res.headers.date)
    if date then fields.clock_skew = date - now end
  end
  return message
end

-- An ID token's answer (mode "id_token"). A 200 body may hold a token: it
-- never goes into an error.
local function accept_id_token(op, res, now)
  local uri = op.url
  local data, err = errors.pair(token_request.decode(res, "service_account", uri))
  if not data then return nil, err end
  local idt = data.id_token
  if type(idt) ~= "string" or idt == "" then
    return nil, errors.new("service_account", "token response",
      "no id_token in the token endpoint's answer", { status = 200, retryable = false, uri = uri })
  end
  -- The token came over verified TLS in answer to our own request.
  local entry = credentials.id_token_entry(idt, now)
  if not entry then
    return nil, errors.new("service_account", "token response",
      "the id_token has no readable exp claim", { status = 200, retryable = false, uri = uri })
  end
  return entry
end

-- Clock skew: the endpoint refused the assertion's time window and said
-- (in its Date header) what time it is there. The request is sent once
-- more with an assertion on its clock; the offset is kept so later
-- assertions are right the first time.
local function skew_again(op, err)
  local skew = type(err) == "table" and err.clock_skew
  if not skew or (skew < MIN_SKEW and skew > -MIN_SKEW) then return nil end
  local self = op.owner
  local shared = self._shared
  if skew - shared.skew < MIN_SKEW and skew - shared.skew > -MIN_SKEW then return nil end
  shared.skew = skew
  local assertion = self:assertion()
  return assertion and GRANT_PREFIX .. assertion or nil
end

local function exchange(self)
  local http, terr = errors.pair(token_request.transport(self._shared, "service_account"))
  if not http then return errors.ret(terr) end
  local uri = self.token_uri
  local ok, uerr = errors.pair(_M.check_token_uri(uri))
  if not ok then return errors.ret(uerr) end
  local assertion, aerr = errors.pair(self:assertion())
  if not assertion then return errors.ret(aerr) end
  return token_request.send({
    module = "service_account", url = uri, body = GRANT_PREFIX .. assertion, http = http,
    max_body = _M.MAX_RESPONSE, timeout = self._timeout, policy = self._retry,
    now = self._clock, what = "request", adjust = clock_skew, again = skew_again,
    accept = self.mode == "id_token" and accept_id_token or nil, owner = self,
  })
end

local function self_signed(self)
  local iat = issued_at(self)
  local claims = own_claims(self)
  if claims.sub == nil then claims.sub = self.service_account_email end
  if self.audience then
    if claims.aud == nil then claims.aud = self.audience end
  elseif self.scopes then
    if claims.scope == nil then claims.scope = scope_string(self) end
  elseif claims.aud == nil and claims.scope == nil then
    return fail("assertion", "a self-signed JWT needs an audience or scopes "
      .. "(opts.audience, with_audience, or opts.scopes)")
  end
  claims.iat = iat
  claims.exp = iat + _M.LIFETIME
  local tok, err = errors.pair(sign(self, claims))
  if not tok then return errors.ret(err) end
  -- Expiry on our clock (iat may be on the endpoint's).
  return { access_token = tok, expires_at = self._clock() + _M.LIFETIME }
end

--- The scope of the self-signed JWT that asks IAM Credentials for an ID
-- token outside googleapis.com.
_M.IAM_SCOPE = "https://www.googleapis.com/auth/iam"

-- Outside googleapis.com: the account's ID token from IAM Credentials'
-- generateIdToken, asked with a self-signed JWT (scope IAM_SCOPE) of the
-- account itself (google-auth's _refresh_with_iam_endpoint). The client
-- and the JWT credentials are made once for every copy.
local function iam_id_token(self)
  local shared = self._shared
  local client = shared.iam_id
  if not client then
    -- A copy: the same key, cache and clock; its own cache key (mode, scope).
    local signer = self:copy({ mode = "jwt", scopes = { _M.IAM_SCOPE } })
    signer.target_audience, signer.audience = nil, nil
    client = require("gauth.iam").new(credentials.shared_transport(shared, {
      source = signer, email = self.service_account_email, universe_domain = self.universe_domain,
      endpoint = self._iam_endpoint, env = self._env, retry = self._retry_opt, now = self._clock }))
    shared.iam_id = client
  end
  local data, m, x = client:call("generateIdToken",
    { audience = self.target_audience, includeEmail = true, useEmailAzp = true })
  if not data then return errors.ret(errors.of(m, x)) end
  local entry = type(data.token) == "string" and credentials.id_token_entry(data.token, self._clock())
  if not entry then
    return fail("token response", "generateIdToken gave no JWT with an exp claim",
                { retryable = false })
  end
  return entry
end

--- Get a new token from the source (used by `token()`; call that instead:
-- it caches).
-- @return entry `{ access_token=, expires_at=, id_token= }` | nil, message, err
function _M:fetch_token()
  if self.mode == "jwt" then
    return self_signed(self)
  end
  if self.mode == "id_token" and self.universe_domain ~= _M.DEFAULT_UNIVERSE then
    return iam_id_token(self)
  end
  return exchange(self)
end

--- The email of the account (the signer of `sign_bytes` and `sign_jwt`).
-- @return email
function _M:signer_email()
  return self.service_account_email
end

--- Sign bytes locally with the key file's key: RSA-SHA256 (PKCS#1 v1.5)
-- for an RSA key (what Cloud Storage's GOOG4-RSA-SHA256 needs), ES256 as
-- raw r||s for an EC key.
-- @tparam string bytes
-- @return raw signature bytes | nil, msg, err
function _M:sign_bytes(bytes)
  if type(bytes) ~= "string" then
    error("gauth.service_account: sign_bytes: bytes must be a string", 2)
  end
  local sig, err = self._signing_key:sign(self._jwt_opts.alg, bytes)
  if not sig then
    return errors.ret(errors.wrap("service_account", "signing", err, { retryable = false }))
  end
  return sig
end

--- A JWT of `claims` signed locally with the key (header: alg, typ,
-- kid = `private_key_id`), as IAM's `signJwt` would for a managed key.
-- @tparam table claims
-- @return the JWT | nil, msg, err
function _M:sign_jwt(claims)
  if type(claims) ~= "table" then
    error("gauth.service_account: sign_jwt: claims must be a table", 2)
  end
  local tok, err = errors.pair(jwt_encode(claims, self._signing_key, self._jwt_opts))
  if not tok then
    return errors.ret(errors.wrap("service_account", "signing", err, { retryable = false }))
  end
  return tok
end

--- Everything that makes this object's tokens different from another's.
function _M:cache_key_parts()
  return {
    mode = self.mode,
    email = self.service_account_email,
    key_id = self.private_key_id,
    -- a SHA-256 of the public key: the secret that earns the tokens
    key = self._key_digest,
    token_uri = self.token_uri,
    scopes = credentials.sorted(self.scopes),
    subject = self.subject,
    claims = self.claims,
    audience = self.audience,
    target_audience = self.target_audience,
  }
end

--- Do these credentials need scopes before they can get a token? True
-- for the token exchange without scopes (a client library then applies
-- the API's own, as googleapiclient does); false for self-signed JWTs with
-- an audience and for ID tokens.
function _M:requires_scopes()
  if self.mode == "id_token" then return false end
  if self.mode == "jwt" and self.audience then return false end
  return self.scopes == nil
end

function _M:describe()
  local parts = { self.service_account_email }
  if self.mode == "jwt" then
    parts[#parts + 1] = "self-signed JWT" ..
      (self.audience and (" for " .. self.audience) or "")
  elseif self.mode == "id_token" then
    parts[#parts + 1] = "ID token for " .. tostring(self.target_audience)
  end
  credentials.describe_scopes(parts, self.scopes)
  if self.subject then parts[#parts + 1] = "subject " .. self.subject end
  if self.universe_domain ~= _M.DEFAULT_UNIVERSE then
    parts[#parts + 1] = "universe " .. self.universe_domain
  end
  return concat(parts, ", ")
end

-- ------------------------------------------------------------------------
-- Copy-on-write modifiers
-- ------------------------------------------------------------------------

--- A copy with other scopes (array or space-separated string; nil: none).
function _M:with_scopes(scopes)
  if self.mode == "id_token" then
    error("gauth.service_account: ID token credentials take no scopes", 2)
  end
  local o = self:copy()
  o.scopes = normalise_scopes(scopes, "service_account")
  return o
end

--- A copy acting for another user (domain-wide delegation); nil: none.
function _M:with_subject(subject)
  if subject ~= nil and (type(subject) ~= "string" or subject == "") then
    error("gauth.service_account: subject must be a non-empty string", 2)
  end
  if subject ~= nil and self.universe_domain ~= _M.DEFAULT_UNIVERSE and self.mode ~= "id_token" then
    error("gauth.service_account: domain-wide delegation (subject) is not supported outside "
      .. _M.DEFAULT_UNIVERSE .. " (this key's universe is " .. self.universe_domain .. ")", 2)
  end
  if subject ~= nil and self.mode ~= "exchange" then
    error("gauth.service_account: only token-exchange credentials can act for a subject", 2)
  end
  local o = self:copy()
  o.subject = subject
  return o
end

--- A copy whose assertions carry these claims as well (merged over the
-- current ones; not iat/exp).
function _M:with_claims(claims)
  if type(claims) ~= "table" then
    error("gauth.service_account: with_claims: claims must be a table", 2)
  end
  local merged = copy_claims(self.claims, {})
  copy_claims(claims, merged)
  local o = self:copy()
  o.claims = not is_empty(merged) and merged or nil
  return o
end

--- A self-signed-JWT copy for this audience (see `audience_for`).
function _M:with_audience(audience)
  if type(audience) ~= "string" or audience == "" then
    error("gauth.service_account: audience must be a non-empty string", 2)
  end
  if self.mode == "id_token" then
    error("gauth.service_account: use with_target_audience for ID tokens", 2)
  end
  if self.subject then
    error("gauth.service_account: a self-signed JWT cannot act for a subject", 2)
  end
  local o = self:copy()
  o.mode = "jwt"
  o.audience = audience
  return o
end

--- A copy of ID token credentials for another audience.
function _M:with_target_audience(target)
  local o, bad = credentials.copy_for_audience(self, target)
  if not o then error("gauth.service_account: " .. bad, 2) end
  return o
end

return _M
