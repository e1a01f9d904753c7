--- Discovery documents: fetched over the service's transport (Google's
-- two URLs in turn while they answer 404), and kept in this process and in
-- a private on-disk cache (under nginx, a shared dict in its place).
-- Internal: gauth.discovery.build is its public face.
-- @module gauth.discovery.document

local errors = require "gauth.errors"
local ngx_phase = require "gauth.lib.ngx_phase"
local common = require "gauth.discovery.common"
local uri = require "gauth.discovery.uri"

local type = type
local tostring = tostring
local tonumber = tonumber
local setmetatable = setmetatable
local require = require
local byte = string.byte
local gmatch = string.gmatch
local sub = string.sub
local gsub = string.gsub
local find = string.find
local match = string.match
local format = string.format
local floor = math.floor

local json_decode = common.json_decode
local USER_AGENT, GZIP = common.USER_AGENT, common.GZIP
local quote, quote_plus = uri.quote, uri.quote_plus
local redact = errors.redact_uri

local _M = {}

-- gauth.core (file modes for the disk cache) is loaded when first needed:
-- building requests from a document in hand needs none of it.
local core
local function load_core()
  core = require "gauth.core"
  return core
end

_M.DISCOVERY_URLS = {
  "https://www.googleapis.com/discovery/v1/apis/{api}/{apiVersion}/rest",
  "https://{api}.googleapis.com/$discovery/rest?version={apiVersion}",
}

local MAX_AGE = 86400
local CACHE_MAGIC = "gauth-discovery-cache 1 "
local memory_cache = {}

-- A template's `{api}` and `{apiVersion}` filled in; any other `{...}` is
-- an error (a typo such as `{version}` would otherwise become "" and ask
-- for the wrong document). @return url | nil, the unknown placeholder
local function expand_discovery_url(template, api, version)
  local bad
  local function v(name)
    if name == "api" then return quote(api) end
    if name == "apiVersion" then return quote(version) end
    bad = bad or name
    return ""
  end
  local url = gsub(template, "{([^{}]*)}", v)
  if bad then return nil, bad end
  return url
end

local function default_cache_dir()
  local xdg = os.getenv("XDG_CACHE_HOME")
  if xdg and xdg ~= "" then return xdg .. "/gauth/discovery" end
  local home = os.getenv("HOME")
  if home and home ~= "" then return home .. "/.cache/gauth/discovery" end
  return nil
end

-- The file of `url`'s document in `dir`. `url` is the Discovery URL
-- without the API key (the caller leaves it out): a key never appears in a
-- file name.
local function cache_file(dir, url)
  local name = gsub(url, "[^%w.-]", function(c) return format("_%02X", byte(c)) end)
  if #name > 200 then
    local h = 5381
    for i = 1, #url do h = (h * 33 + byte(url, i)) % 4294967296 end
    name = sub(name, 1, 180) .. format("_%08x", h)
  end
  return dir .. "/" .. name .. ".json"
end

local PRIVATE_DIR, PRIVATE_FILE = 448, 384  -- 0700, 0600

local warned = {}

-- Say once (per path and reason) why a cache file or folder is not used.
local function warn(path, why)
  local k = path .. "\0" .. why
  if warned[k] then return end
  warned[k] = true
  local msg = "gauth.discovery: not using the disk cache " .. path .. ": " .. why
  if ngx_phase.is_ngx then
    ngx.log(ngx.WARN, msg)  -- luacheck: ignore ngx
  else
    io.stderr:write(msg, "\n")
  end
end

-- Is the cache folder or file at `path` ours alone to write? Anyone else
-- who could write it could plant a document (a rootUrl of their choosing).
-- @return kind's mode bits when it is (a number) | false (it exists and is
--   not: warned) | nil (it does not exist)
local function trusted(path, kind)
  local k, mode, uid, me = (core or load_core()).file_stat(path)
  if not k then return nil end
  if k ~= kind then
    warn(path, "not a " .. (kind == "dir" and "directory" or "regular file"))
    return false
  end
  if uid ~= me then
    warn(path, "owned by another user (uid " .. uid .. ")")
    return false
  end
  -- the group's and the others' write bits (0020, 0002)
  if floor(mode / 16) % 2 == 1 or floor(mode / 2) % 2 == 1 then
    warn(path, "writable by its group or by others")
    return false
  end
  return mode
end

-- The cache folder, made 0700 where missing (parents too); an existing one
-- of ours that others may read is made 0700. nil when it cannot be trusted.
local function private_dir(dir)
  local mode = trusted(dir, "dir")
  if mode == nil then
    local path = sub(dir, 1, 1) == "/" and "" or "."
    for part in gmatch(dir, "[^/]+") do
      path = path .. "/" .. part
      core.mkdir(path, PRIVATE_DIR)
    end
    mode = trusted(dir, "dir")
  end
  if not mode then return nil end
  if mode % 512 ~= PRIVATE_DIR then core.chmod(dir, PRIVATE_DIR) end
  return true
end

local function now()
  return os.time()
end

-- The cached text in `path` (in `dir`), or nil when absent, stale,
-- unreadable, or not to be trusted (see `trusted`).
local function read_cache(dir, path, max_age)
  if not trusted(dir, "dir") or not trusted(path, "file") then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  -- The header line first, then the text alone: the document is never in
  -- memory twice (a 4 MB document read whole and cut would be), and a
  -- stale one is not read at all.
  local head = f:read("*l")
  local t = head and sub(head, 1, #CACHE_MAGIC) == CACHE_MAGIC
            and tonumber(match(head, "^(%d+)$", #CACHE_MAGIC + 1))
  if not t or now() - t > max_age or now() < t - 300 then
    f:close()
    return nil
  end
  local text = f:read("*a")
  f:close()
  return text
end

local function write_cache(dir, path, text)
  if not private_dir(dir) then return end
  local tmp = format("%s.tmp.%s%d", path, gsub(tostring({}), "[^%w]", ""), math.random(1e9))
  local f = io.open(tmp, "wb")
  if not f then return end
  -- 0600 before anything is written: whatever the umask, the file is
  -- trusted when read back
  local ok = core.chmod(tmp, PRIVATE_FILE) and f:write(CACHE_MAGIC, tostring(now()), "\n", text)
  ok = f:close() and ok
  if not ok or not os.rename(tmp, path) then
    os.remove(tmp)
  end
end

local function fetch(http, url, opts)
  local res, err = errors.pair(http:request({
    method = "GET", url = url, timeout = opts.timeout or 30,
    headers = { accept = "application/json", ["accept-encoding"] = GZIP,
                ["user-agent"] = USER_AGENT },
  }))
  if not res then
    return errors.fail_with("discovery", "fetch", err, { uri = redact(url) })
  end
  if res.status == 404 then return false end
  if res.status < 200 or res.status >= 300 then
    return errors.fail("discovery", "fetch", "HTTP " .. tostring(res.status),
                           { status = res.status, body = res.body, uri = redact(url) })
  end
  return res.body
end

-- Under nginx, the shared cache over `store` (a Redis store or cache, or
-- false: none), one per store and worker: over the "gauth_discovery" dict
-- when nginx.conf has one.
local store_caches = setmetatable({}, { __mode = "k" })
local NO_STORE = {}
local function store_cache(store)
  local c = store_caches[store or NO_STORE]
  if c then return c end
  local sc = require "gauth.discovery.shdict_cache"
  local has_dict = ngx.shared[sc.DEFAULT_DICT] ~= nil
  if not store and not has_dict then return false end
  local msg, err
  c, msg, err = sc.new({ store = store, shared_dict = has_dict and sc.DEFAULT_DICT or false })
  if not c then return nil, msg, err end
  store_caches[store or NO_STORE] = c
  return c
end

--- The document of `api` `version`, from the caches or fetched.
-- @tparam string api
-- @tparam string version
-- @tparam table templates the Discovery URL templates, tried in turn
-- @tparam table opts build()'s options, checked
-- @return the decoded document | nil, msg, err
function _M.get(api, version, templates, opts)
  local use_cache = opts.cache ~= false
  local max_age = opts.cache_max_age or MAX_AGE
  local dir = use_cache and (opts.cache_dir or default_cache_dir()) or nil
  local http = opts.http

  for i = 1, #templates do
    local url, bad = expand_discovery_url(templates[i], api, version)
    if not url then
      return errors.fail("discovery", "discovery_url", "unknown placeholder {" .. bad
        .. "} in " .. redact(templates[i]) .. " (known: {api}, {apiVersion})")
    end
    local file_url = url
    if opts.api_key then
      url = url .. (find(url, "?", 1, true) and "&" or "?") .. "key=" .. quote_plus(opts.api_key)
    end
    if use_cache then
      local m = memory_cache[url]
      if m and now() - m.at <= max_age then
        return m.doc
      end
    end
    -- Under nginx a `lua_shared_dict gauth_discovery` (or opts.shared_cache)
    -- holds documents for every worker in place of the disk cache.
    local shared = use_cache and opts.shared_cache
    if shared == nil and use_cache and ngx_phase.is_ngx then
      if opts.store ~= nil then
        local msg, err
        shared, msg, err = store_cache(opts.store)
        if shared == nil then return nil, msg, err end
      else
        shared = require("gauth.discovery.shdict_cache").default()
      end
    end
    local path = not shared and dir and cache_file(dir, file_url)
    local text = path and read_cache(dir, path, max_age)
    local doc = text and json_decode(text)
    local from_disk = type(doc) == "table" and doc.rootUrl ~= nil
    if shared then
      if not http then
        local err
        http, err = errors.pair(require("gauth.http").default())
        if not http then return errors.fail_with("discovery", "fetch", err) end
      end
      local d, err = errors.pair(shared:fetch(url, function() return fetch(http, url, opts) end, max_age))
      if d == nil then return errors.ret(err) end
      if d and type(d.rootUrl) ~= "string" then
        shared:delete(url)
        return errors.fail("discovery", "fetch", "the answer is not a Discovery document",
                               { uri = redact(url) })
      end
      doc = d or nil  -- false: 404, the next URL
    elseif not from_disk then
      -- absent, stale or corrupt: fetch
      if not http then
        local err
        http, err = errors.pair(require("gauth.http").default())
        if not http then return errors.fail_with("discovery", "fetch", err) end
      end
      local body, err = errors.pair(fetch(http, url, opts))
      if body == nil then return errors.ret(err) end
      if body then
        doc = json_decode(body)
        if type(doc) ~= "table" or type(doc.rootUrl) ~= "string" then
          return errors.fail("discovery", "fetch", "the answer is not a Discovery document",
                                 { uri = redact(url) })
        end
        if path then write_cache(dir, path, body) end
      else
        doc = nil  -- 404: the next URL
      end
    end
    if doc then
      if use_cache then memory_cache[url] = { doc = doc, at = now() } end
      return doc
    end
  end
  return errors.fail("discovery", "build", format("unknown API or version: %s %s", api, version),
                         { status = 404 })
end

--- Forget the documents cached in this process (the disk cache stays).
function _M.clear_cache()
  memory_cache = {}
end

return _M
