--- Cloud Storage V4 signing: signed URLs and POST policies, so that a
-- browser (or any client without Google credentials) may read, write or
-- delete one object for a while.
--
--     local storage = require "gauth.storage"
--     local url = assert(storage.signed_url({
--       credentials = creds,            -- any gauth credentials that can sign
--       bucket = "my-bucket", object = "reports/2024 Q1.pdf",
--       method = "GET", expires = 600,
--     }))
--     local form = assert(storage.post_policy({
--       credentials = creds, bucket = "my-bucket", object = "uploads/${filename}",
--       expires = 600,
--       conditions = { { "content-length-range", 0, 1048576 } },
--       fields = { acl = "public-read" },
--     }))  -- form.url, form.fields
--
-- The signer is `credentials` (their `sign_bytes` and `signer_email`: a key
-- file signs locally, Compute Engine and impersonated credentials through
-- IAM Credentials' signBlob), algorithm GOOG4-RSA-SHA256; or an HMAC key
-- `hmac = { access_id =, secret = }`, GOOG4-HMAC-SHA256. The canonical
-- request, string to sign and policy document are Google's (Cloud Storage
-- "V4 signing process"); the URL's query keeps the order of Google's Node
-- client (the X-Goog-* parameters, the extra ones, the signature last).
--
-- Errors: `nil, msg, err` with module "storage"; step "options" (field
-- `option` names the option), "signing" (the signer's error as `cause`,
-- with its `status`, `account`, `permission`). Nothing secret (HMAC secret,
-- key, signature) is ever in an error.
-- @module gauth.storage

local core = require "gauth.core"
local time = require "gauth.lib.time"
local url_lib = require "gauth.lib.url"
local errors = require "gauth.errors"

local type = type
local pairs = pairs
local ipairs = ipairs
local tostring = tostring
local error = error
local floor = math.floor
local byte = string.byte
local char = string.char
local find = string.find
local format = string.format
local gsub = string.gsub
local lower = string.lower
local sub = string.sub
local upper = string.upper
local concat = table.concat
local sort = table.sort
local os_date = os.date
local sha256_hex = core.sha256_hex
local hex_encode = core.hex_encode
local hmac = core.hmac_sha256
local url_encode = url_lib.encode

local _M = { _VERSION = "0.1.0" }

--- The longest a V4 signature may be valid (seconds): 7 days.
_M.MAX_EXPIRES = 604800

--- Validity when `expires` is not given (seconds).
_M.DEFAULT_EXPIRES = 3600

local universe = require "gauth.universe"

--- The universe whose Cloud Storage host is `storage.googleapis.com`
-- (`gauth.universe.DEFAULT`).
_M.DEFAULT_UNIVERSE = universe.DEFAULT

_M.METHODS = { GET = true, PUT = true, POST = true, DELETE = true, HEAD = true }

local function bad(option, message)
  return errors.fail("storage", "options", option .. " " .. message, { option = option })
end

-- ------------------------------------------------------------------------
-- Encodings
-- ------------------------------------------------------------------------

--- Is `s` well-formed UTF-8 (no overlong forms, surrogates, or code points
-- past U+10FFFF)? (LuaJIT has no utf8 library.)
function _M.valid_utf8(s)
  local i, n = 1, #s
  while i <= n do
    local c = byte(s, i)
    if c < 0x80 then
      i = i + 1
    else
      local len, min
      if c >= 0xC2 and c <= 0xDF then len, min = 2, 0x80
      elseif c >= 0xE0 and c <= 0xEF then len, min = 3, 0x800
      elseif c >= 0xF0 and c <= 0xF4 then len, min = 4, 0x10000
      else return false end
      if i + len - 1 > n then return false end
      local cp = c % (2 ^ (7 - len))
      for j = i + 1, i + len - 1 do
        local b = byte(s, j)
        if b < 0x80 or b > 0xBF then return false end
        cp = cp * 64 + (b - 0x80)
      end
      if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
      i = i + len
    end
  end
  return true
end
local valid_utf8 = _M.valid_utf8

local function pct(c)
  return format("%%%02X", byte(c))
end

--- An object name as the path of a V4 request: every byte but the
-- unreserved characters and `/` percent-encoded (upper-case hex).
function _M.encode_object(name)
  return (gsub(name, "[^%w%-%._~/]", pct))
end
local encode_object = _M.encode_object

-- Escapes of JSON text as Google's policy documents have them: the
-- JSON.stringify escapes, then every character past U+007F as \uXXXX
-- (lower-case hex, UTF-16 surrogate pairs past U+FFFF).
local JSON_ESC = { ['"'] = '\\"', ['\\'] = '\\\\', ['\b'] = '\\b', ['\f'] = '\\f',
                   ['\n'] = '\\n', ['\r'] = '\\r', ['\t'] = '\\t' }
for c = 0, 31 do
  local ch = char(c)
  if not JSON_ESC[ch] then JSON_ESC[ch] = format("\\u%04x", c) end
end

local function utf8_escape(seq)
  local c = byte(seq, 1)
  local len = #seq
  local cp = c % (2 ^ (7 - len))
  for j = 2, len do cp = cp * 64 + (byte(seq, j) - 0x80) end
  if cp < 0x10000 then return format("\\u%04x", cp) end
  cp = cp - 0x10000
  return format("\\u%04x\\u%04x", 0xD800 + floor(cp / 1024), 0xDC00 + cp % 1024)
end

--- A string as a JSON string literal, escaped as Google's policy
-- documents are (non-ASCII as \u escapes). `s` must be valid UTF-8.
function _M.json_string(s)
  s = gsub(s, '[%c"\\]', JSON_ESC)
  s = gsub(s, "[\xC2-\xF4][\x80-\xBF]+", utf8_escape)
  return '"' .. s .. '"'
end
local json_string = _M.json_string

-- ------------------------------------------------------------------------
-- Options
-- ------------------------------------------------------------------------

local function get_now(now)
  if now == nil then return floor(time.now()) end
  if type(now) == "function" then now = now() end
  if type(now) ~= "number" or now ~= now or now < 0 or now >= 253402300800 then
    return nil
  end
  return floor(now)
end

-- The signer: { kind = "rsa"|"hmac", email =, sign = function(text) -> hex }
local function signer_of(opts)
  local creds, key = opts.credentials, opts.hmac
  if creds ~= nil and key ~= nil then
    return bad("credentials", "and hmac exclude each other: give one")
  end
  if key ~= nil then
    if type(key) ~= "table" then return bad("hmac", "must be a table { access_id, secret }") end
    local id, secret = key.access_id, key.secret
    if type(id) ~= "string" or id == "" or find(id, "[%c/]") then
      return bad("hmac.access_id", "must be a non-empty string without / or control characters")
    end
    if type(secret) ~= "string" or secret == "" then
      return bad("hmac.secret", "must be a non-empty string")
    end
    return { kind = "hmac", email = id, secret = secret,
             algorithm = "GOOG4-HMAC-SHA256" }
  end
  if creds == nil then return bad("credentials", "or hmac is required") end
  if type(creds) ~= "table" or type(creds.sign_bytes) ~= "function"
      or type(creds.signer_email) ~= "function" then
    return bad("credentials", "must be gauth credentials (with sign_bytes and signer_email)")
  end
  local email, m, x = creds:signer_email()
  if not email then
    local cause = errors.of(m, x)
    return errors.fail("storage", "signing", "the credentials cannot sign: " .. tostring(cause),
                       { cause = cause, status = cause.status, retryable = cause.retryable })
  end
  return { kind = "rsa", email = email, creds = creds, algorithm = "GOOG4-RSA-SHA256" }
end

-- Hex signature of `text` with the signer; the date stamp scopes HMAC keys.
local function sign(signer, text, datestamp)
  if signer.kind == "hmac" then
    local k = hmac("GOOG4" .. signer.secret, datestamp)
    k = hmac(k, "auto")
    k = hmac(k, "storage")
    k = hmac(k, "goog4_request")
    return hex_encode(hmac(k, text))
  end
  local sig, m, x = signer.creds:sign_bytes(text)
  if not sig then
    local cause = errors.of(m, x)
    return errors.fail("storage", "signing", "signing failed: " .. tostring(cause),
      { cause = cause, status = cause.status, retryable = cause.retryable,
        account = cause.account, permission = cause.permission })
  end
  return hex_encode(sig)
end

local function valid_scheme(s)
  return s == "https" or s == "http"
end

-- Scheme and host[:port] of an endpoint URL given as an option.
local function endpoint_parts(option, v)
  if type(v) ~= "string" then return bad(option, "must be a URL string") end
  local scheme, rest = v:match("^(%a+)://([^/?#]+)/*$")
  if not scheme then
    return bad(option, "must be scheme://host[:port] without a path")
  end
  scheme = lower(scheme)
  if not valid_scheme(scheme) then return bad(option, "must be an http or https URL") end
  if not find(rest, "^[%w.-]+$") and not find(rest, "^[%w.-]+:%d+$")
      and not find(rest, "^%[[%x:.]+%]:?%d*$") then
    return bad(option, "has a malformed host")
  end
  return scheme, lower(rest)
end

-- { scheme, host, path_prefix } of the request, from the URL options.
local function location(opts, bucket, creds)
  local style = opts.url_style or "path"
  if style ~= "path" and style ~= "virtual_hosted" and style ~= "bucket_bound_hostname" then
    return bad("url_style", 'must be "path", "virtual_hosted" or "bucket_bound_hostname"')
  end
  local scheme = opts.scheme
  if scheme ~= nil and not valid_scheme(scheme) then
    return bad("scheme", 'must be "https" or "http"')
  end
  local ud = opts.universe_domain
  if ud == nil and creds then ud = universe.known(creds) end
  ud = ud or _M.DEFAULT_UNIVERSE
  if not universe.is_domain(ud) then
    return bad("universe_domain", "must be a domain name")
  end
  if opts.bucket_bound_hostname ~= nil and style ~= "bucket_bound_hostname" then
    return bad("bucket_bound_hostname", 'needs url_style "bucket_bound_hostname"')
  end
  if opts.api_endpoint ~= nil and style ~= "path" then
    return bad("api_endpoint", 'is for url_style "path"')
  end
  if style == "bucket_bound_hostname" then
    local h = opts.bucket_bound_hostname
    if type(h) ~= "string" or h == "" then
      return bad("bucket_bound_hostname", 'is required with url_style "bucket_bound_hostname"')
    end
    if find(h, "://", 1, true) then
      if scheme ~= nil then return bad("scheme", "conflicts with the scheme of bucket_bound_hostname") end
      local s, host, x = endpoint_parts("bucket_bound_hostname", h)
      if not s then return nil, host, x end
      return { scheme = s, host = host, bucket_in_path = false }
    end
    if not find(h, "^[%w.-]+$") and not find(h, "^[%w.-]+:%d+$") then
      return bad("bucket_bound_hostname", "must be a host name or scheme://host")
    end
    return { scheme = scheme or "https", host = lower(h), bucket_in_path = false }
  end
  if style == "virtual_hosted" then
    return { scheme = scheme or "https", host = lower(bucket) .. ".storage." .. lower(ud),
             bucket_in_path = false }
  end
  if opts.api_endpoint ~= nil then
    if scheme ~= nil then return bad("scheme", "conflicts with the scheme of api_endpoint") end
    local s, host, x = endpoint_parts("api_endpoint", opts.api_endpoint)
    if not s then return nil, host, x end
    return { scheme = s, host = host, bucket_in_path = true }
  end
  return { scheme = scheme or "https", host = "storage." .. lower(ud), bucket_in_path = true }
end

local function check_bucket(b)
  if b == nil then return bad("bucket", "is required") end
  if type(b) ~= "string" or not find(b, "^[%w][%w._-]*$") or #b > 222 then
    return bad("bucket", "must be a bucket name (letters, digits, . _ -)")
  end
  return b
end

-- "." and ".." path segments: every URL parser (browsers, curl, Node's
-- URL) removes them, so the request would reach another path than the one
-- signed.
local function dot_segment(name)
  for seg in (name .. "/"):gmatch("([^/]*)/") do
    if seg == "." or seg == ".." then return true end
  end
  return false
end

local function check_object(o, required)
  if o == nil then
    if required then return bad("object", "is required") end
    return false
  end
  if type(o) ~= "string" or o == "" then return bad("object", "must be a non-empty string") end
  if #o > 1024 then return bad("object", "is longer than 1024 bytes") end
  if not valid_utf8(o) then return bad("object", "is not valid UTF-8") end
  if find(o, "[\r\n]") then return bad("object", "contains CR or LF") end
  if dot_segment(o) then
    return bad("object", 'has a "." or ".." segment, which URL parsers remove')
  end
  return o
end

local function check_expires(e)
  if e == nil then return _M.DEFAULT_EXPIRES end
  if type(e) ~= "number" or e ~= e or e % 1 ~= 0 then
    return bad("expires", "must be a whole number of seconds")
  end
  if e <= 0 then return bad("expires", "must be positive") end
  if e > _M.MAX_EXPIRES then
    return bad("expires", "must be at most 604800 seconds (7 days)")
  end
  return e
end

local HEADER_NAME = "^[%w!#$%%&'*+.^_`|~-]+$"

-- Canonical headers: lower-case names, values trimmed and runs of
-- white space folded (as Google's clients do); sorted by name.
local function canonical_headers(given, host)
  local list = { { "host", host } }
  if given ~= nil then
    if type(given) ~= "table" then return bad("headers", "must be a table of name = value") end
    local seen = { host = true }
    for k, v in pairs(given) do
      if type(k) ~= "string" or not find(k, HEADER_NAME) then
        return bad("headers", "has a name that is not an HTTP token (no :, spaces, CR or LF): "
                   .. format("%q", sub(tostring(k), 1, 60)))
      end
      local name = lower(k)
      if name == "host" then return bad("headers.host", "is signed from the URL's host") end
      if seen[name] then return bad("headers." .. name, "is given twice") end
      seen[name] = true
      if type(v) == "number" then v = format("%d", v) end
      if type(v) ~= "string" or find(v, "[\r\n%z]") then
        return bad("headers." .. name, "must be a string without CR, LF or NUL")
      end
      v = gsub(gsub(v, "^%s+", ""), "%s+$", "")
      v = gsub(v, "%s%s+", " ")
      list[#list + 1] = { name, v }
    end
  end
  sort(list, function(a, b) return a[1] < b[1] end)
  local names, lines = {}, {}
  for i, h in ipairs(list) do
    names[i] = h[1]
    lines[i] = h[1] .. ":" .. h[2] .. "\n"
  end
  return concat(lines), concat(names, ";"), list
end

local RESERVED_QUERY = { ["x-goog-algorithm"] = true, ["x-goog-credential"] = true,
                         ["x-goog-date"] = true, ["x-goog-expires"] = true,
                         ["x-goog-signedheaders"] = true, ["x-goog-signature"] = true }

local function extra_query(q)
  local list = {}
  if q == nil then return list end
  if type(q) ~= "table" then return bad("query", "must be a table of name = value") end
  for k, v in pairs(q) do
    if type(k) ~= "string" or k == "" then return bad("query", "names must be non-empty strings") end
    if RESERVED_QUERY[lower(k)] then return bad("query." .. k, "is set by the signing") end
    if type(v) == "number" then v = format("%d", v) end
    if type(v) ~= "string" then return bad("query." .. k, "must be a string") end
    list[#list + 1] = { k, v }
  end
  sort(list, function(a, b) return a[1] < b[1] end)
  return list
end

local function is_sha256_hex(v)
  return type(v) == "string" and #v == 64 and not find(v, "[^%x]")
end

-- ------------------------------------------------------------------------
-- Signed URLs
-- ------------------------------------------------------------------------

--- A V4 signed URL.
-- @tparam table opts `credentials` (gauth credentials that can sign) or
--   `hmac` (`{ access_id =, secret = }`), `bucket` (required), `object`
--   (any valid UTF-8 name; without it, the bucket), `method` (GET, PUT,
--   POST, DELETE, HEAD; default GET; POST starts a resumable upload and
--   needs `headers = { ["x-goog-resumable"] = "start" }`), `expires`
--   (seconds, 1..604800, default 3600), `headers` (name = value: signed;
--   the request must send them), `query` (name = value: extra signed query
--   parameters), `payload_sha256` (hex SHA-256 of the body; else an
--   `x-goog-content-sha256` header's value; else UNSIGNED-PAYLOAD),
--   `url_style` ("path", "virtual_hosted", "bucket_bound_hostname" with
--   `bucket_bound_hostname`: a host or scheme://host), `scheme` ("https"
--   or "http"), `api_endpoint` (scheme://host[:port], path style),
--   `universe_domain` (default the credentials', else "googleapis.com"),
--   `now` (epoch seconds, or a function returning them: the signing time)
-- @return url | nil, msg, err
function _M.signed_url(opts)
  if type(opts) ~= "table" then error("gauth.storage: signed_url: opts must be a table", 2) end
  local bucket, m, x = check_bucket(opts.bucket)
  if not bucket then return nil, m, x end
  local object
  object, m, x = check_object(opts.object, false)
  if object == nil then return nil, m, x end
  local method = opts.method or "GET"
  if type(method) ~= "string" or not _M.METHODS[upper(method)] then
    return bad("method", "must be GET, PUT, POST, DELETE or HEAD")
  end
  method = upper(method)
  local expires
  expires, m, x = check_expires(opts.expires)
  if not expires then return nil, m, x end
  local now = get_now(opts.now)
  if not now then return bad("now", "must be epoch seconds (or a function returning them)") end
  local signer
  signer, m, x = signer_of(opts)
  if not signer then return nil, m, x end
  local loc
  loc, m, x = location(opts, bucket, signer.creds)
  if not loc then return nil, m, x end
  local header_text, signed_names, hlist = canonical_headers(opts.headers, loc.host)
  if not header_text then return nil, signed_names, hlist end
  local extra
  extra, m, x = extra_query(opts.query)
  if not extra then return nil, m, x end

  local payload = opts.payload_sha256
  if payload ~= nil and not is_sha256_hex(payload) then
    return bad("payload_sha256", "must be 64 hex characters (SHA-256)")
  end
  for _, h in ipairs(hlist) do
    if h[1] == "x-goog-content-sha256" then
      if not is_sha256_hex(h[2]) then
        return bad("headers.x-goog-content-sha256", "must be 64 hex characters (SHA-256)")
      end
      if payload ~= nil and payload ~= h[2] then
        return bad("payload_sha256", "differs from the x-goog-content-sha256 header")
      end
      payload = h[2]
    end
  end

  local path
  local enc = object and encode_object(object) or nil
  if loc.bucket_in_path then
    path = "/" .. bucket .. (enc and ("/" .. enc) or "")
  else
    path = "/" .. (enc or "")
  end
  local datestamp = os_date("!%Y%m%d", now)
  local timestamp = os_date("!%Y%m%dT%H%M%SZ", now)
  local scope = datestamp .. "/auto/storage/goog4_request"
  -- The query as it is sent: Google's X-Goog-* parameters, then the extra
  -- ones; canonically, all sorted by encoded name.
  local q = {
    { "X-Goog-Algorithm", signer.algorithm },
    { "X-Goog-Credential", signer.email .. "/" .. scope },
    { "X-Goog-Date", timestamp },
    { "X-Goog-Expires", format("%d", expires) },
    { "X-Goog-SignedHeaders", signed_names },
  }
  local enc_q = {}
  for i, kv in ipairs(q) do enc_q[i] = { url_encode(kv[1]), url_encode(kv[2]) } end
  for _, kv in ipairs(extra) do enc_q[#enc_q + 1] = { url_encode(kv[1]), url_encode(kv[2]) } end
  local sorted = {}
  for i, kv in ipairs(enc_q) do sorted[i] = kv end
  sort(sorted, function(a, b)
    if a[1] ~= b[1] then return a[1] < b[1] end
    return a[2] < b[2]
  end)
  local canon_q = {}
  for i, kv in ipairs(sorted) do canon_q[i] = kv[1] .. "=" .. kv[2] end
  local canonical_request = concat({
    method, path, concat(canon_q, "&"), header_text, signed_names,
    payload or "UNSIGNED-PAYLOAD" }, "\n")
  local string_to_sign = signer.algorithm .. "\n" .. timestamp .. "\n" .. scope .. "\n"
                         .. sha256_hex(canonical_request)
  local sig
  sig, m, x = sign(signer, string_to_sign, datestamp)
  if not sig then return nil, m, x end
  local out = {}
  for i, kv in ipairs(enc_q) do out[i] = kv[1] .. "=" .. kv[2] end
  out[#out + 1] = "X-Goog-Signature=" .. sig
  return loc.scheme .. "://" .. loc.host .. path .. "?" .. concat(out, "&")
end

-- ------------------------------------------------------------------------
-- POST policies
-- ------------------------------------------------------------------------

-- Form fields a policy may set besides the object's metadata.
local POLICY_FIELDS = {
  acl = true, ["cache-control"] = true, ["content-disposition"] = true,
  ["content-encoding"] = true, ["content-type"] = true, expires = true,
  success_action_redirect = true, success_action_status = true,
  ["x-goog-storage-class"] = true, ["x-goog-content-sha256"] = true,
  ["x-goog-custom-time"] = true,
}

local function json_value(v, where)
  local t = type(v)
  if t == "string" then
    if not valid_utf8(v) then return nil, where .. " is not valid UTF-8" end
    return json_string(v)
  elseif t == "number" then
    if v ~= v or v % 1 ~= 0 or v > 2 ^ 53 or v < -2 ^ 53 then
      return nil, where .. " must be a whole number"
    end
    return format("%d", v)
  elseif t == "boolean" then
    return v and "true" or "false"
  end
  return nil, where .. " must be a string, a whole number or a boolean"
end

-- One condition as JSON: an array ({ "starts-with", "$key", "x/" }) or an
-- object of one or more fields ({ acl = "public-read" }; names sorted).
local function json_condition(c, where)
  if type(c) ~= "table" then return nil, where .. " must be a table" end
  local n = #c
  local parts = {}
  if n > 0 then
    for k in pairs(c) do
      if type(k) ~= "number" or k % 1 ~= 0 or k < 1 or k > n then
        return nil, where .. " mixes an array with named fields"
      end
    end
    for i = 1, n do
      local v, e = json_value(c[i], where .. "[" .. i .. "]")
      if not v then return nil, e end
      parts[i] = v
    end
    return "[" .. concat(parts, ",") .. "]"
  end
  local names = {}
  for k in pairs(c) do
    if type(k) ~= "string" then return nil, where .. " has a name that is not a string" end
    names[#names + 1] = k
  end
  if #names == 0 then return nil, where .. " is empty" end
  sort(names)
  for i, k in ipairs(names) do
    local v, e = json_value(c[k], where .. "." .. k)
    if not v then return nil, e end
    if not valid_utf8(k) then return nil, where .. " has a name that is not valid UTF-8" end
    parts[i] = json_string(k) .. ":" .. v
  end
  return "{" .. concat(parts, ",") .. "}"
end

--- A V4 POST policy for an HTML form upload.
-- @tparam table opts `credentials` or `hmac` (as for `signed_url`),
--   `bucket`, `object` (the `key` field: may hold `${filename}`),
--   `expires` (seconds, 1..604800, default 3600), `conditions` (an array
--   of Google's policy conditions: `{ "starts-with", "$key", "uploads/" }`,
--   `{ "content-length-range", 0, 1048576 }`, `{ acl = "public-read" }`),
--   `fields` (name = value: `acl`, `cache-control`, `content-type`,
--   `content-disposition`, `content-encoding`, `expires`,
--   `success_action_status`, `success_action_redirect`,
--   `x-goog-storage-class`, `x-goog-custom-time`, `x-goog-meta-*`, and
--   `x-ignore-*` (sent, not in the policy); each also becomes an exact
--   condition, in name order), `url_style`, `bucket_bound_hostname`,
--   `scheme`, `api_endpoint`, `universe_domain`, `now` (as for `signed_url`)
-- @return `{ url =, fields = }` (every field the form must send, the file
--   last) | nil, msg, err
function _M.post_policy(opts)
  if type(opts) ~= "table" then error("gauth.storage: post_policy: opts must be a table", 2) end
  local bucket, m, x = check_bucket(opts.bucket)
  if not bucket then return nil, m, x end
  local object
  object, m, x = check_object(opts.object, true)
  if not object then return nil, m, x end
  local expires
  expires, m, x = check_expires(opts.expires)
  if not expires then return nil, m, x end
  local now = get_now(opts.now)
  if not now then return bad("now", "must be epoch seconds (or a function returning them)") end
  local given = opts.fields
  if given ~= nil and type(given) ~= "table" then
    return bad("fields", "must be a table of name = value")
  end
  local names = {}
  for k, v in pairs(given or {}) do
    if type(k) ~= "string" then return bad("fields", "names must be strings") end
    local name = lower(k)
    if name ~= k then return bad("fields." .. k, "must be lower-case") end
    if not (POLICY_FIELDS[name] or find(name, "^x%-goog%-meta%-[%w!#$%%&'*+.^_`|~-]+$")
            or find(name, "^x%-ignore%-[%w!#$%%&'*+.^_`|~-]+$")) then
      return bad("fields." .. k, "is not a form field a policy may set")
    end
    if type(v) == "number" then v = format("%d", v) end
    if type(v) ~= "string" or not valid_utf8(v) then
      return bad("fields." .. k, "must be a UTF-8 string")
    end
    names[#names + 1] = k
  end
  sort(names)
  local conds = opts.conditions
  if conds ~= nil and type(conds) ~= "table" then
    return bad("conditions", "must be an array of conditions")
  end
  local signer
  signer, m, x = signer_of(opts)
  if not signer then return nil, m, x end
  local loc
  loc, m, x = location(opts, bucket, signer.creds)
  if not loc then return nil, m, x end

  local datestamp = os_date("!%Y%m%d", now)
  local timestamp = os_date("!%Y%m%dT%H%M%SZ", now)
  local credential = signer.email .. "/" .. datestamp .. "/auto/storage/goog4_request"
  local parts = {}
  if conds then
    local n = #conds
    for k in pairs(conds) do
      if type(k) ~= "number" or k % 1 ~= 0 or k < 1 or k > n then
        return bad("conditions", "must be an array of conditions")
      end
    end
    for i = 1, n do
      local j, e = json_condition(conds[i], "conditions[" .. i .. "]")
      if not j then return errors.fail("storage", "options", e, { option = "conditions" }) end
      parts[i] = j
    end
  end
  local fields = {}
  local ordered = {}
  for _, k in ipairs(names) do
    local v = given[k]
    if type(v) == "number" then v = format("%d", v) end
    fields[k] = v
    ordered[#ordered + 1] = { k, v }
  end
  ordered[#ordered + 1] = { "bucket", bucket }
  ordered[#ordered + 1] = { "key", object }
  ordered[#ordered + 1] = { "x-goog-date", timestamp }
  ordered[#ordered + 1] = { "x-goog-credential", credential }
  ordered[#ordered + 1] = { "x-goog-algorithm", signer.algorithm }
  for _, kv in ipairs(ordered) do
    if not find(kv[1], "^x%-ignore%-") then
      parts[#parts + 1] = "{" .. json_string(kv[1]) .. ":" .. json_string(kv[2]) .. "}"
    end
  end
  local policy = '{"conditions":[' .. concat(parts, ",") .. '],"expiration":'
                 .. json_string(os_date("!%Y-%m-%dT%H:%M:%SZ", now + expires)) .. "}"
  local policy_b64 = core.b64_encode(policy)
  local sig
  sig, m, x = sign(signer, policy_b64, datestamp)
  if not sig then return nil, m, x end
  fields.key = object
  fields["x-goog-date"] = timestamp
  fields["x-goog-credential"] = credential
  fields["x-goog-algorithm"] = signer.algorithm
  fields.policy = policy_b64
  fields["x-goog-signature"] = sig
  local url = loc.scheme .. "://" .. loc.host .. "/"
  if loc.bucket_in_path then url = url .. bucket .. "/" end
  return { url = url, fields = fields }
end

return _M
