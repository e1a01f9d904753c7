--- Handlers of the nginx that spec/70-openresty_spec.lua starts (loaded
-- inside nginx, LuaJIT). Configured once in init_by_lua with `configure`.
-- Never prints a token into a log: results go back over HTTP.
-- @module support.ngx_app

local cjson = require "cjson.safe"

local ngx = ngx  -- luacheck: ignore
local _M = {}

local cfg = {}

--- Set in init_by_lua: `{ sa = path, untrusted_sa = path, discovery_dir =
-- path, ca_file = path }`. Also fetches a token for the scope "init" here,
-- in the master (blocking, over libcurl: cosockets do not exist yet), which
-- the workers must then find in the shared dict.
function _M.configure(t)
  cfg = t
  local c = assert(require("gauth.service_account").from_file(cfg.sa, {
    scopes = { "https://www.googleapis.com/auth/test.init" }, ca_file = cfg.ca_file }))
  local tok, err = c:token()
  cfg.init_result = tok and { token = tok } or { err = tostring(err) }
end

--- GET /init_result: what the token request in init_by_lua gave.
function _M.init_result()
  ngx.say(cjson.encode(cfg.init_result))
end

local function now() ngx.update_time() return ngx.now() end

local creds = {}

-- One credentials object per (key file, scope) and worker; the scope names
-- the test, so every test starts from a cold cache.
local function get_creds(args)
  local which = args.sa or "sa"
  local scope = "https://www.googleapis.com/auth/test." .. (args.scope or "default")
  local k = which .. " " .. scope
  local c = creds[k]
  if not c then
    local err
    c, err = require("gauth.service_account").from_file(cfg[which], { scopes = { scope } })
    if not c then error(tostring(err)) end
    creds[k] = c
  end
  return c
end

local function reply(status, t)
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode(t))
end

--- GET /token?scope=&sa=: a token from the service account.
function _M.token()
  local args = ngx.req.get_uri_args()
  local c = get_creds(args)
  local t0 = now()
  local tok, exp, err = c:token()
  if not tok then
    return reply(500, { err = exp, retryable = err and err.retryable,
                        elapsed = now() - t0, pid = ngx.worker.pid() })
  end
  reply(200, { token = tok, expires_at = exp, pid = ngx.worker.pid(),
               elapsed = now() - t0 })
end

--- GET /named_dict: `shared_dict = "gauth_other"` puts the token in that
-- dict (not in gauth); a dict that does not exist is a programming error.
function _M.named_dict()
  local sa = require "gauth.service_account"
  local scope = "https://www.googleapis.com/auth/test.named-" .. ngx.now()
  local c = assert(sa.from_file(cfg.sa, { scopes = { scope }, shared_dict = "gauth_other" }))
  local tok, err = c:token()
  local in_other, in_gauth = 0, 0
  for _, k in ipairs(ngx.shared.gauth_other:get_keys(0)) do
    if k:sub(1, 2) == "t|" then in_other = in_other + 1 end
  end
  local key = c:cache_key()
  for _, k in ipairs(ngx.shared.gauth:get_keys(0)) do
    if k == "t|" .. key then in_gauth = in_gauth + 1 end
  end
  local ok, raised = pcall(sa.from_file, cfg.sa, { scopes = { scope }, shared_dict = "nosuch" })
  reply(200, { token = tok ~= nil, err = err and tostring(err), in_other = in_other,
               in_gauth = in_gauth, raised = not ok, raised_msg = tostring(raised) })
end

--- GET /not_blocked?scope=: fetch a token from a slow endpoint in one light
-- thread while this same worker calls /fast over a cosocket in another. A
-- blocked worker could not run the second at all until the first is done.
-- What happened, in order, is in `order`; the spec checks it, never times.
function _M.not_blocked()
  local args = ngx.req.get_uri_args()
  local c = get_creds(args)
  local order = {}
  local th = ngx.thread.spawn(function()
    order[#order + 1] = "token asked"
    local tok, err = c:token()
    order[#order + 1] = "token answered"
    return tok ~= nil, tostring(err)
  end)
  -- let the token request get going (the fake counts it before answering)
  ngx.sleep(0.05)
  local t = require("gauth.transport.ngx").new({ timeout = 5 })
  order[#order + 1] = "fast asked"
  local res, err = t:request({ url = "http://127.0.0.1:" .. ngx.var.server_port .. "/fast" })
  order[#order + 1] = "fast answered"
  local _, ok, terr = ngx.thread.wait(th)
  reply(200, { fast_status = res and res.status, fast_err = err and tostring(err),
               token_ok = ok, token_err = terr, order = order })
end

--- The log phase (no cosockets): the token, or the error, goes to the
-- results dict for /result to read.
function _M.log_phase()
  local args = ngx.req.get_uri_args()
  local c = get_creds(args)
  local tok, msg, err = c:token()
  ngx.shared.results:set("log " .. (args.scope or "default"),
    cjson.encode(tok and { token = tok } or { err = msg,
                                              retryable = err and err.retryable }))
end

--- set_by_lua (no cosockets): returns "token:<token>" or "error:<err>".
function _M.set_phase()
  local args = ngx.req.get_uri_args()
  local c = get_creds(args)
  local tok, err = c:token()
  return tok and ("token:" .. tok) or ("error:" .. tostring(err))
end

--- GET /result?key=
function _M.result()
  local v = ngx.shared.results:get(ngx.req.get_uri_args().key)
  ngx.say(v or "null")
end

--- GET /default_store: what token_cache.default() is.
function _M.default_store()
  local tc = require "gauth.token_cache"
  local shdict = require "gauth.token_cache.shdict"
  local c = tc.default()
  reply(200, { shdict = shdict.is_store(c.store), dict = c.store.name })
end

--- GET /store_checks: the shared-dict store's failure paths and its lock.
function _M.store_checks()
  local shdict = require "gauth.token_cache.shdict"
  local out = {}
  local st, err = shdict.new({ shared_dict = "nosuch" })
  out.missing = { store = st ~= nil, err = tostring(err) }
  local dc, derr = require("gauth.discovery.shdict_cache").new({ shared_dict = "nosuch" })
  out.missing_docs = { cache = dc ~= nil, err = tostring(derr) }

  -- The lock: A holds it until B has given up (B waits 0.2 s at most); C
  -- (up to 10 s) waits and gets it once A lets go. What happened, in order,
  -- goes to out.order: the spec checks the order, never the times.
  local store = assert(shdict.new())
  local key = "lock-test-" .. ngx.now()
  local a_unlock = assert(store:lock(key, 1))
  local order = {}
  local function try(name, timeout)
    local unlock, lerr = store:lock(key, timeout)
    order[#order + 1] = name .. (unlock and " got the lock" or " gave up")
    local r = { got = unlock ~= nil, err = lerr and tostring(lerr) }
    if unlock then unlock() end
    return r
  end
  local b = ngx.thread.spawn(try, "B", 0.2)
  local c = ngx.thread.spawn(try, "C", 10)
  out.b = select(2, ngx.thread.wait(b))
  order[#order + 1] = "A lets go"
  a_unlock()
  out.c = select(2, ngx.thread.wait(c))
  out.order = order
  -- After unlock, free at once; an unlock that is not the holder's does nothing.
  local u1 = assert(store:lock(key, 0))
  out.relock = true
  u1()
  u1 = assert(store:lock(key, 0))
  a_unlock()  -- stale: must not release u1's lock
  out.stale_unlock_kept = (store:lock(key, 0)) == nil
  u1()
  reply(200, out)
end

--- set_by_lua: a held lock cannot be waited for in a phase that cannot yield.
function _M.set_lock()
  local store = assert(require("gauth.token_cache.shdict").new())
  local key = "set-lock-" .. ngx.now()
  local unlock = assert(store:lock(key, 1))
  local again, err = store:lock(key, 1)
  unlock()
  return again and "got it twice" or tostring(err)
end

--- POST /case {name=, ctx=}: run a shared transport case with the cosocket
-- transport; answers with the normalised results.
function _M.run_case()
  ngx.req.read_body()
  local body = cjson.decode(ngx.req.get_body_data() or "")
  local cases = require "support.transport_cases"
  local case = cases.cases[body.name]
  if not case then return reply(404, { err = "no case " .. tostring(body.name) }) end
  local t = assert(require("gauth.transport.ngx").new({ timeout = 10 }))
  local r = cases.run(t, case.requests(body.ctx), now)
  reply(200, r)
end

--- GET /via_http: gauth.http.new() in a content handler uses cosockets.
function _M.via_http()
  local t = assert(require("gauth.http").new({ timeout = 5 }))
  local res, err = t:request({ url = ngx.var.arg_url })
  reply(200, { status = res and res.status, err = err and tostring(err),
               ngx = t.ngx_t ~= nil, curl = t.curl_t ~= nil })
end

--- GET /discovery_doc?api=&version=: discovery.build() of the document, which
-- under nginx goes through the shared-dict cache (lua_shared_dict
-- gauth_discovery), fetched from this nginx's /fake_discovery (which counts
-- hits). The disk cache must not be used: its folder does not exist.
function _M.discovery_doc()
  local args = ngx.req.get_uri_args()
  local discovery = require "gauth.discovery"
  discovery.clear_cache()  -- this worker's memory: the dict must serve
  local svc, msg, err = discovery.build(args.api, args.version, {
    discovery_url = "http://127.0.0.1:" .. ngx.var.server_port
      .. "/fake_discovery/{api}.{apiVersion}.json",
    cache_dir = "/nonexistent/gauth-discovery-cache",
  })
  if not svc then
    return reply(err.status == 404 and 404 or 500, { err = msg })
  end
  local doc = discovery.document(svc)
  reply(200, { name = doc.name, version = doc.version, title = doc.title })
end

--- GET /fake_discovery/<name>.json: a Discovery fixture (helpers.discovery_dir()),
-- slowly (0.5 s), counting hits in the results dict.
function _M.fake_discovery()
  ngx.shared.results:incr("discovery_hits", 1, 0)
  ngx.sleep(0.5)
  local name = ngx.var.uri:match("([^/]+)$")
  local f = cfg.discovery_dir and io.open(cfg.discovery_dir .. "/" .. name, "rb")
  if not f then return ngx.exit(404) end
  local text = f:read("*a")
  f:close()
  ngx.header["content-type"] = "application/json"
  ngx.print(text)
end

-- Raw responses, written byte for byte on the downstream socket.
local function raw(data)
  local sock = assert(ngx.req.socket(true))
  assert(sock:send(data))
end

function _M.raw_chunked()
  local n = tonumber(ngx.var.arg_n) or 10
  local pieces = tonumber(ngx.var.arg_pieces) or 3
  local size = math.ceil(n / pieces)
  local left = n
  while left > 0 do
    local k = math.min(size, left)
    ngx.print(string.rep("x", k))
    ngx.flush(true)
    left = left - k
  end
end

function _M.raw_close()
  local n = tonumber(ngx.var.arg_n) or 10
  local v = ngx.var.arg_v or "1.1"
  raw("HTTP/" .. v .. " 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
      .. string.rep("y", n))
end

--- GET /raw/trickle?part=head|body&n=&every=&id=: an answer whose head
-- (part=head) or body (part=body) is sent one byte every `every` seconds;
-- "trickle <id>" in the results dict says how far it got: "started",
-- "aborted after N" (the client went away), "completed".
function _M.raw_trickle()
  local id, part = ngx.var.arg_id, ngx.var.arg_part
  local n = tonumber(ngx.var.arg_n) or 40
  local every = tonumber(ngx.var.arg_every) or 0.5
  local results = ngx.shared.results
  local key = "trickle " .. id
  results:set(key, "started")
  local sock = assert(ngx.req.socket(true))
  local data
  if part == "head" then
    data = "HTTP/1.1 200 OK\r\nX-Slow: " .. string.rep("h", n) .. "\r\nContent-Length: 0\r\n\r\n"
  else
    assert(sock:send("HTTP/1.1 200 OK\r\nContent-Length: " .. n .. "\r\n\r\n"))
    data = string.rep("b", n)
  end
  for i = 1, #data do
    local ok = sock:send(data:sub(i, i))
    if not ok then
      results:set(key, "aborted after " .. (i - 1))
      return
    end
    ngx.sleep(every)
  end
  results:set(key, "completed")
end

function _M.raw_continue()
  raw("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
      .. "Connection: close\r\n\r\nok")
end

function _M.raw_badchunk()
  raw("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n")
end

function _M.raw_bighead()
  raw("HTTP/1.1 200 OK\r\nX-Big: " .. string.rep("b", 110 * 1024) .. "\r\n"
      .. "Content-Length: 0\r\n\r\n")
end

function _M.raw_redirect()
  return ngx.redirect(ngx.unescape_uri(ngx.var.arg_to), 302)
end

function _M.raw_echo()
  ngx.req.read_body()
  reply(200, { method = ngx.req.get_method(), headers = ngx.req.get_headers(),
               body = ngx.req.get_body_data() })
end

return _M
