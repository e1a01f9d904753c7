-- Proxies on the cosocket transport, inside a real nginx (LuaJIT pass
-- only, as every nginx spec). https_proxy/http_proxy reach Lua through
-- `env` lines; the loopback CONNECT proxy (spec/support/connect_proxy.py)
-- logs what it tunnels and forwards oauth2.googleapis.com:443 to the fake
-- Google (a certificate for that name from the test CA, which is
-- lua_ssl_trusted_certificate): a request the fake answered under that name
-- came through a tunnel and TLS verified for the target's name.
local helpers = require "helpers"
local nginx = require "support.nginx"
local judges = require "support.judges"
local cjson = require "cjson.safe"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"
local GOOGLE = "oauth2.googleapis.com"
local USER, PASS = "ngx-user", "ngx s3cret"

if LUAJIT_PASS then
describe("proxies under nginx (cosockets)", function()
  local fake, proxy, auth_proxy, direct, srv, key_path, key_info, meta, dns
  -- The metadata server by a name that is not loopback (nginx's resolver,
  -- the tiny DNS server, maps it to 127.0.0.1): only the metadata-host
  -- rule keeps its requests off the proxy.
  local META_NAME = "metadata.gauth.test"

  local function get(path)
    local status, body = srv:get(path)
    assert.equal(200, status, tostring(body) .. "\n" .. srv:log())
    local v = cjson.decode(body)
    assert(type(v) == "table", body)
    return v
  end

  local function since(p, from)
    local out = {}
    for i, c in ipairs(p.connects()) do
      if i > from then out[#out + 1] = c end
    end
    return out
  end

  lazy_setup(function()
    local cert, ckey = judges.google_cert({ GOOGLE })
    fake = helpers.start_fake({ cert_file = cert, key_file = ckey })
    local routes = { [GOOGLE .. ":443"] = "127.0.0.1:" .. fake.port }
    proxy = judges.start_connect_proxy(routes)
    auth_proxy = judges.start_connect_proxy(routes,
      { require_auth = "Basic " .. helpers.b64encode(USER .. ":" .. PASS) })
    direct = helpers.start_raw_listener({ host = "127.0.0.2" })
    key_path, key_info = helpers.make_service_account_file()
    meta = helpers.start_fake({ tls = false })
    dns = helpers.start_dns({ [META_NAME] = "127.0.0.1" })
    local err
    srv, err = nginx.start({
      workers = 1,
      env = { "https_proxy", "http_proxy", "GCE_METADATA_HOST" },
      setenv = { https_proxy = proxy.url, http_proxy = proxy.url,
                 GCE_METADATA_HOST = META_NAME .. ":" .. meta.port },
      trusted_ca = helpers.certs().ca_file,
      http = "lua_shared_dict gauth 1m;",
      server = ([[
        resolver %s ipv6=off;
        location = /idtoken {
          content_by_lua_block {
            -- One ID-token credentials object per worker, on the default
            -- cache (the gauth shared dict); ?invalidate=1 drops its token.
            local M = package.loaded["spec76.idtoken"] or {}
            package.loaded["spec76.idtoken"] = M
            if not M.c then
              local src = assert(require("gauth.service_account").from_file(%q, { retry = false }))
              M.c = assert(require("gauth.id_token").credentials(src, {
                audience = "https://svc-abc-uc.a.run.app" }))
            end
            if ngx.var.arg_invalidate then M.c:invalidate() end
            local h, msg = M.c:apply({})
            ngx.say(require("cjson").encode({ auth = h and h.authorization, msg = msg }))
          }
        }
        location = /metadata {
          content_by_lua_block {
            local ce = require "gauth.compute_engine"
            local c = assert(ce.credentials({ cache = require("gauth.token_cache").new(), retry = false }))
            local tok, _, err = c:token()
            local ud, umsg = c:get_universe_domain()
            ngx.say(require("cjson").encode({ token = tok, msg = err and tostring(err),
                                              host = c.host, universe = ud, umsg = umsg }))
          }
        }
        location = /through {
          content_by_lua_block {
            local t = require("gauth.http").new()
            local res, msg, err = t:request({ url = "https://%s/v1/ngx" })
            ngx.say(require("cjson").encode({ status = res and res.status, msg = msg }))
          }
        }
        location = /token {
          content_by_lua_block {
            local sa = require "gauth.service_account"
            local c = assert(sa.from_file(%q, { scopes = "https://www.googleapis.com/auth/cloud-platform",
              cache = require("gauth.token_cache").new(), retry = false }))
            local tok, _, err = c:token()
            ngx.say(require("cjson").encode({ token = tok, msg = err and tostring(err) }))
          }
        }
        location = /explicit {
          content_by_lua_block {
            local t = assert(require("gauth.transport.ngx").new({
              proxy = "http://%s:%s@127.0.0.1:%d", timeout = 10 }))
            local res, msg = t:request({ url = "https://%s/v1/explicit" })
            local bad, bmsg, berr = require("gauth.transport.ngx").new({
              proxy = "http://%s:wrong@127.0.0.1:%d" })
            local res2, msg2, err2 = bad:request({ url = "https://%s/v1/denied" })
            local none, nmsg, nerr = require("gauth.transport.ngx").new({ proxy = "https://%s@[::1" })
            ngx.say(require("cjson").encode({ status = res and res.status, msg = msg,
              denied = msg2, denied_kind = err2 and err2.kind, denied_retryable = err2 and err2.retryable,
              bad = nmsg, bad_field = nerr and nerr.field }))
          }
        }
        location = /plain {
          content_by_lua_block {
            local t = require("gauth.http").new()
            local res, msg = t:request({ url = "http://plain.gauth.test/over/http" })
            ngx.say(require("cjson").encode({ status = res and res.status, msg = msg }))
          }
        }
        location = /loopback {
          content_by_lua_block {
            local t = require("gauth.http").new()
            local res, msg = t:request({ url = "http://127.0.0.2:%d/near" })
            ngx.say(require("cjson").encode({ status = res and res.status, msg = msg }))
          }
        }
      ]]):format(dns.address, key_path, GOOGLE, key_path, USER, PASS:gsub(" ", "%%20"), auth_proxy.port, GOOGLE,
                 USER, auth_proxy.port, GOOGLE, USER, direct.port),
    })
    assert(srv, err)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    dns:stop()
    meta:stop()
    direct:stop()
    proxy.stop()
    auth_proxy.stop()
    fake:stop()
  end)

  before_each(function()
    fake:reset()
    fake:config({ public_keys = { [key_info.kid] = key_info.public_pem },
                  token_uri = "https://" .. GOOGLE .. "/token" })
  end)

  it("tunnels https_proxy's https requests with CONNECT, TLS to the target's name", function()
    local from = #proxy.connects()
    fake:script("/v1/ngx", { { status = 200, body = {} } })
    local v = get("/through")
    assert.is_nil(v.msg)
    assert.equal(200, v.status)
    local seen = since(proxy, from)
    assert.equal(1, #seen)
    assert.equal(GOOGLE .. ":443", seen[1].target)
    assert.is_false(seen[1].refused)
    local got = fake:requests("/v1/ngx")
    assert.equal(1, #got)
    assert.equal(GOOGLE, got[1].headers.host)
  end)

  it("a service account's token exchange goes through the proxy", function()
    local v = get("/token")
    assert.is_nil(v.msg)
    assert.matches("^fake%-token%-", v.token)
    -- the tunnel of the previous request may serve it (kept alive): what
    -- proves the path is the fake answering under Google's name (nginx's
    -- resolver knows only the metadata name: a direct connection could not
    -- even start), and the
    -- proxy having tunnelled only that name
    local got = fake:requests("/token")
    assert.equal(1, #got)
    assert.equal(GOOGLE, got[1].headers.host)
    local seen = proxy.connects()
    assert.is_true(#seen >= 1)
    for _, c in ipairs(seen) do
      if not c.refused then assert.equal(GOOGLE .. ":443", c.target) end
    end
  end)

  it("an explicit proxy with credentials: Proxy-Authorization, a 407 refused, a bad URL named", function()
    local from = #auth_proxy.connects()
    fake:script("/v1/explicit", { { status = 200, body = {} } })
    local v = get("/explicit")
    assert.is_nil(v.msg)
    assert.equal(200, v.status)
    local seen = since(auth_proxy, from)
    assert.equal(2, #seen)
    assert.equal(GOOGLE .. ":443", seen[1].target)
    assert.is_false(seen[1].refused)
    assert.equal("Basic " .. helpers.b64encode(USER .. ":" .. PASS), seen[1].auth)
    assert.is_true(seen[2].refused)
    assert.equal(1, #fake:requests("/v1/explicit"))
    assert.same({}, fake:requests("/v1/denied"))
    assert.equal("gauth.http: request: proxy http://127.0.0.1:" .. auth_proxy.port
      .. " refused CONNECT to " .. GOOGLE .. ":443: 407 Proxy Authentication Required", v.denied)
    assert.equal("proxy", v.denied_kind)
    assert.is_false(v.denied_retryable)
    assert.equal("gauth.http: proxy: proxy: unsupported scheme https (gauth speaks to http://"
      .. " proxies, with CONNECT for https targets)", v.bad)
    assert.equal("proxy", v.bad_field)
    assert.is_nil(srv:log():find("s3cret", 1, true))
    assert.is_nil(srv:log():find("wrong", 1, true))
  end)

  it("sends plain http through http_proxy in absolute form", function()
    local from = #proxy.connects()
    local v = get("/plain")
    -- the test proxy refuses anything but its CONNECT routes, with 403
    assert.equal(403, v.status)
    local seen = since(proxy, from)
    assert.equal(1, #seen)
    assert.equal("GET http://plain.gauth.test/over/http HTTP/1.1", seen[1].target)
  end)

  it("never sends the metadata server's requests through the proxy, by name", function()
    local from = #proxy.connects()
    local v = get("/metadata")
    assert.is_nil(v.msg)
    assert.is_nil(v.umsg)
    assert.matches("^fake%-token%-", v.token)
    assert.equal(META_NAME .. ":" .. meta.port, v.host)
    assert.equal("googleapis.com", v.universe)
    local got = meta:requests("/computeMetadata/v1/instance/service-accounts/default/token")
    assert.equal(1, #got)
    assert.equal(META_NAME .. ":" .. meta.port, got[1].headers.host)
    assert.equal(1, #meta:requests("/computeMetadata/v1/universe/universe-domain"))
    -- Resolved by nginx (so connected directly), and the proxy saw nothing.
    local asked = {}
    for _, qy in ipairs(dns:queries()) do asked[qy.name] = true end
    assert.is_true(asked[META_NAME])
    assert.same({}, since(proxy, from))
  end)

  it("ID-token credentials for Cloud Run: cached in the shared dict, fetched again once invalidated", function()
    local a = get("/idtoken")
    assert.is_nil(a.msg)
    assert.matches("^Bearer ", a.auth)
    local b = get("/idtoken")
    assert.equal(a.auth, b.auth)
    local exchanges = fake:requests("/token")
    assert.equal(1, #exchanges)
    local _, claims = helpers.jwt_parts(exchanges[1].form.assertion)
    assert.equal("https://svc-abc-uc.a.run.app", claims.target_audience)
    local _, idc = helpers.jwt_parts(a.auth:match("^Bearer (.+)$"))
    assert.equal("https://svc-abc-uc.a.run.app", idc.aud)
    -- Invalidated (as on a 401 from the service): one exchange more, then
    -- served from the dict again. (Refresh before exp on a standing clock:
    -- spec 48.)
    local c = get("/idtoken?invalidate=1")
    assert.is_nil(c.msg)
    assert.matches("^Bearer ", c.auth)
    assert.equal(2, #fake:requests("/token"))
    assert.equal(c.auth, get("/idtoken").auth)
    assert.equal(2, #fake:requests("/token"))
  end)

  it("never sends loopback through the proxy", function()
    local from = #proxy.connects()
    local v = get("/loopback")
    assert.is_nil(v.msg)
    assert.equal(200, v.status)
    assert.same({ "GET /near HTTP/1.1" }, direct:request_lines())
    assert.same({}, since(proxy, from))
  end)
end)
end
