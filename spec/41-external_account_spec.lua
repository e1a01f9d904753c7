-- gauth.external_account (workload/workforce identity federation) against
-- loopback servers: fake_google.py's STS (which verifies OIDC subject tokens
-- with the key it was given and AWS signatures with the secret it was
-- given), IAM generateAccessToken, an URL source and AWS's instance metadata
-- service (IMDSv2), and small executables. Google's Node library, given the
-- same configurations, is the judge of what is sent.
local helpers = require "helpers"
local ea = require "gauth.external_account"
local token_cache = require "gauth.token_cache"
local cjson = require "cjson"

local CP = "https://www.googleapis.com/auth/cloud-platform"
local S1 = "https://www.googleapis.com/auth/devstorage.read_only"
local AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/oidc"
local WF_AUD = "//iam.googleapis.com/locations/global/workforcePools/wpool/providers/wprov"
local AWS_AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/aws"
local JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
local AWS_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
local SAML_TYPE = "urn:ietf:params:oauth:token-type:saml2"
local TARGET = "fed-sa@proj.iam.gserviceaccount.com"
local IAM_PATH = "/v1/projects/-/serviceAccounts/" .. TARGET .. ":generateAccessToken"
local AWS_AK, AWS_SK, AWS_TOK = "AKIAEXAMPLEGAUTH01", "aws+secret/KEY0123456789abcdefghij", "aws-session-tok"

local sleeps, fast_retry = helpers.recorded_retry()
local is_error = helpers.assert_gauth_error

local function q(s) return helpers.shell_quote(s) end

describe("gauth.external_account", function()
  local fake, imds, key, other_key

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
    imds = helpers.start_fake({ tls = false })
    key = helpers.make_rsa_key()
    other_key = helpers.make_rsa_key()
  end)

  lazy_teardown(function()
    fake:stop()
    imds:stop()
    helpers.remove_loopback_guard()
  end)

  local function federation(extra)
    local f = { oidc_public_pem = key.public_pem, aws_keys = { [AWS_AK] = AWS_SK },
                clients = { ["wf-client"] = "wf-secret" } }
    for k, v in pairs(extra or {}) do f[k] = v end
    return f
  end

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    imds:reset()
    fake:config({ federation = federation() })
    imds:config({ federation = { aws = { zone = "eu-west-3c", role = "gauth-role",
      access_key_id = AWS_AK, secret_access_key = AWS_SK, token = AWS_TOK, imdsv2 = true } } })
  end)

  local function oidc(claims, k)
    local now = os.time()
    local c = { iss = "https://issuer.example", sub = "workload-1", aud = "gauth-test",
                iat = now, exp = now + 600 }
    for kk, v in pairs(claims or {}) do c[kk] = v end
    return helpers.pyjwt_encode(c, (k or key).private_pem)
  end

  local function token_file(text)
    local p = helpers.tmpname("subject", ".txt")
    helpers.write_file(p, text)
    return p
  end

  -- A configuration as gcloud writes it, pointing at the fake.
  local function config(extra)
    local c = {
      type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
      token_url = fake.url .. "/v1/token",
      credential_source = { file = token_file(oidc()) },
    }
    for k, v in pairs(extra or {}) do
      if v == false then c[k] = nil else c[k] = v end
    end
    return c
  end

  local function new(info, opts)
    opts = opts or {}
    if opts.cache == nil then opts.cache = token_cache.new() end
    if opts.retry == nil then opts.retry = fast_retry() end
    if opts.env == nil then opts.env = {} end
    return ea.from_info(info, opts)
  end

  local function sts_requests() return fake:requests("/v1/token") end

  describe("configuration", function()
    it("from_file reads a file-sourced configuration and knows its fields", function()
      local path = helpers.tmpname("wif", ".json")
      helpers.write_file(path, cjson.encode(config({ quota_project_id = "billed",
        service_account_impersonation_url = fake.url .. IAM_PATH })))
      local c, msg, err = ea.from_file(path, { env = {} })
      assert.is_nil(msg)
      assert.is_nil(err)
      assert.equal("external_account", c.kind)
      assert.equal(AUD, c.audience)
      assert.equal("googleapis.com", c.universe_domain)
      assert.equal("123456", c.project_number)
      assert.equal(TARGET, c.service_account_email)
      assert.equal("billed", c.quota_project)
      assert.equal("file", c.source_kind)
      assert.is_nil(tostring(c):find("eyJ", 1, true))
    end)

    it("follows the universe domain for STS when token_url is not given", function()
      local c = assert(new(config({ token_url = false, universe_domain = "example-universe.test" })))
      assert.equal("example-universe.test", c.universe_domain)
      assert.equal("https://sts.example-universe.test/v1/token", c.token_url)
      local d = assert(new(config({ token_url = false })))
      assert.equal("https://sts.googleapis.com/v1/token", d.token_url)
    end)

    it("refuses malformed configurations, naming the field", function()
      local cases = {
        { { audience = false }, "audience", "missing" },
        { { subject_token_type = false }, "subject_token_type", "missing" },
        { { credential_source = { foo = "bar" } }, "credential_source", "no known source" },
        { { credential_source = { file = "/x", url = "https://a.test/t" } }, "credential_source",
          "more than one source" },
        { { credential_source = { file = "/x", format = { type = "xml" } } },
          "credential_source.format.type", 'must be "text" or "json"' },
        { { credential_source = { file = "/x", format = { type = "json" } } },
          "credential_source.format.subject_token_field_name", "required" },
        { { credential_source = { environment_id = "aws2",
            regional_cred_verification_url = ea.AWS_VERIFICATION_URL } },
          "credential_source.environment_id", "aws version 2" },
        { { credential_source = { executable = { command = "/bin/x", timeout_millis = 10 } } },
          "credential_source.executable.timeout_millis", "5000 to 120000" },
        { { credential_source = { url = "http://example.com/token" } }, "credential_source.url",
          "clear text" },
        { { workforce_pool_user_project = "123" }, "workforce_pool_user_project",
          "only for workforce pools" },
        { { token_url = "http://sts.example.com/v1/token" }, "token_url", "clear text" },
        { { service_account_impersonation_url = "https://iam.test/v1/x" },
          "service_account_impersonation_url", "generateAccessToken" },
        { { service_account_impersonation = { token_lifetime_seconds = 10 } },
          "service_account_impersonation.token_lifetime_seconds", "600 to 43200" },
        { { type = "service_account" }, "type", "expected \"external_account\"" },
      }
      for _, case in ipairs(cases) do
        local c, msg, err = new(config(case[1]))
        assert.is_nil(c)
        assert.is_string(msg)
        assert.matches("^gauth%.external_account: key file: external account info: field "
          .. case[2]:gsub("%p", "%%%0") .. ": .*" .. case[3]:gsub("%p", "%%%0"), msg)
        is_error(err, "external_account", "key file")
        assert.equal(case[2], err.field)
      end
      -- Not a file at all.
      local c, msg, err = ea.from_file(helpers.tmpname("absent", ".json"))
      assert.is_nil(c)
      assert.matches("^gauth%.external_account: key file: cannot read ", msg)
      is_error(err, "external_account", "key file")
      assert.has_error(function() ea.from_file(42) end, "gauth.external_account: from_file: path must be a string")
    end)
  end)

  describe("file and url sources", function()
    it("exchanges a file's OIDC token at STS with Google's form, re-reading the file each refresh", function()
      local path = token_file(oidc({ sub = "first" }))
      local c = assert(new(config({ credential_source = { file = path } }), { scopes = { S1 } }))
      local tok, exp = c:token()
      assert.equal("fake-token-1", tok)
      assert.is_true(exp > os.time() + 3000)
      local r = sts_requests()
      assert.equal(1, #r)
      assert.same({
        grant_type = "urn:ietf:params:oauth:grant-type:token-exchange",
        audience = AUD, scope = S1,
        requested_token_type = "urn:ietf:params:oauth:token-type:access_token",
        subject_token = helpers.read_file(path), subject_token_type = JWT_TYPE,
      }, r[1].form)
      assert.equal("application/x-www-form-urlencoded", r[1].headers["content-type"])
      assert.is_nil(r[1].headers.authorization)
      assert.matches("google%-byoid%-sdk source/file sa%-impersonation/false config%-lifetime/false",
                     r[1].headers["x-goog-api-client"])
      -- The token rotates on disk: the next refresh sends the new one.
      local second = oidc({ sub = "second" })
      helpers.write_file(path, second)
      assert.equal(tok, (c:token()))  -- cached
      c:invalidate()
      assert.equal("fake-token-2", (c:token()))
      assert.equal(second, sts_requests()[2].form.subject_token)
      local h = assert(c:apply({}))
      assert.equal("Bearer fake-token-2", h.authorization)
    end)

    it("reads a json-formatted file by subject_token_field_name", function()
      local t = oidc()
      local path = token_file(cjson.encode({ id_token = t, other = "x" }))
      local c = assert(new(config({ credential_source = { file = path,
        format = { type = "json", subject_token_field_name = "id_token" } } })))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(t, sts_requests()[1].form.subject_token)
      helpers.write_file(path, cjson.encode({ other = "x" }))
      c:invalidate()
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: subject token: reading subject token from file "
        .. path .. ": no string field id_token", msg)
      is_error(err, "external_account", "subject token")
    end)

    it("names the file that cannot be read, and sends nothing to STS", function()
      local path = helpers.tmpname("missing", ".txt")
      local c = assert(new(config({ credential_source = { file = path } })))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: subject token: reading subject token from file "
        .. path .. ": no such file", msg)
      is_error(err, "external_account", "subject token")
      assert.equal("file", err.source)
      assert.equal(false, err.retryable)
      assert.equal(0, #sts_requests())
      local h, hmsg, herr = c:apply({})
      assert.is_nil(h)
      assert.equal(msg, hmsg)
      is_error(herr, "external_account", "subject token")
    end)

    it("GETs an url source with its headers (json format), and a 500 or garbage fails only that refresh", function()
      local t = oidc()
      fake:config({ federation = federation({ served_token = {
        json = { value = t }, require_headers = { ["Metadata"] = "True" } } }) })
      local c = assert(new(config({ credential_source = { url = fake.url .. "/subject-token",
        headers = { Metadata = "True" },
        format = { type = "json", subject_token_field_name = "value" } } })))
      assert.equal("fake-token-1", (c:token()))
      local g = fake:requests("/subject-token")
      assert.equal(1, #g)
      assert.equal("GET", g[1].method)
      assert.equal("True", g[1].headers.metadata)
      assert.equal(t, sts_requests()[1].form.subject_token)
      -- A 500: this refresh fails, naming the URL; the next one works.
      fake:script("/subject-token", { status = 500, body = "oops " .. t })
      c:invalidate()
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: subject token: reading subject token from url "
        .. fake.url .. "/subject-token: refused (HTTP 500)", msg)
      is_error(err, "external_account", "subject token")
      assert.equal(500, err.status)
      fake:script("/subject-token", { status = 200, body = "<html>garbage" })
      tok, msg = c:token()
      assert.is_nil(tok)
      assert.matches("from url .*: not a JSON object$", msg)
      assert.equal("fake-token-2", (c:token()))
      assert.equal(2, #sts_requests())
    end)
  end)

  describe("the STS exchange", function()
    it("does not retry invalid_grant, and shows no token", function()
      local bad = oidc({}, other_key)
      local c = assert(new(config({ credential_source = { file = token_file(bad) } })))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.matches("^gauth%.external_account: STS: invalid_grant: The given subject token is invalid", msg)
      is_error(err, "external_account", "STS")
      assert.equal("invalid_grant", err.oauth_error)
      assert.equal("Bad Request", err.http_reason)
      assert.equal(400, err.status)
      assert.equal(false, err.retryable)
      assert.equal(1, #sts_requests())
      assert.is_nil(msg:find(bad, 1, true))
    end)

    it("retries 5xx and 429 as the token endpoint does", function()
      fake:script("/v1/token", { { status = 503, body = "unavailable" },
                                 { status = 429, body = { error = "rate_limited" } } })
      local c = assert(new(config()))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(3, #sts_requests())
      assert.equal(2, #sleeps)
      fake:script("/v1/token", { { status = 500 }, { status = 500 }, { status = 500 } })
      c:invalidate()
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.matches("^gauth%.external_account: STS: HTTP 500 %(gave up after 3 attempts%)", msg)
      is_error(err, "external_account", "STS")
      assert.equal(6, #sts_requests())
    end)

    it("authenticates the client with HTTP Basic and sends userProject only without a client", function()
      local c = assert(new(config({ audience = WF_AUD, workforce_pool_user_project = "987",
        client_id = "wf-client", client_secret = "wf-secret" })))
      assert.equal("fake-token-1", (c:token()))
      local r = sts_requests()[1]
      assert.equal("Basic " .. helpers.b64encode("wf-client:wf-secret"), r.headers.authorization)
      assert.is_nil(r.form.options)
      local d = assert(new(config({ audience = WF_AUD, workforce_pool_user_project = "987" })))
      assert.equal("fake-token-2", (d:token()))
      r = sts_requests()[2]
      assert.same({ userProject = "987" }, cjson.decode(r.form.options))
      assert.is_nil(r.headers.authorization)
      -- A wrong secret: STS refuses the client.
      local e = assert(new(config({ audience = WF_AUD, client_id = "wf-client",
                                    client_secret = "not-it" })))
      local tok, msg, err = e:token()
      assert.is_nil(tok)
      assert.matches("^gauth%.external_account: STS: invalid_client", msg)
      assert.is_nil(msg:find("not-it", 1, true))
      is_error(err, "external_account", "STS")
    end)

    it("impersonates the service account with the STS token (cloud-platform) and the lifetime", function()
      local c = assert(new(config({ service_account_impersonation_url = fake.url .. IAM_PATH,
        service_account_impersonation = { token_lifetime_seconds = 1800 } }), { scopes = { S1 } }))
      local t0 = os.time()
      local tok, exp = c:token()
      assert.equal("fake-token-2", tok)
      assert.is_true(math.abs(exp - (t0 + 1800)) <= 2)
      local r = sts_requests()
      assert.equal(1, #r)
      assert.equal(CP, r[1].form.scope)
      assert.matches("sa%-impersonation/true config%-lifetime/true", r[1].headers["x-goog-api-client"])
      local i = fake:requests(IAM_PATH)
      assert.equal(1, #i)
      assert.equal("Bearer fake-token-1", i[1].headers.authorization)
      assert.same({ scope = { S1 }, lifetime = "1800s" }, i[1].json)
      -- IAM 5xx retried; a refusal names the impersonation step.
      fake:script(IAM_PATH, { status = 503, body = "x" })
      c:invalidate()
      assert.equal("fake-token-3", (c:token()))
      assert.equal(3, #fake:requests(IAM_PATH))
      fake:script(IAM_PATH, { status = 403, body = { error = { code = 403,
        message = "Permission denied", status = "PERMISSION_DENIED" } } })
      c:invalidate()
      local t2, msg, err = c:token()
      assert.is_nil(t2)
      assert.matches("^gauth%.external_account: impersonation: .*Permission denied", msg)
      is_error(err, "external_account", "impersonation")
      assert.equal(403, err.status)
      assert.equal(1, #sts_requests())  -- the STS token was still good
    end)
  end)

  describe("with_scopes", function()
    it("puts its scopes on the wire: STS's scope, or IAM's scope with impersonation", function()
      local c = assert(new(config()))
      local d = c:with_scopes({ S1 })
      assert.equal("fake-token-1", (d:token()))
      assert.equal("fake-token-2", (c:token()))  -- the original keeps its own token
      local r = sts_requests()
      assert.equal(2, #r)
      assert.equal(S1, r[1].form.scope)
      assert.equal(CP, r[2].form.scope)
      -- Impersonation: STS is asked for cloud-platform, IAM for the scopes.
      local i = assert(new(config({ service_account_impersonation_url = fake.url .. IAM_PATH })))
      local j = i:with_scopes({ S1 })
      assert.equal("fake-token-4", (j:token()))
      assert.equal(CP, sts_requests()[3].form.scope)
      local iam = fake:requests(IAM_PATH)
      assert.equal(1, #iam)
      assert.same({ S1 }, iam[1].json.scope)
      -- IAM refusing the copy's scope: the copy fails, naming the step.
      fake:script(IAM_PATH, { status = 403, body = { error = { code = 403,
        message = "Scope not allowed", status = "PERMISSION_DENIED" } } })
      local k = i:with_scopes({ S1, "https://www.googleapis.com/auth/gmail.send" })
      local tok, msg, err = k:token()
      assert.is_nil(tok)
      assert.matches("^gauth%.external_account: impersonation: .*Scope not allowed", msg)
      helpers.assert_failure(msg, err, "external_account", "impersonation")
      assert.equal(403, err.status)
      assert.same({ S1, "https://www.googleapis.com/auth/gmail.send" }, fake:requests(IAM_PATH)[2].json.scope)
    end)
  end)

  describe("the token cache key (issue 17 item 2)", function()
    it("binds the whole source: two configs differing only there never share a cached token", function()
      local shared = token_cache.new()
      local a, b = token_file(oidc({ sub = "tenant-a" })), token_file(oidc({ sub = "tenant-b" }))
      local ca = assert(new(config({ credential_source = { file = a } }), { cache = shared }))
      local cb = assert(new(config({ credential_source = { file = b } }), { cache = shared }))
      assert.equal("fake-token-1", (ca:token()))
      assert.equal("fake-token-2", (cb:token()))
      local r = sts_requests()
      assert.equal(2, #r)
      assert.equal(helpers.read_file(b), r[2].form.subject_token)
      -- The same configuration again does share (the key is not random).
      local ca2 = assert(new(config({ credential_source = { file = a } }), { cache = shared }))
      assert.equal("fake-token-1", (ca2:token()))
      assert.equal(2, #sts_requests())
      -- Two url sources differing only in a header value (a tenant's secret).
      fake:config({ federation = federation({ served_token = { json = { value = oidc() } } }) })
      local function url_cfg(h)
        return config({ credential_source = { url = fake.url .. "/subject-token",
          headers = { ["x-tenant-key"] = h }, format = { type = "json", subject_token_field_name = "value" } } })
      end
      local u1 = assert(new(url_cfg("k1"), { cache = shared }))
      local u2 = assert(new(url_cfg("k2"), { cache = shared }))
      assert.equal("fake-token-3", (u1:token()))
      assert.equal("fake-token-4", (u2:token()))
      assert.equal(2, #fake:requests("/subject-token"))
      assert.equal("k2", fake:requests("/subject-token")[2].headers["x-tenant-key"])
      -- Two url sources differing only in a key in the query (which error
      -- messages redact: the cache key must not).
      local function key_cfg(k)
        return config({ credential_source = { url = fake.url .. "/subject-token?key=" .. k,
          format = { type = "json", subject_token_field_name = "value" } } })
      end
      local k1 = assert(new(key_cfg("tenant-1"), { cache = shared }))
      local k2 = assert(new(key_cfg("tenant-2"), { cache = shared }))
      assert.equal("fake-token-5", (k1:token()))
      assert.equal("fake-token-6", (k2:token()))
      local g = fake:requests("/subject-token")
      assert.equal(4, #g)
      assert.equal("key=tenant-2", g[4].query)
      assert.equal(6, #sts_requests())
    end)

    it("differs for every field that decides the token, and holds no secret", function()
      local base = config()
      local function key_of(info, opts)
        return assert(new(info, opts)):cache_key()
      end
      local function with(patch)
        local c = cjson.decode(cjson.encode(base))
        for k, v in pairs(patch) do if v == false then c[k] = nil else c[k] = v end end
        return c
      end
      local aws = { environment_id = "aws1", regional_cred_verification_url = ea.AWS_VERIFICATION_URL,
                    region_url = "http://169.254.169.254/latest/meta-data/placement/availability-zone",
                    url = "http://169.254.169.254/latest/meta-data/iam/security-credentials" }
      local aws2 = { environment_id = "aws1", regional_cred_verification_url = ea.AWS_VERIFICATION_URL,
                     region_url = aws.region_url,
                     url = "http://169.254.169.254/latest/meta-data/iam/security-credentials/other" }
      local variants = {
        { base },
        { with({ audience = AUD .. "x" }) },
        { with({ subject_token_type = "urn:ietf:params:oauth:token-type:id_token" }) },
        { with({ credential_source = { file = "/var/run/token-b" } }) },
        { with({ credential_source = { file = base.credential_source.file,
                 format = { type = "json", subject_token_field_name = "t" } } }) },
        { with({ credential_source = { url = "https://idp.test/token?key=a" } }) },
        { with({ credential_source = { url = "https://idp.test/token?key=b" } }) },
        { with({ credential_source = { url = "https://idp.test/token?key=b", headers = { A = "1" } } }) },
        { with({ credential_source = { url = "https://idp.test/token?key=b", headers = { A = "2" } } }) },
        { with({ credential_source = aws }) },
        { with({ credential_source = aws2 }) },
        { with({ credential_source = aws }), { env = { AWS_ACCESS_KEY_ID = "AKIA1",
          AWS_SECRET_ACCESS_KEY = "aws-secret-1", AWS_REGION = "us-east-1" } } },
        { with({ credential_source = aws }), { env = { AWS_ACCESS_KEY_ID = "AKIA1",
          AWS_SECRET_ACCESS_KEY = "aws-secret-2", AWS_REGION = "us-east-1" } } },
        { with({ credential_source = { executable = { command = "/bin/tok --tenant a" } } }) },
        { with({ credential_source = { executable = { command = "/bin/tok --tenant b" } } }) },
        { with({ credential_source = { executable = { command = "/bin/tok --tenant b",
                 output_file = "/tmp/x" } } }) },
        { with({ service_account_impersonation_url = fake.url .. IAM_PATH }) },
        { with({ service_account_impersonation_url = fake.url .. IAM_PATH:gsub("fed%-sa", "other-sa") }) },
        { with({ service_account_impersonation_url = fake.url .. IAM_PATH,
                 service_account_impersonation = { token_lifetime_seconds = 1200 } }) },
        { with({ token_url = fake.url .. "/other/v1/token" }) },
        { with({ audience = WF_AUD, workforce_pool_user_project = "1" }) },
        { with({ audience = WF_AUD, workforce_pool_user_project = "2" }) },
        { with({ client_id = "c1", client_secret = "secret-1" }) },
        { with({ client_id = "c1", client_secret = "secret-2" }) },
        { with({ client_id = "c2", client_secret = "secret-2" }) },
        { base, { scopes = { S1 } } },
        { with({ token_url = false, universe_domain = "u1.test" }) },
        { with({ token_url = "https://sts.u1.test/v1/token", universe_domain = "u2.test" }) },
      }
      local seen = {}
      for i, v in ipairs(variants) do
        local k = key_of(v[1], v[2])
        assert.is_nil(seen[k], "variant " .. i .. " shares the key of variant " .. tostring(seen[k]))
        seen[k] = i
        for _, secret in ipairs({ "secret-1", "secret-2", "aws-secret-1", "aws-secret-2" }) do
          assert.is_nil(k:find(secret, 1, true))
        end
      end
      -- Equal configurations (scopes in another order) share it.
      assert.equal(key_of(base, { scopes = { S1, CP } }), key_of(with({}), { scopes = { CP, S1 } }))
    end)
  end)

  describe("the aws source", function()
    local function aws_config(extra)
      local cs = { environment_id = "aws1",
        regional_cred_verification_url = ea.AWS_VERIFICATION_URL,
        region_url = imds.url .. "/latest/meta-data/placement/availability-zone",
        url = imds.url .. "/latest/meta-data/iam/security-credentials",
        imdsv2_session_token_url = imds.url .. "/latest/api/token" }
      for k, v in pairs(extra or {}) do cs[k] = v or nil end
      return config({ audience = AWS_AUD, subject_token_type = AWS_TYPE, credential_source = cs })
    end

    it("takes a session token (PUT), then region and role credentials (GET), and STS verifies the signature", function()
      local c = assert(new(aws_config()))
      assert.equal("fake-token-1", (c:token()))
      local rs = imds:requests()
      assert.equal(4, #rs)
      assert.equal("PUT", rs[1].method)
      assert.equal("/latest/api/token", rs[1].path)
      assert.equal("300", rs[1].headers["x-aws-ec2-metadata-token-ttl-seconds"])
      local session = rs[1].headers and imds:requests()[2].headers["x-aws-ec2-metadata-token"]
      assert.matches("^imds%-session%-", session)
      assert.same({ "/latest/meta-data/placement/availability-zone",
                    "/latest/meta-data/iam/security-credentials",
                    "/latest/meta-data/iam/security-credentials/gauth-role" },
                  { rs[2].path, rs[3].path, rs[4].path })
      for i = 2, 4 do assert.equal(session, rs[i].headers["x-aws-ec2-metadata-token"]) end
      local form = sts_requests()[1].form
      assert.equal(AWS_TYPE, form.subject_token_type)
      local req = cjson.decode(helpers.urldecode and helpers.urldecode(form.subject_token)
        or form.subject_token:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
      assert.equal("POST", req.method)
      assert.equal("https://sts.eu-west-3.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15", req.url)
      local h = {}
      for _, kv in ipairs(req.headers) do h[kv.key] = kv.value end
      assert.equal(AWS_AUD, h["x-goog-cloud-target-resource"])
      assert.equal(AWS_TOK, h["x-amz-security-token"])
      assert.equal("sts.eu-west-3.amazonaws.com", h.host)
      assert.matches("^AWS4%-HMAC%-SHA256 Credential=" .. AWS_AK .. "/%d+/eu%-west%-3/sts/aws4_request, "
        .. "SignedHeaders=host;x%-amz%-date;x%-amz%-security%-token;x%-goog%-cloud%-target%-resource, "
        .. "Signature=%x+$", h.Authorization)
      -- A wrong secret: STS refuses the signature.
      imds:config({ federation = { aws = { zone = "eu-west-3c", access_key_id = AWS_AK,
        secret_access_key = "wrong", imdsv2 = true } } })
      c:invalidate()
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: STS: invalid_grant: The AWS signature does not match."
        .. " (HTTP 400 invalid_grant) [" .. fake.url .. "/v1/token]", msg)
      is_error(err, "external_account", "STS")
      assert.is_nil(msg:find("wrong", 1, true))
    end)

    it("takes region and keys from the environment without asking the metadata server", function()
      local c = assert(new(aws_config(), { env = { AWS_REGION = "ap-south-1",
        AWS_ACCESS_KEY_ID = AWS_AK, AWS_SECRET_ACCESS_KEY = AWS_SK } }))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(0, #imds:requests())
      local form = sts_requests()[1].form
      assert.matches("sts%.ap%-south%-1%.amazonaws%.com", form.subject_token)
      assert.is_nil(form.subject_token:find("security%-token"))
    end)

    it("says when the region or the credentials cannot be found", function()
      local c = assert(new(aws_config({ region_url = false, imdsv2_session_token_url = false })))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: AWS: region not found", msg)
      is_error(err, "external_account", "AWS")
      local d = assert(new(aws_config({ url = false }), { env = { AWS_DEFAULT_REGION = "us-east-1" } }))
      tok, msg, err = d:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: AWS: credentials not found", msg)
      is_error(err, "external_account", "AWS")
      assert.equal(0, #sts_requests())
    end)
  end)

  describe("the executable source", function()
    local dir
    lazy_setup(function()
      dir = helpers.tmpname("exec", "")
      assert(os.execute("mkdir -p " .. q(dir)))
    end)

    local function script(name, body)
      local p = dir .. "/" .. name
      helpers.write_file(p, "#!/bin/sh\n" .. body)
      assert(os.execute("chmod +x " .. q(p)))
      return p
    end

    local function exec_config(command, extra)
      local ex = { command = command, timeout_millis = 5000 }
      for k, v in pairs(extra or {}) do ex[k] = v end
      return config({ credential_source = { executable = ex } })
    end

    local ALLOW = { GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" }

    it("is refused unless GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1", function()
      local ran = dir .. "/ran-refused"
      local p = script("refused.sh", "touch " .. q(ran) .. "\n")
      local c = assert(new(exec_config(p)))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: executable: not allowed: set"
        .. " GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1", msg)
      is_error(err, "external_account", "executable")
      assert.is_nil(helpers.read_file(ran))
    end)

    it("runs the command with Google's environment, validates its response and honours output_file", function()
      local t = oidc()
      local envfile, count, out = dir .. "/env.txt", dir .. "/count", dir .. "/cache.json"
      local p = script("ok.sh", "env | grep '^GOOGLE_EXTERNAL_ACCOUNT_' | sort > " .. q(envfile) .. "\n"
        .. "echo x >> " .. q(count) .. "\n"
        .. "printf '%s' \"$1\" > /dev/null\n"
        .. "resp='{\"version\":1,\"success\":true,\"token_type\":\"" .. JWT_TYPE
        .. "\",\"id_token\":\"" .. t .. "\",\"expiration_time\":'$(($(date +%s)+3600))'}'\n"
        .. "echo \"$resp\" > \"$GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE\"\necho \"$resp\"\n")
      local c = assert(new(exec_config(p .. " 'an arg'", { output_file = out }),
        { env = ALLOW }))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(t, sts_requests()[1].form.subject_token)
      local env = helpers.read_file(envfile)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=" .. AUD:gsub("%p", "%%%0"), env)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE=" .. JWT_TYPE:gsub("%p", "%%%0"), env)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=0", env)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE=" .. out:gsub("%p", "%%%0"), env)
      -- The second refresh takes the still-valid response from output_file.
      c:invalidate()
      assert.equal("fake-token-2", (c:token()))
      assert.equal("x\n", helpers.read_file(count))
      assert.equal(t, sts_requests()[2].form.subject_token)
    end)

    it("reports the exit status and the program's message, an unsuccessful response and a bad version", function()
      local p = script("fail.sh", "echo 'no credentials here' >&2\nexit 1\n")
      local c = assert(new(exec_config(p), { env = ALLOW }))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: executable: exited 1: no credentials here", msg)
      is_error(err, "external_account", "executable")
      assert.equal(1, err.exit_status)
      local u = script("unsuccessful.sh",
        "echo '{\"version\":1,\"success\":false,\"code\":\"401\",\"message\":\"Caller not authorized.\"}'\n")
      tok, msg = assert(new(exec_config(u), { env = ALLOW })):token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: executable: error 401: Caller not authorized.", msg)
      local v = script("v2.sh", "echo '{\"version\":2,\"success\":true}'\n")
      tok, msg = assert(new(exec_config(v), { env = ALLOW })):token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: executable: unsupported response version 2", msg)
      assert.equal(0, #sts_requests())
    end)

    -- A versioned response as pluggable.py reads it; `exp` relative to now.
    local function response(tt, field, tok, exp)
      return cjson.encode({ version = 1, success = true, token_type = tt, [field] = tok,
                            expiration_time = os.time() + exp })
    end

    it("sends a SAML response (token_type saml2, saml_response) to STS as a saml2 subject token", function()
      local saml = "PHNhbWxwOlJlc3BvbnNlIElEPSJnYXV0aC1zYW1sLTEiLz4="
      fake:config({ federation = federation({ subject_tokens = { saml } }) })
      local p = script("saml.sh", "cat <<'EOF'\n" .. response(SAML_TYPE, "saml_response", saml, 3600)
        .. "\nEOF\n")
      local c = assert(new(config({ subject_token_type = SAML_TYPE,
        credential_source = { executable = { command = p, timeout_millis = 5000 } } }), { env = ALLOW }))
      local tok, exp = c:token()
      assert.equal("fake-token-1", tok)
      assert.is_number(exp)
      local form = sts_requests()[1].form
      assert.equal(SAML_TYPE, form.subject_token_type)
      assert.equal(saml, form.subject_token)
      -- A saml2 response whose token is under id_token is refused: SAML is
      -- read from saml_response only.
      local w = script("saml-wrong.sh", "cat <<'EOF'\n" .. response(SAML_TYPE, "id_token", saml, 3600)
        .. "\nEOF\n")
      local d = assert(new(config({ subject_token_type = SAML_TYPE,
        credential_source = { executable = { command = w, timeout_millis = 5000 } } }), { env = ALLOW }))
      local t2, msg, err = d:token()
      assert.is_nil(t2)
      assert.equal("gauth.external_account: executable: the response has no saml_response", msg)
      helpers.assert_failure(msg, err, "external_account", "executable")
      assert.is_false(err.retryable)
      assert.equal(1, #sts_requests())
    end)

    it("refuses an expired response, and runs the program again over an expired output_file", function()
      local t = oidc({ sub = "expired-run" })
      local p = script("expired.sh", "echo '" .. response(JWT_TYPE, "id_token", t, -60) .. "'\n")
      local c = assert(new(exec_config(p), { env = ALLOW }))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: executable: the response has expired", msg)
      helpers.assert_failure(msg, err, "external_account", "executable")
      assert.is_true(err.expired)
      assert.is_false(err.retryable)
      assert.equal(0, #sts_requests())
      -- output_file holds an expired response (with a token STS would take):
      -- it is ignored, the program runs and its fresh token is exchanged.
      local stale, fresh = oidc({ sub = "stale" }), oidc({ sub = "fresh" })
      local out, count = dir .. "/expired-cache.json", dir .. "/expired-count"
      helpers.write_file(out, response(JWT_TYPE, "id_token", stale, -60))
      local r = script("fresh.sh", "echo x >> " .. q(count) .. "\necho '"
        .. response(JWT_TYPE, "id_token", fresh, 3600) .. "'\n")
      local d = assert(new(exec_config(r, { output_file = out }), { env = ALLOW }))
      assert.equal("fake-token-1", (d:token()))
      assert.equal("x\n", helpers.read_file(count))
      assert.equal(fresh, sts_requests()[1].form.subject_token)
    end)

    it("tells the program the impersonated account in GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL", function()
      local envfile = dir .. "/env-imp.txt"
      local p = script("imp.sh", "env | grep '^GOOGLE_EXTERNAL_ACCOUNT_' | sort > " .. q(envfile) .. "\n"
        .. "echo '" .. response(JWT_TYPE, "id_token", oidc(), 3600) .. "'\n")
      local c = assert(new(config({ service_account_impersonation_url = fake.url .. IAM_PATH,
        credential_source = { executable = { command = p, timeout_millis = 5000 } } }), { env = ALLOW }))
      assert.equal("fake-token-2", (c:token()))
      assert.equal(1, #fake:requests(IAM_PATH))
      local env = helpers.read_file(envfile)
      assert.matches("\nGOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL=" .. TARGET:gsub("%p", "%%%0") .. "\n", env)
      -- Without impersonation the variable is not set.
      local d = assert(new(exec_config(p), { env = ALLOW }))
      assert.equal("fake-token-3", (d:token()))
      assert.is_nil(helpers.read_file(envfile):find("IMPERSONATED_EMAIL", 1, true))
    end)

    it("kills a program that hangs at timeout_millis, with what it started", function()
      local pids = dir .. "/pids"
      local p = script("hang.sh", "echo $$ > " .. q(pids) .. "\nsleep 60 &\necho $! >> " .. q(pids)
        .. "\nwait\n")
      local c = assert(new(exec_config(p), { env = ALLOW }))
      local started = os.time()
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.external_account: executable: timed out after 5000 ms (killed)", msg)
      is_error(err, "external_account", "executable")
      assert.is_true(err.timeout)
      assert.is_true(os.time() - started < 50, "hang guard")
      local n = 0
      for pid in helpers.read_file(pids):gmatch("%d+") do
        n = n + 1
        -- Gone, or a zombie waiting for init: never running.
        local st = io.popen("ps -o stat= -p " .. pid):read("*a")
        assert.is_true(st == "" or st:match("^Z") ~= nil, "process " .. pid .. " still runs: " .. st)
      end
      assert.equal(2, n)
    end)
  end)
end)

-- Google's Node library is given the same configurations against the same
-- loopback servers; what both send to STS and IAM is compared field by
-- field. Node runs once for the whole batch, with its proxy variables
-- pointing at a closed port and only loopback exempt (no_proxy), so that a
-- request of Node's meant for a fixed Google host fails the run instead of
-- leaving the machine; METADATA_SERVER_DETECTION=none.
describe("gauth.external_account judged by google-auth-library (Node)", function()
  local fake, key

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
    key = helpers.make_rsa_key()
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  local AWS_ENV = { AWS_REGION = "us-west-2", AWS_ACCESS_KEY_ID = AWS_AK,
                    AWS_SECRET_ACCESS_KEY = AWS_SK, AWS_SESSION_TOKEN = AWS_TOK }

  local function setup_fake()
    fake:reset()
    fake:config({ federation = { oidc_public_pem = key.public_pem,
      aws_keys = { [AWS_AK] = AWS_SK }, clients = { ["wf-client"] = "wf-secret" },
      served_token = { json = { access = { token = "x" }, value = "v" } } } })
  end

  local subject, file, jfile
  local function cases()
    if not subject then
      -- One subject token for both clients, so that their forms can match.
      local now = os.time()
      subject = helpers.pyjwt_encode({ iss = "https://issuer.example", sub = "w",
        iat = now, exp = now + 600 }, key.private_pem)
      file = helpers.tmpname("node-subject", ".txt")
      helpers.write_file(file, subject)
      jfile = helpers.tmpname("node-subject", ".json")
      helpers.write_file(jfile, cjson.encode({ token = subject }))
    end
    fake:config({ federation = { oidc_public_pem = key.public_pem,
      aws_keys = { [AWS_AK] = AWS_SK }, clients = { ["wf-client"] = "wf-secret" },
      served_token = { json = { value = subject }, require_headers = { ["x-h"] = "1" } } } })
    local sts = fake.url .. "/v1/token"
    return {
      { scopes = { S1 }, config = { type = "external_account", audience = AUD,
        subject_token_type = JWT_TYPE, token_url = sts, credential_source = { file = file } } },
      { config = { type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
        token_url = sts, credential_source = { file = jfile,
          format = { type = "json", subject_token_field_name = "token" } } } },
      { config = { type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
        token_url = sts, credential_source = { url = fake.url .. "/subject-token",
          headers = { ["x-h"] = "1" },
          format = { type = "json", subject_token_field_name = "value" } } } },
      { config = { type = "external_account", audience = WF_AUD, subject_token_type = JWT_TYPE,
        token_url = sts, workforce_pool_user_project = "987", credential_source = { file = file } } },
      { config = { type = "external_account", audience = WF_AUD, subject_token_type = JWT_TYPE,
        token_url = sts, workforce_pool_user_project = "987", client_id = "wf-client",
        client_secret = "wf-secret", credential_source = { file = file } } },
      { scopes = { S1, CP }, config = { type = "external_account", audience = AUD,
        subject_token_type = JWT_TYPE, token_url = sts,
        service_account_impersonation_url = fake.url .. IAM_PATH,
        service_account_impersonation = { token_lifetime_seconds = 2400 },
        credential_source = { file = file } } },
      { config = { type = "external_account", audience = AWS_AUD, subject_token_type = AWS_TYPE,
        token_url = sts, credential_source = { environment_id = "aws1",
          regional_cred_verification_url = ea.AWS_VERIFICATION_URL } } },
    }
  end

  local function urldecode(s)
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
  end

  -- What one client sent for one case: the STS form and headers, the IAM body.
  local function observed()
    local out = {}
    for _, r in ipairs(fake:requests()) do
      if r.path == "/v1/token" then
        out[#out + 1] = { sts = r }
      elseif r.path == IAM_PATH then
        out[#out].iam = r
      end
    end
    return out
  end

  local function run_node(list)
    local input = helpers.tmpname("node-cases", ".json")
    helpers.write_file(input, cjson.encode(list))
    local closed = "http://127.0.0.1:" .. helpers.closed_port()
    local env = "env no_proxy=127.0.0.1,localhost NO_PROXY=127.0.0.1,localhost METADATA_SERVER_DETECTION=none"
      .. " HTTPS_PROXY=" .. closed .. " HTTP_PROXY=" .. closed
      .. " NODE_PATH=" .. q(helpers.root .. "/spec/support/node/node_modules")
    for k, v in pairs(AWS_ENV) do env = env .. " " .. k .. "=" .. q(v) end
    local p = io.popen(env .. " node " .. q(helpers.support_dir .. "/ea_judge.js") .. " < "
      .. q(input) .. " 2>&1")
    local text = p:read("*a")
    p:close()
    local res = cjson.decode(text)
    assert(type(res) == "table", "node judge: " .. text)
    return res
  end

  it("sends STS the form and headers, and IAM the body, that Node sends", function()
    setup_fake()
    local list = cases()
    for i, c in ipairs(list) do
      local creds = assert(ea.from_info(c.config, { scopes = c.scopes, env = AWS_ENV,
        cache = token_cache.new(), retry = false }))
      local tok, msg = creds:token()
      assert(tok, "case " .. i .. ": " .. tostring(msg))
    end
    local ours = observed()
    setup_fake()
    local node_cases = cases()
    local results = run_node(node_cases)
    for i, r in ipairs(results) do
      assert(r.token, "node case " .. i .. ": " .. tostring(r.error))
    end
    local theirs = observed()
    assert.equal(#list, #ours)
    assert.equal(#list, #theirs)
    for i = 1, #list do
      local a, b = ours[i].sts, theirs[i].sts
      local fa, fb = a.form, b.form
      if list[i].config.subject_token_type == AWS_TYPE then
        -- Signed at different instants: compare the request, not the bytes.
        local ra, rb = cjson.decode(urldecode(fa.subject_token)), cjson.decode(urldecode(fb.subject_token))
        assert.equal(rb.url, ra.url)
        assert.equal(rb.method, ra.method)
        local ha, hb = {}, {}
        for _, kv in ipairs(ra.headers) do ha[kv.key:lower()] = kv.value end
        for _, kv in ipairs(rb.headers) do hb[kv.key:lower()] = kv.value end
        for _, k in ipairs({ "host", "x-amz-security-token", "x-goog-cloud-target-resource" }) do
          assert.equal(hb[k], ha[k], "case " .. i .. " header " .. k)
        end
        assert.matches("^AWS4%-HMAC%-SHA256 Credential=" .. AWS_AK, hb.authorization)
        assert.matches("^AWS4%-HMAC%-SHA256 Credential=" .. AWS_AK, ha.authorization)
        fa.subject_token, fb.subject_token = nil, nil
      end
      assert.same(fb, fa, "case " .. i .. ": STS form")
      assert.equal(b.headers["content-type"]:match("^[^;]+"), a.headers["content-type"])
      assert.equal(b.headers.authorization, a.headers.authorization, "case " .. i)
      assert.equal(b.headers["x-goog-api-client"]:match("google%-byoid%-sdk.*$"),
                   a.headers["x-goog-api-client"]:match("google%-byoid%-sdk.*$"), "case " .. i)
      local ia, ib = ours[i].iam, theirs[i].iam
      assert.equal(ib == nil, ia == nil, "case " .. i .. ": IAM call")
      if ia then
        assert.same(ib.json, ia.json, "case " .. i .. ": IAM body")
        assert.equal(ib.headers["content-type"]:match("^[^;]+"), ia.headers["content-type"])
        assert.matches("^Bearer fake%-token%-%d+$", ia.headers.authorization)
      end
    end
  end)
end)

describe("external accounts through ADC and the gauth command", function()
  local fake, key

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
    key = helpers.make_rsa_key()
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  local function files()
    fake:reset()
    fake:config({ federation = { oidc_public_pem = key.public_pem },
      refresh_tokens = { ["wf-rt"] = { client_id = "wf-client", client_secret = "wf-secret" } } })
    local now = os.time()
    local subject = helpers.tmpname("adc-subject", ".txt")
    helpers.write_file(subject, helpers.pyjwt_encode({ iss = "https://i.example", sub = "s",
      iat = now, exp = now + 600 }, key.private_pem))
    local ext = helpers.tmpname("adc-ext", ".json")
    helpers.write_file(ext, cjson.encode({ type = "external_account", audience = AUD,
      subject_token_type = JWT_TYPE, token_url = fake.url .. "/v1/token",
      quota_project_id = "ext-qp", credential_source = { file = subject } }))
    local user = helpers.tmpname("adc-eau", ".json")
    helpers.write_file(user, cjson.encode({ type = "external_account_authorized_user",
      audience = WF_AUD, client_id = "wf-client", client_secret = "wf-secret",
      refresh_token = "wf-rt", token_url = fake.url .. "/v1/oauthtoken" }))
    return ext, user
  end

  it("gauth.default() reads both types from GOOGLE_APPLICATION_CREDENTIALS and gcloud's file", function()
    local adc = require "gauth.adc"
    local ext, user = files()
    local c, project, src = adc.default({ env = { GOOGLE_APPLICATION_CREDENTIALS = ext,
      GOOGLE_CLOUD_PROJECT = "p1" }, scopes = { S1 }, cache = token_cache.new() })
    assert.equal("external_account", c.kind)
    assert.equal("p1", project)
    assert.equal("GOOGLE_APPLICATION_CREDENTIALS", src)
    assert.equal("ext-qp", c.quota_project)
    assert.equal("fake-token-1", (c:token()))
    assert.equal(S1, fake:requests("/v1/token")[1].form.scope)
    local dir = helpers.tmpname("gcloud", "")
    assert(os.execute("mkdir -p " .. q(dir)))
    helpers.write_file(dir .. "/application_default_credentials.json", helpers.read_file(user))
    local u
    u, project, src = adc.default({ env = { CLOUDSDK_CONFIG = dir, CLOUDSDK_CORE_PROJECT = "p2" },
                                    cache = token_cache.new() })
    assert.equal("external_account_authorized_user", u.kind)
    assert.equal("gcloud credentials file", src)
    assert.equal("p2", project)
    assert.equal("fake-token-2", (u:token()))
    -- A broken external account file set in the variable is an error that names the field.
    local bad = helpers.tmpname("adc-bad", ".json")
    helpers.write_file(bad, cjson.encode({ type = "external_account", subject_token_type = JWT_TYPE,
      credential_source = { file = "/x" } }))
    local none, msg, err = adc.default({ env = { GOOGLE_APPLICATION_CREDENTIALS = bad } })
    assert.is_nil(none)
    assert.equal(tostring(err), msg)
    assert.matches("^gauth%.adc: GOOGLE_APPLICATION_CREDENTIALS: ", msg)
    is_error(err, "adc", "GOOGLE_APPLICATION_CREDENTIALS")
    assert.matches("field audience: missing", tostring(err), 1, true)
    assert.equal("external_account", err.type)
  end)

  local function sink()
    local t = {}
    local o = {}
    function o.write(self, ...)
      for i = 1, select("#", ...) do t[#t + 1] = tostring((select(i, ...))) end
      return self
    end
    function o.flush() return true end
    function o.text() return table.concat(t) end
    return o
  end

  it("gauth token --key-file prints the token of an external account configuration", function()
    local cli = require "gauth.cli"
    local ext = files()
    local out, errs = sink(), sink()
    local code = cli.main({ "token", "--key-file", ext }, { stdout = out, stderr = errs })
    assert.equal(0, code, errs.text())
    assert.equal("fake-token-1\n", out.text())
    -- A subject token file that is not there: exit 1 with the step named.
    local info = cjson.decode(helpers.read_file(ext))
    info.credential_source.file = helpers.tmpname("gone", ".txt")
    local broken = helpers.tmpname("cli-ext", ".json")
    helpers.write_file(broken, cjson.encode(info))
    out, errs = sink(), sink()
    code = cli.main({ "token", "--key-file", broken }, { stdout = out, stderr = errs })
    assert.equal(1, code)
    assert.equal("", out.text())
    assert.matches("reading subject token from file .*: no such file", errs.text())
  end)

  it("gauth token --key-file prints the token of an external_account_authorized_user file", function()
    local cli = require "gauth.cli"
    local _, user = files()
    local out, errs = sink(), sink()
    local code = cli.main({ "token", "--key-file", user }, { stdout = out, stderr = errs })
    assert.equal(0, code, errs.text())
    assert.equal("fake-token-1\n", out.text())
    local r = fake:requests("/v1/oauthtoken")
    assert.equal(1, #r)
    assert.equal("wf-rt", r[1].form.refresh_token)
    -- A refresh token the server does not know: exit 1, the refusal told.
    local info = cjson.decode(helpers.read_file(user))
    info.refresh_token = "wf-unknown"
    local broken = helpers.tmpname("cli-eau", ".json")
    helpers.write_file(broken, cjson.encode(info))
    out, errs = sink(), sink()
    code = cli.main({ "token", "--key-file", broken }, { stdout = out, stderr = errs })
    assert.equal(1, code)
    assert.equal("", out.text())
    assert.equal("gauth: gauth.external_account_authorized_user: token response: the token endpoint refused"
      .. " the refresh: invalid_grant: Token has been expired or revoked. (HTTP 400 invalid_grant) ["
      .. fake.url .. "/v1/oauthtoken]\n", errs.text())
  end)
end)
