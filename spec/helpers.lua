--- Test support for gauth's specs (busted; Lua 5.4 and LuaJIT).
--
-- Everything runs on loopback: a throwaway PKI made with the openssl CLI
-- (spec/support/mkcerts.sh), the fake Google server
-- (spec/support/fake_google.py, run with /usr/bin/python3), keys and
-- service-account files made with the openssl CLI, and PyJWT as an
-- independent judge of JWTs (spec/support/pyjwt_tool.py).
--
--   local helpers = require "helpers"
--   local fake
--   lazy_setup(function() fake = helpers.start_fake() end)
--   teardown(function() fake:stop() end)
--
-- State that must outlive busted's per-file insulation (temp dir, PKI,
-- running servers) lives in the Lua registry; everything left is stopped and
-- removed when the Lua state closes (busted exits with os.exit(code, true)).
-- The fake also exits by itself when this Lua process is gone.
--
-- Harness failures (cannot start the fake, control port unreachable, openssl
-- failing) raise with error(): they are bugs of the test, not results.
-- @module helpers

local cjson = require "cjson.safe"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local PYTHON = "/usr/bin/python3"
local START_TIMEOUT = 10
local CONTROL_TIMEOUT = 5

local helpers = {}

-- Shell and files ------------------------------------------------------------

local function q(s)
  return "'" .. tostring(s):gsub("'", "'\\''") .. "'"
end
helpers.shell_quote = q

--- Run a shell command; returns ok, output (stdout and stderr), exit code.
local function sh(cmd)
  local p = assert(io.popen("(" .. cmd .. ") 2>&1; echo \"__RC=$?\""))
  local out = p:read("*a")
  p:close()
  local rc = tonumber(out:match("__RC=(%d+)%s*$"))
  out = out:gsub("__RC=%d+%s*$", "")
  return rc == 0, out, rc
end
helpers.sh = sh

local function must(cmd, what)
  local ok, out = sh(cmd)
  if not ok then
    error(("helpers: %s failed: %s"):format(what or cmd, out), 2)
  end
  return out
end

function helpers.read_file(path)
  local f, err = io.open(path, "rb")
  if not f then return nil, err end
  local s = f:read("*a")
  f:close()
  return s
end

function helpers.write_file(path, data)
  local f = assert(io.open(path, "wb"))
  assert(f:write(data))
  f:close()
  return path
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() return true end
  return false
end

local function sleep(s) socket.sleep(s) end
helpers.sleep = sleep
helpers.now = socket.gettime

-- Base64 (for request and response bodies) ----------------------------------

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64INV = {}
for i = 1, 64 do B64INV[B64:byte(i)] = i - 1 end
B64INV[("-"):byte()] = 62
B64INV[("_"):byte()] = 63

function helpers.b64encode(s)
  local out = {}
  for i = 1, #s, 3 do
    local a, b, c = s:byte(i, i + 2)
    local n = a * 65536 + (b or 0) * 256 + (c or 0)
    local c1 = math.floor(n / 262144) % 64
    local c2 = math.floor(n / 4096) % 64
    local c3 = math.floor(n / 64) % 64
    local c4 = n % 64
    out[#out + 1] = B64:sub(c1 + 1, c1 + 1) .. B64:sub(c2 + 1, c2 + 1)
      .. (b and B64:sub(c3 + 1, c3 + 1) or "=")
      .. (c and B64:sub(c4 + 1, c4 + 1) or "=")
  end
  return table.concat(out)
end

--- Decode standard or URL-safe base64, padded or not.
function helpers.b64decode(s)
  s = s:gsub("[%s=]", "")
  local out, n, bits = {}, 0, 0
  for i = 1, #s do
    local v = B64INV[s:byte(i)]
    if not v then return nil, "invalid base64" end
    n = n * 64 + v
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      local p = 2 ^ bits
      out[#out + 1] = string.char(math.floor(n / p) % 256)
      n = n % p
    end
  end
  return table.concat(out)
end

local function urldecode(s)
  s = s:gsub("+", " ")
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

--- Parse an application/x-www-form-urlencoded string (first value wins).
function helpers.parse_form(s)
  local t = {}
  for pair in (s or ""):gmatch("[^&]+") do
    local k, v = pair:match("^([^=]*)=?(.*)$")
    k = urldecode(k)
    if t[k] == nil then t[k] = urldecode(v) end
  end
  return t
end

function helpers.urlencode(s)
  return (tostring(s):gsub("[^%w%-%._~]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

-- Per-run state in the registry ----------------------------------------------

local REG_KEY = "gauth.spec.helpers.state"
local reg = debug.getregistry()
local S = reg[REG_KEY]

local function lua_pid()
  local s = helpers.read_file("/proc/self/stat")
  return s and tonumber(s:match("^(%d+)"))
end

local function proc_gone(pid)
  local s = helpers.read_file("/proc/" .. pid .. "/stat")
  if not s then return true end
  local state = s:match("%)%s+(%a)")
  return state == "Z" or state == "X"
end

--- Is process `pid` running (neither gone nor a zombie)?
function helpers.process_alive(pid)
  return not proc_gone(pid)
end

local function kill_and_wait(pid, timeout)
  if proc_gone(pid) then return true end
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  local deadline = socket.gettime() + (timeout or 5)
  while socket.gettime() < deadline do
    if proc_gone(pid) then return true end
    sleep(0.02)
  end
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  deadline = socket.gettime() + 2
  while socket.gettime() < deadline do
    if proc_gone(pid) then return true end
    sleep(0.02)
  end
  return false
end

if not S then
  S = { servers = {}, seq = 0, pid = lua_pid() }
  reg[REG_KEY] = S
  local function cleanup()
    pcall(function()
      for srv in pairs(S.servers) do
        kill_and_wait(srv.pid, 3)
      end
      S.servers = {}
      if S.tmpdir and S.tmpdir:match("/gauth%-spec%.[%w]+$") then
        os.execute("rm -rf " .. q(S.tmpdir))
      end
    end)
  end
  -- Runs when the Lua state closes. LuaJIT has no __gc on tables.
  if newproxy then
    S.anchor = newproxy(true)
    getmetatable(S.anchor).__gc = cleanup
  else
    S.anchor = setmetatable({}, { __gc = cleanup })
  end
end

local function next_seq()
  S.seq = S.seq + 1
  return S.seq
end

-- Paths ----------------------------------------------------------------------

local function find_root()
  -- This file is <root>/spec/helpers.lua.
  local file = debug.getinfo(1, "S").source:gsub("^@", "")
  local dir = file:match("^(.*)/[^/]*$") or "."
  local ok, out = sh("cd " .. q(dir) .. "/.. && pwd -P")
  assert(ok, "helpers: cannot resolve the repository root: " .. out)
  return (out:gsub("%s+$", ""))
end

S.root = S.root or find_root()

--- Absolute path of the repository root.
helpers.root = S.root
helpers.support_dir = S.root .. "/spec/support"
helpers.python = PYTHON

--- The run's temporary directory (one per Lua process, removed at exit).
function helpers.tmpdir()
  if not S.tmpdir then
    local base = os.getenv("TMPDIR")
    if not base or base == "" then base = "/tmp" end
    local out = must("mktemp -d " .. q(base .. "/gauth-spec.XXXXXXXX"), "mktemp")
    S.tmpdir = out:gsub("%s+$", "")
  end
  return S.tmpdir
end

--- A fresh path inside tmpdir(): `<tmpdir>/<prefix>-<n><suffix>`.
function helpers.tmpname(prefix, suffix)
  return ("%s/%s-%d%s"):format(helpers.tmpdir(), prefix or "tmp", next_seq(),
    suffix or "")
end

--- Paths of the test PKI (made once per run by spec/support/mkcerts.sh):
-- `dir, ca_file, ca_key, server_cert, server_key, other_ca_file,
-- other_ca_key, other_server_cert, other_server_key, wronghost_cert,
-- wronghost_key, named_cert, named_key` (named: DNS:oauth2.gauth.test and
-- DNS:api.gauth.test, for names resolved by `start_dns`), `client_cert,
-- client_key` (clientAuth, signed by the CA), `other_client_cert,
-- other_client_key` (signed by the other CA).
function helpers.certs()
  if S.certs then return S.certs end
  local dir = helpers.tmpdir() .. "/pki"
  must(q(helpers.support_dir .. "/mkcerts.sh") .. " " .. q(dir), "mkcerts.sh")
  S.certs = {
    dir = dir,
    ca_file = dir .. "/ca.pem",
    ca_key = dir .. "/ca.key",
    server_cert = dir .. "/server.pem",
    server_key = dir .. "/server.key",
    other_ca_file = dir .. "/other-ca.pem",
    other_ca_key = dir .. "/other-ca.key",
    other_server_cert = dir .. "/other-server.pem",
    other_server_key = dir .. "/other-server.key",
    wronghost_cert = dir .. "/wronghost-server.pem",
    wronghost_key = dir .. "/wronghost-server.key",
    named_cert = dir .. "/named-server.pem",
    named_key = dir .. "/named-server.key",
    client_cert = dir .. "/client.pem",
    client_key = dir .. "/client.key",
    other_client_cert = dir .. "/other-client.pem",
    other_client_key = dir .. "/other-client.key",
  }
  return S.certs
end

--- The folder of the Discovery documents the specs use: the fixtures in
-- spec/fixtures/discovery/*.json.gz (see the README there), decompressed
-- with gzip once per run into tmpdir()/discovery. A clean clone has them.
function helpers.discovery_dir()
  if S.discovery_dir then return S.discovery_dir end
  local dir = helpers.tmpdir() .. "/discovery"
  local src = S.root .. "/spec/fixtures/discovery"
  must("mkdir -p " .. q(dir) .. " && for f in " .. q(src) .. "/*.json.gz; do"
    .. ' gzip -dc "$f" > ' .. q(dir) .. '/"$(basename "$f" .gz)" || exit 1; done',
    "decompressing the Discovery fixtures")
  S.discovery_dir = dir
  return dir
end

--- Names of the Discovery fixtures (`drive.v3.json`, ...), sorted.
function helpers.discovery_names()
  local names = {}
  for name in must("ls " .. q(S.root .. "/spec/fixtures/discovery"), "ls"):gmatch("[^\n]+") do
    names[#names + 1] = name:match("^(.+%.json)%.gz$")
  end
  table.sort(names)
  return names
end

--- Path of the Discovery fixture `<name>` (e.g. "drive.v3.json"); raises
-- when there is no such fixture (a bug of the spec, not a skip).
function helpers.discovery(name)
  local path = helpers.discovery_dir() .. "/" .. name
  if not exists(path) then
    error(("helpers: Discovery fixture %s not found in spec/fixtures/discovery"):format(name), 2)
  end
  return path
end

--- Text and path of the Discovery fixture `<name>` (raises when absent).
function helpers.discovery_doc(name)
  local path = helpers.discovery(name)
  return assert(helpers.read_file(path)), path
end

-- Former names (they read a folder outside the repository), kept for
-- specs written against them.
helpers.shared_discovery = helpers.discovery
helpers.shared_discovery_doc = helpers.discovery_doc

-- The fake Google server -----------------------------------------------------

local Server = {}
Server.__index = Server

local function tail(path, n)
  local s = helpers.read_file(path) or ""
  if #s > (n or 2000) then s = "..." .. s:sub(-(n or 2000)) end
  return s
end

--- Start spec/support/fake_google.py. opts:
--   tls (default true), host ("127.0.0.1" or "::1"), port (default 0: free),
--   untrusted (serve other-server.pem, signed by the unrelated CA),
--   wronghost (serve a cert for wrong.example signed by the test CA),
--   cert_file/key_file (any other pair), client_ca (require a client
--   certificate signed by this CA file: mutual TLS; records then carry
--   client_subject), config (table sent to :config()),
--   start_timeout (seconds, default 10).
function helpers.start_fake(opts)
  opts = opts or {}
  local tls = opts.tls ~= false
  local host = opts.host or "127.0.0.1"
  local n = next_seq()
  local base = helpers.tmpdir() .. "/fake-" .. n
  local ready, log = base .. ".ready", base .. ".log"
  local args = {
    PYTHON, helpers.support_dir .. "/fake_google.py",
    "--host", host, "--port", tostring(opts.port or 0),
    "--control-port", "0", "--ready-file", ready,
    "--signing-key", helpers.tmpdir() .. "/fake-signing-key.pem",
  }
  if S.pid then
    args[#args + 1] = "--parent-pid"
    args[#args + 1] = tostring(S.pid)
  end
  local certs
  if tls then
    certs = helpers.certs()
    local cert, key = certs.server_cert, certs.server_key
    if opts.untrusted then
      cert, key = certs.other_server_cert, certs.other_server_key
    elseif opts.wronghost then
      cert, key = certs.wronghost_cert, certs.wronghost_key
    end
    cert, key = opts.cert_file or cert, opts.key_file or key
    for _, a in ipairs({ "--cert", cert, "--key", key }) do args[#args + 1] = a end
    if opts.client_ca then
      args[#args + 1] = "--client-ca"
      args[#args + 1] = opts.client_ca
    end
  end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = q(a) end
  local ok, out = sh(table.concat(quoted, " ") .. " >" .. q(log)
    .. " 2>&1 </dev/null & echo \"PID=$!\"")
  local pid = ok and tonumber(out:match("PID=(%d+)"))
  if not pid then error("helpers.start_fake: cannot spawn: " .. out, 2) end

  local info
  local deadline = socket.gettime() + (opts.start_timeout or START_TIMEOUT)
  while true do
    local s = helpers.read_file(ready)
    if s then
      info = cjson.decode(s)
      if info then break end
    end
    if proc_gone(pid) then
      error("helpers.start_fake: fake_google.py exited at start:\n"
        .. tail(log), 2)
    end
    if socket.gettime() > deadline then
      kill_and_wait(pid, 2)
      error(("helpers.start_fake: fake_google.py not ready after %ds:\n%s")
        :format(opts.start_timeout or START_TIMEOUT, tail(log)), 2)
    end
    sleep(0.02)
  end

  -- cjson gives floats on Lua 5.4; ports must print as integers.
  info.port = math.floor(info.port)
  info.control_port = math.floor(info.control_port)
  local h = host:find(":", 1, true) and "[" .. host .. "]" or host
  local srv = setmetatable({
    pid = pid,
    port = info.port,
    control_port = info.control_port,
    host = host,
    host_port = h .. ":" .. info.port,
    tls = tls,
    url = (tls and "https://" or "http://") .. h .. ":" .. info.port,
    control_url = "http://127.0.0.1:" .. info.control_port,
    ca_file = certs and certs.ca_file or nil,
    log_file = log,
  }, Server)
  srv.token_uri = srv.url .. "/token"
  srv.metadata_url = srv.url .. "/computeMetadata/v1/"
  S.servers[srv] = true
  if opts.config then srv:config(opts.config) end
  return srv
end

--- One control call; raises on transport errors and non-2xx answers.
function Server:control(method, path, body)
  if self.stopped then error("helpers: fake server already stopped", 2) end
  local payload = body ~= nil and assert(cjson.encode(body)) or nil
  local chunks = {}
  local old = http.TIMEOUT
  http.TIMEOUT = CONTROL_TIMEOUT
  local ok, code = http.request({
    url = self.control_url .. path,
    method = method,
    headers = payload and {
      ["content-type"] = "application/json",
      ["content-length"] = tostring(#payload),
    } or nil,
    source = payload and ltn12.source.string(payload) or nil,
    sink = ltn12.sink.table(chunks),
  })
  http.TIMEOUT = old
  local text = table.concat(chunks)
  if not ok then
    error(("helpers: control %s %s: %s\n%s"):format(method, path,
      tostring(code), tail(self.log_file)), 2)
  end
  if code < 200 or code > 299 then
    error(("helpers: control %s %s: HTTP %s: %s"):format(method, path,
      tostring(code), text), 2)
  end
  local v, err = cjson.decode(text)
  if v == nil then
    error(("helpers: control %s %s: bad JSON (%s): %s"):format(method, path,
      tostring(err), text), 2)
  end
  return v
end

--- Merge settings (see fake_google.py); returns the resulting config.
function Server:config(t)
  return self:control("POST", "/config", t or {})
end

--- Current config, plus token_uri (list), server_kid, server_public_pem,
-- server_cert_pem (the fake's own signing key) and base_url.
function Server:get_config()
  return self:control("GET", "/config")
end

local function script_entry(r)
  local e = {}
  for k, v in pairs(r) do e[k] = v end
  if type(e.body) == "table" then
    e.json, e.body = e.body, nil
  elseif type(e.body) == "string" then
    e.body_b64, e.body = helpers.b64encode(e.body), nil
  end
  return e
end

--- Queue responses for `path` (exact, query ignored); each is
-- `{status=, headers=, body=, delay=, hang=, drop=, truncate=}`; `body` may
-- be a string (sent byte for byte) or a table (sent as JSON). An entry
-- without status (and not hang/drop) lets the default handler answer,
-- after `delay`. opts.replace drops what was queued before.
function Server:script(path, responses, opts)
  if responses.status or responses.hang or responses.drop or responses.delay
    or responses.truncate then
    responses = { responses }
  end
  local list = {}
  for i, r in ipairs(responses) do list[i] = script_entry(r) end
  if #list == 0 and not (opts and opts.replace) then return end
  return self:control("POST", "/script", {
    path = path, responses = list, replace = opts and opts.replace or nil,
  })
end

--- Scripted responses not consumed yet: { [path] = { entry, ... } }.
function Server:pending_scripts()
  return self:control("GET", "/script")
end

local function decorate(r)
  r.conn = math.floor(r.conn)
  r.body = helpers.b64decode(r.body_b64 or "") or r.body
  r.query_params = helpers.parse_form(r.query)
  local ctype = (r.headers["content-type"] or ""):lower()
  if ctype:find("application/x-www-form-urlencoded", 1, true) then
    r.form = helpers.parse_form(r.body)
  elseif ctype:find("json", 1, true) then
    r.json = cjson.decode(r.body)
  end
  return r
end

--- Requests the main port received, oldest first, each
-- `{method, path, query, query_params, headers, body, body_b64, form, json,
-- time, conn}`. filter: nil (all), a string (exact path), a function
-- (predicate) or a table `{ method=, path=, pattern= }`.
function Server:requests(filter)
  local all = self:control("GET", "/requests")
  local out = {}
  for _, r in ipairs(all) do
    decorate(r)
    local keep = true
    if type(filter) == "string" then
      keep = r.path == filter
    elseif type(filter) == "function" then
      keep = filter(r) and true or false
    elseif type(filter) == "table" then
      keep = (not filter.method or r.method == filter.method)
        and (not filter.path or r.path == filter.path)
        and (not filter.pattern or r.path:find(filter.pattern) ~= nil)
    end
    if keep then out[#out + 1] = r end
  end
  return out
end

--- Poll until at least `n` requests match `filter`; returns them, or raises
-- after `timeout` seconds (default 5).
function Server:wait_requests(filter, n, timeout)
  local deadline = socket.gettime() + (timeout or 5)
  while true do
    local rs = self:requests(filter)
    if #rs >= (n or 1) then return rs end
    if socket.gettime() > deadline then
      error(("helpers: %d request(s) expected, %d seen"):format(n or 1, #rs), 2)
    end
    sleep(0.02)
  end
end

--- Tokens the fake issued: { [token] = { kind=, scope=, iss=, email=, ... } }.
function Server:tokens()
  return self:control("GET", "/tokens")
end

--- Back to defaults: config, scripts, records, issued tokens, counter.
function Server:reset()
  return self:control("POST", "/reset")
end

--- The fake's stderr so far.
function Server:log()
  return helpers.read_file(self.log_file) or ""
end

--- Stop the fake (SIGTERM, then SIGKILL) and wait until it is gone.
-- Idempotent.
function Server:stop()
  if self.stopped then return true end
  self.stopped = true
  S.servers[self] = nil
  return kill_and_wait(self.pid, 5)
end

helpers.Server = Server

-- A raw listener: what a client really put on the wire ------------------------

local Listener = {}
Listener.__index = Listener

--- Start spec/support/raw_listener.py on `opts.host` (default 127.0.0.1; any
-- loopback address, "::1" included): a socket that records each request's
-- head byte for byte (no HTTP library in between to normalise the path)
-- and answers 200 "ok". `l.url` is "http://host:port"; `l:heads()` the
-- request heads received so far (request line and header lines, "\r\n"
-- separated), in order; `l:request_lines()` their first lines; `l:stop()`.
function helpers.start_raw_listener(opts)
  opts = opts or {}
  local host = opts.host or "127.0.0.1"
  local base = helpers.tmpdir() .. "/raw-" .. next_seq()
  local ready, log, err = base .. ".ready", base .. ".jsonl", base .. ".err"
  local cmd = ("%s %s --host %s --ready-file %s --log-file %s%s >%s 2>&1 </dev/null & echo \"PID=$!\"")
    :format(q(PYTHON), q(helpers.support_dir .. "/raw_listener.py"), q(host), q(ready), q(log),
            S.pid and (" --parent-pid " .. S.pid) or "", q(err))
  local ok, out = sh(cmd)
  local pid = ok and tonumber(out:match("PID=(%d+)"))
  if not pid then error("helpers.start_raw_listener: cannot spawn: " .. out, 2) end
  local info
  local deadline = socket.gettime() + START_TIMEOUT
  while true do
    local s = helpers.read_file(ready)
    info = s and cjson.decode(s)
    if info then break end
    if proc_gone(pid) then
      error("helpers.start_raw_listener: exited at start:\n" .. tail(err), 2)
    end
    if socket.gettime() > deadline then
      kill_and_wait(pid, 2)
      error("helpers.start_raw_listener: not ready:\n" .. tail(err), 2)
    end
    sleep(0.02)
  end
  local port = math.floor(info.port)
  local h = host:find(":", 1, true) and "[" .. host .. "]" or host
  local l = setmetatable({ pid = pid, port = port, host = host, log_file = log,
                           host_port = h .. ":" .. port,
                           url = "http://" .. h .. ":" .. port }, Listener)
  S.servers[l] = true
  return l
end

function Listener:heads()
  local out = {}
  for line in (helpers.read_file(self.log_file) or ""):gmatch("[^\n]+") do
    out[#out + 1] = assert(cjson.decode(line)).head
  end
  return out
end

function Listener:request_lines()
  local out = {}
  for i, head in ipairs(self:heads()) do out[i] = head:match("^[^\r\n]*") end
  return out
end

function Listener:stop()
  if self.stopped then return true end
  self.stopped = true
  S.servers[self] = nil
  return kill_and_wait(self.pid, 5)
end

-- A tiny DNS server, for nginx's `resolver` ---------------------------------------

local Dns = {}
Dns.__index = Dns

--- Start spec/support/tiny_dns.py on 127.0.0.1 (UDP, a free port): A
-- records for `names` (a table name -> IPv4 loopback address), NXDOMAIN for
-- any other name. `d.port`, `d.address` ("127.0.0.1:port", for nginx's
-- `resolver`), `d:queries()` (what it was asked, oldest first: `{ name,
-- qtype, rcode }`), `d:stop()`.
function helpers.start_dns(names)
  local base = helpers.tmpdir() .. "/dns-" .. next_seq()
  local ready, log, err = base .. ".ready", base .. ".jsonl", base .. ".err"
  local args = {}
  for name, addr in pairs(names) do
    assert(addr:match("^127%.%d+%.%d+%.%d+$"), "helpers.start_dns: loopback addresses only")
    args[#args + 1] = "--name " .. q(name .. "=" .. addr)
  end
  local cmd = ("%s %s %s --ready-file %s --log-file %s%s >%s 2>&1 </dev/null & echo \"PID=$!\"")
    :format(q(PYTHON), q(helpers.support_dir .. "/tiny_dns.py"), table.concat(args, " "),
            q(ready), q(log), S.pid and (" --parent-pid " .. S.pid) or "", q(err))
  local ok, out = sh(cmd)
  local pid = ok and tonumber(out:match("PID=(%d+)"))
  if not pid then error("helpers.start_dns: cannot spawn: " .. out, 2) end
  local info
  local deadline = socket.gettime() + START_TIMEOUT
  while true do
    local s = helpers.read_file(ready)
    info = s and cjson.decode(s)
    if info then break end
    if proc_gone(pid) then error("helpers.start_dns: exited at start:\n" .. tail(err), 2) end
    if socket.gettime() > deadline then
      kill_and_wait(pid, 2)
      error("helpers.start_dns: not ready:\n" .. tail(err), 2)
    end
    sleep(0.02)
  end
  local port = math.floor(info.port)
  local d = setmetatable({ pid = pid, port = port, address = "127.0.0.1:" .. port,
                           log_file = log }, Dns)
  S.servers[d] = true
  return d
end

function Dns:queries()
  local out = {}
  for line in (helpers.read_file(self.log_file) or ""):gmatch("[^\n]+") do
    local r = assert(cjson.decode(line))
    r.qtype, r.rcode = math.floor(r.qtype), math.floor(r.rcode)
    out[#out + 1] = r
  end
  return out
end

Dns.stop = Listener.stop

-- Keys and credential files ---------------------------------------------------

local function make_key(kind, opts)
  opts = opts or {}
  local path = helpers.tmpname(kind .. "-key", ".pem")
  local gen
  if kind == "rsa" then
    gen = "openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:"
      .. tostring(opts.bits or 2048)
  else
    gen = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:"
      .. (opts.curve or "P-256")
  end
  must(gen .. " -out " .. q(path), "openssl genpkey")
  local fmt = opts.format or "pkcs8"
  if fmt == "pkcs1" or fmt == "sec1" or fmt == "traditional" then
    must("openssl pkey -traditional -in " .. q(path) .. " -out " .. q(path .. ".t")
      .. " && mv " .. q(path .. ".t") .. " " .. q(path), "openssl pkey")
  end
  local pub = path:gsub("%.pem$", ".pub.pem")
  must("openssl pkey -in " .. q(path) .. " -pubout -out " .. q(pub),
    "openssl pkey -pubout")
  local k = {
    type = kind,
    alg = kind == "rsa" and "RS256" or "ES256",
    path = path,
    public_path = pub,
    private_pem = assert(helpers.read_file(path)),
    public_pem = assert(helpers.read_file(pub)),
  }
  if opts.cert then
    local cert = path:gsub("%.pem$", ".crt.pem")
    must("openssl req -x509 -new -key " .. q(path) .. " -subj '/CN=gauth test key'"
      .. " -days 30 -out " .. q(cert), "openssl req -x509")
    k.cert_path = cert
    k.cert_pem = assert(helpers.read_file(cert))
  end
  return k
end

--- A new RSA key. opts: bits (2048), format ("pkcs8" | "pkcs1"),
-- cert (also make a self-signed certificate).
-- Returns { type="rsa", alg="RS256", path, public_path, private_pem,
-- public_pem [, cert_path, cert_pem] }.
function helpers.make_rsa_key(opts) return make_key("rsa", opts) end

--- A new EC key (P-256 unless opts.curve). opts: format ("pkcs8" | "sec1"),
-- cert. Same fields as make_rsa_key, type="ec", alg="ES256".
function helpers.make_ec_key(opts) return make_key("ec", opts) end

local function random_hex(n)
  return (must("openssl rand -hex " .. math.ceil(n / 2), "openssl rand")
    :gsub("%s+", "")):sub(1, n)
end

local function random_digits(n)
  local hex = random_hex(n)
  return (hex:gsub("%x", function(c) return tostring(tonumber(c, 16) % 10) end))
    :gsub("^0", "1")
end

local function json_ordered(t, order)
  local lines, seen = {}, {}
  local function add(k, v)
    local ek = assert(cjson.encode(k))
    local ev = assert(cjson.encode(v))
    lines[#lines + 1] = "  " .. ek .. ": " .. ev:gsub("\\/", "/")
  end
  for _, k in ipairs(order) do
    if t[k] ~= nil then add(k, t[k]); seen[k] = true end
  end
  local rest = {}
  for k in pairs(t) do if not seen[k] then rest[#rest + 1] = k end end
  table.sort(rest)
  for _, k in ipairs(rest) do add(k, t[k]) end
  return "{\n" .. table.concat(lines, ",\n") .. "\n}\n"
end

local SA_ORDER = {
  "type", "project_id", "private_key_id", "private_key", "client_email",
  "client_id", "auth_uri", "token_uri", "auth_provider_x509_cert_url",
  "client_x509_cert_url", "universe_domain",
}

--- Write a service-account JSON key file shaped like Google's.
-- opts: key (from make_rsa_key/make_ec_key; default a new RSA key),
-- token_uri (default "https://oauth2.googleapis.com/token"; pass
-- fake.token_uri), client_email, project_id, private_key_id, client_id,
-- universe_domain, path, extra (fields to add/override), omit (list of
-- fields to leave out).
-- Returns path, info where info = { path, kid, private_key_id, public_pem,
-- private_pem, client_email, client_id, project_id, token_uri, key, data }.
function helpers.make_service_account_file(opts)
  opts = opts or {}
  local key = opts.key or helpers.make_rsa_key()
  local project = opts.project_id or "gauth-test-project"
  local email = opts.client_email
    or ("gauth-test-%d@%s.iam.gserviceaccount.com"):format(next_seq(), project)
  local kid = opts.private_key_id or random_hex(40)
  local data = {
    type = "service_account",
    project_id = project,
    private_key_id = kid,
    private_key = key.private_pem,
    client_email = email,
    client_id = opts.client_id or random_digits(21),
    auth_uri = "https://accounts.google.com/o/oauth2/auth",
    token_uri = opts.token_uri or "https://oauth2.googleapis.com/token",
    auth_provider_x509_cert_url = "https://www.googleapis.com/oauth2/v1/certs",
    client_x509_cert_url = "https://www.googleapis.com/robot/v1/metadata/x509/"
      .. helpers.urlencode(email),
    universe_domain = opts.universe_domain or "googleapis.com",
  }
  for k, v in pairs(opts.extra or {}) do data[k] = v end
  for _, k in ipairs(opts.omit or {}) do data[k] = nil end
  local path = opts.path or helpers.tmpname("service-account", ".json")
  helpers.write_file(path, json_ordered(data, SA_ORDER))
  return path, {
    path = path, kid = kid, private_key_id = kid,
    public_pem = key.public_pem, private_pem = key.private_pem,
    client_email = email, client_id = data.client_id, project_id = project,
    token_uri = data.token_uri, key = key, data = data,
  }
end

--- The OAuth client and refresh token of make_authorized_user_file's
-- default file: `client_id, client_secret, refresh_token`.
helpers.USER = {
  client_id = "gauth-test-client.apps.googleusercontent.com",
  client_secret = "gauth-test-secret",
  refresh_token = "1//gauth-test-refresh-token",
}

--- The fake's `refresh_tokens` setting that accepts helpers.USER's refresh
-- token from its client.
function helpers.user_refresh_tokens()
  local u = helpers.USER
  return { [u.refresh_token] = { client_id = u.client_id, client_secret = u.client_secret } }
end

--- Write an authorized_user JSON file (as `gcloud auth application-default
-- login` does). opts: client_id, client_secret, refresh_token (default
-- helpers.USER's), quota_project_id, extra, omit, path. Returns path, data.
function helpers.make_authorized_user_file(opts)
  opts = opts or {}
  local data = {
    type = "authorized_user",
    client_id = opts.client_id or helpers.USER.client_id,
    client_secret = opts.client_secret or helpers.USER.client_secret,
    refresh_token = opts.refresh_token or helpers.USER.refresh_token,
    quota_project_id = opts.quota_project_id,
    universe_domain = "googleapis.com",
  }
  for k, v in pairs(opts.extra or {}) do data[k] = v end
  for _, k in ipairs(opts.omit or {}) do data[k] = nil end
  local path = opts.path or helpers.tmpname("authorized-user", ".json")
  helpers.write_file(path, json_ordered(data, {
    "client_id", "client_secret", "quota_project_id", "refresh_token", "type",
    "universe_domain" }))
  return path, data
end

-- PyJWT, the independent judge -------------------------------------------------

local function pyjwt(cmd, input)
  local path = helpers.tmpname("pyjwt", ".json")
  helpers.write_file(path, assert(cjson.encode(input)))
  local ok, out = sh(q(PYTHON) .. " " .. q(helpers.support_dir .. "/pyjwt_tool.py")
    .. " " .. cmd .. " " .. q(path))
  os.remove(path)
  local res = ok and cjson.decode(out)
  if type(res) ~= "table" then
    error("helpers: pyjwt_tool.py " .. cmd .. " failed: " .. out, 3)
  end
  return res
end

--- Verify a JWT with PyJWT. public_pem: PEM public key, certificate or
-- private key. opts: audience (checked when given; else aud is not checked),
-- issuer, algorithms (default {"RS256","ES256"}), leeway (0),
-- verify_exp (true), require (list of claims that must be present).
-- Returns claims, header | nil, "<PyJWT exception>: <message>".
function helpers.pyjwt_verify(token, public_pem, opts)
  opts = opts or {}
  local res = pyjwt("verify", {
    token = token, key = public_pem, audience = opts.audience,
    issuer = opts.issuer, algorithms = opts.algorithms,
    leeway = opts.leeway, verify_exp = opts.verify_exp,
    require = opts.require,
  })
  if not res.ok then return nil, res.error end
  return res.claims, res.header
end

--- Sign claims into a JWT with PyJWT. opts: alg (default from the key: RS256
-- or ES256), kid, headers (extra header fields). Returns the token.
function helpers.pyjwt_encode(claims, private_pem, opts)
  opts = opts or {}
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  if opts.kid then headers.kid = opts.kid end
  local res = pyjwt("encode", {
    claims = claims, key = private_pem, alg = opts.alg,
    headers = next(headers) and headers or nil,
  })
  if not res.ok then error("helpers.pyjwt_encode: " .. res.error, 2) end
  return res.token
end

--- Decode a JWT without verifying it (for looking at what gauth sent).
-- Returns header, claims, signature (raw bytes) | nil, err.
function helpers.jwt_parts(token)
  local h, c, s = tostring(token):match("^([%w_-]+)%.([%w_-]+)%.([%w_-]*)$")
  if not h then return nil, "not a compact JWS" end
  local header = cjson.decode(helpers.b64decode(h) or "")
  local claims = cjson.decode(helpers.b64decode(c) or "")
  if type(header) ~= "table" or type(claims) ~= "table" then
    return nil, "undecodable JWT"
  end
  return header, claims, helpers.b64decode(s)
end

-- The curl CLI, an independent HTTP client -------------------------------------

--- One HTTP request with the curl CLI (HTTP/1.1, no proxy). opts: url,
-- method, headers (table name -> value), body (string), ca_file, timeout
-- (seconds, default 10), connect_timeout, extra (list of further curl args).
-- Returns { status, headers (lower-case names; last response), body,
-- curl_exit = 0 } | nil, "curl: (<code>) <message>", curl_exit.
function helpers.curl(opts)
  local hdr = helpers.tmpname("curl-h")
  local out = helpers.tmpname("curl-b")
  local cmd = { "curl", "-sS", "--http1.1", "--noproxy", q("*"),
    "-X", q(opts.method or "GET"), "-D", q(hdr), "-o", q(out),
    "--max-time", tostring(opts.timeout or 10) }
  if opts.connect_timeout then
    cmd[#cmd + 1] = "--connect-timeout " .. tostring(opts.connect_timeout)
  end
  if opts.ca_file then cmd[#cmd + 1] = "--cacert " .. q(opts.ca_file) end
  for k, v in pairs(opts.headers or {}) do
    cmd[#cmd + 1] = "-H " .. q(k .. ": " .. v)
  end
  local bodyfile
  if opts.body then
    bodyfile = helpers.tmpname("curl-in")
    helpers.write_file(bodyfile, opts.body)
    cmd[#cmd + 1] = "--data-binary @" .. q(bodyfile)
  end
  for _, a in ipairs(opts.extra or {}) do cmd[#cmd + 1] = q(a) end
  cmd[#cmd + 1] = q(opts.url)
  local ok, msg, rc = sh(table.concat(cmd, " "))
  local raw = helpers.read_file(hdr) or ""
  local body = helpers.read_file(out) or ""
  os.remove(hdr); os.remove(out)
  if bodyfile then os.remove(bodyfile) end
  if not ok then
    return nil, (msg:gsub("%s+$", "")), rc
  end
  -- The last header block (after 100 Continue and the like) is the answer.
  local last
  for block in (raw .. "\r\n\r\n"):gmatch("(HTTP/[^\r\n]*\r\n.-)\r\n\r\n") do
    last = block
  end
  local res = { headers = {}, body = body, curl_exit = 0 }
  if last then
    res.status = tonumber(last:match("^HTTP/%S+%s+(%d+)"))
    for name, value in last:gmatch("\r\n([^:\r\n]+):[ \t]*([^\r\n]*)") do
      name = name:lower()
      if res.headers[name] then
        res.headers[name] = res.headers[name] .. ", " .. value
      else
        res.headers[name] = value
      end
    end
  end
  return res
end

-- What the credentials and transport specs each set up ------------------------

--- A loopback port with nothing listening on it (bound, then closed):
-- connecting to it is refused at once.
function helpers.closed_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return port
end

--- A retry policy for specs: retries in milliseconds, no jitter, and each
-- delay handed to `record` (or dropped) rather than slept. `extra`'s
-- fields go over it.
function helpers.fast_retry(extra, record)
  local p = { initial = 0.001, max_delay = 0.01, jitter = false,
              sleep = record or function() end }
  for k, v in pairs(extra or {}) do p[k] = v end
  return p
end

--- A fast_retry (above) whose sleeps are appended to a list: returns the
-- list and a function(extra) that makes such policies. Empty the list with
-- helpers.clear(list) before each test.
function helpers.recorded_retry()
  local sleeps = {}
  local function fast_retry(extra)
    return helpers.fast_retry(extra, function(d) sleeps[#sleeps + 1] = d end)
  end
  return sleeps, fast_retry
end

--- Empty a table in place (for lists that closures hold on to).
function helpers.clear(t)
  for k in pairs(t) do t[k] = nil end
  return t
end

--- Assert that err is a gauth error (gauth.errors.is) and, when given, that
-- it comes from `module` at `step`.
function helpers.assert_gauth_error(err, module, step)
  local check = require "luassert"  -- busted's `assert` is not global here
  check.truthy(require("gauth.errors").is(err), "not a gauth error: " .. tostring(err))
  if module then check.equal(module, err.module) end
  if step then check.equal(step, err.step) end
end

--- Assert gauth's public failure shape, `nil, msg, err`, past the nil:
-- `msg` is the string "gauth.<module>: <step>: <detail>" that
-- `tostring(err)` gives, `err` a gauth error object (of `module` at
-- `step` when given). Returns `err`, for its fields.
function helpers.assert_failure(msg, err, module, step)
  local check = require "luassert"
  check.is_string(msg, "the message is not a string: " .. tostring(msg))
  check.truthy(require("gauth.errors").is(err), "not a gauth error: " .. tostring(err))
  check.equal(tostring(err), msg)
  local prefix = "gauth." .. tostring(err.module) .. ": " .. tostring(err.step) .. ": "
  check.equal(prefix, msg:sub(1, #prefix))
  if module then check.equal(module, err.module) end
  if step then check.equal(step, err.step) end
  return err
end

--- A transport for `gauth.http.set_default` that sends what goes to a
-- loopback host and fails the spec on anything else, so that a request
-- meant for the fake never leaves the machine.
function helpers.loopback_guard()
  local url_lib = require "gauth.lib.url"
  local real = assert(require("gauth.http").new())
  return {
    request = function(_, req)
      local _, host = url_lib.parse(req.url)
      if not host or not url_lib.is_loopback_host(host) then
        error("spec sent a request off loopback: " .. tostring(req.url))
      end
      return real:request(req)
    end,
    close = function() return real:close() end,
  }
end

--- Put loopback_guard() behind gauth.http's default transport (in a
-- lazy_setup; undo with remove_loopback_guard in the lazy_teardown): every
-- request of the file that goes through the default transport is checked,
-- and one to anything but loopback fails the spec instead of leaving the
-- machine.
function helpers.install_loopback_guard()
  require("gauth.http").set_default(helpers.loopback_guard())
end

function helpers.remove_loopback_guard()
  require("gauth.http").set_default(nil)
end

--- Decode JSON (cjson.safe): value | nil, err.
helpers.json_decode = cjson.decode
helpers.json_encode = cjson.encode

return helpers
