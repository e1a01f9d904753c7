-- gauth.id_token: verdicts on tokens made by an independent signer (PyJWT
-- with cryptography), with key sets served by a real loopback HTTPS server
-- in both of Google's formats, compared with Google's Node library
-- (google-auth-library's OAuth2Client.verifySignedJwtWithCertsAsync) on the
-- same tokens and keys.
local helpers = require "helpers"
local id_token = require "gauth.id_token"
local core = require "gauth.core"

local q = helpers.shell_quote

-- One PyJWT process for a batch: tokens and the JWKs of the keys.
local function sign_batch(keys, tokens, jwk_names)
  local pems = {}
  for name, k in pairs(keys) do pems[name] = k.private_pem end
  local path = helpers.tmpname("idt", ".json")
  helpers.write_file(path, assert(helpers.json_encode({
    keys = pems, tokens = tokens, jwk = jwk_names or {} })))
  local ok, out = helpers.sh("/usr/bin/python3 " .. q(helpers.support_dir
    .. "/idtoken_tool.py") .. " " .. q(path))
  assert(ok, out)
  return assert(helpers.json_decode(out))
end

-- One node process for a batch of cases.
local function node_verdicts(certs, cases, clock_skew)
  local path = helpers.tmpname("node-idt", ".json")
  helpers.write_file(path, assert(helpers.json_encode({
    certs = certs, cases = cases, clock_skew = clock_skew or 0 })))
  local ok, out = helpers.sh("node " .. q(helpers.support_dir
    .. "/node/verify_id_tokens.js") .. " " .. q(path))
  assert(ok, out)
  return assert(helpers.json_decode(out))
end

local AUD = "https://service.example.run.app"
local ISS = "https://accounts.google.com"

describe("gauth.id_token", function()
  local fake, http, keys, jwks, pem_url, jwk_url, now
  local cache

  -- A key cache of its own over a transport that trusts the test CA.
  local function new_cache(extra)
    local o = { http = http }
    for k, v in pairs(extra or {}) do o[k] = v end
    return assert(id_token.new_cache(o))
  end

  local function claims(over)
    local c = { iss = ISS, aud = AUD, sub = "1234567890",
                email = "caller@example.iam.gserviceaccount.com",
                email_verified = true, iat = now - 10, exp = now + 3590 }
    for k, v in pairs(over or {}) do
      if v == "nil" then c[k] = nil else c[k] = v end
    end
    return c
  end

  lazy_setup(function()
    fake = helpers.start_fake()
    http = assert(require("gauth.http").new{ ca_file = fake.ca_file })
    keys = {
      rsa1 = helpers.make_rsa_key{ cert = true },
      rsa2 = helpers.make_rsa_key{ cert = true },
      ec1 = helpers.make_ec_key{ cert = true },
      ec2 = helpers.make_ec_key{ cert = true },
    }
    jwks = sign_batch(keys, {}, { "rsa1", "ec1", "rsa2", "ec2" }).jwk
    now = os.time()
    pem_url = fake.url .. "/certs/pem"
    jwk_url = fake.url .. "/certs/jwk"
  end)

  lazy_teardown(function()
    if http then http:close() end
    if fake then fake:stop() end
  end)

  before_each(function() fake:reset() end)

  -- Serve the set once more at `path` (one scripted answer per fetch).
  local function serve(path, body, headers)
    fake:script(path, { status = 200, body = body,
                        headers = headers or { ["Cache-Control"] = "public, max-age=3600" } })
  end

  local function pem_set(names)
    local t = {}
    for _, n in ipairs(names) do t[n] = keys[n].cert_pem end
    return t
  end

  local function jwk_set(names)
    local l = {}
    for _, n in ipairs(names) do
      local j = {}
      for k, v in pairs(jwks[n]) do j[k] = v end
      j.kid, j.use, j.alg = n, "sig", keys[n].alg
      l[#l + 1] = j
    end
    return { keys = l }
  end

  describe("verdicts on PyJWT tokens", function()
    local cases
    lazy_setup(function()
      -- Every case: signer, header, claims, what verify says, and what
      -- Google's Node library says when it differs from us (see README).
      cases = {
        { "valid RS256", "rsa1", "RS256", { kid = "rsa1" }, {}, true },
        { "valid ES256", "ec1", "ES256", { kid = "ec1" }, {}, true },
        { "valid RS256 without kid (tried against RS256 keys only)", "rsa2", "RS256",
          { kid = nil }, {}, true, node = "No pem found for envelope" },
        { "valid ES256 without kid", "ec2", "ES256", {}, {}, true,
          node = "No pem found for envelope" },
        { "expired", "rsa1", "RS256", { kid = "rsa1" },
          { iat = now - 4000, exp = now - 42 }, "claims: expired 42 s ago", check = "exp" },
        { "expired ES256", "ec1", "ES256", { kid = "ec1" },
          { iat = now - 4000, exp = now - 600 }, "claims: expired 600 s ago", check = "exp" },
        { "issued in the future", "rsa1", "RS256", { kid = "rsa1" },
          { iat = now + 400, exp = now + 3600 }, "claims: issued 400 s in the future %(iat%)", check = "iat" },
        { "not yet valid (nbf)", "ec1", "ES256", { kid = "ec1" },
          { nbf = now + 500 }, "claims: not valid for another 500 s %(nbf%)", check = "nbf",
          node = true },
        { "audience mismatch", "rsa1", "RS256", { kid = "rsa1" },
          { aud = "https://other.example" }, "claims: audience mismatch", check = "aud" },
        { "audience mismatch ES256", "ec1", "ES256", { kid = "ec1" },
          { aud = "https://other.example" }, "claims: audience mismatch", check = "aud" },
        { "issuer mismatch", "rsa1", "RS256", { kid = "rsa1" },
          { iss = "https://evil.example" }, "claims: issuer mismatch", check = "iss" },
        { "unknown kid", "rsa1", "RS256", { kid = "nope" }, {},
          "verify: unknown kid nope", check = "kid" },
        { "bad signature (another key under a known kid)", "rsa2", "RS256",
          { kid = "rsa1" }, {}, "verify: bad signature", check = "signature" },
        { "bad signature ES256", "ec2", "ES256", { kid = "ec1" }, {},
          "verify: bad signature", check = "signature" },
        { "alg ES256 on an RSA key", "ec1", "ES256", { kid = "rsa1" }, {},
          "verify: alg ES256 does not fit key rsa1 %(RS256%)", check = "alg" },
        { "alg RS256 on an EC key", "rsa1", "RS256", { kid = "ec1" }, {},
          "verify: alg RS256 does not fit key ec1 %(ES256%)", check = "alg" },
        { "HS256 keyed with the public certificate", "hs", "HS256", { kid = "rsa1" }, {},
          "verify: alg HS256 not allowed", check = "alg" },
        { "alg none", "none", "none", { kid = "rsa1" }, {},
          "verify: alg none not allowed", check = "alg" },
        { "alg RS384", "rsa1", "RS384", { kid = "rsa1" }, {},
          "verify: alg RS384 not allowed", check = "alg" },
        { "missing exp", "rsa1", "RS256", { kid = "rsa1" }, { exp = "nil" },
          "claims: missing exp", check = "exp" },
        { "missing iat", "ec1", "ES256", { kid = "ec1" }, { iat = "nil" },
          "claims: missing iat", check = "iat" },
        { "exp as a string", "rsa1", "RS256", { kid = "rsa1" },
          { exp = tostring(now + 3600) }, "claims: malformed: exp is not a finite number",
          check = "exp", node = true },
        { "lifetime beyond a day", "rsa1", "RS256", { kid = "rsa1" },
          { exp = now + 2 * 86400 }, "claims: lifetime 172810 s exceeds max_lifetime 86400",
          check = "lifetime" },
      }
      local specs = {}
      for i, c in ipairs(cases) do
        local signer, alg, header, over = c[2], c[3], c[4], c[5]
        local h = { kid = header.kid or nil }
        specs[i] = { key = keys[signer] and signer or nil, alg = alg,
                     secret = alg == "HS256" and "a-shared-secret" or nil,
                     headers = h, claims = claims(over) }
      end
      local out = sign_batch(keys, specs)
      for i, c in ipairs(cases) do c.token = out.tokens[i] end
    end)

    for _, format in ipairs({ "PEM certificates", "JWK Set" }) do
      it("says which check failed, over a " .. format .. " key set", function()
        local url = format == "JWK Set" and jwk_url or pem_url
        local names = { "rsa1", "ec1" }
        cache = new_cache()
        if format == "JWK Set" then
          serve("/certs/jwk", jwk_set(names))
        else
          serve("/certs/pem", pem_set(names))
        end
        -- the kid-less cases need their signers in the set, without a kid
        -- match for "unknown kid" to stay unknown
        for _, c in ipairs(cases) do
          local opts = { audience = AUD, issuers = { ISS }, certs_url = url,
                         cache = cache, now = now }
          if not c[4].kid and c[6] == true then
            -- a set of its own holding the signer under another name
            local set = format == "JWK Set" and jwk_set({ c[2] }) or pem_set({ c[2] })
            if format == "JWK Set" then
              for _, k in ipairs(set.keys) do k.kid = nil end
            else
              set = { other = set[c[2]] }
            end
            local path = "/certs/nokid-" .. c[2] .. "-" .. (format == "JWK Set" and "j" or "p")
            serve(path, set)
            opts.certs_url = fake.url .. path
          end
          local claims_out, msg, err = id_token.verify(c.token, opts)
          if c[6] == true then
            assert.is_table(claims_out, c[1] .. ": " .. tostring(msg))
            assert.are.equal(AUD, claims_out.aud)
            assert.are.equal(msg.alg, c[3])  -- second value: the header
          else
            assert.is_nil(claims_out, c[1])
            assert.matches("^gauth%.id_token: " .. c[6] .. "$", msg, nil, c[1])
            helpers.assert_gauth_error(err, "id_token")
            assert.are.equal(c.check, err.check, c[1])
            assert.is_nil(msg:find(c.token:sub(1, 20), 1, true))
            assert.is_nil(msg:find(c.token:sub(-20), 1, true))
          end
        end
        -- one fetch for the shared set: the unknown kid came within the
        -- refetch interval of it
        assert.are.equal(1, #fake:requests(format == "JWK Set" and "/certs/jwk" or "/certs/pem"))
      end)
    end

    it("gives the same verdicts once a header is known (one C call per token)", function()
      -- Two module instances of their own: `cold` never sees a good token,
      -- so every token takes the full path; `warm` has verified one with
      -- each header first, so tokens with that header take the short one.
      -- The facade and its parts (lua/gauth/id_token/*) loaded afresh: the
      -- known headers and the default cache are the parts' state.
      local function instance()
        local saved = {}
        for name, m in pairs(package.loaded) do
          if name == "gauth.id_token" or name:match("^gauth%.id_token%.") then
            saved[name] = m
            package.loaded[name] = nil
          end
        end
        local m = require "gauth.id_token"
        for name in pairs(package.loaded) do
          if name == "gauth.id_token" or name:match("^gauth%.id_token%.") then
            package.loaded[name] = saved[name]
          end
        end
        return m
      end
      local cold, warm = instance(), instance()
      serve("/certs/pem", pem_set({ "rsa1", "ec1" }))
      serve("/certs/pem", pem_set({ "rsa1", "ec1" }))
      local cold_cache = assert(cold.new_cache({ http = http }))
      local warm_cache = assert(warm.new_cache({ http = http }))
      local function opts(c)
        return { audience = AUD, issuers = { ISS }, certs_url = pem_url, cache = c, now = now }
      end
      local methods = debug.getregistry()["gauth.Key"].__index
      local real, calls = methods.verify_jws, 0
      methods.verify_jws = function(...) calls = calls + 1 return real(...) end
      local ok, e = pcall(function()
        local good = {}
        for _, c in ipairs(cases) do
          if c[6] == true and c[4].kid then
            assert.is_table(warm.verify(c.token, opts(warm_cache)), c[1])
            good[#good + 1] = c.token
          end
        end
        assert.are.equal(0, calls)  -- the first token of a header: the full path
        local enc = core.b64url_encode
        local tokens = {}
        for _, c in ipairs(cases) do
          if c[6] ~= true and c[4].kid then tokens[#tokens + 1] = { c[1], c.token } end
        end
        for _, t in ipairs(good) do
          local h, p, sg = t:match("^([^.]+)%.([^.]+)%.([^.]+)$")
          for _, g in ipairs({
            { "2 segments", h .. "." .. p },
            { "4 segments", t .. ".e30" },
            { "bad payload", h .. "." .. p .. "!." .. sg },
            { "bad signature text", h .. "." .. p .. "." .. sg .. "*" },
            { "short signature", h .. "." .. p .. "." .. sg:sub(5) },
            { "signature too long", h .. "." .. p .. "." .. ("A"):rep(2000) },
            { "payload a list", h .. "." .. enc("[1]") .. "." .. sg },
            { "payload not JSON", h .. "." .. enc("not json") .. "." .. sg },
            { "payload of another token", h .. "." .. enc('{"aud":"x"}') .. "." .. sg },
            { "1 MB", h .. "." .. ("A"):rep(1024 * 1024) .. "." .. sg },
          }) do
            tokens[#tokens + 1] = g
          end
        end
        local before = calls
        for _, t in ipairs(tokens) do
          local c1, m1, e1 = cold.verify(t[2], opts(cold_cache))
          local c2, m2, e2 = warm.verify(t[2], opts(warm_cache))
          assert.is_nil(c1, t[1])
          assert.is_nil(c2, t[1])
          assert.are.equal(m1, m2, t[1])
          assert.are.equal(e1.check, e2.check, t[1])
        end
        -- the ten made on each good token's header went the short way
        assert.is_true(calls - before >= 10 * #good, tostring(calls - before))
        -- and good tokens still pass it
        for _, t in ipairs(good) do assert.is_table(warm.verify(t, opts(warm_cache))) end
        -- Claims of every JSON shape the short way, whose claims come from
        -- core.json_object (PyJWT writes non-ASCII as \u escapes, the
        -- emoji as a surrogate pair): cjson's table of the same payload.
        local varied = sign_batch(keys, { {
          key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ name = "Jos\195\169 \240\159\152\128 \"q\" \\ /\n",
            amr = { "pwd", "mfa" }, score = -0.5, big = 12345678901234567890, flag = false,
            firebase = { identities = { email = { "a@b.c" } }, sign_in_provider = "password" } }),
        } }).tokens[1]
        before = calls
        local got = assert(warm.verify(varied, opts(warm_cache)))
        assert.are.equal(before + 1, calls)
        local want = require("cjson").decode((select(2, core.jws_split(varied))))
        assert.are.same(want, got)
        assert.are.equal("Jos\195\169 \240\159\152\128 \"q\" \\ /\n", got.name)
        assert.are.equal("mfa", got.amr[2])
      end)
      methods.verify_jws = real
      assert(ok, e)
    end)

    it("agrees with Google's Node library on the same tokens and keys", function()
      local certs = { rsa1 = keys.rsa1.cert_pem, ec1 = keys.ec1.public_pem }
      local batch = {}
      for i, c in ipairs(cases) do
        batch[i] = { token = c.token, audience = AUD, issuers = { ISS } }
      end
      local verdicts = node_verdicts(certs, batch, 0)
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1", "ec1" }))
      for i, c in ipairs(cases) do
        local ours = id_token.verify(c.token, { audience = AUD, issuers = { ISS },
          certs_url = pem_url, cache = cache, now = os.time() }) and true or false
        local node = verdicts[i]
        if c.node == nil then
          assert.are.equal(c[6] == true, ours, c[1] .. " (gauth)")
          assert.are.equal(ours, node.ok, c[1] .. " (node: " .. tostring(node.error) .. ")")
        elseif c.node == true then
          -- Node checks no nbf and takes numbers as strings (Number()):
          -- google-auth (Python) refuses both, and so do we.
          assert.is_true(node.ok, c[1])
          assert.is_false(ours, c[1])
        else
          -- Node needs a kid; google-auth (Python), like us, then tries
          -- every key (of the token's algorithm, here).
          assert.is_false(node.ok, c[1])
          assert.matches(c.node, node.error, nil, true)
        end
      end
    end)
  end)

  describe("garbage", function()
    it("gets nil, a message naming the check and bounded work", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1" }))
      local enc = core.b64url_encode
      local hdr = enc('{"alg":"RS256","kid":"rsa1"}')
      local body = enc('{"aud":"x"}')
      local sig = enc(("s"):rep(256))
      local cases = {
        { "", "malformed: 1 segment" },
        { "abc", "malformed: 1 segment" },
        { hdr .. "." .. body, "malformed: 2 segments" },
        { hdr .. "." .. body .. "." .. sig .. ".x", "malformed: 4 segments" },
        { hdr .. "." .. body .. "." .. sig .. "=", "malformed: bad base64url in signature" },
        { hdr .. "+." .. body .. "." .. sig, "malformed: bad base64url in header" },
        { hdr .. ".\0" .. body .. "." .. sig, "malformed: bad base64url in payload" },
        { enc(("{"):rep(5000)) .. "." .. body .. "." .. sig, "malformed: header of %d+ bytes" },
        { hdr .. "." .. ("A"):rep(1024 * 1024) .. "." .. sig, "malformed: token of %d+ bytes" },
        { enc("not json") .. "." .. body .. "." .. sig, "malformed: header is not a JSON object" },
        { enc("[1,2]") .. "." .. body .. "." .. sig, "malformed: header is not a JSON object" },
        { enc('{"alg":1}') .. "." .. body .. "." .. sig, "malformed: header has no alg" },
        { enc('{"alg":"RS256","kid":7}') .. "." .. body .. "." .. sig, "malformed: kid is not a string" },
        { hdr .. "." .. enc("[]") .. "." .. sig, "malformed: payload is not a JSON object" },
        { hdr .. "." .. enc('{"exp":NaN}') .. "." .. sig, "malformed: payload is not a JSON object" },
        { hdr .. "." .. enc("\0\1\2") .. "." .. sig, "malformed: payload is not a JSON object" },
        { enc('{"alg":"' .. ("A"):rep(300) .. '"}') .. "." .. body .. "." .. sig,
          "alg %(300 bytes%) not allowed" },
      }
      for _, c in ipairs(cases) do
        local v, msg, err = id_token.verify(c[1], { audience = AUD, certs_url = pem_url,
                                                    cache = cache })
        assert.is_nil(v)
        assert.matches("^gauth%.id_token: %a+: " .. c[2], msg)
        helpers.assert_gauth_error(err, "id_token")
        assert.is_string(err.check)
        assert.is_true(#msg < 200)
      end
      -- garbage never needed a key: nothing was fetched
      assert.are.equal(0, #fake:requests("/certs/pem"))
    end)

    it("refuses infinite and string times that a lax decoder would let through", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1" }))
      -- 1e400 decodes to infinity: never expired unless refused. PyJWT
      -- cannot write it; the openssl CLI signs the text.
      local input = core.b64url_encode('{"alg":"RS256","kid":"rsa1"}') .. "."
        .. core.b64url_encode('{"aud":"' .. AUD .. '","iat":' .. (now - 1) .. ',"exp":1e400}')
      local f = helpers.tmpname("input")
      helpers.write_file(f, input)
      local ok, out = helpers.sh("openssl dgst -sha256 -sign " .. q(keys.rsa1.path)
        .. " -out " .. q(f .. ".sig") .. " " .. q(f))
      assert(ok, out)
      local t2 = input .. "." .. core.b64url_encode(assert(helpers.read_file(f .. ".sig")))
      local v, msg, err = id_token.verify(t2, { audience = AUD, certs_url = pem_url,
                                                cache = cache, max_lifetime = false, now = now })
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: malformed: exp is not a finite number", msg)
      assert.are.equal("exp", err.check)
    end)

    it("raises for programming errors", function()
      assert.has_error(function() id_token.verify(nil, { audience = AUD }) end,
        "gauth.id_token: token must be a string")
      assert.has_error(function() id_token.verify("a.b.c") end,
        "gauth.id_token: opts must be a table (audience is required)")
      assert.has_error(function() id_token.verify("a.b.c", {}) end,
        "gauth.id_token: opts.audience is required (audience = false skips the check)")
      assert.has_error(function() id_token.verify("a.b.c", { audience = 3 }) end,
        "gauth.id_token: audience must be a string or a non-empty list")
      assert.has_error(function() id_token.verify_firebase_token("a.b.c", nil) end,
        "gauth.id_token: verify_firebase_token: project_id must be a string")
    end)
  end)

  describe("audience and options", function()
    local tok
    lazy_setup(function()
      tok = sign_batch(keys, { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
        claims = claims() } }).tokens[1]
    end)

    it("takes a list of audiences, audience = false, clock_skew and now as a function", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1" }))
      local o = { certs_url = pem_url, cache = cache }
      o.audience = { "a", AUD }
      assert.is_table((id_token.verify(tok, o)))
      o.audience = false
      assert.is_table((id_token.verify(tok, o)))
      o.now = function() return now + 3600 end
      local v, msg = id_token.verify(tok, o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: expired 10 s ago", msg)
      o.clock_skew = 10
      assert.is_table((id_token.verify(tok, o)))
      o.max_lifetime = 60
      v, msg = id_token.verify(tok, o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: lifetime 3600 s exceeds max_lifetime 60", msg)
    end)

    it("verify_oauth2_token checks Google's issuers", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1", "ec1" }))
      local bad = sign_batch(keys, {
        { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ iss = "accounts.google.com" }) },
        { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ iss = "https://securetoken.google.com/p" }) } }).tokens
      local o = { certs_url = pem_url, cache = cache }
      local c, header = id_token.verify_oauth2_token(tok, AUD, o)
      assert.are.equal(ISS, c.iss)
      assert.are.equal("rsa1", header.kid)
      assert.are.equal("accounts.google.com", (id_token.verify_oauth2_token(bad[1], AUD, o)).iss)
      local v, msg, err = id_token.verify_oauth2_token(bad[2], AUD, o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: issuer mismatch", msg)
      assert.are.equal("iss", err.check)
    end)

    it("verify_iap wants ES256 from IAP's issuer", function()
      cache = new_cache()
      serve("/certs/jwk", jwk_set({ "ec1", "rsa1" }))
      local aud = "/projects/123/global/backendServices/456"
      local toks = sign_batch(keys, {
        { key = "ec1", alg = "ES256", headers = { kid = "ec1" },
          claims = claims({ iss = id_token.IAP_ISSUER, aud = aud }) },
        { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ iss = id_token.IAP_ISSUER, aud = aud }) },
        { key = "ec1", alg = "ES256", headers = { kid = "ec1" },
          claims = claims({ aud = aud }) } }).tokens
      local o = { certs_url = jwk_url, cache = cache }
      local c = assert(id_token.verify_iap(toks[1], aud, o))
      assert.are.equal(id_token.IAP_ISSUER, c.iss)
      local v, msg, err = id_token.verify_iap(toks[2], aud, o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: verify: alg RS256 not allowed", msg)
      assert.are.equal("alg", err.check)
      v, msg = id_token.verify_iap(toks[3], aud, o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: issuer mismatch", msg)
    end)

    it("verify_firebase_token wants the project as audience and issuer, and a sub", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1" }))
      local iss = id_token.FIREBASE_ISSUER_PREFIX .. "my-proj"
      local toks = sign_batch(keys, {
        { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ iss = iss, aud = "my-proj", sub = "uid1", auth_time = now - 100 }) },
        { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ iss = iss, aud = "other-proj", auth_time = now - 100 }) },
        { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
          claims = claims({ iss = iss, aud = "my-proj", sub = "" }) } }).tokens
      local o = { certs_url = pem_url, cache = cache }
      assert.are.equal("uid1", (assert(id_token.verify_firebase_token(toks[1], "my-proj", o))).sub)
      local v, msg = id_token.verify_firebase_token(toks[2], "my-proj", o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: audience mismatch", msg)
      local err
      v, msg, err = id_token.verify_firebase_token(toks[3], "my-proj", o)
      assert.is_nil(v)
      assert.matches("claims: sub must be a non%-empty string", msg)
      assert.are.equal("sub", err.check)
    end)

    it("verify_firebase_token makes Firebase's documented checks: RS256, kid, sub, auth_time", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1", "ec1" }))
      local iss = id_token.FIREBASE_ISSUER_PREFIX .. "my-proj"
      local function fb(over)
        local c = { iss = iss, aud = "my-proj", sub = "uid1", auth_time = now - 100 }
        for k, v in pairs(over or {}) do c[k] = v end
        return claims(c)
      end
      local cases = {
        { { key = "ec1", alg = "ES256", headers = { kid = "ec1" }, claims = fb() },
          "verify: alg ES256 not allowed", "alg" },
        { { key = "rsa1", alg = "RS256", claims = fb() },
          "verify: no kid (a Firebase ID token names its key)", "kid" },
        { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" }, claims = fb({ auth_time = "nil" }) },
          "claims: missing auth_time", "auth_time" },
        { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" }, claims = fb({ auth_time = "100" }) },
          "claims: malformed: auth_time is not a finite number", "auth_time" },
        { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" }, claims = fb({ auth_time = now + 60 }) },
          "claims: signed in 60 s in the future (auth_time)", "auth_time" },
        { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" }, claims = fb({ sub = "nil" }) },
          "claims: sub must be a non-empty string of at most 128 characters", "sub" },
        { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" }, claims = fb({ sub = 42 }) },
          "claims: sub must be a non-empty string of at most 128 characters", "sub" },
        { { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" }, claims = fb({ sub = ("u"):rep(129) }) },
          "claims: sub must be a non-empty string of at most 128 characters", "sub" },
      }
      local specs = {}
      for i, c in ipairs(cases) do specs[i] = c[1] end
      specs[#specs + 1] = { key = "rsa1", alg = "RS256", headers = { kid = "rsa1" },
                            claims = fb({ sub = ("u"):rep(128), auth_time = now + 5 }) }
      local toks = sign_batch(keys, specs).tokens
      local o = { certs_url = pem_url, cache = cache, now = now }
      for i, c in ipairs(cases) do
        local v, msg, err = id_token.verify_firebase_token(toks[i], "my-proj", o)
        assert.is_nil(v)
        assert.are.equal("gauth.id_token: " .. c[2], msg)
        assert.are.equal(c[3], err.check)
        -- the same token through verify (no Firebase checks) passes, but for ES256's
        -- kid-less and non-RS256 cases which verify allows too
        if c[3] ~= "alg" and c[3] ~= "kid" then
          assert.is_table((id_token.verify(toks[i], { audience = "my-proj", certs_url = pem_url,
                                                      cache = cache, now = now })))
        end
      end
      -- a sub of 128 characters; auth_time within clock_skew of now
      local last = toks[#toks]
      local v, msg = id_token.verify_firebase_token(last, "my-proj", o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: signed in 5 s in the future (auth_time)", msg)
      o.clock_skew = 5
      assert.are.equal(128, #assert(id_token.verify_firebase_token(last, "my-proj", o)).sub)
      assert.error_matches(function()
        id_token.verify_firebase_token(last, "my-proj", { algorithms = { ES256 = true } })
      end, "gauth.id_token: verify_firebase_token: algorithms cannot be chosen"
        .. " (Firebase signs with RS256 only)", 1, true)
    end)

    it("refuses issuers = false where the issuer is the point (a list still replaces it)", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1" }))
      local o = { certs_url = pem_url, cache = cache, issuers = false }
      for _, c in ipairs({ { "verify_oauth2_token", AUD }, { "verify_iap", AUD },
                           { "verify_firebase_token", "my-proj" } }) do
        assert.error_matches(function() id_token[c[1]](tok, c[2], o) end,
          "gauth.id_token: " .. c[1] .. ": issuers = false would skip the issuer check"
          .. " (use gauth.id_token.verify for a custom check)", 1, true)
      end
      -- a list replaces Google's issuers
      local v, msg, err = id_token.verify_oauth2_token(tok, AUD,
        { certs_url = pem_url, cache = cache, issuers = { "https://other.example" } })
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: issuer mismatch", msg)
      assert.are.equal("iss", err.check)
      assert.are.equal(ISS, (assert(id_token.verify_oauth2_token(tok, AUD,
        { certs_url = pem_url, cache = cache, issuers = { "x", ISS } }))).iss)
      -- verify with issuers = false checks none (its documented default)
      assert.is_table((id_token.verify(tok, { audience = AUD, certs_url = pem_url,
                                              cache = cache, issuers = false })))
    end)

    it("raises for time options that would turn the time checks off", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1" }))
      local nan, inf = 0 / 0, math.huge
      local bad = {
        { { clock_skew = nan }, "clock_skew must be a finite number >= 0" },
        { { clock_skew = inf }, "clock_skew must be a finite number >= 0" },
        { { clock_skew = -3600 }, "clock_skew must be a finite number >= 0" },
        { { clock_skew = "5" }, "clock_skew must be a finite number >= 0" },
        { { now = nan }, "now must be finite (it is NaN or infinite)" },
        { { now = inf }, "now must be finite (it is NaN or infinite)" },
        { { now = function() return nan end }, "now must be finite (it is NaN or infinite)" },
        { { now = "x" }, "now must be a number or a function returning one" },
        { { max_lifetime = nan }, "max_lifetime must be false or a finite number > 0" },
        { { max_lifetime = inf }, "max_lifetime must be false or a finite number > 0" },
        { { max_lifetime = 0 }, "max_lifetime must be false or a finite number > 0" },
        { { max_lifetime = "x" }, "max_lifetime must be false or a finite number > 0" },
        { { max_lifetime = true }, "max_lifetime must be false or a finite number > 0" },
      }
      -- an expired token (now + 2 h) and a good one: both raise, whatever the token
      local late = now + 7200
      for _, c in ipairs(bad) do
        for _, t in ipairs({ tok, "a.b.c" }) do
          local o = { audience = AUD, certs_url = pem_url, cache = cache }
          if c[1].now == nil then o.now = late end
          for k, v in pairs(c[1]) do o[k] = v end
          assert.error_matches(function() id_token.verify(t, o) end,
            "gauth.id_token: " .. c[2], 1, true)
          assert.error_matches(function() id_token.verify_oauth2_token(t, AUD, o) end,
            "gauth.id_token: " .. c[2], 1, true)
        end
      end
      -- the error points at the caller
      local ok, e = pcall(function() id_token.verify(tok, { audience = AUD, clock_skew = nan }) end)
      assert.is_false(ok)
      assert.matches("36%-id_token_verify_spec%.lua:%d+: gauth%.id_token: clock_skew", e)
      -- clock_skew 0 and max_lifetime false stay valid; an expired token is still refused
      local v, msg, err = id_token.verify(tok, { audience = AUD, certs_url = pem_url, cache = cache,
                                                clock_skew = 0, max_lifetime = false, now = late })
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: claims: expired 3610 s ago", msg)
      assert.are.equal("exp", err.check)
    end)

    it("returns a header of the caller's own: editing it changes no later verdict", function()
      cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1", "rsa2" }))
      local o = { audience = AUD, certs_url = pem_url, cache = cache, now = now }
      -- twice: the second time through the known-header path
      for _ = 1, 2 do
        local c, h = id_token.verify(tok, o)
        assert.is_table(c)
        assert.are.same({ alg = "RS256", kid = "rsa1", typ = "JWT" }, h)
        h.kid, h.alg = "rsa2", "ES256"
      end
      -- a token of another key with the same header text: still checked
      -- against rsa1 (its kid), not against what the caller wrote; through
      -- a fresh cache (no key held: the header is decoded, not recognised)
      o.cache = new_cache()
      serve("/certs/pem", pem_set({ "rsa1", "rsa2" }))
      local forged = sign_batch(keys, { { key = "rsa2", alg = "RS256", headers = { kid = "rsa1" },
        claims = claims() } }).tokens[1]
      local v, msg, err = id_token.verify(forged, o)
      assert.is_nil(v)
      assert.are.equal("gauth.id_token: verify: bad signature", msg)
      assert.are.equal("signature", err.check)
      local c, h = id_token.verify(tok, o)
      assert.is_table(c)
      assert.are.equal("rsa1", h.kid)
      assert.are.equal("RS256", h.alg)
      -- a header with more fields, nested ones too: copied whole
      local odd = sign_batch(keys, { { key = "rsa1", alg = "RS256",
        headers = { kid = "rsa1", x5t = "abc", ext = { n = 1 } }, claims = claims() } }).tokens[1]
      for _ = 1, 2 do
        c, h = id_token.verify(odd, o)
        assert.is_table(c)
        assert.are.same({ alg = "RS256", kid = "rsa1", typ = "JWT", x5t = "abc", ext = { n = 1 } }, h)
        h.ext.n, h.kid = 2, "rsa2"
      end
    end)

    it("the default URLs and issuers are Google's", function()
      assert.are.equal("https://www.googleapis.com/oauth2/v1/certs", id_token.OAUTH2_CERTS_URL)
      assert.are.equal("https://www.gstatic.com/iap/verify/public_key-jwk", id_token.IAP_CERTS_URL)
      assert.are.equal("https://www.googleapis.com/robot/v1/metadata/x509/"
        .. "securetoken@system.gserviceaccount.com", id_token.FIREBASE_CERTS_URL)
      assert.are.same({ "accounts.google.com", "https://accounts.google.com" },
        id_token.GOOGLE_ISSUERS)
    end)
  end)
end)
