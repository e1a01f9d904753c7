--- The old name of `gauth.token_request` (the token requests of the
-- credentials), kept working until nothing outside gauth needs it.
-- @module gauth.oauth
return require "gauth.token_request"
