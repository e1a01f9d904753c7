--- AWS Signature Version 4 (the `AWS4-HMAC-SHA256` algorithm): the
-- canonical request, the string to sign, the signing-key chain and the
-- `Authorization` header, over `gauth.core`'s SHA-256 and HMAC-SHA256.
-- Used by `gauth.external_account` to sign the `GetCallerIdentity`
-- request that is the subject token of AWS workload identity federation.
--
--     local sigv4 = require "gauth.aws_sigv4"
--     local signed = sigv4.sign({
--       method = "POST",
--       url = "https://sts.us-east-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
--       headers = { { "x-goog-cloud-target-resource", audience } },
--     }, { access_key_id = ..., secret_access_key = ..., session_token = ... },
--        { region = "us-east-1", service = "sts", now = os.time() })
--     -- signed.headers: every header sent, Authorization included
--
-- The secret key and the signature never go into an error.
-- @module gauth.aws_sigv4

local core = require "gauth.core"
local errors = require "gauth.errors"

local type = type
local ipairs = ipairs
local tonumber = tonumber
local error = error
local byte = string.byte
local char = string.char
local format = string.format
local gsub = string.gsub
local lower = string.lower
local find = string.find
local sub = string.sub
local match = string.match
local gmatch = string.gmatch
local concat = table.concat
local sort = table.sort
local os_date = os.date
local sha256 = core.sha256
local hmac = core.hmac_sha256

local _M = { _VERSION = "0.1.0" }

_M.ALGORITHM = "AWS4-HMAC-SHA256"

local function hex(s)
  return (gsub(s, ".", function(c) return format("%02x", byte(c)) end))
end
_M.hex = hex

--- SHA-256 of `s` in lower-case hex (the payload hash of SigV4).
function _M.sha256_hex(s)
  return hex(sha256(s))
end

local function pct(c)
  return format("%%%02X", byte(c))
end

-- RFC 3986 percent-encoding of everything but the unreserved characters
-- (and '/' in a path), upper-case hex: SigV4's URI encoding.
local function uri_encode(s, keep_slash)
  if keep_slash then return (gsub(s, "[^%w%-%._~/]", pct)) end
  return (gsub(s, "[^%w%-%._~]", pct))
end
_M.uri_encode = uri_encode

local function pct_decode(s)
  return (gsub(s, "%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

--- The canonical URI of a path: dot segments removed, empty segments
-- collapsed (as AWS does for every service but S3), each byte outside the
-- unreserved set percent-encoded once (a path given already encoded is
-- decoded first).
-- @tparam string path
-- @treturn string
function _M.canonical_uri(path)
  if path == nil or path == "" then return "/" end
  path = pct_decode(path)
  local out = {}
  for seg in gmatch(path, "[^/]+") do
    if seg == ".." then
      out[#out] = nil
    elseif seg ~= "." then
      out[#out + 1] = seg
    end
  end
  local s = "/" .. concat(out, "/")
  -- A trailing slash stays (it names another resource).
  if #out > 0 and sub(path, -1) == "/" then s = s .. "/" end
  return uri_encode(s, true)
end

--- The canonical query string: each name and value decoded then
-- URI-encoded, sorted by name, then by value.
-- @tparam string query the raw query (without "?"), or nil
-- @treturn string
function _M.canonical_query(query)
  if query == nil or query == "" then return "" end
  local params = {}
  for part in gmatch(query, "[^&]+") do
    local k, v = match(part, "^([^=]*)=(.*)$")
    if not k then k, v = part, "" end
    -- '+' is a space only in forms; SigV4 queries take it literally.
    params[#params + 1] = { uri_encode(pct_decode(k)), uri_encode(pct_decode(v)) }
  end
  sort(params, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local out = {}
  for i, p in ipairs(params) do out[i] = p[1] .. "=" .. p[2] end
  return concat(out, "&")
end

-- A header value as SigV4 signs it: trimmed, runs of spaces (and the
-- line folds of a multi-line value) made one space.
local function trim_value(v)
  v = gsub(v, "%s+", " ")
  return (gsub(gsub(v, "^ ", ""), " $", ""))
end

--- The canonical headers and the signed-headers list.
-- @tparam table headers an array of `{ name, value }` (a name may repeat:
--   its values are joined with commas in the order given)
-- @return canonical_headers (each "name:value\n"), signed_headers
function _M.canonical_headers(headers)
  local by_name, names = {}, {}
  for _, h in ipairs(headers) do
    local name = lower(h[1])
    local v = trim_value(h[2])
    if by_name[name] then
      by_name[name] = by_name[name] .. "," .. v
    else
      by_name[name] = v
      names[#names + 1] = name
    end
  end
  sort(names)
  local lines = {}
  for i, n in ipairs(names) do lines[i] = n .. ":" .. by_name[n] .. "\n" end
  return concat(lines), concat(names, ";")
end

--- The signing key: HMAC chain over the date, region, service and
-- "aws4_request" from "AWS4" .. secret.
-- @return 32 raw bytes
function _M.signing_key(secret, date_stamp, region, service)
  local k = hmac("AWS4" .. secret, date_stamp)
  k = hmac(k, region)
  k = hmac(k, service)
  return hmac(k, "aws4_request")
end

--- The `x-amz-date` form of an epoch time: "YYYYMMDDTHHMMSSZ" (UTC).
function _M.amz_date(epoch)
  return os_date("!%Y%m%dT%H%M%SZ", epoch)
end

local function split_url(url)
  local host, rest = match(url, "^[%a][%w+.-]*://([^/?#]+)(.*)$")
  if not host then return nil end
  rest = gsub(rest, "#.*$", "")
  local path, query = match(rest, "^([^?]*)%??(.*)$")
  return host, path, query
end

--- Sign a request.
-- @tparam table req `method`, `url` (absolute; its host is the `host`
--   header unless one is given), `headers` (array of `{ name, value }`),
--   `body` (string, default "")
-- @tparam table creds `access_key_id`, `secret_access_key`,
--   `session_token` (optional)
-- @tparam table opts `region`, `service`, and either `now` (epoch
--   seconds) or `amz_date` ("YYYYMMDDTHHMMSSZ"); `sign_token = false`
--   adds the session token after signing instead of signing it
-- @return `{ headers = { {name, value}, ... } (the request's, then
--   x-amz-date, x-amz-security-token and Authorization when added),
--   authorization, canonical_request, string_to_sign, signature, amz_date }`
--   | nil, msg, err
function _M.sign(req, creds, opts)
  if type(req) ~= "table" or type(req.method) ~= "string" or type(req.url) ~= "string" then
    error("gauth.aws_sigv4: sign: req needs method and url", 2)
  end
  if type(creds) ~= "table" or type(opts) ~= "table" then
    error("gauth.aws_sigv4: sign: creds and opts must be tables", 2)
  end
  local ak, sk = creds.access_key_id, creds.secret_access_key
  if type(ak) ~= "string" or ak == "" or type(sk) ~= "string" or sk == "" then
    return errors.fail("aws_sigv4", "credentials", "access_key_id and secret_access_key are required")
  end
  if type(opts.region) ~= "string" or opts.region == "" then
    return errors.fail("aws_sigv4", "options", "region is required")
  end
  if type(opts.service) ~= "string" or opts.service == "" then
    return errors.fail("aws_sigv4", "options", "service is required")
  end
  local host, path, query = split_url(req.url)
  if not host then
    return errors.fail("aws_sigv4", "url", "not an absolute URL")
  end
  local amz = opts.amz_date or (opts.now and _M.amz_date(opts.now))
  if type(amz) ~= "string" or not find(amz, "^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$") then
    return errors.fail("aws_sigv4", "options", "now or amz_date (YYYYMMDDTHHMMSSZ) is required")
  end
  local date_stamp = sub(amz, 1, 8)

  local headers, signed = {}, {}
  local have = {}
  for i, h in ipairs(req.headers or {}) do
    if type(h[1]) ~= "string" or type(h[2]) ~= "string" then
      error("gauth.aws_sigv4: sign: headers[" .. i .. "] must be { name, value } strings", 2)
    end
    headers[#headers + 1] = { h[1], h[2] }
    have[lower(h[1])] = true
  end
  if not have.host then headers[#headers + 1] = { "host", host } end
  if not have["x-amz-date"] then headers[#headers + 1] = { "x-amz-date", amz } end
  local token = creds.session_token
  if token == "" then token = nil end
  if token and opts.sign_token ~= false and not have["x-amz-security-token"] then
    headers[#headers + 1] = { "x-amz-security-token", token }
  end
  for i, h in ipairs(headers) do signed[i] = h end

  local canonical_headers, signed_headers = _M.canonical_headers(signed)
  local creq = concat({
    req.method,
    _M.canonical_uri(path),
    _M.canonical_query(query),
    canonical_headers,
    signed_headers,
    hex(sha256(req.body or "")),
  }, "\n")
  local scope = date_stamp .. "/" .. opts.region .. "/" .. opts.service .. "/aws4_request"
  local sts = concat({ _M.ALGORITHM, amz, scope, hex(sha256(creq)) }, "\n")
  local signature = hex(hmac(_M.signing_key(sk, date_stamp, opts.region, opts.service), sts))
  local authz = _M.ALGORITHM .. " Credential=" .. ak .. "/" .. scope
    .. ", SignedHeaders=" .. signed_headers .. ", Signature=" .. signature
  if token and opts.sign_token == false then
    headers[#headers + 1] = { "x-amz-security-token", token }
  end
  headers[#headers + 1] = { "Authorization", authz }
  return {
    headers = headers, authorization = authz, canonical_request = creq,
    string_to_sign = sts, signature = signature, amz_date = amz,
  }
end

return _M
