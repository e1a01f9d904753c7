--- Starts and stops a real nginx (Debian's nginx-light + lua-nginx-module on
-- LuaJIT) for the specs, on loopback, from a temporary prefix.
--
--     local nginx = require "support.nginx"
--     local ok, why = nginx.available()          -- false, reason: skip
--     local srv = assert(nginx.start{
--       workers = 4,
--       http = "lua_shared_dict gauth 1m;",    -- lines in http {}
--       server = "location / { return 200; }", -- body of the main server
--       trusted_ca = "/path/ca.pem",           -- lua_ssl_trusted_certificate
--     })
--     local status, body, headers = srv:get("/path")
--     srv:stop()
--
-- The main server listens on 127.0.0.1:`srv.port`; `nginx.free_port()` gives
-- more ports for extra `server {}` blocks written into `http`. nginx is
-- started with LUA_PATH/LUA_CPATH unset and a package path without ";;", so
-- nothing built for Lua 5.4 can leak in; gauth.core comes from build/5.1.
-- A watchdog stops nginx if the test process dies without calling stop().
-- @module support.nginx

local socket = require "socket"

local _M = {}
local mt = { __index = _M }

local function dirname(p) return (p:match("^(.*)/[^/]*$")) or "." end

-- Repository root, from this file's path (spec/support/nginx.lua).
local function repo_root()
  local src = debug.getinfo(1, "S").source:sub(2)
  if src:sub(1, 1) ~= "/" then
    local pwd = os.getenv("PWD") or io.popen("pwd"):read("*l")
    src = pwd .. "/" .. src
  end
  return dirname(dirname(dirname(src)))
end

_M.root = repo_root()

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function read_file(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

local function write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
end

local function sh_quote(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end

local function run(cmd)
  -- The exit status is printed by the shell: LuaJIT's popen close() does
  -- not give it.
  local p = io.popen("{ " .. cmd .. "; } 2>&1; echo \"gauth-rc=$?\"")
  local out = p:read("*a")
  p:close()
  local code = tonumber(out:match("gauth%-rc=(%d+)%s*$"))
  out = out:gsub("gauth%-rc=%d+%s*$", "")
  return code == 0, out, code
end

-- The .so a Debian modules-available/*.conf loads (relative to nginx's
-- default prefix, /usr/share/nginx).
local function module_path(conf)
  local text = read_file(conf)
  local so = text and text:match("load_module%s+([^;%s]+)%s*;")
  if not so then return nil end
  if so:sub(1, 1) ~= "/" then so = "/usr/share/nginx/" .. so end
  return so
end

local MODULE_CONFS = {
  -- The ndk module must load before the lua module.
  "/usr/share/nginx/modules-available/mod-http-ndk.conf",
  "/usr/share/nginx/modules-available/mod-http-lua.conf",
}

-- Where Debian's LuaJIT C modules (cjson) live.
local function lua51_cdir()
  local ok, out = run("ls -d /usr/lib/*/lua/5.1 2>/dev/null")
  if ok then
    for d in out:gmatch("[^\n]+") do
      if exists(d .. "/cjson.so") then return d end
    end
  end
  return "/usr/local/lib/lua/5.1"
end

--- Can the specs run nginx here?
-- @return true | false, reason
function _M.available()
  local ok = run("command -v nginx")
  if not ok then return false, "nginx is not installed (apt-get install nginx-light)" end
  for _, c in ipairs(MODULE_CONFS) do
    local so = module_path(c)
    if not so or not exists(so) then
      return false, "lua-nginx-module not installed (libnginx-mod-http-lua): " .. c
    end
  end
  if not exists("/usr/share/lua/5.1/resty/core.lua") then
    return false, "lua-resty-core is not installed"
  end
  if not exists(_M.root .. "/build/5.1/gauth/core.so") then
    return false, "gauth.core for LuaJIT is not built (make both)"
  end
  return true
end

--- A free TCP port on 127.0.0.1 (bound, read, released).
function _M.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function my_pid()
  -- /proc/self is the Lua process itself when read from here.
  local stat = read_file("/proc/self/stat")
  return stat and tonumber(stat:match("^(%d+)"))
end

local function pid_alive(pid)
  local stat = read_file("/proc/" .. pid .. "/stat")
  if not stat then return false end
  return stat:match("%) (%a)") ~= "Z"
end

--- Start nginx.
-- @tparam table opts `workers` (default 2), `main` (main-context lines),
--   `events` (lines), `http` (http-context lines), `server` (body of the
--   main server), `trusted_ca` (PEM file for lua_ssl_trusted_certificate),
--   `log_level` (default "info"), `env` (names for `env` directives),
--   `port` (default: a free one), `listen_opts` (e.g. "reuseport"),
--   `package_path` (entries put before gauth's in lua_package_path),
--   `package_cpath` (the same for lua_package_cpath),
--   `setenv` (table name -> value: nginx's environment; with `env` to
--   let Lua see them)
-- @return srv | nil, err
function _M.start(opts)
  opts = opts or {}
  local ok, why = _M.available()
  if not ok then return nil, why end
  local prefix = io.popen("mktemp -d /tmp/gauth-nginx.XXXXXX"):read("*l")
  if not prefix or prefix == "" then return nil, "mktemp failed" end
  assert(os.execute("mkdir -p " .. sh_quote(prefix .. "/logs")))
  local port = opts.port or _M.free_port()
  local root = _M.root
  local lines = {}
  local function add(s) lines[#lines + 1] = s end
  for _, c in ipairs(MODULE_CONFS) do
    add("load_module " .. module_path(c) .. ";")
  end
  local uid = io.popen("id -u"):read("*l")
  if uid == "0" then
    -- Workers would run as nobody and could not read the temp prefix.
    add("user root;")
  end
  add("daemon on;")
  add("master_process on;")
  add("worker_processes " .. (opts.workers or 2) .. ";")
  add("pid " .. prefix .. "/nginx.pid;")
  add("error_log " .. prefix .. "/logs/error.log " .. (opts.log_level or "info") .. ";")
  for _, name in ipairs(opts.env or {}) do add("env " .. name .. ";") end
  add(opts.main or "")
  add("events { worker_connections 1024; " .. (opts.events or "") .. " }")
  add("http {")
  add("  access_log off;")
  add("  client_body_temp_path " .. prefix .. "/body;")
  add("  proxy_temp_path " .. prefix .. "/proxy;")
  add("  fastcgi_temp_path " .. prefix .. "/fastcgi;")
  add("  uwsgi_temp_path " .. prefix .. "/uwsgi;")
  add("  scgi_temp_path " .. prefix .. "/scgi;")
  -- No ";;": the default path would add Lua 5.4 trees.
  add(("  lua_package_path '%s%s/lua/?.lua;%s/lua/?/init.lua;%s/spec/?.lua;"
       .. "/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua';")
      :format(opts.package_path and (opts.package_path .. ";") or "", root, root, root))
  add(("  lua_package_cpath '%s%s/build/5.1/?.so;%s/?.so';"):format(
      opts.package_cpath and (opts.package_cpath .. ";") or "", root, lua51_cdir()))
  if opts.trusted_ca then
    add("  lua_ssl_trusted_certificate " .. opts.trusted_ca .. ";")
    add("  lua_ssl_verify_depth 3;")
  end
  add(opts.http or "")
  add("  server {")
  add("    listen 127.0.0.1:" .. port .. (opts.listen_opts and (" " .. opts.listen_opts) or "") .. ";")
  add(opts.server or "")
  add("  }")
  add("}")
  local conf = prefix .. "/nginx.conf"
  write_file(conf, table.concat(lines, "\n") .. "\n")

  return _M.start_file({ prefix = prefix, conf = conf, port = port, setenv = opts.setenv })
end

--- Start nginx from a configuration file of one's own (an example as
-- shipped, say), the same way: LUA_PATH/LUA_CPATH unset, a watchdog.
-- @tparam table opts `conf` (path), `prefix` (nginx's -p), `port` (where it
--   listens: start waits for it), `setenv` (as for `start`), `pid_file`
--   (default prefix/nginx.pid), `error_log` (default prefix/logs/error.log)
-- @return srv | nil, err
function _M.start_file(opts)
  local prefix, conf, port = opts.prefix, opts.conf, opts.port
  local pid_file = opts.pid_file or (prefix .. "/nginx.pid")
  local error_log = opts.error_log or (prefix .. "/logs/error.log")
  local setenv = {}
  for k, v in pairs(opts.setenv or {}) do setenv[#setenv + 1] = k .. "=" .. sh_quote(v) end
  table.sort(setenv)
  local cmd = "env -u LUA_PATH -u LUA_CPATH -u LUA_INIT -u LUA_PATH_5_4 "
    .. "-u LUA_CPATH_5_4 -u LUA_INIT_5_4 " .. table.concat(setenv, " ")
    .. " nginx -p " .. sh_quote(prefix)
    .. " -c " .. sh_quote(conf)
  local started, out = run(cmd)
  if not started then
    return nil, "nginx did not start: " .. out .. "\n" ..
                (read_file(error_log) or "")
  end
  local self = setmetatable({
    prefix = prefix, conf = conf, port = port,
    url = "http://127.0.0.1:" .. port,
    error_log = error_log,
  }, mt)
  -- daemon on: nginx has forked; the pid file is there once it listens.
  local deadline = socket.gettime() + 10
  while socket.gettime() < deadline do
    local pid = tonumber(read_file(pid_file) or "")
    if pid then
      self.pid = pid
      local c = socket.tcp()
      c:settimeout(0.2)
      if c:connect("127.0.0.1", port) then
        c:close()
        break
      end
      c:close()
    end
    socket.sleep(0.02)
  end
  if not self.pid then
    return nil, "nginx wrote no pid file: " .. (self:log() or "")
  end
  -- Watchdog: stop nginx if this test process dies without stop().
  local me = my_pid()
  if me then
    os.execute(("(while kill -0 %d 2>/dev/null && kill -0 %d 2>/dev/null; do sleep 1; done; "
      .. "kill -QUIT %d 2>/dev/null) >/dev/null 2>&1 </dev/null &"):format(me, self.pid, self.pid))
  end
  return self
end

--- The error log so far.
function _M:log()
  return read_file(self.error_log) or ""
end

--- The error log written after `mark` (a previous `#srv:log()`).
function _M:log_since(mark)
  return self:log():sub((mark or 0) + 1)
end

--- Count of occurrences of a plain string in the error log.
function _M:log_count(text, mark)
  local log, n, i = self:log_since(mark), 0, 1
  while true do
    local s, e = log:find(text, i, true)
    if not s then return n end
    n, i = n + 1, e + 1
  end
end

--- One HTTP/1.0 GET (or `method`) to the main server.
-- @return status, body, headers | nil, err
function _M:get(path, opts)
  opts = opts or {}
  local c = socket.tcp()
  c:settimeout(opts.timeout or 30)
  local ok, err = c:connect("127.0.0.1", opts.port or self.port)
  if not ok then return nil, err end
  local req = { (opts.method or "GET") .. " " .. path .. " HTTP/1.0\r\n",
                "Host: 127.0.0.1\r\n" }
  for k, v in pairs(opts.headers or {}) do req[#req + 1] = k .. ": " .. v .. "\r\n" end
  if opts.body then req[#req + 1] = "Content-Length: " .. #opts.body .. "\r\n" end
  req[#req + 1] = "\r\n"
  req[#req + 1] = opts.body or ""
  ok, err = c:send(table.concat(req))
  if not ok then c:close() return nil, err end
  local data, rerr, partial = c:receive("*a")
  c:close()
  data = data or partial
  if not data or data == "" then return nil, rerr or "empty reply" end
  local head, body = data:match("^(.-)\r\n\r\n(.*)$")
  if not head then return nil, "malformed reply" end
  local status = tonumber(head:match("^HTTP/%d%.%d (%d%d%d)"))
  local headers = {}
  for k, v in head:gmatch("\n([^:\r\n]+):%s*([^\r\n]*)") do headers[k:lower()] = v end
  return status, body, headers
end

--- `n` concurrent GETs of `path` (the curl CLI, all connections opened at
-- once). @return array of { status = , body = } in request order
function _M:parallel(path, n)
  local dir = io.popen("mktemp -d /tmp/gauth-par.XXXXXX"):read("*l")
  local args = { "curl -s --parallel --parallel-immediate --parallel-max " .. n,
                 "--max-time 60" }
  for i = 1, n do
    args[#args + 1] = sh_quote(self.url .. path) .. " -o " .. sh_quote(dir .. "/" .. i)
      .. " -w " .. sh_quote("%{http_code} %{filename_effective}\\n")
  end
  local p = io.popen(table.concat(args, " ") .. " 2>/dev/null")
  local codes = p:read("*a")
  p:close()
  local out = {}
  for j = 1, n do out[j] = { body = read_file(dir .. "/" .. j) } end
  -- -w prints in completion order: match by output file.
  for code, file in codes:gmatch("(%d+) ([^\n]+)\n") do
    local j = tonumber(file:match("(%d+)$"))
    if out[j] then out[j].status = tonumber(code) end
  end
  os.execute("rm -rf " .. sh_quote(dir))
  return out
end

--- Reload the configuration (new workers, shared dicts kept).
function _M:reload()
  return os.execute("kill -HUP " .. self.pid)
end

--- Stop nginx (graceful, then forced after 5 s) and remove its prefix
-- unless `keep` is true. Idempotent.
function _M:stop(keep)
  local pid = self.pid
  if pid then
    self.pid = nil
    local _, workers = run("pgrep -P " .. pid)
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    local deadline = socket.gettime() + 5
    while pid_alive(pid) and socket.gettime() < deadline do socket.sleep(0.02) end
    if pid_alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
    for w in (workers or ""):gmatch("%d+") do
      if pid_alive(tonumber(w)) then os.execute("kill -KILL " .. w .. " 2>/dev/null") end
    end
  end
  if not keep and self.prefix and os.getenv("GAUTH_KEEP_NGINX") == nil then
    os.execute("rm -rf " .. sh_quote(self.prefix))
    self.prefix = nil
  end
  return true
end

return _M
