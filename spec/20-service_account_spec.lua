-- gauth.service_account against the fake Google token endpoint on loopback
-- (HTTPS with the test CA, and plain HTTP): real sockets, real TLS, the
-- assertions judged by PyJWT (never by gauth), what was sent read back from
-- the fake's records.
local helpers = require "helpers"
local sa = require "gauth.service_account"
local token_cache = require "gauth.token_cache"
local errors = require "gauth.errors"
local socket = require "socket"

local GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
local S1 = "https://www.googleapis.com/auth/sqlservice.admin"
local S2 = "https://www.googleapis.com/auth/devstorage.read_only"

-- Retries in milliseconds, and every sleep recorded rather than slept.
local sleeps, fast_retry = helpers.recorded_retry()

local closed_port = helpers.closed_port

-- A line from the middle of a PEM body: must never appear in messages.
local function pem_line(pem)
  local lines = {}
  for l in pem:gmatch("[^\n]+") do
    if not l:find("-----", 1, true) then lines[#lines + 1] = l end
  end
  return lines[math.floor(#lines / 2)]
end

-- A transport that records what it is asked and sends nothing.
local function spy_transport()
  local t = { calls = {} }
  function t:request(req)
    self.calls[#self.calls + 1] = req
    return nil, errors.new("http", "request", "spy: nothing is sent", { retryable = false })
  end
  return t
end

describe("gauth.service_account", function()
  local fake, plain, path, info

  lazy_setup(function()
    fake = helpers.start_fake({ tls = true })
    plain = helpers.start_fake({ tls = false })
    path, info = helpers.make_service_account_file({ token_uri = fake.token_uri })
  end)

  lazy_teardown(function()
    fake:stop()
    plain:stop()
  end)

  before_each(function()
    helpers.clear(sleeps)
    for _, f in ipairs({ fake, plain }) do
      f:reset()
      f:config({ public_keys = { [info.kid] = info.public_pem } })
    end
  end)

  -- Credentials on a cache of their own (tests must not share tokens),
  -- trusting the test CA, with fast retries.
  local function new(opts)
    opts = opts or {}
    if opts.cache == nil then opts.cache = token_cache.new() end
    if opts.ca_file == nil and opts.http == nil then opts.ca_file = fake.ca_file end
    if opts.retry == nil then opts.retry = fast_retry() end
    return sa.from_file(path, opts)
  end

  local function token_requests(server)
    return (server or fake):requests("/token")
  end

  -- The claims of the assertion in the n-th token request, verified by PyJWT
  -- with the public key and the expected audience.
  local function sent_assertion(n, server, uri, verify_exp)
    local r = token_requests(server)[n or 1]
    assert.is_table(r, "no token request")
    assert.equal("POST", r.method)
    assert.equal(GRANT, r.form.grant_type)
    local claims, header = helpers.pyjwt_verify(r.form.assertion, info.public_pem,
      { audience = uri or fake.token_uri, algorithms = { "RS256" },
        verify_exp = verify_exp })
    assert.is_table(claims, header)
    return claims, header, r
  end

  describe("from_file()", function()
    it("reads a key file: email, project, key id, token_uri", function()
      local c, err = new()
      assert.is_nil(err)
      assert.equal(info.client_email, c.service_account_email)
      assert.equal(info.project_id, c.project_id)
      assert.equal(info.kid, c.private_key_id)
      assert.equal(fake.token_uri, c.token_uri)
      local s = tostring(c)
      assert.matches(info.client_email, s, 1, true)
      assert.is_nil(s:find(pem_line(info.private_pem), 1, true))
    end)

    it("uses Google's endpoint when the file has no token_uri", function()
      local p = helpers.make_service_account_file({ key = info.key, omit = { "token_uri" } })
      local c, err = sa.from_file(p)
      assert.is_nil(err)
      assert.equal("https://oauth2.googleapis.com/token", c.token_uri)
    end)

    describe("refuses bad key files, naming file and field, never the key", function()
      local secret

      lazy_setup(function() secret = pem_line(info.private_pem) end)

      local function refused(p, field, pattern)
        local c, msg, err = sa.from_file(p)
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        assert.truthy(errors.is(err), tostring(err))
        assert.equal("service_account", err.module)
        assert.equal("key file", err.step)
        assert.equal(p, err.file)
        assert.equal(field, err.field)
        assert.matches(p, msg, 1, true)
        if field then assert.matches("field " .. field, msg, 1, true) end
        if pattern then assert.matches(pattern, msg) end
        assert.is_nil(msg:find(secret, 1, true))
        assert.is_nil(msg:find("PRIVATE KEY", 1, true))
        return err
      end

      it("missing", function()
        refused(helpers.tmpname("nope", ".json"), nil, "No such file")
      end)

      it("a 3 GB key file (sparse) is refused by its size, without reading it", function()
        local p = helpers.tmpname("huge", ".json")
        assert(os.execute("truncate -s 3G " .. helpers.shell_quote(p)))
        -- bytes this process has read (read(2) and the like), from the kernel
        local function rchar()
          return tonumber(assert(helpers.read_file("/proc/self/io")):match("rchar: (%d+)"))
        end
        local before = rchar()
        local c, e2, e3 = sa.from_file(p)
        local a, a2, a3 = require("gauth.adc").from_file(p)
        local read = rchar() - before
        assert.is_true(read < 64 * 1024, "read " .. read .. " bytes of the file")
        assert.is_nil(c)
        assert.is_nil(a)
        local err = errors.of(e2, e3)
        -- the message string (nil, msg, err) or the object (nil, err)
        assert.equal(tostring(err), tostring(e2))
        assert.equal("gauth.service_account: key file: " .. p .. ": too large for a key file",
                     tostring(err))
        assert.equal("service_account", err.module)
        assert.equal("key file", err.step)
        assert.equal(p, err.file)
        assert.is_true(err.too_large)
        err = errors.of(a2, a3)
        assert.equal("adc", err.module)
        assert.is_true(err.too_large)
        assert.matches("too large for a credentials file", tostring(a2), 1, true)
        -- one byte past the cap is refused too; the cap itself is read
        local cap = require("gauth.credentials").MAX_KEY_FILE
        local over = helpers.write_file(helpers.tmpname("over", ".json"), ("x"):rep(cap + 1))
        c, e2, e3 = sa.from_file(over)
        assert.is_nil(c)
        assert.is_true(errors.of(e2, e3).too_large)
        local at = helpers.write_file(helpers.tmpname("at", ".json"),
          "{}" .. (" "):rep(cap - 2))
        c, e2, e3 = sa.from_file(at)
        assert.is_nil(c)
        assert.is_nil(errors.of(e2, e3).too_large)
        assert.equal("type", errors.of(e2, e3).field)
      end)

      it("unreadable (a directory)", function()
        local d = helpers.tmpname("dir")
        assert(os.execute("mkdir " .. helpers.shell_quote(d)))
        refused(d, nil, "cannot read")
      end)

      it("not JSON", function()
        refused(helpers.write_file(helpers.tmpname("bad", ".json"), "{ not json"),
                nil, "not a JSON object")
      end)

      it("of another type", function()
        local p = helpers.make_authorized_user_file()
        refused(p, "type", "authorized_user")
      end)

      it("without client_email", function()
        local p = helpers.make_service_account_file({ key = info.key, omit = { "client_email" } })
        refused(p, "client_email", "missing")
      end)

      it("without private_key", function()
        local p = helpers.make_service_account_file({ key = info.key, omit = { "private_key" } })
        refused(p, "private_key", "missing")
      end)

      it("with a field of the wrong type", function()
        local p = helpers.make_service_account_file({ key = info.key,
                                                      extra = { private_key_id = 42 } })
        refused(p, "private_key_id", "string")
      end)

      it("with a key that does not parse", function()
        -- A real key with its middle cut out: close to the key, not one.
        local pem = info.private_pem
        local broken = pem:sub(1, 200) .. pem:sub(-200)
        local p = helpers.make_service_account_file({ key = info.key,
                                                      extra = { private_key = broken } })
        refused(p, "private_key")
      end)

      it("with a key that has literal \\n sequences", function()
        local p = helpers.make_service_account_file({ key = info.key,
          extra = { private_key = info.private_pem:gsub("\n", "\\n") } })
        refused(p, "private_key", "literal")
      end)
    end)

    it("raises on a path that is not a string and on bad options", function()
      assert.has_error(function() sa.from_file(42) end, "gauth.service_account: from_file: path must be a string")
      assert.has_error(function() sa.from_file(path, { scopes = 5 }) end,
        "gauth.service_account: scopes must be an array of strings or a space-separated string")
      assert.has_error(function() sa.from_file(path, { subject = {} }) end,
        "gauth.service_account: subject must be a non-empty string")
      assert.has_error(function() sa.from_file(path, { claims = { iat = 1 } }) end,
        "gauth.service_account: claims may not set iat (the lifetime is gauth's)")
      assert.has_error(function() sa.from_file(path, { http = {} }) end,
        "gauth.service_account: http must be a transport (with :request)")
      assert.has_error(function() sa.from_file(path, { timeout = -1 }) end,
        "gauth.service_account: timeout must be a positive number")
    end)
  end)

  describe("from_info()", function()
    it("takes the decoded table or the JSON text", function()
      local text = assert(helpers.read_file(path))
      local c1, e1 = sa.from_info(text, { cache = token_cache.new(), ca_file = fake.ca_file })
      assert.is_nil(e1)
      assert.equal(info.client_email, c1.service_account_email)
      local c2, e2 = sa.from_info(helpers.json_decode(text), { scopes = S1 })
      assert.is_nil(e2)
      assert.same({ S1 }, c2.scopes)
    end)

    it("returns nil and an error for text that is not JSON, or a bad type", function()
      local c, msg, err = sa.from_info("garbage")
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.equal("key file", err.step)
      assert.matches("not a JSON object", tostring(err))
      c, msg, err = sa.from_info({ type = "external_account" })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.equal("type", err.field)
      assert.has_error(function() sa.from_info(42) end,
        "gauth.service_account: from_info: info must be a table or a JSON string")
    end)
  end)

  describe("token()", function()
    it("exchanges an RS256 assertion (scopes as an array) for a token", function()
      -- A clock that stands still: the expiry is exact arithmetic.
      local t0 = os.time()
      local c = assert(new({ scopes = { S1, S2 }, now = function() return t0 end }))
      local tok, exp = c:token()
      assert.equal("fake-token-1", tok)
      assert.equal(t0 + 3599, exp)
      local claims, header, r = sent_assertion(1)
      assert.equal("RS256", header.alg)
      assert.equal("JWT", header.typ)
      assert.equal(info.kid, header.kid)
      assert.equal(info.client_email, claims.iss)
      assert.equal(S1 .. " " .. S2, claims.scope)
      assert.equal(fake.token_uri, claims.aud)
      assert.equal(claims.iat + 3600, claims.exp)
      assert.equal(t0, claims.iat)  -- the standing clock
      assert.is_nil(claims.sub)
      assert.equal("application/x-www-form-urlencoded", r.headers["content-type"])
    end)

    it("takes scopes as a space-separated string", function()
      local c = assert(new({ scopes = S1 .. "  " .. S2 }))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(S1 .. " " .. S2, sent_assertion(1).scope)
    end)

    it("puts the subject in sub (domain-wide delegation)", function()
      local c = assert(new({ scopes = { S1 }, subject = "user@example.com" }))
      assert.truthy(c:token())
      assert.equal("user@example.com", sent_assertion(1).sub)
    end)

    it("adds extra claims", function()
      local c = assert(new({ scopes = { S1 }, claims = { azp = "x", n = 3 } }))
      assert.truthy(c:token())
      local claims = sent_assertion(1)
      assert.equal("x", claims.azp)
      assert.equal(3, claims.n)
    end)

    it("answers from the cache: a second call makes no request", function()
      local c = assert(new({ scopes = { S1 } }))
      local t1, e1 = c:token()
      local t2, e2 = c:token()
      assert.equal(t1, t2)
      assert.equal(e1, e2)
      assert.equal(1, #token_requests())
    end)

    it("shares the token with equal credentials on the same cache", function()
      local cache = token_cache.new()
      local a = assert(new({ scopes = { S1, S2 }, cache = cache }))
      local b = assert(new({ scopes = S2 .. " " .. S1, cache = cache }))
      assert.equal(a:token(), (b:token()))
      assert.equal(1, #token_requests())
      local d = assert(new({ scopes = { S1 }, cache = cache }))
      assert.equal("fake-token-2", (d:token()))
    end)

    it("a forged key file (same email and key id, another key) never gets the real key's token", function()
      -- The fake knows both keys under other ids, so it verifies either
      -- assertion (by trying each) and issues each its own token.
      local kid = "shared-key-id"
      local real_path, real = helpers.make_service_account_file({
        token_uri = fake.token_uri, private_key_id = kid })
      local forged_path, forged = helpers.make_service_account_file({
        token_uri = fake.token_uri, private_key_id = kid, client_email = real.client_email })
      assert.equal(real.client_email, forged.client_email)
      assert.not_equal(real.public_pem, forged.public_pem)
      fake:config({ public_keys = { real = real.public_pem, forged = forged.public_pem } })
      -- one cache for both, as the process-wide one would be
      local cache = token_cache.new()
      local function creds(p)
        return assert(sa.from_file(p, { scopes = { S1 }, cache = cache, ca_file = fake.ca_file,
                                        retry = fast_retry() }))
      end
      local a, b = creds(real_path), creds(forged_path)
      assert.not_equal(a:cache_key(), b:cache_key())
      local ta = assert(a:token())
      local tb = assert(b:token())
      assert.not_equal(ta, tb)
      assert.equal(2, #token_requests())
      -- and each earned its own with its own key
      local r = token_requests()
      assert.is_table(helpers.pyjwt_verify(r[1].form.assertion, real.public_pem,
        { audience = fake.token_uri, algorithms = { "RS256" } }))
      assert.is_table(helpers.pyjwt_verify(r[2].form.assertion, forged.public_pem,
        { audience = fake.token_uri, algorithms = { "RS256" } }))
      -- the same key in another file shares the token (nothing else changed)
      local again = creds(real_path)
      assert.equal(ta, (again:token()))
      assert.equal(2, #token_requests())
    end)

    it("refreshes when the token is within 225 s of expiry", function()
      fake:config({ expires_in = 230 })
      local offset = 0
      local clock = function() return socket.gettime() + offset end
      local c = assert(new({ scopes = { S1 }, now = clock }))
      assert.equal("fake-token-1", (c:token()))
      assert.equal("fake-token-1", (c:token()))
      assert.equal(1, #token_requests())
      offset = 10
      assert.equal("fake-token-2", (c:token()))
      assert.equal(2, #token_requests())
    end)

    it("reuses the connection for the next refresh", function()
      local c = assert(new({ scopes = { S1 } }))
      assert.truthy(c:token())
      c:invalidate()
      assert.equal("fake-token-2", (c:token()))
      local rs = token_requests()
      assert.equal(2, #rs)
      assert.equal(rs[1].conn, rs[2].conn)
    end)

    it("takes expires_in as a string", function()
      fake:script("/token", { status = 200, body = '{"access_token":"s","expires_in":"1800"}' })
      local t0 = os.time()
      local c = assert(new({ scopes = { S1 }, now = function() return t0 end }))
      local tok, exp = c:token()
      assert.equal("s", tok)
      assert.equal(t0 + 1800, exp)
    end)

    it("works over plain HTTP to a loopback host", function()
      local p = helpers.make_service_account_file({ key = info.key,
        private_key_id = info.kid, client_email = info.client_email,
        token_uri = plain.token_uri })
      local c = assert(sa.from_file(p, { scopes = { S1 }, cache = token_cache.new() }))
      assert.equal("fake-token-1", (c:token()))
      local claims = sent_assertion(1, plain, plain.token_uri)
      assert.equal(plain.token_uri, claims.aud)
    end)

    describe("retries", function()
      it("503 then success", function()
        fake:script("/token", { { status = 503, body = "unavailable" } })
        local c = assert(new({ scopes = { S1 } }))
        local tok, exp = c:token()
        assert.is_number(exp)
        assert.equal("fake-token-1", tok)
        assert.equal(2, #token_requests())
        assert.equal(1, #sleeps)
      end)

      it("OAuth server_error and internal_failure, whatever the status", function()
        fake:script("/token", {
          { status = 400, body = { error = "internal_failure" } },
          { status = 500, body = { error = "server_error" } },
        })
        local c = assert(new({ scopes = { S1 } }))
        assert.equal("fake-token-1", (c:token()))
        assert.equal(3, #token_requests())
      end)

      it("honours Retry-After", function()
        fake:script("/token", { { status = 429, headers = { ["Retry-After"] = "3" },
                                  body = { error = "rate_limited" } } })
        local c = assert(new({ scopes = { S1 } }))
        assert.truthy(c:token())
        assert.same({ 3 }, sleeps)
      end)

      it("gives up after 3 attempts with the last error", function()
        fake:script("/token", { { status = 503 }, { status = 502 }, { status = 504 } })
        local c = assert(new({ scopes = { S1 } }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("service_account", err.module)
        assert.equal("token response", err.step)
        assert.equal(504, err.status)
        assert.is_true(err.retryable)
        assert.equal(3, err.attempts)
        assert.equal(3, #token_requests())
      end)

      it("never retries 400 invalid_grant", function()
        fake:script("/token", { { status = 400, body = {
          error = "invalid_grant", error_description = "Invalid JWT Signature." } } })
        local c = assert(new({ scopes = { S1 } }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal(400, err.status)
        assert.equal("invalid_grant", err.oauth_error)
        assert.equal("Invalid JWT Signature.", err.error_description)
        assert.is_false(err.retryable)
        assert.equal(1, #token_requests())
        assert.same({}, sleeps)
      end)

      it("never retries invalid_scope or another 4xx", function()
        fake:script("/token", { { status = 400, body = { error = "invalid_scope" } } })
        local c = assert(new({ scopes = { S1 } }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("invalid_scope", err.oauth_error)
        fake:script("/token", { { status = 403, body = "forbidden" } })
        c:invalidate()
        tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal(403, err.status)
        assert.is_false(err.retryable)
        assert.equal(2, #token_requests())
      end)

      it("stops at the deadline", function()
        fake:script("/token", { { status = 503, headers = { ["Retry-After"] = "30" } } })
        local c = assert(new({ scopes = { S1 }, retry = fast_retry({ deadline = 5 }) }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.matches("deadline", err.message)
        assert.equal(1, #token_requests())
      end)
    end)

    describe("clock skew", function()
      it("is corrected from the Date header, once, and remembered", function()
        -- Both clocks stand still, the fake's two hours behind ours: the
        -- corrected assertion is exact arithmetic.
        local t0 = os.time()
        fake:config({ clock = t0 - 7200 })
        local c = assert(new({ scopes = { S1 }, now = function() return t0 end }))
        local tok = c:token()
        assert.equal("fake-token-1", tok)
        local rs = token_requests()
        assert.equal(2, #rs)
        local first = sent_assertion(1)
        -- Made on the fake's clock, two hours back: expired on ours.
        local second = sent_assertion(2, nil, nil, false)
        assert.equal(t0, first.iat)
        assert.equal(t0 - 7200, second.iat)
        -- The expiry is on our clock all the same.
        local _, exp = c:token()
        assert.equal(t0 + 3599, exp)
        -- A copy shares what was learnt: right the first time.
        assert.truthy(c:with_scopes({ S2 }):token())
        assert.equal(3, #token_requests())
      end)

      it("is not retried when the Date header shows no skew", function()
        fake:script("/token", { { status = 400, body = { error = "invalid_grant",
          error_description = "Invalid JWT: Token must be a short-lived token (60 minutes) "
            .. "and in a reasonable timeframe. Check your iat and exp values in the JWT claim." } } })
        local c = assert(new({ scopes = { S1 } }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("invalid_grant", err.oauth_error)
        assert.is_number(err.clock_skew)
        assert.is_true(math.abs(err.clock_skew) < 5)
        assert.equal(1, #token_requests())
      end)
    end)

    describe("bad answers are errors and never cached", function()
      local function refused(script, pattern)
        fake:script("/token", script)
        local c = assert(new({ scopes = { S1 } }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.truthy(errors.is(err))
        assert.equal("service_account", err.module)
        if pattern then assert.matches(pattern, tostring(err)) end
        -- Not cached: the next call asks again and gets the fake's token.
        assert.equal("fake-token-1", (c:token()))
        return err
      end

      it("no access_token", function()
        local err = refused({ status = 200, body = { token_type = "Bearer" } }, "no access_token")
        assert.is_false(err.retryable)
      end)

      it("garbage JSON", function()
        refused({ status = 200, body = "<html>hello</html>" }, "not a JSON object")
      end)

      it("a token with a bad expires_in", function()
        local err = refused({ status = 200, body = { access_token = "leak-me", expires_in = "soon" } },
                            "expires_in")
        assert.is_nil(tostring(err):find("leak-me", 1, true))
      end)

      it("a truncated body (after retries)", function()
        refused({ { status = 200, body = '{"access_token":"abcdefgh","expires_in":3599}',
                    truncate = true },
                  { status = 200, body = '{"access_token":"abcdefgh","expires_in":3599}',
                    truncate = true },
                  { status = 200, body = '{"access_token":"abcdefgh","expires_in":3599}',
                    truncate = true } })
      end)

      it("a body too large for a token response", function()
        local big = '{"access_token":"x","pad":"' .. string.rep("a", 300 * 1024) .. '"}'
        local err = refused({ status = 200, body = big })
        assert.is_false(err.retryable)
        -- One request for the refused answer (not retried), one after.
        assert.equal(2, #token_requests())
      end)
    end)

    describe("transport failures", function()
      it("times out on a server that never answers", function()
        fake:script("/token", { { hang = true }, { hang = true } })
        local c = assert(new({ scopes = { S1 }, timeout = 0.3,
                               retry = fast_retry({ attempts = 2 }) }))
        local t0 = socket.gettime()
        local tok, msg, err = c:token()
        local took = socket.gettime() - t0
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("token request", err.step)
        assert.equal(28, err.curl_code)
        assert.is_true(err.retryable)
        -- a hang guard (ten times the two 0.3 s attempts), not a window
        assert.is_true(took < 6, "took " .. took)
        assert.equal(2, #token_requests())
      end)

      it("connection refused, retried", function()
        local c = assert(new({ scopes = { S1 },
          token_uri = "https://127.0.0.1:" .. closed_port() .. "/token" }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("token request", err.step)
        assert.equal(7, err.curl_code)
        assert.equal(3, err.attempts)
      end)

      it("refuses a server whose certificate is from another CA, sending nothing", function()
        local other = helpers.start_fake({ tls = true, untrusted = true })
        finally(function() other:stop() end)
        other:config({ public_keys = { [info.kid] = info.public_pem } })
        local c = assert(new({ scopes = { S1 }, token_uri = other.token_uri }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("token request", err.step)
        assert.is_false(err.retryable)
        assert.same({}, other:requests())
      end)

      it("refuses http:// to a non-loopback host before anything is sent", function()
        local c, msg, err = sa.from_file(path, { token_uri = "http://example.invalid/token" })
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        assert.equal("token_uri", err.step)
        assert.matches("example.invalid", tostring(err), 1, true)
        -- And at send time, for an object whose token_uri was changed after.
        local spy = spy_transport()
        c = assert(new({ scopes = { S1 }, http = spy }))
        c.token_uri = "http://example.invalid/token"
        local tok
        tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal("token_uri", err.step)
        assert.same({}, spy.calls)
        -- A key file with such a token_uri is refused as well.
        local p = helpers.make_service_account_file({ key = info.key,
                                                      token_uri = "http://example.invalid/t" })
        c, msg, err = sa.from_file(p)
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        assert.equal("token_uri", err.step)
        assert.same({}, token_requests())
      end)
    end)
  end)

  describe("apply()", function()
    it("sets the bearer token and the quota project header", function()
      local c = assert(new({ scopes = { S1 }, quota_project = "billing-proj" }))
      local h, err = c:apply({})
      assert.is_nil(err)
      assert.equal("Bearer fake-token-1", h.authorization)
      assert.equal("billing-proj", h["x-goog-user-project"])
    end)

    it("returns nil and the error when no token can be had", function()
      fake:script("/token", { status = 401, body = { error = "invalid_client" } })
      local c = assert(new({ scopes = { S1 } }))
      local h, msg, err = c:apply({})
      assert.is_nil(h)
      helpers.assert_failure(msg, err)
      assert.equal("invalid_client", err.oauth_error)
    end)
  end)

  describe("invalidate()", function()
    it("makes the next token() fetch again", function()
      local c = assert(new({ scopes = { S1 } }))
      assert.equal("fake-token-1", (c:token()))
      assert.is_true(c:invalidate())
      assert.equal("fake-token-2", (c:token()))
    end)
  end)

  describe("assertion()", function()
    it("is the signed grant assertion, verifiable by PyJWT", function()
      local c = assert(new({ scopes = { S1 }, subject = "u@example.com" }))
      local a, err = c:assertion()
      assert.is_nil(err)
      local claims, header = helpers.pyjwt_verify(a, info.public_pem,
        { audience = fake.token_uri, require = { "iat", "exp", "iss", "aud" } })
      assert.is_table(claims, header)
      assert.equal(info.kid, header.kid)
      assert.equal("u@example.com", claims.sub)
      assert.equal(S1, claims.scope)
      assert.equal(claims.iat + 3600, claims.exp)
      assert.same({}, token_requests())
    end)

    it("returns nil and an error for claims that cannot be encoded", function()
      local c = assert(new({ scopes = { S1 } })):with_claims({ bad = function() end })
      local a, msg, err = c:assertion()
      assert.is_nil(a)
      helpers.assert_failure(msg, err)
      assert.equal("assertion", err.step)
    end)
  end)

  describe("copy-on-write modifiers", function()
    it("with_scopes gives a new object with its own token", function()
      local c = assert(new({ scopes = { S1 } }))
      local d = c:with_scopes(S2)
      assert.same({ S1 }, c.scopes)
      assert.same({ S2 }, d.scopes)
      assert.not_equal(c:cache_key(), d:cache_key())
      assert.equal("fake-token-1", (c:token()))
      assert.equal("fake-token-2", (d:token()))
      assert.equal(S2, sent_assertion(2).scope)
      assert.has_error(function() c:with_scopes(7) end,
        "gauth.service_account: scopes must be an array of strings or a space-separated string")
    end)

    it("with_subject", function()
      local c = assert(new({ scopes = { S1 } }))
      local d = c:with_subject("a@example.com")
      assert.is_nil(c.subject)
      assert.truthy(d:token())
      assert.equal("a@example.com", sent_assertion(1).sub)
      assert.has_error(function() c:with_subject(3) end, "gauth.service_account: subject must be a non-empty string")
    end)

    it("with_claims merges", function()
      local c = assert(new({ scopes = { S1 }, claims = { a = 1 } }))
      local d = c:with_claims({ b = 2 })
      assert.same({ a = 1 }, c.claims)
      assert.same({ a = 1, b = 2 }, d.claims)
      assert.truthy(d:token())
      local claims = sent_assertion(1)
      assert.equal(1, claims.a)
      assert.equal(2, claims.b)
      assert.has_error(function() c:with_claims("x") end, "gauth.service_account: with_claims: claims must be a table")
      assert.has_error(function() c:with_claims({ exp = 1 }) end,
        "gauth.service_account: claims may not set exp (the lifetime is gauth's)")
    end)
  end)

  describe("self-signed JWT", function()
    it("with jwt_access and an audience: signed locally, no request, cached", function()
      local aud = "https://pubsub.googleapis.com/"
      local t0 = os.time()
      local c = assert(new({ jwt_access = true, audience = aud, now = function() return t0 end }))
      local tok, exp = c:token()
      assert.is_string(tok)
      local claims, header = helpers.pyjwt_verify(tok, info.public_pem, { audience = aud })
      assert.is_table(claims, header)
      assert.equal(info.kid, header.kid)
      assert.equal(info.client_email, claims.iss)
      assert.equal(info.client_email, claims.sub)
      assert.equal(claims.iat + 3600, claims.exp)
      assert.is_nil(claims.scope)
      assert.equal(t0, claims.iat)
      assert.equal(t0 + 3600, exp)
      assert.equal(tok, (c:token()))
      assert.same({}, token_requests())
    end)

    it("with scopes and no audience: a scope claim", function()
      local c = assert(new({ jwt_access = true, scopes = { S1, S2 } }))
      local tok = assert(c:token())
      local claims = helpers.pyjwt_verify(tok, info.public_pem)
      assert.is_table(claims)
      assert.equal(S1 .. " " .. S2, claims.scope)
      assert.is_nil(claims.aud)
    end)

    it("is re-signed inside the refresh window", function()
      local offset = 0
      local c = assert(new({ jwt_access = true, audience = "https://a.googleapis.com/",
                             now = function() return socket.gettime() + offset end }))
      local t1 = assert(c:token())
      offset = 3600 - 225 - 5
      assert.equal(t1, (c:token()))
      offset = 3600 - 225 + 5
      local t2 = assert(c:token())
      assert.not_equal(t1, t2)
    end)

    it("is never switched on by an audience alone (DECISIONS): it must be asked for", function()
      assert.error_matches(function() new({ audience = "https://pubsub.googleapis.com/" }) end,
        "gauth.service_account: audience is the aud of a self-signed JWT: ask for one with"
        .. " jwt_access = true (or use with_audience)", 1, true)
      assert.error_matches(function() new({ audience = "https://a.googleapis.com/", jwt_access = false }) end,
        "ask for one with jwt_access = true", 1, true)
      -- The exchange stays the exchange; jwt_access = true is the JWT.
      local c, msg, err = new({ scopes = { S1 } })
      assert.equal("exchange", c.mode)
      assert.is_nil(msg)
      assert.is_nil(err)
      assert.equal("jwt", assert(new({ jwt_access = true, audience = "https://a.googleapis.com/" })).mode)
      -- Outside googleapis.com there is no exchange: a JWT in any case.
      assert.equal("jwt", assert(new({ universe_domain = "example-universe.test",
                                       audience = "https://a.example-universe.test/" })).mode)
    end)

    it("without audience or scopes: nil and an error", function()
      local c = assert(new({ jwt_access = true }))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.matches("audience or scopes", err.message)
      local d = c:with_audience(sa.audience_for("https://storage.googleapis.com/storage/v1/b"))
      assert.equal("https://storage.googleapis.com/", d.audience)
      assert.truthy(d:token())
    end)

    it("cannot act for a subject", function()
      assert.has_error(function() new({ jwt_access = true, subject = "u@example.com" }) end,
        "gauth.service_account: a self-signed JWT cannot act for a subject (delegation needs the token exchange)")
      local c = assert(new({ scopes = { S1 }, subject = "u@example.com" }))
      assert.has_error(function() c:with_audience("https://a.googleapis.com/") end,
        "gauth.service_account: a self-signed JWT cannot act for a subject")
    end)
  end)

  -- The one way is id_token.credentials (DECISIONS); id_token_credentials
  -- is its deprecated alias.
  describe("ID-token credentials (id_token.credentials; id_token_credentials, its alias)", function()
    local AUD = "https://my-service-abc123-uc.a.run.app"

    it("gets an ID token for target_audience", function()
      local t0 = os.time()
      -- The source's clock times the token (expires_at); id_token's, its refresh.
      local src = assert(sa.from_file(path, { ca_file = fake.ca_file, retry = fast_retry(),
                                              now = function() return t0 end }))
      local c, err = require("gauth.id_token").credentials(src, { audience = AUD,
        now = function() return t0 end, cache = token_cache.new() })
      assert.is_nil(err)
      local tok, exp = c:token()
      assert.is_string(tok)
      local server = fake:get_config()
      local claims = helpers.pyjwt_verify(tok, server.server_public_pem, { audience = AUD })
      assert.is_table(claims)
      assert.equal(info.client_email, claims.email)
      -- the token's own lifetime (exp - iat) from our clock
      assert.equal(t0 + (claims.exp - claims.iat), exp)
      assert.equal(3600, claims.exp - claims.iat)
      local sent = sent_assertion(1)
      assert.equal(AUD, sent.target_audience)
      assert.is_nil(sent.scope)
      assert.equal(tok, (c:token()))
      assert.equal(1, #token_requests())
      local h = assert(c:apply())
      assert.equal("Bearer " .. tok, h.authorization)
      local d = assert(c:with_target_audience("https://other.example"))
      assert.truthy(d:token())
      assert.equal("https://other.example", sent_assertion(2).target_audience)
    end)

    it("id_token_credentials (deprecated alias) takes a path, the key as a table or JSON text", function()
      local text = assert(helpers.read_file(path))
      for _, k in ipairs({ path, text, helpers.json_decode(text) }) do
        local c = assert(sa.id_token_credentials(k, { target_audience = AUD }))
        assert.equal("id_token", c.kind)
        assert.equal(AUD, c.audience)
        assert.equal(info.client_email, c.service_account_email)
      end
    end)

    it("returns nil and an error when the answer has no id_token", function()
      fake:script("/token", { status = 200, body = { access_token = "not-an-id-token" } })
      local c = assert(sa.id_token_credentials(path, { target_audience = AUD,
        ca_file = fake.ca_file, cache = token_cache.new(), retry = fast_retry() }))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.matches("no id_token", err.message)
    end)

    it("returns nil and an error for a bad key file; raises without target_audience", function()
      local c, msg, err = sa.id_token_credentials(helpers.tmpname("nope"), { target_audience = AUD })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.equal("key file", err.step)
      assert.has_error(function() sa.id_token_credentials(path, {}) end,
        "gauth.service_account: id_token_credentials: opts.target_audience (a non-empty string) required")
      assert.has_error(function() sa.id_token_credentials(path, { target_audience = AUD,
                                                                  scopes = S1 }) end,
        "gauth.service_account: id_token_credentials takes no scopes, subject or audience")
    end)
  end)

  describe("fetch_token()", function()
    it("asks the endpoint every time, bypassing the cache", function()
      local t0 = os.time()
      local c = assert(new({ scopes = { S1 }, now = function() return t0 end }))
      local e, err = c:fetch_token()
      assert.is_nil(err)
      assert.equal("fake-token-1", e.access_token)
      assert.equal("Bearer", e.token_type)
      assert.equal(t0 + 3599, e.expires_at)
      assert.equal("fake-token-2", c:fetch_token().access_token)
      assert.equal(2, #token_requests())
    end)

    it("returns nil and the endpoint's error", function()
      fake:script("/token", { status = 400, body = { error = "invalid_grant",
        error_description = "Invalid JWT: Failed audience check. The expected value is x" } })
      local c = assert(new({ scopes = { S1 } }))
      local e, msg, err = c:fetch_token()
      assert.is_nil(e)
      helpers.assert_failure(msg, err)
      assert.equal("invalid_grant", err.oauth_error)
      -- Not about the time window ("expected" is no "exp"): no skew noted.
      assert.is_nil(err.clock_skew)
    end)
  end)

  describe("requires_scopes()", function()
    it("is true for the exchange without scopes only", function()
      assert.is_true(assert(new()):requires_scopes())
      assert.is_false(assert(new({ scopes = S1 })):requires_scopes())
      assert.is_false(assert(new({ jwt_access = true, audience = "https://a.googleapis.com/" })):requires_scopes())
      assert.is_true(assert(new({ jwt_access = true })):requires_scopes())
      local id = assert(sa.id_token_credentials(path, { target_audience = "https://x" }))
      assert.is_false(id:requires_scopes())
    end)
  end)

  describe("check_token_uri() and audience_for()", function()
    it("accepts https and loopback http; refuses the rest", function()
      assert.is_true(sa.check_token_uri("https://oauth2.googleapis.com/token"))
      assert.is_true(sa.check_token_uri("http://127.0.0.1:8080/token"))
      assert.is_true(sa.check_token_uri("http://localhost/token"))
      assert.is_true(sa.check_token_uri("http://[::1]:9/token"))
      local ok, msg, err = sa.check_token_uri("http://oauth2.googleapis.com/token")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      assert.equal("token_uri", err.step)
      ok, msg, err = sa.check_token_uri("ftp://x/y")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      assert.matches("scheme", err.message)
      ok, msg, err = sa.check_token_uri("not a url")
      assert.is_nil(ok)
      helpers.assert_failure(msg, err)
      assert.matches("not an absolute", err.message)
    end)

    it("audience_for gives https://<host>/ or nil", function()
      assert.equal("https://pubsub.googleapis.com/",
                   sa.audience_for("https://PubSub.googleapis.com/v1/projects"))
      assert.is_nil(sa.audience_for("pubsub"))
    end)
  end)
end)
