-- Specs of the test harness itself: spec/helpers.lua, spec/support/mkcerts.sh,
-- spec/support/fake_google.py. Clients here are the curl CLI and luasocket,
-- and JWTs are made and judged by PyJWT, so nothing depends on gauth's code.

local helpers = require "helpers"
local cjson = require "cjson.safe"

local JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
local TIME_WINDOW = "Invalid JWT: Token must be a short-lived token (60 minutes)"
  .. " and in a reasonable timeframe. Check your iat and exp values in the JWT"
  .. " claim."

local function get(fake, path, headers, extra)
  return helpers.curl({ url = fake.url .. path, headers = headers,
    ca_file = fake.ca_file, extra = extra })
end

local function post_form(fake, path, form)
  local parts = {}
  for k, v in pairs(form) do
    parts[#parts + 1] = helpers.urlencode(k) .. "=" .. helpers.urlencode(v)
  end
  table.sort(parts)
  return helpers.curl({ url = fake.url .. path, method = "POST",
    body = table.concat(parts, "&"), ca_file = fake.ca_file,
    headers = { ["Content-Type"] = "application/x-www-form-urlencoded" } })
end

local function json(res)
  return assert(cjson.decode(res.body))
end

describe("helpers", function()
  it("keeps one temp dir and one PKI per run", function()
    local dir = helpers.tmpdir()
    assert.equal(dir, helpers.tmpdir())
    assert.matches("/gauth%-spec%.", dir)
    local c = helpers.certs()
    assert.equal(c, helpers.certs())
    for _, k in ipairs({ "ca_file", "server_cert", "server_key",
      "other_ca_file", "other_server_cert", "other_server_key",
      "wronghost_cert", "wronghost_key" }) do
      assert.truthy(helpers.read_file(c[k]), k)
    end
    local ok, out = helpers.sh("openssl verify -CAfile " .. c.ca_file .. " "
      .. c.server_cert)
    assert.is_true(ok, out)
    ok = helpers.sh("openssl verify -CAfile " .. c.ca_file .. " "
      .. c.other_server_cert)
    assert.is_false(ok)
  end)

  it("mkcerts.sh does nothing when the PKI is there", function()
    local c = helpers.certs()
    local before = helpers.read_file(c.server_cert)
    assert.is_true((helpers.sh(helpers.support_dir .. "/mkcerts.sh " .. c.dir)))
    assert.equal(before, helpers.read_file(c.server_cert))
  end)

  it("makes RSA and EC keys in the usual PEM forms", function()
    local rsa = helpers.make_rsa_key()
    assert.matches("^%-%-%-%-%-BEGIN PRIVATE KEY%-%-%-%-%-", rsa.private_pem)
    assert.matches("^%-%-%-%-%-BEGIN PUBLIC KEY%-%-%-%-%-", rsa.public_pem)
    assert.equal("RS256", rsa.alg)
    assert.equal(rsa.private_pem, helpers.read_file(rsa.path))
    local pkcs1 = helpers.make_rsa_key({ format = "pkcs1", bits = 1024 })
    assert.matches("BEGIN RSA PRIVATE KEY", pkcs1.private_pem)
    local ec = helpers.make_ec_key({ cert = true })
    assert.matches("BEGIN PRIVATE KEY", ec.private_pem)
    assert.matches("BEGIN CERTIFICATE", ec.cert_pem)
    assert.equal("ES256", ec.alg)
    assert.matches("BEGIN EC PRIVATE KEY",
      helpers.make_ec_key({ format = "sec1" }).private_pem)
  end)

  it("writes service-account files shaped like Google's", function()
    local key = helpers.make_rsa_key()
    local path, info = helpers.make_service_account_file({ key = key,
      token_uri = "https://127.0.0.1:1/token", client_email = "a@b.iam.gserviceaccount.com" })
    local data = assert(cjson.decode(helpers.read_file(path)))
    assert.equal("service_account", data.type)
    assert.equal(key.private_pem, data.private_key)
    assert.equal(info.kid, data.private_key_id)
    assert.matches("^%x+$", info.kid)
    assert.equal("a@b.iam.gserviceaccount.com", data.client_email)
    assert.equal("https://127.0.0.1:1/token", data.token_uri)
    assert.matches("^%d+$", data.client_id)
    assert.equal(key.public_pem, info.public_pem)
    assert.matches("x509/a%%40b%.iam", data.client_x509_cert_url)
    -- The file is in Google's field order, private key escaped on one line.
    local text = helpers.read_file(path)
    assert.matches('^{\n  "type": "service_account",\n  "project_id"', text)
    local p2 = helpers.make_service_account_file({ key = key,
      omit = { "private_key" }, extra = { type = "weird" } })
    local d2 = cjson.decode(helpers.read_file(p2))
    assert.is_nil(d2.private_key)
    assert.equal("weird", d2.type)
    local p3, d3 = helpers.make_authorized_user_file({ refresh_token = "rt" })
    assert.same(d3, cjson.decode(helpers.read_file(p3)))
  end)

  it("has PyJWT judge tokens: success and each failure", function()
    local rsa, ec = helpers.make_rsa_key(), helpers.make_ec_key()
    local now = os.time()
    local tok = helpers.pyjwt_encode({ iss = "me", aud = "you", iat = now,
      exp = now + 60 }, rsa.private_pem, { kid = "k1" })
    local claims, header = helpers.pyjwt_verify(tok, rsa.public_pem,
      { audience = "you", issuer = "me" })
    assert.equal("me", claims.iss)
    assert.same({ alg = "RS256", typ = "JWT", kid = "k1" }, header)

    local c2, err = helpers.pyjwt_verify(tok, ec.public_pem)
    assert.is_nil(c2)
    assert.matches("Error", err)
    c2, err = helpers.pyjwt_verify(tok, rsa.public_pem, { audience = "other" })
    assert.is_nil(c2)
    assert.matches("^InvalidAudienceError", err)
    local old = helpers.pyjwt_encode({ iat = now - 200, exp = now - 100 },
      rsa.private_pem)
    c2, err = helpers.pyjwt_verify(old, rsa.public_pem)
    assert.is_nil(c2)
    assert.matches("^ExpiredSignatureError", err)
    assert.truthy(helpers.pyjwt_verify(old, rsa.public_pem,
      { verify_exp = false }))

    local etok = helpers.pyjwt_encode({ a = 1 }, ec.private_pem)
    local eh = helpers.jwt_parts(etok)
    assert.equal("ES256", eh.alg)
    assert.same({ a = 1 }, (helpers.pyjwt_verify(etok, ec.public_pem)))
    -- A tampered payload fails.
    local h, _, s = etok:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    local forged = h .. "." .. helpers.b64encode('{"a":2}'):gsub("=", "")
      :gsub("+", "-"):gsub("/", "_") .. "." .. s
    c2, err = helpers.pyjwt_verify(forged, ec.public_pem)
    assert.is_nil(c2)
    assert.matches("InvalidSignatureError", err)
  end)

  it("round-trips base64 over every byte", function()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    local s = table.concat(all)
    for n = 0, 3 do
      local part = s:sub(1, #s - n)
      assert.equal(part, helpers.b64decode(helpers.b64encode(part)))
    end
    assert.equal("hi?", helpers.b64decode("aGk_"))
  end)

  it("finds the Discovery fixtures in the repository, and raises for one that is not there", function()
    assert.error_matches(function() helpers.discovery("no-such-api.v0.json") end,
      "Discovery fixture no%-such%-api%.v0%.json not found")
    local drive = helpers.discovery("drive.v3.json")
    assert.equal(helpers.discovery_dir() .. "/drive.v3.json", drive)
    assert.equal("drive", cjson.decode(helpers.read_file(drive)).name)
    local names = helpers.discovery_names()
    assert.equal(17, #names)
    for _, name in ipairs(names) do
      assert.equal("discovery#restDescription",
        cjson.decode((helpers.discovery_doc(name))).kind, name)
    end
  end)
end)

describe("fake_google over TLS", function()
  local fake

  lazy_setup(function()
    fake = helpers.start_fake()
  end)

  teardown(function()
    if fake then fake:stop() end
  end)

  before_each(function()
    fake:reset()
  end)

  it("serves HTTPS with a cert the test CA vouches for", function()
    assert.matches("^https://127%.0%.0%.1:%d+$", fake.url)
    assert.equal(fake.url .. "/token", fake.token_uri)
    local res = assert(get(fake, "/computeMetadata/v1/project/project-id",
      { ["Metadata-Flavor"] = "Google" }))
    assert.equal(200, res.status)
    assert.equal("fake-project", res.body)
    -- And by name: the certificate carries DNS:localhost.
    res = assert(helpers.curl({ ca_file = fake.ca_file,
      url = "https://localhost:" .. fake.port .. "/" }))
    assert.equal(200, res.status)
  end)

  it("is refused by a client trusting another CA", function()
    local res, err, code = helpers.curl({ url = fake.url .. "/",
      ca_file = helpers.certs().other_ca_file })
    assert.is_nil(res)
    assert.equal(60, code)
    assert.matches("curl: %(60%)", err)
    -- The fake survives a failed handshake.
    assert.equal(200, get(fake, "/").status)
  end)

  it("answers unknown paths with a Google-shaped 404 and a Date", function()
    local res = assert(get(fake, "/nope/x?y=1"))
    assert.equal(404, res.status)
    local body = json(res)
    assert.equal(404, body.error.code)
    assert.equal("NOT_FOUND", body.error.status)
    assert.matches("/nope/x", body.error.message)
    assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$",
      res.headers.date)
    assert.equal(tostring(#res.body), res.headers["content-length"])
  end)

  it("shifts its Date header by clock_offset", function()
    fake:config({ clock_offset = 86400 * 400 })
    local res = assert(get(fake, "/"))
    local year = tonumber(res.headers.date:match(" (%d%d%d%d) "))
    assert.is_true(year > tonumber(os.date("!%Y")))
  end)

  it("stands its clock still at clock (the Date header says that time)", function()
    fake:config({ clock = 1700000000 })
    assert.equal("Tue, 14 Nov 2023 22:13:20 GMT", assert(get(fake, "/")).headers.date)
    fake:config({ clock = cjson.null })
    local year = tonumber(assert(get(fake, "/")).headers.date:match(" (%d%d%d%d) "))
    assert.equal(tonumber(os.date("!%Y")), year)
  end)

  it("plays scripted responses in order, then the default handler", function()
    fake:script("/token", {
      { status = 503, headers = { ["Retry-After"] = "1" },
        body = { error = { code = 503, status = "UNAVAILABLE" } } },
      { status = 500, body = "\0binary\255" },
    })
    local r1 = assert(post_form(fake, "/token?x=1", { grant_type = "nope" }))
    assert.equal(503, r1.status)
    assert.equal("1", r1.headers["retry-after"])
    assert.matches("^application/json", r1.headers["content-type"])
    assert.equal("UNAVAILABLE", json(r1).error.status)
    local r2 = assert(post_form(fake, "/token", { grant_type = "nope" }))
    assert.equal(500, r2.status)
    assert.equal("\0binary\255", r2.body)
    local r3 = assert(post_form(fake, "/token", { grant_type = "nope" }))
    assert.equal(400, r3.status)
    assert.same({ error = "unsupported_grant_type",
      error_description = "Invalid grant_type: nope" }, json(r3))
    assert.same({}, fake:pending_scripts())
  end)

  it("records every request, in order, byte for byte", function()
    local body = "a=1&b=%20x&bin=\0\255"
    assert(helpers.curl({ url = fake.url .. "/upload/x?uploadType=media&a=%2F",
      method = "PUT", body = body, ca_file = fake.ca_file,
      headers = { ["X-Custom-Header"] = "V", ["Content-Type"] = "application/octet-stream" } }))
    assert(post_form(fake, "/token", { grant_type = "g", scope = "a b" }))
    local all = fake:requests()
    assert.equal(2, #all)
    local r = all[1]
    assert.equal("PUT", r.method)
    assert.equal("/upload/x", r.path)
    assert.equal("uploadType=media&a=%2F", r.query)
    assert.equal("/", r.query_params.a)
    assert.equal("V", r.headers["x-custom-header"])
    assert.is_nil(r.headers["X-Custom-Header"])
    assert.equal(body, r.body)
    assert.equal(helpers.b64encode(body), r.body_b64)
    local t = fake:requests("/token")
    assert.equal(1, #t)
    assert.same({ grant_type = "g", scope = "a b" }, t[1].form)
    assert.equal(1, #fake:requests({ method = "PUT" }))
    assert.equal(2, #fake:requests({ pattern = "^/" }))
    assert.equal(0, #fake:requests(function(x) return x.method == "GET" end))
  end)

  it("keeps connections alive", function()
    assert(helpers.curl({ url = fake.url .. "/a", ca_file = fake.ca_file,
      extra = { "-o", "/dev/null", fake.url .. "/b" } }))
    local all = fake:requests()
    assert.equal(2, #all)
    assert.equal(all[1].conn, all[2].conn)
  end)

  it("delays, hangs, drops and truncates on request", function()
    fake:script("/slow", { { delay = 0.3, status = 200, body = "late" } })
    local t0 = helpers.now()
    local res = assert(get(fake, "/slow"))
    assert.equal("late", res.body)
    assert.is_true(helpers.now() - t0 >= 0.3)

    fake:script("/hang", { { hang = true } })
    t0 = helpers.now()
    local _, err, code = helpers.curl({ url = fake.url .. "/hang",
      ca_file = fake.ca_file, timeout = 0.5 })
    assert.equal(28, code, err)
    assert.is_true(helpers.now() - t0 < 5)  -- hang guard: ten times the timeout

    fake:script("/drop", { { drop = true } })
    _, err, code = get(fake, "/drop")
    assert.equal(52, code, err)   -- empty reply from server

    fake:script("/cut", { { status = 200, body = ("x"):rep(100), truncate = true } })
    _, err, code = get(fake, "/cut")
    assert.equal(18, code, err)   -- partial file

    -- A delay without a status lets the default handler answer.
    fake:script("/computeMetadata/v1/project/project-id", { { delay = 0.2 } })
    t0 = helpers.now()
    res = assert(get(fake, "/computeMetadata/v1/project/project-id",
      { ["Metadata-Flavor"] = "Google" }))
    assert.equal("fake-project", res.body)
    assert.is_true(helpers.now() - t0 >= 0.2)
    -- Still alive after all that.
    assert.equal(200, get(fake, "/").status)
  end)

  it("refuses scripts it could not play", function()
    assert.has_error(function() fake:script("/x", { { status = "abc" } }) end,
      "helpers: control POST /script: HTTP 400: {\"error\": \"status must be a number in 100..599: 'abc'\"}")
    assert.has_error(function() fake:script("/x", { { status = 200, dealy = 1 } }) end,
      "helpers: control POST /script: HTTP 400: {\"error\": \"unknown script fields: dealy\"}")
    assert.same({}, fake:pending_scripts())
  end)

  it("serves its signing keys and tokeninfo", function()
    local cfg = fake:get_config()
    local jwks = json(get(fake, "/oauth2/v3/certs"))
    assert.equal(cfg.server_kid, jwks.keys[1].kid)
    local certs = json(get(fake, "/oauth2/v1/certs"))
    assert.equal(cfg.server_cert_pem, certs[cfg.server_kid])
    local tok = json(get(fake, "/computeMetadata/v1/instance/service-accounts/default/token",
      { ["Metadata-Flavor"] = "Google" })).access_token
    local info = json(get(fake, "/tokeninfo?access_token=" .. tok))
    assert.equal("https://www.googleapis.com/auth/cloud-platform", info.scope)
    assert.equal(400, get(fake, "/tokeninfo?access_token=nope").status)
  end)

  it("resets records, scripts and config", function()
    fake:config({ access_token = "other", metadata = { ["project/project-id"] = "p2" } })
    fake:script("/x", { { status = 418 } })
    assert(get(fake, "/"))
    fake:reset()
    assert.same({}, fake:requests())
    assert.same({}, fake:pending_scripts())
    local cfg = fake:get_config()
    assert.equal("fake-token", cfg.access_token)
    assert.same({}, cfg.metadata)
    assert.same({ fake.token_uri }, cfg.token_uri)
    assert.equal(404, get(fake, "/x").status)
  end)

  describe("metadata server", function()
    local FLAVOR = { ["Metadata-Flavor"] = "Google" }
    local SA = "/computeMetadata/v1/instance/service-accounts/default/"

    it("refuses requests without Metadata-Flavor: Google", function()
      local res = assert(get(fake, "/computeMetadata/v1/project/project-id"))
      assert.equal(403, res.status)
      assert.equal("Google", res.headers["metadata-flavor"])
      res = assert(get(fake, "/computeMetadata/v1/project/project-id",
        { ["Metadata-Flavor"] = "google-ish" }))
      assert.equal(403, res.status)
    end)

    it("answers detection pings with the flavor header", function()
      for _, p in ipairs({ "/", "/computeMetadata/v1/" }) do
        local res = assert(get(fake, p, FLAVOR))
        assert.equal(200, res.status)
        assert.equal("Google", res.headers["metadata-flavor"])
      end
    end)

    it("issues access tokens, with the scopes asked for", function()
      local res = assert(get(fake, SA .. "token?scopes=s1,s2", FLAVOR))
      assert.equal(200, res.status)
      assert.equal("Google", res.headers["metadata-flavor"])
      assert.same({ access_token = "fake-token-1", expires_in = 3599,
        token_type = "Bearer" }, json(res))
      assert.equal("s1 s2", fake:tokens()["fake-token-1"].scope)
      assert.equal("scopes=s1,s2", fake:requests()[1].query)
    end)

    it("issues ID tokens signed by the fake's key", function()
      local res = assert(get(fake, SA .. "identity?audience=https%3A%2F%2Fsvc&format=full",
        FLAVOR))
      assert.equal(200, res.status)
      local cfg = fake:get_config()
      local claims, header = helpers.pyjwt_verify(res.body, cfg.server_public_pem,
        { audience = "https://svc" })
      assert.truthy(claims, header)
      assert.equal(cfg.server_kid, header.kid)
      assert.equal("fake-sa@fake-project.iam.gserviceaccount.com", claims.email)
      assert.equal("fake-project", claims.google.compute_engine.project_id)
      res = assert(get(fake, SA .. "identity", FLAVOR))
      assert.equal(400, res.status)
    end)

    it("serves email, project id and configured overrides", function()
      assert.equal("fake-sa@fake-project.iam.gserviceaccount.com",
        get(fake, SA .. "email", FLAVOR).body)
      fake:config({ metadata = { ["project/project-id"] = "my-project",
        ["instance/zone"] = cjson.null } })
      assert.equal("my-project",
        get(fake, "/computeMetadata/v1/project/project-id", FLAVOR).body)
      assert.equal(404, get(fake, "/computeMetadata/v1/instance/zone", FLAVOR).status)
      fake:config({ metadata = { [SA:sub(#"/computeMetadata/v1/" + 1) .. "token"] =
        { access_token = "fixed", expires_in = 10, token_type = "Bearer" } } })
      assert.equal("fixed", json(get(fake, SA .. "token", FLAVOR)).access_token)
      local rec = json(get(fake, SA .. "?recursive=true", FLAVOR))
      assert.equal("fake-sa@fake-project.iam.gserviceaccount.com", rec.email)
      assert.equal(404, get(fake, "/computeMetadata/v1/instance/service-accounts/"
        .. "nobody@x/token", FLAVOR).status)
    end)
  end)

  describe("token endpoint", function()
    local key, ec_key, other_key, sa

    lazy_setup(function()
      key = helpers.make_rsa_key()
      ec_key = helpers.make_ec_key()
      other_key = helpers.make_rsa_key()
      local _
      _, sa = helpers.make_service_account_file({ key = key })
    end)

    before_each(function()
      fake:config({ public_keys = { [sa.kid] = key.public_pem, ec = ec_key.public_pem } })
    end)

    local function assertion(claims, signer, kid)
      local now = os.time()
      local c = { iss = sa.client_email, aud = fake.token_uri, iat = now,
        exp = now + 3600, scope = "https://www.googleapis.com/auth/cloud-platform" }
      for k, v in pairs(claims or {}) do c[k] = v end
      for k, v in pairs(c) do if v == false then c[k] = nil end end
      return helpers.pyjwt_encode(c, (signer or key).private_pem,
        { kid = kid or sa.kid })
    end

    local function exchange(a)
      return assert(post_form(fake, "/token", { grant_type = JWT_BEARER, assertion = a }))
    end

    it("accepts an RS256 assertion and issues numbered tokens", function()
      local res = exchange(assertion())
      assert.equal(200, res.status)
      assert.same({ access_token = "fake-token-1", expires_in = 3599,
        token_type = "Bearer" }, json(res))
      fake:config({ access_token = "ya29.x", expires_in = "3599" })
      res = exchange(assertion())
      assert.same({ access_token = "ya29.x-2", expires_in = "3599",
        token_type = "Bearer" }, json(res))
      local info = fake:tokens()["ya29.x-2"]
      assert.equal(sa.client_email, info.iss)
      assert.equal("https://www.googleapis.com/auth/cloud-platform", info.scope)
    end)

    it("accepts an ES256 assertion, and unknown kids by trying every key", function()
      assert.equal(200, exchange(assertion(nil, ec_key, "ec")).status)
      assert.equal(200, exchange(assertion(nil, ec_key, "unknown-kid")).status)
    end)

    it("refuses a bad signature", function()
      local res = exchange(assertion(nil, other_key))
      assert.equal(400, res.status)
      assert.same({ error = "invalid_grant",
        error_description = "Invalid JWT Signature." }, json(res))
      assert.equal(400, exchange("not.a.jwt").status)
    end)

    it("refuses a wrong audience", function()
      local res = exchange(assertion({ aud = "https://oauth2.googleapis.com/token" }))
      assert.equal(400, res.status)
      assert.equal("invalid_grant", json(res).error)
      assert.matches("audience", json(res).error_description)
      fake:config({ token_uri = "https://oauth2.googleapis.com/token" })
      assert.equal(200, exchange(
        assertion({ aud = "https://oauth2.googleapis.com/token" })).status)
    end)

    it("refuses expired, future and long-lived assertions", function()
      local now = os.time()
      for _, c in ipairs({
        { iat = now - 7200, exp = now - 3600 },
        { iat = now + 600, exp = now + 4200 },
        { iat = now, exp = now + 3601 },
        { iat = false },
      }) do
        local res = exchange(assertion(c))
        assert.equal(400, res.status)
        assert.same({ error = "invalid_grant", error_description = TIME_WINDOW },
          json(res))
      end
    end)

    it("judges time by its own clock (clock_offset)", function()
      fake:config({ clock_offset = 7200 })
      assert.equal(TIME_WINDOW, json(exchange(assertion())).error_description)
      local now = os.time() + 7200
      assert.equal(200, exchange(assertion({ iat = now, exp = now + 3600 })).status)
    end)

    it("wants iss and a scope, like Google", function()
      assert.equal("invalid_grant", json(exchange(assertion({ iss = false }))).error)
      local res = exchange(assertion({ scope = false }))
      assert.equal(400, res.status)
      assert.equal("invalid_scope", json(res).error)
    end)

    it("answers target_audience with an ID token", function()
      local res = exchange(assertion({ scope = false, target_audience = "https://run.app" }))
      assert.equal(200, res.status)
      local body = json(res)
      assert.is_nil(body.access_token)
      local claims = helpers.pyjwt_verify(body.id_token,
        fake:get_config().server_public_pem, { audience = "https://run.app" })
      assert.truthy(claims)
      assert.equal(sa.client_email, claims.email)
    end)

    it("refuses requests without a usable grant", function()
      local res = assert(post_form(fake, "/token", { grant_type = JWT_BEARER }))
      assert.same({ error = "invalid_request",
        error_description = "Missing required parameter: assertion" }, json(res))
      res = assert(post_form(fake, "/token", { assertion = "x" }))
      assert.equal("unsupported_grant_type", json(res).error)
      assert.equal(405, get(fake, "/token").status)
    end)

    it("refreshes user credentials", function()
      fake:config({ refresh_tokens = { rt1 = { client_id = "cid", client_secret = "sec" } } })
      local ok = assert(post_form(fake, "/token", { grant_type = "refresh_token",
        refresh_token = "rt1", client_id = "cid", client_secret = "sec" }))
      assert.equal(200, ok.status)
      assert.equal("fake-token-1", json(ok).access_token)
      local bad = assert(post_form(fake, "/token", { grant_type = "refresh_token",
        refresh_token = "rt1", client_id = "cid", client_secret = "nope" }))
      assert.equal(401, bad.status)
      assert.equal("invalid_client", json(bad).error)
      bad = assert(post_form(fake, "/token", { grant_type = "refresh_token",
        refresh_token = "rt2", client_id = "cid", client_secret = "sec" }))
      assert.equal(400, bad.status)
      assert.equal("invalid_grant", json(bad).error)
      -- Client credentials may come as HTTP Basic instead.
      local basic = assert(helpers.curl({ url = fake.token_uri, method = "POST",
        ca_file = fake.ca_file, body = "grant_type=refresh_token&refresh_token=rt1",
        headers = { Authorization = "Basic " .. helpers.b64encode("cid:sec"),
          ["Content-Type"] = "application/x-www-form-urlencoded" } }))
      assert.equal(200, basic.status)
    end)

    it("plays IAM Credentials for tokens it issued", function()
      local tok = json(exchange(assertion())).access_token
      local path = "/v1/projects/-/serviceAccounts/target%40p.iam.gserviceaccount.com"
        .. ":generateAccessToken"
      local res = assert(helpers.curl({ url = fake.url .. path, method = "POST",
        ca_file = fake.ca_file, body = '{"scope":["s1"],"lifetime":"300s"}',
        headers = { Authorization = "Bearer " .. tok,
          ["Content-Type"] = "application/json" } }))
      assert.equal(200, res.status)
      local body = json(res)
      assert.equal("fake-token-2", body.accessToken)
      assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$", body.expireTime)
      local info = fake:tokens()["fake-token-2"]
      assert.equal("target@p.iam.gserviceaccount.com", info.email)
      assert.equal("s1", info.scope)
      res = assert(helpers.curl({ url = fake.url .. path, method = "POST",
        ca_file = fake.ca_file, body = '{"scope":["s1"]}',
        headers = { Authorization = "Bearer forged" } }))
      assert.equal(401, res.status)
      assert.equal("UNAUTHENTICATED", json(res).error.status)

      local base = "/v1/projects/-/serviceAccounts/t@p.iam.gserviceaccount.com"
      local auth = { Authorization = "Bearer " .. tok }
      res = assert(helpers.curl({ url = fake.url .. base .. ":generateIdToken",
        method = "POST", ca_file = fake.ca_file, headers = auth,
        body = '{"audience":"https://aud","includeEmail":true}' }))
      local claims = helpers.pyjwt_verify(json(res).token,
        fake:get_config().server_public_pem, { audience = "https://aud" })
      assert.equal("t@p.iam.gserviceaccount.com", claims.email)
      res = assert(helpers.curl({ url = fake.url .. base .. ":signBlob",
        method = "POST", ca_file = fake.ca_file, headers = auth,
        body = '{"payload":"' .. helpers.b64encode("blob") .. '"}' }))
      assert.equal(fake:get_config().server_kid, json(res).keyId)
      assert.equal(256, #helpers.b64decode(json(res).signedBlob))
    end)
  end)
end)

describe("fake_google over plain HTTP", function()
  local fake

  lazy_setup(function()
    fake = helpers.start_fake({ tls = false })
  end)

  teardown(function()
    if fake then fake:stop() end
  end)

  it("serves http:// and is reachable with luasocket", function()
    local http = require "socket.http"
    local ltn12 = require "ltn12"
    assert.matches("^http://127%.0%.0%.1:%d+$", fake.url)
    assert.is_nil(fake.ca_file)
    local chunks = {}
    local ok, code, headers = http.request({
      url = fake.url .. "/computeMetadata/v1/instance/service-accounts/default/email",
      headers = { ["Metadata-Flavor"] = "Google" },
      sink = ltn12.sink.table(chunks),
    })
    assert.equal(1, ok)
    assert.equal(200, code)
    assert.equal("Google", headers["metadata-flavor"])
    assert.equal("fake-sa@fake-project.iam.gserviceaccount.com", table.concat(chunks))
    assert.equal("Google", fake:requests()[1].headers["metadata-flavor"])
  end)
end)

describe("fake_google lifecycle", function()
  it("stops for good, even with a request hanging", function()
    local fake = helpers.start_fake({ tls = false })
    fake:script("/hang", { { hang = true } })
    -- A client left waiting in the background.
    helpers.sh("curl -s --noproxy '*' --max-time 60 " .. fake.url .. "/hang >/dev/null &")
    fake:wait_requests("/hang", 1)
    local t0 = helpers.now()
    assert.is_true(fake:stop())
    -- a hang guard: stop() does not wait for the client's 60 s
    assert.is_true(helpers.now() - t0 < 20)
    assert.is_false(helpers.process_alive(fake.pid))
    assert.is_true(fake:stop())   -- idempotent
    assert.has_error(function() fake:requests() end, "helpers: fake server already stopped")
  end)

  it("listens on ::1 when asked", function()
    local fake = helpers.start_fake({ host = "::1" })
    assert.matches("^https://%[::1%]:%d+$", fake.url)
    local res = assert(helpers.curl({ url = fake.url .. "/", ca_file = fake.ca_file }))
    assert.equal(200, res.status)
    fake:stop()
  end)

  it("fails clearly when the fake cannot start", function()
    local ok, err = pcall(helpers.start_fake, { cert_file = "/nonexistent.pem" })
    assert.is_false(ok)
    assert.matches("exited at start", err)
  end)
end)

describe("spec/run.sh", function()
  -- A throwaway spec that skips once and passes once, run through run.sh on
  -- both interpreters: listed and counted always, a failure when CI is set.
  it("lists every skip, and fails the run on one when CI is set", function()
    local dir = helpers.tmpname("runsh")
    assert(helpers.sh("mkdir -p " .. helpers.shell_quote(dir)))
    local spec = helpers.write_file(dir .. "/skip_spec.lua",
      'describe("d", function() it("passes", function() end) ' .. "pend" .. 'ing("later") end)\n')
    local function cmd(ci)
      return "cd " .. helpers.shell_quote(helpers.root) .. " && CI=" .. ci .. " SPECS="
        .. helpers.shell_quote(spec) .. " sh spec/run.sh"
    end
    local ok, out = helpers.sh(cmd(""))
    assert.is_true(ok, out)
    assert.matches("skipped: ok %d+ %- # SKIP", out)
    assert.matches("\n2 passed, 0 failed, 2 skipped\n$", out)
    ok, out = helpers.sh(cmd("true"))
    assert.is_false(ok, out)
    assert.matches("CI is set: 2 skipped test%(s%) count as failures", out)
    assert.matches("\n2 passed, 2 failed, 2 skipped\n$", out)
  end)
end)

describe("spec/support/asan_lua.c", function()
  -- make asan's lua: busted with every spec file is about 60 arguments, more
  -- than the stack main() is promised (LUA_MINSTACK); Lua 5.4 does not grow
  -- the stack on a push, so they must be checked for first. Built here
  -- without the sanitizer, against the interpreter running this spec: under
  -- 5.4 the unchecked pushes lost the arguments past the first ~42 and
  -- corrupted the heap (a crash at exit).
  it("hands a script every argument, in ... and in arg", function()
    local dir = helpers.tmpname("asanlua")
    assert(helpers.sh("mkdir -p " .. helpers.shell_quote(dir)))
    local inc, lib = "/usr/include/lua5.4", "lua5.4"
    if jit then inc, lib = "/usr/include/luajit-2.1", "luajit-5.1" end
    local exe = dir .. "/lua"
    local ok, out = helpers.sh("cc -O1 -I" .. inc .. " -o " .. helpers.shell_quote(exe)
      .. " " .. helpers.shell_quote(helpers.root .. "/spec/support/asan_lua.c") .. " -l" .. lib)
    assert.is_true(ok, out)
    local script = helpers.write_file(dir .. "/args.lua", [[
      local n, t, bad = select("#", ...), { ... }, 0
      for k = 1, n do
        if t[k] ~= "a" .. k or arg[k] ~= "a" .. k then bad = bad + 1 end
      end
      print(n .. " arguments, " .. bad .. " wrong")
    ]])
    local args = {}
    for k = 1, 100 do args[k] = "a" .. k end
    ok, out = helpers.sh(helpers.shell_quote(exe) .. " " .. helpers.shell_quote(script)
      .. " " .. table.concat(args, " "))
    assert.is_true(ok, out)
    assert.equal("100 arguments, 0 wrong\n", out)
  end)
end)
