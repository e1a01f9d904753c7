--- Counters and event hooks (issue 18 item 7).
--
-- Under nginx the counters live in the `lua_shared_dict gauth` (or the
-- dict given to `gauth.token_cache.shdict.install`), so every worker adds
-- to the same numbers and `require("gauth.nginx").metrics()` reports them
-- all; elsewhere (and under nginx without that dict) in this process.
-- Keys start with `m|`; a few hundred bytes per credential and API host.
--
-- Per credential (labelled with `tostring(creds)`, which never shows a
-- secret, and `key`: the end of its cache key, a hash that tells apart
-- credentials that describe alike, e.g. one account with other scopes):
-- token exchanges, failed exchanges, cache hits (a token handed out
-- without waiting for an exchange) and misses, the time exchanges took,
-- the last error and when. Per API host (Discovery methods, media, batch):
-- requests by status (`error` for no answer) and retries.
--
-- Hooks: `gauth.on(event, fn)` (this module's `on`) calls `fn(data)` for
-- each event, in the worker or process where it happened:
--
-- * `"refresh"`: a token exchange succeeded: `{ credential, seconds }`
-- * `"failure"`: a token exchange failed: `{ credential, seconds, message, err }`
-- * `"retry"`: a request is about to be tried again:
--   `{ module, step, attempt, delay, message, err }`
--
-- A hook that raises is logged (nginx) or ignored, never breaks the call.
-- @module gauth.metrics

local ngx_phase = require "gauth.lib.ngx_phase"
local time = require "gauth.lib.time"
local errors = require "gauth.errors"

local type = type
local pairs = pairs
local ipairs = ipairs
local pcall = pcall
local tostring = tostring
local tonumber = tonumber
local error = error
local concat = table.concat
local sort = table.sort
local gsub = string.gsub
local sub = string.sub
local find = string.find
local byte = string.byte
local match = string.match
local format = string.format

local ngx = ngx  -- luacheck: ignore

local _M = { _VERSION = "0.1.0" }

--- The events `on` accepts.
_M.EVENTS = { refresh = true, failure = true, retry = true }

--- Name of the shared dict that holds the counters under nginx.
_M.dict_name = "gauth"

-- The counters: the shared dict under nginx when there is one, else a
-- table with the same three methods.
local local_counters = {}
local local_store = {
  incr = function(_, k, v)
    local n = (local_counters[k] or 0) + v
    local_counters[k] = n
    return n
  end,
  set = function(_, k, v) local_counters[k] = v return true end,
  get = function(_, k) return local_counters[k] end,
  get_keys = function()
    local keys = {}
    for k in pairs(local_counters) do keys[#keys + 1] = k end
    return keys
  end,
}

local store
local function counters()
  local s = store
  if s then return s end
  if ngx_phase.is_ngx and type(ngx.shared) == "table" and ngx.shared[_M.dict_name] then
    s = ngx.shared[_M.dict_name]
  else
    s = local_store
  end
  store = s
  return s
end

--- Use the shared dict `name` for the counters (called by
-- `gauth.token_cache.shdict.install`).
function _M.use_dict(name)
  _M.dict_name = name
  store = nil
end

local function incr(k, v)
  local s = counters()
  local ok = s:incr(k, v or 1, 0)
  return ok
end

-- Keys for one credential label, made once per label.
local ckey_cache = {}
local ckey_count = 0
local function ck(label, key)
  local id = sub(tostring(key or "-"), -8) .. " " .. label
  local t = ckey_cache[id]
  if t then return t end
  if ckey_count >= 4096 then ckey_cache, ckey_count = {}, 0 end
  local p = "m|c|" .. id .. "|"
  t = { hits = p .. "hits", misses = p .. "misses", exchanges = p .. "exchanges",
        failures = p .. "failures", seconds = p .. "seconds",
        last_error = p .. "last_error", last_error_at = p .. "last_error_at" }
  ckey_cache[id] = t
  ckey_count = ckey_count + 1
  return t
end
_M.keys_of = ck

local handlers = {}

--- Register `fn(data)` for `event` ("refresh", "failure", "retry").
-- @tparam string event
-- @tparam function fn
-- @return true | nil, msg, err (an unknown event)
function _M.on(event, fn)
  if type(fn) ~= "function" then
    error("gauth.on: fn must be a function", 2)
  end
  if not _M.EVENTS[event] then
    return errors.fail("metrics", "on", "unknown event " .. tostring(event)
      .. " (known: failure, refresh, retry)")
  end
  local list = handlers[event]
  if not list then
    list = {}
    handlers[event] = list
  end
  list[#list + 1] = fn
  return true
end

--- Remove every hook (tests).
function _M.off()
  handlers = {}
end

local function emit(event, data)
  local list = handlers[event]
  if not list then return end
  for _, fn in ipairs(list) do
    local ok, err = pcall(fn, data)
    if not ok and ngx_phase.is_ngx then
      ngx.log(ngx.ERR, "gauth: a hook for ", event, " raised: ", tostring(err))
    end
  end
end
_M.emit = emit

--- A token handed out from the cache (`n` of them).
function _M.hit(keys, n)
  if keys then incr(keys.hits, n) end
end

--- A token() call that waited for an exchange, or failed.
function _M.miss(keys)
  if keys then incr(keys.misses) end
end

--- A token exchange ended after `seconds`: `err` nil on success.
function _M.exchange(label, keys, seconds, msg, err)
  incr(keys.exchanges)
  incr(keys.seconds, seconds)
  if msg == nil then
    emit("refresh", { credential = label, seconds = seconds })
    return
  end
  incr(keys.failures)
  local s = counters()
  s:set(keys.last_error, sub(tostring(msg), 1, 300))
  s:set(keys.last_error_at, time.now())
  if ngx_phase.is_ngx then
    ngx.log(ngx.WARN, "gauth: token exchange for ", label, " failed: ", tostring(msg))
  end
  emit("failure", { credential = label, seconds = seconds, message = msg, err = err })
end

-- The counter key of each (host, status) seen, made once: an API call
-- then adds to its counter without building a string (a request costs
-- a few microseconds of Lua in all; the key was a tenth of it on 5.4).
-- Bounded: past 256 hosts it starts afresh.
local api_keys, api_hosts = {}, 0

--- An API request answered with `status` (or "error") by `host`.
function _M.api_request(host, status)
  local hk = host == nil and "nil" or host
  local by_status = api_keys[hk]
  if not by_status then
    if api_hosts >= 256 then api_keys, api_hosts = {}, 0 end
    by_status = {}
    api_keys[hk] = by_status
    api_hosts = api_hosts + 1
  end
  local k = status ~= nil and by_status[status]
  if not k then
    k = "m|a|" .. tostring(host) .. "|" .. tostring(status)
    if status ~= nil then by_status[status] = k end
  end
  incr(k)
end

--- An API request to `host` about to be tried again.
function _M.api_retry(host)
  incr("m|r|" .. tostring(host))
end

-- The last URL's `scheme://authority` and the host found in it: calls
-- in a row go to the same API host, and a prefix compare is cheaper than
-- the two pattern matches and the new strings of working it out again.
local last_prefix, last_host

--- The host of a URL (for the per-host counters).
function _M.host_of(url)
  if type(url) ~= "string" then return "?" end
  local lp = last_prefix
  if lp and find(url, lp, 1, true) == 1 then
    -- The authority ends where the prefix does only if a path, query,
    -- fragment or the end follows ("https://h:1" is not "https://h:12").
    local c = byte(url, #lp + 1)
    if c == nil or c == 47 or c == 63 or c == 35 then return last_host end
  end
  local prefix, h = match(url, "^(%a[%w+.-]*://([^/?#]+))")
  if not h then return "?" end
  h = gsub(h, "^.*@", "")
  last_prefix, last_host = prefix, h
  return h
end

-- Prometheus text: label values escaped (\, ", newline).
local function esc(v)
  v = gsub(tostring(v), "\\", "\\\\")
  v = gsub(v, "\n", "\\n")
  return (gsub(v, "\"", "\\\""))
end

local function num(v)
  v = tonumber(v) or 0
  if v == math.floor(v) and v < 1e15 and v > -1e15 then return format("%d", v) end
  return format("%.6f", v)
end

local FAMILIES = {
  { "gauth_token_exchanges_total", "counter", "Token exchanges made (successful or not)", "exchanges" },
  { "gauth_token_failures_total", "counter", "Token exchanges that failed", "failures" },
  { "gauth_cache_hits_total", "counter", "Tokens handed out without waiting for an exchange", "hits" },
  { "gauth_cache_misses_total", "counter", "token() calls that waited for an exchange, or failed", "misses" },
  { "gauth_token_refresh_seconds_total", "counter", "Time spent in token exchanges", "seconds" },
  { "gauth_token_last_error_timestamp_seconds", "gauge",
    "When the last token exchange failed (epoch seconds), with its message", "last_error_at" },
}

--- The counters in Prometheus text format (0.0.4).
-- @return string
function _M.prometheus()
  local s = counters()
  local keys = s:get_keys(0)
  sort(keys)
  local creds, apis, retries = {}, {}, {}
  for _, k in ipairs(keys) do
    if sub(k, 1, 4) == "m|c|" then
      local label, counter = k:match("^m|c|(.*)|([%w_]+)$")
      local id
      if label then id, label = label:match("^(%S+) (.*)$") end
      if label then
        label = 'credential="' .. esc(label) .. '",key="' .. esc(id) .. '"'
        local c = creds[label]
        if not c then c = {}; creds[label] = c; creds[#creds + 1] = label end
        c[counter] = s:get(k)
      end
    elseif sub(k, 1, 4) == "m|a|" then
      local host, status = k:match("^m|a|(.*)|([^|]+)$")
      if host then apis[#apis + 1] = { host, status, s:get(k) } end
    elseif sub(k, 1, 4) == "m|r|" then
      retries[#retries + 1] = { sub(k, 5), s:get(k) }
    end
  end
  local out = {}
  local function add(x) out[#out + 1] = x end
  for _, f in ipairs(FAMILIES) do
    local name, typ, help, field = f[1], f[2], f[3], f[4]
    add("# HELP " .. name .. " " .. help .. "\n")
    add("# TYPE " .. name .. " " .. typ .. "\n")
    for _, label in ipairs(creds) do
      local c = creds[label]
      local v = c[field]
      if field == "last_error_at" then
        if v then
          add(format('%s{%s,error="%s"} %s\n', name, label,
                     esc(c.last_error or ""), num(v)))
        end
      else
        add(format('%s{%s} %s\n', name, label, num(v)))
      end
    end
  end
  add("# HELP gauth_api_requests_total API requests by host and status (error: no answer)\n")
  add("# TYPE gauth_api_requests_total counter\n")
  for _, a in ipairs(apis) do
    add(format('gauth_api_requests_total{host="%s",status="%s"} %s\n', esc(a[1]), esc(a[2]), num(a[3])))
  end
  add("# HELP gauth_api_retries_total API requests tried again, by host\n")
  add("# TYPE gauth_api_retries_total counter\n")
  for _, r in ipairs(retries) do
    add(format('gauth_api_retries_total{host="%s"} %s\n', esc(r[1]), num(r[2])))
  end
  return concat(out)
end

--- Forget every counter of this process's local store (tests; the shared
-- dict's counters live as long as the dict).
function _M.reset_local()
  local_counters = {}
end

return _M
