--- The cosocket transport: non-blocking HTTP/1.1 over `ngx.socket.tcp`,
-- for code running inside nginx (OpenResty / lua-nginx-module).
--
-- Same interface as `gauth.transport.curl` (see ARCHITECTURE.md):
--
--     local t = assert(require("gauth.transport.ngx").new{ timeout = 10 })
--     local res, err = t:request{ method = "GET", url = "https://...",
--                                 headers = { accept = "application/json" } }
--
-- It works wherever cosockets do (rewrite, access, content, timers, ...);
-- `gauth.http` picks it per request and falls back to libcurl elsewhere.
--
-- What differs from libcurl, because nginx decides it:
--
-- * TLS is always verified (peer and host name) against the nginx directive
--   `lua_ssl_trusted_certificate` (with `lua_ssl_verify_depth`); `opts.ca_file`
--   cannot apply to a cosocket and is ignored (a warning is logged once).
-- * nginx checks host names only, so `https://` to an IP literal fails
--   verification; use a name. `localhost` is connected at 127.0.0.1 without
--   a resolver; other names need nginx's `resolver` directive.
-- * Connections are kept alive in nginx's per-worker pool (one pool per
--   scheme, host and port), shared by every transport object of the worker.
-- * An `accept-encoding` request header is not sent: the server then answers
--   with an identity body, which is what a caller of the curl transport gets
--   after libcurl's decoding (only `res.decoded` is missing).
-- * Proxies: `opts.proxy` / `opts.no_proxy`, else `https_proxy`,
--   `http_proxy`, `no_proxy` read with os.getenv (nginx passes a variable
--   to Lua only with an `env https_proxy;` line in nginx.conf). An https
--   target is reached through a CONNECT tunnel, then TLS to the target's
--   name (verified, as always); an http target by an absolute-form request
--   to the proxy. Credentials in the proxy URL go as `Proxy-Authorization:
--   Basic`, never into a message or a log line. Loopback and the metadata
--   server never go through a proxy. A proxy's host name needs nginx's
--   `resolver` as any other (an address does not).
--
-- Defaults as the curl transport: `timeout` 30 s (whole request, redirects
-- included), `connect_timeout` 10 s, `max_body` 64 MiB, no redirects.
-- @module gauth.transport.ngx

local errors = require "gauth.errors"
local http_header = require "gauth.lib.http_header"
local ngx_phase = require "gauth.lib.ngx_phase"
local url_lib = require "gauth.lib.url"
local common = require "gauth.transport.common"

local ngx = ngx  -- luacheck: ignore
local type = type
local pcall = pcall
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local error = error
local find = string.find
local header_value_ok = http_header.value_ok
local lower = string.lower
local match = string.match
local gmatch = string.gmatch
local sub = string.sub
local concat = table.concat
local io_open = io.open
local math_floor = math.floor
local math_max = math.max

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

_M.DEFAULT_TIMEOUT = common.DEFAULT_TIMEOUT
_M.DEFAULT_CONNECT_TIMEOUT = common.DEFAULT_CONNECT_TIMEOUT
_M.DEFAULT_MAX_BODY = common.DEFAULT_MAX_BODY
_M.DEFAULT_KEEPALIVE_TIMEOUT = 60
_M.DEFAULT_POOL_SIZE = 32
-- Header block cap (libcurl's is 100 KiB too).
_M.MAX_HEADER_BYTES = 100 * 1024
_M.MAX_REDIRECTS = 10

-- Methods whose absent body is still announced (Content-Length: 0), as the
-- curl transport does: Google's front ends answer 411 otherwise.
local EMPTY_BODY = { POST = true, PUT = true, PATCH = true }
local REDIRECTS = { [301] = true, [302] = true, [303] = true, [307] = true,
                    [308] = true }
local READ_CHUNK = 65536

local tcp, now, update_time, ngx_log, WARN, NOTICE
if ngx_phase.is_ngx then
  tcp, now, update_time = ngx.socket.tcp, ngx.now, ngx.update_time
  ngx_log, WARN, NOTICE = ngx.log, ngx.WARN, ngx.NOTICE
end

local MODULE = "gauth.transport.ngx"
local check_request = common.check_request
local check_seconds = common.check_seconds
local check_bytes = common.check_bytes
local fail = common.fail
local tls_untrusted = common.tls_untrusted
local HEADER_NAMES = common.HEADER_NAMES
local header_name = common.header_name
local proxy_for = common.proxy_for

-- Socket errors after which a new attempt may succeed (the peer or the
-- network, not the request): the counterpart of the curl transport's list.
local function socket_retryable(err)
  err = tostring(err)
  return find(err, "timeout", 1, true) ~= nil
      or find(err, "closed", 1, true) ~= nil
      or find(err, "reset", 1, true) ~= nil
      or find(err, "refused", 1, true) ~= nil
      or find(err, "broken pipe", 1, true) ~= nil
      or find(err, "unreachable", 1, true) ~= nil
      or find(err, "could not be resolved", 1, true) ~= nil
end

local warned_ca_file = false
local checked_env_ca = false

--- Make a transport.
-- @tparam[opt] table opts `timeout` (s, default 30), `connect_timeout` (s,
--   default 10), `max_body` (bytes, default 64 MiB), `keepalive_timeout`
--   (s an idle pooled connection is kept, default 60), `pool_size`
--   (connections kept per pool and worker, default 32), `proxy`,
--   `no_proxy` (as `gauth.transport.curl`). `ca_file` is
--   accepted for compatibility with the curl transport and ignored: the
--   trust store is `lua_ssl_trusted_certificate`. `client_cert` and
--   `client_key` (paths of PEM files): the client certificate for mutual
--   TLS, read and parsed here, once (`tcpsock:setclientcert`, lua-nginx-module
--   0.10.23+ with lua-resty-core's `ngx.ssl`); connections made with it
--   are pooled apart from the others.
-- @return transport | nil, msg, err (a `proxy` that does not parse: step
--   "proxy", `field` "proxy")
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("gauth.transport.ngx: opts must be a table", 2)
  end
  check_seconds(opts.timeout, "timeout", MODULE, 3)
  check_seconds(opts.connect_timeout, "connect_timeout", MODULE, 3)
  check_seconds(opts.keepalive_timeout, "keepalive_timeout", MODULE, 3)
  check_bytes(opts.max_body, "max_body", MODULE, 3)
  check_bytes(opts.pool_size, "pool_size", MODULE, 3)
  local pcfg, pmsg, perr = common.proxy_config(opts, MODULE)
  if not pcfg then return nil, pmsg, perr end
  if not ngx_phase.is_ngx or type(ngx.socket) ~= "table" then
    return errors.fail("http", "init",
      "gauth.transport.ngx runs only inside nginx (lua-nginx-module)")
  end
  local cert_pem, key_pem, cerr = common.read_client_cert(opts, MODULE, 2)
  if cert_pem == nil and key_pem ~= nil then return nil, key_pem, cerr end
  local client
  if cert_pem then
    local ok, ssl = pcall(require, "ngx.ssl")
    local pok, probe = pcall(tcp)
    if not ok or type(ssl.parse_pem_cert) ~= "function"
        or (pok and type(probe.setclientcert) ~= "function") then
      return errors.fail("http", "client_cert", "client_cert: this nginx cannot send a client"
        .. " certificate from Lua (needs lua-nginx-module 0.10.23+ and lua-resty-core's"
        .. " ngx.ssl with tcpsock:setclientcert)", { retryable = false, field = "client_cert",
                                                    kind = "unsupported" })
    end
    local c, cperr = ssl.parse_pem_cert(cert_pem)
    if not c then
      return errors.fail("http", "client_cert", "client_cert: " .. opts.client_cert
        .. " cannot be parsed: " .. tostring(cperr), { retryable = false, field = "client_cert", kind = "config" })
    end
    -- The parser's message may quote OpenSSL, never the key.
    local k = ssl.parse_pem_priv_key(key_pem)
    if not k then
      return errors.fail("http", "client_cert", "client_key: " .. opts.client_key
        .. " cannot be parsed as a private key", { retryable = false, field = "client_key", kind = "config" })
    end
    -- The pool tag keeps a connection made with this certificate for
    -- transports with the same one: never handed to one without it.
    client = { cert = c, key = k, tag = opts.client_cert .. "|" .. opts.client_key }
  end
  if opts.ca_file ~= nil and not warned_ca_file then
    warned_ca_file = true
    ngx_log(WARN, "gauth.transport.ngx: opts.ca_file is not used by cosockets;",
            " TLS is verified against lua_ssl_trusted_certificate")
  end
  if not checked_env_ca then
    -- GAUTH_CA_FILE (visible here with `env GAUTH_CA_FILE;`) is libcurl's;
    -- cosockets can only trust lua_ssl_trusted_certificate: say so once
    -- per worker, and whether the file can be read at all.
    checked_env_ca = true
    local ca = common.env_ca_file()
    if ca then
      local f = io.open(ca, "rb")
      if f then
        f:close()
        ngx_log(NOTICE, "gauth: GAUTH_CA_FILE=", ca, " is what libcurl trusts",
                " (init_by_lua); cosockets trust lua_ssl_trusted_certificate,",
                " which must name the same file")
      else
        ngx_log(WARN, "gauth: GAUTH_CA_FILE=", ca, " cannot be read: libcurl",
                " (init_by_lua) will fail to verify any server")
      end
    end
  end
  return setmetatable({
    timeout = opts.timeout or _M.DEFAULT_TIMEOUT,
    connect_timeout = opts.connect_timeout or _M.DEFAULT_CONNECT_TIMEOUT,
    max_body = opts.max_body or _M.DEFAULT_MAX_BODY,
    keepalive_ms = (opts.keepalive_timeout or _M.DEFAULT_KEEPALIVE_TIMEOUT) * 1000,
    pool_size = opts.pool_size or _M.DEFAULT_POOL_SIZE,
    proxy = pcfg,
    client = client,
  }, mt)
end

-- Milliseconds left before `deadline` (at least 1: 0 means "no timeout" to
-- some cosocket calls).
local function left_ms(deadline)
  update_time()
  local ms = math_floor((deadline - now()) * 1000)
  if ms < 1 then return nil end
  return ms
end

-- One connection attempt's state, kept in a table so the helpers below
-- stay small: c = { sock, deadline, reused, bytes_in, buf }.
--
-- The request's timeout is one deadline for the whole exchange, not a
-- timeout per read: nginx re-arms a cosocket's read timer whenever bytes
-- arrive, so a peer trickling a byte a second would keep a single
-- `receive(n)` going for ever. Every read here is one `receiveany` (it
-- returns as soon as any bytes are there) given only the time left before
-- the deadline, and the bytes go through our own buffer (`c.buf`).

-- More bytes from the peer, waiting at most until the deadline.
-- @return data | nil, err ("timeout", "closed", ...)
local function fill(c)
  local ms = left_ms(c.deadline)
  if not ms then return nil, "timeout" end
  local sock = c.sock
  sock:settimeouts(ms, ms, ms)
  local data, err = sock:receiveany(READ_CHUNK)
  if not data then return nil, err end
  c.bytes_in = c.bytes_in + #data
  return data
end

-- Read up to (not including) `pattern`, refusing more than `limit` bytes.
local function read_until(c, pattern, limit)
  local buf = c.buf
  local from = 1
  while true do
    local s, e = find(buf, pattern, from, true)
    if s then
      if s - 1 > limit then return nil, "too long" end
      c.buf = sub(buf, e + 1)
      return sub(buf, 1, s - 1)
    end
    if #buf > limit then return nil, "too long" end
    -- The pattern may straddle what we have and what comes next.
    from = math_max(1, #buf - #pattern + 2)
    local data, err = fill(c)
    if not data then
      c.buf = buf
      return nil, err
    end
    buf = buf .. data
  end
end

local function read_exactly(c, len)
  local buf = c.buf
  local have = #buf
  if have >= len then
    if have == len then
      c.buf = ""
      return buf
    end
    c.buf = sub(buf, len + 1)
    return sub(buf, 1, len)
  end
  local parts, n = { buf }, 1
  while have < len do
    local data, err = fill(c)
    if not data then
      c.buf = concat(parts, "", 1, n)
      return nil, err
    end
    n = n + 1
    parts[n] = data
    have = have + #data
  end
  local all = concat(parts, "", 1, n)
  if have == len then
    c.buf = ""
    return all
  end
  c.buf = sub(all, len + 1)
  return sub(all, 1, len)
end

--- Parse a response head (status line and header lines, without the final
-- empty line) into status, reason, version, headers (lower-case names,
-- repeated names joined with ", ").
-- @return status, reason, version, headers | nil
function _M.parse_head(head)
  local version, status, reason = match(head, "^HTTP/(%d%.%d) (%d%d%d) ?([^\r\n]*)")
  if not version then return nil end
  local headers = {}
  local last
  for line in gmatch(head, "\n([^\n]*)") do
    if sub(line, -1) == "\r" then line = sub(line, 1, -2) end
    local name, value = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$")
    if name then
      name = lower(name)
      local prev = headers[name]
      headers[name] = prev and (prev .. ", " .. value) or value
      last = name
    elseif last and find(line, "^[ \t]") then
      -- obsolete line folding: part of the previous value
      headers[last] = headers[last] .. " " .. match(line, "^[ \t]*(.-)[ \t]*$")
    end
  end
  return tonumber(status), reason, version, headers
end
local parse_head = _M.parse_head

local function too_large(max)
  return fail("response body larger than max_body (" .. max .. " bytes)",
              { retryable = false, kind = "max_body", too_large = true })
end

-- Body sink: memory (capped at max_body) or a file (download_file, 2xx).
-- @return true | nil, err (the request's error: over max_body, or the
--   file could not be written)
local function sink_add(s, data)
  if s.file then
    local ok, err = s.file:write(data)
    if not ok then
      return fail("writing the download file: " .. tostring(err),
                  { retryable = false, kind = "write" })
    end
    s.written = s.written + #data
    return true
  end
  local len = s.len + #data
  if len > s.max then return too_large(s.max) end
  s.len = len
  s.n = s.n + 1
  s.parts[s.n] = data
  return true
end

local function body_error(err, what)
  err = tostring(err)
  return fail("reading the " .. what .. ": " .. err,
              { retryable = socket_retryable(err),
                kind = find(err, "timeout", 1, true) and "timeout" or "read" })
end

-- Read `len` bytes of the body into the sink, a buffer at a time.
local function read_into(c, s, len)
  while len > 0 do
    local want = len < READ_CHUNK and len or READ_CHUNK
    local data, err = read_exactly(c, want)
    if not data then return body_error(err, "body") end
    local ok, serr = sink_add(s, data)
    if not ok then return nil, serr end
    len = len - want
  end
  return true
end

-- Read a chunked body into the sink.
local function read_chunked(c, s)
  while true do
    local line, err = read_until(c, "\r\n", 1024)
    if not line then return body_error(err, "chunk size") end
    -- hex size, then optional extensions (";name=value"), ignored
    local hex = match(line, "^[ \t]*(%x+)[ \t]*$") or match(line, "^[ \t]*(%x+)[ \t]*;")
    local size = hex and #hex <= 15 and tonumber(hex, 16)
    if not size then
      return fail("bad chunk size line", { retryable = false, kind = "read" })
    end
    if size == 0 then break end
    if not s.file and s.len + size > s.max then return too_large(s.max) end
    local ok, rerr = read_into(c, s, size)
    if not ok then return nil, rerr end
    local crlf, cerr = read_exactly(c, 2)
    if not crlf then return body_error(cerr, "body") end
    if crlf ~= "\r\n" then
      return fail("bad chunk terminator", { retryable = false, kind = "read" })
    end
  end
  -- Trailers (ignored), up to the empty line.
  local trailers, err = read_until(c, "\r\n", _M.MAX_HEADER_BYTES)
  while trailers and trailers ~= "" do
    trailers, err = read_until(c, "\r\n", _M.MAX_HEADER_BYTES)
  end
  if not trailers then return body_error(err, "trailers") end
  return true
end

local function read_length(c, s, len)
  if not s.file and len > s.max then return too_large(s.max) end
  return read_into(c, s, len)
end

local function read_to_close(c, s)
  local data = c.buf
  c.buf = ""
  while true do
    if data ~= "" then
      local ok, serr = sink_add(s, data)
      if not ok then return nil, serr end
    end
    local err
    data, err = fill(c)
    if not data then
      if err == "closed" then return true end
      return body_error(err, "body")
    end
  end
end

-- Request head and body, written as one array (no concatenation).
local function build_request(method, target, host_header, headers, body_len, extra)
  local out, n = { method, " ", target, " HTTP/1.1\r\n" }, 4
  local has_host = false
  if headers then
    for name, value in pairs(headers) do
      -- Level 5: past header_name, this function and request (as before).
      local lname = HEADER_NAMES[name] or header_name(name, MODULE, 5)
      -- Framing is ours; accept-encoding: see the module notes.
      if lname ~= "content-length" and lname ~= "transfer-encoding"
          and lname ~= "accept-encoding" and lname ~= "connection" then
        if lname == "host" then has_host = true end
        local vt = type(value)
        local values
        if vt == "table" then
          values = value
        elseif vt == "string" or vt == "number" then
          values = { value }
        elseif vt ~= "boolean" or value then
          error("gauth.transport.ngx: bad value for header " .. name, 4)
        end
        -- `false` leaves the header out.
        if values then
          for i = 1, #values do
            local v = values[i]
            local et = type(v)
            if et == "number" then
              v = tostring(v)
            elseif et ~= "string" then
              error("gauth.transport.ngx: bad value for header " .. name, 4)
            end
            -- A CR or LF would let a value (a token from a server, say)
            -- inject headers; the message names the header, never the value.
            -- (The one rule for every header: http_header.value_ok.)
            if not header_value_ok(v) then
              return nil, name
            end
            out[n + 1], out[n + 2], out[n + 3], out[n + 4] = name, ": ", v, "\r\n"
            n = n + 4
          end
        end
      end
    end
  end
  if not has_host then
    out[n + 1], out[n + 2], out[n + 3] = "Host: ", host_header, "\r\n"
    n = n + 3
  end
  if body_len then
    out[n + 1], out[n + 2], out[n + 3] = "Content-Length: ", tostring(body_len), "\r\n"
    n = n + 3
  end
  if extra then
    out[n + 1] = extra
    n = n + 1
  end
  out[n + 1] = "\r\n"
  return out
end

local function is_ip_literal(host)
  return sub(host, 1, 1) == "[" or match(host, "^%d+%.%d+%.%d+%.%d+$") ~= nil
end

-- The pool of connections through proxy `p` to origin `u`: a tunnel
-- (after CONNECT and TLS) serves only its target; absolute-form requests
-- to one proxy share its pool. Made once per route and worker.
local routes, n_routes = {}, 0

local function route_pool(u, p)
  local key = p.key .. " " .. u.pool_opts.pool
  local o = routes[key]
  if o then return o end
  o = { pool = u.https and ("tunnel " .. key) or ("proxy " .. p.key),
        pool_size = u.pool_opts.pool_size }
  if n_routes >= 256 then routes, n_routes = {}, 0 end
  routes[key] = o
  n_routes = n_routes + 1
  return o
end

-- Open a CONNECT tunnel to `u` on a fresh connection to proxy `p`.
-- @return true | nil, err
local function tunnel(c, u, p)
  local target = u.host .. ":" .. u.port
  local ms = left_ms(c.deadline)
  if not ms then return fail("timeout before CONNECT", { retryable = true, kind = "timeout" }) end
  local sock = c.sock
  sock:settimeouts(ms, ms, ms)
  local ok, err = sock:send({ "CONNECT ", target, " HTTP/1.1\r\nHost: ", target, "\r\n",
    p.auth and "Proxy-Authorization: " or "", p.auth or "", p.auth and "\r\n" or "", "\r\n" })
  local head
  if ok then head, err = read_until(c, "\r\n\r\n", _M.MAX_HEADER_BYTES) end
  if not head then
    return fail("proxy " .. p.shown .. ": CONNECT to " .. target .. ": " .. tostring(err),
                { retryable = socket_retryable(err), kind = "proxy", proxy = p.shown })
  end
  local status, reason = parse_head(head)
  if not status or status < 200 or status > 299 then
    -- 403: the proxy's policy; 407: its credentials. Neither changes by
    -- asking again; a 5xx of the proxy might.
    return fail("proxy " .. p.shown .. " refused CONNECT to " .. target .. ": "
      .. (status and (status .. " " .. tostring(reason)) or "malformed answer"),
      { retryable = status ~= nil and status >= 500, kind = "proxy", proxy = p.shown,
        proxy_status = status })
  end
  if c.buf ~= "" then
    return fail("proxy " .. p.shown .. ": bytes after the CONNECT answer",
                { retryable = false, kind = "proxy", proxy = p.shown })
  end
  return true
end

-- Connect (or take a pooled connection) and do the TLS handshake; through
-- proxy `p` when given.
-- @return c | nil, err
local function connect(u, deadline, connect_timeout, p, client)
  local sock = tcp()
  local cms = left_ms(deadline)
  if not cms then
    return fail("timeout before connecting", { retryable = true, kind = "timeout" })
  end
  local ct = math_floor(connect_timeout * 1000)
  if ct >= 1 and ct < cms then cms = ct end
  sock:settimeouts(cms, cms, cms)
  local ok, err
  if p then
    ok, err = sock:connect(p.addr, p.port, route_pool(u, p))
  else
    ok, err = sock:connect(u.addr, u.port, u.pool_opts)
  end
  if not ok then
    local msg = "connecting to " .. (p and ("proxy " .. p.hostport) or (u.host .. ":" .. u.port))
      .. ": " .. tostring(err)
    if find(tostring(err), "no resolver", 1, true) then
      msg = msg .. " (add a `resolver` directive to nginx.conf)"
    end
    return fail(msg, { retryable = socket_retryable(err), kind = "connect",
                       proxy = p and p.shown })
  end
  local reused = (sock:getreusedtimes() or 0) > 0
  if p and u.https and not reused then
    local tc = { sock = sock, deadline = deadline, bytes_in = 0, buf = "" }
    local tok, terr = tunnel(tc, u, p)
    if not tok then
      sock:close()
      return nil, terr
    end
  end
  if u.https and not reused then
    if client then
      local cok, cerr2 = sock:setclientcert(client.cert, client.key)
      if not cok then
        sock:close()
        return fail("TLS client certificate: " .. tostring(cerr2), { retryable = false, kind = "tls" })
      end
    end
    -- pcall: lua-resty-core 0.1.25 raises ("assertion failed!") instead of
    -- returning an error when a handshake that completed at once then
    -- fails verification; nginx logs the reason.
    local pok, sess, herr = pcall(sock.sslhandshake, sock, nil, u.tls_name, true)
    if not pok then
      sess, herr = nil, "certificate verification failed (see the nginx error log)"
    end
    if not sess then
      sock:close()
      herr = tostring(herr)
      local msg = "TLS handshake with " .. u.host .. ":" .. u.port .. ": " .. herr
      local verify = find(herr, "certificate", 1, true) ~= nil
                     or find(herr, "verify", 1, true) ~= nil
      if verify then
        if is_ip_literal(u.host) then
          msg = msg .. " (nginx verifies host names only: use the server's name)"
        else
          -- Worded as the libcurl transport does.
          return tls_untrusted(u.host .. ":" .. u.port, herr)
        end
      end
      if client and not verify then
        -- The server's alert (e.g. "unknown ca") is in nginx's error log only.
        msg = msg .. " (a client certificate was sent: the server may have refused it;"
          .. " nginx's error log has the TLS alert)"
      end
      return fail(msg, { retryable = not verify and socket_retryable(herr),
                         kind = verify and "tls_verify" or "tls" })
    end
  end
  return { sock = sock, deadline = deadline, reused = reused, bytes_in = 0, buf = "" }
end

-- What connect() needs for an origin ("https://host:port"), made once per
-- origin and worker: a few origins serve every request, so the hot path
-- neither parses the host nor builds these tables again.
local origins, n_origins = {}, 0

local function origin_of(origin, pool_size, tag)
  local key = pool_size .. " " .. origin .. (tag and " " .. tag or "")
  local o = origins[key]
  if o then return o end
  local scheme, host, port = url_lib.parse(origin .. "/")
  if not scheme or (scheme ~= "http" and scheme ~= "https") then
    return nil
  end
  local https = scheme == "https"
  local default_port = https and 443 or 80
  port = port or default_port
  local lhost = lower(host)
  local addr, tls_name = lhost, lhost
  if sub(lhost, 1, 1) == "[" then
    tls_name = sub(lhost, 2, -2)
  elseif lhost == "localhost" then
    -- RFC 6761: always loopback; no resolver needed.
    addr = "127.0.0.1"
  end
  o = {
    scheme = scheme, https = https, host = lhost, port = port, addr = addr,
    tls_name = tls_name,
    host_header = port == default_port and host or (host .. ":" .. port),
    -- A pool per scheme/host/port: a plain connection is never handed out
    -- for https, nor one verified for another name.
    pool_opts = { pool = scheme .. "://" .. lhost .. ":" .. port .. (tag and https and " mtls " .. tag or ""),
                  pool_size = pool_size },
  }
  if n_origins >= 256 then origins, n_origins = {}, 0 end
  origins[key] = o
  n_origins = n_origins + 1
  return o
end

-- The origin and the request target of an URL.
-- @return origin table, target | nil
local function target_of(url, pool_size, tag)
  local origin, path = match(url, "^(%a[%w+.-]*://[^/?#]*)(.*)$")
  if not origin then return nil end
  local o = origin_of(origin, pool_size, tag)
  if not o then return nil end
  local hash = find(path, "#", 1, true)
  if hash then path = sub(path, 1, hash - 1) end
  if path == "" then
    path = "/"
  elseif sub(path, 1, 1) == "?" then
    path = "/" .. path
  end
  return o, path
end

local function resolve_location(u, path, loc)
  if find(loc, "^%a[%w+.-]*://") then return loc end
  local origin = u.scheme .. "://" .. u.host_header
  if sub(loc, 1, 2) == "//" then return u.scheme .. ":" .. loc end
  if sub(loc, 1, 1) == "/" then return origin .. loc end
  local dir = match(match(path, "^[^?]*"), "^(.*/)") or "/"
  return origin .. dir .. loc
end

-- Open the upload file at the offset, with the length to send.
local function open_upload(req)
  local f, err = io_open(req.upload_file, "rb")
  if not f then return nil, err end
  local size = f:seek("end")
  local off = req.upload_offset or 0
  local len = req.upload_length or math_max(0, size - off)
  if off + len > size then
    f:close()
    return nil, req.upload_file .. ": shorter than upload_offset + upload_length"
  end
  f:seek("set", off)
  return f, len
end

-- Send the request on `c`; `true` or nil, err, sent_anything.
local function send_request(c, head, body, upload, up_len)
  local sock = c.sock
  local ms = left_ms(c.deadline)
  if not ms then return nil, "timeout" end
  sock:settimeouts(ms, ms, ms)
  local ok, err = sock:send(head)
  if not ok then return nil, err end
  if body and body ~= "" then
    -- In slices, each given only the time left: a peer that reads slowly
    -- cannot stretch one send past the deadline.
    local len = #body
    if len <= READ_CHUNK then
      ok, err = sock:send(body)
      if not ok then return nil, err end
    else
      for i = 1, len, READ_CHUNK do
        ms = left_ms(c.deadline)
        if not ms then return nil, "timeout" end
        sock:settimeouts(ms, ms, ms)
        ok, err = sock:send(sub(body, i, i + READ_CHUNK - 1))
        if not ok then return nil, err end
      end
    end
  elseif upload then
    local left = up_len
    while left > 0 do
      local data = upload:read(left < READ_CHUNK and left or READ_CHUNK)
      if not data then return nil, "upload file ended early", "read" end
      ms = left_ms(c.deadline)
      if not ms then return nil, "timeout" end
      sock:settimeouts(ms, ms, ms)
      ok, err = sock:send(data)
      if not ok then return nil, err end
      left = left - #data
    end
  end
  return true
end

-- One request/response exchange on one URL (no redirects).
-- @return res | nil, err
local function exchange(self, method, u, head, body, req, deadline,
                        connect_timeout, max_body, p)
  local attempts = 0
  while true do
    attempts = attempts + 1
    local c, err = connect(u, deadline, connect_timeout, p, self.client)
    if not c then return nil, err end
    local sock = c.sock

    local upload, up_len
    if req.upload_file then
      -- Opened for each attempt: a retry on a fresh connection resends it all.
      upload, up_len = open_upload(req)
      if not upload then
        sock:close()
        return fail("upload file: " .. tostring(up_len),
                    { retryable = false, kind = "file" })
      end
    end
    local ok, serr, why = send_request(c, head, body, upload, up_len)
    if upload then upload:close() end
    local raw, rerr
    if ok then
      raw, rerr = read_until(c, "\r\n\r\n", _M.MAX_HEADER_BYTES)
    end
    -- A pooled connection the server has closed meanwhile fails at once
    -- (on send, or with no byte of an answer): retry once on another, as
    -- libcurl does. More is the caller's retry policy's business.
    local stale = c.reused and why == nil and
      ((not ok) or (not raw and c.bytes_in == 0 and socket_retryable(rerr)
                    and not find(tostring(rerr), "timeout", 1, true)))
    if stale and attempts == 1 then
      sock:close()
    else
      if not ok then
        sock:close()
        if why == "read" then
          return fail(tostring(serr), { retryable = false, kind = "read" })
        end
        return fail("sending the request: " .. tostring(serr),
                    { retryable = socket_retryable(serr), kind = "send" })
      end
      if not raw then
        sock:close()
        if rerr == "too long" then
          return fail("response header larger than " .. _M.MAX_HEADER_BYTES .. " bytes",
                      { retryable = false, kind = "header_size" })
        end
        if rerr == "closed" and c.bytes_in == 0 then
          return fail("empty reply from server", { retryable = true, kind = "read" })
        end
        return body_error(rerr, "response header")
      end
      local status, reason, version, headers = parse_head(raw)
      -- 1xx (100 Continue, 103 Early Hints): another head follows.
      while status and status < 200 do
        raw, rerr = read_until(c, "\r\n\r\n", _M.MAX_HEADER_BYTES)
        if not raw then
          sock:close()
          return body_error(rerr, "response header")
        end
        status, reason, version, headers = parse_head(raw)
      end
      if not status then
        sock:close()
        return fail("malformed response (not HTTP/1.x)",
                    { retryable = false, kind = "read" })
      end

      local to_file = req.download_file and status >= 200 and status < 300
      local s = { parts = {}, n = 0, len = 0, max = max_body, written = 0 }
      if to_file then
        local f, ferr = io_open(req.download_file, "ab")
        if not f then
          sock:close()
          return fail("download file: " .. tostring(ferr),
                      { retryable = false, kind = "file" })
        end
        s.file = f
      end

      local te = headers["transfer-encoding"]
      local cl = headers["content-length"]
      local keep = version == "1.1"
      local conn_hdr = headers["connection"]
      if conn_hdr and find(lower(conn_hdr), "close", 1, true) then keep = false end
      local rok, berr
      if method == "HEAD" or status == 204 or status == 304 then
        rok = true
      elseif te and find(lower(te), "chunked", 1, true) then
        rok, berr = read_chunked(c, s)
      elseif cl then
        -- Repeated identical values ("5, 5") are allowed, others are not.
        local n1 = match(cl, "^(%d+)")
        for v in gmatch(cl, "[^,%s]+") do
          if v ~= n1 then n1 = nil break end
        end
        if not n1 or #n1 > 15 then
          rok, berr = fail("bad Content-Length", { retryable = false, kind = "read" })
        else
          rok, berr = read_length(c, s, tonumber(n1))
        end
      else
        keep = false
        rok, berr = read_to_close(c, s)
      end
      if s.file then s.file:close() end
      if not rok then
        sock:close()
        return nil, berr
      end
      -- Bytes past the answer: the connection is out of step; not reused.
      if c.buf ~= "" then keep = false end
      if keep then
        sock:setkeepalive(self.keepalive_ms, self.pool_size)
      else
        sock:close()
      end
      return {
        status = status, reason = reason, headers = headers,
        body = concat(s.parts, "", 1, s.n),
        new_connections = c.reused and 0 or 1,
        written = to_file and s.written or nil,
      }
    end
  end
end

--- Send one request.
-- @tparam table req `method` (GET, HEAD, POST, PUT, PATCH, DELETE), `url`,
--   `headers` ({lower-case name = value}: a string or number, an array of
--   them for a repeated header, `false` to leave it out; anything else
--   raises), `body` (string), `timeout`,
--   `connect_timeout`, `max_body`, `follow_redirects` (default false),
--   `upload_file` (+ `upload_offset`, `upload_length`), `download_file`
--   (a 2xx body is appended to it; `res.body` is then "" and `res.written`
--   counts the bytes).
-- @return res `{ status=, reason=, headers=, body=, new_connections=,
--   written= }` | nil, msg, err (`gauth.errors`, module "http", step
--   "request", with `retryable` and `kind`: "connect", "tls", "tls_verify", "send",
--   "read", "timeout", "max_body", "header_size", "redirect", "file",
--   "phase")
function _M:request(req)
  local method, url, body, headers = check_request(req, MODULE)
  if req.upload_file ~= nil and (type(req.upload_file) ~= "string" or body ~= nil) then
    error("gauth.transport.ngx: upload_file must be a path, and excludes body", 2)
  end
  if not ngx_phase.can_yield() then
    return errors.fail("http", "request", "cosockets are not available in the " .. tostring(ngx.get_phase())
                .. " phase", { retryable = false, kind = "phase" })
  end

  local timeout = req.timeout or self.timeout
  local connect_timeout = req.connect_timeout or self.connect_timeout
  local max_body = req.max_body or self.max_body
  if max_body == 0 then max_body = math.huge end  -- 0: no cap, as libcurl
  update_time()
  local deadline = now() + (timeout > 0 and timeout or 1e9)
  local follow = req.follow_redirects
  local redirects = 0
  local new_conns = 0

  while true do
    local client = self.client
    local u, path = target_of(url, self.pool_size, client and client.tag)
    if not u then
      return errors.fail("http", "request", "unsupported or malformed URL", { retryable = false, kind = "url" })
    end
    local body_len
    if req.upload_file and body == nil then
      local f, len = open_upload(req)
      if not f then
        return errors.fail("http", "request", "upload file: " .. tostring(len), { retryable = false, kind = "file" })
      end
      f:close()
      body_len = len
    elseif body then
      body_len = #body
    elseif EMPTY_BODY[method] then
      body_len = 0
    end
    local p, perr = proxy_for(self.proxy, u.scheme, u.host)
    if perr then return errors.ret(perr) end
    local target, extra = path, nil
    if p and not u.https then
      -- Plain http through a proxy: the absolute form (RFC 9112 3.2.2).
      target = u.scheme .. "://" .. u.host_header .. path
      extra = p.auth and ("Proxy-Authorization: " .. p.auth .. "\r\n")
    end
    local head, bad = build_request(method, target, u.host_header, headers, body_len, extra)
    if not head then return common.bad_header_value(bad) end
    local res, err = exchange(self, method, u, head, body, req, deadline,
                              connect_timeout, max_body, p)
    if not res then return errors.ret(err) end
    new_conns = new_conns + res.new_connections
    local loc = res.headers.location
    if not (follow and REDIRECTS[res.status] and loc) then
      res.new_connections = new_conns
      return res
    end
    redirects = redirects + 1
    if redirects > _M.MAX_REDIRECTS then
      return errors.fail("http", "request", "more than " .. _M.MAX_REDIRECTS .. " redirects",
                  { retryable = false, kind = "redirect" })
    end
    local next_url = resolve_location(u, path, loc)
    local ns, nh, np = url_lib.parse(next_url)
    if not ns or (ns ~= "http" and ns ~= "https") then
      return errors.fail("http", "request", "redirect to an unsupported URL", { retryable = false, kind = "redirect" })
    end
    if u.https and ns ~= "https" then
      return errors.fail("http", "request", "redirect from https to http refused",
                  { retryable = false, kind = "redirect" })
    end
    -- As libcurl: 303 becomes GET; so do 301/302 after a POST.
    if (res.status == 303 and method ~= "HEAD")
        or ((res.status == 301 or res.status == 302) and method == "POST") then
      method, body = "GET", nil
      req = setmetatable({ upload_file = false }, { __index = req })
    end
    -- Credentials never follow to another origin.
    np = np or (ns == "https" and 443 or 80)
    if ns ~= u.scheme or lower(nh) ~= u.host or np ~= u.port then
      if headers and (headers.authorization or headers.Authorization) then
        local copy = {}
        for k, v in pairs(headers) do
          if lower(k) ~= "authorization" then copy[k] = v end
        end
        headers = copy
      end
    end
    url = next_url
  end
end

--- Nothing to release: connections belong to nginx's per-worker pool.
function _M.close(_)
  return true
end

mt.__tostring = function()
  return "gauth.transport.ngx"
end

return _M
