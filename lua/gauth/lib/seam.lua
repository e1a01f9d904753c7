--- Test seams of an options table (`env`, `sleep`, `random`). A leaf: it
-- requires nothing. Internal.
-- @module gauth.lib.seam

local type = type
local error = error

local _M = { _VERSION = "0.1.0" }

--- A test seam of `opts`: `opts.testing[name]`, where DECISIONS groups
-- them apart from the user's options, else the old top-level `opts[name]`
-- (deprecated; accepted until 1.0). `now` is not a seam: it stays a
-- top-level option.
-- @tparam[opt] table opts
-- @tparam string name
-- @return the value | nil
function _M.get(opts, name)
  if opts == nil then return nil end
  local t = opts.testing
  if t ~= nil then
    if type(t) ~= "table" then error("gauth: opts.testing must be a table", 3) end
    local v = t[name]
    if v ~= nil then return v end
  end
  return opts[name]
end

return _M
