--- gauth's emulator of Google: the state built from a configuration
-- (`new`), the trace of what it served, and the dispatch of each request
-- to the service that answers it. The services live in modules named for
-- them, whose functions are the state's methods:
--
-- * `gauth.emulator.token_endpoint`: the OAuth 2.0 token endpoint
-- * `gauth.emulator.metadata_server`: the GCE metadata server
-- * `gauth.emulator.id_tokens`: the signing key, ID tokens, certs, tokeninfo
-- * `gauth.emulator.discovery`: Discovery
-- * `gauth.emulator.sqladmin_api`: an in-memory Cloud SQL Admin API
-- * `gauth.emulator.federation`: STS and IAM Credentials' generateAccessToken
-- * `gauth.emulator.accounts`: the accounts, the tokens issued to them
--
-- `gauth.emulator.common` holds what they share. Internal: use
-- `gauth.emulator`.
-- @module gauth.emulator.google

local core = require "gauth.core"
local cjson = require "cjson.safe"
local httpd = require "gauth.emulator.httpd"
local sqladmin = require "gauth.emulator.sqladmin"
local federation = require "gauth.emulator.federation"
local sys = require "gauth.lib.sys"
local common = require "gauth.emulator.common"
local accounts = require "gauth.emulator.accounts"
local token_endpoint = require "gauth.emulator.token_endpoint"
local id_tokens = require "gauth.emulator.id_tokens"
local metadata_server = require "gauth.emulator.metadata_server"
local discovery = require "gauth.emulator.discovery"
local sqladmin_api = require "gauth.emulator.sqladmin_api"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local concat = table.concat
local remove = table.remove
local format = string.format
local find = string.find
local gsub = string.gsub
local match = string.match
local lower = string.lower
local upper = string.upper
local read_file = sys.read_file

local SCOPE_PLATFORM = common.SCOPE_PLATFORM
local JSON_TYPE = common.JSON_TYPE
local json = common.json
local deep_copy = common.deep_copy
local set_of = common.set_of
local reply = common.reply
local reply_json = common.reply_json
local google_error = common.google_error
local oauth_error = common.oauth_error
local not_found = common.not_found
local method_not_allowed = common.method_not_allowed

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

_M.DEFAULT_PROJECT = "exemplary-example-123"
_M.DEFAULT_NUMERIC_PROJECT = "123456789012"

-- Query parameters whose values never go into the trace.
local SECRET_PARAMS = { access_token = true, oauth_token = true, key = true,
                        assertion = true, refresh_token = true,
                        client_secret = true, id_token = true }

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

  local known, err = accounts.normalize_accounts(config)
  if not known then return nil, err end
  local ok, aerr = self:add_accounts(known)
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

-- The services' functions are the state's methods (`self:metadata(...)`);
-- each name in one module only.
for _, m in ipairs({ accounts, token_endpoint, id_tokens, metadata_server, discovery,
                     sqladmin_api }) do
  for k, v in pairs(m) do
    if k ~= "_VERSION" then
      assert(_M[k] == nil, k)
      _M[k] = v
    end
  end
end

-- What gauth.emulator takes from here.
_M.json = common.json
_M.hex = common.hex
_M.numeric_id = common.numeric_id
_M.google_error = common.google_error
_M.error_body = common.error_body
_M.generate_rsa_pem = common.generate_rsa_pem

return _M
