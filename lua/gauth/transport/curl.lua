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
-- CA bundle is `opts.ca_file`, else `SSL_CERT_FILE`, else `CURL_CA_BUNDLE`,
-- else the system store. Proxies come from libcurl's usual environment
-- variables (`https_proxy`, `no_proxy`, ...).
--
-- A transport object is not re-entrant: one request at a time (it blocks).
-- @module gauth.transport.curl

local core = require "gauth.core"
local errors = require "gauth.errors"
local common = require "gauth.transport.common"

local type = type
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local error = error
local find = string.find

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

_M.DEFAULT_TIMEOUT = common.DEFAULT_TIMEOUT
_M.DEFAULT_CONNECT_TIMEOUT = common.DEFAULT_CONNECT_TIMEOUT
_M.DEFAULT_MAX_BODY = common.DEFAULT_MAX_BODY

local MODULE = "gauth.transport.curl"
local check_request = common.check_request
local check_seconds = common.check_seconds
local check_bytes = common.check_bytes
local fail = common.fail
local HEADER_NAMES = common.HEADER_NAMES
local header_name = common.header_name

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

-- libcurl honours http_proxy/https_proxy; loopback and the metadata server
-- must never go through a proxy (a token or an assertion would leave the
-- machine, or the metadata answer would come from somewhere else). Setting
-- CURLOPT_NOPROXY replaces NO_PROXY, so the user's list is kept in front.
local NOPROXY
do
  local env = os.getenv("no_proxy") or os.getenv("NO_PROXY") or ""
  local direct = "localhost,127.0.0.1,::1,169.254.169.254,metadata.google.internal"
  if env == "*" then
    NOPROXY = "*"
  elseif env ~= "" then
    NOPROXY = env .. "," .. direct
  else
    NOPROXY = direct
  end
end
_M.NOPROXY = NOPROXY

--- Make a transport.
-- @tparam[opt] table opts `ca_file` (PEM bundle to trust instead of the
--   system store), `timeout` (s, default 30), `connect_timeout` (s,
--   default 10), `max_body` (bytes, default 64 MiB)
-- @return transport | nil, err
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
  local h, err = core.http_new()
  if not h then
    return nil, errors.wrap("http", "init", err)
  end
  return setmetatable({
    h = h,
    ca_file = opts.ca_file,
    timeout = opts.timeout or _M.DEFAULT_TIMEOUT,
    connect_timeout = opts.connect_timeout or _M.DEFAULT_CONNECT_TIMEOUT,
    max_body = opts.max_body or _M.DEFAULT_MAX_BODY,
    -- Reused for every request: one table less to allocate per call.
    -- (parse_headers: perform() gives the headers as a table.)
    copts = { parse_headers = true, noproxy = NOPROXY },
    hlist = {},
  }, mt)
end

--- Parse a raw header block ("HTTP/1.1 200 OK\r\nName: value\r\n...") into
-- lower-case name = value; repeated names are joined with ", ". (In C:
-- `request` has libcurl's answer parsed there directly, into the table.)
-- @return headers, reason phrase
function _M.parse_headers(block)
  if type(block) ~= "string" then
    error("gauth.transport.curl: parse_headers: block must be a string", 2)
  end
  return core.http_parse_headers(block)
end

-- "name: value" lines already made and checked, by name then value: the
-- same headers (accept, user-agent, a token until it is refreshed) go out
-- on request after request, so a lookup replaces a concatenation and a
-- scan for CR/LF. String values only (1 and 1.0 are one key but two
-- lines). Bounded: when full it starts again, so a new token is cached
-- as the old ones were.
local LINES, line_count = {}, 0
local LINES_MAX = 512

local function header_line(name, value)
  local byname = LINES[name]
  local line = byname and byname[value]
  if line then return line end
  if find(value, "[%z\r\n]") then return nil end
  line = name .. ": " .. value
  if line_count >= LINES_MAX then
    LINES, line_count = {}, 0
    byname = nil
  end
  if not byname then
    byname = {}
    LINES[name] = byname
  end
  byname[value] = line
  line_count = line_count + 1
  return line
end

--- Send one request.
-- @tparam table req `method` (GET, HEAD, POST, PUT, PATCH, DELETE), `url`,
--   `headers` ({lower-case name = value}; a value may be an array for a
--   repeated header), `body` (string), `timeout`, `connect_timeout`,
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
--   written= }` | nil, err (`gauth.errors`, module "http", step "request",
--   with `retryable` and `curl_code`)
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
  copts.ca_file = self.ca_file
  copts.follow = req.follow_redirects and true or false
  copts.upload_file = req.upload_file
  copts.upload_offset = req.upload_offset
  copts.upload_length = req.upload_length
  copts.download_file = req.download_file
  copts.accept_encoding = nil

  -- The "name: value" array is reused from request to request.
  local list, n, bad = self.hlist, 0, nil
  if headers ~= nil then
    for name, value in pairs(headers) do
      local lname = HEADER_NAMES[name] or header_name(name, MODULE, 3)
      local vt = type(value)
      if lname == "accept-encoding" then
        -- libcurl sends it and decodes what comes back.
        copts.accept_encoding = tostring(value)
      elseif lname == "content-length" then -- luacheck: ignore 542
        -- Always computed from the body (or the upload window): a stale
        -- value here would make the request unparseable.
      elseif vt == "string" then
        -- A CR or LF would let a value (a token from a server, say)
        -- inject headers: header_line gives nil for it.
        local byname = LINES[name]
        local line = byname and byname[value] or header_line(name, value)
        if not line then bad = name end
        n = n + 1
        list[n] = line or ""
      elseif vt == "number" then
        n = n + 1
        list[n] = name .. ": " .. value
      elseif vt == "table" then
        for i = 1, #value do
          local v = tostring(value[i])
          if find(v, "[%z\r\n]") then bad = name end
          n = n + 1
          list[n] = name .. ": " .. v
        end
      elseif vt ~= "boolean" or value then
        error("gauth.transport.curl: bad value for header " .. name, 2)
      end
      -- `false` leaves the header out.
    end
  end
  for i = n + 1, #list do list[i] = nil end
  if bad then return common.bad_header_value(bad) end

  local status, rheaders, rbody, conns, written, phrase =
    h:perform(method, url, list, body, copts)
  if not status then
    -- On failure perform() returns nil, message, curl code, reason tag.
    local code, reason = rbody, conns
    local fields = { retryable = RETRYABLE[code] == true, curl_code = code,
                     reason = reason }
    if reason == "max_body" then fields.too_large = true end
    return fail((rheaders:gsub("^gauth%.core: http: ", "")), fields)
  end

  local res = { status = status, reason = phrase, headers = rheaders,
                body = rbody, new_connections = conns, written = written }
  if copts.accept_encoding and rheaders["content-encoding"] then
    res.decoded = rheaders["content-encoding"]
    rheaders["content-encoding"] = nil
    rheaders["content-length"] = nil
  end
  return res
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
