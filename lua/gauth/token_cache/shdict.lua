--- A `gauth.token_cache` store over an nginx `lua_shared_dict`: one token
-- per cache key for all workers, one refresh at a time across workers, and
-- refreshes ahead of expiry in the background.
--
--     # nginx.conf, http {}
--     lua_shared_dict gauth 1m;     # ~1 KiB per token; the name is the default
--
-- With a dict named `gauth`, credentials use it without any code (see
-- `gauth.token_cache.default`); another dict is chosen with
-- `require("gauth.token_cache.shdict").install("mydict")` in `init_by_lua*`,
-- or per credentials object with `cache = shdict.cache("mydict")`.
--
-- ## How it behaves
--
-- * **Entries** live in the dict as JSON under `t|<cache key>` with the
--   token's remaining lifetime as expiry. Each worker keeps the decoded
--   table of the last text it read, so the hot path is one dict read and a
--   string comparison; the table is shared, read-only.
-- * **Single flight.** A refresh holds `l|<cache key>`, taken with
--   `dict:add` (atomic across workers) and an expiry (`lock_exptime`, 60 s)
--   so that a worker that dies holding it cannot block the others for
--   longer. The refresh runs in a timer (see `gauth.token_cache`): a
--   request killed while it waits does not take the lock with it. Other
--   callers wait with `ngx.sleep`, polling with a backoff from 5 ms to
--   100 ms, up to the cache's lock timeout; the cache then finds the fresh
--   entry and returns it without fetching.
-- * **Refresh ahead.** A token past its refresh time (225 s before expiry)
--   but still valid is handed out at once; the first caller to see that
--   starts one `ngx.timer.at` timer for all workers (the flag `b|<cache
--   key>`, taken with `dict:add`), which fetches the next one; callers
--   meanwhile are handed the old token and start nothing. Nothing runs
--   between calls. If the fetch fails the error is logged once (at `error`
--   level; repeats at `debug` until a refresh succeeds), the old token
--   keeps serving until `expiry_margin` (1 s) before it expires, and the
--   flag stays for a backoff (1 s doubling, at most 30 s): the first call
--   after it starts the next timer.
-- * **Phases without cosockets** (`set_by_lua*`, header and body filters,
--   `log_by_lua*`, `balancer_by_lua*`, `init_worker_by_lua*`): a valid token
--   is served; one that is past its refresh time, or missing, is refreshed
--   by a timer, and a caller with no valid token gets a `retryable` error at
--   once (`phase` set) rather than a blocked worker. `init_by_lua*` (the
--   master, before any request; no timers there) fetches inline, blocking:
--   nothing is waiting on it.
-- * **Google down** (the negative cache). A failed refresh is remembered
--   under `n|<cache key>` for `negative_ttl` seconds (default 5), or for the
--   endpoint's `Retry-After` when it gave one, bounded to 1 ..
--   `negative_ttl_max` (default 30). Meanwhile a caller with no valid token,
--   in any worker, gets that failure back at once (`remembered = true`,
--   `retry_after` = seconds left, `negative_ttl`), and nobody asks the
--   token endpoint: a burst makes one refresh per interval for all
--   workers, not one per request. A token that is still valid keeps being
--   served meanwhile (see refresh ahead).
-- * **Invalidation** (`creds:invalidate()`) deletes the entry and raises
--   the generation counter `g|` that every credentials object checks on
--   its fast path: every worker drops the refused token at its next call.
-- * **A dict of another name** is not found by `gauth.token_cache.default`:
--   it warns once in the error log (`warn_no_dict`) and keeps tokens per
--   worker.
-- @module gauth.token_cache.shdict

local errors = require "gauth.errors"
local token_cache = require "gauth.token_cache"
local lru = require "gauth.lib.lru"
local ngx_phase = require "gauth.lib.ngx_phase"
local cjson = require "cjson.safe"

local ngx = ngx  -- luacheck: ignore
local type = type
local pairs = pairs
local ipairs = ipairs
local sub = string.sub
local getmetatable = getmetatable
local error = error
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local json_encode = cjson.encode
local json_decode = cjson.decode
local math_min = math.min
local math_max = math.max
local tonumber = tonumber
local can_yield = ngx_phase.can_yield

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

--- Name of the shared dict used when none is given.
_M.DEFAULT_DICT = "gauth"

local ngx_now, update_time, sleep, timer_at, get_phase, log
local ERR, WARN, NOTICE, DEBUG
if ngx_phase.is_ngx then
  ngx_now, update_time, sleep = ngx.now, ngx.update_time, ngx.sleep
  timer_at, get_phase, log = ngx.timer.at, ngx.get_phase, ngx.log
  ERR, WARN, NOTICE, DEBUG = ngx.ERR, ngx.WARN, ngx.NOTICE, ngx.DEBUG
end

local function now()
  update_time()
  return ngx_now()
end

local lock_seq = 0

--- Seconds a failed refresh is remembered for all workers by default.
_M.NEGATIVE_TTL = 5
--- Bounds of a remembered failure's life taken from `Retry-After` (s).
_M.NEGATIVE_TTL_MIN = 1
_M.NEGATIVE_TTL_MAX = 30

-- The generation counter's key (one for the dict: invalidations are rare,
-- and after one each worker re-reads its entries once).
local GEN_KEY = "g|generation"

--- Make a store.
-- @tparam[opt] table opts `shared_dict` (name, default "gauth"),
--   `lock_exptime` (s a lock outlives a dead holder, default 60),
--   `retry_min`/`retry_max` (backoff of failed background refreshes, s,
--   default 1 and 30), `expiry_margin` (s before expiry a token stops being
--   served, default 1), `negative_ttl` (s a failed refresh is remembered
--   for all workers, default `NEGATIVE_TTL`; 0: never), `negative_ttl_max`
--   (upper bound of a `Retry-After`, default `NEGATIVE_TTL_MAX`)
-- @return store | nil, msg, err
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.token_cache.shdict: opts must be a table", 2)
  end
  opts = opts or {}
  local name = opts.shared_dict or _M.DEFAULT_DICT
  if type(name) ~= "string" then
    error("gauth.token_cache.shdict: shared_dict must be a string", 2)
  end
  if not ngx_phase.is_ngx then
    return errors.fail("token_cache", "shared dict", "not running inside nginx")
  end
  local dict = ngx.shared[name]
  if not dict then
    return errors.fail("token_cache", "shared dict",
      "no lua_shared_dict named " .. name .. " in nginx.conf")
  end
  return setmetatable({
    dict = dict,
    name = name,
    lock_exptime = opts.lock_exptime or 60,
    retry_min = opts.retry_min or 1,
    retry_max = opts.retry_max or 30,
    expiry_margin = opts.expiry_margin or 1,
    negative_ttl = opts.negative_ttl or _M.NEGATIVE_TTL,
    negative_ttl_max = opts.negative_ttl_max or _M.NEGATIVE_TTL_MAX,
    -- Per worker: key -> { raw text, decoded entry }, and prefixed keys
    -- (made once: the hot path concatenates nothing); bounded, as one per
    -- credential would grow for ever.
    memo = lru.new(opts.max_entries or token_cache.MAX_ENTRIES),
    tkeys = lru.new(opts.max_entries or token_cache.MAX_ENTRIES),
  }, mt)
end

--- Is `x` a store made by this module?
function _M.is_store(x)
  return type(x) == "table" and getmetatable(x) == mt
end

local function tkey(self, key)
  local tkeys = self.tkeys
  local k = tkeys:get(key)
  if not k then
    k = "t|" .. key
    tkeys:set(key, k)
  end
  return k
end

--- The entry for `key` (shared table: do not modify), or nil.
function _M:get(key)
  local raw = self.dict:get(tkey(self, key))
  local memo = self.memo
  if raw == nil then
    memo:delete(key)
    return nil
  end
  local m = memo:get(key)
  if m and m[1] == raw then return m[2] end
  local e = json_decode(raw)
  if type(e) ~= "table" then
    memo:delete(key)
    return nil
  end
  memo:set(key, { raw, e })
  return e
end

--- Keep `entry` for `ttl` seconds (the token's remaining life).
function _M:set(key, entry, ttl)
  if type(ttl) ~= "number" or ttl <= 0 then return end
  local raw = json_encode(entry)
  if not raw then
    log(WARN, "gauth: token entry not serialisable; not shared")
    return
  end
  local ok, err, forcible = self.dict:set(tkey(self, key), raw, ttl)
  if not ok then
    log(WARN, "gauth: lua_shared_dict ", self.name, ": cannot store a token: ", err)
    return
  end
  if forcible then
    log(WARN, "gauth: lua_shared_dict ", self.name, " is full: entries were evicted")
  end
  self.memo:set(key, { raw, entry })
end

function _M:delete(key)
  self.dict:delete(tkey(self, key))
  self.memo:delete(key)
  -- Every worker's credentials objects re-read the store at their next call.
  self.dict:incr(GEN_KEY, 1, 0)
end

--- The generation counter: raised by every `delete` (an invalidation) in
-- any worker.
-- @return number
function _M:generation()
  return self.dict:get(GEN_KEY) or 0
end

-- The fields of a failure that are kept (plain data; never a body, which
-- may be long, nor anything secret: errors carry none).
local FAILURE_FIELDS = { "module", "step", "message", "status", "reason", "error",
  "error_description", "oauth_error", "google_status", "http_reason", "kind",
  "retryable", "uri" }

--- Remember a failed refresh of `key` for all workers (the negative
-- cache): for `negative_ttl` seconds, or the `Retry-After` it carried
-- within 1 .. `negative_ttl_max`.
function _M:remember_failure(key, err)
  local ttl = self.negative_ttl
  if type(ttl) ~= "number" or ttl <= 0 or type(err) ~= "table" then return end
  local ra = tonumber(err.retry_after)
  if ra then
    ttl = math_max(_M.NEGATIVE_TTL_MIN, math_min(ra, self.negative_ttl_max))
  end
  local rec = { at = now(), ttl = ttl }
  for _, f in ipairs(FAILURE_FIELDS) do
    local v = err[f]
    local t = type(v)
    if t == "string" or t == "number" or t == "boolean" then rec[f] = v end
  end
  local raw = json_encode(rec)
  if raw then self.dict:set("n|" .. key, raw, ttl) end
end

--- The remembered failure of `key`, or nil: the error object as it was
-- (module, step, status, retryable, ...), its message saying it was
-- remembered, with `remembered = true`, `retry_after` (seconds until the
-- next attempt may be made) and `negative_ttl`.
function _M:failure(key)
  local raw = self.dict:get("n|" .. key)
  if raw == nil then return nil end
  local rec = json_decode(raw)
  if type(rec) ~= "table" then return nil end
  local left = (tonumber(rec.at) or 0) + (tonumber(rec.ttl) or 0) - now()
  if left <= 0 then return nil end
  local fields = {}
  for _, f in ipairs(FAILURE_FIELDS) do fields[f] = rec[f] end
  fields.remembered, fields.retry_after, fields.negative_ttl = true, left, rec.ttl
  return errors.new(rec.module or "token_cache", rec.step or "refresh",
    tostring(rec.message) .. (" (remembered for all workers: no new attempt for %.1f s)")
      :format(left), fields)
end

--- Take the cross-worker lock for `key`, waiting up to `timeout` seconds
-- (where the phase can wait) for another holder.
-- @return unlock function | nil, err
function _M:lock(key, timeout)
  local dict = self.dict
  local lkey = "l|" .. key
  lock_seq = lock_seq + 1
  local id = ngx.worker.pid() .. ":" .. lock_seq
  local exptime = self.lock_exptime
  local function unlock()
    -- Only our own lock: after its expiry another worker may hold it.
    if dict:get(lkey) == id then dict:delete(lkey) end
  end
  local ok, err = dict:add(lkey, id, exptime)
  if ok then return unlock end
  if err ~= "exists" then
    return nil, "lua_shared_dict " .. self.name .. ": " .. tostring(err)
  end
  if not can_yield() then
    return nil, "another worker is refreshing this token and the "
      .. tostring(get_phase()) .. " phase cannot wait"
  end
  local deadline = now() + (timeout or 0)
  local delay = 0.005
  while true do
    sleep(delay)
    ok, err = dict:add(lkey, id, exptime)
    if ok then return unlock end
    if err ~= "exists" then
      return nil, "lua_shared_dict " .. self.name .. ": " .. tostring(err)
    end
    if now() >= deadline then
      return nil, "timed out after " .. tostring(timeout)
        .. " s waiting for another worker's refresh of this token"
    end
    delay = math_min(delay * 2, 0.1)
  end
end

-- The background refresh (a timer callback).
local function background(premature, self, key, refresh, label)
  local dict = self.dict
  local bkey, fkey = "b|" .. key, "f|" .. key
  if premature then
    dict:delete(bkey)  -- the worker is exiting; another may do it
    return
  end
  local ok, e, err = pcall(refresh)
  if ok and e then
    local failed = dict:get(fkey)
    if failed then
      dict:delete(fkey)
      log(NOTICE, "gauth: background token refresh", label and (" for " .. label) or "",
          " succeeded after ", failed, " failure(s)")
    end
    dict:delete(bkey)
    return
  end
  if not ok then err = e end
  local n = dict:incr(fkey, 1, 0, 3600) or 1
  if n == 1 then
    log(ERR, "gauth: background token refresh failed (the cached token ",
        "is used until it expires; retrying with backoff): ", tostring(err),
        label and (" [" .. label .. "]") or "")
  else
    log(DEBUG, "gauth: background token refresh", label and (" for " .. label) or "",
        " failed again (", n, "): ", tostring(err))
  end
  -- The flag stays for the backoff: nobody schedules another refresh
  -- before it expires.
  local backoff = math_min(self.retry_min * 2 ^ (n - 1), self.retry_max)
  dict:set(bkey, n, backoff)
end

--- Start a background refresh of `key` unless one is running (in any
-- worker) or backing off.
-- @return true if scheduled
function _M:schedule(key, refresh, label)
  if get_phase() == "init" then return false end  -- no timers in the master
  local dict = self.dict
  local bkey = "b|" .. key
  -- Longer than a refresh can take: the timer deletes it when done.
  if not dict:add(bkey, 0, self.lock_exptime + 30) then return false end
  local ok, err = timer_at(0, background, self, key, refresh, label)
  if not ok then
    dict:delete(bkey)
    log(ERR, "gauth: cannot schedule a background token refresh: ", tostring(err))
    return false
  end
  return true
end

--- The refresh-ahead hook (see `gauth.token_cache`): called for an entry
-- that is past its refresh time, or missing.
-- @param key cache key
-- @param e the store's entry or nil
-- @tparam function refresh does the locked fetch; returns entry | nil, err
-- @tparam number t now (epoch seconds)
-- @tparam[opt] string label names the credential in log lines
-- @return the entry to serve now | nil, msg, err (no valid token and the
--   phase cannot fetch) | nil (fetch now)
function _M:refresh_ahead(key, e, refresh, t, label)
  if e and type(e.expires_at) == "number" and t < e.expires_at - self.expiry_margin then
    self:schedule(key, refresh, label)
    return e
  end
  local phase = ngx_phase.nonblocking()
  if not phase then return nil end
  return token_cache.phase_error(phase, self:schedule(key, refresh, label))
end

--- Say once, in the error log, that nginx.conf has no dict named "gauth"
-- (called by `gauth.token_cache.default` under nginx when it finds none):
-- tokens are then per worker (each fetches its own) and phases without
-- cosockets fail until that worker's timer has fetched one. Once for all
-- workers when nginx.conf declares any dict (a key in it remembers the
-- warning; a dict named gauth* first); else once per process.
function _M.warn_no_dict()
  local names, pick = {}, nil
  for name in pairs(ngx.shared) do names[#names + 1] = name end
  table.sort(names)
  for _, name in ipairs(names) do
    if sub(name, 1, 5) == "gauth" then pick = name break end
  end
  pick = pick or names[1]
  if pick and not ngx.shared[pick]:add("gauth|warned: no dict named gauth", true) then
    return false
  end
  log(WARN, "gauth: no lua_shared_dict named \"", _M.DEFAULT_DICT, "\": tokens are",
      " cached per worker (each worker fetches its own), and in phases without",
      " cosockets a worker has none until its timer fetched one. Declare",
      " `lua_shared_dict ", _M.DEFAULT_DICT, " 1m;`, or name your dict with",
      " the credentials option shared_dict = \"<name>\" or",
      " require(\"gauth.token_cache.shdict\").install(\"<name>\") in init_by_lua",
      #names > 0 and (" (declared: " .. table.concat(names, ", ") .. ")") or "")
  return true
end

---------------------------------------------------------------------------
-- A token_cache wired to a shared dict.
---------------------------------------------------------------------------

local base_fetch = token_cache.fetch

-- token_cache's fetch with the refresh-ahead step in front of it.
local function fetch(self, key, fetch_fn, clock, label)
  local store = self.store
  local e = store:get(key)
  local t = clock()
  if e and t < (e.refresh_at or 0) then return e end
  local served, msg, err = store:refresh_ahead(key, e, function()
    return base_fetch(self, key, fetch_fn, clock, label)
  end, t, label)
  if served then return served end
  if msg then return nil, msg, err end
  return base_fetch(self, key, fetch_fn, clock, label)
end

local cache_mt = { __index = setmetatable({ fetch = fetch }, { __index = token_cache }) }

local caches = {}

--- The `gauth.token_cache` backed by the shared dict `name` (one per dict
-- and worker, so that credentials sharing it share its state).
-- @tparam[opt] string name default "gauth"
-- @tparam[opt] table opts as for `new` (used when the cache is made)
-- @return cache | nil, msg, err
function _M.cache(name, opts)
  name = name or _M.DEFAULT_DICT
  local c = caches[name]
  if c then return c end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.shared_dict = name
  local store, msg, err = _M.new(o)
  if not store then return nil, msg, err end
  c = setmetatable(token_cache.new({ store = store }), cache_mt)
  caches[name] = c
  return c
end

--- Make the shared-dict cache the process-wide default
-- (`gauth.token_cache.set_default`): credentials made afterwards use it.
-- @tparam[opt] string name default "gauth"
-- @tparam[opt] table opts as for `cache`
-- @return cache | nil, msg, err
function _M.install(name, opts)
  local c, msg, err = _M.cache(name, opts)
  if not c then return nil, msg, err end
  token_cache.set_default(c)
  -- The counters (gauth.nginx.metrics) go to the same dict.
  require("gauth.metrics").use_dict(c.store.name)
  return c
end

return _M
