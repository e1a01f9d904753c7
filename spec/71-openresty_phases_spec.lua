-- gauth inside a real nginx (4 workers) where nothing may block: phases
-- without cosockets (set, header and body filters, log, balancer,
-- init_worker) with and without a shared dict, a refresher killed with
-- its request, and a dict that is not named gauth (issue 17 items 5 and 8,
-- issue 18 items 1 and 3). The handlers are in spec/support/ngx_phases.lua.
--
-- nginx runs LuaJIT whatever runs busted: these specs run in the LuaJIT
-- pass of spec/run.sh only.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"
local socket = require "socket"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"

local WARNING = 'gauth: no lua_shared_dict named "gauth"'

describe("OpenResty: nothing blocks a worker", function()
  if not LUAJIT_PASS then
    it("runs in the LuaJIT pass (nginx runs LuaJIT)", function()
      assert.is_false(LUAJIT_PASS)
    end)
    return
  end

  local srv

  local function get(path)
    local status, body = srv:get(path, { timeout = 30 })
    assert.equal(200, status, body)
    return body
  end

  local function result(key)
    return cjson.decode(get("/result?key=" .. key:gsub(" ", "%%20")))
  end

  -- Poll the results dict until `key` is set (hang guard: 20 s).
  local function wait_result(key)
    local deadline = socket.gettime() + 20
    while true do
      local v = result(key)
      if v ~= nil and v ~= cjson.null then return v end
      assert(socket.gettime() < deadline, "hang guard: no " .. key)
      socket.sleep(0.05)
    end
  end

  local function hits(name)
    local v = result("ep hits " .. name)
    return v == cjson.null and 0 or v
  end

  lazy_setup(function()
    local port = nginx.free_port()
    local sa = helpers.make_service_account_file({
      token_uri = "http://127.0.0.1:" .. port .. "/slow_token" })
    local app = 'require("support.ngx_phases")'
    local err
    srv, err = nginx.start({
      workers = 4,
      port = port,
      listen_opts = "reuseport",
      http = ([[
        lua_shared_dict gauth_tokens 1m;
        lua_shared_dict results 1m;
        init_by_lua_block { %s.configure({ sa = %q, port = %d }) }
        init_worker_by_lua_block { %s.init_worker() }
        upstream phase_balancer {
          server 127.0.0.1:%d;
          balancer_by_lua_block { %s.balancer() }
        }
      ]]):format(app, sa, port, app, port, app),
      server = ([[
        location = /fast { return 200 "fast\n"; }
        location = /slow_token { content_by_lua_block { @APP@.slow_token() } }
        location = /api/things { content_by_lua_block { @APP@.api() } }
        location = /mark { content_by_lua_block { @APP@.mark() } }
        location = /set { content_by_lua_block { @APP@.set() } }
        location = /result { content_by_lua_block { @APP@.result() } }
        location = /token { content_by_lua_block { @APP@.token() } }
        location = /kill_refresher { content_by_lua_block { @APP@.kill_refresher() } }
        location = /default_kind { content_by_lua_block { @APP@.default_kind() } }
        location = /phase/set {
          set_by_lua_block $phase_result { return @APP@.phase("set") }
          return 200 "$phase_result\n";
        }
        location = /phase/header_filter {
          content_by_lua_block { ngx.say("ok") }
          header_filter_by_lua_block { @APP@.phase("header_filter") }
        }
        location = /phase/body_filter {
          content_by_lua_block { ngx.say("ok") }
          body_filter_by_lua_block { @APP@.body_filter() }
        }
        location = /phase/log {
          content_by_lua_block { ngx.say("ok") }
          log_by_lua_block { @APP@.phase("log") }
        }
        location = /phase/balancer {
          proxy_pass http://phase_balancer/fast;
        }
      ]]):gsub("@APP@", app),
    })
    assert(srv, err)
  end)

  lazy_teardown(function()
    if srv then
      local log = srv:log()
      srv:stop()
      assert.is_nil(log:match("%[error%][^\n]*lua entry thread aborted[^\n]*"))
      assert.is_nil(log:match("[^\n]*runtime error[^\n]*"))
    end
  end)

  -- The outcome of a call refused for want of cosockets in `phase`.
  local function assert_refused(o, phase, module)
    assert.equal("nil", o.first)
    assert.matches("^gauth%." .. module .. ": ", o.msg)
    assert.matches("the " .. phase .. " phase of nginx cannot make requests", o.msg, 1, true)
    assert.matches("ngx.timer.at", o.msg, 1, true)
    assert.equal(module, o.err.module)
    assert.is_true(o.err.retryable)
    assert.equal("phase", o.err.kind)
    assert.is_nil(o.err.reason)
    assert.equal(phase, o.err.phase)
  end

  describe("phases without cosockets", function()
    for _, store in ipairs({ "local", "dict" }) do
      for _, phase in ipairs({ "set", "header_filter", "body_filter", "log", "balancer" }) do
        it(phase .. " (" .. store .. " store): token() and an API call fail at once,"
           .. " a timer refreshes, other requests are answered meanwhile", function()
          local name = phase .. "-" .. store
          -- The token endpoint holds this exchange until released.
          get("/set?key=hold%20" .. name)
          local api_before = result("api hits")
          local status, body = srv:get("/phase/" .. phase .. "?store=" .. store
                                       .. "&name=" .. name)
          assert.equal(200, status, body)
          local r = wait_result("phase " .. phase .. " " .. store .. " " .. name)
          assert_refused(r.token, phase, "token_cache")
          assert.matches("a refresh was scheduled in a timer", r.token.msg, 1, true)
          assert_refused(r.api, phase, "discovery")
          assert.equal("string", r.api.second_type)
          assert_refused(r.http, phase, "http")
          assert.equal("string", r.http.second_type)
          -- The refresh a timer made: it started after the calls had
          -- returned, and while it was pending another request was
          -- answered.
          local started = wait_result("ep start " .. name)
          assert.is_true(r.returned < started, "returned " .. r.returned .. ", started " .. started)
          local b = tonumber(get("/mark?key=B%20" .. name))
          get("/set?key=release%20" .. name)
          local ended = wait_result("ep end " .. name)
          assert.is_true(started < b and b < ended, started .. " " .. b .. " " .. ended)
          assert.equal(1, hits(name))
          -- No API request was made from the phase.
          assert.equal(api_before, result("api hits"))
          if store == "dict" then
            -- Every worker now has the refreshed token, with no other exchange.
            for _ = 1, 8 do
              local t = cjson.decode(get("/token?store=dict&name=" .. name))
              assert.equal("tok-" .. name .. "-1", t.token)
            end
            assert.equal(1, hits(name))
          end
        end)
      end
    end

    it("init_worker: every worker's calls failed at once; timers fetched the tokens", function()
      local pids = {}
      for _, x in ipairs(srv:parallel("/token?store=local&name=probe", 16)) do
        pids[cjson.decode(x.body).pid] = true
      end
      local n = 0
      for pid in pairs(pids) do
        n = n + 1
        local r = wait_result("phase init_worker local iw-local " .. pid)
        assert_refused(r.token, "init_worker", "token_cache")
        assert_refused(r.api, "init_worker", "discovery")
        assert_refused(r.http, "init_worker", "http")
        local d = wait_result("phase init_worker dict iw-dict " .. pid)
        assert_refused(d.api, "init_worker", "discovery")
        -- The dict may hold the token another worker's timer fetched.
        if d.token.first == "nil" then assert_refused(d.token, "init_worker", "token_cache") end
      end
      assert.is_true(n > 1, "all requests went to one worker")
      -- The timers' refreshes: one per worker without the dict, one in all
      -- with it; then the tokens are served without another exchange.
      local deadline = socket.gettime() + 20
      while hits("iw-dict") < 1 or hits("iw-local") < 4 do
        assert(socket.gettime() < deadline, "hang guard")
        socket.sleep(0.05)
      end
      for _, x in ipairs(srv:parallel("/token?store=local&name=iw-local", 16)) do
        assert.matches("^tok%-iw%-local%-%d$", cjson.decode(x.body).token)
      end
      for _, x in ipairs(srv:parallel("/token?store=dict&name=iw-dict", 16)) do
        assert.equal("tok-iw-dict-1", cjson.decode(x.body).token)
      end
      assert.equal(4, hits("iw-local"))
      assert.equal(1, hits("iw-dict"))
    end)
  end)

  describe("a refresher killed with its request", function()
    for _, store in ipairs({ "local", "dict" }) do
      it("does not hold the lock (" .. store .. " store): the next caller gets the token"
         .. " its fetch made", function()
        local name = "killed-" .. store
        -- Without the fix the next caller waits for the dead holder's lock
        -- (60 s in the dict, 90 s locally): the 30 s hang guard of get().
        local r = cjson.decode(get("/kill_refresher?store=" .. store .. "&name=" .. name))
        assert.is_true(r.killed, r.kill_err)
        assert.equal("tok-" .. name .. "-1", r.token, cjson.encode(r.outcome))
        assert.equal(1, hits(name))
      end)
    end
  end)

  describe("a dict not named gauth", function()
    it("is not used by default: one warning in error.log for all workers;"
       .. " install(name) chooses it", function()
      for _, x in ipairs(srv:parallel("/default_kind", 16)) do
        assert.equal(200, x.status)
        local r = cjson.decode(x.body)
        assert.is_false(r.shdict)
        -- install(name) makes a dict of another name the default.
        assert.equal("gauth_tokens", r.installed)
      end
      -- Every worker made credentials in init_worker with the default
      -- cache: one warning all the same.
      assert.equal(1, srv:log_count(WARNING))
      local log = srv:log()
      assert.matches("shared_dict = \"<name>\"", log, 1, true)
      assert.matches("(declared: gauth_tokens, results)", log, 1, true)
    end)

    it("shared_dict = \"gauth_tokens\": one token exchange for 4 workers", function()
      local tokens, pids = {}, {}
      for _, x in ipairs(srv:parallel("/token?store=dict&name=cold40", 40)) do
        assert.equal(200, x.status, x.body)
        local r = cjson.decode(x.body)
        tokens[tostring(r.token)] = true
        pids[r.pid] = true
      end
      assert.same({ ["tok-cold40-1"] = true }, tokens)
      local n = 0
      for _ in pairs(pids) do n = n + 1 end
      assert.is_true(n > 1, "all requests went to one worker")
      assert.equal(1, hits("cold40"))
    end)

    it("without it: at most one exchange per worker (one fetch at a time in each)", function()
      local tokens, pids = {}, {}
      for _, x in ipairs(srv:parallel("/token?store=local&name=cold-local", 40)) do
        assert.equal(200, x.status, x.body)
        local r = cjson.decode(x.body)
        assert.matches("^tok%-cold%-local%-%d$", r.token)
        tokens[r.token] = true
        pids[r.pid] = true
      end
      local np, nt = 0, 0
      for _ in pairs(pids) do np = np + 1 end
      for _ in pairs(tokens) do nt = nt + 1 end
      assert.equal(nt, hits("cold-local"))
      assert.is_true(nt <= np, nt .. " exchanges for " .. np .. " workers")
    end)
  end)
end)
