--- Downscoped credentials: tokens that can do less than their source's,
-- limited by a Credential Access Boundary (Cloud Storage buckets, object
-- prefixes, IAM roles), made by exchanging the source's access token at
-- Google's Security Token Service. Hand them to a less-trusted process.
--
--     local downscoped = require "gauth.downscoped"
--     local creds = assert(downscoped.new(source_creds, { rules = {
--       { available_resource = "//storage.googleapis.com/projects/_/buckets/my-bucket",
--         available_permissions = { "inRole:roles/storage.objectViewer" },
--         availability_condition = {
--           expression = "resource.name.startsWith('projects/_/buckets/my-bucket/objects/public/')",
--           title = "public objects only" } },
--     } }))
--     local tok = assert(creds:token())
--
-- `token()` asks the source for its token and exchanges it (`gauth.sts`,
-- `options` = the access boundary as JSON) for one with the boundary;
-- tokens are cached and refreshed like any gauth credentials' (225 s
-- before expiry). A token's expiry is `expires_in` of the answer, else the
-- source token's (as google-auth does).
--
-- Errors: `nil, msg, err`, module "downscoped": step "options" (`rule` =
-- the rule's index, `field` = the field at fault), and those of
-- `gauth.sts` ("endpoint", "token request", "token response") and
-- "source credentials" (the source's error as `cause`).
-- @module gauth.downscoped

local credentials = require "gauth.credentials"
local errors = require "gauth.errors"
local sts = require "gauth.sts"
local universe = require "gauth.universe"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local setmetatable = setmetatable
local find = string.find
local format = string.format
local gsub = string.gsub
local concat = table.concat

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "downscoped" })
local mt = credentials.metatable(_M)

--- The most rules a Credential Access Boundary may have.
_M.MAX_RULES = 10

--- Retry policy of the exchange (`gauth.sts.RETRY`).
_M.RETRY = sts.RETRY

local function bad(message, rule, field)
  return errors.fail("downscoped", "options", message, { rule = rule, field = field })
end

-- JSON string literal (the boundary is written with a fixed key order,
-- so that the same rules always make the same request and cache key).
local JSON_ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                   ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
local function json_string(s)
  return '"' .. gsub(s, '[%z\1-\31"\\]', function(c)
    return JSON_ESC[c] or format("\\u%04x", c:byte())
  end) .. '"'
end

local function str(v)
  return type(v) == "string" and v ~= ""
end

-- The rules as google-auth's JSON ("accessBoundary" -> rules with
-- availableResource, availablePermissions, availabilityCondition).
local function boundary_json(rules)
  if type(rules) ~= "table" then
    return bad("rules must be an array of access boundary rules", nil, "rules")
  end
  local n = #rules
  for k in pairs(rules) do
    if type(k) ~= "number" or k % 1 ~= 0 or k < 1 or k > n then
      return bad("rules must be an array of access boundary rules", nil, "rules")
    end
  end
  if n == 0 then return bad("rules needs at least one access boundary rule", nil, "rules") end
  if n > _M.MAX_RULES then
    return bad("rules has " .. n .. " access boundary rules; at most " .. _M.MAX_RULES, nil, "rules")
  end
  local out = {}
  for i, r in ipairs(rules) do
    local where = "rules[" .. i .. "]"
    if type(r) ~= "table" then return bad(where .. " must be a table", i) end
    for k in pairs(r) do
      if k ~= "available_resource" and k ~= "available_permissions"
          and k ~= "availability_condition" then
        return bad(where .. " has an unknown field " .. tostring(k), i, tostring(k))
      end
    end
    if not str(r.available_resource) then
      return bad(where .. ".available_resource is required (a non-empty string)", i,
                 "available_resource")
    end
    local perms = r.available_permissions
    if type(perms) ~= "table" or #perms == 0 then
      return bad(where .. ".available_permissions is required (a non-empty array)", i,
                 "available_permissions")
    end
    local plist = {}
    for j, p in ipairs(perms) do
      if type(p) ~= "string" or not find(p, "^inRole:.") then
        return bad(format("%s.available_permissions[%d] must be a string starting with inRole:",
                          where, j), i, "available_permissions")
      end
      plist[j] = json_string(p)
    end
    local rule = '{"availableResource":' .. json_string(r.available_resource)
                 .. ',"availablePermissions":[' .. concat(plist, ",") .. "]"
    local c = r.availability_condition
    if c ~= nil then
      if type(c) ~= "table" then
        return bad(where .. ".availability_condition must be a table", i, "availability_condition")
      end
      for k in pairs(c) do
        if k ~= "expression" and k ~= "title" and k ~= "description" then
          return bad(where .. ".availability_condition has an unknown field " .. tostring(k), i,
                     "availability_condition")
        end
      end
      if not str(c.expression) then
        return bad(where .. ".availability_condition.expression is required (a non-empty string)",
                   i, "availability_condition.expression")
      end
      local cond = '{"expression":' .. json_string(c.expression)
      for _, k in ipairs({ "title", "description" }) do
        if c[k] ~= nil then
          if type(c[k]) ~= "string" then
            return bad(where .. ".availability_condition." .. k .. " must be a string", i,
                       "availability_condition." .. k)
          end
          cond = cond .. ',"' .. k .. '":' .. json_string(c[k])
        end
      end
      rule = rule .. ',"availabilityCondition":' .. cond .. "}"
    end
    out[i] = rule .. "}"
  end
  return '{"accessBoundary":{"accessBoundaryRules":[' .. concat(out, ",") .. "]}}"
end

--- Downscoped credentials.
-- @tparam table source credentials with `token()` (their token must allow
--   what the rules name: the boundary only takes away)
-- @tparam table opts `rules` (1..10 access boundary rules:
--   `available_resource` (string), `available_permissions` (array of
--   "inRole:<role>"), `availability_condition` (`expression`, `title`,
--   `description`)), `universe_domain` (default the source's, else
--   "googleapis.com"), `token_url` (instead of
--   `https://sts.<universe_domain>/v1/token`), `quota_project`, `http`,
--   `ca_file`, `timeout`, `retry` (fields over `RETRY`, or false), `cache`,
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   `now`
-- @return credentials | nil, msg, err (a rule or option at fault)
function _M.new(source, opts)
  if type(source) ~= "table" or type(source.token) ~= "function" then
    error("gauth.downscoped: new: source must be credentials (with :token)", 2)
  end
  if type(opts) ~= "table" then error("gauth.downscoped: new: opts with rules required", 2) end
  local cab, m, x = boundary_json(opts.rules)
  if not cab then return nil, m, x end
  local ud = opts.universe_domain
  if ud == nil then ud = universe.known(source) end
  if ud ~= nil and not universe.is_domain(ud) then
    return bad("universe_domain must be a domain name", nil, "universe_domain")
  end
  local url = opts.token_url or sts.token_url(ud)
  if type(url) ~= "string" then return bad("token_url must be a string", nil, "token_url") end
  local shared = credentials.transport_opts(opts, "downscoped", 3)
  local self = setmetatable({
    source = source,
    universe_domain = ud or universe.DEFAULT,
    token_url = url,
    access_boundary = cab,
    _retry = opts.retry,
    _timeout = opts.timeout,
    _shared = shared,
  }, mt)
  credentials.init(self, opts)
  return self
end

--- Exchange the source's token for a downscoped one (used by `token()`;
-- call that instead: it caches).
-- @return entry | nil, msg, err
function _M:fetch_token()
  local tok, m, x = self.source:token()
  if not tok then
    local cause = errors.of(m, x)
    return errors.fail_with("downscoped", "source credentials", cause, { retryable = false })
  end
  local source_exp = m
  local http, hmsg, herr = require("gauth.token_request").transport(self._shared, "downscoped")
  if not http then return errors.ret(errors.of(hmsg, herr)) end
  local data, dm, dx = sts.exchange({
    url = self.token_url, module = "downscoped", http = http, timeout = self._timeout,
    retry = self._retry, now = self._clock,
    subject_token = tok, subject_token_type = sts.ACCESS_TOKEN_TYPE,
    requested_token_type = sts.ACCESS_TOKEN_TYPE, options = self.access_boundary,
  })
  if not data then return errors.ret(errors.of(dm, dx)) end
  local now = self._clock()
  local expires_at
  if data.expires_in ~= nil then
    local life = credentials.lifetime(data.expires_in)
    if not life then
      return errors.fail("downscoped", "token response", "expires_in is not a positive number",
                         { retryable = false, uri = self.token_url })
    end
    expires_at = now + life
  elseif type(source_exp) == "number" then
    expires_at = source_exp
  else
    expires_at = now + 3600
  end
  return { access_token = data.access_token, expires_at = expires_at,
           token_type = type(data.token_type) == "string" and data.token_type or nil }
end

function _M:cache_key_parts()
  local src = self.source
  local sk = type(src.cache_key) == "function" and src:cache_key() or credentials.source_id(src)
  return { source = sk, boundary = self.access_boundary, url = self.token_url }
end

function _M:describe()
  return "downscoped from " .. tostring(self.source)
end

--- The universe domain of these credentials (the source's).
function _M:get_universe_domain()
  return self.universe_domain
end


return _M
