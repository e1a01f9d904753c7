-- Mutual TLS (issue 19): a client certificate and key on both transports
-- (libcurl: CURLOPT_SSLCERT/SSLKEY; cosockets: tcpsock:setclientcert),
-- against a loopback HTTPS server (spec/support/fake_google.py with
-- --client-ca) that REQUIRES a client certificate signed by the test CA and
-- records the subject of the one it got.
--
-- nginx runs LuaJIT: its case runs once, in the LuaJIT pass.
local helpers = require "helpers"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"

describe("mTLS", function()
  local certs, fake

  lazy_setup(function()
    certs = helpers.certs()
    fake = helpers.start_fake({ tls = true, client_ca = certs.ca_file })
  end)

  lazy_teardown(function()
    if fake then fake:stop() end
  end)

  before_each(function()
    fake:reset()
  end)

  describe("libcurl transport", function()
    local curl = require "gauth.transport.curl"

    it("sends the client certificate: the request succeeds and the server saw its subject", function()
      fake:script("/mtls", { status = 200, body = { ok = true } })
      local t = assert(curl.new({ ca_file = certs.ca_file, client_cert = certs.client_cert,
                                  client_key = certs.client_key }))
      local res, msg = t:request({ url = "https://localhost:" .. fake.port .. "/mtls" })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      assert.same({ ok = true }, cjson.decode(res.body))
      -- The same handle again: the options kept, the connection reused.
      fake:script("/mtls", { status = 200, body = { ok = 2 } })
      res = assert(t:request({ url = "https://localhost:" .. fake.port .. "/mtls" }))
      assert.equal(200, res.status)
      local recs = fake:requests("/mtls")
      assert.equal(2, #recs)
      assert.equal("gauth test client", recs[1].client_subject)
      assert.equal("gauth test client", recs[2].client_subject)
      assert.equal(recs[1].conn, recs[2].conn)
      t:close()
    end)

    it("without a client certificate: a clear TLS error, no request reaches the server", function()
      local t = assert(curl.new({ ca_file = certs.ca_file }))
      local res, msg, err = t:request({ url = "https://localhost:" .. fake.port .. "/mtls" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "http", "request")
      assert.equal("tls_client_cert", err.kind)
      assert.is_false(err.retryable)
      assert.truthy(msg:find("refused the connection because of the client certificate (none was given", 1, true))
      assert.truthy(msg:find("certificate required", 1, true))
      assert.equal(0, #fake:requests("/mtls"))
      t:close()
    end)

    it("with a certificate of another CA: a clear TLS error naming the certificate as refused", function()
      local t = assert(curl.new({ ca_file = certs.ca_file, client_cert = certs.other_client_cert,
                                  client_key = certs.other_client_key }))
      local res, msg, err = t:request({ url = "https://localhost:" .. fake.port .. "/mtls" })
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "http", "request")
      assert.equal("tls_client_cert", err.kind, msg)
      assert.truthy(msg:find("the one given is not accepted", 1, true))
      assert.truthy(msg:find("unknown ca", 1, true))
      assert.equal(0, #fake:requests("/mtls"))
      t:close()
    end)

    it("refuses a bad client certificate configuration, naming the field", function()
      local missing = certs.dir .. "/no-such.pem"
      local cases = {
        { { client_cert = missing, client_key = certs.client_key }, "client_cert",
          "client_cert: cannot read " .. missing },
        { { client_cert = certs.client_key, client_key = certs.client_key }, "client_cert",
          "holds no PEM certificate" },
        { { client_cert = certs.client_cert, client_key = certs.client_cert }, "client_key",
          "must hold exactly one PEM private key" },
        { { client_cert = certs.client_cert }, "client_key", "client_key: missing" },
        { { client_key = certs.client_key }, "client_cert", "client_cert: missing" },
      }
      for _, c in ipairs(cases) do
        local t, msg, err = curl.new(c[1])
        assert.is_nil(t)
        helpers.assert_failure(msg, err, "http", "client_cert")
        assert.equal(c[2], err.field)
        assert.equal("config", err.kind)
        assert.truthy(msg:find(c[3], 1, true), msg)
        -- Nothing of a key's content in the message.
        assert.falsy(msg:find("BEGIN", 1, true))
      end
      assert.has_error(function() curl.new({ client_cert = 1, client_key = certs.client_key }) end,
        "gauth.transport.curl: client_cert and client_key must be paths (strings)")
    end)
  end)

  if LUAJIT_PASS then
    describe("cosocket transport (nginx)", function()
      it("sends the client certificate with tcpsock:setclientcert; another CA's is refused", function()
        local srv = assert(nginx.start({
          workers = 1,
          trusted_ca = certs.ca_file,
          server = ([[
            location /mtls {
              content_by_lua_block {
                local cjson = require "cjson"
                local t = assert(require("gauth.transport.ngx").new({
                  client_cert = ngx.var.arg_cert .. ".pem", client_key = ngx.var.arg_cert .. ".key" }))
                local res, msg, err = t:request({ url = "https://localhost:%d/mtls" })
                ngx.say(cjson.encode({ status = res and res.status, body = res and res.body,
                                       msg = msg, kind = err and err.kind }))
              }
            }]]):format(fake.port),
        }))
        fake:script("/mtls", { status = 200, body = { ok = true } })
        local status, body = srv:get("/mtls?cert=" .. certs.dir .. "/client")
        local other_status, other_body = srv:get("/mtls?cert=" .. certs.dir .. "/other-client")
        local log = srv:log()
        srv:stop()
        assert.equal(200, status)
        local out = cjson.decode(body)
        assert.equal(200, out.status, body .. log)
        assert.same({ ok = true }, cjson.decode(out.body))
        local recs = fake:requests("/mtls")
        assert.equal(1, #recs)
        assert.equal("gauth test client", recs[1].client_subject)
        -- The other CA's certificate: the server ends the connection, the
        -- request fails (never a response).
        assert.equal(200, other_status)
        out = cjson.decode(other_body)
        assert.is_nil(out.status)
        assert.truthy(out.msg:find("^gauth%.http: request: TLS handshake with localhost:"), out.msg)
        assert.truthy(out.msg:find("a client certificate was sent: the server may have refused it", 1, true))
        assert.equal("tls", out.kind)
        assert.truthy(log:find("alert unknown ca", 1, true))
        assert.equal(1, #fake:requests("/mtls"))
      end)
    end)
  end
end)
