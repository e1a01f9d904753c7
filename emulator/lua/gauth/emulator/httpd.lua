--- A small HTTP/1.1 server over luasocket, for gauth's emulator.
-- Loopback only, one process, one `socket.select` loop serving several
-- keep-alive connections; Content-Length and chunked request bodies,
-- `Expect: 100-continue`, pipelining. Anything it cannot parse gets a 400
-- and the connection is closed; the server itself never dies of a request.
-- Internal: used by `gauth.emulator`.
-- @module gauth.emulator.httpd

local socket = require "socket"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local pcall = pcall
local setmetatable = setmetatable
local concat = table.concat
local remove = table.remove
local find = string.find
local sub = string.sub
local lower = string.lower
local format = string.format
local match = string.match
local gsub = string.gsub
local char = string.char
local os_date = os.date

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

-- Limits: the emulator is a test tool, so these only need to keep one bad
-- client from eating the process.
local MAX_HEADER = 64 * 1024
local MAX_HEADERS = 100
local MAX_BODY = 16 * 1024 * 1024
local MAX_CONNS = 128
local IDLE_TIMEOUT = 60
local READ_BUDGET = 1024 * 1024   -- bytes read from one connection per step

_M.MAX_BODY = MAX_BODY

local REASONS = {
  [100] = "Continue", [200] = "OK", [201] = "Created", [204] = "No Content",
  [301] = "Moved Permanently", [302] = "Found", [304] = "Not Modified",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [408] = "Request Timeout",
  [409] = "Conflict", [411] = "Length Required", [413] = "Payload Too Large",
  [414] = "URI Too Long", [429] = "Too Many Requests",
  [431] = "Request Header Fields Too Large", [500] = "Internal Server Error",
  [501] = "Not Implemented", [503] = "Service Unavailable",
  [505] = "HTTP Version Not Supported",
}

local function hexval(h)
  return char(tonumber(h, 16))
end

--- Percent-decode a string (`+` stays `+`: that is a form rule, not a URL one).
function _M.unescape(s)
  return (gsub(s, "%%(%x%x)", hexval))
end

--- Decode `application/x-www-form-urlencoded` text (also used for query
-- strings) into a table; the first value of a repeated key wins.
function _M.parse_form(s)
  local t = {}
  if type(s) ~= "string" or s == "" then return t end
  for pair in s:gmatch("[^&]+") do
    local k, v = match(pair, "^([^=]*)=?(.*)$")
    k = _M.unescape(gsub(k, "+", " "))
    v = _M.unescape(gsub(v, "+", " "))
    if t[k] == nil then t[k] = v end
  end
  return t
end

--- Is `host` a loopback address this server may bind to?
function _M.loopback_address(host)
  if host == nil or host == "localhost" then return "127.0.0.1", false end
  if type(host) ~= "string" then return nil end
  if host == "::1" or host == "[::1]" then return "::1", true end
  local a, b, c, d = match(host, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if a and tonumber(a) == 127 and tonumber(b) < 256 and tonumber(c) < 256
      and tonumber(d) < 256 then
    return host, false
  end
  return nil
end

--- Bind a listening socket.
-- @tparam table opts `host` (loopback only; default 127.0.0.1), `port`
-- (0 for any free port), `handler` (function(req) -> status, headers, body),
-- `error_body` (function(status, message) -> content_type, body) for the
-- answers the server makes itself, `log` (function(line)), `idle_timeout`
-- @return server object, or nil and a message
function _M.new(opts)
  if type(opts) ~= "table" or type(opts.handler) ~= "function" then
    error("gauth.emulator.httpd: new: opts.handler is required", 2)
  end
  local host, v6 = _M.loopback_address(opts.host)
  if not host then
    return nil, "refusing to bind " .. tostring(opts.host)
      .. ": the emulator listens on loopback only"
  end
  local port = tonumber(opts.port or 0)
  if not port or port < 0 or port > 65535 or port % 1 ~= 0 then
    return nil, "bad port " .. tostring(opts.port)
  end
  -- A port that went through JSON is a float on 5.4 ("0.0" to luasocket).
  port = math.floor(port)
  local sock, err
  if v6 then
    if not socket.tcp6 then return nil, "no IPv6 support in luasocket" end
    sock, err = socket.tcp6()
  else
    -- tcp4, not tcp: LuaSocket 3's tcp() makes no descriptor before bind,
    -- so an option set on it is lost (setsockopt fails on fd -1).
    sock, err = (socket.tcp4 or socket.tcp)()
  end
  if not sock then return nil, "socket: " .. tostring(err) end
  -- Before bind: a restart finds the port free at once even while the
  -- last run's closed connections linger in TIME_WAIT.
  local ok
  ok, err = sock:setoption("reuseaddr", true)
  if not ok then
    sock:close()
    return nil, "setsockopt SO_REUSEADDR: " .. tostring(err)
  end
  ok, err = sock:bind(host, port)
  if not ok then
    sock:close()
    return nil, "bind " .. host .. ":" .. port .. ": " .. tostring(err)
  end
  ok, err = sock:listen(64)
  if not ok then
    sock:close()
    return nil, "listen: " .. tostring(err)
  end
  sock:settimeout(0)
  local _, bound = sock:getsockname()
  local self = {
    server = sock,
    host = host,
    port = tonumber(bound),
    v6 = v6,
    conns = {},        -- array of connection objects
    by_sock = {},      -- socket -> connection
    handler = opts.handler,
    error_body = opts.error_body,
    log = opts.log or function() end,
    idle_timeout = opts.idle_timeout or IDLE_TIMEOUT,
    stopped = false,
  }
  return setmetatable(self, mt)
end

--- The base URL, e.g. `http://127.0.0.1:8080`.
function _M.url(self)
  local h = self.v6 and ("[" .. self.host .. "]") or self.host
  return "http://" .. h .. ":" .. self.port
end

local function http_date(t)
  return os_date("!%a, %d %b %Y %H:%M:%S GMT", t)
end

-- Queue bytes for a connection and try to send at once.
local function queue(self, c, data)
  if c.out == "" then
    c.out, c.out_i = data, 1
  else
    c.out = sub(c.out, c.out_i) .. data
    c.out_i = 1
  end
  self:_flush(c)
end

-- Serialise one response. `headers` is a table name -> value (names as
-- they should be written).
local function write_response(self, c, req_method, status, headers, body,
                              close)
  body = body or ""
  local lines = { format("HTTP/1.1 %d %s", status, REASONS[status] or "Unknown") }
  local has_ct = false
  if headers then
    for k, v in pairs(headers) do
      local lk = lower(k)
      if lk ~= "content-length" and lk ~= "connection"
          and lk ~= "transfer-encoding" then
        if lk == "content-type" then has_ct = true end
        -- Never let a handler's value split the header block.
        lines[#lines + 1] = k .. ": " .. gsub(tostring(v), "[\r\n]", " ")
      end
    end
  end
  if not has_ct and body ~= "" then
    lines[#lines + 1] = "Content-Type: text/plain; charset=utf-8"
  end
  lines[#lines + 1] = "Date: " .. http_date()
  local no_body = status == 204 or status == 304 or (status >= 100 and status < 200)
  if not no_body then
    lines[#lines + 1] = "Content-Length: " .. #body
  end
  lines[#lines + 1] = "Connection: " .. (close and "close" or "keep-alive")
  local head = concat(lines, "\r\n") .. "\r\n\r\n"
  if no_body or req_method == "HEAD" then body = "" end
  -- Before queueing: a response sent at once must close at once.
  if close then c.close_after = true end
  queue(self, c, head .. body)
end

-- An answer the server makes itself (parse errors and the like): always
-- closes the connection, since we no longer know where the next request
-- would start.
local function fail(self, c, status, message)
  local ctype, body = "text/plain; charset=utf-8", message .. "\n"
  if self.error_body then
    local ok, t, b = pcall(self.error_body, status, message)
    if ok and t then ctype, body = t, b end
  end
  self.log(format("%s %s", status, message))
  c.req = nil
  c.buf = ""
  write_response(self, c, nil, status, { ["Content-Type"] = ctype }, body, true)
end

-- Try to take a chunked body off the front of `buf`.
-- @return body, rest | nil (need more) | false, message (malformed)
local function take_chunked(buf)
  local parts, pos, total = {}, 1, 0
  while true do
    local line_end = find(buf, "\r\n", pos, true)
    if not line_end then
      if #buf - pos > 1024 then return false, "bad chunk size line" end
      return nil
    end
    local size_hex = match(sub(buf, pos, line_end - 1), "^(%x+)[ \t]*;?.*$")
    if not size_hex or #size_hex > 8 then return false, "bad chunk size" end
    local size = tonumber(size_hex, 16)
    pos = line_end + 2
    if size == 0 then
      -- Trailers (ignored) end with an empty line.
      while true do
        local e = find(buf, "\r\n", pos, true)
        if not e then return nil end
        if e == pos then
          return concat(parts), sub(buf, e + 2)
        end
        pos = e + 2
      end
    end
    total = total + size
    if total > MAX_BODY then return false, "body too large" end
    if #buf < pos + size + 1 then return nil end
    if sub(buf, pos + size, pos + size + 1) ~= "\r\n" then
      return false, "bad chunk terminator"
    end
    parts[#parts + 1] = sub(buf, pos, pos + size - 1)
    pos = pos + size + 2
  end
end

-- Parse the request head at the front of c.buf.
-- @return true when a head was taken (c.req set), nil when more bytes are
-- needed, or false, status, message
local function take_head(c)
  local buf = c.buf
  -- RFC 9112 2.2: ignore empty lines before the request line.
  local s = find(buf, "[^\r\n]")
  if not s then
    if #buf > 1024 then return false, 400, "malformed request" end
    c.buf = ""
    return nil
  end
  if s > 1 then buf = sub(buf, s); c.buf = buf end
  -- Refuse a bad request line as soon as it is complete, without waiting
  -- for a header block that garbage may never send.
  local first_nl = find(buf, "\n", 1, true)
  if first_nl then
    local line = gsub(sub(buf, 1, first_nl - 1), "\r$", "")
    if not match(line, "^[%u]+ %S+ HTTP/%d%.%d$") then
      return false, 400, "malformed request line"
    end
  elseif #buf > 8192 then
    return false, 414, "request line too long"
  end
  local e1, e2 = find(buf, "\r?\n\r?\n")
  if not e1 then
    if #buf > MAX_HEADER then return false, 431, "request head too large" end
    return nil
  end
  if e1 > MAX_HEADER then return false, 431, "request head too large" end
  local head = sub(buf, 1, e1 - 1)
  c.buf = sub(buf, e2 + 1)

  local lines = {}
  for line in (head .. "\n"):gmatch("([^\n]*)\n") do
    lines[#lines + 1] = gsub(line, "\r$", "")
  end
  local method, target, major, minor = match(lines[1], "^([%u]+) (%S+) HTTP/(%d)%.(%d)$")
  if not method then return false, 400, "malformed request line" end
  if major ~= "1" then return false, 505, "HTTP version not supported" end
  if #lines - 1 > MAX_HEADERS then return false, 431, "too many header fields" end
  local headers = {}
  for i = 2, #lines do
    local line = lines[i]
    if find(line, "^[ \t]") then
      return false, 400, "obsolete line folding"
    end
    local name, value = match(line, "^([!#$%%&'*+%-.^_`|~%w]+):[ \t]*(.-)[ \t]*$")
    if not name then return false, 400, "malformed header field" end
    if find(value, "%z") then return false, 400, "NUL in header field" end
    name = lower(name)
    local old = headers[name]
    if old then
      if name == "content-length" or name == "host" then
        if old ~= value then return false, 400, "conflicting " .. name end
      else
        headers[name] = old .. ", " .. value
      end
    else
      headers[name] = value
    end
  end
  if minor == "1" and not headers.host then
    return false, 400, "missing Host header"
  end

  -- origin-form (and absolute-form, as proxies send it).
  local path_query = target
  if not find(target, "^/") then
    local rest = match(target, "^[hH][tT][tT][pP][sS]?://[^/?#]*(.*)$")
    if rest then
      path_query = rest ~= "" and rest or "/"
    elseif target == "*" and method == "OPTIONS" then
      path_query = "*"
    else
      return false, 400, "malformed request target"
    end
  end
  if find(path_query, "[%z\1-\32\127]") then
    return false, 400, "malformed request target"
  end
  local path, query = match(path_query, "^([^?#]*)%??([^#]*)")

  local length, chunked = 0, false
  local te = headers["transfer-encoding"]
  if te then
    if headers["content-length"] then
      return false, 400, "both Transfer-Encoding and Content-Length"
    end
    if not match(lower(te), "^%s*chunked%s*$") then
      return false, 501, "unsupported Transfer-Encoding"
    end
    chunked = true
  elseif headers["content-length"] then
    local cl = headers["content-length"]
    if not match(cl, "^%d+$") or #cl > 12 then
      return false, 400, "bad Content-Length"
    end
    length = tonumber(cl)
    if length > MAX_BODY then return false, 413, "body too large" end
  end

  local conn = lower(headers.connection or "")
  local keep
  if minor == "0" then
    keep = find(conn, "keep-alive", 1, true) ~= nil
  else
    keep = not find(conn, "close", 1, true)
  end

  c.req = {
    method = method,
    target = target,
    path = path,
    query_string = query,
    headers = headers,
    version = "1." .. minor,
    keep_alive = keep,
    length = length,
    chunked = chunked,
  }
  c.continue_sent = false
  return true
end

-- Answer every complete request in c.buf.
function _M._process(self, c)
  while not c.close_after and not c.dead do
    if not c.req then
      local ok, status, message = take_head(c)
      if ok == nil then return end
      if ok == false then return fail(self, c, status, message) end
    end
    local req = c.req
    local body
    if req.chunked then
      local b, rest = take_chunked(c.buf)
      if b == false then return fail(self, c, 400, rest) end
      if b == nil then
        if #c.buf > MAX_BODY + 65536 then return fail(self, c, 413, "body too large") end
        return self:_maybe_continue(c)
      end
      body, c.buf = b, rest
    else
      if #c.buf < req.length then return self:_maybe_continue(c) end
      body = sub(c.buf, 1, req.length)
      c.buf = sub(c.buf, req.length + 1)
    end
    c.req = nil
    req.body = body
    req.query = _M.parse_form(req.query_string)
    req.peer = c.peer
    -- The handler may rewrite req.method (HEAD served as GET, method
    -- override); the answer's framing follows what the client sent.
    local sent_method = req.method
    local ok, status, headers, rbody = pcall(self.handler, req)
    if not ok then
      self.log("handler error: " .. tostring(status))
      local ctype, b = "text/plain; charset=utf-8", "internal error\n"
      if self.error_body then
        local ok2, t2, b2 = pcall(self.error_body, 500, "Internal error encountered.")
        if ok2 and t2 then ctype, b = t2, b2 end
      end
      status, headers, rbody = 500, { ["Content-Type"] = ctype }, b
    end
    if type(status) ~= "number" then status = 500 end
    write_response(self, c, sent_method, status, headers, rbody,
                   not req.keep_alive)
  end
end

-- curl (and others) send `Expect: 100-continue` before a large body and
-- wait for this interim answer (or a timeout) before sending it.
function _M._maybe_continue(self, c)
  local req = c.req
  if req and not c.continue_sent and req.version == "1.1"
      and lower(req.headers.expect or "") == "100-continue" then
    c.continue_sent = true
    queue(self, c, "HTTP/1.1 100 Continue\r\n\r\n")
  end
end

function _M._close(self, c)
  if c.dead then return end
  c.dead = true
  c.sock:close()
  self.by_sock[c.sock] = nil
  for i = #self.conns, 1, -1 do
    if self.conns[i] == c then remove(self.conns, i) break end
  end
end

function _M._flush(self, c)
  if c.dead then return end
  if c.out ~= "" then
    local last, err, partial = c.sock:send(c.out, c.out_i)
    if last then
      c.out, c.out_i = "", 1
    elseif err == "timeout" then
      c.out_i = (partial or c.out_i - 1) + 1
    else
      return self:_close(c)
    end
    c.last = socket.gettime()
  end
  if c.out == "" and (c.close_after or c.eof) then
    self:_close(c)
  end
end

function _M._read(self, c)
  local got = 0
  local chunks = {}
  while got < READ_BUDGET do
    local data, err, partial = c.sock:receive(8192)
    data = data or partial
    if data and data ~= "" then
      chunks[#chunks + 1] = data
      got = got + #data
    end
    if err == "timeout" then break end
    if err then c.eof = true break end
  end
  c.more = got >= READ_BUDGET
  c.last = socket.gettime()
  if #chunks > 0 and not c.close_after then
    c.buf = c.buf .. concat(chunks)
    self:_process(c)
  end
  if c.eof and not c.dead then
    -- The peer is gone (or only half-closed): answer what is complete,
    -- then close once the answers are out.
    if c.out == "" then self:_close(c) end
  end
end

function _M._accept(self)
  for _ = 1, 64 do
    local client = self.server:accept()
    if not client then return end
    if #self.conns >= MAX_CONNS then
      -- Make room by dropping the longest-idle quiet connection.
      local victim
      for _, c in ipairs(self.conns) do
        if c.out == "" and c.buf == "" and not c.req
            and (not victim or c.last < victim.last) then
          victim = c
        end
      end
      if victim then self:_close(victim) end
    end
    if #self.conns >= MAX_CONNS then
      client:close()
    else
      client:settimeout(0)
      client:setoption("tcp-nodelay", true)
      local ip, port = client:getpeername()
      local c = { sock = client, buf = "", out = "", out_i = 1,
                  last = socket.gettime(),
                  peer = ip and (tostring(ip) .. ":" .. tostring(port)) or "?" }
      self.conns[#self.conns + 1] = c
      self.by_sock[client] = c
    end
  end
end

--- Serve for at most `timeout` seconds (one select round).
function _M.step(self, timeout)
  local recvt, sendt = { self.server }, {}
  local busy = false
  for _, c in ipairs(self.conns) do
    if not c.close_after and not c.eof then recvt[#recvt + 1] = c.sock end
    if c.out ~= "" then sendt[#sendt + 1] = c.sock end
    if c.more then busy = true end
  end
  local readable, writable = socket.select(recvt, sendt, busy and 0 or timeout)
  for _, s in ipairs(writable or {}) do
    local c = self.by_sock[s]
    if c then self:_flush(c) end
  end
  local seen = {}
  for _, s in ipairs(readable or {}) do
    if s == self.server then
      self:_accept()
    else
      local c = self.by_sock[s]
      if c then seen[c] = true; self:_read(c) end
    end
  end
  -- Connections that stopped reading on their budget go on without select.
  for _, c in ipairs(self.conns) do
    if c.more and not seen[c] and not c.dead then self:_read(c) end
  end
  local now = socket.gettime()
  for i = #self.conns, 1, -1 do
    local c = self.conns[i]
    if c and now - c.last > self.idle_timeout then self:_close(c) end
  end
end

--- Serve until `stop()` is called (from a handler or `opts.tick`).
-- @tparam[opt] table opts `tick` (called about twice a second)
function _M:run(opts)
  local tick = opts and opts.tick
  while not self.stopped do
    self:step(0.5)
    if tick then tick(self) end
  end
  self:close()
end

function _M.stop(self)
  self.stopped = true
end

--- Close every connection and the listening socket.
function _M.close(self)
  for i = #self.conns, 1, -1 do
    self:_close(self.conns[i])
  end
  if self.server then
    self.server:close()
    self.server = nil
  end
end

return _M
