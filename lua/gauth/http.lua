--- Picks the HTTP transport for the environment.
--
-- Outside nginx: `gauth.transport.curl` (libcurl, blocking). Inside nginx
-- (OpenResty / lua-nginx-module): a small dispatcher that sends each request
-- over `gauth.transport.ngx` (cosockets, non-blocking) when the current
-- phase can yield. Nothing blocks a worker: in phases without cosockets
-- (set_by_lua, header/body filters, log, balancer, init_worker, ...) a
-- request fails at once with a retryable error (`kind` "phase", `phase`)
-- that names the phase and the way out (a timer, another phase). Only
-- `init_by_lua` (the master, before any worker exists) uses libcurl: it
-- may block. The choice is made per request, not when the transport is
-- made, because transports are typically made once (at module load, in
-- init_by_lua) and used later from content handlers.
--
-- Every transport has `t:request(req)` -> `res | nil, err` and `t:close()`;
-- see ARCHITECTURE.md and `gauth.transport.curl`.
-- @module gauth.http

local ngx_phase = require "gauth.lib.ngx_phase"
local errors = require "gauth.errors"

local require = require
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

local function new_curl(opts)
  return require("gauth.transport.curl").new(opts)
end

-- Under nginx only.
local auto = {}
local auto_mt = { __index = auto }

function auto:request(req)
  local t, err
  if ngx_phase.can_yield() then
    t = self.ngx_t
    if not t then
      -- Loaded lazily: it exists only where lua-resty-core does.
      local msg
      t, msg, err = require("gauth.transport.ngx").new(self.opts)
      if not t then return nil, msg, err end
      self.ngx_t = t
    end
    return t:request(req)
  end
  local phase = ngx_phase.nonblocking()
  if phase then
    return errors.fail("http", "request", "cannot send a request: " .. ngx_phase.refusal(phase),
                       { retryable = true, kind = "phase", phase = phase })
  end
  -- init_by_lua: the master, before the workers; blocking is allowed.
  t = self.curl_t
  -- A handle made in the master reaches every worker through fork(); it
  -- is used there only.
  local pid = ngx.worker.pid() -- luacheck: ignore ngx
  if t and self.curl_pid ~= pid then
    t = nil
  end
  if not t then
    local msg
    t, msg, err = new_curl(self.opts)
    if not t then return nil, msg, err end
    self.curl_t, self.curl_pid = t, pid
  end
  return t:request(req)
end

function auto:close()
  local a, b = self.ngx_t, self.curl_t
  self.ngx_t, self.curl_t = nil, nil
  if a and a.close then a:close() end
  if b then b:close() end
  return true
end

auto_mt.__tostring = function() return "gauth.http (nginx)" end

--- Make the transport for this environment.
-- @tparam[opt] table opts transport options: `ca_file`, `timeout`,
--   `connect_timeout`, `max_body`, `proxy`, `no_proxy`, `client_cert` +
--   `client_key` (PEM files: mutual TLS, on both transports) (see
--   `gauth.transport.curl`)
-- @return transport | nil, msg, err (a `proxy` that does not parse)
function _M.new(opts)
  if ngx_phase.is_ngx then
    if opts ~= nil and type(opts) ~= "table" then
      error("gauth.http: opts must be a table", 2)
    end
    if opts and opts.proxy ~= nil then
      -- Refused now, as the transports themselves would (they are made
      -- at first use here).
      local cfg, msg, err = require("gauth.transport.common").proxy_config(opts, "gauth.http")
      if not cfg then return nil, msg, err end
    end
    return setmetatable({ opts = opts }, auto_mt)
  end
  return new_curl(opts)
end

local shared

--- The process-wide transport (per worker under nginx), made at first use,
-- for modules given no `opts.http`. Keeping one means one kept-alive
-- connection pool for every credentials object and service in the process.
-- @return transport | nil, msg, err
function _M.default()
  if not shared then
    local t, msg, err = _M.new()
    if not t then return nil, msg, err end
    shared = t
  end
  return shared
end

--- Replace the process-wide transport (an application's own, with its own
-- CA bundle or timeouts; or nil to make a fresh one at next use).
function _M.set_default(t)
  if t ~= nil and (type(t) ~= "table" or type(t.request) ~= "function") then
    error("gauth.http: set_default needs a transport (with :request)", 2)
  end
  shared = t
end

return _M
