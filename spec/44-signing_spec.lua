-- Signing with every credentials type: signer_email, sign_bytes, sign_jwt
-- (a key file locally; Compute Engine and impersonated credentials through
-- IAM Credentials' signBlob / signJwt on the loopback fake, which checks the
-- caller's token), impersonated ID tokens (generateIdToken), and the IAM
-- client's failures (403/404 naming account and permission, 5xx/429
-- retried, 401 once with a new source token). Signatures are judged by
-- Python's cryptography and PyJWT, never by gauth.
local helpers = require "helpers"
local judges = require "support.judges"
local sa = require "gauth.service_account"
local ce = require "gauth.compute_engine"
local imp = require "gauth.impersonated"
local au = require "gauth.authorized_user"
local iam = require "gauth.iam"
local storage = require "gauth.storage"
local errors = require "gauth.errors"
local token_cache = require "gauth.token_cache"
local core = require "gauth.core"
local cjson = require "cjson.safe"

local TARGET = "target@proj.iam.gserviceaccount.com"
local D1 = "d1@proj.iam.gserviceaccount.com"

local sleeps, fast_retry = helpers.recorded_retry()

-- Python's cryptography: does `sig` verify over `data` with `pem`
-- (RSA-SHA256, PKCS#1 v1.5)?
local function py_verify(pem, data, sig)
  local res = judges.run_json("python3 -c " .. helpers.shell_quote([[
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

describe("signing", function()
  local fake, sa_info, server_pem, user_file

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
    local _
    _, sa_info = helpers.make_service_account_file({ token_uri = fake.token_uri })
    server_pem = fake:get_config().server_public_pem
    user_file = helpers.make_authorized_user_file({ extra = { token_uri = fake.token_uri } })
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    fake:config({ refresh_tokens = helpers.user_refresh_tokens(),
                  public_keys = { [sa_info.kid] = sa_info.public_pem } })
  end)

  local function metadata_creds(opts)
    opts = opts or {}
    opts.env = { GCE_METADATA_HOST = fake.host_port }
    opts.iam_endpoint = opts.iam_endpoint or fake.url
    opts.cache = token_cache.new()
    opts.retry = opts.retry or fast_retry()
    return assert(ce.credentials(opts))
  end

  local function impersonated(opts)
    opts = opts or {}
    opts.source = assert(au.from_file(user_file, { cache = token_cache.new(), retry = fast_retry() }))
    opts.target_principal = TARGET
    opts.iam_endpoint = fake.url
    opts.cache = token_cache.new()
    opts.retry = opts.retry or fast_retry()
    return assert(imp.credentials(opts))
  end

  local function iam_requests(method)
    return fake:requests({ pattern = ":" .. method .. "$" })
  end

  describe("service account key", function()
    it("signs locally: signer_email, sign_bytes (verified by cryptography), sign_jwt (by PyJWT)", function()
      local c = assert(sa.from_info(sa_info.data))
      assert.equal(sa_info.client_email, c:signer_email())
      local sig, msg, err = c:sign_bytes("GOOG4-RSA-SHA256\nbytes to sign \0\255")
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal(256, #sig)
      assert.is_true(py_verify(sa_info.public_pem, "GOOG4-RSA-SHA256\nbytes to sign \0\255", sig))
      assert.is_false(py_verify(sa_info.public_pem, "other bytes", sig))
      local tok = assert(c:sign_jwt({ iss = "me", aud = "you", n = 1 }))
      local claims, header = helpers.pyjwt_verify(tok, sa_info.public_pem,
        { audience = "you", verify_exp = false })
      assert.same({ iss = "me", aud = "you", n = 1 }, claims)
      assert.equal(sa_info.kid, header.kid)
      assert.equal(0, #fake:requests())
    end)

    it("raises for a wrong argument", function()
      local c = assert(sa.from_info(sa_info.data))
      assert.has_error(function() c:sign_bytes(nil) end, "gauth.service_account: sign_bytes: bytes must be a string")
      assert.has_error(function() c:sign_jwt("claims") end, "gauth.service_account: sign_jwt: claims must be a table")
    end)
  end)

  describe("credentials without a service account", function()
    it("answer nil, a message and an error for signer_email, sign_bytes and sign_jwt", function()
      local c = assert(au.from_file(user_file))
      for _, f in ipairs({ function() return c:signer_email() end,
                           function() return c:sign_bytes("x") end,
                           function() return c:sign_jwt({}) end }) do
        local v, msg, err = f()
        assert.is_nil(v)
        assert.matches("^gauth%.authorized_user: signing: authorized_user credentials cannot sign", msg)
        assert.equal("authorized_user", err.module)
        assert.equal("signing", err.step)
        assert.is_false(err.retryable)
      end
    end)
  end)

  describe("compute engine", function()
    it("signs through signBlob with the metadata server's email and token", function()
      local c = metadata_creds()
      local email = fake:get_config().service_account
      assert.equal(email, c:signer_email())
      local sig, msg, err = c:sign_bytes("blob \0 bytes")
      assert.is_nil(msg); assert.is_nil(err)
      assert.is_true(py_verify(server_pem, "blob \0 bytes", sig))
      local rs = iam_requests("signBlob")
      assert.equal(1, #rs)
      assert.equal("/v1/projects/-/serviceAccounts/" .. email .. ":signBlob", rs[1].path)
      assert.equal("blob \0 bytes", core.b64_decode(rs[1].json.payload))
      assert.is_nil(rs[1].json.delegates)
      -- The caller's token is the metadata server's token of the account.
      local tokens = fake:tokens()
      local bearer = rs[1].headers.authorization:match("^Bearer (.+)$")
      assert.equal("metadata", tokens[bearer].kind)
      -- The email was asked once.
      assert(c:sign_bytes("again"))
      assert.equal(1, #fake:requests("/computeMetadata/v1/instance/service-accounts/default/email"))
    end)

    it("signs JWTs through signJwt, and ID token credentials sign with an access token", function()
      local c = metadata_creds()
      local tok = assert(c:sign_jwt({ sub = "x", aud = "y" }))
      local claims = helpers.pyjwt_verify(tok, server_pem, { audience = "y", verify_exp = false })
      assert.same({ sub = "x", aud = "y" }, claims)
      local rs = iam_requests("signJwt")
      assert.same({ sub = "x", aud = "y" }, cjson.decode(rs[1].json.payload))
      local idc = assert(ce.id_token_credentials({ target_audience = "https://aud.example",
        env = { GCE_METADATA_HOST = fake.host_port }, iam_endpoint = fake.url,
        cache = token_cache.new(), retry = fast_retry() }))
      assert(idc:sign_bytes("x"))
      local bearer = iam_requests("signBlob")[1].headers.authorization:match("^Bearer (.+)$")
      assert.equal("metadata", fake:tokens()[bearer].kind)
    end)

    it("signs a Cloud Storage URL the Python stand-in accepts with the IAM key", function()
      local c = metadata_creds()
      local url = assert(storage.signed_url({ credentials = c, bucket = "b", object = "o b",
                                              now = 1577836800 }))
      local email = fake:get_config().service_account
      assert.truthy(url:find("X-Goog-Credential=" .. email:gsub("@", "%%40"), 1, true))
      local r = judges.py_storage_check({ { method = "GET", url = url, public_pem = server_pem } })
      assert.is_true(r[1].ok, tostring(r[1].reason))
    end)

    it("says which account and permission a 403 is about, with no signature", function()
      local c = metadata_creds()
      local email = fake:get_config().service_account
      local path = "/v1/projects/-/serviceAccounts/" .. email .. ":signBlob"
      fake:script(path, { status = 403,
        body = { error = { code = 403, status = "PERMISSION_DENIED",
          message = "Permission 'iam.serviceAccounts.signBlob' denied on resource (or it may not exist)." } },
      })
      local v, msg, err = c:sign_bytes("x")
      assert.is_nil(v)
      assert.equal("gauth.iam: response: permission iam.serviceAccounts.signBlob denied on service account "
        .. email .. " (the caller needs it, e.g. through roles/iam.serviceAccountTokenCreator): "
        .. "Permission 'iam.serviceAccounts.signBlob' denied on resource (or it may not exist)."
        .. " (HTTP 403 PERMISSION_DENIED)", msg)
      assert.equal(403, err.status)
      assert.equal(email, err.account)
      assert.equal("iam.serviceAccounts.signBlob", err.permission)
      assert.equal("PERMISSION_DENIED", err.google_status)
      assert.is_false(err.retryable)
      assert.equal(1, #iam_requests("signBlob"))
      -- The same through storage: the error names them too.
      fake:script("/v1/projects/-/serviceAccounts/" .. email .. ":signBlob",
        { status = 404, body = { error = { code = 404, status = "NOT_FOUND", message = "Not found" } } })
      local u, m2, e2 = storage.signed_url({ credentials = c, bucket = "b", object = "o" })
      assert.is_nil(u)
      assert.matches("^gauth%.storage: signing: signing failed: gauth%.iam: response: service account "
        .. email:gsub("%p", "%%%0") .. " not found %(or the caller lacks iam%.serviceAccounts%.signBlob", m2)
      assert.equal(404, e2.status)
      assert.equal(email, e2.account)
      assert.equal("iam.serviceAccounts.signBlob", e2.permission)
    end)
  end)

  describe("impersonated", function()
    it("signs as the target with the source's token and the delegates", function()
      local c = impersonated({ delegates = { D1 } })
      assert.equal(TARGET, c:signer_email())
      local sig = assert(c:sign_bytes("to sign"))
      assert.is_true(py_verify(server_pem, "to sign", sig))
      local r = iam_requests("signBlob")[1]
      assert.equal("/v1/projects/-/serviceAccounts/" .. TARGET .. ":signBlob", r.path)
      assert.same({ "projects/-/serviceAccounts/" .. D1 }, r.json.delegates)
      local bearer = r.headers.authorization:match("^Bearer (.+)$")
      assert.equal("refresh_token", fake:tokens()[bearer].kind)
      local jwt = assert(c:sign_jwt({ a = "b" }))
      assert.same({ a = "b" }, (helpers.pyjwt_verify(jwt, server_pem, { verify_exp = false })))
    end)

    it("gives ID tokens (generateIdToken, include_email), cached as credentials", function()
      local c = impersonated()
      local idc = imp.id_token_credentials(c, { audience = "https://run.example", include_email = true })
      local tok = assert(idc:token())
      assert.equal(tok, (idc:token()))
      local rs = iam_requests("generateIdToken")
      assert.equal(1, #rs)
      assert.same({ audience = "https://run.example", includeEmail = true }, rs[1].json)
      local claims = helpers.pyjwt_verify(tok, server_pem, { audience = "https://run.example" })
      assert.equal(TARGET, claims.email)
      local one = assert(c:fetch_id_token("https://other.example"))
      claims = helpers.pyjwt_verify(one, server_pem, { audience = "https://other.example" })
      assert.is_nil(claims.email)
      assert.same({ audience = "https://other.example", includeEmail = false },
                  iam_requests("generateIdToken")[2].json)
    end)

    it("retries 5xx and 429, and a 401 once with a new source token", function()
      local c = impersonated()
      local path = "/v1/projects/-/serviceAccounts/" .. TARGET .. ":signBlob"
      fake:script(path, { { status = 503, body = "busy" },
                          { status = 429, body = { error = { code = 429, status = "RESOURCE_EXHAUSTED" } } } })
      assert(c:sign_bytes("x"))
      assert.equal(3, #iam_requests("signBlob"))
      assert.equal(2, #sleeps)
      fake:reset()
      fake:config({ refresh_tokens = helpers.user_refresh_tokens() })
      local c2 = impersonated()
      fake:script(path, { status = 401, body = { error = { code = 401, status = "UNAUTHENTICATED" } } })
      assert(c2:sign_bytes("x"))
      local rs = iam_requests("signBlob")
      assert.equal(2, #rs)
      assert.are_not.equal(rs[1].headers.authorization, rs[2].headers.authorization)
      -- 5xx to the end: gives up after the policy's attempts.
      fake:script(path, { { status = 500, body = "x" }, { status = 500, body = "x" },
                          { status = 500, body = "x" } })
      local v, msg, err = c2:sign_bytes("x")
      assert.is_nil(v)
      assert.matches("^gauth%.iam: response: signBlob for " .. TARGET:gsub("%p", "%%%0")
                     .. " refused.*gave up after 3 attempts", msg)
      assert.equal(500, err.status)
      assert.is_true(err.retryable)
    end)
  end)

  describe("gauth.iam", function()
    it("honours the universe domain and refuses clear-text endpoints", function()
      local src = impersonated()
      local c = iam.new({ source = src, email = TARGET, universe_domain = "example-universe.net",
                          env = {} })
      assert.equal("https://iamcredentials.example-universe.net", c:endpoint())
      local d = iam.new({ source = src, email = TARGET, env = {} })
      assert.equal("https://iamcredentials.googleapis.com", d:endpoint())
      local e = iam.new({ source = src, email = TARGET, endpoint = "http://iam.example.com" })
      local v, msg, err = e:sign_blob("x")
      assert.is_nil(v)
      assert.matches("^gauth%.iam: endpoint: refusing to send a token in clear text", msg)
      assert.equal("endpoint", err.step)
    end)

    it("raises for wrong arguments", function()
      assert.has_error(function() iam.new({ email = TARGET }) end,
        "gauth.iam: opts.source must be credentials (with :token)")
      assert.has_error(function() iam.new({ source = impersonated() }) end,
        "gauth.iam: opts.email or opts.email_source is required")
      assert.has_error(function() iam.new({ source = impersonated(), email = "a/b" }) end,
        "gauth.iam: opts.email must be a service account email")
    end)
  end)

  it("puts no signature, key or token in any error", function()
    local c = impersonated()
    local sig = assert(c:sign_bytes("secret-free"))
    local path = "/v1/projects/-/serviceAccounts/" .. TARGET .. ":signBlob"
    fake:script(path, { status = 200, body = { keyId = "k", signedBlob = "not base64!" } })
    local v, msg, err = c:sign_bytes("x")
    assert.is_nil(v)
    assert.equal("gauth.iam: response: signBlob answered without a base64 signedBlob", msg)
    assert.is_true(errors.is(err))
    assert.is_nil(msg:find(core.b64_encode(sig), 1, true))
    local key_body = sa_info.private_pem:match("\n(.-)\n")
    local v2, m2 = storage.signed_url({ credentials = assert(sa.from_info(sa_info.data)),
                                        bucket = "b", object = "o", method = "BAD" })
    assert.is_nil(v2)
    assert.is_nil(m2:find(key_body, 1, true))
  end)
end)
