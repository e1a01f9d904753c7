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
-- Errors are `gauth.errors` objects with module "authorized_user"; steps
-- "key file" (fields `file`, `field`), "token_uri", "token request",
-- "token response" (`status`, `error`, `error_description`, `retryable`,
-- `retry_after`).
-- @module gauth.authorized_user

local credentials = require "gauth.credentials"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local util = require "gauth.util"
local core = require "gauth.core"
local cjson = require "cjson.safe"

local type = type
local ipairs = ipairs
local tostring = tostring
local error = error
local require = require
local setmetatable = setmetatable
local sub = string.sub
local lower = string.lower
local concat = table.concat

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "authorized_user" })
local mt = credentials.metatable(_M)

--- Google's token endpoint, used when the file names none.
_M.DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"

--- Retry policy of the token request (as for service accounts);
-- `opts.retry` overrides fields of it, or `false` for one attempt.
_M.RETRY = { attempts = 3, initial = 1, multiplier = 2, max_delay = 32,
             jitter = true, deadline = 60 }

--- Largest token response accepted (bytes).
_M.MAX_RESPONSE = 256 * 1024

local TOKEN_HEADERS = {
  ["content-type"] = "application/x-www-form-urlencoded",
  accept = "application/json",
}

-- As for service accounts: OAuth errors that say "try again", and those
-- no retry can fix whatever the status.
local RETRYABLE_OAUTH = { internal_failure = true, server_error = true,
                          temporarily_unavailable = true }
local FINAL_OAUTH = { invalid_grant = true, invalid_scope = true,
                      invalid_client = true, unauthorized_client = true,
                      invalid_request = true, unsupported_grant_type = true,
                      access_denied = true }

local fail, arg_error = credentials.error_helpers("authorized_user")
local normalise_scopes = credentials.normalise_scopes

--- Check that a token URI may carry a refresh token: https, or http to a
-- loopback host. Nothing is sent otherwise.
-- @return true | nil, err
function _M.check_token_uri(uri)
  local scheme, host = util.parse_url(uri)
  if not scheme then
    return fail("token_uri", "not an absolute http(s) URL: " .. sub(tostring(uri), 1, 200))
  end
  if scheme == "https" then return true end
  if scheme == "http" then
    if util.is_loopback_host(host) then return true end
    return fail("token_uri", "refusing to send a refresh token in clear text to "
      .. host .. " (https is required except for a loopback host)", { uri = uri })
  end
  return fail("token_uri", "unsupported scheme " .. scheme, { uri = uri })
end

---------------------------------------------------------------------------
-- Construction
---------------------------------------------------------------------------

local function parse_info(info, source)
  local t = info.type
  if t ~= nil and t ~= "authorized_user" then
    return nil, credentials.key_type_error("authorized_user", source, t, "authorized_user")
  end
  local parts = {}
  for _, f in ipairs({ "client_id", "client_secret", "refresh_token" }) do
    local v, err = credentials.key_field("authorized_user", info, source, f, true)
    if not v then return nil, err end
    parts[f] = v
  end
  for _, f in ipairs({ "token_uri", "quota_project_id" }) do
    local v, err = credentials.key_field("authorized_user", info, source, f, false)
    if v == nil then return nil, err end
    parts[f] = v or nil
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
  local ok, err = _M.check_token_uri(token_uri)
  if not ok then return nil, err end
  credentials.check_opts(opts, "authorized_user", 4, "http", "ca_file", "timeout")
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then arg_error("retry must be a table or false") end
  local init_opts = { cache = opts.cache, now = opts.now, shared_dict = opts.shared_dict,
                      quota_project = opts.quota_project or parts.quota_project_id }
  local self = setmetatable({
    client_id = parts.client_id,
    token_uri = token_uri,
    scopes = normalise_scopes(opts.scopes, "authorized_user"),
    source = source,
    -- Who the tokens are for, without the secret: two users of gcloud's
    -- client id share the client id, never the refresh token.
    _account = core.b64url_encode(core.sha256(parts.client_id .. "\0" .. parts.refresh_token)),
    _retry = policy,
    _timeout = opts.timeout,
    -- Shared by every copy: the secrets (the refresh token may rotate)
    -- and the transport.
    _shared = { client_secret = parts.client_secret, refresh_token = parts.refresh_token,
                http = opts.http, ca_file = opts.ca_file, timeout = opts.timeout },
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
--   `cache`, `now`
-- @return credentials | nil, err
function _M.from_info(info, opts)
  local source = "authorized user info"
  local err
  info, err = credentials.decode_info("authorized_user", info, source)
  if not info then return nil, err end
  local parts
  parts, err = parse_info(info, source)
  if not parts then return nil, err end
  return build(parts, source, opts)
end

--- Credentials from an authorized-user file.
-- @tparam string path
-- @tparam[opt] table opts as for `from_info`
-- @return credentials | nil, err (naming the file and the field at fault,
--   never a secret)
function _M.from_file(path, opts)
  if type(path) ~= "string" then
    error("gauth.authorized_user: from_file: path must be a string", 2)
  end
  local info, err = credentials.read_key_file("authorized_user", path)
  if not info then return nil, err end
  local parts
  parts, err = parse_info(info, path)
  if not parts then return nil, err end
  return build(parts, path, opts)
end

---------------------------------------------------------------------------
-- The refresh
---------------------------------------------------------------------------

local function transport(self)
  local shared = self._shared
  local http = shared.http
  if http then return http end
  if shared.ca_file or shared.timeout then
    local err
    http, err = require("gauth.http").new({ ca_file = shared.ca_file, timeout = shared.timeout })
    if not http then return nil, errors.wrap("authorized_user", "token request", err) end
    shared.http = http
    return http
  end
  return require("gauth.http").default()
end

local function parse_response(self, res, now)
  local status, body = res.status, res.body
  local uri = self.token_uri
  if status ~= 200 then
    local data = type(body) == "string" and cjson.decode(body) or nil
    local oerr, desc
    if type(data) == "table" then
      if type(data.error) == "string" then
        oerr = data.error
        desc = type(data.error_description) == "string" and data.error_description or nil
      elseif type(data.error) == "table" then
        local e = data.error
        oerr = type(e.status) == "string" and lower(e.status) or nil
        desc = type(e.message) == "string" and e.message or nil
      end
    end
    local retryable
    if oerr and FINAL_OAUTH[oerr] then
      retryable = false
    else
      retryable = retry.is_retryable_status(status) or
                  (oerr ~= nil and RETRYABLE_OAUTH[oerr] == true)
    end
    local msg = "the token endpoint refused the refresh"
    if oerr then msg = msg .. ": " .. oerr .. (desc and (": " .. desc) or "") end
    if oerr == "invalid_grant" then
      msg = msg .. " (run `gcloud auth application-default login` again"
        .. " if these are gcloud's credentials)"
    end
    return fail("token response", msg, {
      status = status, reason = res.reason, error = oerr, error_description = desc,
      retryable = retryable, uri = uri,
      retry_after = retry.parse_retry_after(res.headers and res.headers["retry-after"], now),
    })
  end
  -- A 200 body holds tokens: it never goes into an error.
  local data = cjson.decode(body)
  if type(data) ~= "table" then
    return fail("token response", "the token endpoint's answer is not a JSON object",
                { status = status, retryable = false, uri = uri })
  end
  local tok = data.access_token
  if type(tok) ~= "string" or tok == "" then
    return fail("token response", "no access_token in the token endpoint's answer",
                { status = status, retryable = false, uri = uri })
  end
  local life = credentials.lifetime(data.expires_in)
  if not life then
    return fail("token response", "expires_in is not a positive number",
                { status = status, retryable = false, uri = uri })
  end
  local rt = data.refresh_token
  if type(rt) == "string" and rt ~= "" then
    -- Rotated: the old one may stop working.
    self._shared.refresh_token = rt
  end
  return {
    access_token = tok,
    expires_at = now + life,
    id_token = type(data.id_token) == "string" and data.id_token or nil,
    scope = type(data.scope) == "string" and data.scope or nil,
    token_type = type(data.token_type) == "string" and data.token_type or nil,
  }
end

local function refresh_once(self, http, remaining)
  local ok, uerr = _M.check_token_uri(self.token_uri)
  if not ok then return nil, uerr end
  local timeout = remaining
  if timeout then
    if timeout < 0.05 then
      return fail("token request", "no time left before the deadline",
                  { retryable = false, uri = self.token_uri })
    end
    local cap = self._timeout or (type(http.timeout) == "number" and http.timeout)
    if cap and cap < timeout then timeout = cap end
  end
  local shared = self._shared
  local form = {
    { "grant_type", "refresh_token" },
    { "client_id", self.client_id },
    { "client_secret", shared.client_secret },
    { "refresh_token", shared.refresh_token },
  }
  if self.scopes then form[#form + 1] = { "scope", concat(self.scopes, " ") } end
  local res, err = http:request({
    method = "POST", url = self.token_uri, headers = TOKEN_HEADERS,
    body = util.form_encode(form), timeout = timeout,
    max_body = _M.MAX_RESPONSE, follow_redirects = false,
  })
  if not res then
    local fields = { uri = self.token_uri }
    if type(err) == "table" and err.too_large then fields.retryable = false end
    return nil, errors.wrap("authorized_user", "token request", err, fields)
  end
  return parse_response(self, res, self._clock())
end

--- Get a new access token with the refresh token (used by `token()`;
-- call that instead: it caches).
-- @return entry `{ access_token=, expires_at=, id_token=, scope= }` | nil, err
function _M:fetch_token()
  local http, terr = transport(self)
  if not http then return nil, terr end
  return retry.call(function(_, remaining)
    return refresh_once(self, http, remaining)
  end, self._retry)
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
  local n = self.scopes and #self.scopes or 0
  if n > 0 then parts[#parts + 1] = n .. (n == 1 and " scope" or " scopes") end
  return concat(parts, ", ")
end

--- A copy asking for other scopes at refresh (nil: those of the grant).
function _M:with_scopes(scopes)
  local o = self:copy()
  o.scopes = normalise_scopes(scopes, "authorized_user")
  return o
end

return _M
