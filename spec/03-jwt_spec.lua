-- gauth.jwt: tokens gauth signs are judged by PyJWT; tokens PyJWT signs are
-- read by gauth.
local jwt = require "gauth.jwt"
local core = require "gauth.core"
local errors = require "gauth.errors"
local cjson = require "cjson"
local helpers = require "helpers"

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  p:close()
  return out
end

-- PyJWT signs `claims` with `pem` (an independent signer).
local function pyjwt_encode(claims, pem, alg, headers)
  return helpers.pyjwt_encode(claims, pem, { alg = alg, headers = headers })
end

local function fromhex(h)
  return (h:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

describe("gauth.jwt", function()
  local rsa, ec, now
  lazy_setup(function()
    rsa = helpers.make_rsa_key()
    ec = helpers.make_ec_key()
    now = os.time()
  end)

  describe("load_key", function()
    it("parses a PEM private key once", function()
      local key, err = jwt.load_key(rsa.private_pem)
      assert.is_nil(err)
      assert.is_true(core.is_key(key))
    end)

    it("returns an error object for a bad key", function()
      local key, msg, err = jwt.load_key("-----BEGIN PRIVATE KEY-----\nAA\n")
      assert.is_nil(key)
      helpers.assert_failure(msg, err)
      assert.is_true(errors.is(err))
      assert.are.equal("jwt", err.module)
      assert.are.equal("load key", err.step)
      assert.matches("^gauth.jwt: load key: .*truncated PEM", tostring(err))
    end)

    it("raises on a non-string", function()
      assert.has_error(function() jwt.load_key(42) end,
        "gauth.jwt: load_key: pem must be a string")
    end)
  end)

  describe("encode", function()
    it("signs RS256 tokens that PyJWT verifies, with kid and typ", function()
      local key = assert(jwt.load_key(rsa.private_pem))
      local claims = { iss = "sa@example.iam.gserviceaccount.com", aud = "https://oauth2.googleapis.com/token",
                       scope = "a b", iat = now, exp = now + 3600 }
      local token, err = jwt.encode(claims, key, { kid = "key-1" })
      assert.is_nil(err)
      local verified = assert(helpers.pyjwt_verify(token, rsa.public_pem,
        { audience = claims.aud }))
      assert.are.same(claims, verified)
      local header = cjson.decode(core.b64url_decode(token:match("^[^.]+")))
      assert.are.same({ alg = "RS256", typ = "JWT", kid = "key-1" }, header)
    end)

    it("signs ES256 tokens that PyJWT verifies", function()
      local token = assert(jwt.encode({ sub = "x", exp = now + 60 },
        assert(jwt.load_key(ec.private_pem)), { alg = "ES256" }))
      local verified = assert(helpers.pyjwt_verify(token, ec.public_pem,
        { algorithms = { "ES256" } }))
      assert.are.equal("x", verified.sub)
    end)

    it("accepts a PEM string in place of a loaded key", function()
      local token = assert(jwt.encode({ n = 1 }, rsa.private_pem))
      assert.are.equal(1, helpers.pyjwt_verify(token, rsa.public_pem).n)
    end)

    it("returns an error for a bad PEM and for a key of the wrong type", function()
      local token, msg, err = jwt.encode({ n = 1 }, "not a key")
      assert.is_nil(token)
      helpers.assert_failure(msg, err)
      assert.matches("^gauth.jwt: load key: .*no PEM header", tostring(err))
      token, msg, err = jwt.encode({ n = 1 }, assert(jwt.load_key(rsa.private_pem)), { alg = "ES256" })
      assert.is_nil(token)
      helpers.assert_failure(msg, err)
      assert.matches("^gauth.jwt: sign: .*does not match the key type", tostring(err))
    end)

    it("raises on programming errors", function()
      local key = assert(jwt.load_key(rsa.private_pem))
      assert.has_error(function() jwt.encode("claims", key) end, "gauth.jwt: encode: claims must be a table")
      assert.has_error(function() jwt.encode({}, key, { alg = "none" }) end, "gauth.jwt: encode: unsupported alg none")
      assert.has_error(function() jwt.encode({}, key, { alg = "HS256" }) end,
        "gauth.jwt: encode: unsupported alg HS256")
      assert.has_error(function() jwt.encode({}, 42) end, "gauth.jwt: encode: key must be a key object or a PEM string")
      assert.has_error(function() jwt.encode({}, key, { kid = 7 }) end, "gauth.jwt: encode: kid must be a string")
    end)
  end)

  describe("decode", function()
    local token
    lazy_setup(function()
      token = pyjwt_encode({ iss = "issuer", aud = "aud-1", iat = now, exp = now + 600 },
        rsa.private_pem, "RS256", { kid = "k1" })
    end)

    it("verifies a PyJWT token against a PEM public key", function()
      local claims, header = jwt.decode(token, { keys = rsa.public_pem })
      assert.are.equal("issuer", claims.iss)
      assert.are.equal("k1", header.kid)
    end)

    it("picks the key by kid from a table, and reads certificates", function()
      local claims = assert(jwt.decode(token, { keys = { other = ec.public_pem, k1 = rsa.public_pem } }))
      assert.are.equal("aud-1", claims.aud)
    end)

    it("verifies against a JWKS (RSA n/e and EC x/y)", function()
      local mod = sh("openssl rsa -pubin -noout -modulus -in " .. rsa.public_path):match("Modulus=(%x+)")
      local jwks = { keys = { { kty = "RSA", kid = "k1", e = "AQAB",
                                n = core.b64url_encode(fromhex(mod)) } } }
      assert.are.equal("issuer", (assert(jwt.decode(token, { keys = jwks }))).iss)

      local der = sh("openssl pkey -pubin -outform DER -in " .. ec.public_path)
      assert.are.equal(91, #der)
      local ectoken = pyjwt_encode({ a = 1 }, ec.private_pem, "ES256")
      local ecjwks = { keys = { { kty = "EC", crv = "P-256",
        x = core.b64url_encode(der:sub(28, 59)), y = core.b64url_encode(der:sub(60, 91)) } } }
      assert.are.equal(1, (assert(jwt.decode(ectoken, { keys = ecjwks }))).a)
    end)

    it("checks aud, iss, exp, nbf and iat with leeway", function()
      assert.truthy(jwt.decode(token, { keys = rsa.public_pem, audience = "aud-1", issuer = "issuer" }))
      assert.truthy(jwt.decode(token, { keys = rsa.public_pem, audience = { "x", "aud-1" } }))
      local function refused(opts, pattern, t)
        opts.keys = opts.keys or rsa.public_pem
        local c, msg, err = jwt.decode(t or token, opts)
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        assert.is_true(errors.is(err))
        assert.matches(pattern, tostring(err))
      end
      refused({ audience = "other" }, "audience mismatch")
      refused({ issuer = "other" }, "issuer mismatch")
      refused({ now = now + 601 }, "token expired")
      assert.truthy(jwt.decode(token, { keys = rsa.public_pem, now = now + 601, leeway = 5 }))
      refused({ now = now - 10 }, "issued in the future")
      local nbf = pyjwt_encode({ nbf = now + 100 }, rsa.private_pem, "RS256")
      refused({}, "not yet valid", nbf)
      local expired = pyjwt_encode({ exp = now - 100 }, rsa.private_pem, "RS256")
      refused({}, "^gauth.jwt: claims: token expired", expired)
      local bad_exp = pyjwt_encode({ exp = "soon" }, rsa.private_pem, "RS256")
      refused({}, "exp is not a number", bad_exp)
    end)

    it("refuses a tampered payload", function()
      local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
      local claims = cjson.decode(core.b64url_decode(p))
      claims.iss = "evil"
      local forged = h .. "." .. core.b64url_encode(cjson.encode(claims)) .. "." .. s
      local c, msg, err = jwt.decode(forged, { keys = rsa.public_pem })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.are.equal("gauth.jwt: verify: signature verification failed", tostring(err))
    end)

    it("refuses alg none, HS256 and algorithms not allowed", function()
      local p = token:match("^[^.]+%.([^.]+)%.")
      local none = core.b64url_encode('{"alg":"none","typ":"JWT"}') .. "." .. p .. "."
      local c, msg, err = jwt.decode(none, { keys = rsa.public_pem })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("algorithm none is not accepted", tostring(err))
      -- An HMAC token signed with the public key as secret: the classic
      -- algorithm-confusion attack.
      local hs = core.b64url_encode('{"alg":"HS256","typ":"JWT"}') .. "." .. p .. "."
        .. core.b64url_encode(core.sha256(rsa.public_pem))
      c, msg, err = jwt.decode(hs, { keys = rsa.public_pem })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("algorithm HS256 is not accepted", tostring(err))
      c, msg, err = jwt.decode(token, { keys = rsa.public_pem, algorithms = { "ES256" } })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("not allowed", tostring(err))
    end)

    it("refuses a token whose kid matches no key", function()
      local c, msg, err = jwt.decode(token, { keys = { k2 = rsa.public_pem } })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("no key fits", tostring(err))
    end)

    it("refuses malformed tokens", function()
      for _, t in ipairs({ "", "a.b", "a.b.c.d", "!!.e30.", "e30.!!.", token .. "!" }) do
        local c, msg, err = jwt.decode(t, { keys = rsa.public_pem })
        assert.is_nil(c)
        helpers.assert_failure(msg, err)
        assert.are.equal("jwt", err.module)
      end
      local c, msg, err = jwt.decode(core.b64url_encode("[1]") .. ".e30.", { keys = rsa.public_pem })
      assert.is_nil(c)
      helpers.assert_failure(msg, err)
      assert.matches("header is not a JSON object", tostring(err))
    end)

    it("raises when keys are missing or not keys", function()
      assert.has_error(function() jwt.decode(token) end, "gauth.jwt: decode: opts with keys is required")
      assert.has_error(function() jwt.decode(token, {}) end, "gauth.jwt: decode: opts.keys is required")
      assert.has_error(function() jwt.decode(token, { keys = { 42 } }) end,
        "gauth.jwt: decode: opts.keys holds something that is not a key")
      assert.has_error(function() jwt.decode(nil, { keys = rsa.public_pem }) end,
        "gauth.jwt: decode: token must be a string")
    end)
  end)

  describe("jwk_to_key", function()
    it("refuses incomplete or unsupported JWKs", function()
      local k, msg, err = jwt.jwk_to_key({ kty = "RSA", n = "AQAB" })
      assert.is_nil(k)
      helpers.assert_failure(msg, err)
      assert.matches("needs n and e", tostring(err))
      k, msg, err = jwt.jwk_to_key({ kty = "oct", k = "AAAA" })
      assert.is_nil(k)
      helpers.assert_failure(msg, err)
      assert.matches("unsupported kty oct", tostring(err))
      k, msg, err = jwt.jwk_to_key({ kty = "EC", crv = "P-384", x = "AA", y = "AA" })
      assert.is_nil(k)
      helpers.assert_failure(msg, err)
      assert.matches("P%-256", tostring(err))
      assert.has_error(function() jwt.jwk_to_key("x") end, "gauth.jwt: jwk_to_key: jwk must be a table")
    end)
  end)
end)
