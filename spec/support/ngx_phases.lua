--- Handlers of the nginx that spec/71-openresty_phases_spec.lua starts
-- (4 workers, no dict named gauth, a `lua_shared_dict gauth_tokens`).
-- Results go to the `results` dict (JSON) or back over HTTP; never a token
-- in a log.
--
-- The token endpoint is this nginx itself (`/slow_token`, plain http on
-- loopback): it records in the results dict when an exchange for a scope
-- starts and ends (`ep start <name>`, `ep end <name>`, as numbers of one
-- sequence shared with the handlers, `seq`), counts them (`ep hits
-- <name>`), takes 0.3 s, and holds an exchange while `hold <name>` is set
-- until `release <name>` is (so that a spec can act while it is pending).
-- @module support.ngx_phases

local cjson = require "cjson.safe"
local errors = require "gauth.errors"

local ngx = ngx  -- luacheck: ignore
local _M = {}

local cfg = {}

--- init_by_lua: `{ sa = key file path, port = nginx's port }`. Makes no
-- credentials: the first use of gauth is in the workers.
function _M.configure(t)
  cfg = t
end

local function results() return ngx.shared.results end

local function seq()
  return results():incr("seq", 1, 0)
end

-- Credentials per (store, name) and worker. store "local": the default
-- cache (here a process-local one: there is no dict named gauth); "dict":
-- shared_dict = "gauth_tokens".
local creds = {}

local function scope_of(name)
  return "https://www.googleapis.com/auth/test." .. name
end

local function get_creds(store, name)
  local k = store .. " " .. name
  local c = creds[k]
  if not c then
    local err
    c, err = require("gauth.service_account").from_file(cfg.sa, {
      scopes = { scope_of(name) },
      shared_dict = store == "dict" and "gauth_tokens" or nil })
    if not c then error(tostring(err)) end
    creds[k] = c
  end
  return c
end

-- A tiny Discovery document: things.list, GET http://127.0.0.1:<port>/api/things.
local function service(store, name)
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
    { credentials = get_creds(store, name) }))
end

-- Both return values (and the third) of a call, as plain data.
local function outcome(v, second, third)
  local o = { first = v == nil and "nil" or type(v), second_type = type(second) }
  if v == nil then
    local e = errors.of(second, third)
    o.msg = tostring(second)
    o.err = { module = e.module, step = e.step, retryable = e.retryable,
              kind = e.kind, reason = e.reason, phase = e.phase }
  end
  return o
end

--- The calls made in a phase: token() of cold credentials, an API call
-- (things.list) with credentials of the same store, and a request through
-- the default transport; what they returned
-- goes to "phase <phase> <store> <name>" with `returned`, the sequence
-- number taken when both had returned.
function _M.phase(phase, store, name)
  store = store or ngx.var.arg_store
  name = name or ngx.var.arg_name
  local tok, t2, t3 = get_creds(store, name):token()
  local res, a2, a3 = service(store, name .. "-api"):things():list():execute()
  -- The transport itself (what media, batch and Discovery fetches use).
  local hres, h2, h3 = require("gauth.http").default():request({
    url = "http://127.0.0.1:" .. cfg.port .. "/api/things" })
  local r = { returned = seq(), pid = ngx.worker.pid(),
              token = outcome(tok, t2, t3), api = outcome(res, a2, a3),
              http = outcome(hres, h2, h3) }
  local key = "phase " .. phase .. " " .. store .. " " .. name
  if phase == "init_worker" then key = key .. " " .. ngx.worker.pid() end
  results():set(key, cjson.encode(r))
  return tok and "token" or "error"
end

--- init_worker_by_lua: the phase calls with each store, in every worker.
function _M.init_worker()
  _M.phase("init_worker", "local", "iw-local")
  _M.phase("init_worker", "dict", "iw-dict")
end

--- balancer_by_lua: the phase calls, then the peer: this nginx's /fast.
function _M.balancer()
  _M.phase("balancer")
  assert(require("ngx.balancer").set_current_peer("127.0.0.1", cfg.port))
end

--- body_filter_by_lua: once per request (the filter runs per chunk).
function _M.body_filter()
  if not ngx.ctx.done then
    ngx.ctx.done = true
    _M.phase("body_filter")
  end
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

--- POST /slow_token: the token endpoint (see the module's comment).
function _M.slow_token()
  ngx.req.read_body()
  local args = ngx.req.get_post_args()
  local name = name_of_assertion(args.assertion)
  local r = results()
  local n = r:incr("ep hits " .. name, 1, 0)
  r:add("ep start " .. name, seq())
  ngx.sleep(0.3)
  if r:get("hold " .. name) then
    -- Held until the spec releases it (hang guard: 20 s).
    local deadline = ngx.now() + 20
    while not r:get("release " .. name) and ngx.now() < deadline do
      ngx.sleep(0.02)
      ngx.update_time()
    end
  end
  r:add("ep end " .. name, seq())
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode({ access_token = "tok-" .. name .. "-" .. n, expires_in = 3600,
                         token_type = "Bearer" }))
end

--- GET /api/things: the API; counts its calls.
function _M.api()
  results():incr("api hits", 1, 0)
  ngx.header["content-type"] = "application/json"
  ngx.say("{}")
end

--- GET /mark?key=: records the next sequence number under `key`.
function _M.mark()
  local n = seq()
  results():set(ngx.unescape_uri(ngx.var.arg_key), n)
  ngx.say(n)
end

--- GET /set?key=: sets `key` to 1.
function _M.set()
  results():set(ngx.unescape_uri(ngx.var.arg_key), 1)
  ngx.say("ok")
end

--- GET /result?key=
function _M.result()
  local v = results():get(ngx.unescape_uri(ngx.var.arg_key))
  ngx.say(v == nil and "null" or v)
end

local function reply(status, t)
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode(t))
end

--- GET /token?store=&name=: a token in the content phase.
function _M.token()
  local c = get_creds(ngx.var.arg_store, ngx.var.arg_name)
  local tok, t2, t3 = c:token()
  reply(200, { token = tok, pid = ngx.worker.pid(), outcome = outcome(tok, t2, t3) })
end

--- GET /kill_refresher?store=&name=: a light thread starts the refresh of
-- a cold token and is killed at once (as when its request dies); then
-- this request asks for the same token.
function _M.kill_refresher()
  local c = get_creds(ngx.var.arg_store, ngx.var.arg_name)
  local th = ngx.thread.spawn(function() return c:token() end)
  local killed, kerr = ngx.thread.kill(th)
  local tok, t2, t3 = c:token()
  reply(200, { killed = killed and true or false, kill_err = kerr, token = tok,
               outcome = outcome(tok, t2, t3) })
end

--- GET /default_kind: whether the default cache is over a shared dict;
-- and what it is after shdict.install("gauth_tokens") (then put back).
function _M.default_kind()
  local tc = require "gauth.token_cache"
  local shdict = require "gauth.token_cache.shdict"
  local before = tc.default()
  local installed = assert(shdict.install("gauth_tokens"))
  local after = tc.default()
  tc.set_default(before)
  reply(200, { shdict = shdict.is_store(before.store),
               installed = installed == after and shdict.is_store(after.store)
                 and after.store.name or false })
end

return _M
