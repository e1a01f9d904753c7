--- Verify Google-signed tokens: ID tokens (Sign-In, Cloud Run and Cloud
-- Functions callers, Pub/Sub push, Cloud Scheduler), Identity-Aware Proxy
-- assertions and Firebase ID tokens.
--
--     local id_token = require "gauth.id_token"
--     local claims, err_msg, err = id_token.verify_oauth2_token(token,
--       "https://my-service.run.app")
--     if not claims then ngx.log(ngx.INFO, err_msg) end   -- never the token
--
-- What is checked (the facts are google-auth's `google/oauth2/id_token.py`
-- and `google/auth/jwt.py`): the header's `alg` is RS256 or ES256 and fits
-- the key (`none`, HS256 and every other value are refused); the key is the
-- one named by `kid` in the key set (a token without `kid` is tried against
-- the keys of its algorithm only); the signature; `iat` and `exp` are
-- present numbers, `iat` not in the future and `exp` not past (give or take
-- `clock_skew`, default 0 as in google-auth); `nbf` when present; the
-- lifetime `exp - iat` at most `max_lifetime` (default 86400 s, Google's
-- Node library's bound; `false` switches it off); `aud` (a string) is one of
-- `audience`; `iss` is one of `issuers` when given. Wrong time options
-- raise (`clock_skew` finite >= 0, `max_lifetime` false or finite > 0,
-- `now` finite): a NaN would turn the time checks off. The Firebase
-- variant adds Firebase's checks (RS256, a `kid`, `sub`, `auth_time`).
--
-- Every rejection returns `nil, msg, err`: `msg` names the check
-- (`"gauth.id_token: claims: expired 42 s ago"`), `err.check` is one of
-- `malformed alg kid signature exp iat nbf lifetime aud iss sub auth_time
-- keys certs_url`, and
-- nothing of the token is ever quoted.
--
-- **Key sets** are fetched from `certs_url` (https, or http to a loopback
-- host: any other URL is refused before a connection, as credentials
-- would be) in either format Google serves
-- (a JSON object kid -> PEM certificate, or a JWK Set of RSA and EC P-256
-- keys) and kept for the response's `Cache-Control: max-age`, clamped to
-- [`MIN_MAX_AGE`, `MAX_MAX_AGE`] (60 s and 24 h; `DEFAULT_MAX_AGE`, 1 h,
-- without one). A token with a `kid` the set does not hold makes the set be
-- fetched again at once (Google rotates keys), but at most once per
-- `REFETCH_INTERVAL` (30 s) per URL, whatever the number of such tokens: a
-- flood of random `kid`s costs one fetch. A fetch that fails (down, slow
-- past `timeout`, an error status, garbage, an empty set) never lets a token
-- through; the keys already held keep serving for `STALE_FOR` (6 h) past
-- their age, and the next attempt waits for the interval.
--
-- **Under nginx** the key set lives in the shared dict (`gauth` unless
-- `shared_dict` says otherwise) for every worker: one worker fetches it
-- (cosockets, never blocking) under a lock while the others wait for it, or
-- keep serving what they hold; each worker keeps its parsed keys and reads
-- the dict only when they are past their age or miss a `kid`. In a phase
-- that cannot yield no fetch is made: the keys held are used, or the token
-- is refused (retryable). With a Redis store (`store`, or the one
-- `gauth.token_cache.redis.install` made) the worker that fetches asks
-- Redis first, and one node of the fleet fetches for all (see
-- `gauth.token_cache.redis`, "Key sets and Discovery documents").
--
-- The parts, in lua/gauth/id_token/: key_set.lua (the two formats Google
-- serves, parsed; max-age), key_cache.lua (key sets by URL: the caches,
-- the shared dict, the fleet's store, the default cache), verify.lua (the
-- checks, and the public verify functions), credentials.lua (ID-token
-- credentials and `fetch`), common.lua (failures, the strict JSON decoder,
-- the clock, and this module's table). This file is the public face: the
-- constants below are fields of that table, read by the parts at each
-- use, so setting one here (`id_token.REFETCH_INTERVAL = 1`) changes what
-- follows.
-- @module gauth.id_token

local common = require "gauth.id_token.common"
local key_set = require "gauth.id_token.key_set"
local key_cache = require "gauth.id_token.key_cache"
local verify = require "gauth.id_token.verify"
local credentials = require "gauth.id_token.credentials"

-- The table the parts read the constants from (see common.lua).
local _M = common.public

--- Google's OAuth 2.0 certificates (PEM by kid): `verify` and
-- `verify_oauth2_token`.
_M.OAUTH2_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
--- The same keys as a JWK Set.
_M.OAUTH2_JWKS_URL = "https://www.googleapis.com/oauth2/v3/certs"
--- Firebase Authentication's certificates (PEM by kid).
_M.FIREBASE_CERTS_URL = "https://www.googleapis.com/robot/v1/metadata/x509/"
  .. "securetoken@system.gserviceaccount.com"
--- Identity-Aware Proxy's keys (a JWK Set of EC P-256 keys).
_M.IAP_CERTS_URL = "https://www.gstatic.com/iap/verify/public_key-jwk"
--- Issuers of Google's OAuth 2.0 ID tokens.
_M.GOOGLE_ISSUERS = { "accounts.google.com", "https://accounts.google.com" }
--- Issuer of IAP's assertions.
_M.IAP_ISSUER = "https://cloud.google.com/iap"
--- The same as a list, as `issuers` takes it.
_M.IAP_ISSUERS = { _M.IAP_ISSUER }
--- `algorithms` for IAP: ES256 only.
_M.ES256_ONLY = { ES256 = true }
--- The shared dict key sets live in under nginx.
_M.DEFAULT_DICT = "gauth"
--- Issuer prefix of Firebase ID tokens (the project id follows).
_M.FIREBASE_ISSUER_PREFIX = "https://securetoken.google.com/"

_M.MIN_MAX_AGE = 60
_M.MAX_MAX_AGE = 86400
_M.DEFAULT_MAX_AGE = 3600
_M.REFETCH_INTERVAL = 30
_M.STALE_FOR = 6 * 3600
_M.DEFAULT_MAX_LIFETIME = 86400
_M.DEFAULT_TIMEOUT = 10
--- Largest key set body read (bytes) and number of keys kept from it.
_M.MAX_BODY = 1024 * 1024
_M.MAX_KEYS = 64

_M.parse_key_set = key_set.parse_key_set
_M.max_age = key_set.max_age
_M.new_cache = key_cache.new_cache
_M.default_cache = key_cache.default_cache
_M.set_default_cache = key_cache.set_default_cache
_M.verify = verify.verify
_M.verify_oauth2_token = verify.verify_oauth2_token
_M.verify_iap = verify.verify_iap
_M.verify_firebase_token = verify.verify_firebase_token
_M.credentials = credentials.credentials
_M.fetch = credentials.fetch

return _M
