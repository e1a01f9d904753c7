--- Where gauth runs inside nginx: is there nginx at all, and may this phase
-- yield (cosockets, ngx.sleep) or block. A leaf: it requires nothing of
-- gauth. Internal.
-- @module gauth.lib.ngx_phase

local type = type
local tostring = tostring

local ngx = ngx  -- luacheck: ignore

local _M = { _VERSION = "0.1.0" }

--- True when running inside nginx (lua-nginx-module / OpenResty).
_M.is_ngx = type(ngx) == "table" and type(ngx.get_phase) == "function"

-- The phases that can yield on cosockets / ngx.sleep.
local YIELDING = { rewrite = true, access = true, content = true,
                   timer = true, ssl_cert = true, ssl_session_fetch = true,
                   preread = true, balancer = false }

--- Can this phase yield on cosockets / ngx.sleep? false outside nginx.
-- @treturn boolean
function _M.can_yield()
  if not _M.is_ngx then return false end
  return YIELDING[ngx.get_phase()] == true
end

--- Inside an nginx worker, in a phase that can neither yield nor block
-- (set, header and body filters, log, balancer, init_worker, ...): the
-- phase's name. nil outside nginx, in phases that can yield, and in
-- init_by_lua (the master, before any worker: blocking is allowed there).
-- @treturn string|nil
function _M.nonblocking()
  if not _M.is_ngx then return nil end
  local phase = ngx.get_phase()
  if YIELDING[phase] or phase == "init" then return nil end
  return phase
end

--- What to say when the network is refused in such a phase: why, and the
-- way out.
-- @tparam string phase
-- @treturn string
function _M.refusal(phase)
  return "the " .. tostring(phase) .. " phase of nginx cannot make requests (no cosockets"
    .. " there, and gauth never blocks a worker): make the call from a timer"
    .. " (ngx.timer.at) or in the rewrite, access or content phase"
end

return _M
