-- gauth.token_request: the one skeleton of the credentials' token requests
-- (token endpoint, STS, IAM), sending through gauth.request's loop, against
-- the fake Google on loopback HTTPS (scripted answers). What reached the
-- server is asserted (count, body, authorization), and the one retry table
-- the types share.
local helpers = require "helpers"
local token_request = require "gauth.token_request"
local gauth_request = require "gauth.request"
local retry = require "gauth.retry"

describe("gauth.token_request", function()
  local fake, http, sleeps

  lazy_setup(function()
    fake = helpers.start_fake()
    http = assert(require("gauth.transport.curl").new({ ca_file = fake.ca_file }))
    sleeps = {}
  end)

  lazy_teardown(function()
    http:close()
    fake:stop()
  end)

  before_each(function()
    fake:reset()
    helpers.clear(sleeps)
  end)

  local function policy(fields)
    local over = { testing = { sleep = function(d) sleeps[#sleeps + 1] = d end } }
    for k, v in pairs(fields or {}) do over[k] = v end
    return retry.policy(token_request.RETRY, over)
  end

  local function op(fields)
    local o = { module = "mine", url = fake.url .. "/tr", http = http, body = "grant=x",
                policy = policy(), now = function() return 1000 end }
    for k, v in pairs(fields or {}) do o[k] = v end
    return o
  end

  it("is the one retry table of every POSTing type; gauth.oauth is its old name", function()
    assert.equal(token_request, require("gauth.oauth"))
    for _, m in ipairs({ "service_account", "authorized_user", "impersonated",
                         "external_account_authorized_user", "external_account", "sts", "iam" }) do
      assert.equal(token_request.RETRY, require("gauth." .. m).RETRY, m)
    end
    assert.same({ attempts = 3, initial = 1, multiplier = 2, max_delay = 32, jitter = true,
                  deadline = 60 }, token_request.RETRY)
  end)

  it("send: a 5xx retried after a pause, then the access entry", function()
    fake:script("/tr", { { status = 503, body = "busy" },
                         { status = 200, body = { access_token = "ya29.t", expires_in = 100 } } })
    local entry, msg, err = token_request.send(op())
    assert.is_nil(msg); assert.is_nil(err)
    assert.same({ access_token = "ya29.t", expires_at = 1100 }, entry)
    local rs = fake:requests("/tr")
    assert.equal(2, #rs)
    assert.equal("grant=x", rs[2].body)
    assert.equal("application/x-www-form-urlencoded", rs[1].headers["content-type"])
    assert.is_nil(rs[1].headers.authorization)
    assert.equal(1, #sleeps)
  end)

  it("send: invalid_grant is refused at once, in OAuth's fields, never retried", function()
    fake:script("/tr", { status = 400, body = { error = "invalid_grant", error_description = "bad" } })
    local entry, msg, err = token_request.send(op({ what = "refresh" }))
    assert.is_nil(entry)
    err = helpers.assert_failure(msg, err, "mine", "token response")
    assert.equal("the token endpoint refused the refresh: invalid_grant: bad", err.message)
    assert.equal("invalid_grant", err.oauth_error)
    assert.equal("bad", err.error_description)
    assert.equal(400, err.status)
    assert.is_false(err.retryable)
    assert.equal(1, #fake:requests("/tr"))
    assert.equal(0, #sleeps)
  end)

  it("send: Retry-After of a 429 is the pause; retries run out with the count in the message", function()
    fake:script("/tr", { { status = 429, headers = { ["Retry-After"] = "7" } },
                         { status = 429, headers = { ["Retry-After"] = "7" } },
                         { status = 429, headers = { ["Retry-After"] = "7" } } })
    local entry, msg, err = token_request.send(op())
    assert.is_nil(entry)
    err = helpers.assert_failure(msg, err, "mine", "token response")
    assert.matches("gave up after 3 attempts", msg, 1, true)
    assert.equal(429, err.status)
    assert.equal(7, err.retry_after)
    assert.same({ 7, 7 }, sleeps)
    assert.equal(3, #fake:requests("/tr"))
  end)

  it("send: again() corrects the request once after a failure", function()
    fake:script("/tr", { { status = 400, body = { error = "invalid_grant" } },
                         { status = 200, body = { access_token = "ya29.u" } } })
    local calls = 0
    local entry = assert(token_request.send(op({ again = function(_, err)
      calls = calls + 1
      assert.equal("invalid_grant", err.oauth_error)
      return "grant=fixed"
    end })))
    assert.equal("ya29.u", entry.access_token)
    assert.equal(1, calls)
    local rs = fake:requests("/tr")
    assert.equal(2, #rs)
    assert.equal("grant=fixed", rs[2].body)
  end)

  it("send: a source's bearer token; a 401 drops it and sends once more at once", function()
    fake:script("/tr", { { status = 401, body = { error = { code = 401, status = "UNAUTHENTICATED" } } },
                         { status = 200, body = { access_token = "ya29.v" } } })
    local n, dropped = 0, 0
    local source = {
      token = function() n = n + 1; return "src-" .. n end,
      invalidate = function() dropped = dropped + 1 end,
    }
    local entry = assert(token_request.send(op({
      source = source, headers = { ["content-type"] = "application/json" } })))
    assert.equal("ya29.v", entry.access_token)
    assert.equal(1, dropped)
    local rs = fake:requests("/tr")
    assert.equal(2, #rs)
    assert.equal("Bearer src-1", rs[1].headers.authorization)
    assert.equal("Bearer src-2", rs[2].headers.authorization)
    assert.equal(0, #sleeps)
  end)

  it("send: a source that fails is its step's error, final, and nothing is sent", function()
    local source = { token = function()
      return require("gauth.errors").fail("authorized_user", "token response", "refused",
                                          { status = 503, retryable = true })
    end }
    local entry, msg, err = token_request.send(op({
      source = source, headers = {}, source_step = "source credentials" }))
    assert.is_nil(entry)
    err = helpers.assert_failure(msg, err, "mine", "source credentials")
    assert.is_false(err.retryable)
    assert.equal("authorized_user", err.cause.module)
    assert.equal(0, #fake:requests("/tr"))
  end)

  it("send: too little time left before the deadline sends nothing", function()
    local entry, msg, err = token_request.send(op({
      policy = policy({ deadline = 0.01, testing = { now = function() return 5 end,
                                                     sleep = function() end } }) }))
    assert.is_nil(entry)
    err = helpers.assert_failure(msg, err, "mine", "token request")
    assert.equal("timeout", err.kind)
    assert.is_false(err.retryable)
    assert.equal(0, #fake:requests("/tr"))
  end)

  it("send: a transport failure is a token request error with the transport's fields", function()
    local entry, msg, err = token_request.send(op({ url = "https://127.0.0.1:1/tr",
                                                     policy = policy({ attempts = 1 }) }))
    assert.is_nil(entry)
    err = helpers.assert_failure(msg, err, "mine", "token request")
    assert.equal("connect", err.kind)
  end)

  it("gauth.request.send: a refusal reader and a whole policy", function()
    fake:script("/tr", { { status = 500 }, { status = 418, body = "teapot" } })
    local res, msg, err = gauth_request.send({
      module = "mine", step = "call", method = "POST", url = fake.url .. "/tr", http = http,
      policy = policy(), metrics = false,
      decode = function(_, r) return r.body end,
      refusal = function(o, r)
        return require("gauth.errors").new(o.module, "answer", "refused " .. r.status,
                                           { status = r.status, retryable = r.status >= 500 })
      end,
    })
    assert.is_nil(res)
    err = helpers.assert_failure(msg, err, "mine", "answer")
    assert.equal(418, err.status)
    assert.equal(2, #fake:requests("/tr"))
    assert.equal(1, #sleeps)
  end)
end)
