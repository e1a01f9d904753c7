--- Request bodies and the schemas they follow: JSON text for a body
-- table, with empty arrays and exact numbers where the schema and the
-- value ask for them. Internal.
-- @module gauth.discovery.body

local common = require "gauth.discovery.common"
local values = require "gauth.discovery.values"

local type = type
local next = next
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local getmetatable = getmetatable
local gsub = string.gsub
local format = string.format
local huge = math.huge
local math_type = math.type  -- nil on LuaJIT
local json_encode = common.json_encode
local fail = common.fail
local is_int = values.is_int

local _M = {}

-- Request bodies: cjson, with two repairs. cjson writes every empty table as
-- {} (this cjson has no empty-array marker), and 14 significant digits at
-- most. The body is walked beside its schema; an empty table where the
-- schema says array, or a number cjson would round, is swapped for a
-- placeholder string during the encoding and the placeholder replaced by
-- the exact JSON after. The caller's tables are put back as they were.

local PLACEHOLDER = "gauth-raw-" .. gsub(tostring({}), "[^%w]", "") ..
                    "-" .. tostring(os.time())
local PLACEHOLDER_PAT = '"' .. gsub(PLACEHOLDER, "%-", "%%-") .. '%-(%d+)"'

local function resolve(schemas, s)
  local seen = 0
  while type(s) == "table" and s["$ref"] ~= nil do
    s = schemas[s["$ref"]]
    seen = seen + 1
    if seen > 100 then return nil end
  end
  if type(s) ~= "table" then return nil end
  return s
end

local function child_schema(s, k)
  if s == nil then return nil end
  if s.type == "array" then return s.items end
  local props = s.properties
  if type(props) == "table" and props[k] ~= nil then return props[k] end
  local ap = s.additionalProperties
  if type(ap) == "table" then return ap end
  return nil
end

local function exact_number(v)
  if v ~= v or v == huge or v == -huge then return nil end
  if math_type and math_type(v) == "integer" then
    if v > -1e14 and v < 1e14 then return nil end
    return format("%d", v)
  end
  if tonumber(format("%.14g", v)) == v then return nil end
  if is_int(v) and v > -2^63 and v < 2^63 then return format("%d", v) end
  for p = 15, 17 do
    local s = format("%." .. p .. "g", v)
    if tonumber(s) == v then return s end
  end
end

local function walk_body(spec, schemas, t, s, subs, depth)
  if depth > 200 then
    fail(spec, "body", "nested too deeply (a cycle?)")
  end
  s = resolve(schemas, s)
  for k, v in pairs(t) do
    local tv = type(v)
    if tv == "table" then
      local cs = child_schema(s, k)
      if next(v) == nil and getmetatable(v) == nil then
        local r = resolve(schemas, cs)
        if r and r.type == "array" then
          subs[#subs + 1] = { t, k, v, "[]" }
        end
      else
        walk_body(spec, schemas, v, cs, subs, depth + 1)
      end
    elseif tv == "number" then
      local raw = exact_number(v)
      if raw then subs[#subs + 1] = { t, k, v, raw } end
    end
  end
end

local function encode_body(spec, body)
  local svc = spec.svc
  local subs = {}
  walk_body(spec, svc.schemas, body, spec.request_schema, subs, 0)
  local n = #subs
  local text, err
  if n == 0 then
    text, err = json_encode(body)
  else
    for i = 1, n do
      local s = subs[i]
      s[1][s[2]] = PLACEHOLDER .. "-" .. i
    end
    text, err = json_encode(body)
    for i = 1, n do
      local s = subs[i]
      s[1][s[2]] = s[3]
    end
    if text then
      text = gsub(text, PLACEHOLDER_PAT, function(i) return subs[tonumber(i)][4] end)
    end
  end
  if not text then
    fail(spec, "body", "cannot be encoded as JSON: " .. tostring(err))
  end
  return text
end

local function properties_of(svc, mdesc, field)
  local d = resolve(svc.schemas, mdesc[field])
  return d and d.properties or nil
end

_M.resolve = resolve
_M.encode_body = encode_body
_M.properties_of = properties_of

return _M
