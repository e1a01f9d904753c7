--- Handlers of the nginx that spec/73-openresty_operations_spec.lua starts
-- (4 workers, `lua_shared_dict gauth`): Google down, invalidation across
-- workers, metrics. Results go back over HTTP or into the `results` dict;
-- never a token in a log.
--
-- The token endpoint is this nginx itself (`/ep_token`, plain http on
-- loopback). It counts the exchanges per name (`ep hits <name>`, the name
-- being the last part of the assertion's scope) and answers as
-- `mode <name>` says: "ok" (default: a new token each time), "dead" (503,
-- with `Retry-After: <retry_after <name>>` when that is set), "hold"
-- (waits until `release <name>` is set; hang guard 20 s, then a token).
-- @module support.ngx_ops

local cjson = require "cjson.safe"
local errors = require "gauth.errors"

local ngx = ngx  -- luacheck: ignore
local _M = {}

local cfg = {}

--- init_by_lua: `{ sa = key file path, port = nginx's port }`. Hooks
-- (gauth.on) count the events in the results dict: `event retry <module>`,
-- `event refresh`, `event failure`, and keep the last failure's
-- credential label (`event failure credential`).
function _M.configure(t)
  cfg = t
  local gauth = require "gauth"
  assert(gauth.on("retry", function(d)
    ngx.shared.results:incr("event retry " .. tostring(d.module), 1, 0)
  end))
  assert(gauth.on("refresh", function(d)
    ngx.shared.results:incr("event refresh", 1, 0)
    ngx.shared.results:set("event refresh credential", d.credential)
  end))
  assert(gauth.on("failure", function(d)
    ngx.shared.results:incr("event failure", 1, 0)
    ngx.shared.results:set("event failure credential", d.credential)
  end))
end

local function results() return ngx.shared.results end

local function scope_of(name)
  return "https://www.googleapis.com/auth/test." .. name
end

-- Credentials per name and worker (the default cache: the dict gauth).
local creds = {}
local function get_creds(name)
  local c = creds[name]
  if not c then
    local err
    c, err = require("gauth.service_account").from_file(cfg.sa, {
      scopes = { scope_of(name) },
      -- Two attempts per exchange, 50 ms apart: what one refresh costs the
      -- endpoint is then exactly 2 (unless Retry-After is too long).
      retry = { attempts = 2, initial = 0.05, max_delay = 0.05, jitter = false } })
    if not c then error(tostring(err)) end
    creds[name] = c
  end
  return c
end

-- A tiny Discovery document: things.list, GET http://127.0.0.1:<port>/api/things.
local function service(name)
  local doc = {
    kind = "discovery#restDescription", discoveryVersion = "v1",
    id = "things:v1", name = "things", version = "v1",
    rootUrl = "http://127.0.0.1:" .. cfg.port .. "/", servicePath = "api/",
    baseUrl = "http://127.0.0.1:" .. cfg.port .. "/api/",
    protocol = "rest", parameters = {},
    resources = { things = { methods = { list = {
      id = "things.things.list", path = "things", httpMethod = "GET",
      parameters = {}, response = { ["$ref"] = "Things" } } } } },
    schemas = { Things = { id = "Things", type = "object", properties = {} } },
  }
  return assert(require("gauth.discovery").build_from_document(doc,
    { credentials = get_creds(name) }))
end

-- Both return values (and the third) of a call, as plain data.
local function outcome(v, second, third)
  local o = { first = v == nil and "nil" or type(v), second_type = type(second) }
  if v == nil then
    local e = errors.of(second, third)
    o.msg = tostring(second)
    o.err = { module = e.module, step = e.step, retryable = e.retryable,
              status = e.status, retry_after = e.retry_after, attempts = e.attempts,
              remembered = e.remembered, negative_ttl = e.negative_ttl,
              token_failed = e.token_failed }
  end
  return o
end

local function reply(status, t)
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode(t))
end

-- The name in a grant assertion's scope ("...auth/test.<name>").
local function name_of_assertion(assertion)
  local payload = assertion and assertion:match("^[^.]+%.([^.]+)%.")
  if not payload then return "?" end
  payload = payload:gsub("-", "+"):gsub("_", "/")
  payload = payload .. string.rep("=", (4 - #payload % 4) % 4)
  local claims = cjson.decode(ngx.decode_base64(payload) or "")
  return claims and claims.scope and claims.scope:match("test%.(%S+)$") or "?"
end

--- POST /ep_token: the token endpoint (see the module's comment).
function _M.ep_token()
  ngx.req.read_body()
  local args = ngx.req.get_post_args()
  local name = name_of_assertion(args.assertion)
  local r = results()
  local n = r:incr("ep hits " .. name, 1, 0)
  local mode = r:get("mode " .. name) or "ok"
  if mode == "dead" then
    local ra = r:get("retry_after " .. name)
    if ra then ngx.header["Retry-After"] = ra end
    return reply(503, { error = { code = 503, message = "token endpoint down for the test",
                                  status = "UNAVAILABLE" } })
  end
  if mode == "hold" then
    local deadline = ngx.now() + 20
    while not r:get("release " .. name) and ngx.now() < deadline do
      ngx.sleep(0.02)
      ngx.update_time()
    end
  end
  reply(200, { access_token = "tok-" .. name .. "-" .. n, expires_in = 3600,
               token_type = "Bearer" })
end

--- GET /api/things: the API; counts its calls; 401 for the token in
-- `revoked` (as Google answers a token it no longer accepts).
function _M.api()
  local r = results()
  r:incr("api hits", 1, 0)
  local auth = ngx.var.http_authorization or ""
  local revoked = r:get("revoked")
  if revoked and auth == "Bearer " .. revoked then
    r:incr("api 401", 1, 0)
    return reply(401, { error = { code = 401, message = "Request had invalid authentication credentials.",
                                  status = "UNAUTHENTICATED" } })
  end
  reply(200, { kind = "things", token = auth:sub(8) })
end

--- GET /set?key=&value=
function _M.set()
  results():set(ngx.unescape_uri(ngx.var.arg_key), ngx.var.arg_value or 1)
  ngx.say("ok")
end

--- GET /result?key=
function _M.result()
  local v = results():get(ngx.unescape_uri(ngx.var.arg_key))
  ngx.say(v == nil and "null" or cjson.encode(v))
end

--- GET /bounds?n=: the per-worker tables stay at their bound (issue 17
-- item 9). A shared-dict store of max_entries 10 is given n keys (set,
-- then get: the decoded-entry memo and the prefixed keys fill), and a
-- cache over a local store of max_entries 10 schedules n background
-- refreshes (the `scheduled` table, which a shared-dict store leaves to
-- the dict). Counted before this handler yields, so before any of those
-- timers runs.
function _M.bounds()
  local n = tonumber(ngx.var.arg_n)
  local store = assert(require("gauth.token_cache.shdict").new({ max_entries = 10 }))
  local served = 0
  for i = 1, n do
    local key = "bounds|" .. i
    store:set(key, { access_token = "b" .. i, expires_at = ngx.time() + 60 }, 60)
    local e = store:get(key)
    if e and e.access_token == "b" .. i then served = served + 1 end
  end
  local cache = require("gauth.token_cache").new({ max_entries = 10 })
  local scheduled = 0
  local clock = function() return ngx.time() end
  for i = 1, n do
    local fetch = function() return { access_token = "s" .. i, expires_at = ngx.time() + 60 } end
    if cache:schedule("sched|" .. i, fetch, clock) then scheduled = scheduled + 1 end
  end
  reply(200, { served = served, memo = store.memo:count(), tkeys = store.tkeys:count(),
               scheduled_calls = scheduled, scheduled = cache.scheduled:count() })
end

--- GET /token?name=: a token in the content phase.
function _M.token()
  local c = get_creds(ngx.var.arg_name)
  local tok, t2, t3 = c:token()
  reply(200, { token = tok, pid = ngx.worker.pid(), outcome = outcome(tok, t2, t3),
               label = tostring(c), key = c:cache_key():sub(-8) })
end

--- GET /invalidate?name=: this worker drops the token (as after a 401).
function _M.invalidate()
  local c = get_creds(ngx.var.arg_name)
  local tok = c:token()
  local r1, r2, r3 = c:invalidate()
  reply(200, { pid = ngx.worker.pid(), token = tok, outcome = outcome(r1, r2, r3),
               returned = r1 })
end

--- GET /execute?name=&deadline=&retries=: things.list with the
-- credentials of `name`.
function _M.execute()
  local name = ngx.var.arg_name
  local opts = { deadline = tonumber(ngx.var.arg_deadline),
                 num_retries = tonumber(ngx.var.arg_retries) }
  local v, e2, e3 = service(name):things():list():execute(opts)
  reply(200, { pid = ngx.worker.pid(), outcome = outcome(v, e2, e3) })
end

return _M
