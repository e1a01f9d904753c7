--- Helpers for nginx (OpenResty / lua-nginx-module) handlers.
--
--     # nginx.conf, http {}
--     lua_shared_dict gauth 1m;     # key sets (and tokens) for all workers
--     lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
--
--     location /push {
--       access_by_lua_block {
--         require("gauth.nginx").require_id_token{
--           audience = "https://push.example.com/push",
--           allowed_emails = { "pubsub-push@my-project.iam.gserviceaccount.com" },
--         }
--       }
--       content_by_lua_block { ngx.say(ngx.ctx.gauth_claims.email) }
--     }
--
--     location = /metrics {      # Prometheus
--       allow 127.0.0.1; deny all;
--       content_by_lua_block { ngx.print(require("gauth.nginx").metrics()) }
--     }
-- @module gauth.nginx

local id_token = require "gauth.id_token"
local ngx_phase = require "gauth.lib.ngx_phase"

local ngx = ngx  -- luacheck: ignore
local type = type
local tostring = tostring
local error = error
local lower = string.lower
local gsub = string.gsub
local sub = string.sub
local find = string.find
local byte = string.byte

-- OpenResty's LuaJIT has table.clone (a shallow copy in one step, a few
-- times cheaper than a loop of stores); elsewhere, that loop.
local clone
do
  local ok, f = pcall(require, "table.clone")
  clone = ok and f or function(t)
    local c = {}
    for k, x in pairs(t) do c[k] = x end
    return c
  end
end

local _M = { _VERSION = "0.1.0" }

--- Identity-Aware Proxy's header.
_M.IAP_HEADER = "x-goog-iap-jwt-assertion"
--- Verdicts kept per worker and key-set URL (LRU).
_M.VERDICT_CACHE_SIZE = 4096

--- Header values longer than this (bytes) are verified on every request,
-- never cached (no real ID token comes near it).
_M.MAX_CACHED_TOKEN = 4096

local lrucache
-- gauth.core's jws_key, loaded with the first verdict: a worker that
-- never guards a location does not map libcurl and OpenSSL for it.
local core_jws_key
local function jws_key(s)
  if not core_jws_key then core_jws_key = require("gauth.core").jws_key end
  return core_jws_key(s)
end

-- Header name -> what the guard makes of it: the ngx.var name, whether it
-- holds "Bearer <token>" or the bare token, its default key set and
-- issuers, and its verdicts: key-set URL -> LRU of verdicts (see below).
--
-- A verdict is keyed by SHA-256 of the signature segment of the header's
-- value (DECISIONS: verdicts "keyed by a hash of the token"), and holds the
-- rest of the value (scheme, header and payload: the text before the
-- signature), which a request must match exactly to use it. So only the
-- very value that was verified finds its verdict, and no bearer token is
-- kept in the worker's memory past its request: what is kept is useless
-- without the signature, which is kept only as its digest. Hashing the
-- signature alone is half the work of hashing the whole value (SHA-256 is
-- most of what the guard adds to a cached request: ~0.3 us for a 1 KB
-- token, see the README's speed table). Only values whose token was
-- verified are stored, so a client can't fill the cache with junk. Each
-- header keeps its own verdicts: a bare-token header never finds an
-- Authorization value, and IAP's guard (ES256 only) never gets an RS256
-- verdict from a shared key set.
--
-- A verdict keeps its own copies of the claims every guard checks (exp,
-- iat, nbf, aud, iss, email, email_verified): the claims table itself goes
-- to the handlers (ngx.ctx.gauth_claims), and what a handler does to it
-- must not change what a later request is let in on.
local headers = {}
-- Shared dict name -> id_token key cache (this worker's view of it).
local caches = {}

local function header_of(name)
  local vname = "http_" .. gsub(lower(name), "-", "_")
  local iap = vname == "http_x_goog_iap_jwt_assertion"
  local h = {
    vname = vname,
    bearer = vname == "http_authorization",
    iap = iap,
    certs_url = iap and id_token.IAP_CERTS_URL or id_token.OAUTH2_CERTS_URL,
    issuers = iap and id_token.IAP_ISSUERS or id_token.GOOGLE_ISSUERS,
    algorithms = iap and id_token.ES256_ONLY or nil,
    verdicts = {},
  }
  headers[name] = h
  return h
end

local function verdict_cache(by_url, url)
  local c = by_url[url]
  if not c then
    lrucache = lrucache or require "resty.lrucache"
    c = assert(lrucache.new(_M.VERDICT_CACHE_SIZE))
    by_url[url] = c
  end
  return c
end

local function key_cache(name)
  local c = caches[name]
  if c then return c end
  if name == id_token.DEFAULT_DICT then
    local msg
    c, msg = id_token.default_cache()
    if not c then return nil, msg end
  else
    local msg
    c, msg = id_token.new_cache({ shared_dict = name })
    if not c then return nil, msg end
  end
  caches[name] = c
  return c
end

local function one_of(list, v)
  if type(list) == "string" then return list == v end
  -- Short lists (Google's two issuers, an audience, an email or two)
  -- without a loop: a loop here split the guard's JIT trace, and the rest
  -- of each request ran in the interpreter (issue 14's bench).
  local n = #list
  if n == 1 then return list[1] == v end
  if n == 2 then return list[1] == v or list[2] == v end
  for i = 1, n do
    if list[i] == v then return true end
  end
  return false
end

local function refuse(why)
  -- Why, never the token: the message names the check only.
  ngx.log(ngx.INFO, "gauth: require_id_token: ", why)
  ngx.header["WWW-Authenticate"] = 'Bearer error="invalid_token"'
  return ngx.exit(401)
end

-- The checks that depend on the location, made on cached verdicts too
-- (on the verdict's copies of the claims). `email_verified` is a claim of
-- Google ID tokens; IAP's assertions carry the email IAP signed in and no
-- such claim (Google's "Securing your app with signed headers").
local function local_checks(v, audience, issuers, emails, iap)
  if audience ~= false and not one_of(audience, v.aud) then
    return "gauth.id_token: claims: audience mismatch"
  end
  if issuers and not one_of(issuers, v.iss) then
    return "gauth.id_token: claims: issuer mismatch"
  end
  if emails then
    if type(v.email) ~= "string" or (v.email_verified ~= true and not iap) then
      return "gauth.nginx: claims: no verified email"
    end
    if not one_of(emails, v.email) then
      return "gauth.nginx: claims: email not allowed"
    end
  end
  return nil
end

local BEARER = { [66] = true, [98] = true }  -- "B", "b"

-- The claims as a verdict keeps them (a private copy nothing outside this
-- module holds), and a fresh copy for each request: a handler may edit
-- ngx.ctx.gauth_claims without the next request bearing the same token
-- seeing it. Tables inside the claims (Firebase's "firebase", a
-- list-valued claim) are copied too.
local function deep_copy(t)
  local c = clone(t)
  for k, x in pairs(c) do
    if type(x) == "table" then c[k] = deep_copy(x) end
  end
  return c
end

local function keep_claims(v, claims)
  local nested = false
  for _, x in pairs(claims) do
    if type(x) == "table" then nested = true break end
  end
  v.nested = nested
  v.claims = nested and deep_copy(claims) or clone(claims)
end

local function claims_of(v)
  if v.nested then return deep_copy(v.claims) end
  return clone(v.claims)
end

--- Let the request through only with a valid Google-signed token (access
-- phase). On failure: 401 with `WWW-Authenticate: Bearer
-- error="invalid_token"` and `ngx.exit` (why is logged at `info`, never
-- the token). On success the claims go to `ngx.ctx.gauth_claims` and are
-- returned. Verdicts are kept per worker, header and key set (LRU of
-- `VERDICT_CACHE_SIZE`, keyed by SHA-256 of the token's signature and
-- matched on the rest of the header's value, values over
-- `MAX_CACHED_TOKEN` bytes not kept); every request, cached verdicts
-- included, gets this guard's checks: exp/iat/nbf on its clock with its
-- `clock_skew`, `max_lifetime`, audience, issuers, emails.
-- @tparam table opts `audience` (string or list; required, `false`
--   skips it), `header` ("authorization", default: a Bearer token; or
--   "x-goog-iap-jwt-assertion": IAP's keys, issuer and ES256),
--   `certs_url`, `issuers` (default Google's for Authorization, IAP's for
--   the IAP header; `false`: unchecked), `allowed_emails` (list: `email`
--   must be one, with `email_verified`), `clock_skew`, `max_lifetime`,
--   `shared_dict` (default "gauth"), `now` (epoch seconds, a number or a
--   function returning one; default `ngx.now()`: the clock every check,
--   cached verdicts included, is made against)
-- @return claims (or does not return)
function _M.require_id_token(opts)
  if type(opts) ~= "table" then
    error("gauth.nginx: require_id_token needs a table of options", 2)
  end
  local audience = opts.audience
  if audience == nil then
    error("gauth.nginx: require_id_token: audience is required (false skips it)", 2)
  end
  local header = opts.header or "authorization"
  local h = headers[header] or header_of(header)
  local certs_url = opts.certs_url or h.certs_url
  local issuers = opts.issuers
  if issuers == nil then issuers = h.issuers end
  local emails = opts.allowed_emails

  local value = ngx.var[h.vname]
  if type(value) ~= "string" or value == "" then
    return refuse("no " .. header .. " header")
  end

  local now = opts.now
  if now == nil then
    now = ngx.now()
  elseif type(now) == "function" then
    now = now()
  end
  -- Finite numbers only: NaN compares false with everything, and a check
  -- written "refuse if now > exp + skew" would let every token through.
  if type(now) ~= "number" or now - now ~= 0 then
    error("gauth.nginx: require_id_token: now must be a finite number or a function returning one", 2)
  end
  local skew = opts.clock_skew or 0
  if type(skew) ~= "number" or skew - skew ~= 0 or skew < 0 then
    error("gauth.nginx: require_id_token: clock_skew must be a finite number >= 0", 2)
  end
  local max_lifetime = opts.max_lifetime
  if max_lifetime == nil then
    max_lifetime = id_token.DEFAULT_MAX_LIFETIME
  elseif max_lifetime ~= false and (type(max_lifetime) ~= "number"
      or max_lifetime - max_lifetime ~= 0 or max_lifetime <= 0) then
    error("gauth.nginx: require_id_token: max_lifetime must be false or a finite number > 0", 2)
  end
  local lru = verdict_cache(h.verdicts, certs_url)
  local key, signed
  if #value <= _M.MAX_CACHED_TOKEN then key, signed = jws_key(value) end
  local v = key and lru:get(key)
  -- A verdict says the signature is good; the time checks are this
  -- guard's (its clock, clock_skew and max_lifetime may differ from those
  -- of the guard that cached it), made as id_token.verify makes them. One
  -- that fails sends the token through verify, which refuses it and says why.
  if v and signed == v.signed_len and sub(value, 1, signed) == v.signed
      and now <= v.exp + skew and v.iat <= now + skew
      and (not v.nbf or v.nbf <= now + skew)
      and (not max_lifetime or v.exp - v.iat <= max_lifetime) then
    local why = local_checks(v, audience, issuers, emails, h.iap)
    if why then return refuse(why) end
    local claims = claims_of(v)
    ngx.ctx.gauth_claims = claims
    return claims
  end

  local token = value
  if h.bearer then
    -- "Bearer <token>", the scheme in any case
    if not BEARER[byte(value, 1)] or lower(sub(value, 1, 7)) ~= "bearer " then
      return refuse("Authorization is not a Bearer token")
    end
    token = sub(value, 8)
    if find(token, " ", 1, true) then token = gsub(token, "^ +", "") end
  end
  local cache, cerr = key_cache(opts.shared_dict or id_token.DEFAULT_DICT)
  if not cache then return refuse(tostring(cerr)) end
  local claims, msg = id_token.verify(token, {
    audience = false, issuers = false, certs_url = certs_url, cache = cache,
    clock_skew = opts.clock_skew, max_lifetime = opts.max_lifetime,
    algorithms = h.algorithms, now = now,
  })
  if not claims then return refuse(msg) end
  -- Dropped at exp (the LRU's clock is real time; every hit is checked on
  -- the guard's clock anyway). A token in a guard's clock_skew grace past
  -- exp is verified afresh on each request.
  v = {
    exp = claims.exp, iat = claims.iat, nbf = claims.nbf,
    aud = claims.aud, iss = claims.iss, email = claims.email,
    email_verified = claims.email_verified,
  }
  local ttl = v.exp - now
  if key and ttl > 0 then
    -- the verdict keeps its own copy; this request gets the table verify
    -- decoded, which nothing else holds
    keep_claims(v, claims)
    v.signed, v.signed_len = sub(value, 1, signed), signed
    lru:set(key, v, ttl)
  end
  local why = local_checks(v, audience, issuers, emails, h.iap)
  if why then return refuse(why) end
  ngx.ctx.gauth_claims = claims
  return claims
end

if not ngx_phase.is_ngx then
  -- Loaded outside nginx (docs, the package spec): nothing to run.
  _M.available = false
else
  _M.available = true
end

--- The counters of every worker (token exchanges, failures, cache hits and
-- misses, refresh time and last error per credential; API requests by
-- host and status, retries by host) in Prometheus text format, for a
-- `content_by_lua` location. They live in the `lua_shared_dict gauth` (or
-- the dict given to `gauth.token_cache.shdict.install`); without it, this
-- worker's only. See `gauth.metrics`.
-- @return string
function _M.metrics()
  return require("gauth.metrics").prometheus()
end

return _M
