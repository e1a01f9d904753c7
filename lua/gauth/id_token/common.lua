--- What every part of gauth.id_token shares: the module's table (where
-- its constants live), its strict JSON decoder, its failures, what a token
-- may show of itself in a message, and its clock. Internal.
--
-- `public` is the very table `require "gauth.id_token"` returns: the
-- facade fills it with the public functions and the constants, and the
-- parts read the constants from it at each use (`public.REFETCH_INTERVAL`),
-- so that setting one on gauth.id_token changes what follows, with no
-- proxy between nginx's per-request reads and the values. The facade sets
-- the constants when it loads: require gauth.id_token, not a part alone.
-- @module gauth.id_token.common

local core = require "gauth.core"
local errors = require "gauth.errors"
local ngx_phase = require "gauth.lib.ngx_phase"

local type = type
local error = error
local match = string.match
local ngx = ngx  -- luacheck: ignore

local _M = {}

--- The table that is gauth.id_token (filled by lua/gauth/id_token.lua).
_M.public = { _VERSION = "0.1.0" }

-- A decoder of its own: strict numbers (no NaN, Infinity or hex, which
-- would make every time comparison false and so let an expired token in).
local cjson = require("cjson.safe").new()
cjson.decode_invalid_numbers(false)

--- The strict decoder's decode and its encode (cjson.safe: nil on error).
_M.json_decode = cjson.decode
_M.json_encode = cjson.encode

--- A rejection: `nil, msg, err` with `err.check` = `check`.
function _M.fail(step, check, message, fields)
  fields = fields or {}
  fields.check = check
  return errors.fail("id_token", step, message, fields)
end

--- What a token says about itself may go into a message only this way:
-- short, and only characters that cannot carry much.
function _M.shown(v)
  if type(v) ~= "string" then return type(v) end
  local s = match(v, "^[%w%-_%.:/ ]+$")
  if not s or #s > 32 then return "(" .. #v .. " bytes)" end
  return s
end

--- The clock when none is given: under nginx the event loop's cached
-- time (no system call per token), else gauth.core's.
local default_clock = ngx_phase.is_ngx and ngx.now or core.now
_M.default_clock = default_clock

--- `now` as given (nil, a number or a function) -> a function returning
-- epoch seconds; anything else raises (at the caller's caller).
function _M.clock_of(now, step)
  if now == nil then return default_clock end
  if type(now) == "number" then return function() return now end end
  if type(now) == "function" then return now end
  error("gauth.id_token: " .. (step and step .. ": " or "")
        .. "now must be a number or a function", 3)
end

return _M
