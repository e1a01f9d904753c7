-- gauth.metadata, gauth.compute_engine and gauth.app_engine against the
-- fake metadata server (plain HTTP on loopback, reached through
-- GCE_METADATA_HOST / GCE_METADATA_IP given in opts.env). Nothing here
-- ever talks to 169.254.169.254 or metadata.google.internal: every call
-- that could reach the network gets an env table pointing at loopback,
-- and the few that run on the defaults assert that no request is made.
local helpers = require "helpers"
local metadata = require "gauth.metadata"
local ce = require "gauth.compute_engine"
local ae = require "gauth.app_engine"
local token_cache = require "gauth.token_cache"
local socket = require "socket"
local cjson_null = require("cjson.safe").null

local S1 = "https://www.googleapis.com/auth/sqlservice.admin"
local S2 = "https://www.googleapis.com/auth/devstorage.read_only"
local SA = "fake-sa@fake-project.iam.gserviceaccount.com"
local MD = "/computeMetadata/v1/"
local TOKEN_PATH = MD .. "instance/service-accounts/default/token"
local IDENTITY_PATH = MD .. "instance/service-accounts/default/identity"

local sleeps, fast_retry = helpers.recorded_retry()

local closed_port = helpers.closed_port

-- A transport that must never be used (calls that need no network).
local function no_network()
  local t = { calls = 0 }
  function t:request(req)
    self.calls = self.calls + 1
    error("no request expected, got one to " .. tostring(req.url))
  end
  return t
end

local is_error = helpers.assert_gauth_error

describe("gauth metadata server clients", function()
  local fake, env, dead

  lazy_setup(function()
    helpers.install_loopback_guard()  -- nothing leaves loopback
    fake = helpers.start_fake({ tls = false })
    dead = "127.0.0.1:" .. closed_port()
  end)

  lazy_teardown(function()
    fake:stop()
    helpers.remove_loopback_guard()
  end)

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    metadata.reset()
    env = { GCE_METADATA_HOST = fake.host_port, GCE_METADATA_IP = fake.host_port }
  end)

  local function md_requests(path)
    return fake:requests(function(r) return r.path:sub(1, #MD) == MD and (not path or r.path == path) end)
  end

  ---------------------------------------------------------------------------
  describe("gauth.metadata", function()
    describe("getenv_for()", function()
      it("takes a table (the whole environment) or a function; empty is unset", function()
        local g = metadata.getenv_for({ env = { A = "1", B = "" } })
        assert.equal("1", g("A"))
        assert.is_nil(g("B"))
        assert.is_nil(g("HOME"))
        g = metadata.getenv_for({ env = function(n) return n == "X" and "y" or "" end })
        assert.equal("y", g("X"))
        assert.is_nil(g("Z"))
      end)

      it("defaults to metadata.getenv, looked up at each call", function()
        local old = metadata.getenv
        finally(function() metadata.getenv = old end)
        local g = metadata.getenv_for(nil)
        metadata.getenv = function(n) return "v-" .. n end
        assert.equal("v-A", g("A"))
      end)

      it("raises on an env that is neither", function()
        assert.has_error(function() metadata.getenv_for({ env = 42 }) end,
          "gauth: opts.env must be a table or a function")
      end)
    end)

    describe("retry_policy()", function()
      it("copies RETRY, with fields over it, or one attempt for false", function()
        local p = metadata.retry_policy(nil)
        assert.same(metadata.RETRY, p)
        assert.are_not.equal(metadata.RETRY, p)
        assert.equal(1, metadata.retry_policy(false).attempts)
        local o = metadata.retry_policy({ attempts = 5 }, { attempts = 2, initial = 3 })
        assert.same({ attempts = 5, initial = 3 }, o)
        assert.has_error(function() metadata.retry_policy(7) end, "gauth: opts.retry must be a table or false")
      end)
    end)

    describe("host() and root()", function()
      it("default to metadata.google.internal (no request made)", function()
        local h, err = metadata.host({ env = {} })
        assert.equal("metadata.google.internal", h)
        assert.is_nil(err)
        assert.equal("http://metadata.google.internal/computeMetadata/v1/",
                     (metadata.root({ env = {} })))
      end)

      it("take GCE_METADATA_HOST, then opts.host over it", function()
        assert.equal(fake.host_port, (metadata.host({ env = env })))
        assert.equal("[::1]:9", (metadata.host({ env = env, host = "[::1]:9" })))
        assert.equal("127.0.0.1:1", (metadata.host({ env = { GCE_METADATA_ROOT = "127.0.0.1:1" } })))
        assert.equal(fake.host_port, (metadata.host({ env = { GCE_METADATA_ROOT = "127.0.0.1:1",
                                                              GCE_METADATA_HOST = fake.host_port } })))
        local r, err = metadata.root({ env = env })
        assert.equal("http://" .. fake.host_port .. "/computeMetadata/v1/", r)
        assert.is_nil(err)
      end)

      it("refuse a host that is not host[:port]", function()
        for _, bad in ipairs({ "evil.com/x", "a b", "user@host", "h:port" }) do
          local h, msg, err = metadata.host({ env = { GCE_METADATA_HOST = bad } })
          assert.is_nil(h)
          helpers.assert_failure(msg, err)
          is_error(err, "metadata", "metadata host")
          assert.matches("GCE_METADATA_HOST", err.message, 1, true)
          local r, msg_rerr, rerr = metadata.root({ env = { GCE_METADATA_HOST = bad } })
          assert.is_nil(r)
          helpers.assert_failure(msg_rerr, rerr)
          is_error(rerr, "metadata", "metadata host")
        end
      end)
    end)

    describe("get()", function()
      it("reads a value with Metadata-Flavor: Google", function()
        local v, err = metadata.get("project/project-id", { env = env })
        assert.equal("fake-project", v)
        assert.is_nil(err)
        local rs = md_requests(MD .. "project/project-id")
        assert.equal(1, #rs)
        assert.equal("GET", rs[1].method)
        assert.equal("Google", rs[1].headers["metadata-flavor"])
      end)

      it("sends a sorted query and decodes JSON", function()
        local v, err = metadata.get("instance/service-accounts/default/",
          { env = env, json = true, query = { recursive = "true" } })
        assert.is_nil(err)
        assert.equal(SA, v.email)
        assert.equal("recursive=true", md_requests()[1].query)
      end)

      it("returns nil and an error for a 404, not retried", function()
        local v, msg, err = metadata.get("instance/nope", { env = env, retry = fast_retry() })
        assert.is_nil(v)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "metadata response")
        assert.equal(404, err.status)
        assert.is_false(err.retryable)
        assert.matches("not found", err.message)
        assert.equal(1, #md_requests())
      end)

      it("refuses an answer without Metadata-Flavor: Google", function()
        fake:script(MD .. "project/project-id", { status = 200, body = "evil",
          headers = { ["Metadata-Flavor"] = "Evil" } })
        local v, msg, err = metadata.get("project/project-id", { env = env, retry = fast_retry() })
        assert.is_nil(v)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "metadata response")
        assert.matches("Metadata%-Flavor", err.message)
        assert.is_false(err.retryable)
        assert.is_nil(tostring(err):find("evil", 1, true))
      end)

      it("retries 5xx and succeeds", function()
        fake:script(MD .. "project/project-id", { { status = 503, body = "busy" }, { status = 500 } })
        local v, err = metadata.get("project/project-id", { env = env, retry = fast_retry() })
        assert.equal("fake-project", v)
        assert.is_nil(err)
        assert.equal(3, #md_requests())
        assert.equal(2, #sleeps)
      end)

      it("returns a transport error (retryable) when nothing listens", function()
        local v, msg, err = metadata.get("project/project-id",
          { env = { GCE_METADATA_HOST = dead }, retry = fast_retry({ attempts = 2 }) })
        assert.is_nil(v)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "metadata request")
        assert.is_true(err.retryable)
        assert.equal(2, err.attempts)
      end)

      it("refuses a JSON answer that is not an object", function()
        fake:config({ metadata = { ["instance/x"] = "not json" } })
        local v, msg, err = metadata.get("instance/x", { env = env, json = true })
        assert.is_nil(v)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "metadata response")
      end)

      it("raises on a bad path or options", function()
        assert.has_error(function() metadata.get("/abs", { env = env }) end,
          "gauth.metadata: get: path must be a non-empty relative path")
        assert.has_error(function() metadata.get(nil) end,
          "gauth.metadata: get: path must be a non-empty relative path")
        assert.has_error(function() metadata.get("x", 5) end, "gauth.metadata: get: opts must be a table")
        assert.has_error(function() metadata.get("x", { env = env, timeout = 0 }) end,
          "gauth.metadata: get: timeout must be a positive number")
        assert.has_error(function() metadata.get("x", { env = env, http = {} }) end,
          "gauth: opts.http must be a transport (with :request)")
      end)
    end)

    describe("project_id()", function()
      it("reads project/project-id", function()
        local p, err = metadata.project_id({ env = env })
        assert.equal("fake-project", p)
        assert.is_nil(err)
      end)

      it("returns nil and an error when the server has none", function()
        fake:config({ metadata = { ["project/project-id"] = cjson_null } })
        local p, msg, err = metadata.project_id({ env = env, retry = false })
        assert.is_nil(p)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "metadata response")
        assert.equal(404, err.status)
        fake:config({ metadata = { ["project/project-id"] = "  " } })
        p, msg, err = metadata.project_id({ env = env, retry = false })
        assert.is_nil(p)
        helpers.assert_failure(msg, err)
        assert.matches("empty", err.message)
      end)
    end)

    describe("is_available()", function()
      it("is true for a metadata server, pinged at GCE_METADATA_IP with the header", function()
        local ok, err = metadata.is_available({ env = { GCE_METADATA_IP = fake.host_port } })
        assert.is_true(ok)
        assert.is_nil(err)
        local rs = fake:requests("/")
        assert.equal(1, #rs)
        assert.equal("Google", rs[1].headers["metadata-flavor"])
      end)

      it("pings GCE_METADATA_HOST directly when it is set", function()
        local ok, err = metadata.is_available({ env = { GCE_METADATA_HOST = fake.host_port,
                                                        GCE_METADATA_IP = dead } })
        assert.is_true(ok)
        assert.is_nil(err)
        local msg
        ok, msg, err = metadata.is_available({ env = { GCE_METADATA_HOST = dead,
                                                  GCE_METADATA_IP = fake.host_port } })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "detection")
        metadata.reset()
        ok, err = metadata.is_available({ env = { GCE_METADATA_ROOT = fake.host_port,
                                                  GCE_METADATA_IP = dead } })
        assert.is_true(ok)
        assert.is_nil(err)
      end)

      it("is false when nothing listens", function()
        local ok, msg, err = metadata.is_available({ env = { GCE_METADATA_IP = dead } })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "detection")
        assert.matches("no metadata server at " .. dead, err.message, 1, true)
      end)

      it("is false for a server answering without Metadata-Flavor", function()
        fake:script("/", { status = 200, body = "hello" })
        local ok, msg, err = metadata.is_available({ env = env })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        assert.matches("Metadata%-Flavor", err.message)
        metadata.reset()
        fake:script("/", { status = 404, body = "no" })
        ok, msg, err = metadata.is_available({ env = env })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        assert.equal(404, err.status)
      end)

      it("times out quickly on a server that accepts and never answers", function()
        fake:script("/", { hang = true })
        local t0 = socket.gettime()
        local ok, msg, err = metadata.is_available({ env = { GCE_METADATA_IP = fake.host_port,
                                                        GCE_METADATA_TIMEOUT = "0.3" } })
        local took = socket.gettime() - t0
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "detection")
        -- the timeout it used is in the error; the time taken is only
        -- checked against a hang (ten times it), not held to a window
        assert.equal(0.3, err.timeout)
        assert.is_true(took < 3, "took " .. took)
        assert.equal(1, #fake:requests("/"))
      end)

      it("uses opts.timeout over GCE_METADATA_TIMEOUT", function()
        fake:script("/", { hang = true })
        local t0 = socket.gettime()
        local ok, msg, err = metadata.is_available({ timeout = 0.2,
          env = { GCE_METADATA_IP = fake.host_port, GCE_METADATA_TIMEOUT = "30" } })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        assert.equal(0.2, err.timeout)
        assert.is_true(socket.gettime() - t0 < 2)  -- hang guard: far below the 30 s of the variable
      end)

      it("is false at once with NO_GCE_CHECK=true, without a request", function()
        local http = no_network()
        for _, v in ipairs({ "true", "True", "TRUE" }) do
          local ok, msg, err = metadata.is_available({ http = http,
            env = { NO_GCE_CHECK = v, GCE_METADATA_IP = fake.host_port } })
          assert.is_false(ok)
          helpers.assert_failure(msg, err)
          is_error(err, "metadata", "detection")
          assert.matches("NO_GCE_CHECK", err.message)
        end
        assert.equal(0, http.calls)
        assert.equal(0, #fake:requests("/"))
      end)

      it("keeps the answer for the process until reset()", function()
        local e = { GCE_METADATA_IP = fake.host_port }
        assert.is_true((metadata.is_available({ env = e })))
        assert.is_true((metadata.is_available({ env = e })))
        assert.equal(1, #fake:requests("/"))
        -- A negative answer is kept too.
        fake:script("/", { status = 500 })
        assert.is_true(metadata.reset())
        assert.is_false((metadata.is_available({ env = e })))
        assert.is_false((metadata.is_available({ env = e })))
        assert.equal(2, #fake:requests("/"))
      end)

      it("is false for a malformed address, without a request", function()
        local ok, msg, err = metadata.is_available({ http = no_network(),
                                                env = { GCE_METADATA_IP = "1.2.3.4/x" } })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        is_error(err, "metadata", "detection")
      end)

      it("raises on bad options", function()
        assert.has_error(function() metadata.is_available(1) end, "gauth.metadata: is_available: opts must be a table")
        assert.has_error(function()
          metadata.is_available({ env = env, timeout = -1 })
        end, "gauth.metadata: is_available: timeout must be a positive number")
      end)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("gauth.compute_engine", function()
    local function new(opts)
      opts = opts or {}
      if opts.env == nil then opts.env = env end
      if opts.cache == nil then opts.cache = token_cache.new() end
      if opts.retry == nil then opts.retry = fast_retry() end
      return ce.credentials(opts)
    end

    describe("credentials()", function()
      it("makes credentials without asking the server anything", function()
        local c, err = new()
        assert.is_nil(err)
        assert.equal("compute_engine", c.kind)
        assert.equal("default", c.service_account)
        assert.equal(fake.host_port, c.host)
        assert.is_false(c:requires_scopes())
        assert.matches("gauth.compute_engine credentials (service account default",
                       tostring(c), 1, true)
        assert.equal(0, #md_requests())
      end)

      it("defaults to metadata.google.internal (the guard stops the request)", function()
        local c = assert(ce.credentials({ env = {}, cache = token_cache.new(), retry = false }))
        assert.equal("metadata.google.internal", c.host)
        local ok, msg = pcall(c.token, c)
        assert.is_false(ok)
        assert.matches("spec sent a request off loopback: "
          .. "http://metadata.google.internal/computeMetadata/v1/", tostring(msg), 1, true)
      end)

      it("returns nil and an error for a malformed GCE_METADATA_HOST", function()
        local c, msg, err = new({ env = { GCE_METADATA_HOST = "x/y" } })
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata host")
      end)

      it("new_kind makes the same class under another module's name", function()
        local c, msg, err = ce.new_kind({ env = env, cache = token_cache.new(), retry = fast_retry() },
                                        "app_engine")
        assert.is_nil(msg)
        assert.is_nil(err)
        assert.equal("app_engine", c._module)
        assert.equal(fake.host_port, c.host)
        assert.matches("gauth.app_engine credentials", tostring(c), 1, true)
        assert.equal(0, #md_requests())
        c, msg, err = ce.new_kind({ env = { GCE_METADATA_HOST = "x/y" } }, "app_engine")
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        is_error(err, "app_engine", "metadata host")
      end)

      it("raises on bad options", function()
        assert.has_error(function() ce.credentials(5) end, "gauth.compute_engine: opts must be a table")
        assert.has_error(function() new({ scopes = 5 }) end,
          "gauth.compute_engine: scopes must be an array of strings or a space-separated string")
        assert.has_error(function() new({ scopes = { "a,b" } }) end,
          "gauth.compute_engine: scopes[1] must be a non-empty string without spaces or commas")
        assert.has_error(function() new({ service_account = "../x" }) end,
          "gauth.compute_engine: service_account must be \"default\" or a service account email")
        assert.has_error(function() new({ http = {} }) end,
          "gauth.compute_engine: http must be a transport (with :request)")
        assert.has_error(function() new({ timeout = 0 }) end, "gauth.compute_engine: timeout must be a positive number")
        assert.has_error(function() new({ target_audience = "x" }) end,
          "gauth.compute_engine: target_audience is for id_token_credentials")
      end)
    end)

    describe("token()", function()
      it("gets the token of the default account, with the header", function()
        local t0 = os.time()
        local c = assert(new({ now = function() return t0 end }))
        local tok, exp = c:token()
        assert.equal("fake-token-1", tok)
        assert.equal(t0 + 3599, exp)
        local rs = md_requests(TOKEN_PATH)
        assert.equal(1, #rs)
        assert.equal("Google", rs[1].headers["metadata-flavor"])
        assert.equal("", rs[1].query)
        local issued = fake:tokens()[tok]
        assert.equal("metadata", issued.kind)
        assert.equal(SA, issued.email)
      end)

      it("passes scopes as ?scopes=a,b", function()
        local c = assert(new({ scopes = { S1, S2 } }))
        local tok = assert(c:token())
        local r = md_requests(TOKEN_PATH)[1]
        assert.equal(S1 .. "," .. S2, r.query_params.scopes)
        assert.equal(S1 .. " " .. S2, fake:tokens()[tok].scope)
      end)

      it("asks for a named service account", function()
        local c = assert(new({ service_account = SA }))
        assert.truthy(c:token())
        assert.equal(1, #md_requests(MD .. "instance/service-accounts/" .. SA .. "/token"))
      end)

      it("answers from the cache, and refreshes inside the refresh window", function()
        fake:config({ expires_in = 600 })
        local offset = 0
        local c = assert(new({ now = function() return socket.gettime() + offset end }))
        assert.equal("fake-token-1", (c:token()))
        assert.equal("fake-token-1", (c:token()))
        assert.equal(1, #md_requests(TOKEN_PATH))
        offset = 600 - 225 - 5        -- just outside the window
        assert.equal("fake-token-1", (c:token()))
        offset = 600 - 225 + 5        -- inside it
        assert.equal("fake-token-2", (c:token()))
        assert.equal(2, #md_requests(TOKEN_PATH))
      end)

      it("retries 5xx and transport errors", function()
        fake:script(TOKEN_PATH, { { status = 503 }, { drop = true } })
        local c = assert(new())
        local tok, exp = c:token()
        assert.equal("fake-token-1", tok)
        assert.is_number(exp)
        assert.equal(3, #md_requests(TOKEN_PATH))
        -- libcurl itself resends once on a kept-alive connection that
        -- closed without an answer, so the drop may cost no backoff.
        assert.is_true(#sleeps >= 1)
      end)

      it("returns nil and an error for an unknown account, not retried", function()
        local c = assert(new({ service_account = "nobody@x.iam.gserviceaccount.com" }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata response")
        assert.equal(404, err.status)
        assert.equal(0, #sleeps)
      end)

      it("gives up after the attempts with the last error", function()
        fake:script(TOKEN_PATH, { { status = 500 }, { status = 502 }, { status = 503 } })
        local tok, msg, err = assert(new()):token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata response")
        assert.equal(503, err.status)
        assert.equal(3, err.attempts)
      end)

      it("refuses answers that hold no usable token", function()
        for _, body in ipairs({ '{"expires_in": 10}', '{"access_token": "a", "expires_in": -1}',
                                "[1]", "garbage" }) do
          fake:script(TOKEN_PATH, { status = 200, body = body })
          local tok, msg, err = assert(new()):token()
          assert.is_nil(tok)
          helpers.assert_failure(msg, err)
          is_error(err, "compute_engine", "metadata response")
          assert.is_false(err.retryable)
        end
      end)

      it("refuses an answer without Metadata-Flavor: Google", function()
        fake:script(TOKEN_PATH, { status = 200, headers = { ["Metadata-Flavor"] = "no" },
                                  body = '{"access_token":"stolen","expires_in":3600}' })
        local tok, msg, err = assert(new()):token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata response")
        assert.is_nil(tostring(err):find("stolen", 1, true))
      end)
    end)

    describe("apply(), invalidate(), with_scopes()", function()
      it("apply sets authorization and the quota project", function()
        local c = assert(new({ quota_project = "billing" }))
        local h, err = c:apply({ accept = "x" })
        assert.is_nil(err)
        assert.equal("Bearer fake-token-1", h.authorization)
        assert.equal("billing", h["x-goog-user-project"])
        assert.equal("x", h.accept)
      end)

      it("apply returns nil and the error when no token can be had", function()
        local c = assert(new({ env = { GCE_METADATA_HOST = dead }, retry = false }))
        local h, msg, err = c:apply({})
        assert.is_nil(h)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata request")
      end)

      it("invalidate makes the next token() fetch again", function()
        local c = assert(new())
        assert.equal("fake-token-1", (c:token()))
        assert.is_true(c:invalidate())
        assert.equal("fake-token-2", (c:token()))
      end)

      it("with_scopes makes a copy with its own token", function()
        local cache = token_cache.new()
        local c = assert(new({ cache = cache }))
        local s = c:with_scopes(S1 .. " " .. S2)
        assert.same({ S1, S2 }, s.scopes)
        assert.is_nil(c.scopes)
        assert.equal("fake-token-1", (c:token()))
        assert.equal("fake-token-2", (s:token()))
        assert.equal(S1 .. "," .. S2, md_requests(TOKEN_PATH)[2].query_params.scopes)
        assert.has_error(function() c:with_scopes(7) end,
          "gauth.compute_engine: scopes must be an array of strings or a space-separated string")
      end)
    end)

    describe("email()", function()
      it("asks the server once for the default account's email", function()
        local c = assert(new())
        local e, err = c:email()
        assert.equal(SA, e)
        assert.is_nil(err)
        assert.equal(SA, (c:email()))
        assert.equal(1, #md_requests(MD .. "instance/service-accounts/default/email"))
      end)

      it("knows a named account's email without a request", function()
        local c = assert(new({ service_account = "x@y.iam.gserviceaccount.com",
                               http = no_network() }))
        assert.equal("x@y.iam.gserviceaccount.com", (c:email()))
      end)

      it("returns nil and an error when the server cannot tell", function()
        fake:config({ metadata = { ["instance/service-accounts/default/email"] = cjson_null } })
        local e, msg, err = assert(new()):email()
        assert.is_nil(e)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata response")
        assert.equal(404, err.status)
      end)
    end)

    -- The one way is id_token.credentials (DECISIONS); id_token_credentials
    -- is its deprecated alias, tested short at the end.
    describe("ID-token credentials (id_token.credentials over new())", function()
      local AUD = "https://service-abc-uc.a.run.app"
      local id_token = require "gauth.id_token"
      local function idc(o, new_opts)
        local src = assert(ce.new(new_opts or { env = env }))
        o.audience = o.audience or AUD
        return id_token.credentials(src, o)
      end

      it("gets an ID token for the audience, format=full", function()
        local t0 = os.time()
        -- The source's clock times the token (expires_at); id_token's, its refresh.
        local c, cerr = idc({ cache = token_cache.new(), now = function() return t0 end },
                            { env = env, now = function() return t0 end })
        assert.is_nil(cerr)
        local tok, exp = c:token()
        assert.is_string(tok)
        assert.equal(t0 + 3600, exp)
        local r = md_requests(IDENTITY_PATH)[1]
        assert.equal(AUD, r.query_params.audience)
        assert.equal("full", r.query_params.format)
        local conf = fake:get_config()
        local claims = helpers.pyjwt_verify(tok, conf.server_public_pem, { audience = AUD })
        assert.is_table(claims)
        assert.equal(SA, claims.email)
        assert.is_table(claims.google.compute_engine)
        assert.matches("ID token for " .. AUD, tostring(c), 1, true)
      end)

      it("standard format, licenses and with_target_audience", function()
        local c = assert(idc({ format = "standard", cache = token_cache.new() }))
        assert.truthy(c:token())
        assert.is_nil(md_requests(IDENTITY_PATH)[1].query_params.format)
        local l = assert(idc({ licenses = true, cache = token_cache.new() }))
        assert.truthy(l:token())
        assert.equal("TRUE", md_requests(IDENTITY_PATH)[2].query_params.licenses)
        local o = assert(c:with_target_audience("other"))
        local tok = assert(o:token())
        local _, claims = helpers.jwt_parts(tok)
        assert.equal("other", claims.aud)
        assert.is_nil(md_requests(IDENTITY_PATH)[3].query_params.format)
        assert.has_error(function() assert(new()):with_target_audience("x") end,
          "gauth.compute_engine: with_target_audience is for ID token credentials")
      end)

      it("returns nil and an error when the answer is not an ID token", function()
        fake:script(IDENTITY_PATH, { status = 200, body = "not-a-jwt" })
        local c = assert(idc({ cache = token_cache.new() }))
        local tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata response")
        fake:script(IDENTITY_PATH, { status = 400, body = "bad audience" })
        c:invalidate()
        tok, msg, err = c:token()
        assert.is_nil(tok)
        helpers.assert_failure(msg, err)
        assert.equal(400, err.status)
      end)

      it("raises on bad format or licenses, and for format with another source", function()
        assert.has_error(function() idc({ format = "x" }) end,
          'gauth.id_token: credentials: format must be "full" or "standard"')
        assert.has_error(function() idc({ format = "standard", licenses = true }) end,
          'gauth.id_token: credentials: licenses needs format "full"')
        assert.has_error(function() idc({ licenses = "yes" }) end,
          "gauth.id_token: credentials: licenses must be a boolean")
        local user = require("gauth.authorized_user").from_info({ client_id = "c", client_secret = "s",
                                                                 refresh_token = "r" })
        assert.has_error(function() id_token.credentials(user, { audience = AUD, format = "full" }) end,
          "gauth.id_token: credentials: format and licenses are the metadata server's, not for"
          .. " authorized_user credentials")
      end)

      it("id_token_credentials (deprecated alias): the same credentials; raises without target_audience", function()
        local c = assert(ce.id_token_credentials({ target_audience = AUD, env = env, format = "standard",
                                                   cache = token_cache.new() }))
        assert.equal("id_token", c.kind)
        assert.truthy(c:token())
        local r = md_requests(IDENTITY_PATH)[1]
        assert.equal(AUD, r.query_params.audience)
        assert.is_nil(r.query_params.format)
        assert.has_error(function() ce.id_token_credentials({ env = env }) end,
          "gauth.compute_engine: id_token_credentials: opts.target_audience (a non-empty string) required")
        assert.has_error(function()
          ce.id_token_credentials({ target_audience = AUD, scopes = { S1 }, env = env })
        end, "gauth.compute_engine: ID token credentials take no scopes")
      end)
    end)

    describe("project_id() and is_available()", function()
      it("project_id reads the server's", function()
        local p, err = ce.project_id({ env = env })
        assert.equal("fake-project", p)
        assert.is_nil(err)
        local msg
        p, msg, err = ce.project_id({ env = { GCE_METADATA_HOST = dead }, retry = false })
        assert.is_nil(p)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "metadata request")
      end)

      it("is_available pings like gauth.metadata's", function()
        local ok, err = ce.is_available({ env = env })
        assert.is_true(ok)
        assert.is_nil(err)
        local msg
        ok, msg, err = ce.is_available({ env = { NO_GCE_CHECK = "true" } })
        assert.is_false(ok)
        helpers.assert_failure(msg, err)
        is_error(err, "compute_engine", "detection")
        assert.has_error(function() ce.is_available(1) end, "gauth.compute_engine: is_available: opts must be a table")
      end)
    end)
  end)

  ---------------------------------------------------------------------------
  describe("gauth.app_engine", function()
    local gae

    before_each(function()
      gae = { GAE_APPLICATION = "s~my-app", GAE_ENV = "standard", GAE_SERVICE = "default",
              GCE_METADATA_HOST = fake.host_port }
    end)

    it("is_app_engine looks at GAE_APPLICATION, GAE_ENV, GAE_SERVICE", function()
      for _, var in ipairs({ "GAE_APPLICATION", "GAE_ENV", "GAE_SERVICE" }) do
        local ok, err = ae.is_app_engine({ env = { [var] = "x" } })
        assert.is_true(ok)
        assert.is_nil(err)
      end
      local ok, msg, err = ae.is_app_engine({ env = {} })
      assert.is_false(ok)
      helpers.assert_failure(msg, err)
      is_error(err, "app_engine", "environment")
    end)

    it("credentials get tokens from the metadata server with the scopes", function()
      local c, err = ae.credentials({ scopes = { S1 }, env = gae, cache = token_cache.new() })
      assert.is_nil(err)
      assert.equal("app_engine", c.kind)
      assert.matches("^gauth.app_engine credentials", tostring(c))
      local tok, exp = c:token()
      assert.equal("fake-token-1", tok)
      assert.is_number(exp)
      assert.equal(S1, md_requests(TOKEN_PATH)[1].query_params.scopes)
      local h = assert(c:with_scopes({ S2 }):apply())
      assert.equal("Bearer fake-token-2", h.authorization)
    end)

    it("outside App Engine returns nil and an error pointing to gauth.default()", function()
      local http = no_network()
      local c, msg, err = ae.credentials({ scopes = { S1 }, env = {}, http = http })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      is_error(err, "app_engine", "environment")
      assert.matches("gauth.default()", tostring(err), 1, true)
      assert.equal(0, http.calls)
    end)

    it("errors of its tokens say app_engine", function()
      gae.GCE_METADATA_HOST = dead
      local c = assert(ae.credentials({ env = gae, retry = false, cache = token_cache.new() }))
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      is_error(err, "app_engine", "metadata request")
    end)

    it("project_id: GAE_APPLICATION, GOOGLE_CLOUD_PROJECT, then the server", function()
      local p, err = ae.project_id({ env = gae })
      assert.equal("my-app", p)
      assert.is_nil(err)
      assert.equal("plain", (ae.project_id({ env = { GAE_APPLICATION = "plain" } })))
      assert.equal("gcp", (ae.project_id({ env = { GAE_ENV = "standard",
                                                    GOOGLE_CLOUD_PROJECT = "gcp" } })))
      assert.equal("fake-project", (ae.project_id({ env = { GAE_SERVICE = "s",
                                    GCE_METADATA_HOST = fake.host_port } })))
      local msg
      p, msg, err = ae.project_id({ env = {} })
      assert.is_nil(p)
      helpers.assert_failure(msg, err)
      is_error(err, "app_engine", "environment")
      p, msg, err = ae.project_id({ env = { GAE_SERVICE = "s", GCE_METADATA_HOST = dead }, retry = false })
      assert.is_nil(p)
      helpers.assert_failure(msg, err)
      is_error(err, "app_engine", "metadata request")
    end)

    it("raises on bad options", function()
      assert.has_error(function() ae.credentials(3) end, "gauth.app_engine: new: opts must be a table")
      assert.has_error(function() ae.is_app_engine("x") end, "gauth.app_engine: is_app_engine: opts must be a table")
      assert.has_error(function() ae.project_id(true) end, "gauth.app_engine: project_id: opts must be a table")
    end)
  end)
end)
