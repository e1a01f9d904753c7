--- Workforce identity federation for people: a refresh token of a
-- workforce pool's user (what `gcloud auth application-default login
-- --login-config=...` writes, `"type": "external_account_authorized_user"`),
-- traded at STS's `oauthtoken` endpoint for access tokens with the client's
-- id and secret in HTTP Basic authentication.
--
--     local eau = require "gauth.external_account_authorized_user"
--     local creds = assert(eau.from_file(path))
--
-- Fields read: `audience`, `client_id`, `client_secret`, `refresh_token`
-- (required), `token_url` (default `https://sts.<universe_domain>/v1/oauthtoken`),
-- `token_info_url`, `revoke_url`, `quota_project_id`, `universe_domain`.
-- The refresh token and the client secret go only to those URLs (https, or
-- http to a loopback host) and never into an error or `tostring`.
--
-- Errors: `nil, msg, err`, module "external_account_authorized_user";
-- steps "key file" (`field`), "token request", "token response" (`status`,
-- `error`, `error_description`, `retryable`), "revoke", "token info".
-- @module gauth.external_account_authorized_user

local credentials = require "gauth.credentials"
local token_request = require "gauth.token_request"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local url_lib = require "gauth.lib.url"
local core = require "gauth.core"
local cjson = require "cjson.safe"

local type = type
local ipairs = ipairs
local error = error
local tostring = tostring
local setmetatable = setmetatable
local gsub = string.gsub
local universe = require "gauth.universe"

local MODULE = "external_account_authorized_user"
local _M = credentials.extend({ _VERSION = "0.1.0", kind = MODULE })
local mt = credentials.metatable(_M)

_M.DEFAULT_TOKEN_URL = "https://sts.{universe_domain}/v1/oauthtoken"
_M.DEFAULT_UNIVERSE_DOMAIN = universe.DEFAULT
--- Retry policy of the refresh: `gauth.token_request.RETRY`, the one
-- table of every token request (`opts.retry` overrides fields of it).
_M.RETRY = token_request.RETRY
_M.MAX_RESPONSE = 256 * 1024

local function key_error(source, field, message)
  return credentials.key_error(MODULE, source, field, message)
end

local function parse(info, source)
  if info.type ~= MODULE then
    return nil, credentials.key_type_error(MODULE, source, info.type, MODULE)
  end
  local c = {}
  for _, f in ipairs({ "client_id", "client_secret", "refresh_token" }) do
    local v, err = errors.pair(credentials.key_field(MODULE, info, source, f, true))
    if not v then return errors.ret(err) end
    c[f] = v
  end
  for _, f in ipairs({ "audience", "token_url", "token_info_url", "revoke_url",
                       "quota_project_id", "universe_domain" }) do
    local v, err = errors.pair(credentials.key_field(MODULE, info, source, f, false))
    if v == nil then return errors.ret(err) end
    c[f] = v or nil
  end
  c.universe_domain = c.universe_domain or _M.DEFAULT_UNIVERSE_DOMAIN
  if not universe.is_domain(c.universe_domain) then
    return nil, key_error(source, "universe_domain", "is not a domain name")
  end
  c.token_url = c.token_url or gsub(_M.DEFAULT_TOKEN_URL, "{universe_domain}", c.universe_domain)
  for _, f in ipairs({ "token_url", "token_info_url", "revoke_url" }) do
    if c[f] then
      local ok, err = errors.pair(token_request.check_url(c[f], MODULE, "key file", "a refresh token"))
      if not ok then return nil, key_error(source, f, err.message) end
    end
  end
  return c
end

local function build(c, source, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth." .. MODULE .. ": opts must be a table", 3)
  end
  opts = opts or {}
  local shared = credentials.transport_opts(opts, MODULE, 4, {
    client_secret = c.client_secret, refresh_token = c.refresh_token })
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then error("gauth." .. MODULE .. ": retry must be a table or false", 3) end
  local self = setmetatable({
    audience = c.audience, client_id = c.client_id, token_url = c.token_url,
    token_info_url = c.token_info_url, revoke_url = c.revoke_url,
    universe_domain = c.universe_domain, file = source,
    _account = core.b64url_encode(core.sha256(c.client_id .. "\0" .. c.refresh_token)),
    _retry = policy, _timeout = opts.timeout,
    _shared = shared,
  }, mt)
  credentials.init(self, { cache = opts.cache, now = opts.now, shared_dict = opts.shared_dict,
                           quota_project = opts.quota_project or c.quota_project_id })
  return self
end

--- Credentials from a decoded `external_account_authorized_user` file, or
-- its JSON text.
-- @param info table or JSON string
-- @tparam[opt] table opts `quota_project`, `http`, `ca_file`, `timeout`,
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   `retry`, `cache`, `shared_dict`, `now`
-- @return credentials | nil, msg, err
-- @function from_info

--- Credentials from an `external_account_authorized_user` file.
-- @tparam string path
-- @tparam[opt] table opts as for `from_info`
-- @return credentials | nil, msg, err
-- @function from_file
_M.from_info, _M.from_file = credentials.constructors(MODULE, "external account authorized user info",
  function(info, source, opts)
    local c, err = errors.pair(parse(info, source))
    if not c then return errors.ret(err) end
    return build(c, source, opts)
  end)

local function basic(self)
  return "Basic " .. core.b64_encode(self.client_id .. ":" .. self._shared.client_secret)
end

local function form_headers(self)
  return { ["content-type"] = "application/x-www-form-urlencoded", accept = "application/json",
           authorization = basic(self) }
end

-- Rotated: the old refresh token may stop working.
local function keep_rotated(op, data)
  if type(data.refresh_token) == "string" and data.refresh_token ~= "" then
    op.owner._shared.refresh_token = data.refresh_token
  end
end

--- Get a new access token with the refresh token (used by `token()`).
-- @return entry | nil, msg, err
function _M:fetch_token()
  local http, terr = errors.pair(token_request.transport(self._shared, MODULE))
  if not http then return errors.ret(terr) end
  return token_request.send({
    module = MODULE, url = self.token_url, headers = form_headers(self), http = http,
    body = url_lib.form_encode({ { "grant_type", "refresh_token" },
                              { "refresh_token", self._shared.refresh_token } }),
    max_body = _M.MAX_RESPONSE, timeout = self._timeout, policy = self._retry,
    now = self._clock, what = "refresh", seen = keep_rotated, owner = self,
  })
end

--- A valid access token (cached): `nil, msg, err` on failure.
function _M:token()
  local tok, exp, err = credentials.base.token(self)
  if not tok then return errors.ret(errors.of(exp, err)) end
  return tok, exp
end

--- Authorise a request: `nil, msg, err` on failure.
function _M:apply(headers)
  if headers ~= nil and type(headers) ~= "table" then
    error("gauth." .. MODULE .. ": apply: headers must be a table", 2)
  end
  local tok, msg, err = self:token()
  if not tok then return nil, msg, err end
  return credentials.base.apply(self, headers)
end

-- Revoke and token info (one attempt each: no `policy`).
local function call_refused(op, res, now)
  local fields = token_request.refusal(res, now, op.url)
  local msg = "HTTP " .. tostring(res.status)
  if fields.oauth_error then
    msg = fields.oauth_error .. (fields.error_description and (": " .. fields.error_description) or "")
  end
  return errors.new(MODULE, op.step, msg, fields)
end

local function call_answer(op, res)  -- luacheck: no unused args
  return res
end

local function one_call(self, step, url, token)
  if not url then
    return errors.fail(MODULE, step, "the file has no " .. (step == "revoke" and "revoke_url" or "token_info_url"))
  end
  local http, terr = errors.pair(token_request.transport(self._shared, MODULE))
  if not http then return errors.ret(terr) end
  return token_request.send({
    module = MODULE, step = step, url = url, headers = form_headers(self), http = http,
    body = url_lib.form_encode({ { "token", token } }), max_body = _M.MAX_RESPONSE,
    timeout = self._timeout, now = self._clock,
    refused = call_refused, accept = call_answer,
  })
end

--- Revoke the refresh token (or `token`) at `revoke_url`; the cached
-- access token is dropped.
-- @tparam[opt] string token default the refresh token
-- @return true | nil, msg, err
function _M:revoke(token)
  if token ~= nil and type(token) ~= "string" then
    error("gauth." .. MODULE .. ": revoke: token must be a string", 2)
  end
  local res, msg, err = one_call(self, "revoke", self.revoke_url, token or self._shared.refresh_token)
  if not res then return nil, msg, err end
  self:invalidate()
  return true
end

--- What STS says of a token (RFC 7662 introspection at `token_info_url`).
-- @tparam[opt] string token default the current access token
-- @return the decoded answer (`active`, `exp`, `username`, ...) | nil, msg, err
function _M:token_info(token)
  if token == nil then
    local tok, msg, err = self:token()
    if not tok then return nil, msg, err end
    token = tok
  elseif type(token) ~= "string" then
    error("gauth." .. MODULE .. ": token_info: token must be a string", 2)
  end
  local res, msg, err = one_call(self, "token info", self.token_info_url, token)
  if not res then return nil, msg, err end
  local data = cjson.decode(res.body)
  if type(data) ~= "table" then
    return errors.fail(MODULE, "token info", "the answer is not a JSON object", { status = 200 })
  end
  return data
end

function _M:cache_key_parts()
  return { account = self._account, token_url = self.token_url }
end

--- False: the refresh token carries the scopes the user consented to.
function _M:requires_scopes()  -- luacheck: no unused args
  return false
end

function _M:describe()
  return "client " .. self.client_id .. (self.audience and (", audience " .. self.audience) or "")
end

return _M
