--- Wall-clock time and sleeping, the nginx way inside nginx (ngx.now,
-- ngx.sleep) and through gauth.core elsewhere. Requires nothing of gauth's
-- Lua but gauth.lib.ngx_phase. Internal.
-- @module gauth.lib.time

local ngx_phase = require "gauth.lib.ngx_phase"

local ngx = ngx  -- luacheck: ignore

-- gauth.core maps libcurl, OpenSSL and the libraries they pull in (about
-- 8 MiB resident): loaded when first needed, so that a process that only
-- builds Discovery requests (or reads a key file) does not pay for it.
local core
local function load_core()
  core = require "gauth.core"
  return core
end

local _M = { _VERSION = "0.1.0" }

--- Wall-clock time in seconds, with sub-second precision.
-- @function now
-- @treturn number
if ngx_phase.is_ngx then
  _M.now = function() ngx.update_time(); return ngx.now() end
else
  _M.now = function()
    return (core or load_core()).now()
  end
end

--- Sleep `s` seconds without blocking nginx where that is possible. Inside
-- an nginx worker in a phase that cannot yield it does not sleep at all
-- (nothing there may block) and returns nil and the reason.
-- @tparam number s
function _M.sleep(s)
  if s <= 0 then return end
  if ngx_phase.is_ngx then
    if ngx_phase.can_yield() then return ngx.sleep(s) end
    local phase = ngx_phase.nonblocking()
    if phase then return nil, ngx_phase.refusal(phase) end
  end
  return (core or load_core()).sleep(s)
end

return _M
