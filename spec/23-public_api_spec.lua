-- The public shape every credentials type shares (issue 20, DECISIONS):
-- the `new` constructors (old names as aliases); the test seams under
-- `opts.testing`; and creds:valid() / creds:expired() (google-auth's
-- `valid` and `expired`) on every credentials family, each fetching its
-- token from the fake on loopback (plain HTTP) with a scripted answer, on a
-- clock the test moves: no token yet, a fresh token, within the refresh
-- window (3 min 45 s), after invalidate(), and after a refused refresh.
local helpers = require "helpers"
local token_cache = require "gauth.token_cache"
local credentials = require "gauth.credentials"
local sa = require "gauth.service_account"
local au = require "gauth.authorized_user"
local ce = require "gauth.compute_engine"
local imp = require "gauth.impersonated"
local ea = require "gauth.external_account"
local eau = require "gauth.external_account_authorized_user"
local downscoped = require "gauth.downscoped"
local id_token = require "gauth.id_token"
local api_key = require "gauth.api_key"
local metadata = require "gauth.metadata"
local ae = require "gauth.app_engine"
local seam = require "gauth.lib.seam"
local retry = require "gauth.retry"
local testing = require "gauth.testing"
local discovery = require "gauth.discovery"

local TARGET = "target@proj.iam.gserviceaccount.com"
local WINDOW = credentials.REFRESH_WINDOW
local T0 = os.time()
-- The answer's Date (impersonated reads a token's lifetime on the API's
-- clock): the test's clock.
local DATED = { date = os.date("!%a, %d %b %Y %H:%M:%S GMT", T0) }

-- A JWT whose payload says iat/exp (an ID token as a token endpoint
-- issues it; never verified by the credentials).
local function jwt(life)
  local h = helpers.b64encode('{"alg":"RS256","typ":"JWT"}')
  local p = helpers.b64encode(('{"iat":%d,"exp":%d,"aud":"https://svc.example"}'):format(T0, T0 + life))
  local function url(s) return (s:gsub("+", "-"):gsub("/", "_"):gsub("=", "")) end
  return url(h) .. "." .. url(p) .. ".c2ln"
end

local function errors_new()
  return require("gauth.errors").new("test", "step", "try again", { retryable = true })
end

local function both(f)
  return { n = select("#", f()), f() }
end

describe("the public API shape (issue 20)", function()
  local fake, clock, sa_info

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
    local _
    _, sa_info = helpers.make_service_account_file({ token_uri = fake.token_uri })
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    fake:reset()
    metadata.reset()
    clock = { t = T0 }
  end)

  local function now() return clock.t end
  local function opts(extra)
    local o = { cache = token_cache.new(), now = now, retry = helpers.fast_retry() }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  local OAUTH = { access_token = "at-1", expires_in = 3600, token_type = "Bearer" }
  local STS = { access_token = "at-1", expires_in = 3600, token_type = "Bearer",
                issued_token_type = "urn:ietf:params:oauth:token-type:access_token" }
  local REFUSED = { status = 400, body = { error = "invalid_grant", error_description = "no" } }

  local function user()
    return assert(au.from_info({ type = "authorized_user", client_id = "c", client_secret = "s",
                                 refresh_token = "r", token_uri = fake.token_uri }, opts()))
  end

  -- Each family: how to make one, and where its token comes from (the
  -- path scripted, the good answer, the refusal).
  local families = {
    { "service_account", "/token", OAUTH, REFUSED, function()
        return assert(sa.from_info(sa_info.data, opts({ scopes = "https://www.googleapis.com/auth/cloud-platform" })))
      end },
    { "authorized_user", "/token", OAUTH, REFUSED, user },
    { "compute_engine", "/computeMetadata/v1/instance/service-accounts/default/token", OAUTH,
      { status = 404, body = "no such account" }, function()
        return assert(ce.credentials(opts({ host = fake.host_port, env = {} })))
      end },
    { "impersonated", "/v1/projects/-/serviceAccounts/" .. TARGET .. ":generateAccessToken",
      { accessToken = "at-1", expireTime = os.date("!%Y-%m-%dT%H:%M:%SZ", T0 + 3600) },
      { status = 403, body = { error = { code = 403, message = "denied", status = "PERMISSION_DENIED" } } },
      function()
        fake:script("/token", { status = 200, body = OAUTH })
        return assert(imp.credentials(opts({ source = user(), target_principal = TARGET,
                                             iam_endpoint = fake.url })))
      end },
    { "external_account", "/v1/token", STS, REFUSED, function()
        local file = helpers.tmpname("subject", ".txt")
        helpers.write_file(file, "subject-token")
        return assert(ea.from_info({
          type = "external_account",
          audience = "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/q",
          subject_token_type = "urn:ietf:params:oauth:token-type:jwt",
          token_url = fake.url .. "/v1/token", credential_source = { file = file } }, opts({ env = {} })))
      end },
    { "external_account_authorized_user", "/v1/oauthtoken", OAUTH, REFUSED, function()
        return assert(eau.from_info({
          type = "external_account_authorized_user",
          audience = "//iam.googleapis.com/locations/global/workforcePools/p/providers/q",
          client_id = "c", client_secret = "s", refresh_token = "r",
          token_url = fake.url .. "/v1/oauthtoken" }, opts()))
      end },
    { "downscoped", "/v1/token", STS, REFUSED, function()
        fake:script("/token", { status = 200, body = OAUTH })
        return assert(downscoped.new(user(), opts({
          token_url = fake.url .. "/v1/token",
          rules = { { available_resource = "//storage.googleapis.com/projects/_/buckets/b",
                      available_permissions = { "inRole:roles/storage.objectViewer" } } } })))
      end },
    { "id_token (service account)", "/token", { id_token = jwt(3600) }, REFUSED, function()
        local src = assert(sa.from_info(sa_info.data, opts()))
        return assert(id_token.credentials(src, opts({ audience = "https://svc.example" })))
      end },
  }

  for _, f in ipairs(families) do
    local name, path, good, refused, make = f[1], f[2], f[3], f[4], f[5]
    describe(name, function()
      it("valid once a token is held, expired within the refresh window and after", function()
        local c = make()
        assert.same({ n = 1, false }, both(function() return c:valid() end))
        assert.same({ n = 1, false }, both(function() return c:expired() end))
        fake:script(path, { status = 200, body = good, headers = DATED })
        assert(c:token())
        assert.same({ n = 1, true }, both(function() return c:valid() end))
        assert.same({ n = 1, false }, both(function() return c:expired() end))
        clock.t = T0 + 3600 - WINDOW - 1
        assert.is_true(c:valid())
        assert.is_false(c:expired())
        clock.t = T0 + 3600 - WINDOW
        assert.same({ n = 1, false }, both(function() return c:valid() end))
        assert.same({ n = 1, true }, both(function() return c:expired() end))
        clock.t = T0 + 7200
        assert.is_false(c:valid())
        assert.is_true(c:expired())
        -- Asking never fetched: one exchange at the scripted path.
        assert.equal(1, #fake:requests(path))
      end)

      it("not valid and not expired without a token: before, after invalidate(), after a refusal", function()
        local c = make()
        fake:script(path, { status = 200, body = good })
        assert(c:token())
        assert.is_true(c:invalidate())
        assert.same({ n = 1, false }, both(function() return c:valid() end))
        assert.same({ n = 1, false }, both(function() return c:expired() end))
        fake:script(path, refused)
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        assert.is_string(msg)
        assert.is_table(err)
        assert.is_false(c:valid())
        assert.is_false(c:expired())
      end)
    end)
  end

  describe("constructors (DECISIONS): new for the types without a file form", function()
    it("compute_engine.new, app_engine.new, impersonated.new; the old names are the same functions", function()
      assert.equal(ce.new, ce.credentials)
      assert.equal(ae.new, ae.credentials)
      assert.equal(imp.new, imp.credentials)
      local c, msg, err = ce.new(opts({ host = fake.host_port, env = {} }))
      assert.equal("compute_engine", c.kind)
      assert.is_nil(msg)
      assert.is_nil(err)
      c, msg, err = ae.new(opts({ host = fake.host_port, env = { GAE_APPLICATION = "s~app" } }))
      assert.equal("app_engine", c.kind)
      assert.is_nil(msg)
      assert.is_nil(err)
      c, msg, err = imp.new(opts({ source = user(), target_principal = TARGET, iam_endpoint = fake.url }))
      assert.equal("impersonated", c.kind)
      assert.is_nil(msg)
      assert.is_nil(err)
    end)

    it("new answers nil, msg, err for an expected failure and raises for a programming error", function()
      local c, msg, err = ce.new(opts({ env = { GCE_METADATA_HOST = "x/y" } }))
      assert.is_nil(c)
      helpers.assert_failure(msg, err, "compute_engine")
      c, msg, err = ae.new(opts({ env = {} }))
      assert.is_nil(c)
      helpers.assert_failure(msg, err, "app_engine")
      c, msg, err = imp.new(opts({ source = user(), target_principal = TARGET,
                                   iam_endpoint = "http://iam.example.com" }))
      assert.is_nil(c)
      helpers.assert_failure(msg, err, "impersonated", "endpoint")
      assert.error_matches(function() imp.new() end,
        "gauth.impersonated: new: opts with source and target_principal required", 1, true)
      assert.error_matches(function() ae.new(3) end, "gauth.app_engine: new: opts must be a table", 1, true)
      assert.error_matches(function() ce.new(3) end, "gauth.compute_engine: opts must be a table", 1, true)
    end)
  end)

  describe("test seams under opts.testing (DECISIONS); the old top-level spelling still works", function()
    it("seam.get: testing first, then the old spelling; testing must be a table", function()
      local f1, f2 = function() end, function() end
      assert.equal(f1, seam.get({ testing = { sleep = f1 }, sleep = f2 }, "sleep"))
      assert.equal(f2, seam.get({ sleep = f2 }, "sleep"))
      assert.equal(f2, seam.get({ testing = {}, sleep = f2 }, "sleep"))
      assert.is_nil(seam.get(nil, "env"))
      assert.is_nil(seam.get({}, "env"))
      assert.error_matches(function() seam.get({ testing = 1 }, "env") end,
        "gauth: opts.testing must be a table", 1, true)
    end)

    it("gauth.util (deprecated) still answers under the old names, with gauth.lib's functions", function()
      local util = require "gauth.util"
      assert.equal(seam.get, util.seam)
      assert.equal(require("gauth.lib.url").parse, util.parse_url)
      assert.equal(require("gauth.lib.json").null, util.json_null)
      assert.equal(true, util.check_credentials_url("http://127.0.0.1:1/x", "discovery", "m"))
      local ok, msg, err = util.check_credentials_url("http://example.com/x", "discovery", "m")
      assert.is_nil(ok)
      assert.equal("insecure_url", err.kind)
      assert.equal(tostring(err), msg)
    end)

    it("env: the constructors read testing.env (and env, deprecated)", function()
      local bad = { GCE_METADATA_HOST = "x/y" }
      for _, o in ipairs({ { testing = { env = bad } }, { env = bad } }) do
        local c, msg, err = ce.new(o)
        assert.is_nil(c)
        helpers.assert_failure(msg, err, "compute_engine")
      end
      local c, msg, err = ae.new({ host = fake.host_port, testing = { env = { GAE_APPLICATION = "s~a" } } })
      assert.equal("app_engine", c.kind)
      assert.is_nil(msg)
      assert.is_nil(err)
      c, msg, err = ae.new({ testing = { env = {} } })
      assert.is_nil(c)
      helpers.assert_failure(msg, err, "app_engine")
    end)

    it("sleep and random: execute() and retry policies read testing's", function()
      local doc = {
        kind = "discovery#restDescription", name = "toy", version = "v1", id = "toy:v1",
        rootUrl = "https://toy.googleapis.com/", servicePath = "toy/v1/",
        schemas = { List = { type = "object", properties = { items = { type = "array" } } } },
        resources = { items = { methods = { list = {
          id = "toy.items.list", path = "items", httpMethod = "GET", response = { ["$ref"] = "List" } } } } },
      }
      local http = testing.http_sequence({ { status = 503 }, { status = 503 },
        { status = 200, body = "{}", headers = { ["content-type"] = "application/json" } } })
      local svc = assert(discovery.build_from_document(doc, { http = http }))
      local slept = {}
      local resp, msg, err = svc:items():list():execute({ testing = {
        sleep = function(s) slept[#slept + 1] = s end, random = function() return 0.5 end } })
      assert.same({}, resp)
      assert.is_nil(msg)
      assert.is_nil(err)
      assert.same({ 0.75, 1.5 }, slept)
      assert.equal(3, #http.requests)
      -- A retry policy: testing = { sleep, random, now } lifted by policy().
      local p = retry.policy(nil, { testing = { sleep = function(s) slept[#slept + 1] = s end,
                                                random = function() return 0 end } })
      assert.is_nil(p.testing)
      slept = {}
      local n = 0
      local v, m2, e2 = retry.call(function()
        n = n + 1
        if n < 3 then return nil, errors_new() end
        return "done"
      end, p)
      assert.equal("done", v)
      assert.is_nil(m2)
      assert.is_nil(e2)
      assert.same({ 0.5, 1 }, slept)
      slept = {}
      v, m2, e2 = retry.call(function() return nil, errors_new() end,
        { attempts = 2, testing = { sleep = function(s) slept[#slept + 1] = s end,
                                    random = function() return 0 end } })
      assert.is_nil(v)
      helpers.assert_failure(m2, e2, "test", "step")
      assert.same({ 0.5 }, slept)
      assert.error_matches(function() retry.call(function() end, { testing = { sleep = 1 } }) end,
        "gauth.retry: policy.testing.sleep must be a function", 1, true)
    end)
  end)

  describe("gauth.testing's credentials double", function()
    it("answers valid() and expired() as real credentials do", function()
      local c = testing.credentials()
      assert.same({ n = 1, true }, both(function() return c:valid() end))
      assert.same({ n = 1, false }, both(function() return c:expired() end))
      c = testing.credentials({ expires_at = os.time() + WINDOW - 10 })
      assert.is_false(c:valid())
      assert.is_true(c:expired())
      c = testing.credentials({ error = "refused" })
      assert.same({ n = 1, false }, both(function() return c:valid() end))
      assert.is_false(c:expired())
    end)
  end)

  describe("api_key", function()
    it("is always valid and never expired (a key has no expiry), as google-auth's", function()
      local k = assert(api_key.new("AIza-test-key"))
      assert.same({ n = 1, true }, both(function() return k:valid() end))
      assert.same({ n = 1, false }, both(function() return k:expired() end))
      assert.is_true(k:invalidate())
      assert.is_true(k:valid())
    end)
  end)

  describe("on a shared cache", function()
    it("an invalidate() by another holder of the same token makes it expired", function()
      local cache = token_cache.new()
      fake:script("/token", { status = 200, body = OAUTH })
      local a = assert(sa.from_info(sa_info.data, opts({ cache = cache, scopes = "x" })))
      local b = assert(sa.from_info(sa_info.data, opts({ cache = cache, scopes = "x" })))
      assert(a:token())
      assert(b:token())
      assert.is_true(b:valid())
      a:invalidate()
      assert.is_true(b:expired())
      assert.is_false(b:valid())
    end)
  end)
end)
