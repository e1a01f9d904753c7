--- Starts and drives spec/support/fake_upload.py (Google's media upload,
-- download and batch endpoints, on loopback) for the media and batch specs.
--
--   local fake_upload = require "support.fake_upload"
--   local srv = fake_upload.start{ tls = true }
--   srv:inject{ { on = "chunk", skip = 1, drop_after = 100000 } }
--   ... srv:requests{ kind = "chunk" } ... srv:object(id) ...
--   local http = srv:transport()   -- libcurl, trusting the fake's CA
--   srv:stop()                     -- closes that transport too
--
-- The fake exits by itself when this Lua process is gone (--parent-pid).
-- Harness failures raise.

local helpers = require "helpers"
local cjson = require "cjson.safe"
local socket = require "socket"
local http = require "socket.http"
local ltn12 = require "ltn12"

local q = helpers.shell_quote

local M = {}

local Server = {}
Server.__index = Server

local function lua_pid()
  local s = helpers.read_file("/proc/self/stat")
  return s and tonumber(s:match("^(%d+)"))
end

--- Start the fake. opts: tls (default true), host, data_dir.
function M.start(opts)
  opts = opts or {}
  local tls = opts.tls ~= false
  local base = helpers.tmpname("fake-upload")
  local ready, log = base .. ".ready", base .. ".log"
  local args = { helpers.python, helpers.support_dir .. "/fake_upload.py",
                 "--host", opts.host or "127.0.0.1", "--ready-file", ready,
                 "--data-dir", opts.data_dir or (base .. ".data") }
  local pid = lua_pid()
  if pid then
    args[#args + 1] = "--parent-pid"; args[#args + 1] = tostring(pid)
  end
  local certs
  if tls then
    certs = helpers.certs()
    for _, a in ipairs({ "--cert", certs.server_cert, "--key", certs.server_key }) do
      args[#args + 1] = a
    end
  end
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = q(a) end
  local ok, out = helpers.sh(table.concat(quoted, " ") .. " >" .. q(log)
    .. " 2>&1 </dev/null & echo \"PID=$!\"")
  local spid = ok and tonumber(out:match("PID=(%d+)"))
  if not spid then error("fake_upload: cannot spawn: " .. out, 2) end
  local info
  local deadline = socket.gettime() + 10
  while true do
    local s = helpers.read_file(ready)
    info = s and cjson.decode(s)
    if info then break end
    if not helpers.process_alive(spid) then
      error("fake_upload.py exited at start:\n" .. (helpers.read_file(log) or ""), 2)
    end
    if socket.gettime() > deadline then
      error("fake_upload.py not ready after 10 s:\n" .. (helpers.read_file(log) or ""), 2)
    end
    socket.sleep(0.02)
  end
  local port = math.floor(info.port)
  return setmetatable({
    pid = spid, port = port, tls = tls, url = info.url,
    control_url = "http://127.0.0.1:" .. math.floor(info.control_port),
    ca_file = certs and certs.ca_file or nil, log_file = log,
  }, Server)
end

--- One control call (JSON both ways); raises on failure.
function Server:control(method, path, body)
  local payload = body ~= nil and assert(cjson.encode(body)) or nil
  local chunks = {}
  local ok, code = http.request({
    url = self.control_url .. path, method = method,
    headers = payload and { ["content-type"] = "application/json",
                            ["content-length"] = tostring(#payload) } or nil,
    source = payload and ltn12.source.string(payload) or nil,
    sink = ltn12.sink.table(chunks),
  })
  local text = table.concat(chunks)
  if not ok or code ~= 200 then
    error(("fake_upload control %s %s: %s %s\n%s"):format(method, path,
      tostring(code), text, helpers.read_file(self.log_file) or ""), 2)
  end
  return assert(cjson.decode(text))
end

function Server:config(t) return self:control("POST", "/config", t) end
function Server:inject(rules) return self:control("POST", "/inject", { rules = rules }) end
function Server:reset() return self:control("POST", "/reset") end
function Server:objects() return self:control("GET", "/objects") end
function Server:object(id) return self:control("GET", "/objects/" .. helpers.urlencode(id)) end

--- Register an object to download: { id=, path= | data=, mimeType=, name= }.
function Server:put_object(o)
  local body = { id = o.id, name = o.name, mimeType = o.mimeType, path = o.path }
  if o.data then body.data_b64 = helpers.b64encode(o.data) end
  return self:control("POST", "/objects", body)
end

--- Recorded requests, optionally filtered: { kind=, method=, path= } or a
-- function. Bodies are decoded into `body` when recorded.
function Server:requests(filter)
  local all = self:control("GET", "/requests")
  local out = {}
  for _, r in ipairs(all) do
    r.conn = math.floor(r.conn)
    r.body_len = math.floor(r.body_len)
    if r.body_b64 then r.body = helpers.b64decode(r.body_b64) end
    local keep = true
    if type(filter) == "table" then
      for k, v in pairs(filter) do
        if r[k] ~= v then keep = false end
      end
    elseif type(filter) == "function" then
      keep = filter(r) and true or false
    end
    if keep then out[#out + 1] = r end
  end
  return out
end

function Server:log() return helpers.read_file(self.log_file) or "" end

--- A gauth.transport.curl transport that trusts the fake's CA (made once;
-- closed by stop()).
function Server:transport()
  if not self.http then
    self.http = assert(require("gauth.transport.curl").new{ ca_file = self.ca_file })
  end
  return self.http
end

--- Stop the fake (SIGTERM, then SIGKILL) and close its transport().
-- Idempotent.
function Server:stop()
  if self.stopped then return end
  self.stopped = true
  if self.http then self.http:close() end
  os.execute("kill -TERM " .. self.pid .. " 2>/dev/null")
  local deadline = socket.gettime() + 5
  while helpers.process_alive(self.pid) and socket.gettime() < deadline do
    socket.sleep(0.02)
  end
  if helpers.process_alive(self.pid) then
    os.execute("kill -KILL " .. self.pid .. " 2>/dev/null")
  end
end

return M
