--- Batch requests: many calls of a discovery service in one HTTP request,
-- as Google's Python client (googleapiclient 1.7.12) makes them.
--
--     local batch = drive:new_batch_http_request{ callback = function(id, resp, msg, err) ... end }
--     batch:add(drive:files():get{ fileId = "a" })
--     batch:add(drive:files():delete{ fileId = "b" }, function(id, resp, msg, err) ... end, "del-b")
--     local ok, msg, err = batch:execute()
--
-- One `multipart/mixed` POST goes to the API's own batch endpoint,
-- `rootUrl .. batchPath` of its Discovery document (googleapiclient's
-- rule; never the global https://www.googleapis.com/batch that Google
-- turned down). Each part is an `application/http` request with a
-- `Content-ID`; the answer is split per part and each part decoded as
-- `execute()` would decode it. For every request, in the order added, its
-- own callback then the batch's are called with `(request_id, response,
-- msg, err)`, the shape of `execute()`'s results: `response` the decoded
-- answer, or nil with `msg` the error's message string and `err` the
-- `gauth.errors` object (module "batch", step the method id, with
-- `status`, `reason`, `google_status`, `body`, `request_id`) for a non-2xx
-- part or an undecodable one.
-- Parts that answer 401 are sent again, in a second batch, once the
-- credentials' token has been dropped (refreshed at the next use).
--
-- Google takes at most 1000 calls in a batch (`MAX_PARTS`); media uploads
-- cannot be batched.
-- @module gauth.batch

local http_header = require "gauth.lib.http_header"
local seam = require "gauth.lib.seam"
local errors = require "gauth.errors"
local request = require "gauth.request"
local upload = require "gauth.media.upload"
local exchange = require "gauth.media.exchange"
local multipart = require "gauth.media.multipart"

local type = type
local pairs = pairs
local ipairs = ipairs
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local sub = string.sub
local gsub = string.gsub
local find = string.find
local match = string.match
local lower = string.lower
local format = string.format
local concat = table.concat
local sort = table.sort

local _M = { _VERSION = "0.1.0" }
local mt = { __index = _M }

--- Google's limit of calls in one batch.
_M.MAX_PARTS = 1000

local redact = errors.redact_uri

local function fail(step, message, fields)
  return errors.fail("batch", step, message, fields)
end

local function check_callback(cb, what, level)
  if cb ~= nil and type(cb) ~= "function" then
    error("gauth.batch: " .. what .. " must be a function", level + 1)
  end
end

--- Make a batch for a service (what `service:new_batch_http_request()`
-- calls).
-- @param svc the service's internal table (of gauth.discovery)
-- @tparam[opt] table opts `callback` (function(request_id, response, msg,
--   err), called for every request), `batch_uri` (instead of the
--   document's), `http` (a transport)
-- @return the batch
function _M.new(svc, opts)
  if type(svc) ~= "table" or type(svc.base) ~= "string" then
    error("gauth.batch: new: needs a service of gauth.discovery", 2)
  end
  if opts == nil then
    opts = {}
  elseif type(opts) ~= "table" then
    error("gauth.batch: new_batch_http_request: opts must be a table", 2)
  end
  check_callback(opts.callback, "callback", 2)
  if opts.batch_uri ~= nil and type(opts.batch_uri) ~= "string" then
    error("gauth.batch: new_batch_http_request: batch_uri must be a string", 2)
  end
  local path = svc.batch_path
  if type(path) ~= "string" or path == "" then path = "batch" end
  return setmetatable({
    svc = svc,
    batch_uri = opts.batch_uri or (exchange.root_for(svc) .. gsub(path, "^/", "")),
    callback = opts.callback,
    http = opts.http,
    order = {}, requests = {}, callbacks = {},
    last_auto_id = 0,
  }, mt)
end

-- Discovery's request objects: what they are, and the method behind one.
local discovery_method = require "gauth.discovery.method"
local is_request, spec_of = discovery_method.is_request, discovery_method.spec_of

--- Add a request.
-- @param req a request of gauth.discovery (not a media upload)
-- @tparam[opt] function callback `(request_id, response, msg, err)` for this
--   request
-- @tparam[opt] string request_id unique in the batch (default "1", "2",
--   ... skipping ids taken)
-- @return true | nil, msg, err (the batch already holds `MAX_PARTS` requests)
function _M:add(req, callback, request_id)
  if getmetatable(self) ~= mt then
    error("gauth.batch: add: call it with a colon (batch:add(req))", 2)
  end
  if upload.is_upload(req) then
    error("gauth.batch: add: media uploads cannot be batched (Google's rule)", 2)
  end
  if not is_request(req) then
    error("gauth.batch: add: req must be a request of gauth.discovery", 2)
  end
  check_callback(callback, "callback", 2)
  if request_id ~= nil and type(request_id) ~= "string" then
    error("gauth.batch: add: request_id must be a string", 2)
  end
  if #self.order >= _M.MAX_PARTS then
    return fail("add", format("a batch holds at most %d requests (Google's limit);"
                              .. " start another batch", _M.MAX_PARTS),
                { kind = "too_many_parts", retryable = false })
  end
  if request_id == nil then
    local n = self.last_auto_id
    repeat n = n + 1 until self.requests[tostring(n)] == nil
    self.last_auto_id = n
    request_id = tostring(n)
  elseif self.requests[request_id] ~= nil then
    error("gauth.batch: add: a request with id " .. request_id .. " is already in the batch", 2)
  end
  self.order[#self.order + 1] = request_id
  self.requests[request_id] = req
  self.callbacks[request_id] = callback or false
  return true
end

--- How many requests the batch holds.
function _M:count()
  return #self.order
end

-- ------------------------------------------------------------------------
-- The wire format.

local check_universe = require("gauth.universe").check

-- The headers of one part's request, with the credentials of its service.
local function part_headers(req)
  local h = {}
  for k, v in pairs(req.headers) do h[lower(k)] = v end
  -- The part's answer comes inside the multipart body: no compression.
  h["accept-encoding"] = nil
  h["content-length"] = nil
  h["host"] = nil
  local svc = spec_of(req).svc
  local creds = svc.credentials
  if creds then
    -- Credentials of another universe are never sent (gauth.universe).
    local uok, uerr = errors.pair(check_universe(svc, "batch", "execute"))
    if not uok then return nil, uerr end
    local ok, err = errors.pair(creds:apply(h))
    if not ok then return nil, err end
  end
  return h
end

local header_value_ok = http_header.value_ok
local BAD_VALUE = "has a value with CR, LF, NUL or another control character"

-- One `application/http` part (googleapiclient's _serialize_request).
-- @return the part | nil, what is wrong[, the header at fault]
local function serialize(req, content_id)
  local h, err = part_headers(req)
  if not h then return nil, err end
  local uri = req.uri
  local host, target = match(uri, "^%a[%w+.-]*://([^/?#]*)([^#]*)")
  if not host then return nil, "not an absolute URI: " .. redact(uri) end
  if target == "" then target = "/" end
  local names = {}
  for k, v in pairs(h) do
    if v ~= false and k ~= "content-type" then names[#names + 1] = k end
  end
  sort(names)
  local out = {
    "Content-Type: application/http\r\n",
    "Content-Transfer-Encoding: binary\r\n",
    "Content-ID: <", content_id, ">\r\n\r\n",
    req.method, " ", target, " HTTP/1.1\r\n",
  }
  local body = req.body
  if body ~= nil and h["content-type"] then
    local v = tostring(h["content-type"])
    if not header_value_ok(v) then return nil, BAD_VALUE, "content-type" end
    out[#out + 1] = "Content-Type: " .. v .. "\r\n"
  end
  for _, k in ipairs(names) do
    local v = h[k]
    if type(v) == "table" then v = concat(v, ", ") end
    v = tostring(v)
    if find(k, "[^!#$%%&'*+.^_`|~%w-]") then
      return nil, "header name " .. k .. " is not an HTTP token", k
    end
    if not header_value_ok(v) then return nil, BAD_VALUE, k end
    out[#out + 1] = k .. ": " .. v .. "\r\n"
  end
  out[#out + 1] = "Host: " .. host .. "\r\n"
  if body ~= nil then
    out[#out + 1] = "Content-Length: " .. #body .. "\r\n\r\n"
    out[#out + 1] = body
  else
    out[#out + 1] = "\r\n"
  end
  return concat(out)
end

-- Header block -> { lower-case name = value } (repeats joined by ", ").
local function parse_header_lines(block)
  local h = {}
  for line in string.gmatch(block, "[^\r\n]+") do
    local k, v = match(line, "^([^:%s]+)%s*:%s*(.-)%s*$")
    if k then
      k = lower(k)
      h[k] = h[k] and (h[k] .. ", " .. v) or v
    end
  end
  return h
end

-- Split at the first blank line (CRLF CRLF, or LF LF).
local function split_head(s)
  local a, b = find(s, "\r\n\r\n", 1, true)
  local c, d = find(s, "\n\n", 1, true)
  if c and (not a or c < a) then a, b = c, d end
  if not a then return s, "" end
  return sub(s, 1, a - 1), sub(s, b + 1)
end

--- Split a multipart body into its parts (RFC 2046): each delimiter is
-- "--boundary" at the start of a line; the line break before it belongs to
-- it.
-- @return array of part texts | nil, msg, err (step "multipart")
function _M.split_multipart(body, boundary)
  local delim = "--" .. boundary
  local parts = {}
  local pos = 1
  local start
  while true do
    local s, e = find(body, delim, pos, true)
    if not s then break end
    local at_line = s == 1 or sub(body, s - 1, s - 1) == "\n"
    if at_line then
      if start then
        local stop = s - 1
        if sub(body, stop, stop) == "\n" then stop = stop - 1 end
        if sub(body, stop, stop) == "\r" then stop = stop - 1 end
        parts[#parts + 1] = sub(body, start, stop)
      end
      if sub(body, e + 1, e + 2) == "--" then
        return parts
      end
      -- the rest of the delimiter line (transport padding) is ignored
      local nl = find(body, "\n", e + 1, true)
      if not nl then break end
      start = nl + 1
    end
    pos = e + 1
  end
  if #parts == 0 then return fail("multipart", "no multipart delimiter found") end
  return fail("multipart", "the multipart body ends without its closing delimiter")
end

-- An `application/http` answer: { status, reason, headers, body }.
local function parse_http_response(s)
  local head, body = split_head(s)
  local status, reason = match(head, "^HTTP/%d[%.%d]* (%d%d%d) ?([^\r\n]*)")
  if not status then return nil end
  local line_end = find(head, "\n", 1, true)
  local headers = parse_header_lines(line_end and sub(head, line_end + 1) or "")
  local cl = tonumber(headers["content-length"])
  if cl and cl <= #body then body = sub(body, 1, cl) end
  return { status = tonumber(status), reason = reason, headers = headers, body = body }
end

local function quote(s)
  return (gsub(s, "[^%w%-%._~/]", function(c) return format("%%%02X", string.byte(c)) end))
end

local function unquote(s)
  return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- The Content-ID of an answer -> the request id: "<response-X>" answers
-- the part sent as "<X>" (Google's convention); googleapiclient's "<base
-- + id>" form is read as well.
local function answer_id(cid, by_cid)
  if not cid then return nil end
  local v = match(cid, "^%s*<(.*)>%s*$") or cid
  local inner = match(v, "^response%-(.*)$") or v
  local id = by_cid[inner]
  if id then return id end
  local tail = match(inner, " %+ (.*)$")
  if tail then
    local cand = unquote(tail)
    for _, rid in pairs(by_cid) do
      if rid == cand then return rid end
    end
  end
  return nil
end

-- ------------------------------------------------------------------------
-- Executing.

-- Send one batch of `ids`; fills `answers[id] = res` (a parsed part).
-- @return true | nil, msg, err
function _M:_send(ids, answers, opts, http)
  local svc = self.svc
  local base_id = multipart.random_hex(16)
  local parts, by_cid = {}, {}
  for i, id in ipairs(ids) do
    -- googleapiclient's Content-ID: "<base + id>", the id quoted as
    -- Python's urllib.parse.quote does ("/" kept)
    local cid = base_id .. " + " .. quote(id)
    by_cid[cid] = id
    local part, err, header = serialize(self.requests[id], cid)
    if not part then
      if errors.is(err) then
        return errors.fail_with("batch", "execute", err, { request_id = id })
      end
      if header then
        -- A line break in a part's header would add headers (or a body)
        -- to the part: refused before anything is sent, naming the
        -- header, never the value.
        local what = err == BAD_VALUE and ("header " .. header .. " " .. err) or err
        return errors.fail("batch", "execute", "request " .. id .. ": " .. what,
                           { request_id = id, header = header, retryable = false })
      end
      return fail("execute", "request " .. id .. ": " .. tostring(err), { request_id = id })
    end
    parts[i] = part
  end
  local boundary = multipart.boundary(12, concat(parts))
  local body = multipart.encode(boundary, parts)

  local base = {
    ["user-agent"] = svc.user_agent,
    ["accept-encoding"] = "gzip, deflate",
  }
  if svc.quota_project then base["x-goog-user-project"] = svc.quota_project end
  local n = opts.num_retries
  if n == nil then n = 0 end
  local uri = self.batch_uri
  local treq = { method = "POST", url = uri, body = body, timeout = opts.timeout or svc.timeout }
  -- One call of gauth.request's loop (the POST is retried only with
  -- num_retries).
  local op = exchange.op_for(svc, "batch", "execute", treq, base,
                              { ["content-type"] = 'multipart/mixed; boundary="' .. boundary .. '"' },
                              http)
  op.retries, op.sleep = n, seam.get(opts, "sleep") or svc.sleep
  op.random = seam.get(opts, "random")
  op.decode = function(_, r) return r end
  local res, err = errors.pair(request.send(op))
  if not res then return errors.ret(err) end

  local ctype = res.headers["content-type"] or ""
  local rb = match(ctype, '[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]="([^"]+)"')
             or match(ctype, "[Bb][Oo][Uu][Nn][Dd][Aa][Rr][Yy]=([^;%s]+)")
  if not find(lower(ctype), "^%s*multipart/mixed") or not rb then
    return fail("execute", "the answer is not multipart/mixed (Content-Type: " .. ctype .. ")",
                { status = res.status, body = res.body, uri = redact(uri) })
  end
  local texts, serr = errors.pair(_M.split_multipart(res.body or "", rb))
  if not texts then
    return fail("execute", "malformed multipart answer: " .. serr.message,
                { status = res.status, body = res.body, uri = redact(uri) })
  end
  for i, text in ipairs(texts) do
    local phead, pbody = split_head(text)
    local ph = parse_header_lines(phead)
    local id = answer_id(ph["content-id"], by_cid)
    if id == nil and ph["content-id"] == nil then
      -- No Content-ID at all: the answers come in the order of the parts.
      id = ids[i]
    end
    if id ~= nil then
      local r = parse_http_response(pbody)
      answers[id] = r or { malformed = true, body = pbody }
    end
  end
  return true
end

-- The (response, err) a callback gets for one answer.
local function outcome(req, id, res)
  local spec = spec_of(req)
  local step = spec.id
  if res == nil then
    return errors.fail("batch", step, "the batch answer has no part for this request",
                           { request_id = id, uri = redact(req.uri) })
  end
  if res.malformed then
    return errors.fail("batch", step, "the answer's part is not an HTTP response",
                           { request_id = id, body = res.body, uri = redact(req.uri) })
  end
  if res.status < 200 or res.status >= 300 then
    local e = errors.from_response("batch", step, res, req.uri)
    e.request_id = id
    return errors.ret(e)
  end
  local v, err = errors.pair(exchange.decode("batch", step, spec, req.uri, res))
  if v == nil and err then err.request_id = id end
  return v, err
end

--- Send every request added, in one batch; then call the callbacks.
-- A batch can be executed again (the same requests are sent again).
-- @tparam[opt] table opts `http` (a transport), `timeout`, `num_retries`
--   (retries of the batch POST on 5xx/429/transport errors; default none,
--   as googleapiclient), `sleep`, `random`
-- @return true | nil, msg, err (the batch itself failed: transport, non-2xx,
--   or an answer that is not multipart; no callback is called then)
function _M:execute(opts)
  if getmetatable(self) ~= mt then
    error("gauth.batch: execute: call it with a colon (batch:execute())", 2)
  end
  if opts == nil then
    opts = {}
  elseif type(opts) ~= "table" then
    error("gauth.batch: execute: opts must be a table", 2)
  end
  if #self.order == 0 then return true end
  local http = opts.http or self.http or self.svc.http
  if not http then
    local e2, e3
    http, e2, e3 = require("gauth.http").default()
    if not http then return errors.fail_with("batch", "execute", errors.of(e2, e3)) end
  end
  local answers = {}
  local ok, err, e3 = self:_send(self.order, answers, opts, http)
  if not ok then return errors.ret(errors.of(err, e3, "batch", "execute")) end

  -- Parts answering 401: drop each credentials' token once, then send
  -- those parts again (googleapiclient's refresh-and-resend).
  local redo, dropped = {}, {}
  for _, id in ipairs(self.order) do
    local a = answers[id]
    if a and a.status == 401 then
      local creds = spec_of(self.requests[id]).svc.credentials
      if creds and creds.invalidate then
        if not dropped[creds] then
          dropped[creds] = true
          creds:invalidate()
        end
        redo[#redo + 1] = id
      end
    end
  end
  if #redo > 0 then
    local again = {}
    ok, err, e3 = self:_send(redo, again, opts, http)
    if not ok then return errors.ret(errors.of(err, e3, "batch", "execute")) end
    for _, id in ipairs(redo) do answers[id] = again[id] end
  end

  for _, id in ipairs(self.order) do
    local req = self.requests[id]
    local resp, perr = errors.pair(outcome(req, id, answers[id]))
    -- the callbacks get what execute() would return: resp, or nil, msg, err
    local pmsg = perr and tostring(perr)
    local cb = self.callbacks[id]
    if cb then cb(id, resp, pmsg, perr) end
    if self.callback then self.callback(id, resp, pmsg, perr) end
  end
  return true
end

mt.__tostring = function(self)
  return format("gauth.batch (%d requests) %s", #self.order, redact(self.batch_uri))
end

return _M
