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
-- process-local table, bounded; `gauth.token_cache.shdict` is one over an
-- nginx `lua_shared_dict`):
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
--    flight across the processes that share the store: while one caller
--    holds the lock for `key` and fetches, others wait here (up to
--    `timeout` seconds) and then find the fresh entry instead of fetching
--    again. A store of one process may return a no-op function at once:
--    within a process (an nginx worker) the cache itself lets one fetch
--    per key run at a time.
--  * optionally `store:schedule(key, refresh, label)`: run `refresh()` in
--    the background (a shared store does it once for all its processes);
--    `label` names the credential in log lines.
--  * optionally `store:failure(key)` -> error object | nil and
--    `store:remember_failure(key, err)`: a negative cache. A failed fetch
--    is remembered (for every process sharing the store) and, while it is,
--    callers with no valid token get it back at once instead of asking the
--    token endpoint again.
--  * optionally `store:generation()` -> number: a counter that `delete`
--    raises, so that credentials objects holding an entry on their fast
--    path notice an `invalidate` made in another process.
--
-- ## Inside nginx
--
-- Nothing blocks a worker. A fetch runs in an `ngx.timer.at` timer that
-- the requests needing it wait for (a semaphore): a request that dies
-- meanwhile does not stop it nor leave the lock held. In phases without
-- cosockets a valid token is served and a refresh is scheduled; with no
-- valid token the caller gets a retryable error at once. `init_by_lua`
-- fetches inline (blocking is allowed in the master).
--
-- Keys are printable strings of at most 64 bytes (see
-- `gauth.credentials:cache_key`).
-- @module gauth.token_cache

local errors = require "gauth.errors"
local lru = require "gauth.lib.lru"
local ngx_phase = require "gauth.lib.ngx_phase"
local time = require "gauth.lib.time"

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

--- How many entries a process-local store keeps at most (and how many
-- failure memos a cache keeps): the least recently used go first, expired
-- ones whenever they are met. ~1 KiB each.
_M.MAX_ENTRIES = 4096

--- Seconds before its expiry a token stops being handed out where no
-- refresh can be waited for (nginx phases without cosockets).
_M.EXPIRY_MARGIN = 1

local function noop() end

-- Inside nginx: timers and ngx.semaphore, so that a fetch runs where a
-- request's death cannot kill it (a timer) and the requests that need it
-- wait without blocking the worker. Outside nginx there is nothing to
-- coordinate: libcurl calls block the whole process.
local semaphore, timer_at, get_phase, ngx_log, ERR
if ngx_phase.is_ngx then
  local ok, sema = pcall(require, "ngx.semaphore")
  if ok and type(sema) == "table" then semaphore = sema end
  timer_at, get_phase, ngx_log, ERR = ngx.timer.at, ngx.get_phase, ngx.log, ngx.ERR
end
local nonblocking_phase = ngx_phase.nonblocking
local can_yield = ngx_phase.can_yield
local real_now = time.now

local retry_deadline = require("gauth.retry").deadline

-- How long a caller may wait for a fetch: the cache's lock timeout, or
-- less when a deadline (`gauth.retry.within`: an execute() with
-- `deadline`) ends sooner. nil when that deadline has passed.
local function wait_budget(self)
  local d = retry_deadline()
  local t = self.lock_timeout
  if d then
    local left = d - real_now()
    if left <= 0 then return nil end
    if left < t then t = left end
  end
  return t
end

local function deadline_error(what)
  return errors.fail("token_cache", "deadline", "the deadline passed while " .. what,
                     { retryable = true, kind = "deadline" })
end

-- ------------------------------------------------------------------------
-- The default store: a table in this process (per worker under nginx).
-- ------------------------------------------------------------------------

local local_store = {}
local local_store_mt = { __index = local_store }

local function slot_expired(slot)
  return real_now() >= slot[2]
end

--- A process-local store, bounded (least recently used entries go first,
-- expired ones whenever met). Entries are kept by reference, so every
-- credentials object with the same cache key shares one entry table.
-- @tparam[opt] table opts `max_entries` (default `MAX_ENTRIES`)
-- @return a store
function _M.local_store(opts)
  local max = opts and opts.max_entries or _M.MAX_ENTRIES
  if type(max) ~= "number" or max < 2 then
    error("gauth.token_cache: max_entries must be a number >= 2", 2)
  end
  return setmetatable({ data = lru.new(max, slot_expired), max_entries = max },
                      local_store_mt)
end

function local_store:get(key)
  local slot = self.data:get(key)
  return slot and slot[1]
end

function local_store:set(key, entry, ttl)
  if type(ttl) ~= "number" or ttl <= 0 then
    self.data:delete(key)
    return
  end
  self.data:set(key, { entry, real_now() + ttl })
end

function local_store:delete(key)
  self.data:delete(key)
end

--- How many entries the store holds now (expired ones not yet met
-- included).
function local_store:count()
  return self.data:count()
end

-- No lock: where callers can run concurrently (nginx) the cache already
-- lets one fetch per key run at a time in a worker (see `fetch`), and this
-- store is the worker's own.
function local_store.lock()
  return noop
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
--   default `LOCK_TIMEOUT`), `max_entries` (of the default store and of
--   the failure memos, default `MAX_ENTRIES`)
-- @return the cache
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.token_cache: opts must be a table", 2)
  end
  opts = opts or {}
  local max = opts.max_entries or _M.MAX_ENTRIES
  if type(max) ~= "number" or max < 2 then
    error("gauth.token_cache: max_entries must be a number >= 2", 2)
  end
  local store = opts.store or _M.local_store({ max_entries = max })
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
    -- Bounded like the store: one per credential would grow for ever.
    failures = lru.new(max),
    -- Under nginx, per worker: key -> the fetch under way in a timer
    -- (removed when it ends), and key -> the background refresh scheduled
    -- from a phase without cosockets (with its backoff after failures).
    flights = {},
    scheduled = lru.new(max),
  }, mt)
end

local default_cache

--- The process-wide cache used by credentials given no `opts.cache`: under
-- nginx with a `lua_shared_dict gauth` (the name in
-- `gauth.token_cache.shdict`), the one backed by that dict, shared by all
-- workers; otherwise a process-local one (under nginx, with one warning in
-- the error log: see `gauth.token_cache.shdict.warn_no_dict`).
function _M.default()
  if not default_cache then
    if ngx_phase.is_ngx and type(ngx.shared) == "table" then
      local shdict = require "gauth.token_cache.shdict"
      if ngx.shared[shdict.DEFAULT_DICT] then
        default_cache = shdict.cache(shdict.DEFAULT_DICT)
      else
        shdict.warn_no_dict()
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

--- The error of a phase where nginx has no cosockets and there is no
-- valid token to serve (`nil, msg, err`; retryable, with `phase` and
-- `kind` "phase").
-- @tparam string phase
-- @tparam boolean scheduled whether a refresh was scheduled in a timer
function _M.phase_error(phase, scheduled)
  return errors.fail("token_cache", "refresh", "no valid token cached, and "
    .. ngx_phase.refusal(phase)
    .. (scheduled and "; a refresh was scheduled in a timer: try again shortly" or ""),
    { retryable = true, phase = phase, kind = "phase" })
end

-- The fetch itself, under the store's lock: the one place where `fetch`
-- (a token request) is called.
-- @return entry | nil, msg, err
local function locked_fetch(self, key, fetch, clock)
  local store = self.store
  local failures = self.failures
  local before = failures:get(key)
  local budget = wait_budget(self)
  if not budget then return deadline_error("waiting for the token") end
  local unlock, lerr = store:lock(key, budget)
  if not unlock then
    return errors.fail("token_cache", "lock", tostring(lerr), { retryable = true })
  end
  -- Someone else may have refreshed (or failed to) while we waited.
  local now = clock()
  local e = store:get(key)
  if e and now < (e.refresh_at or 0) then
    unlock()
    return e
  end
  local f = failures:get(key)
  if f and f ~= before then
    unlock()
    return errors.ret(f.err)
  end
  -- Another process's fetch failed a moment ago: its failure stands for
  -- a while (the negative cache) rather than a new request to an endpoint
  -- that is down.
  if store.failure then
    local ferr = store:failure(key)
    if ferr then
      unlock()
      return errors.ret(ferr)
    end
  end

  -- pcall so that a raising fetch (a bug) cannot leave the key locked.
  local ok, res, e2, e3 = pcall(fetch)
  local done = clock()
  if not ok then
    unlock()
    error(res, 0)
  end
  local err
  if res == nil then
    if e2 == nil and e3 == nil then
      err = errors.new("token_cache", "fetch", "fetch_token returned nothing")
    else
      err = errors.of(e2, e3, "token_cache", "fetch")
    end
    failures:set(key, { err = err })
    if store.remember_failure then store:remember_failure(key, err) end
    unlock()
    return errors.ret(err)
  end
  local bad = check_entry(res, done)
  if bad then
    err = errors.new("token_cache", "fetch", bad)
    failures:set(key, { err = err })
    unlock()
    return errors.ret(err)
  end
  failures:delete(key)
  res.refresh_at = self:refresh_at(done, res.expires_at)
  store:set(key, res, res.expires_at - done)
  unlock()
  return res
end

-- Under nginx a fetch runs in a timer (a "flight"): a request that needs
-- the token waits for it on a semaphore, and when that request dies (the
-- client went away, ngx.thread.kill) the fetch goes on and ends, releasing
-- the store's lock, instead of holding it until the lock expires; the
-- next caller of this worker joins the same flight.
local function run_flight(premature, self, key, fetch, clock, flight)
  if premature then
    flight.res, flight.msg, flight.err = errors.fail("token_cache", "fetch",
      "the nginx worker is exiting", { retryable = true })
  else
    local ok, res, msg, err = pcall(locked_fetch, self, key, fetch, clock)
    if ok then
      flight.res, flight.msg, flight.err = res, msg, err
    else
      flight.raised = res
      if flight.waiters == 0 then
        ngx_log(ERR, "gauth: token fetch raised an error: ", tostring(res))
      end
    end
  end
  if self.flights[key] == flight then self.flights[key] = nil end
  if flight.waiters > 0 then flight.sema:post(flight.waiters) end
end

local function flight_fetch(self, key, fetch, clock)
  local flights = self.flights
  local flight = flights[key]
  if not flight then
    local sema = semaphore.new(0)
    if not sema then return locked_fetch(self, key, fetch, clock) end
    flight = { sema = sema, waiters = 0 }
    if get_phase() == "timer" then
      -- Already where no request's death can stop it: run it here; other
      -- callers of this worker wait for it meanwhile.
      flights[key] = flight
      run_flight(false, self, key, fetch, clock, flight)
    else
      if not timer_at(0, run_flight, self, key, fetch, clock, flight) then
        -- No timer to be had (lua_max_pending_timers): fetch here.
        return locked_fetch(self, key, fetch, clock)
      end
      flights[key] = flight
      flight.waiters = 1
      local budget = wait_budget(self)
      local ok, werr = sema:wait(budget or 0)
      if not ok then
        flight.waiters = flight.waiters - 1
        if budget and budget < self.lock_timeout then
          return deadline_error("waiting for the token fetch")
        end
        return errors.fail("token_cache", "lock", "waiting for the token fetch: "
          .. tostring(werr) .. " after " .. tostring(self.lock_timeout) .. " s",
          { retryable = true })
      end
    end
  else
    flight.waiters = flight.waiters + 1
    local budget = wait_budget(self)
    local ok, werr = flight.sema:wait(budget or 0)
    if not ok then
      flight.waiters = flight.waiters - 1
      if budget == nil or budget < self.lock_timeout then
        return deadline_error("waiting for another request's fetch of this token")
      end
      return errors.fail("token_cache", "lock", "waiting for another request's fetch of"
        .. " this token: " .. tostring(werr) .. " after " .. tostring(self.lock_timeout)
        .. " s", { retryable = true })
    end
  end
  if flight.raised then error(flight.raised, 0) end
  return flight.res, flight.msg, flight.err
end

local function background_failed(self, key, state, msg)
  local n = state.n + 1
  -- Nobody schedules another before the backoff ends (1 s doubling, at
  -- most 30 s): a dead endpoint is not asked at the rate of requests.
  local backoff = 2 ^ (n - 1)
  if backoff > 30 then backoff = 30 end
  self.scheduled:set(key, { n = n, til = real_now() + backoff })
  if n == 1 then
    ngx_log(ERR, "gauth: background token refresh failed (retrying with backoff): ",
            tostring(msg))
  end
end

local function background(premature, self, key, fetch, clock, state)
  state.running = false
  if premature then return end
  local ok, res, msg = pcall(_M.fetch, self, key, fetch, clock)
  if ok and res then
    self.scheduled:delete(key)
  else
    background_failed(self, key, state, msg or res)
  end
end

--- Refresh `key` in the background (an `ngx.timer.at` timer), unless that
-- is under way or backing off after a failure. The shared-dict store
-- schedules for every worker at once (`store:schedule`); other stores per
-- worker.
-- @return true if a refresh is under way
function _M:schedule(key, fetch, clock, label)
  local store = self.store
  if store.schedule then
    return store:schedule(key, function() return _M.fetch(self, key, fetch, clock) end, label)
  end
  if not timer_at or get_phase() == "init" then return false end
  local state = self.scheduled:get(key)
  if state then
    if state.running then return true end
    if real_now() < state.til then return false end
  else
    state = { n = 0 }
  end
  local ok, err = timer_at(0, background, self, key, fetch, clock, state)
  if not ok then
    ngx_log(ERR, "gauth: cannot schedule a background token refresh: ", tostring(err))
    return false
  end
  state.running = true
  self.scheduled:set(key, state)
  return true
end

--- Return a fresh entry for `key`, calling `fetch()` to make one when
-- there is none; one fetch at a time per key (in a worker; across workers
-- as far as the store's lock goes). A failed fetch is not cached.
--
-- Inside nginx nothing here blocks: in a phase without cosockets (set,
-- header and body filters, log, balancer, init_worker) a token that has
-- not expired is served and a refresh is scheduled in a timer; with no
-- such token the caller gets a retryable error at once (`phase` set). In
-- phases that can yield the fetch runs in a timer that the request waits
-- for (see above). `init_by_lua` fetches inline: blocking is allowed there.
-- @tparam string key
-- @tparam function fetch `fetch()` -> entry (with `access_token`,
--   `expires_at`) | nil, err
-- @tparam function clock returns epoch seconds
-- @tparam[opt] string label names the credential in log lines
-- @return entry | nil, msg, err
function _M:fetch(key, fetch, clock, label)
  local store = self.store
  local e = store:get(key)
  local now = clock()
  if e and now < (e.refresh_at or 0) then return e end
  -- A recent failure, remembered for every process: told at once.
  if store.failure then
    local ferr = store:failure(key)
    if ferr then return errors.ret(ferr) end
  end
  if timer_at then
    local phase = nonblocking_phase()
    if phase then
      local scheduled = self:schedule(key, fetch, clock, label)
      if e and type(e.expires_at) == "number" and now < e.expires_at - _M.EXPIRY_MARGIN then
        return e
      end
      return _M.phase_error(phase, scheduled)
    end
    if semaphore and can_yield() then
      return flight_fetch(self, key, fetch, clock)
    end
  end
  return locked_fetch(self, key, fetch, clock)
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
  self.failures:delete(key)
end

return _M
