--- Test doubles for code that uses gauth: transports that answer from a
-- list and record every request (as googleapiclient's `HttpMock` and
-- `HttpMockSequence`), and credentials with a fixed token.
--
--     local testing = require "gauth.testing"
--     local discovery = require "gauth.discovery"
--     local http = testing.http_sequence{
--       { status = 503 },
--       { status = 200, body = { items = {} } },   -- a table is sent as JSON
--     }
--     local svc = assert(discovery.build_from_document(doc, {
--       http = http, credentials = testing.credentials{ token = "t" } }))
--     local resp = assert(svc:instances():list({ project = "p" }):execute())
--     assert(#http.requests == 2)
--     assert(http.requests[2].headers.authorization == "Bearer t")
--
-- A response entry is a table: `status` (default 200), `headers` (names
-- are lower-cased), `reason`, and `body`: a string (sent as is), a table
-- (sent as its JSON), a function `body(req)` returning the string, or one
-- of googleapiclient's echo modes:
--
-- * `"echo_request_headers"`: the request's headers as text, one
--   `name: value` line each, sorted (googleapiclient answers with the
--   header dict itself; gauth's transports answer with strings);
-- * `"echo_request_headers_as_json"`: the request's headers as a JSON object;
-- * `"echo_request_body"`: the request's body (empty when it had none);
-- * `"echo_request_uri"`: the request's URL.
--
-- `file = path` reads the body from a file when the double is made (as
-- `HttpMock(filename)`). `error = "message"` (or a `gauth.errors` object)
-- makes the transport fail instead, as a real one does when it cannot
-- connect: `request` returns nil and the error (`retryable` from the entry,
-- default true).
-- @module gauth.testing

local errors = require "gauth.errors"
local json = require "gauth.lib.json"
local sys = require "gauth.lib.sys"
local time = require "gauth.lib.time"
local common = require "gauth.transport.common"
local REFRESH_WINDOW = require("gauth.token_cache").REFRESH_WINDOW

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local setmetatable = setmetatable
local floor = math.floor
local lower = string.lower
local format = string.format
local find = string.find
local sort = table.sort
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

local REASONS = {
  [200] = "OK", [201] = "Created", [204] = "No Content",
  [301] = "Moved Permanently", [302] = "Found", [304] = "Not Modified",
  [400] = "Bad Request", [401] = "Unauthorized", [403] = "Forbidden",
  [404] = "Not Found", [409] = "Conflict", [412] = "Precondition Failed",
  [429] = "Too Many Requests", [500] = "Internal Server Error",
  [502] = "Bad Gateway", [503] = "Service Unavailable", [504] = "Gateway Timeout",
}

local ECHO = {
  echo_request_headers = true, echo_request_headers_as_json = true,
  echo_request_body = true, echo_request_uri = true,
}

local function copy(t)
  local o = {}
  if t then
    for k, v in pairs(t) do o[k] = v end
  end
  return o
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t) do keys[#keys + 1] = tostring(k) end
  sort(keys)
  return keys
end

-- One response entry, checked and normalised when the double is made, so
-- that a mistake in a test shows at the line that made it.
local function entry_of(e, where)
  if type(e) ~= "table" then
    error(format("gauth.testing: %s: a response must be a table, got %s", where, type(e)), 4)
  end
  local n = {}
  if e.error ~= nil then
    if type(e.error) ~= "string" and not errors.is(e.error) then
      error(format("gauth.testing: %s: error must be a string or a gauth.errors object", where), 4)
    end
    n.error = e.error
    n.retryable = e.retryable
    if n.retryable == nil then n.retryable = true end
    return n
  end
  local status = e.status or 200
  if type(status) ~= "number" or status ~= floor(status) or status < 100 or status > 599 then
    error(format("gauth.testing: %s: status must be an integer from 100 to 599", where), 4)
  end
  n.status = status
  n.reason = e.reason or REASONS[status] or ""
  n.headers = {}
  if e.headers ~= nil then
    if type(e.headers) ~= "table" then
      error(format("gauth.testing: %s: headers must be a table", where), 4)
    end
    for k, v in pairs(e.headers) do
      if type(k) ~= "string" or (type(v) ~= "string" and type(v) ~= "number") then
        error(format("gauth.testing: %s: headers must map names to strings", where), 4)
      end
      n.headers[lower(k)] = tostring(v)
    end
  end
  local body = e.body
  if e.file ~= nil then
    if body ~= nil then
      error(format("gauth.testing: %s: give body or file, not both", where), 4)
    end
    local data, err = sys.read_file(e.file)
    if not data then
      error(format("gauth.testing: %s: cannot read %s: %s", where, tostring(e.file),
                   tostring(err)), 4)
    end
    body = data
  end
  local tb = type(body)
  if body == nil then
    body = ""
  elseif tb == "table" then
    local text = json.encode(body)
    if not text then
      error(format("gauth.testing: %s: body table cannot be encoded as JSON", where), 4)
    end
    body = text
  elseif tb ~= "string" and tb ~= "function" then
    error(format("gauth.testing: %s: body must be a string, a table or a function", where), 4)
  end
  n.body = body
  return n
end

local function echo(mode, req)
  local h = req.headers or {}
  if mode == "echo_request_headers" then
    local lines = {}
    for _, k in ipairs(sorted_keys(h)) do lines[#lines + 1] = k .. ": " .. tostring(h[k]) end
    return concat(lines, "\r\n")
  elseif mode == "echo_request_headers_as_json" then
    return json.encode(copy(h))
  elseif mode == "echo_request_body" then
    return req.body or ""
  end
  return req.url  -- echo_request_uri
end

-- The response to `req` from a normalised entry: res | nil, err
local function respond(e, req)
  if e.error then
    local err = e.error
    if not errors.is(err) then
      err = errors.new("testing", "request", err, { retryable = e.retryable })
    end
    return errors.ret(err)
  end
  local body = e.body
  if ECHO[body] then
    body = echo(body, req)
  elseif type(body) == "function" then
    body = body(req)
    if type(body) ~= "string" then
      error("gauth.testing: a body function must return a string", 3)
    end
  end
  return { status = e.status, reason = e.reason, headers = copy(e.headers), body = body }
end

-- -------------------------------------------------------------------------
-- Transports

local mock_transport = {}
local mock_transport_mt = { __index = mock_transport }

mock_transport_mt.__tostring = function(self)
  return format("gauth.testing %s (%d requests)", self.kind, #self.requests)
end

-- What the transport interface promises a transport, checked as the real
-- transports check it (the same cases, spec/support/transport_cases.lua),
-- so that code under test that breaks it fails here rather than against
-- libcurl or nginx: these raise at the caller of `request`.
local REQUEST = "gauth.testing: request"
local function check_request(req)
  if type(req) ~= "table" then
    error(REQUEST .. ": the request must be a table, got " .. type(req), 3)
  end
  if type(req.url) ~= "string" or req.url == "" then
    error(REQUEST .. ": req.url must be a non-empty string", 3)
  end
  -- method, body, headers, timeout, connect_timeout, max_body: level 3 of
  -- common.check_request is its caller's caller, so one frame more here.
  local ok, msg = pcall(common.check_request, req, REQUEST)
  if not ok then error((tostring(msg):gsub("^[^:]-:%d+: ", "")), 3) end
end

-- The header names and values a transport can send: names are HTTP tokens,
-- values strings, numbers, false (left out) or arrays of strings and
-- numbers (raise otherwise, at the caller of `request`). Returns the name
-- of a header whose value holds CR, LF or NUL (an error, not a raise, as
-- on the real transports), or nil.
local function check_headers(headers)
  if not headers then return nil end
  local bad
  for name, value in pairs(headers) do
    -- level 4: past header_name, this function and request
    common.header_name(name, REQUEST, 4)
    local vt = type(value)
    local values
    if vt == "table" then
      values = value
    elseif vt == "string" or vt == "number" then
      values = { value }
    elseif vt ~= "boolean" or value then
      error(REQUEST .. ": bad value for header " .. name, 3)
    end
    for i = 1, values and #values or 0 do
      local v = values[i]
      local et = type(v)
      if et ~= "string" and et ~= "number" then
        error(REQUEST .. ": bad value for header " .. name, 3)
      end
      if et == "string" and find(v, "[\r\n%z]") then bad = bad or name end
    end
  end
  return bad
end

-- A copy of the request as it was when sent (callers may reuse theirs).
local function record(self, req)
  local r = copy(req)
  r.method = req.method or "GET"
  r.headers = copy(req.headers)
  local list = self.requests
  list[#list + 1] = r
  self.last_request = r
  return r
end

-- -------------------------------------------------------------------------
-- Credentials

local mock_credentials = { kind = "testing" }
local mock_credentials_mt = { __index = mock_credentials }

mock_credentials_mt.__tostring = function(self)
  -- Never the token: the same rule as real credentials.
  return "gauth.testing credentials" ..
    (self.quota_project and (" (quota project " .. self.quota_project .. ")") or "")
end

-- -------------------------------------------------------------------------
-- Making doubles

--- A transport that gives every request the same response.
-- @tparam[opt] table response `{ status=, headers=, body=, file=, reason= }`
--   or `{ error=, retryable= }` (see the module's description); default an
--   empty 200
-- @return the transport, with `requests` (every request, oldest first) and
--   `last_request`
function _M.http_mock(response)
  local e = entry_of(response or {}, "http_mock")
  return setmetatable({ kind = "http_mock", entry = e, requests = {} }, mock_transport_mt)
end

--- A transport that answers requests with `responses` in turn; one more
-- request than there are responses raises an error (a test that sends more
-- than it expected).
-- @tparam table responses array of response entries (as for `http_mock`)
-- @return the transport, with `requests`, `last_request` and `remaining()`
function _M.http_sequence(responses)
  if type(responses) ~= "table" then
    error("gauth.testing: http_sequence: responses must be an array of tables", 2)
  end
  local entries = {}
  for i, r in ipairs(responses) do
    entries[i] = entry_of(r, "http_sequence[" .. i .. "]")
  end
  return setmetatable({ kind = "http_sequence", entries = entries, position = 0,
                        requests = {} }, mock_transport_mt)
end

--- Credentials that need no token endpoint: `token()` gives a fixed token.
-- @tparam[opt] table opts `token` (string, default "test-token"; or an
--   array of strings: each `invalidate()` moves to the next, as a refresh
--   after a 401 would), `expires_at` (epoch seconds; default an hour from
--   now), `quota_project`, `error` (a message or `gauth.errors` object:
--   `token()` and `apply()` fail with it), `requires_scopes` (boolean,
--   default false: what `gauth.discovery` asks before applying an API's
--   scopes)
-- @return credentials with `token`, `apply`, `valid`, `expired`,
--   `invalidate`, `with_scopes`, `requires_scopes`, and counters
--   `token_calls`, `invalidations`
function _M.credentials(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.testing: credentials: opts must be a table", 2)
  end
  opts = opts or {}
  local tokens = opts.token or "test-token"
  if type(tokens) == "string" then tokens = { tokens } end
  if type(tokens) ~= "table" or #tokens == 0 then
    error("gauth.testing: credentials: token must be a string or an array of strings", 2)
  end
  for i, t in ipairs(tokens) do
    if type(t) ~= "string" or t == "" then
      error("gauth.testing: credentials: token[" .. i .. "] must be a non-empty string", 2)
    end
  end
  if opts.error ~= nil and type(opts.error) ~= "string" and not errors.is(opts.error) then
    error("gauth.testing: credentials: error must be a string or a gauth.errors object", 2)
  end
  if opts.quota_project ~= nil and (type(opts.quota_project) ~= "string" or opts.quota_project == "") then
    error("gauth.testing: credentials: quota_project must be a non-empty string", 2)
  end
  return setmetatable({
    tokens = copy(tokens), index = 1,
    expires_at = opts.expires_at,
    quota_project = opts.quota_project,
    error = opts.error,
    _requires_scopes = opts.requires_scopes == true,
    scopes = opts.scopes,
    token_calls = 0, invalidations = 0,
  }, mock_credentials_mt)
end

--- The transport doubles that `http_mock` and `http_sequence` make: the
-- transport interface (`request`, `close`), and what they recorded.
-- @type mock_transport
-- @field requests every request, oldest first (copies: method, url,
--   headers, body, timeout, ...)
-- @field last_request the latest of them

--- Answer a request (the transport interface: see ARCHITECTURE.md).
-- Records a copy of it in `requests` (and `last_request`) first.
-- @tparam table req `{ method=, url=, headers=, body=, ... }`
-- @return `{ status=, reason=, headers=, body= }` | nil, msg, err; raises when
-- a sequence has no response left
function mock_transport:request(req)
  check_request(req)
  local bad = check_headers(req.headers)
  -- Refused before it is sent, as the real transports do: not recorded.
  if bad then return common.bad_header_value(bad) end
  local r = record(self, req)
  local e
  if self.kind == "http_mock" then
    e = self.entry
  else
    local i = self.position + 1
    e = self.entries[i]
    if not e then
      error(format("gauth.testing: http_sequence: request %d (%s %s) but the sequence "
        .. "has %d response%s", #self.requests, r.method, tostring(req.url),
        #self.entries, #self.entries == 1 and "" or "s"), 2)
    end
    self.position = i
  end
  return respond(e, r)
end

--- How many responses a sequence has not given yet (`http_mock`: always
-- math.huge).
function mock_transport:remaining()
  if self.kind == "http_mock" then return math.huge end
  return #self.entries - self.position
end

--- Transports have `close()`; this one only notes it was called.
-- @return true
function mock_transport:close()
  self.closed = true
  return true
end

--- The credentials double that `credentials` makes: the credentials
-- interface, and counters for assertions.
-- @type mock_credentials
-- @field token_calls how many times `token()` (or `apply()`) ran
-- @field invalidations how many times `invalidate()` ran
-- @field scopes what `with_scopes` was given (on the copy it made)

--- The current token.
-- @return token, expires_at | nil, msg, err
function mock_credentials:token()
  self.token_calls = self.token_calls + 1
  local err = self.error
  if err then
    if not errors.is(err) then err = errors.new("testing", "token", err) end
    return errors.ret(err)
  end
  local i = self.index
  if i > #self.tokens then i = #self.tokens end
  return self.tokens[i], self.expires_at or (time.now() + 3600)
end

--- google-auth's `expired`, as real credentials answer it: `expires_at`
-- is within the refresh window (3 min 45 s) or past (never with the
-- default `expires_at`, an hour from each `token()`).
-- @return boolean
function mock_credentials:expired()
  local exp = self.expires_at
  if exp == nil then return false end
  return time.now() >= exp - REFRESH_WINDOW
end

--- google-auth's `valid`: a token to hand out (no `error`) that is not
-- `expired()`.
-- @return boolean
function mock_credentials:valid()
  if self.error then return false end
  return not self:expired()
end

--- Set `authorization` (and `x-goog-user-project`) as real credentials do.
-- @tparam[opt] table headers changed in place (a new table when nil)
-- @return headers | nil, msg, err
function mock_credentials:apply(headers)
  if headers == nil then
    headers = {}
  elseif type(headers) ~= "table" then
    error("gauth.testing: apply: headers must be a table", 2)
  end
  local tok, msg, err = self:token()
  if not tok then return nil, msg, err end
  headers.authorization = "Bearer " .. tok
  if self.quota_project then headers["x-goog-user-project"] = self.quota_project end
  return headers
end

--- Count the call and move to the next token of the list (if any).
-- @return true
function mock_credentials:invalidate()
  self.invalidations = self.invalidations + 1
  self.index = self.index + 1
  return true
end

--- Do these credentials want an API's scopes? (`opts.requires_scopes`)
function mock_credentials:requires_scopes()
  return self._requires_scopes
end

--- A copy that records `scopes` (in its `scopes` field).
function mock_credentials:with_scopes(scopes)
  local o = copy(self)
  o.tokens = copy(self.tokens)
  o.scopes = scopes
  o._requires_scopes = false
  return setmetatable(o, mock_credentials_mt)
end

return _M
