-- What the README says about `resolver` and about tokens "refreshed by a
-- background timer", run in a real nginx (issue 18 item 8). The token
-- endpoint and the API are names (`oauth2.gauth.test`, `api.gauth.test`,
-- HTTPS with the test CA) that only a tiny DNS server on loopback knows
-- (spec/support/tiny_dns.py), reached through the README's `resolver`
-- line; the same calls without it fail at once with the step named. The
-- handlers are in spec/support/ngx_docs.lua; the Google stand-in is the
-- same nginx (a second, TLS server).
--
-- nginx runs LuaJIT whatever runs busted: these specs run in the LuaJIT
-- pass of spec/run.sh only.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"
local socket = require "socket"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"

describe("OpenResty docs, run", function()
  if not LUAJIT_PASS then
    it("runs in the LuaJIT pass (nginx runs LuaJIT)", function()
      assert.is_false(LUAJIT_PASS)
    end)
    return
  end

  local certs, dns, sa, srv, tls_port

  local APP = 'require("support.ngx_docs")'

  -- An nginx with the handlers; `resolver` is the README's line (or none).
  -- The first one also serves the named TLS server (the Google stand-in).
  local function start(resolver, google)
    local port = nginx.free_port()
    local tls = google and ([[
        server {
          listen 127.0.0.1:%d ssl;
          ssl_certificate %s;
          ssl_certificate_key %s;
          location /token/ { content_by_lua_block { @APP@.ep_token() } }
          location = /api/things { content_by_lua_block { @APP@.ep_api() } }
        }]]):format(tls_port, certs.named_cert, certs.named_key) or ""
    local s, err = nginx.start({
      workers = 4,
      port = port,
      listen_opts = "reuseport",
      trusted_ca = certs.ca_file,
      http = ([[
        lua_shared_dict gauth 1m;
        lua_shared_dict results 1m;
        %s
        init_by_lua_block { @APP@.configure({ sa = %q, port = %d, tls_port = %d }) }
        %s
      ]]):format(resolver or "", sa, port, tls_port, tls):gsub("@APP@", APP),
      server = ([[
        location = /token { content_by_lua_block { @APP@.token() } }
        location = /api { content_by_lua_block { @APP@.api() } }
        location = /set { content_by_lua_block { @APP@.set() } }
        location = /state { content_by_lua_block { @APP@.state() } }
        location /token/ { content_by_lua_block { @APP@.ep_token() } }
      ]]):gsub("@APP@", APP),
    })
    assert(s, err)
    return s
  end

  local function set(key, value)
    local status, body = srv:get(("/set?key=%s&value=%s"):format(key:gsub(" ", "%%20"), value))
    assert.equal(200, status, body)
  end

  local function get(s, path)
    local status, body = s:get(path, { timeout = 30 })  -- the hang guard
    assert.equal(200, status, body)
    return assert(cjson.decode(body), body)
  end

  lazy_setup(function()
    certs = helpers.certs()
    dns = helpers.start_dns({ ["oauth2.gauth.test"] = "127.0.0.1",
                              ["api.gauth.test"] = "127.0.0.1" })
    sa = helpers.make_service_account_file()
    tls_port = nginx.free_port()
    -- The README's line, with this machine's resolver: the tiny DNS server.
    srv = start("resolver " .. dns.address .. " ipv6=off;", true)
  end)

  lazy_teardown(function()
    if srv then
      local log = srv:log()
      srv:stop()
      assert.is_nil(log:match("[^\n]*lua entry thread aborted[^\n]*"))
      assert.is_nil(log:find("tok%-%w+%-%d"))  -- no token in the log
    end
    if dns then dns:stop() end
  end)

  describe("resolver (README: Installing)", function()
    it("with the README's resolver line, the token request and an API call reach hosts known by name only", function()
      local r = get(srv, "/api?name=resolved")
      assert.equal("table", r.outcome.first, r.outcome.msg)
      assert.equal("things", r.outcome.value.kind)
      assert.equal("api.gauth.test", r.outcome.value.host)
      assert.equal("tok-resolved-1", r.outcome.value.token)
      assert.equal(1, get(srv, "/state?name=resolved").exchanges)
      -- Both names were asked of the resolver (A only: ipv6=off), and answered.
      local asked = {}
      for _, q in ipairs(dns:queries()) do
        assert.equal(1, q.qtype)
        assert.equal(0, q.rcode)
        asked[q.name] = true
      end
      assert.is_true(asked["oauth2.gauth.test"])
      assert.is_true(asked["api.gauth.test"])
    end)

    it("a name the resolver does not know: nil, msg, err naming the step, at once", function()
      local r = get(srv, "/token?name=unknown&host=nowhere.gauth.test")
      assert.is_nil(r.token)
      assert.equal("nil", r.outcome.first)
      assert.equal("string", r.outcome.second_type)
      assert.is_true(r.outcome.third_is_error)
      assert.matches("^gauth%.service_account: token request: request: connecting to ", r.outcome.msg)
      assert.matches("nowhere.gauth.test could not be resolved", r.outcome.msg, 1, true)
      assert.equal("service_account", r.outcome.err.module)
      assert.equal("token request", r.outcome.err.step)
      assert.is_nil(r.outcome.msg:find("unknown error", 1, true))
    end)

    it("without a resolver: token() and an API call fail at once with nil, msg, err naming the step", function()
      local bare = start(nil)
      local ok, e = pcall(function()
        -- The token endpoint by name: no resolver to ask.
        local r = get(bare, "/token?name=bare")
        assert.is_nil(r.token)
        assert.equal("nil", r.outcome.first)
        assert.equal("string", r.outcome.second_type)
        assert.is_true(r.outcome.third_is_error)
        assert.matches("^gauth%.service_account: token request: request: connecting to ", r.outcome.msg)
        assert.matches('no resolver defined to resolve "oauth2.gauth.test"', r.outcome.msg, 1, true)
        assert.matches("add a `resolver` directive to nginx.conf", r.outcome.msg, 1, true)
        assert.equal("service_account", r.outcome.err.module)
        assert.equal("token request", r.outcome.err.step)
        assert.is_false(r.outcome.err.retryable)
        assert.equal(0, get(srv, "/state?name=bare").exchanges)
        -- A token from a literal address works; the API, a name, does not.
        r = get(bare, "/api?name=bare&host=127.0.0.1")
        assert.equal("nil", r.outcome.first)
        assert.equal("string", r.outcome.second_type)
        assert.is_true(r.outcome.third_is_error)
        assert.matches("^gauth%.discovery: ", r.outcome.msg)
        assert.matches('no resolver defined to resolve "api.gauth.test"', r.outcome.msg, 1, true)
        assert.matches("add a `resolver` directive to nginx.conf", r.outcome.msg, 1, true)
        assert.is_nil(r.outcome.err.token_failed)
        assert.equal(1, get(bare, "/state?name=bare").exchanges)
        assert.equal("discovery", r.outcome.err.module)
        assert.equal("things.things.list", r.outcome.err.step)
        assert.is_false(r.outcome.err.retryable)
      end)
      bare:stop()
      assert(ok, e)
    end)
  end)

  describe("refreshed by a background timer (README: OpenResty)", function()
    it("past its refresh time a valid token is served at once while one timer refreshes it for all workers", function()
      local tok1 = get(srv, "/token?name=bg").token
      assert.equal("tok-bg-1", tok1)
      assert.equal(1, get(srv, "/state?name=bg").exchanges)
      -- The next exchange hangs until released. Then the clock of the
      -- credentials jumps 3500 s: past the refresh time (225 s before
      -- expiry), still valid (3600 s).
      set("hold bg", 1)
      set("skew", 3500)
      -- Nothing refreshes a token nobody asks for.
      local st = get(srv, "/state?name=bg")
      assert.equal(1, st.exchanges)
      assert.is_false(st.refreshing)
      -- Every request, in any worker, is answered at once with the old
      -- token while the refresh hangs.
      local pids = {}
      for _, x in ipairs(srv:parallel("/token?name=bg", 24)) do
        assert.equal(200, x.status, x.body)
        local r = cjson.decode(x.body)
        assert.equal(tok1, r.token)
        pids[r.pid] = true
      end
      -- One exchange under way for all of them (hang guard 20 s).
      local deadline = socket.gettime() + 20
      repeat
        st = get(srv, "/state?name=bg")
        if st.waiting == 1 then break end
        socket.sleep(0.02)
      until socket.gettime() > deadline
      assert.equal(1, st.waiting)
      assert.equal(2, st.exchanges)
      assert.is_true(st.refreshing)
      -- More requests meanwhile: still the old token, no other exchange.
      for _, x in ipairs(srv:parallel("/token?name=bg", 24)) do
        assert.equal(200, x.status, x.body)
        local r = cjson.decode(x.body)
        assert.equal(tok1, r.token)
        pids[r.pid] = true
      end
      assert.equal(2, get(srv, "/state?name=bg").exchanges)
      -- Released: the timer stores the new token and ends.
      set("release bg", 1)
      deadline = socket.gettime() + 20
      repeat
        st = get(srv, "/state?name=bg")
        if not st.refreshing then break end
        socket.sleep(0.02)
      until socket.gettime() > deadline
      assert.is_false(st.refreshing)
      -- Every worker's next request gets the new token; one exchange made.
      for _, x in ipairs(srv:parallel("/token?name=bg", 24)) do
        assert.equal(200, x.status, x.body)
        local r = cjson.decode(x.body)
        assert.equal("tok-bg-2", r.token)
        pids[r.pid] = true
      end
      assert.equal(2, get(srv, "/state?name=bg").exchanges)
      local n = 0
      for _ in pairs(pids) do n = n + 1 end
      assert.is_true(n > 1, "all requests went to one worker")
    end)
  end)
end)
