--- The emulator's workload identity federation: Google's STS token
-- exchange (`POST /v1/token`) and IAM Credentials' `generateAccessToken`
-- (`POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken`),
-- checking what arrives as Google does: an OIDC subject token must be signed
-- by one of the keys it was given (and unexpired, for an allowed audience
-- when `oidc_audiences` is set); an AWS subject token must be a
-- GetCallerIdentity request SigV4-signed with a secret it was given, for
-- the audience, signed within 15 minutes. Internal to `gauth.emulator`.
--
-- Configuration (`federation` of the emulator's config):
--   oidc_public_keys   array of PEM public keys (or certificates)
--   oidc_audiences     array: a subject token's `aud` must be one of them
--   aws_keys           { [access_key_id] = secret_access_key }
--   clients            { [client_id] = client_secret } (HTTP Basic)
--   service_accounts   array of emails that may be impersonated (default: any)
-- @module gauth.emulator.federation

local core = require "gauth.core"
local jwt = require "gauth.jwt"
local sigv4 = require "gauth.aws_sigv4"
local httpd = require "gauth.emulator.httpd"
local cjson = require "cjson.safe"

local type = type
local ipairs = ipairs
local tonumber = tonumber
local find = string.find
local match = string.match
local lower = string.lower
local sub = string.sub
local gsub = string.gsub
local char = string.char
local os_time = os.time

local _M = {}

local GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
local ACCESS = "urn:ietf:params:oauth:token-type:access_token"
local JWT_TYPES = { ["urn:ietf:params:oauth:token-type:jwt"] = true,
                    ["urn:ietf:params:oauth:token-type:id_token"] = true }
local AWS_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
local CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"

--- Check and keep the `federation` part of a configuration.
-- @return state | nil, message
function _M.configure(conf)
  if conf == nil then return {} end
  if type(conf) ~= "table" then return nil, "federation must be a table" end
  local st = { oidc_keys = {}, aws_keys = conf.aws_keys or {}, clients = conf.clients or {},
               audiences = nil, accounts = nil }
  for i, pem in ipairs(conf.oidc_public_keys or {}) do
    local k, err = jwt.load_public_key(pem)
    if not k then return nil, "federation.oidc_public_keys[" .. i .. "]: " .. tostring(err) end
    st.oidc_keys[i] = k
  end
  if conf.oidc_audiences then
    st.audiences = {}
    for _, a in ipairs(conf.oidc_audiences) do st.audiences[a] = true end
  end
  if conf.service_accounts then
    st.accounts = {}
    for _, a in ipairs(conf.service_accounts) do st.accounts[a] = true end
  end
  return st
end

local function urldecode(s)
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

local function check_oidc(fed, tok, now)
  if #fed.oidc_keys == 0 then return "The subject token is not trusted by the provider." end
  local claims = jwt.decode(tok, { keys = fed.oidc_keys, algorithms = { "RS256", "ES256" },
                                   leeway = 1e12 })
  if not claims then return "The given subject token is invalid: bad signature." end
  if type(claims.exp) ~= "number" or claims.exp <= now then
    return "The given subject token has expired."
  end
  if fed.audiences then
    local aud = claims.aud
    local ok = false
    if type(aud) == "string" then ok = fed.audiences[aud] == true
    elseif type(aud) == "table" then
      for _, a in ipairs(aud) do if fed.audiences[a] then ok = true end end
    end
    if not ok then return "The audience in the subject token is not allowed." end
  end
  return nil
end

-- Verify an AWS subject token: recompute its SigV4 signature with the
-- secret of its access key over the headers it says it signed.
local function check_aws(fed, tok, audience, now)
  local req = cjson.decode(urldecode(tok))
  if type(req) ~= "table" or type(req.url) ~= "string" or type(req.headers) ~= "table" then
    return "The AWS request in the subject token is malformed."
  end
  local host = match(req.url, "^https://([^/?#]+)")
  local region = host and match(host, "^sts%.([%w-]+)%.amazonaws%.com$")
  if not region or req.method ~= "POST" or not find(req.url, "[?&]Action=GetCallerIdentity") then
    return "The AWS request is not a GetCallerIdentity POST to AWS STS."
  end
  local h, list = {}, {}
  for _, kv in ipairs(req.headers) do
    if type(kv) ~= "table" or type(kv.key) ~= "string" or type(kv.value) ~= "string" then
      return "The AWS request's headers are malformed."
    end
    h[lower(kv.key)] = kv.value
  end
  if h["x-goog-cloud-target-resource"] ~= audience then
    return "The target resource does not match the audience."
  end
  local ak, day, kregion, service, signed, sig = match(h.authorization or "",
    "^AWS4%-HMAC%-SHA256 Credential=([^/]+)/(%d+)/([^/]+)/([^/]+)/aws4_request, "
    .. "SignedHeaders=([^,]+), Signature=(%x+)$")
  if not ak then return "The AWS request has no SigV4 Authorization." end
  local secret = fed.aws_keys[ak]
  if type(secret) ~= "string" then return "The AWS access key is unknown." end
  if kregion ~= region or service ~= "sts" then
    return "The AWS credential scope does not match the request."
  end
  local amz = h["x-amz-date"] or ""
  local y, mo, d, hh, mi, ss = match(amz, "^(%d%d%d%d)(%d%d)(%d%d)T(%d%d)(%d%d)(%d%d)Z$")
  if not y or sub(amz, 1, 8) ~= day then return "The AWS request has no x-amz-date." end
  local t = os_time({ year = tonumber(y), month = tonumber(mo), day = tonumber(d),
                      hour = tonumber(hh), min = tonumber(mi), sec = tonumber(ss), isdst = false })
  -- os.time reads the table as local time: correct by the zone offset.
  t = t + (os_time() - os_time(os.date("!*t")))
  if math.abs(now - t) > 900 then return "The AWS request is not fresh." end
  local token
  for name in signed:gmatch("[^;]+") do
    if name ~= "host" and name ~= "x-amz-date" then
      if h[name] == nil then return "A signed header is missing." end
      if name == "x-amz-security-token" then token = h[name]
      else list[#list + 1] = { name, h[name] } end
    end
  end
  if not find(";" .. signed .. ";", ";host;", 1, true) then return "host must be signed." end
  local want = sigv4.sign({ method = "POST", url = req.url, headers = list },
    { access_key_id = ak, secret_access_key = secret, session_token = token },
    { region = region, service = "sts", amz_date = amz })
  if not want or want.signature ~= sig then return "The AWS signature does not match." end
  return nil
end

local function basic_client(req)
  local a = req.headers.authorization
  if not a then return nil end
  local v = match(a, "^[Bb]asic%s+(%S+)$")
  local raw = v and core.b64_decode(v)
  if not raw then return "", "" end
  local id, secret = match(raw, "^([^:]*):(.*)$")
  return id or "", secret or ""
end

--- POST /v1/token: the token exchange.
function _M.sts(self, req, entry, reply_json, oauth_error)
  entry.endpoint = "sts"
  local fed = self.federation or {}
  if req.method ~= "POST" then return oauth_error(405, "invalid_request", "Method not allowed.") end
  local form = httpd.parse_form(req.body or "")
  local function refuse(status, err, desc)
    entry.error, entry.error_description = err, desc
    return oauth_error(status, err, desc)
  end
  if form.grant_type ~= GRANT then
    return refuse(400, "unsupported_grant_type", 'Invalid value for "grant_type".')
  end
  if form.requested_token_type ~= ACCESS then
    return refuse(400, "invalid_request", 'Invalid value for "requested_token_type".')
  end
  local aud = form.audience or ""
  local workforce = find(aud, "^//iam%.googleapis%.com/locations/[^/]+/workforcePools/[^/]+/providers/[^/]+$")
  if not workforce and not find(aud,
      "^//iam%.googleapis%.com/projects/%d+/locations/global/workloadIdentityPools/[^/]+/providers/[^/]+$") then
    return refuse(400, "invalid_request", 'Invalid value for "audience".')
  end
  if not form.scope or form.scope == "" then
    return refuse(400, "invalid_scope", "Scope(s) must be provided.")
  end
  local cid, secret = basic_client(req)
  if cid ~= nil and (fed.clients or {})[cid] ~= secret then
    return refuse(401, "invalid_client", "The OAuth client was not found.")
  end
  local options = form.options and cjson.decode(form.options) or {}
  if type(options) ~= "table" then return refuse(400, "invalid_request", 'Invalid value for "options".') end
  if workforce and cid == nil and not options.userProject then
    return refuse(400, "invalid_request", "userProject is required for workforce pools without a client.")
  end
  local tok, stt = form.subject_token or "", form.subject_token_type
  if tok == "" then return refuse(400, "invalid_request", "Missing subject_token.") end
  local problem
  if JWT_TYPES[stt] then
    problem = check_oidc(fed, tok, self.now())
  elseif stt == AWS_TYPE then
    problem = check_aws(fed, tok, aud, self.now())
  else
    return refuse(400, "invalid_request", 'Invalid value for "subject_token_type".')
  end
  if problem then return refuse(400, "invalid_grant", problem) end
  local scopes = {}
  for s in form.scope:gmatch("%S+") do scopes[#scopes + 1] = s end
  local new, life = self:issue({ subject = "principal://" .. sub(aud, 3), scopes = scopes,
                                 federated = true })
  entry.principal = aud
  return reply_json(200, { access_token = new, issued_token_type = ACCESS,
                           token_type = "Bearer", expires_in = life })
end

--- POST .../serviceAccounts/<email>:generateAccessToken with a token the
-- emulator issued that carries cloud-platform.
function _M.generate_access_token(self, req, entry, email, reply_json, google_error)
  entry.endpoint = "generateAccessToken"
  local fed = self.federation or {}
  local a = req.headers.authorization
  local tok = a and match(a, "^[Bb]earer%s+(%S+)$")
  local grant = tok and self.tokens[tok]
  if not grant or grant.exp <= self.now() then
    return reply_json(401, google_error(401, "UNAUTHENTICATED",
      "Request had invalid authentication credentials.", "authError"))
  end
  if not grant.scope_set[CLOUD_PLATFORM] then
    return reply_json(403, google_error(403, "PERMISSION_DENIED",
      "Request had insufficient authentication scopes.", "forbidden"))
  end
  if fed.accounts and not fed.accounts[email] then
    return reply_json(403, google_error(403, "PERMISSION_DENIED",
      "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not exist).",
      "forbidden"))
  end
  local body = cjson.decode(req.body or "")
  local scopes = type(body) == "table" and body.scope
  if type(scopes) ~= "table" or #scopes == 0 then
    return reply_json(400, google_error(400, "INVALID_ARGUMENT", "Scope required.", "badRequest"))
  end
  local life = 3600
  if body.lifetime ~= nil then
    life = tonumber(match(tostring(body.lifetime), "^(%d+)s$"))
    if not life or life < 1 or life > 43200 then
      return reply_json(400, google_error(400, "INVALID_ARGUMENT",
        "The lifetime must be between 1s and 43200s.", "badRequest"))
    end
  end
  local new = self:issue({ email = email, subject = email, scopes = scopes })
  -- Its own lifetime, as asked.
  self.tokens[new].exp = self.now() + life
  entry.principal = email
  local t = os.date("!%Y-%m-%dT%H:%M:%SZ", math.floor(self.now() + life))
  return reply_json(200, { accessToken = new, expireTime = t })
end

return _M
