--- The accounts gauth's emulator knows and what it gives them: service
-- accounts (the public half of their keys: private keys never get here),
-- authorized users (client id, secret, refresh token), the access tokens
-- it issues, and the check of a JWT signed by one of its service accounts
-- (token endpoint assertions, self-signed JWTs). Methods of the emulator's
-- state (`gauth.emulator.google`). Internal.
-- @module gauth.emulator.accounts

local core = require "gauth.core"
local jwt = require "gauth.jwt"
local cjson = require "cjson.safe"
local sys = require "gauth.lib.sys"
local common = require "gauth.emulator.common"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local find = string.find
local gsub = string.gsub
local match = string.match
local b64url_encode = core.b64url_encode
local b64url_decode = core.b64url_decode
local read_file = sys.read_file

local SCOPE_PLATFORM = common.SCOPE_PLATFORM
local numeric_id = common.numeric_id
local set_of = common.set_of
local peek_claims = common.peek_claims

local _M = { _VERSION = "0.1.0" }

local MSG_BAD_SIGNATURE = "Invalid JWT Signature."
local MSG_TIME_WINDOW = "Invalid JWT: Token must be a short-lived token "
  .. "(60 minutes) and in a reasonable timeframe. Check your iat and exp "
  .. "values in the JWT claim."

--- Turn whatever the caller gave as keys into the entries the server
-- needs: the public half of each service-account key, and the
-- client_id/secret/refresh token of each authorized-user file. Private keys
-- go no further than this function.
-- @tparam table config `keys` (array of key tables or JSON texts),
-- `key_file` (path or array of paths), `accounts` (entries already made by
-- this function), `authorized_users` (array of tables)
-- @return array of entries, or nil and a message
function _M.normalize_accounts(config)
  local out = {}
  local function add(k, where)
    if type(k) == "string" then
      local v = cjson.decode(k)
      if type(v) ~= "table" then return nil, where .. ": not a JSON object" end
      k = v
    end
    if type(k) ~= "table" then return nil, where .. ": not a key table" end
    local kind = k.type or (k.refresh_token and "authorized_user") or "service_account"
    if kind == "service_account" then
      if type(k.client_email) ~= "string" or k.client_email == "" then
        return nil, where .. ": service account key without client_email"
      end
      local pem = k.public_key
      if type(k.private_key) == "string" then
        local key, err = core.load_public_key(k.private_key)
        if not key then
          return nil, where .. ": cannot read private_key: "
            .. gsub(tostring(err), "^gauth%.core: ", "")
        end
        pem = key:public_pem()
      end
      if type(pem) ~= "string" then
        return nil, where .. ": service account key without private_key"
      end
      out[#out + 1] = {
        type = "service_account",
        client_email = k.client_email,
        private_key_id = type(k.private_key_id) == "string" and k.private_key_id or nil,
        client_id = k.client_id and tostring(k.client_id) or nil,
        project_id = type(k.project_id) == "string" and k.project_id or nil,
        public_key = pem,
      }
    elseif kind == "authorized_user" then
      for _, f in ipairs({ "client_id", "client_secret", "refresh_token" }) do
        if type(k[f]) ~= "string" or k[f] == "" then
          return nil, where .. ": authorized_user without " .. f
        end
      end
      out[#out + 1] = {
        type = "authorized_user",
        client_id = k.client_id,
        client_secret = k.client_secret,
        refresh_token = k.refresh_token,
        account = type(k.account) == "string" and k.account or nil,
        scopes = type(k.scopes) == "table" and k.scopes or nil,
      }
    else
      return nil, where .. ": unsupported key type " .. tostring(kind)
    end
    return true
  end
  local function add_list(list, what)
    if list == nil then return true end
    if type(list) ~= "table" or list.type or list.client_email then list = { list } end
    for i, k in ipairs(list) do
      local ok, err = add(k, what .. "[" .. i .. "]")
      if not ok then return nil, err end
    end
    return true
  end
  local ok, err = add_list(config.accounts, "accounts")
  if not ok then return nil, err end
  ok, err = add_list(config.keys, "keys")
  if not ok then return nil, err end
  ok, err = add_list(config.authorized_users, "authorized_users")
  if not ok then return nil, err end
  local files = config.key_file
  if type(files) == "string" then files = { files } end
  for _, path in ipairs(files or {}) do
    local text, rerr = read_file(path)
    if not text then return nil, "key_file: " .. tostring(rerr) end
    ok, err = add(text, path)
    if not ok then return nil, err end
  end
  return out
end

--- Register accounts made by `normalize_accounts`.
-- @return true, or nil and a message
function _M.add_accounts(self, accounts)
  for _, a in ipairs(accounts) do
    if a.type == "service_account" then
      local key, kerr = core.load_public_key(a.public_key)
      if not key then return nil, "public key of " .. a.client_email .. ": " .. tostring(kerr) end
      local acct = self.accounts[a.client_email]
      if not acct then
        acct = { email = a.client_email, keys = {}, nkeys = 0,
                 client_id = a.client_id or numeric_id(a.client_email) }
        self.accounts[a.client_email] = acct
        self.first_account = self.first_account or a.client_email
      end
      acct.nkeys = acct.nkeys + 1
      if a.private_key_id then
        acct.keys[a.private_key_id] = key
      else
        acct.keys[acct.nkeys] = key
      end
    else
      local c = self.clients[a.client_id]
      if not c then
        c = { secret = a.client_secret, tokens = {} }
        self.clients[a.client_id] = c
      end
      c.tokens[a.refresh_token] = {
        account = a.account or "developer@example.com",
        scopes = a.scopes or { SCOPE_PLATFORM,
                               "https://www.googleapis.com/auth/userinfo.email",
                               "openid" },
      }
    end
  end
  return true
end

-- ------------------------------------------------------------------------
-- Tokens

--- Issue an access token for a grant.
-- @tparam table grant `email`, `subject`, `scopes` (array), `kind`, `client_id`
-- @return token, expires_in
function _M:issue(grant)
  local now = self.now()
  self.ntokens = self.ntokens + 1
  if self.ntokens % 256 == 0 then
    for t, g in pairs(self.tokens) do
      if g.exp <= now then self.tokens[t] = nil end
    end
  end
  -- "ya29." like Google's, so code that looks at the prefix behaves.
  local tok = "ya29.emu-" .. b64url_encode(core.random_bytes(32))
  grant.exp = now + self.lifetime
  grant.scope_set = set_of(grant.scopes or {})
  self.tokens[tok] = grant
  return tok, self.lifetime > 1 and self.lifetime - 1 or self.lifetime
end

local KEY_TYPES = { RS256 = "RSA", ES256 = "EC" }

-- google-auth 1.x (Debian's) pads the base64url segments of its
-- assertions, which Google accepts but RFC 7515 (and so gauth.jwt.decode)
-- does not. Verify those here, over the segments exactly as sent.
-- @return claims | nil, { step = "decode" | "verify" | "claims" }
local function decode_padded(token, keys)
  local h, p, s = match(token, "^([^.]+)%.([^.]+)%.([^.]+)$")
  local function dec(x) return x and b64url_decode((gsub(x, "=+$", ""))) end
  local header = cjson.decode(dec(h) or "")
  local claims = cjson.decode(dec(p) or "")
  local sig = dec(s)
  if type(header) ~= "table" or type(claims) ~= "table" or not sig then
    return nil, { step = "decode" }
  end
  local ktype = KEY_TYPES[header.alg]
  if not ktype then return nil, { step = "verify" } end
  local ok = false
  for kid, key in pairs(keys) do
    if (header.kid == nil or type(kid) ~= "string" or kid == header.kid)
        and key:type() == ktype and key:verify(header.alg, h .. "." .. p, sig) then
      ok = true
      break
    end
  end
  if not ok then return nil, { step = "verify" } end
  for _, name in ipairs({ "iat", "exp", "nbf" }) do
    if claims[name] ~= nil and type(claims[name]) ~= "number" then
      return nil, { step = "claims" }
    end
  end
  return claims
end

-- Verify a JWT made by a service account we know.
-- @return claims | nil, description
function _M.verify_account_jwt(self, token)
  local claims = peek_claims(token)
  if not claims then return nil, MSG_BAD_SIGNATURE end
  local acct = type(claims.iss) == "string" and self.accounts[claims.iss]
  if not acct then return nil, "Invalid grant: account not found", claims end
  -- The time window is checked below with Google's own message, so let
  -- decode() look at the signature (and the claim types) only.
  local verified, err
  if find(token, "=", 1, true) then
    verified, err = decode_padded(token, acct.keys)
  else
    local _
    verified, _, err = jwt.decode(token, { keys = acct.keys,
      algorithms = { "RS256", "ES256" }, leeway = 1e12 })
  end
  if not verified then
    if err and err.step == "claims" then return nil, MSG_TIME_WINDOW, claims end
    return nil, MSG_BAD_SIGNATURE, claims
  end
  local iat, exp = verified.iat, verified.exp
  local now = self.now()
  if type(iat) ~= "number" or type(exp) ~= "number" or exp <= iat
      or exp - iat > 3600 or iat > now + self.skew or exp < now - self.skew then
    return nil, MSG_TIME_WINDOW, verified
  end
  return verified, acct
end

return _M
