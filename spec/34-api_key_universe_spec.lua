-- API keys as credentials (gauth.api_key) and the universe domain on the
-- service side: a Discovery service refuses credentials of another
-- universe (google-api-python-client 2.x's rule), GOOGLE_CLOUD_UNIVERSE_DOMAIN
-- chooses the service's universe, and service accounts of another universe
-- sign their own JWTs and refuse domain-wide delegation. Requests go to the
-- fake Google over HTTPS on loopback; what it received is read back.

local cjson = require "cjson"
local helpers = require "helpers"
local api_key = require "gauth.api_key"
local discovery = require "gauth.discovery"
local sa = require "gauth.service_account"
local token_cache = require "gauth.token_cache"
local curl = require "gauth.transport.curl"

local KEY = "AIzaSyA-gauth-test-key_0123456789abcdef"
local SCOPE = "https://www.googleapis.com/auth/cloud-platform"

-- A one-method Discovery document (rootUrl on googleapis.com; the
-- requests go to the fake through api_endpoint).
local function doc()
  return {
    kind = "discovery#restDescription", name = "toy", version = "v1", id = "toy:v1",
    rootUrl = "https://toy.googleapis.com/", servicePath = "toy/v1/",
    parameters = { key = { type = "string", location = "query" },
                   alt = { type = "string", location = "query" } },
    auth = { oauth2 = { scopes = { [SCOPE] = {} } } },
    schemas = { Item = { id = "Item", type = "object", properties = { id = { type = "string" } } } },
    resources = { items = { methods = { get = {
      id = "toy.items.get", path = "items/{id}", httpMethod = "GET",
      parameterOrder = { "id" }, response = { ["$ref"] = "Item" },
      parameters = { id = { type = "string", location = "path", required = true } },
    } } } },
  }
end

describe("gauth.api_key", function()
  describe("new", function()
    it("makes credentials whose tostring never shows the key", function()
      local c, msg, err = api_key.new(KEY)
      assert.is_nil(msg)
      assert.is_nil(err)
      assert.equal("googleapis.com", c.universe_domain)
      local s = tostring(c)
      assert.matches("^gauth%.api_key ", s)
      assert.is_nil(s:find(KEY, 1, true))
      assert.is_nil(s:find(KEY:sub(-6), 1, true))
      local u = assert(api_key.new(KEY, { universe_domain = "example.goog" }))
      assert.equal("example.goog", u.universe_domain)
    end)

    it("refuses an empty key and one with a line break, never quoting it", function()
      local c, msg, err = api_key.new("")
      assert.is_nil(c)
      helpers.assert_failure(msg, err, "api_key", "key")
      assert.equal("gauth.api_key: key: the API key is empty", msg)
      assert.is_false(err.retryable)
      c, msg, err = api_key.new(KEY .. "\r\nx-evil: 1")
      assert.is_nil(c)
      helpers.assert_failure(msg, err, "api_key", "key")
      assert.matches("control character", msg)
      assert.is_nil(msg:find("AIza", 1, true))
      assert.has_error(function() api_key.new(nil) end, "gauth.api_key: new: key must be a string")
    end)
  end)

  describe("apply", function()
    it("sets x-goog-api-key (and the quota project), never authorization", function()
      local c = assert(api_key.new(KEY))
      local h = c:apply({ accept = "application/json" })
      assert.same({ accept = "application/json", ["x-goog-api-key"] = KEY }, h)
      local q = c:with_quota_project("billing-project")
      assert.same({ ["x-goog-api-key"] = KEY, ["x-goog-user-project"] = "billing-project" },
                  q:apply())
    end)

    it("raises on headers that are not a table", function()
      local c = assert(api_key.new(KEY))
      assert.has_error(function() c:apply("x") end,
                       "gauth.api_key: apply: headers must be a table")
    end)
  end)

  describe("token and invalidate", function()
    it("token fails: an API key is not an OAuth token", function()
      local tok, msg, err = assert(api_key.new(KEY)):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err, "api_key", "token")
      assert.matches("API keys have no token", msg)
      assert.is_false(err.retryable)
      assert.is_nil(msg:find(KEY, 1, true))
    end)

    it("invalidate is a no-op that keeps the key", function()
      local c = assert(api_key.new(KEY))
      assert.is_true(c:invalidate())
      assert.equal(KEY, c:apply()["x-goog-api-key"])
    end)
  end)

  describe("with a Discovery service, on the wire", function()
    local fake, http

    lazy_setup(function()
      fake = helpers.start_fake({ tls = true })
      http = assert(curl.new({ ca_file = fake.ca_file, timeout = 10 }))
    end)

    lazy_teardown(function()
      fake:stop()
    end)

    before_each(function() fake:reset() end)

    it("sends the key in the header, not in the URL, and no token", function()
      local svc = assert(discovery.build_from_document(doc(), {
        credentials = api_key.new(KEY), http = http, api_endpoint = fake.url .. "/toy/v1/" }))
      fake:script("/toy/v1/items/one", { { status = 200, body = { id = "one" } } })
      local res, msg, err = svc:items():get({ id = "one" }):execute()
      assert.is_nil(msg)
      assert.is_nil(err)
      assert.equal("one", res.id)
      local got = fake:requests("/toy/v1/items/one")
      assert.equal(1, #got)
      assert.equal(KEY, got[1].headers["x-goog-api-key"])
      assert.is_nil(got[1].headers.authorization)
      assert.is_nil(got[1].query:find(KEY, 1, true))
      assert.is_nil((got[1].query_params or {}).key)
      assert.same({}, fake:requests("/token"))
    end)

    it("a 401 with a key is tried once more with the same key, then returned", function()
      local svc = assert(discovery.build_from_document(doc(), {
        credentials = api_key.new(KEY), http = http, api_endpoint = fake.url .. "/toy/v1/" }))
      local denied = { status = 401, body = { error = { code = 401, status = "UNAUTHENTICATED",
                                                         message = "API key not valid" } } }
      fake:script("/toy/v1/items/two", { denied, denied })
      local res, msg, err = svc:items():get({ id = "two" }):execute()
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "discovery", "toy.items.get")
      assert.equal(401, err.status)
      assert.is_nil(msg:find(KEY, 1, true))
      local got = fake:requests("/toy/v1/items/two")
      assert.equal(2, #got)
      assert.equal(KEY, got[2].headers["x-goog-api-key"])
    end)

    it("is never sent to a plain-http host that is not loopback", function()
      local svc = assert(discovery.build_from_document(doc(), {
        credentials = api_key.new(KEY), http = http,
        api_endpoint = "http://gauth-not-loopback.invalid/toy/v1/" }))
      local res, msg, err = svc:items():get({ id = "x" }):execute()
      assert.is_nil(res)
      helpers.assert_failure(msg, err, "discovery")
      assert.matches("refusing to send credentials to gauth%-not%-loopback%.invalid over http", msg)
      assert.is_nil(msg:find(KEY, 1, true))
    end)
  end)
end)

describe("the universe domain of a Discovery service", function()
  local fake, http, key_path, key_info

  lazy_setup(function()
    fake = helpers.start_fake({ tls = true })
    http = assert(curl.new({ ca_file = fake.ca_file, timeout = 10 }))
    key_path, key_info = helpers.make_service_account_file({ token_uri = fake.token_uri,
                                                             universe_domain = "example.goog" })
  end)

  lazy_teardown(function()
    fake:stop()
  end)

  before_each(function()
    fake:reset()
    fake:config({ public_keys = { [key_info.kid] = key_info.public_pem } })
  end)

  local function service(creds, opts)
    opts = opts or {}
    opts.credentials, opts.http = creds, http
    opts.api_endpoint = fake.url .. "/toy/v1/"
    return assert(discovery.build_from_document(doc(), opts))
  end

  it("refuses to send credentials of another universe, naming both", function()
    -- a key of googleapis.com, a service of example.goog
    local creds = assert(api_key.new(KEY))
    local svc = service(creds, { universe_domain = "example.goog" })
    local res, msg, err = svc:items():get({ id = "u" }):execute()
    assert.is_nil(res)
    helpers.assert_failure(msg, err, "discovery", "toy.items.get")
    assert.equal("universe_mismatch", err.kind)
    assert.equal("example.goog", err.service_universe)
    assert.equal("googleapis.com", err.credentials_universe)
    assert.is_false(err.retryable)
    assert.matches("%(example%.goog%)", msg)
    assert.matches("%(googleapis%.com%)", msg)
    assert.same({}, fake:requests("/toy/v1/items/u"))
    -- and the other way round: a service account of example.goog, a
    -- service of googleapis.com; no token is even made
    local sa_creds = assert(sa.from_file(key_path, { scopes = SCOPE, cache = token_cache.new() }))
    svc = service(sa_creds)
    res, msg, err = svc:items():get({ id = "u" }):execute()
    assert.is_nil(res)
    helpers.assert_failure(msg, err, "discovery", "toy.items.get")
    assert.equal("googleapis.com", err.service_universe)
    assert.equal("example.goog", err.credentials_universe)
    assert.same({}, fake:requests("/toy/v1/items/u"))
  end)

  it("sends when the universes match: a self-signed JWT, no token exchange", function()
    local creds = assert(sa.from_file(key_path, { cache = token_cache.new() }))
    assert.equal("example.goog", creds.universe_domain)
    assert.equal("jwt", creds.mode)
    local svc = service(creds, { universe_domain = "example.goog" })
    fake:script("/toy/v1/items/ok", { { status = 200, body = { id = "ok" } } })
    local res, msg = svc:items():get({ id = "ok" }):execute()
    assert.is_nil(msg)
    assert.equal("ok", res.id)
    local got = fake:requests("/toy/v1/items/ok")
    assert.equal(1, #got)
    local jwt = got[1].headers.authorization:match("^Bearer (%S+)$")
    -- PyJWT checks the signature with the key file's public key; the
    -- service's scopes were applied (googleapiclient's rule) as `scope`
    local claims = assert(helpers.pyjwt_verify(jwt, key_info.public_pem))
    assert.equal(key_info.client_email, claims.iss)
    assert.equal(key_info.client_email, claims.sub)
    assert.equal(SCOPE, claims.scope)
    assert.same({}, fake:requests("/token"))
  end)

  it("asks metadata credentials for their universe (one read) before sending", function()
    -- the metadata server (the fake over plain http) says example.goog
    local md = helpers.start_fake({ tls = false })
    local ce = require "gauth.compute_engine"
    local plain = assert(curl.new({ timeout = 10 }))
    md:config({ metadata = { ["universe/universe-domain"] = "example.goog" } })
    local creds = assert(ce.credentials({ host = "127.0.0.1:" .. md.port, http = plain,
                                          cache = token_cache.new() }))
    local svc = service(creds)
    local res, msg, err = svc:items():get({ id = "m" }):execute()
    assert.is_nil(res)
    helpers.assert_failure(msg, err, "discovery", "toy.items.get")
    assert.equal("universe_mismatch", err.kind)
    assert.equal("example.goog", err.credentials_universe)
    assert.equal("googleapis.com", err.service_universe)
    assert.same({}, fake:requests("/toy/v1/items/m"))
    local reads = md:requests("/computeMetadata/v1/universe/universe-domain")
    assert.equal(1, #reads)
    -- no token was asked for either
    assert.equal(0, #md:requests("/computeMetadata/v1/instance/service-accounts/default/token"))
    -- a 404 there means googleapis.com: the same kind of service sends
    md:config({ metadata = { ["universe/universe-domain"] = cjson.null } })
    local creds2 = assert(ce.credentials({ host = "127.0.0.1:" .. md.port, http = plain,
                                           cache = token_cache.new() }))
    local svc2 = service(creds2)
    fake:script("/toy/v1/items/m2", { { status = 200, body = { id = "m2" } } })
    local res2, msg2 = svc2:items():get({ id = "m2" }):execute()
    md:stop()
    assert.is_nil(msg2)
    assert.equal("m2", res2.id)
    assert.equal("googleapis.com", creds2.universe_domain)
    local got = fake:requests("/toy/v1/items/m2")
    assert.equal(1, #got)
    assert.matches("^Bearer ", got[1].headers.authorization)
  end)

  it("takes the service's universe from GOOGLE_CLOUD_UNIVERSE_DOMAIN", function()
    local script = helpers.tmpname("universe-env", ".lua")
    helpers.write_file(script, ([[
      package.path = %q; package.cpath = %q
      local discovery = require "gauth.discovery"
      local api_key = require "gauth.api_key"
      local doc = require("cjson").decode(%q)
      local svc = assert(discovery.build_from_document(doc, { credentials = api_key.new("k"),
        api_endpoint = "https://127.0.0.1:1/toy/v1/" }))
      local res, msg, err = svc:items():get({ id = "e" }):execute()
      io.write(tostring(err and err.service_universe), " ", tostring(err and err.kind), " ",
               tostring(svc:items():get({ id = "e" }).uri))
    ]]):format(package.path, package.cpath, cjson.encode(doc())))
    local lua = os.getenv("GAUTH_LUA") or "lua5.4"
    local q = helpers.shell_quote
    local ok, out = helpers.sh("env GOOGLE_CLOUD_UNIVERSE_DOMAIN=env-universe.test "
      .. q(lua) .. " " .. q(script))
    assert.is_true(ok, out)
    -- refused before any connection (port 1 would fail otherwise)
    assert.equal("env-universe.test universe_mismatch https://127.0.0.1:1/toy/v1/items/e?alt=json", out)
    -- without api_endpoint the universe also replaces googleapis.com in the URL
    local s = assert(discovery.build_from_document(doc(), { universe_domain = "env-universe.test" }))
    assert.equal("https://toy.env-universe.test/toy/v1/items/e?alt=json", s:items():get({ id = "e" }).uri)
  end)
end)

describe("service accounts outside googleapis.com", function()
  local key_path

  lazy_setup(function()
    key_path = helpers.make_service_account_file({ universe_domain = "example.goog",
      token_uri = "https://oauth2.example.goog/token" })
  end)

  it("refuse domain-wide delegation with a clear error", function()
    local c, msg, err = sa.from_file(key_path, { scopes = SCOPE, subject = "user@example.com" })
    assert.is_nil(c)
    helpers.assert_failure(msg, err, "service_account", "subject")
    assert.equal("gauth.service_account: subject: domain-wide delegation (subject) is not"
      .. " supported outside googleapis.com (this key's universe is example.goog)", msg)
    assert.equal("example.goog", err.universe_domain)
    local ok_creds = assert(sa.from_file(key_path, { scopes = SCOPE }))
    assert.has_error(function() ok_creds:with_subject("user@example.com") end,
      "gauth.service_account: domain-wide delegation (subject) is not supported outside"
      .. " googleapis.com (this key's universe is example.goog)")
  end)

  it("refuse a universe_domain that is not a domain name, naming the field", function()
    local bad = helpers.make_service_account_file({ universe_domain = "not a domain" })
    local c, msg, err = sa.from_file(bad)
    assert.is_nil(c)
    helpers.assert_failure(msg, err, "service_account", "key file")
    assert.matches("field universe_domain: not a domain name", msg)
  end)
end)

-- AIP-4120: every credentials type says its universe, known without the
-- network wherever a file or configuration holds it (the metadata
-- server's credentials read it once: spec 48, 58).
describe("universe_domain on every credentials type", function()
  local au = require "gauth.authorized_user"
  local imp = require "gauth.impersonated"
  local downscoped = require "gauth.downscoped"
  local ea = require "gauth.external_account"
  local eau = require "gauth.external_account_authorized_user"
  local ce = require "gauth.compute_engine"
  local id_token = require "gauth.id_token"
  local TARGET = "target@proj.iam.gserviceaccount.com"
  local USER = { type = "authorized_user", client_id = "cid", client_secret = "cs", refresh_token = "rt" }
  local function user(extra)
    local u = {}
    for k, v in pairs(USER) do u[k] = v end
    for k, v in pairs(extra or {}) do u[k] = v end
    return u
  end

  it("is the file's, the configuration's or the source's; googleapis.com by default", function()
    local other = assert(sa.from_file(helpers.make_service_account_file({ universe_domain = "example.goog" }),
                                      { scopes = SCOPE }))
    local mine = assert(sa.from_file(helpers.make_service_account_file(), { scopes = SCOPE }))
    local a = assert(au.from_info(user()))
    local cases = {
      { mine, "googleapis.com" }, { other, "example.goog" },
      { a, "googleapis.com" },
      { assert(au.from_info(user({ universe_domain = "example.goog" }))), "example.goog" },
      { assert(imp.credentials({ source = a, target_principal = TARGET })), "googleapis.com" },
      { assert(imp.credentials({ source = other, target_principal = TARGET })), "example.goog" },
      { assert(downscoped.new(other, { rules = { { available_resource = "//storage.googleapis.com/x",
          available_permissions = { "inRole:roles/storage.objectViewer" } } } })), "example.goog" },
      { assert(ea.from_info({ type = "external_account", universe_domain = "example.goog",
          audience = "//iam.example.goog/projects/1/locations/global/workloadIdentityPools/p/providers/o",
          subject_token_type = "urn:ietf:params:oauth:token-type:jwt",
          credential_source = { file = "/nonexistent" } }, { env = {} })), "example.goog" },
      { assert(eau.from_info({ type = "external_account_authorized_user", universe_domain = "example.goog",
          audience = "//iam.googleapis.com/locations/global/workforcePools/w/providers/p",
          client_id = "c", client_secret = "s", refresh_token = "r",
          token_url = "https://sts.example.goog/v1/oauthtoken" })), "example.goog" },
      { api_key.new(KEY), "googleapis.com" },
      { assert(id_token.credentials(other, { audience = "https://run.example" })), "example.goog" },
      { assert(id_token.credentials(mine, { audience = "https://run.example" })), "googleapis.com" },
    }
    for i, c in ipairs(cases) do
      assert.equal(c[2], c[1].universe_domain, "case " .. i .. ": " .. tostring(c[1]))
    end
    -- The metadata server's: unknown until read (get_universe_domain).
    assert.is_nil(assert(ce.credentials({ env = { GCE_METADATA_HOST = "127.0.0.1:9" } })).universe_domain)
  end)

  it("impersonation follows the source's universe to iamcredentials.<universe>", function()
    local other = assert(sa.from_file(helpers.make_service_account_file({ universe_domain = "example.goog" }),
                                      { scopes = SCOPE }))
    local c = assert(imp.credentials({ source = other, target_principal = TARGET }))
    assert.equal("https://iamcredentials.example.goog/v1/projects/-/serviceAccounts/" .. TARGET
      .. ":generateAccessToken", c.url)
    -- An explicit endpoint wins.
    c = assert(imp.credentials({ source = other, target_principal = TARGET, iam_endpoint = "https://iam.corp" }))
    assert.equal("https://iam.corp/v1/projects/-/serviceAccounts/" .. TARGET .. ":generateAccessToken", c.url)
  end)

  it("user credentials of another universe are refused before any request; a bad one is named", function()
    -- Any request would be refused by the guard (not loopback) anyway:
    -- the message shows none was tried.
    helpers.install_loopback_guard()
    local c = assert(au.from_info(user({ universe_domain = "example.goog",
      token_uri = "https://oauth2.example.goog/token" }), { cache = token_cache.new() }))
    local tok, msg, err = c:token()
    helpers.remove_loopback_guard()
    assert.is_nil(tok)
    helpers.assert_failure(msg, err, "authorized_user", "token request")
    assert.equal("gauth.authorized_user: token request: user credentials can be refreshed only in"
      .. " the googleapis.com universe (this file's universe is example.goog)", msg)
    assert.is_false(err.retryable)
    local bad, bmsg, berr = au.from_info(user({ universe_domain = "not a domain" }))
    assert.is_nil(bad)
    helpers.assert_failure(bmsg, berr, "authorized_user", "key file")
    assert.matches("field universe_domain: not a domain name", bmsg)
  end)
end)
