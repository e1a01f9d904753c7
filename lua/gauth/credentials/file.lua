--- Key files: reading a credentials file (its size checked before it is
-- read), decoding `from_info`'s argument, and the "key file" errors that
-- name the file and the field. Internal: reached through `gauth.credentials`
-- (service_account, authorized_user, impersonated, external accounts, adc).
-- @module gauth.credentials.file

local json = require "gauth.lib.json"
local errors = require "gauth.errors"

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local sub = string.sub
local io_open = io.open
local json_decode = require("cjson.safe").decode

local _M = {}

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
  if v == nil or v == json.null then
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

--- The `from_info` / `from_file` pair of a type with a key file: `from_info`
-- takes the decoded table or its JSON text (`decode_info`), `from_file`
-- reads the file (`read_key_file`); both hand the table to `load`. A
-- `from_file` path that is not a string raises "gauth.<module>: from_file:
-- path must be a string" at its caller, as `decode_info` does for
-- `from_info`.
-- @tparam string module e.g. "service_account"
-- @tparam string info_source what `from_info`'s errors call the table
--   ("service account info"); `from_file`'s name the path
-- @tparam function load `load(info, source, opts)` -> credentials | nil, msg, err
-- @tparam[opt] table texts the words of `read_key_file`'s errors
-- @return from_info, from_file
function _M.constructors(module, info_source, load, texts)
  local function from_info(info, opts)
    local v, err = errors.pair(_M.decode_info(module, info, info_source))
    if not v then return errors.ret(err) end
    return load(v, info_source, opts)
  end
  local function from_file(path, opts)
    if type(path) ~= "string" then
      error("gauth." .. module .. ": from_file: path must be a string", 2)
    end
    local v, err = errors.pair(_M.read_key_file(module, path, texts))
    if not v then return errors.ret(err) end
    return load(v, path, opts)
  end
  return from_info, from_file
end

return _M
