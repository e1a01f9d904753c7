--- The libcurl transport: blocking HTTP(S) over one kept-alive connection
-- per transport object (a `gauth.core` Http handle).
--
-- Every transport of gauth has the same interface (see ARCHITECTURE.md):
--
--     local t = assert(require("gauth.transport.curl").new{ timeout = 10 })
--     local res, err = t:request{ method = "GET", url = "https://...",
--                                 headers = { accept = "application/json" } }
--     -- res = { status = 200, reason = "OK", headers = { ["content-type"] = ... },
--     --         body = "...", new_connections = 0 }
--
-- Defaults: `timeout` 30 s (whole request), `connect_timeout` 10 s,
-- `max_body` 64 MiB (in memory; Google's JSON answers are far smaller and
-- media goes to files), redirects not followed. TLS is always verified; the
-- CA bundle is `opts.ca_file`, else `GAUTH_CA_FILE` (the one way to give
-- a CA to both transports: nginx workers' `lua_ssl_trusted_certificate`
-- names the same file), else `SSL_CERT_FILE`, else `CURL_CA_BUNDLE`, else
-- the system store. Proxies: `opts.proxy` / `opts.no_proxy`, else
-- `https_proxy`, `http_proxy`, `no_proxy` (see `gauth.transport.common`'s
-- `proxy_config`); loopback and the metadata server never go through one.
--
-- A transport object is not re-entrant: one request at a time (it blocks).
-- @module gauth.transport.curl

local core = require "gauth.core"
local errors = require "gauth.errors"
local common = require "gauth.transport.common"

local type = type
local tostring = tostring
local setmetatable = setmetatable
local error = error
local lower = string.lower
local match = string.match
local find = string.find
local byte = string.byte

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

_M.DEFAULT_TIMEOUT = common.DEFAULT_TIMEOUT
_M.DEFAULT_CONNECT_TIMEOUT = common.DEFAULT_CONNECT_TIMEOUT
_M.DEFAULT_MAX_BODY = common.DEFAULT_MAX_BODY

local MODULE = "gauth.transport.curl"
local check_request = common.check_request
local check_seconds = common.check_seconds
local check_bytes = common.check_bytes

-- libcurl codes after which a new attempt may well succeed: the request
-- did not get an answer because of the network or the peer, not because
-- of what was asked. (5/6: proxy/host not resolved, transient DNS; 7: could
-- not connect; 16/92: HTTP/2 framing or stream error; 18: transfer closed
-- early; 28: timeout; 35: TLS handshake failed at the socket level;
-- 52: empty reply; 55/56: send/receive failure, e.g. connection reset.)
-- Certificate failures (60, 77), bad URLs (3), max_body (23/63) are final.
local RETRYABLE = { [5] = true, [6] = true, [7] = true, [16] = true,
                    [18] = true, [28] = true, [35] = true, [52] = true,
                    [55] = true, [56] = true, [92] = true }

_M.RETRYABLE_CURL_CODES = RETRYABLE

-- The error's `kind` for a libcurl code, in the words the cosocket
-- transport uses for the same failures (one vocabulary for both; the code
-- itself stays in `curl_code`).
local KINDS = {
  [1] = "url", [3] = "url",
  [5] = "connect", [6] = "connect", [7] = "connect",
  [28] = "timeout",
  [35] = "tls", [58] = "tls", [59] = "tls", [66] = "tls", [83] = "tls",
  [51] = "tls_verify", [60] = "tls_verify", [77] = "tls_verify", [90] = "tls_verify",
  [91] = "tls_verify",
  [47] = "redirect",
  [55] = "send",
  [16] = "read", [18] = "read", [52] = "read", [56] = "read", [92] = "read",
  [26] = "file", [23] = "write",
}
_M.CURL_KINDS = KINDS

-- Proxies: gauth decides per request (gauth.transport.common: the same
-- rule as the cosocket transport) and gives libcurl the answer, the proxy
-- URL or "" (none): libcurl's own reading of the environment never
-- applies, nor its NO_PROXY (CURLOPT_NOPROXY is set to "" beside a proxy).
local proxy_for = common.proxy_for

--- Make a transport.
-- @tparam[opt] table opts `ca_file` (PEM bundle to trust instead of the
--   system store), `timeout` (s, default 30), `connect_timeout` (s,
--   default 10), `max_body` (bytes, default 64 MiB), `proxy` (an
--   `http://[user:password@]host[:port]` proxy for every request, or false
--   for none; default: the environment's), `no_proxy` (hosts that go direct),
--   `client_cert` and `client_key` (paths of PEM files: the client
--   certificate and its key, sent when a server asks for one: mutual TLS,
--   Google's mTLS endpoints)
-- @return transport | nil, msg, err (a `proxy` that does not parse: module
--   "http", step "proxy", `field` "proxy"; a client certificate or key that
--   cannot be read: step "client_cert", `field` naming the option)
function _M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then
    error("gauth.transport.curl: opts must be a table", 2)
  end
  if opts.ca_file ~= nil and type(opts.ca_file) ~= "string" then
    error("gauth.transport.curl: ca_file must be a string", 2)
  end
  check_seconds(opts.timeout, "timeout", MODULE, 3)
  check_seconds(opts.connect_timeout, "connect_timeout", MODULE, 3)
  check_bytes(opts.max_body, "max_body", MODULE, 3)
  local pcfg, pmsg, perr = common.proxy_config(opts, MODULE)
  if not pcfg then return nil, pmsg, perr end
  local cert_pem, key_pem, cerr = common.read_client_cert(opts, MODULE, 2)
  if cert_pem == nil and key_pem ~= nil then return nil, key_pem, cerr end
  local h, err = core.http_new()
  if not h then
    return errors.fail_with("http", "init", err)
  end
  return setmetatable({
    h = h,
    ca_file = opts.ca_file or common.env_ca_file(),
    timeout = opts.timeout or _M.DEFAULT_TIMEOUT,
    connect_timeout = opts.connect_timeout or _M.DEFAULT_CONNECT_TIMEOUT,
    max_body = opts.max_body or _M.DEFAULT_MAX_BODY,
    proxy = pcfg,
    -- Reused for every request: one table less to allocate per call. Every
    -- key is there from the start and never set to nil (false is "absent"
    -- to perform()): a key set to nil may be dropped when the table grows,
    -- and one added back on each request makes LuaJIT's compiled code
    -- leave its trace at that store, call after call.
    copts = { timeout = false, connect_timeout = false, max_body = false,
              ca_file = false, follow = false, noproxy = "", proxy = "",
              upload_file = false, upload_offset = false, upload_length = false,
              download_file = false,
              ssl_cert = cert_pem and opts.client_cert or false,
              ssl_key = cert_pem and opts.client_key or false },
    client_cert = cert_pem and opts.client_cert or nil,
    route_prefix = false,  -- see request(): the last URL's scheme://authority
    route_proxy = false,   -- and the proxy chosen for it (false: direct)
  }, mt)
end

--- Send one request.
-- @tparam table req `method` (GET, HEAD, POST, PUT, PATCH, DELETE), `url`,
--   `headers` ({lower-case name = value}: a string or number, an array of
--   them for a repeated header, `false` to leave it out; anything else
--   raises), `body` (string), `timeout`, `connect_timeout`,
--   `max_body`, `follow_redirects` (default false). Streaming (issue 6):
--   `upload_file` (+ `upload_offset`, `upload_length`) sends the body from a
--   file; `download_file` appends a 2xx body to a file (then `res.body` is
--   "" and `res.written` counts the bytes; an error body stays in memory;
--   after a failure mid-transfer the bytes received stay in the file, for a
--   ranged request to resume from its size). A `content-length` header is
--   ignored: libcurl computes it.
--   An `accept-encoding` header makes libcurl decode the body: the response
--   then has no `content-encoding`/`content-length` headers and
--   `res.decoded` names the coding that was removed.
-- @return res `{ status=, reason=, headers=, body=, new_connections=,
--   written=, decoded= }` | nil, msg, err (`gauth.errors`, module "http", step
--   "request", with `retryable`, `curl_code` and `kind`)
function _M:request(req)
  local method, url, body, headers = check_request(req, MODULE)
  local h = self.h
  if not h then
    error("gauth.transport.curl: the transport is closed", 2)
  end

  local copts = self.copts
  copts.timeout = req.timeout or self.timeout
  copts.connect_timeout = req.connect_timeout or self.connect_timeout
  copts.max_body = req.max_body or self.max_body
  copts.ca_file = self.ca_file or false
  copts.follow = req.follow_redirects and true or false
  copts.upload_file = req.upload_file or false
  copts.upload_offset = req.upload_offset or false
  copts.upload_length = req.upload_length or false
  copts.download_file = req.download_file or false
  -- The proxy decision of the last URL holds for this one when both
  -- start with the same `scheme://authority` (calls in a row go to one
  -- host): a prefix compare instead of four pattern matches per request.
  local proxy, same
  local rp = self.route_prefix
  if rp and find(url, rp, 1, true) == 1 then
    -- The authority ends where the prefix does only if a path, query,
    -- fragment or the end follows ("https://h:1" is not "https://h:12").
    local c = byte(url, #rp + 1)
    same = c == nil or c == 47 or c == 63 or c == 35
  end
  if same then
    proxy = self.route_proxy
  else
    local prefix, scheme, authority = match(url, "^((%a[%w+.-]*)://([^/?#]*))")
    if scheme then
      local hostport = match(authority, "@([^@]*)$") or authority
      local host = match(hostport, "^(%[[^%]]*%])") or match(hostport, "^[^:]*")
      local perr
      proxy, perr = proxy_for(self.proxy, lower(scheme), host)
      if perr then return errors.ret(perr) end
      self.route_prefix, self.route_proxy = prefix, proxy or false
    end
  end
  copts.proxy = proxy and proxy.url or ""

  -- The header table goes to C as it is: it is walked there, checked, and
  -- compared with the lines of the last request, which are kept while they
  -- stay the same (one walk, no string made per call). On success perform()
  -- returns the response table this function documents, made in C.
  local res, cmsg, info = h:perform(method, url, headers, body, copts)
  if res then return res end
  local code, kind = info.curl_code, info.kind
  if kind == "header_value" then
    -- A CR or LF would let a value (a token from a server, say) inject
    -- headers.
    return common.bad_header_value(info.header)
  elseif kind == "header_name" then
    error("gauth.transport.curl: bad header name " .. tostring(info.header), 2)
  elseif kind == "header_type" then
    error("gauth.transport.curl: bad value for header " .. tostring(info.header), 2)
  end
  local msg = (cmsg:gsub("^gauth%.core: http: ", ""))
  if (code == 56 or code == 35 or code == 55) and common.is_client_cert_alert(msg) then
    -- With TLS 1.3 the server judges the client certificate after the
    -- handshake: its alert arrives when the answer is read.
    local _, err = common.tls_client_refused(url:match("^%a+://([^/?#]+)") or url, msg,
                                             self.client_cert ~= nil)
    err.curl_code = code
    return errors.ret(err)
  end
  if code == 60 or code == 51 then
    -- CURLE_PEER_FAILED_VERIFICATION: worded as the cosocket transport does.
    local _, err = common.tls_untrusted(url:match("^%a+://([^/?#]+)") or url, msg)
    err.curl_code = code
    return errors.ret(err)
  end
  local fields = { retryable = RETRYABLE[code] == true, curl_code = code,
                   kind = kind or KINDS[code] or "other", proxy = proxy and proxy.shown }
  if proxy and (code == 5 or (code == 56 and find(msg, "CONNECT", 1, true))) then
    -- The proxy could not be found, or refused the tunnel (403, 407):
    -- asking again will not change its mind.
    fields.kind, fields.retryable = "proxy", code == 5
    msg = msg .. " (proxy " .. proxy.shown .. ")"
  elseif proxy and code == 7 then
    msg = msg .. " (proxy " .. proxy.shown .. ")"
  end
  if kind == "max_body" then fields.too_large = true end
  return errors.fail("http", "request", msg, fields)
end

--- Close the connection now (the garbage collector would do it later).
function _M:close()
  local h = self.h
  if h then
    self.h = nil
    h:close()
  end
  return true
end

mt.__tostring = function(self)
  return "gauth.transport.curl: " .. (self.h and tostring(self.h) or "closed")
end

return _M
