-- gauth.id_token key cache against a real loopback certificate server:
-- max-age, rotation, kid floods and failing endpoints. Time is the cache's
-- `now` seam, moved by the tests: nothing here sleeps or times a window.
local helpers = require "helpers"
local id_token = require "gauth.id_token"

local q = helpers.shell_quote
local AUD = "aud-1"

describe("gauth.id_token key cache", function()
  local fake, http, rsa1, rsa2, tokens, t
  local PATH = "/certs/rot"
  local url

  local function clock() return t end

  local function new_cache(extra)
    local o = { http = http, now = clock }
    for k, v in pairs(extra or {}) do o[k] = v end
    return assert(id_token.new_cache(o))
  end

  local function serve(set, max_age, n)
    local answers = {}
    for i = 1, n or 1 do
      answers[i] = { status = 200, body = set,
                     headers = { ["Cache-Control"] = "public, max-age=" .. max_age } }
    end
    fake:script(PATH, answers)
  end

  local function fetches() return #fake:requests(PATH) end

  local function verify(tok, cache, certs_url)
    return id_token.verify(tok, { audience = AUD, certs_url = certs_url or url, cache = cache,
                                  now = os.time() })
  end

  lazy_setup(function()
    fake = helpers.start_fake()
    http = assert(require("gauth.http").new{ ca_file = fake.ca_file })
    url = fake.url .. PATH
    rsa1 = helpers.make_rsa_key{ cert = true }
    rsa2 = helpers.make_rsa_key{ cert = true }
    local now = os.time()
    local spec = {}
    for _, k in ipairs({ { "rsa1", "k1" }, { "rsa2", "k2" } }) do
      spec[#spec + 1] = { key = k[1], alg = "RS256", headers = { kid = k[2] },
                          claims = { aud = AUD, iat = now - 5, exp = now + 3600 } }
    end
    local path = helpers.tmpname("idt", ".json")
    helpers.write_file(path, helpers.json_encode({
      keys = { rsa1 = rsa1.private_pem, rsa2 = rsa2.private_pem }, tokens = spec }))
    local ok, out = helpers.sh("/usr/bin/python3 " .. q(helpers.support_dir
      .. "/idtoken_tool.py") .. " " .. q(path))
    assert(ok, out)
    tokens = assert(helpers.json_decode(out)).tokens
  end)

  lazy_teardown(function()
    if http then http:close() end
    if fake then fake:stop() end
  end)

  before_each(function()
    fake:reset()
    t = 1000000
  end)

  it("clamps max-age to a documented floor and ceiling", function()
    assert.are.equal(60, id_token.max_age("public, max-age=5"))
    assert.are.equal(86400, id_token.max_age("max-age=999999, must-revalidate"))
    assert.are.equal(20750, id_token.max_age("public, max-age=20750, must-revalidate, no-transform"))
    assert.are.equal(3600, id_token.max_age(nil))
    assert.are.equal(60, id_token.max_age("no-cache"))
    assert.are.equal(60, id_token.MIN_MAX_AGE)
    assert.are.equal(86400, id_token.MAX_MAX_AGE)
  end)

  it("keeps a key set for its max-age, then fetches it again", function()
    local cache = new_cache()
    serve({ k1 = rsa1.cert_pem }, 600, 2)
    assert.is_table((verify(tokens[1], cache)))
    assert.are.equal(1, fetches())
    t = t + 599
    assert.is_table((verify(tokens[1], cache)))
    assert.are.equal(1, fetches())
    t = t + 2
    assert.is_table((verify(tokens[1], cache)))
    assert.are.equal(2, fetches())
    assert.are.equal(2, cache.fetches)
  end)

  it("fetches early on an unknown kid (rotation), at most once per interval", function()
    local cache = new_cache()
    serve({ k1 = rsa1.cert_pem }, 3600)
    assert.is_table((verify(tokens[1], cache)))
    -- Google publishes k2: a token signed with it arrives
    serve({ k1 = rsa1.cert_pem, k2 = rsa2.cert_pem }, 3600)
    t = t + id_token.REFETCH_INTERVAL
    local c, msg = verify(tokens[2], cache)
    assert.is_table(c, msg)
    assert.are.equal(2, fetches())
    assert.is_table((verify(tokens[1], cache)))
    assert.are.equal(2, fetches())
  end)

  it("turns a flood of random kids into one fetch per interval", function()
    local cache = new_cache()
    serve({ k1 = rsa1.cert_pem }, 3600, 3)
    assert.is_table((verify(tokens[1], cache)))
    t = t + id_token.REFETCH_INTERVAL
    local h, p, s = tokens[1]:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    local enc = require("gauth.core").b64url_encode
    for i = 1, 300 do
      local forged = enc('{"alg":"RS256","kid":"random-' .. i .. '"}') .. "." .. p .. "." .. s
      local v, msg, err = verify(forged, cache)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: verify: unknown kid random-" .. i, msg)
      assert.are.equal("kid", err.check)
      if i == 150 then t = t + 1 end
    end
    assert.is_string(h)
    -- the first unknown kid fetched; the other 299 did not
    assert.are.equal(2, fetches())
    t = t + id_token.REFETCH_INTERVAL
    local v = verify(enc('{"alg":"RS256","kid":"again"}') .. "." .. p .. "." .. s, cache)
    assert.is_nil(v)
    assert.are.equal(3, fetches())
    -- the real token was never refused along the way
    assert.is_table((verify(tokens[1], cache)))
  end)

  local failures = {
    { "an HTTP error", { status = 503, body = "unavailable" }, "fetch answered HTTP 503" },
    { "garbage", { status = 200, body = "<html>not json</html>" },
      "fetch gave a bad key set: key set is not a JSON object" },
    { "an empty set", { status = 200, body = {} }, "fetch gave a bad key set: key set is empty" },
    { "an empty JWK Set", { status = 200, body = { keys = {} } },
      "fetch gave a bad key set: key set is empty" },
    { "unusable keys", { status = 200, body = { k1 = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
      k2 = 5 } }, "fetch gave a bad key set: key set holds no usable key %(2 refused%)" },
    { "a dropped connection", { drop = true }, "fetch failed" },
    { "a slow server (past the timeout)", { hang = true }, "fetch failed: .*[Tt]ime" },
  }

  for _, f in ipairs(failures) do
    it("never lets a token through when the endpoint gives " .. f[1], function()
      -- a fresh connection: a drop on a reused one is retried by the transport
      local own = assert(require("gauth.http").new{ ca_file = fake.ca_file })
      local cache = new_cache({ timeout = 0.5, http = own })
      fake:script(PATH, f[2])
      local started = os.time()
      local v, msg, err = verify(tokens[1], cache)
      assert.is_nil(v)
      assert.matches("^gauth%.id_token: keys: key set unavailable: " .. f[3], msg)
      assert.are.equal("keys", err.check)
      assert.is_true(err.retryable)
      -- hang guard, ten times the timeout and more
      assert.is_true(os.time() - started < 10)
      -- the next attempt waits for the interval: no fetch flood while down
      v, msg = verify(tokens[1], cache)
      assert.is_nil(v)
      assert.matches("key set unavailable %(last ", msg)
      assert.are.equal(1, fetches())
      assert.are.equal(1, cache.fetches)
      own:close()
    end)
  end

  it("keeps serving old keys while fetches fail, until well past their age", function()
    local cache = new_cache()
    serve({ k1 = rsa1.cert_pem }, 600)
    assert.is_table((verify(tokens[1], cache)))
    -- past max-age, the endpoint fails: the held keys serve
    fake:script(PATH, { { status = 500, body = "x" }, { status = 200, body = "garbage" } })
    t = t + 601
    assert.is_table((verify(tokens[1], cache)))
    assert.are.equal(2, fetches())
    t = t + id_token.REFETCH_INTERVAL
    assert.is_table((verify(tokens[1], cache)))
    assert.are.equal(3, fetches())
    -- a bad signature is still refused with stale keys
    local h, p = tokens[1]:match("^([^.]+)%.([^.]+)%.")
    local _, s2 = tokens[2]:match("^([^.]+)%.[^.]+%.([^.]+)$")
    local v, msg = verify(h .. "." .. p .. "." .. s2, cache)
    assert.is_nil(v)
    assert.are.equal("gauth.id_token: verify: bad signature", msg)
    -- STALE_FOR past their age, no more
    t = 1000000 + 600 + id_token.STALE_FOR
    fake:script(PATH, { status = 500, body = "x" })
    v, msg = verify(tokens[1], cache)
    assert.is_nil(v)
    assert.matches("key set unavailable: fetch answered HTTP 500", msg)
    assert.are.equal(4, fetches())
  end)

  it("refuses when nothing listens, within the timeout", function()
    local cache = new_cache({ timeout = 1 })
    local v, msg, err = id_token.verify(tokens[1], { audience = AUD, cache = cache,
      certs_url = "https://127.0.0.1:" .. helpers.closed_port() .. "/certs" })
    assert.is_nil(v)
    assert.matches("^gauth%.id_token: keys: key set unavailable: fetch failed", msg)
    assert.is_true(err.retryable)
  end)
  -- A transport double that records every request: the refusal must come
  -- before any is made (no connection beyond loopback in the suite).
  local function recording_cache(body)
    local calls = {}
    local double = { request = function(_, req)
      calls[#calls + 1] = req.url
      return { status = 200, body = body, headers = { ["cache-control"] = "max-age=3600" } }
    end }
    return assert(id_token.new_cache({ http = double, now = clock })), calls
  end

  it("refuses a key set over plain http from a host that is not loopback, before any request", function()
    local set = helpers.json_encode({ k1 = rsa1.cert_pem })
    for _, u in ipairs({ "http://example.invalid/certs", "http://192.0.2.1/certs",
                         "http://[2001:db8::1]/certs", "ftp://127.0.0.1/certs" }) do
      local cache, calls = recording_cache(set)
      local v, msg, err = verify(tokens[1], cache, u)
      assert.is_nil(v)
      local host = u:match("^%a+://([^/]+)")
      local scheme = u:match("^(%a+)")
      assert.are.equal("gauth.id_token: keys: refusing to fetch a key set from " .. host
        .. " over " .. scheme .. " (certs_url must be https, or http to a loopback host)", msg)
      assert.are.equal("certs_url", err.check)
      assert.are.equal("insecure_url", err.kind)
      assert.are.equal("keys", err.step)
      assert.is_false(err.retryable)
      assert.are.same({}, calls)
    end
    -- plain http to a loopback host (emulators, tests) is fetched
    for _, u in ipairs({ "http://127.0.0.1:8080/certs", "http://localhost/certs",
                         "http://[::1]:9/certs", "https://example.invalid/certs" }) do
      local cache, calls = recording_cache(set)
      local v, msg = verify(tokens[1], cache, u)
      assert.is_table(v, msg)
      assert.are.equal(AUD, v.aud)
      assert.are.same({ u }, calls)
    end
  end)
end)
