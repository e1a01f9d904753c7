--- The one error object of gauth.
-- Every expected failure in gauth returns `nil, err` where `err` is one of
-- these. Its fields are API; the text of its message is not.
-- @module gauth.errors

local setmetatable = setmetatable
local getmetatable = getmetatable
local tostring = tostring
local type = type
local pairs = pairs
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

local mt = {}
mt.__index = mt

local function render(e)
  local parts = { "gauth.", tostring(e.module), ": ", tostring(e.step), ": ",
                  tostring(e.message) }
  if e.status then
    parts[#parts + 1] = " (HTTP " .. tostring(e.status)
    if e.reason and e.reason ~= "" then
      parts[#parts + 1] = " " .. tostring(e.reason)
    end
    parts[#parts + 1] = ")"
  end
  if e.uri then
    parts[#parts + 1] = " [" .. tostring(e.uri) .. "]"
  end
  return concat(parts)
end

mt.__tostring = render

-- So that `"failed: " .. err` works as it does with string errors.
mt.__concat = function(a, b)
  return tostring(a) .. tostring(b)
end

--- Make an error object.
-- @tparam string module short module name, e.g. "service_account"
-- @tparam string step what was being done, e.g. "token exchange"
-- @tparam string message what went wrong (never a secret)
-- @tparam[opt] table fields extra fields (`status`, `retryable`, ...)
-- @return the error object
function _M.new(module, step, message, fields)
  local e = {}
  if fields then
    for k, v in pairs(fields) do e[k] = v end
  end
  e.module, e.step, e.message = module, step, message
  return setmetatable(e, mt)
end

--- Is `x` a gauth error object?
function _M.is(x)
  return type(x) == "table" and getmetatable(x) == mt
end

--- Wrap an error from a lower layer (a string from gauth.core, or another
-- error object) under a new module/step, keeping its fields.
-- @return a new error object
function _M.wrap(module, step, err, fields)
  if _M.is(err) then
    local e = _M.new(module, step, tostring(err.step) .. ": " .. tostring(err.message), err)
    e.module, e.step = module, step
    e.cause = err
    if fields then for k, v in pairs(fields) do e[k] = v end end
    return e
  end
  local msg = tostring(err)
  -- "gauth.core: step: detail" -> keep only the detail
  msg = msg:gsub("^gauth%.[%w_]+: ", "")
  return _M.new(module, step, msg, fields)
end

_M.mt = mt

return _M
