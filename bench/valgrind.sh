#!/bin/sh
# valgrind memcheck over the C core: 10,000 sign/verify rounds (ES256 every
# round, RS256 every tenth), key loads, bad input and HTTP handles; any leak
# or memory error fails.
set -e
cd "$(dirname "$0")/.."
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/rsa.pem" 2>/dev/null
openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/ec.pem" 2>/dev/null
cat > "$dir/rounds.lua" <<'LUA'
local core = require "gauth.core"
local jwt = require "gauth.jwt"
local dir = ...
local function read(p) local f = assert(io.open(p)); local s = f:read("*a"); f:close(); return s end
local rsa_pem, ec_pem = read(dir .. "/rsa.pem"), read(dir .. "/ec.pem")
local rsa, ec = assert(core.load_private_key(rsa_pem)), assert(core.load_private_key(ec_pem))
local ec_pub = assert(core.load_public_key(ec:public_pem()))
local rsa_pub = assert(core.load_public_key(rsa_pem))
-- the EC key's x/y and the RSA modulus as JWK parameters, read from the
-- DER public key (uncompressed point at the end; modulus after its header)
local function b64(s) return core.b64url_encode(s) end
local ec_der = core.b64url_decode((ec:public_pem():gsub("%-%-%-%-%-[^%-]+%-%-%-%-%-", ""):gsub("%s", ""):gsub("%+", "-"):gsub("/", "_"):gsub("=", "")))
local pt = ec_der:sub(-64)
x_b64, y_b64 = b64(pt:sub(1, 32)), b64(pt:sub(33, 64))
rsa_n = b64(string.rep("\xc3", 256))
for i = 1, 10000 do
  local data = "round " .. i
  local sig = assert(ec:sign("ES256", data))
  assert(ec_pub:verify("ES256", data, sig))
  assert(not ec_pub:verify("ES256", data .. "x", sig))
  if i % 10 == 0 then
    local s = assert(rsa:sign("RS256", data))
    assert(rsa_pub:verify("RS256", data, s))
    assert(jwt.decode(assert(jwt.encode({ i = i }, rsa)), { keys = rsa_pub }))
  end
  if i % 100 == 0 then
    assert(core.load_private_key(ec_pem)):close()
    assert(not core.load_private_key(rsa_pem:sub(1, 200)))
    assert(not core.load_public_key("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"))
    assert(core.b64url_decode(core.b64url_encode(data)) == data)
    assert(not core.b64url_decode(data))
    local h = core.http_new(); h:close(); h:close()
    core.http_new()
    -- header tables walked, kept, rebuilt and refused (a refused
    -- connection on loopback: no server needed)
    h = core.http_new()
    local o = { connect_timeout = 2 }
    for _, hd in ipairs({ { a = "b", ["X-N"] = i, r = { "x", 2 } }, { a = "b", ["X-N"] = i, r = { "x", 2 } },
                          { a = "c" }, { ["bad name"] = "v" }, { a = "x\ny" }, { r = { {} } } }) do
      local st, msg = h:perform("GET", "http://127.0.0.1:1/", hd, nil, o)
      assert(st == nil and msg ~= nil)
    end
    h:close()
  end
  if i % 50 == 0 then
    -- ID-token verification paths: JWK loading (good and bad), a bounded
    -- JWS split, and verify over a prefix of the token
    local tok = core.b64url_encode('{"alg":"ES256"}') .. "." .. core.b64url_encode('{"i":' .. i .. '}')
    local jws = tok .. "." .. core.b64url_encode(assert(ec:sign("ES256", tok)))
    local h, p, s, n = assert(core.jws_split(jws))
    assert(h and p and n == #tok)
    assert(ec_pub:verify("ES256", jws, s, n))
    assert(not ec_pub:verify("ES256", jws, s, n - 1))
    -- one-call verification, with the claims decoded in C and without
    local c, good = ec_pub:verify_jws("ES256", jws, true)
    assert(good == true and c.i == i)
    local t2, g2 = ec_pub:verify_jws("ES256", jws)
    assert(g2 == true and t2 == p)
    assert(not ec_pub:verify_jws("ES256", tok))
    assert(core.json_object('{"a":[1,{"b":"\\u00e9\\ud83d\\ude00"}],"n":null}').a[2].b == "\195\169\240\159\152\128")
    assert(core.json_object('{"a":0x10}') == nil)
    assert(core.json_object('{"a":' .. string.rep("[", 40) .. '}') == nil)
    assert(not core.jws_split(tok))
    assert(not core.jws_split(tok .. ".!!"))
    assert(not core.jws_split(string.rep("a", 70000) .. ".b.c"))
    local k = assert(core.load_jwk("EC", x_b64, y_b64, "P-256"))
    assert(k:verify("ES256", jws, s, n)); k:close(); k:close()
    assert(not core.load_jwk("EC", x_b64, x_b64, "P-256"))
    assert(not core.load_jwk("EC", "AAAA", y_b64, "P-256"))
    assert(core.load_jwk("RSA", rsa_n, "AQAB"))
    assert(not core.load_jwk("RSA", "", "AQAB"))
    assert(not core.load_jwk("OKP", "x", "y"))
  end
  if i % 1000 == 0 then collectgarbage() end
end
print("10000 rounds done")
LUA
for v in 5.4; do
  LUA_CPATH="build/$v/?.so;;" LUA_PATH="lua/?.lua;;" \
  valgrind --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect \
    --show-leak-kinds=definite,indirect -q lua$v "$dir/rounds.lua" "$dir"
done
echo "valgrind: clean (no errors, no definite or indirect leaks)"
