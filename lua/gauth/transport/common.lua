--- What gauth's transports share (`gauth.transport.curl` and
-- `gauth.transport.ngx`): their defaults, the checks of `t:request(req)`'s
-- arguments and of header names, and their error. Internal to gauth.
--
-- These run on every request: locals only, no table made per call. Errors
-- name the calling transport (`module`, e.g. "gauth.transport.curl") and
-- are raised at the level the caller gives, so that their position stays
-- the one the transport always reported.
-- @module gauth.transport.common

local errors = require "gauth.errors"

local type = type
local tostring = tostring
local error = error
local find = string.find
local lower = string.lower
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

--- Seconds a whole request may take, by default.
_M.DEFAULT_TIMEOUT = 30
--- Seconds connecting may take, by default.
_M.DEFAULT_CONNECT_TIMEOUT = 10
--- Bytes of a response body kept in memory, by default (Google's JSON
-- answers are far smaller; media goes to files).
_M.DEFAULT_MAX_BODY = 64 * 1024 * 1024

--- The methods a transport sends.
_M.METHODS = { GET = true, HEAD = true, POST = true, PUT = true,
               PATCH = true, DELETE = true }
local METHODS = _M.METHODS

--- Raise "<module>: <name> must be a non-negative number" at `level`
-- (counted from this function) unless `v` is nil or such a number.
function _M.check_seconds(v, name, module, level)
  if v ~= nil and (type(v) ~= "number" or v < 0 or v ~= v) then
    error(module .. ": " .. name .. " must be a non-negative number", level)
  end
end
local check_seconds = _M.check_seconds

--- Raise "<module>: <name> must be a non-negative integer" at `level`
-- unless `v` is nil or such a number.
function _M.check_bytes(v, name, module, level)
  if v ~= nil and (type(v) ~= "number" or v < 0 or v % 1 ~= 0) then
    error(module .. ": " .. name .. " must be a non-negative integer", level)
  end
end
local check_bytes = _M.check_bytes

--- The error of a request that failed: module "http", step "request",
-- as the transports pass it between their own functions (their public
-- `request` returns `errors.ret(err)`: `nil, msg, err`).
-- @return nil, err
function _M.fail(message, fields)
  return nil, errors.new("http", "request", message, fields)
end

--- The environment variable naming the PEM file of CAs that libcurl
-- trusts (plain Lua and `init_by_lua`); nginx workers trust
-- `lua_ssl_trusted_certificate`, which must name the same file.
_M.CA_FILE_ENV = "GAUTH_CA_FILE"

--- `GAUTH_CA_FILE` when set and not empty, else nil.
function _M.env_ca_file()
  local v = os.getenv(_M.CA_FILE_ENV)
  if v == nil or v == "" then return nil end
  return v
end

--- The one error of a server certificate that does not verify, worded
-- alike on every transport (`kind` "tls_verify", not retryable).
-- @tparam string hostport "host:port"
-- @tparam string detail what the TLS library said
-- @return nil, err
function _M.tls_untrusted(hostport, detail)
  return _M.fail("TLS: the certificate of " .. hostport .. " is not trusted ("
    .. tostring(detail) .. "); give its CA to both transports, the same PEM"
    .. " file: GAUTH_CA_FILE (or ca_file) for libcurl (plain Lua, init_by_lua)"
    .. " and lua_ssl_trusted_certificate for nginx workers",
    { retryable = false, kind = "tls_verify" })
end

--- Read and check a client certificate and its key for mutual TLS
-- (`opts.client_cert`, `opts.client_key`: paths of PEM files), as both
-- transports take them. Both or neither; non-strings raise (at `level`).
-- The files must be readable, the certificate file must hold a PEM
-- certificate (a chain may follow it) and the key file one PEM private key
-- (unencrypted), as Google's libraries require of `certificate_config.json`'s
-- files. Nothing of the key's content ever reaches a message.
-- @return nil (no client certificate) | cert_pem, key_pem | nil, msg, err
--   (step "client_cert", `field` "client_cert" or "client_key", `kind` "config")
function _M.read_client_cert(opts, module, level)
  local cert, key = opts.client_cert, opts.client_key
  if cert == nil and key == nil then return nil end
  if (cert ~= nil and type(cert) ~= "string") or (key ~= nil and type(key) ~= "string") then
    error(module .. ": client_cert and client_key must be paths (strings)", level + 1)
  end
  local function bad(field, detail)
    return errors.fail("http", "client_cert", field .. ": " .. detail,
                       { retryable = false, field = field, kind = "config" })
  end
  if cert == nil then return bad("client_cert", "missing (client_key is given)") end
  if key == nil then return bad("client_key", "missing (client_cert is given)") end
  local pems = {}
  for i, pair in ipairs({ { "client_cert", cert }, { "client_key", key } }) do
    local f, ferr = io.open(pair[2], "rb")
    if not f then
      return bad(pair[1], "cannot read " .. tostring(ferr))
    end
    local data = f:read("*a") or ""
    f:close()
    pems[i] = data
  end
  if not find(pems[1], "-----BEGIN CERTIFICATE-----", 1, true) then
    return bad("client_cert", cert .. " holds no PEM certificate")
  end
  local k = pems[2]
  local _, nkeys = k:gsub("%-%-%-%-%-BEGIN [%u ]*PRIVATE KEY%-%-%-%-%-", "")
  if nkeys ~= 1 then
    return bad("client_key", key .. " must hold exactly one PEM private key")
  end
  if find(k, "ENCRYPTED", 1, true) then
    return bad("client_key", key .. " is encrypted (a passphrase cannot be given)")
  end
  return pems[1], pems[2]
end

--- The error of a TLS connection that the server closed because of the
-- client certificate (TLS alerts "certificate required", "unknown ca",
-- "bad certificate", ...), worded alike on every transport: `kind`
-- "tls_client_cert", not retryable.
-- @tparam string hostport "host:port"
-- @tparam string detail what the TLS library said
-- @tparam boolean have_cert whether a client certificate was sent
-- @return nil, err
function _M.tls_client_refused(hostport, detail, have_cert)
  return _M.fail("TLS: " .. hostport .. " refused the connection because of the client certificate ("
    .. (have_cert and "the one given is not accepted" or "none was given: set client_cert and client_key,"
        .. " or GOOGLE_API_USE_CLIENT_CERTIFICATE=true with certificate_config.json")
    .. "; " .. tostring(detail) .. ")", { retryable = false, kind = "tls_client_cert" })
end

--- Whether what the TLS library said is a TLS alert about the client
-- certificate.
function _M.is_client_cert_alert(detail)
  detail = lower(tostring(detail))
  return find(detail, "alert certificate required", 1, true) ~= nil
      or find(detail, "alert unknown ca", 1, true) ~= nil
      or find(detail, "alert bad certificate", 1, true) ~= nil
      or find(detail, "alert certificate unknown", 1, true) ~= nil
end

--- Check what every transport's `request(req)` checks first: `req` is a
-- table; `method` (default GET) one of `METHODS`; `url` a string; `body`
-- nil or a string; `headers` nil or a table; `timeout` and
-- `connect_timeout` non-negative numbers, `max_body` a non-negative
-- integer, where given. Raises "<module>: ..." at the caller of `request`.
-- @tparam table req
-- @tparam string module e.g. "gauth.transport.curl"
-- @return method, url, body, headers
function _M.check_request(req, module)
  if type(req) ~= "table" then
    error(module .. ": request must be a table", 3)
  end
  local method, url = req.method or "GET", req.url
  if not METHODS[method] then
    error(module .. ": unsupported method " .. tostring(method), 3)
  end
  if type(url) ~= "string" then
    error(module .. ": url must be a string", 3)
  end
  local body = req.body
  if body ~= nil and type(body) ~= "string" then
    error(module .. ": body must be a string", 3)
  end
  local headers = req.headers
  if headers ~= nil and type(headers) ~= "table" then
    error(module .. ": headers must be a table", 3)
  end
  check_seconds(req.timeout, "timeout", module, 4)
  check_seconds(req.connect_timeout, "connect_timeout", module, 4)
  check_bytes(req.max_body, "max_body", module, 4)
  return method, url, body, headers
end

--- Request header names already checked -> their lower-case form. Names
-- repeat from request to request, so a transport looks here first (a
-- table lookup instead of a pattern match and a new string) and calls
-- `header_name` only for a name it has not met. Bounded: ever new names
-- cannot grow it without limit.
_M.HEADER_NAMES = {}
local HEADER_NAMES, header_count = _M.HEADER_NAMES, 0
local HEADER_NAMES_MAX = 1024

--- The lower-case form of a request header name not in `HEADER_NAMES`
-- yet (it is added). Raises "<module>: bad header name ..." at `level`
-- (counted from this function) for a name that is not an HTTP token.
-- @return lower-case name
function _M.header_name(name, module, level)
  local lname = HEADER_NAMES[name]
  if lname then return lname end
  if type(name) ~= "string" or not find(name, "^[!#$%%&'*+.^_`|~%w-]+$") then
    error(module .. ": bad header name " .. tostring(name), level)
  end
  lname = lower(name)
  if header_count < HEADER_NAMES_MAX then
    HEADER_NAMES[name] = lname
    header_count = header_count + 1
  end
  return lname
end

--- The error for a header value that cannot be sent (CR, LF, NUL or
-- another control character: see `gauth.lib.http_header.value_ok`; CR/LF would
-- let a value, a token from a server say, inject headers). It names the
-- header, never the value.
-- @return nil, msg, err
function _M.bad_header_value(name)
  return errors.fail("http", "request", "header " .. name
                     .. " has a value with CR, LF, NUL or another control character",
                     { retryable = false, header = name, kind = "header_value" })
end

-- ------------------------------------------------------------------------
-- Proxies: one rule for both transports (libcurl gets the decision per
-- request, never reads the environment itself).

local sub, match, gsub, gmatch = string.sub, string.match, string.gsub, string.gmatch
local tonumber = tonumber

local function percent_decode(s)
  return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function proxy_error(field, detail)
  return errors.fail("http", "proxy", field .. ": " .. detail,
                     { retryable = false, kind = "proxy", field = field })
end

--- Parse a proxy URL: `[http://][user:password@]host[:port][/]`. Only
-- http proxies (the tunnel to an https target is made with CONNECT; TLS
-- inside TLS is beyond cosockets). No port: 80, the scheme's (as Google's
-- Python and Go libraries take it; curl's own default would be 1080).
-- The message names `field` (`proxy`, `https_proxy`, ...), never the
-- credentials.
-- @tparam string value
-- @tparam string field
-- @return proxy `{ url, host, port, addr, hostport, auth, shown, key }` | nil, msg, err
function _M.parse_proxy(value, field)
  local v = match(value, "^%s*(.-)%s*$")
  local scheme, rest = match(v, "^(%a[%w+.-]*)://(.*)$")
  if scheme then
    scheme = lower(scheme)
    if scheme ~= "http" then
      return proxy_error(field, "unsupported scheme " .. scheme
        .. " (gauth speaks to http:// proxies, with CONNECT for https targets)")
    end
  else
    rest = v
  end
  local authority, path = match(rest, "^([^/?#]*)(.*)$")
  if path ~= "" and path ~= "/" then
    return proxy_error(field, "a proxy URL has no path")
  end
  local userinfo, hostport = match(authority, "^(.*)@([^@]*)$")
  if not userinfo then hostport = authority end
  local host, port
  if sub(hostport, 1, 1) == "[" then
    host, port = match(hostport, "^(%[[%x:.]+%])(.*)$")
    if not host then return proxy_error(field, "malformed IPv6 address") end
  else
    host, port = match(hostport, "^([^:]*)(.*)$")
  end
  if host == "" then return proxy_error(field, "the proxy URL has no host") end
  if not find(host, "^%[") and not find(host, "^[%w][%w.-]*$") then
    return proxy_error(field, "the proxy host is not a host name or an address")
  end
  if port == "" then
    port = 80
  else
    port = tonumber(match(port, "^:(%d+)$"))
    if not port or port < 1 or port > 65535 then
      return proxy_error(field, "bad port")
    end
  end
  host = lower(host)
  local auth, key = nil, "http://" .. host .. ":" .. port
  if userinfo then
    local user, pass = match(userinfo, "^([^:]*):(.*)$")
    if not user then user, pass = userinfo, "" end
    auth = "Basic " .. require("gauth.core").b64_encode(percent_decode(user) .. ":"
                                                         .. percent_decode(pass))
    -- Pools and caches tell proxies apart by their credentials too, by
    -- a digest (the password is not kept in a pool's name).
    local core = require "gauth.core"
    key = key .. " " .. core.b64url_encode(core.sha256(auth))
  end
  local addr = host
  if sub(host, 1, 1) == "[" then
    addr = sub(host, 2, -2)
  elseif host == "localhost" then
    addr = "127.0.0.1"
  end
  return {
    -- for libcurl: the credentials as given (percent-encoded)
    url = "http://" .. (userinfo and (userinfo .. "@") or "") .. host .. ":" .. port,
    host = host, port = port, addr = addr, hostport = host .. ":" .. port,
    auth = auth,
    -- for messages and logs
    shown = "http://" .. host .. ":" .. port,
    key = key,
  }
end
local parse_proxy = _M.parse_proxy

-- Hosts that never go through a proxy: loopback (all of 127.0.0.0/8,
-- ::1, localhost and its subdomains) and the metadata server (a token or
-- an assertion would leave the machine, or the metadata answer would come
-- from elsewhere).
local DIRECT = { localhost = true, ["localhost."] = true, ["::1"] = true,
                 ["0:0:0:0:0:0:0:1"] = true, ["169.254.169.254"] = true,
                 ["metadata.google.internal"] = true, ["metadata.google.internal."] = true }
do
  for _, name in ipairs({ "GCE_METADATA_HOST", "GCE_METADATA_ROOT", "GCE_METADATA_IP" }) do
    local mh = os.getenv(name)
    if mh and mh ~= "" then
      mh = gsub(mh, "^%a+://", "")
      local h = match(mh, "^%[([^%]]*)%]") or match(mh, "^[^:/]*")
      if h and h ~= "" then DIRECT[lower(h)] = true end
    end
  end
end

--- Is `host` (a URL's host; IPv6 in brackets or not) never to be proxied?
function _M.is_direct_host(host)
  host = lower(host)
  if sub(host, 1, 1) == "[" then host = sub(host, 2, -2) end
  return DIRECT[host] == true or find(host, "^127%.%d+%.%d+%.%d+$") ~= nil
      or find(host, "%.localhost%.?$") ~= nil
end
local is_direct_host = _M.is_direct_host

local function ipv4(s)
  local a, b, c, d = match(s, "^(%d+)%.(%d+)%.(%d+)%.(%d+)$")
  if not a then return nil end
  a, b, c, d = tonumber(a), tonumber(b), tonumber(c), tonumber(d)
  if a > 255 or b > 255 or c > 255 or d > 255 then return nil end
  return ((a * 256 + b) * 256 + c) * 256 + d
end

--- Parse a no_proxy list (comma or blank separated): "*" (everything),
-- names (a leading "." or "*." optional: the name and its subdomains),
-- IPv4 addresses and CIDR ranges, IPv6 addresses; ports are ignored.
-- @return list (`all` set for "*")
function _M.parse_no_proxy(s)
  local list = {}
  for e in gmatch(s or "", "[^,%s]+") do
    e = lower(e)
    if e == "*" then
      list.all = true
    else
      e = gsub(e, "^%*%.", ".")
      local v6 = match(e, "^%[([^%]]*)%]")
      if v6 then
        list[#list + 1] = { name = v6 }
      elseif select(2, gsub(e, ":", "")) > 1 then
        list[#list + 1] = { name = e }
      else
        e = gsub(e, ":%d+$", "")
        local net, bits = match(e, "^([%d.]+)/(%d+)$")
        local n = net and ipv4(net)
        bits = tonumber(bits)
        if n and bits <= 32 then
          local size = 2 ^ (32 - bits)
          list[#list + 1] = { from = n - n % size, size = size }
        else
          list[#list + 1] = { name = gsub(e, "^%.", ""), dot = true }
        end
      end
    end
  end
  return list
end
local parse_no_proxy = _M.parse_no_proxy

--- Does `host` match the no_proxy `list`?
function _M.no_proxy_match(list, host)
  if not list then return false end
  if list.all then return true end
  host = lower(host)
  if sub(host, 1, 1) == "[" then host = sub(host, 2, -2) end
  host = gsub(host, "%.$", "")
  local n = ipv4(host)
  for i = 1, #list do
    local e = list[i]
    if e.size then
      if n and n >= e.from and n < e.from + e.size then return true end
    elseif host == e.name then
      return true
    elseif e.dot and sub(host, -(#e.name + 1)) == "." .. e.name then
      return true
    end
  end
  return false
end
local no_proxy_match = _M.no_proxy_match

local function env(name)
  local v = os.getenv(name)
  if v == nil or v == "" then return nil end
  return v, name
end

--- The proxy settings of a transport, from its options and the
-- environment. `opts.proxy`: a proxy URL for every request (the
-- environment's proxies are then not read), or `false` (or "") for none;
-- nil: `https_proxy`/`HTTPS_PROXY` for https URLs, `http_proxy` (lower
-- case only, as libcurl: HTTP_PROXY can be set by a CGI request's Proxy
-- header) for http URLs. `opts.no_proxy` (a no_proxy list) else
-- `no_proxy`/`NO_PROXY` for the environment's proxies; with `opts.proxy`
-- only `opts.no_proxy` applies (as Python's requests: an explicit proxy
-- is not undone by the environment). Loopback and the metadata server are
-- always direct. A bad `opts.proxy` fails here; a bad proxy variable fails
-- the requests that would use it, naming the variable.
-- @tparam table opts transport options
-- @tparam string module the transport, for argument errors
-- @return cfg | nil, msg, err
function _M.proxy_config(opts, module)
  local p, np = opts.proxy, opts.no_proxy
  if p ~= nil and p ~= false and type(p) ~= "string" then
    error(module .. ": proxy must be a string (a proxy URL) or false", 3)
  end
  if np ~= nil and type(np) ~= "string" then
    error(module .. ": no_proxy must be a string", 3)
  end
  local cfg = { routes = {}, n_routes = 0 }
  if p == false or p == "" then
    cfg.none = true
    return cfg
  end
  if p then
    local parsed, msg, err = parse_proxy(p, "proxy")
    if not parsed then return nil, msg, err end
    cfg.explicit = parsed
    cfg.no_proxy = np and parse_no_proxy(np)
    return cfg
  end
  local function from_env(...)
    local v, name
    for i = 1, select("#", ...) do
      v, name = env((select(i, ...)))
      if v then break end
    end
    if not v then return nil end
    local parsed, _, err = parse_proxy(v, name)
    return parsed or err
  end
  cfg.https = from_env("https_proxy", "HTTPS_PROXY")
  cfg.http = from_env("http_proxy")
  if cfg.https == nil and cfg.http == nil then
    cfg.none = true
    return cfg
  end
  cfg.no_proxy = parse_no_proxy(np or env("no_proxy") or env("NO_PROXY"))
  return cfg
end

--- The proxy for a request to `scheme://host`, or nil to go direct.
-- @tparam table cfg from `proxy_config`
-- @tparam string scheme "https" or "http"
-- @tparam string host the URL's host (an IPv6 address in brackets)
-- @return proxy | nil | nil, err (a proxy variable that does not parse)
function _M.proxy_for(cfg, scheme, host)
  if cfg.none then return nil end
  local key = scheme .. " " .. host
  local r = cfg.routes[key]
  if r == nil then
    if is_direct_host(host) or no_proxy_match(cfg.no_proxy, host) then
      r = false
    elseif cfg.explicit then
      r = cfg.explicit
    else
      r = (scheme == "https" and cfg.https or cfg.http) or false
    end
    if cfg.n_routes >= 256 then cfg.routes, cfg.n_routes = {}, 0 end
    cfg.routes[key] = r
    cfg.n_routes = cfg.n_routes + 1
  end
  if not r then return nil end
  if errors.is(r) then return nil, r end
  return r
end

return _M
