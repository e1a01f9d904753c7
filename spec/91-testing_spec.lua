-- gauth.testing: the transport and credentials doubles, alone and under
-- gauth.discovery (as a user's unit tests would use them). No network.
-- The request-checking half of the doubles is held to the real
-- transports' contract (spec/support/transport_cases.lua, `double = true`).

local testing = require "gauth.testing"
local errors = require "gauth.errors"
local discovery = require "gauth.discovery"
local sqladmin = require "gauth.emulator.sqladmin"
local cjson = require "cjson.safe"
local helpers = require "helpers"

local PROJECT = "exemplary-example-123"
local LIST_URI = "https://sqladmin.googleapis.com/sql/v1beta4/projects/"
  .. PROJECT .. "/instances?alt=json"

local function doc()
  return assert(sqladmin.document("v1beta4", "https://sqladmin.googleapis.com/"))
end

local function service(http, creds)
  return assert(discovery.build_from_document(doc(), { http = http, credentials = creds }))
end

local function no_sleep() end

describe("gauth.testing", function()

  describe("http_mock", function()
    it("answers every request with its response and records each request", function()
      local t = testing.http_mock{ status = 201, headers = { ["Content-Type"] = "text/plain",
                                                             ["X-N"] = 7 },
                                   body = "hello" }
      local req = { method = "POST", url = "https://example.com/a", body = "x=1",
                    headers = { accept = "*/*" }, timeout = 5 }
      for i = 1, 3 do
        local res, err = t:request(req)
        assert.is_nil(err)
        assert.are.equal(201, res.status)
        assert.are.equal("Created", res.reason)
        assert.are.same({ ["content-type"] = "text/plain", ["x-n"] = "7" }, res.headers)
        assert.are.equal("hello", res.body)
        assert.are.equal(i, #t.requests)
      end
      -- Records are copies: changing the caller's table later changes nothing.
      req.headers.accept = "changed"
      local r = t.requests[1]
      assert.are.same({ method = "POST", url = "https://example.com/a", body = "x=1",
                        headers = { accept = "*/*" }, timeout = 5 }, r)
      assert.are.equal(t.requests[3], t.last_request)
      assert.are.equal(math.huge, t:remaining())
      assert.is_true(t:close())
      assert.is_true(t.closed)
      assert.matches("http_mock %(3 requests%)", tostring(t))
    end)

    it("defaults to an empty 200, records GET for a request without method", function()
      local t = testing.http_mock()
      local res = assert(t:request{ url = "https://example.com/" })
      assert.are.same({ status = 200, reason = "OK", headers = {}, body = "" }, res)
      assert.are.equal("GET", t.last_request.method)
    end)

    it("sends a table body as JSON and reads a file body", function()
      local res = assert(testing.http_mock{ body = { items = { "a" } } }:request{ url = "u://x" })
      assert.are.same({ items = { "a" } }, cjson.decode(res.body))
      local path = helpers.write_file(helpers.tmpname("mock", ".json"), '{"kind":"x"}')
      res = assert(testing.http_mock{ file = path }:request{ url = "u://x" })
      assert.are.equal('{"kind":"x"}', res.body)
    end)

    it("fails like a transport with error = ...", function()
      local t = testing.http_mock{ error = "connection refused" }
      local res, msg, err = t:request{ url = "https://example.com/" }
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.are.equal("gauth.testing: request: connection refused", tostring(err))
      assert.is_true(err.retryable)
      assert.are.equal(1, #t.requests)
      local own = errors.new("transport", "connect", "refused", { retryable = false })
      local _, msg_err2, err2 = testing.http_mock{ error = own }:request{ url = "u://x" }
      helpers.assert_failure(msg_err2, err2)
      assert.are.equal(own, err2)
      local _, msg3, err3 = testing.http_mock{ error = "x", retryable = false }:request{ url = "u://x" }
      helpers.assert_failure(msg3, err3, "testing", "request")
      assert.is_false(err3.retryable)
    end)

    it("raises on a mistaken response or request", function()
      assert.has_error(function() testing.http_mock{ status = 42 } end,
        "gauth.testing: http_mock: status must be an integer from 100 to 599")
      assert.has_error(function() testing.http_mock{ body = 5 } end,
        "gauth.testing: http_mock: body must be a string, a table or a function")
      assert.has_error(function() testing.http_mock{ headers = { a = {} } } end,
        "gauth.testing: http_mock: headers must map names to strings")
      assert.has_error(function() testing.http_mock{ body = "a", file = "b" } end,
        "gauth.testing: http_mock: give body or file, not both")
      assert.has_error(function() testing.http_mock{ file = "/nonexistent/x" } end,
        "gauth.testing: http_mock: cannot read /nonexistent/x: /nonexistent/x: No such file or directory")
      assert.has_error(function() testing.http_mock("x") end,
        "gauth.testing: http_mock: a response must be a table, got string")
      local t = testing.http_mock()
      assert.has_error(function() t:request{ method = "GET" } end,
        "gauth.testing: request: req.url must be a non-empty string")
      assert.has_error(function() t:request("https://x") end,
        "gauth.testing: request: the request must be a table, got string")
      assert.has_error(function() t:request{ url = "u://x", body = {} } end,
        "gauth.testing: request: body must be a string")
      assert.are.equal(0, #t.requests)
    end)

    -- The cases every real transport passes (spec/support/transport_cases)
    -- that are about what a transport accepts: the doubles must refuse
    -- what libcurl and nginx refuse, or code tested on them breaks there.
    local tcases = require "support.transport_cases"
    local ctx = { fake = "https://localhost:9", untrusted = "https://localhost:9",
                  raw = "http://127.0.0.1:9", closed = "http://127.0.0.1:9", tmp = helpers.tmpdir() }
    local n = 0
    for _, case in ipairs(tcases.cases) do
      if case.double then
        n = n + 1
        for _, make in ipairs({ "http_mock", "http_sequence" }) do
          it(make .. " passes the transport case: " .. case.name, function()
            local reqs = case.requests(ctx)
            local answers = {}
            for i = 1, #reqs do answers[i] = { status = 404 } end
            local t = make == "http_mock" and testing.http_mock{ status = 404 } or testing.http_sequence(answers)
            local r = tcases.run(t, reqs, os.clock)
            case.check(r, ctx, nil)
            -- what raised or was refused was not recorded as sent
            local sent = 0
            for _, x in ipairs(r) do if x.res then sent = sent + 1 end end
            assert.are.equal(sent, #t.requests)
          end)
        end
      end
    end
    it("runs the four transport cases marked for doubles", function()
      assert.are.equal(4, n)
    end)

    it("calls a body function with the request", function()
      local t = testing.http_mock{ body = function(req) return "you sent " .. req.body end }
      assert.are.equal("you sent 42", t:request{ url = "u://x", body = "42" }.body)
      local bad = testing.http_mock{ body = function() return 1 end }
      assert.has_error(function() bad:request{ url = "u://x" } end,
        "gauth.testing: a body function must return a string")
    end)
  end)

  describe("echo modes", function()
    local req = { method = "PUT", url = "https://example.com/p?q=1", body = "payload",
                  headers = { ["content-type"] = "text/plain", accept = "*/*" } }

    it("echo_request_headers: the headers as sorted name: value lines", function()
      local res = testing.http_mock{ body = "echo_request_headers" }:request(req)
      assert.are.equal("accept: */*\r\ncontent-type: text/plain", res.body)
    end)

    it("echo_request_headers_as_json: the headers as a JSON object", function()
      local res = testing.http_mock{ body = "echo_request_headers_as_json" }:request(req)
      assert.are.same(req.headers, cjson.decode(res.body))
      res = testing.http_mock{ body = "echo_request_headers_as_json" }:request{ url = "u://x" }
      assert.are.same({}, cjson.decode(res.body))
    end)

    it("echo_request_body and echo_request_uri", function()
      assert.are.equal("payload",
        testing.http_mock{ body = "echo_request_body" }:request(req).body)
      assert.are.equal("", testing.http_mock{ body = "echo_request_body" }:request{ url = "u://x" }.body)
      assert.are.equal("https://example.com/p?q=1",
        testing.http_mock{ body = "echo_request_uri" }:request(req).body)
    end)

    it("echo the headers a discovery request really sends", function()
      local t = testing.http_mock{ body = "echo_request_headers_as_json" }
      local svc = service(t, testing.credentials{ token = "tok", quota_project = "billed" })
      local resp = assert(svc:instances():list({ project = PROJECT }):execute())
      assert.are.equal("Bearer tok", resp.authorization)
      assert.are.equal("billed", resp["x-goog-user-project"])
      assert.are.equal("application/json", resp.accept)
      assert.are.equal(LIST_URI, t.last_request.url)
    end)
  end)

  describe("http_sequence", function()
    it("answers in order, then raises a clear error", function()
      local t = testing.http_sequence{
        { status = 500, body = "oops" },
        { status = 200, body = "echo_request_uri" },
      }
      assert.are.equal(2, t:remaining())
      assert.are.equal(500, t:request{ url = "https://a/1" }.status)
      assert.are.equal(1, t:remaining())
      assert.are.equal("https://a/2", t:request{ url = "https://a/2" }.body)
      assert.are.equal(0, t:remaining())
      assert.has_error(function() t:request{ method = "DELETE", url = "https://a/3" } end,
        "gauth.testing: http_sequence: request 3 (DELETE https://a/3) but the sequence has 2 responses")
      -- The request that ran past the end is recorded all the same.
      assert.are.equal(3, #t.requests)
      assert.are.equal("https://a/3", t.last_request.url)
    end)

    it("an empty sequence fails at the first request; a bad entry names its index", function()
      local t = testing.http_sequence{}
      assert.has_error(function() t:request{ url = "u://x" } end,
        "gauth.testing: http_sequence: request 1 (GET u://x) but the sequence has 0 responses")
      assert.has_error(function() testing.http_sequence{ {}, { status = "200" } } end,
        "gauth.testing: http_sequence[2]: status must be an integer from 100 to 599")
      assert.has_error(function() testing.http_sequence("x") end,
        "gauth.testing: http_sequence: responses must be an array of tables")
    end)

    it("drives discovery's retries: 503, a transport error, then 200", function()
      local t = testing.http_sequence{
        { status = 503, body = { error = { code = 503, message = "busy" } } },
        { error = "connection reset" },
        { status = 200, body = { items = { { name = "a" } } } },
      }
      local svc = service(t, testing.credentials())
      local resp, err = svc:instances():list({ project = PROJECT }):execute({ sleep = no_sleep })
      assert.is_nil(err)
      assert.are.equal("a", resp.items[1].name)
      assert.are.equal(3, #t.requests)
      assert.are.equal(0, t:remaining())
    end)

    it("gives discovery's error for an API error", function()
      local t = testing.http_sequence{
        { status = 404, body = { error = { code = 404, message = "no such instance",
                                            errors = { { reason = "instanceDoesNotExist" } } } } },
      }
      local svc = service(t, testing.credentials())
      local resp, msg, err = svc:instances():get({ project = PROJECT, instance = "x" }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg, err)
      assert.are.equal(404, err.status)
      assert.are.equal("instanceDoesNotExist", err.reason)
      assert.are.equal("no such instance", err.message)
    end)

    it("a 401 invalidates the credentials and the retry carries the next token", function()
      local t = testing.http_sequence{
        { status = 401, body = { error = { code = 401, message = "expired" } } },
        { status = 200, body = { kind = "sql#instancesList" } },
      }
      local creds = testing.credentials{ token = { "old", "new" } }
      local svc = service(t, creds)
      local resp = assert(svc:instances():list({ project = PROJECT }):execute())
      assert.are.equal("sql#instancesList", resp.kind)
      assert.are.equal("Bearer old", t.requests[1].headers.authorization)
      assert.are.equal("Bearer new", t.requests[2].headers.authorization)
      assert.are.equal(1, creds.invalidations)
      assert.are.equal(2, creds.token_calls)
    end)

    it("a test that sends one request too many fails with the sequence's message", function()
      local t = testing.http_sequence{ { status = 200, body = {} } }
      local svc = service(t, testing.credentials())
      assert(svc:instances():list({ project = PROJECT }):execute())
      assert.has_error(function()
        svc:instances():list({ project = PROJECT }):execute()
      end, "gauth.testing: http_sequence: request 2 (GET " .. LIST_URI
        .. ") but the sequence has 1 response")
    end)
  end)

  describe("credentials", function()
    it("gives its token, applies headers, moves on after invalidate", function()
      local c = testing.credentials{ token = { "t1", "t2" }, expires_at = 1234,
                                     quota_project = "qp" }
      local tok, exp = c:token()
      assert.are.equal("t1", tok)
      assert.are.equal(1234, exp)
      local h = assert(c:apply({ accept = "x" }))
      assert.are.same({ accept = "x", authorization = "Bearer t1",
                        ["x-goog-user-project"] = "qp" }, h)
      assert.is_true(c:invalidate())
      assert.are.equal("t2", (c:token()))
      c:invalidate()
      assert.are.equal("t2", (c:token()))  -- the last token stays
      assert.are.equal(2, c.invalidations)
      assert.are.equal(4, c.token_calls)
      assert.are.equal("gauth.testing credentials (quota project qp)", tostring(c))
      assert.is_nil(tostring(c):find("t1", 1, true))
    end)

    it("defaults: test-token, an expiry an hour ahead, a new header table", function()
      -- an hour after the moment of the call: between the clock read before
      -- and after it (an order, not a tolerance), read with the clock the
      -- double uses (os.time() reads a coarser one that may be a second
      -- apart from it)
      local now = require("gauth.lib.time").now
      local before = now()
      local c = testing.credentials()
      local tok, exp = c:token()
      local after = now()
      assert.are.equal("test-token", tok)
      assert.is_true(before + 3600 <= exp and exp <= after + 3600, "expires_at " .. exp)
      assert.are.same({ authorization = "Bearer test-token" }, c:apply())
      assert.is_false(c:requires_scopes())
    end)

    it("fails with error = ...: token and apply return nil, err", function()
      local c = testing.credentials{ error = "no token for you" }
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.are.equal("gauth.testing: token: no token for you", tostring(err))
      local h, msg_err2, err2 = c:apply({})
      assert.is_nil(h)
      helpers.assert_failure(msg_err2, err2)
      assert.are.equal("gauth.testing: token: no token for you", tostring(err2))
      -- discovery reports it as the call's failure
      local t = testing.http_mock()
      local resp, msg3, err3 = service(t, c):instances():list({ project = PROJECT }):execute()
      assert.is_nil(resp)
      helpers.assert_failure(msg3, err3, "discovery")
      assert.matches("no token for you", tostring(err3))
      assert.are.equal(0, #t.requests)
    end)

    it("with requires_scopes, discovery gives it the API's scopes", function()
      local c = testing.credentials{ requires_scopes = true }
      local t = testing.http_mock{ body = {} }
      local svc = service(t, c)
      assert(svc:instances():list({ project = PROJECT }):execute())
      -- the service holds the scoped copy
      local scoped = rawget(svc, "_svc").credentials
      assert.are.same(sqladmin.SCOPES, scoped.scopes)
      local copy = c:with_scopes({ "a" })
      assert.are.same({ "a" }, copy.scopes)
      assert.is_nil(c.scopes)
    end)

    it("raises on mistaken options", function()
      assert.has_error(function() testing.credentials{ token = {} } end,
        "gauth.testing: credentials: token must be a string or an array of strings")
      assert.has_error(function() testing.credentials{ token = { "a", "" } } end,
        "gauth.testing: credentials: token[2] must be a non-empty string")
      assert.has_error(function() testing.credentials{ error = 5 } end,
        "gauth.testing: credentials: error must be a string or a gauth.errors object")
      assert.has_error(function() testing.credentials("t") end,
        "gauth.testing: credentials: opts must be a table")
      assert.has_error(function() testing.credentials():apply("x") end,
        "gauth.testing: apply: headers must be a table")
    end)
  end)
end)
