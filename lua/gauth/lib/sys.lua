--- What gauth reads from the operating system: environment variables and
-- whole files. A leaf: it requires nothing. Internal.
-- @module gauth.lib.sys

local io_open = io.open
local os_getenv = os.getenv

local _M = { _VERSION = "0.1.0" }

--- An environment variable; nil when unset or empty.
-- @tparam string name
-- @treturn string|nil
function _M.getenv(name)
  local v = os_getenv(name)
  if v == "" then return nil end
  return v
end

--- Read a whole file: content | nil, message.
-- @tparam string path
function _M.read_file(path)
  local f, err = io_open(path, "rb")
  if not f then
    return nil, err
  end
  local data = f:read("*a")
  f:close()
  if data == nil then
    return nil, path .. ": read failed"
  end
  return data
end

return _M
