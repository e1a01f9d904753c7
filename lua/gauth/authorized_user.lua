--- Authorized-user credentials: a user's OAuth client id and secret and a
-- refresh token, traded for access tokens at the token endpoint (the
-- refresh-token grant, RFC 6749 section 6). This is what
-- `gcloud auth application-default login` writes to
-- `~/.config/gcloud/application_default_credentials.json`:
--
--     { "type": "authorized_user", "client_id": "...",
--       "client_secret": "...", "refresh_token": "...",
--       "quota_project_id": "..." }
--
--     local au = require "gauth.authorized_user"
--     local creds = assert(au.from_file(path))
--
-- The refresh token and client secret are secrets: they go to the token
-- endpoint only (over https, or http to a loopback host: tests and local
-- emulators), and never into an error, `tostring` or a cache key (the key
-- holds a hash of them). When the endpoint rotates the refresh token, the
-- new one is kept for every copy of the object.
--
-- `universe_domain` is the file's (gcloud writes `googleapis.com`, the
-- default); user credentials are refreshed only there: in another universe
-- `token()` fails with step "token request" before any request, as
-- google-auth's user credentials do.
--
-- Errors are `gauth.errors` objects with module "authorized_user"; steps
-- "key file" (fields `file`, `field`), "token_uri", "token request",
-- "token response" (`status`, `error`, `error_description`, `retryable`,
-- `retry_after`).
-- @module gauth.authorized_user

local credentials = require "gauth.credentials"
local errors = require "gauth.errors"
local token_request = require "gauth.token_request"
local retry = require "gauth.retry"
local url_lib = require "gauth.lib.url"
local core = require "gauth.core"
local universe = require "gauth.universe"

local type = type
local ipairs = ipairs
local error = error
local setmetatable = setmetatable
local concat = table.concat

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "authorized_user" })
local mt = credentials.metatable(_M)

--- Google's token endpoint, used when the file names none.
_M.DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"

--- The universe of user credentials when the file names none (AIP-4120).
_M.DEFAULT_UNIVERSE = universe.DEFAULT

--- Retry policy of the token request: `gauth.token_request.RETRY`, the
-- one table of every token request; `opts.retry` overrides fields of it,
-- or `false` for one attempt.
_M.RETRY = token_request.RETRY

--- Largest token response accepted (bytes).
_M.MAX_RESPONSE = 256 * 1024

local fail, arg_error = credentials.error_helpers("authorized_user")
local normalise_scopes = credentials.normalise_scopes

--- Check that a token URI may carry a refresh token: https, or http to a
-- loopback host. Nothing is sent otherwise.
-- @return true | nil, message, err
function _M.check_token_uri(uri)
  return token_request.check_url(uri, "authorized_user", "token_uri", "a refresh token")
end

---------------------------------------------------------------------------
-- Construction
---------------------------------------------------------------------------

local function parse_info(info, source)
  local t = info.type
  if t ~= nil and t ~= "authorized_user" then
    return errors.ret(credentials.key_type_error("authorized_user", source, t, "authorized_user"))
  end
  local parts = {}
  for _, f in ipairs({ "client_id", "client_secret", "refresh_token" }) do
    local v, err = errors.pair(credentials.key_field("authorized_user", info, source, f, true))
    if not v then return errors.ret(err) end
    parts[f] = v
  end
  for _, f in ipairs({ "token_uri", "quota_project_id", "universe_domain" }) do
    local v, err = errors.pair(credentials.key_field("authorized_user", info, source, f, false))
    if v == nil then return errors.ret(err) end
    parts[f] = v or nil
  end
  if parts.universe_domain and not universe.is_dotted_domain(parts.universe_domain) then
    return errors.ret(credentials.key_error("authorized_user", source, "universe_domain",
                                            "not a domain name"))
  end
  return parts
end

local function build(parts, source, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.authorized_user: opts must be a table", 3)
  end
  opts = opts or {}
  local token_uri = opts.token_uri
  if token_uri ~= nil and (type(token_uri) ~= "string" or token_uri == "") then
    arg_error("token_uri must be a non-empty string")
  end
  token_uri = token_uri or parts.token_uri or _M.DEFAULT_TOKEN_URI
  local ok, err = errors.pair(_M.check_token_uri(token_uri))
  if not ok then return errors.ret(err) end
  local shared = credentials.transport_opts(opts, "authorized_user", 4, {
    client_secret = parts.client_secret, refresh_token = parts.refresh_token })
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then arg_error("retry must be a table or false") end
  local init_opts = { cache = opts.cache, now = opts.now, shared_dict = opts.shared_dict,
                      quota_project = opts.quota_project or parts.quota_project_id }
  local self = setmetatable({
    client_id = parts.client_id,
    token_uri = token_uri,
    -- gcloud writes googleapis.com; user credentials of another universe
    -- cannot be refreshed (google-auth's oauth2.credentials refuses too).
    universe_domain = parts.universe_domain or _M.DEFAULT_UNIVERSE,
    scopes = normalise_scopes(opts.scopes, "authorized_user"),
    source = source,
    -- Who the tokens are for, without the secret: two users of gcloud's
    -- client id share the client id, never the refresh token.
    _account = core.b64url_encode(core.sha256(parts.client_id .. "\0" .. parts.refresh_token)),
    _retry = policy,
    _timeout = opts.timeout,
    -- Shared by every copy: the secrets (the refresh token may rotate)
    -- and the transport.
    _shared = shared,
  }, mt)
  credentials.init(self, init_opts)
  return self
end

--- Credentials from a decoded authorized-user file, or its JSON text.
-- @param info table or JSON string
-- @tparam[opt] table opts `scopes` (sent with each refresh; they must be
--   among those the user consented to), `token_uri` (overrides the
--   file's), `quota_project` (overrides the file's `quota_project_id`),
--   `http`, `ca_file`, `timeout`, `retry` (fields over `RETRY`, or false),
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   `cache`, `now`
-- @return credentials | nil, message, err
-- @function from_info

--- Credentials from an authorized-user file.
-- @tparam string path
-- @tparam[opt] table opts as for `from_info`
-- @return credentials | nil, message, err (naming the file and the field at fault,
--   never a secret)
-- @function from_file
_M.from_info, _M.from_file = credentials.constructors("authorized_user", "authorized user info",
  function(info, source, opts)
    local parts, err = errors.pair(parse_info(info, source))
    if not parts then return errors.ret(err) end
    return build(parts, source, opts)
  end)

-- ------------------------------------------------------------------------
-- The refresh
-- ------------------------------------------------------------------------

-- gcloud's credentials whose grant is gone: say how to get new ones.
local function gcloud_hint(op, fields, res, now, message)  -- luacheck: no unused args
  if fields.oauth_error == "invalid_grant" then
    return message .. " (run `gcloud auth application-default login` again"
      .. " if these are gcloud's credentials)"
  end
  return message
end

-- Rotated: the old refresh token may stop working.
local function keep_rotated(op, data)
  local rt = data.refresh_token
  if type(rt) == "string" and rt ~= "" then
    op.owner._shared.refresh_token = rt
  end
end

--- Get a new access token with the refresh token (used by `token()`;
-- call that instead: it caches).
-- @return entry `{ access_token=, expires_at=, id_token=, scope= }` | nil, message, err
function _M:fetch_token()
  if self.universe_domain ~= _M.DEFAULT_UNIVERSE then
    return fail("token request", "user credentials can be refreshed only in the "
      .. _M.DEFAULT_UNIVERSE .. " universe (this file's universe is " .. self.universe_domain .. ")",
      { retryable = false, universe_domain = self.universe_domain })
  end
  local http, terr = errors.pair(token_request.transport(self._shared, "authorized_user"))
  if not http then return errors.ret(terr) end
  local uri = self.token_uri
  local ok, uerr = errors.pair(_M.check_token_uri(uri))
  if not ok then return errors.ret(uerr) end
  local shared = self._shared
  local form = {
    { "grant_type", "refresh_token" },
    { "client_id", self.client_id },
    { "client_secret", shared.client_secret },
    { "refresh_token", shared.refresh_token },
  }
  if self.scopes then form[#form + 1] = { "scope", concat(self.scopes, " ") } end
  return token_request.send({
    module = "authorized_user", url = uri, body = url_lib.form_encode(form), http = http,
    max_body = _M.MAX_RESPONSE, timeout = self._timeout, policy = self._retry,
    now = self._clock, what = "refresh", adjust = gcloud_hint, seen = keep_rotated, owner = self,
  })
end

function _M:cache_key_parts()
  return { account = self._account, token_uri = self.token_uri,
           scopes = credentials.sorted(self.scopes) }
end

--- False: a refresh token already carries the scopes the user consented to.
function _M:requires_scopes()  -- luacheck: no unused args
  return false
end

function _M:describe()
  local parts = { "client " .. self.client_id }
  credentials.describe_scopes(parts, self.scopes)
  return concat(parts, ", ")
end

--- A copy asking for other scopes at refresh (nil: those of the grant).
function _M:with_scopes(scopes)
  local o = self:copy()
  o.scopes = normalise_scopes(scopes, "authorized_user")
  return o
end

return _M
