--- Names: a Discovery name as googleapiclient spells it (parameters,
-- methods) and as a Lua name after a colon. Internal.
-- @module gauth.discovery.names

local gsub = string.gsub
local find = string.find

local _M = {}

local LUA_KEYWORDS = {}
for w in ("and break do else elseif end false for function goto if in local "
          .. "nil not or repeat return then true until while"):gmatch("%a+") do
  LUA_KEYWORDS[w] = true
end
-- Python's keywords, and googleapiclient's own reserved word "body": such
-- names get a trailing "_" in googleapiclient (fix_method_name).
local PY_RESERVED = { body = true }
for w in ("False None True and as assert async await break class continue "
          .. "def del elif else except finally for from global if import in is "
          .. "lambda nonlocal not or pass raise return try while with yield")
          :gmatch("%a+") do
  PY_RESERVED[w] = true
end

-- Python's key2param: a parameter's name in googleapiclient.
function _M.key2param(key)
  local s = gsub(key, "[^A-Za-z0-9]", "_")
  if not find(key, "^[A-Za-z]") then s = "x" .. s end
  return s
end

-- Python's fix_method_name.
function _M.py_name(name)
  local s = gsub(name, "%$", "_")
  if PY_RESERVED[s] then s = s .. "_" end
  return s
end

-- A name usable after a colon in Lua.
function _M.lua_name(name)
  local s = gsub(name, "[^A-Za-z0-9_]", "_")
  if find(s, "^%d") then s = "_" .. s end
  if LUA_KEYWORDS[s] then s = s .. "_" end
  return s
end

return _M
