-- gauth operated inside a real nginx (4 workers, `lua_shared_dict gauth`)
-- (issue 18 items 4, 5 and 7): with the token endpoint down a burst makes a
-- bounded number of exchanges across all workers (a failed refresh is
-- remembered in the dict), one deadline covers a whole execute(), a token
-- failure is not retried by the API retry loop; invalidate() reaches every
-- worker, and the proxy recipe for an upstream 401; the metrics endpoint.
-- The handlers are in spec/support/ngx_ops.lua; the token endpoint is the
-- same nginx and counts what it is asked.
--
-- nginx runs LuaJIT whatever runs busted: these specs run in the LuaJIT
-- pass of spec/run.sh only.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"
local socket = require "socket"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"

describe("OpenResty operations", function()
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
    return cjson.decode(body)
  end

  local function set(key, value)
    get(("/set?key=%s&value=%s"):format(key:gsub(" ", "%%20"), tostring(value)))
  end

  local function hits(name)
    local v = get("/result?key=ep%20hits%20" .. name)
    return v == cjson.null and 0 or v
  end

  local function result(key)
    local v = get("/result?key=" .. key:gsub(" ", "%%20"))
    if v == cjson.null then return nil end
    return v
  end

  local function api_hits()
    local v = get("/result?key=api%20hits")
    return v == cjson.null and 0 or v
  end

  local function burst(path, n)
    local out = {}
    for i, x in ipairs(srv:parallel(path, n)) do
      assert.equal(200, x.status, x.body)
      out[i] = cjson.decode(x.body)
    end
    return out
  end

  local function count_pids(list)
    local pids, n = {}, 0
    for _, r in ipairs(list) do
      if not pids[r.pid] then pids[r.pid] = true; n = n + 1 end
    end
    return n, pids
  end

  local fake

  lazy_setup(function()
    local certs = helpers.certs()
    fake = helpers.start_fake({ tls = true })
    fake:script("/ca_init", { { status = 200, body = "ok" } })
    fake:script("/ca_worker", { { status = 200, body = "ok" } })
    local port = nginx.free_port()
    local sa = helpers.make_service_account_file({
      token_uri = "http://127.0.0.1:" .. port .. "/ep_token" })
    local app = 'require("support.ngx_ops")'
    local err
    srv, err = nginx.start({
      workers = 4,
      port = port,
      listen_opts = "reuseport",
      -- One CA for both transports: GAUTH_CA_FILE for libcurl (init_by_lua),
      -- lua_ssl_trusted_certificate naming the same file for cosockets.
      setenv = { GAUTH_CA_FILE = certs.ca_file },
      env = { "GAUTH_CA_FILE" },
      trusted_ca = certs.ca_file,
      http = ([[
        lua_shared_dict gauth 1m;
        lua_shared_dict results 1m;
        init_by_lua_block {
          -- libcurl, blocking, in the master: no ca_file given.
          local res, _, err = require("gauth.http").default():request({ url = %q })
          ca_init = res and res.status or tostring(err)
          -- A failed refresh is remembered for a minute here (default 5 s),
          -- so that a burst's count cannot depend on how long it takes;
          -- Retry-After is honoured up to 120 s.
          assert(require("gauth.token_cache.shdict").install("gauth",
            { negative_ttl = 60, negative_ttl_max = 120 }))
          %s.configure({ sa = %q, port = %d })
          creds = assert(require("gauth.service_account").from_file(%q,
            { scopes = { "https://www.googleapis.com/auth/test.proxy" } }))
        }
      ]]):format(fake.url:gsub("127%.0%.0%.1", "localhost") .. "/ca_init", app, sa, port, sa),
      server = ([[
        location = /ep_token { content_by_lua_block { @APP@.ep_token() } }
        location = /api/things { content_by_lua_block { @APP@.api() } }
        location = /set { content_by_lua_block { @APP@.set() } }
        location = /result { content_by_lua_block { @APP@.result() } }
        location = /token { content_by_lua_block { @APP@.token() } }
        location = /bounds { content_by_lua_block { @APP@.bounds() } }
        location = /invalidate { content_by_lua_block { @APP@.invalidate() } }
        location = /execute { content_by_lua_block { @APP@.execute() } }
        location = /ca_check {
          content_by_lua_block {
            local res, e2, e3 = require("gauth.http").default():request({ url = ngx.var.arg_url })
            ngx.say(require("cjson").encode({ init = ca_init, worker = res and res.status
              or tostring(e2) }))
          }
        }
        location = /metrics { content_by_lua_block { ngx.print(require("gauth.nginx").metrics()) } }
        # The README's proxy recipe: upstream says 401 -> invalidate -> once more.
        location /proxied/ {
          access_by_lua_block {
            ngx.req.set_header("Authorization", "Bearer " .. assert(creds:token()))
          }
          proxy_pass http://127.0.0.1:@PORT@/api/;
          proxy_intercept_errors on;
          error_page 401 = @proxied_retry;
        }
        location @proxied_retry {
          access_by_lua_block {
            creds:invalidate()
            ngx.req.set_header("Authorization", "Bearer " .. assert(creds:token()))
          }
          rewrite ^/proxied/(.*)$ /api/$1 break;
          proxy_pass http://127.0.0.1:@PORT@;
        }
      ]]):gsub("@APP@", app):gsub("@PORT@", tostring(port)),
    })
    assert(srv, err)
  end)

  lazy_teardown(function()
    if fake then fake:stop() end
    if srv then
      local log = srv:log()
      srv:stop()
      assert.is_nil(log:match("[^\n]*runtime error[^\n]*"))
      assert.is_nil(log:find("tok-", 1, true), "a token in error.log")
    end
  end)

  describe("with the token endpoint down", function()
    it("a burst of 40 on 4 workers makes one refresh (2 attempts), the rest are told at once", function()
      set("mode down1", "dead")
      local out = burst("/token?name=down1", 40)
      local remembered = 0
      for _, r in ipairs(out) do
        local o = r.outcome
        assert.equal("nil", o.first)
        assert.matches("^gauth%.service_account: ", o.msg)
        assert.matches("HTTP 503", o.msg, 1, true)
        assert.equal("service_account", o.err.module)
        assert.equal(503, o.err.status)
        assert.is_true(o.err.retryable)
        if o.err.remembered then
          remembered = remembered + 1
          assert.matches("remembered", o.msg, 1, true)
          assert.equal(60, o.err.negative_ttl)
          assert.is_true(o.err.retry_after > 0 and o.err.retry_after <= 60)
        end
      end
      assert.is_true(count_pids(out) > 1, "all requests went to one worker")
      -- One refresh across all workers: its two attempts.
      assert.equal(2, hits("down1"))
      assert.is_true(remembered >= 1)
      -- Another burst while it is remembered: no exchange at all.
      out = burst("/token?name=down1", 40)
      for _, r in ipairs(out) do
        assert.is_true(r.outcome.err.remembered)
      end
      assert.equal(2, hits("down1"))
    end)

    it("honours Retry-After within bounds (1 s .. negative_ttl_max)", function()
      set("mode down2", "dead")
      set("retry_after down2", 90)
      local r = get("/token?name=down2")
      assert.equal("nil", r.outcome.first)
      -- Retry-After 90 s is longer than the exchange's own deadline: one attempt.
      assert.equal(1, hits("down2"))
      r = get("/token?name=down2")
      assert.is_true(r.outcome.err.remembered)
      assert.equal(90, r.outcome.err.negative_ttl)
      set("mode down3", "dead")
      set("retry_after down3", 3600)
      get("/token?name=down3")
      r = get("/token?name=down3")
      assert.is_true(r.outcome.err.remembered)
      assert.equal(120, r.outcome.err.negative_ttl)
      assert.equal(1, hits("down3"))
    end)

    it("execute(): the token failure is not retried by the API retry loop", function()
      set("mode down4", "dead")
      local r = get("/execute?name=down4&retries=3")
      local o = r.outcome
      assert.equal("nil", o.first)
      assert.matches("^gauth%.discovery: things%.things%.list: ", o.msg)
      assert.equal("discovery", o.err.module)
      assert.is_true(o.err.token_failed)
      assert.equal(2, hits("down4"))
      assert.equal(0, api_hits())
      -- The exchange retried once (gauth.on("retry") saw it); the API
      -- loop, allowed 3 retries, made none.
      assert.is_nil(result("event retry discovery"))
      assert.is_true(result("event retry service_account") >= 1)
    end)

    it("execute(): one deadline covers the token fetch", function()
      set("mode slow1", "hold")
      local t0 = socket.gettime()
      local r = get("/execute?name=slow1&deadline=0.5&retries=3")
      local elapsed = socket.gettime() - t0
      set("release slow1", 1)
      local o = r.outcome
      assert.equal("nil", o.first)
      assert.matches("^gauth%.discovery: things%.things%.list: ", o.msg)
      assert.matches("deadline", o.msg, 1, true)
      assert.is_true(o.err.token_failed)
      assert.equal(0, api_hits())
      -- Hang guard: the endpoint holds for 20 s.
      assert.is_true(elapsed < 15, "execute waited for the held token request")
      assert.equal(1, hits("slow1"))
    end)
  end)

  describe("invalidate()", function()
    it("reaches every worker: the next call anywhere fetches a new token, once", function()
      local before = burst("/token?name=inv", 40)
      local tok1 = before[1].token
      assert.is_string(tok1)
      for _, r in ipairs(before) do assert.equal(tok1, r.token) end
      local nbefore, seen = count_pids(before)
      assert.is_true(nbefore > 1, "all requests went to one worker")
      assert.equal(1, hits("inv"))
      local inv = get("/invalidate?name=inv")
      assert.equal(tok1, inv.token)
      assert.is_true(inv.returned)
      local after = burst("/token?name=inv", 40)
      local others = 0
      for _, r in ipairs(after) do
        assert.is_string(r.token)
        assert.are_not.equal(tok1, r.token)
        assert.equal(after[1].token, r.token)
        if r.pid ~= inv.pid and seen[r.pid] then others = others + 1 end
      end
      -- Workers that held the old token (not the one that invalidated) were asked.
      assert.is_true(others > 0, "no other worker that held the token was asked")
      assert.equal(2, hits("inv"))
    end)

    it("proxy recipe: upstream 401 -> invalidate -> one more try with a new token", function()
      local first = assert(get("/proxied/things").token)
      set("revoked", first)
      local r = get("/proxied/things")
      assert.equal("things", r.kind)
      assert.is_string(r.token)
      assert.are_not.equal(first, r.token)
      assert.equal(1, get("/result?key=api%20401"))
      -- Every worker now sends the new token.
      for _, x in ipairs(burst("/proxied/things", 20)) do
        assert.equal(r.token, x.token)
      end
      assert.equal(1, get("/result?key=api%20401"))
    end)
  end)

  describe("one trust store", function()
    it("GAUTH_CA_FILE (libcurl in init_by_lua) and lua_ssl_trusted_certificate (workers): both trust the CA", function()
      local url = fake.url:gsub("127%.0%.0%.1", "localhost") .. "/ca_worker"
      local r = get("/ca_check?url=" .. url)
      assert.equal(200, r.init)
      assert.equal(200, r.worker)
      assert.equal(1, #fake:requests("/ca_init"))
      assert.equal(1, #fake:requests("/ca_worker"))
      -- Each worker says once where each transport's CA comes from.
      assert.truthy(srv:log():find("GAUTH_CA_FILE=" .. helpers.certs().ca_file
        .. " is what libcurl trusts (init_by_lua); cosockets trust lua_ssl_trusted_certificate", 1, true))
    end)
  end)

  describe("per-worker bounds (issue 17 item 9)", function()
    it("the shared-dict store's memo and tkeys, and the scheduled table, hold at most max_entries", function()
      local b = get("/bounds?n=200")
      assert.equal(200, b.served)
      assert.equal(200, b.scheduled_calls)
      -- gauth.lib.lru keeps between half and all of its bound.
      for _, k in ipairs({ "memo", "tkeys", "scheduled" }) do
        assert.is_true(b[k] <= 10 and b[k] >= 5, k .. ": " .. tostring(b[k]))
      end
    end)
  end)

  describe("metrics()", function()
    it("the endpoint is scraped and parsed: counters of every worker, per credential and host", function()
      local ok = get("/execute?name=m1")
      assert.equal("table", ok.outcome.first)
      local status, text = srv:get("/metrics", { timeout = 30 })
      assert.equal(200, status)
      local samples, types = {}, {}
      for line in text:gmatch("[^\n]+") do
        local typ_name, typ = line:match("^# TYPE (%S+) (%S+)$")
        if typ_name then
          types[typ_name] = typ
        elseif not line:match("^# HELP gauth_") then
          local name, labels, v = line:match("^(gauth_[%w_]+){(.*)} (%S+)$")
          assert.is_string(name, "not a Prometheus sample: " .. line)
          assert.is_number(tonumber(v), line)
          local l = {}
          for k, lv in labels:gmatch('([%w_]+)="(.-)"') do l[k] = lv end
          samples[#samples + 1] = { name = name, labels = l, value = tonumber(v) }
        end
      end
      assert.equal("counter", types.gauth_token_exchanges_total)
      assert.equal("counter", types.gauth_api_requests_total)
      local function value(name, want)
        for _, smp in ipairs(samples) do
          local match = smp.name == name
          for k, v in pairs(want) do match = match and smp.labels[k] == v end
          if match then return smp.value end
        end
      end
      local inv = get("/token?name=inv")
      local down = get("/token?name=down1")
      local who = { credential = inv.label, key = inv.key }
      -- Every token() call of every worker is one hit or one miss: the
      -- bursts (40 + 40), the invalidating request's call.
      assert.equal(81, value("gauth_cache_hits_total", who) + value("gauth_cache_misses_total", who))
      assert.equal(hits("inv"), value("gauth_token_exchanges_total", who))
      assert.equal(0, value("gauth_token_failures_total", who))
      local dwho = { credential = down.label, key = down.key }
      -- The one refresh of the burst, in whichever worker made it.
      assert.equal(1, value("gauth_token_exchanges_total", dwho))
      assert.equal(1, value("gauth_token_failures_total", dwho))
      local seen = false
      for _, smp in ipairs(samples) do
        if smp.name == "gauth_token_last_error_timestamp_seconds" and smp.labels.key == down.key then
          assert.matches("HTTP 503", smp.labels.error, 1, true)
          assert.is_true(smp.value > 0)
          seen = true
        end
      end
      assert.is_true(seen)
      assert.equal(1, value("gauth_api_requests_total",
        { host = "127.0.0.1:" .. srv.port, status = "200" }))
      -- Log lines name the credential, never a secret.
      local log = srv:log()
      assert.truthy(log:find("token exchange for " .. down.label .. " failed", 1, true))
      assert.is_nil(log:find("PRIVATE KEY", 1, true))
    end)
  end)
end)

