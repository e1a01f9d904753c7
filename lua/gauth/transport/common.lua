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
-- another control character: see `gauth.util.header_value_ok`; CR/LF would
-- let a value, a token from a server say, inject headers). It names the
-- header, never the value.
-- @return nil, msg, err
function _M.bad_header_value(name)
  return errors.fail("http", "request", "header " .. name
                     .. " has a value with CR, LF, NUL or another control character",
                     { retryable = false, header = name, kind = "header_value" })
end

return _M
