--- A fleet-wide token cache for OpenResty: per-worker memory, then the
-- node's `lua_shared_dict`, then a Redis shared by every node, so that a
-- fleet of nginx nodes holding the same credentials makes one token
-- exchange per credential, not one per node.
--
--     # nginx.conf, http {}
--     lua_shared_dict gauth 1m;
--     init_by_lua_block {
--       require("gauth.token_cache.redis").install{
--         host = "10.0.0.5", port = 6379, username = "gauth", password = "...",
--         encryption_key = os.getenv("GAUTH_REDIS_KEY"),  -- 64 hex characters
--       }
--     }
--
-- ## Layers
--
-- * **Worker memory**: the decoded entry of the last text read, shared by
--   every credentials object of the worker (the hot path reads no Redis).
-- * **Node**: the shared dict (`shared_dict`, default "gauth") as in
--   `gauth.token_cache.shdict`: one token and one refresh at a time for the
--   node's workers, refresh ahead of expiry. Without the dict, tokens are
--   kept per worker and Redis is the first shared layer.
-- * **Redis**: `<prefix>t|<cache key>` holds the entry (JSON, or sealed:
--   see below) with the token's remaining life as expiry. A miss on the
--   node reads it; a node's fresh token is written to it.
--
-- ## One refresh in the whole fleet
--
-- The node's refresher (one worker, holding the node lock) takes
-- `<prefix>l|<cache key>` with `SET key token NX PX lock_ttl`, the token
-- 16 random bytes, and releases it with a compare-and-delete script (only
-- its owner can). Other nodes poll Redis (5 ms doubling to 100 ms) for the
-- new entry, at most `lock_wait` seconds; a refresher that dies leaves a
-- lock that expires after `lock_ttl`, and the next waiter refreshes.
-- Requests that hold a token that is past its refresh time but still valid
-- are served at once while the refresh runs in a timer.
--
-- ## Redis down, slow or refusing
--
-- Every Redis call is bounded by `timeout`. On a failure the node marks
-- Redis down for `retry_interval` seconds (no worker of the node tries it
-- meanwhile), logs one line per `log_interval` (at `error` level: the
-- Redis address and Redis's reply, never the password or a token), and
-- the node refreshes on its own as it would without Redis. The next call
-- after the interval connects again (a pooled connection that died with a
-- restarted Redis is retried once on a new one).
--
-- ## Secrets at rest
--
-- With `encryption_key` (32 raw bytes or 64 hex characters, the same on
-- every node) each value is `"\1" .. nonce .. ciphertext .. tag`
-- (AES-256-GCM, `gauth.core.aead_seal`) with the full Redis key as
-- additional data: a changed value, or one copied to another key, fails
-- authentication and counts as a miss (logged, rate-limited). Without a
-- key the value is the entry's JSON in clear: the access token (and an ID
-- token where the type has one) with its expiry. Keys never hold the
-- service-account key or an assertion: the cache key is a SHA-256.
--
-- ## Invalidation
--
-- `cache:invalidate(key, token)` (what `creds:invalidate()` calls) drops
-- the entry in this worker and the node's dict, deletes the Redis value
-- when it still holds that token (compare-and-delete), and increments
-- `<prefix>gen`. Every `check_interval` seconds one worker per node reads
-- that counter; when it moved, the node drops the tokens of its dict and
-- every worker drops its memory, so the next request takes the new token
-- from Redis (or refreshes once for the fleet).
--
-- ## Key sets and Discovery documents
--
-- `store:shared_fetch(kind, url, fetcher)` gives `gauth.id_token`'s key-set
-- cache and `gauth.discovery.shdict_cache` one fetch per document for the
-- fleet: `<prefix>k|` / `<prefix>d|` and the SHA-256 of the URL hold
-- `"<expires_at> <fetched_at>\n" .. body`, sealed as tokens are when
-- `encryption_key` is set (public data, but a changed value must not make
-- a node trust another key); the lock is `<prefix>l|k|…` / `l|d|…`.
-- `install` makes the store their default (`_M.installed`).
-- @module gauth.token_cache.redis

local core = require "gauth.core"
local errors = require "gauth.errors"
local token_cache = require "gauth.token_cache"
local lru = require "gauth.lib.lru"
local ngx_phase = require "gauth.lib.ngx_phase"
local cjson = require "cjson.safe"

local ngx = ngx  -- luacheck: ignore
local type = type
local pairs = pairs
local pcall = pcall
local error = error
local require = require
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local ipairs = ipairs
local rawget = rawget
local select = select
local unpack = unpack or table.unpack  -- luacheck: ignore
local byte, sub = string.byte, string.sub
local floor = math.floor
local math_min = math.min
local json_encode, json_decode = cjson.encode, cjson.decode
local can_yield = ngx_phase.can_yield

local _M = { _VERSION = "0.1.0" }
local store_mt = { __index = _M }

local MOD = "token_cache.redis"

--- Defaults of the options of `new`/`cache`.
_M.DEFAULTS = {
  host = "127.0.0.1", port = 6379, prefix = "gauth:", timeout = 1,
  pool_size = 16, keepalive = 60, lock_ttl = 10, retry_interval = 1,
  log_interval = 60, check_interval = 1, shared_dict = "gauth",
}

local ngx_now, update_time, sleep, timer_at, timer_every, get_phase, log
local ERR, WARN
if ngx_phase.is_ngx then
  ngx_now, update_time, sleep = ngx.now, ngx.update_time, ngx.sleep
  timer_at, timer_every, get_phase, log = ngx.timer.at, ngx.timer.every, ngx.get_phase, ngx.log
  ERR, WARN = ngx.ERR, ngx.WARN
end

local function now()
  update_time()
  return ngx_now()
end

-- Compare-and-delete: only the holder of `ARGV[1]` removes the key (a lock
-- after its owner's expiry, a value that another node has replaced).
local CAD = "if redis.call('get', KEYS[1]) == ARGV[1] then "
  .. "return redis.call('del', KEYS[1]) else return 0 end"

--- The encryption key of the options: 32 raw bytes or 64 hex characters.
-- @return 32 bytes | nil, msg, err
function _M.parse_key(k)
  if type(k) ~= "string" then
    return errors.fail(MOD, "options", "encryption_key must be a string")
  end
  if #k == 32 then return k end
  if #k == 64 and not k:find("[^%x]") then
    return (k:gsub("..", function(h) return string.char(tonumber(h, 16)) end))
  end
  return errors.fail(MOD, "options",
    "encryption_key must be 32 raw bytes or 64 hex characters (got " .. #k .. " bytes)")
end

local function pick_client()
  for _, name in ipairs({ "resty.redis", "nginx.redis" }) do
    local ok, m = pcall(require, name)
    if ok and type(m) == "table" and type(m.new) == "function" then return m, name end
  end
  return nil
end

--- Make a store (the three layers; see the module's description).
-- @tparam table opts `host` ("127.0.0.1"), `port` (6379) or `socket` (a
--   unix socket path), `username`, `password`, `database` (number),
--   `prefix` ("gauth:"), `ssl` (TLS, verified), `server_name` (for TLS;
--   default `host`), `pool_size` (16), `timeout` (s per Redis call, 1),
--   `encryption_key`, `client` (a module like `resty.redis`: `new()`
--   returns a connection object; default `resty.redis`, else Debian's
--   `nginx.redis`), `shared_dict` ("gauth"; false: none), `lock_ttl` (s,
--   10), `lock_wait` (s, lock_ttl + 5), `retry_interval` (s, 1),
--   `log_interval` (s, 60), `check_interval` (s, 1), `negative_ttl` and
--   `negative_ttl_max` (the node's negative cache, as in
--   `gauth.token_cache.shdict`)
-- @return store | nil, msg, err
function _M.new(opts)
  if type(opts) ~= "table" then
    error("gauth.token_cache.redis: opts must be a table", 2)
  end
  local o = {}
  for k, v in pairs(_M.DEFAULTS) do o[k] = v end
  for k, v in pairs(opts) do o[k] = v end
  for _, k in ipairs({ "port", "timeout", "pool_size", "lock_ttl", "retry_interval",
                       "log_interval", "check_interval", "keepalive" }) do
    if type(o[k]) ~= "number" or o[k] <= 0 then
      error("gauth.token_cache.redis: " .. k .. " must be a positive number", 2)
    end
  end
  for _, k in ipairs({ "host", "prefix" }) do
    if type(o[k]) ~= "string" then
      error("gauth.token_cache.redis: " .. k .. " must be a string", 2)
    end
  end
  if not ngx_phase.is_ngx or not ngx.socket or not ngx.socket.tcp then
    return errors.fail(MOD, "options", "the Redis store needs OpenResty (nginx cosockets);"
      .. " Lua 5.4 has no packaged Redis client that gauth can use")
  end
  local key32
  if o.encryption_key ~= nil then
    local k, msg, err = _M.parse_key(o.encryption_key)
    if not k then return nil, msg, err end
    key32 = k
  end
  local client = o.client
  if client == nil then
    client = pick_client()
    if not client then
      return errors.fail(MOD, "options", "no Redis client: install lua-resty-redis"
        .. " (OpenResty) or Debian's lua-nginx-redis, or pass client")
    end
  elseif type(client) ~= "table" or type(client.new) ~= "function" then
    error("gauth.token_cache.redis: client must be a module with new()", 2)
  end
  local dict, near
  local dname = o.shared_dict
  if dname and ngx.shared[dname] then
    local shdict = require "gauth.token_cache.shdict"
    local s, msg, err = shdict.new({ shared_dict = dname, negative_ttl = o.negative_ttl,
                                     negative_ttl_max = o.negative_ttl_max })
    if not s then return nil, tostring(msg), err end
    near, dict = s, ngx.shared[dname]
  else
    near = token_cache.local_store()
  end
  local where = o.socket and ("unix:" .. o.socket) or (o.host .. ":" .. o.port)
  local self = setmetatable({
    near = near, dict = dict, client = client, key32 = key32,
    host = o.host, port = o.port, socket = o.socket, where = where,
    username = o.username, password = o.password, database = o.database,
    ssl = o.ssl and true or false, server_name = o.server_name or o.host,
    prefix = o.prefix, timeout_ms = floor(o.timeout * 1000),
    keepalive_ms = floor(o.keepalive * 1000), pool_size = o.pool_size,
    lock_ttl_ms = floor(o.lock_ttl * 1000), lock_wait = o.lock_wait or (o.lock_ttl + 5),
    retry_interval = o.retry_interval, log_interval = o.log_interval,
    check_interval = o.check_interval,
    -- Connections of another user or database must not be shared.
    pool = "gauth-redis:" .. where .. ":" .. tostring(o.database or 0) .. ":"
      .. core.b64url_encode(core.sha256(tostring(o.username) .. "\0" .. tostring(o.password))),
    -- Per worker.
    down_until = 0, logged_at = {},
    refused = lru.new(token_cache.MAX_ENTRIES),
    handed = setmetatable({}, { __mode = "k" }),
    tkeys = lru.new(token_cache.MAX_ENTRIES),
  }, store_mt)
  self.gen_key, self.inv_key = o.prefix .. "gen", o.prefix .. "inv"
  -- Without a dict, refresh ahead is per worker (gauth.token_cache's own),
  -- and there is no node-wide negative cache nor generation counter: the
  -- cache's optional hooks are switched off rather than half-answered.
  if not near.schedule then self.schedule = false end
  if not near.failure then self.failure, self.remember_failure = false, false end
  if not dict then self.generation = false end
  return self
end

-- Log `msg` (no secrets in it) once per log_interval per node (per worker
-- without a dict) for each `kind`.
local function log_limited(self, kind, level, msg)
  local dict = self.dict
  if dict then
    if not dict:add("redis|logged|" .. kind, true, self.log_interval) then return end
  else
    local t = now()
    if t < (self.logged_at[kind] or 0) then return end
    self.logged_at[kind] = t + self.log_interval
  end
  log(level, msg)
end

local function is_down(self)
  if now() < self.down_until then return true end
  local dict = self.dict
  return dict ~= nil and dict:get("redis|down") ~= nil
end

local function mark_down(self, msg)
  self.down_until = now() + self.retry_interval
  if self.dict then self.dict:set("redis|down", true, self.retry_interval) end
  log_limited(self, "down", ERR, msg .. " (Redis " .. self.where .. "; tokens come from this"
    .. " node's own exchanges, Redis is tried again every " .. self.retry_interval .. " s)")
end

-- A connection, authenticated and on its database: red | nil, step, detail.
local function connect(self)
  local red, err = self.client:new()
  if not red then return nil, "connect", tostring(err) end
  local t = self.timeout_ms
  -- Not `red.set_timeouts`: these clients make any unknown field a Redis
  -- command.
  if type(rawget(self.client, "set_timeouts")) == "function" then
    red:set_timeouts(t, t, t)
  else
    red:set_timeout(t)
  end
  local copts = { pool = self.pool, pool_size = self.pool_size }
  if self.ssl then
    copts.ssl, copts.ssl_verify, copts.server_name = true, true, self.server_name
  end
  local ok
  if self.socket then
    ok, err = red:connect("unix:" .. self.socket, copts)
  else
    ok, err = red:connect(self.host, self.port, copts)
  end
  if not ok then return nil, "connect", tostring(err) end
  local fresh = (red:get_reused_times() or 0) == 0
  -- Clients before lua-resty-redis 0.28 ignore the ssl option: the
  -- handshake is made here on their socket, verified.
  if fresh and self.ssl and rawget(red, "_sock") and tostring(rawget(self.client, "_VERSION")) < "0.28" then
    local sess, e = red._sock:sslhandshake(nil, self.server_name, true)
    if not sess then red:close() return nil, "tls", tostring(e) end
  end
  if fresh then
    if self.password ~= nil then
      local res, e
      if self.username ~= nil then
        res, e = red:auth(self.username, self.password)
      else
        res, e = red:auth(self.password)
      end
      if not res then red:close() return nil, "auth", tostring(e) end
    end
    if self.database and self.database ~= 0 then
      local res, e = red:select(self.database)
      if not res then red:close() return nil, "select", tostring(e) end
    end
  end
  return red
end

-- Run `fn(red)` on a connection: its result, or nil, step, detail after
-- marking Redis down. `force` ignores the down mark (check()).
local function call(self, fn, force)
  if not can_yield() then return nil, "phase", "no cosockets in this phase" end
  if not force and is_down(self) then return nil, "down", "marked down" end
  for _ = 1, 2 do
    local red, step, detail = connect(self)
    if not red then
      mark_down(self, "gauth." .. MOD .. ": " .. step .. ": " .. detail)
      return nil, step, detail
    end
    local reused = red:get_reused_times() or 0
    local res, err = fn(red)
    if res ~= nil and res ~= false then
      red:set_keepalive(self.keepalive_ms, self.pool_size)
      return res
    end
    red:close()
    if res == false or reused == 0 then
      -- An error reply, or a fresh connection that failed.
      mark_down(self, "gauth." .. MOD .. ": command: " .. tostring(err))
      return nil, "command", tostring(err)
    end
    -- A pooled connection that died (Redis restarted): once more, new.
  end
  return nil, "command", "connection lost"
end

local function rkey(self, key)
  local tkeys = self.tkeys
  local k = tkeys:get(key)
  if not k then
    k = self.prefix .. "t|" .. key
    tkeys:set(key, k)
  end
  return k
end

-- The value to write under Redis key `k`: `text` sealed with the key as
-- additional data when encryption_key is set, else `text`.
local function seal(self, k, text)
  if self.key32 then
    local sealed = core.aead_seal(self.key32, text, k)
    return sealed and ("\1" .. sealed)
  end
  return text
end

local function encode(self, k, entry)
  local json = json_encode(entry)
  return json and seal(self, k, json)
end

-- The text of a Redis value read under `k`, or nil (a miss, logged) when
-- it cannot be trusted.
local function unseal(self, k, raw)
  if type(raw) ~= "string" then return nil end
  local sealed = byte(raw, 1) == 1
  if self.key32 then
    if not sealed then
      log_limited(self, "clear", WARN, "gauth." .. MOD .. ": a value in clear where sealed"
        .. " values are expected (a node without encryption_key?): treated as a miss")
      return nil
    end
    local json, err = core.aead_open(self.key32, sub(raw, 2), k)
    if not json then
      log_limited(self, "open", WARN, "gauth." .. MOD .. ": " .. sub(tostring(err), 13)
        .. " for a value in Redis (changed, moved to another key, or sealed under"
        .. " another encryption_key): treated as a miss")
      return nil
    end
    raw = json
  elseif sealed then
    log_limited(self, "sealed", WARN, "gauth." .. MOD .. ": a sealed value in Redis and no"
      .. " encryption_key here: treated as a miss")
    return nil
  end
  return raw
end

-- The entry of a Redis value, or nil (a miss) when it cannot be trusted.
local function decode(self, k, raw)
  raw = unseal(self, k, raw)
  if not raw then return nil end
  local e = json_decode(raw)
  if type(e) ~= "table" or type(e.access_token) ~= "string"
    or type(e.expires_at) ~= "number" then
    return nil
  end
  return e
end

-- The entry in Redis for `key` (nil on a miss or a failure), and its raw
-- value.
local function redis_get(self, key)
  local k = rkey(self, key)
  local raw = call(self, function(red) return red:get(k) end)
  if type(raw) ~= "string" then return nil end
  local e = decode(self, k, raw)
  if e and self.refused:get(key) == e.access_token then return nil end
  return e, raw
end

local function remember(self, e)
  self.handed[e] = true
  return e
end

-- Drop what this worker holds when the node's generation moved (another
-- worker or node invalidated a token).
local function check_generation(self)
  local dict = self.dict
  if not dict then return end
  local g = dict:get("redis|gen") or 0
  if g == self.gen then return end
  if self.gen ~= nil then
    for e in pairs(self.handed) do e.refresh_at = -1 end
    self.handed = setmetatable({}, { __mode = "k" })
    self.near.memo = lru.new(token_cache.MAX_ENTRIES)
  end
  self.gen = g
end

-- The fleet's invalidations since generation `seen`: the generation and
-- the cache keys invalidated since (nil: too many, drop everything).
local SINCE = "local g = tonumber(redis.call('get', KEYS[1]) or '0') "
  .. "local n = g - tonumber(ARGV[1]) "
  .. "if n <= 0 then return {g, {}} end "
  .. "if n > 1000 then return {g, false} end "
  .. "return {g, redis.call('lrange', KEYS[2], -n, -1)}"
-- Record an invalidation: the key in a bounded list, then the generation.
local RECORD = "redis.call('rpush', KEYS[2], ARGV[1]) "
  .. "redis.call('ltrim', KEYS[2], -1000, -1) "
  .. "return redis.call('incr', KEYS[1])"

local function drop_near(self, keys)
  local near, dict = self.near, self.dict
  if keys then
    for _, k in ipairs(keys) do near:delete(k) end
  elseif dict then
    for _, k in ipairs(dict:get_keys(0)) do
      if sub(k, 1, 2) == "t|" then dict:delete(k) end
    end
  else
    self.near = token_cache.local_store()
  end
  if dict then
    dict:incr("redis|gen", 1, 0)
  else
    for e in pairs(self.handed) do e.refresh_at = -1 end
    self.handed = setmetatable({}, { __mode = "k" })
  end
end

-- Every check_interval, in each worker: the node's generation; in one
-- worker per node, the fleet's (Redis `<prefix>gen`, and the keys
-- invalidated since in `<prefix>inv`).
local function tick(premature, self)
  if premature then return end
  local dict = self.dict
  if not dict or dict:add("redis|tick", true, self.check_interval * 0.9) then
    local seen
    if dict then seen = dict:get("redis|fleetgen") else seen = self.fleetgen end
    local gk, ik = self.gen_key, self.inv_key
    local res = call(self, function(red) return red:eval(SINCE, 2, gk, ik, seen or 0) end)
    if type(res) == "table" then
      local g = tonumber(res[1]) or 0
      if dict then dict:set("redis|fleetgen", g) else self.fleetgen = g end
      -- A first look, or a Redis that restarted (its counter went back):
      -- nothing to drop.
      if seen ~= nil and g > seen then
        drop_near(self, type(res[2]) == "table" and res[2] or nil)
      end
    end
  end
  check_generation(self)
end

local function start_ticks(self)
  self.ticking = true
  local ok, err = timer_every(self.check_interval, tick, self)
  if not ok then
    self.ticking = false
    log(ERR, "gauth.", MOD, ": cannot start the invalidation check: ", tostring(err))
  end
end

--- The entry for `key`: this worker's, the node's, else Redis's (where
-- the phase has cosockets), copied up to the node.
function _M:get(key)
  if not self.ticking and timer_every and get_phase() ~= "init" then start_ticks(self) end
  local near = self.near
  local e = near:get(key)
  local t = now()
  if e and t < (e.refresh_at or 0) then return remember(self, e) end
  if not can_yield() then return e and remember(self, e) end
  local r = redis_get(self, key)
  if r and t < r.expires_at and (not e or r.expires_at > (e.expires_at or 0)) then
    near:set(key, r, r.expires_at - t)
    return remember(self, near:get(key) or r)
  end
  return e and remember(self, e)
end

--- Keep `entry` on the node and in Redis for `ttl` seconds.
function _M:set(key, entry, ttl)
  if type(ttl) ~= "number" or ttl <= 0 then return end
  self.near:set(key, entry, ttl)
  self.refused:delete(key)
  if not can_yield() then return end
  local k = rkey(self, key)
  local v = encode(self, k, entry)
  if not v then return end
  local ms = floor(ttl * 1000)
  if ms < 1 then return end
  call(self, function(red) return red:set(k, v, "PX", ms) end)
end

--- Delete `key` on the node and in Redis.
function _M:delete(key)
  self.near:delete(key)
  if can_yield() then
    local k = rkey(self, key)
    call(self, function(red) return red:del(k) end)
  end
end

--- The lock of one refresh for the fleet: the node's lock, then Redis's
-- (`SET NX PX` with a random token). Returns the unlock function; when
-- another node refreshes, it waits (up to `lock_wait`) for its entry,
-- copies it to the node and returns (the cache then finds it). Redis
-- failing leaves the node's lock alone: the node refreshes by itself.
-- @return unlock | nil, err
function _M:lock(key, timeout)
  local nunlock, err = self.near:lock(key, timeout)
  if not nunlock then return nil, err end
  if not can_yield() or is_down(self) then return nunlock end
  local lk = self.prefix .. "l|" .. key
  local token = core.hex_encode(core.random_bytes(16))
  local ttl = self.lock_ttl_ms
  local wait = self.lock_wait
  if timeout and timeout < wait then wait = timeout end
  local deadline = now() + wait
  local delay = 0.005
  while true do
    local ok = call(self, function(red) return red:set(lk, token, "NX", "PX", ttl) end)
    if ok == "OK" then
      return function()
        call(self, function(red) return red:eval(CAD, 1, lk, token) end)
        nunlock()
      end
    end
    if ok == nil then return nunlock end  -- Redis failed: refresh here
    -- Another node refreshes: wait for its entry.
    local r = redis_get(self, key)
    local t = now()
    if r and t < (r.refresh_at or 0) then
      self.near:set(key, r, r.expires_at - t)
      return nunlock
    end
    if t >= deadline then
      log(WARN, "gauth.", MOD, ": waited ", wait, " s for another node's refresh of a",
          " token; refreshing here")
      return nunlock
    end
    sleep(delay)
    delay = math_min(delay * 2, 0.1)
  end
end

-- Refresh ahead on the node (the shared dict's timer for all workers).
function _M:schedule(key, refresh, label)
  if self.near.schedule then return self.near:schedule(key, refresh, label) end
  return false
end

--- The node's negative cache (see `gauth.token_cache.shdict`): a failed
-- refresh is remembered for the node's workers, so a dead token endpoint
-- is not asked again by every request. Per node: Redis is not asked to
-- remember failures (each node's own exchange is its fallback).
function _M:failure(key)
  return self.near:failure(key)
end

function _M:remember_failure(key, err)
  return self.near:remember_failure(key, err)
end

--- The node's generation: moves on an invalidation in any worker of the
-- node (the dict's counter) or one that reached the node from the fleet
-- (`redis|gen`), so credentials objects' fast paths notice both.
function _M:generation()
  return self.near:generation() + (self.dict:get("redis|gen") or 0)
end

--- Drop `key` everywhere unless it holds another token than `token`
-- (see the module's description).
function _M:invalidate(key, token)
  local near = self.near
  local e = near:get(key)
  if e and token ~= nil and e.access_token ~= token then return end
  if e then e.refresh_at = -1 end
  near:delete(key)
  if token ~= nil then self.refused:set(key, token) end
  if self.dict then self.dict:incr("redis|gen", 1, 0) end
  local function reach_redis()
    local k = rkey(self, key)
    local raw = call(self, function(red) return red:get(k) end)
    if type(raw) == "string" then
      local cur = decode(self, k, raw)
      -- Delete what holds the refused token, or what cannot be read (sealed
      -- otherwise, changed); keep a token fetched since by another node.
      if cur == nil or token == nil or cur.access_token == token then
        call(self, function(red) return red:eval(CAD, 1, k, raw) end)
      end
    end
    self.refused:delete(key)
    call(self, function(red) return red:eval(RECORD, 2, self.gen_key, self.inv_key, key) end)
  end
  if can_yield() then
    reach_redis()
  elseif timer_at and get_phase() ~= "init" then
    timer_at(0, function(premature) if not premature then reach_redis() end end)
  end
end

-- Public documents: ID-token key sets and Discovery documents. --------

-- The Redis key of a document: `<prefix><kind>|<SHA-256 of the URL>` (a
-- URL may carry an API key; Redis keys never do).
local function doc_key(self, kind, id)
  return self.prefix .. kind .. "|" .. core.b64url_encode(core.sha256(id))
end

-- The document under `k`: text, expires_at, fetched_at | nil (a miss, a
-- failure, or a value that cannot be trusted).
local function doc_get(self, k)
  local raw = call(self, function(red) return red:get(k) end)
  local plain = unseal(self, k, raw)
  if not plain then return nil end
  local exp, at, from = plain:match("^(%d+%.?%d*) (%d+%.?%d*)\n()")
  if not exp then return nil end
  return sub(plain, from), tonumber(exp), tonumber(at)
end

local function pack(...) return { n = select("#", ...), ... } end

--- One fetch of a public document for the whole fleet: the document that
-- Redis holds (sealed like tokens when encryption_key is set), else
-- `fetcher()` in one node at a time under the Redis lock `<prefix>l|<kind>|…`
-- (`SET NX PX` as for tokens) while the other nodes wait for its result.
-- Redis down or failing, or a wait past `opts.wait`: `fetcher()` here.
-- @tparam string kind "k" (key sets) or "d" (Discovery documents)
-- @tparam string id the document's URL
-- @tparam function fetcher `fetcher()` -> text, ttl (s; the text is then
--   written to Redis for `ttl`) | anything else (returned as is)
-- @tparam[opt] table opts `usable(text, fetched_at, now)` (may a document
--   found in Redis be used? default: any), `valid(text)` (may a fetched
--   one be written? default: any), `wait` (s, at most lock_wait)
-- @return text, ttl left, fetched_at | what `fetcher()` returned
function _M:shared_fetch(kind, id, fetcher, opts)
  if type(kind) ~= "string" or type(id) ~= "string" or type(fetcher) ~= "function" then
    error("gauth.token_cache.redis: shared_fetch(kind, id, fetcher[, opts])", 2)
  end
  opts = opts or {}
  if not can_yield() or is_down(self) then return fetcher() end
  local usable, valid = opts.usable, opts.valid
  local k = doc_key(self, kind, id)
  local function found()
    local text, exp, at = doc_get(self, k)
    local t = now()
    if text and t < exp and (not usable or usable(text, at, t)) then
      return text, exp - t, at
    end
  end
  local text, left, at = found()
  if text then return text, left, at end
  local lk = self.prefix .. "l|" .. sub(k, #self.prefix + 1)
  local token = core.hex_encode(core.random_bytes(16))
  local ttl = self.lock_ttl_ms
  local wait = self.lock_wait
  if opts.wait and opts.wait < wait then wait = opts.wait end
  local deadline = now() + wait
  local delay = 0.005
  while true do
    local ok = call(self, function(red) return red:set(lk, token, "NX", "PX", ttl) end)
    if ok == nil then return fetcher() end  -- Redis failed: fetch here
    if ok == "OK" then
      -- The holder before us may have written it since our read.
      text, left, at = found()
      if text then
        call(self, function(red) return red:eval(CAD, 1, lk, token) end)
        return text, left, at
      end
      local r = pack(pcall(fetcher))
      if r[1] and type(r[2]) == "string" and type(r[3]) == "number" and r[3] > 0
        and (not valid or valid(r[2])) then
        local t = now()
        local v = seal(self, k, ("%.3f %.3f\n"):format(t + r[3], t) .. r[2])
        local ms = floor(r[3] * 1000)
        if v and ms >= 1 then
          call(self, function(red) return red:set(k, v, "PX", ms) end)
        end
      end
      call(self, function(red) return red:eval(CAD, 1, lk, token) end)
      if not r[1] then error(r[2], 0) end
      return unpack(r, 2, r.n)
    end
    -- Another node fetches: wait for its document.
    text, left, at = found()
    if text then return text, left, at end
    if now() >= deadline then
      log(WARN, "gauth.", MOD, ": waited ", wait, " s for another node's fetch of ", id,
          "; fetching here")
      return fetcher()
    end
    sleep(delay)
    delay = math_min(delay * 2, 0.1)
  end
end

--- Drop the document `id` of `kind` from Redis (a document that turned
-- out not to be one).
function _M:delete_shared(kind, id)
  if not can_yield() then return end
  local k = doc_key(self, kind, id)
  call(self, function(red) return red:del(k) end)
end

--- The Redis store of `v`: a store from `new`, or a cache from `cache` or
-- `install` (its store); nil for anything else.
function _M.store_of(v)
  if getmetatable(v) == store_mt then return v end
  if type(v) == "table" and getmetatable(rawget(v, "store")) == store_mt then return v.store end
  return nil
end

--- Connect, authenticate, select the database and PING, ignoring the
-- down mark: is Redis usable with these options? (Needs a phase with
-- cosockets.)
-- @tparam table opts as for `new`, or a store or cache from this module
-- @return true | nil, msg, err (`step`: options, phase, connect, tls,
--   auth, select or command)
function _M.check(opts)
  local store = opts
  if type(opts) == "table" and getmetatable(opts) ~= store_mt then
    store = opts.store
    if getmetatable(store) ~= store_mt then
      local msg, err
      store, msg, err = _M.new(opts)
      if not store then return nil, msg, err end
    end
  end
  local res, step, detail = call(store, function(red) return red:ping() end, true)
  if res then
    store.down_until = 0
    if store.dict then store.dict:delete("redis|down") end
    return true
  end
  return errors.fail(MOD, step, detail .. " (Redis " .. store.where .. ")",
    { retryable = step ~= "auth" and step ~= "select" })
end

---------------------------------------------------------------------------
-- The cache: gauth.token_cache over this store.
---------------------------------------------------------------------------

local base_fetch = token_cache.fetch

local function fetch(self, key, fetch_fn, clock)
  local store = self.store
  local e = store:get(key)
  local t = clock()
  if e and t < (e.refresh_at or 0) then return e end
  local function refresh() return base_fetch(self, key, fetch_fn, clock) end
  local near = store.near
  if near.refresh_ahead then
    local served, msg, err = near:refresh_ahead(key, e, refresh, t)
    if served then return served end
    if msg then return nil, msg, err end
  elseif e and type(e.expires_at) == "number" and t < e.expires_at - token_cache.EXPIRY_MARGIN
    and timer_at and get_phase() ~= "init" then
    token_cache.schedule(self, key, fetch_fn, clock)
    return e
  end
  return refresh()
end

local function invalidate(self, key, token)
  self.store:invalidate(key, token)
  self.failures:delete(key)
end

local cache_mt = { __index = setmetatable({ fetch = fetch, invalidate = invalidate },
                                          { __index = token_cache }) }

--- A `gauth.token_cache` over a new Redis store (options as for `new`).
-- @return cache | nil, msg, err
function _M.cache(opts)
  local store, msg, err = _M.new(opts)
  if not store then return nil, msg, err end
  return setmetatable(token_cache.new({ store = store }), cache_mt)
end

--- Make a Redis-backed cache the default of every credentials object made
-- afterwards (`gauth.token_cache.set_default`); call it in `init_by_lua*`.
-- @return cache | nil, msg, err
function _M.install(opts)
  local c, msg, err = _M.cache(opts)
  if not c then return nil, msg, err end
  token_cache.set_default(c)
  _M.installed = c.store
  return c
end

return _M
