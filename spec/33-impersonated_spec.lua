-- gauth.impersonated against the fake IAM Credentials generateAccessToken
-- and token endpoint on loopback (plain HTTP; the endpoint's own TLS is
-- covered by the transport specs).
local helpers = require "helpers"
local imp = require "gauth.impersonated"
local au = require "gauth.authorized_user"
local token_cache = require "gauth.token_cache"
local socket = require "socket"
local cjson_null = require("cjson.safe").null

local S1 = "https://www.googleapis.com/auth/devstorage.read_only"
local S2 = "https://www.googleapis.com/auth/sqlservice.admin"
local CP = "https://www.googleapis.com/auth/cloud-platform"
local TARGET = "target@proj.iam.gserviceaccount.com"
local D1 = "d1@proj.iam.gserviceaccount.com"
local D2 = "projects/-/serviceAccounts/d2@proj.iam.gserviceaccount.com"
local IAM_PATH = "/v1/projects/-/serviceAccounts/" .. TARGET .. ":generateAccessToken"

local sleeps, fast_retry = helpers.recorded_retry()

local is_error = helpers.assert_gauth_error

describe("gauth.impersonated", function()
  local fake, user_file, sa_info

  lazy_setup(function()
    helpers.install_loopback_guard()  -- nothing leaves loopback
    fake = helpers.start_fake({ tls = false })
    user_file = helpers.make_authorized_user_file({ extra = { token_uri = fake.token_uri } })
    local _
    _, sa_info = helpers.make_service_account_file({ token_uri = fake.token_uri })
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

  local function source()
    return assert(au.from_file(user_file, { cache = token_cache.new(), retry = fast_retry() }))
  end

  local function new(opts)
    opts = opts or {}
    if opts.source == nil then opts.source = source() end
    if opts.target_principal == nil then opts.target_principal = TARGET end
    if opts.iam_endpoint == nil and opts.env == nil then opts.iam_endpoint = fake.url end
    if opts.cache == nil then opts.cache = token_cache.new() end
    if opts.retry == nil then opts.retry = fast_retry() end
    return imp.credentials(opts)
  end

  local function iam_requests()
    return fake:requests(IAM_PATH)
  end

  describe("credentials()", function()
    it("gets a token for the target with delegates, lifetime and scopes", function()
      -- Both clocks stand still: IAM's expireTime is exactly t0 + 600.
      local t0 = os.time()
      fake:config({ clock = t0 })
      local c, cerr = new({ scopes = { S1, S2 }, delegates = { D1, D2 }, lifetime = 600,
                            now = function() return t0 end })
      assert.is_nil(cerr)
      assert.equal("impersonated", c.kind)
      local tok, exp = c:token()
      assert.is_string(tok)
      assert.equal(t0 + 600, exp)
      local rs = iam_requests()
      assert.equal(1, #rs)
      local r = rs[1]
      assert.equal("POST", r.method)
      assert.equal("application/json", r.headers["content-type"])
      -- The source's token (the first the fake issued) authorised the call.
      assert.equal("Bearer fake-token-1", r.headers.authorization)
      assert.same({ S1, S2 }, r.json.scope)
      assert.same({ "projects/-/serviceAccounts/" .. D1, D2 }, r.json.delegates)
      assert.equal("600s", r.json.lifetime)
      local issued = fake:tokens()[tok]
      assert.equal("iam", issued.kind)
      assert.equal(TARGET, issued.email)
      assert.equal("fake-token-1", issued.caller)
      assert.same({ "projects/-/serviceAccounts/" .. D1, D2 }, issued.delegates)
      local s = tostring(c)
      assert.matches("as " .. TARGET, s, 1, true)
      assert.matches("2 delegates", s, 1, true)
    end)

    it("defaults: cloud-platform, 3600 s, no delegates", function()
      local c = assert(new())
      assert.truthy(c:token())
      local r = iam_requests()[1]
      assert.same({ CP }, r.json.scope)
      assert.equal("3600s", r.json.lifetime)
      assert.is_nil(r.json.delegates)
      assert.is_false(c:requires_scopes())
    end)

    it("works with a service-account source", function()
      local sa = require "gauth.service_account"
      local src = assert(sa.from_file(sa_info.path, { scopes = { CP }, cache = token_cache.new() }))
      local c = assert(new({ source = src }))
      local tok = assert(c:token())
      assert.equal(sa_info.client_email, fake:tokens()[fake:tokens()[tok].caller].iss)
    end)

    it("takes the endpoint from GAUTH_IAM_ENDPOINT", function()
      local c, err = new({ env = { GAUTH_IAM_ENDPOINT = fake.url .. "/" } })
      assert.is_nil(err)
      assert.equal(fake.url .. IAM_PATH, c.url)
      assert.truthy(c:token())
      assert.equal(1, #iam_requests())
    end)

    it("uses Google's endpoint by default (nothing sent)", function()
      local c = assert(imp.credentials({ source = source(), target_principal = TARGET, env = {} }))
      assert.equal("https://iamcredentials.googleapis.com" .. IAM_PATH, c.url)
    end)

    it("a non-gauth source never gets the token of a collected source at the same address", function()
      -- Users come and go on one process-wide cache, each with a token
      -- source of their own that is a plain table; each is dropped and
      -- collected before the next, so Lua reuses their addresses.
      local cache = token_cache.new()
      local users, wrong = 40, {}
      for i = 1, users do
        local src_tok, src_exp = assert(source():token())
        local src = { token = function() return src_tok, src_exp end }
        local c = assert(new({ source = src, cache = cache }))
        local tok = assert(c:token())
        local minted = fake:tokens()[tok]
        if not (minted and minted.caller == src_tok) then wrong[#wrong + 1] = i end
        src, c = nil, nil  -- luacheck: ignore
        collectgarbage("collect")
        collectgarbage("collect")
      end
      assert.same({}, wrong)
      assert.equal(users, #iam_requests())
    end)

    it("never shares a token between service-account sources differing only in their private key", function()
      -- Issue 17 item 2: a forged key file (same client_email and
      -- private_key_id, another key) impersonating the same target on the
      -- same cache gets no token. The sources keep their own caches: what
      -- is tested is the impersonated credentials' key.
      local sa = require "gauth.service_account"
      local _, forged = helpers.make_service_account_file({ token_uri = fake.token_uri,
        client_email = sa_info.client_email, private_key_id = sa_info.kid })
      local real_src = assert(sa.from_file(sa_info.path, { scopes = { CP }, cache = token_cache.new() }))
      local forged_src = assert(sa.from_file(forged.path, { scopes = { CP }, cache = token_cache.new(),
                                                            retry = fast_retry() }))
      local cache = token_cache.new()
      local c = assert(new({ source = real_src, cache = cache }))
      local tok = assert(c:token())
      assert.equal(1, #iam_requests())
      local d = assert(new({ source = forged_src, cache = cache }))
      local t2, msg, err = d:token()
      assert.is_nil(t2)
      assert.equal("gauth.impersonated: source credentials: token response: the token endpoint refused"
        .. " the request: invalid_grant: Invalid JWT Signature. (HTTP 400 invalid_grant) ["
        .. fake.token_uri .. "]", msg)
      helpers.assert_failure(msg, err, "impersonated", "source credentials")
      assert.is_false(err.retryable)
      assert.is_nil(msg:find(tok, 1, true))
      assert.equal(1, #iam_requests())
      assert.equal(tok, (c:token()))
    end)

    it("answers from the cache, refreshes inside the window", function()
      local offset = 0
      local c = assert(new({ lifetime = 300, now = function() return socket.gettime() + offset end }))
      local t1 = assert(c:token())
      assert.equal(t1, (c:token()))
      assert.equal(1, #iam_requests())
      offset = 300 - 225 + 2
      local t2 = assert(c:token())
      assert.are_not.equal(t1, t2)
      assert.equal(2, #iam_requests())
    end)

    it("with_scopes makes a copy with its own token", function()
      local c = assert(new())
      local d = c:with_scopes({ S1 })
      assert.same({ S1 }, d.scopes)
      assert.same({ CP }, c.scopes)
      assert.truthy(c:token())
      assert.truthy(d:token())
      assert.same({ S1 }, iam_requests()[2].json.scope)
      assert.same({ CP }, c:with_scopes(nil).scopes)
    end)

    it("apply sets the target's token and the quota project", function()
      local c = assert(new({ quota_project = "qp" }))
      local h, err = c:apply()
      assert.is_nil(err)
      assert.matches("^Bearer fake%-token%-%d+$", h.authorization)
      assert.equal("qp", h["x-goog-user-project"])
    end)

    it("returns nil and an error for an endpoint in clear text to a remote host", function()
      local c, msg, err = new({ iam_endpoint = "http://iam.example.com" })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "endpoint")
      assert.matches("clear text", err.message)
    end)

    it("returns nil and the source's error when the source fails", function()
      local p = helpers.make_authorized_user_file({ refresh_token = "revoked",
        extra = { token_uri = fake.token_uri } })
      local src = assert(au.from_file(p, { cache = token_cache.new(), retry = fast_retry() }))
      local tok, msg, err = assert(new({ source = src })):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "source credentials")
      assert.equal("authorized_user", err.cause.module)
      assert.equal("invalid_grant", err.oauth_error)
      assert.equal(0, #iam_requests())
    end)

    it("returns nil and the API's error (not retried for 4xx)", function()
      fake:script(IAM_PATH, { status = 403, body = { error = { code = 403,
        status = "PERMISSION_DENIED", message = "Permission iam.serviceAccounts.getAccessToken denied" } } })
      local tok, msg, err = assert(new()):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "token response")
      assert.equal(403, err.status)
      assert.equal("PERMISSION_DENIED", err.google_status)
      assert.is_false(err.retryable)
      assert.matches("getAccessToken denied", err.message)
      assert.equal(1, #iam_requests())
    end)

    it("passes the fake's refusal of a lifetime over 3600 s", function()
      local tok, msg, err = assert(new({ lifetime = 7200 })):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.equal(400, err.status)
      assert.equal("INVALID_ARGUMENT", err.google_status)
    end)

    it("retries 5xx, and a 401 once with a new source token", function()
      fake:script(IAM_PATH, { { status = 503 } })
      local tok = assert(new()):token()
      assert.is_string(tok)
      assert.equal(2, #iam_requests())
      fake:reset()
      fake:config({ refresh_tokens = helpers.user_refresh_tokens() })
      fake:script(IAM_PATH, { { status = 401, body = { error = { code = 401,
        status = "UNAUTHENTICATED", message = "expired" } } } })
      local c = assert(new())
      assert.is_string((c:token()))
      local rs = iam_requests()
      assert.equal(2, #rs)
      assert.are_not.equal(rs[1].headers.authorization, rs[2].headers.authorization)
      assert.equal(2, #fake:requests("/token"))
    end)

    it("refuses a 200 answer without a usable token", function()
      fake:script(IAM_PATH, { status = 200, body = { accessToken = "x", expireTime = "tomorrow" } })
      local tok, msg, err = assert(new()):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.matches("expireTime", err.message)
      fake:script(IAM_PATH, { status = 200, body = { expireTime = "2030-01-01T00:00:00Z" } })
      tok, msg, err = assert(new()):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "token response")
    end)

    it("raises on bad arguments", function()
      local src = source()
      assert.has_error(function() imp.credentials() end,
        "gauth.impersonated: new: opts with source and target_principal required")
      assert.has_error(function() imp.credentials({ target_principal = TARGET }) end,
        "gauth.impersonated: opts.source must be credentials (with :token)")
      assert.has_error(function() imp.credentials({ source = src }) end,
        "gauth.impersonated: opts.target_principal must be a service account email")
      assert.has_error(function() imp.credentials({ source = src, target_principal = "a/b" }) end,
        "gauth.impersonated: opts.target_principal must be a service account email")
      assert.has_error(function() new({ lifetime = 0 }) end,
        "gauth.impersonated: lifetime must be a whole number of seconds in 1..43200")
      assert.has_error(function() new({ lifetime = 1.5 }) end,
        "gauth.impersonated: lifetime must be a whole number of seconds in 1..43200")
      assert.has_error(function() new({ lifetime = 43201 }) end,
        "gauth.impersonated: lifetime must be a whole number of seconds in 1..43200")
      assert.has_error(function() new({ delegates = "x" }) end,
        "gauth.impersonated: delegates must be an array of service account emails")
      assert.has_error(function() new({ delegates = { "a b" } }) end,
        "gauth.impersonated: delegates[1] is not an email")
      assert.has_error(function() new({ scopes = 1 }) end,
        "gauth.impersonated: scopes must be an array of strings or a space-separated string")
      assert.has_error(function() new({ iam_endpoint = 1 }) end,
        "gauth.impersonated: iam_endpoint must be a non-empty string")
    end)
  end)

  describe("from_info() and from_file()", function()
    local function info(extra)
      local t = {
        type = "impersonated_service_account",
        service_account_impersonation_url = fake.url .. IAM_PATH,
        delegates = { D1 },
        source_credentials = helpers.json_decode((helpers.read_file(user_file))),
      }
      for k, v in pairs(extra or {}) do t[k] = v end
      return t
    end

    it("reads gcloud's impersonation file (URL, delegates, source)", function()
      local p = helpers.write_file(helpers.tmpname("imp", ".json"),
                                   helpers.json_encode(info({ quota_project_id = "qp" })))
      local t0 = os.time()
      fake:config({ clock = t0 })
      local c, err = imp.from_file(p, { cache = token_cache.new(), scopes = { S1 }, now = function() return t0 end,
                                        lifetime = 900, retry = fast_retry(), env = {} })
      assert.is_nil(err)
      assert.equal(TARGET, c.target_principal)
      assert.equal("authorized_user", c.source.kind)
      assert.equal("qp", c.quota_project)
      local tok, exp = c:token()
      assert.is_string(tok)
      assert.equal(t0 + 900, exp)
      local r = iam_requests()[1]
      assert.same({ "projects/-/serviceAccounts/" .. D1 }, r.json.delegates)
      assert.same({ S1 }, r.json.scope)
    end)

    it("takes a service-account source (scoped for IAM) and JSON text", function()
      local src = helpers.json_decode((helpers.read_file(sa_info.path)))
      local c, err = imp.from_info(helpers.json_encode(info({ source_credentials = src,
        delegates = cjson_null })), { cache = token_cache.new(), env = {} })
      assert.is_nil(err)
      assert.equal("service_account", c.source.kind)
      assert.same({ CP }, c.source.scopes)
      assert.is_nil(c.delegates)
      assert.truthy(c:token())
    end)

    it("GAUTH_IAM_ENDPOINT replaces the file's URL", function()
      local c = assert(imp.from_info(info({
        service_account_impersonation_url = "https://iamcredentials.googleapis.com" .. IAM_PATH }),
        { env = { GAUTH_IAM_ENDPOINT = fake.url } }))
      assert.equal(fake.url .. IAM_PATH, c.url)
    end)

    it("returns nil and an error for broken or unsupported files", function()
      local cases = {
        { info({ type = "service_account" }), "type" },
        { info({ service_account_impersonation_url = cjson_null }), "service_account_impersonation_url" },
        { info({ service_account_impersonation_url = "https://x/nothing" }), "service_account_impersonation_url" },
        { info({ delegates = "x" }), "delegates" },
        { info({ delegates = { 5 } }), "delegates" },
        { info({ quota_project_id = 5 }), "quota_project_id" },
        { info({ source_credentials = cjson_null }), "source_credentials" },
        { info({ source_credentials = { type = "external_account" } }), "source_credentials" },
        { info({ source_credentials = { type = "authorized_user" } }), "source_credentials" },
      }
      for i, case in ipairs(cases) do
        local c, msg, err = imp.from_info(case[1], { env = {} })
        assert.is_nil(c, "case " .. i)
        is_error(err, "impersonated", "key file")
        helpers.assert_failure(msg, err)
        assert.equal(case[2], err.field, "case " .. i)
      end
      local _, msg, err = imp.from_info(info({ source_credentials = { type = "external_account" } }))
      helpers.assert_failure(msg, err)
      assert.matches('"external_account" are not supported yet', err.message, 1, true)
      assert.equal("external_account", err.type)
      local c
      c, msg, err = imp.from_info("{")
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "key file")
      c, msg, err = imp.from_file(helpers.tmpname("none"))
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("cannot read", err.message)
      c, msg, err = imp.from_file(helpers.write_file(helpers.tmpname("x", ".json"), "[]x"))
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("not a JSON object", err.message)
      assert.has_error(function() imp.from_info(5) end,
        "gauth.impersonated: from_info: info must be a table or a JSON string")
      assert.has_error(function() imp.from_file(5) end, "gauth.impersonated: from_file: path must be a string")
      assert.has_error(function() imp.from_info(info(), 5) end, "gauth.impersonated: opts must be a table")
    end)
  end)

  describe("parse_rfc3339() and check_endpoint()", function()
    it("parse_rfc3339 reads UTC, fractions and offsets", function()
      assert.equal(0, imp.parse_rfc3339("1970-01-01T00:00:00Z"))
      assert.equal(1714564800.5, imp.parse_rfc3339("2024-05-01T12:00:00.5Z"))
      assert.equal(1714564800, imp.parse_rfc3339("2024-05-01T14:00:00+02:00"))
      assert.equal(1714564800, imp.parse_rfc3339("2024-05-01T11:30:00-00:30"))
      assert.is_nil(imp.parse_rfc3339("2024-05-01"))
      assert.is_nil(imp.parse_rfc3339("2024-13-01T00:00:00Z"))
      assert.is_nil(imp.parse_rfc3339("2024-05-01T00:00:00"))
      assert.is_nil(imp.parse_rfc3339(5))
    end)

    it("check_endpoint allows https and loopback http only", function()
      local ok, err = imp.check_endpoint("https://iamcredentials.googleapis.com/x")
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_true((imp.check_endpoint("http://localhost:1/x")))
      local msg
      ok, msg, err = imp.check_endpoint("http://169.254.169.254/x")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "endpoint")
      ok, msg, err = imp.check_endpoint("file:///etc/passwd")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      is_error(err, "impersonated", "endpoint")
    end)
  end)
end)
