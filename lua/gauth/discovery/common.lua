--- What every part of gauth.discovery shares: the version and the headers
-- built from it, the module's JSON instance, the read-only empty table,
-- bounded memo tables, and programming errors raised at the caller's line.
-- Internal.
-- @module gauth.discovery.common

local cjson_safe = require "cjson.safe"

local type = type
local pairs = pairs
local error = error
local setmetatable = setmetatable
local sub = string.sub
local match = string.match
local format = string.format
local huge = math.huge

local _M = {}

_M.VERSION = "0.1.0"

-- A private cjson instance: settings made here do not leak to other users
-- of cjson, and theirs not to us.
local json = cjson_safe.new()
_M.json_encode, _M.json_decode = json.encode, json.decode
_M.null = cjson_safe.null

_M.EMPTY = setmetatable({}, { __newindex = function()
  error("gauth.discovery: internal: write to EMPTY", 2)
end })

_M.USER_AGENT = "gauth/" .. _M.VERSION
_M.API_CLIENT = (function()
  local v = match(_VERSION, "%d+%.%d+") or "?"
  local s = "gl-lua/" .. v
  if type(jit) == "table" and jit.version then  -- luacheck: ignore
    s = s .. " luajit/" .. (match(jit.version, "[%d.]+[%w.-]*") or "?")  -- luacheck: ignore
  end
  return s .. " gauth/" .. _M.VERSION
end)()
_M.GZIP = "gzip, deflate"
_M.DEFAULT_UNIVERSE = require("gauth.universe").DEFAULT

-- The files of gauth.discovery: discovery.lua and discovery/*.lua.
local THIS_DIR = match(debug.getinfo(1, "S").source, "^(.*)/[^/]*$") or ""
local FACADE = THIS_DIR .. ".lua"
local PART = THIS_DIR .. "/"

-- Raise a programming error at the caller's line: the first stack frame
-- outside gauth.discovery (helpers sit at varying depths below the method,
-- in several files, and in the builders compiled for methods).
local function raise(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then level = 1; break end
    local src = info.source
    if src ~= FACADE and sub(src, 1, #PART) ~= PART
       and sub(src, 1, 17) ~= "=gauth.discovery:" then
      break
    end
    level = level + 1
  end
  error(msg, level)
end
_M.raise = raise

function _M.fail(spec, pname, msg)
  raise(format("gauth.discovery: %s: %s: %s", spec.id, pname, msg))
end

function _M.check_number(v, what, fname, level)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0 or v == huge) then
    error("gauth.discovery: " .. fname .. ": " .. what .. " must be a number >= 0", level + 1)
  end
end

-- The metatable of resource objects (its methods are set by
-- gauth.discovery.resource; the builders check their `self` against it).
_M.resource_mt = {}

function _M.colon_error(id)
  raise(format("gauth.discovery: %s: call it with a colon (resource:method(params))", id))
end

-- Memo tables (value -> what it turns into) stay small: emptied when they
-- grow past a few hundred entries (values used for paths and queries repeat
-- in practice). The count sits under a key no value can be.
local COUNT = {}
function _M.new_cache()
  return { [COUNT] = 0 }
end

function _M.trim_cache(c)
  local n = c[COUNT] + 1
  if n > 512 then
    for k in pairs(c) do c[k] = nil end
    n = 1
  end
  c[COUNT] = n
end

return _M
