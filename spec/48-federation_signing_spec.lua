-- External accounts beyond the token: project_id through Cloud Resource
-- Manager, signing (signBlob/signJwt as the impersonated account), ID
-- tokens; Compute Engine's universe domain; gauth.id_token.credentials and
-- fetch for every source type; and an external account in a non-default
-- universe reaching STS, IAM and Cloud Resource Manager at that universe's
-- hosts (through a loopback CONNECT proxy to the fake: nothing leaves the
-- machine). Loopback servers only (fake_google.py); signatures and ID
-- tokens are judged by Python's cryptography and PyJWT, never by gauth.
local helpers = require "helpers"
local judges = require "support.judges"
local ea = require "gauth.external_account"
local ce = require "gauth.compute_engine"
local imp = require "gauth.impersonated"
local sa = require "gauth.service_account"
local au = require "gauth.authorized_user"
local id_token = require "gauth.id_token"
local token_cache = require "gauth.token_cache"
local core = require "gauth.core"
local cjson = require "cjson.safe"

local AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/oidc"
local WF_AUD = "//iam.googleapis.com/locations/global/workforcePools/wpool/providers/wprov"
local JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"
local TARGET = "fed-sa@proj.iam.gserviceaccount.com"
local IAM_PATH = "/v1/projects/-/serviceAccounts/" .. TARGET
local RUN_URL = "https://my-service-abc123-uc.a.run.app"

local sleeps, fast_retry = helpers.recorded_retry()
local is_error = helpers.assert_gauth_error
local q = helpers.shell_quote

-- Python's cryptography: does `sig` verify over `data` with `pem`?
local function py_verify(pem, data, sig)
  local res = judges.run_json("/usr/bin/python3 -c " .. q([[
import json, sys, base64
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.exceptions import InvalidSignature
a = json.load(sys.stdin)
k = serialization.load_pem_public_key(a["pem"].encode())
try:
    k.verify(base64.b64decode(a["sig"]), base64.b64decode(a["data"]), padding.PKCS1v15(), hashes.SHA256())
    print(json.dumps({"ok": True}))
except InvalidSignature:
    print(json.dumps({"ok": False}))
]]), { pem = pem, data = core.b64_encode(data), sig = core.b64_encode(sig) })
  return res.ok
end

local function oidc(key)
  local now = os.time()
  return helpers.pyjwt_encode({ iss = "https://issuer.example", sub = "workload-1",
    aud = "gauth-test", iat = now, exp = now + 600 }, key.private_pem)
end

describe("external accounts, signing and ID tokens on loopback", function()
  local fake, key, server_pem, sa_info, user_file

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
    key = helpers.make_rsa_key()
    server_pem = fake:get_config().server_public_pem
    local _
    _, sa_info = helpers.make_service_account_file({ token_uri = fake.token_uri })
    user_file = helpers.make_authorized_user_file({ extra = { token_uri = fake.token_uri } })
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    fake:config({ federation = { oidc_public_pem = key.public_pem },
                  projects = { ["123456"] = "fed-project", ["987"] = "wf-project" },
                  refresh_tokens = helpers.user_refresh_tokens(),
                  public_keys = { [sa_info.kid] = sa_info.public_pem } })
  end)

  local function config(extra)
    local path = helpers.tmpname("subject", ".txt")
    helpers.write_file(path, oidc(key))
    local c = { type = "external_account", audience = AUD, subject_token_type = JWT_TYPE,
                token_url = fake.url .. "/v1/token", credential_source = { file = path } }
    for k, v in pairs(extra or {}) do
      if v == false then c[k] = nil else c[k] = v end
    end
    return c
  end

  local function impersonating()
    return config({ service_account_impersonation_url = fake.url .. IAM_PATH .. ":generateAccessToken" })
  end

  local function new(info, opts)
    opts = opts or {}
    if opts.cache == nil then opts.cache = token_cache.new() end
    if opts.retry == nil then opts.retry = fast_retry() end
    if opts.env == nil then opts.env = {} end
    if opts.cloud_resource_manager_url == nil then
      opts.cloud_resource_manager_url = fake.url .. "/v1/projects/"
    end
    return assert(ea.from_info(info, opts))
  end

  local function crm_requests() return fake:requests({ pattern = "^/v1/projects/[^/:]+$" }) end

  describe("external_account project_id", function()
    it("asks Cloud Resource Manager for the audience's project number once, with the token", function()
      local c = new(config())
      local id, msg, err = c:get_project_id()
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal("fed-project", id)
      assert.equal("fed-project", c.project_id)
      local r = crm_requests()
      assert.equal(1, #r)
      assert.equal("GET", r[1].method)
      assert.equal("/v1/projects/123456", r[1].path)
      assert.equal("Bearer fake-token-1", r[1].headers.authorization)
      -- Kept: neither this object nor a copy asks again.
      assert.equal("fed-project", c:get_project_id())
      assert.equal("fed-project", c:with_scopes({ "s1" }):get_project_id())
      assert.equal(1, #crm_requests())
      -- A workforce pool: its user project.
      local w = new(config({ audience = WF_AUD, workforce_pool_user_project = "987" }))
      assert.equal("wf-project", (w:get_project_id()))
      assert.equal("/v1/projects/987", crm_requests()[2].path)
    end)

    it("answers nil, msg, err without a project number, on a refusal and without a token", function()
      local c = new(config({ audience = WF_AUD }))
      local id, msg, err = c:get_project_id()
      assert.is_nil(id)
      assert.matches("^gauth%.external_account: project id: the configuration names no project number", msg)
      is_error(err, "external_account", "project id")
      assert.equal(false, err.retryable)
      assert.equal(0, #fake:requests())
      fake:config({ projects = { ["123456"] = cjson.null } })
      local d = new(config())
      id, msg, err = d:get_project_id()
      assert.is_nil(id)
      assert.matches("^gauth%.external_account: project id: The caller does not have permission %(HTTP 403", msg)
      is_error(err, "external_account", "project id")
      assert.equal(403, err.status)
      assert.equal(false, err.retryable)
      assert.is_nil(d.project_id)
      local e = new(config({ credential_source = { file = helpers.tmpname("gone", ".txt") } }))
      id, msg, err = e:get_project_id()
      assert.is_nil(id)
      assert.matches("^gauth%.external_account: project id: no token to ask Cloud Resource Manager: "
        .. "subject token: reading subject token from file .*: no such file", msg)
      is_error(err, "external_account", "project id")
      assert.equal("subject token", err.cause.step)
    end)
  end)

  describe("external_account signing", function()
    it("signs as the impersonated account through signBlob and signJwt, asked with the STS token", function()
      local c = new(impersonating())
      local email, emsg, eerr = c:signer_email()
      assert.is_nil(emsg); assert.is_nil(eerr)
      assert.equal(TARGET, email)
      local data = "GOOG4-RSA-SHA256\nbytes \0\255"
      local sig, msg, err = c:sign_bytes(data)
      assert.is_nil(msg); assert.is_nil(err)
      assert.is_true(py_verify(server_pem, data, sig))
      assert.is_false(py_verify(server_pem, "other", sig))
      local rs = fake:requests({ pattern = ":signBlob$" })
      assert.equal(1, #rs)
      assert.equal(IAM_PATH .. ":signBlob", rs[1].path)
      assert.same({ payload = core.b64_encode(data) }, rs[1].json)
      -- The caller is the federated identity (the STS token).
      local sts_tok = fake:requests("/v1/token")
      assert.equal(1, #sts_tok)
      assert.equal("Bearer fake-token-1", rs[1].headers.authorization)
      local jwt, jmsg = c:sign_jwt({ iss = TARGET, aud = "you", n = 1 })
      assert.is_nil(jmsg)
      local claims = assert(helpers.pyjwt_verify(jwt, server_pem, { audience = "you", verify_exp = false }))
      assert.same({ iss = TARGET, aud = "you", n = 1 }, claims)
      assert.equal(1, #fake:requests({ pattern = ":signJwt$" }))
      -- A refusal names the account and the permission.
      fake:script(IAM_PATH .. ":signBlob", { status = 403, body = { error = { code = 403,
        status = "PERMISSION_DENIED", message = "Permission denied." } } })
      sig, msg, err = c:sign_bytes("x")
      assert.is_nil(sig)
      assert.matches("^gauth%.iam: response: permission iam%.serviceAccounts%.signBlob denied on service account "
        .. TARGET:gsub("%p", "%%%0"), msg)
      is_error(err, "iam", "response")
      assert.equal(403, err.status)
    end)

    it("without impersonation has no email: nil, msg, err for all three", function()
      local c = new(config())
      for _, f in ipairs({ function() return c:signer_email() end,
                           function() return c:sign_bytes("x") end,
                           function() return c:sign_jwt({}) end }) do
        local v, msg, err = f()
        assert.is_nil(v)
        assert.matches("^gauth%.external_account: signing: external account credentials without"
          .. " service_account_impersonation_url have no service account to sign with %(no email%)", msg)
        is_error(err, "external_account", "signing")
        assert.equal(false, err.retryable)
      end
      assert.equal(0, #fake:requests())
      assert.has_error(function() c:sign_bytes(1) end,
        "gauth.external_account: sign_bytes: bytes must be a string")
      assert.has_error(function() c:sign_jwt("x") end,
        "gauth.external_account: sign_jwt: claims must be a table")
    end)
  end)

  describe("gauth.sts as the external accounts' client", function()
    local sts = require "gauth.sts"
    local function exchange(extra)
      local o = { url = fake.url .. "/v1/token", subject_token = oidc(key),
                  subject_token_type = JWT_TYPE, requested_token_type = sts.ACCESS_TOKEN_TYPE,
                  audience = WF_AUD, scope = "https://www.googleapis.com/auth/cloud-platform",
                  retry = false }
      for k, v in pairs(extra) do o[k] = v end
      return sts.exchange(o)
    end

    it("puts user_project in options (unless a client authenticates), encodes a table of options", function()
      local data, msg, err = exchange({ user_project = "987" })
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal("fake-token-1", data.access_token)
      local r = fake:requests("/v1/token")
      assert.same({ userProject = "987" }, cjson.decode(r[1].form.options))
      assert.is_nil(r[1].headers.authorization)
      fake:config({ federation = { oidc_public_pem = key.public_pem, clients = { ["wf-client"] = "s+/=:x" } } })
      assert(exchange({ user_project = "987", client_id = "wf-client", client_secret = "s+/=:x" }))
      r = fake:requests("/v1/token")
      assert.is_nil(r[2].form.options)
      -- client_id:client_secret as Google's libraries write it (no form-encoding first).
      assert.equal("Basic " .. core.b64_encode("wf-client:s+/=:x"), r[2].headers.authorization)
      assert(exchange({ options = { userProject = "555" } }))
      assert.same({ userProject = "555" }, cjson.decode(fake:requests("/v1/token")[3].form.options))
      assert.has_error(function() exchange({ user_project = "1", options = "{}" }) end,
        "gauth.sts: exchange: opts.user_project and opts.options together")
    end)

    it("names opts.step in its errors, with the OAuth error alone as the message", function()
      local v, msg, err = exchange({ module = "external_account", step = "STS", subject_token = "garbage",
                                   audience = AUD })
      assert.is_nil(v)
      assert.matches("^gauth%.external_account: STS: invalid_grant: ", msg)
      is_error(err, "external_account", "STS")
      assert.equal(400, err.status)
      assert.equal(false, err.retryable)
      fake:script("/v1/token", { status = 503, body = "down" })
      v, msg, err = exchange({ module = "external_account", step = "STS", audience = AUD })
      assert.is_nil(v)
      assert.matches("^gauth%.external_account: STS: HTTP 503", msg)
      is_error(err, "external_account", "STS")
      assert.equal(true, err.retryable)
    end)
  end)

  describe("compute_engine get_universe_domain", function()
    local function gce(opts)
      opts = opts or {}
      opts.env = { GCE_METADATA_HOST = fake.host_port }
      opts.cache = token_cache.new()
      if opts.retry == nil then opts.retry = fast_retry() end
      return assert(ce.credentials(opts))
    end
    local function reads() return fake:requests("/computeMetadata/v1/universe/universe-domain") end

    it("reads universe/universe-domain once and fills the field; 404 means googleapis.com", function()
      fake:config({ metadata = { ["universe/universe-domain"] = "example-universe.test" } })
      local c = gce()
      assert.is_nil(c.universe_domain)
      local v, msg, err = c:get_universe_domain()
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal("example-universe.test", v)
      assert.equal("example-universe.test", c.universe_domain)
      assert.equal("example-universe.test", c:with_scopes({ "s" }):get_universe_domain())
      assert.equal(1, #reads())
      assert.equal("Google", reads()[1].headers["metadata-flavor"])
      fake:config({ metadata = { ["universe/universe-domain"] = cjson.null } })
      local d = gce()
      assert.equal("googleapis.com", (d:get_universe_domain()))
      assert.equal("googleapis.com", d.universe_domain)
      assert.equal(2, #reads())
    end)

    it("answers nil, msg, err when the metadata server fails, and reads again next time", function()
      local path = "/computeMetadata/v1/universe/universe-domain"
      fake:script(path, { status = 500, body = "boom" })
      local c = gce({ retry = false })
      local v, msg, err = c:get_universe_domain()
      assert.is_nil(v)
      assert.matches("^gauth%.compute_engine: metadata response: the metadata server refused the request", msg)
      is_error(err, "compute_engine", "metadata response")
      assert.equal(500, err.status)
      assert.is_nil(c.universe_domain)
      fake:script(path, { status = 200, body = "not a domain!" })
      v, msg, err = c:get_universe_domain()
      assert.is_nil(v)
      assert.equal("gauth.compute_engine: metadata response: the universe domain is not a domain name:"
        .. " not a domain!", msg)
      is_error(err, "compute_engine", "metadata response")
      assert.equal(2, #reads())
    end)
  end)

  describe("gauth.id_token.credentials and fetch", function()
    local function verify(tok, aud)
      return assert(helpers.pyjwt_verify(tok, server_pem, { audience = aud,
        issuer = "https://accounts.google.com" }))
    end

    it("service account: target_audience assertion exchanged at the token URI, cached until exp", function()
      -- Standing clocks: the account's (its assertion's iat, the token's
      -- expiry) and the ID-token credentials' (when to refresh).
      local t0 = os.time()
      local clock = t0
      local src = assert(sa.from_info(sa_info.data, { cache = token_cache.new(), retry = fast_retry(),
        scopes = { "https://www.googleapis.com/auth/x" }, now = function() return t0 end }))
      local c, cmsg, cerr = id_token.credentials(src, { audience = RUN_URL, now = function() return clock end })
      assert.is_nil(cmsg); assert.is_nil(cerr)
      local tok, exp = c:token()
      assert.equal(t0 + 3600, exp)
      local claims = verify(tok, RUN_URL)
      assert.equal(sa_info.client_email, claims.email)
      local r = fake:requests("/token")
      assert.equal(1, #r)
      local _, assertion = helpers.jwt_parts(r[1].form.assertion)
      assert.equal(RUN_URL, assertion.target_audience)
      assert.is_nil(assertion.scope)
      assert.equal(fake.token_uri, assertion.aud)
      assert.equal(tok, (c:token()))
      local h = assert(c:apply({}))
      assert.equal("Bearer " .. tok, h.authorization)
      assert.equal(1, #fake:requests("/token"))
      -- Past exp less the refresh window: a new one.
      clock = t0 + 3600 - 100
      assert.is_string((c:token()))
      assert.equal(2, #fake:requests("/token"))
    end)

    it("impersonated: generateIdToken (include_email); external account: generateIdToken of its account", function()
      local source = assert(au.from_file(user_file, { cache = token_cache.new(), retry = fast_retry() }))
      local i = assert(imp.credentials({ source = source, target_principal = TARGET,
        iam_endpoint = fake.url, cache = token_cache.new(), retry = fast_retry() }))
      local c = assert(id_token.credentials(i, { audience = RUN_URL, include_email = true }))
      local tok = assert(c:token())
      local claims = verify(tok, RUN_URL)
      assert.equal(TARGET, claims.email)
      local rs = fake:requests({ pattern = ":generateIdToken$" })
      assert.equal(1, #rs)
      assert.same({ audience = RUN_URL, includeEmail = true }, rs[1].json)
      assert.equal(tok, (c:token()))
      assert.equal(1, #fake:requests({ pattern = ":generateIdToken$" }))
      -- An external account with impersonation.
      local e = new(impersonating())
      local d = assert(id_token.credentials(e, { audience = "aud-2" }))
      local t2, exp2 = d:token()
      assert.is_string(t2)
      assert.is_number(exp2)
      claims = verify(t2, "aud-2")
      assert.is_nil(claims.email)
      rs = fake:requests({ pattern = ":generateIdToken$" })
      assert.equal(2, #rs)
      assert.equal(IAM_PATH .. ":generateIdToken", rs[2].path)
      assert.same({ audience = "aud-2", includeEmail = false }, rs[2].json)
      assert.equal(1, #fake:requests("/v1/token"))
      -- One-shot, uncached.
      local direct = assert(e:fetch_id_token("aud-5", true))
      assert.equal(TARGET, verify(direct, "aud-5").email)
      assert.equal(3, #fake:requests({ pattern = ":generateIdToken$" }))
    end)

    it("compute engine: the metadata server's identity?audience=...&format=full", function()
      local src = assert(ce.credentials({ env = { GCE_METADATA_HOST = fake.host_port },
        cache = token_cache.new(), retry = fast_retry() }))
      local c = assert(id_token.credentials(src, { audience = RUN_URL }))
      local tok = assert(c:token())
      local claims = verify(tok, RUN_URL)
      assert.equal("fake-project", claims.google.compute_engine.project_id)
      local rs = fake:requests({ pattern = "/identity$" })
      assert.equal(1, #rs)
      local query = {}
      for k, v in rs[1].query:gmatch("([^&=]+)=([^&]*)") do query[k] = v end
      assert.same({ audience = helpers.urlencode(RUN_URL), format = "full" }, query)
      assert.equal(tok, (c:token()))
      assert.equal(1, #fake:requests({ pattern = "/identity$" }))
    end)

    it("from Application Default Credentials, and fetch as a one-shot", function()
      local env = { GOOGLE_APPLICATION_CREDENTIALS = sa_info.path }
      local c = assert(id_token.credentials(nil, { audience = RUN_URL, env = env,
                                                   cache = token_cache.new() }))
      assert.equal("service_account", c.source.kind)
      verify(assert(c:token()), RUN_URL)
      local tok, exp = id_token.fetch("aud-3", { env = env, cache = token_cache.new() })
      assert.is_number(exp)
      verify(tok, "aud-3")
      local e = new(impersonating())
      tok = assert(id_token.fetch("aud-4", { source = e }))
      verify(tok, "aud-4")
    end)

    it("gauth token --id-token --audience works for an external account file, and refuses a user's", function()
      local cli = require "gauth.cli"
      local function sink()
        local t, o = {}, {}
        function o.write(self, ...)
          for i = 1, select("#", ...) do t[#t + 1] = tostring((select(i, ...))) end
          return self
        end
        function o.flush() return true end
        function o.text() return table.concat(t) end
        return o
      end
      local path = helpers.tmpname("cli-ea", ".json")
      helpers.write_file(path, cjson.encode(impersonating()))
      local out, errs = sink(), sink()
      local code = cli.main({ "token", "--id-token", "--audience", "aud-cli", "--key-file", path },
                            { stdout = out, stderr = errs })
      assert.equal(0, code, errs.text())
      verify((out.text():gsub("\n$", "")), "aud-cli")
      assert.equal(1, #fake:requests({ pattern = ":generateIdToken$" }))
      out, errs = sink(), sink()
      code = cli.main({ "token", "--id-token", "--audience", "aud-cli", "--key-file", user_file },
                      { stdout = out, stderr = errs })
      assert.equal(1, code)
      assert.equal("", out.text())
      assert.matches("gauth%.id_token: credentials: authorized_user credentials cannot give ID tokens", errs.text())
    end)

    -- bin/gauth in a child process (the environment is its own): an
    -- impersonated key file through ADC (generateIdToken of the target,
    -- with the source's token) and the metadata server through ADC.
    it("gauth token --id-token through ADC: an impersonated key file, the metadata server", function()
      local function gauth_cli(args, env)
        local out, err = helpers.tmpname("cli-out"), helpers.tmpname("cli-err")
        local cmd = ("cd %s && env -u GOOGLE_APPLICATION_CREDENTIALS -u CLOUDSDK_CONFIG -u NO_GCE_CHECK"
          .. " -u GCE_METADATA_HOST HOME=%s LUA_PATH=%s LUA_CPATH=%s %s %s bin/gauth %s >%s 2>%s"
          .. " </dev/null; echo $?"):format(q(helpers.root), q(helpers.tmpdir()),
            q(helpers.root .. "/lua/?.lua;" .. helpers.root .. "/lua/?/init.lua;;"),
            q(os.getenv("GAUTH_BUILD") .. "/?.so;;"), env, q(os.getenv("GAUTH_LUA") or "lua5.4"),
            args, q(out), q(err))
        local p = assert(io.popen(cmd))
        local code = tonumber(p:read("*a"):match("(%d+)%s*$"))
        p:close()
        return code, helpers.read_file(out) or "", helpers.read_file(err) or ""
      end
      local imp_file = helpers.tmpname("imp-cli", ".json")
      helpers.write_file(imp_file, cjson.encode({ type = "impersonated_service_account",
        service_account_impersonation_url = fake.url .. IAM_PATH .. ":generateAccessToken",
        source_credentials = cjson.decode(helpers.read_file(user_file)) }))
      local code, out, err = gauth_cli("token --id-token --audience aud-imp",
        "GOOGLE_APPLICATION_CREDENTIALS=" .. q(imp_file) .. " NO_GCE_CHECK=true")
      assert.equal(0, code, err)
      verify((out:gsub("\n$", "")), "aud-imp")
      local rs = fake:requests({ pattern = ":generateIdToken$" })
      assert.equal(1, #rs)
      assert.equal(IAM_PATH .. ":generateIdToken", rs[1].path)
      assert.equal(1, #fake:requests("/token"))
      code, out, err = gauth_cli("token --id-token --audience aud-meta",
        "GCE_METADATA_HOST=" .. q(fake.host_port))
      assert.equal(0, code, err)
      local claims = verify((out:gsub("\n$", "")), "aud-meta")
      assert.equal("fake-project", claims.google.compute_engine.project_id)
      assert.equal(1, #fake:requests({ pattern = "/identity$" }))
      -- Neither: exit 1, one line saying what ADC tried.
      code, out, err = gauth_cli("token --id-token --audience aud-none", "NO_GCE_CHECK=true")
      assert.equal(1, code)
      assert.equal("", out)
      assert.matches("^gauth: gauth%.adc: default: could not find default credentials", err)
    end)

    it("answers nil, msg, err for sources that cannot give ID tokens, and when the token fails", function()
      local user = assert(au.from_file(user_file, { cache = token_cache.new() }))
      local c, msg, err = id_token.credentials(user, { audience = RUN_URL })
      assert.is_nil(c)
      assert.matches("^gauth%.id_token: credentials: authorized_user credentials cannot give ID tokens", msg)
      is_error(err, "id_token", "credentials")
      c, msg, err = id_token.credentials(new(config()), { audience = RUN_URL })
      assert.is_nil(c)
      assert.matches("^gauth%.id_token: credentials: external account credentials give ID tokens only with"
        .. " service_account_impersonation_url", msg)
      is_error(err, "id_token", "credentials")
      local tok
      tok, msg, err = id_token.fetch(RUN_URL, { env = { GOOGLE_APPLICATION_CREDENTIALS =
        helpers.tmpname("absent", ".json") }, cache = token_cache.new() })
      assert.is_nil(tok)
      assert.matches("^gauth%.id_token: credentials: no Application Default Credentials", msg)
      is_error(err, "id_token", "credentials")
      -- The token endpoint refuses: token() and apply() say so.
      fake:script("/token", { status = 400, body = { error = "invalid_grant", error_description = "nope" } })
      local s = assert(id_token.credentials(assert(sa.from_info(sa_info.data, { retry = fast_retry() })),
                                            { audience = RUN_URL, cache = token_cache.new() }))
      tok, msg, err = s:token()
      assert.is_nil(tok)
      assert.matches("^gauth%.service_account: token response: .*invalid_grant: nope", msg)
      is_error(err, "service_account", "token response")
      fake:script("/token", { status = 400, body = { error = "invalid_grant", error_description = "nope" } })
      local h, hmsg, herr = s:apply({})
      assert.is_nil(h)
      assert.equal(msg, hmsg)
      is_error(herr, "service_account", "token response")
      assert.has_error(function() id_token.credentials(user, {}) end,
        "gauth.id_token: credentials: opts.audience (a non-empty string) is required")
      assert.has_error(function() id_token.credentials(user, { audience = RUN_URL, now = "soon" }) end,
        "gauth.id_token: credentials: now must be a number or a function")
      assert.has_error(function() id_token.fetch(nil) end,
        "gauth.id_token: fetch: audience must be a non-empty string")
    end)
  end)
end)

-- An external account configuration of another universe, as gcloud writes
-- it there (no token_url; the impersonation URL on the universe's IAM
-- host): STS, IAM and Cloud Resource Manager are reached at
-- sts./iamcredentials./cloudresourcemanager.<universe>. A child
-- interpreter runs gauth with https_proxy pointing at the loopback CONNECT
-- proxy, which tunnels exactly those three names to the fake (TLS with a
-- certificate for them from the test CA) and refuses anything else.
describe("a non-default universe: an external account, Compute Engine", function()
  local UNIVERSE = "example-universe.test"
  local HOSTS = { "sts." .. UNIVERSE, "iamcredentials." .. UNIVERSE, "cloudresourcemanager." .. UNIVERSE }
  local fake, proxy, key

  lazy_setup(function()
    local cert, ckey = judges.google_cert(HOSTS)
    fake = helpers.start_fake({ cert_file = cert, key_file = ckey })
    local routes = {}
    for _, h in ipairs(HOSTS) do routes[h .. ":443"] = "127.0.0.1:" .. fake.port end
    proxy = judges.start_connect_proxy(routes)
    key = helpers.make_rsa_key()
  end)

  lazy_teardown(function()
    proxy.stop()
    fake:stop()
  end)

  it("sends the STS exchange, impersonation, signBlob and the project lookup to the universe's hosts", function()
    fake:reset()
    fake:config({ federation = { oidc_public_pem = key.public_pem },
                  projects = { ["123456"] = "universe-project" } })
    local subject = helpers.tmpname("u-subject", ".txt")
    helpers.write_file(subject, oidc(key))
    local cfg = helpers.tmpname("u-config", ".json")
    helpers.write_file(cfg, cjson.encode({ type = "external_account", audience = AUD,
      subject_token_type = JWT_TYPE, universe_domain = UNIVERSE,
      service_account_impersonation_url = "https://iamcredentials." .. UNIVERSE
        .. IAM_PATH .. ":generateAccessToken",
      credential_source = { file = subject } }))
    local script = helpers.tmpname("u-run", ".lua")
    helpers.write_file(script, [[
local cjson = require "cjson"
local ea = require "gauth.external_account"
local c = assert(ea.from_file(arg[1], { ca_file = arg[2], retry = false }))
local out = { token_url = c.token_url }
local tok, msg = c:token()
out.token = tok
if not tok then out.token_error = msg end
local sig
sig, msg = c:sign_bytes("universe bytes")
out.signed, out.sign_error = sig ~= nil, msg
out.project, out.project_error = c:get_project_id()
io.write(cjson.encode(out))
]])
    local build = os.getenv("GAUTH_BUILD")
    local cmd = "env -u no_proxy -u NO_PROXY -u HTTP_PROXY -u HTTPS_PROXY https_proxy=" .. q(proxy.url)
      .. " LUA_PATH=" .. q(helpers.root .. "/lua/?.lua;" .. helpers.root .. "/lua/?/init.lua;;")
      .. " LUA_CPATH=" .. q(build .. "/?.so;;")
      .. " " .. q(os.getenv("GAUTH_LUA") or "lua5.4") .. " " .. q(script) .. " " .. q(cfg)
      .. " " .. q(helpers.certs().ca_file) .. " 2>&1"
    local p = io.popen(cmd)
    local text = p:read("*a")
    p:close()
    local out = cjson.decode(text)
    assert(type(out) == "table", text)
    assert.equal("https://sts." .. UNIVERSE .. "/v1/token", out.token_url)
    assert.is_nil(out.token_error)
    assert.matches("^fake%-token%-%d+$", out.token)
    assert.is_nil(out.sign_error)
    assert.is_true(out.signed)
    assert.equal("universe-project", out.project)
    -- What arrived, by host.
    local seen = {}
    for _, r in ipairs(fake:requests()) do
      seen[#seen + 1] = r.headers.host .. " " .. r.method .. " " .. r.path
    end
    assert.same({
      "sts." .. UNIVERSE .. " POST /v1/token",
      "iamcredentials." .. UNIVERSE .. " POST " .. IAM_PATH .. ":generateAccessToken",
      "iamcredentials." .. UNIVERSE .. " POST " .. IAM_PATH .. ":signBlob",
      "cloudresourcemanager." .. UNIVERSE .. " GET /v1/projects/123456",
    }, seen)
    for _, cn in ipairs(proxy.connects()) do
      assert.is_false(cn.refused, "refused CONNECT " .. tostring(cn.target))
    end
  end)

  -- Compute Engine in that universe: the metadata server (plain http on
  -- loopback, never proxied) says the universe; signBlob then goes to
  -- iamcredentials.<universe> through the proxy. The metadata server hands
  -- out a token the IAM fake issued, as Google's would be accepted there.
  it("signs for Compute Engine at iamcredentials.<universe>, the universe read from the metadata server", function()
    fake:reset()
    local meta = helpers.start_fake({ tls = false })
    local ok, perr = pcall(function()
      local http = assert(require("gauth.http").new({ ca_file = helpers.certs().ca_file }))
      local res = assert(http:request({ url = fake.url
        .. "/computeMetadata/v1/instance/service-accounts/default/token",
        headers = { ["metadata-flavor"] = "Google" } }))
      http:close()
      local issued = assert(cjson.decode(res.body)).access_token
      local email = meta:get_config().service_account
      meta:config({ metadata = { ["universe/universe-domain"] = UNIVERSE } })
      meta:script("/computeMetadata/v1/instance/service-accounts/default/token",
        { status = 200, body = { access_token = issued, expires_in = 3600, token_type = "Bearer" } })
      local sign_path = "/v1/projects/-/serviceAccounts/" .. email .. ":signBlob"
      -- The first call reaches the fake's signBlob ({} falls through), the second is refused.
      fake:script(sign_path, { {}, { status = 403, body = { error = { code = 403,
        status = "PERMISSION_DENIED", message = "Permission 'iam.serviceAccounts.signBlob' denied." } } } })
      local script = helpers.tmpname("u-ce", ".lua")
      helpers.write_file(script, [[
local cjson = require "cjson"
local core = require "gauth.core"
local ce = require "gauth.compute_engine"
local http = assert(require("gauth.http").new({ ca_file = arg[2] }))
local c = assert(ce.credentials({ env = { GCE_METADATA_HOST = arg[3] }, http = http, retry = false }))
local out = {}
local sig, msg, err = c:sign_bytes("universe bytes")
out.sig = sig and core.b64_encode(sig)
out.universe = c.universe_domain
sig, msg, err = c:sign_bytes("refused bytes")
out.refused = { value = sig == nil and "nil" or "not nil", msg = msg, module = err and err.module,
                step = err and err.step, status = err and err.status, permission = err and err.permission,
                uri = err and err.uri }
io.write(cjson.encode(out))
]])
      local cmd = "env -u no_proxy -u NO_PROXY -u HTTP_PROXY -u HTTPS_PROXY https_proxy=" .. q(proxy.url)
        .. " LUA_PATH=" .. q(helpers.root .. "/lua/?.lua;" .. helpers.root .. "/lua/?/init.lua;;")
        .. " LUA_CPATH=" .. q(os.getenv("GAUTH_BUILD") .. "/?.so;;")
        .. " " .. q(os.getenv("GAUTH_LUA") or "lua5.4") .. " " .. q(script) .. " " .. q("unused")
        .. " " .. q(helpers.certs().ca_file) .. " " .. q(meta.host_port) .. " 2>&1"
      local p = io.popen(cmd)
      local text = p:read("*a")
      p:close()
      local out = cjson.decode(text)
      assert(type(out) == "table", text)
      assert.equal(UNIVERSE, out.universe)
      assert.is_string(out.sig, text)
      assert.is_true(py_verify(fake:get_config().server_public_pem, "universe bytes", core.b64_decode(out.sig)))
      local r = out.refused
      assert.equal("nil", r.value)
      assert.equal("gauth.iam: response: permission iam.serviceAccounts.signBlob denied on service account "
        .. email .. " (the caller needs it, e.g. through roles/iam.serviceAccountTokenCreator): "
        .. "Permission 'iam.serviceAccounts.signBlob' denied. (HTTP 403 PERMISSION_DENIED)", r.msg)
      assert.equal("iam", r.module)
      assert.equal(403, r.status)
      assert.equal("iam.serviceAccounts.signBlob", r.permission)
      -- What arrived: both signBlob calls at the universe's IAM host, with
      -- the metadata server's token; nothing at googleapis.com.
      local seen = {}
      for _, rq in ipairs(fake:requests()) do
        seen[#seen + 1] = rq.headers.host .. " " .. rq.method .. " " .. rq.path
        if rq.path == sign_path then assert.equal("Bearer " .. issued, rq.headers.authorization) end
      end
      assert.same({
        "127.0.0.1:" .. fake.port .. " GET /computeMetadata/v1/instance/service-accounts/default/token",
        "iamcredentials." .. UNIVERSE .. " POST " .. sign_path,
        "iamcredentials." .. UNIVERSE .. " POST " .. sign_path,
      }, seen)
      for _, cn in ipairs(proxy.connects()) do
        assert.is_false(cn.refused, "refused CONNECT " .. tostring(cn.target))
      end
      assert.equal(1, #meta:requests("/computeMetadata/v1/universe/universe-domain"))
    end)
    meta:stop()
    assert(ok, perr)
  end)
end)

-- google-auth-library's getIdTokenClient as the judge of the service
-- account case: both fetch an ID token for the same key and audience from
-- the fake (Node at its fixed www.googleapis.com/oauth2/v4/token, through
-- the CONNECT proxy; gauth at the key file's token_uri); the assertions
-- are compared claim by claim, and both answers verify with PyJWT.
describe("gauth.id_token.credentials judged by getIdTokenClient (Node)", function()
  local NODE_TOKEN_URL = "https://www.googleapis.com/oauth2/v4/token"
  local fake, proxy

  lazy_setup(function()
    local cert, ckey = judges.google_cert({ "www.googleapis.com" })
    fake = helpers.start_fake({ cert_file = cert, key_file = ckey })
    proxy = judges.start_connect_proxy({ ["www.googleapis.com:443"] = "127.0.0.1:" .. fake.port })
  end)

  lazy_teardown(function()
    proxy.stop()
    fake:stop()
  end)

  it("sends the assertion Node sends (iss, target_audience, one hour, no scope)", function()
    local _, info = helpers.make_service_account_file({ token_uri = fake.token_uri })
    fake:reset()
    fake:config({ token_uri = { fake.token_uri, NODE_TOKEN_URL },
                  public_keys = { [info.kid] = info.public_pem } })
    local server_pem = fake:get_config().server_public_pem
    local src = assert(sa.from_info(info.data, { ca_file = fake.ca_file, retry = false }))
    local c = assert(id_token.credentials(src, { audience = RUN_URL, cache = token_cache.new() }))
    local ours = assert(c:token())
    local res = judges.run_json(judges.node_env(proxy.url) .. "node "
                                .. q(judges.support_dir .. "/sa_idtoken_judge.js"),
                                { cases = { { key = info.data, audience = RUN_URL } } })
    assert(res[1].token, "node: " .. tostring(res[1].error))
    for _, tok in ipairs({ ours, res[1].token }) do
      local claims = assert(helpers.pyjwt_verify(tok, server_pem, { audience = RUN_URL }))
      assert.equal(info.client_email, claims.email)
    end
    local mine = fake:requests("/token")
    local theirs = fake:requests("/oauth2/v4/token")
    assert.equal(1, #mine)
    assert.equal(1, #theirs)
    local a, b = mine[1], theirs[1]
    assert.same({ "assertion", "grant_type" }, (function()
      local k = {}
      for name in pairs(a.form) do k[#k + 1] = name end
      table.sort(k)
      return k
    end)())
    assert.equal(b.form.grant_type, a.form.grant_type)
    assert.equal(b.headers["content-type"]:match("^[^;]+"), a.headers["content-type"]:match("^[^;]+"))
    local ha, ca = helpers.jwt_parts(a.form.assertion)
    local hb, cb = helpers.jwt_parts(b.form.assertion)
    assert.equal(hb.alg, ha.alg)
    local function names(t)
      local k = {}
      for name in pairs(t) do k[#k + 1] = name end
      table.sort(k)
      return k
    end
    assert.same(names(cb), names(ca))
    assert.equal(cb.iss, ca.iss)
    assert.equal(cb.target_audience, ca.target_audience)
    assert.equal(cb.exp - cb.iat, ca.exp - ca.iat)
    -- Each at its own token endpoint.
    assert.equal(NODE_TOKEN_URL, cb.aud)
    assert.equal(fake.token_uri, ca.aud)
    assert.is_true(#proxy.connects() >= 1)
    for _, cn in ipairs(proxy.connects()) do
      assert.is_false(cn.refused, "refused CONNECT " .. tostring(cn.target))
    end
  end)
end)
