-- gauth.session (authorized requests to any URL) and gauth.request (the one
-- send loop beneath it and beneath Discovery's execute), against the fake
-- Google on loopback HTTPS (test CA). Judge: Python's
-- google.auth.transport.requests.AuthorizedSession (spec/support/
-- session_judge.py, one process for the whole batch) sends the same cases
-- to the same server: what reached the server (method, path and query,
-- authorization, body), the refresh on 401 and the retry decisions must
-- be the same. The nginx case (LuaJIT pass only) runs session:request in a
-- content_by_lua handler, over cosockets.
local helpers = require "helpers"
local judges = require "support.judges"
local nginx = require "support.nginx"
local cjson = require "cjson.safe"
local session = require "gauth.session"
local gauth_request = require "gauth.request"
local au = require "gauth.authorized_user"
local api_key = require "gauth.api_key"
local token_cache = require "gauth.token_cache"

local LUAJIT_PASS = (os.getenv("GAUTH_LUA_VERSION") or (jit and "5.1" or "5.4")) == "5.1"  -- luacheck: ignore
local USER = helpers.USER

describe("gauth.session", function()
  local fake, http, sleeps

  -- A refresh token of its own for each case (counted at the token
  -- endpoint), accepted by the fake.
  local refresh_tokens = {}
  local function rt(name)
    local t = "1//rt-" .. name
    refresh_tokens[t] = { client_id = USER.client_id, client_secret = USER.client_secret }
    fake:config({ refresh_tokens = { [t] = refresh_tokens[t] } })
    return t
  end

  local function creds_for(token, opts)
    opts = opts or {}
    return assert(au.from_info({
      type = "authorized_user", client_id = USER.client_id,
      client_secret = USER.client_secret, refresh_token = token,
      token_uri = opts.token_uri or fake.token_uri,
    }, { http = http, cache = token_cache.new(), retry = false }))
  end

  local function new_session(creds, opts)
    opts = opts or {}
    if opts.http == nil and opts.ca_file == nil and opts.client_cert == nil then opts.http = http end
    opts.testing = opts.testing or { sleep = function(d) sleeps[#sleeps + 1] = d end }
    return assert(session.new(creds, opts))
  end

  local function token_exchanges(refresh_token)
    local n = 0
    for _, r in ipairs(fake:requests("/token")) do
      if r.form and r.form.refresh_token == refresh_token then n = n + 1 end
    end
    return n
  end

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
    fake:config({ refresh_tokens = refresh_tokens })
    helpers.clear(sleeps)
  end)

  describe("against AuthorizedSession (Python, one process for the batch)", function()
    -- Each case: the method and what the server answers, in order; the
    -- attempts both must make and the outcome (a status, or "retry": the
    -- retries ran out and the call failed).
    local CASES = {
      { name = "get", method = "GET", query = "?a=1&b=x%20y",
        headers = { ["X-Custom"] = "v1" },
        script = { { status = 200, body = { ok = true } } }, n = 1, outcome = 200, tokens = 1 },
      { name = "post_json", method = "POST", body = '{"k":"v","n":[1,2]}',
        headers = { ["Content-Type"] = "application/json" },
        script = { { status = 201, body = { id = 7 } } }, n = 1, outcome = 201, tokens = 1 },
      { name = "put", method = "PUT", body = "plain bytes\n",
        headers = { ["content-type"] = "text/plain" },
        script = { { status = 200, body = "" } }, n = 1, outcome = 200, tokens = 1 },
      -- not scripted: the fake's own 404, an answer like any other
      { name = "not_found", method = "GET", script = {}, n = 1, outcome = 404, tokens = 1 },
      { name = "refresh_once", method = "GET",
        script = { { status = 401, body = { error = { code = 401, status = "UNAUTHENTICATED" } } },
                   { status = 200, body = { ok = true } } }, n = 2, outcome = 200, tokens = 2,
        fresh_second = true },
      { name = "unauthorized", method = "GET",
        script = { { status = 401, body = { error = { code = 401 } } },
                   { status = 401, body = { error = { code = 401 } } } },
        n = 2, outcome = 401, tokens = 2, fresh_second = true },
      { name = "get_503", method = "GET",
        script = { { status = 503, body = "busy" }, { status = 503, body = "busy" },
                   { status = 200, body = { ok = true } } }, n = 3, outcome = 200, tokens = 1 },
      { name = "post_503", method = "POST", body = "x=1",
        script = { { status = 503, body = "busy" }, { status = 200, body = {} } },
        n = 1, outcome = 503, tokens = 1 },
      { name = "get_500_exhausted", method = "GET",
        script = { { status = 500 }, { status = 500 }, { status = 500 }, { status = 500 },
                   { status = 200 } }, n = 4, outcome = "retry", tokens = 1 },
      { name = "get_429", method = "GET",
        script = { { status = 429, headers = { ["Retry-After"] = "1" }, body = "slow down" },
                   { status = 200, body = { ok = true } } }, n = 2, outcome = 200, tokens = 1 },
      { name = "post_429", method = "POST", body = "{}",
        script = { { status = 429, body = "slow down" }, { status = 200 } },
        n = 1, outcome = 429, tokens = 1 },
      { name = "delete_500", method = "DELETE",
        script = { { status = 500 }, { status = 204 } }, n = 2, outcome = 204, tokens = 1 },
      { name = "patch_500", method = "PATCH", body = "{}",
        script = { { status = 500 }, { status = 200 } }, n = 1, outcome = 500, tokens = 1 },
    }

    local py, lua, issued = {}, {}, nil

    lazy_setup(function()
      fake:reset()
      fake:config({ refresh_tokens = refresh_tokens })
      for _, c in ipairs(CASES) do
        c.rt_g, c.rt_p = rt("g-" .. c.name), rt("p-" .. c.name)
      end
      fake:config({ refresh_tokens = refresh_tokens })
      for _, c in ipairs(CASES) do
        if #c.script > 0 then
          fake:script("/g/" .. c.name, c.script)
          fake:script("/p/" .. c.name, c.script)
        end
      end
      -- gauth
      for _, c in ipairs(CASES) do
        local s = new_session(creds_for(c.rt_g))
        local res, msg, err = s:request({ method = c.method, url = fake.url .. "/g/" .. c.name
          .. (c.query or ""), headers = c.headers, body = c.body })
        lua[c.name] = { res = res, msg = msg, err = err }
      end
      -- Python
      local cases = {}
      for i, c in ipairs(CASES) do
        cases[i] = { name = c.name, refresh_token = c.rt_p, method = c.method,
                     url = fake.url .. "/p/" .. c.name .. (c.query or ""),
                     headers = c.headers, body = c.body }
      end
      local out = judges.run_json("/usr/bin/python3 " .. helpers.shell_quote(helpers.support_dir
        .. "/session_judge.py"), { ca_file = fake.ca_file, token_uri = fake.token_uri,
          client_id = USER.client_id, client_secret = USER.client_secret, cases = cases })
      for _, r in ipairs(out) do py[r.name] = r end
      -- what the server saw, kept before the before_each resets it
      for _, c in ipairs(CASES) do
        c.seen_g, c.seen_p = fake:requests("/g/" .. c.name), fake:requests("/p/" .. c.name)
        c.tok_g, c.tok_p = token_exchanges(c.rt_g), token_exchanges(c.rt_p)
      end
      issued = fake:tokens()
    end)

    for _, c in ipairs(CASES) do
      it(c.name .. ": " .. c.method .. " " .. tostring(c.n) .. " attempt(s), then "
         .. tostring(c.outcome) .. ", as AuthorizedSession", function()
        local p, l = py[c.name], lua[c.name]
        assert.is_table(p)
        -- the outcome, judged by Python and stated
        if c.outcome == "retry" then
          assert.equal("retry", p.error, p.detail)
          assert.is_nil(l.res)
          local err = helpers.assert_failure(l.msg, l.err, "session", "request")
          assert.equal(c.n, err.attempts)
          assert.equal(c.script[c.n].status, err.status)
          assert.is_true(err.retryable)
          assert.matches("gave up after " .. c.n .. " attempts", l.msg, 1, true)
        else
          assert.is_nil(p.error, p.detail)
          assert.equal(c.outcome, p.status)
          assert.is_nil(l.msg, tostring(l.msg))
          assert.is_nil(l.err)
          assert.equal(c.outcome, l.res.status)
          assert.is_table(l.res.headers)
          assert.is_string(l.res.body)
        end
        -- the same attempts on the wire
        assert.equal(c.n, #c.seen_p)
        assert.equal(c.n, #c.seen_g)
        assert.equal(c.tokens, c.tok_p)
        assert.equal(c.tokens, c.tok_g)
        for i = 1, c.n do
          local g, pr = c.seen_g[i], c.seen_p[i]
          assert.equal(pr.method, g.method)
          assert.equal(c.method, g.method)
          assert.equal(pr.query, g.query)
          assert.equal(pr.body, g.body)
          assert.equal(c.body or "", g.body)
          -- "Bearer <a token the fake issued>", for both
          for _, r in ipairs({ g, pr }) do
            local tok = r.headers.authorization:match("^Bearer (.+)$")
            assert.is_string(tok)
            assert.is_table(issued[tok])
          end
          for k, v in pairs(c.headers or {}) do
            assert.equal(v, g.headers[k:lower()])
            assert.equal(v, pr.headers[k:lower()])
          end
        end
        if c.fresh_second then
          -- the retry after the 401 carries the token of the refresh
          assert.not_equal(c.seen_g[1].headers.authorization, c.seen_g[2].headers.authorization)
          assert.not_equal(c.seen_p[1].headers.authorization, c.seen_p[2].headers.authorization)
        end
      end)
    end

    it("Retry-After decided the pause (recorded, not slept)", function()
      -- the get_429 case above: its one pause was the server's 1 s
      local s = new_session(creds_for(rt("ra")))
      fake:script("/g/ra", { { status = 503, headers = { ["Retry-After"] = "7" } },
                             { status = 200, body = "{}" } })
      local res, msg, err = s:request({ url = fake.url .. "/g/ra" })
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal(200, res.status)
      assert.same({ 7 }, sleeps)
    end)
  end)

  describe("request()", function()
    it("retry = false: one attempt, the 503 is the response", function()
      local s = new_session(creds_for(rt("nr")))
      fake:script("/x", { { status = 503, body = "busy" }, { status = 200 } })
      local res, msg, err = s:request({ url = fake.url .. "/x", retry = false })
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal(503, res.status)
      assert.equal("busy", res.body)
      assert.equal(1, #fake:requests("/x"))
      assert.same({}, sleeps)
    end)

    it("retry = { attempts = 2 } retries a POST, and fails when both are refused", function()
      local s = new_session(creds_for(rt("post2")))
      fake:script("/x", { { status = 502 }, { status = 502 }, { status = 200 } })
      local res, msg, err = s:request({ method = "POST", url = fake.url .. "/x", body = "b",
                                        retry = { attempts = 2 } })
      assert.is_nil(res)
      err = helpers.assert_failure(msg, err, "session", "request")
      assert.equal(502, err.status)
      assert.equal(2, err.attempts)
      assert.equal(2, #fake:requests("/x"))
      assert.equal(1, #sleeps)
    end)

    it("the session's retry is the default of its requests", function()
      local s = new_session(creds_for(rt("sess-retry")), { retry = false })
      fake:script("/x", { { status = 500 }, { status = 200 } })
      local res, msg = s:request({ url = fake.url .. "/x" })
      assert.is_nil(msg)
      assert.equal(500, res.status)
      assert.equal(1, #fake:requests("/x"))
    end)

    it("a deadline the next pause would pass ends the call at once", function()
      local s = new_session(creds_for(rt("dl")))
      fake:script("/x", { { status = 503, headers = { ["Retry-After"] = "30" } }, { status = 200 } })
      local res, msg, err = s:request({ url = fake.url .. "/x", retry = { deadline = 5 } })
      assert.is_nil(res)
      err = helpers.assert_failure(msg, err, "session", "request")
      assert.equal(503, err.status)
      assert.matches("would pass the deadline", msg, 1, true)
      assert.equal(1, #fake:requests("/x"))
      assert.same({}, sleeps)
    end)

    it("refuses credentials to plain http off loopback before connecting", function()
      local l = helpers.start_raw_listener()
      -- libcurl resolves *.localhost to the listener; gauth does not count
      -- the name as loopback: without the refusal the token would reach it
      local s = new_session(creds_for(rt("insecure")))
      local res, msg, err = s:request({ url = "http://gauth-remote.localhost:" .. l.port .. "/x?key=sekret" })
      assert.is_nil(res)
      err = helpers.assert_failure(msg, err, "session", "request")
      assert.equal("insecure_url", err.kind)
      assert.is_false(err.retryable)
      assert.is_nil(msg:find("sekret", 1, true))
      assert.equal(0, #l:heads())
      assert.equal(0, token_exchanges("1//rt-insecure"))
      l:stop()
    end)

    it("sends credentials over plain http to loopback", function()
      local l = helpers.start_raw_listener()
      local s = new_session(creds_for(rt("loop")))
      local res, msg = s:request({ url = l.url .. "/near" })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      local heads = l:heads()
      assert.equal(1, #heads)
      assert.truthy(heads[1]:lower():find("\r\nauthorization: bearer fake%-token%-%d+\r?\n?"), heads[1])
      l:stop()
    end)

    it("a transport failure is nil, msg, err (connect)", function()
      local s = new_session(creds_for(rt("closed")))
      local res, msg, err = s:request({ url = "https://127.0.0.1:" .. helpers.closed_port() .. "/x",
                                        retry = false })
      assert.is_nil(res, tostring(msg))
      err = helpers.assert_failure(msg, err, "session", "request")
      assert.equal("connect", err.kind)
      assert.is_true(err.retryable)
    end)

    it("a token failure is not retried by the loop, and nothing is sent", function()
      local s = new_session(creds_for("1//not-a-known-refresh-token"))
      local res, msg, err = s:request({ url = fake.url .. "/x" })
      assert.is_nil(res)
      err = helpers.assert_failure(msg, err, "session", "request")
      assert.is_true(err.token_failed)
      assert.equal("invalid_grant", err.oauth_error)
      assert.equal(0, #fake:requests("/x"))
      assert.equal(1, token_exchanges("1//not-a-known-refresh-token"))
      assert.same({}, sleeps)
    end)

    it("API keys: x-goog-api-key on the wire, no authorization", function()
      local key = assert(api_key.new("AIza-test-key-0123"))
      local s = new_session(key)
      fake:script("/k", { { status = 200, body = "{}" } })
      local res, msg = s:request({ url = fake.url .. "/k" })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      local got = fake:requests("/k")
      assert.equal(1, #got)
      assert.equal("AIza-test-key-0123", got[1].headers["x-goog-api-key"])
      assert.is_nil(got[1].headers.authorization)
    end)

    it("upload_file streams the body; download_file writes a 2xx body to the file", function()
      local s = new_session(creds_for(rt("files")))
      local src = helpers.tmpname("session-up", ".bin")
      local data = ("0123456789abcdef"):rep(4096) .. "\0tail"
      helpers.write_file(src, data)
      fake:script("/up", { { status = 200, body = "{}" } })
      local res, msg = s:request({ method = "PUT", url = fake.url .. "/up", upload_file = src,
                                   headers = { ["content-type"] = "application/octet-stream" } })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      assert.equal(data, fake:requests("/up")[1].body)

      local dst = helpers.tmpname("session-down", ".bin")
      helpers.write_file(dst, "old contents, replaced")
      fake:script("/down", { { status = 503 }, { status = 200, body = "the bytes" } })
      res, msg = s:request({ url = fake.url .. "/down", download_file = dst })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      assert.equal("", res.body)
      assert.equal("the bytes", helpers.read_file(dst))
    end)

    it("mutual TLS: client_cert/client_key reach the transport", function()
      local certs = helpers.certs()
      local mfake = helpers.start_fake({ client_ca = certs.ca_file })
      finally(function() mfake:stop() end)
      local key = assert(api_key.new("AIza-mtls"))
      mfake:script("/m", { { status = 200, body = "{}" } })
      local s = new_session(key, { ca_file = certs.ca_file, client_cert = certs.client_cert,
                                   client_key = certs.client_key })
      local res, msg = s:request({ url = mfake.url .. "/m" })
      assert.is_nil(msg)
      assert.equal(200, res.status)
      assert.is_string(mfake:requests("/m")[1].client_subject)
      -- without the certificate the server refuses the handshake
      local bare = new_session(key, { ca_file = certs.ca_file })
      local res2, msg2, err2 = bare:request({ url = mfake.url .. "/m", retry = false })
      assert.is_nil(res2)
      err2 = helpers.assert_failure(msg2, err2, "session", "request")
      assert.equal("tls_client_cert", err2.kind)
    end)

    it("raises on programming errors", function()
      local s = new_session(creds_for(rt("raise")))
      assert.error_matches(function() s:request("x") end, "req must be a table", 1, true)
      assert.error_matches(function() s:request({}) end, "req.url must be a string", 1, true)
      assert.error_matches(function() s:request({ url = "https://x", method = "BREW" }) end,
                           "unsupported method BREW", 1, true)
      assert.error_matches(function() s:request({ url = "https://x", body = {} }) end,
                           "req.body must be a string", 1, true)
      assert.error_matches(function() s:request({ url = "https://x", retry = { attempts = 0 } }) end,
                           "req.retry.attempts must be an integer >= 1", 1, true)
      assert.error_matches(function() s:request({ url = "https://x", retry = { tries = 2 } }) end,
                           "req.retry.tries is not an option", 1, true)
      assert.error_matches(function() s:request({ url = "https://x", timeout = -1 }) end,
                           "req.timeout must be a positive number", 1, true)
      assert.error_matches(function() s:request({ url = "https://x", body = "a", upload_file = "/f" }) end,
                           "req.body and req.upload_file together", 1, true)
    end)
  end)

  describe("new()", function()
    it("makes a session; tostring shows no secret", function()
      local s, msg, err = session.new(creds_for(rt("new")), { http = http, timeout = 5 })
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal("table", type(s))
      assert.is_nil(tostring(s):find("rt-new", 1, true))
      assert.matches("^gauth.session", tostring(s))
    end)

    it("a proxy option the transport refuses is nil, msg, err naming it", function()
      local s, msg, err = session.new(creds_for(rt("badproxy")), { proxy = "http://" })
      assert.is_nil(s)
      err = helpers.assert_failure(msg, err, "session", "new")
      assert.matches("proxy", msg, 1, true)
      assert.equal("proxy", err.field)
    end)

    it("raises on programming errors", function()
      assert.error_matches(function() session.new("creds") end,
                           "creds must be a credentials object", 1, true)
      assert.error_matches(function() session.new(creds_for(rt("e")), { http = {} }) end,
                           "opts.http must be a transport", 1, true)
      assert.error_matches(function() session.new(creds_for(rt("e")), { retry = 3 }) end,
                           "opts.retry must be false or a table", 1, true)
      assert.error_matches(function()
        session.new(creds_for(rt("e")), { http = http, proxy = "http://127.0.0.1:1" })
      end, "opts.http and transport options", 1, true)
    end)
  end)

  describe("gauth.request.retryable", function()
    local errors = require "gauth.errors"
    it("is true for a failure classify retries (a 503, a refused connection)", function()
      assert.is_true(gauth_request.retryable(errors.from_response("m", "s", { status = 503, body = "" })))
      assert.is_true(gauth_request.retryable(errors.new("http", "request", "refused",
                                                         { kind = "connect", retryable = true })))
    end)

    it("is false for a final answer, a token failure and what is not a gauth error", function()
      assert.is_false(gauth_request.retryable(errors.from_response("m", "s", { status = 404, body = "" })))
      assert.is_false(gauth_request.retryable(errors.new("m", "s", "no token",
                                                          { retryable = true, token_failed = true })))
      assert.is_false(gauth_request.retryable("a string"))
      assert.is_false(gauth_request.retryable(nil))
    end)
  end)

  describe("gauth.request.send", function()
    it("sends one exchange with the loop's rules and returns the response", function()
      fake:script("/r", { { status = 500 }, { status = 200, body = "done" } })
      local creds = creds_for(rt("send"))
      local res, msg, err = gauth_request.send({ module = "mine", step = "call", http = http,
        method = "GET", url = fake.url .. "/r", credentials = creds, sleep = function() end })
      assert.is_nil(msg); assert.is_nil(err)
      assert.equal(200, res.status)
      assert.equal("done", res.body)
      assert.equal(2, #fake:requests("/r"))
    end)

    it("fails with the op's module and step; decode makes non-2xx an error", function()
      fake:script("/r", { { status = 404, body = { error = { code = 404, message = "no such thing",
        status = "NOT_FOUND" } } } })
      local res, msg, err = gauth_request.send({ module = "mine", step = "call", http = http,
        url = fake.url .. "/r", decode = function(_, r) return r.body end })
      assert.is_nil(res)
      err = helpers.assert_failure(msg, err, "mine", "call")
      assert.equal(404, err.status)
      assert.equal("NOT_FOUND", err.google_status)
      assert.equal("no such thing", err.message)
    end)
  end)
end)

if LUAJIT_PASS then
describe("gauth.session inside nginx (cosockets)", function()
  local fake, srv

  lazy_setup(function()
    fake = helpers.start_fake()
    fake:config({ refresh_tokens = helpers.user_refresh_tokens() })
    local err
    srv, err = nginx.start({
      workers = 1,
      trusted_ca = helpers.certs().ca_file,
      http = "lua_shared_dict gauth 1m;",
      server = ([[
        location = /call {
          content_by_lua_block {
            local au = require "gauth.authorized_user"
            local creds = assert(au.from_info({ type = "authorized_user",
              client_id = %q, client_secret = %q, refresh_token = %q, token_uri = %q },
              { retry = false }))
            local s = assert(require("gauth.session").new(creds))
            local out = {}
            for _, p in ipairs({ "/n/ok", "/n/refresh", "/n/missing" }) do
              local res, msg = s:request({ url = %q .. p })
              out[#out + 1] = { status = res and res.status, body = res and res.body, msg = msg }
            end
            local res, msg, err = s:request({ url = "http://gauth-remote.localhost:1/x" })
            out[#out + 1] = { msg = msg, kind = err and err.kind, res = res }
            ngx.say(require("cjson").encode(out))
          }
        }
      ]]):format(USER.client_id, USER.client_secret, USER.refresh_token,
                 -- nginx verifies host names only: the test certificate's localhost
                 "https://localhost:" .. fake.port .. "/token", "https://localhost:" .. fake.port),
    })
    assert(srv, err)
  end)

  lazy_teardown(function()
    if srv then srv:stop() end
    fake:stop()
  end)

  it("session:request in content_by_lua: answers, one refresh on 401, a refusal", function()
    fake:script("/n/ok", { { status = 200, body = "fine" } })
    fake:script("/n/refresh", { { status = 401, body = "{}" }, { status = 200, body = "again" } })
    local status, body = srv:get("/call")
    assert.equal(200, status, tostring(body) .. "\n" .. srv:log())
    local out = assert(cjson.decode(body))
    assert.is_nil(out[1].msg, body)
    assert.same({ status = 200, body = "fine" }, { status = out[1].status, body = out[1].body })
    assert.is_nil(out[1].msg)
    assert.equal(200, out[2].status)
    assert.equal("again", out[2].body)
    assert.equal(404, out[3].status)
    assert.is_nil(out[3].msg)
    assert.equal("insecure_url", out[4].kind)
    assert.matches("^gauth%.session: request: refusing to send credentials", out[4].msg)
    assert.is_nil(out[4].res)
    -- the wire: the 401 made one refresh (two exchanges in all) and one retry
    assert.equal(2, #fake:requests("/token"))
    local r = fake:requests("/n/refresh")
    assert.equal(2, #r)
    assert.not_equal(r[1].headers.authorization, r[2].headers.authorization)
  end)
end)
end
