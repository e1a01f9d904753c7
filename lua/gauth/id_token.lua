--- Verify Google-signed tokens: ID tokens (Sign-In, Cloud Run and Cloud
-- Functions callers, Pub/Sub push, Cloud Scheduler), Identity-Aware Proxy
-- assertions and Firebase ID tokens.
--
--     local id_token = require "gauth.id_token"
--     local claims, err_msg, err = id_token.verify_oauth2_token(token,
--       "https://my-service.run.app")
--     if not claims then ngx.log(ngx.INFO, err_msg) end   -- never the token
--
-- What is checked (the facts are google-auth's `google/oauth2/id_token.py`
-- and `google/auth/jwt.py`): the header's `alg` is RS256 or ES256 and fits
-- the key (`none`, HS256 and every other value are refused); the key is the
-- one named by `kid` in the key set (a token without `kid` is tried against
-- the keys of its algorithm only); the signature; `iat` and `exp` are
-- present numbers, `iat` not in the future and `exp` not past (give or take
-- `clock_skew`, default 0 as in google-auth); `nbf` when present; the
-- lifetime `exp - iat` at most `max_lifetime` (default 86400 s, Google's
-- Node library's bound; `false` switches it off); `aud` (a string) is one of
-- `audience`; `iss` is one of `issuers` when given.
--
-- Every rejection returns `nil, msg, err`: `msg` names the check
-- (`"gauth.id_token: claims: expired 42 s ago"`), `err.check` is one of
-- `malformed alg kid signature exp iat nbf lifetime aud iss sub keys`, and
-- nothing of the token is ever quoted.
--
-- **Key sets** are fetched from `certs_url` in either format Google serves
-- (a JSON object kid -> PEM certificate, or a JWK Set of RSA and EC P-256
-- keys) and kept for the response's `Cache-Control: max-age`, clamped to
-- [`MIN_MAX_AGE`, `MAX_MAX_AGE`] (60 s and 24 h; `DEFAULT_MAX_AGE`, 1 h,
-- without one). A token with a `kid` the set does not hold makes the set be
-- fetched again at once (Google rotates keys), but at most once per
-- `REFETCH_INTERVAL` (30 s) per URL, whatever the number of such tokens: a
-- flood of random `kid`s costs one fetch. A fetch that fails (down, slow
-- past `timeout`, an error status, garbage, an empty set) never lets a token
-- through; the keys already held keep serving for `STALE_FOR` (6 h) past
-- their age, and the next attempt waits for the interval.
--
-- **Under nginx** the key set lives in the shared dict (`gauth` unless
-- `shared_dict` says otherwise) for every worker: one worker fetches it
-- (cosockets, never blocking) under a lock while the others wait for it, or
-- keep serving what they hold; each worker keeps its parsed keys and reads
-- the dict only when they are past their age or miss a `kid`. In a phase
-- that cannot yield no fetch is made: the keys held are used, or the token
-- is refused (retryable). With a Redis store (`store`, or the one
-- `gauth.token_cache.redis.install` made) the worker that fetches asks
-- Redis first, and one node of the fleet fetches for all (see
-- `gauth.token_cache.redis`, "Key sets and Discovery documents").
-- @module gauth.id_token

local core = require "gauth.core"
local errors = require "gauth.errors"
local ngx_phase = require "gauth.lib.ngx_phase"
local seam = require "gauth.lib.seam"

-- A decoder of its own: strict numbers (no NaN, Infinity or hex, which
-- would make every time comparison false and so let an expired token in).
local cjson = require("cjson.safe").new()
cjson.decode_invalid_numbers(false)
local type = type
local getmetatable = getmetatable
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local error = error
local floor = math.floor
local match = string.match
local find = string.find
local byte = string.byte
local sub = string.sub
local lower = string.lower
local json_decode = cjson.decode
local jws_split = core.jws_split
local load_public_key = core.load_public_key
local load_jwk = core.load_jwk
local ngx = ngx  -- luacheck: ignore

local _M = { _VERSION = "0.1.0" }

--- Google's OAuth 2.0 certificates (PEM by kid): `verify` and
-- `verify_oauth2_token`.
_M.OAUTH2_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
--- The same keys as a JWK Set.
_M.OAUTH2_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
--- Firebase Authentication's certificates (PEM by kid).
_M.FIREBASE_CERTS_URL = "https://www.googleapis.com/robot/v1/metadata/x509/"
  .. "securetoken@system.gserviceaccount.com"
--- Identity-Aware Proxy's keys (a JWK Set of EC P-256 keys).
_M.IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key-jwk"
--- Issuers of Google's OAuth 2.0 ID tokens.
_M.GOOGLE_ISSUERS = { "accounts.google.com", "https://accounts.google.com" }
--- Issuer of IAP's assertions.
_M.IAP_ISSUER = "https://cloud.google.com/iap"
--- The same as a list, as `issuers` takes it.
_M.IAP_ISSUERS = { _M.IAP_ISSUER }
--- `algorithms` for IAP: ES256 only.
_M.ES256_ONLY = { ES256 = true }
--- The shared dict key sets live in under nginx.
_M.DEFAULT_DICT = "gauth"
--- Issuer prefix of Firebase ID tokens (the project id follows).
_M.FIREBASE_ISSUER_PREFIX = "https://securetoken.google.com/"

_M.MIN_MAX_AGE = 60
_M.MAX_MAX_AGE = 86400
_M.DEFAULT_MAX_AGE = 3600
_M.REFETCH_INTERVAL = 30
_M.STALE_FOR = 6 * 3600
_M.DEFAULT_MAX_LIFETIME = 86400
_M.DEFAULT_TIMEOUT = 10
--- Largest key set body read (bytes) and number of keys kept from it.
_M.MAX_BODY = 1024 * 1024
_M.MAX_KEYS = 64

local ALG_KIND = { RS256 = "RSA", ES256 = "EC" }
local KIND_ALG = { RSA = "RS256", EC = "ES256" }
local BOTH = { RS256 = true, ES256 = true }

local function fail(step, check, message, fields)
  fields = fields or {}
  fields.check = check
  return errors.fail("id_token", step, message, fields)
end

-- What a token says about itself may go into a message only this way:
-- short, and only characters that cannot carry much.
local function shown(v)
  if type(v) ~= "string" then return type(v) end
  local s = match(v, "^[%w%-_%.:/ ]+$")
  if not s or #s > 32 then return "(" .. #v .. " bytes)" end
  return s
end

-- Key sets ---------------------------------------------------------------

local function add_key(set, kid, key, alg)
  local e = { kid = kid, key = key, alg = alg }
  set.n = set.n + 1
  set.list[set.n] = e
  if kid then set.by_kid[kid] = e end
end

--- Parse a key set document: a JSON object of kid -> PEM certificate (or
-- public key), or a JWK Set (`keys`: RSA `n`/`e`, EC P-256 `x`/`y`). Keys
-- that cannot be used (another type or curve, an `alg` other than RS256 or
-- ES256, a bad certificate) are left out; a set left with none is an error.
-- @tparam string body
-- @return set `{ list = { {kid, key, alg}, ... }, by_kid = {...}, n }` |
--   nil, msg, err
function _M.parse_key_set(body)
  if type(body) ~= "string" then
    error("gauth.id_token: parse_key_set: body must be a string", 2)
  end
  local doc = match(body, "^%s*{") and json_decode(body)
  if type(doc) ~= "table" then
    return fail("keys", "keys", "key set is not a JSON object")
  end
  local set = { list = {}, by_kid = {}, n = 0 }
  local skipped = 0
  if doc.keys ~= nil then
    if type(doc.keys) ~= "table" then
      return fail("keys", "keys", "keys is not a list")
    end
    for i, jwk in ipairs(doc.keys) do
      if i > _M.MAX_KEYS then break end
      local key
      if type(jwk) == "table" and (jwk.kid == nil or type(jwk.kid) == "string")
          and (jwk.use == nil or jwk.use == "sig") then
        local kty = jwk.kty
        if kty == "RSA" and type(jwk.n) == "string" and type(jwk.e) == "string" then
          key = load_jwk("RSA", jwk.n, jwk.e)
        elseif kty == "EC" and type(jwk.x) == "string" and type(jwk.y) == "string"
            and type(jwk.crv) == "string" then
          key = load_jwk("EC", jwk.x, jwk.y, jwk.crv)
        end
      end
      local alg = key and KIND_ALG[key:type()]
      if alg and (jwk.alg == nil or jwk.alg == alg) then
        add_key(set, jwk.kid, key, alg)
      else
        skipped = skipped + 1
      end
    end
  else
    local count = 0
    for kid, pem in pairs(doc) do
      count = count + 1
      if count > _M.MAX_KEYS then break end
      local key = type(pem) == "string" and load_public_key(pem)
      if key and not key:is_private() then
        add_key(set, kid, key, KIND_ALG[key:type()])
      else
        skipped = skipped + 1
      end
    end
  end
  if set.n == 0 then
    return fail("keys", "keys", skipped > 0
      and ("key set holds no usable key (" .. skipped .. " refused)")
      or "key set is empty")
  end
  return set
end

--- The max-age of a Cache-Control header value, clamped to the floor and
-- ceiling (`DEFAULT_MAX_AGE` when there is none).
function _M.max_age(cache_control)
  local age
  if type(cache_control) == "string" then
    local cc = lower(cache_control)
    if match(cc, "no%-cache") or match(cc, "no%-store") then
      age = 0
    else
      age = tonumber(match(cc, "max%-age%s*=%s*(%d+)"))
    end
  end
  age = age or _M.DEFAULT_MAX_AGE
  if age < _M.MIN_MAX_AGE then age = _M.MIN_MAX_AGE end
  if age > _M.MAX_MAX_AGE then age = _M.MAX_MAX_AGE end
  return age
end

local KeyCache = {}
local cache_mt = { __index = KeyCache }

-- Under nginx the event loop's cached time (no system call per token).
local default_clock = ngx_phase.is_ngx and ngx.now or core.now

local function clock_of(now, step)
  if now == nil then return default_clock end
  if type(now) == "number" then return function() return now end end
  if type(now) == "function" then return now end
  error("gauth.id_token: " .. (step and step .. ": " or "")
        .. "now must be a number or a function", 3)
end

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
    timeout = opts.timeout or _M.DEFAULT_TIMEOUT,
    refetch_interval = opts.refetch_interval or _M.REFETCH_INTERVAL,
    stale_for = opts.stale_for or _M.STALE_FOR,
    clock = clock_of(opts.now),
    memo = {},      -- url -> { set, expires, stale_until, stamp }
    attempts = {},  -- url -> time of the last fetch (process-local)
    last_error = {},
    fetches = 0,
  }, cache_mt)
  if ngx_phase.is_ngx and opts.shared_dict ~= false then
    local name = opts.shared_dict or _M.DEFAULT_DICT
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
    connect_timeout = self.timeout, max_body = _M.MAX_BODY,
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
  return res.body or "", _M.max_age(h["cache-control"])
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

local function valid_set(body) return _M.parse_key_set(body) ~= nil end

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
      local set = _M.parse_key_set(text)
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
  local set = _M.parse_key_set(doc.body)
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
  local set, msg, err = _M.parse_key_set(body)
  if not set then return nil, msg, err end
  m.set = set
  if self.dict then
    local kbody, kstamp, _, kerr = dkeys(url)
    local ttl = m.stale_until - t
    local raw = cjson.encode({ body = body, expires = m.expires,
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

-- Verification -----------------------------------------------------------

-- Decoded headers by their text: a signer's header is the same on every
-- token, so each is decoded once (bounded).
local header_memo, header_memo_n = {}, 0

local function decode_header(text)
  local h = header_memo[text]
  if h then return h end
  h = match(text, "^%s*{") and json_decode(text)
  if type(h) ~= "table" then return nil end
  if header_memo_n >= 128 then header_memo, header_memo_n = {}, 0 end
  header_memo[text] = h
  header_memo_n = header_memo_n + 1
  return h
end

-- Header segments (base64url text) of tokens that verified, newest first,
-- at most MAX_KNOWN. The next token that starts with one of them (the same
-- signer and key) skips decoding the header: the key it names is taken
-- from the cache when held and fresh, and one C call (Key:verify_jws)
-- checks the token's shape, decodes it and verifies it. Compared in place
-- (no substring made per token). Only headers that passed every header
-- check and a signature enter.
local MAX_KNOWN = 8
local known, known_n = {}, 0

local function remember_segment(token, header, alg, kid)
  local dot = find(token, ".", 1, true)
  if not dot then return end
  local seg = sub(token, 1, dot - 1)
  for i = 1, known_n do
    if known[i].seg == seg then return end
  end
  if known_n < MAX_KNOWN then known_n = known_n + 1 end
  for i = known_n, 2, -1 do known[i] = known[i - 1] end
  -- alg and kid as checked now: the header table is handed to callers,
  -- who may change it.
  known[1] = { seg = seg, dot = dot, header = header, alg = alg, kid = kid }
end

local function known_header(token)
  for i = 1, known_n do
    local k = known[i]
    if byte(token, k.dot) == 46 and find(token, k.seg, 1, true) == 1 then return k end
  end
  return nil
end

local function one_of(list, v)
  if type(list) == "string" then return list == v end
  for i = 1, #list do
    if list[i] == v then return true end
  end
  return false
end

-- Lists already checked (weak keys): the issuers and audience lists are
-- usually the same tables on every request.
local checked_lists = setmetatable({}, { __mode = "k" })

local function check_list(v, name, level)
  if type(v) == "string" or checked_lists[v] then return end
  if type(v) == "table" and type(v[1]) == "string" and v[2] == nil then return end
  if type(v) ~= "table" or #v == 0 then
    error("gauth.id_token: " .. name .. " must be a string or a non-empty list", level)
  end
  for _, x in ipairs(v) do
    if type(x) ~= "string" then
      error("gauth.id_token: " .. name .. " must hold strings", level)
    end
  end
  checked_lists[v] = true
end

local function now_of(opts)
  local n = opts.now
  if n == nil then return default_clock() end
  if type(n) == "function" then n = n() end
  if type(n) ~= "number" then
    error("gauth.id_token: now must be a number or a function returning one", 3)
  end
  return n
end

-- The one verification; the public functions give it their defaults as
-- arguments (no option table copied per token: this runs per request).
local function verify(token, opts, level, audience, issuers, url, allowed)
  if type(token) ~= "string" then
    error("gauth.id_token: token must be a string", level)
  end
  if audience == nil then
    error("gauth.id_token: opts.audience is required"
      .. " (audience = false skips the check)", level)
  end
  if audience ~= false and type(audience) ~= "string" and not checked_lists[audience] then
    check_list(audience, "audience", level + 1)
  end
  if issuers and type(issuers) ~= "string" and not checked_lists[issuers] then
    check_list(issuers, "issuers", level + 1)
  end

  allowed = allowed or BOTH
  local cache = opts.cache
  local claims, header

  -- A header seen before on a good token: the same checks in the same
  -- order as below, with fewer steps (see known_header). The key: what
  -- KeyCache:get answers first (held, within its age), without a fetch.
  local k = known_n > 0 and known_header(token)
  local kc = cache or default_cache
  local m = k and allowed[k.alg] and getmetatable(kc) == cache_mt and kc.memo[url]
  local held = m and kc.clock() < m.expires and m.set.by_kid[k.kid]
  if held and held.alg == k.alg then
    local ptext, good = held.key:verify_jws(k.alg, token)
    if not ptext then
      return fail("decode", "malformed", (match(good, "^gauth%.core: jws: (.*)$") or good))
    end
    -- A JSON object, not a bare value: "{" first (as signers write it),
    -- else after white space.
    claims = (byte(ptext) == 123 or match(ptext, "^%s*{")) and json_decode(ptext)
    if type(claims) ~= "table" then
      return fail("decode", "malformed", "malformed: payload is not a JSON object")
    end
    if not good then return fail("verify", "signature", "bad signature") end
    header = k.header
  end

  if not header then
    local htext, ptext, sig, signed_len = jws_split(token)
    if not htext then
      return fail("decode", "malformed", (match(ptext, "^gauth%.core: jws: (.*)$") or ptext))
    end
    header = decode_header(htext)
    if not header then
      return fail("decode", "malformed", "malformed: header is not a JSON object")
    end
    local alg = header.alg
    if type(alg) ~= "string" then
      return fail("decode", "malformed", "malformed: header has no alg")
    end
    if not ALG_KIND[alg] or not allowed[alg] then
      return fail("verify", "alg", "alg " .. shown(alg) .. " not allowed")
    end
    local kid = header.kid
    if kid ~= nil and type(kid) ~= "string" then
      return fail("decode", "malformed", "malformed: kid is not a string")
    end
    claims = match(ptext, "^%s*{") and json_decode(ptext)
    if type(claims) ~= "table" then
      return fail("decode", "malformed", "malformed: payload is not a JSON object")
    end

    if not cache then
      local msg, err
      cache, msg, err = _M.default_cache()
      if not cache then return nil, msg, err end
    end
    local set, msg, err = cache:get(url, kid)
    if not set then return nil, msg, err end

    local ok = false
    if kid ~= nil then
      local e = set.by_kid[kid]
      if not e then
        return fail("verify", "kid", "unknown kid " .. shown(kid))
      end
      if e.alg ~= alg then
        return fail("verify", "alg", "alg " .. alg .. " does not fit key "
          .. shown(kid) .. " (" .. e.alg .. ")")
      end
      ok = e.key:verify(alg, token, sig, signed_len)
      if ok then remember_segment(token, header, alg, kid) end
    else
      local tried = 0
      for i = 1, set.n do
        local e = set.list[i]
        if e.alg == alg then
          tried = tried + 1
          if e.key:verify(alg, token, sig, signed_len) then ok = true break end
        end
      end
      if tried == 0 then
        return fail("verify", "kid", "no kid, and no " .. alg .. " key in the key set")
      end
    end
    if not ok then return fail("verify", "signature", "bad signature") end
  end

  -- Claims, in google-auth's order: iat and exp, then aud; then the rest.
  local iat, exp, nbf = claims.iat, claims.exp, claims.nbf
  if iat == nil then return fail("claims", "iat", "missing iat") end
  if exp == nil then return fail("claims", "exp", "missing exp") end
  -- Numbers only (not "123"), and finite: 1e400 decodes to infinity.
  if type(iat) ~= "number" or iat - iat ~= 0 then
    return fail("claims", "iat", "malformed: iat is not a finite number")
  end
  if type(exp) ~= "number" or exp - exp ~= 0 then
    return fail("claims", "exp", "malformed: exp is not a finite number")
  end
  if nbf ~= nil and (type(nbf) ~= "number" or nbf - nbf ~= 0) then
    return fail("claims", "nbf", "malformed: nbf is not a finite number")
  end
  local now
  if opts.now == nil then now = default_clock() else now = now_of(opts) end
  local skew = opts.clock_skew or 0
  if now > exp + skew then
    return fail("claims", "exp", "expired " .. floor(now - exp) .. " s ago")
  end
  if iat > now + skew then
    return fail("claims", "iat", "issued " .. floor(iat - now) .. " s in the future (iat)")
  end
  if nbf and nbf > now + skew then
    return fail("claims", "nbf", "not valid for another " .. floor(nbf - now) .. " s (nbf)")
  end
  local max_lifetime = opts.max_lifetime
  if max_lifetime == nil then max_lifetime = _M.DEFAULT_MAX_LIFETIME end
  if max_lifetime and exp - iat > max_lifetime then
    return fail("claims", "lifetime", "lifetime " .. floor(exp - iat)
      .. " s exceeds max_lifetime " .. max_lifetime)
  end
  if audience ~= false then
    local aud = claims.aud
    if type(aud) ~= "string" or (aud ~= audience and not one_of(audience, aud)) then
      return fail("claims", "aud", "audience mismatch")
    end
  end
  if issuers and (type(claims.iss) ~= "string" or not one_of(issuers, claims.iss)) then
    return fail("claims", "iss", "issuer mismatch")
  end
  return claims, header
end

--- Verify a Google-signed token.
-- @tparam string token the compact JWT
-- @tparam table opts `audience` (string or list; required: `false` skips
--   the check), `certs_url` (default `OAUTH2_CERTS_URL`), `issuers`
--   (string or list; none checked unless given), `clock_skew` (s, default
--   0), `max_lifetime` (s, default 86400; `false`: unchecked), `now`
--   (number or function), `cache` (from `new_cache`; default
--   `default_cache()`), `algorithms` (set, e.g. `{ ES256 = true }`)
-- @return claims, header | nil, msg, err (`err.check` names the check)
function _M.verify(token, opts)
  if type(opts) ~= "table" then
    error("gauth.id_token: opts must be a table (audience is required)", 2)
  end
  return verify(token, opts, 2, opts.audience, opts.issuers,
                opts.certs_url or _M.OAUTH2_CERTS_URL, opts.algorithms)
end

local NO_OPTS = {}

local function opts_of(opts)
  if opts == nil then return NO_OPTS end
  if type(opts) ~= "table" then error("gauth.id_token: opts must be a table", 3) end
  return opts
end

local function default(v, d)
  if v == nil then return d end
  return v
end

--- Verify an ID token issued by Google's OAuth 2.0 server (Sign-In users,
-- service accounts, Cloud Run/Functions callers, Pub/Sub push, Scheduler):
-- issuer `accounts.google.com` or `https://accounts.google.com`, keys from
-- `OAUTH2_CERTS_URL`.
-- @tparam string token
-- @param audience string or list (`false`: unchecked)
-- @tparam[opt] table opts as for `verify`
-- @return claims, header | nil, msg, err
function _M.verify_oauth2_token(token, audience, opts)
  if opts == nil then opts = NO_OPTS end
  if type(opts) ~= "table" then error("gauth.id_token: opts must be a table", 2) end
  local issuers = opts.issuers
  if issuers == nil then issuers = _M.GOOGLE_ISSUERS end
  return verify(token, opts, 2, audience, issuers,
                opts.certs_url or _M.OAUTH2_CERTS_URL, opts.algorithms)
end

--- Verify Identity-Aware Proxy's `x-goog-iap-jwt-assertion`: ES256 only,
-- keys from `IAP_CERTS_URL`, issuer `https://cloud.google.com/iap`.
-- @tparam string token
-- @param audience `/projects/NUMBER/global/backendServices/ID` or
--   `/projects/NUMBER/apps/PROJECT` (string or list)
-- @tparam[opt] table opts as for `verify`
-- @return claims, header | nil, msg, err
function _M.verify_iap(token, audience, opts)
  opts = opts_of(opts)
  return verify(token, opts, 2, audience, default(opts.issuers, _M.IAP_ISSUERS),
                opts.certs_url or _M.IAP_CERTS_URL, opts.algorithms or _M.ES256_ONLY)
end

--- Verify a Firebase Authentication ID token: audience the project id,
-- issuer `https://securetoken.google.com/<project_id>`, keys from
-- `FIREBASE_CERTS_URL`, and a non-empty `sub`.
-- @tparam string token
-- @tparam string project_id
-- @tparam[opt] table opts as for `verify`
-- @return claims, header | nil, msg, err
function _M.verify_firebase_token(token, project_id, opts)
  if type(project_id) ~= "string" or project_id == "" then
    error("gauth.id_token: verify_firebase_token: project_id must be a string", 2)
  end
  opts = opts_of(opts)
  local claims, header, err = verify(token, opts, 3, project_id,
    default(opts.issuers, { _M.FIREBASE_ISSUER_PREFIX .. project_id }),
    opts.certs_url or _M.FIREBASE_CERTS_URL, opts.algorithms)
  if not claims then return nil, header, err end
  if type(claims.sub) ~= "string" or claims.sub == "" or #claims.sub > 128 then
    return fail("claims", "sub", "sub must be a non-empty string of at most 128 characters")
  end
  return claims, header
end

-- ------------------------------------------------------------------------
-- ID-token credentials: Google-signed ID tokens of any credentials that
-- have a service account (for calling Cloud Run, Cloud Functions, IAP).
-- ------------------------------------------------------------------------

local IdCreds  -- the class, made on first use (gauth.credentials loads late)

local function id_class()
  if IdCreds then return IdCreds end
  local credentials = require "gauth.credentials"
  IdCreds = credentials.extend({ _VERSION = _M._VERSION, kind = "id_token" })
  IdCreds._mt = credentials.metatable(IdCreds)

  -- The inner credentials give the token; this object caches it under
  -- their cache key (which binds the source's secret and the audience).
  function IdCreds:fetch_token()
    local e, m, x = self._inner:fetch_token()
    if not e then return errors.ret(errors.of(m, x)) end
    return e
  end

  function IdCreds:cache_key_parts()
    return { inner = self._inner:cache_key() }
  end

  function IdCreds:describe()
    return "ID token for " .. self.audience .. " from " .. tostring(self.source)
  end

  --- The ID token (cached, refreshed before its `exp`): token, expires_at
  -- | nil, msg, err.
  function IdCreds:token()
    local tok, exp, x = credentials.base.token(self)
    if not tok then return errors.ret(errors.of(exp, x)) end
    return tok, exp
  end

  --- Set `authorization: Bearer <ID token>`: headers | nil, msg, err.
  function IdCreds:apply(headers)
    if headers ~= nil and type(headers) ~= "table" then
      error("gauth.id_token: apply: headers must be a table", 2)
    end
    local tok, msg, err = self:token()
    if not tok then return nil, msg, err end
    return credentials.base.apply(self, headers)
  end

  --- The same credentials for another audience (google-auth's
  -- `with_target_audience`): credentials | nil, msg, err.
  function IdCreds:with_target_audience(audience)
    local o = self._opts
    return _M.credentials(self.source, { audience = audience, include_email = self.include_email,
      format = o.format, licenses = o.licenses, cache = o.cache, now = o.now })
  end

  --- ID tokens take no scopes: false.
  function IdCreds:requires_scopes() return false end  -- luacheck: no unused args

  function IdCreds:signer_email() return self.source:signer_email() end
  function IdCreds:sign_bytes(b) return self.source:sign_bytes(b) end
  function IdCreds:sign_jwt(c) return self.source:sign_jwt(c) end
  return IdCreds
end

local function id_fail(message, fields)
  fields = fields or {}
  if fields.retryable == nil then fields.retryable = false end
  return errors.fail("id_token", "credentials", message, fields)
end

-- The credentials that give ID tokens for `audience`, made from `source`.
local function inner_of(source, audience, include_email, opts)
  local kind = source.kind
  if kind == "service_account" then
    -- A self-signed assertion with target_audience, exchanged at the token
    -- URI for an ID token (as google-auth's IDTokenCredentials).
    local o = source:copy({ mode = "id_token", target_audience = audience })
    o.scopes, o.subject, o.audience = nil, nil, nil
    return o
  elseif kind == "compute_engine" or kind == "app_engine" then
    -- .../identity?audience=...&format=full (by default)
    local o = source:copy({ mode = "id_token", target_audience = audience,
                            format = opts.format or "full" })
    o.scopes, o.licenses = nil, opts.licenses or nil
    return o
  elseif kind == "impersonated" then
    return require("gauth.impersonated").id_token_credentials(source, {
      audience = audience, include_email = include_email, cache = opts.cache, now = opts.now })
  elseif kind == "external_account" then
    if not source._impersonated then
      return nil, "external account credentials give ID tokens only with"
        .. " service_account_impersonation_url (the impersonated account's, from generateIdToken)"
    end
    return require("gauth.impersonated").id_token_credentials(source._impersonated, {
      audience = audience, include_email = include_email, cache = opts.cache, now = opts.now })
  end
  return nil, tostring(kind) .. " credentials cannot give ID tokens (a service account key,"
    .. " impersonated credentials, an external account with impersonation or the metadata"
    .. " server can)"
end

--- ID-token credentials: `token()` gives a Google-signed ID token for
-- `opts.audience`, cached and refreshed before its `exp` like any token;
-- `apply(headers)` sets `authorization: Bearer <ID token>`.
-- From a service account (a self-signed assertion with `target_audience`
-- exchanged at its token URI), impersonated credentials (IAM
-- `generateIdToken`), an external account with
-- `service_account_impersonation_url` (`generateIdToken` of that account,
-- asked with the STS token) or Compute Engine (the metadata server's
-- `identity?audience=...&format=full`). The one way to make them:
-- `service_account.id_token_credentials` and
-- `compute_engine.id_token_credentials` are deprecated aliases over this.
-- The object has `with_target_audience(audience)` (the same for another
-- audience) and `service_account_email` where the source knows it.
-- @param source credentials, or nil for Application Default Credentials
-- @tparam table opts `audience` (required), `include_email` (boolean;
--   for generateIdToken), for the metadata server `format` ("full", the
--   default: the token carries the account's email and the instance; or
--   "standard") and `licenses` (boolean, with "full"), `cache`, `now`
--   (epoch seconds, or a function returning them), and for ADC `env` and
--   the transport options (`http`,
--   `ca_file`, `timeout`, `client_cert`, `client_key`, `proxy`, `no_proxy`)
-- @return credentials | nil, msg, err (module "id_token", step
--   "credentials": a source that cannot give ID tokens; ADC's failure as
--   `cause`)
function _M.credentials(source, opts)
  if type(opts) ~= "table" or type(opts.audience) ~= "string" or opts.audience == "" then
    error("gauth.id_token: credentials: opts.audience (a non-empty string) is required", 2)
  end
  if opts.include_email ~= nil and type(opts.include_email) ~= "boolean" then
    error("gauth.id_token: credentials: include_email must be a boolean", 2)
  end
  local format, licenses = opts.format, opts.licenses
  if format ~= nil and format ~= "full" and format ~= "standard" then
    error('gauth.id_token: credentials: format must be "full" or "standard"', 2)
  end
  if licenses ~= nil and type(licenses) ~= "boolean" then
    error("gauth.id_token: credentials: licenses must be a boolean", 2)
  end
  if licenses and format == "standard" then
    error('gauth.id_token: credentials: licenses needs format "full"', 2)
  end
  if source ~= nil and (type(source) ~= "table" or type(source.token) ~= "function") then
    error("gauth.id_token: credentials: source must be credentials or nil (ADC)", 2)
  end
  local from_adc = source == nil
  if source == nil then
    -- ADC's credentials make their requests with the transport options
    -- given here (a proxy, a CA bundle, a client certificate).
    local credentials = require "gauth.credentials"
    local aopts = credentials.transport_opts(opts, "id_token", 3, { env = seam.get(opts, "env") })
    local c, m, x = require("gauth.adc").default(aopts)
    if not c then
      local cause = errors.of(m, x)
      return id_fail("no Application Default Credentials: " .. tostring(cause.message),
                     { cause = cause })
    end
    source = c
  end
  if source.mode == "id_token" then
    return id_fail("the source already gives ID tokens (" .. tostring(source) .. ")")
  end
  if (format ~= nil or licenses ~= nil) and source.kind ~= "compute_engine"
      and source.kind ~= "app_engine" then
    local why = "format and licenses are the metadata server's, not for "
      .. tostring(source.kind) .. " credentials"
    if not from_adc then error("gauth.id_token: credentials: " .. why, 2) end
    return id_fail(why)
  end
  -- nil stays nil: the source's own clock serves then.
  local now = opts.now
  if now ~= nil then now = clock_of(now, "credentials") end
  local inner, why = inner_of(source, opts.audience, opts.include_email or false,
                              { cache = opts.cache, now = now, format = format, licenses = licenses })
  if not inner then return id_fail(why) end
  local class = id_class()
  local self = setmetatable({ source = source, audience = opts.audience,
                              universe_domain = source.universe_domain,
                              service_account_email = source.service_account_email,
                              include_email = opts.include_email or false,
                              mode = "id_token", _inner = inner,
                              _opts = { format = format, licenses = licenses,
                                        cache = opts.cache, now = opts.now } }, class._mt)
  require("gauth.credentials").init(self, {
    cache = opts.cache or source._cache, now = now or source._clock,
    quota_project = source.quota_project })
  return self
end

--- One ID token for `audience` (Python's `fetch_id_token`): from
-- `opts.source` (credentials), else Application Default Credentials.
-- @tparam string audience
-- @tparam[opt] table opts `source`, `include_email`, `cache`, `now`, `env`,
--   and the transport options of ADC's credentials (as for `credentials`)
-- @return the ID token, expires_at | nil, msg, err
function _M.fetch(audience, opts)
  if type(audience) ~= "string" or audience == "" then
    error("gauth.id_token: fetch: audience must be a non-empty string", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error("gauth.id_token: fetch: opts must be a table", 2) end
  opts = opts or NO_OPTS
  local copts = { audience = audience, include_email = opts.include_email, cache = opts.cache,
                  now = opts.now,
                  testing = { env = seam.get(opts, "env") } }
  local c, m, x = _M.credentials(opts.source,
    require("gauth.credentials").transport_opts(opts, "id_token", 3, copts))
  if not c then return nil, m, x end
  return c:token()
end

return _M
