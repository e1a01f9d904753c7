--- Handlers of the nginx nodes that spec/75-redis_store_spec.lua and
-- bench/redis_fleet_bench.sh start (inside nginx, LuaJIT). Results go back
-- over HTTP; no token is ever logged.
-- @module support.ngx_redis_app

local cjson = require "cjson.safe"

local ngx = ngx  -- luacheck: ignore
local _M = {}

local cfg = {}
local cache, cache_msg

--- In init_by_lua: `{ sa = path, redis = options of
-- gauth.token_cache.redis (nil: the shared dict only), base = the fake's
-- URL, audience = of the ID tokens }`.
function _M.init(t)
  cfg = t
  if t.redis then
    local err
    cache, cache_msg, err = require("gauth.token_cache.redis").install(t.redis)
    assert(cache or err, "install returns nil, msg, err")
  end
end

local creds = {}

-- One credentials object per scope and worker (kept across requests, as
-- an application keeps its credentials).
local function get_creds(args)
  local scope = "https://www.googleapis.com/auth/test." .. (args.cred or "default")
  local c = creds[scope]
  if not c then
    local err
    c, err = require("gauth.service_account").from_file(cfg.sa, { scopes = { scope } })
    if not c then error(tostring(err)) end
    creds[scope] = c
  end
  return c
end

local function reply(status, t)
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode(t))
end

--- GET /tok?cred=N: a token.
function _M.token()
  local c = get_creds(ngx.req.get_uri_args())
  local tok, exp, err = c:token()
  if not tok then
    return reply(500, { err = tostring(exp), pid = ngx.worker.pid(),
                        remembered = type(err) == "table" and err.remembered or false })
  end
  reply(200, { token = tok, pid = ngx.worker.pid() })
end

--- GET /plain: the token in the body, nothing else (benchmarks).
function _M.plain()
  local c = get_creds(ngx.req.get_uri_args())
  local tok = c:token()
  ngx.say(tok and "ok" or "no token")
end

--- GET /invalidate?cred=N: the API refused this worker's token.
function _M.invalidate()
  local c = get_creds(ngx.req.get_uri_args())
  local before = c:token()
  c:invalidate()
  reply(200, { invalidated = before ~= nil })
end

--- GET /refetch?cred=N: forget the token on this node only (its dict and
-- this worker), as a node that just started would, and ask again.
function _M.refetch()
  local c = get_creds(ngx.req.get_uri_args())
  cache.store.near:delete(c:cache_key())
  c._entry = nil
  local tok, err = c:token()
  if not tok then return reply(500, { err = tostring(err) }) end
  reply(200, { token = tok })
end

--- GET /bad_install: install with a key of 5 bytes.
function _M.bad_install()
  local o = {}
  for k, v in pairs(cfg.redis) do o[k] = v end
  o.encryption_key = "short"
  local c, msg, err = require("gauth.token_cache.redis").install(o)
  reply(200, { ok = c, msg = msg, step = err and err.step })
end

--- log_by_lua: a token through the cache (this worker's hold dropped) in a
-- phase without cosockets; logs whether one came (never the token).
function _M.log_phase()
  local c = get_creds(ngx.req.get_uri_args())
  c._entry = nil
  local tok = c:token()
  ngx.log(ngx.NOTICE, "log phase token: ", tok and "ok" or "none")
end

--- access_by_lua of GET /idt?certs=/path: require_id_token against the
-- key set at the fake's `/path` (`cfg.base` .. path); content: `ok()`.
function _M.require_token()
  require("gauth.nginx").require_id_token{ audience = cfg.audience,
    certs_url = cfg.base .. ngx.var.arg_certs }
end

--- content_by_lua after an access check: who answered.
function _M.ok()
  reply(200, { ok = true, pid = ngx.worker.pid(), sub = ngx.ctx.gauth_claims.sub })
end

--- GET /disc?api=N: gauth.discovery.build of N v1 from the fake
-- (`cfg.base`/disc/N/v1), through the default caches.
function _M.disc()
  local api = ngx.var.arg_api
  local svc, msg = require("gauth.discovery").build(api, "v1",
    { discovery_url = cfg.base .. "/disc/{api}/{apiVersion}" })
  if not svc then return reply(500, { err = msg }) end
  reply(200, { name = require("gauth.discovery").document(svc).name, pid = ngx.worker.pid() })
end

local nodict

--- GET /disc_nodict?api=N: the same through a document cache without a
-- shared dict (each worker over Redis).
function _M.disc_nodict()
  if not nodict then
    nodict = assert(require("gauth.discovery.shdict_cache").new({ store = cache,
                                                                  shared_dict = false }))
  end
  local api = ngx.var.arg_api
  local svc, msg = require("gauth.discovery").build(api, "v1",
    { discovery_url = cfg.base .. "/disc/{api}/{apiVersion}", shared_cache = nodict })
  if not svc then return reply(500, { err = msg }) end
  reply(200, { name = require("gauth.discovery").document(svc).name, pid = ngx.worker.pid() })
end

--- GET /store_opts: the key-set and Discovery caches given this node's
-- Redis cache (good), and stores that are not Redis stores (bad).
function _M.store_opts()
  local id_token = require "gauth.id_token"
  local sc = require "gauth.discovery.shdict_cache"
  local bad = {}
  local function add(c, msg, err)
    bad[#bad + 1] = { ok = c ~= nil, msg = msg, step = err and err.step,
                      module = err and err.module }
  end
  add(id_token.new_cache({ store = ngx.shared.gauth }))
  add(sc.new({ store = {} }))
  add(require("gauth.discovery").build("x", "v1",
    { store = { get = print }, discovery_url = cfg.base .. "/disc/{api}/{apiVersion}" }))
  local c1 = id_token.new_cache({ store = cache })
  local c2 = sc.new({ store = cache.store, shared_dict = false })
  reply(200, { good = { c1 ~= nil and c1.store == cache.store,
                        c2 ~= nil and c2.store == cache.store }, bad = bad })
end

--- GET /key?cred=N: the cache key (Redis keys are built from it).
function _M.key()
  reply(200, { key = get_creds(ngx.req.get_uri_args()):cache_key() })
end

--- GET /state: whether this node has marked Redis down.
function _M.state()
  reply(200, { down = ngx.shared.gauth:get("redis|down") ~= nil,
               install_error = cache_msg })
end

--- GET /check: gauth.token_cache.redis.check with this node's options.
function _M.check()
  local ok, msg, err = require("gauth.token_cache.redis").check(cfg.redis)
  reply(200, { ok = ok, msg = msg, step = err and err.step, module = err and err.module,
               retryable = err and err.retryable })
end

--- GET /layers?cred=N&n=: p50 and p99 (microseconds) of `creds:token()`
-- finding the token in this worker's memory (the entry it holds), in the
-- node's dict (held entry and decoded copy dropped: a dict read and a JSON
-- decode), and in Redis (the node's copy dropped too: a Redis GET, the
-- AES-GCM open, the decode and the copy into the dict).
function _M.layers()
  local args = ngx.req.get_uri_args()
  local n = tonumber(args.n) or 200
  local c = get_creds(args)
  assert(c:token())
  local key = c:cache_key()
  local clock = require("gauth.core").monotonic
  local lru = require "gauth.lib.lru"
  local near = cache.store.near
  local function pct(prep)
    local t = {}
    for i = 1, n do
      if prep then prep() end
      local t0 = clock()
      local tok = c:token()
      t[i] = clock() - t0
      assert(tok, "a token")
    end
    table.sort(t)
    local function at(p) return math.floor(t[math.ceil(n * p)] * 1e6 * 10 + 0.5) / 10 end
    return { p50 = at(0.5), p99 = at(0.99) }
  end
  local before = ngx.shared.gauth:get("redis|down")
  reply(200, {
    memory = pct(nil),
    dict = pct(function() c._entry = nil; near.memo = lru.new(64) end),
    redis = pct(function() c._entry = nil; near:delete(key) end),
    down = before,
  })
end

return _M
