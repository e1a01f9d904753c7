--- Google API clients made from Discovery documents, shaped like Google's
-- Python client (googleapiclient) and building the same requests.
--
--     local discovery = require "gauth.discovery"
--     local compute = assert(discovery.build("compute", "v1", { credentials = creds }))
--     local req = compute:instances():list({ project = "p", zone = "z" })
--     -- req.method, req.uri, req.headers, req.body can be looked at here
--     local resp, msg, err = req:execute()   -- msg a string, err its object
--     for page in req:pages() do ... end     -- then req.last_error, if any
--
-- Resources and methods are reached with colons, by the names of the
-- document or by googleapiclient's names (`import_`); a name that is a Lua
-- keyword also answers with a trailing `_` (`end_`), and one with
-- characters Lua names cannot hold with `_` in their place (`well_known`).
-- Parameters take the document's names (`["$.xgafv"]`) or googleapiclient's
-- (`x__xgafv`); the request body goes under `body`.
--
-- Nothing is prepared before it is used: `build_from_document` decodes the
-- JSON (when given text) and makes the root resource; each resource object
-- is made on first use and kept; each method's parameter table, path
-- template and a builder compiled for it are made on first use and kept,
-- so that building a request is a look-up per parameter and one string.
--
-- A request object's `method`, `uri`, `headers` and `body` read like
-- fields (a request's headers table is made when first read); googleapiclient
-- differs from gauth on purpose in a few places, listed in
-- spec/51-discovery_conformance_spec.lua: gauth refuses values of the wrong
-- type that Python would coerce (`str(True)`, `int(1.5)`), and pages a
-- body-token method whose first request had no body.
-- @module gauth.discovery

local cjson_safe = require "cjson.safe"
local core = require "gauth.core"
local errors = require "gauth.errors"
local util = require "gauth.util"
local metrics = require "gauth.metrics"
local nonblocking_phase = util.nonblocking_phase
local phase_refusal = util.phase_refusal
local regex = require "gauth.discovery.regex"
local check_credentials_url = util.check_credentials_url

local type = type
local next = next
local pairs = pairs
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawget = rawget
local rawset = rawset
local require = require
local byte = string.byte
local gmatch = string.gmatch
local sub = string.sub
local gsub = string.gsub
local find = string.find
local match = string.match
local format = string.format
local lower = string.lower
local concat = table.concat
local sort = table.sort
local floor = math.floor
local huge = math.huge
local math_type = math.type  -- nil on LuaJIT

local _M = { _VERSION = "0.1.0" }

-- A private cjson instance: settings made here do not leak to other users
-- of cjson, and theirs not to us.
local json = cjson_safe.new()
local json_encode, json_decode = json.encode, json.decode
local null = cjson_safe.null

local EMPTY = setmetatable({}, { __newindex = function()
  error("gauth.discovery: internal: write to EMPTY", 2)
end })

local USER_AGENT = "gauth/" .. _M._VERSION
local API_CLIENT = (function()
  local v = match(_VERSION, "%d+%.%d+") or "?"
  local s = "gl-lua/" .. v
  if type(jit) == "table" and jit.version then  -- luacheck: ignore
    s = s .. " luajit/" .. (match(jit.version, "[%d.]+[%w.-]*") or "?")  -- luacheck: ignore
  end
  return s .. " gauth/" .. _M._VERSION
end)()

local DEFAULT_UNIVERSE = "googleapis.com"
local DISCOVERY_URLS = {
  "https://www.googleapis.com/discovery/v1/apis/{api}/{apiVersion}/rest",
  "https://{api}.googleapis.com/$discovery/rest?version={apiVersion}",
}
-- googleapiclient: a GET whose URI is longer than this is sent as a POST
-- with the query as a form body and x-http-method-override: GET.
local MAX_URI_LENGTH = 2048
-- Parameters every Google API accepts that documents do not list.
local STACK_PARAMS = { "trace", "pp", "userip", "strict" }
local PAYLOAD_METHODS = { PUT = true, POST = true, PATCH = true }
-- Retried by default (without num_retries): the HTTP methods whose repeat
-- has the effect of one call. DELETE is among them: repeating a delete
-- that went through gives a 404, never a second deletion.
local IDEMPOTENT = { GET = true, HEAD = true, PUT = true, DELETE = true }
local DEFAULT_RETRIES = 3

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

local THIS_FILE = debug.getinfo(1, "S").source

-- Raise a programming error at the caller's line: the first stack frame
-- outside this file (helpers sit at varying depths below the method).
local function raise(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then level = 1; break end
    local src = info.source
    if src ~= THIS_FILE and sub(src, 1, 17) ~= "=gauth.discovery:" then break end
    level = level + 1
  end
  error(msg, level)
end

local function fail(spec, pname, msg)
  raise(format("gauth.discovery: %s: %s: %s", spec.id, pname, msg))
end

local function check_number(v, what, fname, level)
  if v ~= nil and (type(v) ~= "number" or v ~= v or v < 0 or v == huge) then
    error("gauth.discovery: " .. fname .. ": " .. what .. " must be a number >= 0", level + 1)
  end
end

-- The metatable of resource objects (set up with them, below).
local resource_mt = {}

local function colon_error(id)
  raise(format("gauth.discovery: %s: call it with a colon (resource:method(params))", id))
end

-- ------------------------------------------------------------------------
-- Encoding: exactly the characters Python's urllib.parse.quote keeps.

local function pct(c)
  return format("%%%02X", byte(c))
end

-- Memo tables (value -> what it turns into) stay small: emptied when they
-- grow past a few hundred entries (values used for paths and queries repeat
-- in practice). The count sits under a key no value can be.
local COUNT = {}
local function new_cache()
  return { [COUNT] = 0 }
end

local function trim_cache(c)
  local n = c[COUNT] + 1
  if n > 512 then
    for k in pairs(c) do c[k] = nil end
    n = 1
  end
  c[COUNT] = n
end

-- `{var}`: everything but unreserved characters is encoded (so "/" too).
local ENC = new_cache()
local function quote(s)
  local e = ENC[s]
  if e then return e end
  e = gsub(s, "[^A-Za-z0-9_.~-]", pct)
  trim_cache(ENC)
  ENC[s] = e
  return e
end

-- `{+var}`: RFC 3986 reserved characters stay as they are too. "%" is not
-- among them: googleapiclient's uritemplate encodes it (so "%2F" -> "%252F").
local ENC_RESERVED = new_cache()
local function quote_reserved(s)
  local e = ENC_RESERVED[s]
  if e then return e end
  e = gsub(s, "[^A-Za-z0-9_.~:/?#%[%]@!$&'()*+,;=-]", pct)
  trim_cache(ENC_RESERVED)
  ENC_RESERVED[s] = e
  return e
end

-- Query keys and values: application/x-www-form-urlencoded as Python's
-- urlencode does it (quote_plus: a space becomes "+").
local function quote_plus(s)
  return (gsub(gsub(s, "[^A-Za-z0-9_.~ -]", pct), " ", "+"))
end

-- Python's key2param: a parameter's name in googleapiclient.
local function key2param(key)
  local s = gsub(key, "[^A-Za-z0-9]", "_")
  if not find(key, "^[A-Za-z]") then s = "x" .. s end
  return s
end

-- Python's fix_method_name.
local function py_name(name)
  local s = gsub(name, "%$", "_")
  if PY_RESERVED[s] then s = s .. "_" end
  return s
end

-- A name usable after a colon in Lua.
local function lua_name(name)
  local s = gsub(name, "[^A-Za-z0-9_]", "_")
  if find(s, "^%d") then s = "_" .. s end
  if LUA_KEYWORDS[s] then s = s .. "_" end
  return s
end

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

-- ------------------------------------------------------------------------
-- URLs, as googleapiclient joins them.

-- urllib.parse.urljoin(root, path) for a Discovery rootUrl/servicePath.
local function join_base(root, path)
  if path == nil or path == "" then return root end
  if find(path, "^%a[%w+.-]*://") then return path end
  if sub(path, 1, 1) == "/" then
    local origin = match(root, "^(%a[%w+.-]*://[^/?#]*)") or ""
    return origin .. path
  end
  local dir = match(root, "^(.*/)") or (root .. "/")
  return dir .. path
end

-- urlsplit: scheme, netloc (nil when absent), path, query, fragment.
local function urlsplit(url)
  local scheme, rest = match(url, "^(%a[%w+.-]*):(.*)$")
  if not scheme then rest = url end
  local netloc
  if sub(rest, 1, 2) == "//" then
    netloc, rest = match(rest, "^//([^/?#]*)(.*)$")
    if find(netloc, "[", 1, true) ~= nil and find(netloc, "]", 1, true) == nil
        or find(netloc, "]", 1, true) ~= nil and find(netloc, "[", 1, true) == nil then
      return nil, "invalid IPv6 URL"
    end
  end
  local frag = ""
  local hash = find(rest, "#", 1, true)
  if hash then frag = sub(rest, hash + 1); rest = sub(rest, 1, hash - 1) end
  local query = ""
  local q = find(rest, "?", 1, true)
  if q then query = sub(rest, q + 1); rest = sub(rest, 1, q - 1) end
  return scheme and lower(scheme), netloc, rest, query, frag
end

-- urlunparse(urlparse(...)) of a split URL (";" parameters of the last
-- segment survive only when not empty; empty "?" and "#" disappear).
local function urlunsplit(scheme, netloc, path, query, frag)
  local last = match(path, "^.*/()") or 1
  local semi = find(path, ";", last, true)
  if semi and semi == #path then path = sub(path, 1, -2) end
  local url = path
  if netloc or scheme == "http" or scheme == "https" then
    if url ~= "" and sub(url, 1, 1) ~= "/" then url = "/" .. url end
    url = "//" .. (netloc or "") .. url
  end
  if scheme then url = scheme .. ":" .. url end
  if query ~= "" then url = url .. "?" .. query end
  if frag ~= "" then url = url .. "#" .. frag end
  return url
end

-- googleapiclient's _urljoin when the expanded path is itself absolute
-- (a `{+var}` template given "https://..."): urljoin(base, url).
local function join_absolute(spec, base, url)
  local bscheme = lower(match(base, "^(%a[%w+.-]*):") or "")
  local scheme, netloc, path, query, frag = urlsplit(url)
  if not scheme then
    fail(spec, spec.first_var, netloc)  -- netloc holds the message here
  end
  if scheme ~= bscheme then return url end
  return urlunsplit(scheme, netloc, path, query, frag)
end

-- Credentials that may sit in a URI's query go before it enters an error.
local redact = errors.redact_uri

-- ------------------------------------------------------------------------
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

-- ------------------------------------------------------------------------
-- Methods: prepared once, on first use.

local KIND_QUERY, KIND_PATH, KIND_BODY, KIND_ALT, KIND_MEDIA, KIND_NONE =
  1, 2, 3, 4, 5, 6

local PAGE_TOKEN_NAMES = { "pageToken", "nextPageToken" }

local function find_page_token(fields)
  if type(fields) ~= "table" then return nil end
  for i = 1, 2 do
    if fields[PAGE_TOKEN_NAMES[i]] ~= nil then return PAGE_TOKEN_NAMES[i] end
  end
  return nil
end

local function properties_of(svc, mdesc, field)
  local d = resolve(svc.schemas, mdesc[field])
  return d and d.properties or nil
end

-- Split a path template into literal text and variables.
local function parse_template(path)
  local items = {}
  local pos = 1
  while true do
    local s, e, body = find(path, "{([^}]*)}", pos)
    if not s then
      if pos <= #path then items[#items + 1] = sub(path, pos) end
      break
    end
    if s > pos then items[#items + 1] = sub(path, pos, s - 1) end
    local op, names = match(body, "^([+#]?)(.*)$")
    if not find(names, "^[A-Za-z0-9_.%%-]+$") then
      return nil, "unsupported template expression {" .. body .. "}"
    end
    items[#items + 1] = { op = op, name = names }
    pos = e + 1
  end
  return items
end

local function param_desc_list(svc, mdesc)
  -- googleapiclient: the method's parameters, then the document's common
  -- ones (which win on a clash), then the undocumented stack parameters.
  local all, order = {}, {}
  local function add(name, d)
    if all[name] == nil then order[#order + 1] = name end
    all[name] = d
  end
  for name, d in pairs(mdesc.parameters or EMPTY) do add(name, d) end
  for name, d in pairs(svc.doc.parameters or EMPTY) do add(name, d) end
  for i = 1, #STACK_PARAMS do
    add(STACK_PARAMS[i], { type = "string", location = "query" })
  end
  return all, order
end

-- ------------------------------------------------------------------------
-- Request objects.

local GZIP = "gzip, deflate"

local request = {}

-- A request object holds what differs between calls (uri, body); what a
-- method's requests share (method, spec, the methods of request objects)
-- comes from a prototype per method. The headers are made when first read:
-- execute() makes the headers of each attempt from the same constants, so
-- a request that is only sent never needs a table of its own for them.
local function make_headers(spec, has_body)
  -- Every key the table may get is named here, nil or not, so that it is
  -- made with room for them all (credentials add authorization): no
  -- rehash on the way.
  return {
    accept = spec.accept,
    ["accept-encoding"] = GZIP,
    ["user-agent"] = spec.user_agent,
    ["x-goog-api-client"] = API_CLIENT,
    ["x-goog-user-project"] = spec.quota_project,
    ["content-type"] = has_body and "application/json" or nil,
    authorization = nil,
  }
end

local function request_metatable(spec)
  local proto = setmetatable({ _spec = spec, method = spec.http_method },
                             { __index = request })
  return {
    gauth_request = true,
    __index = function(r, k)
      if k == "headers" then
        local h = make_headers(spec, rawget(r, "body") ~= nil)
        rawset(r, "headers", h)
        return h
      end
      return proto[k]
    end,
  }
end

local function is_request(r)
  local mt = type(r) == "table" and getmetatable(r)
  return mt and rawget(mt, "gauth_request") == true
end

local function prepare(svc, mdesc, mname, variant)
  local id = mdesc.id or mname
  local hm = mdesc.httpMethod or "GET"
  local spec = {
    id = id, svc = svc, http_method = hm, params = {}, required = {},
    idempotent = IDEMPOTENT[hm] == true,
  }
  if variant == "media" then
    spec.alt, spec.accept, spec.raw = "media", "*/*", true
  elseif mdesc.response == nil then
    spec.accept, spec.raw = "*/*", true
  else
    spec.alt, spec.accept = "json", "application/json"
  end
  -- Pieces every query ends with: googleapiclient adds the developer key,
  -- then the model's alt, over whatever the caller gave for them.
  local tail = {}
  if svc.api_key then tail[#tail + 1] = "key=" .. quote_plus(svc.api_key) end
  if spec.alt then tail[#tail + 1] = "alt=" .. spec.alt end
  spec.tail = #tail > 0 and concat(tail, "&") or nil

  local descs, names = param_desc_list(svc, mdesc)
  local response_token = find_page_token(properties_of(svc, mdesc, "response"))

  -- Query order: parameterOrder first, then by name, so that a request's
  -- URI does not depend on the order a Lua table hands out its keys.
  local rank = {}
  for i, n in pairs(mdesc.parameterOrder or EMPTY) do rank[n] = i end
  sort(names, function(a, b)
    local ra, rb = rank[a] or huge, rank[b] or huge
    if ra ~= rb then return ra < rb end
    return a < b
  end)

  local by_name = spec.params
  for i = 1, #names do
    local key = names[i]
    local d = descs[key]
    if type(d) ~= "table" then d = EMPTY end
    local name = key2param(key)
    local p = {
      name = name, key = key, ord = i, type = d.type or "string",
      repeated = d.repeated == true, cache = new_cache(),
      qkey = quote_plus(key) .. "=",
    }
    if d.location == "query" then p.kind = KIND_QUERY
    else p.kind = KIND_NONE end  -- "path" is settled by the template below
    if type(d.pattern) == "string" and d.pattern ~= "" then
      local m = regex.compile(d.pattern)
      if m then
        -- A pattern this module cannot read is left to the server.
        p.pattern, p.pattern_text, p.pattern_memo = m, d.pattern, new_cache()
      end
    end
    if type(d.enum) == "table" and #d.enum > 0 then
      p.enum = {}
      for _, e in pairs(d.enum) do p.enum[e] = true end
      p.enum_text = concat(d.enum, ", ")
    end
    if d.required == true then
      -- googleapiclient does not insist on a page token that a method
      -- declares required when its response has none (drive.changes.watch).
      if not ((key == "pageToken" or key == "nextPageToken") and not response_token) then
        spec.required[#spec.required + 1] = p
        p.required = true
      end
    end
    if (name == "alt" and spec.alt) or (name == "key" and svc.api_key) then
      -- checked, then replaced by the tail, as googleapiclient does
      p.kind = KIND_ALT
    end
    by_name[name] = p
  end
  if PAYLOAD_METHODS[hm] and mdesc.request ~= nil then
    by_name.body = { name = "body", key = "body", kind = KIND_BODY }
    spec.request_schema = mdesc.request
  end
  if mdesc.mediaUpload ~= nil then
    by_name.media_body = { name = "media_body", key = "media_body", kind = KIND_MEDIA }
    by_name.media_mime_type = { name = "media_mime_type", key = "media_mime_type",
                                kind = KIND_NONE, type = "string" }
  end
  -- The document's own names answer too.
  for name, p in pairs(by_name) do
    if p.key ~= name and by_name[p.key] == nil then
      spec.aliases = spec.aliases or {}
      spec.aliases[p.key] = p
    end
  end
  if spec.aliases then
    for k, p in pairs(spec.aliases) do by_name[k] = p end
  end

  -- The path template: parts[1] is the base URL, literals in place, one
  -- slot per variable.
  local items, terr = parse_template(mdesc.path or "")
  if not items then
    error(format("gauth.discovery: %s: %s", id, terr), 0)
  end
  local parts = { svc.base_slash }
  for i = 1, #items do
    local it = items[i]
    if type(it) == "string" then
      if i == 1 then
        -- googleapiclient's _urljoin: one leading "/" goes
        if sub(it, 1, 1) == "/" then it = sub(it, 2) end
        if find(it, "^https?://") then spec.absolute = true end
      end
      parts[#parts + 1] = it
    else
      local p = by_name[key2param(it.name)]
      if i == 1 then spec.var_first = true; spec.first_var = it.name end
      if p and p.kind ~= KIND_BODY and p.kind ~= KIND_MEDIA then
        -- a template variable is a path parameter whatever its location
        p.kind = KIND_PATH
        local pos = #parts + 1
        parts[pos] = ""
        local enc = it.op == "" and quote or quote_reserved
        if p.pos == nil then
          p.pos, p.enc = pos, enc
        else
          p.more = p.more or {}
          p.more[#p.more + 1] = { pos, enc }
        end
      else
        -- a variable no parameter fills expands to nothing
        parts[#parts + 1] = ""
      end
    end
  end
  if spec.absolute then parts[1] = "" end
  -- The URI's first "?" starts the query when nothing before it can hold
  -- one: requests then need not keep where their query starts.
  local q_first = not spec.absolute and not spec.var_first
  for i = 1, #parts do
    if find(parts[i], "?", 1, true) then q_first = false end
  end
  for _, p in pairs(by_name) do
    if p.kind == KIND_PATH and (p.enc ~= quote or p.more) then q_first = false end
  end
  spec.q_first = q_first
  -- parts doubles as the buffer the URI is made in: after the path, "?",
  -- then the query pieces with "&" between them
  local np = #parts
  spec.nparts = np
  parts[np + 1] = "?"
  spec.parts = parts
  spec.user_agent, spec.quota_project = svc.user_agent, svc.quota_project
  spec.req_mt = request_metatable(spec)

  -- Paging: the response names its next-page token; the request takes it
  -- as a parameter or in its body.
  if response_token then
    local qname = find_page_token(mdesc.parameters)
    if qname then
      local p = by_name[key2param(qname)]
      spec.page = { next_name = response_token, name = qname, in_query = true,
                    qkey = p and p.qkey or (quote_plus(qname) .. "=") }
    else
      local bname = find_page_token(properties_of(svc, mdesc, "request"))
      if bname then
        spec.page = { next_name = response_token, name = bname, in_query = false }
      end
    end
  end
  return spec
end

-- ------------------------------------------------------------------------
-- Building requests.

-- The request object. `ql` is the length of the query in `uri` (kept only
-- when the path may hold a "?"); `upath` and `q` (the URI before "?" and
-- the query) are given instead when `uri` is not simply upath .. "?" .. q.
-- The table holds only what the request has: LuaJIT then copies a
-- one-slot template for most requests.
local function finish(spec, uri, ql, body, upath, q, abs)
  local r = setmetatable({ uri = uri }, spec.req_mt)
  if not spec.q_first then r._ql = ql end
  if body then r.body = body end
  if upath then r._u, r._q, r._abs = upath, q, abs end
  if spec.http_method == "GET" and #uri > MAX_URI_LENGTH then
    -- googleapiclient (HttpRequest.execute): the query becomes a form body.
    -- It splits the URI with urlparse, so a "#" in the path ends it there.
    if not upath then
      r._u, r._q = sub(uri, 1, #uri - ql - 1), sub(uri, #uri - ql + 1)
    end
    local scheme, netloc, path, query = urlsplit(uri)
    local h = make_headers(spec, false)
    h["x-http-method-override"] = "GET"
    h["content-type"] = "application/x-www-form-urlencoded"
    r.method, r.headers = "POST", h
    r.uri = urlunsplit(scheme, netloc, path, "", "")
    r.body = query
  end
  return r
end

-- The URI before "?" and the query of a request.
local function uri_parts(req)
  if req._u then return req._u, req._q end
  local uri, ql = req.uri, rawget(req, "_ql")
  if not ql then
    local i = find(uri, "?", 1, true)
    return sub(uri, 1, i - 1), sub(uri, i + 1)
  end
  return sub(uri, 1, #uri - ql - 1), sub(uri, #uri - ql + 1)
end

-- The URI when the template starts with a variable (one leading "/" of its
-- value goes; an absolute URL replaces the base, as urljoin does) or is
-- absolute itself.
local function odd_uri(spec, parts, np, q)
  local base = spec.absolute and spec.svc.base_slash or parts[1]
  local expanded = concat(parts, "", 2, np)
  if spec.var_first and sub(expanded, 1, 1) == "/" then expanded = sub(expanded, 2) end
  if spec.absolute or find(expanded, "^https?://") then
    return join_absolute(spec, base, expanded .. "?" .. q), expanded, true
  end
  return base .. expanded .. "?" .. q, base .. expanded, nil
end

-- The key of `params` that no parameter has (there is one: the count of
-- keys said so).
local function unknown(spec, params)
  local by_name = spec.params
  for k in next, params do
    if by_name[k] == nil then fail(spec, tostring(k), "unknown parameter") end
  end
end

local nkeys
do
  local ok, f = pcall(require, "table.nkeys")  -- OpenResty's LuaJIT: compiled
  if ok and type(f) == "function" then
    nkeys = f
  else
    nkeys = function(t)
      local n = 0
      for _ in next, t do n = n + 1 end
      return n
    end
  end
end

local function params_error(spec, params)
  raise(format("gauth.discovery: %s: parameters must be a table, got %s",
               spec.id, type(params)))
end

local function body_error(spec, v)
  fail(spec, "body", "expected a table, got " .. type(v))
end

local function media_error(spec)
  fail(spec, "media_body", "media uploads are not made here: use gauth.media")
end

local function twice(spec, p)
  fail(spec, p.key, "given twice (also as " .. p.name .. ")")
end

local function odd_finish(spec, B, np, k, body)
  local q = k > np + 1 and concat(B, "", np + 2, k) or ""
  local uri, upath, abs = odd_uri(spec, B, np, q)
  return finish(spec, uri, #q, body, upath, q, abs)
end

local function body_text(spec, body)
  if spec.svc.data_wrapper and body.data == nil then body = { data = body } end
  return encode_body(spec, body)
end

local HELPERS = {
  null = null, nkeys = nkeys, unknown = unknown, fail = fail, finish = finish,
  odd_finish = odd_finish, query_piece = query_piece, path_value = path_value,
  values_of = values_of, params_error = params_error, body_error = body_error,
  media_error = media_error, twice = twice, body_text = body_text,
  concat = concat, type = type, EMPTY = EMPTY, getmetatable = getmetatable,
  resource_mt = resource_mt, colon_error = colon_error,
}

-- The builder of one method, as Lua source made for it: one lookup per
-- parameter the method has, in query order (so the query needs no
-- sorting), values memoised per parameter, the URI made by one
-- table.concat. Straight-line code is what LuaJIT compiles well: a loop
-- over the caller's table would leave the rest of the build to its
-- interpreter. Names and literals enter the source through %q only.
local function compile_builder(spec)
  local by_name, B = spec.params, spec.parts
  local list = {}
  for name, p in pairs(by_name) do
    if name == p.name then list[#list + 1] = p end
  end
  sort(list, function(a, b)
    if a.kind == KIND_QUERY and b.kind == KIND_QUERY then return a.ord < b.ord end
    if (a.kind == KIND_QUERY) ~= (b.kind == KIND_QUERY) then return b.kind == KIND_QUERY end
    return a.name < b.name
  end)
  local np = spec.nparts
  local C, P = {}, {}
  local src = { "local H, spec, B, C, P = ...\n" }
  for name in pairs(HELPERS) do
    src[#src + 1] = format("local %s = H.%s\n", name, name)
  end
  for _, line in ipairs({
    "return function(self, params)\n",
    "  if getmetatable(self) ~= resource_mt then colon_error(spec.id) end\n",
    "  if params == nil then params = EMPTY elseif type(params) ~= 'table' then params_error(spec, params) end\n",
    format("  local n, k, miss, body, v, e = 0, %d, nil, nil\n", np + 1),
  }) do src[#src + 1] = line end
  local function add(...) src[#src + 1] = format(...) end
  local path_vars = {}
  for i, p in ipairs(list) do
    C[i], P[i] = p.cache, p
    add("  v = params[%q]\n", p.name)
    if p.key ~= p.name and by_name[p.key] == p then
      add("  do local v2 = params[%q]; if v2 ~= nil then if v ~= nil then twice(spec, P[%d]) end; v = v2 end end\n",
          p.key, i)
    end
    add("  if v ~= nil then\n    n = n + 1\n    if v ~= null then\n")
    local kind = p.kind
    if kind == KIND_QUERY then
      add("      e = C[%d][v]; if e == nil then e = query_piece(spec, P[%d], v) end\n", i, i)
      add("      if e then k = k + 1; B[k] = e; k = k + 1; B[k] = '&' end\n")
    elseif kind == KIND_PATH then
      add("      e = C[%d][v]; if e == nil then path_value(spec, P[%d], v, B) else B[%d] = e end\n",
          i, i, p.pos)
      path_vars[#path_vars + 1] = p.pos
      for _, m in ipairs(p.more or {}) do path_vars[#path_vars + 1] = m[1] end
    elseif kind == KIND_BODY then
      add("      if type(v) ~= 'table' then body_error(spec, v) end; body = v\n")
    elseif kind == KIND_ALT then
      add("      if C[%d][v] == nil then query_piece(spec, P[%d], v) end\n", i, i)
    elseif kind == KIND_MEDIA then
      add("      media_error(spec)\n")
    else
      add("      values_of(spec, P[%d], v)\n", i)
    end
    if p.required then
      add("    elseif miss == nil then miss = %q\n    end\n  elseif miss == nil then miss = %q\n", p.name, p.name)
    elseif kind == KIND_PATH then
      -- an absent optional path parameter expands to nothing
      local clear = { format("B[%d] = ''", p.pos) }
      for _, m in ipairs(p.more or {}) do clear[#clear + 1] = format("B[%d] = ''", m[1]) end
      add("    else %s\n    end\n  else %s\n", concat(clear, "; "), concat(clear, "; "))
    else
      add("    end\n")
    end
    add("  end\n")
  end
  add("  if n ~= nkeys(params) then unknown(spec, params) end\n")
  add("  if miss then fail(spec, miss, 'missing required parameter') end\n")
  if spec.tail then
    add("  k = k + 1; B[k] = %q\n", spec.tail)
  else
    add("  if k > %d then k = k - 1 end\n", np + 1)
  end
  add("  if body then body = body_text(spec, body) end\n")
  if spec.var_first or spec.absolute then
    add("  return odd_finish(spec, B, %d, k, body)\n", np)
  else
    -- the length of the URI before "?": the literals' and the variables'
    local lit = 0
    local is_var = {}
    for _, pos in ipairs(path_vars) do is_var[pos] = true end
    local ul = {}
    for pos = 1, np do
      if is_var[pos] then ul[#ul + 1] = format("#B[%d]", pos) else lit = lit + #B[pos] end
    end
    ul[#ul + 1] = tostring(lit)
    add("  local uri = concat(B, '', 1, k)\n")
    add("  return finish(spec, uri, #uri - (%s) - 1, body)\n", concat(ul, " + "))
  end
  add("end\n")
  local code = concat(src)
  local chunk, err = (loadstring or load)(code, "=gauth.discovery:" .. spec.id)  -- luacheck: ignore
  if not chunk then
    error("gauth.discovery: internal: cannot compile the builder of " .. spec.id .. ": " .. err, 0)
  end
  return chunk(HELPERS, spec, B, C, P)
end

-- The request for the page after `prev_req`, or nil (googleapiclient's
-- <method>_next).
local function next_request(spec, prev_req, prev_resp)
  local page = spec.page
  if type(prev_resp) ~= "table" then return nil end
  local tok = prev_resp[page.next_name]
  if tok == nil or tok == null or tok == false or tok == "" or tok == 0 then
    return nil
  end
  if type(tok) ~= "string" then tok = tostring(tok) end
  if not is_request(prev_req) then
    raise(format("gauth.discovery: %s: _next: expects the previous request", spec.id))
  end
  local upath, q = uri_parts(prev_req)
  local abs = prev_req._abs
  local body = prev_req.body
  if prev_req.method ~= spec.http_method then body = nil end  -- a form body
  if page.in_query then
    -- the other query parameters stay as they were; the token is replaced
    local kept, m = {}, 0
    local qkey, lk = page.qkey, #page.qkey
    for piece in string.gmatch(q, "[^&]+") do
      if sub(piece, 1, lk) ~= qkey then m = m + 1; kept[m] = piece end
    end
    m = m + 1
    kept[m] = qkey .. quote_plus(tok)
    q = concat(kept, "&")
  else
    local b = body and json_decode(body)
    if type(b) ~= "table" then b = {} end
    b[page.name] = tok
    body = encode_body(spec, b)
  end
  local uri = upath .. "?" .. q
  if abs then uri = join_absolute(spec, spec.svc.base_slash, uri) end
  return finish(spec, uri, #q, body, upath, q, abs)
end

-- ------------------------------------------------------------------------
-- Executing.

-- The error object for a non-2xx response.
local function http_error(spec, req, res)
  return errors.from_response("discovery", spec.id, res, req.uri)
end

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

local retry_call, within  -- gauth.retry's, loaded when first needed

-- The universe of credentials: their `universe_domain` field when it is
-- known without the network; else `get_universe_domain()` (metadata-based
-- credentials: one read, cached by them); else Google's default universe
-- (as google-auth's base class says).
-- @return domain | nil, err
local function creds_universe(creds)
  local ud = creds.universe_domain
  if type(ud) == "string" and ud ~= "" then return ud end
  if type(creds.get_universe_domain) == "function" then
    local v, e2, e3 = creds:get_universe_domain()
    if not v then return nil, errors.of(e2, e3) end
    return v
  end
  return DEFAULT_UNIVERSE
end

--- Refuse to send credentials of one universe to a service of another
-- (google-api-python-client 2.x's check, at the first request of each
-- service object; a success is remembered). Without credentials there is
-- nothing to check (an unauthenticated call, or `api_key` as `?key=`).
-- Internal: used by execute, media and batch.
-- @tparam table svc the service's shared state
-- @tparam string module the module named in the error
-- @tparam string step
-- @return true | nil, err (`kind` "universe_mismatch", `service_universe`,
--   `credentials_universe`; not retryable)
function _M._check_universe(svc, module, step)
  local creds = svc.credentials
  if not creds or svc.universe_ok == creds then return true end
  local cu, err = creds_universe(creds)
  if not cu then
    return nil, errors.wrap(module, step, err, { retryable = false,
      message = "cannot learn the credentials' universe domain: " .. tostring(err and err.message) })
  end
  local su = svc.universe
  if cu ~= su then
    return nil, errors.new(module, step, "the service's universe domain (" .. su
      .. ") does not match the universe domain of its credentials (" .. cu
      .. "); nothing was sent (the service's universe is opts.universe_domain,"
      .. " else GOOGLE_CLOUD_UNIVERSE_DOMAIN, else " .. DEFAULT_UNIVERSE .. ")",
      { retryable = false, kind = "universe_mismatch", service_universe = su,
        credentials_universe = cu })
  end
  svc.universe_ok = creds
  return true
end
local check_universe = _M._check_universe

-- One attempt: headers (the request's own when it has some, else made from
-- the method's constants), credentials, the transport, the answer decoded.
-- A 401 drops the credentials' token and is tried again at once, once per
-- execute(): `refreshed` says whether that happened already, and comes
-- back as the third result. Internal: fails with `nil, err` (the object),
-- `execute` gives the public shape.
local function attempt(self, spec, http, timeout, remaining, refreshed)
  local svc = spec.svc
  local creds = svc.credentials
  local body = rawget(self, "body")
  local own = rawget(self, "headers")
  local h = own and copy(own) or make_headers(spec, body ~= nil)
  if creds or svc.api_key then
    -- Never a token or key in clear text to a remote host, whatever the
    -- document's rootUrl (a planted or tampered document, say).
    local ok, _, err = check_credentials_url(rawget(self, "uri"), "discovery", spec.id)
    if not ok then return nil, err, refreshed end
  end
  if creds then
    local uok, uerr = check_universe(svc, "discovery", spec.id)
    if not uok then return nil, uerr, refreshed end
    local ok, err = errors.pair(creds:apply(h))
    if not ok then
      -- No token: the API was not asked. The credentials retried already
      -- (and under nginx the failure is remembered for all workers): the
      -- retry loop below does not try again (`token_failed`).
      return nil, errors.wrap("discovery", spec.id, err, { uri = redact(rawget(self, "uri")),
                                                           token_failed = true }),
             refreshed
    end
  end
  if remaining and (not timeout or remaining < timeout) then timeout = remaining end
  local uri = rawget(self, "uri")
  local res, err = errors.pair(http:request({
    method = rawget(self, "method") or spec.http_method, url = uri,
    headers = h, body = body, timeout = timeout,
  }))
  if not res then
    metrics.api_request(metrics.host_of(uri), "error")
    return nil, errors.wrap("discovery", spec.id, err, { uri = redact(uri) }),
           refreshed
  end
  local status = res.status
  metrics.api_request(metrics.host_of(uri), status)
  if status >= 200 and status < 300 then
    local text = res.body or ""
    if spec.raw then return text, nil, refreshed end
    if text == "" or status == 204 then return {}, nil, refreshed end
    local v = json_decode(text)
    if v == nil then
      return nil, errors.new("discovery", spec.id, "malformed JSON response",
                             { status = status, body = text, uri = redact(rawget(self, "uri")) }),
             refreshed
    end
    if svc.data_wrapper and type(v) == "table" and v.data ~= nil then v = v.data end
    return v, nil, refreshed
  end
  if status == 401 and creds and not refreshed and creds.invalidate then
    creds:invalidate()
    return attempt(self, spec, http, timeout, remaining, true)
  end
  return nil, http_error(spec, self, res), refreshed
end

-- The attempts after the first (or all of them, under a deadline), through
-- gauth.retry.
local function with_retries(self, spec, http, n, timeout, deadline, opts, first_err, refreshed)
  if not retry_call then retry_call = require("gauth.retry").call end
  return retry_call(function(a, remaining)
    if a == 1 and first_err then return errors.ret(first_err) end
    local res, err
    res, err, refreshed = attempt(self, spec, http, timeout, remaining, refreshed)
    return res, err
  end, {
    attempts = n + 1, deadline = deadline, sleep = util.seam(opts, "sleep") or spec.svc.sleep,
    random = util.seam(opts, "random"),
    on_retry = function()
      metrics.api_retry(metrics.host_of(rawget(self, "uri")))
    end,
  })
end

-- The attempts of execute(): the first, then the retry loop.
local function run(self, spec, http, n, timeout, deadline, opts)
  -- The first attempt is made here, outside the retry loop: most calls
  -- need no other. (No closure is made in this function: under LuaJIT a
  -- function that makes one cannot be compiled through its returns.)
  local first_err, refreshed
  if deadline == nil or n == 0 then
    local res, err
    res, err, refreshed = attempt(self, spec, http, timeout, deadline, false)
    if res ~= nil then return res end
    -- A token failure is not retried here (`token_failed`, see attempt).
    if n == 0 or not errors.is(err) or err.retryable ~= true or err.token_failed then
      return errors.ret(err, "discovery", spec.id)
    end
    first_err = err
  end
  return with_retries(self, spec, http, n, timeout, deadline, opts, first_err, refreshed)
end

--- Send the request, with retries, and decode the response.
-- Retries (exponential backoff with jitter, `Retry-After` honoured) follow
-- 5xx, 429, 403 `rateLimitExceeded`/`userRateLimitExceeded` and transport
-- errors marked retryable; by default 3 retries for GET, HEAD, PUT and
-- DELETE and none for POST and PATCH. A 401 drops the credentials' token
-- and is tried once more at once.
-- @tparam[opt] table opts `num_retries` (retries after the first attempt;
--   for any method), `timeout` (seconds per attempt), `deadline` (seconds
--   for all attempts and the token fetch), `sleep` (function(seconds), for
--   tests), `random` (function() -> [0, 1), for tests), `http` (a
--   transport for this call)
-- @return the decoded JSON response (an empty table for an empty 2xx body;
--   the body text for `_media` methods and methods without a response
--   schema) | nil, msg, err (`gauth.errors`, module "discovery", step the
--   method id, with `status`, `reason`, `google_status`, `message`,
--   `details`, `body`, `uri`; after retries also `attempts`). Inside nginx,
--   in a phase without cosockets: `nil, msg, err` at once (`retryable`,
--   `kind` "phase", `phase`).
function request:execute(opts)
  local spec = self._spec
  local svc = spec.svc
  -- Inside nginx, a phase without cosockets fails at once: nothing there
  -- may block (no libcurl, no sleep between retries).
  local phase = nonblocking_phase()
  if phase then
    return errors.fail("discovery", spec.id, "cannot send a request: " .. phase_refusal(phase),
                       { retryable = true, kind = "phase", phase = phase,
                         uri = redact(rawget(self, "uri")) })
  end
  local http, n, timeout, deadline
  if opts == nil then
    http, n, timeout = svc.http, svc.num_retries, svc.timeout
  else
    if type(opts) ~= "table" then
      error("gauth.discovery: execute: opts must be a table", 2)
    end
    check_number(opts.num_retries, "opts.num_retries", "execute", 2)
    check_number(opts.timeout, "opts.timeout", "execute", 2)
    check_number(opts.deadline, "opts.deadline", "execute", 2)
    http = opts.http or svc.http
    n = opts.num_retries
    if n == nil then n = svc.num_retries end
    timeout = opts.timeout or svc.timeout
    deadline = opts.deadline
  end
  if not http then
    local err
    http, err = errors.pair(require("gauth.http").default())
    if not http then return errors.fail_with("discovery", spec.id, err) end
  end
  if n == nil then n = spec.idempotent and DEFAULT_RETRIES or 0 end
  if deadline then
    -- One deadline for everything, the token fetch included.
    if not within then within = require("gauth.retry").within end
    return within(deadline, run, self, spec, http, n, timeout, deadline, opts)
  end
  return run(self, spec, http, n, timeout, deadline, opts)
end

--- Download what the request answers (a `_media` variant's bytes) into a
-- file, in ranged requests: see `gauth.media.download`.
-- @param dest a path or an open file
-- @tparam[opt] table opts `chunk_size`, `progress`, `resume`, ...
-- @return bytes, total | nil, msg, err
function request:download(dest, opts)
  return require("gauth.media").download(self, dest, opts)
end

--- Iterate over the pages of a paged method:
--
--     for page in req:pages() do ... end
--     if req.last_error then ... end   -- the failure that ended it, if any
--
-- The request itself gives the first page; each page's next-page token
-- makes the next request. The loop body only ever gets pages: a failure
-- ends the iteration, and leaves its message in `req.last_message` and
-- its `gauth.errors` object in `req.last_error` (both cleared when
-- `pages()` is called; nil when every page came).
-- @tparam[opt] table opts as for `execute`
-- @return the iterator
function request:pages(opts)
  local spec = self._spec
  if not spec.page then
    error(format("gauth.discovery: %s: pages: the method has no page token", spec.id), 2)
  end
  local first = self
  rawset(first, "last_error", nil)
  rawset(first, "last_message", nil)
  local req, last = self, nil
  return function()
    if not req then return nil end
    local resp, msg, err = req:execute(opts)
    if resp == nil then
      req = nil
      rawset(first, "last_message", msg)
      rawset(first, "last_error", err)
      return nil
    end
    local tok = type(resp) == "table" and resp[spec.page.next_name]
    if tok ~= nil and tok == last then
      -- the same token twice would loop for ever
      req = nil
    else
      last = tok
      req = next_request(spec, req, resp)
    end
    return resp
  end
end

-- ------------------------------------------------------------------------
-- Resources.

local function new_resource(svc, desc, path)
  return setmetatable({ _svc = svc, _desc = desc, _path = path }, resource_mt)
end

-- Every name a resource answers to -> { kind, name }.
local function names_of(desc, svc)
  local names = {}
  local function add(alias, e)
    names[alias] = e
  end
  local function add_all(name, e)
    add(name, e); add(py_name(name), e); add(lua_name(name), e)
    local ln = lua_name(py_name(name))
    add(ln, e)
  end
  -- googleapiclient sets methods, then resources (which win), then _next
  for mname, mdesc in pairs(type(desc.methods) == "table" and desc.methods or EMPTY) do
    add_all(mname, { kind = "method", name = mname })
    if type(mdesc) == "table" and mdesc.supportsMediaDownload then
      add_all(mname .. "_media", { kind = "media", name = mname })
    end
  end
  for rname in pairs(type(desc.resources) == "table" and desc.resources or EMPTY) do
    add_all(rname, { kind = "resource", name = rname })
  end
  for mname, mdesc in pairs(type(desc.methods) == "table" and desc.methods or EMPTY) do
    if type(mdesc) == "table" then
      local rt = find_page_token(properties_of(svc, mdesc, "response"))
      if rt and (find_page_token(mdesc.parameters)
                 or find_page_token(properties_of(svc, mdesc, "request"))) then
        add_all(mname .. "_next", { kind = "next", name = mname })
      end
    end
  end
  return names
end

resource_mt.__index = function(self, key)
  if type(key) ~= "string" then return nil end
  local names = rawget(self, "_names")
  if not names then
    names = names_of(rawget(self, "_desc"), rawget(self, "_svc"))
    rawset(self, "_names", names)
  end
  local e = names[key]
  if not e then
    -- googleapiclient gives the root resource new_batch_http_request(); a
    -- method or resource of that name in the document would win
    if key == "new_batch_http_request" and rawget(self, "_path") == "" then
      local svc = rawget(self, "_svc")
      local fn = function(s, opts)
        if getmetatable(s) ~= resource_mt then colon_error(key) end
        return require("gauth.batch").new(svc, opts)
      end
      rawset(self, key, fn)
      return fn
    end
    return nil
  end
  local fn = e.fn
  if not fn then
    local svc, desc = rawget(self, "_svc"), rawget(self, "_desc")
    local kind, name = e.kind, e.name
    if kind == "resource" then
      local child
      fn = function(s)
        if getmetatable(s) ~= resource_mt then colon_error(name) end
        if not child then
          child = new_resource(svc, desc.resources[name], rawget(self, "_path") .. name .. ".")
        end
        return child
      end
    elseif kind == "method" or kind == "media" or kind == "next" then
      -- a method and its _next share one prepared spec
      local specs = rawget(self, "_specs")
      if not specs then specs = {}; rawset(self, "_specs", specs) end
      local skey = (kind == "media" and "media " or "") .. name
      local spec = specs[skey]
      if not spec then
        spec = prepare(svc, desc.methods[name], name, kind == "media" and "media" or nil)
        specs[skey] = spec
      end
      if kind == "next" then
        fn = function(s, prev_req, prev_resp)
          if getmetatable(s) ~= resource_mt then colon_error(spec.id) end
          return next_request(spec, prev_req, prev_resp)
        end
      else
        fn = compile_builder(spec)
        if kind == "method" and desc.methods[name].mediaUpload ~= nil then
          -- media_body / media_mime_type: the upload is gauth.media's
          fn = require("gauth.media").wrap_builder(fn, desc.methods[name])
        end
      end
    end
    e.fn = fn
  end
  rawset(self, key, fn)
  return fn
end

resource_mt.__tostring = function(self)
  local svc = rawget(self, "_svc")
  local path = rawget(self, "_path")
  return "gauth.discovery resource " .. tostring(svc.name) ..
         (path ~= "" and (" " .. sub(path, 1, -2)) or "")
end

-- ------------------------------------------------------------------------
-- Services.


local function check_opts(opts, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("gauth.discovery: " .. fname .. ": opts must be a table", 3)
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  for _, k in pairs({ "api_endpoint", "universe_domain", "quota_project",
                      "user_agent", "api_key", "client_cert", "client_key",
                      "certificate_config", "ca_file" }) do
    if o[k] ~= nil and (type(o[k]) ~= "string" or o[k] == "") then
      error("gauth.discovery: " .. fname .. ": opts." .. k .. " must be a non-empty string", 3)
    end
  end
  if o.credentials ~= nil and (type(o.credentials) ~= "table"
                               or type(o.credentials.apply) ~= "function") then
    error("gauth.discovery: " .. fname .. ": opts.credentials must have apply(headers)", 3)
  end
  if o.http ~= nil and (type(o.http) ~= "table" or type(o.http.request) ~= "function") then
    error("gauth.discovery: " .. fname .. ": opts.http must be a transport (with :request)", 3)
  end
  if o.shared_cache ~= nil and o.shared_cache ~= false and (type(o.shared_cache) ~= "table"
                                 or type(o.shared_cache.fetch) ~= "function") then
    error("gauth.discovery: " .. fname .. ": opts.shared_cache must be a "
          .. "gauth.discovery.shdict_cache (or false)", 3)
  end
  if o.store ~= nil and o.store ~= false and type(o.store) ~= "table" then
    error("gauth.discovery: " .. fname .. ": opts.store must be a gauth.token_cache.redis "
          .. "store or cache (or false)", 3)
  end
  check_number(o.num_retries, "opts.num_retries", fname, 3)
  check_number(o.timeout, "opts.timeout", fname, 3)
  if o.proxy ~= nil and o.proxy ~= false and type(o.proxy) ~= "string" then
    error("gauth.discovery: " .. fname .. ": opts.proxy must be a string (a proxy URL) or false", 3)
  end
  if o.no_proxy ~= nil and type(o.no_proxy) ~= "string" then
    error("gauth.discovery: " .. fname .. ": opts.no_proxy must be a string", 3)
  end
  return o
end

-- `proxy` / `no_proxy` without `http`: a transport of the service's own
-- (the document fetch and every request go through it).
-- @return true | nil, msg, err (a proxy URL that does not parse)
local function proxy_transport(o)
  if o.http or (o.proxy == nil and o.no_proxy == nil) then return true end
  local http, msg, err = require("gauth.http").new({ proxy = o.proxy, no_proxy = o.no_proxy })
  if not http then return nil, msg, err end
  o.http = http
  o._proxy_http = true  -- ours: replaced by one with the client certificate when there is one
  return true
end

local function scopes_of(doc)
  local s = type(doc.auth) == "table" and type(doc.auth.oauth2) == "table"
            and doc.auth.oauth2.scopes
  local list = {}
  if type(s) == "table" then
    for k in pairs(s) do list[#list + 1] = k end
  end
  sort(list)
  return list
end

local function new_service(doc, opts)
  if type(doc.rootUrl) ~= "string" then
    return errors.fail("discovery", "build", "not a Discovery document (no rootUrl)")
  end
  local base = join_base(doc.rootUrl, type(doc.servicePath) == "string" and doc.servicePath or "")
  -- googleapiclient's rule: the option, else the environment, else
  -- Google's universe (an empty variable counts as unset).
  local universe = opts.universe_domain
  if not universe then
    local env = os.getenv("GOOGLE_CLOUD_UNIVERSE_DOMAIN")
    if env and env ~= "" then universe = env end
  end
  universe = universe or DEFAULT_UNIVERSE
  if universe ~= DEFAULT_UNIVERSE then
    base = gsub(base, "googleapis%.com", (gsub(universe, "%%", "%%%%")))
  end
  -- Certificate-based access, as google-api-python-client's discovery.build:
  -- the client certificate (explicit, or the default one when
  -- GOOGLE_API_USE_CLIENT_CERTIFICATE=true), then the endpoint by
  -- GOOGLE_API_USE_MTLS_ENDPOINT when the document has an mtlsRootUrl.
  local mtls = require "gauth.mtls"
  local cert, cmsg, cerr = mtls.client_cert(opts)
  if cert == nil then return nil, cmsg, cerr end
  local root_url = doc.rootUrl
  if not opts.api_endpoint and type(doc.mtlsRootUrl) == "string" then
    local m_base = join_base(doc.mtlsRootUrl, type(doc.servicePath) == "string" and doc.servicePath or "")
    local chosen, is_mtls, e3 = mtls.select_endpoint(base, m_base, cert and true or false, opts)
    if not chosen then return nil, is_mtls, e3 end
    if is_mtls then
      if universe and universe ~= DEFAULT_UNIVERSE then
        return errors.fail("discovery", "build", "mTLS is not supported in any universe other than "
          .. DEFAULT_UNIVERSE .. " (universe_domain " .. universe .. ")",
          { retryable = false, kind = "config", field = "GOOGLE_API_USE_MTLS_ENDPOINT" })
      end
      base, root_url = chosen, doc.mtlsRootUrl
    end
  end
  local http = opts.http
  if cert and (not http or opts._proxy_http) then
    -- The service's own transport, with the certificate (both transports:
    -- under nginx gauth.http hands it to the cosockets).
    local e2, e3
    http, e2, e3 = require("gauth.http").new({ client_cert = cert.client_cert,
                                               client_key = cert.client_key,
                                               ca_file = opts.ca_file,
                                               proxy = opts.proxy, no_proxy = opts.no_proxy })
    if not http then return errors.fail_with("discovery", "build", errors.of(e2, e3)) end
  end
  if opts.api_endpoint then base = opts.api_endpoint end
  local creds = opts.credentials
  if creds and type(creds.with_scopes) == "function" then
    -- googleapiclient scopes credentials that need scopes to the API's own
    local needs = creds.requires_scopes
    if type(needs) == "function" then needs = needs(creds) end
    if needs == true then
      local scoped = creds:with_scopes(scopes_of(doc))
      if scoped then creds = scoped end
    end
  end
  local features = type(doc.features) == "table" and doc.features or EMPTY
  local data_wrapper = false
  for _, f in pairs(features) do
    if f == "dataWrapper" then data_wrapper = true end
  end
  local svc = {
    doc = doc,
    name = doc.name,
    schemas = type(doc.schemas) == "table" and doc.schemas or EMPTY,
    base = base,
    base_slash = sub(base, -1) == "/" and base or (base .. "/"),
    root_url = root_url,
    batch_path = doc.batchPath,
    http = http,
    mtls = cert and true or false,
    credentials = creds,
    universe = universe,
    quota_project = opts.quota_project,
    user_agent = opts.user_agent and (USER_AGENT .. " " .. opts.user_agent) or USER_AGENT,
    num_retries = opts.num_retries,
    timeout = opts.timeout,
    sleep = util.seam(opts, "sleep"),
    data_wrapper = data_wrapper,
  }
  -- googleapiclient's developerKey: sent as ?key= on every request
  svc.api_key = opts.api_key
  return new_resource(svc, doc, "")
end

--- Make a service from a Discovery document.
-- @param doc the document: JSON text or its decoded table (not changed,
--   and may be shared between services)
-- @tparam[opt] table opts `credentials` (anything with `apply(headers)`;
--   none: requests go unauthenticated), `http` (a transport; default
--   `gauth.http.default()` at first execute), `api_endpoint` (replaces
--   rootUrl + servicePath), `universe_domain` (default
--   `GOOGLE_CLOUD_UNIVERSE_DOMAIN` or googleapis.com), `quota_project`
--   (`x-goog-user-project`), `user_agent` (added after gauth's), `api_key`
--   (`?key=`), `num_retries`, `timeout`, `sleep` (defaults for `execute`),
--   `proxy`, `no_proxy` (without `http`: a transport of its own with
--   these, see `gauth.transport.curl`);
--   mutual TLS (see `gauth.mtls`): `client_cert` + `client_key` (paths),
--   else the default certificate when `GOOGLE_API_USE_CLIENT_CERTIFICATE=true`
--   (`certificate_config`: its configuration file in place of
--   `GOOGLE_API_CERTIFICATE_CONFIG`), sent by a transport of the service's
--   own (with `ca_file`, `proxy`, `no_proxy`) unless `http` is given; the document's
--   `mtlsRootUrl` is used as `GOOGLE_API_USE_MTLS_ENDPOINT` says (never,
--   auto: with a client certificate, always); `env` (a table or function)
--   in place of the process environment for these variables
-- @return the service (its root resource) | nil, msg, err
function _M.build_from_document(doc, opts)
  opts = check_opts(opts, "build_from_document")
  local pok, pmsg, perr = proxy_transport(opts)
  if not pok then return nil, pmsg, perr end
  if type(doc) == "string" then
    local d = json_decode(doc)
    if type(d) ~= "table" then
      return errors.fail("discovery", "build", "malformed JSON document")
    end
    doc = d
  elseif type(doc) ~= "table" then
    error("gauth.discovery: build_from_document: doc must be JSON text or a table", 2)
  end
  return new_service(doc, opts)
end

-- ------------------------------------------------------------------------
-- Fetching documents, with an in-process and an on-disk cache.

local MAX_AGE = 86400
local CACHE_MAGIC = "gauth-discovery-cache 1 "
local memory_cache = {}

-- A template's `{api}` and `{apiVersion}` filled in; any other `{...}` is
-- an error (a typo such as `{version}` would otherwise become "" and ask
-- for the wrong document). @return url | nil, the unknown placeholder
local function expand_discovery_url(template, api, version)
  local bad
  local function v(name)
    if name == "api" then return quote(api) end
    if name == "apiVersion" then return quote(version) end
    bad = bad or name
    return ""
  end
  local url = gsub(template, "{([^{}]*)}", v)
  if bad then return nil, bad end
  return url
end

local function default_cache_dir()
  local xdg = os.getenv("XDG_CACHE_HOME")
  if xdg and xdg ~= "" then return xdg .. "/gauth/discovery" end
  local home = os.getenv("HOME")
  if home and home ~= "" then return home .. "/.cache/gauth/discovery" end
  return nil
end

-- The file of `url`'s document in `dir`. `url` is the Discovery URL
-- without the API key (the caller leaves it out): a key never appears in a
-- file name.
local function cache_file(dir, url)
  local name = gsub(url, "[^%w.-]", function(c) return format("_%02X", byte(c)) end)
  if #name > 200 then
    local h = 5381
    for i = 1, #url do h = (h * 33 + byte(url, i)) % 4294967296 end
    name = sub(name, 1, 180) .. format("_%08x", h)
  end
  return dir .. "/" .. name .. ".json"
end

local PRIVATE_DIR, PRIVATE_FILE = 448, 384  -- 0700, 0600

local warned = {}

-- Say once (per path and reason) why a cache file or folder is not used.
local function warn(path, why)
  local k = path .. "\0" .. why
  if warned[k] then return end
  warned[k] = true
  local msg = "gauth.discovery: not using the disk cache " .. path .. ": " .. why
  if util.is_ngx then
    ngx.log(ngx.WARN, msg)  -- luacheck: ignore ngx
  else
    io.stderr:write(msg, "\n")
  end
end

-- Is the cache folder or file at `path` ours alone to write? Anyone else
-- who could write it could plant a document (a rootUrl of their choosing).
-- @return kind's mode bits when it is (a number) | false (it exists and is
--   not: warned) | nil (it does not exist)
local function trusted(path, kind)
  local k, mode, uid, me = core.file_stat(path)
  if not k then return nil end
  if k ~= kind then
    warn(path, "not a " .. (kind == "dir" and "directory" or "regular file"))
    return false
  end
  if uid ~= me then
    warn(path, "owned by another user (uid " .. uid .. ")")
    return false
  end
  -- the group's and the others' write bits (0020, 0002)
  if floor(mode / 16) % 2 == 1 or floor(mode / 2) % 2 == 1 then
    warn(path, "writable by its group or by others")
    return false
  end
  return mode
end

-- The cache folder, made 0700 where missing (parents too); an existing one
-- of ours that others may read is made 0700. nil when it cannot be trusted.
local function private_dir(dir)
  local mode = trusted(dir, "dir")
  if mode == nil then
    local path = sub(dir, 1, 1) == "/" and "" or "."
    for part in gmatch(dir, "[^/]+") do
      path = path .. "/" .. part
      core.mkdir(path, PRIVATE_DIR)
    end
    mode = trusted(dir, "dir")
  end
  if not mode then return nil end
  if mode % 512 ~= PRIVATE_DIR then core.chmod(dir, PRIVATE_DIR) end
  return true
end

local function now()
  return os.time()
end

-- The cached text in `path` (in `dir`), or nil when absent, stale,
-- unreadable, or not to be trusted (see `trusted`).
local function read_cache(dir, path, max_age)
  if not trusted(dir, "dir") or not trusted(path, "file") then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  local data = f:read("*a")
  f:close()
  if not data or sub(data, 1, #CACHE_MAGIC) ~= CACHE_MAGIC then return nil end
  local t, nl = match(data, "^(%d+)\n()", #CACHE_MAGIC + 1)
  t = tonumber(t)
  if not t or now() - t > max_age or now() < t - 300 then return nil end
  return sub(data, nl)
end

local function write_cache(dir, path, text)
  if not private_dir(dir) then return end
  local tmp = format("%s.tmp.%s%d", path, gsub(tostring({}), "[^%w]", ""), math.random(1e9))
  local f = io.open(tmp, "wb")
  if not f then return end
  -- 0600 before anything is written: whatever the umask, the file is
  -- trusted when read back
  local ok = core.chmod(tmp, PRIVATE_FILE) and f:write(CACHE_MAGIC, tostring(now()), "\n", text)
  ok = f:close() and ok
  if not ok or not os.rename(tmp, path) then
    os.remove(tmp)
  end
end

local function fetch(http, url, opts)
  local res, err = errors.pair(http:request({
    method = "GET", url = url, timeout = opts.timeout or 30,
    headers = { accept = "application/json", ["accept-encoding"] = GZIP,
                ["user-agent"] = USER_AGENT },
  }))
  if not res then
    return errors.fail_with("discovery", "fetch", err, { uri = redact(url) })
  end
  if res.status == 404 then return false end
  if res.status < 200 or res.status >= 300 then
    return errors.fail("discovery", "fetch", "HTTP " .. tostring(res.status),
                           { status = res.status, body = res.body, uri = redact(url) })
  end
  return res.body
end

-- Under nginx, the shared cache over `store` (a Redis store or cache, or
-- false: none), one per store and worker: over the "gauth_discovery" dict
-- when nginx.conf has one.
local store_caches = setmetatable({}, { __mode = "k" })
local NO_STORE = {}
local function store_cache(store)
  local c = store_caches[store or NO_STORE]
  if c then return c end
  local sc = require "gauth.discovery.shdict_cache"
  local has_dict = ngx.shared[sc.DEFAULT_DICT] ~= nil
  if not store and not has_dict then return false end
  local msg, err
  c, msg, err = sc.new({ store = store, shared_dict = has_dict and sc.DEFAULT_DICT or false })
  if not c then return nil, msg, err end
  store_caches[store or NO_STORE] = c
  return c
end

--- Make a service for an API: fetch its Discovery document (or take it
-- from the caches) and build from it.
-- @tparam string api e.g. "sqladmin"
-- @tparam string version e.g. "v1beta4"
-- @tparam[opt] table opts as for `build_from_document`, and
--   `discovery_url` (a template with `{api}` and `{apiVersion}`, or a list
--   of them tried in turn while they answer 404; default Google's two; any
--   other `{...}` is an error, step "discovery_url"),
--   `cache` (false: neither cache), `cache_dir` (default
--   `$XDG_CACHE_HOME/gauth/discovery` or `~/.cache/gauth/discovery`),
--   `cache_max_age` (seconds, default one day), `store` (under nginx: a
--   `gauth.token_cache.redis` store or cache sharing documents across the
--   fleet; default the one `install` made, if any; `false`: none)
-- @return the service | nil, msg, err
function _M.build(api, version, opts)
  if type(api) ~= "string" or api == "" then
    error("gauth.discovery: build: api must be a non-empty string", 2)
  end
  if type(version) ~= "string" or version == "" then
    error("gauth.discovery: build: version must be a non-empty string", 2)
  end
  opts = check_opts(opts, "build")
  local pok, pmsg, perr = proxy_transport(opts)
  if not pok then return nil, pmsg, perr end
  local templates = opts.discovery_url or DISCOVERY_URLS
  if type(templates) == "string" then templates = { templates } end
  if type(templates) ~= "table" or #templates == 0 then
    error("gauth.discovery: build: opts.discovery_url must be a string or a list of strings", 2)
  end
  local use_cache = opts.cache ~= false
  local max_age = opts.cache_max_age or MAX_AGE
  local dir = use_cache and (opts.cache_dir or default_cache_dir()) or nil
  local http = opts.http

  for i = 1, #templates do
    local url, bad = expand_discovery_url(templates[i], api, version)
    if not url then
      return errors.fail("discovery", "discovery_url", "unknown placeholder {" .. bad
        .. "} in " .. redact(templates[i]) .. " (known: {api}, {apiVersion})")
    end
    local file_url = url
    if opts.api_key then
      url = url .. (find(url, "?", 1, true) and "&" or "?") .. "key=" .. quote_plus(opts.api_key)
    end
    if use_cache then
      local m = memory_cache[url]
      if m and now() - m.at <= max_age then
        return new_service(m.doc, opts)
      end
    end
    -- Under nginx a `lua_shared_dict gauth_discovery` (or opts.shared_cache)
    -- holds documents for every worker in place of the disk cache.
    local shared = use_cache and opts.shared_cache
    if shared == nil and use_cache and util.is_ngx then
      if opts.store ~= nil then
        local msg, err
        shared, msg, err = store_cache(opts.store)
        if shared == nil then return nil, msg, err end
      else
        shared = require("gauth.discovery.shdict_cache").default()
      end
    end
    local path = not shared and dir and cache_file(dir, file_url)
    local text = path and read_cache(dir, path, max_age)
    local doc = text and json_decode(text)
    local from_disk = type(doc) == "table" and doc.rootUrl ~= nil
    if shared then
      if not http then
        local err
        http, err = errors.pair(require("gauth.http").default())
        if not http then return errors.fail_with("discovery", "fetch", err) end
      end
      local d, err = errors.pair(shared:fetch(url, function() return fetch(http, url, opts) end, max_age))
      if d == nil then return errors.ret(err) end
      if d and type(d.rootUrl) ~= "string" then
        shared:delete(url)
        return errors.fail("discovery", "fetch", "the answer is not a Discovery document",
                               { uri = redact(url) })
      end
      doc = d or nil  -- false: 404, the next URL
    elseif not from_disk then
      -- absent, stale or corrupt: fetch
      if not http then
        local err
        http, err = errors.pair(require("gauth.http").default())
        if not http then return errors.fail_with("discovery", "fetch", err) end
      end
      local body, err = errors.pair(fetch(http, url, opts))
      if body == nil then return errors.ret(err) end
      if body then
        doc = json_decode(body)
        if type(doc) ~= "table" or type(doc.rootUrl) ~= "string" then
          return errors.fail("discovery", "fetch", "the answer is not a Discovery document",
                                 { uri = redact(url) })
        end
        if path then write_cache(dir, path, body) end
      else
        doc = nil  -- 404: the next URL
      end
    end
    if doc then
      if use_cache then memory_cache[url] = { doc = doc, at = now() } end
      return new_service(doc, opts)
    end
  end
  return errors.fail("discovery", "build", format("unknown API or version: %s %s", api, version),
                         { status = 404 })
end

--- Media for `media_body` from a file (streamed when sent): see
-- `gauth.media.media_file`.
function _M.media_file(path, opts)
  return require("gauth.media").media_file(path, opts)
end

--- Media for `media_body` from a string: see `gauth.media.media_string`.
function _M.media_string(data, opts)
  return require("gauth.media").media_string(data, opts)
end

--- The Discovery document a service (or any of its resources) was built
-- from: the decoded table, shared, to be read and not changed. A function of
-- the module rather than a method, because a service's names are the API's.
-- @param svc a service or resource object
-- @return the document table
function _M.document(svc)
  local inner = type(svc) == "table" and rawget(svc, "_svc")
  if not inner then
    error("gauth.discovery: document: not a service or resource object", 2)
  end
  return inner.doc
end

--- Forget the documents cached in this process (the disk cache stays).
function _M.clear_cache()
  memory_cache = {}
end

return _M
