-- gauth.external_account_authorized_user (workforce identity federation for
-- people: a refresh token at STS's oauthtoken endpoint) against the fake on
-- loopback; Google's Node library judges the refresh request.
local helpers = require "helpers"
local eau = require "gauth.external_account_authorized_user"
local token_cache = require "gauth.token_cache"
local cjson = require "cjson"

local sleeps, fast_retry = helpers.recorded_retry()
local is_error = helpers.assert_gauth_error
local AUD = "//iam.googleapis.com/locations/global/workforcePools/wpool/providers/wprov"
local RT = "wf-refresh-token-0123456789"

describe("gauth.external_account_authorized_user", function()
  local fake

  lazy_setup(function()
    helpers.install_loopback_guard()
    fake = helpers.start_fake({ tls = false })
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    fake:config({ refresh_tokens = { [RT] = { client_id = "wf-client", client_secret = "wf-secret" } } })
  end)

  local function info(extra)
    local i = { type = "external_account_authorized_user", audience = AUD,
                client_id = "wf-client", client_secret = "wf-secret", refresh_token = RT,
                token_url = fake.url .. "/v1/oauthtoken",
                token_info_url = fake.url .. "/v1/introspect",
                revoke_url = fake.url .. "/v1/revoke", quota_project_id = "qp" }
    for k, v in pairs(extra or {}) do i[k] = v or nil end
    return i
  end

  local function new(i, opts)
    opts = opts or {}
    opts.cache = opts.cache or token_cache.new()
    opts.retry = opts.retry or fast_retry()
    return eau.from_info(i, opts)
  end

  it("refreshes with HTTP Basic client authentication and the refresh token only in the form", function()
    local path = helpers.tmpname("eau", ".json")
    helpers.write_file(path, cjson.encode(info()))
    local c, msg, err = eau.from_file(path, { cache = token_cache.new() })
    assert.is_nil(msg)
    assert.is_nil(err)
    assert.equal("qp", c.quota_project)
    assert.equal("googleapis.com", c.universe_domain)
    local tok = assert(c:token())
    assert.equal("fake-token-1", tok)
    local r = fake:requests("/v1/oauthtoken")
    assert.equal(1, #r)
    assert.same({ grant_type = "refresh_token", refresh_token = RT }, r[1].form)
    assert.equal("Basic " .. helpers.b64encode("wf-client:wf-secret"), r[1].headers.authorization)
    local h = assert(c:apply({}))
    assert.equal("Bearer fake-token-1", h.authorization)
    assert.equal("qp", h["x-goog-user-project"])
    assert.is_nil(tostring(c):find(RT, 1, true))
    assert.is_nil(tostring(c):find("wf-secret", 1, true))
  end)

  it("never shares a cached token between configs of one client with different refresh tokens", function()
    -- Issue 17 item 2: the cache key binds the refresh token.
    local cache = token_cache.new()
    local RT2 = "wf-refresh-token-of-another-user"
    fake:config({ refresh_tokens = { [RT2] = { client_id = "wf-client", client_secret = "wf-secret" } } })
    local a = assert(new(info(), { cache = cache }))
    local b = assert(new(info({ refresh_token = RT2 }), { cache = cache }))
    assert.equal("fake-token-1", (a:token()))
    assert.equal("fake-token-2", (b:token()))
    assert.equal("fake-token-1", (a:token()))  -- each from the cache now
    assert.equal("fake-token-2", (b:token()))
    local r = fake:requests("/v1/oauthtoken")
    assert.equal(2, #r)
    assert.equal(RT2, r[2].form.refresh_token)
    -- The same client with a refresh token the server does not know: the
    -- server's refusal, never a cached token.
    local f = assert(new(info({ refresh_token = "wf-forged" }), { cache = cache }))
    local tok, msg, err = f:token()
    assert.is_nil(tok)
    assert.equal("gauth.external_account_authorized_user: token response: the token endpoint refused"
      .. " the refresh: invalid_grant: Token has been expired or revoked. (HTTP 400 invalid_grant) ["
      .. fake.url .. "/v1/oauthtoken]", msg)
    helpers.assert_failure(msg, err, "external_account_authorized_user", "token response")
    assert.equal("invalid_grant", err.oauth_error)
    assert.is_nil(msg:find("wf-forged", 1, true))
    assert.equal(3, #fake:requests("/v1/oauthtoken"))
  end)

  it("defaults token_url to the universe's STS", function()
    local c = assert(new(info({ token_url = false, universe_domain = "u.example" })))
    assert.equal("https://sts.u.example/v1/oauthtoken", c.token_url)
  end)

  it("does not retry invalid_grant; retries a 503", function()
    local c = assert(new(info({ refresh_token = "unknown-rt" })))
    local tok, msg, err = c:token()
    assert.is_nil(tok)
    assert.matches("^gauth%.external_account_authorized_user: token response: the token endpoint"
      .. " refused the refresh: invalid_grant", msg)
    is_error(err, "external_account_authorized_user", "token response")
    assert.equal(false, err.retryable)
    assert.equal(1, #fake:requests("/v1/oauthtoken"))
    assert.is_nil(msg:find("unknown-rt", 1, true))
    fake:script("/v1/oauthtoken", { status = 503, body = "busy" })
    local d = assert(new(info()))
    assert.equal("fake-token-1", (d:token()))
    assert.equal(3, #fake:requests("/v1/oauthtoken"))
    assert.equal(1, #sleeps)
  end)

  it("introspects a token at token_info_url and revokes the refresh token at revoke_url", function()
    local c = assert(new(info()))
    local ti, msg, err = c:token_info()
    assert.is_nil(msg)
    assert.is_nil(err)
    assert.is_true(ti.active)
    local r = fake:requests("/v1/introspect")
    assert.equal("fake-token-1", r[1].form.token)
    assert.equal("Basic " .. helpers.b64encode("wf-client:wf-secret"), r[1].headers.authorization)
    assert.is_true(c:revoke())
    assert.equal(RT, fake:requests("/v1/revoke")[1].form.token)
    -- Revoked: a second revoke is refused, and so is the next refresh.
    local ok, rmsg, rerr = c:revoke()
    assert.is_nil(ok)
    assert.equal("gauth.external_account_authorized_user: revoke: invalid_request: Invalid token."
      .. " (HTTP 400 invalid_request) [" .. fake.url .. "/v1/revoke]", rmsg)
    is_error(rerr, "external_account_authorized_user", "revoke")
    local tok, tmsg = c:token()
    assert.is_nil(tok)
    assert.matches("invalid_grant", tmsg)
    local d = assert(new(info({ revoke_url = false })))
    ok, rmsg, rerr = d:revoke()
    assert.is_nil(ok)
    assert.equal("gauth.external_account_authorized_user: revoke: the file has no revoke_url", rmsg)
    is_error(rerr, "external_account_authorized_user", "revoke")
  end)

  it("refuses malformed files, naming the field", function()
    for _, case in ipairs({ { { refresh_token = false }, "refresh_token" },
                            { { client_secret = 5 }, "client_secret" },
                            { { token_url = "http://sts.example.com/x" }, "token_url" } }) do
      local c, msg, err = new(info(case[1]))
      assert.is_nil(c)
      assert.matches("^gauth%.external_account_authorized_user: key file: .*field " .. case[2], msg)
      is_error(err, "external_account_authorized_user", "key file")
      assert.equal(case[2], err.field)
    end
  end)

  it("sends the refresh request Node's ExternalAccountAuthorizedUserClient sends", function()
    local c = assert(new(info()))
    assert(c:token())
    local input = helpers.tmpname("node-eau", ".json")
    helpers.write_file(input, cjson.encode({ { config = info() } }))
    local closed = "http://127.0.0.1:" .. helpers.closed_port()
    local p = io.popen("env no_proxy=127.0.0.1 NO_PROXY=127.0.0.1 METADATA_SERVER_DETECTION=none"
      .. " HTTPS_PROXY=" .. closed .. " HTTP_PROXY=" .. closed .. " NODE_PATH="
      .. helpers.shell_quote(helpers.root .. "/spec/support/node/node_modules")
      .. " node " .. helpers.shell_quote(helpers.support_dir .. "/ea_judge.js") .. " < "
      .. helpers.shell_quote(input) .. " 2>&1")
    local out = p:read("*a")
    p:close()
    local res = cjson.decode(out)
    assert(type(res) == "table" and res[1].token, "node: " .. out)
    local r = fake:requests("/v1/oauthtoken")
    assert.equal(2, #r)
    assert.same(r[2].form, r[1].form)
    assert.equal(r[2].headers.authorization, r[1].headers.authorization)
    assert.equal(r[2].headers["content-type"]:match("^[^;]+"), r[1].headers["content-type"])
  end)
end)
