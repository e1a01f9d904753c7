-- One retry rule (gauth.errors.classify) in every retry loop: the same
-- scripted answers of a loopback HTTPS fake get the same decision from a
-- service account's token request, an STS exchange, an IAM signBlob and
-- a Discovery execute(), and (against the upload fake) a media upload and
-- a batch POST: a 501 is retried (the token path did not retry it before), a
-- 429 with Retry-After waits exactly what the server asked (the sleeps are
-- recorded, not slept), an invalid_grant is never retried even with a 503,
-- a 404 is not retried. Each failure is asserted as nil, msg, err.
local helpers = require "helpers"
local sa = require "gauth.service_account"
local sts = require "gauth.sts"
local discovery = require "gauth.discovery"
local token_cache = require "gauth.token_cache"
local cjson = require "cjson.safe"

local SCOPE = "https://www.googleapis.com/auth/cloud-platform"
local JWT_TYPE = "urn:ietf:params:oauth:token-type:jwt"

describe("one retry rule in every loop", function()
  local fake, key_path, info
  local sleeps = {}

  local function record(d) sleeps[#sleeps + 1] = d end

  lazy_setup(function()
    fake = helpers.start_fake()
    key_path, info = helpers.make_service_account_file({ token_uri = fake.token_uri })
  end)

  lazy_teardown(function() fake:stop() end)

  before_each(function()
    helpers.clear(sleeps)
    fake:reset()
    fake:config({ public_keys = { [info.kid] = info.public_pem } })
  end)

  -- The three loops; each returns (value | nil, msg, err) and the path the
  -- fake counts its requests on.
  local loops = {
    {
      name = "service account token request",
      path = "/token",
      ok = { status = 200, body = { access_token = "ya29.ok", expires_in = 3600,
                                    token_type = "Bearer" } },
      run = function()
        local c = assert(sa.from_file(key_path, { scopes = { SCOPE }, cache = token_cache.new(),
          ca_file = fake.ca_file, retry = helpers.fast_retry({ max_delay = 60 }, record) }))
        return c:token()
      end,
      module = "service_account",
    },
    {
      name = "STS exchange",
      path = "/v1/token",
      ok = { status = 200, body = { access_token = "sts-ok", expires_in = 3600,
             issued_token_type = "urn:ietf:params:oauth:token-type:access_token",
             token_type = "Bearer" } },
      run = function()
        local http = assert(require("gauth.http").new({ ca_file = fake.ca_file }))
        return sts.exchange({ url = fake.url .. "/v1/token", http = http,
          subject_token = "subject", subject_token_type = JWT_TYPE,
          audience = "//iam.googleapis.com/x", scope = SCOPE,
          retry = helpers.fast_retry({ max_delay = 60 }, record) })
      end,
      module = "sts",
    },
    {
      name = "IAM signBlob",
      path = "/v1/projects/-/serviceAccounts/signer@p.iam.gserviceaccount.com:signBlob",
      ok = { status = 200, body = { keyId = "k", signedBlob = "c2ln" } },
      run = function()
        local iam = require "gauth.iam"
        local client = iam.new({ source = require("gauth.testing").credentials({ token = "src" }),
          email = "signer@p.iam.gserviceaccount.com", endpoint = fake.url,
          ca_file = fake.ca_file, retry = helpers.fast_retry({ max_delay = 60 }, record) })
        return client:sign_blob("bytes")
      end,
      module = "iam",
    },
    {
      name = "Discovery execute()",
      path = "/toy/v1/items/a",
      ok = { status = 200, body = { id = "a" } },
      run = function()
        local doc = {
          kind = "discovery#restDescription", name = "toy", version = "v1", id = "toy:v1",
          rootUrl = fake.url .. "/", servicePath = "toy/v1/",
          resources = { items = { methods = { get = {
            id = "toy.items.get", path = "items/{id}", httpMethod = "GET",
            parameterOrder = { "id" },
            parameters = { id = { type = "string", location = "path", required = true } },
          } } } },
        }
        local http = assert(require("gauth.http").new({ ca_file = fake.ca_file }))
        local svc = assert(discovery.build_from_document(cjson.encode(doc),
          { http = http, sleep = record }))
        return svc:items():get({ id = "a" }):execute({ num_retries = 2, random = function() return 0 end })
      end,
      module = "discovery",
    },
  }

  for _, loop in ipairs(loops) do
    describe(loop.name, function()
      it("retries a 501, then succeeds", function()
        fake:script(loop.path, { { status = 501, body = { error = { code = 501,
          message = "not implemented", status = "UNIMPLEMENTED" } } }, loop.ok })
        local v, msg, err = loop.run()
        assert.truthy(v, msg)
        assert.is_nil(err)
        assert.equal(2, #fake:requests(loop.path))
        assert.equal(1, #sleeps)
      end)

      it("waits the Retry-After of a 429 (7 s), not the backoff", function()
        fake:script(loop.path, { { status = 429, headers = { ["Retry-After"] = "7" },
                                   body = { error = { code = 429, message = "slow down",
                                                      status = "RESOURCE_EXHAUSTED" } } },
                                 loop.ok })
        assert.truthy(loop.run())
        assert.equal(2, #fake:requests(loop.path))
        assert.same({ 7 }, sleeps)
      end)

      it("never retries invalid_grant, even with a 503", function()
        fake:script(loop.path, { { status = 503, body = { error = "invalid_grant",
          error_description = "the grant is gone" } }, loop.ok })
        local v, msg, err = loop.run()
        assert.is_nil(v)
        helpers.assert_failure(msg, err, loop.module)
        assert.equal(503, err.status)
        assert.equal("invalid_grant", err.oauth_error)
        assert.equal("the grant is gone", err.error_description)
        assert.is_nil(err.reason)
        assert.is_false(err.retryable)
        assert.equal(1, #fake:requests(loop.path))
        assert.equal(0, #sleeps)
      end)

      it("does not retry a 404, and says what Google said", function()
        fake:script(loop.path, { { status = 404, body = { error = { code = 404,
          message = "no such thing", status = "NOT_FOUND",
          errors = { { reason = "notFound", message = "no such thing" } } } } }, loop.ok })
        local v, msg, err = loop.run()
        assert.is_nil(v)
        helpers.assert_failure(msg, err, loop.module)
        assert.equal(404, err.status)
        assert.is_false(err.retryable)
        assert.equal(1, #fake:requests(loop.path))
        assert.equal(0, #sleeps)
      end)
    end)
  end

  describe("media upload and batch POST (the upload fake)", function()
    local fake_upload = require "support.fake_upload"
    local media = require "gauth.media"
    local testing = require "gauth.testing"
    local STORAGE = helpers.discovery_doc("storage.v1.json")
    local DRIVE = helpers.discovery_doc("drive.v3.json")
    local srv, http

    lazy_setup(function()
      srv = fake_upload.start{ tls = true }
      http = srv:transport()
    end)

    lazy_teardown(function() if srv then srv:stop() end end)

    before_each(function() srv:reset() end)

    local function upload()
      local svc = assert(discovery.build_from_document(STORAGE, { api_endpoint = srv.url .. "/storage/v1/",
        http = http, credentials = testing.credentials{ token = "tok" } }))
      local req = assert(svc:objects():insert{ bucket = "b", name = "o1",
        media_body = media.media_string("payload", { mime_type = "text/plain" }) })
      return req:execute{ num_retries = 2, sleep = record, random = function() return 0 end }
    end

    local function batch_post()
      srv:put_object{ id = "a", data = "data of a", mimeType = "text/plain", name = "name-a" }
      local drive = assert(discovery.build_from_document(DRIVE, { api_endpoint = srv.url .. "/drive/v3/",
        http = http, credentials = testing.credentials{ token = "tok" } }))
      local b = drive:new_batch_http_request()
      b:add(drive:files():get{ fileId = "a" })
      return b:execute{ num_retries = 2, sleep = record, random = function() return 0 end }
    end

    for _, loop in ipairs({ { "media upload", "simple", upload, "media" },
                            { "batch POST", "batch", batch_post, "batch" } }) do
      local name, on, run, module = loop[1], loop[2], loop[3], loop[4]
      it(name .. ": 501 retried, 429 Retry-After waited, invalid_grant and 404 not retried", function()
        srv:inject{ { on = on, status = 501 } }
        assert.truthy(run())
        assert.equal(1, #sleeps)
        assert.equal(2, #srv:requests{ kind = on })

        srv:reset(); helpers.clear(sleeps)
        srv:inject{ { on = on, status = 429, headers = { ["Retry-After"] = "7" } } }
        assert.truthy(run())
        assert.same({ 7 }, sleeps)

        srv:reset(); helpers.clear(sleeps)
        srv:inject{ { on = on, status = 503, json = { error = "invalid_grant",
                                                      error_description = "gone" } } }
        local v, msg, err = run()
        assert.is_nil(v)
        helpers.assert_failure(msg, err, module)
        assert.equal("invalid_grant", err.oauth_error)
        assert.is_false(err.retryable)
        assert.equal(0, #sleeps)
        assert.equal(1, #srv:requests{ kind = on })

        srv:reset(); helpers.clear(sleeps)
        srv:inject{ { on = on, status = 404 } }
        v, msg, err = run()
        assert.is_nil(v)
        helpers.assert_failure(msg, err, module)
        assert.equal(404, err.status)
        assert.is_false(err.retryable)
        assert.equal(0, #sleeps)
        assert.equal(1, #srv:requests{ kind = on })
      end)
    end
  end)
end)
