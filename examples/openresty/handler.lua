--- gauth in OpenResty: an authenticating reverse proxy to a Google API and
-- a page that lists Cloud SQL instances with the Discovery client. Used by
-- nginx.conf beside it (and by bench/openresty_bench.sh).
--
--   init_by_lua_block    { require("handler").init() }
--   location /google/ {
--     set_by_lua_block $gauth_upstream { return require("handler").upstream_url("/google/") }
--     set $gauth_authorization "";
--     access_by_lua_block { require("handler").authorize() }
--     proxy_set_header Authorization $gauth_authorization;
--     proxy_pass $gauth_upstream;
--   }
--   content_by_lua_block { require("handler").list_sql_instances() }
--
-- The key file is read once, in the master, before the workers fork. Tokens
-- live in the `lua_shared_dict gauth`: one token request serves every
-- worker, it is refreshed in the background before it expires, and the
-- requests never wait for it except the very first ones.

local sa = require "gauth.service_account"
local discovery = require "gauth.discovery"
local shdict = require "gauth.token_cache.shdict"
local cjson = require "cjson.safe"

local ngx = ngx  -- luacheck: ignore
local tostring = tostring
local ipairs = ipairs

local _M = {}

local creds, project, service_opts
local sqladmin  -- per worker, made at first use

local CLOUD_PLATFORM = "https://www.googleapis.com/auth/cloud-platform"

-- Where /google/ proxies to: GAUTH_EXAMPLE_UPSTREAM, read in init().
local DEFAULT_UPSTREAM = "https://storage.googleapis.com/storage/v1/"
local upstream = DEFAULT_UPSTREAM

local function getenv(name)
  local v = os.getenv(name)
  if v == "" then return nil end
  return v
end

--- Read the service-account key (call from init_by_lua*). opts, all
-- optional: `key_file` (default `GOOGLE_APPLICATION_CREDENTIALS`), `scopes`
-- (default cloud-platform), `project` (default `GOOGLE_CLOUD_PROJECT`, else
-- the key's project), `shared_dict` (default "gauth"), `upstream` (the URL
-- /google/ proxies to, ending in "/"; default `GAUTH_EXAMPLE_UPSTREAM`, else
-- the Cloud Storage JSON API), and for a local emulator: `discovery_url`
-- (default `GAUTH_EXAMPLE_DISCOVERY_URL`, else Google's), `api_endpoint`.
-- nginx passes only the variables that nginx.conf names with `env`.
function _M.init(opts)
  opts = opts or {}
  upstream = opts.upstream or getenv("GAUTH_EXAMPLE_UPSTREAM") or DEFAULT_UPSTREAM
  if not upstream:match("^https?://[^/]+/") then
    error("handler.init: the upstream must be an http(s) URL ending in a path, not "
          .. upstream)
  end
  local key_file = opts.key_file or getenv("GOOGLE_APPLICATION_CREDENTIALS")
  if not key_file then
    error("handler.init: no key file (set GOOGLE_APPLICATION_CREDENTIALS and `env` it)")
  end
  -- One cache over the shared dict for every worker (see nginx.conf).
  local cache = assert(shdict.cache(opts.shared_dict or "gauth"))
  local err
  creds, err = sa.from_file(key_file, { scopes = opts.scopes or { CLOUD_PLATFORM },
                                        cache = cache })
  if not creds then error("handler.init: " .. tostring(err)) end
  project = opts.project or getenv("GOOGLE_CLOUD_PROJECT") or creds.project_id
  service_opts = { credentials = creds,
                   discovery_url = opts.discovery_url or getenv("GAUTH_EXAMPLE_DISCOVERY_URL"),
                   api_endpoint = opts.api_endpoint }
end

--- set_by_lua* (`set_by_lua_block $gauth_upstream { ... }`): the URL to
-- proxy a request under `prefix` to: the upstream followed by the rest of
-- the request's URI as the client sent it (still percent-encoded: object
-- names with `%2F` stay one segment).
function _M.upstream_url(prefix)
  local uri = ngx.var.request_uri
  if uri:sub(1, #prefix) ~= prefix then return upstream end
  return upstream .. uri:sub(#prefix + 1)
end

-- The header value of the current token: one string per token, not one
-- per request.
local last_token, last_value

--- access_by_lua*: the service account's token for the proxied request, in
-- `$gauth_authorization` (which `proxy_set_header Authorization` sends; it
-- also replaces whatever Authorization the client sent). Setting a variable
-- costs a quarter of `ngx.req.set_header`: this runs on every request.
function _M.authorize()
  local tok, msg = creds:token()
  if not tok then
    -- Never the token or the key in a log; the error holds neither.
    ngx.log(ngx.ERR, "gauth: no token: ", msg)
    return ngx.exit(ngx.HTTP_SERVICE_UNAVAILABLE)
  end
  if tok ~= last_token then
    last_token, last_value = tok, "Bearer " .. tok
  end
  ngx.var.gauth_authorization = last_value
end

local function reply(status, t)
  ngx.status = status
  ngx.header["Content-Type"] = "application/json"
  ngx.say(cjson.encode(t))
  return ngx.exit(status)
end

--- content_by_lua*: the project's Cloud SQL instances, as JSON.
function _M.list_sql_instances()
  if not sqladmin then
    local svc, msg = discovery.build("sqladmin", "v1beta4", service_opts)
    if not svc then
      ngx.log(ngx.ERR, "gauth: sqladmin: ", msg)
      return reply(502, { error = "cannot build the sqladmin client" })
    end
    sqladmin = svc
  end
  local out = {}
  local req = sqladmin:instances():list({ project = project })
  for page in req:pages() do
    for _, inst in ipairs(page.items or {}) do
      out[#out + 1] = { name = inst.name, state = inst.state,
                        databaseVersion = inst.databaseVersion, region = inst.region }
    end
  end
  local err = req.last_error  -- the failure that ended the pages, if any
  if err then
    ngx.log(ngx.ERR, "gauth: instances.list: ", req.last_message)
    return reply(err.status == 404 and 404 or 502,
                 { error = err.message or "instances.list failed" })
  end
  return reply(200, { project = project, instances = out })
end

return _M
