-- gauth.authorized_user against the fake token endpoint (refresh-token
-- grant) on loopback, over HTTPS with the test CA and over plain HTTP.
local helpers = require "helpers"
local au = require "gauth.authorized_user"
local token_cache = require "gauth.token_cache"
local socket = require "socket"

local S1 = "https://www.googleapis.com/auth/cloud-platform"
local S2 = "https://www.googleapis.com/auth/userinfo.email"
local CLIENT, SECRET, RT = helpers.USER.client_id, helpers.USER.client_secret, helpers.USER.refresh_token

local sleeps, fast_retry = helpers.recorded_retry()

local function is_error(err, step)
  helpers.assert_gauth_error(err, "authorized_user", step)
end

local function no_secret(s)
  s = tostring(s)
  assert.is_nil(s:find(SECRET, 1, true), "client secret leaked: " .. s)
  assert.is_nil(s:find(RT, 1, true), "refresh token leaked: " .. s)
end

describe("gauth.authorized_user", function()
  local fake, plain, path

  lazy_setup(function()
    fake = helpers.start_fake({ tls = true })
    plain = helpers.start_fake({ tls = false })
    path = helpers.make_authorized_user_file({ extra = { token_uri = fake.token_uri } })
  end)

  lazy_teardown(function()
    fake:stop()
    plain:stop()
  end)

  before_each(function()
    helpers.clear(sleeps)
    for _, f in ipairs({ fake, plain }) do
      f:reset()
      f:config({ refresh_tokens = helpers.user_refresh_tokens() })
    end
  end)

  local function new(opts, p)
    opts = opts or {}
    if opts.cache == nil then opts.cache = token_cache.new() end
    if opts.ca_file == nil and opts.http == nil then opts.ca_file = fake.ca_file end
    if opts.retry == nil then opts.retry = fast_retry() end
    return au.from_file(p or path, opts)
  end

  describe("from_file()", function()
    it("reads gcloud's file: client id, token_uri, quota project", function()
      local p = helpers.make_authorized_user_file({ quota_project_id = "billed",
        extra = { token_uri = fake.token_uri } })
      local c, err = new(nil, p)
      assert.is_nil(err)
      assert.equal("authorized_user", c.kind)
      assert.equal(CLIENT, c.client_id)
      assert.equal(fake.token_uri, c.token_uri)
      assert.equal("billed", c.quota_project)
      assert.is_false(c:requires_scopes())
      assert.matches("client " .. CLIENT, tostring(c), 1, true)
      no_secret(tostring(c))
    end)

    it("uses Google's endpoint when the file names none (nothing sent)", function()
      local c = assert(au.from_file(helpers.make_authorized_user_file()))
      assert.equal("https://oauth2.googleapis.com/token", c.token_uri)
      c = assert(au.from_file(path, { quota_project = "mine", token_uri = plain.token_uri }))
      assert.equal(plain.token_uri, c.token_uri)
      assert.equal("mine", c.quota_project)
    end)

    it("returns nil and an error naming file and field, never a secret", function()
      local cases = {
        { helpers.tmpname("nope", ".json"), nil, "cannot read" },
        { helpers.write_file(helpers.tmpname("bad", ".json"), "{ nope"), nil, "not a JSON object" },
        { helpers.make_authorized_user_file({ omit = { "refresh_token" } }), "refresh_token", "missing" },
        { helpers.make_authorized_user_file({ omit = { "client_secret" } }), "client_secret", "missing" },
        { helpers.make_authorized_user_file({ extra = { client_id = 5 } }), "client_id", "string" },
        { helpers.make_authorized_user_file({ extra = { type = "service_account" } }), "type", "service_account" },
      }
      for _, case in ipairs(cases) do
        local c, msg, err = au.from_file(case[1])
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        is_error(err, "key file")
        assert.equal(case[1], err.file)
        assert.equal(case[2], err.field)
        assert.matches(case[3], tostring(err), 1, true)
        no_secret(err)
      end
    end)

    it("refuses to send the refresh token in clear text to a remote host", function()
      local p = helpers.make_authorized_user_file({ extra = { token_uri = "http://example.com/token" } })
      local c, msg, err = au.from_file(p)
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "token_uri")
      assert.matches("clear text", err.message)
      c, msg, err = au.from_file(path, { token_uri = "ftp://127.0.0.1/x" })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "token_uri")
    end)

    it("raises on bad arguments", function()
      assert.has_error(function() au.from_file(5) end, "gauth.authorized_user: from_file: path must be a string")
      assert.has_error(function() au.from_file(path, 5) end, "gauth.authorized_user: opts must be a table")
      assert.has_error(function() au.from_file(path, { scopes = 5 }) end,
        "gauth.authorized_user: scopes must be an array of strings or a space-separated string")
      assert.has_error(function() au.from_file(path, { token_uri = 5 }) end,
        "gauth.authorized_user: token_uri must be a non-empty string")
      assert.has_error(function() au.from_file(path, { http = {} }) end,
        "gauth.authorized_user: http must be a transport (with :request)")
      assert.has_error(function() au.from_file(path, { timeout = 0 }) end,
        "gauth.authorized_user: timeout must be a positive number")
      assert.has_error(function() au.from_file(path, { retry = 1 }) end,
        "gauth.authorized_user: retry must be a table or false")
    end)
  end)

  describe("from_info()", function()
    it("takes a table or JSON text", function()
      local text = assert(helpers.read_file(path))
      local c, err = au.from_info(text, { ca_file = fake.ca_file, cache = token_cache.new() })
      assert.is_nil(err)
      assert.equal("authorized user info", c.source)
      assert.equal("fake-token-1", (c:token()))
      c, err = au.from_info(helpers.json_decode(text))
      assert.is_nil(err)
      assert.equal(CLIENT, c.client_id)
    end)

    it("returns nil and an error for bad info", function()
      local c, msg, err = au.from_info("nope")
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "key file")
      c, msg, err = au.from_info({ type = "authorized_user", client_id = "x" })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.equal("client_secret", err.field)
      assert.has_error(function() au.from_info(42) end,
        "gauth.authorized_user: from_info: info must be a table or a JSON string")
    end)
  end)

  describe("token()", function()
    it("trades the refresh token for an access token over HTTPS", function()
      local t0 = os.time()
      local c = assert(new({ now = function() return t0 end }))
      local tok, exp = c:token()
      assert.equal("fake-token-1", tok)
      assert.equal(t0 + 3599, exp)
      local rs = fake:requests("/token")
      assert.equal(1, #rs)
      assert.equal("POST", rs[1].method)
      assert.same({ grant_type = "refresh_token", client_id = CLIENT,
                    client_secret = SECRET, refresh_token = RT }, rs[1].form)
      assert.equal("refresh_token", fake:tokens()[tok].kind)
    end)

    it("sends scopes when given", function()
      local c = assert(new({ scopes = { S1, S2 } }))
      assert.truthy(c:token())
      assert.equal(S1 .. " " .. S2, fake:requests("/token")[1].form.scope)
      local d = c:with_scopes(S2)
      assert.same({ S2 }, d.scopes)
      assert.equal("fake-token-2", (d:token()))
      assert.equal(S2, fake:requests("/token")[2].form.scope)
    end)

    it("answers from the cache and refreshes inside the refresh window", function()
      fake:config({ expires_in = 300 })
      local offset = 0
      local c = assert(new({ now = function() return socket.gettime() + offset end }))
      assert.equal("fake-token-1", (c:token()))
      assert.equal("fake-token-1", (c:token()))
      offset = 300 - 225 + 1
      assert.equal("fake-token-2", (c:token()))
      assert.equal(2, #fake:requests("/token"))
    end)

    it("keeps a rotated refresh token for the next refresh", function()
      fake:script("/token", { status = 200, body = { access_token = "a1", expires_in = 3600,
                                                     refresh_token = "rotated" } })
      local c = assert(new())
      assert.equal("a1", (c:token()))
      c:invalidate()
      local tok, msg, err = c:token()
      -- The fake does not know "rotated": what matters is what was sent.
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.equal("invalid_grant", err.oauth_error)
      assert.equal("rotated", fake:requests("/token")[2].form.refresh_token)
    end)

    it("never shares a cached token between files of one client with different refresh tokens", function()
      -- Issue 17 item 2: the cache key binds the refresh token. One cache
      -- for all, as a multi-tenant process has.
      local cache = token_cache.new()
      local RT2 = "1//gauth-test-refresh-token-of-another-user"
      fake:config({ refresh_tokens = { [RT2] = { client_id = CLIENT, client_secret = SECRET } } })
      local p2 = helpers.make_authorized_user_file({ refresh_token = RT2, extra = { token_uri = fake.token_uri } })
      local a = assert(new({ cache = cache }))
      local b = assert(new({ cache = cache }, p2))
      assert.equal("fake-token-1", (a:token()))
      assert.equal("fake-token-2", (b:token()))
      assert.equal("fake-token-1", (a:token()))  -- each from the cache now
      assert.equal("fake-token-2", (b:token()))
      local rs = fake:requests("/token")
      assert.equal(2, #rs)
      assert.equal(RT2, rs[2].form.refresh_token)
      -- A forged file: the same client, a refresh token the server does not
      -- know. It gets the server's refusal, never a cached token.
      local p3 = helpers.make_authorized_user_file({ refresh_token = "1//forged",
        extra = { token_uri = fake.token_uri } })
      local f = assert(new({ cache = cache }, p3))
      local tok, msg, err = f:token()
      assert.is_nil(tok)
      assert.equal("gauth.authorized_user: token response: the token endpoint refused the refresh:"
        .. " invalid_grant: Token has been expired or revoked. (run `gcloud auth application-default login`"
        .. " again if these are gcloud's credentials) (HTTP 400 invalid_grant) [" .. fake.token_uri .. "]", msg)
      helpers.assert_failure(msg, err, "authorized_user", "token response")
      assert.equal("invalid_grant", err.oauth_error)
      assert.is_false(err.retryable)
      assert.is_nil(msg:find("forged", 1, true))
      assert.equal(3, #fake:requests("/token"))
    end)

    it("works over plain HTTP to loopback", function()
      local p = helpers.make_authorized_user_file({ extra = { token_uri = plain.token_uri } })
      local c = assert(au.from_file(p, { cache = token_cache.new() }))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(1, #plain:requests("/token"))
    end)

    it("apply sets the bearer token and the quota project", function()
      local p = helpers.make_authorized_user_file({ quota_project_id = "qp",
        extra = { token_uri = fake.token_uri } })
      local h, err = assert(new(nil, p)):apply()
      assert.is_nil(err)
      assert.equal("Bearer fake-token-1", h.authorization)
      assert.equal("qp", h["x-goog-user-project"])
    end)

    it("returns nil and the endpoint's error for a revoked token, not retried", function()
      local p = helpers.make_authorized_user_file({ refresh_token = "revoked",
        extra = { token_uri = fake.token_uri } })
      local c = assert(new(nil, p))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "token response")
      assert.equal(400, err.status)
      assert.equal("invalid_grant", err.oauth_error)
      assert.is_false(err.retryable)
      assert.matches("gcloud auth application%-default login", err.message)
      assert.equal(1, #fake:requests("/token"))
      no_secret(err)
      local h, amsg, aerr = c:apply({})
      assert.is_nil(h)
      helpers.assert_failure(amsg, aerr)
      is_error(aerr, "token response")
    end)

    it("returns invalid_client for a wrong secret", function()
      local p = helpers.make_authorized_user_file({ client_secret = "wrong",
        extra = { token_uri = fake.token_uri } })
      local tok, msg, err = assert(new(nil, p)):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.equal(401, err.status)
      assert.equal("invalid_client", err.oauth_error)
    end)

    it("retries 5xx and transport errors", function()
      fake:script("/token", { { status = 503 }, { status = 500, body = { error = "server_error" } } })
      local tok, exp = assert(new()):token()
      assert.equal("fake-token-1", tok)
      assert.is_number(exp)
      assert.equal(3, #fake:requests("/token"))
      assert.equal(2, #sleeps)
    end)

    it("retries an error_description that says try again, as service accounts do", function()
      -- A 400 and an error neither final nor "try again": only the
      -- description makes it retryable.
      fake:script("/token", { status = 400, body = { error = "unknown_error",
                                                     error_description = "internal_failure" } })
      local tok, exp = assert(new()):token()
      assert.equal("fake-token-1", tok)
      assert.is_number(exp)
      assert.equal(2, #fake:requests("/token"))
      assert.equal(1, #sleeps)
    end)

    it("does not retry an error whose description names no try-again error", function()
      fake:script("/token", { status = 400, body = { error = "unknown_error",
        error_description = "Please try again later, internal_failure is not the whole text" } })
      local tok, msg, err = assert(new()):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "token response")
      assert.equal(400, err.status)
      assert.equal("unknown_error", err.oauth_error)
      assert.is_false(err.retryable)
      assert.equal(1, #fake:requests("/token"))
      assert.equal(0, #sleeps)
      no_secret(err)
    end)

    it("refuses a 200 answer without a token, never quoting it", function()
      fake:script("/token", { status = 200, body = { refresh_token = "x", id_token = "secret-id" } })
      local tok, msg, err = assert(new()):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "token response")
      assert.is_nil(tostring(err):find("secret-id", 1, true))
      fake:script("/token", { status = 200, body = { access_token = "a", expires_in = "soon" } })
      tok, msg, err = assert(new()):token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.matches("expires_in", err.message)
    end)

    it("fails with a certificate the test CA did not sign (not retried)", function()
      local c = assert(au.from_file(path, { cache = token_cache.new(), retry = fast_retry(),
        ca_file = helpers.certs().other_ca_file }))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "token request")
      assert.is_false(err.retryable)
    end)
  end)

  describe("check_token_uri()", function()
    it("accepts https and loopback http, refuses the rest", function()
      local ok, err = au.check_token_uri("https://oauth2.googleapis.com/token")
      assert.is_true(ok)
      assert.is_nil(err)
      assert.is_true((au.check_token_uri("http://[::1]:8/token")))
      local msg
      ok, msg, err = au.check_token_uri("http://10.0.0.1/token")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      is_error(err, "token_uri")
      ok, msg, err = au.check_token_uri("not a url")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      is_error(err, "token_uri")
    end)
  end)
end)
