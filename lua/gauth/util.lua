--- Small helpers shared by the gauth modules: clock, sleep, JSON, URL
-- encoding, files. Internal.
-- @module gauth.util

local cjson = require "cjson.safe"
local core = require "gauth.core"

local type = type
local tostring = tostring
local byte = string.byte
local format = string.format
local gsub = string.gsub
local io_open = io.open
local os_getenv = os.getenv

local ngx = ngx  -- luacheck: ignore

local _M = { _VERSION = "0.1.0" }

--- True when running inside nginx (lua-nginx-module / OpenResty).
_M.is_ngx = type(ngx) == "table" and type(ngx.get_phase) == "function"

-- Wall-clock time in seconds, with sub-second precision.
if _M.is_ngx then
  _M.now = function() ngx.update_time(); return ngx.now() end
else
  _M.now = core.now
end

--- Can this phase yield on cosockets / ngx.sleep?
local YIELDING = { rewrite = true, access = true, content = true,
                   timer = true, ssl_cert = true, ssl_session_fetch = true,
                   preread = true, balancer = false }
function _M.can_yield()
  if not _M.is_ngx then return false end
  return YIELDING[ngx.get_phase()] == true
end

--- Sleep `s` seconds without blocking nginx where that is possible.
function _M.sleep(s)
  if s <= 0 then return end
  if _M.is_ngx and _M.can_yield() then
    return ngx.sleep(s)
  end
  return core.sleep(s)
end

function _M.getenv(name)
  local v = os_getenv(name)
  if v == "" then return nil end
  return v
end

--- Decode JSON; returns value | nil, message (never raises).
function _M.json_decode(s)
  if type(s) ~= "string" then
    return nil, "not a string"
  end
  local v, err = cjson.decode(s)
  if v == nil and err then
    return nil, "malformed JSON"
  end
  return v
end

local cjson_encode = cjson.encode
function _M.json_encode(v)
  return cjson_encode(v)
end

_M.json_null = cjson.null
_M.empty_array_mt = cjson.empty_array_mt

local function pct(c)
  return format("%%%02X", byte(c))
end

--- Percent-encode everything but RFC 3986 unreserved characters.
function _M.url_encode(s)
  return (gsub(tostring(s), "[^%w%-%._~]", pct))
end

--- application/x-www-form-urlencoded body from an array of {k, v} pairs
-- (ordered, so bodies are reproducible).
function _M.form_encode(pairs_list)
  local out = {}
  for i = 1, #pairs_list do
    local kv = pairs_list[i]
    out[i] = _M.url_encode(kv[1]) .. "=" .. _M.url_encode(kv[2])
  end
  return table.concat(out, "&")
end

--- Read a whole file: content | nil, message.
function _M.read_file(path)
  local f, err = io_open(path, "rb")
  if not f then
    return nil, err
  end
  local data = f:read("*a")
  f:close()
  if data == nil then
    return nil, path .. ": read failed"
  end
  return data
end

--- Is the host of an URL a loopback address?
function _M.is_loopback_host(host)
  host = host:lower()
  return host == "localhost" or host == "[::1]" or host == "::1"
      or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

--- Split an URL into scheme, host, port (number or nil), path-and-query.
function _M.parse_url(url)
  if type(url) ~= "string" then return nil end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  if authority:find("@", 1, true) then
    authority = authority:match("@([^@]*)$")
  end
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^(%[[^%]]+%])(.*)$")
  else
    host, port = authority:match("^([^:]*)(.*)$")
  end
  if not host or host == "" then return nil end
  if port and port ~= "" then
    port = tonumber(port:match("^:(%d+)$"))
    if not port then return nil end
  else
    port = nil
  end
  if path == "" then path = "/" end
  return scheme, host, port, path
end

return _M
