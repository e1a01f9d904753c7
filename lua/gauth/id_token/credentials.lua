--- ID-token credentials: Google-signed ID tokens of any credentials that
-- have a service account (for calling Cloud Run, Cloud Functions, IAP),
-- and the one-shot `fetch`. Internal: gauth.id_token gives `credentials`
-- and `fetch`.
-- @module gauth.id_token.credentials

local errors = require "gauth.errors"
local seam = require "gauth.lib.seam"
local common = require "gauth.id_token.common"

local type = type
local tostring = tostring
local setmetatable = setmetatable
local error = error
local require = require
local clock_of = common.clock_of
local public = common.public

local _M = {}

local NO_OPTS = {}

local IdCreds  -- the class, made on first use (gauth.credentials loads late)

local function id_class()
  if IdCreds then return IdCreds end
  local credentials = require "gauth.credentials"
  IdCreds = credentials.extend({ _VERSION = public._VERSION, kind = "id_token" })
  IdCreds._mt = credentials.metatable(IdCreds)

  -- The inner credentials give the token; this object caches it under
  -- their cache key (which binds the source's secret and the audience).
  function IdCreds:fetch_token()
    local e, m, x = self._inner:fetch_token()
    if not e then return errors.ret(errors.of(m, x)) end
    return e
  end

  function IdCreds:cache_key_parts()
    return { inner = self._inner:cache_key() }
  end

  function IdCreds:describe()
    return "ID token for " .. self.audience .. " from " .. tostring(self.source)
  end

  --- The ID token (cached, refreshed before its `exp`): token, expires_at
  -- | nil, msg, err.
  function IdCreds:token()
    local tok, exp, x = credentials.base.token(self)
    if not tok then return errors.ret(errors.of(exp, x)) end
    return tok, exp
  end

  --- Set `authorization: Bearer <ID token>`: headers | nil, msg, err.
  function IdCreds:apply(headers)
    if headers ~= nil and type(headers) ~= "table" then
      error("gauth.id_token: apply: headers must be a table", 2)
    end
    local tok, msg, err = self:token()
    if not tok then return nil, msg, err end
    return credentials.base.apply(self, headers)
  end

  --- The same credentials for another audience (google-auth's
  -- `with_target_audience`): credentials | nil, msg, err.
  function IdCreds:with_target_audience(audience)
    local o = self._opts
    return _M.credentials(self.source, { audience = audience, include_email = self.include_email,
      format = o.format, licenses = o.licenses, cache = o.cache, now = o.now })
  end

  --- ID tokens take no scopes: false.
  function IdCreds:requires_scopes() return false end  -- luacheck: no unused args

  function IdCreds:signer_email() return self.source:signer_email() end
  function IdCreds:sign_bytes(b) return self.source:sign_bytes(b) end
  function IdCreds:sign_jwt(c) return self.source:sign_jwt(c) end
  return IdCreds
end

local function id_fail(message, fields)
  fields = fields or {}
  if fields.retryable == nil then fields.retryable = false end
  return errors.fail("id_token", "credentials", message, fields)
end

-- The credentials that give ID tokens for `audience`, made from `source`.
local function inner_of(source, audience, include_email, opts)
  local kind = source.kind
  if kind == "service_account" then
    -- A self-signed assertion with target_audience, exchanged at the token
    -- URI for an ID token (as google-auth's IDTokenCredentials).
    local o = source:copy({ mode = "id_token", target_audience = audience })
    o.scopes, o.subject, o.audience = nil, nil, nil
    return o
  elseif kind == "compute_engine" or kind == "app_engine" then
    -- .../identity?audience=...&format=full (by default)
    local o = source:copy({ mode = "id_token", target_audience = audience,
                            format = opts.format or "full" })
    o.scopes, o.licenses = nil, opts.licenses or nil
    return o
  elseif kind == "impersonated" then
    return require("gauth.impersonated").id_token_credentials(source, {
      audience = audience, include_email = include_email, cache = opts.cache, now = opts.now })
  elseif kind == "external_account" then
    if not source._impersonated then
      return nil, "external account credentials give ID tokens only with"
        .. " service_account_impersonation_url (the impersonated account's, from generateIdToken)"
    end
    return require("gauth.impersonated").id_token_credentials(source._impersonated, {
      audience = audience, include_email = include_email, cache = opts.cache, now = opts.now })
  end
  return nil, tostring(kind) .. " credentials cannot give ID tokens (a service account key,"
    .. " impersonated credentials, an external account with impersonation or the metadata"
    .. " server can)"
end

--- ID-token credentials: `token()` gives a Google-signed ID token for
-- `opts.audience`, cached and refreshed before its `exp` like any token;
-- `apply(headers)` sets `authorization: Bearer <ID token>`.
-- From a service account (a self-signed assertion with `target_audience`
-- exchanged at its token URI), impersonated credentials (IAM
-- `generateIdToken`), an external account with
-- `service_account_impersonation_url` (`generateIdToken` of that account,
-- asked with the STS token) or Compute Engine (the metadata server's
-- `identity?audience=...&format=full`). The one way to make them:
-- `service_account.id_token_credentials` and
-- `compute_engine.id_token_credentials` are deprecated aliases over this.
-- The object has `with_target_audience(audience)` (the same for another
-- audience) and `service_account_email` where the source knows it.
-- @param source credentials, or nil for Application Default Credentials
-- @tparam table opts `audience` (required), `include_email` (boolean;
--   for generateIdToken), for the metadata server `format` ("full", the
--   default: the token carries the account's email and the instance; or
--   "standard") and `licenses` (boolean, with "full"), `cache`, `now`
--   (epoch seconds, or a function returning them), and for ADC `env` and
--   the transport options (`http`,
--   `ca_file`, `timeout`, `client_cert`, `client_key`, `proxy`, `no_proxy`)
-- @return credentials | nil, msg, err (module "id_token", step
--   "credentials": a source that cannot give ID tokens; ADC's failure as
--   `cause`)
function _M.credentials(source, opts)
  if type(opts) ~= "table" or type(opts.audience) ~= "string" or opts.audience == "" then
    error("gauth.id_token: credentials: opts.audience (a non-empty string) is required", 2)
  end
  if opts.include_email ~= nil and type(opts.include_email) ~= "boolean" then
    error("gauth.id_token: credentials: include_email must be a boolean", 2)
  end
  local format, licenses = opts.format, opts.licenses
  if format ~= nil and format ~= "full" and format ~= "standard" then
    error('gauth.id_token: credentials: format must be "full" or "standard"', 2)
  end
  if licenses ~= nil and type(licenses) ~= "boolean" then
    error("gauth.id_token: credentials: licenses must be a boolean", 2)
  end
  if licenses and format == "standard" then
    error('gauth.id_token: credentials: licenses needs format "full"', 2)
  end
  if source ~= nil and (type(source) ~= "table" or type(source.token) ~= "function") then
    error("gauth.id_token: credentials: source must be credentials or nil (ADC)", 2)
  end
  local from_adc = source == nil
  if source == nil then
    -- ADC's credentials make their requests with the transport options
    -- given here (a proxy, a CA bundle, a client certificate).
    local credentials = require "gauth.credentials"
    local aopts = credentials.transport_opts(opts, "id_token", 3, { env = seam.get(opts, "env") })
    local c, m, x = require("gauth.adc").default(aopts)
    if not c then
      local cause = errors.of(m, x)
      return id_fail("no Application Default Credentials: " .. tostring(cause.message),
                     { cause = cause })
    end
    source = c
  end
  if source.mode == "id_token" then
    return id_fail("the source already gives ID tokens (" .. tostring(source) .. ")")
  end
  if (format ~= nil or licenses ~= nil) and source.kind ~= "compute_engine"
      and source.kind ~= "app_engine" then
    local why = "format and licenses are the metadata server's, not for "
      .. tostring(source.kind) .. " credentials"
    if not from_adc then error("gauth.id_token: credentials: " .. why, 2) end
    return id_fail(why)
  end
  -- nil stays nil: the source's own clock serves then.
  local now = opts.now
  if now ~= nil then now = clock_of(now, "credentials") end
  local inner, why = inner_of(source, opts.audience, opts.include_email or false,
                              { cache = opts.cache, now = now, format = format, licenses = licenses })
  if not inner then return id_fail(why) end
  local class = id_class()
  local self = setmetatable({ source = source, audience = opts.audience,
                              universe_domain = source.universe_domain,
                              service_account_email = source.service_account_email,
                              include_email = opts.include_email or false,
                              mode = "id_token", _inner = inner,
                              _opts = { format = format, licenses = licenses,
                                        cache = opts.cache, now = opts.now } }, class._mt)
  require("gauth.credentials").init(self, {
    cache = opts.cache or source._cache, now = now or source._clock,
    quota_project = source.quota_project })
  return self
end

--- One ID token for `audience` (Python's `fetch_id_token`): from
-- `opts.source` (credentials), else Application Default Credentials.
-- @tparam string audience
-- @tparam[opt] table opts `source`, `include_email`, `cache`, `now`, `env`,
--   and the transport options of ADC's credentials (as for `credentials`)
-- @return the ID token, expires_at | nil, msg, err
function _M.fetch(audience, opts)
  if type(audience) ~= "string" or audience == "" then
    error("gauth.id_token: fetch: audience must be a non-empty string", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("gauth.id_token: fetch: opts must be a table", 2) end
  opts = opts or NO_OPTS
  local copts = { audience = audience, include_email = opts.include_email, cache = opts.cache,
                  now = opts.now,
                  testing = { env = seam.get(opts, "env") } }
  local c, m, x = _M.credentials(opts.source,
    require("gauth.credentials").transport_opts(opts, "id_token", 3, copts))
  if not c then return nil, m, x end
  return c:token()
end

return _M
