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
-- @module gauth.discovery.shdict_cache

local errors = require "gauth.errors"
local util = require "gauth.util"
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

--- Make a cache.
-- @tparam[opt] table opts `shared_dict` (default "gauth_discovery"),
--   `lock_timeout` (s a worker waits for another's fetch, default 60)
-- @return cache | nil, msg, err
function _M.new(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.discovery.shdict_cache: opts must be a table", 2)
  end
  opts = opts or {}
  local name = opts.shared_dict or _M.DEFAULT_DICT
  -- The token store over the same dict checks nginx and the dict, and
  -- gives the lock for single-flight fetches.
  local locker, _, err = shdict_store.new({ shared_dict = name })
  if not locker then
    return errors.fail("discovery", "shared dict", err.message)
  end
  return setmetatable({
    dict = locker.dict, name = name, locker = locker,
    lock_timeout = opts.lock_timeout or 60,
    memo = {},  -- per worker: url -> { stamp, doc }
  }, mt)
end

local default_cache

--- The cache over the dict named "gauth_discovery" when nginx.conf declares
-- one, else nil (one per worker).
function _M.default()
  if default_cache == nil then
    default_cache = util.is_ngx and ngx.shared[_M.DEFAULT_DICT] and _M.new() or false
  end
  return default_cache or nil
end

--- The decoded document for `url` if the dict holds one, else nil. The
-- table is shared by every caller in the worker: read-only.
function _M:get(url)
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
  self.dict:delete("m|" .. url)
  self.dict:delete("d|" .. url)
  self.memo[url] = nil
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
  local unlock = self.locker:lock("d|" .. url, self.lock_timeout)
  doc = self:get(url)
  if doc then
    if unlock then unlock() end
    return doc
  end
  local ok, text, err, e3 = pcall(fetcher)
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
