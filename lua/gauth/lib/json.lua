--- JSON through lua-cjson's safe mode: decoding never raises. A leaf: it
-- requires nothing of gauth. Internal.
-- @module gauth.lib.json

local cjson = require "cjson.safe"

local type = type

local _M = { _VERSION = "0.1.0" }

--- Decode JSON; returns value | nil, message (never raises).
-- @tparam string s
function _M.decode(s)
  if type(s) ~= "string" then
    return nil, "not a string"
  end
  local v, err = cjson.decode(s)
  if v == nil and err then
    return nil, "malformed JSON"
  end
  return v
end

local cjson_encode = cjson.encode
--- Encode a value as JSON: string | nil, message.
function _M.encode(v)
  return cjson_encode(v)
end

--- JSON's null as decoded and encoded.
_M.null = cjson.null
--- The metatable that makes an empty table encode as `[]`.
_M.empty_array_mt = cjson.empty_array_mt

return _M
