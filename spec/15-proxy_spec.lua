-- Proxies on the libcurl transport (Lua 5.4 and LuaJIT; the cosocket
-- transport: spec 76). A loopback CONNECT proxy (spec/support/connect_proxy.py)
-- logs every request it gets and tunnels oauth2.googleapis.com:443 to the
-- fake Google, which serves a certificate for that name from the test CA:
-- a request that reached the fake under that name went through the proxy.
-- Loopback and the metadata server never go through one.

local helpers = require "helpers"
local judges = require "support.judges"
local curl = require "gauth.transport.curl"
local common = require "gauth.transport.common"
local sa = require "gauth.service_account"
local token_cache = require "gauth.token_cache"

local q = helpers.shell_quote
local GOOGLE = "oauth2.googleapis.com"
local USER, PASS = "gauth-user", "pr0xy p@ss"
-- The URL form of the password: percent-encoded, as a URL needs it.
local PASS_URL = "pr0xy%20p%40ss"
assert(PASS_URL:gsub("%%20", " "):gsub("%%40", "@") == PASS)

local function lua_interpreter()
  return os.getenv("GAUTH_LUA") or "lua5.4"
end

describe("proxies (libcurl)", function()
  local fake, proxy, auth_proxy, certs, key_path, key_info

  lazy_setup(function()
    certs = helpers.certs()
    local cert, ckey = judges.google_cert({ GOOGLE })
    fake = helpers.start_fake({ cert_file = cert, key_file = ckey })
    local routes = { [GOOGLE .. ":443"] = "127.0.0.1:" .. fake.port }
    proxy = judges.start_connect_proxy(routes)
    auth_proxy = judges.start_connect_proxy(routes, {
      require_auth = "Basic " .. helpers.b64encode(USER .. ":" .. PASS) })
    key_path, key_info = helpers.make_service_account_file()
  end)

  lazy_teardown(function()
    proxy.stop()
    auth_proxy.stop()
    fake:stop()
  end)

  before_each(function()
    fake:reset()
    fake:config({ public_keys = { [key_info.kid] = key_info.public_pem } })
  end)

  local function connects(p, from)
    local out = {}
    for i, c in ipairs(p.connects()) do
      if i > (from or 0) then out[#out + 1] = c end
    end
    return out
  end

  describe("the proxy option", function()
    it("refuses a proxy URL with an unsupported scheme or no host, naming the field", function()
      local t, msg, err = curl.new({ proxy = "socks5://127.0.0.1:1080" })
      assert.is_nil(t)
      helpers.assert_failure(msg, err, "http", "proxy")
      assert.equal("proxy", err.field)
      assert.equal("proxy", err.kind)
      assert.is_false(err.retryable)
      assert.matches("^gauth%.http: proxy: proxy: unsupported scheme socks5", msg)
      t, msg, err = curl.new({ proxy = "http://" .. USER .. ":" .. PASS_URL .. "@:3128" })
      assert.is_nil(t)
      helpers.assert_failure(msg, err, "http", "proxy")
      assert.equal("gauth.http: proxy: proxy: the proxy URL has no host", msg)
      assert.is_nil(msg:find("pr0xy", 1, true))
      assert.has_error(function() curl.new({ proxy = 3128 }) end,
        "gauth.transport.curl: proxy must be a string (a proxy URL) or false")
    end)

    it("tunnels an https request to the target's name, with Proxy-Authorization", function()
      local from = #auth_proxy.connects()
      local t = assert(curl.new({ ca_file = certs.ca_file, timeout = 10,
        proxy = "http://" .. USER .. ":" .. PASS_URL .. "@127.0.0.1:" .. auth_proxy.port }))
      fake:script("/v1/through", { { status = 200, body = { via = "tunnel" } } })
      local res, msg = t:request({ url = "https://" .. GOOGLE .. "/v1/through" })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      local seen = connects(auth_proxy, from)
      assert.equal(1, #seen)
      assert.equal(GOOGLE .. ":443", seen[1].target)
      assert.is_false(seen[1].refused)
      assert.equal("Basic " .. helpers.b64encode(USER .. ":" .. PASS), seen[1].auth)
      -- the fake saw the request under Google's name, through TLS it
      -- verified with the test CA
      local got = fake:requests("/v1/through")
      assert.equal(1, #got)
      assert.equal(GOOGLE, got[1].headers.host)
      assert.is_nil(got[1].headers["proxy-authorization"])
    end)

    it("a proxy refusing the tunnel (407) fails the request, not retryable, no password shown", function()
      local t = assert(curl.new({ ca_file = certs.ca_file, timeout = 10,
        proxy = "http://" .. USER .. ":wrong@127.0.0.1:" .. auth_proxy.port }))
      local res, msg, err = t:request({ url = "https://" .. GOOGLE .. "/v1/denied" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "http", "request")
      assert.equal("proxy", err.kind)
      assert.is_false(err.retryable)
      assert.equal("http://127.0.0.1:" .. auth_proxy.port, err.proxy)
      assert.matches("407", msg)
      assert.is_nil(msg:find("wrong", 1, true))
      assert.same({}, fake:requests("/v1/denied"))
    end)

    it("an unreachable proxy: a retryable connect failure naming it, never its password", function()
      local port = helpers.closed_port()
      local t = assert(curl.new({ timeout = 10,
        proxy = "http://" .. USER .. ":" .. PASS_URL .. "@127.0.0.1:" .. port }))
      local res, msg, err = t:request({ url = "https://" .. GOOGLE .. "/v1/nowhere" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "http", "request")
      assert.equal("connect", err.kind)
      assert.is_true(err.retryable)
      assert.equal("http://127.0.0.1:" .. port, err.proxy)
      assert.matches("%(proxy http://127%.0%.0%.1:" .. port .. "%)$", msg)
      assert.is_nil(msg:find("pr0xy", 1, true))
    end)

    it("never sends loopback (127.0.0.0/8, ::1, localhost) through it", function()
      local from = #proxy.connects()
      local targets = { helpers.start_raw_listener({ host = "127.0.0.2" }),
                        helpers.start_raw_listener({ host = "::1" }),
                        helpers.start_raw_listener({ host = "127.0.0.1" }) }
      local t = assert(curl.new({ timeout = 10, proxy = proxy.url }))
      local urls = { targets[1].url .. "/two", targets[2].url .. "/six",
                     "http://localhost:" .. targets[3].port .. "/name" }
      for _, u in ipairs(urls) do
        local res, msg = t:request({ url = u })
        assert.is_nil(msg)
        assert.equal(200, res.status)
      end
      local direct = {}
      for i, l in ipairs(targets) do direct[i] = l:request_lines(); l:stop() end
      assert.same({ { "GET /two HTTP/1.1" }, { "GET /six HTTP/1.1" }, { "GET /name HTTP/1.1" } },
                  direct)
      assert.same({}, connects(proxy, from))
    end)

    it("one transport alternating between a proxied host and loopback routes each request by its own host", function()
      -- The transport remembers the last URL's decision by its
      -- scheme://authority: a change of host (or of port) must not reuse it.
      local from = #proxy.connects()
      local direct = helpers.start_raw_listener({ host = "127.0.0.1" })
      local t = assert(curl.new({ ca_file = certs.ca_file, timeout = 10, proxy = proxy.url }))
      fake:script("/v1/alt", { { status = 200, body = {} }, { status = 200, body = {} } })
      for _, u in ipairs({ "https://" .. GOOGLE .. "/v1/alt", direct.url .. "/a",
                           "https://" .. GOOGLE .. "/v1/alt", direct.url .. "?b" }) do
        local res, msg = t:request({ url = u })
        assert.is_nil(msg)
        assert.equal(200, res.status)
      end
      local lines = direct:request_lines()
      direct:stop()
      assert.same({ "GET /a HTTP/1.1", "GET /?b HTTP/1.1" }, lines)
      assert.equal(2, #fake:requests("/v1/alt"))
      local seen = connects(proxy, from)
      assert.is_true(#seen >= 1)
      for _, c in ipairs(seen) do assert.equal(GOOGLE .. ":443", c.target) end
    end)

    it("never routes the metadata server or loopback to a proxy (the rule both transports use)", function()
      local cfg = assert(common.proxy_config({ proxy = proxy.url }, "test"))
      for _, host in ipairs({ "169.254.169.254", "metadata.google.internal", "METADATA.google.internal.",
                              "127.0.0.1", "127.255.0.9", "[::1]", "localhost", "a.localhost" }) do
        assert.is_nil(common.proxy_for(cfg, "http", host), host)
        assert.is_nil(common.proxy_for(cfg, "https", host), host)
      end
      assert.equal("127.0.0.1", common.proxy_for(cfg, "https", GOOGLE).addr)
      -- no_proxy: names and their subdomains, CIDR ranges, "*"
      cfg = assert(common.proxy_config({ proxy = proxy.url,
                                         no_proxy = ".corp.example, 10.0.0.0/8,*.b.example" }, "test"))
      assert.is_nil(common.proxy_for(cfg, "https", "x.corp.example"))
      assert.is_nil(common.proxy_for(cfg, "https", "corp.example"))
      assert.is_nil(common.proxy_for(cfg, "https", "10.20.30.40"))
      assert.is_nil(common.proxy_for(cfg, "https", "c.b.example"))
      assert.is_table(common.proxy_for(cfg, "https", "11.0.0.1"))
      assert.is_table(common.proxy_for(cfg, "https", "notcorp.example"))
      -- the metadata host of GCE_METADATA_HOST too (read when gauth loads)
      local code = ([[
        package.path = %q; package.cpath = %q
        local common = require "gauth.transport.common"
        local cfg = assert(common.proxy_config({ proxy = "http://127.0.0.1:9" }, "t"))
        io.write(tostring(common.proxy_for(cfg, "http", "meta.internal.test")), " ",
                 type(common.proxy_for(cfg, "http", "other.test")))
      ]]):format(package.path, package.cpath)
      local ok, out = helpers.sh("env GCE_METADATA_HOST=meta.internal.test:8080 "
        .. q(lua_interpreter()) .. " -e " .. q(code))
      assert.is_true(ok, out)
      assert.equal("nil table", out)
    end)

    it("reaches credentials: a service account's token exchange goes through it", function()
      local from = #proxy.connects()
      fake:config({ public_keys = { [key_info.kid] = key_info.public_pem },
                    token_uri = "https://" .. GOOGLE .. "/token" })
      local creds = assert(sa.from_file(key_path, { scopes = "https://www.googleapis.com/auth/cloud-platform",
        ca_file = certs.ca_file, proxy = proxy.url, cache = token_cache.new(), retry = false }))
      local tok, expires_at, err = creds:token()
      assert.is_nil(err)
      assert.is_number(expires_at)
      assert.matches("^fake%-token%-", tok)
      local seen = connects(proxy, from)
      assert.equal(1, #seen)
      assert.equal(GOOGLE .. ":443", seen[1].target)
      assert.equal(1, #fake:requests("/token"))
    end)
  end)

  describe("the environment", function()
    it("honours https_proxy and no_proxy, and names a bad variable", function()
      local from = #proxy.connects()
      fake:script("/v1/env", { { status = 200, body = {} } })
      local direct = helpers.start_raw_listener({ host = "127.0.0.1" })
      local code = ([[
        package.path = %q; package.cpath = %q
        local curl = require "gauth.transport.curl"
        local t = assert(curl.new({ ca_file = %q, timeout = 10 }))
        local out = {}
        for _, u in ipairs({ %q, %q }) do
          local res, msg = t:request({ url = u })
          out[#out + 1] = res and tostring(res.status) or msg
        end
        io.write(table.concat(out, "\n"))
      ]]):format(package.path, package.cpath, certs.ca_file, "https://" .. GOOGLE .. "/v1/env",
                 direct.url .. "/near")
      local env = "env -u no_proxy -u NO_PROXY -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy"
      local ok, out = helpers.sh(env .. " https_proxy=" .. q(proxy.url) .. " NO_PROXY=.corp.example "
        .. q(lua_interpreter()) .. " -e " .. q(code))
      local lines = direct:request_lines()
      direct:stop()
      assert.is_true(ok, out)
      assert.equal("200\n200", out)
      assert.same({ "GET /near HTTP/1.1" }, lines)
      local seen = connects(proxy, from)
      assert.equal(1, #seen)
      assert.equal(GOOGLE .. ":443", seen[1].target)
      assert.equal(1, #fake:requests("/v1/env"))
      -- a proxy variable that does not parse fails the requests that would
      -- use it, naming the variable (and never its credentials)
      ok, out = helpers.sh(env .. " https_proxy=" .. q("socks5://u:topsecret@127.0.0.1:1") .. " "
        .. q(lua_interpreter()) .. " -e " .. q(code))
      assert.is_true(ok, out)
      local first = out:match("^[^\n]*")
      assert.matches("^gauth%.http: proxy: https_proxy: unsupported scheme socks5", first)
      assert.is_nil(out:find("topsecret", 1, true))
    end)

    it("Compute Engine's metadata reads go direct with http_proxy and https_proxy set", function()
      local from = #proxy.connects()
      local meta = helpers.start_fake({ tls = false })
      local code = ([[
        package.path = %q; package.cpath = %q
        local ce = require "gauth.compute_engine"
        local c = assert(ce.credentials({ retry = false }))
        local tok, _, err = c:token()
        local ud, umsg = c:get_universe_domain()
        io.write(tostring(tok), "\n", tostring(err), "\n", tostring(ud), "\n", tostring(umsg))
      ]]):format(package.path, package.cpath)
      local env = "env -u no_proxy -u NO_PROXY -u HTTP_PROXY -u HTTPS_PROXY -u ALL_PROXY -u all_proxy"
        .. " -u GOOGLE_APPLICATION_CREDENTIALS"
      local ok, out = helpers.sh(env .. " https_proxy=" .. q(proxy.url) .. " http_proxy=" .. q(proxy.url)
        .. " GCE_METADATA_HOST=" .. q("127.0.0.1:" .. meta.port) .. " "
        .. q(lua_interpreter()) .. " -e " .. q(code))
      local token_reads = #meta:requests("/computeMetadata/v1/instance/service-accounts/default/token")
      local universe_reads = #meta:requests("/computeMetadata/v1/universe/universe-domain")
      meta:stop()
      assert.is_true(ok, out)
      local lines = {}
      for l in (out .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
      assert.matches("^fake%-token%-", lines[1])
      assert.same({ "nil", "googleapis.com", "nil" }, { lines[2], lines[3], lines[4] })
      assert.equal(1, token_reads)
      assert.equal(1, universe_reads)
      assert.same({}, connects(proxy, from))
    end)
  end)
end)
