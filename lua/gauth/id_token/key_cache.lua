--- Key sets by URL, held for their age: KeyCache (the objects `new_cache`
-- makes), the default cache, and under nginx the shared dict (and a fleet's
-- Redis store) the workers share them through. The fetch policy (when a
-- set is fetched again, what a failed fetch does) is gauth.id_token's
-- module text. The tunables (`DEFAULT_TIMEOUT`, `REFETCH_INTERVAL`,
-- `STALE_FOR`, `DEFAULT_DICT`, `MAX_BODY`) are gauth.id_token's, read when
-- a cache is made or a set fetched. Internal: gauth.id_token gives
-- `new_cache`, `default_cache` and `set_default_cache`.
--
-- For gauth.id_token.verify's short path, which looks at a cache without
-- a call: `metatable` (a cache is one of ours when it has it) and
-- `held_default()`. A cache's fields `memo` (url -> `{ set, expires,
-- stale_until, stamp }`) and `clock` (a function) are read there too.
-- @module gauth.id_token.key_cache

local errors = require "gauth.errors"
local url_lib = require "gauth.lib.url"
local ngx_phase = require "gauth.lib.ngx_phase"
local common = require "gauth.id_token.common"
local key_set = require "gauth.id_token.key_set"

local type = type
local getmetatable = getmetatable
local tostring = tostring
local setmetatable = setmetatable
local error = error
local require = require
local package = package
local json_decode = common.json_decode
local json_encode = common.json_encode
local fail = common.fail
local clock_of = common.clock_of
local public = common.public
local parse_key_set = key_set.parse_key_set
local max_age = key_set.max_age
local ngx = ngx  -- luacheck: ignore

local _M = {}

local KeyCache = {}
local cache_mt = { __index = KeyCache }

--- The metatable of every cache `new_cache` makes.
_M.metatable = cache_mt

--- Make a key cache (most applications use the default one that `verify`
-- makes). Outside nginx it is this process's; under nginx its key sets
-- live in a shared dict.
-- @tparam[opt] table opts `http` (transport; default `gauth.http.default()`),
--   `timeout` (s per fetch, default 10), `shared_dict` (under nginx:
--   name, default "gauth"; `false`: this worker only), `refetch_interval`
--   (default 30 s), `stale_for` (default 6 h), `now` (number or function;
--   tests), `store` (a `gauth.token_cache.redis` store or cache: one fetch
--   of a key set for the whole fleet; default the one `install` made, if
--   any; `false`: none)
-- @return cache | nil, msg, err
function _M.new_cache(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.id_token: new_cache: opts must be a table", 2)
  end
  opts = opts or {}
  local st = opts.store
  if st ~= nil and st ~= false then
    st = require("gauth.token_cache.redis").store_of(st)
    if not st then
      return fail("keys", "keys", "store must be a gauth.token_cache.redis store or cache")
    end
  end
  local self = setmetatable({
    store = st,
    http = opts.http,
    timeout = opts.timeout or public.DEFAULT_TIMEOUT,
    refetch_interval = opts.refetch_interval or public.REFETCH_INTERVAL,
    stale_for = opts.stale_for or public.STALE_FOR,
    clock = clock_of(opts.now),
    memo = {},      -- url -> { set, expires, stale_until, stamp }
    attempts = {},  -- url -> time of the last fetch (process-local)
    last_error = {},
    fetches = 0,
  }, cache_mt)
  if ngx_phase.is_ngx and opts.shared_dict ~= false then
    local name = opts.shared_dict or public.DEFAULT_DICT
    local dict = ngx.shared[name]
    if not dict then
      return fail("keys", "keys", "no lua_shared_dict named " .. tostring(name)
        .. " in nginx.conf")
    end
    self.dict, self.dict_name = dict, name
  end
  return self
end

local function transport(self)
  if self.http then return self.http end
  local t, e2, e3 = require("gauth.http").default()
  if not t then return nil, errors.of(e2, e3, "id_token", "keys") end
  return t
end

-- One GET of the key set: body, max-age | nil, reason.
local function fetch_here(self, url)
  local t, terr = transport(self)
  if not t then return nil, tostring(terr) end
  self.fetches = self.fetches + 1
  local res, e2, e3 = t:request{
    method = "GET", url = url, timeout = self.timeout,
    connect_timeout = self.timeout, max_body = public.MAX_BODY,
    headers = { accept = "application/json" },
  }
  if not res then
    local err = errors.of(e2, e3, "id_token", "keys")
    return nil, "fetch failed: " .. tostring(err.message or err)
  end
  if res.status ~= 200 then
    return nil, "fetch answered HTTP " .. tostring(res.status)
  end
  local h = res.headers or {}
  return res.body or "", max_age(h["cache-control"])
end

-- The Redis store of the cache: its own, else the installed one.
local function store_of(self)
  local st = self.store
  if st == nil then
    local redis = package.loaded["gauth.token_cache.redis"]
    st = redis and redis.installed
  end
  return st or nil
end

local function valid_set(body) return parse_key_set(body) ~= nil end

-- Keys decide whose tokens are let in: fetched over plain http from
-- anywhere, anyone on the path could supply them. gauth's rule for
-- credentials (https, or plain http to a loopback host: emulators, tests)
-- holds for key sets too, through the one check that states it.
local check_url

local function insecure(url)
  check_url = check_url or require("gauth.request").check_credentials_url
  if check_url(url, "id_token", "keys") then return nil end
  local scheme, host = url_lib.parse(url)
  return fail("keys", "certs_url", "refusing to fetch a key set from "
    .. tostring(host or "this URL") .. " over " .. tostring(scheme or "a non-http(s) URL")
    .. " (certs_url must be https, or http to a loopback host)",
    { kind = "insecure_url", retryable = false })
end

-- The key set through the fleet's store when there is one: what another
-- node fetched (unless it lacks `kid` and was fetched more than
-- refetch_interval ago: Google rotated keys), else one node's fetch.
local function fetch(self, url, kid)
  local st = store_of(self)
  if not st then return fetch_here(self, url) end
  local interval = self.refetch_interval
  local body, age = st:shared_fetch("k", url, function() return fetch_here(self, url) end, {
    wait = self.timeout, valid = valid_set,
    usable = function(text, at, t)
      if kid == nil or t - at < interval then return true end
      local set = parse_key_set(text)
      return set ~= nil and set.by_kid[kid] ~= nil
    end,
  })
  if type(body) == "string" and type(age) == "number" and age < 1 then age = 1 end
  return body, age
end

-- Shared dict keys, per URL: the body, its stamp, the attempt marker
-- ("busy" while a worker fetches, then "done" for the rest of the
-- interval) and the last failure.
local function dkeys(url)
  return "ks|" .. url, "ks#|" .. url, "ksa|" .. url, "kse|" .. url
end

-- Under nginx: pick up what another worker stored, when it is newer than
-- what this worker holds.
local function load_shared(self, url, m)
  local kbody, kstamp = dkeys(url)
  local stamp = self.dict:get(kstamp)
  if stamp == nil or (m and m.stamp == stamp) then return m end
  local raw = self.dict:get(kbody)
  local doc = raw and json_decode(raw)
  if type(doc) ~= "table" or type(doc.body) ~= "string" then return m end
  local set = parse_key_set(doc.body)
  if not set then return m end
  m = { set = set, expires = doc.expires, stale_until = doc.stale_until,
        stamp = stamp }
  self.memo[url] = m
  return m
end

-- May this caller fetch `url` now? Once per interval, across workers: the
-- marker is taken atomically and says "busy" until the fetch ends.
local function claim(self, url, t)
  if self.dict then
    local _, _, kattempt = dkeys(url)
    return (self.dict:add(kattempt, "busy", self.refetch_interval))
  end
  local last = self.attempts[url]
  if last and t - last < self.refetch_interval and t >= last then return false end
  self.attempts[url] = t
  return true
end

local function store(self, url, body, age, t)
  local m = { set = nil, expires = t + age, stale_until = t + age + self.stale_for }
  local set, msg, err = parse_key_set(body)
  if not set then return nil, msg, err end
  m.set = set
  if self.dict then
    local kbody, kstamp, _, kerr = dkeys(url)
    local ttl = m.stale_until - t
    local raw = json_encode({ body = body, expires = m.expires,
                               stale_until = m.stale_until })
    -- The body first, then the stamp that makes workers read it.
    self.dict:set(kbody, raw, ttl)
    local stamp = (self.dict:incr(kstamp, 1, 0)) or t
    self.dict:delete(kerr)
    m.stamp = stamp
  end
  self.memo[url] = m
  self.last_error[url] = nil
  return m
end

local function remember_failure(self, url, why)
  self.last_error[url] = why
  if self.dict then
    local _, _, _, kerr = dkeys(url)
    self.dict:set(kerr, why, self.refetch_interval)
  end
end

local function last_failure(self, url)
  if self.dict then
    local _, _, _, kerr = dkeys(url)
    return self.dict:get(kerr)
  end
  return self.last_error[url]
end

-- Under nginx: another worker is fetching; wait (cosockets' sleep, the
-- worker serves other requests meanwhile) until it is done, then read what
-- it stored.
local function wait_for_other(self, url, m)
  if not ngx_phase.can_yield() then return m end
  local _, _, kattempt = dkeys(url)
  local waited, delay = 0, 0.005
  -- With a fleet store the fetcher may first wait (up to timeout) for
  -- another node's fetch, then fetch itself.
  local bound = self.timeout + 1
  if store_of(self) then bound = 2 * self.timeout + 1 end
  while self.dict:get(kattempt) == "busy" and waited < bound do
    ngx.sleep(delay)
    waited = waited + delay
    if delay < 0.1 then delay = delay * 2 end
  end
  return load_shared(self, url, m)
end

--- The key set of `url` for a token naming `kid` (or none): the set held
-- while it is within its age and holds `kid`; else fetched (see the module
-- text for when a fetch is made and what failing fetches do).
-- @tparam string url
-- @tparam[opt] string kid
-- @return set | nil, msg, err
function KeyCache:get(url, kid)
  local m = self.memo[url]
  local t = self.clock()
  if m and t < m.expires and (kid == nil or m.set.by_kid[kid]) then
    return m.set
  end
  if self.dict then
    m = load_shared(self, url, m)
    if m and t < m.expires and (kid == nil or m.set.by_kid[kid]) then
      return m.set
    end
  end
  local usable = m and t < m.stale_until
  -- Before anything is asked of a transport, a store or another worker.
  if not m then
    local _, msg, err = insecure(url)
    if msg then return nil, msg, err end
  end
  -- In a phase that cannot yield, no request is made (it would block).
  if ngx_phase.is_ngx and not ngx_phase.can_yield() then
    if usable then return m.set end
    return fail("keys", "keys", "no key set held and the "
      .. tostring(ngx.get_phase()) .. " phase cannot fetch one", { retryable = true })
  end
  if not claim(self, url, t) then
    if self.dict and not usable then m = wait_for_other(self, url, m) end
    usable = m and t < m.stale_until
    if usable then return m.set end
    local why = last_failure(self, url)
    return fail("keys", "keys", "key set unavailable"
      .. (why and (" (last " .. why .. ")") or " (a fetch is under way)"),
      { retryable = true })
  end
  local body, age = fetch(self, url, kid)
  local stored, why = nil, age
  if body then
    local _, err
    stored, _, err = store(self, url, body, age, t)
    if not stored then why = "fetch gave a bad key set: " .. err.message end
  end
  if not stored then remember_failure(self, url, why) end
  if self.dict then
    -- Done: the marker stays for the rest of the interval.
    local _, _, kattempt = dkeys(url)
    local left = self.refetch_interval - (self.clock() - t)
    if left > 0.001 then
      self.dict:set(kattempt, "done", left)
    else
      self.dict:delete(kattempt)
    end
  end
  if stored then return stored.set end
  if usable then
    if ngx_phase.is_ngx then
      ngx.log(ngx.WARN, "gauth: key set ", url, ": ", why,
              "; the keys held keep serving")
    end
    return m.set
  end
  return fail("keys", "keys", "key set unavailable: " .. tostring(why),
    { retryable = true })
end

--- Forget every key set (tests; a changed trust decision).
function KeyCache:clear()
  self.memo, self.attempts, self.last_error = {}, {}, {}
end

local default_cache

--- The cache `verify` uses when not given `opts.cache` (made at first use;
-- under nginx over the shared dict `gauth`).
-- @return cache | nil, msg, err
function _M.default_cache()
  if default_cache then return default_cache end
  local c, msg, err = _M.new_cache()
  if not c then return nil, msg, err end
  default_cache = c
  return c
end

--- Replace the default cache (nil: make a fresh one at next use).
function _M.set_default_cache(c)
  if c ~= nil and getmetatable(c) ~= cache_mt then
    error("gauth.id_token: set_default_cache needs a cache from new_cache", 2)
  end
  default_cache = c
end

--- The default cache when it has been made, else nil (no cache made):
-- what verify's short path looks at when given no `cache`.
function _M.held_default()
  return default_cache
end

return _M
