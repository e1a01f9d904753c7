--- A small local stand-in for Google, written for gauth: the OAuth 2.0
-- token endpoint (it verifies assertions with the public half of the keys
-- it is given and answers like Google, errors included), a GCE metadata
-- server, a Discovery endpoint, and an in-memory Cloud SQL Admin API.
-- Plain HTTP on loopback only.
--
--    local emulator = require "gauth.emulator"
--    local key = assert(emulator.make_key())       -- a throwaway key
--    local emu = assert(emulator.start{ keys = { key } })
--    key.token_uri = emu.token_uri
--    assert(emulator.write_key_file("/tmp/sa.json", key))
--    -- ... point gauth at emu.url, then:
--    emu:stop()
--
-- `start` runs the server in a child process (the same Lua interpreter),
-- since a blocking client in this process would otherwise wait on a server
-- that cannot run. `serve` runs it in the foreground (the command line,
-- and the child). `new` gives an in-process server for callers with their
-- own loop. Both `start` and `new` return the one handle type: fields
-- `url`, `port`, `host`, `token_uri`, `metadata_host`, `discovery_url`,
-- `project`, `key_file`, and methods `stop()`, `running()`, `requests()`,
-- `clear_requests()`; `new`'s also `step(timeout)` and `run(tick)`.
-- @module gauth.emulator

local core = require "gauth.core"
local cjson = require "cjson.safe"
local errors = require "gauth.errors"
local socket = require "socket"
local httpd = require "gauth.emulator.httpd"
local google = require "gauth.emulator.google"
local sys = require "gauth.lib.sys"
local url_lib = require "gauth.lib.url"

local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local format = string.format
local gsub = string.gsub
local match = string.match
local io_open = io.open
local os_remove = os.remove
local os_rename = os.rename
local os_getenv = os.getenv
local read_file = sys.read_file

local _M = { _VERSION = "0.1.0" }

-- The one handle type of `start` (a child process: `_pid`) and `new` (in
-- process: `server`, `state`).
local Handle = {}
local handle_mt = { __index = Handle }
_M.Handle = Handle

-- Defined with the child process code below.
local control, integers

_M.DEFAULT_PROJECT = google.DEFAULT_PROJECT

local function fail(step, message, fields)
  return errors.fail("emulator", step, message, fields)
end

local function shell_quote(s)
  return "'" .. gsub(tostring(s), "'", "'\\''") .. "'"
end


local function write_file(path, data)
  local f, err = io_open(path, "wb")
  if not f then return nil, err end
  local ok, werr = f:write(data)
  f:close()
  if not ok then return nil, werr end
  return true
end

-- What /proc says about a process: pid, state letter and start time, which
-- together tell "our child" from a later process that got the same pid.
local function proc_stat(pid)
  if type(pid) == "number" then pid = format("%d", pid) end
  local s = read_file("/proc/" .. pid .. "/stat")
  if not s then return nil end
  local id, rest = match(s, "^(%d+) %(.*%) (.*)$")
  if not id then return nil end
  local fields = {}
  for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
  return { pid = tonumber(id), state = fields[1], start = fields[20] }
end

local function have_proc()
  return proc_stat("self") ~= nil
end

local function alive(pid, start)
  if have_proc() then
    local st = proc_stat(pid)
    if not st or st.state == "Z" or st.state == "X" then return false end
    return start == nil or st.start == start
  end
  local r = os.execute(format("kill -0 %d 2>/dev/null", pid))
  return r == true or r == 0
end

local function copy(t)
  local out = {}
  for k, v in pairs(t) do out[k] = v end
  return out
end

-- ------------------------------------------------------------------------
-- Keys

--- Make a throwaway service-account key shaped like the JSON key files
-- Google hands out (2048-bit RSA, made by the `openssl` command).
-- @tparam[opt] table opts `project` (default exemplary-example-123),
-- `name` (the account's name, default "gauth-emulator"), `client_email`,
-- `token_uri` (default Google's; set it to an emulator's `token_uri`),
-- `bits` (default 2048)
-- @return the key as a table | nil, msg, err
function _M.make_key(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("gauth.emulator: make_key: opts must be a table", 2) end
  local pem, err = google.generate_rsa_pem(opts.bits or 2048)
  if not pem then return fail("make key", err) end
  local project = opts.project or google.DEFAULT_PROJECT
  local email = opts.client_email
    or ((opts.name or "gauth-emulator") .. "@" .. project .. ".iam.gserviceaccount.com")
  local kid = google.hex(core.random_bytes(20))
  return {
    type = "service_account",
    project_id = project,
    private_key_id = kid,
    private_key = pem,
    client_email = email,
    client_id = google.numeric_id(email .. kid),
    auth_uri = "https://accounts.google.com/o/oauth2/auth",
    token_uri = opts.token_uri or "https://oauth2.googleapis.com/token",
    auth_provider_x509_cert_url = "https://www.googleapis.com/oauth2/v1/certs",
    client_x509_cert_url = "https://www.googleapis.com/robot/v1/metadata/x509/"
      .. url_lib.encode(email),
    universe_domain = "googleapis.com",
  }
end

--- Write a key table as a JSON key file readable by its owner only.
-- @tparam string path
-- @tparam table key
-- @return true | nil, msg, err
function _M.write_key_file(path, key)
  if type(path) ~= "string" or type(key) ~= "table" then
    error("gauth.emulator: write_key_file: path and key table required", 2)
  end
  -- Create it empty under umask 077 first, so the key is never readable
  -- by others, not even for a moment.
  os.execute("(umask 077; : > " .. shell_quote(path) .. ") 2>/dev/null")
  local ok, err = write_file(path, google.json(key) .. "\n")
  if not ok then return fail("write key file", tostring(err)) end
  return true
end

-- ------------------------------------------------------------------------
-- In-process server

--- Make an in-process server (bound, not yet serving). Most callers want
-- `start` (child process) or `serve` (foreground) instead.
-- @tparam table config the options of `start`
-- @return a handle (see the module's doc; `step(timeout)` and `run(tick)`
-- serve) | nil, msg, err
function _M.new(config)
  config = config or {}
  if type(config) ~= "table" then error("gauth.emulator: new: config must be a table", 2) end
  local log = config.log or function(line)
    io.stderr:write("gauth-emulator: ", line, "\n")
  end
  local cfg = copy(config)
  cfg.log = log
  local state, err = google.new(cfg)
  if not state then return fail("configure", err) end
  local server
  server, err = httpd.new{
    host = config.host, port = config.port,
    handler = function(req) return state:handle(req) end,
    error_body = google.error_body,
    log = log,
  }
  if not server then return fail("listen", err) end
  local url = server:url()
  state:set_url(url)
  local self = setmetatable({
    state = state, server = server, url = url, port = server.port,
    host = server.host, token_uri = state.token_uri, project = state.project,
    metadata_host = (server.v6 and ("[" .. server.host .. "]") or server.host)
      .. ":" .. server.port,
    discovery_url = url .. "/discovery/v1/apis/{api}/{apiVersion}/rest",
  }, handle_mt)
  if config.new_key_file then
    local key, kerr = errors.pair(_M.make_key{ project = state.project, token_uri = state.token_uri })
    if not key then server:close() return errors.ret(kerr) end
    local ok, werr = errors.pair(_M.write_key_file(config.new_key_file, key))
    if not ok then server:close() return errors.ret(werr) end
    local accounts, nerr = google.normalize_accounts({ keys = { key } })
    if accounts then accounts, nerr = state:add_accounts(accounts) end
    if not accounts then server:close() return fail("configure", nerr) end
    self.key_file = config.new_key_file
  end
  return self
end

-- A method called with `.` instead of `:` (the old handle of `start` had
-- functions): a programming error that names the fix.
local function check_self(self, name)
  if getmetatable(self) ~= handle_mt then
    error("gauth.emulator: " .. name .. " is a method: call it as emu:" .. name .. "()", 3)
  end
end

local function in_process(self, name)
  check_self(self, name)
  if not self.server then
    error("gauth.emulator: " .. name .. " is for a server made by new (start's runs in its child)", 3)
  end
end

--- Serve for at most `timeout` seconds (`new`'s handles).
function Handle:step(timeout)
  in_process(self, "step")
  self.server:step(timeout or 0)
end

--- Serve until the process ends or `stop()` (`new`'s handles).
-- @tparam[opt] function tick called about twice a second with the
--   server (whose `stop()` ends the loop)
function Handle:run(tick)
  in_process(self, "run")
  self.server:run{ tick = tick }
end

--- The trace of what this emulator served, oldest first (method, path,
-- status, endpoint, and for the token endpoint the grant type and the
-- assertion's claims; never a token).
-- @return array of entries | nil, msg, err (the child did not answer)
function Handle:requests()
  check_self(self, "requests")
  if self.state then return self.state.trace end
  local status, body = control(self.host, self.port, "GET", "/_emulator/requests")
  if status ~= 200 then
    return fail("requests", "control request failed: " .. tostring(body))
  end
  local list = cjson.decode(body)
  if type(list) ~= "table" then return fail("requests", "bad trace") end
  return integers(list)
end

--- Forget the trace so far.
-- @return true | nil, msg, err
function Handle:clear_requests()
  check_self(self, "clear_requests")
  if self.state then
    self.state.trace = {}
    return true
  end
  local status, body = control(self.host, self.port, "DELETE", "/_emulator/requests")
  if status ~= 204 then return fail("requests", "control request failed: " .. tostring(body)) end
  return true
end

--- Is it still serving?
-- @return boolean
function Handle:running()
  check_self(self, "running")
  if self.server then return not self._stopped end
  return not self._stopped and alive(self._pid, self._child_start)
end

--- Stop: close the listener and every connection (`new`), or end the
-- child (SIGTERM, then SIGKILL) and remove its files (`start`).
-- Idempotent.
-- @return true when it is no longer running
function Handle:stop()
  check_self(self, "stop")
  if self.server then
    if not self._stopped then
      self._stopped = true
      self.server:close()
    end
    return true
  end
  local pid, child_start = self._pid, self._child_start
  if self._stopped then return not alive(pid, child_start) end
  self._stopped = true
  if alive(pid, child_start) then
    os.execute("kill " .. pid .. " 2>/dev/null")
    local until_t = core.monotonic() + 3
    while alive(pid, child_start) and core.monotonic() < until_t do core.sleep(0.01) end
    if alive(pid, child_start) then
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      until_t = core.monotonic() + 2
      while alive(pid, child_start) and core.monotonic() < until_t do core.sleep(0.01) end
    end
  end
  if self.log_file then os_remove(self.log_file) end
  return not alive(pid, child_start)
end

--- The old name of `stop` for `new`'s handles.
Handle.close = Handle.stop

-- A forgotten child handle still stops its child when collected (5.4
-- calls this; LuaJIT's tables have no __gc: a guard userdata does it).
handle_mt.__gc = function(self)
  if self._pid then Handle.stop(self) end
end

-- ------------------------------------------------------------------------
-- Foreground

--- Run the emulator in the foreground until the process is killed.
-- @tparam table config the options of `start`, plus `config_file` (a JSON
-- file with the options, deleted once read), `ready_file` (written with
-- `{"url":..,"port":..}` once it accepts connections), `print_url` (print
-- the URL on stdout), `parent_pid`/`parent_start` (exit when that process
-- is gone, removing `log_file`)
-- @return only on failure: nil, msg, err
function _M.serve(config)
  config = config or {}
  if type(config) ~= "table" then error("gauth.emulator: serve: config must be a table", 2) end
  if config.config_file then
    local text = read_file(config.config_file)
    os_remove(config.config_file)
    local file_cfg = text and cjson.decode(text)
    if type(file_cfg) ~= "table" then
      return fail("serve", "cannot read config file " .. tostring(config.config_file))
    end
    for k, v in pairs(config) do
      if k ~= "config_file" then file_cfg[k] = v end
    end
    config = file_cfg
  end
  local srv, err = errors.pair(_M.new(config))
  if not srv then return errors.ret(err) end
  if config.ready_file then
    local me = proc_stat("self")
    local tmp = config.ready_file .. ".tmp"
    local ok = write_file(tmp, google.json({ url = srv.url, port = srv.port,
                                             pid = me and me.pid }))
    if not ok or not os_rename(tmp, config.ready_file) then
      srv:close()
      return fail("serve", "cannot write ready file")
    end
  end
  if config.print_url then
    io.stdout:write(srv.url, "\n")
    io.stdout:flush()
  end
  local parent, parent_start = tonumber(config.parent_pid), config.parent_start
  if parent then parent = math.floor(parent) end
  local last_check = socket.gettime()
  srv:run(function(server)
    -- Do not outlive the process that started us, even if it never got to
    -- call stop().
    if parent and socket.gettime() - last_check >= 1 then
      last_check = socket.gettime()
      if not alive(parent, parent_start) then
        -- Nobody is left to read or remove our log.
        if config.log_file then os_remove(config.log_file) end
        server:stop()
      end
    end
  end)
  return true
end

-- ------------------------------------------------------------------------
-- Child process

-- The interpreter running us, so that the child loads the same ABI.
local function interpreter(opts)
  if opts.lua then return opts.lua end
  local env = os_getenv("GAUTH_LUA")
  if env and env ~= "" then return env end
  if type(arg) == "table" then
    local i = 0
    while arg[i - 1] ~= nil do i = i - 1 end
    if i < 0 then return arg[i] end
  end
  if jit then return "luajit" end  -- luacheck: ignore
  return "lua" .. (match(_VERSION, "%d+%.%d+") or "")
end

local function tail(text, n)
  if not text or text == "" then return "" end
  local lines = {}
  for l in text:gmatch("[^\n]+") do lines[#lines + 1] = l end
  local from = #lines - (n or 5) + 1
  if from < 1 then from = 1 end
  local out = {}
  for i = from, #lines do out[#out + 1] = lines[i] end
  return table.concat(out, " | ")
end

-- lua-cjson decodes every number as a float; on 5.4 that prints 200 as
-- "200.0", so give whole numbers back their integer form.
local tointeger = math.tointeger
function integers(v)
  if type(v) == "table" then
    for k, x in pairs(v) do v[k] = integers(x) end
  elseif tointeger and type(v) == "number" then
    return tointeger(v) or v
  end
  return v
end

-- One plain HTTP request to the emulator's control path.
function control(host, port, method, path)
  local s = socket.tcp()
  s:settimeout(10)
  local ok, err = s:connect(host, port)
  if not ok then s:close() return nil, "connect: " .. tostring(err) end
  s:send(method .. " " .. path .. " HTTP/1.1\r\nHost: " .. host .. ":" .. port
         .. "\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
  local data, rerr, partial = s:receive("*a")
  s:close()
  data = data or partial
  if not data or data == "" then return nil, "no answer: " .. tostring(rerr) end
  local status = tonumber(match(data, "^HTTP/1%.%d (%d+)"))
  local body = match(data, "\r\n\r\n(.*)$") or ""
  return status, body
end

--- Start the emulator in a child process and wait until it accepts
-- connections.
-- @tparam[opt] table opts
--   `port` (default 0: any free port), `host` (a loopback address; default
--   127.0.0.1),
--   `keys` (array of service-account or authorized-user key tables or JSON
--   texts), `key_file` (path or array of paths), `new_key_file` (path: make
--   a throwaway service-account key, accept it, and write it there with
--   `token_uri` pointing here),
--   `project` (default exemplary-example-123), `numeric_project_id`,
--   `instances` (array of DatabaseInstance tables replacing the seed; each
--   may name its `project`),
--   `documents` (Discovery documents to serve besides sqladmin v1beta4/v1:
--   tables, JSON texts or file paths, as an array or keyed by anything),
--   `rewrite_root_url` (default true: served documents point here),
--   `token_lifetime` (seconds, default 3600), `clock_skew` (default 60),
--   `audiences` (more accepted assertion `aud` values), `subjects`
--   (allowed `sub` values for domain-wide delegation; default any),
--   `signing_key` (RSA PEM for ID tokens; default made on first use),
--   `metadata_email`, `metadata_scopes`, `log_requests` (one line per
--   request in the child's log), `lua` (interpreter; default `GAUTH_LUA`,
--   else the one running), `timeout` (seconds to wait, default 10)
-- @return a handle (the module's one type) with fields `url`, `port`,
-- `host`, `token_uri`, `metadata_host` (for GCE_METADATA_HOST),
-- `discovery_url`, `project`, `pid`, `key_file` (with `new_key_file`),
-- `log_file`, and methods `stop()`, `running()`, `requests()`,
-- `clear_requests()` | nil, msg, err
function _M.start(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("gauth.emulator: start: opts must be a table", 2) end
  local host = httpd.loopback_address(opts.host)
  if not host then
    return fail("start", "refusing to bind " .. tostring(opts.host)
      .. ": the emulator listens on loopback only")
  end
  -- The child gets public keys only: private keys stay in this process.
  local accounts, aerr = google.normalize_accounts(opts)
  if not accounts then return fail("start", aerr) end
  local cfg = {}
  for k, v in pairs(opts) do
    if type(v) ~= "function" then cfg[k] = v end
  end
  cfg.keys, cfg.key_file, cfg.authorized_users, cfg.lua, cfg.timeout = nil, nil, nil, nil, nil
  cfg.accounts = accounts
  cfg.host = host
  local me = proc_stat("self")
  if me then cfg.parent_pid, cfg.parent_start = me.pid, me.start end

  -- os.tmpname makes each file with mkstemp (mode 0600).
  local cfg_path, ready_path, log_path, boot_path =
    os.tmpname(), os.tmpname(), os.tmpname(), os.tmpname()
  local function cleanup()
    os_remove(cfg_path); os_remove(ready_path); os_remove(ready_path .. ".tmp")
    os_remove(boot_path)
  end
  cfg.ready_file = ready_path
  cfg.log_file = log_path
  local ok, text = pcall(google.json, cfg)
  if not ok then
    cleanup(); os_remove(log_path)
    return fail("start", "options are not JSON: " .. tostring(text))
  end
  write_file(cfg_path, text)
  write_file(boot_path, format(
    "package.path = %q\npackage.cpath = %q\n"
    .. "local ok, err = require(\"gauth.emulator\").serve({ config_file = %q })\n"
    .. "if not ok then io.stderr:write(\"gauth-emulator: \", tostring(err), \"\\n\") os.exit(1) end\n",
    package.path, package.cpath, cfg_path))

  local lua = interpreter(opts)
  local p = io.popen(shell_quote(lua) .. " " .. shell_quote(boot_path)
    .. " </dev/null >" .. shell_quote(log_path) .. " 2>&1 & echo $!")
  local pid = p and tonumber(p:read("*l"))
  if p then p:close() end
  if not pid then
    cleanup(); os_remove(log_path)
    return fail("start", "cannot start " .. tostring(lua))
  end
  local child = proc_stat(pid)
  local child_start = child and child.start

  local deadline = core.monotonic() + (tonumber(opts.timeout) or 10)
  local info
  while true do
    local r = read_file(ready_path)
    info = r and r ~= "" and cjson.decode(r)
    if type(info) == "table" and info.port then break end
    if not alive(pid, child_start) then
      local log = read_file(log_path)
      cleanup(); os_remove(log_path)
      return fail("start", "the emulator exited: " .. tail(log))
    end
    if core.monotonic() > deadline then
      os.execute("kill -9 " .. pid .. " 2>/dev/null")
      local log = read_file(log_path)
      cleanup(); os_remove(log_path)
      return fail("start", "the emulator did not come up in time: " .. tail(log))
    end
    core.sleep(0.01)
  end
  cleanup()

  -- Numbers come back from JSON as floats on 5.4.
  local port = math.floor(tonumber(info.port))
  local probe = socket.tcp()
  probe:settimeout(5)
  local cok, cerr = probe:connect(host, port)
  probe:close()
  if not cok then
    os.execute("kill -9 " .. pid .. " 2>/dev/null")
    os_remove(log_path)
    return fail("start", "the emulator does not accept connections: " .. tostring(cerr))
  end

  local url = info.url
  local h = setmetatable({
    url = url, port = port, host = host, pid = pid,
    token_uri = url .. "/token",
    metadata_host = match(url, "^http://(.*)$"),
    discovery_url = url .. "/discovery/v1/apis/{api}/{apiVersion}/rest",
    project = opts.project or google.DEFAULT_PROJECT,
    key_file = opts.new_key_file,
    log_file = log_path,
    _pid = pid, _child_start = child_start, _stopped = false,
  }, handle_mt)
  if newproxy then  -- luacheck: ignore (LuaJIT / 5.1)
    local guard = newproxy(true)  -- luacheck: ignore
    getmetatable(guard).__gc = function() Handle.stop(h) end
    h._guard = guard
  end
  return h
end

return _M
