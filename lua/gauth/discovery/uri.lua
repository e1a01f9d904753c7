--- URIs as googleapiclient makes them: values encoded as Python's
-- urllib.parse.quote / quote_plus do it (memoised), path templates split
-- into literals and variables, and URLs joined as urljoin does. Internal.
-- @module gauth.discovery.uri

local common = require "gauth.discovery.common"

local byte = string.byte
local sub = string.sub
local gsub = string.gsub
local find = string.find
local match = string.match
local format = string.format
local lower = string.lower
local new_cache, trim_cache = common.new_cache, common.trim_cache
local fail = common.fail

local _M = {}

-- Encoding: exactly the characters Python's urllib.parse.quote keeps.

local function pct(c)
  return format("%%%02X", byte(c))
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

_M.quote = quote
_M.quote_reserved = quote_reserved
_M.quote_plus = quote_plus
_M.parse_template = parse_template
_M.join_base = join_base
_M.urlsplit = urlsplit
_M.urlunsplit = urlunsplit
_M.join_absolute = join_absolute

return _M
