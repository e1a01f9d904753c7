-- gauth.errors: the one error object, and Google's HTTP error shapes.
local errors = require "gauth.errors"
local cjson = require "cjson"
local helpers = require "helpers"

local function res(status, body, headers, reason)
  return { status = status, body = type(body) == "table" and cjson.encode(body) or body,
           headers = headers or {}, reason = reason }
end

describe("gauth.errors", function()
  it("makes an object whose fields are API and which prints as one line", function()
    local e = errors.new("service_account", "token request", "connection refused",
      { retryable = true })
    assert.is_true(errors.is(e))
    assert.are.equal("service_account", e.module)
    assert.are.equal("token request", e.step)
    assert.are.equal("connection refused", e.message)
    assert.is_true(e.retryable)
    assert.are.equal("gauth.service_account: token request: connection refused", tostring(e))
    assert.are.equal("x: gauth.service_account: token request: connection refused", "x: " .. e)
  end)

  it("adds the HTTP status, reason and URI to the line", function()
    local e = errors.new("discovery", "sql.instances.get", "not there",
      { status = 404, reason = "notFound", uri = "https://h/p" })
    assert.are.equal("gauth.discovery: sql.instances.get: not there (HTTP 404 notFound) [https://h/p]",
      tostring(e))
  end)

  it("returns the public shape nil, message, err (fail, ret)", function()
    local v, msg, e = errors.fail("storage", "options", "bucket is required", { retryable = false })
    assert.is_nil(v)
    assert.are.equal("gauth.storage: options: bucket is required", msg)
    assert.is_true(errors.is(e))
    assert.is_false(e.retryable)
    local v2, msg2, e2 = errors.ret("gauth.core: verify: bad signature", "id_token", "verify")
    assert.is_nil(v2)
    assert.are.equal("gauth.id_token: verify: verify: bad signature", msg2)
    assert.are.equal("id_token", e2.module)
    local _, msg3, e3 = errors.ret(e)
    assert.are.equal(e, e3)
    assert.are.equal(msg, msg3)
  end)

  it("finds the error object in either return shape (of)", function()
    local e = errors.new("http", "request", "timed out")
    assert.are.equal(e, errors.of(tostring(e), e))
    assert.are.equal(e, errors.of(e))
    local w = errors.of("gauth.core: load key: truncated PEM", nil, "jwt", "load key")
    assert.are.equal("gauth.jwt: load key: load key: truncated PEM", tostring(w))
  end)

  it("tells its objects from anything else", function()
    assert.is_false(errors.is("gauth.x: y: z"))
    assert.is_false(errors.is({ module = "x" }))
    assert.is_false(errors.is(nil))
  end)

  it("wraps a core string and an error object, keeping the fields", function()
    local w = errors.wrap("jwt", "load key", "gauth.core: load private key: truncated PEM")
    assert.are.equal("gauth.jwt: load key: load private key: truncated PEM", tostring(w))
    local inner = errors.new("http", "request", "timed out", { retryable = true, curl_code = 28 })
    local w2 = errors.wrap("oauth", "token request", inner)
    assert.are.equal("gauth.oauth: token request: request: timed out", tostring(w2))
    assert.is_true(w2.retryable)
    assert.are.equal(28, w2.curl_code)
    assert.are.equal(inner, w2.cause)
  end)

  it("redacts keys, tokens and upload ids in URIs", function()
    assert.are.equal("https://h/p?key=REDACTED&x=1&access_token=REDACTED#f",
      errors.redact_uri("https://h/p?key=AIzaSecret&x=1&access_token=ya29.t#f"))
    assert.are.equal("https://h/u?upload_id=REDACTED&oauth_token=REDACTED",
      errors.redact_uri("https://h/u?upload_id=abc&oauth_token=t"))
    assert.are.equal("https://h/p?monkey=1", errors.redact_uri("https://h/p?monkey=1"))
    assert.is_nil(errors.redact_uri(nil))
  end)

  describe("from_response", function()

    it("reads Google's error shape", function()
      local e = errors.from_response("discovery", "x.get", res(403, { error = {
        code = 403, message = "Quota\n  exceeded", status = "PERMISSION_DENIED",
        errors = { { reason = "rateLimitExceeded", message = "m" } } } },
        { ["retry-after"] = "7" }), "https://h/p?key=k")
      assert.are.equal(403, e.status)
      assert.are.equal("rateLimitExceeded", e.reason)
      assert.are.equal("Quota exceeded", e.message)
      assert.is_true(e.retryable)
      assert.are.equal(7, e.retry_after)
      assert.are.equal("https://h/p?key=REDACTED", e.uri)
      assert.are.equal("m", e.details[1].message)
      assert.matches("Quota\\n", e.body, 1, true)
    end)

    it("keeps error.status in google_status, apart from reason, and refuses to retry other 403s", function()
      local e = errors.from_response("m", "s", res(403, { error = { message = "no",
        status = "PERMISSION_DENIED" } }, nil, "Forbidden"))
      assert.are.equal("PERMISSION_DENIED", e.google_status)
      assert.is_nil(e.reason)
      assert.are.equal("Forbidden", e.http_reason)
      assert.is_nil(e.oauth_error)
      assert.is_false(e.retryable)
      assert.are.equal("gauth.m: s: no (HTTP 403 PERMISSION_DENIED)", tostring(e))
      local both = errors.from_response("m", "s", res(403, { error = { message = "q",
        status = "PERMISSION_DENIED", errors = { { reason = "userRateLimitExceeded" } } } }))
      assert.are.equal("userRateLimitExceeded", both.reason)
      assert.are.equal("PERMISSION_DENIED", both.google_status)
      assert.is_true(both.retryable)
    end)

    it("reads the OAuth shape into oauth_error and error_description", function()
      local e = errors.from_response("m", "s", res(400, { error = "invalid_grant",
        error_description = "Invalid JWT Signature." }, nil, "Bad Request"))
      assert.are.equal("invalid_grant", e.oauth_error)
      assert.are.equal("Invalid JWT Signature.", e.error_description)
      assert.is_nil(e.reason)
      assert.is_nil(e.google_status)
      assert.are.equal("Bad Request", e.http_reason)
      assert.are.equal("Invalid JWT Signature.", e.message)
      assert.is_false(e.retryable)
      local _, msg, err = errors.fail_response("m", "s", res(503, { error = "temporarily_unavailable" }))
      helpers.assert_failure(msg, err, "m", "s")
      assert.are.equal("temporarily_unavailable", err.oauth_error)
      assert.is_true(err.retryable)
    end)
  end)

  describe("classify: the one retry rule", function()
    -- { fields, retryable, why }
    local cases = {
      { { status = 408 }, true, "request timeout" },
      { { status = 429 }, true, "too many requests" },
      { { status = 500 }, true, "5xx" },
      { { status = 501 }, true, "every 5xx, 501 included (googleapiclient, gaxios)" },
      { { status = 502 }, true, "5xx" },
      { { status = 503 }, true, "5xx" },
      { { status = 504 }, true, "5xx" },
      { { status = 599 }, true, "5xx" },
      { { status = 200 }, false, "success" },
      { { status = 400 }, false, "client error" },
      { { status = 401 }, false, "401: refreshing is not retrying" },
      { { status = 404 }, false, "not found" },
      { { status = 409 }, false, "conflict" },
      { { status = 403 }, false, "403 without a reason" },
      { { status = 403, reason = "forbidden" }, false, "403 other reason" },
      { { status = 403, reason = "rateLimitExceeded" }, true, "403 rate limit" },
      { { status = 403, reason = "userRateLimitExceeded" }, true, "403 user rate limit" },
      { { status = 403, google_status = "RESOURCE_EXHAUSTED" }, false, "google_status alone" },
      { { status = 400, oauth_error = "invalid_grant" }, false, "final OAuth error" },
      { { status = 503, oauth_error = "invalid_grant" }, false, "final OAuth error beats 5xx" },
      { { status = 500, oauth_error = "invalid_client" }, false, "final OAuth error beats 5xx" },
      { { status = 400, oauth_error = "server_error" }, true, "OAuth try-again error" },
      { { status = 400, oauth_error = "temporarily_unavailable" }, true, "OAuth try-again error" },
      { { status = 400, oauth_error = "x", error_description = "internal_failure" }, true,
        "OAuth try-again description" },
      { { status = 400, oauth_error = "invalid_target" }, false, "other OAuth error" },
      { { retryable = true, kind = "connect" }, true, "no answer: the transport's word" },
      { { retryable = false, kind = "tls_verify" }, false, "no answer: the transport's word" },
      { {}, false, "nothing known" },
      { { status = 404, retryable = true }, false, "a status decides, not a stale flag" },
    }
    for i, c in ipairs(cases) do
      it("case " .. i .. ": " .. c[3], function()
        assert.are.equal(c[2], errors.classify(c[1]))
      end)
    end

    it("is what every HTTP-answer error of gauth carries", function()
      for _, c in ipairs(cases) do
        if c[1].status and not c[1].oauth_error and not c[1].reason then
          local e = errors.from_response("m", "s", res(c[1].status, ""))
          assert.are.equal(c[2], e.retryable, c[1].status)
        end
      end
    end)

    it("falls back to the status line for a body that is not JSON", function()
      local e = errors.from_response("m", "s", res(502, "<html>bad gateway</html>", nil, "Bad Gateway"))
      assert.are.equal("Bad Gateway", e.message)
      assert.is_true(e.retryable)
      e = errors.from_response("m", "s", res(500, ""))
      assert.are.equal("HTTP 500", e.message)
      assert.is_true(errors.from_response("m", "s", res(429, "")).retryable)
      assert.is_true(errors.from_response("m", "s", res(408, "")).retryable)
      assert.is_false(errors.from_response("m", "s", res(404, "")).retryable)
    end)
  end)
end)
