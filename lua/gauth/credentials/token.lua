--- What the token answers of every type share: lifetimes from
-- `expires_in`, the cache entry of an ID token just issued, and the cache
-- identity of token sources that are not gauth credentials. Internal:
-- reached through `gauth.credentials`.
-- @module gauth.credentials.token

local core = require "gauth.core"
local ngx_phase = require "gauth.lib.ngx_phase"

local type = type
local tonumber = tonumber
local setmetatable = setmetatable
local find = string.find
local sub = string.sub
local huge = math.huge
local json_decode = require("cjson.safe").decode

local _M = {}

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
  if ngx_phase.is_ngx then return ngx.worker.pid() end  -- luacheck: ignore ngx
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
