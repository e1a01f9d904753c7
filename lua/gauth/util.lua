--- Small helpers shared by the gauth modules: clock, sleep, JSON, URL
-- encoding, files. Internal.
-- @module gauth.util

local cjson = require "cjson.safe"

-- gauth.core maps libcurl, OpenSSL and the libraries they pull in (about
-- 8 MiB resident): loaded when first needed, so that a process that only
-- builds Discovery requests (or reads a key file) does not pay for it.
local core
local function load_core()
  core = require "gauth.core"
  return core
end

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local setmetatable = setmetatable
local byte = string.byte
local format = string.format
local gsub = string.gsub
local find = string.find
local io_open = io.open
local os_getenv = os.getenv

local ngx = ngx  -- luacheck: ignore

local _M = { _VERSION = "0.1.0" }

--- True when running inside nginx (lua-nginx-module / OpenResty).
_M.is_ngx = type(ngx) == "table" and type(ngx.get_phase) == "function"

-- Wall-clock time in seconds, with sub-second precision.
if _M.is_ngx then
  _M.now = function() ngx.update_time(); return ngx.now() end
else
  _M.now = function()
    return (core or load_core()).now()
  end
end

--- Can this phase yield on cosockets / ngx.sleep?
local YIELDING = { rewrite = true, access = true, content = true,
                   timer = true, ssl_cert = true, ssl_session_fetch = true,
                   preread = true, balancer = false }
function _M.can_yield()
  if not _M.is_ngx then return false end
  return YIELDING[ngx.get_phase()] == true
end

--- Inside an nginx worker, in a phase that can neither yield nor block
-- (set, header and body filters, log, balancer, init_worker, ...): the
-- phase's name. nil outside nginx, in phases that can yield, and in
-- init_by_lua (the master, before any worker: blocking is allowed there).
function _M.nonblocking_phase()
  if not _M.is_ngx then return nil end
  local phase = ngx.get_phase()
  if YIELDING[phase] or phase == "init" then return nil end
  return phase
end

--- What to say when the network is refused in such a phase: why, and the
-- way out.
-- @tparam string phase
-- @return string
function _M.phase_refusal(phase)
  return "the " .. tostring(phase) .. " phase of nginx cannot make requests (no cosockets"
    .. " there, and gauth never blocks a worker): make the call from a timer"
    .. " (ngx.timer.at) or in the rewrite, access or content phase"
end

--- A test seam of `opts` (`env`, `sleep`, `random`): `opts.testing[name]`,
-- where DECISIONS groups them apart from the user's options, else the old
-- top-level `opts[name]` (deprecated; accepted until 1.0). `now` is not a
-- seam: it stays a top-level option.
-- @tparam[opt] table opts
-- @tparam string name
-- @return the value | nil
function _M.seam(opts, name)
  if opts == nil then return nil end
  local t = opts.testing
  if t ~= nil then
    if type(t) ~= "table" then error("gauth: opts.testing must be a table", 3) end
    local v = t[name]
    if v ~= nil then return v end
  end
  return opts[name]
end

--- Sleep `s` seconds without blocking nginx where that is possible. Inside
-- an nginx worker in a phase that cannot yield it does not sleep at all
-- (nothing there may block) and returns nil and the reason.
function _M.sleep(s)
  if s <= 0 then return end
  if _M.is_ngx then
    if _M.can_yield() then return ngx.sleep(s) end
    local phase = _M.nonblocking_phase()
    if phase then return nil, _M.phase_refusal(phase) end
  end
  return (core or load_core()).sleep(s)
end

-- A map bounded to `max` entries that forgets the least recently used
-- ones first: two generations (a lookup in the old one moves the entry to
-- the new one; when the new one is full it becomes the old one and the
-- old one is dropped). O(1) per call, no list to keep.
local lru = {}
local lru_mt = { __index = lru }

--- A bounded map (least recently used entries go first).
-- @tparam number max at most this many entries (at least 2)
-- @tparam[opt] function expired `expired(value)` -> true for an entry that
--   is useless (an expired token): such entries are dropped when met
-- @return map with `get(k)`, `set(k, v)`, `delete(k)`, `count()`
function _M.lru(max, expired)
  if type(max) ~= "number" or max < 2 then
    error("gauth.util: lru: max must be a number >= 2", 2)
  end
  return setmetatable({ cur = {}, old = {}, n_cur = 0, n_old = 0,
                        half = math.floor(max / 2), expired = expired }, lru_mt)
end

function lru:get(k)
  local v = self.cur[k]
  if v == nil then
    v = self.old[k]
    if v == nil then return nil end
    self.old[k] = nil
    self.n_old = self.n_old - 1
    self:set(k, v)
  end
  local expired = self.expired
  if expired and expired(v) then
    self:delete(k)
    return nil
  end
  return v
end

function lru:set(k, v)
  local cur = self.cur
  if cur[k] == nil then
    if v == nil then return self:delete(k) end
    local old = self.old
    if old[k] ~= nil then
      old[k] = nil
      self.n_old = self.n_old - 1
    end
    if self.n_cur >= self.half then
      -- The new generation is full: it becomes the old one (without what
      -- has expired in it) and the old one goes.
      local n, expired = self.n_cur, self.expired
      if expired then
        for key, val in pairs(cur) do
          if expired(val) then
            cur[key] = nil
            n = n - 1
          end
        end
      end
      self.old, self.n_old = cur, n
      cur = {}
      self.cur, self.n_cur = cur, 0
    end
    self.n_cur = self.n_cur + 1
  elseif v == nil then
    return self:delete(k)
  end
  cur[k] = v
end

function lru:delete(k)
  if self.cur[k] ~= nil then
    self.cur[k] = nil
    self.n_cur = self.n_cur - 1
  end
  if self.old[k] ~= nil then
    self.old[k] = nil
    self.n_old = self.n_old - 1
  end
end

function lru:count()
  return self.n_cur + self.n_old
end

function _M.getenv(name)
  local v = os_getenv(name)
  if v == "" then return nil end
  return v
end

--- Decode JSON; returns value | nil, message (never raises).
function _M.json_decode(s)
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
function _M.json_encode(v)
  return cjson_encode(v)
end

_M.json_null = cjson.null
_M.empty_array_mt = cjson.empty_array_mt

local function pct(c)
  return format("%%%02X", byte(c))
end

--- Percent-encode everything but RFC 3986 unreserved characters.
function _M.url_encode(s)
  return (gsub(tostring(s), "[^%w%-%._~]", pct))
end

--- application/x-www-form-urlencoded body from an array of {k, v} pairs
-- (ordered, so bodies are reproducible).
function _M.form_encode(pairs_list)
  local out = {}
  for i = 1, #pairs_list do
    local kv = pairs_list[i]
    out[i] = _M.url_encode(kv[1]) .. "=" .. _M.url_encode(kv[2])
  end
  return table.concat(out, "&")
end

--- Read a whole file: content | nil, message.
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

--- Can `v` be written as a header or MIME header value? RFC 9110 (5.5):
-- visible characters, obs-text, spaces and tabs. CR and LF would end the
-- line and let the value inject headers (or a body), NUL would cut it
-- short; the other control characters are not valid either. The one rule
-- for every header gauth writes (both transports, multipart and batch
-- parts; `csrc/http_headers.c` applies the same one).
-- @tparam string v
-- @treturn boolean
function _M.header_value_ok(v)
  return not find(v, "[%z\1-\8\10-\31\127]")
end

--- Is the host of an URL a loopback address?
function _M.is_loopback_host(host)
  host = host:lower()
  return host == "localhost" or host == "[::1]" or host == "::1"
      or host:match("^127%.%d+%.%d+%.%d+$") ~= nil
end

--- May credentials (a bearer token, an API key) go to `url`? Only over
-- https, or over plain http to a loopback host (local emulators, tests);
-- whatever a Discovery document's rootUrl or a caller says.
-- @tparam string url
-- @tparam string module the module of the error, e.g. "discovery"
-- @tparam string step its step, e.g. the method id
-- @return true | nil, msg, err (`gauth.errors`, `kind` = "insecure_url",
--   `retryable` = false, `uri` redacted)
function _M.check_credentials_url(url, module, step)
  if find(url, "^https://") then return true end
  local scheme, host = _M.parse_url(url)
  if scheme == "https" or (scheme == "http" and _M.is_loopback_host(host)) then
    return true
  end
  local errors = require "gauth.errors"
  return errors.fail(module, step, "refusing to send credentials to "
    .. tostring(host or scheme or "this URL") .. " over "
    .. tostring(scheme or "a non-http(s) URL")
    .. " (https is required except for a loopback host)",
    { kind = "insecure_url", retryable = false, uri = errors.redact_uri(url) })
end

--- Split an URL into scheme, host, port (number or nil), path-and-query.
function _M.parse_url(url)
  if type(url) ~= "string" then return nil end
  local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
  if not scheme then return nil end
  scheme = scheme:lower()
  local authority, path = rest:match("^([^/?#]*)(.*)$")
  if authority:find("@", 1, true) then
    authority = authority:match("@([^@]*)$")
  end
  local host, port
  if authority:sub(1, 1) == "[" then
    host, port = authority:match("^(%[[^%]]+%])(.*)$")
  else
    host, port = authority:match("^([^:]*)(.*)$")
  end
  if not host or host == "" then return nil end
  if port and port ~= "" then
    port = tonumber(port:match("^:(%d+)$"))
    if not port then return nil end
  else
    port = nil
  end
  if path == "" then path = "/" end
  return scheme, host, port, path
end

return _M
