--- Parameter values: checked against the parameter's type, enum and
-- pattern, turned into the strings googleapiclient's _cast sends, and
-- encoded for the query or the path (memoised per parameter). Internal.
-- @module gauth.discovery.values

local common = require "gauth.discovery.common"
local uri = require "gauth.discovery.uri"

local type = type
local next = next
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local sub = string.sub
local gsub = string.gsub
local find = string.find
local match = string.match
local format = string.format
local concat = table.concat
local floor = math.floor
local huge = math.huge
local math_type = math.type  -- nil on LuaJIT
local fail, trim_cache = common.fail, common.trim_cache
local quote_plus = uri.quote_plus

local _M = {}

-- ------------------------------------------------------------------------
-- Values as googleapiclient's _cast turns them into strings.

local function is_int(v)
  return v == v and v > -huge and v < huge and floor(v) == v
end

-- Python's repr of a float: the shortest digits that read back the same,
-- exponent form below 1e-4 and from 1e16.
local function py_float(v)
  if v ~= v then return "nan" end
  if v == huge then return "inf" end
  if v == -huge then return "-inf" end
  local s
  for p = 1, 17 do
    s = format("%." .. (p - 1) .. "e", v)
    if tonumber(s) == v then break end
  end
  local sign, d1, rest, ex = match(s, "^(-?)(%d)%.?(%d*)e([-+]%d+)$")
  local digits = gsub(d1 .. rest, "0+$", "")
  if digits == "" then digits = "0" end
  local e = tonumber(ex)
  if e < -4 or e >= 16 then
    local m = sub(digits, 1, 1)
    if #digits > 1 then m = m .. "." .. sub(digits, 2) end
    return format("%s%se%s%02d", sign, m, e < 0 and "-" or "+", e < 0 and -e or e)
  end
  local dp = e + 1  -- digits before the decimal point
  if dp <= 0 then
    return sign .. "0." .. string.rep("0", -dp) .. digits
  elseif dp >= #digits then
    return sign .. digits .. string.rep("0", dp - #digits) .. ".0"
  end
  return sign .. sub(digits, 1, dp) .. "." .. sub(digits, dp + 1)
end

local function int_str(v)
  if math_type and math_type(v) == "integer" then return format("%d", v) end
  if v > -2^63 and v < 2^63 then return format("%d", v) end
  return format("%.0f", v)
end

-- Python str(): for a number given where the document says "string".
local function num_str(v)
  if is_int(v) then return int_str(v) end
  return py_float(v)
end

-- The string sent for value `v` of parameter `p`; raises when the value
-- does not have the parameter's type. googleapiclient accepts more (it
-- sends str(True) for a string, truncates 1.5 for an integer): those are
-- mistakes gauth reports at once rather than send.
local function cast(spec, p, v)
  local t, tv = p.type, type(v)
  if t == "integer" then
    if tv == "number" then
      if is_int(v) then return int_str(v) end
      fail(spec, p.name, "expected an integer, got " .. tostring(v))
    elseif tv == "string" then
      -- Python's int(): optional blanks and sign, decimal digits
      local sign, digits = match(v, "^%s*([+-]?)(%d+)%s*$")
      if digits then
        digits = match(digits, "^0*(%d.-)$")
        if sign == "-" and digits ~= "0" then return "-" .. digits end
        return digits
      end
      fail(spec, p.name, "expected an integer, got string '" .. v .. "'")
    end
    fail(spec, p.name, "expected an integer, got " .. tv)
  elseif t == "number" then
    if tv == "number" then return py_float(v) end
    if tv == "string" then
      local s = match(v, "^%s*(.-)%s*$")
      local x = find(s, "^[+-]?%d*%.?%d*[eE]?[+-]?%d*$") and
                find(s, "%d") and tonumber(s)
      if x then return py_float(x) end
      fail(spec, p.name, "expected a number, got string '" .. v .. "'")
    end
    fail(spec, p.name, "expected a number, got " .. tv)
  elseif t == "boolean" then
    if v == true then return "true" end
    if v == false then return "false" end
    fail(spec, p.name, "expected a boolean, got " .. tv)
  end
  -- "string", and any other type a document may name
  if tv == "string" then return v end
  if tv == "number" then return num_str(v) end
  fail(spec, p.name, "expected a string, got " .. tv)
end

-- Check one value (an element of a repeated parameter, or the value) of
-- `p` against its enum and pattern; return its string form.
local function check_one(spec, p, v)
  if p.pattern then
    if type(v) ~= "string" then
      fail(spec, p.name, "expected a string (the parameter has a pattern), got " .. type(v))
    end
    local memo = p.pattern_memo
    local ok = memo[v]
    if ok == nil then
      ok = p.pattern(v)
      trim_cache(memo)
      memo[v] = ok
    end
    if not ok then
      fail(spec, p.name, format("value '%s' does not match the pattern '%s'", v, p.pattern_text))
    end
  end
  if p.enum and not p.enum[v] then
    fail(spec, p.name, format("value '%s' is not one of: %s", tostring(v), p.enum_text))
  end
  return cast(spec, p, v)
end

local function is_array(v)
  local n = #v
  if n == 0 then return next(v) == nil end
  local c = 0
  for _ in pairs(v) do c = c + 1 end
  return c == n
end

-- The values of `p` as a list of strings (one element unless repeated).
local function values_of(spec, p, v)
  if type(v) == "table" then
    if not p.repeated then
      fail(spec, p.name, "expected a single value, got a table (the parameter is not repeated)")
    end
    if not is_array(v) then
      fail(spec, p.name, "expected an array of values")
    end
    local out = {}
    for i = 1, #v do out[i] = check_one(spec, p, v[i]) end
    return out
  end
  return { check_one(spec, p, v) }
end

-- A value is cached (by parameter) with what it turns into only when it is
-- a scalar that can be a table key; lists are worked out every time.
local function cacheable(v)
  local tv = type(v)
  return tv == "string" or tv == "boolean" or (tv == "number" and v == v)
end

-- "key=value" (or "key=a&key=b" for a repeated parameter).
local function query_piece(spec, p, v)
  local vals = values_of(spec, p, v)
  local piece
  if #vals == 1 then
    piece = p.qkey .. quote_plus(vals[1])
  elseif #vals == 0 then
    piece = false  -- an empty list sends nothing
  else
    for i = 1, #vals do vals[i] = p.qkey .. quote_plus(vals[i]) end
    piece = concat(vals, "&")
  end
  -- 0 and -0.0 are one table key; Python writes 0.0 and -0.0 for a number
  if cacheable(v) and not (v == 0 and p.type == "number") then
    trim_cache(p.cache)
    p.cache[v] = piece
  end
  return piece
end

-- The checked, encoded value of a path parameter (a list joins with ",",
-- as uritemplate does), put in its place in parts. A parameter used once
-- in the template (all of them, in Google's documents) is memoised.
local function path_value(spec, p, v, parts)
  local vals = values_of(spec, p, v)
  local s = vals[1] or ""
  if #vals > 1 then s = concat(vals, ",") end
  local e = p.enc(s)
  parts[p.pos] = e
  local more = p.more
  if more then
    for i = 1, #more do parts[more[i][1]] = more[i][2](s) end
  elseif cacheable(v) then
    trim_cache(p.cache)
    p.cache[v] = e
  end
end

_M.is_int = is_int
_M.values_of = values_of
_M.query_piece = query_piece
_M.path_value = path_value

return _M
