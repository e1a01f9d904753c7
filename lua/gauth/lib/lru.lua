--- A map bounded to `max` entries that forgets the least recently used
-- ones first. A leaf: it requires nothing. Internal.
--
-- Two generations: a lookup in the old one moves the entry to the new one;
-- when the new one is full it becomes the old one and the old one is
-- dropped. O(1) per call, no list to keep.
-- @module gauth.lib.lru

local type = type
local pairs = pairs
local error = error
local setmetatable = setmetatable
local floor = math.floor

local _M = { _VERSION = "0.1.0" }

local lru = {}
local lru_mt = { __index = lru }

--- A bounded map (least recently used entries go first).
-- @tparam number max at most this many entries (at least 2)
-- @tparam[opt] function expired `expired(value)` -> true for an entry that
--   is useless (an expired token): such entries are dropped when met
-- @return map with `get(k)`, `set(k, v)`, `delete(k)`, `count()`
function _M.new(max, expired)
  if type(max) ~= "number" or max < 2 then
    error("gauth.lib.lru: new: max must be a number >= 2", 2)
  end
  return setmetatable({ cur = {}, old = {}, n_cur = 0, n_old = 0,
                        half = floor(max / 2), expired = expired }, lru_mt)
end

function lru:get(k)
  local v = self.cur[k]
  if v == nil then
    v = self.old[k]
    if v == nil then return nil end
    self.old[k] = nil
    self.n_old = self.n_old - 1
    self:set(k, v)
  end
  local expired = self.expired
  if expired and expired(v) then
    self:delete(k)
    return nil
  end
  return v
end

function lru:set(k, v)
  local cur = self.cur
  if cur[k] == nil then
    if v == nil then return self:delete(k) end
    local old = self.old
    if old[k] ~= nil then
      old[k] = nil
      self.n_old = self.n_old - 1
    end
    if self.n_cur >= self.half then
      -- The new generation is full: it becomes the old one (without what
      -- has expired in it) and the old one goes.
      local n, expired = self.n_cur, self.expired
      if expired then
        for key, val in pairs(cur) do
          if expired(val) then
            cur[key] = nil
            n = n - 1
          end
        end
      end
      self.old, self.n_old = cur, n
      cur = {}
      self.cur, self.n_cur = cur, 0
    end
    self.n_cur = self.n_cur + 1
  elseif v == nil then
    return self:delete(k)
  end
  cur[k] = v
end

function lru:delete(k)
  if self.cur[k] ~= nil then
    self.cur[k] = nil
    self.n_cur = self.n_cur - 1
  end
  if self.old[k] ~= nil then
    self.old[k] = nil
    self.n_old = self.n_old - 1
  end
end

function lru:count()
  return self.n_cur + self.n_old
end

return _M
