--- API keys as credentials: for the APIs that take a key instead of (or
-- besides) an OAuth token (Gemini, Maps, Translate, ...).
--
--     local api_key = require "gauth.api_key"
--     local creds = assert(api_key.new(os.getenv("GEMINI_API_KEY")))
--     local svc = assert(discovery.build_from_document(doc, { credentials = creds }))
--
-- The object has the credentials interface that request paths use:
-- `apply(headers)` sets `x-goog-api-key` (a header, as Google's
-- `google.auth.api_key.Credentials` does, so the key never sits in a URL,
-- a log line of a proxy or a Referer), `invalidate()` does nothing (a key
-- does not expire: a 401 or 403 with a key is the key's or the API's
-- answer, and asking again will not change it), and `token()` fails: an
-- API key is not an OAuth token and cannot stand for one (code that needs
-- a bearer token gets a clear error instead of a key in `authorization`).
-- Credentials travel only over https or to loopback: the Discovery, media
-- and batch paths check the URL before `apply`.
--
-- `tostring(creds)` never shows the key, nor any part of it.
-- @module gauth.api_key

local errors = require "gauth.errors"
local http_header = require "gauth.lib.http_header"

local type = type
local error = error
local setmetatable = setmetatable
local find = string.find

local _M = { _VERSION = "0.1.0", kind = "api_key" }
local mt = { __index = _M }

--- The request header that carries the key.
_M.HEADER = "x-goog-api-key"

local universe = require "gauth.universe"

--- Credentials from an API key.
-- @tparam string key the key (as the Cloud console shows it)
-- @tparam[opt] table opts `universe_domain` (the universe the key belongs
--   to, default "googleapis.com": a Discovery service of another universe
--   refuses to send it), `quota_project` (`x-goog-user-project`)
-- @return credentials | nil, msg, err (module "api_key", step "key": the key
--   is empty or holds a character a header cannot carry; the message never
--   quotes it)
function _M.new(key, opts)
  if type(key) ~= "string" then
    error("gauth.api_key: new: key must be a string", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.api_key: new: opts must be a table", 2)
  end
  opts = opts or {}
  local ud, qp = opts.universe_domain, opts.quota_project
  if ud ~= nil and not universe.is_domain(ud) then
    error("gauth.api_key: new: opts.universe_domain must be a domain name", 2)
  end
  if qp ~= nil and (type(qp) ~= "string" or qp == "") then
    error("gauth.api_key: new: opts.quota_project must be a non-empty string", 2)
  end
  if key == "" then
    -- As google-auth: an empty key is refused when it is made, not when a
    -- request fails with it (an unset environment variable, typically).
    return errors.fail("api_key", "key", "the API key is empty", { retryable = false })
  end
  if not http_header.value_ok(key) or find(key, "^%s") or find(key, "%s$") then
    -- A CR or LF would inject headers; surrounding blanks are a copy and
    -- paste accident that Google would answer with 400. Never quoted.
    return errors.fail("api_key", "key", "the API key has a control character or"
      .. " surrounding whitespace (" .. #key .. " bytes)", { retryable = false })
  end
  return setmetatable({
    universe_domain = ud or universe.DEFAULT,
    quota_project = qp,
    -- Not a public field: a caller printing the object's fields (a
    -- debugging dump) should not find the key under an obvious name.
    _key = key,
  }, mt)
end

--- Set `x-goog-api-key` (and `x-goog-user-project` with a quota project)
-- in `headers`. Any `authorization` header there is left as it is.
-- @tparam[opt] table headers lower-case names (a new table when nil)
-- @return headers
function _M:apply(headers)
  if headers == nil then
    headers = {}
  elseif type(headers) ~= "table" then
    error("gauth.api_key: apply: headers must be a table", 2)
  end
  headers[_M.HEADER] = self._key
  local qp = self.quota_project
  if qp then headers["x-goog-user-project"] = qp end
  return headers
end

--- Nothing to drop: a key has no cached token. (Request paths call it
-- after a 401; the retry then sends the same key once more.)
-- @return true
function _M.invalidate(_)
  return true
end

--- google-auth's `valid`: a key is always valid (it has no expiry that
-- gauth could know).
-- @return true
function _M.valid(_)
  return true
end

--- google-auth's `expired`: a key never expires (as far as gauth knows).
-- @return false
function _M.expired(_)
  return false
end

--- An API key is not an OAuth token.
-- @return nil, msg, err (module "api_key", step "token", `retryable` false)
function _M.token(_)
  return errors.fail("api_key", "token", "API keys have no token: the key goes in the "
    .. _M.HEADER .. " header (use apply)", { retryable = false })
end

--- A copy with a quota project (`x-goog-user-project`).
-- @tparam string project
-- @return credentials
function _M:with_quota_project(project)
  if type(project) ~= "string" or project == "" then
    error("gauth.api_key: with_quota_project: project must be a non-empty string", 2)
  end
  return setmetatable({ universe_domain = self.universe_domain, quota_project = project,
                        _key = self._key }, mt)
end

mt.__tostring = function(self)
  return "gauth.api_key (" .. _M.HEADER .. ", universe " .. self.universe_domain .. ")"
end

return _M
