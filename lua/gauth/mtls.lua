--- Certificate-based access: the client certificate Google's libraries
-- find through the environment, and the choice between an API's regular
-- and its mTLS endpoint.
--
-- * `GOOGLE_API_USE_CLIENT_CERTIFICATE` = `true` | `false` (default false;
--   any other value is refused, as google-api-python-client's
--   `discovery.build` does): whether to send the default client certificate.
-- * `GOOGLE_API_CERTIFICATE_CONFIG`: the path of `certificate_config.json`
--   (default `~/.config/gcloud/certificate_config.json`), whose
--   `cert_configs.workload` names `cert_path` and `key_path` (PEM files).
-- * `GOOGLE_API_USE_MTLS_ENDPOINT` = `never` | `auto` | `always` (default
--   auto): a Discovery service's `mtlsRootUrl` is used always, never, or
--   (auto) when a client certificate is sent.
--
-- Every function takes `opts.env` (a table or a function name -> value)
-- in place of the process environment, for tests and for nginx workers
-- (where only variables named by nginx's `env` directive are visible).
-- @module gauth.mtls

local errors = require "gauth.errors"
local json = require "gauth.lib.json"
local metadata = require "gauth.metadata"
local common = require "gauth.transport.common"

local type = type
local ipairs = ipairs
local tostring = tostring
local lower = string.lower
local sub = string.sub

local _M = { _VERSION = "0.1.0" }

_M.USE_CLIENT_CERT_VAR = "GOOGLE_API_USE_CLIENT_CERTIFICATE"
_M.CERT_CONFIG_VAR = "GOOGLE_API_CERTIFICATE_CONFIG"
_M.USE_MTLS_ENDPOINT_VAR = "GOOGLE_API_USE_MTLS_ENDPOINT"
--- Where gcloud writes the certificate configuration (`~` is `$HOME`).
_M.DEFAULT_CONFIG_PATH = "~/.config/gcloud/certificate_config.json"

local MAX_CONFIG_BYTES = 1024 * 1024

local function getenv_of(opts)
  return metadata.getenv_for(opts)
end

local function bad(step, message, fields)
  fields = fields or {}
  fields.retryable = false
  fields.kind = fields.kind or "config"
  return errors.fail("mtls", step, message, fields)
end

--- Whether the default client certificate is to be used
-- (`GOOGLE_API_USE_CLIENT_CERTIFICATE`: `true` or `false`, any case;
-- unset or empty: false).
-- @tparam[opt] table opts `env`
-- @return boolean | nil, msg, err (another value: step "environment",
--   `field` the variable's name)
function _M.use_client_certificate(opts)
  local v = getenv_of(opts)(_M.USE_CLIENT_CERT_VAR)
  if v == nil then return false end
  local l = lower(v)
  if l == "true" then return true end
  if l == "false" then return false end
  return bad("environment", _M.USE_CLIENT_CERT_VAR .. " must be true or false, not \""
             .. v .. "\"", { field = _M.USE_CLIENT_CERT_VAR })
end

--- The endpoint rule (`GOOGLE_API_USE_MTLS_ENDPOINT`: never, auto or
-- always; unset or empty: auto).
-- @tparam[opt] table opts `env`
-- @return "never" | "auto" | "always" | nil, msg, err (step "environment")
function _M.endpoint_mode(opts)
  local v = getenv_of(opts)(_M.USE_MTLS_ENDPOINT_VAR)
  if v == nil then return "auto" end
  if v == "never" or v == "auto" or v == "always" then return v end
  return bad("environment", _M.USE_MTLS_ENDPOINT_VAR .. " must be never, auto or always, not \""
             .. v .. "\"", { field = _M.USE_MTLS_ENDPOINT_VAR })
end

local function expand_home(path, getenv)
  if sub(path, 1, 2) == "~/" then
    local home = getenv("HOME")
    if not home then return nil end
    return home .. sub(path, 2)
  end
  return path
end

--- Read a `certificate_config.json`: `{"cert_configs": {"workload":
-- {"cert_path": ..., "key_path": ...}}}`.
-- @tparam[opt] string path the file; default `GOOGLE_API_CERTIFICATE_CONFIG`,
--   else `~/.config/gcloud/certificate_config.json`
-- @tparam[opt] table opts `env`
-- @return `{ cert_path =, key_path =, path = }` | false when no path was
--   given, the variable is unset and the default file does not exist |
--   nil, msg, err (step "certificate_config", `field` naming what is
--   wrong: the file, `cert_configs`, `workload`, `cert_path`, `key_path`)
function _M.certificate_config(path, opts)
  if path ~= nil and type(path) ~= "string" then
    error("gauth.mtls: certificate_config: path must be a string", 2)
  end
  local getenv = getenv_of(opts)
  local explicit = path ~= nil
  if not explicit then
    path = getenv(_M.CERT_CONFIG_VAR)
    explicit = path ~= nil
  end
  path = expand_home(path or _M.DEFAULT_CONFIG_PATH, getenv)
  if not path then return false end
  local f, ferr = io.open(path, "rb")
  if not f then
    -- Only gcloud's default location may be absent: a path someone gave
    -- that cannot be read is a mistake worth hearing about.
    if not explicit then return false end
    return bad("certificate_config", "cannot read the certificate configuration: " .. tostring(ferr),
               { field = "certificate_config", path = path })
  end
  local text = f:read(MAX_CONFIG_BYTES + 1) or ""
  f:close()
  if #text > MAX_CONFIG_BYTES then
    return bad("certificate_config", path .. ": larger than 1 MiB", { field = "certificate_config", path = path })
  end
  local data = json.decode(text)
  if type(data) ~= "table" then
    return bad("certificate_config", path .. ": not a JSON object", { field = "certificate_config", path = path })
  end
  local configs = data.cert_configs
  if type(configs) ~= "table" then
    return bad("certificate_config", path .. ": a \"cert_configs\" object is expected",
               { field = "cert_configs", path = path })
  end
  local w = configs.workload
  if type(w) ~= "table" then
    return bad("certificate_config", path .. ": a \"workload\" object is expected in cert_configs",
               { field = "workload", path = path })
  end
  for _, k in ipairs({ "cert_path", "key_path" }) do
    if type(w[k]) ~= "string" or w[k] == "" then
      return bad("certificate_config", path .. ": a \"" .. k .. "\" string is expected in the workload"
                 .. " cert config", { field = k, path = path })
    end
  end
  return { cert_path = w.cert_path, key_path = w.key_path, path = path }
end

--- The client certificate to send: explicit paths, else the default one
-- when `GOOGLE_API_USE_CLIENT_CERTIFICATE=true` and a certificate
-- configuration exists. The files are read and checked here (a PEM
-- certificate; one unencrypted PEM private key).
-- @tparam[opt] table opts `client_cert` + `client_key` (paths; they win),
--   `certificate_config` (a path), `env`
-- @return `{ client_cert =, client_key = }` | false (none configured) |
--   nil, msg, err (step "environment", "certificate_config" or
--   "client_cert"; `field`)
function _M.client_cert(opts)
  opts = opts or {}
  if opts.client_cert ~= nil or opts.client_key ~= nil then
    local c, k, e = common.read_client_cert(opts, "gauth.mtls", 2)
    if c == nil then
      if k then return nil, k, e end
      return false
    end
    return { client_cert = opts.client_cert, client_key = opts.client_key }
  end
  local use, msg, err = _M.use_client_certificate(opts)
  if use == nil then return nil, msg, err end
  if not use then return false end
  local cfg, m2, e2 = _M.certificate_config(opts.certificate_config, opts)
  if cfg == nil then return nil, m2, e2 end
  if not cfg then return false end
  local pair = { client_cert = cfg.cert_path, client_key = cfg.key_path }
  local c, k, e = common.read_client_cert(pair, "gauth.mtls", 2)
  if c == nil then
    local e3 = errors.of(k, e)
    e3.path = cfg.path
    return errors.fail("mtls", "certificate_config", cfg.path .. ": " .. tostring(e3.message or k),
                       { retryable = false, kind = "config", field = e3.field, path = cfg.path })
  end
  return pair
end

--- The endpoint to use, as `discovery.build` chooses between an API's
-- regular and mTLS root: `always`, or `auto` with a client certificate,
-- take the mTLS one (when there is one).
-- @tparam string regular the regular endpoint
-- @tparam[opt] string mtls_endpoint the mTLS endpoint (nil: none)
-- @tparam boolean has_cert whether a client certificate is sent
-- @tparam[opt] table opts `env`
-- @return endpoint, is_mtls | nil, msg, err (a bad `GOOGLE_API_USE_MTLS_ENDPOINT`)
function _M.select_endpoint(regular, mtls_endpoint, has_cert, opts)
  local mode, msg, err = _M.endpoint_mode(opts)
  if not mode then return nil, msg, err end
  if mtls_endpoint and (mode == "always" or (mode == "auto" and has_cert)) then
    return mtls_endpoint, true
  end
  return regular, false
end

return _M
