--- The base of every credentials type: token caching, Google's refresh
-- window, one refresh at a time, request headers.
--
-- A credentials type (service_account, compute_engine, authorized_user,
-- impersonated, ...) is a class made with `extend` whose objects are set up
-- with `init`, and that implements one method:
--
--     function MyCreds:fetch_token()
--       -- ask the token source; never look at the cache here
--       return { access_token = "...", expires_at = epoch_seconds }  -- | nil, err
--     end
--
-- and, so that two objects asking for different tokens never share one,
-- `cache_key_parts()` returning a table of everything that makes its
-- tokens different (identity, scopes, subject, audience, claims). The base
-- gives the class `token`, `apply`, `invalidate`, `cache_key`, `copy`,
-- `with_quota_project` and a `__tostring` built on `describe()` that shows
-- no token or key.
--
--     local credentials = require "gauth.credentials"
--     local _M = credentials.extend({ _VERSION = "0.1.0", kind = "my_creds" })
--     local mt = credentials.metatable(_M)
--     function _M.new(opts)
--       local self = setmetatable({ ... }, mt)
--       credentials.init(self, opts)   -- cache, clock, quota_project
--       return self
--     end
--
-- Fields the base keeps on an object (all but `quota_project` private):
-- `quota_project`, `_cache` (a `gauth.token_cache`), `_clock` (epoch
-- seconds), `_entry` (the entry last handed out: the fast path), `_key`
-- (the cache key, made once).
-- @module gauth.credentials

local core = require "gauth.core"
local util = require "gauth.util"
local token_cache = require "gauth.token_cache"

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local sort = table.sort
local concat = table.concat
local format = string.format

local _M = { _VERSION = "0.1.0" }

--- Google's refresh window in seconds (3 min 45 s).
_M.REFRESH_WINDOW = token_cache.REFRESH_WINDOW

--- The methods every credentials object has.
local base = {}
_M.base = base

-- Deterministic text for a cache key: the same value always gives the
-- same text whatever the order of a table's keys (scopes, claims).
local function canonical(v, out, depth)
  local t = type(v)
  if t == "nil" then
    out[#out + 1] = "n"
  elseif t == "boolean" then
    out[#out + 1] = v and "T" or "F"
  elseif t == "number" then
    out[#out + 1] = format("d%.17g;", v)
  elseif t == "string" then
    out[#out + 1] = "s" .. #v .. ":" .. v
  elseif t == "table" then
    if depth > 16 then
      error("gauth.credentials: cache key parts nest too deep", 4)
    end
    local keys = {}
    for k in pairs(v) do
      local part = {}
      canonical(k, part, depth + 1)
      keys[#keys + 1] = { concat(part), k }
    end
    sort(keys, function(a, b) return a[1] < b[1] end)
    out[#out + 1] = "{"
    for i = 1, #keys do
      out[#out + 1] = keys[i][1]
      canonical(v[keys[i][2]], out, depth + 1)
    end
    out[#out + 1] = "}"
  else
    error("gauth.credentials: cache key parts must be plain data, not " .. t, 4)
  end
end

--- Deterministic serialisation of plain data (for cache keys).
-- @return string
function _M.canonical(v)
  local out = {}
  canonical(v, out, 0)
  return concat(out)
end

--- Make `class` a credentials class: copy the base methods into it (those
-- it does not define itself), so that a method call is one table lookup.
-- @tparam table class the class table; `class.kind` names the type
-- @return class
function _M.extend(class)
  if type(class) ~= "table" then
    error("gauth.credentials: extend needs a class table", 2)
  end
  for k, v in pairs(base) do
    if class[k] == nil then class[k] = v end
  end
  class.kind = class.kind or "credentials"
  return class
end

local function tostring_creds(self)
  local d = self:describe()
  return "gauth." .. tostring(self.kind) .. " credentials"
    .. ((d and d ~= "") and (" (" .. d .. ")") or "")
end
_M.tostring = tostring_creds

--- The metatable for objects of `class`: `__index` and a `__tostring` that
-- shows only what `describe()` returns.
function _M.metatable(class)
  return { __index = class, __tostring = tostring_creds }
end

--- Set up the base's part of a new object.
-- @tparam table self the new object
-- @tparam[opt] table opts `quota_project` (string: the project billed for
--   API calls, sent as `x-goog-user-project`), `cache` (a `gauth.token_cache`;
--   default the process-wide one, so objects with the same cache key share
--   tokens), `now` (clock returning epoch seconds; for tests)
-- @return self
-- nginx's cached event-loop time is exact enough for a refresh window of
-- minutes and costs a field read; elsewhere the C clock.
local DEFAULT_CLOCK = util.is_ngx and ngx.now or util.now -- luacheck: ignore ngx

function _M.init(self, opts)
  opts = opts or {}
  local qp = opts.quota_project
  if qp ~= nil and (type(qp) ~= "string" or qp == "") then
    error("gauth.credentials: quota_project must be a non-empty string", 3)
  end
  local cache = opts.cache
  if cache ~= nil and (type(cache) ~= "table" or type(cache.fetch) ~= "function") then
    error("gauth.credentials: cache must be a gauth.token_cache", 3)
  end
  -- Under nginx, `shared_dict` names the lua_shared_dict that holds the
  -- tokens for every worker (a dict named "gauth" is used without asking).
  local dict = opts.shared_dict
  if dict ~= nil then
    if type(dict) ~= "string" or cache ~= nil then
      error("gauth.credentials: shared_dict must be a string, and excludes cache", 3)
    end
    local err
    cache, err = require("gauth.token_cache.shdict").cache(dict)
    if not cache then error("gauth.credentials: " .. tostring(err), 3) end
  end
  local clock = opts.now
  if clock ~= nil and type(clock) ~= "function" then
    error("gauth.credentials: now must be a function", 3)
  end
  self.quota_project = qp
  self._cache = cache or token_cache.default()
  self._clock = clock or DEFAULT_CLOCK
  self._entry = nil
  self._key = nil
  return self
end

--- Subclasses implement this: get a new token from the source.
-- @return `{ access_token = , expires_at = , ... }` | nil, err
function base:fetch_token()
  error("gauth.credentials: " .. tostring(self.kind) .. " does not implement fetch_token", 2)
end

--- Subclasses implement this: everything that makes their tokens differ.
-- @return a table of plain data
function base:cache_key_parts()
  error("gauth.credentials: " .. tostring(self.kind) .. " does not implement cache_key_parts", 2)
end

--- A short description for `tostring`: never a token or key.
function base:describe()  -- luacheck: no unused args
  return ""
end

--- The cache key of this object's tokens: the kind and a SHA-256 of
-- `cache_key_parts()` (so that it is short, printable and reveals nothing).
-- @return string
function base:cache_key()
  local k = self._key
  if k then return k end
  local parts = self:cache_key_parts()
  k = "gauth:" .. tostring(self.kind) .. ":"
      .. core.b64url_encode(core.sha256(_M.canonical(parts)))
  self._key = k
  return k
end

local function refresh(self)
  local cache = self._cache
  local e, err = cache:fetch(self._key or self:cache_key(),
                             function() return self:fetch_token() end,
                             self._clock)
  if not e then
    self._entry = nil
    return nil, err
  end
  self._entry = e
  return e.access_token, e.expires_at
end

--- A valid access token: the cached one, or a new one when the cached one
-- is within the refresh window of its expiry (or there is none).
-- @return access_token, expires_at (epoch seconds) | nil, err
function base:token()
  -- The hot path: one field read, one clock read, one comparison.
  local e = self._entry
  if e and self._clock() < e.refresh_at then
    return e.access_token, e.expires_at
  end
  return refresh(self)
end

--- Set the request headers that authorise a call: `authorization` and,
-- with a quota project, `x-goog-user-project`. Header names are lower-case,
-- as gauth's transports expect.
-- @tparam[opt] table headers modified in place (a new table when nil)
-- @return headers | nil, err
function base:apply(headers)
  if headers == nil then
    headers = {}
  elseif type(headers) ~= "table" then
    error("gauth.credentials: apply: headers must be a table", 2)
  end
  local tok, err = self:token()
  if not tok then return nil, err end
  headers.authorization = "Bearer " .. tok
  local qp = self.quota_project
  if qp then headers["x-goog-user-project"] = qp end
  return headers
end

--- Drop the cached token (for every object with the same cache key), so
-- the next `token()` fetches a new one: after an API answered 401, say.
-- @return true
function base:invalidate()
  self._entry = nil
  self._cache:invalidate(self._key or self:cache_key())
  return true
end

--- A copy of this object with `changes` applied, with its own cache key
-- (recomputed) and no cached entry: the basis of the `with_*` modifiers.
-- @tparam[opt] table changes fields to set on the copy
-- @return the copy
function base:copy(changes)
  local o = {}
  for k, v in pairs(self) do o[k] = v end
  if changes then
    for k, v in pairs(changes) do o[k] = v end
  end
  o._entry, o._key = nil, nil
  return setmetatable(o, getmetatable(self))
end

--- A copy billed to another project (`x-goog-user-project`); nil removes it.
-- Tokens are shared with this object: the quota project is not part of them.
function base:with_quota_project(project)
  if project ~= nil and (type(project) ~= "string" or project == "") then
    error("gauth.credentials: quota_project must be a non-empty string", 2)
  end
  local o = self:copy()
  o.quota_project = project
  return o
end

return _M
