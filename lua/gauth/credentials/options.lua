--- What the credentials modules check alike: their error helpers (each
-- keeping its module's name), scopes, and the request options they take.
-- Internal: reached through `gauth.credentials`.
-- @module gauth.credentials.options

local errors = require "gauth.errors"

local type = type
local ipairs = ipairs
local select = select
local error = error
local sort = table.sort
local find = string.find
local gmatch = string.gmatch

local _M = {}

--- The error helpers of a credentials module, made once when it loads.
-- `fail(step, message, fields)` returns `nil, message, err` (a
-- `gauth.errors` object of `module`); `arg_error(message)` raises "gauth.<module>: <message>"
-- for a bad argument, at level 4: past `arg_error`, the helper that
-- checks and the public function that was given the argument, so that the
-- position is its caller's.
-- @tparam string module e.g. "service_account"
-- @return fail, arg_error
function _M.error_helpers(module)
  local prefix = "gauth." .. module .. ": "
  local function fail(step, message, fields)
    return errors.fail(module, step, message, fields)
  end
  local function arg_error(message)
    error(prefix .. message, 4)
  end
  return fail, arg_error
end

--- `arg_error` for a module known only at run time (compute_engine's
-- objects may be "app_engine" ones): raises "gauth.<module>: <message>"
-- at level 4, as `error_helpers`' does.
function _M.arg_error(module, message)
  error("gauth." .. module .. ": " .. message, 4)
end
local arg_error = _M.arg_error

--- Scopes as every credentials type takes them: an array of strings or a
-- space-separated string, to an array (nil when there are none). Raises
-- (level 4, see `arg_error`) on anything else.
-- @param scopes nil, string or array
-- @tparam string module the module named in the error
-- @tparam[opt] boolean no_commas also refuse commas in array entries (the
--   metadata server takes scopes as one comma-separated parameter)
-- @return array | nil
function _M.normalise_scopes(scopes, module, no_commas)
  if scopes == nil then return nil end
  local list = {}
  if type(scopes) == "string" then
    for s in gmatch(scopes, "%S+") do list[#list + 1] = s end
  elseif type(scopes) == "table" then
    local refused = no_commas and "[%s,]" or "%s"
    for i, s in ipairs(scopes) do
      if type(s) ~= "string" or s == "" or find(s, refused) then
        arg_error(module, "scopes[" .. i .. "] must be a non-empty string without spaces"
          .. (no_commas and " or commas" or ""))
      end
      list[i] = s
    end
  else
    arg_error(module, "scopes must be an array of strings or a space-separated string")
  end
  if #list == 0 then return nil end
  return list
end

--- A sorted copy of a list (nil for nil): scopes in a cache key, so that
-- their order does not make two keys of the same tokens.
function _M.sorted(list)
  if list == nil then return nil end
  local out = {}
  for i, v in ipairs(list) do out[i] = v end
  sort(out)
  return out
end

--- Append "N scope(s)" to the parts of a `describe()` text when there
-- are scopes.
-- @tparam table parts
-- @param scopes array or nil
-- @return parts
function _M.describe_scopes(parts, scopes)
  local n = scopes and #scopes or 0
  if n > 0 then parts[#parts + 1] = n .. (n == 1 and " scope" or " scopes") end
  return parts
end

-- The options of credentials that make requests, each with what it must
-- be and the error when it is not.
local OPTION_RULES = {
  http = { "http must be a transport (with :request)",
           function(v) return type(v) == "table" and type(v.request) == "function" end },
  ca_file = { "ca_file must be a string",
              function(v) return type(v) == "string" end },
  client_cert = { "client_cert must be a path (string)",
                  function(v) return type(v) == "string" end },
  client_key = { "client_key must be a path (string)",
                 function(v) return type(v) == "string" end },
  -- As written, NaN passes (as it always has).
  timeout = { "timeout must be a positive number",
              function(v) return not (type(v) ~= "number" or v <= 0) end },
  proxy = { "proxy must be a string (a proxy URL) or false",
            function(v) return v == false or type(v) == "string" end },
  no_proxy = { "no_proxy must be a string",
               function(v) return type(v) == "string" end },
}

--- The transport options: every credentials type takes all of them and
-- every request it makes (token, IAM, STS, its source's) is sent with
-- them, so that a proxy, a client certificate or a CA bundle given once
-- applies to the whole chain.
_M.TRANSPORT_OPTS = { "http", "ca_file", "timeout", "client_cert", "client_key", "proxy", "no_proxy" }
local TRANSPORT_OPTS = _M.TRANSPORT_OPTS

--- Check the transport options in `opts` (raising "gauth.<module>: ..."
-- at `level`, counted from this function) and copy those set into `into`
-- (the `_shared` table that `gauth.token_request.transport` reads).
-- @tparam table opts
-- @tparam string module
-- @tparam number level
-- @tparam[opt] table into (default: a new table)
-- @return into
function _M.transport_opts(opts, module, level, into)
  into = into or {}
  for i = 1, #TRANSPORT_OPTS do
    local name = TRANSPORT_OPTS[i]
    local v = opts[name]
    if v ~= nil then
      local rule = OPTION_RULES[name]
      if not rule[2](v) then error("gauth." .. module .. ": " .. rule[1], level) end
      into[name] = v
    end
  end
  return into
end

--- The transport options of credentials (from their `_shared` table), to
-- pass on to what they make (their source, an IAM client).
-- @tparam table shared
-- @tparam[opt] table into
-- @return into
function _M.shared_transport(shared, into)
  into = into or {}
  for i = 1, #TRANSPORT_OPTS do
    local name = TRANSPORT_OPTS[i]
    if shared[name] ~= nil then into[name] = shared[name] end
  end
  return into
end

--- Check the request options a credentials module takes: any of `http`
-- (a transport), `ca_file` (a string), `timeout` (a positive number), in
-- the order named. Raises "gauth.<module>: ..." at `level` (counted from
-- this function) on the first that is set and wrong.
-- @tparam table opts
-- @tparam string module
-- @tparam number level for `error`
-- @param ... the names of the options to check
function _M.check_opts(opts, module, level, ...)
  for i = 1, select("#", ...) do
    local name = select(i, ...)
    local v = opts[name]
    local rule = OPTION_RULES[name]
    if v ~= nil and not rule[2](v) then
      error("gauth." .. module .. ": " .. rule[1], level)
    end
  end
end

return _M
