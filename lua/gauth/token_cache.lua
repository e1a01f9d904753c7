--- The token cache behind every credentials object: where fetched tokens
-- are kept, when they count as fresh, and how refreshes are made one at a
-- time.
--
-- ## Entries
--
-- An entry is a plain table: `access_token` (string), `expires_at` (epoch
-- seconds), `refresh_at` (epoch seconds: after this the entry is no longer
-- handed out and a refresh is made), plus whatever else the credentials
-- type returned (`id_token`, ...). Entries hold tokens: a store must keep
-- them out of logs.
--
-- ## The store interface
--
-- A store is any object with these four methods (the default is a
-- process-local table; issue 7 plugs in an nginx `lua_shared_dict`):
--
--  * `store:get(key)` -> entry table | nil. A missing or unreadable entry is
--    nil; the cache checks freshness itself, so a store may return stale
--    entries.
--  * `store:set(key, entry, ttl)`: keep `entry` for at most `ttl` seconds
--    (after that it is useless: the token has expired). May fail silently
--    (the cache then fetches again next time); a store that serialises
--    entries must keep every field.
--  * `store:delete(key)`.
--  * `store:lock(key, timeout)` -> `unlock` function | nil, err. Single
--    flight: while one caller holds the lock for `key` and fetches, others
--    wait here (up to `timeout` seconds) and then find the fresh entry
--    instead of fetching again. Where nothing can run concurrently (plain
--    Lua with blocking I/O) it may return a no-op function at once.
--
-- Keys are printable strings of at most 64 bytes (see
-- `gauth.credentials:cache_key`).
-- @module gauth.token_cache

local errors = require "gauth.errors"

local type = type
local error = error
local pcall = pcall
local require = require
local ipairs = ipairs
local tostring = tostring
local setmetatable = setmetatable

local ngx = ngx  -- luacheck: ignore

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

--- Google's refresh window: a token is refreshed once it is within this
-- many seconds of expiry (3 min 45 s, as google-auth does), so a caller
-- never gets a token that expires in the next few minutes.
_M.REFRESH_WINDOW = 225

--- How long a caller waits by default for another's refresh of the same
-- token (seconds). Longer than a full token fetch with its retries would
-- ever take is pointless; shorter would let waiters give up on a slow but
-- healthy refresh.
_M.LOCK_TIMEOUT = 90

local function noop() end

-- ngx.semaphore lets coroutines of one nginx worker wait for each other
-- without blocking the worker. Outside nginx, or without lua-resty-core,
-- there is nothing to coordinate: libcurl calls block the whole process.
local semaphore
if type(ngx) == "table" and type(ngx.get_phase) == "function" then
  local ok, sema = pcall(require, "ngx.semaphore")
  if ok and type(sema) == "table" then semaphore = sema end
end

local function can_wait()
  -- ngx.semaphore:wait only works where the request can yield.
  local phase = ngx.get_phase()
  return phase == "rewrite" or phase == "access" or phase == "content"
      or phase == "timer" or phase == "ssl_cert" or phase == "ssl_session_fetch"
      or phase == "preread"
end

-- ------------------------------------------------------------------------
-- The default store: a table in this process (per worker under nginx).
-- ------------------------------------------------------------------------

local local_store = {}
local local_store_mt = { __index = local_store }

--- A process-local store. Entries are kept by reference, so every
-- credentials object with the same cache key shares one entry table.
-- @return a store
function _M.local_store()
  return setmetatable({ data = {}, semas = {} }, local_store_mt)
end

function local_store:get(key)
  return self.data[key]
end

function local_store:set(key, entry)
  -- The ttl is not needed here: an entry is replaced on the next refresh,
  -- and there is one entry per cache key in use.
  self.data[key] = entry
end

function local_store:delete(key)
  self.data[key] = nil
end

function local_store:lock(key, timeout)
  if not semaphore or not can_wait() then
    return noop
  end
  local semas = self.semas
  local s = semas[key]
  if not s then
    local err
    s, err = semaphore.new(1)
    if not s then return nil, "cannot make a semaphore: " .. tostring(err) end
    semas[key] = s
  end
  local ok, err = s:wait(timeout)
  if not ok then
    if err == "timeout" then
      -- The holder may have been killed mid-fetch (an aborted request),
      -- which loses the semaphore's only resource for good. Start over with
      -- a new one and let this caller fetch on its own.
      if semas[key] == s then semas[key] = nil end
      return noop
    end
    return nil, tostring(err)
  end
  return function() s:post(1) end
end

-- ------------------------------------------------------------------------
-- The cache.
-- ------------------------------------------------------------------------

local function check_store(store)
  if type(store) ~= "table" and type(store) ~= "userdata" then
    error("gauth.token_cache: store must be an object", 3)
  end
  for _, m in ipairs({ "get", "set", "delete", "lock" }) do
    if type(store[m]) ~= "function" then
      error("gauth.token_cache: store has no " .. m .. " method", 3)
    end
  end
end

--- Make a cache.
-- @tparam[opt] table opts `store` (default: a new `local_store()`),
--   `window` (seconds, default `REFRESH_WINDOW`), `lock_timeout` (seconds,
--   default `LOCK_TIMEOUT`)
-- @return the cache
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.token_cache: opts must be a table", 2)
  end
  opts = opts or {}
  local store = opts.store or _M.local_store()
  check_store(store)
  local window = opts.window or _M.REFRESH_WINDOW
  if type(window) ~= "number" or window < 0 then
    error("gauth.token_cache: window must be a non-negative number", 2)
  end
  local lt = opts.lock_timeout or _M.LOCK_TIMEOUT
  if type(lt) ~= "number" or lt < 0 then
    error("gauth.token_cache: lock_timeout must be a non-negative number", 2)
  end
  return setmetatable({
    store = store,
    window = window,
    lock_timeout = lt,
    -- key -> { err = err }, a new table for each failed fetch, so callers
    -- that waited for a failing refresh share its error instead of each
    -- making the same failing request in turn (compared by identity: a
    -- clock could not tell two failures in the same millisecond apart).
    failures = {},
  }, mt)
end

local default_cache

--- The process-wide cache used by credentials given no `opts.cache`: under
-- nginx with a `lua_shared_dict gauth` (the name in
-- `gauth.token_cache.shdict`), the one backed by that dict, shared by all
-- workers; otherwise a process-local one.
function _M.default()
  if not default_cache then
    if ngx and type(ngx.shared) == "table" then
      local ok, shdict = pcall(require, "gauth.token_cache.shdict")
      if ok and type(shdict) == "table" and ngx.shared[shdict.DEFAULT_DICT] then
        default_cache = shdict.cache(shdict.DEFAULT_DICT)
      end
    end
    default_cache = default_cache or _M.new()
  end
  return default_cache
end

--- Replace the process-wide cache (issue 7: one backed by a shared dict).
-- Credentials made afterwards use it; existing ones keep theirs.
function _M.set_default(cache)
  if cache ~= nil and (type(cache) ~= "table" or type(cache.fetch) ~= "function") then
    error("gauth.token_cache: set_default needs a cache (from token_cache.new)", 2)
  end
  default_cache = cache
end

--- When should a token fetched at `now`, expiring at `expires_at`, stop
-- being handed out? `window` seconds before expiry; but a token that lives
-- no longer than the window (Google never issues one; emulators and tests
-- do) is used for the first half of its life rather than refetched on
-- every call.
-- @return refresh_at (epoch seconds)
function _M:refresh_at(now, expires_at)
  local life = expires_at - now
  local window = self.window
  if life > window then
    return expires_at - window
  end
  return now + life / 2
end

--- A fresh entry for `key` if the store has one, else nil.
function _M:peek(key, now)
  local e = self.store:get(key)
  if e and now < (e.refresh_at or 0) then return e end
  return nil
end

local function check_entry(e, now)
  if type(e) ~= "table" then
    return "fetch_token returned neither a table nor an error"
  end
  local tok = e.access_token
  if type(tok) ~= "string" or tok == "" then
    return "no access token in the fetched entry"
  end
  local exp = e.expires_at
  if type(exp) ~= "number" or exp ~= exp then
    return "no expiry in the fetched entry"
  end
  if exp <= now then
    return "the fetched token has already expired"
  end
  return nil
end

--- Return a fresh entry for `key`, calling `fetch()` to make one when
-- there is none; one fetch at a time per key (as far as the store's lock
-- goes). A failed fetch is not cached.
-- @tparam string key
-- @tparam function fetch `fetch()` -> entry (with `access_token`,
--   `expires_at`) | nil, err
-- @tparam function clock returns epoch seconds
-- @return entry | nil, err
function _M:fetch(key, fetch, clock)
  local store = self.store
  local e = store:get(key)
  if e and clock() < (e.refresh_at or 0) then return e end

  local failures = self.failures
  local before = failures[key]
  local unlock, lerr = store:lock(key, self.lock_timeout)
  if not unlock then
    return nil, errors.new("token_cache", "lock", tostring(lerr), { retryable = true })
  end
  -- Someone else may have refreshed (or failed to) while we waited.
  local now = clock()
  e = store:get(key)
  if e and now < (e.refresh_at or 0) then
    unlock()
    return e
  end
  local f = failures[key]
  if f and f ~= before then
    unlock()
    return nil, f.err
  end

  -- pcall so that a raising fetch (a bug) cannot leave the key locked.
  local ok, res, err = pcall(fetch)
  local done = clock()
  if not ok then
    unlock()
    error(res, 0)
  end
  if res == nil then
    if err == nil then
      err = errors.new("token_cache", "fetch", "fetch_token returned nothing")
    end
    failures[key] = { err = err }
    unlock()
    return nil, err
  end
  local bad = check_entry(res, done)
  if bad then
    err = errors.new("token_cache", "fetch", bad)
    failures[key] = { err = err }
    unlock()
    return nil, err
  end
  failures[key] = nil
  res.refresh_at = self:refresh_at(done, res.expires_at)
  store:set(key, res, res.expires_at - done)
  unlock()
  return res
end

--- Forget the entry for `key` (a token the API refused, say).
-- @tparam string key
-- @tparam[opt] string token the refused token: the entry is kept when it
--   holds another one (fetched since by another holder of the key)
function _M:invalidate(key, token)
  local store = self.store
  local e = store:get(key)
  if e and token ~= nil and e.access_token ~= token then
    return
  end
  -- Entries of the local store are shared by reference with credentials
  -- objects that keep a pointer to them on their fast path; marking the
  -- table makes every holder refresh, not just this one.
  if e then e.refresh_at = -1 end
  store:delete(key)
  self.failures[key] = nil
end

return _M
