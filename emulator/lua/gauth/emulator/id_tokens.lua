--- Google-signed ID tokens in gauth's emulator: the signing key (made on
-- first use unless configured), the ID tokens signed with it, Google's
-- certificate endpoints (`/oauth2/v3/certs` JWKS, `/oauth2/v1/certs` PEM)
-- and tokeninfo. Methods of the emulator's state
-- (`gauth.emulator.google`). Internal.
-- @module gauth.emulator.id_tokens

local core = require "gauth.core"
local jwt = require "gauth.jwt"
local common = require "gauth.emulator.common"

local pairs = pairs
local tostring = tostring
local concat = table.concat
local find = string.find
local sub = string.sub
local gsub = string.gsub
local match = string.match
local byte = string.byte
local floor = math.floor
local io_open = io.open
local io_popen = io.popen
local b64url_encode = core.b64url_encode

local GOOGLE_ISSUER = common.GOOGLE_ISSUER
local hex = common.hex
local numeric_id = common.numeric_id
local generate_rsa_pem = common.generate_rsa_pem
local reply_json = common.reply_json
local oauth_error = common.oauth_error
local method_not_allowed = common.method_not_allowed
local request_params = common.request_params

local _M = { _VERSION = "0.1.0" }

-- PEM body -> DER bytes.
local function pem_der(pem)
  local body = match(pem, "%-%-%-%-%-BEGIN [^%-]+%-%-%-%-%-(.-)%-%-%-%-%-END")
  if not body then return nil end
  return core.b64_decode((gsub(body, "%s", "")))
end

-- Just enough DER to take n and e out of an RSA SubjectPublicKeyInfo.
local function der_next(s, i)
  local tag, len = byte(s, i), byte(s, i + 1)
  if not tag or not len then return nil end
  local p = i + 2
  if len >= 128 then
    local nb = len - 128
    len = 0
    for _ = 1, nb do
      len = len * 256 + byte(s, p)
      p = p + 1
    end
  end
  return tag, p, p + len
end

local function rsa_jwk_numbers(spki)
  local _, p = der_next(spki, 1)              -- SEQUENCE SubjectPublicKeyInfo
  local _, _, after_alg = der_next(spki, p)   -- SEQUENCE AlgorithmIdentifier
  local tag, bits = der_next(spki, after_alg) -- BIT STRING
  if tag ~= 3 then return nil end
  local _, q = der_next(spki, bits + 1)       -- SEQUENCE RSAPublicKey
  local t1, n0, n1 = der_next(spki, q)
  local t2, e0, e1 = der_next(spki, n1)
  if t1 ~= 2 or t2 ~= 2 then return nil end
  local n = sub(spki, n0, n1 - 1)
  n = gsub(n, "^%z+", "")
  return n, sub(spki, e0, e1 - 1)
end

function _M.signer(self)
  if self._signer then return self._signer end
  local pem = self.signing_key_pem
  if not pem then
    local err
    pem, err = generate_rsa_pem(2048)
    if not pem then return nil, err end
  end
  local key, err = core.load_private_key(pem)
  if not key then return nil, "signing key: " .. tostring(err) end
  if key:type() ~= "RSA" then return nil, "signing key must be RSA" end
  local spki = pem_der(key:public_pem())
  local n, e = rsa_jwk_numbers(spki or "")
  if not n then return nil, "cannot read the signing key's public half" end
  local kid = sub(hex(core.sha256(spki)), 1, 40)
  self._signer = {
    key = key, kid = kid, pem = pem,
    jwk = { kty = "RSA", alg = "RS256", use = "sig", kid = kid,
            n = b64url_encode(n), e = b64url_encode(e) },
  }
  return self._signer
end

-- A self-signed certificate for Google's v1 (PEM) certs format; made on
-- first use since it costs an openssl run.
function _M.signer_cert(self)
  local s, err = self:signer()
  if not s then return nil, err end
  if s.cert then return s.cert end
  local path = os.tmpname()  -- mkstemp: 0600
  local f = io_open(path, "wb")
  if not f then return nil, "cannot write a temporary file" end
  f:write(s.pem)
  f:close()
  local p = io_popen("openssl req -x509 -new -key '" .. path
    .. "' -subj /CN=gauth-emulator -days 2 -sha256 2>/dev/null")
  local cert = p and p:read("*a")
  if p then p:close() end
  os.remove(path)
  if not cert or not find(cert, "BEGIN CERTIFICATE", 1, true) then
    return nil, "openssl req failed"
  end
  s.cert = cert
  return cert
end

--- Sign an ID token as Google does for a service account.
function _M.id_token(self, audience, email, client_id, include_email, extra)
  local s, err = self:signer()
  if not s then return nil, err end
  local now = floor(self.now())
  local sub_id = client_id or numeric_id(email or audience)
  local claims = { iss = GOOGLE_ISSUER, aud = audience, azp = sub_id,
                   sub = sub_id, iat = now, exp = now + 3600 }
  if include_email ~= false then
    claims.email = email
    claims.email_verified = true
  end
  if extra then for k, v in pairs(extra) do claims[k] = v end end
  return jwt.encode(claims, s.key, { alg = "RS256", kid = s.kid })
end

-- ------------------------------------------------------------------------
-- Certificates and tokeninfo

function _M.certs(self, req, entry, v1)
  entry.endpoint = "certs"
  if req.method ~= "GET" then return method_not_allowed("GET") end
  -- Google's certificate endpoints say how long to keep the set; verifiers
  -- (gauth.id_token) honour it.
  local cc = { ["Cache-Control"] = "public, max-age=3600, must-revalidate, no-transform" }
  if v1 then
    local cert, err = self:signer_cert()
    if not cert then error(err) end
    return reply_json(200, { [self._signer.kid] = cert }, cc)
  end
  local s, err = self:signer()
  if not s then error(err) end
  return reply_json(200, { keys = { s.jwk } }, cc)
end

function _M.tokeninfo(self, req, entry)
  entry.endpoint = "tokeninfo"
  local q = req.query
  if req.method == "POST" then
    local form = request_params(req)
    for k, v in pairs(form) do if q[k] == nil then q[k] = v end end
  end
  if q.access_token then
    local g = self.tokens[q.access_token]
    local now = self.now()
    if not g or g.exp <= now then
      return oauth_error(400, "invalid_token", "Invalid Value")
    end
    local info = { azp = g.client_id, aud = g.client_id,
                   scope = concat(g.scopes, " "),
                   exp = tostring(floor(g.exp)),
                   expires_in = tostring(floor(g.exp - now)),
                   access_type = "online" }
    if g.email then info.email = g.email; info.email_verified = "true" end
    return reply_json(200, info)
  elseif q.id_token then
    local s = self._signer
    local claims = s and jwt.decode(q.id_token, { keys = { [s.kid] = s.key } })
    if not claims then return oauth_error(400, "invalid_token", "Invalid Value") end
    return reply_json(200, claims)
  end
  return oauth_error(400, "invalid_request",
                     "Missing required parameter: access_token or id_token")
end

return _M
