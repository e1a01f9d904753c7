--- Key sets as Google serves them: a JSON object of kid -> PEM certificate
-- (or public key), or a JWK Set of RSA and EC P-256 keys; and how long
-- one is kept (the response's `Cache-Control: max-age`, clamped). The
-- limits (`MAX_KEYS`, `MIN_MAX_AGE`, `MAX_MAX_AGE`, `DEFAULT_MAX_AGE`) are
-- gauth.id_token's, read at each use. Internal: gauth.id_token gives
-- `parse_key_set` and `max_age`.
-- @module gauth.id_token.key_set

local core = require "gauth.core"
local common = require "gauth.id_token.common"

local type = type
local pairs = pairs
local ipairs = ipairs
local tonumber = tonumber
local error = error
local match = string.match
local lower = string.lower
local json_decode = common.json_decode
local load_public_key = core.load_public_key
local load_jwk = core.load_jwk
local fail = common.fail
local public = common.public

local _M = {}

local KIND_ALG = { RSA = "RS256", EC = "ES256" }

local function add_key(set, kid, key, alg)
  local e = { kid = kid, key = key, alg = alg }
  set.n = set.n + 1
  set.list[set.n] = e
  if kid then set.by_kid[kid] = e end
end

--- Parse a key set document: a JSON object of kid -> PEM certificate (or
-- public key), or a JWK Set (`keys`: RSA `n`/`e`, EC P-256 `x`/`y`). Keys
-- that cannot be used (another type or curve, an `alg` other than RS256 or
-- ES256, a bad certificate) are left out; a set left with none is an error.
-- @tparam string body
-- @return set `{ list = { {kid, key, alg}, ... }, by_kid = {...}, n }` |
--   nil, msg, err
function _M.parse_key_set(body)
  if type(body) ~= "string" then
    error("gauth.id_token: parse_key_set: body must be a string", 2)
  end
  local doc = match(body, "^%s*{") and json_decode(body)
  if type(doc) ~= "table" then
    return fail("keys", "keys", "key set is not a JSON object")
  end
  local set = { list = {}, by_kid = {}, n = 0 }
  local skipped = 0
  if doc.keys ~= nil then
    if type(doc.keys) ~= "table" then
      return fail("keys", "keys", "keys is not a list")
    end
    for i, jwk in ipairs(doc.keys) do
      if i > public.MAX_KEYS then break end
      local key
      if type(jwk) == "table" and (jwk.kid == nil or type(jwk.kid) == "string")
          and (jwk.use == nil or jwk.use == "sig") then
        local kty = jwk.kty
        if kty == "RSA" and type(jwk.n) == "string" and type(jwk.e) == "string" then
          key = load_jwk("RSA", jwk.n, jwk.e)
        elseif kty == "EC" and type(jwk.x) == "string" and type(jwk.y) == "string"
            and type(jwk.crv) == "string" then
          key = load_jwk("EC", jwk.x, jwk.y, jwk.crv)
        end
      end
      local alg = key and KIND_ALG[key:type()]
      if alg and (jwk.alg == nil or jwk.alg == alg) then
        add_key(set, jwk.kid, key, alg)
      else
        skipped = skipped + 1
      end
    end
  else
    local count = 0
    for kid, pem in pairs(doc) do
      count = count + 1
      if count > public.MAX_KEYS then break end
      local key = type(pem) == "string" and load_public_key(pem)
      if key and not key:is_private() then
        add_key(set, kid, key, KIND_ALG[key:type()])
      else
        skipped = skipped + 1
      end
    end
  end
  if set.n == 0 then
    return fail("keys", "keys", skipped > 0
      and ("key set holds no usable key (" .. skipped .. " refused)")
      or "key set is empty")
  end
  return set
end

--- The max-age of a Cache-Control header value, clamped to the floor and
-- ceiling (`DEFAULT_MAX_AGE` when there is none).
function _M.max_age(cache_control)
  local age
  if type(cache_control) == "string" then
    local cc = lower(cache_control)
    if match(cc, "no%-cache") or match(cc, "no%-store") then
      age = 0
    else
      age = tonumber(match(cc, "max%-age%s*=%s*(%d+)"))
    end
  end
  age = age or public.DEFAULT_MAX_AGE
  if age < public.MIN_MAX_AGE then age = public.MIN_MAX_AGE end
  if age > public.MAX_MAX_AGE then age = public.MAX_MAX_AGE end
  return age
end

return _M
