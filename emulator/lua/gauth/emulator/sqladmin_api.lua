--- The in-memory Cloud SQL Admin API of gauth's emulator: `instances`
-- list/get/insert/delete and `operations` get (v1 and v1beta4), behind
-- the bearer-token check every Google API makes (access tokens it issued,
-- self-signed JWTs), with Google's 401/403 answers. Its Discovery
-- documents are `gauth.emulator.sqladmin`'s. Methods of the emulator's
-- state (`gauth.emulator.google`). Internal.
-- @module gauth.emulator.sqladmin_api

local core = require "gauth.core"
local cjson = require "cjson.safe"
local httpd = require "gauth.emulator.httpd"
local sqladmin = require "gauth.emulator.sqladmin"
local common = require "gauth.emulator.common"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local remove = table.remove
local format = string.format
local find = string.find
local match = string.match
local lower = string.lower
local next = next
local b64url_encode = core.b64url_encode
local b64url_decode = core.b64url_decode

local SCOPE_PLATFORM = common.SCOPE_PLATFORM
local SCOPE_SQL = common.SCOPE_SQL
local uuid = common.uuid
local rfc3339 = common.rfc3339
local deep_copy = common.deep_copy
local split_words = common.split_words
local set_of = common.set_of
local reply_json = common.reply_json
local google_error = common.google_error
local not_found = common.not_found
local method_not_allowed = common.method_not_allowed

local _M = { _VERSION = "0.1.0" }

local MSG_UNAUTHENTICATED = "Request had invalid authentication credentials. "
  .. "Expected OAuth 2 access token, login cookie or other valid "
  .. "authentication credential. See "
  .. "https://developers.google.com/identity/sign-in/web/devconsole-project."
local MSG_LOGIN_REQUIRED = "Request is missing required authentication "
  .. "credential. Expected OAuth 2 access token, login cookie or other valid "
  .. "authentication credential. See "
  .. "https://developers.google.com/identity/sign-in/web/devconsole-project."

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

return _M
