--- Retries with exponential backoff, jitter, Retry-After and a deadline.
--
--     local res, err = retry.call(function(attempt, remaining)
--       local res, err = http:request{ ..., timeout = remaining }
--       ...
--       return res  -- or nil, err (retried when err.retryable)
--     end, { attempts = 3, deadline = 60 })
--
-- Schedule: after failed attempt n the base delay is
-- `min(max_delay, initial * multiplier^(n-1))`: 1, 2, 4, ... s by default.
-- Jitter spreads clients that failed together so they do not come back
-- together:
--
-- * `jitter = true` or `"equal"` (default): a delay drawn uniformly from
--   [base/2, base]. Half the backoff is kept, so a struggling server really
--   gets a pause; the other half is random.
-- * `jitter = "full"`: uniformly from [0, base] (best spread under heavy
--   contention; sometimes retries almost at once).
-- * `jitter = false`: exactly `base` (tests, reproducible schedules).
--
-- An error's `retry_after` (seconds, from a Retry-After header: see
-- `parse_retry_after`) replaces the computed delay: the server knows
-- better. A delay that would end past the deadline is not slept: `call`
-- returns the last error at once, its message noting why it stopped (a
-- Retry-After longer than `max_delay` is treated the same way when there
-- is no deadline, rather than block for as long as a server asks).
-- @module gauth.retry

local errors = require "gauth.errors"

local type = type
local tostring = tostring
local tonumber = tonumber
local error = error
local ipairs = ipairs
local pairs = pairs
local floor = math.floor
local min = math.min
local lower = string.lower
local match = string.match
local format = string.format
local pcall = pcall
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }

-- A policy's test seams: under `policy.testing`, or (the old spelling,
-- still accepted) at its top level.
local SEAMS = { "sleep", "random", "now" }

_M.DEFAULTS = { attempts = 3, initial = 1, multiplier = 2, max_delay = 32,
                jitter = true }

--- A policy made of `base`'s fields (default `DEFAULTS`) and an
-- `opts.retry` as the modules that retry take it: nil keeps `base`, false
-- allows one attempt, a table's fields replace `base`'s. Always a new
-- table, so the caller may keep and change it.
-- @tparam[opt] table base
-- @param overrides nil, false or a table
-- @return policy | nil when `overrides` is none of these (the caller
--   raises, naming its own option)
function _M.policy(base, overrides)
  local p = {}
  for k, v in pairs(base or _M.DEFAULTS) do p[k] = v end
  if overrides == false then
    p.attempts = 1
  elseif overrides ~= nil then
    if type(overrides) ~= "table" then return nil end
    for k, v in pairs(overrides) do p[k] = v end
    -- The test seams grouped under `testing` (DECISIONS) over the old
    -- top-level spelling, which stays accepted.
    local t = overrides.testing
    if type(t) == "table" then
      for _, f in ipairs(SEAMS) do
        if t[f] ~= nil then p[f] = t[f] end
      end
    end
    p.testing = nil
  end
  return p
end

local classify = errors.classify

--- Is an HTTP status worth retrying by itself? (408, 429, every 5xx: the
-- status part of `gauth.errors.classify`, the one rule.)
function _M.is_retryable_status(status)
  return classify({ status = status })
end

local MONTHS = { jan = 1, feb = 2, mar = 3, apr = 4, may = 5, jun = 6,
                 jul = 7, aug = 8, sep = 9, oct = 10, nov = 11, dec = 12 }

--- Seconds since the epoch of a UTC civil time, as C's `timegm` (which
-- Lua cannot reach; `os.time` reads local time). The one calendar
-- conversion of gauth: HTTP-dates here (`parse_http_date`), RFC 3339
-- times in `gauth.impersonated`.
-- @tparam number y year
-- @tparam number mo month, 1-12
-- @tparam number d day, 1-31
-- @tparam number h hour, 0-23
-- @tparam number mi minute, 0-59
-- @tparam number s second, 0-60
-- @return seconds | nil when a field is out of range
local function utc_epoch(y, mo, d, h, mi, s)
  if mo < 1 or mo > 12 or d < 1 or d > 31 or h > 23 or mi > 59 or s > 60 then
    return nil
  end
  if mo <= 2 then y = y - 1 end
  local era = floor(y / 400)
  local yoe = y - era * 400
  local mp = (mo + 9) % 12
  local doy = floor((153 * mp + 2) / 5) + d - 1
  local doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy
  local days = era * 146097 + doe - 719468
  return days * 86400 + h * 3600 + mi * 60 + s
end
_M.utc_epoch = utc_epoch

--- Parse an HTTP-date (IMF-fixdate, or the obsolete RFC 850 and asctime
-- forms that RFC 9110 still asks recipients to accept).
-- @return seconds since the epoch | nil
function _M.parse_http_date(value)
  if type(value) ~= "string" then return nil end
  local d, mon, y, h, mi, s =
    match(value, "^%a%a%a, (%d%d) (%a%a%a) (%d%d%d%d) (%d%d):(%d%d):(%d%d) GMT$")
  if not d then
    d, mon, y, h, mi, s =
      match(value, "^%a+, (%d%d)%-(%a%a%a)%-(%d%d) (%d%d):(%d%d):(%d%d) GMT$")
    if y then
      y = tonumber(y)
      y = y < 70 and 2000 + y or 1900 + y
    else
      mon, d, h, mi, s, y =
        match(value, "^%a%a%a (%a%a%a) +(%d%d?) (%d%d):(%d%d):(%d%d) (%d%d%d%d)$")
    end
  end
  if not d then return nil end
  local m = MONTHS[lower(mon)]
  if not m then return nil end
  return utc_epoch(tonumber(y), m, tonumber(d), tonumber(h), tonumber(mi), tonumber(s))
end

--- Parse a Retry-After value.
-- @param value header value: delta-seconds ("120") or an HTTP-date; a
--   number is taken as seconds
-- @tparam[opt] number now current time (epoch seconds) for HTTP-dates;
--   default `gauth.lib.time.now()`
-- @return seconds to wait (>= 0; 0 for a date in the past) | nil when the
--   value is absent or malformed
function _M.parse_retry_after(value, now)
  local tv = type(value)
  if tv == "number" then
    if value >= 0 and value < math.huge then return value end
    return nil
  end
  if tv ~= "string" then return nil end
  value = match(value, "^[ \t]*(.-)[ \t]*$")
  if match(value, "^%d+$") then
    return tonumber(value)
  end
  local t = _M.parse_http_date(value)
  if not t then return nil end
  now = now or require("gauth.lib.time").now()
  local delta = t - now
  if delta < 0 then delta = 0 end
  return delta
end

--- The delay before the attempt after failed attempt `n` (1-based).
-- @tparam number n failed attempts so far
-- @tparam[opt] table policy as for `call`
-- @tparam[opt] function random returns a number in [0, 1)
function _M.backoff(n, policy, random)
  policy = policy or _M.DEFAULTS
  local D = _M.DEFAULTS
  local initial = policy.initial or D.initial
  local mult = policy.multiplier or D.multiplier
  local max_delay = policy.max_delay or D.max_delay
  local base = min(max_delay, initial * mult ^ (n - 1))
  local jitter = policy.jitter
  if jitter == nil then jitter = D.jitter end
  if not jitter then return base end
  random = random or (type(policy.testing) == "table" and policy.testing.random)
    or policy.random or math.random
  if jitter == "full" then
    return random() * base
  end
  return base / 2 + random() * base / 2
end

local function check_policy(p)
  if type(p) ~= "table" then
    error("gauth.retry: policy must be a table", 3)
  end
  local function num(name, lo)
    local v = p[name]
    if v ~= nil and (type(v) ~= "number" or v ~= v or v < lo) then
      error("gauth.retry: policy." .. name .. " must be a number >= " .. lo, 4)
    end
  end
  num("attempts", 1); num("initial", 0); num("multiplier", 1)
  num("max_delay", 0); num("deadline", 0)
  local j = p.jitter
  if j ~= nil and j ~= true and j ~= false and j ~= "full" and j ~= "equal" then
    error('gauth.retry: policy.jitter must be true, false, "full" or "equal"', 3)
  end
  for _, f in ipairs({ "sleep", "now", "random", "retryable", "on_retry" }) do
    if p[f] ~= nil and type(p[f]) ~= "function" then
      error("gauth.retry: policy." .. f .. " must be a function", 3)
    end
  end
  local t = p.testing
  if t ~= nil then
    if type(t) ~= "table" then error("gauth.retry: policy.testing must be a table", 3) end
    for _, f in ipairs(SEAMS) do
      if t[f] ~= nil and type(t[f]) ~= "function" then
        error("gauth.retry: policy.testing." .. f .. " must be a function", 3)
      end
    end
  end
end

-- The last error, with why the retrying stopped appended to its message;
-- a copy, so an error object kept by the caller is not changed.
local function give_up(err, attempts, note)
  if errors.is(err) then
    local e = errors.new(err.module, err.step,
                         tostring(err.message) .. " (" .. note .. ")", err)
    e.attempts = attempts
    return e
  end
  if type(err) == "string" then
    return err .. " (" .. note .. ")"
  end
  return err
end

-- The public shape of the last error: `nil, message, err` for a gauth
-- error; what `fn` gave otherwise (a string, another value).
local function out(err)
  if errors.is(err) then return errors.ret(err) end
  return nil, err
end

-- A failure to get a token is not retried by an API call's retry loop:
-- the credentials' own request has retried it already, and under nginx
-- the failure is remembered for all workers (`token_failed`).
local function default_retryable(err)
  return type(err) == "table" and err.retryable == true and not err.token_failed
end

-- ------------------------------------------------------------------------
-- One deadline for a whole call (issue 18): `within` sets it for the
-- running coroutine (each nginx request has its own; plain Lua has one),
-- and every `call` under it, and the token cache's waits, end by then.

local running = coroutine.running
local MAIN = {}  -- LuaJIT's main thread has no coroutine object
local deadlines = setmetatable({}, { __mode = "k" })
local emit  -- gauth.metrics's, loaded when first needed

--- The deadline (epoch seconds, on `gauth.lib.time.now`'s clock) set by
-- `within` for the running coroutine, or nil.
function _M.deadline()
  return deadlines[running() or MAIN]
end

local function finish(co, prev, ok, ...)
  deadlines[co] = prev
  if not ok then error((...), 0) end
  return ...
end

--- Call `fn(...)` with a deadline `seconds` from now for everything it
-- does (an earlier deadline already set stays).
-- @tparam number seconds
-- @tparam function fn
-- @return what `fn` returned
function _M.within(seconds, fn, ...)
  if type(seconds) ~= "number" then error("gauth.retry: within: seconds must be a number", 2) end
  local co = running() or MAIN
  local prev = deadlines[co]
  local d = require("gauth.lib.time").now() + seconds
  if prev and prev < d then d = prev end
  deadlines[co] = d
  return finish(co, prev, pcall(fn, ...))
end

--- Call `fn` until it succeeds, fails for good, runs out of attempts or
-- the deadline comes.
-- @tparam function fn `fn(attempt, remaining)` -> `res` | `nil, err`;
--   `attempt` counts from 1, `remaining` is the seconds left before the
--   deadline (nil without one), for the caller's request timeout
-- @tparam[opt] table policy `attempts` (3), `initial` (1 s), `multiplier`
--   (2), `max_delay` (32 s), `jitter` (true = "equal", "full", false),
--   `deadline` (seconds from now), `testing` = { `sleep`
--   (`gauth.lib.time.sleep`), `now` (`gauth.lib.time.now`), `random`
--   (`math.random`) } (the test seams; the old spelling at the top level
--   of the policy is still accepted), `retryable(err)` (default:
--   `err.retryable == true`), `on_retry(attempt, err, delay)` (called before
--   each sleep: logging)
-- @return what `fn` returned on success | nil, message, err: the last
--   error (a copy noting why retrying stopped, with `attempts`, when more
--   than one attempt ran or a retry was refused). `fn` may fail with
--   `nil, message, err` or `nil, err`.
function _M.call(fn, policy)
  if type(fn) ~= "function" then
    error("gauth.retry: fn must be a function", 2)
  end
  policy = policy or _M.DEFAULTS
  check_policy(policy)
  local D = _M.DEFAULTS
  local t = policy.testing
  local test_now = t and t.now or policy.now
  local now = test_now
  local sleep = t and t.sleep or policy.sleep
  if not now or not sleep then
    local time = require "gauth.lib.time"
    now = now or time.now
    sleep = sleep or time.sleep
  end
  local attempts = policy.attempts or D.attempts
  local max_delay = policy.max_delay or D.max_delay
  local retryable = policy.retryable or default_retryable
  local deadline = policy.deadline and now() + policy.deadline
  -- The deadline of `within` (on time.now's clock: not with a test clock).
  local outer = not test_now and deadlines[running() or MAIN]
  if outer and (not deadline or outer < deadline) then deadline = outer end

  local attempt = 0
  while true do
    attempt = attempt + 1
    local remaining
    if deadline then
      remaining = deadline - now()
      if remaining < 0 then remaining = 0 end
    end
    local res, err, e3 = fn(attempt, remaining)
    if res ~= nil then
      return res, err, e3
    end
    if errors.is(e3) then err = e3 end
    if err == nil then
      err = errors.new("retry", "call", "the function returned neither a result nor an error")
    end
    -- A phase of nginx that cannot make requests will not be able to in a
    -- moment either, and cannot sleep: the caller's way out is elsewhere.
    if type(err) == "table" and err.kind == "phase" then
      return out(err)
    end
    if not retryable(err) then
      if attempt > 1 then
        return out(give_up(err, attempt,
                           format("not retryable, attempt %d", attempt)))
      end
      return out(err)
    end
    if attempt >= attempts then
      return out(give_up(err, attempt, format("gave up after %d attempts", attempt)))
    end

    local ra = type(err) == "table" and tonumber(err.retry_after) or nil
    local delay
    if ra and ra >= 0 then
      delay = ra
      if not deadline and ra > max_delay then
        return out(give_up(err, attempt, format(
          "attempt %d; not retried: Retry-After %gs is longer than max_delay %gs",
          attempt, ra, max_delay)))
      end
    else
      delay = _M.backoff(attempt, policy)
    end
    if deadline then
      local left = deadline - now()
      if delay > left then
        return out(give_up(err, attempt, format(
          "attempt %d; not retried: the next attempt in %.3gs would pass the deadline (%.3gs left)",
          attempt, delay, left > 0 and left or 0)))
      end
    end
    if policy.on_retry then
      policy.on_retry(attempt, err, delay)
    end
    -- gauth.on("retry", fn) hooks.
    if not emit then emit = require("gauth.metrics").emit end
    emit("retry", { module = type(err) == "table" and err.module or nil,
                    step = type(err) == "table" and err.step or nil,
                    attempt = attempt, delay = delay, message = tostring(err), err = err })
    sleep(delay)
  end
end

return _M
