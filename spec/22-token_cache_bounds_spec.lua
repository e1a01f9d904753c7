-- The token cache stays bounded (issue 17 item 9): the process-wide store
-- and the failure memos keep at most their bound whatever number of
-- credentials pass through, least recently used first, and expired
-- entries go. Counts are asserted, not memory.
local credentials = require "gauth.credentials"
local token_cache = require "gauth.token_cache"
local lru = require "gauth.lib.lru"
local errors = require "gauth.errors"
local socket = require "socket"

-- A credentials type whose tokens differ per audience: the base class's
-- caching is what every gauth credentials type uses.
local Aud = credentials.extend({ _VERSION = "0.0.0", kind = "aud_test" })
local aud_mt = credentials.metatable(Aud)

local function new_aud(audience, opts)
  local self = setmetatable({ audience = audience, fail = opts and opts.fail }, aud_mt)
  credentials.init(self, opts)
  return self
end

function Aud:fetch_token()
  if self.fail then return nil, errors.new("aud_test", "fetch", "refused " .. self.audience) end
  return { access_token = "tok-" .. self.audience, expires_at = self._clock() + 3600 }
end

function Aud:cache_key_parts()
  return { audience = self.audience }
end

describe("gauth.token_cache bounds", function()
  local saved

  before_each(function()
    saved = token_cache.default()
    token_cache.set_default(nil)  -- a new process-wide cache for the test
  end)

  after_each(function()
    token_cache.set_default(saved)
  end)

  it("20,000 audiences, then GC: the process-wide store holds at most its bound", function()
    local default = token_cache.default()
    assert.equal(token_cache.MAX_ENTRIES, default.store.max_entries)
    local objs = {}
    for i = 1, 20000 do
      local c = new_aud("aud-" .. i)
      assert.equal("tok-aud-" .. i, (c:token()))
      objs[i] = c
    end
    assert.equal(20000, #objs)
    objs = nil  -- luacheck: ignore (dropped, for the collector)
    collectgarbage()
    collectgarbage()
    local n = default.store:count()
    assert.is_true(n <= token_cache.MAX_ENTRIES, n .. " entries")
    assert.is_true(n >= token_cache.MAX_ENTRIES / 2, n .. " entries")
    -- The most recent are still served from the store, without a fetch.
    local recent = new_aud("aud-20000")
    recent.fetch_token = function() error("fetched again") end
    assert.equal("tok-aud-20000", (recent:token()))
  end)

  it("20,000 failing audiences: the failure memos hold at most their bound", function()
    local cache = token_cache.new({ max_entries = 1000 })
    for i = 1, 20000 do
      local c = new_aud("bad-" .. i, { fail = true, cache = cache })
      local tok, msg, err = c:token()
      assert.is_nil(tok)
      assert.equal("gauth.aud_test: fetch: refused bad-" .. i, msg)
      assert.equal(msg, tostring(err))
    end
    collectgarbage()
    assert.is_true(cache.failures:count() <= 1000, cache.failures:count() .. " memos")
    assert.equal(0, cache.store:count())
  end)

  it("a bounded store keeps what is used, drops what is not", function()
    local cache = token_cache.new({ max_entries = 10 })
    local clock = function() return 1000 end
    local function fetch_of(k)
      return function() return { access_token = "t-" .. k, expires_at = 1000 + 3600 } end
    end
    cache:fetch("hot", fetch_of("hot"), clock)
    for i = 1, 100 do
      cache:fetch("k" .. i, fetch_of(i), clock)
      -- "hot" is used all along: it stays.
      assert.equal("t-hot", cache:fetch("hot", function() error("refetched") end, clock)
                              .access_token)
    end
    assert.is_true(cache.store:count() <= 10)
    assert.is_nil(cache.store:get("k1"))
  end)

  it("expired entries are evicted", function()
    local store = token_cache.local_store({ max_entries = 100 })
    store:set("short", { access_token = "s" }, 0.05)
    store:set("long", { access_token = "l" }, 3600)
    assert.equal(2, store:count())
    socket.sleep(0.15)  -- past the short one's life (a state, not a window)
    assert.is_nil(store:get("short"))
    assert.equal("l", store:get("long").access_token)
    assert.equal(1, store:count())
    -- A ttl of 0 or less is not kept.
    store:set("none", { access_token = "n" }, 0)
    assert.is_nil(store:get("none"))
    assert.equal(1, store:count())
  end)

  it("max_entries must be a number >= 2", function()
    assert.has_error(function() token_cache.local_store({ max_entries = 1 }) end,
                     "gauth.token_cache: max_entries must be a number >= 2")
    assert.has_error(function() token_cache.new({ max_entries = "x" }) end,
                     "gauth.token_cache: max_entries must be a number >= 2")
  end)
end)

describe("gauth.lib.lru", function()
  it("holds at most max entries; a lookup keeps an entry; count follows deletes", function()
    local m = lru.new(4)
    for i = 1, 4 do m:set(i, "v" .. i) end
    assert.equal(4, m:count())
    assert.equal("v1", m:get(1))  -- used: survives the next turn
    for i = 5, 7 do m:set(i, "v" .. i) end
    assert.is_true(m:count() <= 4)
    assert.equal("v1", m:get(1))
    assert.is_nil(m:get(2))
    m:delete(1)
    assert.is_nil(m:get(1))
    local before = m:count()
    m:set(7, "again")  -- replacing does not add
    assert.equal(before, m:count())
    assert.equal("again", m:get(7))
    m:set(7, nil)
    assert.is_nil(m:get(7))
    assert.equal(before - 1, m:count())
  end)

  it("drops entries its predicate calls expired, when met and when the generation turns", function()
    local dead = {}
    local m = lru.new(4, function(v) return dead[v] == true end)
    m:set("a", "A")
    m:set("b", "B")
    dead.A = true
    assert.is_nil(m:get("a"))
    assert.equal(1, m:count())
    dead.B = true
    m:set("c", "C")   -- the generation turns: B goes with it
    m:set("d", "D")
    assert.equal(2, m:count())
  end)

  it("max must be a number >= 2", function()
    assert.has_error(function() lru.new(1) end, "gauth.lib.lru: new: max must be a number >= 2")
  end)
end)
