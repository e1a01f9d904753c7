-- Every credentials type sends every request it makes (its token request,
-- its source's, IAM Credentials, STS) with the transport options it was
-- given: a proxy, a client certificate and key (mTLS), a CA bundle. The
-- fake Google (spec/support/fake_google.py) serves a certificate for
-- auth.gauth.test from the test CA and REQUIRES a client certificate from
-- it; only the loopback CONNECT proxy (spec/support/connect_proxy.py)
-- knows where auth.gauth.test is. A request the fake answered therefore
-- came through the proxy, with TLS verified against the given CA and the
-- client certificate presented. The metadata server (plain http on
-- loopback) is never proxied.
local helpers = require "helpers"
local judges = require "support.judges"
local cjson = require "cjson.safe"
local token_cache = require "gauth.token_cache"
local sa = require "gauth.service_account"
local au = require "gauth.authorized_user"
local imp = require "gauth.impersonated"
local downscoped = require "gauth.downscoped"
local ea = require "gauth.external_account"
local eau = require "gauth.external_account_authorized_user"
local ce = require "gauth.compute_engine"
local iam = require "gauth.iam"
local id_token = require "gauth.id_token"
local adc = require "gauth.adc"

local HOST = "auth.gauth.test"
local BASE = "https://" .. HOST
local TARGET = "chain-sa@proj.iam.gserviceaccount.com"
local AUD = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/pool/providers/oidc"
local RULES = { { available_resource = "//storage.googleapis.com/projects/_/buckets/b",
                  available_permissions = { "inRole:roles/storage.objectViewer" } } }

describe("the transport options reach every request of every credentials type", function()
  local certs, fake, meta, proxy, key, sa_path, sa_info

  lazy_setup(function()
    certs = helpers.certs()
    local cert, ckey = judges.google_cert({ HOST })
    fake = helpers.start_fake({ cert_file = cert, key_file = ckey, client_ca = certs.ca_file })
    meta = helpers.start_fake({ tls = false })
    proxy = judges.start_connect_proxy({ [HOST .. ":443"] = "127.0.0.1:" .. fake.port })
    key = helpers.make_rsa_key()
    sa_path, sa_info = helpers.make_service_account_file({ token_uri = BASE .. "/token" })
  end)

  lazy_teardown(function()
    proxy.stop()
    meta:stop()
    fake:stop()
  end)

  before_each(function()
    fake:reset()
    fake:config({ token_uri = BASE .. "/token", public_keys = { [sa_info.kid] = sa_info.public_pem },
                  refresh_tokens = { [helpers.USER.refresh_token] = {
                    client_id = helpers.USER.client_id, client_secret = helpers.USER.client_secret },
                    ["wf-refresh"] = { client_id = "wf-client", client_secret = "wf-secret" } },
                  federation = { oidc_public_pem = key.public_pem } })
  end)

  -- The options under test, and a fresh cache (every case fetches).
  local function opts(extra)
    local o = { ca_file = certs.ca_file, client_cert = certs.client_cert, client_key = certs.client_key,
                proxy = proxy.url, retry = false, cache = token_cache.new() }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  -- Every request the fake got came with the client certificate, over a
  -- tunnel of the proxy to auth.gauth.test; returns the paths in order.
  local function all_mtls_through_proxy(from)
    local paths = {}
    for _, r in ipairs(fake:requests()) do
      assert.equal("gauth test client", r.client_subject, r.path)
      assert.equal(HOST, r.headers.host)
      paths[#paths + 1] = r.method .. " " .. r.path
    end
    local seen = 0
    for i, cn in ipairs(proxy.connects()) do
      if i > from then
        assert.is_false(cn.refused, tostring(cn.target))
        assert.equal(HOST .. ":443", cn.target)
        seen = seen + 1
      end
    end
    assert.is_true(seen >= 1)
    return paths
  end

  local function oidc_file()
    local now = os.time()
    local path = helpers.tmpname("subject", ".txt")
    helpers.write_file(path, helpers.pyjwt_encode({ iss = "https://issuer.example", sub = "workload-1",
      aud = "gauth-test", iat = now, exp = now + 600 }, key.private_pem))
    return path
  end

  local IAM_PATH = "/v1/projects/-/serviceAccounts/" .. TARGET

  it("service account, authorized user, external account authorized user: the token request", function()
    local from = #proxy.connects()
    local s = assert(sa.from_file(sa_path, opts({ scopes = "s1" })))
    assert.matches("^fake%-token%-", (s:token()))
    local user = assert(au.from_info({ type = "authorized_user", client_id = helpers.USER.client_id,
      client_secret = helpers.USER.client_secret, refresh_token = helpers.USER.refresh_token,
      token_uri = BASE .. "/token" }, opts()))
    assert.matches("^fake%-token%-", (user:token()))
    local wf = assert(eau.from_info({ type = "external_account_authorized_user", audience = AUD,
      client_id = "wf-client", client_secret = "wf-secret", refresh_token = "wf-refresh",
      token_url = BASE .. "/v1/oauthtoken" }, opts()))
    assert.matches("^fake%-token%-", (wf:token()))
    assert.same({ "POST /token", "POST /token", "POST /v1/oauthtoken" }, all_mtls_through_proxy(from))
  end)

  it("impersonated from a file: the source's token, generateAccessToken, signBlob, generateIdToken", function()
    local from = #proxy.connects()
    local data = cjson.decode(helpers.read_file(sa_path))
    local c = assert(imp.from_info({ type = "impersonated_service_account",
      service_account_impersonation_url = BASE .. IAM_PATH .. ":generateAccessToken",
      source_credentials = data }, opts()))
    assert.matches("^fake%-token%-", (c:token()))
    assert.is_string((c:sign_bytes("bytes")))
    local idc = assert(id_token.credentials(c, { audience = "https://run.example" }))
    assert.is_string((idc:token()))
    assert.same({ "POST /token", "POST " .. IAM_PATH .. ":generateAccessToken",
                  "POST " .. IAM_PATH .. ":signBlob", "POST " .. IAM_PATH .. ":generateIdToken" },
                all_mtls_through_proxy(from))
  end)

  it("downscoped over a service account: the source's token and the STS exchange", function()
    local from = #proxy.connects()
    local src = assert(sa.from_file(sa_path, opts({ scopes = "s2" })))
    local d = assert(downscoped.new(src, opts({ rules = RULES, token_url = BASE .. "/v1/token" })))
    assert.is_string((d:token()))
    assert.same({ "POST /token", "POST /v1/token" }, all_mtls_through_proxy(from))
  end)

  it("external account with impersonation: STS, generateAccessToken, generateIdToken", function()
    local from = #proxy.connects()
    local c = assert(ea.from_info({ type = "external_account", audience = AUD,
      subject_token_type = "urn:ietf:params:oauth:token-type:jwt", token_url = BASE .. "/v1/token",
      service_account_impersonation_url = BASE .. IAM_PATH .. ":generateAccessToken",
      credential_source = { file = oidc_file() } }, opts({ env = {} })))
    assert.matches("^fake%-token%-", (c:token()))
    assert.is_string((id_token.fetch("https://run.example", { source = c })))
    assert.same({ "POST /v1/token", "POST " .. IAM_PATH .. ":generateAccessToken",
                  "POST " .. IAM_PATH .. ":generateIdToken" }, all_mtls_through_proxy(from))
  end)

  it("Compute Engine: the metadata server direct, its IAM Credentials calls with the options", function()
    meta:reset()
    local from = #proxy.connects()
    -- The metadata server hands out a token of the fake's (as Google's
    -- would be accepted by IAM).
    local issued = assert(sa.from_file(sa_path, opts({ scopes = "s3" })):token())
    meta:script("/computeMetadata/v1/instance/service-accounts/default/token",
      { status = 200, body = { access_token = issued, expires_in = 3600, token_type = "Bearer" } })
    local c = assert(ce.credentials(opts({ env = { GCE_METADATA_HOST = meta.host_port },
                                          iam_endpoint = BASE })))
    local sig, smsg = c:sign_bytes("bytes")
    assert.is_nil(smsg)
    assert.is_string(sig)
    local email = meta:get_config().service_account
    assert.same({ "POST /token", "POST /v1/projects/-/serviceAccounts/" .. email .. ":signBlob" },
                all_mtls_through_proxy(from))
    -- The metadata server was read directly (the proxy saw only auth.gauth.test).
    assert.equal(1, #meta:requests("/computeMetadata/v1/instance/service-accounts/default/token"))
    assert.equal(1, #meta:requests("/computeMetadata/v1/instance/service-accounts/default/email"))
  end)

  it("an IAM client, and ADC's credentials and id_token.fetch through ADC", function()
    local from = #proxy.connects()
    local src = assert(sa.from_file(sa_path, opts({ scopes = "s4" })))
    local client = iam.new(opts({ source = src, email = TARGET, endpoint = BASE }))
    assert.is_string((client:sign_blob("bytes")))
    local c = assert(adc.default(opts({ env = { GOOGLE_APPLICATION_CREDENTIALS = sa_path }, scopes = "s5" })))
    assert.is_string((c:token()))
    assert.is_string((id_token.fetch("https://run.example",
      opts({ env = { GOOGLE_APPLICATION_CREDENTIALS = sa_path } }))))
    assert.same({ "POST /token", "POST " .. IAM_PATH .. ":signBlob", "POST /token", "POST /token" },
                all_mtls_through_proxy(from))
  end)

  it("without the client certificate each chain fails at its first request: nil, msg, err", function()
    local data = cjson.decode(helpers.read_file(sa_path))
    local no_cert = opts()
    no_cert.client_cert, no_cert.client_key = nil, nil
    local c = assert(imp.from_info({ type = "impersonated_service_account",
      service_account_impersonation_url = BASE .. IAM_PATH .. ":generateAccessToken",
      source_credentials = data }, no_cert))
    local tok, msg, err = c:token()
    assert.is_nil(tok)
    helpers.assert_failure(msg, err)
    assert.truthy(msg:find("client certificate", 1, true), msg)
    assert.equal("tls_client_cert", err.kind)
    -- Refused in the handshake: no request reached the fake.
    assert.same({}, fake:requests())
  end)

  it("refuses a transport option of the wrong type, naming it, in every type", function()
    assert.error_matches(function() imp.credentials({ source = {}, target_principal = TARGET }) end,
      "opts.source must be credentials", 1, true)
    local src = assert(sa.from_file(sa_path, { scopes = "s" }))
    assert.error_matches(function() imp.credentials({ source = src, target_principal = TARGET, client_cert = 1 }) end,
      "gauth.impersonated: client_cert must be a path (string)", 1, true)
    assert.error_matches(function() downscoped.new(src, { rules = RULES, proxy = 7 }) end,
      "gauth.downscoped: proxy must be a string (a proxy URL) or false", 1, true)
    assert.error_matches(function() ce.credentials({ ca_file = true }) end,
      "gauth.compute_engine: ca_file must be a string", 1, true)
    assert.error_matches(function() iam.new({ source = src, email = TARGET, no_proxy = {} }) end,
      "gauth.iam: no_proxy must be a string", 1, true)
    assert.error_matches(function() id_token.fetch("aud", { client_key = 5 }) end,
      "gauth.id_token: client_key must be a path (string)", 1, true)
  end)
end)
