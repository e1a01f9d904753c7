--- Discovery documents kept in an nginx `lua_shared_dict`, so that one
-- worker fetches a document and every worker uses it.
--
--     # nginx.conf, http {}: compute.v1 is 4 MiB of JSON; most are < 1 MiB
--     lua_shared_dict gauth_discovery 16m;
--
--     local cache = assert(require("gauth.discovery.shdict_cache").new())
--     local doc, err = cache:fetch(url, function()
--       return text_or_false_or_nil_err   -- false: 404
--     end, 86400)
--
-- A document is stored as its JSON text (`d|<url>`) with a small version
-- stamp (`m|<url>`); each worker decodes a version once and keeps the
-- table, so a lookup reads the stamp only, never the megabytes. Fetches are
-- single-flight across workers with the lock of `gauth.token_cache.shdict`.
-- Documents are written with `safe_set`: a full dict refuses a document
-- (it is then used by this worker only and a warning is logged) rather than
-- evicting what else lives there, tokens included.
--
-- With a Redis store (`store`, or the one `gauth.token_cache.redis.install`
-- made) a miss on the node is looked up in Redis, and one node of the fleet
-- fetches a document while the others wait for it (`shared_fetch` of
-- `gauth.token_cache.redis`; sealed like tokens when the store has an
-- `encryption_key`). Without the dict (`shared_dict = false`, or no
-- `gauth_discovery` in nginx.conf when the default is made) each worker
-- keeps the documents it decoded and Redis is the first shared layer.
-- @module gauth.discovery.shdict_cache

local errors = require "gauth.errors"
local ngx_phase = require "gauth.lib.ngx_phase"
local shdict_store = require "gauth.token_cache.shdict"
local cjson = require "cjson.safe"

local ngx = ngx  -- luacheck: ignore
local type = type
local error = error
local pcall = pcall
local setmetatable = setmetatable

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

--- Name of the shared dict used when none is given.
_M.DEFAULT_DICT = "gauth_discovery"
--- Seconds a document is kept by default (as gauth.discovery's cache).
_M.DEFAULT_TTL = 86400

-- Our own cjson instance: decoding settings stay ours.
local json_decode = cjson.new().decode

local seq = 0

local function now()
  ngx.update_time()
  return ngx.now()
end

-- The store `gauth.token_cache.redis.install` made, if any.
local function installed_store()
  local redis = package.loaded["gauth.token_cache.redis"]
  return redis and redis.installed
end

-- The Redis store of the cache: its own, else the installed one.
local function store_of(self)
  local st = self.store
  if st == nil then st = installed_store() end
  return st or nil
end

--- Make a cache.
-- @tparam[opt] table opts `shared_dict` (default "gauth_discovery";
--   `false`: none, with a `store` only), `lock_timeout` (s a worker waits
--   for another's fetch, default 60), `store` (a `gauth.token_cache.redis`
--   store or cache; default the one `install` made, if any; `false`: none)
-- @return cache | nil, msg, err
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.discovery.shdict_cache: opts must be a table", 2)
  end
  opts = opts or {}
  local st = opts.store
  if st ~= nil and st ~= false then
    st = require("gauth.token_cache.redis").store_of(st)
    if not st then
      return errors.fail("discovery", "store",
        "store must be a gauth.token_cache.redis store or cache")
    end
  end
  local self = setmetatable({
    store = st, lock_timeout = opts.lock_timeout or 60,
    memo = {},  -- per worker: url -> { stamp, doc[, expires] }
  }, mt)
  if opts.shared_dict == false then
    if not store_of(self) then
      return errors.fail("discovery", "shared dict",
        "shared_dict = false needs a Redis store (nothing would be shared)")
    end
    return self
  end
  local name = opts.shared_dict or _M.DEFAULT_DICT
  -- The token store over the same dict checks nginx and the dict, and
  -- gives the lock for single-flight fetches.
  local locker, _, err = shdict_store.new({ shared_dict = name })
  if not locker then
    return errors.fail("discovery", "shared dict", err.message)
  end
  self.dict, self.name, self.locker = locker.dict, name, locker
  return self
end

local default_cache

--- The cache over the dict named "gauth_discovery" when nginx.conf declares
-- one; else, when `gauth.token_cache.redis.install` made a store, a cache
-- of each worker over it; else nil (one per worker).
function _M.default()
  if default_cache then return default_cache end
  if not ngx_phase.is_ngx then return nil end
  if ngx.shared[_M.DEFAULT_DICT] then
    default_cache = _M.new()
  elseif installed_store() then
    default_cache = _M.new({ shared_dict = false })
  end
  return default_cache
end

--- The decoded document for `url` if the dict holds one, else nil. The
-- table is shared by every caller in the worker: read-only.
function _M:get(url)
  if not self.dict then
    local m = self.memo[url]
    if m and now() < m[3] then return m[2] end
    self.memo[url] = nil
    return nil
  end
  local stamp = self.dict:get("m|" .. url)
  if not stamp then
    self.memo[url] = nil
    return nil
  end
  local m = self.memo[url]
  if m and m[1] == stamp then return m[2] end
  local text = self.dict:get("d|" .. url)
  local doc = text and json_decode(text)
  if type(doc) ~= "table" then return nil end
  self.memo[url] = { stamp, doc }
  return doc
end

--- Store the JSON text of `url` for `ttl` seconds (and `doc`, its decoded
-- table, for this worker).
-- @return true | nil, msg, err
function _M:set(url, text, ttl, doc)
  ttl = ttl or _M.DEFAULT_TTL
  local dict = self.dict
  if not dict then
    doc = doc or json_decode(text)
    if type(doc) ~= "table" then
      return errors.fail("discovery", "fetch", "malformed JSON document")
    end
    self.memo[url] = { 0, doc, now() + ttl }
    return true
  end
  local ok, err = dict:safe_set("d|" .. url, text, ttl)
  if not ok then
    ngx.log(ngx.WARN, "gauth: lua_shared_dict ", self.name, ": cannot keep the ",
            "Discovery document ", url, " (", #text, " bytes): ", err)
    return errors.fail("discovery", "shared dict", "cannot keep " .. url .. ": " .. tostring(err))
  end
  seq = seq + 1
  local stamp = ngx.worker.pid() .. ":" .. seq .. ":" .. #text
  -- The stamp goes last: a reader that sees it finds the text it names.
  ok, err = dict:safe_set("m|" .. url, stamp, ttl)
  if not ok then
    dict:delete("d|" .. url)
    return errors.fail("discovery", "shared dict", "cannot keep " .. url .. ": " .. tostring(err))
  end
  if doc then self.memo[url] = { stamp, doc } end
  return true
end

--- Drop `url`'s document.
function _M:delete(url)
  if self.dict then
    self.dict:delete("m|" .. url)
    self.dict:delete("d|" .. url)
  end
  self.memo[url] = nil
  local st = store_of(self)
  if st then st:delete_shared("d", url) end
end

--- The document for `url`: from the dict, or from `fetcher()` in one
-- worker at a time while the others wait for its result.
-- @tparam string url
-- @tparam function fetcher `fetcher()` -> JSON text | false (not found) |
--   nil, err
-- @tparam[opt] number ttl seconds (default one day)
-- @return doc table | false (fetcher said not found) | nil, msg, err
function _M:fetch(url, fetcher, ttl)
  if type(url) ~= "string" or type(fetcher) ~= "function" then
    error("gauth.discovery.shdict_cache: fetch(url, fetcher[, ttl])", 2)
  end
  local doc = self:get(url)
  if doc then return doc end
  -- Without the lock (a phase that cannot wait, a timeout), fetch anyway:
  -- a second fetch costs less than no document.
  local unlock = self.locker and self.locker:lock("d|" .. url, self.lock_timeout)
  doc = self:get(url)
  if doc then
    if unlock then unlock() end
    return doc
  end
  local st = store_of(self)
  local ok, text, err, e3
  if st then
    -- One fetch for the fleet; a document from Redis is kept on the node
    -- for what is left of its time there.
    ok, text, err, e3 = pcall(st.shared_fetch, st, "d", url, function()
      local body, e2, e4 = fetcher()
      if type(body) == "string" then return body, ttl or _M.DEFAULT_TTL end
      return body, e2, e4
    end, { wait = self.lock_timeout })
    if ok and type(text) == "string" and type(err) == "number" then ttl, err = err, nil end
  else
    ok, text, err, e3 = pcall(fetcher)
  end
  if not ok then
    if unlock then unlock() end
    error(text, 0)
  end
  if type(text) ~= "string" then
    if unlock then unlock() end
    if text == false then return false end
    return errors.ret(errors.of(err, e3, "discovery", "fetch"))
  end
  doc = json_decode(text)
  if type(doc) ~= "table" then
    if unlock then unlock() end
    return errors.fail("discovery", "fetch", "malformed JSON document")
  end
  self:set(url, text, ttl, doc)
  if unlock then unlock() end
  return doc
end

return _M
