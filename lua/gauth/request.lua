--- The one send loop of gauth: every authorized HTTP exchange with a
-- Google API (Discovery methods, `gauth.session`, media, batch) goes
-- through `send`, so the rules below exist once:
--
-- 1. Credentials (a bearer token, an API key) go only to https URLs or to
--    a loopback host; any other URL is refused before anything is
--    connected (`kind` "insecure_url").
-- 2. `check(op)` (the caller's, optional) runs once before any credentials
--    are asked for: Discovery's universe check.
-- 3. Each attempt asks the credentials for their headers (`apply`); a
--    failure to get a token is final: the credentials' own token request
--    retried already, and under nginx the failure is remembered for all
--    workers, so it is returned with `token_failed` and never retried here.
-- 4. A 401 answer drops the token (`invalidate`) and the exchange is sent
--    once more at once, once per call (as Python's `AuthorizedSession`
--    with `max_refresh_attempts=1` and googleapiclient do; an API key,
--    which `invalidate` leaves as it is, is sent once more the same way).
-- 5. Whether a failure is worth another attempt is `gauth.errors.classify`
--    (408, 429, 5xx, 403 rate limits, transport failures marked retryable),
--    through `gauth.retry.call` (backoff with jitter, `Retry-After`). By
--    default idempotent methods (`IDEMPOTENT`) get `DEFAULT_RETRIES`
--    retries, other methods none.
-- 6. One deadline (`op.deadline`, seconds) covers the whole call: token
--    fetches, every attempt and every pause between them.
--
-- The credentials' own token requests (`gauth.token_request`: token
-- endpoints, STS, IAM Credentials) go through it too: with no credentials
-- to apply (the request carries its own secret), or with the source
-- credentials applied (IAM); with their retry policy (`op.policy`) and
-- their reading of a refusal (`op.refusal`).
--
-- What an answer becomes: with `op.decode`, a 2xx answer is
-- `decode(op, res)` and any other is an error (`op.refusal(op, res)`, else
-- `gauth.errors.from_response`: Discovery's `execute`);
-- without it, any answer is returned as the response, except a retryable
-- one while retries remain, and one still retryable when they run out
-- (an exhausted call is an error, with the last answer's `status` and
-- `body`): `gauth.session`, media.
-- @module gauth.request

local errors = require "gauth.errors"
local ngx_phase = require "gauth.lib.ngx_phase"
local time = require "gauth.lib.time"
local url_lib = require "gauth.lib.url"
local metrics = require "gauth.metrics"

local type = type
local require = require
local pairs = pairs
local io_open = io.open

local from_response = errors.from_response
local wrap = errors.wrap
local redact = errors.redact_uri
local pair = errors.pair
local is_error = errors.is
local ret = errors.ret
local nonblocking_phase = ngx_phase.nonblocking
local api_request = metrics.api_request
local host_of = metrics.host_of

local _M = { _VERSION = "0.1.0" }

--- Methods retried by default: those whose repeat has the effect of one
-- call (repeating a DELETE that went through gives a 404, never a second
-- deletion). POST and PATCH are retried only when asked for.
_M.IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true }

--- Retries after the first attempt for an idempotent method, by default.
_M.DEFAULT_RETRIES = 3

local retry_call, within, retry_deadline  -- gauth.retry's, loaded at first use

local find = string.find

--- May credentials (a bearer token, an API key) go to `url`? Only over
-- https, or over plain http to a loopback host (local emulators, tests);
-- whatever a Discovery document's rootUrl or a caller says. The one check,
-- made by `send` for every request that carries credentials.
-- @tparam string url
-- @tparam string module the module of the error, e.g. "discovery"
-- @tparam string step its step, e.g. the method id
-- @return true | nil, msg, err (`gauth.errors`, `kind` = "insecure_url",
--   `retryable` = false, `uri` redacted)
local function check_credentials_url(url, module, step)
  if find(url, "^https://") then return true end
  local scheme, host = url_lib.parse(url)
  if scheme == "https" or (scheme == "http" and url_lib.is_loopback_host(host)) then
    return true
  end
  return errors.fail(module, step, "refusing to send credentials to "
    .. tostring(host or scheme or "this URL") .. " over "
    .. tostring(scheme or "a non-http(s) URL")
    .. " (https is required except for a loopback host)",
    { kind = "insecure_url", retryable = false, uri = redact(url) })
end
_M.check_credentials_url = check_credentials_url

-- Less time than this is no attempt: too short for a TLS handshake, and a
-- timeout that rounds to 0 ms is no timeout at all to libcurl.
local MIN_ATTEMPT = 0.05

-- One exchange: credentials, the transport, the 401 step, what the answer
-- becomes. Fails with `nil, err` (the object); `send` gives the public
-- shape. `remaining`: seconds left before the deadline, if any.
local function attempt(op, remaining)
  local creds = op.credentials
  local h = op.headers
  if creds then
    local ok, err = pair(creds:apply(h))
    if not ok then
      local step = op.apply_step
      if step then
        -- A token request's source credentials (IAM): their error under
        -- the step the caller names, final (the source retried already).
        return nil, wrap(op.module, step, err, { retryable = false, token_failed = true })
      end
      return nil, wrap(op.module, op.step, err, { uri = redact(op.url), token_failed = true })
    end
    if op.deadline then
      -- The token may have taken some of the time: what is left is the
      -- deadline's, not the figure the retry loop computed before.
      local dl = retry_deadline()
      if dl then remaining = dl - time.now() end
    end
  end
  local timeout = op.timeout
  if remaining then
    if remaining < MIN_ATTEMPT then
      -- No time left (the token took it): nothing is sent.
      return nil, errors.new(op.module, op.step, "the deadline passed before the request was sent",
                             { kind = "timeout", retryable = false, uri = redact(op.url) })
    end
    if not timeout then
      -- The transport's own timeout still bounds an attempt: the deadline
      -- only shortens it.
      local ht = op.http.timeout
      if type(ht) == "number" then timeout = ht end
    end
    if not timeout or remaining < timeout then timeout = remaining end
  end
  local url = op.url
  if op.fresh_download then
    -- Each attempt writes the whole answer: a failed one leaves nothing.
    local f = io_open(op.download_file, "wb")
    if f then f:close() end
  end
  -- The op is the transport's request (its fields have the transport's
  -- names): one table less per call, unless a deadline shortened this
  -- attempt's timeout.
  local treq = op
  if timeout ~= op.timeout then
    treq = { method = op.method, url = url, headers = h, body = op.body, timeout = timeout,
             upload_file = op.upload_file, upload_offset = op.upload_offset,
             upload_length = op.upload_length, download_file = op.download_file,
             max_body = op.max_body, follow_redirects = op.follow_redirects }
  end
  local res, err = pair(op.http:request(treq))
  local counted = op.metrics ~= false
  if not res then
    if counted then api_request(host_of(url), "error") end
    return nil, wrap(op.module, op.step, err, { uri = redact(url) })
  end
  local status = res.status
  if counted then api_request(host_of(url), status) end
  if status == 401 and creds and not op.refreshed and creds.invalidate then
    op.refreshed = true
    creds:invalidate()
    return attempt(op, remaining)
  end
  local decode = op.decode
  if decode then
    if status >= 200 and status < 300 then return decode(op, res) end
    local refusal = op.refusal
    if refusal then return nil, refusal(op, res) end
    return nil, from_response(op.module, op.step, res, url)
  end
  if status >= 200 and status < 400 then return res end
  local e = from_response(op.module, op.step, res, url)
  -- While retries are allowed a retryable answer is a failure for the
  -- retry loop, and still one when they run out.
  if e.retryable and op.retries > 0 then return nil, e end
  return res
end

--- Is this failure of an exchange worth another attempt by a loop of the
-- caller's own (the resumable and ranged protocols of `gauth.media`)? A
-- gauth error that `errors.classify` made retryable, unless the token
-- could not be had (`token_failed`: retried already by the credentials).
-- @param err what a failed `send` gave as its error object
-- @treturn boolean
local function retryable(err)
  return is_error(err) and err.retryable == true and not err.token_failed
end
_M.retryable = retryable

-- The attempts after the first (or all of them, under a deadline).
local function with_retries(op, first_err)
  if not retry_call then retry_call = require("gauth.retry").call end
  local n = op.retries
  return retry_call(function(a, remaining)
    if a == 1 and first_err then return ret(first_err) end
    return attempt(op, remaining)
  end, {
    attempts = n + 1, deadline = op.deadline, sleep = op.sleep, random = op.random,
    on_retry = function()
      metrics.api_retry(host_of(op.url))
    end,
  })
end

-- Every attempt under the caller's own retry policy (`op.policy`: the
-- token requests' `gauth.token_request.RETRY`, with its deadline, seams
-- and hooks as `gauth.retry.call` takes them).
local function with_policy(op)
  if not retry_call then retry_call = require("gauth.retry").call end
  return retry_call(function(_, remaining)
    return attempt(op, remaining)
  end, op.policy)
end

-- The first attempt is made here, outside the retry loop: most calls need
-- no other. (No closure is made in this function: under LuaJIT a function
-- that makes one cannot be compiled through its returns.)
local function run(op)
  if op.policy then return with_policy(op) end
  local first_err
  local n = op.retries
  if op.deadline == nil or n == 0 then
    local res, err = attempt(op, op.deadline)
    if res ~= nil then return res end
    if n == 0 or not retryable(err) then
      return ret(err, op.module, op.step)
    end
    first_err = err
  end
  return with_retries(op, first_err)
end

--- Send one exchange through the loop.
-- @tparam table op the exchange; the table is the call's own (the loop
--   writes `refreshed` and credentials into `op.headers`):
--
-- * `module`, `step`: what errors name ("discovery", the method id)
-- * `http`: the transport (default `gauth.http.default()`)
-- * `method`, `url`, `headers` (a table the loop may write to), `body`,
--   `upload_file` (+ `upload_offset`, `upload_length`), `download_file`,
--   `fresh_download` (empty the file before each attempt), `max_body`
-- * `timeout`: seconds per attempt
-- * `credentials`: an object with `apply(headers)` (and `invalidate()`)
-- * `api_key`: true when the URL carries a key of its own (`?key=`): the
--   URL rule applies as for credentials
-- * `check`: `function(op)` -> true | nil, err, once before credentials
-- * `decode`: `function(op, res)` -> value | nil, err, for 2xx answers
--   (then every other answer is an error)
-- * `refusal`: `function(op, res)` -> err, the error of an answer other
--   than 2xx when there is `decode` (default `errors.from_response`)
-- * `retries`: retries after the first attempt (default: `DEFAULT_RETRIES`
--   for `IDEMPOTENT` methods, else 0)
-- * `policy`: a whole `gauth.retry` policy instead of `retries` (and of
--   `deadline`, `sleep`, `random`: the policy's own), for the token requests
-- * `apply_step`: the step of the error when the credentials cannot be
--   applied, which is then final (`retryable` false) and keeps the cause's
--   `uri` (a token request's source credentials)
-- * `follow_redirects`: for the transport (false by default)
-- * `metrics`: false to leave the exchange out of `gauth_api_requests_total`
--   (token requests are counted as token exchanges)
-- * `deadline`: seconds for the whole call
-- * `sleep`, `random`: test seams for the pauses (`gauth.retry`)
-- @return the response (`{ status, headers, body, ... }`) or what `decode`
--   made | nil, msg, err (`gauth.errors`, module and step of `op`: a
--   refused URL (`kind` "insecure_url"), a token failure (`token_failed`),
--   a transport failure (`kind`), an answer `decode` refused or retries
--   that ran out (`status`, `body`, `attempts`); in an nginx phase without
--   cosockets `kind` "phase" at once)
function _M.send(op)
  local phase = nonblocking_phase()
  if phase then
    return errors.fail(op.module, op.step, "cannot send a request: " .. ngx_phase.refusal(phase),
                       { retryable = true, kind = "phase", phase = phase, uri = redact(op.url) })
  end
  if op.credentials or op.api_key then
    -- Never a token or key in clear text to a remote host, whatever a
    -- document's rootUrl or a caller says.
    local ok, _, err = check_credentials_url(op.url, op.module, op.step)
    if not ok then return ret(err) end
  end
  local check = op.check
  if check then
    local ok, err = pair(check(op))
    if not ok then return ret(err, op.module, op.step) end
  end
  if not op.http then
    local http, err = pair(require("gauth.http").default())
    if not http then return errors.fail_with(op.module, op.step, err) end
    op.http = http
  end
  if op.retries == nil then
    op.retries = _M.IDEMPOTENT[op.method or "GET"] and _M.DEFAULT_RETRIES or 0
  end
  if op.headers == nil then op.headers = {} end
  local deadline = op.deadline
  if deadline then
    if not within then
      local retry = require "gauth.retry"
      within, retry_deadline = retry.within, retry.deadline
    end
    return within(deadline, run, op)
  end
  return run(op)
end

--- Copy a header table with lower-case names (so that a caller's
-- `Authorization` and the credentials' `authorization` are one header).
-- @tparam[opt] table headers
-- @treturn table
function _M.copy_headers(headers)
  local h = {}
  if headers then
    for k, v in pairs(headers) do
      if type(k) == "string" then k = k:lower() end
      h[k] = v
    end
  end
  return h
end

return _M
