-- gauth inside a real nginx (Debian's nginx-light + lua-nginx-module on
-- LuaJIT): the cosocket transport, the token cache shared by workers
-- through a lua_shared_dict, refresh ahead of expiry, phases without
-- cosockets. Also the transport cases every transport shares
-- (spec/support/transport_cases.lua), run against libcurl here and against
-- cosockets inside nginx.
--
-- nginx runs LuaJIT whatever runs busted, so the nginx-side tests run once,
-- in the LuaJIT pass of spec/run.sh; the Lua 5.4 pass starts the same nginx
-- only as a test server for the libcurl half of the shared cases.
local helpers = require "helpers"
local nginx = require "support.nginx"
local tcases = require "support.transport_cases"
local cjson = require "cjson.safe"
local socket = require "socket"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"
local AVAILABLE, WHY = nginx.available()

local function decode(s)
  local v = cjson.decode(s or "")
  return v
end

describe("OpenResty", function()
  if not AVAILABLE then
    -- nginx-light and libnginx-mod-http-lua are in the Makefile's DEB_PKGS:
    -- their absence is a broken set-up, not a reason to skip.
    it("needs nginx with lua-nginx-module (make deps)", function() error(WHY) end)
    return
  end

  local fake, untrusted, srv, ctx, sa_info, certs, discovery_dir, emu

  local function reset_fake(extra)
    fake:reset()
    local cfg = { public_keys = { [sa_info.kid] = sa_info.public_pem },
                  token_uri = "https://localhost:" .. fake.port .. "/token" }
    for k, v in pairs(extra or {}) do cfg[k] = v end
    fake:config(cfg)
  end

  local function token_requests()
    return #fake:requests("/token")
  end

  local function get_json(path)
    local status, body = srv:get(path)
    return status, decode(body), body
  end

  lazy_setup(function()
    certs = helpers.certs()
    fake = helpers.start_fake({ tls = true })
    untrusted = helpers.start_fake({ tls = true, untrusted = true })
    local sa_path
    sa_path, sa_info = helpers.make_service_account_file({
      token_uri = "https://localhost:" .. fake.port .. "/token" })
    local untrusted_sa = helpers.make_service_account_file({
      token_uri = "https://localhost:" .. untrusted.port .. "/token" })
    reset_fake()
    -- For the example handler: gauth's emulator (token endpoint, Discovery,
    -- Cloud SQL Admin) with a throwaway service account.
    emu = assert(require("gauth.emulator").start({
      new_key_file = helpers.tmpname("emulator-sa", ".json") }))
    discovery_dir = helpers.discovery("sqladmin.v1.json"):match("^(.*)/[^/]+$")
    local port = nginx.free_port()
    local app = 'require("support.ngx_app")'
    local err
    srv, err = nginx.start({
      workers = 4,
      port = port,
      listen_opts = "reuseport",
      trusted_ca = certs.ca_file,
      http = ([[
        lua_shared_dict gauth 1m;
        lua_shared_dict gauth_other 1m;
        lua_shared_dict results 1m;
        lua_shared_dict gauth_discovery 16m;
        init_by_lua_block {
          -- Nothing installs the shared-dict token cache: a dict named
          -- gauth is enough.
          %s.configure({ sa = %q, untrusted_sa = %q, discovery_dir = %q,
                         ca_file = %q })
          require("handler").init({ key_file = %q, discovery_url = %q })
        }
      ]]):format(app, sa_path, untrusted_sa, discovery_dir or "", certs.ca_file, emu.key_file,
                 emu.discovery_url),
      package_path = nginx.root .. "/examples/openresty/?.lua",
      server = ([[
        listen [::1]:@PORT@;
        location = /fast { return 200 "fast\n"; }
        location = /token { content_by_lua_block { @APP@.token() } }
        location = /not_blocked { content_by_lua_block { @APP@.not_blocked() } }
        location = /log_token {
          content_by_lua_block { ngx.say("ok") }
          log_by_lua_block { @APP@.log_phase() }
        }
        location = /set_token {
          set_by_lua_block $tokstate { return @APP@.set_phase() }
          return 200 $tokstate;
        }
        location = /store_checks { content_by_lua_block { @APP@.store_checks() } }
        location = /set_lock {
          set_by_lua_block $lockstate { return @APP@.set_lock() }
          return 200 $lockstate;
        }
        location = /init_result { content_by_lua_block { @APP@.init_result() } }
        location = /result { content_by_lua_block { @APP@.result() } }
        location = /default_store { content_by_lua_block { @APP@.default_store() } }
        location = /named_dict { content_by_lua_block { @APP@.named_dict() } }
        location = /case { content_by_lua_block { @APP@.run_case() } }
        location = /via_http { content_by_lua_block { @APP@.via_http() } }
        location = /raw/chunked { content_by_lua_block { @APP@.raw_chunked() } }
        location = /raw/close { content_by_lua_block { @APP@.raw_close() } }
        location = /raw/trickle { content_by_lua_block { @APP@.raw_trickle() } }
        location = /raw/continue { content_by_lua_block { @APP@.raw_continue() } }
        location = /raw/redirect { content_by_lua_block { @APP@.raw_redirect() } }
        location = /raw/echo { content_by_lua_block { @APP@.raw_echo() } }
        location = /discovery_doc { content_by_lua_block { @APP@.discovery_doc() } }
        location /fake_discovery/ { content_by_lua_block { @APP@.fake_discovery() } }
        location /example/proxy/ {
          set $gauth_authorization "";
          access_by_lua_block { require("handler").authorize() }
          proxy_set_header Authorization $gauth_authorization;
          proxy_set_header Cookie "";
          proxy_pass http://127.0.0.1:@PORT@/raw/;
        }
        location = /example/sql {
          content_by_lua_block { require("handler").list_sql_instances() }
        }
        location = /raw/badchunk { content_by_lua_block { @APP@.raw_badchunk() } }
        location = /raw/bighead { content_by_lua_block { @APP@.raw_bighead() } }
      ]]):gsub("@APP@", app):gsub("@PORT@", tostring(port)),
    })
    assert(srv, err)
    ctx = {
      fake = "https://localhost:" .. fake.port,
      untrusted = "https://localhost:" .. untrusted.port,
      raw = "http://127.0.0.1:" .. port,
      raw6 = "http://[::1]:" .. port,
      closed = "http://127.0.0.1:" .. nginx.free_port(),
      tmp = helpers.tmpdir(),
    }
  end)

  lazy_teardown(function()
    if srv then
      local log = srv:log()
      -- Lua errors inside nginx are test failures even when a test passed.
      srv:stop()
      assert.is_nil(log:match("%[error%][^\n]*lua entry thread aborted[^\n]*"))
    end
    if fake then fake:stop() end
    if untrusted then untrusted:stop() end
    if emu then emu:stop() end
  end)

  describe("shared transport cases", function()
    local curl_t
    local function run_curl(case)
      curl_t = curl_t or assert(require("gauth.transport.curl").new({
        ca_file = certs.ca_file, timeout = 10 }))
      return tcases.run(curl_t, case.requests(ctx), helpers.now)
    end
    local function run_ngx(case)
      local status, body = srv:get("/case", { method = "POST",
        body = assert(cjson.encode({ name = case.name, ctx = ctx })) })
      assert.equal(200, status, body)
      return assert(decode(body))
    end

    for _, case in ipairs(tcases.ngx_only) do
      if LUAJIT_PASS then
        it("ngx only: " .. case.name, function()
          reset_fake()
          if case.setup then case.setup(fake, ctx) end
          case.check(run_ngx(case), ctx, fake, untrusted)
        end)
      end
    end

    for _, case in ipairs(tcases.cases) do
      it("curl: " .. case.name, function()
        reset_fake()
        untrusted:reset()
        if case.setup then case.setup(fake, ctx) end
        case.check(run_curl(case), ctx, fake, untrusted)
      end)
      if LUAJIT_PASS then
        it("ngx: " .. case.name, function()
          reset_fake()
          untrusted:reset()
          if case.setup then case.setup(fake, ctx) end
          case.check(run_ngx(case), ctx, fake, untrusted)
        end)
      end
    end
  end)

  describe("outside nginx", function()
    it("the shared-dict store and document cache refuse to be made", function()
      local st, msg, err = require("gauth.token_cache.shdict").new()
      assert.is_nil(st)
      assert.equal("gauth.token_cache: shared dict: not running inside nginx", msg)
      helpers.assert_failure(msg, err, "token_cache", "shared dict")
      local dc, dmsg, derr = require("gauth.discovery.shdict_cache").new()
      assert.is_nil(dc)
      assert.matches("not running inside nginx", dmsg)
      helpers.assert_failure(dmsg, derr, "discovery", "shared dict")
      assert.is_nil(require("gauth.discovery.shdict_cache").default())
    end)
  end)

  -- The nginx side runs LuaJIT whatever runs busted: it is defined once,
  -- in the LuaJIT pass (not a skip: nothing of it depends on busted's Lua).
  if not LUAJIT_PASS then return end

  describe("cosocket transport", function()
    it("is what gauth.http.new() uses in a content handler", function()
      reset_fake()
      local status, r = get_json("/via_http?url=" .. ctx.raw .. "/fast")
      assert.equal(200, status)
      assert.same({ status = 200, ngx = true, curl = false }, r)
    end)

    it("refuses to run outside nginx", function()
      local t, msg, err = require("gauth.transport.ngx").new()
      assert.is_nil(t)
      assert.matches("inside nginx", msg)
      helpers.assert_failure(msg, err, "http", "init")
    end)
  end)

  describe("token cache in a lua_shared_dict", function()
    before_each(function() reset_fake() end)

    it("is used automatically when a dict named gauth is declared", function()
      local _, r = get_json("/default_store")
      assert.is_true(r.shdict)
      assert.equal("gauth", r.dict)
    end)

    it("opts.shared_dict names another dict; a missing one raises", function()
      local _, r = get_json("/named_dict")
      assert.is_true(r.token, r.err)
      assert.equal(1, r.in_other)
      assert.equal(0, r.in_gauth)
      assert.is_true(r.raised)
      assert.matches("no lua_shared_dict named nosuch", r.raised_msg)
    end)

    it("store: a missing dict is an error; the lock waits, times out, is released", function()
      local _, r = get_json("/store_checks")
      assert.same({ store = false, err = "gauth.token_cache: shared dict: no lua_shared_dict "
                    .. "named nosuch in nginx.conf" }, r.missing)
      assert.is_false(r.missing_docs.cache)
      assert.matches("no lua_shared_dict named nosuch", r.missing_docs.err)
      assert.is_false(r.b.got)
      assert.matches("timed out", r.b.err)
      assert.is_true(r.c.got, r.c.err)
      -- B gave up while A held the lock; C waited for it and got it after.
      assert.same({ "B gave up", "A lets go", "C got the lock" }, r.order)
      assert.is_true(r.relock)
      assert.is_true(r.stale_unlock_kept)
      local _, body = srv:get("/set_lock")
      assert.matches("set phase cannot wait", body)
    end)

    it("fetches from a slow endpoint without blocking the worker", function()
      -- The token endpoint answers after 5 s: long enough for /fast on any
      -- machine, and the order below does not depend on how long it takes.
      fake:script("/token", { delay = 5 })
      local status, r = get_json("/not_blocked?scope=slow")
      assert.equal(200, status)
      assert.is_true(r.token_ok, r.token_err)
      assert.equal(200, r.fast_status, r.fast_err)
      -- /fast was called and answered from the same worker while the token
      -- request was pending.
      assert.same({ "token asked", "fast asked", "fast answered", "token answered" }, r.order)
      assert.equal(1, token_requests())
    end)

    it("answers other locations while a token request is pending", function()
      fake:script("/token", { delay = 5 })
      local out = helpers.tmpname("slow-token", ".json")
      os.execute(("curl -s --max-time 30 -o %s %s/token?scope=slow2 &")
        :format(helpers.shell_quote(out), srv.url))
      -- the token request has reached the fake, which holds it
      fake:wait_requests("/token", 1)
      for _ = 1, 8 do
        local status, body = srv:get("/fast")
        assert.equal(200, status)
        assert.equal("fast\n", body)
      end
      -- ... and all eight were answered while it was still pending
      local early = helpers.read_file(out)
      assert.is_true(early == nil or early == "", "answered before the fast ones: " .. tostring(early))
      local deadline = helpers.now() + 30
      local r
      repeat
        socket.sleep(0.1)
        r = decode(helpers.read_file(out))
      until r or helpers.now() > deadline
      assert.is_string(r and r.token)
    end)

    it("40 concurrent cold requests on 4 workers make one token request", function()
      fake:script("/token", { delay = 1 })
      local results = srv:parallel("/token?scope=cold40", 40)
      local tokens, pids = {}, {}
      for _, x in ipairs(results) do
        assert.equal(200, x.status, x.body)
        local r = decode(x.body)
        tokens[r.token] = true
        pids[r.pid] = true
      end
      local ntok, npid = 0, 0
      for _ in pairs(tokens) do ntok = ntok + 1 end
      for _ in pairs(pids) do npid = npid + 1 end
      assert.equal(1, ntok)
      assert.is_true(npid > 1, "all requests went to one worker")
      assert.equal(1, token_requests())
    end)

    it("refreshes ahead of expiry in the background, once for all workers", function()
      reset_fake({ expires_in = 6 })  -- refresh time: 3 s after the fetch
      local t0 = helpers.now()
      local _, r1 = get_json("/token?scope=expiry")
      local tok1 = assert(r1.token)
      assert.equal(1, token_requests())
      -- The refresh is answered 1.5 s after it is asked for: meanwhile
      -- every request is served the old token, none waits for the new one.
      fake:script("/token", { { delay = 1.5 } })
      socket.sleep(3.3 - (helpers.now() - t0))
      -- Past the refresh time: served the old token while one timer
      -- fetches the next.
      local results = srv:parallel("/token?scope=expiry", 20)
      for _, x in ipairs(results) do
        assert.equal(200, x.status, x.body)
        assert.equal(tok1, decode(x.body).token)
      end
      local tok2
      local deadline = helpers.now() + 15
      repeat
        socket.sleep(0.1)
        local _, r = get_json("/token?scope=expiry")
        if r.token ~= tok1 then tok2 = r.token end
      until tok2 or helpers.now() > deadline
      assert.is_string(tok2)
      assert.equal(2, token_requests())
      -- Everyone gets the new one now, without another request.
      for _, x in ipairs(srv:parallel("/token?scope=expiry", 12)) do
        assert.equal(tok2, decode(x.body).token)
      end
      assert.equal(2, token_requests())
    end)

    it("serves the old token while refreshes fail, logs once, stops at expiry", function()
      -- A 10 s token: refreshed from half its life (5 s), served until
      -- 1 s (expiry_margin) before expiry, so at least 9 s after t0. The
      -- loop below stops 1.5 s before that: a loaded machine (or ASan)
      -- may take that long to answer a burst.
      reset_fake({ expires_in = 10 })
      local mark = #srv:log()
      local t0 = helpers.now()
      local _, r1 = get_json("/token?scope=failing")
      local tok1 = assert(r1.token)
      local denied = {}
      for i = 1, 30 do
        denied[i] = { status = 400, body = { error = "invalid_grant",
                                             error_description = "denied for the test" } }
      end
      fake:script("/token", denied)
      socket.sleep(5.3 - (helpers.now() - t0))
      local bursts = 0
      repeat
        bursts = bursts + 1
        for _, x in ipairs(srv:parallel("/token?scope=failing", 8)) do
          assert.equal(200, x.status, x.body)
          assert.equal(tok1, decode(x.body).token)
        end
        socket.sleep(0.4)
      until helpers.now() - t0 >= 7.5
      assert.is_true(bursts >= 1)
      assert.is_true(token_requests() >= 2)  -- tried again, with backoff
      assert.is_true(token_requests() <= 6, "too many: " .. token_requests())
      assert.equal(1, srv:log_count("background token refresh failed (", mark))
      assert.is_nil(srv:log_since(mark):find(tok1, 1, true))  -- no token in logs
      -- Past expiry (10 s after the token was fetched, which was after t0;
      -- the slack is for a first fetch slowed by load).
      socket.sleep(11.5 - (helpers.now() - t0))
      local status, r = get_json("/token?scope=failing")
      assert.equal(500, status)
      assert.matches("invalid_grant", r.err)
    end)

    it("refuses a token endpoint whose certificate comes from an untrusted CA", function()
      untrusted:reset()
      local status, r = get_json("/token?sa=untrusted_sa&scope=untrusted")
      assert.equal(500, status)
      assert.matches("[Cc]ertificate", r.err)
      assert.equal(0, #untrusted:requests())
    end)

    it("serves a cached token in log_by_lua (no cosockets)", function()
      local _, r = get_json("/token?scope=logwarm")
      assert.equal(200, srv:get("/log_token?scope=logwarm"))
      socket.sleep(0.1)
      local _, l = get_json("/result?key=log%20logwarm")
      assert.equal(r.token, l.token)
      assert.equal(1, token_requests())
    end)

    it("in log_by_lua with no token: a retryable error at once, a timer fetches", function()
      assert.equal(200, srv:get("/log_token?scope=logcold"))
      socket.sleep(0.1)
      local _, l = get_json("/result?key=log%20logcold")
      assert.is_nil(l.token)
      assert.is_true(l.retryable)
      assert.matches("refresh was scheduled", l.err)
      fake:wait_requests("/token", 1, 5)
      socket.sleep(0.2)
      local _, r = get_json("/token?scope=logcold")
      assert.is_string(r.token)
      assert.equal(1, token_requests())
    end)

    it("a token fetched in init_by_lua (blocking, in the master) serves every worker", function()
      local _, init = get_json("/init_result")
      assert.is_string(init.token, init.err)
      for _, x in ipairs(srv:parallel("/token?scope=init", 8)) do
        assert.equal(init.token, decode(x.body).token)
      end
      assert.equal(0, token_requests())  -- since reset_fake()
    end)

    it("serves a cached token in set_by_lua", function()
      local _, r = get_json("/token?scope=setwarm")
      local status, body = srv:get("/set_token?scope=setwarm")
      assert.equal(200, status)
      assert.equal("token:" .. r.token, body)
      local _, cold = srv:get("/set_token?scope=setcold")
      assert.matches("^error:.*cannot make requests", cold)
    end)
  end)

  describe("Discovery documents in a lua_shared_dict", function()
    it("are fetched by one worker for all", function()
      local results = srv:parallel("/discovery_doc?api=sqladmin&version=v1", 24)
      for _, x in ipairs(results) do
        assert.equal(200, x.status, x.body)
        assert.same({ name = "sqladmin", version = "v1", title = "Cloud SQL Admin API" },
                    decode(x.body))
      end
      local _, first = srv:get("/result?key=discovery_hits")
      assert.equal("1", (first:gsub("%s", "")))
      -- Served from the dict afterwards: no more fetches.
      assert.equal(200, srv:get("/discovery_doc?api=sqladmin&version=v1"))
      local _, hits = srv:get("/result?key=discovery_hits")
      assert.equal("1", (hits:gsub("%s", "")))
    end)

    it("a missing document is not found, and not kept", function()
      local status = srv:get("/discovery_doc?api=nosuch&version=v9")
      assert.equal(404, status)
    end)
  end)

  describe("examples/openresty", function()
    it("handler.authorize puts the service account's token on proxied requests", function()
      local status, r = get_json("/example/proxy/echo")
      assert.equal(200, status)
      local auth = r.headers.authorization
      assert.matches("^Bearer .+", auth)
      -- The emulator issued it, for the key the handler read.
      local status2, r2 = srv:get("/example/proxy/echo", {
        headers = { Authorization = "Bearer client-own", Cookie = "session=1" } })
      assert.equal(200, status2)
      r2 = decode(r2)
      assert.equal(auth, r2.headers.authorization)
      assert.is_nil(r2.headers.cookie)
    end)

    it("handler.list_sql_instances lists Cloud SQL instances with the Discovery client", function()
      local status, r, body = get_json("/example/sql")
      assert.equal(200, status, body)
      assert.equal(emu.project, r.project)
      assert.is_true(#r.instances > 0)
      for _, inst in ipairs(r.instances) do
        assert.is_string(inst.name)
        assert.is_string(inst.state)
      end
    end)

    it("nginx.conf is accepted by nginx -t (paths made local)", function()
      local text = assert(helpers.read_file(nginx.root .. "/examples/openresty/nginx.conf"))
      -- Nothing is resolved at start (the upstream is a variable).
      text = text:gsub("/opt/gauth", nginx.root)
      local dir = helpers.tmpname("example-nginx")
      assert(os.execute("mkdir -p " .. helpers.shell_quote(dir .. "/logs")))
      helpers.write_file(dir .. "/nginx.conf", text)
      local ok, out = helpers.sh(("env -u LUA_PATH -u LUA_CPATH GOOGLE_APPLICATION_CREDENTIALS=%s "
        .. "nginx -t -p %s -c %s"):format(helpers.shell_quote(emu.key_file),
        helpers.shell_quote(dir), helpers.shell_quote(dir .. "/nginx.conf")))
      assert.is_true(ok, out)
      assert.matches("test is successful", out)
    end)
  end)
end)

-- Errors survive `assert` inside nginx: the second value of a failure is
-- the message string (lua-nginx-module prints a raised table as "unknown
-- error"/"unknown reason"). nginx runs LuaJIT: once, in the LuaJIT pass.
if LUAJIT_PASS then
  describe("OpenResty: errors that survive assert", function()
    it("assert(from_file('/missing.json')) in init_by_lua: nginx does not start,"
       .. " error.log has the real message", function()
      local srv, err = nginx.start({
        workers = 1,
        http = [[
          init_by_lua_block {
            local creds = assert(require("gauth.service_account").from_file("/missing.json"))
          }
        ]],
      })
      if srv then srv:stop() end
      assert.is_nil(srv)
      -- the very line the README's "Errors" section shows
      local readme = helpers.read_file(nginx.root .. "/README.md")
      assert.truthy(readme:find('local creds = assert(require("gauth.service_account").from_file("/missing.json"))',
                                1, true))
      assert.matches("init_by_lua error", err, 1, true)
      assert.matches("gauth.service_account: key file: cannot read key file /missing.json",
                     err, 1, true)
      assert.not_matches("unknown error", err, 1, true)
    end)

    it("assert(from_file('/missing.json')) in a content handler: 500, error.log has the real"
       .. " message, and the call itself returns nil, msg, err", function()
      local srv = assert(nginx.start({
        workers = 1,
        server = [[
          location = /assert {
            content_by_lua_block {
              local creds = assert(require("gauth.service_account").from_file("/missing.json"))
              ngx.say("not reached ", tostring(creds))
            }
          }
          location = /shape {
            content_by_lua_block {
              local v, msg, err = require("gauth.service_account").from_file("/missing.json")
              ngx.say(type(v), "|", type(msg), "|", tostring(msg == tostring(err)), "|",
                      tostring(err.module), "|", tostring(err.step), "|", tostring(err.file))
            }
          }
        ]],
      }))
      finally(function() srv:stop() end)
      local status, body = srv:get("/assert")
      assert.equal(500, status)
      assert.is_nil(body:find("not reached", 1, true))
      local log = srv:log()
      assert.matches("gauth.service_account: key file: cannot read key file /missing.json",
                     log, 1, true)
      assert.not_matches("unknown reason", log, 1, true)
      assert.not_matches("unknown error", log, 1, true)
      status, body = srv:get("/shape")
      assert.equal(200, status)
      assert.equal("nil|string|true|service_account|key file|/missing.json\n", body)
    end)

    -- The README's nginx snippet, verbatim but for the key file's path and
    -- the proxy_pass (no request leaves loopback).
    local function readme_snippet()
      local readme = helpers.read_file(nginx.root .. "/README.md")
      local block = readme:match("### OpenResty.-```nginx\n(.-)```")
      assert.truthy(block, "the README's nginx snippet")
      local init = block:match("init_by_lua_block %b{}")
      local access = block:match("access_by_lua_block %b{}")
      assert.truthy(init and access)
      assert.truthy(init:find('assert(require("gauth.service_account").from_file("/etc/gauth/sa.json",', 1, true))
      assert.truthy(access:find("assert(creds:token())", 1, true))
      return init, access
    end

    it("the README's init_by_lua_block with a missing key file: error.log has the real message", function()
      local init = readme_snippet()
      local srv, err = nginx.start({
        workers = 1,
        http = (init:gsub("/etc/gauth/sa%.json", "/missing.json")),
      })
      if srv then srv:stop() end
      assert.is_nil(srv)
      assert.matches("init_by_lua error", err, 1, true)
      assert.matches("gauth.service_account: key file: cannot read key file /missing.json", err, 1, true)
      assert.not_matches("unknown error", err, 1, true)
    end)

    it("the README's access_by_lua_block with a dead token endpoint: 500, the real message logged", function()
      local init, access = readme_snippet()
      local path = helpers.make_service_account_file({
        token_uri = "http://127.0.0.1:" .. helpers.closed_port() .. "/token" })
      local srv = assert(nginx.start({
        workers = 1,
        http = (init:gsub("/etc/gauth/sa%.json", path)),
        server = "location /google/ { " .. access .. " content_by_lua_block { ngx.say('upstream') } }",
      }))
      finally(function() srv:stop() end)
      local status, body = srv:get("/google/x")
      assert.equal(500, status)
      assert.is_nil(body:find("upstream", 1, true))
      local log = srv:log()
      assert.matches("gauth.service_account: token request: ", log, 1, true)
      assert.not_matches("unknown reason", log, 1, true)
      assert.not_matches("unknown error", log, 1, true)
    end)

    it("assert(creds:token()) in a content handler logs the real message", function()
      local port = helpers.closed_port()
      local path = helpers.make_service_account_file({
        token_uri = "http://127.0.0.1:" .. port .. "/token" })
      local srv = assert(nginx.start({
        workers = 1,
        server = ([[
          location = /t {
            content_by_lua_block {
              local sa = require "gauth.service_account"
              local creds = assert(sa.from_file(%q, { scopes = { "s" }, retry = false }))
              ngx.say(assert(creds:token()))
            }
          }
        ]]):format(path),
      }))
      finally(function() srv:stop() end)
      local status = srv:get("/t")
      assert.equal(500, status)
      local log = srv:log()
      assert.matches("gauth.service_account: token request: ", log, 1, true)
      assert.not_matches("unknown reason", log, 1, true)
      assert.not_matches("unknown error", log, 1, true)
    end)
  end)
end
