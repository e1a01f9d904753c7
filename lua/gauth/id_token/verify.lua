--- The verification of a token: its shape, header, key and signature, then
-- its claims (what is checked, and in which order, is gauth.id_token's
-- module text). A header seen on a good token before is decoded once and
-- then recognised in place (see `known_header`). `DEFAULT_MAX_LIFETIME`
-- and the URLs and issuers of the public functions are gauth.id_token's,
-- read at each call. Internal: gauth.id_token gives `verify`,
-- `verify_oauth2_token`, `verify_iap` and `verify_firebase_token`.
-- @module gauth.id_token.verify

local core = require "gauth.core"
local common = require "gauth.id_token.common"
local key_cache = require "gauth.id_token.key_cache"

local type = type
local getmetatable = getmetatable
local ipairs = ipairs
local setmetatable = setmetatable
local pairs = pairs
local error = error
local floor = math.floor
local match = string.match
local find = string.find
local byte = string.byte
local sub = string.sub
local json_decode = common.json_decode
local jws_split = core.jws_split
local fail = common.fail
local shown = common.shown
local default_clock = common.default_clock
local public = common.public
-- The key cache as verify's short path sees it (no call on the way when
-- a cache is given): its metatable, and the default cache once made.
local cache_mt = key_cache.metatable
local held_default = key_cache.held_default
local default_cache = key_cache.default_cache

local _M = {}

local ALG_KIND = { RS256 = "RSA", ES256 = "EC" }
local BOTH = { RS256 = true, ES256 = true }
-- Firebase signs its ID tokens with RS256 only (its documented checks).
local RS256_ONLY = { RS256 = true }


-- Decoded headers by their text: a signer's header is the same on every
-- token, so each is decoded once (bounded). Private: callers get a copy
-- (see `copy_header`), so that nothing they do to it reaches a verdict.
local header_memo, header_memo_n = {}, 0

-- Memoised headers with no field but alg, kid and typ (what Google's
-- signers write), copied for the caller by one table constructor; the
-- others field by field (see `copy_header`). Weak: it follows the memo
-- and `known`.
local plain_header = setmetatable({}, { __mode = "k" })
local PLAIN = { alg = true, kid = true, typ = true }

local function decode_header(text)
  local h = header_memo[text]
  if h then return h end
  h = match(text, "^%s*{") and json_decode(text)
  if type(h) ~= "table" then return nil end
  local plain = true
  for k, v in pairs(h) do
    if not PLAIN[k] or type(v) == "table" then plain = false break end
  end
  if plain then plain_header[h] = true end
  if header_memo_n >= 128 then header_memo, header_memo_n = {}, 0 end
  header_memo[text] = h
  header_memo_n = header_memo_n + 1
  return h
end

-- Header segments (base64url text) of tokens that verified, newest first,
-- at most MAX_KNOWN. The next token that starts with one of them (the same
-- signer and key) skips decoding the header: the key it names is taken
-- from the cache when held and fresh, and one C call (Key:verify_jws)
-- checks the token's shape, decodes it and verifies it. Compared in place
-- (no substring made per token). Only headers that passed every header
-- check and a signature enter.
local MAX_KNOWN = 8
local known, known_n = {}, 0

local function remember_segment(token, header, alg, kid)
  local dot = find(token, ".", 1, true)
  if not dot then return end
  local seg = sub(token, 1, dot - 1)
  for i = 1, known_n do
    if known[i].seg == seg then return end
  end
  if known_n < MAX_KNOWN then known_n = known_n + 1 end
  for i = known_n, 2, -1 do known[i] = known[i - 1] end
  -- alg and kid as checked now (the header is private: callers get a
  -- copy), kept beside it so that this path reads no table of the header.
  known[1] = { seg = seg, dot = dot, header = header, alg = alg, kid = kid }
end

-- A fresh copy of a memoised header with other fields than alg, kid and
-- typ; nested values (jwk, x5c) are copied too.
local function copy_header(h)
  local c = {}
  for k, v in pairs(h) do
    if type(v) == "table" then v = copy_header(v) end
    c[k] = v
  end
  return c
end

local function known_header(token)
  for i = 1, known_n do
    local k = known[i]
    if byte(token, k.dot) == 46 and find(token, k.seg, 1, true) == 1 then return k end
  end
  return nil
end

local function one_of(list, v)
  if type(list) == "string" then return list == v end
  for i = 1, #list do
    if list[i] == v then return true end
  end
  return false
end

-- Lists already checked (weak keys): the issuers and audience lists are
-- usually the same tables on every request.
local checked_lists = setmetatable({}, { __mode = "k" })

local function check_list(v, name, level)
  if type(v) == "string" or checked_lists[v] then return end
  if type(v) == "table" and type(v[1]) == "string" and v[2] == nil then return end
  if type(v) ~= "table" or #v == 0 then
    error("gauth.id_token: " .. name .. " must be a string or a non-empty list", level)
  end
  for _, x in ipairs(v) do
    if type(x) ~= "string" then
      error("gauth.id_token: " .. name .. " must hold strings", level)
    end
  end
  checked_lists[v] = true
end

-- `now` as given: a number or a function's result, finite (NaN would make
-- every time comparison false and let an expired token in).
local function now_of(opts, level)
  local n = opts.now
  if n == nil then return default_clock() end
  if type(n) == "function" then n = n() end
  if type(n) ~= "number" then
    error("gauth.id_token: now must be a number or a function returning one", level)
  end
  if n - n ~= 0 then
    error("gauth.id_token: now must be finite (it is NaN or infinite)", level)
  end
  return n
end

-- The one verification; the public functions give it their defaults as
-- arguments (no option table copied per token: this runs per request).
-- `firebase`: Firebase's own checks too (a kid, auth_time, sub).
local function verify(token, opts, level, audience, issuers, url, allowed, firebase)
  if type(token) ~= "string" then
    error("gauth.id_token: token must be a string", level)
  end
  if audience == nil then
    error("gauth.id_token: opts.audience is required"
      .. " (audience = false skips the check)", level)
  end
  if audience ~= false and type(audience) ~= "string" and not checked_lists[audience] then
    check_list(audience, "audience", level + 1)
  end
  if issuers and type(issuers) ~= "string" and not checked_lists[issuers] then
    check_list(issuers, "issuers", level + 1)
  end

  -- The time options, checked on every call (comparisons, no call), so
  -- that a wrong one raises whatever the token: a NaN or a negative skew
  -- would turn the claims' checks off or inside out.
  local now
  if opts.now == nil then now = default_clock() else now = now_of(opts, level + 1) end
  local skew = opts.clock_skew
  if skew == nil then
    skew = 0
  elseif type(skew) ~= "number" or skew < 0 or skew - skew ~= 0 then
    error("gauth.id_token: clock_skew must be a finite number >= 0", level)
  end
  local max_lifetime = opts.max_lifetime
  if max_lifetime == nil then max_lifetime = public.DEFAULT_MAX_LIFETIME end
  if max_lifetime ~= false and (type(max_lifetime) ~= "number"
      or max_lifetime <= 0 or max_lifetime - max_lifetime ~= 0) then
    error("gauth.id_token: max_lifetime must be false or a finite number > 0", level)
  end
  allowed = allowed or BOTH
  local cache = opts.cache
  local claims, header

  -- A header seen before on a good token: the same checks in the same
  -- order as below, with fewer steps (see known_header). The key: what
  -- KeyCache:get answers first (held, within its age), without a fetch.
  local k = known_n > 0 and known_header(token)
  local kc = cache or held_default()
  local m = k and allowed[k.alg] and getmetatable(kc) == cache_mt and kc.memo[url]
  local held = m and kc.clock() < m.expires and m.set.by_kid[k.kid]
  if held and held.alg == k.alg then
    -- The claims come decoded from C (core.json_object: cjson's table, no
    -- string of the payload made per token) unless that decoder declines
    -- (then the text, for cjson as below).
    local ptext, good = held.key:verify_jws(k.alg, token, true)
    if not ptext then
      return fail("decode", "malformed", (match(good, "^gauth%.core: jws: (.*)$") or good))
    end
    if type(ptext) == "table" then
      claims = ptext
    else
      -- A JSON object, not a bare value: "{" first (as signers write it),
      -- else after white space.
      claims = (byte(ptext) == 123 or match(ptext, "^%s*{")) and json_decode(ptext)
    end
    if type(claims) ~= "table" then
      return fail("decode", "malformed", "malformed: payload is not a JSON object")
    end
    if not good then return fail("verify", "signature", "bad signature") end
    header = k.header
  end

  if not header then
    local htext, ptext, sig, signed_len = jws_split(token)
    if not htext then
      return fail("decode", "malformed", (match(ptext, "^gauth%.core: jws: (.*)$") or ptext))
    end
    header = decode_header(htext)
    if not header then
      return fail("decode", "malformed", "malformed: header is not a JSON object")
    end
    local alg = header.alg
    if type(alg) ~= "string" then
      return fail("decode", "malformed", "malformed: header has no alg")
    end
    if not ALG_KIND[alg] or not allowed[alg] then
      return fail("verify", "alg", "alg " .. shown(alg) .. " not allowed")
    end
    local kid = header.kid
    if kid ~= nil and type(kid) ~= "string" then
      return fail("decode", "malformed", "malformed: kid is not a string")
    end
    -- (A known header always has a kid: only those enter `known`.)
    if kid == nil and firebase then
      return fail("verify", "kid", "no kid (a Firebase ID token names its key)")
    end
    claims = match(ptext, "^%s*{") and json_decode(ptext)
    if type(claims) ~= "table" then
      return fail("decode", "malformed", "malformed: payload is not a JSON object")
    end

    if not cache then
      local msg, err
      cache, msg, err = default_cache()
      if not cache then return nil, msg, err end
    end
    local set, msg, err = cache:get(url, kid)
    if not set then return nil, msg, err end

    local ok = false
    if kid ~= nil then
      local e = set.by_kid[kid]
      if not e then
        return fail("verify", "kid", "unknown kid " .. shown(kid))
      end
      if e.alg ~= alg then
        return fail("verify", "alg", "alg " .. alg .. " does not fit key "
          .. shown(kid) .. " (" .. e.alg .. ")")
      end
      ok = e.key:verify(alg, token, sig, signed_len)
      if ok then remember_segment(token, header, alg, kid) end
    else
      local tried = 0
      for i = 1, set.n do
        local e = set.list[i]
        if e.alg == alg then
          tried = tried + 1
          if e.key:verify(alg, token, sig, signed_len) then ok = true break end
        end
      end
      if tried == 0 then
        return fail("verify", "kid", "no kid, and no " .. alg .. " key in the key set")
      end
    end
    if not ok then return fail("verify", "signature", "bad signature") end
  end

  -- Claims, in google-auth's order: iat and exp, then aud; then the rest.
  local iat, exp, nbf = claims.iat, claims.exp, claims.nbf
  if iat == nil then return fail("claims", "iat", "missing iat") end
  if exp == nil then return fail("claims", "exp", "missing exp") end
  -- Numbers only (not "123"), and finite: 1e400 decodes to infinity.
  if type(iat) ~= "number" or iat - iat ~= 0 then
    return fail("claims", "iat", "malformed: iat is not a finite number")
  end
  if type(exp) ~= "number" or exp - exp ~= 0 then
    return fail("claims", "exp", "malformed: exp is not a finite number")
  end
  if nbf ~= nil and (type(nbf) ~= "number" or nbf - nbf ~= 0) then
    return fail("claims", "nbf", "malformed: nbf is not a finite number")
  end
  if now > exp + skew then
    return fail("claims", "exp", "expired " .. floor(now - exp) .. " s ago")
  end
  if iat > now + skew then
    return fail("claims", "iat", "issued " .. floor(iat - now) .. " s in the future (iat)")
  end
  if nbf and nbf > now + skew then
    return fail("claims", "nbf", "not valid for another " .. floor(nbf - now) .. " s (nbf)")
  end
  if max_lifetime and exp - iat > max_lifetime then
    return fail("claims", "lifetime", "lifetime " .. floor(exp - iat)
      .. " s exceeds max_lifetime " .. max_lifetime)
  end
  if audience ~= false then
    local aud = claims.aud
    if type(aud) ~= "string" or (aud ~= audience and not one_of(audience, aud)) then
      return fail("claims", "aud", "audience mismatch")
    end
  end
  if issuers and (type(claims.iss) ~= "string" or not one_of(issuers, claims.iss)) then
    return fail("claims", "iss", "issuer mismatch")
  end
  if firebase then
    -- Firebase's documented checks beyond the JWT's: sub is the user's
    -- uid (non-empty, at most 128 characters), auth_time is when the user
    -- signed in (in the past).
    local s = claims.sub
    if type(s) ~= "string" or s == "" or #s > 128 then
      return fail("claims", "sub", "sub must be a non-empty string of at most 128 characters")
    end
    local at = claims.auth_time
    if at == nil then return fail("claims", "auth_time", "missing auth_time") end
    if type(at) ~= "number" or at - at ~= 0 then
      return fail("claims", "auth_time", "malformed: auth_time is not a finite number")
    end
    if at > now + skew then
      return fail("claims", "auth_time", "signed in " .. floor(at - now)
        .. " s in the future (auth_time)")
    end
  end
  -- The caller's own copy of the header: the memo stays private.
  if plain_header[header] then
    return claims, { alg = header.alg, kid = header.kid, typ = header.typ }
  end
  return claims, copy_header(header)
end

--- Verify a Google-signed token.
-- @tparam string token the compact JWT
-- @tparam table opts `audience` (string or list; required: `false` skips
--   the check), `certs_url` (default `OAUTH2_CERTS_URL`), `issuers`
--   (string or list; none checked unless given), `clock_skew` (s, default
--   0), `max_lifetime` (s, default 86400; `false`: unchecked), `now`
--   (number or function), `cache` (from `new_cache`; default
--   `default_cache()`), `algorithms` (set, e.g. `{ ES256 = true }`)
-- @return claims, header | nil, msg, err (`err.check` names the check)
function _M.verify(token, opts)
  if type(opts) ~= "table" then
    error("gauth.id_token: opts must be a table (audience is required)", 2)
  end
  return verify(token, opts, 2, opts.audience, opts.issuers,
                opts.certs_url or public.OAUTH2_CERTS_URL, opts.algorithms)
end

local NO_OPTS = {}

local function opts_of(opts)
  if opts == nil then return NO_OPTS end
  if type(opts) ~= "table" then error("gauth.id_token: opts must be a table", 3) end
  return opts
end

local function default(v, d)
  if v == nil then return d end
  return v
end

-- The issuer is the point of the variants below: `issuers = false` there
-- is a mistake (a list still replaces the default).
local function no_false_issuers(opts, name)
  if opts.issuers == false then
    error("gauth.id_token: " .. name .. ": issuers = false would skip the issuer check"
      .. " (use gauth.id_token.verify for a custom check)", 3)
  end
end

--- Verify an ID token issued by Google's OAuth 2.0 server (Sign-In users,
-- service accounts, Cloud Run/Functions callers, Pub/Sub push, Scheduler):
-- issuer `accounts.google.com` or `https://accounts.google.com`, keys from
-- `OAUTH2_CERTS_URL`.
-- @tparam string token
-- @param audience string or list (`false`: unchecked)
-- @tparam[opt] table opts as for `verify`
-- @return claims, header | nil, msg, err
function _M.verify_oauth2_token(token, audience, opts)
  if opts == nil then opts = NO_OPTS end
  if type(opts) ~= "table" then error("gauth.id_token: opts must be a table", 2) end
  local issuers = opts.issuers
  if issuers == nil then
    issuers = public.GOOGLE_ISSUERS
  elseif issuers == false then
    no_false_issuers(opts, "verify_oauth2_token")
  end
  return verify(token, opts, 2, audience, issuers,
                opts.certs_url or public.OAUTH2_CERTS_URL, opts.algorithms)
end

--- Verify Identity-Aware Proxy's `x-goog-iap-jwt-assertion`: ES256 only,
-- keys from `IAP_CERTS_URL`, issuer `https://cloud.google.com/iap`.
-- @tparam string token
-- @param audience `/projects/NUMBER/global/backendServices/ID` or
--   `/projects/NUMBER/apps/PROJECT` (string or list)
-- @tparam[opt] table opts as for `verify`
-- @return claims, header | nil, msg, err
function _M.verify_iap(token, audience, opts)
  opts = opts_of(opts)
  if opts.issuers == false then no_false_issuers(opts, "verify_iap") end
  return verify(token, opts, 2, audience, default(opts.issuers, public.IAP_ISSUERS),
                opts.certs_url or public.IAP_CERTS_URL, opts.algorithms or public.ES256_ONLY)
end

--- Verify a Firebase Authentication ID token, with Firebase's documented
-- checks: RS256 only, a `kid` naming a key from `FIREBASE_CERTS_URL`,
-- audience the project id, issuer
-- `https://securetoken.google.com/<project_id>`, `sub` a non-empty string
-- of at most 128 characters, `auth_time` a number in the past (within
-- `clock_skew`).
-- @tparam string token
-- @tparam string project_id
-- @tparam[opt] table opts as for `verify` (`algorithms` cannot be chosen;
--   `issuers = false` raises)
-- @return claims, header | nil, msg, err
function _M.verify_firebase_token(token, project_id, opts)
  if type(project_id) ~= "string" or project_id == "" then
    error("gauth.id_token: verify_firebase_token: project_id must be a string", 2)
  end
  opts = opts_of(opts)
  if opts.issuers == false then no_false_issuers(opts, "verify_firebase_token") end
  if opts.algorithms ~= nil then
    error("gauth.id_token: verify_firebase_token: algorithms cannot be chosen"
      .. " (Firebase signs with RS256 only)", 2)
  end
  return verify(token, opts, 2, project_id,
    default(opts.issuers, { public.FIREBASE_ISSUER_PREFIX .. project_id }),
    opts.certs_url or public.FIREBASE_CERTS_URL, RS256_ONLY, true)
end

return _M
