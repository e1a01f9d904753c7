--- Methods: each method's description prepared once, on first use (its
-- parameters, path template and paging), the request objects it makes,
-- and the builder compiled for it; the request for the next page.
-- Internal: gauth.discovery.resource hands these out, gauth.discovery
-- gives request objects their execute(), download() and pages().
-- @module gauth.discovery.method

local common = require "gauth.discovery.common"
local names_mod = require "gauth.discovery.names"
local uri_mod = require "gauth.discovery.uri"
local values = require "gauth.discovery.values"
local body_mod = require "gauth.discovery.body"
local regex = require "gauth.discovery.regex"

local type = type
local next = next
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local error = error
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local rawget = rawget
local rawset = rawset
local require = require
local sub = string.sub
local find = string.find
local format = string.format
local concat = table.concat
local sort = table.sort
local huge = math.huge

local EMPTY, null = common.EMPTY, common.null
local json_decode = common.json_decode
local API_CLIENT, GZIP = common.API_CLIENT, common.GZIP
local raise, fail = common.raise, common.fail
local new_cache = common.new_cache
local resource_mt, colon_error = common.resource_mt, common.colon_error
local key2param = names_mod.key2param
local quote, quote_reserved, quote_plus = uri_mod.quote, uri_mod.quote_reserved, uri_mod.quote_plus
local parse_template = uri_mod.parse_template
local urlsplit, urlunsplit, join_absolute = uri_mod.urlsplit, uri_mod.urlunsplit, uri_mod.join_absolute
local values_of, query_piece, path_value = values.values_of, values.query_piece, values.path_value
local encode_body, properties_of = body_mod.encode_body, body_mod.properties_of

-- googleapiclient: a GET whose URI is longer than this is sent as a POST
-- with the query as a form body and x-http-method-override: GET.
local MAX_URI_LENGTH = 2048
-- Parameters every Google API accepts that documents do not list.
local STACK_PARAMS = { "trace", "pp", "userip", "strict" }
local PAYLOAD_METHODS = { PUT = true, POST = true, PATCH = true }
-- Retried by default (without num_retries): gauth.request's idempotent
-- methods.
local IDEMPOTENT = require("gauth.request").IDEMPOTENT

local _M = {}

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

--- Is `r` a request object of gauth.discovery (made by a method call)?
-- @param r anything
-- @treturn boolean
local function is_request(r)
  local mt = type(r) == "table" and getmetatable(r)
  return mt and rawget(mt, "gauth_request") == true
end

--- The prepared method behind a request object of gauth.discovery (`id`,
-- `svc` the service's shared state, `http_method`, the media and paging
-- details): what gauth.media and gauth.batch read to send such a request
-- their own way.
-- @param req anything
-- @return the prepared method | nil when `req` is not a Discovery request
local function spec_of(req)
  if not is_request(req) then return nil end
  return req._spec
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

-- The requests' methods: execute(), download() and pages() are
-- gauth.discovery's.
_M.request = request
_M.spec_of = spec_of
_M.is_request = is_request
_M.make_headers = make_headers
_M.find_page_token = find_page_token
_M.prepare = prepare
_M.compile_builder = compile_builder
_M.next_request = next_request

return _M
