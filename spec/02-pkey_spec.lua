-- Keys and signatures of gauth.core, judged by the openssl CLI both ways:
-- what `openssl dgst -sign` makes gauth verifies, what gauth makes
-- `openssl dgst -verify` accepts.
local core = require "gauth.core"
local helpers = require "helpers"
local cjson = require "cjson"

local dir = helpers.tmpdir()

local function openssl(args)
  local ok = os.execute("openssl " .. args .. " >/dev/null 2>&1")
  assert(ok == true or ok == 0, "openssl " .. args)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
  return path
end

local function gen(name, args)
  local path = dir .. "/" .. name
  openssl(args .. " -out " .. path)
  return read(path), path
end

describe("gauth.core keys", function()
  local rsa8, rsa8_path, rsa1, ec8, sec1, ec_pub, rsa_pub, cert
  lazy_setup(function()
    rsa8, rsa8_path = gen("rsa8.pem", "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048")
    rsa1 = gen("rsa1.pem", "rsa -traditional -in " .. rsa8_path)
    ec8 = gen("ec8.pem", "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256")
    sec1 = gen("sec1.pem", "ec -in " .. dir .. "/ec8.pem")
    ec_pub = gen("ec_pub.pem", "pkey -pubout -in " .. dir .. "/ec8.pem")
    rsa_pub = gen("rsa_pub.pem", "pkey -pubout -in " .. rsa8_path)
    cert = gen("cert.pem", "req -x509 -new -key " .. rsa8_path ..
      " -subj /CN=gauth-test -days 1")
  end)

  it("loads RSA in PKCS#8 and PKCS#1 and EC P-256 in PKCS#8 and SEC1", function()
    assert.matches("BEGIN PRIVATE KEY", rsa8)
    assert.matches("BEGIN RSA PRIVATE KEY", rsa1)
    assert.matches("BEGIN EC PRIVATE KEY", sec1)
    for _, c in ipairs({ { rsa8, "RSA", 2048 }, { rsa1, "RSA", 2048 },
                         { ec8, "EC", 256 }, { sec1, "EC", 256 } }) do
      local k, err = core.load_private_key(c[1])
      assert.is_nil(err)
      assert.are.equal(c[2], k:type())
      assert.are.equal(c[3], k:bits())
      assert.is_true(k:is_private())
    end
  end)

  it("loads public keys and certificates for verification", function()
    for _, pem in ipairs({ rsa_pub, ec_pub, cert, rsa8 }) do
      local k, err = core.load_public_key(pem)
      assert.is_nil(err)
      assert.is_true(core.is_key(k))
    end
    assert.is_false(core.load_public_key(rsa_pub):is_private())
  end)

  it("loads a PKCS#1 RSA PUBLIC KEY", function()
    local pem = gen("rsa_pub1.pem", "rsa -RSAPublicKey_out -in " .. rsa8_path)
    assert.matches("BEGIN RSA PUBLIC KEY", pem)
    local k = assert(core.load_public_key(pem))
    assert.are.equal("RSA", k:type())
  end)

  it("signs RS256 exactly as `openssl dgst -sha256 -sign` does", function()
    local key = assert(core.load_private_key(rsa8))
    local data = "header.payload with bytes \0\1\2\255"
    write(dir .. "/data.bin", data)
    openssl("dgst -sha256 -sign " .. rsa8_path .. " -out " .. dir ..
      "/sig.bin " .. dir .. "/data.bin")
    assert.are.equal(read(dir .. "/sig.bin"), key:sign("RS256", data))
  end)

  it("makes ES256 signatures that openssl verifies once put in DER", function()
    local key = assert(core.load_private_key(ec8))
    local data = "es256 input"
    local sig = assert(key:sign("ES256", data))
    assert.are.equal(64, #sig)
    -- JOSE r||s -> DER ECDSA-Sig-Value, for the openssl CLI
    local function int(b)
      b = b:gsub("^%z+", "")
      if b:byte(1) >= 0x80 then b = "\0" .. b end
      return "\2" .. string.char(#b) .. b
    end
    local body = int(sig:sub(1, 32)) .. int(sig:sub(33))
    write(dir .. "/es.der", "\48" .. string.char(#body) .. body)
    write(dir .. "/es.txt", data)
    local ok = os.execute("openssl dgst -sha256 -verify " .. dir ..
      "/ec_pub.pem -signature " .. dir .. "/es.der " .. dir ..
      "/es.txt >/dev/null 2>&1")
    assert.is_true(ok == true or ok == 0)
  end)

  -- DER ECDSA-Sig-Value (openssl's form) -> JOSE r||s, 32 bytes each.
  local function der_to_jose(der)
    local pos = 3   -- after SEQUENCE, length (< 128 for P-256)
    local out = {}
    for i = 1, 2 do
      assert(der:byte(pos) == 2, "INTEGER")
      local len = der:byte(pos + 1)
      local int = der:sub(pos + 2, pos + 1 + len):gsub("^%z+", "")
      out[i] = ("\0"):rep(32 - #int) .. int
      pos = pos + 2 + len
    end
    return out[1] .. out[2]
  end

  -- Messages of several lengths and every byte value.
  local function messages()
    local all = {}
    for i = 0, 255 do all[#all + 1] = string.char(i) end
    all = table.concat(all)
    return { "", "x", all, all:rep(40) .. "tail" }
  end

  it("verifies RS256 and ES256 signatures made by `openssl dgst -sign`, and refuses them altered", function()
    local pubs = { RS256 = assert(core.load_public_key(rsa_pub)), ES256 = assert(core.load_public_key(ec_pub)) }
    for i, data in ipairs(messages()) do
      local file = write(dir .. "/judge" .. i .. ".bin", data)
      for alg, key_path in pairs({ RS256 = rsa8_path, ES256 = dir .. "/ec8.pem" }) do
        local sig_path = dir .. "/judge" .. i .. "." .. alg .. ".sig"
        openssl("dgst -sha256 -sign " .. key_path .. " -out " .. sig_path .. " " .. file)
        local sig = read(sig_path)
        if alg == "ES256" then sig = der_to_jose(sig) end
        assert.is_true(pubs[alg]:verify(alg, data, sig), alg .. " of " .. #data .. " bytes")
        assert.is_false(pubs[alg]:verify(alg, data .. "!", sig), alg .. " altered data")
        local flipped = string.char((sig:byte(10) + 1) % 256)
        assert.is_false(pubs[alg]:verify(alg, data, sig:sub(1, 9) .. flipped .. sig:sub(11)),
          alg .. " altered signature")
      end
    end
  end)

  it("makes RS256 signatures that `openssl dgst -verify` accepts, and only for their data", function()
    local key = assert(core.load_private_key(rsa8))
    for i, data in ipairs(messages()) do
      local file = write(dir .. "/rs" .. i .. ".bin", data)
      local sig = write(dir .. "/rs" .. i .. ".sig", assert(key:sign("RS256", data)))
      local ok = os.execute("openssl dgst -sha256 -verify " .. dir .. "/rsa_pub.pem -signature "
        .. sig .. " " .. file .. " >/dev/null 2>&1")
      assert.is_true(ok == true or ok == 0, "RS256 of " .. #data .. " bytes")
      write(file, data .. "!")
      ok = os.execute("openssl dgst -sha256 -verify " .. dir .. "/rsa_pub.pem -signature "
        .. sig .. " " .. file .. " >/dev/null 2>&1")
      assert.is_false(ok == true or ok == 0, "openssl refuses altered data")
    end
  end)

  it("verifies good signatures and rejects bad ones with false", function()
    for _, c in ipairs({ { rsa8, rsa_pub, "RS256" }, { ec8, ec_pub, "ES256" } }) do
      local priv = assert(core.load_private_key(c[1]))
      local pub = assert(core.load_public_key(c[2]))
      local sig = priv:sign(c[3], "message")
      assert.is_true(pub:verify(c[3], "message", sig))
      assert.is_false(pub:verify(c[3], "messagE", sig))
      assert.is_false(pub:verify(c[3], "message", sig:sub(2)))
      assert.is_false(pub:verify(c[3], "message", ""))
    end
  end)

  it("refuses an algorithm that does not fit the key", function()
    local priv = assert(core.load_private_key(rsa8))
    local sig, err = priv:sign("ES256", "x")
    assert.is_nil(sig)
    assert.are.equal("gauth.core: sign: algorithm does not match the key type", err)
    sig, err = priv:sign("HS256", "x")
    assert.is_nil(sig)
    assert.matches("unsupported algorithm", err)
    local ok
    ok, err = priv:verify("ES256", "x", "y")
    assert.is_nil(ok)
    assert.matches("does not match", err)
    local pub = assert(core.load_public_key(rsa_pub))
    sig, err = pub:sign("RS256", "x")
    assert.is_nil(sig)
    assert.matches("public key cannot sign", err)
  end)

  describe("bad input", function()
    local function refused(pem, pattern, loader)
      local k, err = (loader or core.load_private_key)(pem)
      assert.is_nil(k)
      assert.is_string(err)
      assert.matches("^gauth.core: load [%a ]+ key: ", err)
      assert.matches(pattern, err)
      return err
    end

    it("names empty, garbage and truncated PEM", function()
      refused("", "empty input")
      refused("garbage", "no PEM header")
      refused(rsa8:sub(1, 400), "truncated PEM")
      refused("\0\1\2", "NUL byte")
      refused(rsa8:gsub("MII", "M!I", 1), "")
    end)

    it("names a key with escaped newlines left from JSON", function()
      refused((rsa8:gsub("\n", "\\n")), "literal \\n")
    end)

    it("names an encrypted key", function()
      local enc = gen("enc.pem", "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -aes256 -pass pass:secret")
      refused(enc, "encrypted")
      local legacy = gen("legacy_enc.pem", "rsa -traditional -aes256 -passout pass:x -in " .. rsa8_path)
      refused(legacy, "encrypted")
    end)

    it("names a public key or certificate given as private", function()
      refused(rsa_pub, "public key or certificate")
      refused(cert, "public key or certificate")
    end)

    it("names DSA, Ed25519, short RSA and other curves", function()
      refused(gen("ed.pem", "genpkey -algorithm ed25519"), "Ed25519")
      openssl("genpkey -genparam -algorithm DSA -pkeyopt dsa_paramgen_bits:1024 -out " .. dir .. "/dsap.pem")
      refused(gen("dsa.pem", "genpkey -paramfile " .. dir .. "/dsap.pem"), "DSA")
      refused(gen("rsa1024.pem", "genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024"), "2048")
      refused(gen("p384.pem", "genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-384"), "P%-256")
    end)

    it("refuses garbage as a public key or DER", function()
      refused("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        "", core.load_public_key)
      local k, err = core.load_public_der("\48\1\0")
      assert.is_nil(k)
      assert.matches("^gauth.core: load public key: ", err)
    end)

    it("leaves no error behind in OpenSSL's queue", function()
      refused("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", "")
      -- the next good operation must not report the stale error
      local k = assert(core.load_private_key(rsa8))
      assert.is_string(k:sign("RS256", "x"))
    end)

    it("raises on wrong argument types", function()
      assert.has_error(function() core.load_private_key(nil) end,
        "bad argument #1 to 'load_private_key' (string expected, got nil)")
      assert.has_error(function() core.load_public_key({}) end,
        "bad argument #1 to 'load_public_key' (string expected, got table)")
      local k = assert(core.load_private_key(rsa8))
      assert.has_error(function() k:sign("RS256") end, "bad argument #2 to 'sign' (string expected, got no value)")
      assert.has_error(function() k.sign({}, "RS256", "x") end,
        "bad argument #1 to 'sign' (gauth.Key expected, got table)")
    end)
  end)

  it("never shows key material in tostring", function()
    local k = assert(core.load_private_key(rsa8))
    local s = tostring(k)
    assert.matches("^gauth.Key %(RSA 2048, private%)", s)
    local body = rsa8:match("KEY%-%-%-%-%-\n(.-)\n")
    assert.is_nil(s:find(body:sub(1, 16), 1, true))
  end)

  it("closes idempotently and refuses use after close", function()
    local k = assert(core.load_private_key(rsa8))
    k:close()
    k:close()
    assert.matches("closed", tostring(k))
    assert.has_error(function() k:sign("RS256", "x") end, "calling 'sign' on bad self (key is closed)")
    assert.has_error(function() k:type() end, "calling 'type' on bad self (key is closed)")
    collectgarbage()
  end)

  it("exports the public half as PEM that openssl reads", function()
    local k = assert(core.load_private_key(ec8))
    local pem = k:public_pem()
    assert.matches("BEGIN PUBLIC KEY", pem)
    assert.are.equal(read(dir .. "/ec_pub.pem"), pem)
  end)
end)

-- JWK parameters -> keys, judged by PyJWT's own JWK export and the openssl
-- CLI's signatures.
describe("gauth.core.load_jwk", function()
  local rsa, ec, rsa_jwk, ec_jwk
  local function jwk_of(pub_path)
    local ok, out = helpers.sh("/usr/bin/python3 -c " .. helpers.shell_quote([[
import sys, json
from jwt.algorithms import RSAAlgorithm, ECAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
k = serialization.load_pem_public_key(open(sys.argv[1], 'rb').read())
alg = ECAlgorithm if isinstance(k, ec.EllipticCurvePublicKey) else RSAAlgorithm
print(alg.to_jwk(k))]]) .. " " .. helpers.shell_quote(pub_path))
    assert(ok, out)
    return assert(helpers.json_decode(out))
  end
  lazy_setup(function()
    rsa = helpers.make_rsa_key()
    ec = helpers.make_ec_key()
    rsa_jwk, ec_jwk = jwk_of(rsa.public_path), jwk_of(ec.public_path)
  end)

  local function openssl_sig(key, data)
    local input = helpers.tmpname("data")
    helpers.write_file(input, data)
    local sig = helpers.tmpname("sig")
    helpers.sh("openssl dgst -sha256 -sign " .. helpers.shell_quote(key.path)
      .. " -out " .. sig .. " " .. input)
    return assert(helpers.read_file(sig))
  end

  it("loads RSA n/e and verifies an openssl RS256 signature", function()
    local k = assert(core.load_jwk("RSA", rsa_jwk.n, rsa_jwk.e))
    assert.are.equal("RSA", k:type())
    assert.are.equal(2048, k:bits())
    assert.is_false(k:is_private())
    assert.are.equal(core.load_public_key(rsa.public_pem):public_pem(), k:public_pem())
    local sig = openssl_sig(rsa, "signed part")
    assert.is_true(k:verify("RS256", "signed part", sig))
    assert.is_false(k:verify("RS256", "signed parT", sig))
    -- a prefix of the data, as id_token passes the token itself
    assert.is_true(k:verify("RS256", "signed part.sig", sig, #"signed part"))
    assert.is_false(k:verify("RS256", "signed part.sig", sig, #"signed par"))
    assert.has_error(function() k:verify("RS256", "x", sig, 2) end,
      "bad argument #4 to 'verify' (length outside the data)")
  end)

  it("loads EC P-256 x/y and verifies a JOSE ES256 signature", function()
    local k = assert(core.load_jwk("EC", ec_jwk.x, ec_jwk.y, "P-256"))
    assert.are.equal("EC", k:type())
    assert.are.equal(core.load_public_key(ec.public_pem):public_pem(), k:public_pem())
    -- openssl makes DER; PyJWT's token carries JOSE r||s
    local token = helpers.pyjwt_encode({ a = 1 }, ec.private_pem)
    local h, p, s = token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    local sig = core.b64url_decode(s)
    assert.are.equal(64, #sig)
    assert.is_true(k:verify("ES256", h .. "." .. p, sig))
    assert.is_false(k:verify("ES256", h .. "." .. p .. "x", sig))
    local v, err = k:verify("RS256", "x", sig)
    assert.is_nil(v)
    assert.matches("algorithm does not match the key type", err)
  end)

  -- About one P-256 key in 64 has a coordinate below 2^248; PyJWT 2.6's
  -- to_jwk then writes 31 bytes (the integer), which gauth must take as
  -- the same point. Python finds such a key and signs with it.
  it("loads a coordinate written without its leading zero byte (PyJWT 2.6)", function()
    local ok, out = helpers.sh("/usr/bin/python3 -c " .. helpers.shell_quote([[
import json, base64
import jwt
from jwt.algorithms import ECAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
while True:
    k = ec.generate_private_key(ec.SECP256R1())
    if k.public_key().public_numbers().x < (1 << 248):
        break
j = json.loads(ECAlgorithm.to_jwk(k.public_key()))
x = j["x"] + "=" * (-len(j["x"]) % 4)
n = len(base64.urlsafe_b64decode(x))
full = base64.urlsafe_b64encode(k.public_key().public_numbers().x.to_bytes(32, "big")).rstrip(b"=").decode()
print(json.dumps({"x": j["x"], "y": j["y"], "x_bytes": n, "x_full": full,
  "token": jwt.encode({"a": 1}, k, algorithm="ES256")}))]]))
    assert(ok, out)
    local c = assert(helpers.json_decode(out))
    assert.is_true(c.x_bytes < 32)
    local k, err = core.load_jwk("EC", c.x, c.y, "P-256")
    assert.is_nil(err)
    local same = assert(core.load_jwk("EC", c.x_full, c.y, "P-256"))
    assert.are.equal(same:public_pem(), k:public_pem())
    local h, p, s = c.token:match("^([^.]+)%.([^.]+)%.([^.]+)$")
    assert.is_true(k:verify("ES256", h .. "." .. p, core.b64url_decode(s)))
    assert.is_false(k:verify("ES256", h .. "." .. p .. "x", core.b64url_decode(s)))
  end)

  it("refuses bad parameters with a message, never a key", function()
    local cases = {
      { { "RSA", "AQAB", "AQAB" }, "shorter than 2048 bits" },
      { { "RSA", "!!!", "AQAB" }, "n is not base64url" },
      { { "RSA", rsa_jwk.n, "" }, "e is not base64url" },
      { { "RSA", ("A"):rep(2000), "AQAB" }, "n is not base64url of at most 1024 bytes" },
      { { "EC", ec_jwk.x, ec_jwk.y, "P-384" }, "not on curve P%-256" },
      { { "EC", ec_jwk.x, ec_jwk.y }, "not on curve P%-256" },
      { { "EC", ec_jwk.x, ec_jwk.x, "P-256" }, "not a valid public key" },
      { { "EC", ec_jwk.x, "AAAA", "P-256" }, "not a valid public key" },
      { { "EC", ec_jwk.x, ec_jwk.y .. "AAAA", "P-256" },
        "x and y must be base64url of at most 32 bytes each" },
      { { "EC", "", ec_jwk.y, "P-256" }, "x and y must be base64url of at most 32 bytes each" },
      { { "oct", "AAAA", "AAAA" }, "unsupported kty" },
    }
    for _, c in ipairs(cases) do
      local k, err = core.load_jwk((table.unpack or unpack)(c[1]))
      assert.is_nil(k)
      assert.matches("^gauth.core: load jwk: .*" .. c[2], err)
    end
    assert.has_error(function() core.load_jwk("RSA", nil, "AQAB") end,
      "bad argument #2 to 'load_jwk' (string expected, got nil)")
  end)
end)

-- Key:verify_jws: whole compact tokens, signed by PyJWT and by the openssl
-- CLI, checked in one call; its refusals are jws_split's, word for word.
describe("gauth.Key:verify_jws", function()
  local rsa, ec, other
  lazy_setup(function()
    rsa = helpers.make_rsa_key()
    ec = helpers.make_ec_key()
    other = helpers.make_rsa_key()
  end)

  -- The signature the openssl CLI makes of `signed` with the RSA key.
  local function openssl_sign(signed, md)
    local input, sig = helpers.tmpname("data"), helpers.tmpname("sig")
    helpers.write_file(input, signed)
    assert(helpers.sh("openssl dgst -" .. (md or "sha256") .. " -sign "
      .. helpers.shell_quote(rsa.path) .. " -out " .. sig .. " " .. input))
    return assert(helpers.read_file(sig))
  end

  it("verifies PyJWT's RS256 and ES256 tokens and returns the payload", function()
    local claims = { iss = "https://accounts.google.com", aud = "x", n = 1 }
    for _, c in ipairs({ { rsa, "RS256" }, { ec, "ES256" } }) do
      local token = helpers.pyjwt_encode(claims, c[1].private_pem, { kid = "k1" })
      local k = assert(core.load_public_key(c[1].public_pem))
      local payload, ok = k:verify_jws(c[2], token)
      assert.is_true(ok, c[2])
      assert.are.same(claims, helpers.json_decode(payload))
      assert.are.equal(select(2, core.jws_split(token)), payload)
      -- the same payload text from a token whose signature fails
      local p2, ok2 = k:verify_jws(c[2], token:sub(1, -3) .. (token:sub(-2) == "AA" and "QA" or "AA"))
      assert.are.equal(payload, p2)
      assert.is_false(ok2, c[2])
    end
  end)

  it("verifies a token signed by the openssl CLI, and only with its key", function()
    local enc = core.b64url_encode
    local signed = enc('{"alg":"RS256","kid":"k"}') .. "." .. enc('{"sub":"1"}')
    local token = signed .. "." .. enc(openssl_sign(signed))
    local payload, ok = assert(core.load_public_key(rsa.public_pem)):verify_jws("RS256", token)
    assert.are.equal('{"sub":"1"}', payload)
    assert.is_true(ok)
    payload, ok = assert(core.load_public_key(other.public_pem)):verify_jws("RS256", token)
    assert.are.equal('{"sub":"1"}', payload)
    assert.is_false(ok)
    -- the signed part altered by one byte of the payload
    local altered = enc('{"alg":"RS256","kid":"k"}') .. "." .. enc('{"sub":"2"}')
      .. "." .. token:match("[^.]+$")
    payload, ok = assert(core.load_public_key(rsa.public_pem)):verify_jws("RS256", altered)
    assert.are.equal('{"sub":"2"}', payload)
    assert.is_false(ok)
  end)

  it("refuses RSA signatures made with another digest over the same signed part", function()
    -- The DigestInfo inside the signature must be SHA-256's, whole: openssl
    -- signs the same bytes with SHA-1, SHA-384 and SHA-512.
    local enc = core.b64url_encode
    local signed = enc('{"alg":"RS256"}') .. "." .. enc('{"sub":"1"}')
    local k = assert(core.load_public_key(rsa.public_pem))
    for _, md in ipairs({ "sha256", "sha1", "sha384", "sha512" }) do
      local raw = openssl_sign(signed, md)
      local payload, ok = k:verify_jws("RS256", signed .. "." .. enc(raw))
      assert.are.equal('{"sub":"1"}', payload)
      assert.are.equal(md == "sha256", ok, md)
      assert.are.equal(md == "sha256", k:verify("RS256", signed, raw), md)
    end
  end)

  it("refuses tokens of the wrong shape exactly as jws_split does, never quoting them", function()
    local k = assert(core.load_public_key(rsa.public_pem))
    local secret = "c2VjcmV0c2VjcmV0"
    local cases = {
      secret, secret .. "." .. secret, "a.b.c.d", secret .. "!.e30.e30", "e30.e3\0.e30",
      "e30.e30.A", ("A"):rep(5000) .. ".e30.e30", "e30.e30." .. ("A"):rep(2000),
      "e30." .. ("A"):rep(1024 * 1024) .. ".e30", "",
    }
    for _, t in ipairs(cases) do
      for _, claims in ipairs({ false, true }) do
        local p, err = k:verify_jws("RS256", t, claims)
        assert.is_nil(p)
        assert.matches("^gauth.core: jws: malformed: ", err)
        assert.are.equal(select(2, core.jws_split(t)), err)
        assert.is_nil(err:find(secret, 1, true))
      end
    end
    -- shape right, signature of another length: a failed check, not an error
    local p, ok = k:verify_jws("RS256", "e30.e30.c2ln")
    assert.are.equal("{}", p)
    assert.is_false(ok)
  end)

  it("gives the claims as cjson's table with claims = true, the text where json_object declines", function()
    local claims = { iss = "https://accounts.google.com", aud = { "x", "y" }, sub = "1",
      email_verified = true, iat = 1796578892, exp = 1796582492.5,
      firebase = { identities = { email = { "a@b.c" } }, sign_in_provider = "password" },
      name = "Jos\195\169 \226\130\172", none = cjson.null }
    local token = helpers.pyjwt_encode(claims, rsa.private_pem, { kid = "k1" })
    local k = assert(core.load_public_key(rsa.public_pem))
    local got, ok = k:verify_jws("RS256", token, true)
    assert.is_true(ok)
    assert.is_table(got)
    local text = select(2, core.jws_split(token))
    assert.are.same(cjson.decode(text), got)
    assert.are.equal(cjson.null, got.none)
    -- a bad signature: the claims still, and false
    local bad = token:sub(1, -3) .. (token:sub(-2) == "AA" and "QA" or "AA")
    got, ok = k:verify_jws("RS256", bad, true)
    assert.is_table(got)
    assert.is_false(ok)
    -- a payload json_object declines (cjson's hex): the text, for cjson
    local enc = core.b64url_encode
    local signed = enc('{"alg":"RS256"}') .. "." .. enc('{"exp":0x10,"s":"\\u00e9"}')
    got, ok = k:verify_jws("RS256", signed .. "." .. enc(openssl_sign(signed)), true)
    assert.are.equal('{"exp":0x10,"s":"\\u00e9"}', got)
    assert.is_true(ok)
    -- claims past the 4 KiB decoded on the C stack: the text, for cjson
    local big = '{"sub":"1","pad":"' .. ("x"):rep(5000) .. '"}'
    signed = enc('{"alg":"RS256"}') .. "." .. enc(big)
    got, ok = k:verify_jws("RS256", signed .. "." .. enc(openssl_sign(signed)), true)
    assert.are.equal(big, got)
    assert.is_true(ok)
  end)

  it("refuses an algorithm that does not fit the key, and raises for bad arguments", function()
    local token = helpers.pyjwt_encode({ a = 1 }, ec.private_pem)
    local k = assert(core.load_public_key(ec.public_pem))
    local p, err = k:verify_jws("RS256", token)
    assert.is_nil(p)
    assert.are.equal("gauth.core: verify: algorithm does not match the key type", err)
    p, err = k:verify_jws("HS256", token)
    assert.is_nil(p)
    assert.are.equal("gauth.core: verify: unsupported algorithm (RS256, ES256)", err)
    assert.error_matches(function() k:verify_jws("ES256", nil) end,
      "bad argument #2 to 'verify_jws' (string expected, got nil)", 1, true)
    k:close()
    assert.error_matches(function() k:verify_jws("ES256", token) end,
      "key is closed", 1, true)
  end)
end)
