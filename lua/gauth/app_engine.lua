--- App Engine credentials: on App Engine (standard, second generation,
-- and flexible) the application's service account gets its tokens from
-- the metadata server, as on Compute Engine.
--
--     local ae = require "gauth.app_engine"
--     local creds, err = ae.new({ scopes = { SCOPE } })
--     if not creds then
--       -- not on App Engine: find the credentials of this environment
--       creds = assert(require("gauth").default({ scopes = { SCOPE } }))
--     end
--
-- App Engine is recognised by the variables it sets: `GAE_APPLICATION`,
-- `GAE_ENV` or `GAE_SERVICE`. The objects are `gauth.compute_engine`
-- credentials whose `kind` is "app_engine" (same `token()`, `apply()`,
-- `with_scopes()`, cache and refresh window). Errors have module
-- "app_engine".
-- @module gauth.app_engine

local compute_engine = require "gauth.compute_engine"
local metadata = require "gauth.metadata"
local errors = require "gauth.errors"

local type = type
local pairs = pairs
local ipairs = ipairs
local error = error

local _M = { _VERSION = "0.1.0" }

--- The variables App Engine sets (any one is enough).
_M.VARS = { "GAE_APPLICATION", "GAE_ENV", "GAE_SERVICE" }

local function not_here()
  return errors.new("app_engine", "environment",
    "not running on App Engine (GAE_APPLICATION, GAE_ENV and GAE_SERVICE are unset):"
    .. " App Engine credentials work only there; use gauth.default() to find"
    .. " the credentials of this environment")
end

local function check_opts(opts, fn)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.app_engine: " .. fn .. ": opts must be a table", 3)
  end
end

--- Is this App Engine?
-- @tparam[opt] table opts `env` (see `gauth.metadata.getenv_for`)
-- @return true | false, message, err (saying which variables were looked at)
function _M.is_app_engine(opts)
  check_opts(opts, "is_app_engine")
  local getenv = metadata.getenv_for(opts)
  for _, name in ipairs(_M.VARS) do
    if getenv(name) then return true end
  end
  local e = not_here()
  return false, tostring(e), e
end

--- App Engine credentials (tokens from the metadata server):
-- `app_engine.new(opts)`, or by its old name `credentials`.
-- @tparam[opt] table opts `scopes`, `service_account`, `quota_project`,
--   `host`, `env`, `http`, `timeout`, `retry`, `cache`, `now`: as for
--   `gauth.compute_engine.new`
-- @return credentials | nil, message, err (outside App Engine: an error pointing to
--   `gauth.default()`)
function _M.new(opts)
  check_opts(opts, "new")
  local ok, err = errors.pair(_M.is_app_engine(opts))
  if not ok then return errors.ret(err) end
  return compute_engine.new_kind(opts, "app_engine")
end

--- The old name of `new` (DECISIONS, Constructors): kept as an alias
-- until 1.0.
_M.credentials = _M.new

--- The project id of this App Engine application: `GAE_APPLICATION`
-- without its region prefix ("s~my-app" -> "my-app"), else
-- `GOOGLE_CLOUD_PROJECT` (set by the second-generation runtimes), else
-- the metadata server's.
-- @tparam[opt] table opts `env`, and `host`, `http`, `timeout`, `retry` for
--   the metadata server
-- @return project id | nil, message, err
function _M.project_id(opts)
  check_opts(opts, "project_id")
  local ok, err = errors.pair(_M.is_app_engine(opts))
  if not ok then return errors.ret(err) end
  local getenv = metadata.getenv_for(opts)
  local app = getenv("GAE_APPLICATION")
  if app then
    -- "<partition>~<project>": the partition (s, e, ...) is App Engine's.
    local project = app:match("~(.+)$") or app
    if project ~= "" then return project end
  end
  local p = getenv("GOOGLE_CLOUD_PROJECT")
  if p then return p end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o._module = "app_engine"
  return metadata.project_id(o)
end

return _M
