--- What gauth's emulator answers: the OAuth 2.0 token endpoint, a GCE
-- metadata server, Google's signing certificates and tokeninfo, a
-- Discovery endpoint, and an in-memory Cloud SQL Admin API (`instances`
-- list/get/insert/delete, `operations` get), each in Google's shapes,
-- errors included. Also keeps the trace of what it served. Internal: use
-- `gauth.emulator`.
-- @module gauth.emulator.google

local core = require "gauth.core"
local jwt = require "gauth.jwt"
local cjson = require "cjson.safe"
local httpd = require "gauth.emulator.httpd"
local sqladmin = require "gauth.emulator.sqladmin"
local federation = require "gauth.emulator.federation"
local sys = require "gauth.lib.sys"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local concat = table.concat
local remove = table.remove
local sort = table.sort
local format = string.format
local find = string.find
local sub = string.sub
local gsub = string.gsub
local match = string.match
local lower = string.lower
local upper = string.upper
local byte = string.byte
local next = next
local floor = math.floor
local os_date = os.date
local io_open = io.open
local io_popen = io.popen
local b64url_encode = core.b64url_encode
local b64url_decode = core.b64url_decode
local read_file = sys.read_file

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
local GOOGLE_ISSUER = "https://accounts.google.com"
local SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local SCOPE_SQL = "https://www.googleapis.com/auth/sqlservice.admin"
local JSON_TYPE = "application/json; charset=UTF-8"
local TEXT_TYPE = "application/text"

_M.DEFAULT_PROJECT = "exemplary-example-123"
_M.DEFAULT_NUMERIC_PROJECT = "123456789012"

-- Google's own words, so that code written against the emulator handles
-- the real service's answers too.
local MSG_BAD_SIGNATURE = "Invalid JWT Signature."
local MSG_TIME_WINDOW = "Invalid JWT: Token must be a short-lived token "
  .. "(60 minutes) and in a reasonable timeframe. Check your iat and exp "
  .. "values in the JWT claim."
local MSG_UNAUTHENTICATED = "Request had invalid authentication credentials. "
  .. "Expected OAuth 2 access token, login cookie or other valid "
  .. "authentication credential. See "
  .. "https://developers.google.com/identity/sign-in/web/devconsole-project."
local MSG_LOGIN_REQUIRED = "Request is missing required authentication "
  .. "credential. Expected OAuth 2 access token, login cookie or other valid "
  .. "authentication credential. See "
  .. "https://developers.google.com/identity/sign-in/web/devconsole-project."
local MSG_UNAUTHORIZED_CLIENT = "Client is unauthorized to retrieve access "
  .. "tokens using this method, or client not authorized for any of the "
  .. "scopes requested."

-- Query parameters whose values never go into the trace.
local SECRET_PARAMS = { access_token = true, oauth_token = true, key = true,
                        assertion = true, refresh_token = true,
                        client_secret = true, id_token = true }

-- ------------------------------------------------------------------------
-- Small helpers

--- JSON text without cjson's escaped slashes (valid either way; easier to
-- read in a trace or a terminal).
local function json(v)
  local s, err = cjson.encode(v)
  if not s then error("gauth.emulator: JSON encode: " .. tostring(err)) end
  return (gsub(s, "\\/", "/"))
end
_M.json = json

local function hex(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end
_M.hex = hex

local function random_hex(n)
  return hex(core.random_bytes(n))
end

local function uuid()
  local h = random_hex(16)
  return sub(h, 1, 8) .. "-" .. sub(h, 9, 12) .. "-" .. sub(h, 13, 16)
    .. "-" .. sub(h, 17, 20) .. "-" .. sub(h, 21, 32)
end

local function rfc3339(t)
  local whole = floor(t)
  return os_date("!%Y-%m-%dT%H:%M:%S", whole)
    .. format(".%03dZ", floor((t - whole) * 1000))
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deep_copy(x) end
  return t
end

local function split_words(s, sep)
  local out = {}
  if type(s) ~= "string" then return out end
  for w in s:gmatch("[^" .. sep .. "]+") do out[#out + 1] = w end
  return out
end

-- A stable 21-digit number for an account, shaped like Google's client ids.
local function numeric_id(s)
  local d = { "1" }
  local h = core.sha256(s)
  for i = 1, 20 do d[#d + 1] = tostring(byte(h, i) % 10) end
  return concat(d)
end
_M.numeric_id = numeric_id

local function set_of(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = true end
  return t
end

-- Decode the payload of a compact JWS without verifying it: we need the
-- issuer to know which key to verify with.
local function peek_claims(token)
  if type(token) ~= "string" then return nil end
  local p1 = match(token, "^[%w_%-=]+%.([%w_%-=]+)%.[%w_%-=]*$")
  if not p1 then return nil end
  local raw = b64url_decode((gsub(p1, "=+$", "")))
  if not raw then return nil end
  local claims = cjson.decode(raw)
  if type(claims) ~= "table" then return nil end
  return claims
end

-- The claims worth showing in a trace: all of them, but only plain values
-- (an assertion is the caller's, and holds nothing secret but its
-- signature, which we drop).
local function trace_claims(claims)
  local out = {}
  for k, v in pairs(claims) do
    if type(k) == "string" and (type(v) == "string" or type(v) == "number"
        or type(v) == "boolean" or type(v) == "table") then
      out[k] = v
    end
  end
  return out
end

-- ------------------------------------------------------------------------
-- Keys

--- Make a fresh 2048-bit RSA private key (PKCS#8 PEM) with the openssl
-- command. The key comes back over a pipe and never touches the disk.
-- @return pem, or nil and a message
function _M.generate_rsa_pem(bits)
  bits = tonumber(bits) or 2048
  local p = io_popen("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:"
                     .. floor(bits) .. " 2>/dev/null")
  if not p then return nil, "cannot run openssl" end
  local pem = p:read("*a")
  p:close()
  if not pem or not find(pem, "-----BEGIN PRIVATE KEY-----", 1, true) then
    return nil, "openssl genpkey failed (is the openssl command installed?)"
  end
  return pem
end

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

-- ------------------------------------------------------------------------
-- Answers

local function reply(status, body, ctype, headers)
  local h = headers or {}
  h["Content-Type"] = ctype
  return status, h, body
end

local function reply_json(status, v, headers)
  return reply(status, json(v), JSON_TYPE, headers)
end

-- The error body every Google JSON API sends.
local function google_error(code, status, message, reason, opts)
  opts = opts or {}
  local e = { message = opts.item_message or message, domain = "global",
              reason = reason }
  if opts.location then
    e.location, e.locationType = opts.location, opts.location_type
  end
  local err = { code = code, message = message, errors = { e }, status = status }
  if opts.details then err.details = opts.details end
  return { error = err }
end
_M.google_error = google_error

local STATUS_NAMES = {
  [400] = { "INVALID_ARGUMENT", "badRequest" },
  [401] = { "UNAUTHENTICATED", "authError" },
  [403] = { "PERMISSION_DENIED", "forbidden" },
  [404] = { "NOT_FOUND", "notFound" },
  [405] = { "METHOD_NOT_ALLOWED", "httpMethodNotAllowed" },
  [409] = { "ALREADY_EXISTS", "conflict" },
  [411] = { "INVALID_ARGUMENT", "badRequest" },
  [413] = { "INVALID_ARGUMENT", "badRequest" },
  [414] = { "INVALID_ARGUMENT", "badRequest" },
  [431] = { "INVALID_ARGUMENT", "badRequest" },
  [500] = { "INTERNAL", "backendError" },
  [501] = { "UNIMPLEMENTED", "notImplemented" },
  [505] = { "INVALID_ARGUMENT", "badRequest" },
}

--- Body for the answers the HTTP layer makes itself (garbage requests).
function _M.error_body(status, message)
  local names = STATUS_NAMES[status] or { "UNKNOWN", "unknown" }
  return JSON_TYPE, json(google_error(status, names[1], message, names[2]))
end

local function oauth_error(status, err, description)
  return reply_json(status, { error = err, error_description = description },
                    { ["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate",
                      Pragma = "no-cache" })
end

local function not_found(path)
  return reply_json(404, google_error(404, "NOT_FOUND",
    "The requested URL " .. path .. " was not found on this server.", "notFound"))
end

local function method_not_allowed(allow)
  return reply_json(405, google_error(405, "METHOD_NOT_ALLOWED",
    "The method is not allowed for the requested URL.", "httpMethodNotAllowed"),
    { Allow = allow })
end

-- ------------------------------------------------------------------------
-- State

--- Build the emulator's state from a configuration (see `gauth.emulator`).
-- @return state, or nil and a message
function _M.new(config)
  config = config or {}
  local self = setmetatable({
    project = config.project or _M.DEFAULT_PROJECT,
    numeric_project = type(config.numeric_project_id) == "number"
      and format("%d", config.numeric_project_id)
      or tostring(config.numeric_project_id or _M.DEFAULT_NUMERIC_PROJECT),
    lifetime = tonumber(config.token_lifetime) or 3600,
    skew = tonumber(config.clock_skew) or 60,
    extra_audiences = config.audiences,
    subjects = config.subjects and set_of(config.subjects) or nil,
    signing_key_pem = config.signing_key,
    log = config.log or function() end,
    log_requests = config.log_requests,
    accounts = {},       -- client_email -> { email, client_id, keys = {kid/i -> key} }
    clients = {},        -- client_id -> { secret, tokens = { refresh_token -> entry } }
    tokens = {},         -- access token -> grant
    ntokens = 0,
    instances = {},      -- project -> array of DatabaseInstance
    operations = {},     -- project -> name -> Operation
    documents = {},      -- "api/version" -> table
    own_documents = {},  -- "api/version" -> true for the ones written here
    rewrite_root = config.rewrite_root_url ~= false,
    trace = {},
    trace_max = tonumber(config.trace_max) or 1000,
    now = core.now,
  }, mt)
  if self.lifetime < 1 then return nil, "token_lifetime must be at least 1 second" end

  local accounts, err = _M.normalize_accounts(config)
  if not accounts then return nil, err end
  local ok, aerr = self:add_accounts(accounts)
  if not ok then return nil, aerr end
  self.metadata_email_cfg = config.metadata_email
  self.metadata_scopes = config.metadata_scopes or { SCOPE_PLATFORM }

  -- Cloud SQL instances: the caller's, or a small seed.
  local seed = config.instances
  if seed == nil then
    seed = {
      { project = self.project, name = "exemplary-mysql",
        databaseVersion = "MYSQL_8_0", region = "us-central1",
        settings = { tier = "db-f1-micro" },
        createTime = "2024-01-15T09:30:00.000Z" },
      { project = self.project, name = "exemplary-postgres",
        databaseVersion = "POSTGRES_15", region = "europe-west1",
        settings = { tier = "db-custom-1-3840", dataDiskSizeGb = "20" },
        createTime = "2024-02-20T14:05:00.000Z" },
    }
  end
  if type(seed) ~= "table" then return nil, "instances must be an array" end
  for i, inst in ipairs(seed) do
    if type(inst) ~= "table" or type(inst.name) ~= "string" then
      return nil, "instances[" .. i .. "] needs a name"
    end
    local project = type(inst.project) == "string" and inst.project or self.project
    if self:find_instance(project, inst.name) then
      return nil, "instances[" .. i .. "]: " .. inst.name .. " is there twice"
    end
    local list = self.instances[project] or {}
    self.instances[project] = list
    list[#list + 1] = self:make_instance(inst, project)
  end

  -- Discovery documents: ours, then the caller's (which may replace ours).
  for version in pairs(sqladmin.PREFIXES) do
    self.documents["sqladmin/" .. version] = sqladmin.document(version)
    self.own_documents["sqladmin/" .. version] = true
  end
  local docs = config.documents
  if docs ~= nil and type(docs) ~= "table" then
    return nil, "documents must be a table"
  end
  for k, d in pairs(docs or {}) do
    local where = "documents[" .. tostring(k) .. "]"
    if type(d) == "string" then
      local text = d
      if not find(d, "^%s*{") then
        local rerr
        text, rerr = read_file(d)
        if not text then return nil, where .. ": " .. tostring(rerr) end
      end
      d = cjson.decode(text)
    end
    if type(d) ~= "table" or type(d.name) ~= "string" or type(d.version) ~= "string" then
      return nil, where .. ": not a Discovery document (needs name and version)"
    end
    local key = d.name .. "/" .. d.version
    self.documents[key] = d
    self.own_documents[key] = nil
  end
  -- Workload identity federation (STS, generateAccessToken).
  local fed, ferr = federation.configure(config.federation)
  if not fed then return nil, ferr end
  self.federation = fed
  return self
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

-- The account the metadata server speaks for: the configured one, else the
-- first service account we were given, else a Compute Engine default.
function _M.metadata_email(self)
  return self.metadata_email_cfg or self.first_account
    or (self.numeric_project .. "-compute@developer.gserviceaccount.com")
end

--- Tell the state its own URL (known once the socket is bound).
function _M.set_url(self, url)
  self.url = url
  self.token_uri = url .. "/token"
  self.audiences = { [self.token_uri] = true }
  if type(self.extra_audiences) == "table" then
    for _, a in ipairs(self.extra_audiences) do self.audiences[a] = true end
  elseif type(self.extra_audiences) == "string" then
    self.audiences[self.extra_audiences] = true
  end
  self.doc_json = {}
  local root = url .. "/"
  for key, d in pairs(self.documents) do
    if self.own_documents[key] then
      d = sqladmin.document(d.version, root)
    elseif self.rewrite_root then
      -- Point the caller's documents here, so that a client built from
      -- them sends its requests to the emulator and never to Google.
      d = deep_copy(d)
      d.rootUrl = root
      d.baseUrl = root .. (d.servicePath or "")
      if d.mtlsRootUrl then d.mtlsRootUrl = root end
    end
    self.doc_json[key] = json(d)
  end
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

function _M.signer(self)
  if self._signer then return self._signer end
  local pem = self.signing_key_pem
  if not pem then
    local err
    pem, err = _M.generate_rsa_pem(2048)
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
-- POST /token

local function request_params(req)
  local ctype = lower(req.headers["content-type"] or "")
  if find(ctype, "json", 1, true) then
    local v = cjson.decode(req.body or "")
    local out = {}
    if type(v) == "table" then
      for k, x in pairs(v) do
        if type(k) == "string" and (type(x) == "string" or type(x) == "number") then
          out[k] = tostring(x)
        end
      end
    end
    return out
  end
  return httpd.parse_form(req.body)
end

function _M.token_endpoint(self, req, entry)
  entry.endpoint = "token"
  if req.method ~= "POST" then return method_not_allowed("POST") end
  local form = request_params(req)
  local gt = form.grant_type
  entry.grant_type = gt
  if gt == JWT_BEARER then
    entry.grant_type = "jwt-bearer"
    return self:jwt_bearer(form, entry)
  elseif gt == "refresh_token" then
    return self:refresh(req, form, entry)
  end
  entry.error = "unsupported_grant_type"
  return oauth_error(400, "unsupported_grant_type",
                     "Invalid grant_type: " .. (gt or ""))
end

local function grant_error(entry, status, err, description)
  entry.error = err
  entry.error_description = description
  return oauth_error(status, err, description)
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

function _M.jwt_bearer(self, form, entry)
  local assertion = form.assertion
  if not assertion or assertion == "" then
    return grant_error(entry, 400, "invalid_request",
                       "Missing required parameter: assertion")
  end
  local claims, acct, peeked = self:verify_account_jwt(assertion)
  if not claims then
    local description = acct
    if peeked then entry.claims = trace_claims(peeked) end
    entry.verified = false
    return grant_error(entry, 400, "invalid_grant", description)
  end
  entry.claims = trace_claims(claims)
  entry.verified = true
  if not self.audiences[claims.aud] then
    return grant_error(entry, 400, "invalid_grant",
      "Invalid JWT: Failed audience check. The expected value was " .. self.token_uri)
  end
  if claims.sub ~= nil and claims.sub ~= claims.iss then
    if type(claims.sub) ~= "string" or (self.subjects and not self.subjects[claims.sub]) then
      return grant_error(entry, 401, "unauthorized_client", MSG_UNAUTHORIZED_CLIENT)
    end
  end
  local target = claims.target_audience
  if type(target) == "string" and target ~= "" then
    local idt, err = self:id_token(target, acct.email, acct.client_id)
    if not idt then error("id token: " .. tostring(err)) end
    entry.issued = "id_token"
    return reply_json(200, { id_token = idt })
  end
  local scopes = split_words(claims.scope, " ")
  if #scopes == 0 then
    return grant_error(entry, 400, "invalid_scope",
                       "Invalid OAuth scope or ID token audience provided.")
  end
  local tok, expires_in = self:issue({ kind = "service_account", email = acct.email,
    subject = claims.sub, scopes = scopes, client_id = acct.client_id })
  entry.issued = "access_token"
  return reply_json(200, { access_token = tok, expires_in = expires_in,
                           token_type = "Bearer" },
    { ["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate",
      Pragma = "no-cache" })
end

function _M.refresh(self, req, form, entry)
  local id, secret = form.client_id, form.client_secret
  local auth = req.headers.authorization
  if auth and match(lower(auth), "^basic%s") then
    local dec = core.b64_decode(match(auth, "^%S+%s+(%S+)") or "")
    local u, p = match(dec or "", "^([^:]*):(.*)$")
    if u then
      id = id or httpd.unescape(gsub(u, "+", " "))
      secret = secret or httpd.unescape(gsub(p, "+", " "))
    end
  end
  entry.client_id = id
  if not form.refresh_token or form.refresh_token == "" then
    return grant_error(entry, 400, "invalid_request",
                       "Missing required parameter: refresh_token")
  end
  local client = id and self.clients[id]
  if not client then
    return grant_error(entry, 401, "invalid_client", "The OAuth client was not found.")
  end
  if secret ~= client.secret then
    return grant_error(entry, 401, "invalid_client", "Unauthorized")
  end
  local user = client.tokens[form.refresh_token]
  if not user then
    return grant_error(entry, 400, "invalid_grant", "Token has been expired or revoked.")
  end
  local scopes = user.scopes
  if form.scope and form.scope ~= "" then
    -- A refresh may narrow the scopes, never widen them.
    local have = set_of(user.scopes)
    scopes = split_words(form.scope, " ")
    for _, s in ipairs(scopes) do
      if not have[s] then
        return grant_error(entry, 400, "invalid_scope",
          "The requested scope is not granted by the refresh token.")
      end
    end
  end
  entry.account = user.account
  local tok, expires_in = self:issue({ kind = "authorized_user", email = user.account,
    scopes = scopes, client_id = id })
  entry.issued = "access_token"
  return reply_json(200, { access_token = tok, expires_in = expires_in,
                           scope = concat(scopes, " "), token_type = "Bearer" })
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

-- ------------------------------------------------------------------------
-- GCE metadata server

local function md_reply(status, body, ctype)
  return reply(status, body, ctype or TEXT_TYPE, { ["Metadata-Flavor"] = "Google" })
end

function _M.metadata(self, req, entry)
  entry.endpoint = "metadata"
  local path = req.path
  if path == "/" or path == "/computeMetadata/" then
    return md_reply(200, "computeMetadata/\n")
  end
  if req.headers["metadata-flavor"] ~= "Google" then
    entry.error = "missing Metadata-Flavor header"
    return md_reply(403, "Your client does not have permission to get URL "
      .. path .. " from this server. Missing Metadata-Flavor:Google header.\n",
      "text/html; charset=UTF-8")
  end
  if req.headers["x-forwarded-for"] then
    -- The real server refuses proxied requests: a guard against SSRF.
    entry.error = "X-Forwarded-For present"
    return md_reply(403, "Your client does not have permission to get URL "
      .. path .. " from this server.\n", "text/html; charset=UTF-8")
  end
  if req.method ~= "GET" then
    return md_reply(405, "Method not allowed\n", "text/html; charset=UTF-8")
  end
  local rel = match(path, "^/computeMetadata/v1/?(.*)$")
  if not rel then return md_reply(404, "Not Found\n", "text/html; charset=UTF-8") end
  local q = req.query
  local function value(v)
    if q.alt == "json" then return md_reply(200, json(v), "application/json") end
    return md_reply(200, v)
  end
  if rel == "" then return md_reply(200, "instance/\nproject/\nuniverse/\n") end
  if rel == "project/project-id" then return value(self.project) end
  if rel == "project/numeric-project-id" then return value(self.numeric_project) end
  if rel == "instance/zone" then
    return value("projects/" .. self.numeric_project .. "/zones/us-central1-a")
  end
  if rel == "instance/id" then return value("4520031799277581759") end
  if rel == "instance/hostname" then
    return value("gauth-emulator.us-central1-a.c." .. self.project .. ".internal")
  end
  if rel == "universe/universe-domain" then return value("googleapis.com") end
  if rel == "instance/service-accounts" or rel == "instance/service-accounts/" then
    return md_reply(200, "default/\n" .. self:metadata_email() .. "/\n")
  end
  local acct, what = match(rel, "^instance/service%-accounts/([^/]+)/?(.*)$")
  if not acct then return md_reply(404, "Not Found\n", "text/html; charset=UTF-8") end
  acct = httpd.unescape(acct)
  if acct ~= "default" and acct ~= self:metadata_email() then
    return md_reply(404, "Not Found\n", "text/html; charset=UTF-8")
  end
  local email = self:metadata_email()
  entry.account = email
  if what == "" then
    if q.recursive == "true" then
      return md_reply(200, json({ aliases = { "default" }, email = email,
                                  scopes = self.metadata_scopes }), "application/json")
    end
    return md_reply(200, "aliases\nemail\nidentity\nscopes\ntoken\n")
  elseif what == "email" then
    return value(email)
  elseif what == "aliases" then
    return value("default\n")
  elseif what == "scopes" then
    return value(concat(self.metadata_scopes, "\n") .. "\n")
  elseif what == "token" then
    local scopes = self.metadata_scopes
    if q.scopes and q.scopes ~= "" then scopes = split_words(q.scopes, ",") end
    entry.scopes = scopes
    local acct_entry = self.accounts[email]
    local tok, expires_in = self:issue({ kind = "metadata", email = email,
      scopes = scopes, client_id = acct_entry and acct_entry.client_id })
    entry.issued = "access_token"
    return md_reply(200, json({ access_token = tok, expires_in = expires_in,
                                token_type = "Bearer" }), "application/json")
  elseif what == "identity" then
    if not q.audience or q.audience == "" then
      return md_reply(400, "non-empty audience parameter required\n",
                      "text/html; charset=UTF-8")
    end
    local full = q.format == "full"
    local acct_entry = self.accounts[email]
    local extra
    if full then
      extra = { google = { compute_engine = {
        project_id = self.project, project_number = tonumber(self.numeric_project),
        zone = "us-central1-a", instance_id = "4520031799277581759",
        instance_name = "gauth-emulator" } } }
    end
    local idt, err = self:id_token(q.audience, email,
      acct_entry and acct_entry.client_id, full, extra)
    if not idt then error(err) end
    entry.issued = "id_token"
    return md_reply(200, idt)
  end
  return md_reply(404, "Not Found\n", "text/html; charset=UTF-8")
end

-- ------------------------------------------------------------------------
-- Discovery

function _M.discovery(self, req, entry)
  entry.endpoint = "discovery"
  if req.method ~= "GET" then return method_not_allowed("GET") end
  local path = req.path
  local key
  if path == "/discovery/v1/apis" or path == "/discovery/v1/apis/" then
    local items, keys = {}, {}
    for k in pairs(self.documents) do keys[#keys + 1] = k end
    sort(keys)
    for _, k in ipairs(keys) do
      local d = self.documents[k]
      items[#items + 1] = {
        kind = "discovery#directoryItem", id = d.name .. ":" .. d.version,
        name = d.name, version = d.version, title = d.title,
        description = d.description,
        discoveryRestUrl = self.url .. "/discovery/v1/apis/" .. k .. "/rest",
        preferred = false,
      }
    end
    return reply_json(200, { kind = "discovery#directoryList",
                             discoveryVersion = "v1", items = items })
  end
  local api, version = match(path, "^/discovery/v1/apis/([^/]+)/([^/]+)/rest$")
  if api then
    key = httpd.unescape(api) .. "/" .. httpd.unescape(version)
  elseif path == "/$discovery/rest" and req.query.version then
    -- Google's per-API host form; on one host, the version must say which.
    local found
    for k, d in pairs(self.documents) do
      if d.version == req.query.version then
        if found then found = false break end
        found = k
      end
    end
    key = found or nil
  end
  entry.document = key
  local doc = key and self.doc_json[key]
  if not doc then
    return reply_json(404, google_error(404, "NOT_FOUND",
      "Requested entity was not found.", "notFound"))
  end
  return reply(200, doc, JSON_TYPE)
end

-- ------------------------------------------------------------------------
-- Cloud SQL Admin API

function _M.find_instance(self, project, name)
  for i, inst in ipairs(self.instances[project] or {}) do
    if inst.name == name then return inst, i end
  end
end

function _M.make_instance(self, body, project)
  local inst = deep_copy(body)
  inst.kind = "sql#instance"
  inst.project = project
  inst.selfLink = nil
  if type(inst.databaseVersion) ~= "string" then inst.databaseVersion = "MYSQL_8_0" end
  if type(inst.region) ~= "string" then inst.region = "us-central1" end
  if type(inst.gceZone) ~= "string" then inst.gceZone = inst.region .. "-a" end
  inst.state = "RUNNABLE"
  if type(inst.backendType) ~= "string" then inst.backendType = "SECOND_GEN" end
  if type(inst.instanceType) ~= "string" then inst.instanceType = "CLOUD_SQL_INSTANCE" end
  inst.connectionName = project .. ":" .. inst.region .. ":" .. inst.name
  local s = type(inst.settings) == "table" and inst.settings or {}
  s.kind = "sql#settings"
  if type(s.tier) ~= "string" then s.tier = "db-f1-micro" end
  if s.dataDiskSizeGb == nil then s.dataDiskSizeGb = "10" end
  if type(s.activationPolicy) ~= "string" then s.activationPolicy = "ALWAYS" end
  inst.settings = s
  if type(inst.ipAddresses) ~= "table" then
    -- From TEST-NET-3 (RFC 5737): never a real address.
    local n = 0
    for _, list in pairs(self.instances) do n = n + #list end
    inst.ipAddresses = { { type = "PRIMARY", ipAddress = "203.0.113." .. (10 + n % 200) } }
  end
  if type(inst.createTime) ~= "string" then inst.createTime = rfc3339(self.now()) end
  return inst
end

local function render_instance(inst, base)
  local out = deep_copy(inst)
  out.selfLink = base .. "projects/" .. inst.project .. "/instances/" .. inst.name
  return out
end

local function sql_error(code, status, message, reason)
  return reply_json(code, google_error(code, status, message, reason))
end

local function invalid(message, reason)
  return sql_error(400, "INVALID_ARGUMENT", message, reason or "invalid")
end

-- Check the bearer token of an API request.
-- @return the grant, or nil and the 401/403 answer (status, headers, body)
function _M.authenticate(self, req, entry, rpc)
  local tok
  local h = req.headers.authorization
  if h then
    local scheme, cred = match(h, "^(%S+)%s+(%S+)%s*$")
    if scheme and lower(scheme) == "bearer" then tok = cred else tok = false end
  elseif req.query.access_token and req.query.access_token ~= "" then
    tok = req.query.access_token
  elseif req.query.oauth_token and req.query.oauth_token ~= "" then
    tok = req.query.oauth_token
  end
  local realm = 'Bearer realm="https://accounts.google.com/"'
  if tok == nil then
    entry.auth = "missing"
    return nil, reply_json(401, google_error(401, "UNAUTHENTICATED", MSG_LOGIN_REQUIRED,
      "required", { item_message = "Login Required.", location = "Authorization",
                    location_type = "header" }), { ["WWW-Authenticate"] = realm })
  end
  local grant = tok and self.tokens[tok]
  if tok and not grant and find(tok, "^[%w_%-=]+%.[%w_%-=]+%.[%w_%-=]+$") then
    grant = self:self_signed_grant(tok, entry)
  end
  local now = self.now()
  if not grant or grant.exp <= now then
    entry.auth = (not tok and "not a bearer token")
      or (grant and "expired token") or entry.auth or "unknown token"
    return nil, reply_json(401, google_error(401, "UNAUTHENTICATED", MSG_UNAUTHENTICATED,
      "authError", { item_message = "Invalid Credentials", location = "Authorization",
                     location_type = "header" }),
      { ["WWW-Authenticate"] = realm .. ', error="invalid_token"' })
  end
  entry.principal = grant.subject or grant.email
  entry.scopes = grant.scopes
  if not grant.any_scope and not grant.scope_set[SCOPE_PLATFORM]
      and not grant.scope_set[SCOPE_SQL] then
    entry.auth = "insufficient scopes"
    return nil, reply_json(403, google_error(403, "PERMISSION_DENIED",
      "Request had insufficient authentication scopes.", "insufficientPermissions",
      { item_message = "Insufficient Permission", details = { {
        ["@type"] = "type.googleapis.com/google.rpc.ErrorInfo",
        reason = "ACCESS_TOKEN_SCOPE_INSUFFICIENT", domain = "googleapis.com",
        metadata = { service = "sqladmin.googleapis.com", method = rpc } } } }),
      { ["WWW-Authenticate"] = realm .. ', error="insufficient_scope", scope="'
          .. SCOPE_SQL .. " " .. SCOPE_PLATFORM .. '"' })
  end
  entry.auth = "ok"
  return grant
end

-- Google also takes a JWT signed by a service account as a bearer token
-- ("self-signed JWT"): aud is the API's root URL, or a scope claim says
-- what it is for.
function _M.self_signed_grant(self, tok, entry)
  local claims, acct = self:verify_account_jwt(tok)
  if not claims then
    entry.auth = "self-signed JWT refused: " .. tostring(acct)
    return nil
  end
  local aud = claims.aud
  local scopes = split_words(claims.scope, " ")
  local aud_ok = aud == self.url .. "/" or aud == self.url
    or aud == "https://sqladmin.googleapis.com/" or aud == "https://sqladmin.googleapis.com"
  if not aud_ok and #scopes == 0 then
    entry.auth = "self-signed JWT for another audience"
    return nil
  end
  entry.self_signed_jwt = true
  return { kind = "self_signed_jwt", email = acct.email, subject = claims.sub,
           scopes = scopes, scope_set = set_of(scopes), any_scope = #scopes == 0,
           exp = claims.exp }
end

local RPC = {
  list = "SqlInstancesService.List", get = "SqlInstancesService.Get",
  insert = "SqlInstancesService.Insert", delete = "SqlInstancesService.Delete",
  operation = "SqlOperationsService.Get",
}

function _M.sql(self, req, entry, version, rest)
  entry.endpoint = "sqladmin"
  local base = self.url .. "/" .. sqladmin.PREFIXES[version]
  local segs = {}
  for s in (rest .. "/"):gmatch("([^/]*)/") do segs[#segs + 1] = httpd.unescape(s) end
  for _, s in ipairs(segs) do
    if s == "" then return not_found(req.path) end
  end
  if segs[1] ~= "projects" or not segs[2] then return not_found(req.path) end
  local project = segs[2]
  local kind, allow
  if segs[3] == "instances" and #segs == 3 then
    kind = req.method == "POST" and "insert" or "list"
    allow = "GET, POST"
    if req.method ~= "GET" and req.method ~= "POST" then kind = nil end
  elseif segs[3] == "instances" and #segs == 4 then
    kind = (req.method == "GET" and "get") or (req.method == "DELETE" and "delete") or nil
    allow = "GET, DELETE"
  elseif segs[3] == "operations" and #segs == 4 then
    kind = req.method == "GET" and "operation" or nil
    allow = "GET"
  else
    return not_found(req.path)
  end
  if not kind then return method_not_allowed(allow) end
  entry.call = "sql." .. (kind == "operation" and "operations.get" or ("instances." .. kind))
  local grant, status, headers, body = self:authenticate(req, entry,
    "google.cloud.sql." .. version .. "." .. RPC[kind])
  if not grant then return status, headers, body end
  local principal = grant.subject or grant.email or "unknown"

  if kind == "list" then
    local q = req.query
    local max = 500
    if q.maxResults and q.maxResults ~= "" then
      if not match(q.maxResults, "^%d+$") or #q.maxResults > 10 then
        return invalid(format("Invalid value at 'max_results' (TYPE_UINT32), %q",
                              q.maxResults))
      end
      max = tonumber(q.maxResults)
      if max == 0 then max = 500 elseif max > 1000 then max = 1000 end
    end
    local list = self.instances[project] or {}
    local offset = 0
    if q.pageToken and q.pageToken ~= "" then
      local raw = b64url_decode(q.pageToken)
      local o = raw and match(raw, "^offset:(%d+)$")
      if not o then return invalid("Invalid request: Invalid page token.") end
      offset = tonumber(o)
    end
    local items = {}
    for i = offset + 1, offset + max do
      if not list[i] then break end
      items[#items + 1] = render_instance(list[i], base)
    end
    local resp = { kind = "sql#instancesList" }
    -- Google leaves out `items` when there are none.
    if #items > 0 then resp.items = items end
    if offset + max < #list then
      resp.nextPageToken = b64url_encode("offset:" .. (offset + max))
    end
    entry.items = #items
    return reply_json(200, resp)
  end

  local function op(op_type, target, inst_link)
    local now = rfc3339(self.now())
    local o = { kind = "sql#operation", name = uuid(), operationType = op_type,
                status = "DONE", targetId = target, targetProject = project,
                targetLink = inst_link, user = principal,
                insertTime = now, startTime = now, endTime = now }
    local ops = self.operations[project] or {}
    self.operations[project] = ops
    ops[o.name] = o
    entry.operation = o.name
    local out = deep_copy(o)
    out.selfLink = base .. "projects/" .. project .. "/operations/" .. o.name
    return out
  end
  local function missing_instance()
    return sql_error(404, "NOT_FOUND", "The Cloud SQL instance does not exist.",
                     "instanceDoesNotExist")
  end

  if kind == "get" then
    local inst = self:find_instance(project, segs[4])
    entry.instance = segs[4]
    if not inst then return missing_instance() end
    return reply_json(200, render_instance(inst, base))
  elseif kind == "delete" then
    local inst, i = self:find_instance(project, segs[4])
    entry.instance = segs[4]
    if not inst then return missing_instance() end
    remove(self.instances[project], i)
    return reply_json(200, op("DELETE", inst.name,
      base .. "projects/" .. project .. "/instances/" .. inst.name))
  elseif kind == "insert" then
    local b = cjson.decode(req.body or "")
    if type(b) ~= "table" or (next(b) ~= nil and b[1] ~= nil) then
      return reply_json(400, google_error(400, "INVALID_ARGUMENT",
        "Invalid JSON payload received. Expected a DatabaseInstance object.",
        "parseError", { item_message = "Parse Error" }))
    end
    local name = b.name
    if type(name) ~= "string" or name == "" then
      return invalid("Missing parameter: name.", "required")
    end
    entry.instance = name
    if #name > 98 or not match(name, "^[a-z][a-z0-9%-]*$") or find(name, "%-$") then
      return invalid("Invalid request: instance name (" .. name .. ").")
    end
    if self:find_instance(project, name) then
      return sql_error(409, "ALREADY_EXISTS", "The Cloud SQL instance already exists.",
                       "instanceAlreadyExists")
    end
    local inst = self:make_instance(b, project)
    local list = self.instances[project] or {}
    self.instances[project] = list
    list[#list + 1] = inst
    return reply_json(200, op("CREATE", name,
      base .. "projects/" .. project .. "/instances/" .. name))
  else -- operation
    local o = (self.operations[project] or {})[segs[4]]
    if not o then
      return sql_error(404, "NOT_FOUND", "The Cloud SQL operation does not exist.",
                       "operationDoesNotExist")
    end
    local out = deep_copy(o)
    out.selfLink = base .. "projects/" .. project .. "/operations/" .. o.name
    return reply_json(200, out)
  end
end

-- ------------------------------------------------------------------------
-- The emulator's own control path (not traced)

function _M.control(self, req, entry)
  entry.internal = true
  if req.path == "/_emulator/requests" then
    if req.method == "GET" then
      if #self.trace == 0 then return reply(200, "[]", JSON_TYPE) end
      return reply_json(200, self.trace)
    elseif req.method == "DELETE" then
      self.trace = {}
      return 204, {}, ""
    end
    return method_not_allowed("GET, DELETE")
  elseif req.path == "/_emulator/health" then
    return reply_json(200, { ok = true, url = self.url, project = self.project })
  end
  return not_found(req.path)
end

-- ------------------------------------------------------------------------
-- Dispatch

local function trace_query(q)
  local out, any = {}, false
  for k, v in pairs(q) do
    out[k] = SECRET_PARAMS[k] and "[redacted]" or v
    any = true
  end
  return any and out or nil
end

local function summary(entry)
  local parts = { entry.method, entry.path, tostring(entry.status) }
  local function add(k, v) if v ~= nil then parts[#parts + 1] = k .. "=" .. tostring(v) end end
  add("grant", entry.grant_type)
  if entry.claims then
    add("iss", entry.claims.iss)
    add("sub", entry.claims.sub)
    add("scope", entry.claims.scope)
    add("target_audience", entry.claims.target_audience)
  end
  add("call", entry.call)
  add("principal", entry.principal)
  add("auth", entry.auth ~= "ok" and entry.auth or nil)
  add("issued", entry.issued)
  add("error", entry.error)
  return concat(parts, " ")
end

--- Answer one request (the httpd handler).
-- @return status, headers, body
function _M.handle(self, req)
  local entry = { time = self.now(), method = req.method, path = req.path }
  -- Google's clients send long GETs as POST with this header and the query
  -- in a form body.
  local override = req.headers["x-http-method-override"]
  if override and req.method == "POST" then
    req.method = upper(override)
    entry.method = req.method
    entry.method_override = true
    if find(lower(req.headers["content-type"] or ""), "x-www-form-urlencoded", 1, true) then
      for k, v in pairs(httpd.parse_form(req.body)) do
        if req.query[k] == nil then req.query[k] = v end
      end
      req.body = ""
    end
  end
  local method = req.method == "HEAD" and "GET" or req.method
  req.method = method
  entry.query = trace_query(req.query)
  local status, headers, body = self:route(req, entry)
  entry.status = status
  if not entry.internal then
    local t = self.trace
    t[#t + 1] = entry
    if #t > self.trace_max then remove(t, 1) end
    if self.log_requests then self.log(summary(entry)) end
  end
  return status, headers, body
end

function _M.route(self, req, entry)
  local path = req.path
  if path == "/token" or path == "/o/oauth2/token" or path == "/oauth2/v4/token" then
    return self:token_endpoint(req, entry)
  elseif path == "/" or find(path, "^/computeMetadata/") then
    return self:metadata(req, entry)
  elseif path == "/oauth2/v3/certs" then
    return self:certs(req, entry, false)
  elseif path == "/oauth2/v1/certs" then
    return self:certs(req, entry, true)
  elseif path == "/oauth2/v3/tokeninfo" or path == "/tokeninfo" then
    return self:tokeninfo(req, entry)
  elseif find(path, "^/discovery/") or path == "/$discovery/rest" then
    return self:discovery(req, entry)
  elseif find(path, "^/_emulator/") then
    return self:control(req, entry)
  end
  if path == "/v1/token" then
    return federation.sts(self, req, entry, reply_json, oauth_error)
  end
  local sa = match(path, "^/v1/projects/[^/]+/serviceAccounts/([^/:]+):generateAccessToken$")
  if sa then
    sa = gsub(sa, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
    return federation.generate_access_token(self, req, entry, sa, reply_json, google_error)
  end
  local rest = match(path, "^/sql/v1beta4/(.*)$")
  if rest then return self:sql(req, entry, "v1beta4", rest) end
  rest = match(path, "^/v1/(.*)$")
  if rest then return self:sql(req, entry, "v1", rest) end
  entry.endpoint = "unknown"
  return not_found(path)
end

return _M
