--- The universe-domain rule, in one place: Google's default universe, what
-- counts as a universe domain, the universe a service is configured for,
-- the universe of a credentials object, and the refusal to send credentials
-- of one universe to a service of another (google-api-python-client 2.x's
-- check). Discovery's `execute`, `gauth.media` and `gauth.batch` use
-- `check`; key-file types, storage, downscoped, IAM, STS, impersonation and
-- the metadata-based types use `DEFAULT` and `is_domain` (service-account
-- and user key files `is_dotted_domain`).
--
-- Internal to gauth (documented so that its callers share one reading of
-- the rule); user code reads `creds.universe_domain` or
-- `creds:get_universe_domain()` instead.
-- @module gauth.universe

local errors = require "gauth.errors"

local type = type
local find = string.find
local tostring = tostring
local getenv = os.getenv

local _M = { _VERSION = "0.1.0" }

--- Google's own universe: the default wherever none is given.
_M.DEFAULT = "googleapis.com"

--- The environment variable that chooses a service's universe when its
-- options do not (google-api-python-client's).
_M.ENV = "GOOGLE_CLOUD_UNIVERSE_DOMAIN"

--- Is `v` a universe domain: a string of letters, digits, dots and hyphens
-- that starts with a letter or digit, at most 253 bytes (a DNS name's
-- limit)? Nothing more is asked of it (Google's libraries ask no more).
-- @param v anything
-- @treturn boolean
function _M.is_domain(v)
  return type(v) == "string" and #v <= 253 and find(v, "^[%w][%w.-]*$") ~= nil
end
local is_domain = _M.is_domain

--- Is `v` a dotted universe domain: `is_domain`, with a dot in it and a
-- letter or digit at its end? What service-account and user key files
-- (and a service account's `universe_domain` option) must hold. Google's
-- libraries take any string there; gauth refused single labels and a
-- trailing dot or hyphen in those files from the start and keeps doing so.
-- @param v anything
-- @treturn boolean
function _M.is_dotted_domain(v)
  return is_domain(v) and find(v, "^[%w][%w-]*%.[%w.-]*[%w]$") ~= nil
end

--- The universe a service is configured for (googleapiclient's rule): the
-- option when given, else `GOOGLE_CLOUD_UNIVERSE_DOMAIN` (an empty value
-- counts as unset), else `DEFAULT`. The value is not checked here.
-- @tparam[opt] string option the service's `universe_domain` option
-- @tparam[opt] function env `getenv` to read the variable with (tests)
-- @treturn string
function _M.configured(option, env)
  if option then return option end
  local v = (env or getenv)(_M.ENV)
  if v and v ~= "" then return v end
  return _M.DEFAULT
end

--- The universe of credentials when it is known without the network: their
-- `universe_domain` field when it is a non-empty string, else nil
-- (metadata-based credentials before their first read, or credentials
-- that do not say).
-- @tparam table creds
-- @treturn string|nil
function _M.known(creds)
  local ud = creds.universe_domain
  if type(ud) == "string" and ud ~= "" then return ud end
  return nil
end
local known = _M.known

--- The universe of credentials: `known(creds)`; else their
-- `get_universe_domain()` (metadata-based credentials: one read, cached by
-- them); else `DEFAULT` (as google-auth's base class says).
-- @tparam table creds
-- @return domain | nil, msg, err (the credentials could not learn it; `err`
--   is theirs)
function _M.of(creds)
  local ud = known(creds)
  if ud then return ud end
  if type(creds.get_universe_domain) == "function" then
    local v, m, x = creds:get_universe_domain()
    if not v then return errors.ret(errors.of(m, x)) end
    return v
  end
  return _M.DEFAULT
end
local universe_of = _M.of

--- Refuse to send a service's credentials when their universe is not the
-- service's, at the first request of each service object (a success is
-- remembered in `svc.universe_ok`). Without credentials there is nothing
-- to check (an unauthenticated call, or `api_key` as `?key=`).
-- @tparam table svc the service's shared state: `credentials`, `universe`
--   (as `configured` gave it)
-- @tparam string module the module named in the error ("discovery",
--   "media", "batch")
-- @tparam string step
-- @return true | nil, msg, err (`kind` "universe_mismatch" with
--   `service_universe` and `credentials_universe`, or the credentials'
--   failure to learn theirs; never retryable; nothing was sent)
function _M.check(svc, module, step)
  local creds = svc.credentials
  if not creds or svc.universe_ok == creds then return true end
  local cu, _, cerr = universe_of(creds)
  if not cu then
    return errors.ret(errors.wrap(module, step, cerr, { retryable = false,
      message = "cannot learn the credentials' universe domain: " .. tostring(cerr and cerr.message) }))
  end
  local su = svc.universe
  if cu ~= su then
    return errors.fail(module, step, "the service's universe domain (" .. tostring(su)
      .. ") does not match the universe domain of its credentials (" .. cu
      .. "); nothing was sent (the service's universe is opts.universe_domain,"
      .. " else " .. _M.ENV .. ", else " .. _M.DEFAULT .. ")",
      { retryable = false, kind = "universe_mismatch", service_universe = su,
        credentials_universe = cu })
  end
  svc.universe_ok = creds
  return true
end

return _M
