--- What the services of gauth's emulator share: Google's answer and error
-- shapes (JSON APIs and OAuth), ids and times in Google's formats, the
-- unverified peek at a JWT's claims, RSA key generation. Internal.
-- @module gauth.emulator.common

local core = require "gauth.core"
local cjson = require "cjson.safe"
local httpd = require "gauth.emulator.httpd"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local tonumber = tonumber
local concat = table.concat
local format = string.format
local find = string.find
local sub = string.sub
local gsub = string.gsub
local match = string.match
local lower = string.lower
local byte = string.byte
local floor = math.floor
local os_date = os.date
local io_popen = io.popen
local b64url_decode = core.b64url_decode

local _M = { _VERSION = "0.1.0" }

local JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
local GOOGLE_ISSUER = "https://accounts.google.com"
local SCOPE_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"
local SCOPE_SQL = "https://www.googleapis.com/auth/sqlservice.admin"
local JSON_TYPE = "application/json; charset=UTF-8"
local TEXT_TYPE = "application/text"

-- ------------------------------------------------------------------------
-- Small helpers

--- JSON text without cjson's escaped slashes (valid either way; easier to
-- read in a trace or a terminal).
local function json(v)
  local s, err = cjson.encode(v)
  if not s then error("gauth.emulator: JSON encode: " .. tostring(err)) end
  return (gsub(s, "\\/", "/"))
end

local function hex(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end

local function random_hex(n)
  return hex(core.random_bytes(n))
end

local function uuid()
  local h = random_hex(16)
  return sub(h, 1, 8) .. "-" .. sub(h, 9, 12) .. "-" .. sub(h, 13, 16)
    .. "-" .. sub(h, 17, 20) .. "-" .. sub(h, 21, 32)
end

local function rfc3339(t)
  local whole = floor(t)
  return os_date("!%Y-%m-%dT%H:%M:%S", whole)
    .. format(".%03dZ", floor((t - whole) * 1000))
end

local function deep_copy(v)
  if type(v) ~= "table" then return v end
  local t = {}
  for k, x in pairs(v) do t[k] = deep_copy(x) end
  return t
end

local function split_words(s, sep)
  local out = {}
  if type(s) ~= "string" then return out end
  for w in s:gmatch("[^" .. sep .. "]+") do out[#out + 1] = w end
  return out
end

-- A stable 21-digit number for an account, shaped like Google's client ids.
local function numeric_id(s)
  local d = { "1" }
  local h = core.sha256(s)
  for i = 1, 20 do d[#d + 1] = tostring(byte(h, i) % 10) end
  return concat(d)
end

local function set_of(list)
  local t = {}
  for _, v in ipairs(list) do t[v] = true end
  return t
end

-- Decode the payload of a compact JWS without verifying it: we need the
-- issuer to know which key to verify with.
local function peek_claims(token)
  if type(token) ~= "string" then return nil end
  local p1 = match(token, "^[%w_%-=]+%.([%w_%-=]+)%.[%w_%-=]*$")
  if not p1 then return nil end
  local raw = b64url_decode((gsub(p1, "=+$", "")))
  if not raw then return nil end
  local claims = cjson.decode(raw)
  if type(claims) ~= "table" then return nil end
  return claims
end

-- The claims worth showing in a trace: all of them, but only plain values
-- (an assertion is the caller's, and holds nothing secret but its
-- signature, which we drop).
local function trace_claims(claims)
  local out = {}
  for k, v in pairs(claims) do
    if type(k) == "string" and (type(v) == "string" or type(v) == "number"
        or type(v) == "boolean" or type(v) == "table") then
      out[k] = v
    end
  end
  return out
end

--- Make a fresh 2048-bit RSA private key (PKCS#8 PEM) with the openssl
-- command. The key comes back over a pipe and never touches the disk.
-- @return pem, or nil and a message
local function generate_rsa_pem(bits)
  bits = tonumber(bits) or 2048
  local p = io_popen("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:"
                     .. floor(bits) .. " 2>/dev/null")
  if not p then return nil, "cannot run openssl" end
  local pem = p:read("*a")
  p:close()
  if not pem or not find(pem, "-----BEGIN PRIVATE KEY-----", 1, true) then
    return nil, "openssl genpkey failed (is the openssl command installed?)"
  end
  return pem
end

-- ------------------------------------------------------------------------
-- Answers

local function reply(status, body, ctype, headers)
  local h = headers or {}
  h["Content-Type"] = ctype
  return status, h, body
end

local function reply_json(status, v, headers)
  return reply(status, json(v), JSON_TYPE, headers)
end

-- The error body every Google JSON API sends.
local function google_error(code, status, message, reason, opts)
  opts = opts or {}
  local e = { message = opts.item_message or message, domain = "global",
              reason = reason }
  if opts.location then
    e.location, e.locationType = opts.location, opts.location_type
  end
  local err = { code = code, message = message, errors = { e }, status = status }
  if opts.details then err.details = opts.details end
  return { error = err }
end

local STATUS_NAMES = {
  [400] = { "INVALID_ARGUMENT", "badRequest" },
  [401] = { "UNAUTHENTICATED", "authError" },
  [403] = { "PERMISSION_DENIED", "forbidden" },
  [404] = { "NOT_FOUND", "notFound" },
  [405] = { "METHOD_NOT_ALLOWED", "httpMethodNotAllowed" },
  [409] = { "ALREADY_EXISTS", "conflict" },
  [411] = { "INVALID_ARGUMENT", "badRequest" },
  [413] = { "INVALID_ARGUMENT", "badRequest" },
  [414] = { "INVALID_ARGUMENT", "badRequest" },
  [431] = { "INVALID_ARGUMENT", "badRequest" },
  [500] = { "INTERNAL", "backendError" },
  [501] = { "UNIMPLEMENTED", "notImplemented" },
  [505] = { "INVALID_ARGUMENT", "badRequest" },
}

--- Body for the answers the HTTP layer makes itself (garbage requests).
local function error_body(status, message)
  local names = STATUS_NAMES[status] or { "UNKNOWN", "unknown" }
  return JSON_TYPE, json(google_error(status, names[1], message, names[2]))
end

local function oauth_error(status, err, description)
  return reply_json(status, { error = err, error_description = description },
                    { ["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate",
                      Pragma = "no-cache" })
end

local function not_found(path)
  return reply_json(404, google_error(404, "NOT_FOUND",
    "The requested URL " .. path .. " was not found on this server.", "notFound"))
end

local function method_not_allowed(allow)
  return reply_json(405, google_error(405, "METHOD_NOT_ALLOWED",
    "The method is not allowed for the requested URL.", "httpMethodNotAllowed"),
    { Allow = allow })
end

local function request_params(req)
  local ctype = lower(req.headers["content-type"] or "")
  if find(ctype, "json", 1, true) then
    local v = cjson.decode(req.body or "")
    local out = {}
    if type(v) == "table" then
      for k, x in pairs(v) do
        if type(k) == "string" and (type(x) == "string" or type(x) == "number") then
          out[k] = tostring(x)
        end
      end
    end
    return out
  end
  return httpd.parse_form(req.body)
end

-- What the emulated services share.
_M.JWT_BEARER = JWT_BEARER
_M.GOOGLE_ISSUER = GOOGLE_ISSUER
_M.SCOPE_PLATFORM = SCOPE_PLATFORM
_M.SCOPE_SQL = SCOPE_SQL
_M.JSON_TYPE = JSON_TYPE
_M.TEXT_TYPE = TEXT_TYPE
_M.json = json
_M.hex = hex
_M.random_hex = random_hex
_M.uuid = uuid
_M.rfc3339 = rfc3339
_M.deep_copy = deep_copy
_M.split_words = split_words
_M.numeric_id = numeric_id
_M.set_of = set_of
_M.peek_claims = peek_claims
_M.trace_claims = trace_claims
_M.generate_rsa_pem = generate_rsa_pem
_M.reply = reply
_M.reply_json = reply_json
_M.google_error = google_error
_M.oauth_error = oauth_error
_M.not_found = not_found
_M.method_not_allowed = method_not_allowed
_M.request_params = request_params
_M.error_body = error_body

return _M
