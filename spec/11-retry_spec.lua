-- gauth.retry: the schedule, Retry-After and the deadline, on a fake clock
-- (nothing here needs the network or real time).
local retry = require "gauth.retry"
local errors = require "gauth.errors"
local helpers = require "helpers"

-- A fake clock: sleep advances it; every call is recorded.
local function clock(start)
  local c = { t = start or 1000, slept = {} }
  c.now = function() return c.t end
  c.sleep = function(s) c.slept[#c.slept + 1] = s; c.t = c.t + s end
  return c
end

local function transient(fields)
  local f = { retryable = true }
  for k, v in pairs(fields or {}) do f[k] = v end
  return errors.new("http", "request", "Couldn't connect", f)
end

describe("gauth.retry.call", function()
  it("returns the first success without sleeping", function()
    local c = clock()
    local res, extra = retry.call(function(attempt)
      return { ok = attempt }, "second"
    end, { sleep = c.sleep, now = c.now })
    assert.same({ ok = 1 }, res)
    assert.equal("second", extra)
    assert.same({}, c.slept)
  end)

  it("backs off exponentially without jitter: 1, 2, 4 s", function()
    local c = clock()
    local calls = 0
    local res, err = retry.call(function(attempt)
      calls = attempt
      if attempt < 4 then return nil, transient() end
      return "done"
    end, { attempts = 4, jitter = false, sleep = c.sleep, now = c.now })
    assert.equal("done", res)
    assert.is_nil(err)
    assert.equal(4, calls)
    assert.same({ 1, 2, 4 }, c.slept)
  end)

  it("caps the delay at max_delay and honours initial and multiplier", function()
    local c = clock()
    local _, msg, err = retry.call(function() return nil, transient() end,
      { attempts = 6, initial = 0.5, multiplier = 3, max_delay = 5,
        jitter = false, sleep = c.sleep, now = c.now })
    helpers.assert_failure(msg, err)
    assert.same({ 0.5, 1.5, 4.5, 5, 5 }, c.slept)
    assert.equal(6, err.attempts)
  end)

  it("equal jitter (the default) stays within [base/2, base]", function()
    local c = clock()
    local draws = { 0, 0.999, 0.5 }
    local i = 0
    retry.call(function() return nil, transient() end,
      { attempts = 4, sleep = c.sleep, now = c.now,
        random = function() i = i + 1; return draws[i] end })
    assert.equal(3, #c.slept)
    assert.near(0.5, c.slept[1], 1e-9)      -- base 1, draw 0
    assert.near(1.999, c.slept[2], 1e-9)    -- base 2, draw 0.999
    assert.near(3, c.slept[3], 1e-9)        -- base 4, draw 0.5
  end)

  it("full jitter draws from [0, base]", function()
    local c = clock()
    retry.call(function() return nil, transient() end,
      { attempts = 3, jitter = "full", sleep = c.sleep, now = c.now,
        random = function() return 0.25 end })
    assert.same({ 0.25, 0.5 }, c.slept)
  end)

  it("with real randomness, every delay is inside its jitter window", function()
    for _ = 1, 50 do
      for n = 1, 6 do
        local base = math.min(32, 2 ^ (n - 1))
        local d = retry.backoff(n)
        assert.is_true(d >= base / 2 and d <= base)
        d = retry.backoff(n, { jitter = "full" })
        assert.is_true(d >= 0 and d <= base)
      end
    end
  end)

  it("returns the last error after the attempts, noting it", function()
    local c = clock()
    local res, msg, err = retry.call(function(attempt)
      return nil, transient({ status = 503, attempt_no = attempt })
    end, { sleep = c.sleep, now = c.now, jitter = false })
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.is_true(errors.is(err))
    assert.equal(3, err.attempt_no)         -- the last one, fields kept
    assert.equal(3, err.attempts)
    assert.equal(503, err.status)
    assert.equal("http", err.module)
    assert.matches("gave up after 3 attempts", tostring(err), 1, true)
    assert.same({ 1, 2 }, c.slept)
  end)

  it("does not retry an error that is not retryable", function()
    local c = clock()
    local calls = 0
    local original = errors.new("service_account", "token exchange",
                                "invalid_grant", { status = 400 })
    local res, msg, err = retry.call(function(attempt)
      calls = attempt
      return nil, original
    end, { sleep = c.sleep, now = c.now })
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.equal(original, err)             -- untouched, the same object
    assert.equal(1, calls)
    assert.same({}, c.slept)
  end)

  it("stops at a non-retryable error that follows retryable ones", function()
    local c = clock()
    local res, msg, err = retry.call(function(attempt)
      if attempt == 1 then return nil, transient() end
      return nil, errors.new("http", "request", "forbidden", { status = 403 })
    end, { attempts = 5, sleep = c.sleep, now = c.now, jitter = false })
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.equal(403, err.status)
    assert.equal(2, err.attempts)
    assert.same({ 1 }, c.slept)
  end)

  it("uses policy.retryable when given", function()
    local c = clock()
    local calls = 0
    local res = retry.call(function(attempt)
      calls = attempt
      if attempt == 1 then return nil, "try again" end
      return "ok"
    end, { sleep = c.sleep, now = c.now, jitter = false,
           retryable = function(e) return e == "try again" end })
    assert.equal("ok", res)
    assert.equal(2, calls)
  end)

  it("notes a plain string error when it gives up", function()
    local c = clock()
    local res, err, none = retry.call(function() return nil, "boom" end,
      { attempts = 2, sleep = c.sleep, now = c.now, jitter = false,
        retryable = function() return true end })
    assert.is_nil(res)
    assert.is_nil(none)  -- not a gauth error: passed on as it came
    assert.equal("boom (gave up after 2 attempts)", err)
  end)

  it("honours err.retry_after instead of the backoff", function()
    local c = clock()
    local res = retry.call(function(attempt)
      if attempt == 1 then return nil, transient({ retry_after = 7 }) end
      if attempt == 2 then return nil, transient({ retry_after = 0 }) end
      return "ok"
    end, { attempts = 3, sleep = c.sleep, now = c.now, jitter = false })
    assert.equal("ok", res)
    assert.same({ 7, 0 }, c.slept)
  end)

  it("without a deadline, gives up on a Retry-After longer than max_delay", function()
    local c = clock()
    local calls = 0
    local res, msg, err = retry.call(function(attempt)
      calls = attempt
      return nil, transient({ retry_after = 3600 })
    end, { sleep = c.sleep, now = c.now })
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.equal(1, calls)
    assert.same({}, c.slept)
    assert.matches("Retry-After 3600s is longer than max_delay 32s", err.message, 1, true)
  end)

  it("never sleeps past the deadline", function()
    local c = clock()
    local calls = 0
    local res, msg, err = retry.call(function(attempt)
      calls = attempt
      c.t = c.t + 2                        -- each attempt takes 2 s
      return nil, transient()
    end, { attempts = 10, deadline = 10, jitter = false,
           sleep = c.sleep, now = c.now })
    -- t=0 +2 (try 1) +1 sleep, +2 (try 2) +2 sleep, +2 (try 3) = 9;
    -- the next delay (4 s) would end at 13 > 10.
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.equal(3, calls)
    assert.same({ 1, 2 }, c.slept)
    assert.equal(3, err.attempts)
    assert.matches("would pass the deadline", err.message, 1, true)
    assert.is_true(err.retryable)
  end)

  it("refuses a Retry-After that would pass the deadline", function()
    local c = clock()
    local calls = 0
    local res, msg, err = retry.call(function(attempt)
      calls = attempt
      return nil, transient({ retry_after = 30 })
    end, { attempts = 5, deadline = 20, sleep = c.sleep, now = c.now })
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.equal(1, calls)
    assert.same({}, c.slept)
    assert.matches("deadline", err.message, 1, true)
  end)

  it("accepts a long Retry-After within the deadline", function()
    local c = clock()
    local res = retry.call(function(attempt)
      if attempt == 1 then return nil, transient({ retry_after = 60 }) end
      return "ok"
    end, { deadline = 120, sleep = c.sleep, now = c.now })
    assert.equal("ok", res)
    assert.same({ 60 }, c.slept)
  end)

  it("passes the attempt number and the time remaining to fn", function()
    local c = clock()
    local seen = {}
    retry.call(function(attempt, remaining)
      seen[#seen + 1] = { attempt, remaining }
      return nil, transient()
    end, { attempts = 3, deadline = 30, jitter = false,
           sleep = c.sleep, now = c.now })
    assert.same({ { 1, 30 }, { 2, 29 }, { 3, 27 } }, seen)
    local none
    retry.call(function(_, remaining) none = remaining; return 1 end,
               { sleep = c.sleep, now = c.now })
    assert.is_nil(none)
  end)

  it("calls on_retry before each sleep", function()
    local c = clock()
    local log = {}
    retry.call(function() return nil, transient() end,
      { attempts = 3, jitter = false, sleep = c.sleep, now = c.now,
        on_retry = function(a, e, d) log[#log + 1] = { a, e.message, d } end })
    assert.same({ { 1, "Couldn't connect", 1 }, { 2, "Couldn't connect", 2 } }, log)
  end)

  it("turns nil, nil from fn into an error", function()
    local c = clock()
    local res, msg, err = retry.call(function() end, { sleep = c.sleep, now = c.now })
    assert.is_nil(res)
    helpers.assert_failure(msg, err)
    assert.is_true(errors.is(err))
    assert.equal("retry", err.module)
  end)

  it("really sleeps with the default clock", function()
    local time = require "gauth.lib.time"
    local t0 = time.now()
    local res = retry.call(function(attempt)
      if attempt == 1 then return nil, transient() end
      return "ok"
    end, { initial = 0.05, jitter = false })
    assert.equal("ok", res)
    assert.is_true(time.now() - t0 >= 0.045)
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() retry.call(nil) end, "gauth.retry: fn must be a function")
    assert.has_error(function() retry.call(function() end, { attempts = 0 }) end,
      "gauth.retry: policy.attempts must be a number >= 1")
    assert.has_error(function() retry.call(function() end, { jitter = "half" }) end,
      "gauth.retry: policy.jitter must be true, false, \"full\" or \"equal\"")
    assert.has_error(function() retry.call(function() end, { sleep = 1 }) end,
      "gauth.retry: policy.sleep must be a function")
    assert.has_error(function() retry.call(function() end, "fast") end, "gauth.retry: policy must be a table")
  end)
end)

describe("gauth.retry.within (one deadline for a whole call)", function()

  it("sets a deadline for everything fn does, returns fn's results, then clears it", function()
    assert.is_nil(retry.deadline())
    local seen
    local a, b = retry.within(5, function(x)
      seen = retry.deadline()
      return x, "second"
    end, "first")
    assert.equal("first", a)
    assert.equal("second", b)
    assert.is_number(seen)
    local left = seen - require("gauth.lib.time").now()
    assert.is_true(left > 0 and left <= 5)
    assert.is_nil(retry.deadline())
    -- An inner within cannot extend an outer one.
    retry.within(1, function()
      local outer = retry.deadline()
      retry.within(100, function() assert.equal(outer, retry.deadline()) end)
    end)
  end)

  it("passes a failure through (nil, msg, err), and bounds retry.call inside", function()
    local calls = 0
    local v, msg, err = retry.within(0.2, function()
      return retry.call(function()
        calls = calls + 1
        return nil, errors.new("test", "step", "still failing", { retryable = true })
      end, { attempts = 10, initial = 1, jitter = false, sleep = function() end })
    end)
    assert.is_nil(v)
    -- retry.call gives the error object back (its own shape).
    local e = errors.of(msg, err)
    assert.equal("test", e.module)
    assert.matches("would pass the deadline", tostring(e))
    assert.equal(1, calls)
    assert.is_nil(retry.deadline())
  end)

  it("clears the deadline when fn raises, and raises on bad arguments", function()
    assert.has_error(function() retry.within(1, function() error("boom", 0) end) end, "boom")
    assert.is_nil(retry.deadline())
    assert.error_matches(function() retry.within("1", function() end) end, "within: seconds must be a number", 1, true)
  end)

  it("call does not retry a token failure (token_failed) by default", function()
    local calls = 0
    local v, msg, err = retry.call(function()
      calls = calls + 1
      return nil, errors.new("discovery", "x", "no token", { retryable = true, token_failed = true })
    end, { attempts = 4, sleep = function() error("slept") end })
    assert.is_nil(v)
    assert.equal("gauth.discovery: x: no token", msg)
    assert.is_true(err.token_failed)
    assert.equal(1, calls)
  end)
end)

describe("gauth.retry.parse_retry_after", function()
  local now = retry.utc_epoch(2015, 10, 21, 7, 28, 0)

  it("reads delta-seconds", function()
    assert.equal(120, retry.parse_retry_after("120", now))
    assert.equal(0, retry.parse_retry_after("0"))
    assert.equal(5, retry.parse_retry_after(" 5 "))
    assert.equal(2.5, retry.parse_retry_after(2.5))
  end)

  it("reads the three HTTP-date forms", function()
    assert.equal(0, retry.parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now))
    assert.equal(90, retry.parse_retry_after("Wed, 21 Oct 2015 07:29:30 GMT", now))
    assert.equal(90, retry.parse_retry_after("Wednesday, 21-Oct-15 07:29:30 GMT", now))
    assert.equal(90, retry.parse_retry_after("Wed Oct 21 07:29:30 2015", now))
    assert.equal(86400 + 3600, retry.parse_retry_after("Thu, 22 Oct 2015 08:28:00 GMT", now))
  end)

  it("gives 0 for a date in the past", function()
    assert.equal(0, retry.parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now))
  end)

  it("agrees with the real clock", function()
    local time = require "gauth.lib.time"
    local t = time.now()
    local d = retry.parse_retry_after(os.date("!%a, %d %b %Y %H:%M:%S GMT", math.floor(t) + 100))
    assert.is_true(d > 98 and d <= 100)
  end)

  it("computes epochs as timegm does", function()
    assert.equal(0, retry.utc_epoch(1970, 1, 1, 0, 0, 0))
    assert.equal(951782400, retry.utc_epoch(2000, 2, 29, 0, 0, 0))
    assert.equal(1445412480, now)
    assert.equal(4107542400, retry.utc_epoch(2100, 3, 1, 0, 0, 0))
  end)

  it("utc_epoch refuses fields out of range", function()
    local v, extra = retry.utc_epoch(2024, 13, 1, 0, 0, 0)
    assert.is_nil(v)
    assert.is_nil(extra)
    assert.is_nil(retry.utc_epoch(2024, 0, 1, 0, 0, 0))
    assert.is_nil(retry.utc_epoch(2024, 5, 32, 0, 0, 0))
    assert.is_nil(retry.utc_epoch(2024, 5, 1, 24, 0, 0))
    assert.is_nil(retry.utc_epoch(2024, 5, 1, 0, 60, 0))
    assert.is_nil(retry.utc_epoch(2024, 5, 1, 0, 0, 61))
  end)

  it("returns nil for absent or malformed values", function()
    assert.is_nil(retry.parse_retry_after(nil, now))
    assert.is_nil(retry.parse_retry_after("", now))
    assert.is_nil(retry.parse_retry_after("-5", now))
    assert.is_nil(retry.parse_retry_after("1.5", now))
    assert.is_nil(retry.parse_retry_after("soon", now))
    assert.is_nil(retry.parse_retry_after("Wed, 21 Foo 2015 07:28:00 GMT", now))
    assert.is_nil(retry.parse_retry_after("Wed, 21 Oct 2015 25:28:00 GMT", now))
    assert.is_nil(retry.parse_retry_after(-1, now))
    assert.is_nil(retry.parse_retry_after({}, now))
  end)
end)

describe("gauth.retry.is_retryable_status", function()
  it("is true for 408, 429 and every 5xx (gauth.errors.classify)", function()
    for _, s in ipairs({ 408, 429, 500, 501, 502, 503, 504, 505, 599 }) do
      assert.is_true(retry.is_retryable_status(s), s)
    end
  end)

  it("is false for success, redirects and the other client errors", function()
    for _, s in ipairs({ 200, 204, 308, 400, 401, 403, 404, 409, 600 }) do
      assert.is_false(retry.is_retryable_status(s), s)
    end
    assert.is_false(retry.is_retryable_status(nil))
  end)
end)
