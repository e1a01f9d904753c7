-- gauth.credentials (the base class) and gauth.token_cache, through a tiny
-- credentials type defined here: its fetch_token counts calls and hands
-- out numbered tokens; the clock is injected.
local credentials = require "gauth.credentials"
local token_cache = require "gauth.token_cache"
local errors = require "gauth.errors"
local helpers = require "helpers"

-- The tiny type: opts.life (seconds), opts.fail (error to return),
-- opts.scopes (part of the cache key).
local Test = credentials.extend({ _VERSION = "0.0.0", kind = "test" })
local test_mt = credentials.metatable(Test)

local function new_test(opts)
  opts = opts or {}
  local self = setmetatable({
    life = opts.life or 3600,
    scopes = opts.scopes,
    calls = opts.calls or { n = 0 },
    result = opts.result,
    fail = opts.fail,
  }, test_mt)
  credentials.init(self, opts)
  return self
end

function Test:fetch_token()
  local calls = self.calls
  calls.n = calls.n + 1
  if self.fail then return nil, self.fail end
  if self.result then return self.result(self) end
  return { access_token = "tok-" .. calls.n, expires_at = self._clock() + self.life }
end

function Test:cache_key_parts()
  return { scopes = self.scopes }
end

function Test:describe()
  return "test, " .. (self.scopes and #self.scopes or 0) .. " scopes"
end

local function clock_at(t)
  local c = { t = t }
  c.now = function() return c.t end
  return c
end

describe("gauth.credentials", function()
  local clock, cache

  before_each(function()
    clock = clock_at(1000000)
    cache = token_cache.new()
  end)

  local function make(opts)
    opts = opts or {}
    opts.now = opts.now or clock.now
    opts.cache = opts.cache or cache
    return new_test(opts)
  end

  describe("token()", function()
    it("fetches once and then answers from the cache", function()
      local c = make()
      local tok, exp = c:token()
      assert.equal("tok-1", tok)
      assert.equal(1000000 + 3600, exp)
      tok, exp = c:token()
      assert.equal("tok-1", tok)
      assert.equal(1000000 + 3600, exp)
      assert.equal(1, c.calls.n)
    end)

    it("returns nil and the fetch error, and caches nothing", function()
      local e = errors.new("test", "fetch", "nope", { retryable = false })
      local c = make({ fail = e })
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.equal(e, err)
      tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.equal(e, err)
      assert.equal(2, c.calls.n)
    end)

    it("refreshes within 225 s of expiry, not before", function()
      local c = make()
      assert.equal("tok-1", (c:token()))
      clock.t = clock.t + 3600 - 226
      assert.equal("tok-1", (c:token()))
      clock.t = clock.t + 1
      assert.equal("tok-2", (c:token()))
      assert.equal(2, c.calls.n)
      assert.equal(225, credentials.REFRESH_WINDOW)
    end)

    it("uses a token that lives less than the window for half its life", function()
      local c = make({ life = 100 })
      assert.equal("tok-1", (c:token()))
      clock.t = clock.t + 49
      assert.equal("tok-1", (c:token()))
      clock.t = clock.t + 2
      assert.equal("tok-2", (c:token()))
    end)

    it("refuses an entry without access_token", function()
      local c = make({ result = function() return { expires_at = clock.t + 60 } end })
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.truthy(errors.is(err))
      assert.matches("no access token", err.message)
    end)

    it("refuses an entry without expiry, or already expired", function()
      local c = make({ result = function() return { access_token = "x" } end })
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.matches("no expiry", err.message)
      c = make({ scopes = { "b" }, result = function()
        return { access_token = "x", expires_at = clock.t - 1 } end })
      tok, msg, err = c:token()
      assert.is_nil(tok)
      helpers.assert_failure(msg, err)
      assert.matches("already expired", err.message)
    end)

    it("lets a raising fetch_token raise, and releases the lock", function()
      local unlocked = 0
      local store = token_cache.local_store()
      local lock = store.lock
      store.lock = function(s, k, t)
        local u = lock(s, k, t)
        return function() unlocked = unlocked + 1; u() end
      end
      local c = make({ cache = token_cache.new({ store = store }),
                       result = function() error("boom") end })
      assert.has_error(function() c:token() end, "boom")
      assert.equal(1, unlocked)
    end)

    it("shares one token between objects with the same cache key", function()
      local calls = { n = 0 }
      local a = make({ scopes = { "x", "y" }, calls = calls })
      local b = make({ scopes = { "x", "y" }, calls = calls })
      assert.equal(a:cache_key(), b:cache_key())
      assert.equal("tok-1", (a:token()))
      assert.equal("tok-1", (b:token()))
      assert.equal(1, calls.n)
    end)

    it("base fetch_token raises: a type must implement it", function()
      local Bare = credentials.extend({ kind = "bare" })
      local o = setmetatable({}, credentials.metatable(Bare))
      credentials.init(o)
      assert.has_error(function() o:fetch_token() end, "gauth.credentials: bare does not implement fetch_token")
      assert.has_error(function() o:cache_key() end, "gauth.credentials: bare does not implement cache_key_parts")
    end)
  end)

  describe("apply()", function()
    it("sets authorization (and x-goog-user-project) and returns the headers", function()
      local c = make({ quota_project = "billed-project" })
      local h = { accept = "application/json" }
      local res, err = c:apply(h)
      assert.is_nil(err)
      assert.equal(h, res)
      assert.equal("Bearer tok-1", h.authorization)
      assert.equal("billed-project", h["x-goog-user-project"])
      assert.equal("application/json", h.accept)
    end)

    it("makes a table when given none; no quota header without a project", function()
      local res, err = make():apply()
      assert.is_nil(err)
      assert.same({ authorization = "Bearer tok-1" }, res)
    end)

    it("returns nil and the error when no token can be had", function()
      local e = errors.new("test", "fetch", "down")
      local h = {}
      local res, msg, err = make({ fail = e }):apply(h)
      assert.is_nil(res)
      helpers.assert_failure(msg, err)
      assert.equal(e, err)
      assert.is_nil(h.authorization)
    end)

    it("raises on headers that are not a table", function()
      assert.has_error(function() make():apply("authorization") end,
        "gauth.credentials: apply: headers must be a table")
    end)
  end)

  describe("invalidate()", function()
    it("makes the next token() fetch, for every holder of the key", function()
      local calls = { n = 0 }
      local a = make({ calls = calls })
      local b = make({ calls = calls })
      assert.equal("tok-1", (a:token()))
      assert.equal("tok-1", (b:token()))
      assert.is_true(a:invalidate())
      assert.equal("tok-2", (b:token()))
      assert.equal("tok-2", (a:token()))
      assert.equal(2, calls.n)
    end)

    it("keeps a token another holder fetched after the refused one", function()
      local calls = { n = 0 }
      local a = make({ calls = calls })
      local b = make({ calls = calls })
      assert.equal("tok-1", (a:token()))
      assert.is_true(b:invalidate())
      assert.equal("tok-2", (b:token()))
      -- a's tok-1 was refused late: tok-2 must survive it
      assert.is_true(a:invalidate())
      assert.equal("tok-2", (b:token()))
      assert.equal("tok-2", (a:token()))
      assert.equal(2, calls.n)
      -- and a refusal of tok-2 itself does drop it
      assert.is_true(a:invalidate())
      assert.equal("tok-3", (b:token()))
      assert.equal(3, calls.n)
    end)

    it("is harmless with nothing cached", function()
      local c = make()
      assert.is_true(c:invalidate())
      assert.equal("tok-1", (c:token()))
    end)
  end)

  describe("cache_key()", function()
    it("is stable, order-insensitive for tables, short and opaque", function()
      local a = make({ scopes = { x = 1, y = { 2, 3 } } })
      local b = make({ scopes = { y = { 2, 3 }, x = 1 } })
      assert.equal(a:cache_key(), b:cache_key())
      assert.matches("^gauth:test:[%w_-]+$", a:cache_key())
      assert.is_true(#a:cache_key() <= 64)
      assert.not_equal(a:cache_key(), make({ scopes = { x = 2 } }):cache_key())
      assert.not_equal(make():cache_key(), make({ scopes = {} }):cache_key())
    end)

    it("raises on parts that are not plain data", function()
      local c = make({ scopes = { f = print } })
      assert.has_error(function() c:cache_key() end,
        "gauth.credentials: cache key parts must be plain data, not function")
    end)

    it("canonical() tells apart what differs and only that", function()
      local canon = credentials.canonical
      assert.equal(canon({ a = 1, b = "2" }), canon({ b = "2", a = 1 }))
      assert.not_equal(canon({ a = 1 }), canon({ a = "1" }))
      assert.not_equal(canon({ "a b" }), canon({ "a", "b" }))
      assert.not_equal(canon(true), canon("T"))
    end)
  end)

  describe("copy() and with_quota_project()", function()
    it("copies with their own cache entry and leave the original alone", function()
      local c = make({ scopes = { "a" } })
      assert.equal("tok-1", (c:token()))
      local d = c:copy({ scopes = { "b" } })
      assert.same({ "a" }, c.scopes)
      assert.same({ "b" }, d.scopes)
      assert.not_equal(c:cache_key(), d:cache_key())
      assert.equal("tok-2", (d:token()))
      assert.equal("tok-1", (c:token()))
    end)

    it("with_quota_project changes the header, not the token", function()
      local c = make()
      local d = c:with_quota_project("other")
      assert.is_nil(c.quota_project)
      assert.equal("other", d.quota_project)
      assert.equal(c:cache_key(), d:cache_key())
      local h = assert(d:apply())
      assert.equal("other", h["x-goog-user-project"])
      assert.equal("Bearer tok-1", h.authorization)
      assert.equal(1, c.calls.n)
      assert.is_nil(d:with_quota_project(nil).quota_project)
    end)

    it("with_quota_project raises on a bad project", function()
      assert.has_error(function() make():with_quota_project(42) end,
        "gauth.credentials: quota_project must be a non-empty string")
      assert.has_error(function() make():with_quota_project("") end,
        "gauth.credentials: quota_project must be a non-empty string")
    end)
  end)

  describe("tostring", function()
    it("shows the kind and description, never the token", function()
      local c = make({ scopes = { "a" } })
      assert.equal("tok-1", (c:token()))
      local s = tostring(c)
      assert.equal("gauth.test credentials (test, 1 scopes)", s)
      assert.is_nil(s:find("tok-1", 1, true))
    end)
  end)

  describe("init()", function()
    it("raises on bad options", function()
      assert.has_error(function() make({ quota_project = 1 }) end,
        "gauth.credentials: quota_project must be a non-empty string")
      assert.has_error(function() make({ now = "5" }) end,
        "gauth.credentials: now must be a number or a function")
      assert.has_error(function() make({ cache = {} }) end, "gauth.credentials: cache must be a gauth.token_cache")
    end)

    it("takes now as a number (a standing clock) or a function", function()
      local c = make({ now = 5 })
      assert.equal(5, c._clock())
      assert.equal(5, c._clock())
      local d = make({ now = function() return 7 end })
      assert.equal(7, d._clock())
    end)

    it("uses the process-wide cache by default", function()
      local c = new_test({ now = clock.now })
      assert.equal(token_cache.default(), c._cache)
    end)
  end)
end)

describe("gauth.token_cache", function()
  local clock
  before_each(function() clock = clock_at(5000) end)

  it("new() makes a cache; bad options raise", function()
    local c = token_cache.new({ window = 10, lock_timeout = 1 })
    assert.equal(10, c.window)
    assert.has_error(function() token_cache.new({ window = -1 }) end,
      "gauth.token_cache: window must be a non-negative number")
    assert.has_error(function() token_cache.new({ store = {} }) end, "gauth.token_cache: store has no get method")
    assert.has_error(function() token_cache.new("x") end, "gauth.token_cache: opts must be a table")
  end)

  it("fetch() returns a fresh entry with refresh_at, or nil, the message and the error", function()
    local c = token_cache.new()
    local e, msg, err = c:fetch("k", function()
      return { access_token = "a", expires_at = clock.t + 1000 }
    end, clock.now)
    assert.is_nil(msg)
    assert.is_nil(err)
    assert.equal("a", e.access_token)
    assert.equal(clock.t + 1000 - 225, e.refresh_at)
    local boom = errors.new("x", "y", "z")
    -- Both shapes of a failing fetch_token: nil, err and nil, msg, err.
    for _, f in ipairs({ function() return nil, boom end,
                         function() return nil, tostring(boom), boom end }) do
      e, msg, err = c:fetch("k2", f, clock.now)
      assert.is_nil(e)
      assert.equal("gauth.x: y: z", msg)
      assert.equal(boom, err)
    end
  end)

  it("talks to a custom store through get/set/delete/lock", function()
    local log = {}
    local data = {}
    local store = {
      get = function(_, k) log[#log + 1] = "get " .. k; return data[k] end,
      set = function(_, k, e, ttl) log[#log + 1] = "set " .. k .. " " .. ttl; data[k] = e end,
      delete = function(_, k) log[#log + 1] = "delete " .. k; data[k] = nil end,
      lock = function(_, k, timeout)
        log[#log + 1] = "lock " .. k .. " " .. timeout
        return function() log[#log + 1] = "unlock " .. k end
      end,
    }
    local c = token_cache.new({ store = store, lock_timeout = 7 })
    local fetch = function() return { access_token = "a", expires_at = clock.t + 600 } end
    assert.equal("a", c:fetch("k", fetch, clock.now).access_token)
    assert.equal("a", c:fetch("k", fetch, clock.now).access_token)
    c:invalidate("k")
    assert.same({ "get k", "lock k 7", "get k", "set k 600", "unlock k",
                  "get k", "get k", "delete k" }, log)
  end)

  it("returns nil and an error when the store cannot lock", function()
    local store = token_cache.local_store()
    store.lock = function() return nil, "busy" end
    local c = token_cache.new({ store = store })
    local e, msg, err = c:fetch("k", function() error("not reached") end, clock.now)
    assert.is_nil(e)
    assert.equal("gauth.token_cache: lock: busy", msg)
    assert.equal("token_cache", err.module)
    assert.equal("lock", err.step)
    assert.is_true(err.retryable)
  end)

  -- A store whose lock lets another caller run first stands for a caller
  -- that waited while another coroutine refreshed (single flight).
  local function racing_store(cache_ref, other_fetch)
    local store = token_cache.local_store()
    local once = true
    store.lock = function(_, key)
      if once then
        once = false
        cache_ref.c:fetch(key, other_fetch, clock.now)
      end
      return function() end
    end
    return store
  end

  it("a waiter takes the entry another refreshed meanwhile", function()
    local ref = {}
    local other = 0
    ref.c = token_cache.new({ store = racing_store(ref, function()
      other = other + 1
      return { access_token = "theirs", expires_at = clock.t + 3600 }
    end) })
    local mine = 0
    local e = ref.c:fetch("k", function() mine = mine + 1 end, clock.now)
    assert.equal("theirs", e.access_token)
    assert.equal(1, other)
    assert.equal(0, mine)
  end)

  it("a waiter shares the error of a refresh that failed meanwhile", function()
    local ref = {}
    local boom = errors.new("x", "fetch", "endpoint down")
    ref.c = token_cache.new({ store = racing_store(ref, function() return nil, boom end) })
    local mine = 0
    local e, msg, err = ref.c:fetch("k", function() mine = mine + 1 end, clock.now)
    assert.is_nil(e)
    assert.equal("gauth.x: fetch: endpoint down", msg)
    assert.equal(boom, err)
    assert.equal(0, mine)
    -- The next caller, who did not wait, tries again.
    e = ref.c:fetch("k", function()
      return { access_token = "b", expires_at = clock.t + 3600 } end, clock.now)
    assert.equal("b", e.access_token)
  end)

  it("default() is one cache; set_default replaces it, checking its argument", function()
    local d = token_cache.default()
    assert.equal(d, token_cache.default())
    local mine = token_cache.new()
    token_cache.set_default(mine)
    assert.equal(mine, token_cache.default())
    token_cache.set_default(d)
    assert.has_error(function() token_cache.set_default({}) end,
      "gauth.token_cache: set_default needs a cache (from token_cache.new)")
  end)

  it("local_store lock is a no-op outside nginx", function()
    local s = token_cache.local_store()
    local unlock = s:lock("k", 1)
    assert.is_function(unlock)
    unlock()
  end)
end)
