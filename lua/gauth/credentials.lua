--- The base of every credentials type: token caching, Google's refresh
-- window, one refresh at a time, request headers.
--
-- A credentials type (service_account, compute_engine, authorized_user,
-- impersonated, ...) is a class made with `extend` whose objects are set up
-- with `init`, and that implements one method:
--
--     function MyCreds:fetch_token()
--       -- ask the token source; never look at the cache here
--       return { access_token = "...", expires_at = epoch_seconds }  -- | nil, err
--     end
--
-- and, so that two objects asking for different tokens never share one,
-- `cache_key_parts()` returning a table of everything that makes its
-- tokens different (identity, scopes, subject, audience, claims). The base
-- gives the class `token`, `apply`, `valid`, `expired`, `invalidate`,
-- `cache_key`, `copy`, `with_quota_project` and a `__tostring` built on
-- `describe()` that shows no token or key.
--
--     local credentials = require "gauth.credentials"
--     local _M = credentials.extend({ _VERSION = "0.1.0", kind = "my_creds" })
--     local mt = credentials.metatable(_M)
--     function _M.new(opts)
--       local self = setmetatable({ ... }, mt)
--       credentials.init(self, opts)   -- cache, clock, quota_project
--       return self
--     end
--
-- Fields the base keeps on an object (all but `quota_project` private):
-- `quota_project`, `_cache` (a `gauth.token_cache`), `_clock` (epoch
-- seconds), `_entry` (the entry last handed out: the fast path), `_key`
-- (the cache key, made once).
--
-- It also holds what the credentials modules would otherwise each write
-- again (so that they check and answer alike): error helpers that keep
-- each module's name, scope and option checks, token lifetimes, and the
-- reading of key files. These are internal to gauth.
-- @module gauth.credentials

local core = require "gauth.core"
local util = require "gauth.util"
local errors = require "gauth.errors"
local token_cache = require "gauth.token_cache"
local metrics = require "gauth.metrics"

local type = type
local pairs = pairs
local ipairs = ipairs
local select = select
local error = error
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local getmetatable = getmetatable
local sort = table.sort
local concat = table.concat
local format = string.format
local find = string.find
local sub = string.sub
local gmatch = string.gmatch
local huge = math.huge
local io_open = io.open
local json_decode = require("cjson.safe").decode

local _M = { _VERSION = "0.1.0" }

--- Google's refresh window in seconds (3 min 45 s).
_M.REFRESH_WINDOW = token_cache.REFRESH_WINDOW

--- The methods every credentials object has.
local base = {}
_M.base = base

-- Deterministic text for a cache key: the same value always gives the
-- same text whatever the order of a table's keys (scopes, claims).
local function canonical(v, out, depth)
  local t = type(v)
  if t == "nil" then
    out[#out + 1] = "n"
  elseif t == "boolean" then
    out[#out + 1] = v and "T" or "F"
  elseif t == "number" then
    out[#out + 1] = format("d%.17g;", v)
  elseif t == "string" then
    out[#out + 1] = "s" .. #v .. ":" .. v
  elseif t == "table" then
    if depth > 16 then
      error("gauth.credentials: cache key parts nest too deep", 4)
    end
    local keys = {}
    for k in pairs(v) do
      local part = {}
      canonical(k, part, depth + 1)
      keys[#keys + 1] = { concat(part), k }
    end
    sort(keys, function(a, b) return a[1] < b[1] end)
    out[#out + 1] = "{"
    for i = 1, #keys do
      out[#out + 1] = keys[i][1]
      canonical(v[keys[i][2]], out, depth + 1)
    end
    out[#out + 1] = "}"
  else
    error("gauth.credentials: cache key parts must be plain data, not " .. t, 4)
  end
end

--- Deterministic serialisation of plain data (for cache keys).
-- @return string
function _M.canonical(v)
  local out = {}
  canonical(v, out, 0)
  return concat(out)
end

--- Make `class` a credentials class: copy the base methods into it (those
-- it does not define itself), so that a method call is one table lookup.
-- @tparam table class the class table; `class.kind` names the type
-- @return class
function _M.extend(class)
  if type(class) ~= "table" then
    error("gauth.credentials: extend needs a class table", 2)
  end
  for k, v in pairs(base) do
    if class[k] == nil then class[k] = v end
  end
  class.kind = class.kind or "credentials"
  return class
end

local function tostring_creds(self)
  local d = self:describe()
  return "gauth." .. tostring(self.kind) .. " credentials"
    .. ((d and d ~= "") and (" (" .. d .. ")") or "")
end
_M.tostring = tostring_creds

--- The metatable for objects of `class`: `__index` and a `__tostring` that
-- shows only what `describe()` returns.
function _M.metatable(class)
  return { __index = class, __tostring = tostring_creds }
end

--- Set up the base's part of a new object.
-- @tparam table self the new object
-- @tparam[opt] table opts `quota_project` (string: the project billed for
--   API calls, sent as `x-goog-user-project`), `cache` (a `gauth.token_cache`;
--   default the process-wide one, so objects with the same cache key share
--   tokens), `now` (clock returning epoch seconds; for tests)
-- @return self
-- nginx's cached event-loop time is exact enough for a refresh window of
-- minutes and costs a field read; elsewhere the C clock.
local DEFAULT_CLOCK = util.is_ngx and ngx.now or util.now -- luacheck: ignore ngx

function _M.init(self, opts)
  opts = opts or {}
  local qp = opts.quota_project
  if qp ~= nil and (type(qp) ~= "string" or qp == "") then
    error("gauth.credentials: quota_project must be a non-empty string", 3)
  end
  local cache = opts.cache
  if cache ~= nil and (type(cache) ~= "table" or type(cache.fetch) ~= "function") then
    error("gauth.credentials: cache must be a gauth.token_cache", 3)
  end
  -- Under nginx, `shared_dict` names the lua_shared_dict that holds the
  -- tokens for every worker (a dict named "gauth" is used without asking).
  local dict = opts.shared_dict
  if dict ~= nil then
    if type(dict) ~= "string" or cache ~= nil then
      error("gauth.credentials: shared_dict must be a string, and excludes cache", 3)
    end
    local err
    cache, err = require("gauth.token_cache.shdict").cache(dict)
    if not cache then error("gauth.credentials: " .. tostring(err), 3) end
  end
  -- `now` is a number (a standing clock) or a function, as everywhere.
  local clock = opts.now
  if type(clock) == "number" then
    local t = clock
    clock = function() return t end
  elseif clock ~= nil and type(clock) ~= "function" then
    error("gauth.credentials: now must be a number or a function", 3)
  end
  -- The transport options every type passes on to the transport it makes
  -- for its token requests (gauth.oauth.transport): a proxy URL (or false
  -- for none) and the hosts that go direct.
  local proxy, no_proxy = opts.proxy, opts.no_proxy
  if proxy ~= nil and proxy ~= false and type(proxy) ~= "string" then
    error("gauth.credentials: proxy must be a string (a proxy URL) or false", 3)
  end
  if no_proxy ~= nil and type(no_proxy) ~= "string" then
    error("gauth.credentials: no_proxy must be a string", 3)
  end
  local shared = rawget(self, "_shared")
  if type(shared) == "table" then
    if proxy ~= nil then shared.proxy = proxy end
    if no_proxy ~= nil then shared.no_proxy = no_proxy end
  end
  self.quota_project = qp
  self._cache = cache or token_cache.default()
  self._clock = clock or DEFAULT_CLOCK
  self._entry = nil
  self._key = nil
  -- A store shared by processes (nginx workers) has a generation counter
  -- that an invalidation anywhere raises: the fast path checks it.
  local store = self._cache.store
  self._gstore = type(store) == "table" and type(store.generation) == "function"
    and store or nil
  self._gen = nil
  return self
end

--- Subclasses implement this: get a new token from the source.
-- @return `{ access_token = , expires_at = , ... }` | nil, message, err
function base:fetch_token()
  error("gauth.credentials: " .. tostring(self.kind) .. " does not implement fetch_token", 2)
end

--- Subclasses implement this: everything that makes their tokens differ.
-- @return a table of plain data
function base:cache_key_parts()
  error("gauth.credentials: " .. tostring(self.kind) .. " does not implement cache_key_parts", 2)
end

--- A short description for `tostring`: never a token or key.
function base:describe()  -- luacheck: no unused args
  return ""
end

--- The cache key of this object's tokens: the kind and a SHA-256 of
-- `cache_key_parts()` (so that it is short, printable and reveals nothing).
-- @return string
function base:cache_key()
  local k = self._key
  if k then return k end
  local parts = self:cache_key_parts()
  k = "gauth:" .. tostring(self.kind) .. ":"
      .. core.b64url_encode(core.sha256(_M.canonical(parts)))
  self._key = k
  return k
end

-- The name of this object in log lines and metrics: tostring (never a
-- secret), made once.
local function label_of(self)
  local l = self._label
  if not l then
    l = tostring_creds(self)
    self._label = l
    self._mkeys = metrics.keys_of(l, self._key or self:cache_key())
  end
  return l
end
_M.label = label_of

local monotonic = core.monotonic

local function refresh(self)
  local cache = self._cache
  local key = self._key or self:cache_key()
  local label = label_of(self)
  local mkeys = self._mkeys
  local gstore = self._gstore
  -- Read before the fetch (an invalidation made meanwhile is seen next
  -- time), kept after it (callers meanwhile must not take the old entry
  -- for current).
  local gen = gstore and gstore:generation()
  local before = cache.store and cache.store:get(key)
  local e, msg, err = cache:fetch(key, function()
    local t0 = monotonic()
    local v, m2, m3 = self:fetch_token()
    local dt = monotonic() - t0
    if v then
      metrics.exchange(label, mkeys, dt)
    else
      metrics.exchange(label, mkeys, dt, m2 ~= nil and tostring(m2) or "no token",
                       errors.is(m3) and m3 or m2)
    end
    return v, m2, m3
  end, self._clock, label)
  if not e then
    self._entry = nil
    metrics.miss(mkeys)
    return errors.ret(errors.of(msg, err, "token_cache", "fetch"))
  end
  -- Served what was in the store (fresh, or still valid while a timer
  -- refreshes it): a hit; else this call waited for an exchange.
  if e == before then metrics.hit(mkeys) else metrics.miss(mkeys) end
  self._entry, self._gen = e, gen
  return e.access_token, e.expires_at
end

--- A valid access token: the cached one, or a new one when the cached one
-- is within the refresh window of its expiry (or there is none).
-- @return access_token, expires_at (epoch seconds) | nil, message, err
function base:token()
  -- The hot path: one field read, one clock read, one comparison (and
  -- under nginx with a shared dict one dict read: has any worker
  -- invalidated since?), one counter.
  local e = self._entry
  if e and self._clock() < e.refresh_at then
    local g = self._gstore
    if not g or g:generation() == self._gen then
      metrics.hit(self._mkeys)
      return e.access_token, e.expires_at
    end
  end
  return refresh(self)
end

--- google-auth's `creds.expired`, as a method: true when this object's
-- token is within the refresh window of its expiry or past it (google-auth's
-- 3 min 45 s skew; a token that lives no longer than the window, which
-- Google never issues, counts as expired after half its life, as `token()`
-- refetches it then), or when another holder invalidated it (an nginx
-- worker, through the shared dict). False when there is no token yet: as in
-- google-auth, nothing is expired until a token was fetched. It never
-- fetches: it says whether the next `token()` will.
-- @return boolean
function base:expired()
  local e = self._entry
  if not e then return false end
  if self._clock() >= e.refresh_at then return true end
  local g = self._gstore
  return (g ~= nil and g:generation() ~= self._gen) and true or false
end

--- google-auth's `creds.valid`, as a method: this object holds a token
-- and it is not `expired()` (`token()` will hand it out without a fetch).
-- False before the first `token()`/`apply()` and after `invalidate()`.
-- @return boolean
function base:valid()
  if not self._entry then return false end
  return not self:expired()
end

--- Set the request headers that authorise a call: `authorization` and,
-- with a quota project, `x-goog-user-project`. Header names are lower-case,
-- as gauth's transports expect.
-- @tparam[opt] table headers modified in place (a new table when nil)
-- @return headers | nil, message, err
function base:apply(headers)
  if headers == nil then
    headers = {}
  elseif type(headers) ~= "table" then
    error("gauth.credentials: apply: headers must be a table", 2)
  end
  local tok, msg, err = self:token()
  if not tok then return nil, msg, err end
  -- The same token goes out call after call: its header value is made
  -- once per token.
  local bearer = self._bearer
  if bearer == nil or self._bearer_token ~= tok then
    bearer = "Bearer " .. tok
    self._bearer, self._bearer_token = bearer, tok
  end
  headers.authorization = bearer
  local qp = self.quota_project
  if qp then headers["x-goog-user-project"] = qp end
  return headers
end

--- Drop the cached token (for every object with the same cache key), so
-- the next `token()` fetches a new one: after an API answered 401, say.
-- Only the token this object last handed out is dropped: one that another
-- holder (another nginx worker) has fetched since was not refused, and stays.
-- @return true
function base:invalidate()
  local held = self._entry
  self._entry = nil
  self._cache:invalidate(self._key or self:cache_key(), held and held.access_token)
  return true
end

--- A copy of this object with `changes` applied, with its own cache key
-- (recomputed) and no cached entry: the basis of the `with_*` modifiers.
-- @tparam[opt] table changes fields to set on the copy
-- @return the copy
function base:copy(changes)
  local o = {}
  for k, v in pairs(self) do o[k] = v end
  if changes then
    for k, v in pairs(changes) do o[k] = v end
  end
  o._entry, o._key, o._label, o._mkeys, o._gen = nil, nil, nil, nil, nil
  return setmetatable(o, getmetatable(self))
end

--- A copy billed to another project (`x-goog-user-project`); nil removes it.
-- Tokens are shared with this object: the quota project is not part of them.
function base:with_quota_project(project)
  if project ~= nil and (type(project) ~= "string" or project == "") then
    error("gauth.credentials: quota_project must be a non-empty string", 2)
  end
  local o = self:copy()
  o.quota_project = project
  return o
end

-- Signing ---------------------------------------------------------------

-- Types that have a service account to sign with (service_account,
-- compute_engine, impersonated, ...) replace these; the others answer
-- that they cannot.
local function cannot_sign(self)
  return errors.fail(tostring(self.kind), "signing", tostring(self.kind)
    .. " credentials cannot sign (no service account: use a service account key,"
    .. " or impersonate one)", { retryable = false })
end

--- The email of the service account that signs (`sign_bytes`, `sign_jwt`).
-- @return email | nil, msg, err (credentials without a service account)
function base:signer_email()
  return cannot_sign(self)
end

--- Sign bytes with the service account's key (RSA-SHA256, PKCS#1 v1.5):
-- locally with a key file, else through IAM Credentials' `signBlob`.
-- @tparam string bytes
-- @return raw signature bytes | nil, msg, err
function base:sign_bytes(bytes)  -- luacheck: no unused args
  return cannot_sign(self)
end

--- A JWT of `claims` signed by the service account (RS256): locally with
-- a key file, else through IAM Credentials' `signJwt`.
-- @tparam table claims
-- @return the JWT | nil, msg, err
function base:sign_jwt(claims)  -- luacheck: no unused args
  return cannot_sign(self)
end

-- For the credentials modules --------------------------------------------

--- The error helpers of a credentials module, made once when it loads.
-- `fail(step, message, fields)` returns `nil, message, err` (a
-- `gauth.errors` object of `module`); `arg_error(message)` raises "gauth.<module>: <message>"
-- for a bad argument, at level 4: past `arg_error`, the helper that
-- checks and the public function that was given the argument, so that the
-- position is its caller's.
-- @tparam string module e.g. "service_account"
-- @return fail, arg_error
function _M.error_helpers(module)
  local prefix = "gauth." .. module .. ": "
  local function fail(step, message, fields)
    return errors.fail(module, step, message, fields)
  end
  local function arg_error(message)
    error(prefix .. message, 4)
  end
  return fail, arg_error
end

--- `arg_error` for a module known only at run time (compute_engine's
-- objects may be "app_engine" ones): raises "gauth.<module>: <message>"
-- at level 4, as `error_helpers`' does.
function _M.arg_error(module, message)
  error("gauth." .. module .. ": " .. message, 4)
end
local arg_error = _M.arg_error

--- Scopes as every credentials type takes them: an array of strings or a
-- space-separated string, to an array (nil when there are none). Raises
-- (level 4, see `arg_error`) on anything else.
-- @param scopes nil, string or array
-- @tparam string module the module named in the error
-- @tparam[opt] boolean no_commas also refuse commas in array entries (the
--   metadata server takes scopes as one comma-separated parameter)
-- @return array | nil
function _M.normalise_scopes(scopes, module, no_commas)
  if scopes == nil then return nil end
  local list = {}
  if type(scopes) == "string" then
    for s in gmatch(scopes, "%S+") do list[#list + 1] = s end
  elseif type(scopes) == "table" then
    local refused = no_commas and "[%s,]" or "%s"
    for i, s in ipairs(scopes) do
      if type(s) ~= "string" or s == "" or find(s, refused) then
        arg_error(module, "scopes[" .. i .. "] must be a non-empty string without spaces"
          .. (no_commas and " or commas" or ""))
      end
      list[i] = s
    end
  else
    arg_error(module, "scopes must be an array of strings or a space-separated string")
  end
  if #list == 0 then return nil end
  return list
end

--- A sorted copy of a list (nil for nil): scopes in a cache key, so that
-- their order does not make two keys of the same tokens.
function _M.sorted(list)
  if list == nil then return nil end
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  sort(out)
  return out
end

--- Append "N scope(s)" to the parts of a `describe()` text when there
-- are scopes.
-- @tparam table parts
-- @param scopes array or nil
-- @return parts
function _M.describe_scopes(parts, scopes)
  local n = scopes and #scopes or 0
  if n > 0 then parts[#parts + 1] = n .. (n == 1 and " scope" or " scopes") end
  return parts
end

--- `with_target_audience` of ID token credentials (those whose `mode` is
-- "id_token"): a copy for another audience. The caller raises, with its
-- module's name, when this returns nil.
-- @tparam table self
-- @param target the new audience
-- @return the copy | nil, what is wrong
function _M.copy_for_audience(self, target)
  if type(target) ~= "string" or target == "" then
    return nil, "target_audience must be a non-empty string"
  end
  if self.mode ~= "id_token" then
    return nil, "with_target_audience is for ID token credentials"
  end
  local o = self:copy()
  o.target_audience = target
  return o
end

-- The options of credentials that make requests, each with what it must
-- be and the error when it is not.
local OPTION_RULES = {
  http = { "http must be a transport (with :request)",
           function(v) return type(v) == "table" and type(v.request) == "function" end },
  ca_file = { "ca_file must be a string",
              function(v) return type(v) == "string" end },
  client_cert = { "client_cert must be a path (string)",
                  function(v) return type(v) == "string" end },
  client_key = { "client_key must be a path (string)",
                 function(v) return type(v) == "string" end },
  -- As written, NaN passes (as it always has).
  timeout = { "timeout must be a positive number",
              function(v) return not (type(v) ~= "number" or v <= 0) end },
  proxy = { "proxy must be a string (a proxy URL) or false",
            function(v) return v == false or type(v) == "string" end },
  no_proxy = { "no_proxy must be a string",
               function(v) return type(v) == "string" end },
}

--- The transport options: every credentials type takes all of them and
-- every request it makes (token, IAM, STS, its source's) is sent with
-- them, so that a proxy, a client certificate or a CA bundle given once
-- applies to the whole chain.
_M.TRANSPORT_OPTS = { "http", "ca_file", "timeout", "client_cert", "client_key", "proxy", "no_proxy" }
local TRANSPORT_OPTS = _M.TRANSPORT_OPTS

--- Check the transport options in `opts` (raising "gauth.<module>: ..."
-- at `level`, counted from this function) and copy those set into `into`
-- (the `_shared` table that `gauth.oauth.transport` reads).
-- @tparam table opts
-- @tparam string module
-- @tparam number level
-- @tparam[opt] table into (default: a new table)
-- @return into
function _M.transport_opts(opts, module, level, into)
  into = into or {}
  for i = 1, #TRANSPORT_OPTS do
    local name = TRANSPORT_OPTS[i]
    local v = opts[name]
    if v ~= nil then
      local rule = OPTION_RULES[name]
      if not rule[2](v) then error("gauth." .. module .. ": " .. rule[1], level) end
      into[name] = v
    end
  end
  return into
end

--- The transport options of credentials (from their `_shared` table), to
-- pass on to what they make (their source, an IAM client).
-- @tparam table shared
-- @tparam[opt] table into
-- @return into
function _M.shared_transport(shared, into)
  into = into or {}
  for i = 1, #TRANSPORT_OPTS do
    local name = TRANSPORT_OPTS[i]
    if shared[name] ~= nil then into[name] = shared[name] end
  end
  return into
end

--- Check the request options a credentials module takes: any of `http`
-- (a transport), `ca_file` (a string), `timeout` (a positive number), in
-- the order named. Raises "gauth.<module>: ..." at `level` (counted from
-- this function) on the first that is set and wrong.
-- @tparam table opts
-- @tparam string module
-- @tparam number level for `error`
-- @param ... the names of the options to check
function _M.check_opts(opts, module, level, ...)
  for i = 1, select("#", ...) do
    local name = select(i, ...)
    local v = opts[name]
    local rule = OPTION_RULES[name]
    if v ~= nil and not rule[2](v) then
      error("gauth." .. module .. ": " .. rule[1], level)
    end
  end
end

--- A token's lifetime in seconds from an answer's `expires_in`: a number
-- or a numeric string (some endpoints send one); 3600 when absent, as
-- Google's libraries assume.
-- @return seconds | nil when it is not a positive finite number
function _M.lifetime(expires_in)
  if expires_in == nil then return 3600 end
  local v = expires_in
  if type(v) == "string" then v = tonumber(v) end
  if type(v) ~= "number" or v ~= v or v <= 0 or v == huge then return nil end
  return v
end

-- The payload of a JWT, not verified: used only for an ID token that a
-- token endpoint or the metadata server just issued to us, to learn its
-- lifetime. Nothing here is trusted for authorization.
local function unverified_claims(token)
  if type(token) ~= "string" then return nil end
  local d1 = find(token, ".", 1, true)
  local d2 = d1 and find(token, ".", d1 + 1, true)
  if not d2 then return nil end
  local raw = core.b64url_decode(sub(token, d1 + 1, d2 - 1))
  if not raw then return nil end
  local claims = json_decode(raw)
  if type(claims) ~= "table" then return nil end
  return claims
end

--- The cache entry of an ID token just issued: the token serves as the
-- access token; it expires its lifetime (exp - iat) from `now`, on our
-- clock (immune to a skew between this machine and Google), or at `exp`
-- when it has no `iat`.
-- @tparam string token
-- @tparam number now epoch seconds
-- @return entry | nil (not a JWT with a readable exp claim)
function _M.id_token_entry(token, now)
  local claims = unverified_claims(token)
  local exp = claims and tonumber(claims.exp)
  if not exp then return nil end
  local iat = tonumber(claims.iat)
  local expires_at = iat and (now + (exp - iat)) or exp
  return { access_token = token, id_token = token, expires_at = expires_at }
end

-- Key files (service_account, authorized_user, impersonated, adc) --------

--- Files bigger than this are not credentials files (a real one is a few
-- KiB).
_M.MAX_KEY_FILE = 1024 * 1024

--- The "key file" error of `module`: "<source>[: field <field>]:
-- <message>", with fields `file` = source and `field` (and `extra`'s).
-- @return the error object
function _M.key_error(module, source, field, message, extra)
  local where = source
  if field then where = where .. ": field " .. field end
  local fields = { file = source, field = field }
  if extra then
    for k, v in pairs(extra) do fields[k] = v end
  end
  return errors.new(module, "key file", where .. ": " .. message, fields)
end
local key_error = _M.key_error

--- The "key file" error for a `type` field that is not `expected`.
-- @return the error object
function _M.key_type_error(module, source, t, expected)
  local shown = type(t) == "string" and ('"' .. sub(t, 1, 40) .. '"') or type(t)
  return key_error(module, source, "type", "is " .. shown .. ', expected "' .. expected .. '"')
end

--- A string field of a key file's content.
-- @return the value; false when it is absent (or JSON null) and not
--   `required` | nil, message, err when it is missing or not a non-empty string
function _M.key_field(module, info, source, field, required)
  local v = info[field]
  if v == nil or v == util.json_null then
    if required then return errors.ret(key_error(module, source, field, "missing")) end
    return false
  end
  if type(v) ~= "string" or v == "" then
    return errors.ret(key_error(module, source, field, "must be a non-empty string"))
  end
  return v
end

--- `from_info`'s argument as a table: a table as it is, JSON text
-- decoded. Raises "gauth.<module>: from_info: ..." for anything else, at
-- the caller of `from_info`.
-- @return table | nil, message, err (text that is not a JSON object)
function _M.decode_info(module, info, source)
  if type(info) == "string" then
    local v = json_decode(info)
    if type(v) ~= "table" then return errors.ret(key_error(module, source, nil, "not a JSON object")) end
    return v
  elseif type(info) ~= "table" then
    error("gauth." .. module .. ": from_info: info must be a table or a JSON string", 3)
  end
  return info
end

-- What the errors of `read_key_file` say unless a module says it its way.
local FILE_TEXTS = { unreadable = "cannot read ", too_large = "too large for a credentials file",
                     not_json = "not a JSON object" }

--- Read and decode a credentials file. The size is checked before the
-- content is read: a huge file (a mistake, or a 3 GB upload meant to
-- exhaust memory) is refused without being read, and never more than
-- `MAX_KEY_FILE` + 1 bytes are read from what cannot tell its size (a pipe).
-- @tparam string module
-- @tparam string path
-- @tparam[opt] table texts the words of the errors: `unreadable` (before
--   io.open's message, which starts with the path), `too_large`, `not_json`
-- @return the decoded JSON object | nil, message, err ("key file", field `file`;
--   `too_large` = true for a file over the cap)
function _M.read_key_file(module, path, texts)
  texts = texts or FILE_TEXTS
  local function too_large()
    return errors.ret(key_error(module, path, nil, texts.too_large, { too_large = true }))
  end
  local f, err = io_open(path, "rb")
  local data
  if f then
    -- One byte first: a directory opens, and fails here.
    local first
    first, err = f:read(1)
    if first then
      local size = f:seek("end")
      if size then
        if size > _M.MAX_KEY_FILE then
          f:close()
          return too_large()
        end
        f:seek("set", 1)
      end
      data = first .. (f:read(_M.MAX_KEY_FILE) or "")
    elseif not err then
      data = ""
    else
      err = path .. ": " .. tostring(err)
    end
    f:close()
  end
  if not data then
    return errors.fail(module, "key file", texts.unreadable .. tostring(err), { file = path })
  end
  if #data > _M.MAX_KEY_FILE then return too_large() end
  local info = json_decode(data)
  if type(info) ~= "table" then return errors.ret(key_error(module, path, nil, texts.not_json)) end
  return info
end

-- Token sources that are not gauth credentials have no cache key: each
-- object gets an id of its own, never used again. Never its address
-- (`tostring`): Lua reuses an address once the object is collected, and a
-- new user's source would find the tokens minted for the old one. Weak
-- keys, so that the table does not keep sources alive; the nonce (made
-- again in a forked process, such as each nginx worker) keeps the ids of
-- two processes sharing a dict apart.
local source_ids = setmetatable({}, { __mode = "k" })
local id_count, id_nonce, id_pid = 0, nil, nil

local function current_pid()
  if util.is_ngx then return ngx.worker.pid() end  -- luacheck: ignore ngx
  return nil
end

--- The cache identity of a token source that is not a gauth credential
-- (impersonated and downscoped sources): a fresh id per object.
-- @param src any table with a `token` method
-- @treturn string
function _M.source_id(src)
  local id = source_ids[src]
  if id then return id end
  local pid = current_pid()
  if not id_nonce or pid ~= id_pid then
    id_nonce, id_pid = core.b64url_encode(core.random_bytes(16)), pid
  end
  id_count = id_count + 1
  id = id_nonce .. ":" .. id_count
  source_ids[src] = id
  return id
end

return _M
