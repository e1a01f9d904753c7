--- Application Default Credentials: the credentials of the environment the
-- program runs in, found without the program knowing where that is.
--
--     local gauth = require "gauth"
--     local creds, project = assert(gauth.default({ scopes = { SCOPE } }))
--
-- Places looked at, in order (the first that serves wins):
--
-- 1. `GOOGLE_APPLICATION_CREDENTIALS`: a credentials file of any supported
--    type. When it is set, its file must work: an unreadable, malformed or
--    unsupported file is an error, not a reason to look further (a wrong
--    path would otherwise go unnoticed on a developer machine that also
--    has gcloud credentials, and fail only in production).
-- 2. gcloud's file: `$CLOUDSDK_CONFIG/application_default_credentials.json`,
--    else `$HOME/.config/gcloud/application_default_credentials.json`
--    (written by `gcloud auth application-default login`). Skipped when
--    absent or unusable (the reason is listed if nothing else serves).
-- 3. App Engine (`GAE_APPLICATION`, `GAE_ENV` or `GAE_SERVICE` set): the
--    metadata server, as `gauth.app_engine`.
-- 4. The metadata server (Compute Engine, GKE, Cloud Run, Cloud Functions),
--    when `gauth.metadata.is_available()` finds one (a ping of at most
--    `GCE_METADATA_TIMEOUT`, default 1 s, once per process;
--    `NO_GCE_CHECK=true` skips it).
--
-- Supported file types: `service_account`, `authorized_user`,
-- `impersonated_service_account`, `external_account` (workload and
-- workforce identity federation: `gauth.external_account`) and
-- `external_account_authorized_user`; any other is refused with an error
-- naming the type.
--
-- Project id: `GOOGLE_CLOUD_PROJECT`, else `GCLOUD_PROJECT`, else what the
-- credentials know: a service account file's `project_id`; for gcloud's
-- file, gcloud's configured project (`CLOUDSDK_CORE_PROJECT`, or `[core]
-- project` of the active configuration); App Engine's application; the
-- metadata server's `project/project-id`. May be nil.
--
-- Quota project (`x-goog-user-project`): `opts.quota_project`, else
-- `GOOGLE_CLOUD_QUOTA_PROJECT`, else the file's `quota_project_id`.
--
-- Scopes (`opts.scopes`) go to service accounts, impersonated credentials
-- and the metadata server, not to `authorized_user` credentials: a user's
-- refresh token already carries the scopes the user consented to (gcloud's
-- default includes cloud-platform), and asking for others fails.
--
-- Environment lookups go through `opts.env` (a table that is then the
-- whole environment, or a function), else `gauth.metadata.getenv`.
--
-- Errors are `gauth.errors` objects with module "adc": step "key file"
-- (`adc.from_file`: fields `file`, `type`, `cause`), step
-- "GOOGLE_APPLICATION_CREDENTIALS" (its file failed; `file`, `cause`),
-- step "default" (nothing found; `tried` = `{ { step=, reason= }, ... }`).
-- @module gauth.adc

local metadata = require "gauth.metadata"
local credentials = require "gauth.credentials"
local errors = require "gauth.errors"
local json = require "gauth.lib.json"
local seam = require "gauth.lib.seam"
local sys = require "gauth.lib.sys"
local cjson = require "cjson.safe"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local require = require
local find = string.find
local sub = string.sub
local match = string.match
local gmatch = string.gmatch
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

--- The file name of gcloud's credentials, in gcloud's configuration folder.
_M.WELL_KNOWN_FILE = "application_default_credentials.json"

--- File types and the module that loads them.
_M.TYPES = {
  service_account = "gauth.service_account",
  authorized_user = "gauth.authorized_user",
  impersonated_service_account = "gauth.impersonated",
  external_account = "gauth.external_account",
  external_account_authorized_user = "gauth.external_account_authorized_user",
}

--- Where to read about setting up credentials (in the final error).
_M.HELP_URL = "https://cloud.google.com/docs/authentication/application-default-credentials"

local MAX_FILE = 1024 * 1024

local function check_opts(opts, fn)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.adc: " .. fn .. ": opts must be a table", 3)
  end
  return opts or {}
end

-- ------------------------------------------------------------------------
-- Files of any type
-- ------------------------------------------------------------------------

-- The options each type takes from those given to ADC.
local function typed_opts(t, opts)
  local o = { quota_project = opts.quota_project, http = opts.http,
              ca_file = opts.ca_file, timeout = opts.timeout, retry = opts.retry,
              proxy = opts.proxy, no_proxy = opts.no_proxy,
              client_cert = opts.client_cert, client_key = opts.client_key,
              cache = opts.cache, now = opts.now }
  if t == "service_account" then
    o.scopes = opts.scopes
  elseif t == "external_account" then
    o.scopes = opts.scopes
    o.env = seam.get(opts, "env")
    o.shared_dict = opts.shared_dict
  elseif t == "external_account_authorized_user" then
    o.shared_dict = opts.shared_dict
  elseif t == "impersonated_service_account" then
    o.scopes = opts.scopes
    o.iam_endpoint = opts.iam_endpoint
    o.lifetime = opts.lifetime
    o.env = seam.get(opts, "env")
  end
  return o
end

-- A type module's error as an "adc" error, keeping its fields and the
-- original as `cause`.
local function rewrap(err, extra)
  if not errors.is(err) then
    return errors.new("adc", "key file", tostring(err), extra)
  end
  local msg = err.message
  if err.step ~= "key file" then msg = tostring(err.step) .. ": " .. tostring(msg) end
  local e = errors.new("adc", "key file", msg, err)
  e.module, e.step, e.cause = "adc", "key file", err
  for k, v in pairs(extra or {}) do e[k] = v end
  return e
end

local function type_of(info, source)
  local t = info.type
  if t == nil or t == json.null then
    return errors.fail("adc", "key file", source .. ': no "type" field'
      .. " (is this a credentials file?)", { file = source, field = "type" })
  end
  if type(t) ~= "string" then
    return errors.fail("adc", "key file", source .. ': "type" is not a string',
                           { file = source, field = "type" })
  end
  if not _M.TYPES[t] then
    return errors.fail("adc", "key file", source .. ': credentials of type "'
      .. sub(t, 1, 60) .. '" are not supported yet (supported: service_account,'
      .. " authorized_user, impersonated_service_account, external_account,"
      .. " external_account_authorized_user)",
      { file = source, field = "type", type = t, unsupported = true })
  end
  return t
end

local function load(t, how, arg, source, opts)
  local mod = require(_M.TYPES[t])
  local creds, err = errors.pair(mod[how](arg, typed_opts(t, opts)))
  if not creds then return errors.ret(rewrap(err, { file = source, type = t })) end
  local project
  if t == "service_account" then project = creds.project_id end
  return creds, project
end

--- Credentials from a credentials file of any supported type.
-- @tparam string path
-- @tparam[opt] table opts `scopes` (service account and impersonated
--   files), `quota_project`, `lifetime` and `iam_endpoint` (impersonated),
--   `env`, `http`, `ca_file`, `timeout`, `retry`, `cache`, `now`
-- @return credentials, project_id (a service account file's; else nil) |
--   nil, err
function _M.from_file(path, opts)
  if type(path) ~= "string" then
    error("gauth.adc: from_file: path must be a string", 2)
  end
  opts = check_opts(opts, "from_file")
  local info, err = errors.pair(credentials.read_key_file("adc", path))
  if not info then return errors.ret(err) end
  local t, terr = errors.pair(type_of(info, path))
  if not t then return errors.ret(terr) end
  return load(t, "from_file", path, path, opts)
end

--- Credentials from the decoded content of a credentials file (or its
-- JSON text), of any supported type.
-- @param info table or JSON string
-- @tparam[opt] table opts as for `from_file`
-- @return credentials, project_id | nil, message, err
function _M.from_info(info, opts)
  local source = "credentials info"
  opts = check_opts(opts, "from_info")
  if type(info) == "string" then
    local v = cjson.decode(info)
    if type(v) ~= "table" then
      return errors.fail("adc", "key file", source .. ": not a JSON object")
    end
    info = v
  elseif type(info) ~= "table" then
    error("gauth.adc: from_info: info must be a table or a JSON string", 2)
  end
  local t, terr = errors.pair(type_of(info, source))
  if not t then return errors.ret(terr) end
  return load(t, "from_info", info, source, opts)
end

-- ------------------------------------------------------------------------
-- gcloud's folder
-- ------------------------------------------------------------------------

--- gcloud's configuration folder: `CLOUDSDK_CONFIG`, else
-- `$HOME/.config/gcloud`.
-- @tparam[opt] table opts `env`
-- @return path | nil, message, err (neither variable is set)
function _M.config_dir(opts)
  opts = check_opts(opts, "config_dir")
  local getenv = metadata.getenv_for(opts)
  local dir = getenv("CLOUDSDK_CONFIG")
  if dir then return dir end
  local home = getenv("HOME")
  if not home then
    return errors.fail("adc", "gcloud", "neither CLOUDSDK_CONFIG nor HOME is set")
  end
  return (home:gsub("/+$", "")) .. "/.config/gcloud"
end

--- Path of gcloud's credentials file (whether it exists or not).
-- @tparam[opt] table opts `env`
-- @return path | nil, message, err
function _M.well_known_file(opts)
  opts = check_opts(opts, "well_known_file")
  local dir, err = errors.pair(_M.config_dir(opts))
  if not dir then return errors.ret(err) end
  return (dir:gsub("/+$", "")) .. "/" .. _M.WELL_KNOWN_FILE
end

local function trim(s)
  return (s:gsub("^%s+", ""):gsub("%s+$", ""))
end

-- gcloud's configured project, read from its configuration files (not by
-- running gcloud: a subprocess that can take seconds): the active
-- configuration's `[core] project`.
local function gcloud_project(getenv)
  local p = getenv("CLOUDSDK_CORE_PROJECT")
  if p then return p end
  local dir = _M.config_dir({ env = getenv })
  if not dir then return nil end
  local name = getenv("CLOUDSDK_ACTIVE_CONFIG_NAME")
  if not name then
    local s = sys.read_file(dir .. "/active_config")
    name = s and trim(s) or "default"
  end
  if name == "" or not find(name, "^[%w_.-]+$") then return nil end
  local ini = sys.read_file(dir .. "/configurations/config_" .. name)
  if not ini or #ini > MAX_FILE then return nil end
  local section
  for line in gmatch(ini, "[^\r\n]+") do
    local s = match(line, "^%s*%[([^%]]+)%]%s*$")
    if s then
      section = trim(s)
    elseif section == "core" then
      local k, v = match(line, "^%s*([%w_]+)%s*[=:]%s*(.-)%s*$")
      if k == "project" and v ~= "" then return v end
    end
  end
  return nil
end

-- ------------------------------------------------------------------------
-- default()
-- ------------------------------------------------------------------------

local STEP_ENV = "GOOGLE_APPLICATION_CREDENTIALS"
local STEP_GCLOUD = "gcloud credentials file"
local STEP_GAE = "App Engine"
local STEP_GCE = "metadata server"

local function reason_of(err)
  if errors.is(err) then return tostring(err.message) end
  return tostring(err)
end

local function nothing_found(tried)
  local parts = {}
  for i, t in ipairs(tried) do
    parts[i] = "(" .. i .. ") " .. t.step .. ": " .. t.reason
  end
  return errors.new("adc", "default",
    "could not find default credentials; tried, in order: " .. concat(parts, "; ")
    .. ". Set GOOGLE_APPLICATION_CREDENTIALS to a credentials file, run"
    .. " `gcloud auth application-default login`, or run on Google Cloud"
    .. " (see " .. _M.HELP_URL .. ")", { tried = tried })
end

--- Find the credentials of this environment (see the module's
-- description for the order and rules).
-- @tparam[opt] table opts `scopes`, `quota_project`, `env`, and
--   `lifetime`, `iam_endpoint`, `http`, `ca_file`, `timeout`, `retry`,
--   `cache`, `now` for the credentials made
-- @return credentials, project_id (may be nil), source (the step that
--   served: "GOOGLE_APPLICATION_CREDENTIALS", "gcloud credentials file",
--   "App Engine" or "metadata server") | nil, err (listing every step
--   tried and why it did not serve)
function _M.default(opts)
  opts = check_opts(opts, "default")
  local getenv = metadata.getenv_for(opts)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  -- Every module below sees the same environment.
  o.env = getenv
  o.quota_project = opts.quota_project or getenv("GOOGLE_CLOUD_QUOTA_PROJECT")
  local explicit_project = getenv("GOOGLE_CLOUD_PROJECT") or getenv("GCLOUD_PROJECT")
  local tried = {}

  -- 1. GOOGLE_APPLICATION_CREDENTIALS: set means "use this file".
  local path = getenv("GOOGLE_APPLICATION_CREDENTIALS")
  if path then
    local creds, project, e3 = _M.from_file(path, o)
    if not creds then
      local err = errors.of(project, e3)
      return errors.fail("adc", STEP_ENV, "GOOGLE_APPLICATION_CREDENTIALS is set to "
        .. path .. ", which cannot be used: " .. reason_of(err),
        { file = path, cause = err, type = err.type, unsupported = err.unsupported })
    end
    return creds, explicit_project or project, STEP_ENV
  end
  tried[#tried + 1] = { step = STEP_ENV, reason = "not set" }

  -- 2. gcloud's file.
  local wk, werr = errors.pair(_M.well_known_file({ env = getenv }))
  if not wk then
    tried[#tried + 1] = { step = STEP_GCLOUD, reason = reason_of(werr) }
  else
    -- Only whether it opens: from_file reads it (after checking its size).
    local f, rerr = io.open(wk, "rb")
    if f then f:close() end
    if not f then
      if find(tostring(rerr), "No such file", 1, true) then
        tried[#tried + 1] = { step = STEP_GCLOUD, reason = "no file at " .. wk }
      else
        tried[#tried + 1] = { step = STEP_GCLOUD, reason = "cannot read " .. tostring(rerr) }
      end
    else
      local creds, project, e3 = _M.from_file(wk, o)
      if creds then
        project = explicit_project or project or gcloud_project(getenv)
        return creds, project, STEP_GCLOUD
      end
      tried[#tried + 1] = { step = STEP_GCLOUD, reason = reason_of(errors.of(project, e3)) }
    end
  end

  -- 3. App Engine.
  local ae = require "gauth.app_engine"
  local on_gae = ae.is_app_engine({ env = getenv })
  if on_gae then
    local creds, cerr = errors.pair(ae.new(o))
    if creds then
      local project = explicit_project or ae.project_id(o)
      return creds, project, STEP_GAE
    end
    tried[#tried + 1] = { step = STEP_GAE, reason = reason_of(cerr) }
  else
    tried[#tried + 1] = { step = STEP_GAE, reason = "not on App Engine ("
      .. concat(ae.VARS, ", ") .. " unset)" }
  end

  -- 4. The metadata server.
  local ce = require "gauth.compute_engine"
  local here, merr = errors.pair(ce.is_available({ env = getenv, http = opts.http }))
  if here then
    local creds, cerr = errors.pair(ce.new(o))
    if creds then
      -- A failure to read the project id does not make the credentials
      -- unusable: the project stays unknown (nil).
      local project = explicit_project or ce.project_id(o)
      return creds, project, STEP_GCE
    end
    tried[#tried + 1] = { step = STEP_GCE, reason = reason_of(cerr) }
  else
    tried[#tried + 1] = { step = STEP_GCE, reason = reason_of(merr) }
  end

  return errors.ret(nothing_found(tried))
end

return _M
