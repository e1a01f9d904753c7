--- URLs: percent-encoding, form bodies, splitting an URL, loopback hosts.
-- A leaf: it requires nothing. Internal.
-- @module gauth.lib.url

local type = type
local tostring = tostring
local tonumber = tonumber
local byte = string.byte
local format = string.format
local gsub = string.gsub
local concat = table.concat

local _M = { _VERSION = "0.1.0" }

local function pct(c)
  return format("%%%02X", byte(c))
end

--- Percent-encode everything but RFC 3986 unreserved characters.
-- @tparam string s
-- @treturn string
local function encode(s)
  return (gsub(tostring(s), "[^%w%-%._~]", pct))
end
_M.encode = encode

--- application/x-www-form-urlencoded body from an array of {k, v} pairs
-- (ordered, so bodies are reproducible).
-- @tparam table pairs_list
-- @treturn string
function _M.form_encode(pairs_list)
  local out = {}
  for i = 1, #pairs_list do
    local kv = pairs_list[i]
    out[i] = encode(kv[1]) .. "=" .. encode(kv[2])
  end
  return concat(out, "&")
end

--- Is `host` (as `parse` returns it) a loopback address?
-- @tparam string host
-- @treturn boolean
function _M.is_loopback_host(host)
  host = host:lower()
  return host == "localhost" or host == "[::1]" or host == "::1"
      or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

--- Split an URL into scheme (lower case), host, port (number or nil),
-- path-and-query; nil for what is not an absolute URL.
-- @tparam string url
function _M.parse(url)
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
