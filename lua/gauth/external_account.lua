--- External-account credentials: workload and workforce identity
-- federation. A token of an outside identity (an OIDC or SAML token read
-- from a file, an URL or a program; or a signed AWS request) is exchanged
-- at Google's Security Token Service (STS) for a Google access token, and,
-- when the configuration names a service account to impersonate, that
-- token buys one of the service account's at IAM Credentials'
-- `generateAccessToken`.
--
--     local ea = require "gauth.external_account"
--     local creds = assert(ea.from_file("/etc/gcp/wif.json"))
--     local token = assert(creds:token())
--
-- The configuration is what `gcloud iam workload-identity-pools
-- create-cred-config` writes (`"type": "external_account"`); see the README
-- for each source. `gauth.default()` and `gauth token --key-file` read it.
--
-- Sources of the subject token (`credential_source`):
--
-- * `file`: read on every refresh (Kubernetes projected tokens rotate);
--   `format` `{ type = "text" }` or `{ type = "json",
--   subject_token_field_name = ... }`.
-- * `url`: a GET with `headers`, same `format` rules.
-- * `environment_id = "aws1"`: region from `AWS_REGION`/`AWS_DEFAULT_REGION`
--   or `region_url`; keys from `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
--   `AWS_SESSION_TOKEN` or the role at `url`; an IMDSv2 session token first
--   (PUT `imdsv2_session_token_url`) when the metadata server is needed. The
--   subject token is the SigV4-signed `GetCallerIdentity` request,
--   serialized as Google's STS expects.
-- * `executable`: `command` run only with
--   `GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES=1`, never inside an nginx
--   worker; killed at `timeout_millis`; `output_file` read first as a cache.
-- * `certificate` (X.509, workload identity federation with certificates):
--   `use_default_certificate_config = true` (`GOOGLE_API_CERTIFICATE_CONFIG`,
--   else `~/.config/gcloud/certificate_config.json`) or
--   `certificate_config_location`; optional `trust_chain_path` (PEM). The
--   subject token is the JSON array of the base64 DER certificates, the
--   leaf (the configuration's `cert_path`) first, then the trust chain; the
--   exchange goes over mutual TLS with that certificate and key, to
--   `https://sts.mtls.<universe_domain>/v1/token` unless `token_url` says
--   otherwise (subject token type `urn:ietf:params:oauth:token-type:mtls`).
--
-- Secrets (subject tokens, AWS keys, the client secret, access tokens)
-- never go into an error, a log line or `tostring`. Tokens are sent only
-- over https or to a loopback host; subject tokens are read over plain
-- http only from loopback or link-local metadata servers (AWS, Azure).
--
-- Errors: `nil, msg, err`, module "external_account"; steps "key file"
-- (a malformed configuration: `field` names the field), "subject token"
-- (file and url sources: `source`), "AWS", "executable", "STS" (`status`,
-- `error`, `error_description`, `retryable`), "impersonation" (`cause`),
-- "project id" (`get_project_id`), "signing" (no impersonation: no service
-- account).
--
-- Signing (`sign_bytes`, `sign_jwt`, `fetch_id_token`) is done as the
-- impersonated service account through IAM Credentials, at the host of
-- `service_account_impersonation_url`, asked with the STS token.
-- @module gauth.external_account

local credentials = require "gauth.credentials"
local token_request = require "gauth.token_request"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local metadata = require "gauth.metadata"
local json = require "gauth.lib.json"
local ngx_phase = require "gauth.lib.ngx_phase"
local seam = require "gauth.lib.seam"
local sys = require "gauth.lib.sys"
local url_lib = require "gauth.lib.url"
local core = require "gauth.core"
local sigv4 = require "gauth.aws_sigv4"
local sts = require "gauth.sts"
local cjson = require "cjson.safe"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local error = error
local require = require
local setmetatable = setmetatable
local find = string.find
local sub = string.sub
local gsub = string.gsub
local gmatch = string.gmatch
local byte = string.byte
local match = string.match
local lower = string.lower
local format = string.format
local concat = table.concat
local sort = table.sort
local floor = math.floor
local json_decode = cjson.decode

local _M = credentials.extend({ _VERSION = "0.1.0", kind = "external_account" })
local mt = credentials.metatable(_M)
local MODULE = "external_account"

--- The token-exchange grant of RFC 8693.
_M.GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
--- What is asked of STS: an access token.
_M.REQUESTED_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"
--- STS's endpoint when the configuration names none.
_M.DEFAULT_TOKEN_URL = "https://sts.{universe_domain}/v1/token"
--- STS over mutual TLS: the default of an X.509 (certificate) source.
_M.DEFAULT_MTLS_TOKEN_URL = "https://sts.mtls.{universe_domain}/v1/token"
local universe = require "gauth.universe"
--- Google's universe (`gauth.universe.DEFAULT`): the default of a
-- configuration without `universe_domain`.
_M.DEFAULT_UNIVERSE_DOMAIN = universe.DEFAULT
--- The scope of the STS token when none are given, and always when it
-- only serves to impersonate a service account.
_M.CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
--- AWS's GetCallerIdentity, the request whose signature proves the identity.
_M.AWS_VERIFICATION_URL =
  "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15"
--- Executables: the variable that allows them, and their timeout bounds
-- (milliseconds; as Google's libraries).
_M.ALLOW_EXECUTABLES_VAR = "GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES"
_M.EXECUTABLE_TIMEOUT = 30000
_M.EXECUTABLE_TIMEOUT_MIN = 5000
_M.EXECUTABLE_TIMEOUT_MAX = 120000
--- The response format versions of executables understood.
_M.EXECUTABLE_MAX_VERSION = 1

--- Retry policy of the STS and IAM requests: `gauth.token_request.RETRY`,
-- the one table of every token request.
_M.RETRY = token_request.RETRY
_M.MAX_RESPONSE = 256 * 1024
--- Largest subject token read from a file, an URL or a program.
_M.MAX_SUBJECT_TOKEN = 1024 * 1024

local SUBJECT_TOKEN_TYPES = {
  ["urn:ietf:params:oauth:token-type:jwt"] = true,
  ["urn:ietf:params:oauth:token-type:id_token"] = true,
  ["urn:ietf:params:oauth:token-type:saml2"] = true,
}

local function key_error(source, field, message, extra)
  return credentials.key_error(MODULE, source, field, message, extra)
end

--- Is `audience` a workforce pool's (people, not workloads)?
function _M.is_workforce_audience(audience)
  return type(audience) == "string"
    and find(audience, "^//iam%.googleapis%.com/locations/[^/]+/workforcePools/") ~= nil
end

-- Plain http is for loopback, and (`metadata`) link-local metadata
-- servers: AWS's and Azure's IMDS answer only that way.
local function link_local(host)
  host = lower(host)
  return find(host, "^169%.254%.%d+%.%d+$") ~= nil or host == "[fd00:ec2::254]"
end

local function check_source_url(url, what, source, field)
  local scheme, host = url_lib.parse(url)
  if not scheme or (scheme ~= "https" and scheme ~= "http") then
    return nil, key_error(source, field, "not an absolute http(s) URL")
  end
  if scheme == "http" and not url_lib.is_loopback_host(host) and not link_local(host) then
    return nil, key_error(source, field, "refusing " .. what .. " in clear text to " .. host
      .. " (https, a loopback host or a link-local metadata server)")
  end
  return true
end

local function check_google_url(url, source, field, what)
  local ok, err = errors.pair(token_request.check_url(url, MODULE, "key file", what))
  if not ok then
    return nil, key_error(source, field, err.message)
  end
  return true
end

-- A string field: false when absent, nil + err when present and not a
-- non-empty string.
local function opt_string(t, name, source, prefix)
  local v = t[name]
  if v == nil or v == json.null then return false end
  if type(v) ~= "string" or v == "" then
    return nil, key_error(source, (prefix or "") .. name, "must be a non-empty string")
  end
  return v
end

local function parse_format(cs, source)
  local f = cs.format
  if f == nil or f == json.null then return { type = "text" } end
  if type(f) ~= "table" then
    return nil, key_error(source, "credential_source.format", "must be an object")
  end
  local t = f.type
  if t == nil or t == json.null then t = "text" end
  if t ~= "text" and t ~= "json" then
    return nil, key_error(source, "credential_source.format.type",
      'must be "text" or "json"')
  end
  if t == "json" then
    local name = f.subject_token_field_name
    if type(name) ~= "string" or name == "" then
      return nil, key_error(source, "credential_source.format.subject_token_field_name",
        'required (a non-empty string) when format.type is "json"')
    end
    return { type = "json", field = name }
  end
  return { type = "text" }
end

local function parse_source(cs, source)
  if type(cs) ~= "table" then
    return nil, key_error(source, "credential_source", "missing or not an object")
  end
  local kinds = {}
  if cs.file ~= nil then kinds[#kinds + 1] = "file" end
  if cs.url ~= nil then kinds[#kinds + 1] = "url" end
  if cs.environment_id ~= nil then kinds[#kinds + 1] = "environment_id" end
  if cs.executable ~= nil then kinds[#kinds + 1] = "executable" end
  if cs.certificate ~= nil then kinds[#kinds + 1] = "certificate" end
  if #kinds == 0 then
    local seen = {}
    for k in pairs(cs) do seen[#seen + 1] = tostring(k) end
    sort(seen)
    return nil, key_error(source, "credential_source", "no known source (file, url,"
      .. " environment_id, executable or certificate)" .. (#seen > 0 and ("; has " .. concat(seen, ", ")) or ""))
  end
  -- An AWS source may carry an `url` (the role's credentials): that one
  -- is not a second source.
  if #kinds > 1 and not (cs.environment_id ~= nil and #kinds == 2 and cs.url ~= nil) then
    return nil, key_error(source, "credential_source", "more than one source ("
      .. concat(kinds, ", ") .. "); give exactly one")
  end
  local err
  if cs.environment_id ~= nil then
    local id = cs.environment_id
    local name, version = match(type(id) == "string" and id or "", "^(aws)(%d+)$")
    if not name then
      return nil, key_error(source, "credential_source.environment_id",
        'unknown environment (expected "aws1")')
    end
    if tonumber(version) ~= 1 then
      return nil, key_error(source, "credential_source.environment_id",
        "aws version " .. version .. " is not supported (expected aws1)")
    end
    local s = { kind = "aws" }
    local v
    v, err = errors.pair(opt_string(cs, "regional_cred_verification_url", source, "credential_source."))
    if v == nil then return errors.ret(err) end
    s.verification_url = v or _M.AWS_VERIFICATION_URL
    for _, f in ipairs({ "region_url", "url", "imdsv2_session_token_url" }) do
      v, err = errors.pair(opt_string(cs, f, source, "credential_source."))
      if v == nil then return errors.ret(err) end
      if v then
        local ok, uerr = errors.pair(check_source_url(v, "AWS metadata requests", source, "credential_source." .. f))
        if not ok then return errors.ret(uerr) end
      end
      s[f] = v or nil
    end
    local ok, uerr = errors.pair(check_google_url(gsub(s.verification_url, "{region}", "us-east-1"),
      source, "credential_source.regional_cred_verification_url", "a signed request"))
    if not ok then return errors.ret(uerr) end
    return s
  elseif cs.file ~= nil then
    if type(cs.file) ~= "string" or cs.file == "" then
      return nil, key_error(source, "credential_source.file", "must be a non-empty string")
    end
    local f
    f, err = errors.pair(parse_format(cs, source))
    if not f then return errors.ret(err) end
    return { kind = "file", file = cs.file, format = f }
  elseif cs.url ~= nil then
    if type(cs.url) ~= "string" or cs.url == "" then
      return nil, key_error(source, "credential_source.url", "must be a non-empty string")
    end
    local ok, uerr = errors.pair(check_source_url(cs.url, "the subject token request", source,
                                      "credential_source.url"))
    if not ok then return errors.ret(uerr) end
    local headers = {}
    if cs.headers ~= nil and cs.headers ~= json.null then
      if type(cs.headers) ~= "table" then
        return nil, key_error(source, "credential_source.headers", "must be an object")
      end
      for k, v in pairs(cs.headers) do
        if type(k) ~= "string" or type(v) ~= "string" or find(k, "[^%w!#$%%&'*+.^_`|~-]")
            or find(v, "[\r\n%z]") then
          return nil, key_error(source, "credential_source.headers",
            "names and values must be strings (a header name, a value without line breaks)")
        end
        headers[lower(k)] = v
      end
    end
    local f
    f, err = errors.pair(parse_format(cs, source))
    if not f then return errors.ret(err) end
    return { kind = "url", url = cs.url, headers = headers, format = f }
  end
  if cs.certificate ~= nil then
    local c = cs.certificate
    local P = "credential_source.certificate"
    if type(c) ~= "table" then
      return nil, key_error(source, P, "must be an object")
    end
    local use_default = c.use_default_certificate_config
    -- gcloud has written it as the string "true" too.
    if use_default == true or use_default == "true" then
      use_default = true
    elseif use_default == nil or use_default == json.null or use_default == false
        or use_default == "false" then
      use_default = false
    else
      return nil, key_error(source, P .. ".use_default_certificate_config", "must be true or false")
    end
    local loc, tc
    loc, err = errors.pair(opt_string(c, "certificate_config_location", source, P .. "."))
    if loc == nil then return errors.ret(err) end
    tc, err = errors.pair(opt_string(c, "trust_chain_path", source, P .. "."))
    if tc == nil then return errors.ret(err) end
    loc, tc = loc or nil, tc or nil
    if loc and use_default then
      return nil, key_error(source, P .. ".certificate_config_location",
        "cannot be given with use_default_certificate_config = true")
    end
    if not loc and not use_default then
      return nil, key_error(source, P .. ".use_default_certificate_config",
        "must be true when no certificate_config_location is given")
    end
    return { kind = "x509", config_location = loc, trust_chain_path = tc }
  end
  local ex = cs.executable
  if type(ex) ~= "table" then
    return nil, key_error(source, "credential_source.executable", "must be an object")
  end
  local command = ex.command
  if type(command) ~= "string" or command == "" then
    return nil, key_error(source, "credential_source.executable.command",
      "missing or not a non-empty string")
  end
  local timeout = ex.timeout_millis
  if timeout == nil or timeout == json.null then
    timeout = _M.EXECUTABLE_TIMEOUT
  elseif type(timeout) ~= "number" or timeout < _M.EXECUTABLE_TIMEOUT_MIN
      or timeout > _M.EXECUTABLE_TIMEOUT_MAX then
    return nil, key_error(source, "credential_source.executable.timeout_millis",
      "must be a number from " .. _M.EXECUTABLE_TIMEOUT_MIN .. " to " .. _M.EXECUTABLE_TIMEOUT_MAX)
  end
  local out
  out, err = errors.pair(opt_string(ex, "output_file", source, "credential_source.executable."))
  if out == nil then return errors.ret(err) end
  local argv = _M.split_command(command)
  if not argv or #argv == 0 then
    return nil, key_error(source, "credential_source.executable.command",
      "cannot be split into words (unbalanced quotes?)")
  end
  return { kind = "executable", command = command, argv = argv,
           timeout = timeout / 1000, output_file = out or nil }
end

--- Split a command line into words as POSIX shells (and Python's
-- `shlex.split`) do: blanks separate, single quotes keep everything,
-- double quotes keep all but `\"` and `\\`, a backslash outside quotes
-- keeps the next character. No expansion of any kind.
-- @tparam string s
-- @return array of words | nil (an unbalanced quote)
function _M.split_command(s)
  local words, cur, have = {}, {}, false
  local i, n = 1, #s
  while i <= n do
    local c = sub(s, i, i)
    if c == "'" then
      local j = find(s, "'", i + 1, true)
      if not j then return nil end
      cur[#cur + 1] = sub(s, i + 1, j - 1); have = true
      i = j + 1
    elseif c == '"' then
      i = i + 1
      while true do
        if i > n then return nil end
        local d = sub(s, i, i)
        if d == '"' then break end
        if d == "\\" and i < n and find(sub(s, i + 1, i + 1), '["\\$`]') then
          i = i + 1; d = sub(s, i, i)
        end
        cur[#cur + 1] = d
        i = i + 1
      end
      have = true
      i = i + 1
    elseif c == "\\" then
      if i < n then cur[#cur + 1] = sub(s, i + 1, i + 1) end
      have = true
      i = i + 2
    elseif find(c, "%s") then
      if have then words[#words + 1] = concat(cur); cur, have = {}, false end
      i = i + 1
    else
      cur[#cur + 1] = c; have = true
      i = i + 1
    end
  end
  if have then words[#words + 1] = concat(cur) end
  return words
end

local function parse(info, source)
  local t = info.type
  if t ~= "external_account" then
    return nil, credentials.key_type_error(MODULE, source, t, "external_account")
  end
  local c = {}
  local v, err
  for _, f in ipairs({ "audience", "subject_token_type" }) do
    v, err = errors.pair(credentials.key_field(MODULE, info, source, f, true))
    if not v then return errors.ret(err) end
    c[f] = v
  end
  for _, f in ipairs({ "token_url", "service_account_impersonation_url", "client_id",
                       "client_secret", "quota_project_id", "workforce_pool_user_project",
                       "universe_domain", "token_info_url" }) do
    v, err = errors.pair(credentials.key_field(MODULE, info, source, f, false))
    if v == nil then return errors.ret(err) end
    c[f] = v or nil
  end
  c.universe_domain = c.universe_domain or _M.DEFAULT_UNIVERSE_DOMAIN
  if not universe.is_domain(c.universe_domain) then
    return nil, key_error(source, "universe_domain", "is not a domain name")
  end
  c.source, err = errors.pair(parse_source(info.credential_source, source))
  if not c.source then return errors.ret(err) end
  -- X.509 federation exchanges over mutual TLS, at STS's mTLS host.
  c.token_url = c.token_url or gsub(c.source.kind == "x509" and _M.DEFAULT_MTLS_TOKEN_URL
                                    or _M.DEFAULT_TOKEN_URL, "{universe_domain}", c.universe_domain)
  local ok
  ok, err = errors.pair(check_google_url(c.token_url, source, "token_url", "a subject token"))
  if not ok then return errors.ret(err) end
  if c.client_secret and not c.client_id then
    return nil, key_error(source, "client_secret", "given without client_id")
  end
  if c.workforce_pool_user_project and not _M.is_workforce_audience(c.audience) then
    return nil, key_error(source, "workforce_pool_user_project",
      "is only for workforce pools (an audience //iam.googleapis.com/locations/.../workforcePools/...)")
  end
  local url = c.service_account_impersonation_url
  if url then
    local target = match(url, "/serviceAccounts/([^/:]+):generateAccessToken$")
    if not target or not find(target, "^[%w@._+-]+$") then
      return nil, key_error(source, "service_account_impersonation_url",
        "does not end in /serviceAccounts/<email>:generateAccessToken")
    end
    ok, err = errors.pair(check_google_url(url, source, "service_account_impersonation_url", "a token"))
    if not ok then return errors.ret(err) end
    c.target_principal = target
  end
  local imp = info.service_account_impersonation
  c.lifetime = 3600
  if imp ~= nil and imp ~= json.null then
    if type(imp) ~= "table" then
      return nil, key_error(source, "service_account_impersonation", "must be an object")
    end
    local life = imp.token_lifetime_seconds
    if life ~= nil and life ~= json.null then
      if type(life) ~= "number" or life % 1 ~= 0 or life < 600 or life > 43200 then
        return nil, key_error(source, "service_account_impersonation.token_lifetime_seconds",
          "must be a whole number of seconds from 600 to 43200")
      end
      c.lifetime = life
      c.lifetime_set = true
    end
  end
  return c
end

local function describe_source(s)
  if s.kind == "file" then return "file " .. s.file end
  if s.kind == "url" then return "url " .. errors.redact_uri(s.url) end
  if s.kind == "aws" then return "aws" end
  if s.kind == "x509" then
    return "x509 certificate (" .. (s.config_location or "default certificate config") .. ")"
  end
  return "executable " .. s.argv[1]
end

local function build(c, source, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.external_account: opts must be a table", 3)
  end
  opts = opts or {}
  local shared = credentials.transport_opts(opts, MODULE, 4, {
    client_secret = c.client_secret, env = seam.get(opts, "env") })
  local crm = opts.cloud_resource_manager_url
  if crm ~= nil and (type(crm) ~= "string" or crm == "") then
    error("gauth.external_account: cloud_resource_manager_url must be a non-empty string", 3)
  end
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then error("gauth.external_account: retry must be a table or false", 3) end
  local self = setmetatable({
    audience = c.audience,
    subject_token_type = c.subject_token_type,
    token_url = c.token_url,
    token_info_url = c.token_info_url,
    service_account_impersonation_url = c.service_account_impersonation_url,
    target_principal = c.target_principal,
    service_account_email = c.target_principal,
    lifetime = c.lifetime,
    client_id = c.client_id,
    workforce_pool_user_project = c.workforce_pool_user_project,
    universe_domain = c.universe_domain,
    credential_source = c.source,
    source_kind = c.source.kind,
    file = source,
    scopes = credentials.normalise_scopes(opts.scopes, MODULE),
    _lifetime_set = c.lifetime_set,
    _getenv = metadata.getenv_for(opts),
    _retry = policy,
    _timeout = opts.timeout,
    _crm_url = crm,
    _shared = shared,
  }, mt)
  -- The project number of a workload pool's audience
  -- (//iam.googleapis.com/projects/<number>/locations/...).
  self.project_number = match(c.audience, "/projects/([^/]+)/") or nil
  credentials.init(self, { cache = opts.cache, now = opts.now, shared_dict = opts.shared_dict,
                           quota_project = opts.quota_project or c.quota_project_id })
  if self.target_principal then
    -- The STS token serves only to impersonate: a copy without
    -- impersonation, scoped to cloud-platform (as Google's libraries ask
    -- it), whose tokens are cached on their own.
    local direct = self:copy({ service_account_impersonation_url = false,
                               target_principal = false, scopes = { _M.CLOUD_PLATFORM } })
    direct._for_impersonation = true
    local imp, err = errors.pair(require("gauth.impersonated").credentials({
      source = direct, target_principal = self.target_principal,
      impersonation_url = c.service_account_impersonation_url,
      scopes = self.scopes or { _M.CLOUD_PLATFORM }, lifetime = c.lifetime,
      env = seam.get(opts, "env"), http = opts.http, ca_file = opts.ca_file,
      timeout = opts.timeout,
      proxy = opts.proxy, no_proxy = opts.no_proxy,
      client_cert = opts.client_cert, client_key = opts.client_key,
      retry = opts.retry, cache = opts.cache, now = opts.now,
    }))
    if not imp then return errors.ret(errors.of(err)) end
    self._sts = direct
    self._impersonated = imp
  end
  return self
end

--- Credentials from a decoded `external_account` configuration, or its
-- JSON text.
-- @param info table or JSON string
-- @tparam[opt] table opts `scopes` (array or space-separated string;
--   default cloud-platform), `quota_project` (over the file's
--   `quota_project_id`), `env` (table or function: the environment the
--   AWS and executable sources read), `http`, `ca_file`, `timeout`,
--   `client_cert`/`client_key`, `proxy`/`no_proxy` (`gauth.credentials.TRANSPORT_OPTS`),
--   `retry` (fields over `RETRY`, or false), `cache`, `shared_dict`, `now`,
--   `cloud_resource_manager_url` (for `get_project_id`; default
--   `https://cloudresourcemanager.<universe_domain>/v1/projects/`)
-- @return credentials | nil, msg, err (step "key file", `field` naming
--   the field at fault)
-- @function from_info

--- Credentials from an `external_account` configuration file.
-- @tparam string path
-- @tparam[opt] table opts as for `from_info`
-- @return credentials | nil, msg, err
-- @function from_file
_M.from_info, _M.from_file = credentials.constructors(MODULE, "external account info",
  function(info, source, opts)
    local c, err = errors.pair(parse(info, source))
    if not c then return errors.ret(err) end
    return build(c, source, opts)
  end)

-- ------------------------------------------------------------------------
-- Subject tokens
-- ------------------------------------------------------------------------

local function source_fail(where, message, fields)
  fields = fields or {}
  fields.retryable = false
  return errors.fail(MODULE, "subject token", "reading subject token from " .. where
    .. ": " .. message, fields)
end

-- The subject token out of a file's or an answer's text, by `format`.
local function from_format(text, fmt, where, kind)
  if fmt.type == "json" then
    local data = json_decode(text)
    if type(data) ~= "table" then
      return source_fail(where, "not a JSON object", { source = kind })
    end
    local v = data[fmt.field]
    if type(v) ~= "string" or v == "" then
      return source_fail(where, "no string field " .. fmt.field, { source = kind })
    end
    return v
  end
  if text == "" then return source_fail(where, "empty", { source = kind }) end
  return text
end

local ERRNO = { [2] = "no such file", [13] = "permission denied", [21] = "is a directory" }

local function file_token(s)
  local where = "file " .. s.file
  local f, msg, code = io.open(s.file, "rb")
  if not f then
    return source_fail(where, ERRNO[code] or gsub(tostring(msg), "^.-: ", ""),
                       { source = "file", file = s.file })
  end
  local text = f:read(_M.MAX_SUBJECT_TOKEN + 1)
  f:close()
  if text == nil then
    -- An empty file, or a directory on some systems.
    return source_fail(where, "empty", { source = "file", file = s.file })
  end
  if #text > _M.MAX_SUBJECT_TOKEN then
    return source_fail(where, "larger than " .. _M.MAX_SUBJECT_TOKEN .. " bytes",
                       { source = "file", file = s.file })
  end
  return from_format(text, s.format, where, "file")
end

local function get(http, url, headers, timeout, max_body, method)
  return http:request({ method = method or "GET", url = url, headers = headers,
                        timeout = timeout, max_body = max_body, follow_redirects = false })
end

local function url_token(self, http, s)
  local uri = errors.redact_uri(s.url)
  local where = "url " .. uri
  local res, err = errors.pair(get(http, s.url, s.headers, self._timeout, _M.MAX_SUBJECT_TOKEN))
  if not res then
    local e = errors.of(err)
    return source_fail(where, tostring(e.message), { source = "url", uri = uri })
  end
  if res.status ~= 200 then
    -- The body is not shown: it may echo what was sent. (The message
    -- ends "(HTTP <status>)": the status is a field of the error.)
    return source_fail(where, "refused", { source = "url", status = res.status })
  end
  return from_format(res.body or "", s.format, where, "url")
end

-- AWS --------------------------------------------------------------------

local function aws_fail(message, fields)
  fields = fields or {}
  fields.retryable = false
  return errors.fail(MODULE, "AWS", message, fields)
end

local function aws_get(self, http, url, what, token, method)
  local headers = {}
  if method == "PUT" then
    headers["x-aws-ec2-metadata-token-ttl-seconds"] = "300"
  elseif token then
    headers["x-aws-ec2-metadata-token"] = token
  end
  local res, err = errors.pair(get(http, url, headers, self._timeout, 64 * 1024, method))
  if not res then
    return aws_fail(what .. ": " .. tostring(errors.of(err).message), { uri = url })
  end
  if res.status ~= 200 then
    return aws_fail(what .. ": HTTP " .. tostring(res.status), { status = res.status, uri = url })
  end
  return res.body or ""
end

local function aws_token(self, http)
  local s = self.credential_source
  local getenv = self._getenv
  local region = self._aws_region or getenv("AWS_REGION") or getenv("AWS_DEFAULT_REGION")
  local ak, sk = getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
  local session = getenv("AWS_SESSION_TOKEN")
  local env_keys = ak and sk
  local imds
  if (not region or not env_keys) and s.imdsv2_session_token_url then
    local err
    imds, err = errors.pair(aws_get(self, http, s.imdsv2_session_token_url,
                        "IMDSv2 session token", nil, "PUT"))
    if not imds then return errors.ret(err) end
  end
  if not region then
    if not s.region_url then return aws_fail("region not found") end
    local zone, err = errors.pair(aws_get(self, http, s.region_url, "region", imds))
    if not zone then return errors.ret(err) end
    -- An availability zone ("us-east-2b"): the region is all but the
    -- last letter.
    zone = gsub(zone, "%s+$", "")
    if not find(zone, "^[%w-]+%a$") then return aws_fail("region not found: not an availability zone") end
    region = sub(zone, 1, -2)
    self._shared.aws_region = region
  end
  if not env_keys then
    if not s.url then return aws_fail("credentials not found") end
    local role, err = errors.pair(aws_get(self, http, s.url, "role name", imds))
    if not role then return errors.ret(err) end
    role = gsub(role, "%s+$", "")
    if role == "" or find(role, "[/%s?#]") then return aws_fail("role name: not a role name") end
    local body
    body, err = errors.pair(aws_get(self, http, (gsub(s.url, "/+$", "")) .. "/" .. role,
                        "credentials of role " .. role, imds))
    if not body then return errors.ret(err) end
    local data = json_decode(body)
    if type(data) ~= "table" or type(data.AccessKeyId) ~= "string"
        or type(data.SecretAccessKey) ~= "string" then
      return aws_fail("credentials of role " .. role .. ": no AccessKeyId and SecretAccessKey")
    end
    ak, sk = data.AccessKeyId, data.SecretAccessKey
    session = type(data.Token) == "string" and data.Token or nil
  end
  local url = gsub(s.verification_url, "{region}", region)
  local host = match(url, "^https?://([^/?#:]+)")
  local service = host and match(host, "^([^.]+)") or "sts"
  local signed, msg = sigv4.sign({
    method = "POST", url = url,
    headers = { { "x-goog-cloud-target-resource", self.audience } },
  }, { access_key_id = ak, secret_access_key = sk, session_token = session },
     { region = region, service = service, now = floor(self._clock()) })
  if not signed then return aws_fail("signing: " .. tostring(msg)) end
  -- Google's serialization: url, method, and the headers as key/value
  -- objects, JSON then URL-encoded.
  local hs = {}
  for i, h in ipairs(signed.headers) do
    local k = h[1]
    if k ~= "Authorization" then k = lower(k) end
    hs[i] = { key = k, value = h[2] }
  end
  sort(hs, function(a, b) return a.key < b.key end)
  local parts = {}
  for i, h in ipairs(hs) do
    parts[i] = '{"key":' .. cjson.encode(h.key) .. ',"value":' .. cjson.encode(h.value) .. "}"
  end
  local text = '{"headers":[' .. concat(parts, ",") .. '],"method":"POST","url":'
    .. cjson.encode(url) .. "}"
  return url_lib.encode(text)
end

-- Executables ------------------------------------------------------------

local function exec_fail(message, fields)
  fields = fields or {}
  fields.retryable = false
  return errors.fail(MODULE, "executable", message, fields)
end

local function shell_quote(s)
  return "'" .. gsub(s, "'", "'\\''") .. "'"
end

local function one_line(s, n)
  s = gsub(gsub(s or "", "%s+", " "), "^ ", "")
  s = gsub(s, " $", "")
  if #s > (n or 300) then s = sub(s, 1, n or 300) .. "..." end
  return s
end

-- The subject token of an executable's response (already decoded); `now`
-- for its expiration.
local function exec_response(self, data, now)
  if type(data) ~= "table" then return exec_fail("the response is not a JSON object") end
  local version = data.version
  if type(version) ~= "number" then return exec_fail("the response has no version") end
  if version > _M.EXECUTABLE_MAX_VERSION then
    return exec_fail("unsupported response version "
      .. (version % 1 == 0 and format("%d", version) or tostring(version)))
  end
  if type(data.success) ~= "boolean" then return exec_fail("the response has no success field") end
  if not data.success then
    if type(data.code) ~= "string" or type(data.message) ~= "string" then
      return exec_fail("an unsuccessful response needs code and message")
    end
    return exec_fail("error " .. one_line(data.code, 80) .. ": " .. one_line(data.message),
                     { code = data.code })
  end
  local tt = data.token_type
  if not SUBJECT_TOKEN_TYPES[tt] then
    return exec_fail("the response's token_type is missing or unknown")
  end
  local exp = data.expiration_time
  if exp ~= nil and exp ~= json.null then
    if type(exp) ~= "number" then return exec_fail("expiration_time is not a number") end
    if exp <= now then return exec_fail("the response has expired", { expired = true }) end
  elseif self.credential_source.output_file then
    return exec_fail("the response needs expiration_time when an output_file is configured")
  end
  local field = tt == "urn:ietf:params:oauth:token-type:saml2" and "saml_response" or "id_token"
  local tok = data[field]
  if type(tok) ~= "string" or tok == "" then
    return exec_fail("the response has no " .. field)
  end
  return tok
end

local function read_output_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local text = f:read(_M.MAX_SUBJECT_TOKEN + 1)
  f:close()
  if not text or #text > _M.MAX_SUBJECT_TOKEN then return nil end
  return json_decode(text)
end

local function executable_token(self)
  local s = self.credential_source
  if ngx_phase.is_ngx and ngx.get_phase() ~= "init" then -- luacheck: ignore ngx
    return exec_fail("not allowed inside nginx workers (it would block the worker);"
      .. " use a file or url source, or fetch the token in init_by_lua")
  end
  if self._getenv(_M.ALLOW_EXECUTABLES_VAR) ~= "1" then
    return exec_fail("not allowed: set " .. _M.ALLOW_EXECUTABLES_VAR .. "=1")
  end
  local now = self._clock()
  if s.output_file then
    -- A cached response still valid serves; anything else (absent,
    -- unreadable, expired, unsuccessful) runs the program.
    local cached = read_output_file(s.output_file)
    if cached ~= nil then
      local tok = exec_response(self, cached, now)
      if tok then return tok end
    end
  end
  local env = {
    "GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=" .. self.audience,
    "GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE=" .. self.subject_token_type,
    "GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=0",
  }
  if self.service_account_email then
    env[#env + 1] = "GOOGLE_EXTERNAL_ACCOUNT_IMPERSONATED_EMAIL=" .. self.service_account_email
  end
  if s.output_file then env[#env + 1] = "GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE=" .. s.output_file end
  local words = {}
  for i, e in ipairs(env) do words[i] = shell_quote(e) end
  for _, a in ipairs(s.argv) do words[#words + 1] = shell_quote(a) end
  local errfile = os.tmpname()
  -- coreutils' timeout runs the program in a process group of its own and
  -- at the timeout sends KILL to the whole group (itself included): the
  -- program and anything it started are gone, and nothing holds the pipe
  -- open. The shell then reports 137 (128 + KILL).
  local cmd = "timeout -s KILL " .. format("%.3f", s.timeout) .. " env " .. concat(words, " ")
    .. " </dev/null 2>" .. shell_quote(errfile) .. "; echo \"\n__gauth_status=$?\""
  local p = io.popen(cmd, "r")
  if not p then
    os.remove(errfile)
    return exec_fail("cannot start the command")
  end
  local out = p:read("*a") or ""
  p:close()
  local errtext = sys.read_file(errfile) or ""
  os.remove(errfile)
  local body, status = match(out, "^(.*)\n__gauth_status=(%d+)%s*$")
  status = tonumber(status)
  if not status then return exec_fail("cannot read the command's status") end
  body = gsub(body, "\n$", "")
  if status == 124 or status == 137 then
    return exec_fail(format("timed out after %d ms (killed)", floor(s.timeout * 1000 + 0.5)),
                     { timeout = true })
  end
  if status == 126 or status == 127 then
    return exec_fail("cannot run " .. s.argv[1] .. ": " .. one_line(errtext ~= "" and errtext
      or (status == 127 and "not found" or "not executable")), { exit_status = status })
  end
  if status ~= 0 then
    local why = errtext ~= "" and errtext or body
    local data = json_decode(body)
    if type(data) == "table" and type(data.message) == "string" then why = data.message end
    return exec_fail("exited " .. status .. ": " .. one_line(why), { exit_status = status })
  end
  local data
  if body == "" and s.output_file then
    data = read_output_file(s.output_file)
  else
    data = json_decode(body)
  end
  return exec_response(self, data, self._clock())
end

-- X.509 (certificate) source ------------------------------------------------

local x509_token, x509_transport

local function x509_fail(message, fields)
  fields = fields or {}
  fields.retryable = false
  fields.source = "x509"
  return errors.fail(MODULE, "certificate", message, fields)
end

-- The certificate and key paths of the configuration (read on every
-- refresh: workload certificates rotate, and so may their paths).
local function x509_paths(self)
  local s = self.credential_source
  local cfg, m, e = require("gauth.mtls").certificate_config(s.config_location,
                                                              { env = self._shared.env })
  if cfg == nil then
    local err = errors.of(m, e)
    return x509_fail(tostring(err.message), { field = err.field, path = err.path })
  end
  if not cfg then
    return x509_fail("no certificate configuration: set GOOGLE_API_CERTIFICATE_CONFIG or write "
                     .. require("gauth.mtls").DEFAULT_CONFIG_PATH, { field = "certificate_config" })
  end
  return cfg
end

-- The PEM certificates of a text, as standard base64 of their DER, in order.
-- @return list | nil, index of the one that does not decode
local function pem_certs_b64(text)
  local out = {}
  for body in gmatch(text, "%-%-%-%-%-BEGIN CERTIFICATE%-%-%-%-%-(.-)%-%-%-%-%-END CERTIFICATE%-%-%-%-%-") do
    local b64 = gsub(body, "%s", "")
    local der = b64 ~= "" and core.b64_decode(b64)
    -- DER of a certificate: a SEQUENCE.
    if not der or byte(der, 1) ~= 0x30 then return nil, #out + 1 end
    out[#out + 1] = core.b64_encode(der)
  end
  return out
end

local function read_all(path)
  local f, msg, code = io.open(path, "rb")
  if not f then return nil, ERRNO[code] or gsub(tostring(msg), "^.-: ", "") end
  local text = f:read(_M.MAX_SUBJECT_TOKEN + 1) or ""
  f:close()
  if #text > _M.MAX_SUBJECT_TOKEN then return nil, "larger than " .. _M.MAX_SUBJECT_TOKEN .. " bytes" end
  return text
end

-- The subject token of an X.509 source: the JSON array of the base64 DER
-- certificates, the leaf first, then the trust chain (a first chain entry
-- equal to the leaf is not repeated; the leaf further down is an error),
-- as Google's libraries send it.
function x509_token(self)
  local cfg, _, cerr = x509_paths(self)
  if not cfg then return nil, cerr end
  local text, rerr = read_all(cfg.cert_path)
  if not text then
    return x509_fail("certificate " .. cfg.cert_path .. ": " .. rerr, { field = "cert_path" })
  end
  local leaf = pem_certs_b64(text)
  if not leaf or not leaf[1] then
    return x509_fail("certificate " .. cfg.cert_path .. ": no PEM certificate", { field = "cert_path" })
  end
  local chain = { leaf[1] }
  local path = self.credential_source.trust_chain_path
  if path then
    local t, terr = read_all(path)
    if not t then
      return x509_fail("trust chain " .. path .. ": " .. terr, { field = "trust_chain_path" })
    end
    local certs, bad = pem_certs_b64(t)
    if not certs then
      return x509_fail("trust chain " .. path .. ": certificate " .. bad .. " is not a PEM certificate",
                       { field = "trust_chain_path" })
    end
    for i, c in ipairs(certs) do
      if c == chain[1] then
        if i > 1 then
          return x509_fail("trust chain " .. path .. ": the leaf certificate must be at the top"
                           .. " of the trust chain file", { field = "trust_chain_path" })
        end
      else
        chain[#chain + 1] = c
      end
    end
  end
  local parts = {}
  for i, c in ipairs(chain) do parts[i] = '"' .. c .. '"' end
  -- Python's json.dumps spacing, byte for byte.
  return "[" .. concat(parts, ", ") .. "]"
end

-- The mTLS transport of an X.509 source: one per certificate and key
-- paths (kept while they stay the same), with the credentials' ca_file and
-- timeout. The STS exchange always goes over it (an `http` option cannot
-- hold the configuration's certificate); `http` serves the other requests.
function x509_transport(self)
  local cfg, _, cerr = x509_paths(self)
  if not cfg then return nil, cerr end
  local sh = self._shared
  local key = cfg.cert_path .. "\n" .. cfg.key_path
  if sh.mtls_http and sh.mtls_key == key then return sh.mtls_http end
  local t, m, e = require("gauth.http").new({ client_cert = cfg.cert_path, client_key = cfg.key_path,
                                               ca_file = sh.ca_file, timeout = sh.timeout,
                                               proxy = sh.proxy, no_proxy = sh.no_proxy })
  if not t then
    local err = errors.of(m, e)
    return x509_fail(cfg.path .. ": " .. tostring(err.message), { field = err.field })
  end
  if sh.mtls_http and sh.mtls_http.close then sh.mtls_http:close() end
  sh.mtls_http, sh.mtls_key = t, key
  return t
end

--- The subject token of the configured source (a new one each call).
-- @return token | nil, msg, err
function _M:subject_token()
  local kind = self.source_kind
  local tok, err
  if kind == "file" then
    tok, err = errors.pair(file_token(self.credential_source))
  elseif kind == "x509" then
    tok, err = errors.pair(x509_token(self))
  elseif kind == "executable" then
    tok, err = errors.pair(executable_token(self))
  else
    local http
    http, err = errors.pair(token_request.transport(self._shared, MODULE))
    if http then
      if kind == "url" then
        tok, err = errors.pair(url_token(self, http, self.credential_source))
      else
        self._aws_region = self._shared.aws_region
        tok, err = errors.pair(aws_token(self, http))
      end
    end
  end
  if not tok then return errors.ret(errors.of(err)) end
  return tok
end

-- ------------------------------------------------------------------------
-- The exchange
-- ------------------------------------------------------------------------

--- The `x-goog-api-client` value Google's libraries send to STS (for
-- Google's metrics: which source, impersonation, lifetime).
function _M:api_client_header()
  return "gauth/" .. _M._VERSION .. " google-byoid-sdk source/" .. self.source_kind
    .. " sa-impersonation/" .. (self._for_impersonation and "true" or "false")
    .. " config-lifetime/" .. (self._lifetime_set and "true" or "false")
end

--- Get a new token: the subject token, the STS exchange and, with
-- impersonation, `generateAccessToken` (used by `token()`; call that
-- instead: it caches).
-- @return entry | nil, msg, err
function _M:fetch_token()
  if self._impersonated then
    -- The STS token first (cached on its own), so that its failure comes
    -- back as it is: "STS: invalid_grant: ...", not inside an IAM error.
    local tok, _, serr = self._sts:token()
    if not tok then return errors.ret(serr) end
    local e, err = errors.pair(self._impersonated:fetch_token())
    if e then return e end
    err = errors.of(err)
    local wrapped = errors.new(MODULE, "impersonation", tostring(err.message), err)
    wrapped.module, wrapped.step, wrapped.cause = MODULE, "impersonation", err
    return errors.ret(wrapped)
  end
  local http, terr
  if self.source_kind == "x509" then
    http, terr = errors.pair(x509_transport(self))
  else
    http, terr = errors.pair(token_request.transport(self._shared, MODULE))
  end
  if not http then return errors.ret(terr) end
  local subject, _, serr = self:subject_token()
  if not subject then return errors.ret(serr) end
  -- The one STS client (gauth.sts), with its one retry path: 5xx, 429 and
  -- transport failures retried, invalid_grant never.
  local data, m, x = sts.exchange({
    url = self.token_url, module = MODULE, step = "STS",
    http = http, timeout = self._timeout, retry = self._retry, now = self._clock,
    audience = self.audience, scope = self.scopes or { _M.CLOUD_PLATFORM },
    requested_token_type = _M.REQUESTED_TOKEN_TYPE,
    subject_token = subject, subject_token_type = self.subject_token_type,
    -- With client authentication the client id names the user project.
    user_project = self.workforce_pool_user_project or nil,
    client_id = self.client_id, client_secret = self._shared.client_secret,
    headers = { ["x-goog-api-client"] = self:api_client_header() },
  })
  if not data then return errors.ret(errors.of(m, x)) end
  local entry, eerr = errors.pair(token_request.access_entry(data, self._clock(), MODULE, self.token_url))
  if not entry then
    eerr.step = "STS"
    return errors.ret(eerr)
  end
  return entry
end

--- Same as `token()` but in the public error shape: `nil, msg, err`.
function _M:token()
  local tok, exp, err = credentials.base.token(self)
  if not tok then return errors.ret(errors.of(exp, err)) end
  return tok, exp
end

--- Authorise a request (see `gauth.credentials`): `nil, msg, err` on failure.
function _M:apply(headers)
  if headers ~= nil and type(headers) ~= "table" then
    error("gauth.external_account: apply: headers must be a table", 2)
  end
  local tok, msg, err = self:token()
  if not tok then return nil, msg, err end
  return credentials.base.apply(self, headers)
end

-- What decides the subject token, for the cache key: the whole source
-- (file path and format; full URL, headers and format; every AWS URL and
-- the AWS identity taken from the environment; the whole command line,
-- timeout and output file). Secrets (an URL's key, an AWS secret, header
-- values) go in only as digests: the key is a digest anyway, but a part
-- that is a secret's digest stays one if the key scheme ever changes.
local function digest(v)
  if type(v) ~= "string" then return nil end
  return core.b64url_encode(core.sha256(v))
end

local function source_key(self)
  local s = self.credential_source
  if s.kind == "file" then
    return { kind = "file", file = s.file, format = s.format }
  elseif s.kind == "url" then
    local headers = {}
    for k, v in pairs(s.headers) do headers[k] = digest(v) end
    return { kind = "url", url = digest(s.url), headers = headers, format = s.format }
  elseif s.kind == "aws" then
    local getenv = self._getenv
    return { kind = "aws", verification_url = s.verification_url, region_url = s.region_url,
             url = s.url, imdsv2 = s.imdsv2_session_token_url,
             region = getenv("AWS_REGION") or getenv("AWS_DEFAULT_REGION"),
             access_key_id = getenv("AWS_ACCESS_KEY_ID"),
             secret = digest(getenv("AWS_SECRET_ACCESS_KEY")),
             session = digest(getenv("AWS_SESSION_TOKEN")) }
  end
  if s.kind == "x509" then
    -- The default configuration is where the environment says.
    return { kind = "x509", trust_chain = s.trust_chain_path,
             config = s.config_location or self._getenv("GOOGLE_API_CERTIFICATE_CONFIG")
                      or ("default " .. tostring(self._getenv("HOME"))) }
  end
  return { kind = "executable", argv = s.argv, timeout = s.timeout, output_file = s.output_file }
end

--- Everything that decides the token (issue 17): audience, subject token
-- type, STS URL, the source (see above), the impersonation URL and
-- lifetime, the client (id, and the secret's digest), the workforce user
-- project, the universe and the scopes.
function _M:cache_key_parts()
  return {
    audience = self.audience, subject_token_type = self.subject_token_type,
    token_url = self.token_url, source = source_key(self),
    impersonation = self.service_account_impersonation_url or nil,
    lifetime = self.service_account_impersonation_url and self.lifetime or nil,
    client_id = self.client_id, client_secret = digest(self._shared.client_secret),
    user_project = self.workforce_pool_user_project,
    universe_domain = self.universe_domain,
    scopes = credentials.sorted(self.scopes),
  }
end

--- False: the STS exchange asks for cloud-platform when no scopes are given.
function _M:requires_scopes()  -- luacheck: no unused args
  return false
end

function _M:describe()
  local parts = { "audience " .. self.audience, describe_source(self.credential_source) }
  if self.service_account_email then parts[#parts + 1] = "as " .. self.service_account_email end
  credentials.describe_scopes(parts, self.scopes)
  return concat(parts, ", ")
end

--- A copy asking for other scopes (nil: cloud-platform).
function _M:with_scopes(scopes)
  local o = self:copy()
  o.scopes = credentials.normalise_scopes(scopes, MODULE)
  if o._impersonated then
    o._impersonated = o._impersonated:with_scopes(o.scopes or { _M.CLOUD_PLATFORM })
  end
  return o
end

--- Cloud Resource Manager's project URL (the project number is
-- appended), in the credentials' universe.
_M.CLOUD_RESOURCE_MANAGER_URL = "https://cloudresourcemanager.{universe_domain}/v1/projects/"

-- Cloud Resource Manager's answer: the project.
local function project_of(op, res)
  local d = json_decode(res.body)
  if type(d) ~= "table" or type(d.projectId) ~= "string" or d.projectId == "" then
    return nil, errors.new(MODULE, "project id", "Cloud Resource Manager answered without a projectId",
                           { status = 200, retryable = false, uri = op.url })
  end
  return d
end

--- The project id, looked up as Google's libraries do: the project number
-- of a workload pool's audience (or a workforce pool's user project) at
-- Cloud Resource Manager (`GET <cloud_resource_manager_url><number>`,
-- default `https://cloudresourcemanager.<universe_domain>/v1/projects/`)
-- with these credentials' token (which needs
-- `resourcemanager.projects.get`). The answer is kept (for every copy) and
-- fills `creds.project_id`.
-- @return project id | nil, msg, err (step "project id": no project
--   number in the configuration, the token's failure as `cause`, the API's
--   refusal with `status`)
function _M:get_project_id()
  local shared = self._shared
  if shared.project_id then
    self.project_id = shared.project_id
    return shared.project_id
  end
  local number = self.project_number or self.workforce_pool_user_project
  if not number then
    return errors.fail(MODULE, "project id", "the configuration names no project number"
      .. " (a workload pool audience //iam.googleapis.com/projects/<number>/...,"
      .. " or workforce_pool_user_project)", { retryable = false })
  end
  local base = self._crm_url or gsub(_M.CLOUD_RESOURCE_MANAGER_URL, "{universe_domain}",
                                     self.universe_domain)
  local url = base .. url_lib.encode(number)
  local ok, um, ux = token_request.check_url(url, MODULE, "project id", "a token")
  if not ok then return errors.ret(errors.of(um, ux)) end
  local headers, m, x = self:apply({ accept = "application/json" })
  if not headers then
    local cause = errors.of(m, x)
    return errors.fail(MODULE, "project id", "no token to ask Cloud Resource Manager: "
      .. tostring(cause.step) .. ": " .. tostring(cause.message),
      { cause = cause, retryable = cause.retryable })
  end
  local http, hm, hx = token_request.transport(shared, MODULE)
  if not http then return errors.ret(errors.of(hm, hx)) end
  -- An API call through the one send loop, its token applied above (a
  -- failure to get one has its own message), retried as the token
  -- requests are (`self._retry`).
  local data, dm, dx = require("gauth.request").send({
    module = MODULE, step = "project id", method = "GET", url = url, headers = headers,
    http = http, timeout = self._timeout, max_body = _M.MAX_RESPONSE, follow_redirects = false,
    policy = self._retry, decode = project_of,
  })
  if not data then return nil, dm, dx end
  shared.project_id = data.projectId
  self.project_id = data.projectId
  return data.projectId
end

-- Signing ---------------------------------------------------------------

local function no_signer()
  return errors.fail(MODULE, "signing", "external account credentials without"
    .. " service_account_impersonation_url have no service account to sign with"
    .. " (no email): impersonate one, or sign with a service account's credentials",
    { retryable = false })
end

--- The email of the impersonated service account (from
-- `service_account_impersonation_url`).
-- @return email | nil, msg, err (no impersonation: no email)
function _M:signer_email()
  if not self.service_account_email then return no_signer() end
  return self.service_account_email
end

--- Sign bytes as the impersonated service account through IAM Credentials'
-- `signBlob`, asked with the STS token (the federated identity needs
-- `iam.serviceAccounts.signBlob` on the account, e.g. the Service Account
-- Token Creator role it already has to impersonate), at the host of
-- `service_account_impersonation_url` (the universe's IAM host).
-- @tparam string bytes
-- @return raw RSA-SHA256 signature bytes | nil, msg, err
function _M:sign_bytes(bytes)
  if type(bytes) ~= "string" then
    error("gauth.external_account: sign_bytes: bytes must be a string", 2)
  end
  if not self._impersonated then return no_signer() end
  return self._impersonated:sign_bytes(bytes)
end

--- A JWT of `claims` signed as the impersonated service account through
-- IAM Credentials' `signJwt` (as `sign_bytes`).
-- @tparam table claims
-- @return the JWT | nil, msg, err
function _M:sign_jwt(claims)
  if type(claims) ~= "table" then
    error("gauth.external_account: sign_jwt: claims must be a table", 2)
  end
  if not self._impersonated then return no_signer() end
  return self._impersonated:sign_jwt(claims)
end

--- A Google-signed ID token of the impersonated service account for
-- `audience` (IAM Credentials' `generateIdToken`); see
-- `gauth.id_token.credentials` for cached ones.
-- @tparam string audience
-- @tparam[opt] boolean include_email
-- @return the ID token | nil, msg, err (no impersonation: "id token")
function _M:fetch_id_token(audience, include_email)
  if type(audience) ~= "string" or audience == "" then
    error("gauth.external_account: fetch_id_token: audience must be a non-empty string", 2)
  end
  if not self._impersonated then
    return errors.fail(MODULE, "id token", "external account credentials give ID tokens"
      .. " only with service_account_impersonation_url", { retryable = false })
  end
  return self._impersonated:fetch_id_token(audience, include_email)
end

return _M
