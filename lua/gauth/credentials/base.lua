--- The base class of every credentials type: token caching, Google's
-- refresh window, one refresh at a time, request headers, copies, and the
-- signing methods of types without a service account. Internal: reached
-- through `gauth.credentials` (see there for how a type is written).
-- @module gauth.credentials.base

local core = require "gauth.core"
local ngx_phase = require "gauth.lib.ngx_phase"
local time = require "gauth.lib.time"
local errors = require "gauth.errors"
local token_cache = require "gauth.token_cache"
local metrics = require "gauth.metrics"

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local sort = table.sort
local concat = table.concat
local format = string.format

local _M = {}

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
local DEFAULT_CLOCK = ngx_phase.is_ngx and ngx.now or time.now -- luacheck: ignore ngx

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
  -- `now` is a number (a standing clock) or a function, as everywhere.
  local clock = opts.now
  if type(clock) == "number" then
    local t = clock
    clock = function() return t end
  elseif clock ~= nil and type(clock) ~= "function" then
    error("gauth.credentials: now must be a number or a function", 3)
  end
  -- The transport options every type passes on to the transport it makes
  -- for its token requests (gauth.token_request.transport): a proxy URL (or false
  -- for none) and the hosts that go direct.
  local proxy, no_proxy = opts.proxy, opts.no_proxy
  if proxy ~= nil and proxy ~= false and type(proxy) ~= "string" then
    error("gauth.credentials: proxy must be a string (a proxy URL) or false", 3)
  end
  if no_proxy ~= nil and type(no_proxy) ~= "string" then
    error("gauth.credentials: no_proxy must be a string", 3)
  end
  local shared = rawget(self, "_shared")
  if type(shared) == "table" then
    if proxy ~= nil then shared.proxy = proxy end
    if no_proxy ~= nil then shared.no_proxy = no_proxy end
  end
  self.quota_project = qp
  self._cache = cache or token_cache.default()
  self._clock = clock or DEFAULT_CLOCK
  self._entry = nil
  self._key = nil
  -- A store shared by processes (nginx workers) has a generation counter
  -- that an invalidation anywhere raises: the fast path checks it.
  local store = self._cache.store
  self._gstore = type(store) == "table" and type(store.generation) == "function"
    and store or nil
  self._gen = nil
  return self
end

--- Subclasses implement this: get a new token from the source.
-- @return `{ access_token = , expires_at = , ... }` | nil, message, err
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

-- The name of this object in log lines and metrics: tostring (never a
-- secret), made once.
local function label_of(self)
  local l = self._label
  if not l then
    l = tostring_creds(self)
    self._label = l
    self._mkeys = metrics.keys_of(l, self._key or self:cache_key())
  end
  return l
end
_M.label = label_of

local monotonic = core.monotonic

local function refresh(self)
  local cache = self._cache
  local key = self._key or self:cache_key()
  local label = label_of(self)
  local mkeys = self._mkeys
  local gstore = self._gstore
  -- Read before the fetch (an invalidation made meanwhile is seen next
  -- time), kept after it (callers meanwhile must not take the old entry
  -- for current).
  local gen = gstore and gstore:generation()
  local before = cache.store and cache.store:get(key)
  local e, msg, err = cache:fetch(key, function()
    local t0 = monotonic()
    local v, m2, m3 = self:fetch_token()
    local dt = monotonic() - t0
    if v then
      metrics.exchange(label, mkeys, dt)
    else
      metrics.exchange(label, mkeys, dt, m2 ~= nil and tostring(m2) or "no token",
                       errors.is(m3) and m3 or m2)
    end
    return v, m2, m3
  end, self._clock, label)
  if not e then
    self._entry = nil
    metrics.miss(mkeys)
    return errors.ret(errors.of(msg, err, "token_cache", "fetch"))
  end
  -- Served what was in the store (fresh, or still valid while a timer
  -- refreshes it): a hit; else this call waited for an exchange.
  if e == before then metrics.hit(mkeys) else metrics.miss(mkeys) end
  self._entry, self._gen = e, gen
  return e.access_token, e.expires_at
end

--- A valid access token: the cached one, or a new one when the cached one
-- is within the refresh window of its expiry (or there is none).
-- @return access_token, expires_at (epoch seconds) | nil, message, err
function base:token()
  -- The hot path: one field read, one clock read, one comparison (and
  -- under nginx with a shared dict one dict read: has any worker
  -- invalidated since?), one counter.
  local e = self._entry
  if e and self._clock() < e.refresh_at then
    local g = self._gstore
    if not g or g:generation() == self._gen then
      metrics.hit(self._mkeys)
      return e.access_token, e.expires_at
    end
  end
  return refresh(self)
end

--- google-auth's `creds.expired`, as a method: true when this object's
-- token is within the refresh window of its expiry or past it (google-auth's
-- 3 min 45 s skew; a token that lives no longer than the window, which
-- Google never issues, counts as expired after half its life, as `token()`
-- refetches it then), or when another holder invalidated it (an nginx
-- worker, through the shared dict). False when there is no token yet: as in
-- google-auth, nothing is expired until a token was fetched. It never
-- fetches: it says whether the next `token()` will.
-- @return boolean
function base:expired()
  local e = self._entry
  if not e then return false end
  if self._clock() >= e.refresh_at then return true end
  local g = self._gstore
  return (g ~= nil and g:generation() ~= self._gen) and true or false
end

--- google-auth's `creds.valid`, as a method: this object holds a token
-- and it is not `expired()` (`token()` will hand it out without a fetch).
-- False before the first `token()`/`apply()` and after `invalidate()`.
-- @return boolean
function base:valid()
  if not self._entry then return false end
  return not self:expired()
end

--- Set the request headers that authorise a call: `authorization` and,
-- with a quota project, `x-goog-user-project`. Header names are lower-case,
-- as gauth's transports expect.
-- @tparam[opt] table headers modified in place (a new table when nil)
-- @return headers | nil, message, err
function base:apply(headers)
  if headers == nil then
    headers = {}
  elseif type(headers) ~= "table" then
    error("gauth.credentials: apply: headers must be a table", 2)
  end
  local tok, msg, err = self:token()
  if not tok then return nil, msg, err end
  -- The same token goes out call after call: its header value is made
  -- once per token.
  local bearer = self._bearer
  if bearer == nil or self._bearer_token ~= tok then
    bearer = "Bearer " .. tok
    self._bearer, self._bearer_token = bearer, tok
  end
  headers.authorization = bearer
  local qp = self.quota_project
  if qp then headers["x-goog-user-project"] = qp end
  return headers
end

--- Drop the cached token (for every object with the same cache key), so
-- the next `token()` fetches a new one: after an API answered 401, say.
-- Only the token this object last handed out is dropped: one that another
-- holder (another nginx worker) has fetched since was not refused, and stays.
-- @return true
function base:invalidate()
  local held = self._entry
  self._entry = nil
  self._cache:invalidate(self._key or self:cache_key(), held and held.access_token)
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
  o._entry, o._key, o._label, o._mkeys, o._gen = nil, nil, nil, nil, nil
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

-- Signing ---------------------------------------------------------------

-- Types that have a service account to sign with (service_account,
-- compute_engine, impersonated, ...) replace these; the others answer
-- that they cannot.
local function cannot_sign(self)
  return errors.fail(tostring(self.kind), "signing", tostring(self.kind)
    .. " credentials cannot sign (no service account: use a service account key,"
    .. " or impersonate one)", { retryable = false })
end

--- The email of the service account that signs (`sign_bytes`, `sign_jwt`).
-- @return email | nil, msg, err (credentials without a service account)
function base:signer_email()
  return cannot_sign(self)
end

--- Sign bytes with the service account's key (RSA-SHA256, PKCS#1 v1.5):
-- locally with a key file, else through IAM Credentials' `signBlob`.
-- @tparam string bytes
-- @return raw signature bytes | nil, msg, err
function base:sign_bytes(bytes)  -- luacheck: no unused args
  return cannot_sign(self)
end

--- A JWT of `claims` signed by the service account (RS256): locally with
-- a key file, else through IAM Credentials' `signJwt`.
-- @tparam table claims
-- @return the JWT | nil, msg, err
function base:sign_jwt(claims)  -- luacheck: no unused args
  return cannot_sign(self)
end

--- `with_target_audience` of ID token credentials (those whose `mode` is
-- "id_token"): a copy for another audience. The caller raises, with its
-- module's name, when this returns nil.
-- @tparam table self
-- @param target the new audience
-- @return the copy | nil, what is wrong
function _M.copy_for_audience(self, target)
  if type(target) ~= "string" or target == "" then
    return nil, "target_audience must be a non-empty string"
  end
  if self.mode ~= "id_token" then
    return nil, "with_target_audience is for ID token credentials"
  end
  local o = self:copy()
  o.target_audience = target
  return o
end

return _M
