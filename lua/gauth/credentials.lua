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
--
-- This module is the face of four parts in lua/gauth/credentials/:
-- base.lua (the class), options.lua (error helpers, scopes, request
-- options), file.lua (key files) and token.lua (lifetimes, ID-token
-- entries, ids of foreign token sources). Their functions are these
-- module's fields, the same function values.
-- @module gauth.credentials

local pairs = pairs
local ipairs = ipairs

local _M = { _VERSION = "0.1.0" }

for _, part in ipairs({
  (require "gauth.credentials.base"),
  (require "gauth.credentials.options"),
  (require "gauth.credentials.file"),
  (require "gauth.credentials.token"),
}) do
  for k, v in pairs(part) do
    -- one name, one part: a clash would hide a function
    assert(_M[k] == nil, k)
    _M[k] = v
  end
end

return _M
