--- Authorized requests to any Google URL, like Python's
-- `google.auth.transport.requests.AuthorizedSession`: Cloud Run and Cloud
-- Functions services, IAP-protected apps, Cloud Storage's XML API,
-- Firebase and Gemini REST endpoints.
--
--     local session = require("gauth.session")
--     local s = assert(session.new(creds))
--     local res, msg, err = s:request{ method = "GET",
--                                      url = "https://storage.googleapis.com/b/o" }
--     -- res = { status = 200, headers = { ... }, body = "..." }
--
-- Every request goes through `gauth.request`, the loop Discovery methods
-- use: credentials only to https or loopback URLs, one refresh and retry
-- on 401, retries of idempotent methods (GET, HEAD, PUT, DELETE) on 408,
-- 429 and 5xx with backoff and `Retry-After`, one deadline for the whole
-- call, token fetch included. Both transports: libcurl, and cosockets
-- inside nginx (any phase that can yield).
--
-- Any HTTP answer is a response (a 404 is not an error, as in Python);
-- `nil, msg, err` comes only for a transport failure, a refused URL, a
-- failure to get a token, and retries that ran out (then `err.status` and
-- `err.body` are the last answer's).
-- @module gauth.session

local request = require "gauth.request"
local errors = require "gauth.errors"

local type = type
local error = error
local pairs = pairs
local tostring = tostring
local setmetatable = setmetatable
local send = request.send
local copy_headers = request.copy_headers
local upper = string.upper
local METHODS = require("gauth.transport.common").METHODS

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

local USER_AGENT = "gauth/" .. _M._VERSION

-- Options of the transport the session makes when any is given.
local TRANSPORT_OPTS = { "ca_file", "connect_timeout", "max_body", "proxy", "no_proxy",
                         "client_cert", "client_key" }

local function check_seconds(v, name, fname)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v <= 0 or v == math.huge) then
    error("gauth.session: " .. fname .. ": " .. name .. " must be a positive number of seconds", 3)
  end
end

-- `retry`: nil, false or { attempts = n >= 1, deadline = seconds }.
local function check_retry(v, name, fname)
  if v == nil or v == false then return end
  if type(v) ~= "table" then
    error("gauth.session: " .. fname .. ": " .. name .. " must be false or a table", 3)
  end
  for k in pairs(v) do
    if k ~= "attempts" and k ~= "deadline" then
      error("gauth.session: " .. fname .. ": " .. name .. "." .. tostring(k)
            .. " is not an option (attempts, deadline)", 3)
    end
  end
  local a = v.attempts
  if a ~= nil and (type(a) ~= "number" or a < 1 or a ~= a or a % 1 ~= 0) then
    error("gauth.session: " .. fname .. ": " .. name .. ".attempts must be an integer >= 1", 3)
  end
  check_seconds(v.deadline, name .. ".deadline", fname)
end

--- Make a session.
-- @tparam table creds credentials: any gauth credentials object (with
--   `apply(headers)`; `invalidate()` for the refresh on 401), an API key
--   from `gauth.api_key` included (sent as `x-goog-api-key`)
-- @tparam[opt] table opts `http` (a transport; default the process-wide
--   one), or transport options for a transport of the session's own:
--   `ca_file`, `connect_timeout`, `max_body`, `proxy`, `no_proxy`,
--   `client_cert` + `client_key` (mutual TLS); `timeout` (seconds per
--   attempt), `retry` (the default for requests: see `request`),
--   `testing` (`sleep`, `random`: seams for the pauses between retries)
-- @return session | nil, msg, err (module "session", step "new": a
--   transport option the transport refuses, such as a proxy URL without a
--   host)
function _M.new(creds, opts)
  if type(creds) ~= "table" or type(creds.apply) ~= "function" then
    error("gauth.session: new: creds must be a credentials object (with apply)", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.session: new: opts must be a table", 2)
  end
  opts = opts or {}
  check_seconds(opts.timeout, "opts.timeout", "new")
  check_retry(opts.retry, "opts.retry", "new")
  local testing = opts.testing
  if testing ~= nil and type(testing) ~= "table" then
    error("gauth.session: new: opts.testing must be a table", 2)
  end
  local http = opts.http
  if http ~= nil and (type(http) ~= "table" or type(http.request) ~= "function") then
    error("gauth.session: new: opts.http must be a transport (with request)", 2)
  end
  local topts
  for _, k in pairs(TRANSPORT_OPTS) do
    if opts[k] ~= nil then
      topts = topts or {}
      topts[k] = opts[k]
    end
  end
  if topts then
    if http then
      error("gauth.session: new: opts.http and transport options (" .. TRANSPORT_OPTS[1]
            .. ", proxy, ...) together", 2)
    end
    local t, msg, err = require("gauth.http").new(topts)
    if not t then
      return errors.fail_with("session", "new", err or msg)
    end
    http = t
  end
  return setmetatable({
    credentials = creds, http = http, timeout = opts.timeout, retry = opts.retry,
    sleep = testing and testing.sleep, random = testing and testing.random,
  }, mt)
end

--- Send one request with the session's credentials.
-- @tparam table req `method` (default "GET"; GET, HEAD, POST, PUT, PATCH,
--   DELETE), `url`, `headers` (names in any case; a `user-agent` is added
--   when absent), `body` (string), `timeout` (seconds per attempt; default
--   the session's, else the transport's), `retry` (false: one attempt; a
--   table `{ attempts = n, deadline = seconds }`: `attempts` counts the
--   first and applies to any method, POST included; without `attempts`
--   idempotent methods get 4 and others 1; `deadline` bounds the whole
--   call, token fetch and pauses included; default the session's),
--   `upload_file` (the body read from this file, streamed), `download_file`
--   (a 2xx body written to this file, replaced at each attempt; then
--   `res.body` is "" and `res.written` the bytes)
-- @return response `{ status, headers, body, reason, written }` for any
--   HTTP answer | nil, msg, err (`gauth.errors`, module "session", step
--   "request": `kind` "insecure_url" for credentials to plain http that is
--   not loopback (nothing connected), `token_failed` when no token came,
--   the transport's `kind` (connect, timeout, tls_verify, ...), or
--   `attempts` with the last answer's `status` and `body` when retries ran
--   out; inside nginx in a phase without cosockets, `kind` "phase")
function _M:request(req)
  if type(req) ~= "table" then
    error("gauth.session: request: req must be a table", 2)
  end
  local url = req.url
  if type(url) ~= "string" then
    error("gauth.session: request: req.url must be a string", 2)
  end
  local method = req.method or "GET"
  if type(method) == "string" then method = upper(method) end
  if not METHODS[method] then
    error("gauth.session: request: unsupported method " .. tostring(req.method), 2)
  end
  if req.body ~= nil and type(req.body) ~= "string" then
    error("gauth.session: request: req.body must be a string", 2)
  end
  if req.headers ~= nil and type(req.headers) ~= "table" then
    error("gauth.session: request: req.headers must be a table", 2)
  end
  for _, k in pairs({ "upload_file", "download_file" }) do
    if req[k] ~= nil and type(req[k]) ~= "string" then
      error("gauth.session: request: req." .. k .. " must be a path (string)", 2)
    end
  end
  if req.body ~= nil and req.upload_file ~= nil then
    error("gauth.session: request: req.body and req.upload_file together", 2)
  end
  check_seconds(req.timeout, "req.timeout", "request")
  check_retry(req.retry, "req.retry", "request")
  local retry = req.retry
  if retry == nil then retry = self.retry end
  local retries, deadline
  if retry == false then
    retries = 0
  elseif retry then
    retries = retry.attempts and retry.attempts - 1
    deadline = retry.deadline
  end
  local h = copy_headers(req.headers)
  if h["user-agent"] == nil then h["user-agent"] = USER_AGENT end
  return send({
    module = "session", step = "request", http = self.http,
    method = method, url = url, headers = h, body = req.body,
    upload_file = req.upload_file, download_file = req.download_file,
    fresh_download = req.download_file ~= nil,
    timeout = req.timeout or self.timeout, credentials = self.credentials,
    retries = retries, deadline = deadline, sleep = self.sleep, random = self.random,
  })
end

mt.__tostring = function(self)
  return "gauth.session (" .. tostring(self.credentials) .. ")"
end

return _M
