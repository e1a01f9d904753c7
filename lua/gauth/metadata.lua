--- A small client of the metadata server of Compute Engine (also GKE,
-- Cloud Run, Cloud Functions, App Engine second generation): detection,
-- reads with `Metadata-Flavor: Google`, and the environment lookups every
-- platform module shares.
--
--     local metadata = require "gauth.metadata"
--     if metadata.is_available() then
--       local project = assert(metadata.get("project/project-id"))
--     end
--
-- The server speaks plain HTTP on a link-local address: nothing leaves the
-- machine. Every request carries `Metadata-Flavor: Google` and every answer
-- must carry it back (a captive portal or a proxy answering in its place
-- does not).
--
-- Environment (read through `getenv_for(opts)`, so that `opts.env` or a
-- replaced `metadata.getenv` can stand in for the process environment):
--
-- * `GCE_METADATA_HOST`: host[:port] of the server (default
--   `metadata.google.internal`); when set, detection pings it directly.
--   `GCE_METADATA_ROOT`, the name older Google libraries read, is taken
--   when it is not set.
-- * `GCE_METADATA_IP`: the address detection pings otherwise (default
--   `169.254.169.254`: an IP, so detection needs no DNS lookup, which on some
--   networks takes tens of seconds for an unknown name).
-- * `GCE_METADATA_TIMEOUT`: detection timeout in seconds (default 1).
-- * `NO_GCE_CHECK=true`: detection answers false without any request.
--
-- Errors are `gauth.errors` objects; module "metadata" (or the calling
-- credentials module), steps "metadata host", "metadata request",
-- "metadata response", "detection".
-- @module gauth.metadata

local seam = require "gauth.lib.seam"
local sys = require "gauth.lib.sys"
local url_lib = require "gauth.lib.url"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local cjson = require "cjson.safe"

local type = type
local pairs = pairs
local tostring = tostring
local tonumber = tonumber
local error = error
local require = require
local find = string.find
local sub = string.sub
local lower = string.lower
local sort = table.sort

local _M = { _VERSION = "0.1.0" }

--- Host of the metadata server when `GCE_METADATA_HOST` is not set.
_M.DEFAULT_HOST = "metadata.google.internal"

--- Address detection pings when neither `GCE_METADATA_HOST` nor
-- `GCE_METADATA_IP` is set.
_M.DEFAULT_IP = "169.254.169.254"

--- Detection timeout (seconds) when `GCE_METADATA_TIMEOUT` is not set:
-- short, because every program that is not on Google Cloud pays it once.
_M.DEFAULT_PING_TIMEOUT = 1

--- Timeout of one metadata read (seconds): the server is on the host or
-- next to it; a read that takes longer is stuck.
_M.TIMEOUT = 10

--- Largest answer accepted (bytes). Tokens and values are far smaller.
_M.MAX_RESPONSE = 256 * 1024

--- Retry policy of reads (see `gauth.retry.call`): as for Google's token
-- endpoint, transport errors and 5xx/429 are retried. `opts.retry`
-- overrides fields of it (or `false`: one attempt). The metadata server's
-- own table, not `gauth.token_request.RETRY`, though the figures are the
-- same today: Google's libraries retry it by rules of their own (it is a
-- server next to the machine, not a Google front end; google-auth for
-- Python makes up to 5 attempts at a read), so the two may part.
_M.RETRY = { attempts = 3, initial = 1, multiplier = 2, max_delay = 32,
             jitter = true, deadline = 60 }

local FLAVOR_HEADERS = { ["metadata-flavor"] = "Google" }

-- ------------------------------------------------------------------------
-- Environment
-- ------------------------------------------------------------------------

--- The process environment as gauth's platform modules see it (empty
-- values count as unset). Specs may replace this field; most code passes
-- `opts.env` instead.
function _M.getenv(name)
  return sys.getenv(name)
end

--- The environment lookup for `opts`: `opts.testing.env` (or the old
-- top-level `opts.env`) when given (a table of variables, which then is
-- the whole environment, or a function `name -> value`), else
-- `metadata.getenv` (looked up at each call).
-- @tparam[opt] table opts
-- @return function(name) -> value | nil
function _M.getenv_for(opts)
  local env = seam.get(opts, "env")
  if env == nil then
    return function(name) return _M.getenv(name) end
  end
  if type(env) == "table" then
    return function(name)
      local v = env[name]
      if v == nil or v == "" then return nil end
      return tostring(v)
    end
  end
  if type(env) == "function" then
    return function(name)
      local v = env(name)
      if v == "" then return nil end
      return v
    end
  end
  error("gauth: opts.env must be a table or a function", 3)
end

-- host, host:port, [v6], [v6]:port: nothing that could change the URL's
-- path or user part.
local function valid_host(h)
  return find(h, "^[%w.-]+$") ~= nil or find(h, "^[%w.-]+:%d+$") ~= nil
      or find(h, "^%[[%x:.]+%]$") ~= nil or find(h, "^%[[%x:.]+%]:%d+$") ~= nil
end

local function bad_host(module, var, value)
  return errors.fail(module or "metadata", "metadata host",
    var .. " is not a host[:port]: " .. sub(tostring(value), 1, 80))
end

--- The metadata server's host[:port]: `opts.host`, else
-- `GCE_METADATA_HOST`, else `GCE_METADATA_ROOT`, else
-- `metadata.google.internal`.
-- @tparam[opt] table opts `host`, `env`
-- @return host | nil, message, err (a malformed value)
function _M.host(opts)
  local h = opts and opts.host
  local var = "opts.host"
  if h == nil then
    local getenv = _M.getenv_for(opts)
    h, var = getenv("GCE_METADATA_HOST"), "GCE_METADATA_HOST"
    if h == nil then
      -- The name older Google libraries read.
      h, var = getenv("GCE_METADATA_ROOT"), "GCE_METADATA_ROOT"
    end
  end
  if h == nil then return _M.DEFAULT_HOST end
  if type(h) ~= "string" or not valid_host(h) then
    return bad_host(opts and opts._module, var, h)
  end
  return h
end

--- The root URL of reads: `http://<host>/computeMetadata/v1/`.
-- @return url | nil, message, err
function _M.root(opts)
  local h, err = errors.pair(_M.host(opts))
  if not h then return errors.ret(err) end
  return "http://" .. h .. "/computeMetadata/v1/"
end

-- ------------------------------------------------------------------------
-- Reads
-- ------------------------------------------------------------------------

local function transport(opts)
  local http = opts and opts.http
  if http ~= nil then
    if type(http) ~= "table" or type(http.request) ~= "function" then
      error("gauth: opts.http must be a transport (with :request)", 4)
    end
    return http
  end
  local t, err = errors.pair(require("gauth.http").default())
  if not t then return errors.ret(err) end
  return t
end

--- The retry policy for `opts.retry` (nil: `RETRY`; false: one attempt;
-- a table: fields over `RETRY`). Shared by the platform modules.
function _M.retry_policy(r, base)
  local policy = retry.policy(base or _M.RETRY, r)
  if not policy then error("gauth: opts.retry must be a table or false", 3) end
  return policy
end

local function query_string(q)
  if q == nil then return "" end
  if type(q) ~= "table" then error("gauth.metadata: query must be a table", 4) end
  local keys = {}
  for k in pairs(q) do keys[#keys + 1] = k end
  -- Sorted: the same query always makes the same URL.
  sort(keys)
  local list = {}
  for i = 1, #keys do list[i] = { keys[i], tostring(q[keys[i]]) } end
  if #list == 0 then return "" end
  return "?" .. url_lib.form_encode(list)
end

local function snippet(body)
  if type(body) ~= "string" then return nil end
  body = body:gsub("%s+$", "")
  if #body > 200 then body = sub(body, 1, 200) .. "..." end
  return body
end

-- An answer without `Metadata-Flavor: Google` is not the metadata
-- server's (a proxy, a portal): nothing it says counts, not even its
-- status.
local function not_the_server(op, res)
  local flavor = res.headers and res.headers["metadata-flavor"]
  if flavor ~= "Google" then
    return errors.new(op.module, "metadata response",
      "the answer has no Metadata-Flavor: Google header: not the metadata server",
      { status = res.status, http_reason = res.reason, retryable = false, uri = op.url })
  end
end

-- An answer other than 200 (`gauth.request`'s refusal hook).
local function refused(op, res)
  local e = not_the_server(op, res)
  if e then return e end
  local status = res.status
  local msg = "the metadata server refused the request"
  if status == 404 then
    msg = "not found on the metadata server"
  end
  local body = snippet(res.body)
  if body and body ~= "" then msg = msg .. ": " .. body end
  return errors.new(op.module, "metadata response", msg, {
    status = status, http_reason = res.reason, uri = op.url, body = body,
    retryable = errors.classify({ status = status }),
    retry_after = retry.parse_retry_after(res.headers["retry-after"]),
  })
end

-- A 2xx answer (`gauth.request`'s decode hook): the value of a 200.
local function value_of(op, res)
  local e = not_the_server(op, res)
  if e then return nil, e end
  if res.status ~= 200 then return nil, refused(op, res) end
  local body = res.body or ""
  if op.want_json then
    -- A 200 body may hold a token: it never goes into an error.
    local v = cjson.decode(body)
    if type(v) ~= "table" then
      return nil, errors.new(op.module, "metadata response",
        "the answer is not a JSON object", { status = 200, retryable = false, uri = op.url })
    end
    return v
  end
  return body
end

--- Read a value from the metadata server.
-- @tparam string path relative to `/computeMetadata/v1/`, e.g.
--   `"project/project-id"`
-- @tparam[opt] table opts `query` (table name -> value, sent sorted),
--   `json` (decode the answer; it must be a JSON object), `host`, `env`,
--   `http` (a transport; default `gauth.http.default()`), `timeout`
--   (seconds per attempt, default `TIMEOUT`), `retry` (see `RETRY`)
-- @return the value (string, or table with `json`) | nil, message, err
function _M.get(path, opts)
  if type(path) ~= "string" or path == "" or sub(path, 1, 1) == "/" then
    error("gauth.metadata: get: path must be a non-empty relative path", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.metadata: get: opts must be a table", 2)
  end
  opts = opts or {}
  local module = opts._module or "metadata"
  local root, err = errors.pair(_M.root(opts))
  if not root then return errors.ret(err) end
  local url = root .. path .. query_string(opts.query)
  local http, terr = errors.pair(transport(opts))
  if not http then return errors.fail_with(module, "metadata request", terr) end
  local timeout = opts.timeout or _M.TIMEOUT
  if type(timeout) ~= "number" or timeout <= 0 then
    error("gauth.metadata: get: timeout must be a positive number", 2)
  end
  -- The one send loop (gauth.request) with the metadata server's own
  -- policy (`RETRY`) and reading of answers; plain http, which the loop
  -- allows here because no credentials go with the request.
  return require("gauth.request").send({
    module = module, step = "metadata request", method = "GET", url = url,
    headers = FLAVOR_HEADERS, http = http, timeout = timeout, max_body = _M.MAX_RESPONSE,
    follow_redirects = false, metrics = false, policy = opts._policy or _M.retry_policy(opts.retry),
    decode = value_of, refusal = refused, want_json = opts.json and true or false,
  })
end

--- The project id of this machine (`project/project-id`).
-- @tparam[opt] table opts as for `get`
-- @return project id | nil, message, err
function _M.project_id(opts)
  local v, err = errors.pair(_M.get("project/project-id", opts))
  if not v then return errors.ret(err) end
  v = v:gsub("^%s+", ""):gsub("%s+$", "")
  if v == "" then
    return errors.fail(opts and opts._module or "metadata", "metadata response",
      "the project id is empty", { retryable = false })
  end
  return v
end

-- ------------------------------------------------------------------------
-- Detection
-- ------------------------------------------------------------------------

-- url pinged -> { ok = boolean, err = err }: one ping per process and
-- address (the address is part of the key so that a changed environment,
-- in tests, is not answered from another server's result).
local detected = {}

--- Forget the detection results (tests; or after the network changed).
-- @return true
function _M.reset()
  detected = {}
  return true
end

local function ping_timeout(opts, getenv)
  local t = opts and opts.timeout
  if t ~= nil then
    if type(t) ~= "number" or t <= 0 then
      error("gauth.metadata: is_available: timeout must be a positive number", 3)
    end
    return t
  end
  local v = tonumber(getenv("GCE_METADATA_TIMEOUT"))
  if v and v > 0 and v < math.huge then return v end
  return _M.DEFAULT_PING_TIMEOUT
end

-- `false, message, err`: the answer "no", in the shape of a failure.
local function no_server(err)
  return false, tostring(err), err
end

--- Is a metadata server there? One short GET of `http://<address>/` with
-- `Metadata-Flavor: Google`; true when it answers 200 with that header.
-- The address is `GCE_METADATA_HOST` (or `GCE_METADATA_ROOT`) when set,
-- else `GCE_METADATA_IP`, else 169.254.169.254. `NO_GCE_CHECK=true` answers false with no request.
-- The answer (either way) is kept for the process, per address: see
-- `reset`.
-- @tparam[opt] table opts `env`, `http`, `timeout` (seconds; default
--   `GCE_METADATA_TIMEOUT`, else `DEFAULT_PING_TIMEOUT`)
-- @return true | false, message, err (why not: a `gauth.errors` object,
--   step "detection")
function _M.is_available(opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("gauth.metadata: is_available: opts must be a table", 2)
  end
  local getenv = _M.getenv_for(opts)
  local module = opts and opts._module or "metadata"
  local no = getenv("NO_GCE_CHECK")
  if no and lower(no) == "true" then
    return no_server(errors.new(module, "detection",
      "NO_GCE_CHECK=true: the metadata server is not looked for"))
  end
  local target, var = getenv("GCE_METADATA_HOST"), "GCE_METADATA_HOST"
  if not target then
    target, var = getenv("GCE_METADATA_ROOT"), "GCE_METADATA_ROOT"
  end
  if not target then
    target, var = getenv("GCE_METADATA_IP"), "GCE_METADATA_IP"
  end
  target = target or _M.DEFAULT_IP
  if not valid_host(target) then
    local _, err = errors.pair(bad_host(module, var, target))
    err.step = "detection"
    return no_server(err)
  end
  local url = "http://" .. target .. "/"
  local known = detected[url]
  if known then
    if known.ok then return true end
    return no_server(known.err)
  end

  local timeout = ping_timeout(opts, getenv)
  local http, terr = errors.pair(transport(opts))
  local ok, err = false, nil
  if not http then
    err = errors.wrap(module, "detection", terr)
  else
    local res, rerr = errors.pair(http:request({
      method = "GET", url = url, headers = FLAVOR_HEADERS,
      timeout = timeout, connect_timeout = timeout,
      max_body = 64 * 1024, follow_redirects = false,
    }))
    if not res then
      err = errors.new(module, "detection", "no metadata server at " .. target
        .. " (" .. tostring(errors.is(rerr) and rerr.message or rerr) .. ")",
        { uri = url, timeout = timeout })
    elseif res.status ~= 200 then
      err = errors.new(module, "detection", target
        .. " answered, but not as a metadata server", { status = res.status,
        http_reason = res.reason, uri = url })
    elseif res.headers["metadata-flavor"] ~= "Google" then
      err = errors.new(module, "detection", target
        .. " answered without Metadata-Flavor: Google: not a metadata server",
        { status = res.status, uri = url })
    else
      ok = true
    end
  end
  detected[url] = { ok = ok, err = err }
  if ok then return true end
  return no_server(err)
end

return _M
