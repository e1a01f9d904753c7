--- gauth: Google API authentication and API clients for Lua and OpenResty.
--
--    local gauth = require "gauth"
--    local creds, project = assert(gauth.default{ scopes = { SCOPE } })
--
-- Submodules load on first use: `gauth.service_account`,
-- `gauth.compute_engine`, `gauth.discovery`, `gauth.jwt`, ...
-- @module gauth

local require = require
local rawset = rawset

local _M = { _VERSION = "0.1.0" }

local SUBMODULES = {
  jwt = true, errors = true, http = true, retry = true, util = true,
  credentials = true, service_account = true, compute_engine = true,
  app_engine = true, authorized_user = true, impersonated = true,
  discovery = true, emulator = true, testing = true, adc = true,
  metadata = true, media = true, batch = true, token_cache = true,
  metrics = true, mtls = true,
  api_key = true,
}

setmetatable(_M, {
  __index = function(t, name)
    if SUBMODULES[name] then
      local m = require("gauth." .. name)
      rawset(t, name, m)
      return m
    end
    return nil
  end,
})

--- Application Default Credentials: find credentials for this environment.
-- Looks at `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's well-known file, App
-- Engine, then the metadata server.
-- @tparam[opt] table opts `scopes`, `quota_project`, ...
-- @return credentials, project_id; or nil and an error listing every place
-- tried
function _M.default(opts)
  return require("gauth.adc").default(opts)
end

--- Call `fn(data)` on every `event` in this process (an nginx worker):
-- "refresh" (a token exchange succeeded: `credential`, `seconds`),
-- "failure" (one failed: `credential`, `seconds`, `message`, `err`),
-- "retry" (a request is about to be tried again: `module`, `step`,
-- `attempt`, `delay`, `message`, `err`). `credential` is `tostring(creds)`:
-- never a secret. See `gauth.metrics`.
-- @tparam string event
-- @tparam function fn
-- @return true | nil, msg, err (unknown event)
function _M.on(event, fn)
  return require("gauth.metrics").on(event, fn)
end

return _M
