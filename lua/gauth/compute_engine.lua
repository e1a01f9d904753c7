--- Compute Engine credentials: access tokens and ID tokens of the
-- machine's service account, from the metadata server. The same on GKE,
-- Cloud Run, Cloud Functions and App Engine (second generation), which
-- all have a metadata server.
--
--     local ce = require "gauth.compute_engine"
--     local creds = assert(ce.new())
--     local headers = assert(creds:apply({}))   -- authorization: Bearer ...
--
-- The token comes from
-- `http://<host>/computeMetadata/v1/instance/service-accounts/<sa>/token`
-- (`?scopes=a,b` with scopes), with `Metadata-Flavor: Google` both ways;
-- `<host>` is `GCE_METADATA_HOST` or `metadata.google.internal` (see
-- `gauth.metadata`). Tokens are cached and refreshed like every gauth
-- credentials' (within 225 s of expiry, one refresh at a time); reads are
-- retried on transport errors, 429 and 5xx.
--
-- Errors are `gauth.errors` objects with module "compute_engine" (steps
-- "metadata host", "metadata request", "metadata response"; "app_engine"
-- for credentials made by `gauth.app_engine`). None holds a token.
-- @module gauth.compute_engine

local credentials = require "gauth.credentials"
local metadata = require "gauth.metadata"
local errors = require "gauth.errors"
local seam = require "gauth.lib.seam"

local type = type
local pairs = pairs
local tostring = tostring
local error = error
local setmetatable = setmetatable
local find = string.find
local concat = table.concat

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "compute_engine" })
local mt = credentials.metatable(_M)

--- Retry policy of token reads (`gauth.metadata.RETRY`); `opts.retry`
-- overrides fields of it, or `false` for one attempt.
_M.RETRY = metadata.RETRY

-- The module in errors is the object's ("compute_engine" or "app_engine").
local arg_error = credentials.arg_error
local normalise_scopes = credentials.normalise_scopes

local function fail(self, step, message, fields)
  return errors.fail(self._module, step, message, fields)
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

--- Credentials of the machine's account under another module's name:
-- `kind` is the module named in errors and in `tostring` ("compute_engine",
-- the default, or "app_engine": `gauth.app_engine.new` makes the same
-- class through it). `new(opts)` is `new_kind(opts, "compute_engine")`.
-- @tparam[opt] table opts as for `new`
-- @tparam[opt] string kind
-- @return credentials | nil, message, err
function _M.new_kind(opts, kind)
  kind = kind or "compute_engine"
  if opts ~= nil and type(opts) ~= "table" then
    arg_error(kind, "opts must be a table")
  end
  opts = opts or {}
  local sa = opts.service_account or "default"
  -- "default" or an email: nothing that would change the URL's path.
  if type(sa) ~= "string" or not find(sa, "^[%w@._+-]+$") then
    arg_error(kind, "service_account must be \"default\" or a service account email")
  end
  -- The metadata server speaks plain HTTP, always direct: ca_file, the
  -- client certificate and the proxy serve the IAM Credentials requests
  -- (signing; ID tokens and tokens in another universe).
  local shared = credentials.transport_opts(opts, kind, 4, {
    email = find(sa, "@", 1, true) and sa or nil })
  -- ID-token credentials are gauth.id_token's: a copy in mode "id_token"
  -- with target_audience, format and licenses set.
  if opts.target_audience ~= nil then
    arg_error(kind, "target_audience is for id_token_credentials")
  end
  local env = seam.get(opts, "env")
  local host, err = errors.pair(metadata.host({ host = opts.host, env = env, _module = kind }))
  if not host then return errors.ret(err) end
  local policy = metadata.retry_policy(opts.retry)
  if opts.iam_endpoint ~= nil and (type(opts.iam_endpoint) ~= "string" or opts.iam_endpoint == "") then
    arg_error(kind, "iam_endpoint must be a non-empty string")
  end
  local self = setmetatable({
    service_account = sa,
    -- Sent as one comma-separated parameter: no commas in a scope.
    scopes = normalise_scopes(opts.scopes, kind, true),
    host = host,
    mode = "access",
    _module = kind,
    _http = opts.http,
    _timeout = opts.timeout,
    _retry = policy,
    _retry_opt = opts.retry,
    _iam_endpoint = opts.iam_endpoint,
    _env = env,
    -- Shared by every copy: what the server told about the account, and
    -- the IAM Credentials client that signs for it.
    _shared = shared,
  }, mt)
  if kind ~= "compute_engine" then self.kind = kind end
  credentials.init(self, opts)
  return self
end

--- Compute Engine credentials: `compute_engine.new(opts)` (the old name
-- `credentials` stays an alias); nothing is asked of the metadata server
-- until the first `token()`.
-- @tparam[opt] table opts `scopes` (array or space-separated string: sent
--   as `?scopes=`; without, the token has the scopes the instance was
--   given), `service_account` ("default" or an email of an account attached
--   to the instance), `quota_project`, `host` (instead of
--   `GCE_METADATA_HOST`), `env` (see `gauth.metadata.getenv_for`), `http`
--   (a transport), `timeout` (seconds per read), `retry` (fields over
--   `RETRY`, or false), `cache`, `now` (see `gauth.credentials.init`);
--   `ca_file`, `client_cert`/`client_key`, `proxy`/`no_proxy`, `iam_endpoint`
--   for its IAM Credentials calls (the metadata server is plain http, direct)
-- @return credentials | nil, message, err (a malformed `GCE_METADATA_HOST`)
function _M.new(opts)
  return _M.new_kind(opts, "compute_engine")
end

--- The old name of `new` (DECISIONS, Constructors): kept as an alias
-- until 1.0.
_M.credentials = _M.new

--- Deprecated alias (until 1.0) of the one way to make ID-token
-- credentials: `id_token.credentials(compute_engine.new(opts), { audience =
-- opts.target_audience, format = opts.format, licenses = opts.licenses })`.
-- @tparam table opts `target_audience` (required), `format`, `licenses`,
--   and the options of `new` but scopes
-- @return credentials (`gauth.id_token`'s) | nil, message, err
function _M.id_token_credentials(opts)
  if type(opts) ~= "table" or type(opts.target_audience) ~= "string" or opts.target_audience == "" then
    error("gauth.compute_engine: id_token_credentials: opts.target_audience (a non-empty string) required", 2)
  end
  if opts.scopes ~= nil then error("gauth.compute_engine: ID token credentials take no scopes", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.target_audience, o.format, o.licenses = nil, nil, nil
  local src, msg, err = _M.new(o)
  if not src then return nil, msg, err end
  return require("gauth.id_token").credentials(src, { audience = opts.target_audience,
    format = opts.format, licenses = opts.licenses, cache = opts.cache, now = opts.now })
end

--- Is a metadata server there? (`gauth.metadata.is_available`: a short
-- ping, `NO_GCE_CHECK`, the answer kept for the process.)
-- @return true | false, message, err
function _M.is_available(opts)
  local o = {}
  if opts ~= nil then
    if type(opts) ~= "table" then error("gauth.compute_engine: is_available: opts must be a table", 2) end
    for k, v in pairs(opts) do o[k] = v end
  end
  o._module = "compute_engine"
  return metadata.is_available(o)
end

--- The project id of this machine, from the metadata server.
-- @tparam[opt] table opts as for `gauth.metadata.get`
-- @return project id | nil, message, err
function _M.project_id(opts)
  local o = {}
  if opts ~= nil then
    if type(opts) ~= "table" then error("gauth.compute_engine: project_id: opts must be a table", 2) end
    for k, v in pairs(opts) do o[k] = v end
  end
  o._module = o._module or "compute_engine"
  return metadata.project_id(o)
end

---------------------------------------------------------------------------
-- Tokens
---------------------------------------------------------------------------

local function read_opts(self, query, json)
  return { host = self.host, http = self._http, timeout = self._timeout,
           _policy = self._retry, _module = self._module, query = query,
           json = json }
end

local function account_path(self, leaf)
  return "instance/service-accounts/" .. self.service_account .. "/" .. leaf
end

local function fetch_access(self)
  local query
  if self.scopes then query = { scopes = concat(self.scopes, ",") } end
  local data, err = errors.pair(metadata.get(account_path(self, "token"), read_opts(self, query, true)))
  if not data then return errors.ret(err) end
  local tok = data.access_token
  if type(tok) ~= "string" or tok == "" then
    return fail(self, "metadata response", "no access_token in the metadata server's answer",
                { retryable = false })
  end
  local life = credentials.lifetime(data.expires_in)
  if not life then
    return fail(self, "metadata response", "expires_in is not a positive number",
                { retryable = false })
  end
  return {
    access_token = tok,
    expires_at = self._clock() + life,
    token_type = type(data.token_type) == "string" and data.token_type or nil,
  }
end

local function fetch_id(self)
  local query = { audience = self.target_audience }
  if self.format == "full" then query.format = "full" end
  if self.licenses then query.licenses = "TRUE" end
  local body, err = errors.pair(metadata.get(account_path(self, "identity"), read_opts(self, query, false)))
  if not body then return errors.ret(err) end
  -- The metadata server just issued it to us.
  local entry = credentials.id_token_entry(trim(body), self._clock())
  if not entry then
    return fail(self, "metadata response", "the answer is not an ID token with an exp claim",
                { retryable = false })
  end
  return entry
end

--- Get a new token from the metadata server (used by `token()`; call
-- that instead: it caches).
-- @return entry `{ access_token=, expires_at= }` | nil, message, err
function _M:fetch_token()
  if self.mode == "id_token" then return fetch_id(self) end
  return fetch_access(self)
end

--- Everything that makes this object's tokens different from another's.
function _M:cache_key_parts()
  return { mode = self.mode, host = self.host, service_account = self.service_account,
           scopes = credentials.sorted(self.scopes), target_audience = self.target_audience,
           format = self.format, licenses = self.licenses }
end

--- The email of the service account (asked of the metadata server once
-- when the object was made with "default").
-- @return email | nil, message, err
function _M:email()
  local shared = self._shared
  if shared.email then return shared.email end
  local v, err = errors.pair(metadata.get(account_path(self, "email"), read_opts(self)))
  if not v then return errors.ret(err) end
  v = trim(v)
  if v == "" then
    return fail(self, "metadata response", "the service account's email is empty",
                { retryable = false })
  end
  shared.email = v
  return v
end

local universe = require "gauth.universe"

--- The universe domain of this machine: the metadata server's
-- `universe/universe-domain` (404, or an empty answer: `googleapis.com`),
-- read once for every copy; fills `creds.universe_domain`.
-- @return the universe domain | nil, msg, err (the metadata server could
--   not be read, or its answer is not a domain name)
function _M:get_universe_domain()
  local shared = self._shared
  local v = shared.universe_domain
  if v then
    self.universe_domain = v
    return v
  end
  local m, x
  v, m, x = metadata.get("universe/universe-domain", read_opts(self))
  if not v then
    local err = errors.of(m, x)
    if err.status ~= 404 then return errors.ret(err) end
    v = universe.DEFAULT
  end
  v = trim(v)
  if v == "" then v = universe.DEFAULT end
  if not universe.is_domain(v) then
    return errors.fail(self._module, "metadata response",
      "the universe domain is not a domain name: " .. v:sub(1, 80), { retryable = false })
  end
  shared.universe_domain = v
  self.universe_domain = v
  return v
end

-- Signing through IAM Credentials ---------------------------------------

-- The IAM client of the account, made once for all copies: asked with
-- access tokens of the same account (an ID token cannot call IAM).
local function iam_client(self)
  local shared = self._shared
  local c = shared.iam
  if c then return c end
  local source = self
  if self.mode ~= "access" then
    source = self:copy({ mode = "access" })
    source.target_audience, source.format, source.licenses = nil, nil, nil
  end
  c = require("gauth.iam").new({
    source = source,
    email_source = function() return self:email() end,
    universe_domain = function() return universe.of(self) end,
    endpoint = self._iam_endpoint, env = self._env,
    http = self._http, ca_file = shared.ca_file, client_cert = shared.client_cert,
    client_key = shared.client_key, proxy = shared.proxy, no_proxy = shared.no_proxy,
    timeout = self._timeout, retry = self._retry_opt, now = self._clock,
  })
  shared.iam = c
  return c
end

--- The email of the instance's service account (the metadata server's
-- answer for "default", asked once).
-- @return email | nil, msg, err
function _M:signer_email()
  local v, msg, err = self:email()
  if not v then return nil, msg, err end
  return v
end

--- Sign bytes with the account's Google-managed key through IAM
-- Credentials' `signBlob` (the account needs
-- `iam.serviceAccounts.signBlob` on itself, e.g. the Service Account Token
-- Creator role, and the instance the cloud-platform scope).
-- @tparam string bytes
-- @return raw signature bytes | nil, msg, err
function _M:sign_bytes(bytes)
  if type(bytes) ~= "string" then
    error("gauth." .. self._module .. ": sign_bytes: bytes must be a string", 2)
  end
  local sig, m, x = iam_client(self):sign_blob(bytes)
  if not sig then return nil, m, x end
  return sig
end

--- A JWT of `claims` signed through IAM Credentials' `signJwt`.
-- @tparam table claims
-- @return the JWT | nil, msg, err
function _M:sign_jwt(claims)
  if type(claims) ~= "table" then
    error("gauth." .. self._module .. ": sign_jwt: claims must be a table", 2)
  end
  local tok, m, x = iam_client(self):sign_jwt(claims)
  if not tok then return nil, m, x end
  return tok
end

--- False: the metadata server gives a token without scopes (with those
-- the instance was given).
function _M:requires_scopes()  -- luacheck: no unused args
  return false
end

function _M:describe()
  local parts = { "service account " .. self.service_account, "metadata server " .. self.host }
  if self.mode == "id_token" then
    parts[#parts + 1] = "ID token for " .. tostring(self.target_audience)
  end
  credentials.describe_scopes(parts, self.scopes)
  return concat(parts, ", ")
end

--- A copy with other scopes (array or space-separated string; nil: the
-- instance's own).
function _M:with_scopes(scopes)
  if self.mode == "id_token" then
    error("gauth." .. self._module .. ": ID token credentials take no scopes", 2)
  end
  local o = self:copy()
  o.scopes = normalise_scopes(scopes, self._module, true)
  return o
end

--- A copy of ID token credentials for another audience.
function _M:with_target_audience(target)
  local o, bad = credentials.copy_for_audience(self, target)
  if not o then error("gauth." .. self._module .. ": " .. bad, 2) end
  return o
end

return _M
