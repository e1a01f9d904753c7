-- gauth.discovery against Google's own Python client (googleapiclient 1.7.12,
-- Debian's python3-googleapi): for calls made systematically over every
-- method of every Discovery fixture (spec/fixtures/discovery), the request
-- gauth builds (method, URI, body, the headers that carry meaning) must be
-- the one googleapiclient sends, and gauth must refuse exactly the calls
-- that googleapiclient refuses.
--
-- The reference runs once per spec run, in one Python process, over a file
-- of every call (spec/support/ref_discovery.py); its answers are compared
-- here call by call.

local cjson = require "cjson"
local helpers = require "helpers"

local SPEC_DIR = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "spec")
local ROOT = SPEC_DIR:match("^(.*)/spec$") or "."
local SHARED = helpers.discovery_dir()
local PYTHON = "/usr/bin/python3"
local DRIVER = ROOT .. "/spec/support/ref_discovery.py"

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

-- Documents to go through (the directory list is not an API).
local DOCS = {}
for _, name in ipairs(helpers.discovery_names()) do
  DOCS[#DOCS + 1] = name:match("^(.+)%.json$")
end

---------------------------------------------------------------------------
-- JSON with a marker for empty arrays (cjson writes every empty table as {}).

local EA = setmetatable({}, { __name = "empty array" })
local NULL = cjson.null

local function is_seq(t)
  local n = #t
  if n == 0 then return false end
  local c = 0
  for _ in pairs(t) do c = c + 1 end
  return c == n
end

local function encode(v, out)
  local tv = type(v)
  if v == EA then
    out[#out + 1] = "[]"
  elseif v == NULL then
    out[#out + 1] = "null"
  elseif tv == "table" then
    if is_seq(v) then
      out[#out + 1] = "["
      for i = 1, #v do
        if i > 1 then out[#out + 1] = "," end
        encode(v[i], out)
      end
      out[#out + 1] = "]"
    else
      local keys = {}
      for k in pairs(v) do keys[#keys + 1] = k end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = cjson.encode(k)
        out[#out + 1] = ":"
        encode(v[k], out)
      end
      out[#out + 1] = "}"
    end
  elseif tv == "number" then
    if v == math.floor(v) and v > -2^53 and v < 2^53 then
      out[#out + 1] = string.format("%d", v)
    else
      out[#out + 1] = string.format("%.17g", v)
    end
  else
    out[#out + 1] = cjson.encode(v)
  end
end

local function to_json(v)
  local out = {}
  encode(v, out)
  return table.concat(out)
end

-- The Lua value gauth gets: EA becomes a plain empty table.
local function to_lua(v)
  if v == EA then return {} end
  if type(v) ~= "table" or v == NULL then return v end
  local o = {}
  for k, x in pairs(v) do o[k] = to_lua(x) end
  return o
end

-- A small JSON reader that keeps arrays and objects apart, so that [] and
-- {} in two bodies compare as different.
local function parse_json(s)
  local pos = 1
  local function ws() pos = s:find("[^ \t\r\n]", pos) or #s + 1 end
  local value
  local function str()
    local out = {}
    pos = pos + 1
    while true do
      local c = s:sub(pos, pos)
      if c == '"' then pos = pos + 1; break end
      if c == "\\" then
        local e = s:sub(pos + 1, pos + 1)
        local map = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }
        if e == "u" then
          local cp = tonumber(s:sub(pos + 2, pos + 5), 16)
          pos = pos + 6
          if cp >= 0xD800 and cp < 0xDC00 and s:sub(pos, pos + 1) == "\\u" then
            local lo = tonumber(s:sub(pos + 2, pos + 5), 16)
            cp = 0x10000 + (cp - 0xD800) * 0x400 + (lo - 0xDC00)
            pos = pos + 6
          end
          out[#out + 1] = utf8 and utf8.char(cp) or (function()
            if cp < 0x80 then return string.char(cp) end
            if cp < 0x800 then return string.char(0xC0 + math.floor(cp / 64), 0x80 + cp % 64) end
            if cp < 0x10000 then
              return string.char(0xE0 + math.floor(cp / 4096), 0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
            end
            return string.char(0xF0 + math.floor(cp / 262144), 0x80 + math.floor(cp / 4096) % 64,
                               0x80 + math.floor(cp / 64) % 64, 0x80 + cp % 64)
          end)()
        else
          out[#out + 1] = map[e] or e
          pos = pos + 2
        end
      else
        local j = s:find('["\\]', pos)
        out[#out + 1] = s:sub(pos, j - 1)
        pos = j
      end
    end
    return table.concat(out)
  end
  function value()
    ws()
    local c = s:sub(pos, pos)
    if c == "{" then
      pos = pos + 1
      local o = { t = "object", v = {} }
      ws()
      if s:sub(pos, pos) == "}" then pos = pos + 1; return o end
      while true do
        ws()
        local k = str()
        ws(); assert(s:sub(pos, pos) == ":"); pos = pos + 1
        o.v[k] = value()
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "}" then return o end
        assert(d == ",", "bad JSON object")
      end
    elseif c == "[" then
      pos = pos + 1
      local a = { t = "array", v = {} }
      ws()
      if s:sub(pos, pos) == "]" then pos = pos + 1; return a end
      while true do
        a.v[#a.v + 1] = value()
        ws()
        local d = s:sub(pos, pos); pos = pos + 1
        if d == "]" then return a end
        assert(d == ",", "bad JSON array")
      end
    elseif c == '"' then
      return str()
    elseif s:sub(pos, pos + 3) == "true" then pos = pos + 4; return true
    elseif s:sub(pos, pos + 4) == "false" then pos = pos + 5; return false
    elseif s:sub(pos, pos + 3) == "null" then pos = pos + 4; return NULL
    end
    local num = s:match("^-?%d+%.?%d*[eE]?[-+]?%d*", pos)
    assert(num and #num > 0, "bad JSON at " .. pos)
    pos = pos + #num
    return tonumber(num)
  end
  local v = value()
  ws()
  assert(pos > #s, "trailing text after JSON")
  return v
end

local function same_json(a, b)
  if type(a) ~= type(b) then return false end
  if type(a) ~= "table" or a == NULL then return a == b end
  if a.t ~= b.t then return false end
  for k, x in pairs(a.v) do
    if not same_json(x, b.v[k]) then return false end
  end
  for k in pairs(b.v) do
    if a.v[k] == nil then return false end
  end
  return true
end

---------------------------------------------------------------------------
-- Comparing requests.

local function pieces(q)
  local t = {}
  for p in (q or ""):gmatch("[^&]+") do t[#t + 1] = p end
  table.sort(t)
  return table.concat(t, "&")
end

-- The path exactly, the query as a multiset of key=value pieces (the query
-- is what follows the last "?": a "?" inside the path comes from a {+var}).
local function split_uri(u)
  local i = u:match(".*()%?")
  if not i then return u, nil end
  return u:sub(1, i - 1), u:sub(i + 1)
end

local function compare(ref, req)
  if ref.method ~= req.method then
    return "method " .. tostring(req.method) .. " ~= reference " .. tostring(ref.method)
  end
  if ref.uri ~= req.uri then
    local rp, rq = split_uri(ref.uri)
    local gp, gq = split_uri(req.uri)
    if rp ~= gp then return "URI path\n  gauth " .. gp .. "\n  ref   " .. rp end
    if (rq == nil) ~= (gq == nil) or pieces(rq) ~= pieces(gq) then
      return "URI query\n  gauth " .. tostring(gq) .. "\n  ref   " .. tostring(rq)
    end
  end
  local rb, gb = ref.body, req.body
  if rb == NULL then rb = nil end
  if (rb == nil) ~= (gb == nil) then
    return "body presence: gauth " .. tostring(gb) .. " ref " .. tostring(rb)
  end
  if rb then
    local ct = ref.headers["content-type"]
    if ct == "application/x-www-form-urlencoded" then
      if pieces(rb) ~= pieces(gb) then return "form body\n  gauth " .. gb .. "\n  ref   " .. rb end
    else
      local ok, a = pcall(parse_json, rb)
      local ok2, b = pcall(parse_json, gb)
      if not ok2 then return "gauth body is not JSON: " .. gb end
      if not ok or not same_json(a, b) then
        return "body\n  gauth " .. gb .. "\n  ref   " .. rb
      end
    end
  end
  for _, h in ipairs({ "accept", "content-type", "x-http-method-override", "accept-encoding" }) do
    local rv = ref.headers[h]
    if rv == NULL then rv = nil end
    if rv ~= req.headers[h] then
      return "header " .. h .. ": gauth " .. tostring(req.headers[h]) .. " ref " .. tostring(rv)
    end
  end
  return nil
end

---------------------------------------------------------------------------
-- Generating calls.

local PY_RESERVED = {}
for w in ("False None True and as assert async await break class continue def del "
          .. "elif else except finally for from global if import in is lambda nonlocal "
          .. "not or pass raise return try while with yield body"):gmatch("%a+") do
  PY_RESERVED[w] = true
end

local function py_name(n)
  n = n:gsub("%$", "_")
  if PY_RESERVED[n] then n = n .. "_" end
  return n
end

local function key2param(key)
  local s = key:gsub("[^A-Za-z0-9]", "_")
  if not key:find("^[A-Za-z]") then s = "x" .. s end
  return s
end

-- Awkward strings: every printable ASCII special, non-ASCII (2, 3, 4-byte
-- UTF-8), something that looks already encoded, blanks at both ends, empty.
local ASCII = "a b/c?d#e%f+g@h:i=j&k,l;m!n$o'p(q)r*s[t]u~v\"w<x>y\\z^`{|}."
local UNICODE = "aé日本€😀×ß/ü"
local ENCODED = "a%2Fb%20c+d%"
local STRINGS = { ASCII, UNICODE, ENCODED, "  padded  ", "plain-value_1.2~", "" }

-- A value that satisfies an anchored "segments" pattern such as
-- ^projects/[^/]+/locations/[^/]+$ (each [^/]+ gets `s` without "/");
-- for the unanchored patterns (compute's), a value starting with a letter,
-- which is what re.match asks of them. The reference decides anyway.
local function shaped(pattern, s)
  local inner = pattern:match("^%^(.*)%$$")
  if inner then
    local rest = inner:gsub("%[%^/%]%+", ""):gsub("%.%*", "")
    if rest:match("^[%w/_-]*$") then
      local seg = s:gsub("/", "|")
      if seg == "" then seg = "e" end
      local v = inner:gsub("%[%^/%]%+", function() return seg end)
      v = v:gsub("%.%*", function() return s end)
      return v
    end
  end
  return "a" .. s
end

local function all_params(doc, m)
  local all = {}
  for k, d in pairs(m.parameters or {}) do all[k] = d end
  for k, d in pairs(doc.parameters or {}) do all[k] = d end
  for _, k in ipairs({ "trace", "pp", "userip", "strict" }) do
    all[k] = { type = "string", location = "query" }
  end
  return all
end

local function sorted_keys(t)
  local keys = {}
  for k in pairs(t or {}) do keys[#keys + 1] = k end
  table.sort(keys)
  return keys
end

local function gen_value(d, i, s)
  if type(d.enum) == "table" and #d.enum > 0 then
    if d.repeated then return { d.enum[1], d.enum[#d.enum] } end
    return d.enum[i % #d.enum + 1]
  end
  local t = d.type or "string"
  if t == "boolean" then return i % 2 == 0 end
  if t == "integer" then return ({ 7, -3, "42", 0, " 0012 " })[i % 5 + 1] end
  if t == "number" then return ({ 1.5, 2, 1e-7, 1e20, "2.5" })[i % 5 + 1] end
  s = s or STRINGS[i % #STRINGS + 1]
  if d.pattern then s = shaped(d.pattern, s) end
  if (d.format == "int64" or d.format == "uint64") and not d.pattern then
    if i % 3 == 0 then return 123 end
    if i % 3 == 1 then return "12345678901234567890" end
  end
  if d.repeated then
    if i % 4 == 0 then return s end  -- a scalar for a repeated parameter
    if i % 4 == 1 then return EA end -- an empty list sends nothing
    local u = d.pattern and shaped(d.pattern, UNICODE) or UNICODE
    return { s, u, s }
  end
  return s
end

local function resolve(doc, s)
  local n = 0
  while type(s) == "table" and s["$ref"] do
    s = (doc.schemas or {})[s["$ref"]]
    n = n + 1
    if n > 50 then return nil end
  end
  return s
end

-- A body after the method's request schema: a few properties of each kind,
-- with empty arrays and empty objects where the schema has them.
local function gen_body(doc, schema, depth, i)
  schema = resolve(doc, schema)
  if type(schema) ~= "table" then return "x" end
  local t = schema.type
  if t == "array" then
    if depth >= 2 or i % 2 == 0 then return EA end
    return { gen_body(doc, schema.items, depth + 1, i + 1) }
  elseif t == "object" or schema.properties then
    local o = {}
    if schema.properties then
      if depth >= 3 then return {} end
      local keys = sorted_keys(schema.properties)
      local n = 0
      for k = 1, #keys do
        local j = (k + i) % #keys + 1
        local key = keys[j]
        if o[key] == nil then
          o[key] = gen_body(doc, schema.properties[key], depth + 1, i + k)
          n = n + 1
        end
        if n >= 5 then break end
      end
      return o
    elseif type(schema.additionalProperties) == "table" then
      if depth >= 3 or i % 2 == 1 then return {} end
      o["k " .. i] = gen_body(doc, schema.additionalProperties, depth + 1, i + 1)
      return o
    end
    return {}
  elseif t == "string" then
    return STRINGS[i % 3 + 1]
  elseif t == "integer" then
    return ({ 5, -1, 2^40, 123456789012345 })[i % 4 + 1]
  elseif t == "number" then
    return ({ 2.5, 0.1, 1e-9, 1 / 3, 12345678.125 })[i % 5 + 1]
  elseif t == "boolean" then
    return i % 2 == 0
  end
  return "any"
end

local function copy_list(t)
  local o = {}
  for i = 1, #t do o[i] = t[i] end
  return o
end

local function walk(res, py_path, lua_path, fn)
  for _, mname in ipairs(sorted_keys(res.methods)) do
    fn(res.methods[mname], mname, py_path, lua_path)
  end
  for _, rname in ipairs(sorted_keys(res.resources)) do
    local py, lp = copy_list(py_path), copy_list(lua_path)
    py[#py + 1] = py_name(rname)
    lp[#lp + 1] = rname
    walk(res.resources[rname], py, lp, fn)
  end
end

local function generate(docname, doc, calls)
  local path = SHARED .. "/" .. docname .. ".json"
  local count = 0
  walk(doc, {}, {}, function(m, mname, py_path, lua_path)
    local params = all_params(doc, m)
    local names = sorted_keys(params)
    local required, optional = {}, {}
    for _, k in ipairs(names) do
      local d = params[k]
      if d.required then required[#required + 1] = k else optional[#optional + 1] = k end
    end
    local is_payload = (m.httpMethod == "POST" or m.httpMethod == "PUT" or m.httpMethod == "PATCH")
                       and m.request ~= nil

    local function add(tag, values, extra)
      count = count + 1
      local c = { doc = path, docname = docname, id = m.id, tag = tag,
                  method = mname, py_path = copy_list(py_path), lua_path = copy_list(lua_path),
                  values = values, n = #calls + 1 }
      for k, v in pairs(extra or {}) do c[k] = v end
      calls[#calls + 1] = c
    end
    local function required_values(s, i)
      local v = {}
      for j, k in ipairs(required) do v[k] = gen_value(params[k], i + j, s) end
      return v
    end

    -- required parameters only, with awkward strings of each kind
    add("required ascii", required_values(ASCII, 0))
    add("required unicode", required_values(UNICODE, 1))
    add("required encoded", required_values(ENCODED, 2))
    -- every parameter at once, a body too; three times, so that each
    -- parameter gets several kinds of value
    for round = 0, 2 do
      local all = required_values(nil, 3 + round)
      for j, k in ipairs(optional) do all[k] = gen_value(params[k], j + round, nil) end
      if is_payload then all.body = gen_body(doc, m.request, 0, #calls) end
      add("all parameters " .. round, all)
    end
    -- googleapiclient's developerKey (gauth's api_key): ?key= on every call,
    -- over the caller's own key parameter
    local vk = required_values("k", 30)
    vk.key = "callers key"
    add("developer key", vk, { developer_key = "AIza key/+" })
    if is_payload then
      local v = required_values("b", 4)
      v.body = gen_body(doc, m.request, 0, #calls + 1)
      add("body", v)
      local v2 = required_values("b", 5)
      v2.body = {}
      add("empty body", v2)
    elseif m.httpMethod == "GET" then
      local v = required_values("c", 6)
      v.body = { a = 1 }
      add("body on a GET", v)
    end
    -- an optional parameter given as null (absent for both)
    if #optional > 0 then
      local v = required_values("d", 7)
      v[optional[1]] = NULL
      add("null parameter", v)
    end
    -- refusals
    if #required > 0 then
      local v = required_values("e", 8)
      v[required[1]] = nil
      add("missing required", v)
    end
    do
      local v = required_values("f", 9)
      v.notAParameter = "x"
      add("unknown parameter", v)
    end
    for _, k in ipairs(names) do
      local d = params[k]
      if type(d.enum) == "table" and #d.enum > 0 then
        local v = required_values("g", 10)
        v[k] = d.repeated and { d.enum[1], "NOT_AN_ENUM_VALUE" } or "NOT_AN_ENUM_VALUE"
        add("bad enum " .. k, v)
        break
      end
    end
    for _, k in ipairs(required) do
      if params[k].pattern then
        local v = required_values("h", 11)
        v[k] = "Upper/Case"
        add("bad pattern " .. k, v)
        local v2 = required_values("h", 12)
        v2[k] = 12
        add("number for a pattern " .. k, v2)
        break
      end
    end
    for _, k in ipairs(names) do
      if params[k].type == "integer" then
        local v = required_values("i", 13)
        v[k] = "twelve"
        add("not an integer " .. k, v)
        break
      end
    end
    -- a GET past 2048 bytes becomes a POST with the query as its body
    if m.httpMethod == "GET" then
      local v = required_values("j", 14)
      v.fields = string.rep("items(name,id)/é ", 130)
      add("long GET", v)
    end
    -- a {+var} at the start of the path: a leading "/" and absolute URLs
    if (m.path or ""):find("^{%+") then
      local var = m.path:match("^{%+([^}]+)}")
      for j, s in ipairs({ "/projects/p/x", "https://example.com/a/b?c=d#e",
                           "http://example.com/x", "https://[::1/x" }) do
        local v = required_values("k", 15 + j)
        v[var] = s
        add("start of path " .. s, v)
      end
    end
    -- paging
    local resp = resolve(doc, m.response)
    local rprops = resp and resp.properties or {}
    if rprops.nextPageToken or rprops.pageToken then
      local v = required_values("l", 20)
      -- the token goes into the body when the parameters have none; then
      -- googleapiclient cannot page a request sent without a body
      -- (json.loads(None)), gauth pages it with a body of just the token
      local in_body = is_payload and not ((m.parameters or {}).pageToken
                                          or (m.parameters or {}).nextPageToken)
      add("_next", v, { next_page_token = "tok en/+?=&é", lenient = in_body or nil })
      add("_next without a token", required_values("l", 21), { next_page_token = "" })
      if is_payload then
        local vb = required_values("l", 22)
        vb.body = gen_body(doc, m.request, 0, 3)
        add("_next with a body", vb, { next_page_token = "next/tok" })
      end
    end
    if m.supportsMediaDownload then
      add("_media", required_values("m", 23), { media = true })
    end
  end)
  return count
end

-- The calls that gauth refuses and googleapiclient does not, on purpose:
-- values of the wrong type that Python coerces (str(True), int(10.5), ...).
local STRICTER = {
  { "compute.v1", { "instances" }, "list", { project = "p", zone = "z", maxResults = 10.5 } },
  { "compute.v1", { "instances" }, "list", { project = "p", zone = "z", maxResults = true } },
  { "compute.v1", { "instances" }, "list", { project = "p", zone = "z", filter = true } },
  { "compute.v1", { "instances" }, "list", { project = "p", zone = "z", returnPartialSuccess = "yes" } },
  { "compute.v1", { "instances" }, "list", { project = "p", zone = "z", prettyPrint = 1 } },
  { "storage.v1", { "objects" }, "list", { bucket = "b", prefix = { "a", "b" } } },
}

---------------------------------------------------------------------------

describe("gauth.discovery conformance with googleapiclient 1.7.12", function()
  local discovery = require "gauth.discovery"
  local calls, results, docs, services = {}, {}, {}, {}

  lazy_setup(function()
    for _, name in ipairs(DOCS) do
      local text = read(SHARED .. "/" .. name .. ".json")
      local doc = cjson.decode(text)
      if doc.rootUrl then
        docs[name] = doc
        generate(name, doc, calls)
      end
    end
    for _, s in ipairs(STRICTER) do
      calls[#calls + 1] = { doc = SHARED .. "/" .. s[1] .. ".json", docname = s[1], stricter = true,
                            py_path = s[2], lua_path = s[2], method = s[3], values = s[4],
                            tag = "stricter", n = #calls + 1 }
    end
    -- the reference, once
    local list = {}
    for i, c in ipairs(calls) do
      local py = copy_list(c.py_path)
      py[#py + 1] = py_name(c.method) .. (c.media and "_media" or "")
      local params = {}
      for k, v in pairs(c.values) do params[k == "body" and k or key2param(k)] = v end
      list[i] = { doc = c.doc, method_path = py, params = params,
                  next_page_token = c.next_page_token, developer_key = c.developer_key }
    end
    local infile, outfile = os.tmpname(), os.tmpname()
    local f = assert(io.open(infile, "wb"))
    f:write(to_json(list))
    f:close()
    assert(helpers.sh(PYTHON .. " " .. DRIVER .. " " .. infile .. " > " .. outfile),
           "the reference driver failed")
    for line in io.lines(outfile) do results[#results + 1] = cjson.decode(line) end
    os.remove(infile)
    os.remove(outfile)
    assert(#results == #calls, "the reference answered " .. #results .. " of " .. #calls .. " calls")
  end)

  -- gauth's request (or false, error) for call c; odd calls use the
  -- document's names, even ones googleapiclient's.
  local function run(c)
    local skey = c.docname .. (c.developer_key and (" " .. c.developer_key) or "")
    local svc = services[skey]
    if not svc then
      svc = assert(discovery.build_from_document(docs[c.docname] or cjson.decode(read(c.doc)),
                                                 { api_key = c.developer_key }))
      services[skey] = svc
    end
    local raw = c.n % 2 == 1
    local obj = svc
    for i = 1, #c.lua_path do
      local name = raw and c.lua_path[i] or py_name(c.lua_path[i])
      obj = obj[name](obj)
    end
    local mname = (raw and c.method or py_name(c.method)) .. (c.media and "_media" or "")
    local params = {}
    for k, v in pairs(c.values) do params[(raw or k == "body") and k or key2param(k)] = to_lua(v) end
    if type(obj[mname]) ~= "function" then return nil, nil, "gauth has no method " .. mname end
    local ok, req = pcall(obj[mname], obj, params)
    if not ok then return false, req end
    if c.next_page_token then
      local nf = obj[c.method .. "_next"]
      if type(nf) ~= "function" then return nil, nil, "gauth has no method " .. c.method .. "_next" end
      req = nf(obj, req, { nextPageToken = c.next_page_token, pageToken = c.next_page_token })
    end
    return true, req
  end

  local function check(c, ref)
    local ok, req, problem = run(c)
    if problem then
      -- a method googleapiclient lacks too is agreement
      if ref.error and ref.error:find("^AttributeError") then return nil end
      return problem
    end
    if ref.error and ref.error:find("^AttributeError") then
      return "the reference has no such method, gauth has"
    end
    if ref.error then
      if ok then
        return "gauth accepts what the reference refuses (" .. ref.error .. "): " .. req.uri
      end
      if not tostring(req):find("gauth.discovery: ", 1, true) then
        return "gauth raised an unexpected error: " .. tostring(req)
      end
      return nil
    end
    if not ok then return "gauth refuses what the reference accepts: " .. tostring(req) end
    if ref.none then
      if req ~= nil then return "gauth made a next request, the reference none" end
      return nil
    end
    if req == nil then return "gauth made no next request" end
    return compare(ref, req)
  end

  for _, name in ipairs(DOCS) do
    it(name .. ": the same requests and the same refusals", function()
      assert.is_truthy(docs[name] ~= nil or name == "directory_list", "document not loaded")
      local bad = {}
      local n = 0
      for i, c in ipairs(calls) do
        if c.docname == name and not c.stricter and not c.lenient then
          n = n + 1
          local why = check(c, results[i])
          if why then
            bad[#bad + 1] = string.format("%s [%s] %s", c.id, c.tag, why)
          end
        end
      end
      assert.is_true(n > 0)
      if #bad > 0 then
        local shown = {}
        for i = 1, math.min(#bad, 15) do shown[i] = bad[i] end
        error(string.format("%d of %d calls differ:\n%s", #bad, n, table.concat(shown, "\n")), 0)
      end
    end)
  end

  it("covers what it should", function()
    local total, refused, long, nexts, bodies = 0, 0, 0, 0, 0
    for i, c in ipairs(calls) do
      if not c.stricter then
        total = total + 1
        local r = results[i]
        if r.error then refused = refused + 1 end
        if r.headers and r.headers["x-http-method-override"] then long = long + 1 end
        if c.next_page_token and not r.error then nexts = nexts + 1 end
        if r.body and r.body ~= NULL and not r.headers["x-http-method-override"] then bodies = bodies + 1 end
      end
    end
    -- printed so that the run shows what was compared
    io.stderr:write(string.format(
      "\n[discovery conformance] %d calls over %d documents: %d refused by both, "
      .. "%d long GETs, %d next pages, %d bodies\n", total, #DOCS - 1, refused, long, nexts, bodies))
    assert.is_true(total > 10000)
    assert.is_true(refused > 2000)
    assert.is_true(long > 500)
    assert.is_true(nexts > 300)
    assert.is_true(bodies > 1000)
  end)

  it("pages a request without a body where the reference cannot, on purpose", function()
    local n = 0
    for i, c in ipairs(calls) do
      if c.lenient then
        local ref = results[i]
        local ok, req, problem = run(c)
        if (ref.error or ""):find("^AttributeError") then
          assert.is_string(problem)  -- neither pages this method
        else
          n = n + 1
          assert.matches("^TypeError", ref.error or "")
          assert.is_true(ok)
        local body = cjson.decode(req.body)
          assert.same(c.next_page_token, body.pageToken or body.nextPageToken)
        end
      end
    end
    assert.is_true(n > 0)
  end)

  it("is stricter than the reference on value types, on purpose", function()
    for i, c in ipairs(calls) do
      if c.stricter then
        assert.is_nil(results[i].error, "the reference now refuses " .. c.tag)
        local ok, err = run(c)
        assert.is_false(ok, "gauth accepted a value of the wrong type")
        assert.matches("gauth.discovery: ", tostring(err), 1, true)
      end
    end
  end)
end)
