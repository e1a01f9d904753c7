--- JSON Web Tokens (JWS compact form) signed with RS256 or ES256.
-- Keys are parsed once by `load_key` and reused: parsing a PEM costs far
-- more than the signature itself.
-- @module gauth.jwt

local core = require "gauth.core"
local cjson = require "cjson.safe"
local errors = require "gauth.errors"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local find = string.find
local sub = string.sub
local b64url_encode = core.b64url_encode
local b64url_decode = core.b64url_decode
local is_key = core.is_key
local json_encode = cjson.encode
local json_decode = cjson.decode

local _M = { _VERSION = "0.1.0" }

-- Every failure below is `nil, msg, err` (see gauth.errors).
local function fail(step, message)
  return errors.fail("jwt", step, message)
end

local function wrap(step, err)
  return errors.fail_with("jwt", step, err)
end

--- Parse a PEM private key (RSA PKCS#1/PKCS#8 or EC P-256) for signing.
-- @tparam string pem
-- @return a key object | nil, msg, err
function _M.load_key(pem)
  if type(pem) ~= "string" then
    error("gauth.jwt: load_key: pem must be a string", 2)
  end
  local key, err = core.load_private_key(pem)
  if not key then return wrap("load key", err) end
  return key
end

--- Parse a PEM public key or certificate for verification.
-- @tparam string pem
-- @return a key object | nil, msg, err
function _M.load_public_key(pem)
  if type(pem) ~= "string" then
    error("gauth.jwt: load_public_key: pem must be a string", 2)
  end
  local key, err = core.load_public_key(pem)
  if not key then return wrap("load public key", err) end
  return key
end

--- Turn one JWK (RSA or EC P-256 public key) into a key object.
-- The parameters are decoded and checked in C (`gauth.core.load_jwk`).
-- @tparam table jwk
-- @return a key object | nil, msg, err
function _M.jwk_to_key(jwk)
  if type(jwk) ~= "table" then
    error("gauth.jwt: jwk_to_key: jwk must be a table", 2)
  end
  local kty = jwk.kty
  local a, b
  if kty == "RSA" then
    a, b = jwk.n, jwk.e
    if type(a) ~= "string" or type(b) ~= "string" then
      return fail("jwk", "RSA JWK needs n and e")
    end
  elseif kty == "EC" then
    if jwk.crv ~= "P-256" then return fail("jwk", "EC JWK must be on P-256") end
    a, b = jwk.x, jwk.y
    if type(a) ~= "string" or type(b) ~= "string" then
      return fail("jwk", "EC JWK needs x and y")
    end
  else
    return fail("jwk", "unsupported kty " .. tostring(kty))
  end
  local key, err = core.load_jwk(kty, a, b, jwk.crv)
  if not key then return wrap("jwk", err) end
  return key
end

local ALGS = { RS256 = "RSA", ES256 = "EC" }

-- Encoded headers, by alg and kid: the header is the same for every token a
-- credential signs, so encode it once.
local header_cache = {}
local header_cache_n = 0

local function encoded_header(alg, kid)
  local ck = kid and (alg .. "\0" .. kid) or alg
  local h = header_cache[ck]
  if h then return h end
  local json = '{"alg":"' .. alg .. '","typ":"JWT"'
  if kid then json = json .. ',"kid":' .. json_encode(kid) end
  h = b64url_encode(json .. "}")
  if header_cache_n > 256 then
    header_cache, header_cache_n = {}, 0
  end
  header_cache[ck] = h
  header_cache_n = header_cache_n + 1
  return h
end

--- Sign `claims` into a compact JWS.
-- @tparam table claims JSON-encodable claims
-- @param key a key from `load_key`, or a PEM string (parsed on every call)
-- @tparam[opt] table opts `alg` ("RS256" default, or "ES256"), `kid`
-- @return the token | nil, msg, err
function _M.encode(claims, key, opts)
  if type(claims) ~= "table" then
    error("gauth.jwt: encode: claims must be a table", 2)
  end
  local alg = opts and opts.alg or "RS256"
  local kid = opts and opts.kid
  if not ALGS[alg] then
    error("gauth.jwt: encode: unsupported alg " .. tostring(alg), 2)
  end
  if kid ~= nil and type(kid) ~= "string" then
    error("gauth.jwt: encode: kid must be a string", 2)
  end
  if type(key) == "string" then
    local err
    key, err = core.load_private_key(key)
    if not key then return wrap("load key", err) end
  elseif not is_key(key) then
    error("gauth.jwt: encode: key must be a key object or a PEM string", 2)
  end
  local payload, jerr = json_encode(claims)
  if not payload then return fail("encode", "claims are not JSON: " .. tostring(jerr)) end
  local input = encoded_header(alg, kid) .. "." .. b64url_encode(payload)
  local sig, err = key:sign(alg, input)
  if not sig then return wrap("sign", err) end
  return input .. "." .. b64url_encode(sig)
end

-- Keys given to decode, normalised: an array of { kid = , key = }.
local function normalise_keys(keys)
  local list = {}
  local function add(kid, k)
    if type(k) == "string" then
      local key, err = core.load_public_key(k)
      if not key then return wrap("load public key", err) end
      k = key
    elseif type(k) == "table" and k.kty then
      local key, err = errors.pair(_M.jwk_to_key(k))
      if not key then return errors.ret(err) end
      kid = kid or k.kid
      k = key
    elseif not is_key(k) then
      error("gauth.jwt: decode: opts.keys holds something that is not a key", 3)
    end
    list[#list + 1] = { kid = kid, key = k }
    return true
  end
  if type(keys) == "string" or is_key(keys) then
    local ok, err = errors.pair(add(nil, keys))
    if not ok then return errors.ret(err) end
  elseif type(keys) == "table" then
    if type(keys.keys) == "table" then keys = keys.keys end
    if keys.kty then keys = { keys } end
    for k, v in pairs(keys) do
      local ok, err = errors.pair(add(type(k) == "string" and k or nil, v))
      if not ok then return errors.ret(err) end
    end
  else
    error("gauth.jwt: decode: opts.keys is required", 3)
  end
  return list
end

local function decode_part(s, what)
  local raw = b64url_decode(s)
  if not raw then return nil, "bad base64url in " .. what end
  local v = json_decode(raw)
  if type(v) ~= "table" or v[1] ~= nil then
    return nil, what .. " is not a JSON object"
  end
  return v
end

local function contains(list_or_value, v)
  if type(list_or_value) == "table" then
    for _, x in ipairs(list_or_value) do
      if x == v then return true end
    end
    return false
  end
  return list_or_value == v
end

--- Verify a compact JWS and return its claims.
-- @tparam string token
-- @tparam table opts `keys` (PEM string, key object, JWK, JWKS, an array of
-- them, or a table keyed by kid), `algorithms` (allowed; default both),
-- `leeway` (seconds, default 0), `audience` (string or array; required
-- match when given), `issuer`, `now` (seconds, for tests)
-- @return claims, header | nil, msg, err
function _M.decode(token, opts)
  if type(token) ~= "string" then
    error("gauth.jwt: decode: token must be a string", 2)
  end
  if type(opts) ~= "table" then
    error("gauth.jwt: decode: opts with keys is required", 2)
  end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 or find(token, ".", d2 + 1, true) then
    return fail("decode", "not a compact JWS (need three parts)")
  end
  local header, herr = decode_part(sub(token, 1, d1 - 1), "header")
  if not header then return fail("decode", herr) end
  local claims, cerr = decode_part(sub(token, d1 + 1, d2 - 1), "payload")
  if not claims then return fail("decode", cerr) end
  local sig = b64url_decode(sub(token, d2 + 1))
  if not sig then return fail("decode", "bad base64url in signature") end

  local alg = header.alg
  if type(alg) ~= "string" or not ALGS[alg] then
    return fail("verify", "algorithm " .. tostring(alg) .. " is not accepted")
  end
  local allowed = opts.algorithms or { "RS256", "ES256" }
  if not contains(allowed, alg) then
    return fail("verify", "algorithm " .. alg .. " is not allowed here")
  end

  local keys, kerr = errors.pair(normalise_keys(opts.keys))
  if not keys then return errors.ret(kerr) end
  local input = sub(token, 1, d2 - 1)
  local verified, tried = false, 0
  for _, entry in ipairs(keys) do
    if (header.kid == nil or entry.kid == nil or entry.kid == header.kid)
        and entry.key:type() == ALGS[alg] then
      tried = tried + 1
      if entry.key:verify(alg, input, sig) then
        verified = true
        break
      end
    end
  end
  if not verified then
    if tried == 0 then
      return fail("verify", "no key fits (kid " .. tostring(header.kid)
        .. ", alg " .. alg .. ")")
    end
    return fail("verify", "signature verification failed")
  end

  local leeway = opts.leeway or 0
  local now = opts.now or core.now()
  local function num(name)
    local v = claims[name]
    if v == nil then return nil, true end
    if type(v) ~= "number" then return nil, false end
    return v, true
  end
  for _, name in ipairs({ "exp", "nbf", "iat" }) do
    local _, ok = num(name)
    if not ok then return fail("claims", name .. " is not a number") end
  end
  if claims.exp and now > claims.exp + leeway then
    return fail("claims", "token expired")
  end
  if claims.nbf and now + leeway < claims.nbf then
    return fail("claims", "token not yet valid (nbf)")
  end
  if claims.iat and now + leeway < claims.iat then
    return fail("claims", "token issued in the future (iat)")
  end
  if opts.issuer ~= nil and claims.iss ~= opts.issuer then
    return fail("claims", "issuer mismatch")
  end
  if opts.audience ~= nil then
    local ok = false
    local aud = claims.aud
    if type(aud) == "string" then aud = { aud } end
    if type(aud) == "table" then
      for _, a in ipairs(aud) do
        if contains(opts.audience, a) then ok = true break end
      end
    end
    if not ok then return fail("claims", "audience mismatch") end
  end
  return claims, header
end

return _M
