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

  it("credentials pass client_cert/client_key to their token requests (service account)", function()
    local sa = require "gauth.service_account"
    local path, info = helpers.make_service_account_file({ token_uri = fake.token_uri })
    fake:config({ public_keys = { [info.kid] = info.public_pem } })
    local creds = assert(sa.from_file(path, { ca_file = certs.ca_file, client_cert = certs.client_cert,
                                              client_key = certs.client_key, scopes = { "s" } }))
    assert.is_string((creds:token()))
    assert.equal("gauth test client", fake:requests("/token")[1].client_subject)
    -- The same without the certificate: refused by the server.
    local bare = assert(sa.from_file(path, { ca_file = certs.ca_file, scopes = { "s2" } }))
    local tok, msg, err = bare:token()
    assert.is_nil(tok)
    assert.is_string(msg)
    assert.truthy(msg:find("client certificate", 1, true), msg)
    assert.truthy(err)
    assert.equal(1, #fake:requests("/token"))
  end)

  describe("certificate configuration and the mTLS endpoint (discovery)", function()
    local discovery = require "gauth.discovery"
    local regular, dir, config_path

    -- A small Discovery document: the regular root is a fake that asks for
    -- no certificate, the mTLS root the fake that requires one.
    local function doc()
      return {
        kind = "discovery#restDescription", name = "things", version = "v1",
        rootUrl = "https://localhost:" .. regular.port .. "/",
        mtlsRootUrl = "https://localhost:" .. fake.port .. "/",
        servicePath = "things/v1/",
        resources = { things = { methods = { get = {
          id = "things.things.get", path = "things/{id}", httpMethod = "GET",
          parameters = { id = { type = "string", location = "path", required = true } },
          parameterOrder = { "id" }, response = { ["$ref"] = "Thing" } } } } },
        schemas = { Thing = { id = "Thing", type = "object", properties = { id = { type = "string" } } } },
      }
    end

    local plain  -- a transport without a client certificate, trusting the test CA

    -- A service made with the certificate makes its own transport (with
    -- ca_file); one without is given `plain`.
    local function build(env, extra, no_cert)
      local opts = { env = env, ca_file = certs.ca_file, http = no_cert and plain or nil }
      for k, v in pairs(extra or {}) do opts[k] = v end
      return discovery.build_from_document(doc(), opts)
    end

    local function get(svc)
      return svc:things():get({ id = "a" }):execute({ num_retries = 0 })
    end

    lazy_setup(function()
      regular = helpers.start_fake({ tls = true })
      plain = assert(require("gauth.transport.curl").new({ ca_file = certs.ca_file }))
      dir = helpers.tmpdir() .. "/mtls-config"
      os.execute("mkdir -p " .. helpers.shell_quote(dir))
      config_path = dir .. "/certificate_config.json"
      helpers.write_file(config_path, cjson.encode({ cert_configs = { workload = {
        cert_path = certs.client_cert, key_path = certs.client_key } } }))
    end)

    lazy_teardown(function()
      if regular then regular:stop() end
    end)

    before_each(function()
      regular:reset()
      for _, f in ipairs({ regular, fake }) do
        f:script("/things/v1/things/a", { status = 200, body = { id = "a" } })
      end
    end)

    local CERT_ON = { GOOGLE_API_USE_CLIENT_CERTIFICATE = "true" }

    it("picks the endpoint by GOOGLE_API_USE_MTLS_ENDPOINT and sends the configured certificate", function()
      local cases = {
        -- env, certificate configured, which server answers
        { {}, false, "regular" },
        { { GOOGLE_API_USE_MTLS_ENDPOINT = "auto" }, false, "regular" },
        { { GOOGLE_API_USE_MTLS_ENDPOINT = "never" }, true, "regular" },
        { {}, true, "mtls" },                                   -- auto by default
        { { GOOGLE_API_USE_MTLS_ENDPOINT = "always" }, true, "mtls" },
        { { GOOGLE_API_USE_CLIENT_CERTIFICATE = "FALSE" }, false, "regular" },
      }
      for i, c in ipairs(cases) do
        regular:reset()
        fake:reset()
        for _, f in ipairs({ regular, fake }) do
          f:script("/things/v1/things/a", { status = 200, body = { id = "a" } })
        end
        local env = { GOOGLE_API_CERTIFICATE_CONFIG = config_path }
        for k, v in pairs(c[1]) do env[k] = v end
        if c[2] then env.GOOGLE_API_USE_CLIENT_CERTIFICATE = "true" end
        local svc = assert(build(env, nil, not c[2]))
        local res, msg = get(svc)
        assert.is_nil(msg, "case " .. i)
        assert.same({ id = "a" }, res, "case " .. i)
        local on_regular, on_mtls = regular:requests("/things/v1/things/a"), fake:requests("/things/v1/things/a")
        if c[3] == "regular" then
          assert.equal(1, #on_regular, "case " .. i)
          assert.equal(0, #on_mtls, "case " .. i)
        else
          assert.equal(0, #on_regular, "case " .. i)
          assert.equal(1, #on_mtls, "case " .. i)
          assert.equal("gauth test client", on_mtls[1].client_subject, "case " .. i)
        end
      end
    end)

    it("explicit client_cert/client_key select the mTLS endpoint under auto", function()
      local svc = assert(build({}, { client_cert = certs.client_cert, client_key = certs.client_key }))
      assert.same({ id = "a" }, (get(svc)))
      assert.equal("gauth test client", fake:requests("/things/v1/things/a")[1].client_subject)
    end)

    it("always without a client certificate: the mTLS endpoint refuses, a clear TLS error", function()
      local svc = assert(build({ GOOGLE_API_USE_MTLS_ENDPOINT = "always" }, nil, true))
      local res, msg, err = get(svc)
      assert.is_nil(res)
      assert.is_string(msg)
      assert.equal("tls_client_cert", err.kind, msg)
      assert.truthy(msg:find("none was given", 1, true))
      assert.equal(0, #regular:requests("/things/v1/things/a"))
    end)

    it("refuses bad environment values and bad certificate configurations, naming the field", function()
      local function refused(env, extra, module, step, field, text)
        local svc, msg, err = build(env, extra)
        assert.is_nil(svc)
        helpers.assert_failure(msg, err, module, step)
        assert.equal(field, err.field, msg)
        assert.truthy(msg:find(text, 1, true), msg)
      end
      refused({ GOOGLE_API_USE_MTLS_ENDPOINT = "sometimes" }, nil, "mtls", "environment",
        "GOOGLE_API_USE_MTLS_ENDPOINT", "must be never, auto or always, not \"sometimes\"")
      refused({ GOOGLE_API_USE_CLIENT_CERTIFICATE = "yes" }, nil, "mtls", "environment",
        "GOOGLE_API_USE_CLIENT_CERTIFICATE", "must be true or false")
      local function config(t)
        local p = helpers.tmpname("cert-config", ".json")
        helpers.write_file(p, cjson.encode(t))
        return { GOOGLE_API_USE_CLIENT_CERTIFICATE = "true", GOOGLE_API_CERTIFICATE_CONFIG = p }
      end
      refused(config({ other = {} }), nil, "mtls", "certificate_config", "cert_configs", "\"cert_configs\"")
      refused(config({ cert_configs = {} }), nil, "mtls", "certificate_config", "workload", "\"workload\"")
      refused(config({ cert_configs = { workload = { cert_path = certs.client_cert } } }), nil,
        "mtls", "certificate_config", "key_path", "\"key_path\"")
      refused(config({ cert_configs = { workload = { cert_path = dir .. "/absent.pem",
                                                     key_path = certs.client_key } } }), nil,
        "mtls", "certificate_config", "client_cert", "cannot read")
      refused({ GOOGLE_API_USE_CLIENT_CERTIFICATE = "true", GOOGLE_API_CERTIFICATE_CONFIG = dir .. "/none.json" },
        nil, "mtls", "certificate_config", "certificate_config", "cannot read the certificate configuration")
      refused(CERT_ON, { certificate_config = config_path, universe_domain = "example.com" },
        "discovery", "build", "GOOGLE_API_USE_MTLS_ENDPOINT", "mTLS is not supported in any universe")
      -- gcloud's default location absent (HOME without it): no certificate, the regular endpoint.
      local svc = assert(build({ GOOGLE_API_USE_CLIENT_CERTIFICATE = "true", HOME = dir }, nil, true))
      assert.same({ id = "a" }, (get(svc)))
      assert.equal(1, #regular:requests("/things/v1/things/a"))
    end)
  end)

  describe("gauth.mtls", function()
    local mtls = require "gauth.mtls"

    it("reads the environment as Google's libraries do", function()
      assert.is_true(mtls.use_client_certificate({ env = { GOOGLE_API_USE_CLIENT_CERTIFICATE = "True" } }))
      assert.is_false(mtls.use_client_certificate({ env = {} }))
      local v, msg, err = mtls.use_client_certificate({ env = { GOOGLE_API_USE_CLIENT_CERTIFICATE = "1" } })
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "mtls", "environment")
      assert.equal("GOOGLE_API_USE_CLIENT_CERTIFICATE", err.field)
      assert.equal("auto", mtls.endpoint_mode({ env = {} }))
      assert.equal("never", mtls.endpoint_mode({ env = { GOOGLE_API_USE_MTLS_ENDPOINT = "never" } }))
      v, msg, err = mtls.endpoint_mode({ env = { GOOGLE_API_USE_MTLS_ENDPOINT = "Always" } })
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "mtls", "environment")
      assert.equal("GOOGLE_API_USE_MTLS_ENDPOINT", err.field)
      assert.same({ "https://m/", true }, { mtls.select_endpoint("https://r/", "https://m/", true, { env = {} }) })
      assert.same({ "https://r/", false }, { mtls.select_endpoint("https://r/", "https://m/", false, { env = {} }) })
      local always = { env = { GOOGLE_API_USE_MTLS_ENDPOINT = "always" } }
      assert.same({ "https://r/", false }, { mtls.select_endpoint("https://r/", nil, true, always) })
      v, msg, err = mtls.select_endpoint("https://r/", "https://m/", true,
                                         { env = { GOOGLE_API_USE_MTLS_ENDPOINT = "x" } })
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "mtls", "environment")
    end)

    it("reads certificate_config.json and the client certificate it names", function()
      local p = helpers.tmpname("mtls-config", ".json")
      helpers.write_file(p, cjson.encode({ cert_configs = { workload = {
        cert_path = certs.client_cert, key_path = certs.client_key } } }))
      local cfg = assert(mtls.certificate_config(p))
      assert.same({ cert_path = certs.client_cert, key_path = certs.client_key, path = p }, cfg)
      assert.same(cfg, mtls.certificate_config(nil, { env = { GOOGLE_API_CERTIFICATE_CONFIG = p } }))
      assert.is_false(mtls.certificate_config(nil, { env = { HOME = certs.dir } }))
      local v, msg, err = mtls.certificate_config(certs.dir .. "/absent.json")
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "mtls", "certificate_config")
      assert.equal("certificate_config", err.field)
      assert.same({ client_cert = certs.client_cert, client_key = certs.client_key },
                  mtls.client_cert({ env = { GOOGLE_API_USE_CLIENT_CERTIFICATE = "true",
                                             GOOGLE_API_CERTIFICATE_CONFIG = p } }))
      assert.is_false(mtls.client_cert({ env = { GOOGLE_API_CERTIFICATE_CONFIG = p } }))
      v, msg, err = mtls.client_cert({ client_cert = certs.client_cert })
      assert.is_nil(v)
      helpers.assert_failure(msg, err, "http", "client_cert")
      assert.equal("client_key", err.field)
    end)
  end)

  describe("external_account x509 (certificate) source", function()
    local ea = require "gauth.external_account"
    local AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/x509"
    local MTLS = "urn:ietf:params:oauth:token-type:mtls"
    local config_path

    local function info(cert, extra)
      local t = { type = "external_account", audience = AUD, subject_token_type = MTLS,
                  token_url = "https://localhost:" .. fake.port .. "/v1/token",
                  credential_source = { certificate = cert } }
      for k, v in pairs(extra or {}) do t[k] = v end
      return t
    end

    local function judge(token, pems)
      local tf = helpers.tmpname("x509-token", ".json")
      helpers.write_file(tf, token)
      local args = { helpers.python, helpers.support_dir .. "/x509_judge.py", tf }
      for _, p in ipairs(pems) do args[#args + 1] = p end
      local quoted = {}
      for i, a in ipairs(args) do quoted[i] = helpers.shell_quote(a) end
      local ok, out = helpers.sh(table.concat(quoted, " "))
      assert(ok, out)
      return cjson.decode(out)
    end

    lazy_setup(function()
      config_path = helpers.tmpname("x509-cert-config", ".json")
      helpers.write_file(config_path, cjson.encode({ cert_configs = { workload = {
        cert_path = certs.client_cert, key_path = certs.client_key } } }))
    end)

    it("exchanges the certificate chain over mTLS at STS; the subject token judged by python cryptography", function()
      local creds = assert(ea.from_info(info({ certificate_config_location = config_path,
                                               trust_chain_path = certs.ca_file }),
                                        { ca_file = certs.ca_file }))
      local tok, exp = creds:token()
      assert.is_string(tok)
      assert.is_number(exp)
      local recs = fake:requests("/v1/token")
      assert.equal(1, #recs)
      local r = recs[1]
      assert.equal("gauth test client", r.client_subject)
      assert.equal("urn:ietf:params:oauth:grant-type:token-exchange", r.form.grant_type)
      assert.equal(MTLS, r.form.subject_token_type)
      assert.equal(AUD, r.form.audience)
      assert.equal("urn:ietf:params:oauth:token-type:access_token", r.form.requested_token_type)
      assert.truthy(r.headers["x-goog-api-client"]:find("source/x509", 1, true))
      local v = judge(r.form.subject_token, { certs.client_cert, certs.ca_file })
      assert.equal(2, v.count)
      assert.same({ true, true }, v.match)
      assert.equal("CN=gauth test client", v.subjects[1])
      assert.equal("CN=gauth test CA", v.subjects[2])
      assert.is_true(v.spacing_as_json_dumps)
      -- The leaf first in the trust chain file is not repeated; the default
      -- configuration (GOOGLE_API_CERTIFICATE_CONFIG) and no trust chain.
      local both = helpers.tmpname("x509-chain", ".pem")
      helpers.write_file(both, helpers.read_file(certs.client_cert) .. helpers.read_file(certs.ca_file))
      local default_env = { GOOGLE_API_CERTIFICATE_CONFIG = config_path }
      local c2 = assert(ea.from_info(info({ use_default_certificate_config = true, trust_chain_path = both }),
                                     { ca_file = certs.ca_file, env = default_env }))
      assert.is_string((c2:subject_token()))
      v = judge(assert(c2:subject_token()), { certs.client_cert, certs.ca_file })
      assert.same({ true, true }, v.match)
      local c3 = assert(ea.from_info(info({ use_default_certificate_config = "true" }),
                                     { ca_file = certs.ca_file, env = default_env }))
      assert.is_string((c3:token()))
      v = judge(fake:requests("/v1/token")[2].form.subject_token, { certs.client_cert })
      assert.equal(1, v.count)
      assert.same({ true }, v.match)
    end)

    it("defaults token_url to STS's mTLS host in the credentials' universe", function()
      local t = info({ certificate_config_location = config_path })
      t.token_url = nil
      assert.equal("https://sts.mtls.googleapis.com/v1/token", assert(ea.from_info(t)).token_url)
      t.universe_domain = "example.com"
      assert.equal("https://sts.mtls.example.com/v1/token", assert(ea.from_info(t)).token_url)
    end)

    it("refuses malformed certificate sources, naming the field", function()
      local cases = {
        { "x", "credential_source.certificate", "must be an object" },
        { {}, "credential_source.certificate.use_default_certificate_config", "must be true when no" },
        { { use_default_certificate_config = true, certificate_config_location = config_path },
          "credential_source.certificate.certificate_config_location", "cannot be given with" },
        { { use_default_certificate_config = "maybe" },
          "credential_source.certificate.use_default_certificate_config", "must be true or false" },
      }
      for _, c in ipairs(cases) do
        local creds, msg, err = ea.from_info(info(c[1]))
        assert.is_nil(creds)
        helpers.assert_failure(msg, err, "external_account", "key file")
        assert.equal(c[2], err.field, msg)
        assert.truthy(msg:find(c[3], 1, true), msg)
      end
      local two = info({ certificate_config_location = config_path })
      two.credential_source.file = "/x"
      local creds, msg, err = ea.from_info(two)
      assert.is_nil(creds)
      helpers.assert_failure(msg, err, "external_account", "key file")
      assert.truthy(msg:find("more than one source (file, certificate)", 1, true), msg)
    end)

    it("fails a refresh cleanly: missing files, a leaf further down the chain, a refused certificate", function()
      local function fails(cert, opts, step, field, text)
        local creds = assert(ea.from_info(info(cert), opts or { ca_file = certs.ca_file }))
        local tok, msg, err = creds:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err, "external_account", step)
        if field then assert.equal(field, err.field, msg) end
        assert.truthy(msg:find(text, 1, true), msg)
        return err
      end
      fails({ certificate_config_location = certs.dir .. "/none.json" }, nil, "certificate",
            "certificate_config", "cannot read the certificate configuration")
      fails({ use_default_certificate_config = true }, { ca_file = certs.ca_file, env = { HOME = certs.dir } },
            "certificate", "certificate_config", "no certificate configuration")
      fails({ certificate_config_location = config_path, trust_chain_path = certs.dir .. "/none.pem" }, nil,
            "certificate", "trust_chain_path", "no such file")
      local later = helpers.tmpname("x509-chain", ".pem")
      helpers.write_file(later, helpers.read_file(certs.ca_file) .. helpers.read_file(certs.client_cert))
      fails({ certificate_config_location = config_path, trust_chain_path = later }, nil,
            "certificate", "trust_chain_path", "the leaf certificate must be at the top")
      local other = helpers.tmpname("x509-other-config", ".json")
      helpers.write_file(other, cjson.encode({ cert_configs = { workload = {
        cert_path = certs.other_client_cert, key_path = certs.other_client_key } } }))
      local err = fails({ certificate_config_location = other }, nil, "STS", nil, "client certificate")
      assert.equal("tls_client_cert", err.kind)
      assert.equal(0, #fake:requests("/v1/token"))
    end)
  end)

  if LUAJIT_PASS then
    describe("cosocket transport (nginx)", function()
      it("sends the client certificate with tcpsock:setclientcert; another CA's is refused; x509 federation", function()
        local cfg = helpers.tmpname("ngx-cert-config", ".json")
        helpers.write_file(cfg, cjson.encode({ cert_configs = { workload = {
          cert_path = certs.client_cert, key_path = certs.client_key } } }))
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
            }
            location /x509 {
              content_by_lua_block {
                local creds = assert(require("gauth.external_account").from_info({
                  type = "external_account", subject_token_type = "urn:ietf:params:oauth:token-type:mtls",
                  audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/x",
                  token_url = "https://localhost:%d/v1/token",
                  credential_source = { certificate = { certificate_config_location = "%s" } } }))
                local tok, msg = creds:token()
                ngx.say(tok and "token" or msg)
              }
            }]]):format(fake.port, fake.port, cfg),
        }))
        fake:script("/mtls", { status = 200, body = { ok = true } })
        local status, body = srv:get("/mtls?cert=" .. certs.dir .. "/client")
        local other_status, other_body = srv:get("/mtls?cert=" .. certs.dir .. "/other-client")
        local x509_status, x509_body = srv:get("/x509")
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
        -- X.509 federation from a worker: STS over cosockets with the certificate.
        assert.equal(200, x509_status)
        assert.equal("token\n", x509_body, log)
        local sts = fake:requests("/v1/token")
        assert.equal(1, #sts)
        assert.equal("gauth test client", sts[1].client_subject)
        assert.equal(1, #fake:requests("/mtls"))
      end)
    end)
  end
end)
