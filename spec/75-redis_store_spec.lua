-- gauth.token_cache.redis (issue 16): a fleet of real nginx nodes (2
-- workers each) sharing tokens through a real redis-server on loopback,
-- against a loopback token endpoint that counts exchanges. The nginx part
-- runs in the LuaJIT pass only (nginx runs LuaJIT; Redis is for OpenResty:
-- Debian packages no Redis client for Lua 5.4); the options and the
-- refusal outside nginx are checked under both interpreters.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"
local socket = require "socket"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"
local q = helpers.shell_quote
local HEX_KEY = string.rep("0123456789abcdef", 4)
local ACL_USER, ACL_PASS = "gauth", "s3cret-acl-pass"
local PREFIX = "fleet:"
local AUD = "https://fleet.example.com/push"

describe("gauth.token_cache.redis outside nginx", function()
  local redis_store = require "gauth.token_cache.redis"

  it("refuses to run without OpenResty", function()
    for _, f in ipairs({ redis_store.new, redis_store.cache, redis_store.install }) do
      local c, msg, err = f({ host = "127.0.0.1", port = 6379 })
      assert.is_nil(c)
      assert.equal("gauth.token_cache.redis: options: the Redis store needs OpenResty"
        .. " (nginx cosockets); Lua 5.4 has no packaged Redis client that gauth can use", msg)
      assert.equal("token_cache.redis", err.module)
      assert.equal("options", err.step)
    end
    assert.error_matches(function() redis_store.new({ port = "x" }) end,
      "gauth.token_cache.redis: port must be a positive number", 1, true)
  end)

  it("the key-set and Discovery caches refuse a store that is not a Redis store", function()
    local c, msg, err = require("gauth.id_token").new_cache({ store = {} })
    assert.is_nil(c)
    assert.equal("gauth.id_token: keys: store must be a gauth.token_cache.redis store or cache", msg)
    assert.equal("keys", err.step)
    c, msg, err = require("gauth.discovery.shdict_cache").new({ store = { get = print } })
    assert.is_nil(c)
    assert.equal("gauth.discovery: store: store must be a gauth.token_cache.redis store or cache", msg)
    assert.equal("store", err.step)
    -- store = false: the cache of this process, as without the option.
    assert.truthy(require("gauth.id_token").new_cache({ store = false }))
  end)

  it("parse_key: 32 raw bytes or 64 hex characters", function()
    local raw = string.rep("\7", 32)
    assert.equal(raw, redis_store.parse_key(raw))
    local k = redis_store.parse_key(HEX_KEY)
    assert.equal(32, #k)
    assert.equal("\1\35\69\103", k:sub(1, 4))
    for _, bad in ipairs({ "short", string.rep("g", 64), string.rep("a", 63) }) do
      local v, msg, err = redis_store.parse_key(bad)
      assert.is_nil(v)
      assert.equal("gauth.token_cache.redis: options: encryption_key must be 32 raw bytes"
        .. " or 64 hex characters (got " .. #bad .. " bytes)", msg)
      assert.equal("options", err.step)
    end
  end)
end)

if LUAJIT_PASS then
describe("gauth.token_cache.redis in a fleet of nginx nodes", function()
  local fake, sa_path, sa_info, certs, dir, rport, id_tok, rsa
  local nodes = {}     -- the fleet: 3 nodes with the store
  local victim, wrong  -- a node killed mid-refresh; one with a wrong password
  local keys = {}      -- cred -> cache key

  local function redis_cli(args, stdin)
    local cmd = "redis-cli -h 127.0.0.1 -p " .. rport .. " -n 2 --raw " .. args
    if stdin then cmd = cmd .. " < " .. q(stdin) end
    local ok, out = helpers.sh(cmd)
    assert(ok, out)
    return (out:gsub("\n$", ""))
  end

  local function start_redis()
    local ok, out = helpers.sh(("redis-server --port %d --bind 127.0.0.1 --save '' "
      .. "--appendonly no --dir %s --daemonize yes --pidfile %s --logfile %s")
      :format(rport, q(dir), q(dir .. "/redis.pid"), q(dir .. "/redis.log")))
    assert(ok, out)
    local deadline = socket.gettime() + 20
    while true do
      local up, pong = helpers.sh("redis-cli -h 127.0.0.1 -p " .. rport .. " ping")
      if up and pong:match("PONG") then break end
      assert(socket.gettime() < deadline, "redis-server did not start: "
        .. (helpers.read_file(dir .. "/redis.log") or ""))
      socket.sleep(0.02)
    end
    -- Watchdog: the server goes when this test process does.
    local me = helpers.read_file("/proc/self/stat"):match("^(%d+)")
    local pid = helpers.read_file(dir .. "/redis.pid"):match("%d+")
    os.execute(("(while kill -0 %s 2>/dev/null && kill -0 %s 2>/dev/null; do sleep 1; done; "
      .. "kill -KILL %s 2>/dev/null) >/dev/null 2>&1 </dev/null &"):format(me, pid, pid))
    redis_cli(("ACL SETUSER %s on '>%s' '~*' '+@all'"):format(ACL_USER, ACL_PASS))
  end

  local function kill_redis()
    local pid = helpers.read_file(dir .. "/redis.pid"):match("%d+")
    os.execute("kill -KILL " .. pid)
    local deadline = socket.gettime() + 10
    while helpers.process_alive(tonumber(pid)) do
      assert(socket.gettime() < deadline, "redis-server still alive")
      socket.sleep(0.02)
    end
    os.remove(dir .. "/redis.pid")
  end

  local function start_node(redis_opts, workers)
    local ropts = { host = "127.0.0.1", port = rport, username = ACL_USER, password = ACL_PASS,
                    prefix = PREFIX, encryption_key = HEX_KEY, lock_ttl = 2, database = 2,
                    retry_interval = 0.3, check_interval = 0.2,
                    -- A failed refresh is remembered for a minute (default 5 s) so the
                    -- negative-cache case below holds on a loaded machine.
                    negative_ttl = 60 }
    for k, v in pairs(redis_opts or {}) do ropts[k] = v end
    -- The options as a Lua literal.
    local parts = {}
    for k, v in pairs(ropts) do
      parts[#parts + 1] = k .. " = " .. (type(v) == "string" and ("%q"):format(v) or tostring(v))
    end
    local init = ('require("support.ngx_redis_app").init({ sa = %q, base = %q, audience = %q,'
      .. ' redis = { %s } })'):format(sa_path, "https://localhost:" .. fake.port, AUD,
      table.concat(parts, ", "))
    local app = 'require("support.ngx_redis_app")'
    local srv = assert(nginx.start({
      workers = workers or 2,
      trusted_ca = certs.ca_file,
      http = "lua_shared_dict gauth 1m;\nlua_shared_dict gauth_discovery 1m;\n"
        .. "init_by_lua_block { " .. init .. " }",
      server = ([[
        location = /tok { content_by_lua_block { @APP@.token() } }
        location = /refetch { content_by_lua_block { @APP@.refetch() } }
        location = /invalidate { content_by_lua_block { @APP@.invalidate() } }
        location = /key { content_by_lua_block { @APP@.key() } }
        location = /state { content_by_lua_block { @APP@.state() } }
        location = /check { content_by_lua_block { @APP@.check() } }
        location = /bad_install { content_by_lua_block { @APP@.bad_install() } }
        location = /store_opts { content_by_lua_block { @APP@.store_opts() } }
        location = /disc { content_by_lua_block { @APP@.disc() } }
        location = /disc_nodict { content_by_lua_block { @APP@.disc_nodict() } }
        location = /idt {
          access_by_lua_block { @APP@.require_token() }
          content_by_lua_block { @APP@.ok() }
        }
        location = /log_phase {
          content_by_lua_block { ngx.say("ok") }
          log_by_lua_block { @APP@.log_phase() }
        }
      ]]):gsub("@APP@", app),
    }))
    return srv
  end

  local function get_json(srv, path, opts)
    local status, body = srv:get(path, opts)
    local v = cjson.decode(body or "")
    assert(v, "not JSON: " .. tostring(status) .. " " .. tostring(body))
    return status, v
  end

  -- All at once (one curl, every connection opened together): the token
  -- of each reply, by cred.
  local function burst(srvs, creds, per)
    local d = helpers.tmpname("burst")
    os.execute("mkdir -p " .. q(d))
    local args = { "curl -s --parallel --parallel-immediate --parallel-max 200 --max-time 60" }
    local want = {}
    for _, srv in ipairs(srvs) do
      for _, cred in ipairs(creds) do
        for _ = 1, per do
          want[#want + 1] = cred
          args[#args + 1] = q(srv.url .. "/tok?cred=" .. cred) .. " -o " .. q(d .. "/" .. #want)
        end
      end
    end
    local ok, out = helpers.sh(table.concat(args, " "))
    assert(ok, out)
    local got = {}
    for i, cred in ipairs(want) do
      local body = helpers.read_file(d .. "/" .. i)
      local v = cjson.decode(body or "")
      assert(v and v.token, "request " .. i .. " (" .. cred .. ") got no token: " .. tostring(body))
      got[cred] = got[cred] or {}
      got[cred][v.token] = (got[cred][v.token] or 0) + 1
    end
    return got, #want
  end

  -- Every node `per` times at once, GET path (with an ID token when
  -- `bearer`): the decoded replies.
  local function burst_path(srvs, path, per, bearer)
    local d = helpers.tmpname("burstp")
    os.execute("mkdir -p " .. q(d))
    local args = { "curl -s --parallel --parallel-immediate --parallel-max 200 --max-time 60" }
    if bearer then args[#args + 1] = "-H " .. q("Authorization: Bearer " .. bearer) end
    local n = 0
    for _, srv in ipairs(srvs) do
      for _ = 1, per do
        n = n + 1
        args[#args + 1] = q(srv.url .. path) .. " -o " .. q(d .. "/" .. n)
      end
    end
    local ok, out = helpers.sh(table.concat(args, " "))
    assert(ok, out)
    local got = {}
    for i = 1, n do
      local body = helpers.read_file(d .. "/" .. i)
      got[i] = cjson.decode(body or "")
      assert(got[i], "request " .. i .. " of " .. path .. ": " .. tostring(body))
    end
    return got
  end

  -- The key set at `path` of the fake: `n` answers, then 404s.
  local function script_certs(path, n)
    local list = {}
    for i = 1, n do
      list[i] = { status = 200, body = { r1 = rsa.cert_pem },
                  headers = { ["Cache-Control"] = "public, max-age=3600" } }
    end
    fake:script(path, list)
  end

  local function script_doc(api, n)
    local list = {}
    for i = 1, n do
      list[i] = { status = 200, body = { kind = "discovery#restDescription", name = api,
        version = "v1", rootUrl = "https://localhost:" .. fake.port .. "/",
        servicePath = api .. "/v1/", resources = {} } }
    end
    fake:script("/disc/" .. api .. "/v1", list)
  end

  local function only(set)
    local one, n = nil, 0
    for k in pairs(set) do one, n = k, n + 1 end
    assert.equal(1, n, "one token")
    return one
  end

  local function exchanges() return #fake:requests("/token") end

  local function rkey(cred)
    if not keys[cred] then
      local _, v = get_json(nodes[1], "/key?cred=" .. cred)
      keys[cred] = v.key
    end
    return PREFIX .. "t|" .. keys[cred]
  end

  -- What a node with the key reads: judged by python3-cryptography.
  local function open_raw(value, redis_key)
    local f = helpers.write_file(helpers.tmpname("sealed"), value)
    local ok, out = helpers.sh(helpers.python .. " -c " .. q([[
import sys, json
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
v = open(sys.argv[1], "rb").read()
assert v[0] == 1
sys.stdout.write(AESGCM(bytes.fromhex(sys.argv[2])).decrypt(v[1:13], v[13:], sys.argv[3].encode()).decode())
]]) .. " " .. q(f) .. " " .. HEX_KEY .. " " .. q(redis_key))
    assert(ok, out)
    return out
  end

  local function open_with_python(value, redis_key)
    return assert(cjson.decode(open_raw(value, redis_key)))
  end

  -- The one Redis key of a kind ("k" key sets, "d" documents) and its
  -- document as python opens it: "<expires_at> <fetched_at>\n<text>".
  local function sealed_doc(kind)
    local list = {}
    for k in redis_cli("KEYS '" .. PREFIX .. kind .. "|*'"):gmatch("[^\n]+") do
      list[#list + 1] = k
    end
    assert.equal(1, #list)
    local k = list[1]
    assert.truthy(k:match("^fleet:" .. kind .. "|[%w_-]+$"), k)
    local value = redis_cli("GET " .. q(k))
    assert.equal(1, value:byte(1))
    local plain = open_raw(value, k)
    local exp, at, text = plain:match("^(%d+%.%d+) (%d+%.%d+)\n(.*)$")
    assert.truthy(exp, plain:sub(1, 40))
    assert.is_true(tonumber(exp) > tonumber(at))
    return value, assert(cjson.decode(text))
  end

  local function wait_until(what, f)
    local deadline = socket.gettime() + 30  -- a hang guard only
    while not f() do
      assert(socket.gettime() < deadline, "never: " .. what)
      socket.sleep(0.05)
    end
  end

  lazy_setup(function()
    certs = helpers.certs()
    fake = helpers.start_fake({ tls = true })
    sa_path, sa_info = helpers.make_service_account_file({
      token_uri = "https://localhost:" .. fake.port .. "/token" })
    fake:config({ public_keys = { [sa_info.kid] = sa_info.public_pem },
                  token_uri = "https://localhost:" .. fake.port .. "/token" })
    -- One ID token, signed by PyJWT with a key of the loopback key set.
    rsa = helpers.make_rsa_key{ cert = true }
    local now = os.time()
    local path = helpers.tmpname("idt", ".json")
    helpers.write_file(path, helpers.json_encode({ keys = { rsa = rsa.private_pem },
      tokens = { { key = "rsa", alg = "RS256", headers = { kid = "r1" },
        claims = { iss = "https://accounts.google.com", aud = AUD, sub = "fleet-1",
                   iat = now - 5, exp = now + 3600 } } } }))
    local ok, out = helpers.sh("/usr/bin/python3 " .. q(helpers.support_dir
      .. "/idtoken_tool.py") .. " " .. q(path))
    assert(ok, out)
    id_tok = assert(cjson.decode(out)).tokens[1]
    dir = helpers.tmpname("redis")
    os.execute("mkdir -p " .. q(dir))
    rport = nginx.free_port()
    start_redis()
    for i = 1, 3 do nodes[i] = start_node() end
  end)

  lazy_teardown(function()
    for _, srv in ipairs(nodes) do
      local log = srv:log()
      srv:stop()
      assert.is_nil(log:match("%[error%][^\n]*lua entry thread aborted[^\n]*"))
      assert.is_nil(log:find("ya29.", 1, true), "no token in a log")
    end
    if victim then victim:stop() end
    if wrong then wrong:stop() end
    if dir and helpers.read_file(dir .. "/redis.pid") then kill_redis() end
    if fake then fake:stop() end
  end)

  it("a cold burst across 3 nodes x 2 workers makes one exchange per credential", function()
    local got, n = burst(nodes, { "a", "b" }, 8)
    assert.equal(48, n)
    assert.equal(2, exchanges())
    assert.are_not.equal(only(got.a), only(got.b))
    -- Redis holds two entries, under hashed keys only, and no lock.
    local list = {}
    for k in redis_cli("KEYS '" .. PREFIX .. "*'"):gmatch("[^\n]+") do list[#list + 1] = k end
    table.sort(list)
    local want = { rkey("a"), rkey("b") }
    table.sort(want)
    assert.same(want, list)
    for _, k in ipairs(list) do
      assert.truthy(k:match("^fleet:t|gauth:service_account:[%w_-]+$"), k)
      assert.is_nil(k:find(sa_info.client_email, 1, true))
    end
  end)

  it("keeps the token sealed in Redis: not the token, and python opens it", function()
    local _, v = get_json(nodes[2], "/tok?cred=a")
    local value = redis_cli("GET " .. q(rkey("a")))
    assert.equal(1, value:byte(1))
    assert.is_nil(value:find(v.token, 1, true))
    assert.is_nil(value:find("access_token", 1, true))
    local e = open_with_python(value, rkey("a"))
    assert.equal(v.token, e.access_token)
    assert.is_number(e.expires_at)
    -- Another node's own copy dropped: it reads Redis, no exchange.
    local before = exchanges()
    local _, r = get_json(nodes[3], "/refetch?cred=a")
    assert.equal(v.token, r.token)
    assert.equal(before, exchanges())
  end)

  it("treats a changed value, or one moved to another key, as a miss", function()
    local _, old = get_json(nodes[1], "/tok?cred=a")
    local value = redis_cli("GET " .. q(rkey("a")))
    local i = 20
    local bad = value:sub(1, i - 1) .. string.char((value:byte(i) + 1) % 256) .. value:sub(i + 1)
    local f = helpers.write_file(helpers.tmpname("tampered"), bad)
    redis_cli("-x SET " .. q(rkey("a")), f)
    redis_cli("PEXPIRE " .. q(rkey("a")) .. " 600000")
    local before = exchanges()
    local mark = #nodes[1]:log()
    local _, r = get_json(nodes[1], "/refetch?cred=a")
    assert.equal(before + 1, exchanges())
    assert.are_not.equal(old.token, r.token)
    assert.equal(1, nodes[1]:log_count("aead_open: authentication failed for a value in Redis", mark))
    -- Redis holds the new token, sealed again.
    assert.equal(r.token, open_with_python(redis_cli("GET " .. q(rkey("a"))), rkey("a")).access_token)

    -- a's value copied under b's key: b's AAD does not match.
    local _, oldb = get_json(nodes[2], "/tok?cred=b")
    local g = helpers.write_file(helpers.tmpname("moved"), redis_cli("GET " .. q(rkey("a"))))
    redis_cli("-x SET " .. q(rkey("b")), g)
    redis_cli("PEXPIRE " .. q(rkey("b")) .. " 600000")
    before = exchanges()
    local _, rb = get_json(nodes[2], "/refetch?cred=b")
    assert.equal(before + 1, exchanges())
    assert.are_not.equal(r.token, rb.token)
    assert.are_not.equal(oldb.token, rb.token)
  end)

  it("ID-token key sets: one fetch for the fleet, sealed in Redis, the token accepted", function()
    script_certs("/certs/fleet", 1)  -- a second fetch would get a 404
    local got = burst_path(nodes, "/idt?certs=/certs/fleet", 8, id_tok)
    assert.equal(24, #got)
    for i, v in ipairs(got) do
      assert.is_true(v.ok, "request " .. i)
      assert.equal("fleet-1", v.sub)
    end
    assert.equal(1, #fake:requests("/certs/fleet"))
    -- The set in Redis is not the JSON the certs server sent; python opens it.
    local value, set = sealed_doc("k")
    assert.is_nil(value:find("BEGIN CERTIFICATE", 1, true))
    assert.equal(rsa.cert_pem, set.r1)
  end)

  it("a key set changed in Redis is a miss: the node fetches it again", function()
    local function kkeys()
      local set = {}
      for key in redis_cli("KEYS '" .. PREFIX .. "k|*'"):gmatch("[^\n]+") do set[key] = true end
      return set
    end
    local auth = { headers = { authorization = "Bearer " .. id_tok } }
    script_certs("/certs/tamper", 2)
    local had = kkeys()
    local _, v = get_json(nodes[1], "/idt?certs=/certs/tamper", auth)
    assert.is_true(v.ok)
    assert.equal(1, #fake:requests("/certs/tamper"))
    local k
    for key in pairs(kkeys()) do if not had[key] then assert.is_nil(k) k = key end end
    assert.truthy(k, "the new key set's Redis key")
    local value = redis_cli("GET " .. q(k))
    local i = 40
    local bad = value:sub(1, i - 1) .. string.char((value:byte(i) + 1) % 256) .. value:sub(i + 1)
    redis_cli("-x SET " .. q(k), helpers.write_file(helpers.tmpname("tampered"), bad))
    redis_cli("PEXPIRE " .. q(k) .. " 600000")
    local mark = #nodes[3]:log()
    _, v = get_json(nodes[3], "/idt?certs=/certs/tamper", auth)
    assert.is_true(v.ok)
    assert.equal(2, #fake:requests("/certs/tamper"))
    assert.equal(1, nodes[3]:log_count("aead_open: authentication failed for a value in Redis", mark))
    -- Redis holds the set again, sealed anew.
    local again = redis_cli("GET " .. q(k))
    assert.are_not.equal(bad, again)
    local set = cjson.decode(open_raw(again, k):match("^[%d%.]+ [%d%.]+\n(.*)$"))
    assert.equal(rsa.cert_pem, set.r1)
  end)

  it("Discovery documents: one fetch for the fleet, sealed in Redis", function()
    script_doc("fleetapi", 1)
    local got = burst_path(nodes, "/disc?api=fleetapi", 6)
    assert.equal(18, #got)
    for i, v in ipairs(got) do assert.equal("fleetapi", v.name, "request " .. i .. ": " .. tostring(v.err)) end
    assert.equal(1, #fake:requests("/disc/fleetapi/v1"))
    local value, doc = sealed_doc("d")
    assert.is_nil(value:find("restDescription", 1, true))
    assert.equal("fleetapi", doc.name)
    -- Without a shared dict: 6 workers, each over Redis, one fetch.
    script_doc("nodictapi", 1)
    got = burst_path(nodes, "/disc_nodict?api=nodictapi", 6)
    for i, v in ipairs(got) do assert.equal("nodictapi", v.name, "request " .. i .. ": " .. tostring(v.err)) end
    assert.equal(1, #fake:requests("/disc/nodictapi/v1"))
  end)

  it("the store option of the key-set and Discovery caches: a store, or nil, msg, err", function()
    local _, v = get_json(nodes[1], "/store_opts")
    assert.is_true(v.good[1])
    assert.is_true(v.good[2])
    local want = {
      { "gauth.id_token: keys: store must be a gauth.token_cache.redis store or cache",
        "id_token", "keys" },
      { "gauth.discovery: store: store must be a gauth.token_cache.redis store or cache",
        "discovery", "store" },
      { "gauth.discovery: store: store must be a gauth.token_cache.redis store or cache",
        "discovery", "store" },
    }
    for i, w in ipairs(want) do
      assert.is_false(v.bad[i].ok)
      assert.equal(w[1], v.bad[i].msg)
      assert.equal(w[2], v.bad[i].module)
      assert.equal(w[3], v.bad[i].step)
    end
  end)

  it("invalidate() reaches Redis and every worker of every node, one exchange", function()
    local before = exchanges()
    local old = only(burst(nodes, { "g" }, 4).g)
    assert.equal(before + 1, exchanges())
    local _, v = get_json(nodes[1], "/invalidate?cred=g")
    assert.is_true(v.invalidated)
    assert.equal("0", redis_cli("EXISTS " .. q(rkey("g"))))
    assert.equal("1", redis_cli("GET " .. PREFIX .. "gen"))
    local new
    wait_until("every worker of every node serves the new token", function()
      local g = burst(nodes, { "g" }, 6).g
      local n = 0
      for _ in pairs(g) do n = n + 1 end
      if n == 1 and not g[old] then new = next(g) return true end
      return false
    end)
    assert.equal(before + 2, exchanges())
    assert.equal(new, open_with_python(redis_cli("GET " .. q(rkey("g"))), rkey("g")).access_token)
  end)

  it("keeps the node's negative cache: a dead token endpoint is asked by one refresh", function()
    local before = exchanges()
    local dead = {}
    for i = 1, 20 do dead[i] = { status = 503, body = { error = "unavailable" } } end
    fake:script("/token", dead, { replace = true })
    finally(function() fake:script("/token", {}, { replace = true }) end)
    local status, first = get_json(nodes[1], "/tok?cred=dead")
    assert.equal(500, status)
    assert.matches("^gauth%.service_account: ", first.err)
    assert.matches("HTTP 503", first.err, 1, true)
    local attempts = exchanges() - before
    assert.is_true(attempts >= 1 and attempts <= 3, "one refresh's attempts: " .. attempts)
    -- Every worker of the node is told at once, from the dict: no exchange.
    local pids, n = {}, 0
    wait_until("both workers answered", function()
      local st, v = get_json(nodes[1], "/tok?cred=dead")
      assert.equal(500, st)
      assert.is_true(v.remembered, v.err)
      assert.matches("remembered", v.err, 1, true)
      if not pids[v.pid] then pids[v.pid], n = true, n + 1 end
      return n >= 2
    end)
    assert.equal(before + attempts, exchanges())
  end)

  it("loses no request while Redis is down, logs once per node, reconnects by itself", function()
    local marks = {}
    for i, srv in ipairs(nodes) do marks[i] = #srv:log() end
    kill_redis()
    local before = exchanges()
    -- Warm credentials keep serving; a cold one is exchanged by each node.
    local got, n = burst(nodes, { "a", "c" }, 6)
    assert.equal(36, n)
    assert.equal(before + 3, exchanges())
    local cs = 0
    for _ in pairs(got.c) do cs = cs + 1 end
    assert.equal(3, cs)
    burst(nodes, { "c" }, 4)
    assert.equal(before + 3, exchanges())
    -- Key sets and Discovery documents: each node fetches its own (one
    -- worker per node), and every request is served.
    script_certs("/certs/down", 3)
    script_doc("downapi", 3)
    for i, v in ipairs(burst_path(nodes, "/idt?certs=/certs/down", 4, id_tok)) do
      assert.is_true(v.ok, "request " .. i)
    end
    assert.equal(3, #fake:requests("/certs/down"))
    for i, v in ipairs(burst_path(nodes, "/disc?api=downapi", 4)) do
      assert.equal("downapi", v.name, "request " .. i .. ": " .. tostring(v.err))
    end
    assert.equal(3, #fake:requests("/disc/downapi/v1"))
    for i, srv in ipairs(nodes) do
      assert.equal(1, srv:log_count("gauth.token_cache.redis: connect: connection refused", marks[i]),
                   "one line on node " .. i)
    end
    start_redis()
    for _, srv in ipairs(nodes) do
      wait_until("the node tries Redis again", function()
        local _, s = get_json(srv, "/state")
        return s.down == false
      end)
    end
    -- Back to one exchange for the fleet.
    before = exchanges()
    local got2 = burst(nodes, { "d" }, 6)
    only(got2.d)
    assert.equal(before + 1, exchanges())
    assert.equal("1", redis_cli("EXISTS " .. q(rkey("d"))))
  end)

  it("a refresher killed mid-refresh: its lock expires and another node refreshes", function()
    victim = start_node()
    fake:script("/token", { hang = true })
    local before = exchanges()
    local out = helpers.tmpname("victim")
    os.execute(("curl -s --max-time 30 %s -o %s >/dev/null 2>&1 &")
      :format(q(victim.url .. "/tok?cred=e"), q(out)))
    fake:wait_requests("/token", before + 1, 30)
    local lock = PREFIX .. "l|" .. select(2, get_json(victim, "/key?cred=e")).key
    wait_until("the victim holds the fleet lock", function()
      return redis_cli("EXISTS " .. q(lock)) == "1"
    end)
    -- SIGKILL the whole node: nothing releases the lock.
    local ok, pids = helpers.sh("pgrep -P " .. victim.pid)
    assert(ok, pids)
    os.execute("kill -KILL " .. victim.pid .. " " .. pids:gsub("\n", " "))
    victim:stop()
    victim = nil
    assert.equal("1", redis_cli("EXISTS " .. q(lock)))
    local status, v = get_json(nodes[2], "/tok?cred=e")
    assert.equal(200, status)
    assert.equal(before + 2, exchanges())
    assert.equal("0", redis_cli("EXISTS " .. q(lock)))
    assert.equal(v.token, open_with_python(redis_cli("GET " .. q(rkey("e"))), rkey("e")).access_token)
    -- The rest of the fleet takes it from Redis.
    local got = burst(nodes, { "e" }, 4)
    assert.equal(v.token, only(got.e))
    assert.equal(before + 2, exchanges())
  end)

  it("a wrong ACL password: a clear error, and tokens from the node's own exchange", function()
    wrong = start_node({ password = "not-the-acl-password-42" })
    local mark = #wrong:log()
    local before = exchanges()
    for _ = 1, 5 do
      local status, v = get_json(wrong, "/tok?cred=f")
      assert.equal(200, status)
      assert.truthy(v.token)
    end
    assert.equal(before + 1, exchanges())
    local log = wrong:log_since(mark)
    assert.equal(1, wrong:log_count("gauth.token_cache.redis: auth: WRONGPASS", mark))
    assert.is_nil(log:find("not-the-acl-password-42", 1, true))
    local _, c = get_json(wrong, "/check")
    assert.is_nil(c.ok)
    assert.equal("gauth.token_cache.redis: auth: WRONGPASS invalid username-password pair"
      .. " or user is disabled. (Redis 127.0.0.1:" .. rport .. ")", c.msg)
    assert.equal("auth", c.step)
    assert.equal("token_cache.redis", c.module)
    assert.is_false(c.retryable)
    local _, good = get_json(nodes[1], "/check")
    assert.is_true(good.ok)
    assert.is_nil(good.msg)
  end)

  it("a Redis that never answers: each call bounded by timeout, tokens still served", function()
    -- Connections complete (the kernel's backlog) but nothing is read.
    local silent = assert(socket.bind("127.0.0.1", 0))
    local _, sport = silent:getsockname()
    local node = start_node({ port = tonumber(sport), timeout = 0.2 }, 1)
    local ok, e = pcall(function()
      local before = exchanges()
      local mark = #node:log()
      for _ = 1, 4 do
        local status, v = get_json(node, "/tok?cred=h")
        assert.equal(200, status)
        assert.truthy(v.token)
      end
      assert.equal(before + 1, exchanges())
      assert.equal(1, node:log_count("gauth.token_cache.redis: auth: timeout", mark))
      local _, c = get_json(node, "/check")
      assert.is_nil(c.ok)
      assert.equal("gauth.token_cache.redis: auth: timeout (Redis 127.0.0.1:" .. sport .. ")", c.msg)
      assert.equal("auth", c.step)
    end)
    node:stop()
    silent:close()
    assert(ok, e)
  end)

  it("install inside nginx: a bad key is nil, msg, err; a phase without cosockets serves", function()
    local _, v = get_json(nodes[1], "/bad_install")
    assert.is_nil(v.ok)
    assert.equal("gauth.token_cache.redis: options: encryption_key must be 32 raw bytes or"
      .. " 64 hex characters (got 5 bytes)", v.msg)
    assert.equal("options", v.step)
    local _, s = get_json(nodes[1], "/state")
    assert.is_nil(s.install_error)
    -- The log phase: the node's token, no Redis call, nothing blocked.
    local before = exchanges()
    local mark = #nodes[1]:log()
    assert.equal(200, (nodes[1]:get("/log_phase?cred=a")))
    wait_until("the log phase ran", function()
      return nodes[1]:log_count("log phase token: ok", mark) == 1
    end)
    assert.equal(before, exchanges())
  end)
end)
end
