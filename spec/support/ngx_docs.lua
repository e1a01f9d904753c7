--- Handlers of the nginx that spec/75-openresty_docs_run_spec.lua starts:
-- the README's `resolver` advice and its "refreshed by a background timer"
-- statement, run. Never a token in a log.
--
-- The Google stand-in is this nginx too: a TLS server for the names
-- `oauth2.gauth.test` and `api.gauth.test` (resolved by
-- spec/support/tiny_dns.py through nginx's `resolver`) with the token
-- endpoint `/token/<name>` (counts its exchanges per name in the `results`
-- dict; while `hold <name>` is set, an exchange waits until `release
-- <name>` is set, hang guard 30 s) and the API `/api/things` (200 for a
-- token it issued, else 401).
-- @module support.ngx_docs

local cjson = require "cjson.safe"
local errors = require "gauth.errors"

local ngx = ngx  -- luacheck: ignore
local _M = {}

local cfg = {}

--- init_by_lua: `{ sa = service-account key file, tls_port = port of the
-- named TLS server }`.
function _M.configure(t)
  cfg = t
end

local function results() return ngx.shared.results end

local function reply(status, t)
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.say(cjson.encode(t))
end

-- The test's clock: nginx's, plus `skew` seconds (set by the spec) so
-- that a token is past its refresh time without waiting for it.
local function clock()
  return ngx.now() + (results():get("skew") or 0)
end

-- Credentials per name and worker; the token endpoint at `host` (a name
-- that only the resolver knows, unless a literal address is given).
local creds = {}
local function get_creds(name, host)
  host = host or "oauth2.gauth.test"
  local k = name .. " " .. host
  local c = creds[k]
  if not c then
    local f = assert(io.open(cfg.sa))
    local info = assert(cjson.decode(f:read("*a")))
    f:close()
    local scheme = host:match("^%d") and "http" or "https"
    info.token_uri = ("%s://%s:%d/token/%s"):format(scheme, host,
      scheme == "http" and cfg.port or cfg.tls_port, name)
    local msg
    c, msg = require("gauth.service_account").from_info(info, {
      scopes = { "https://www.googleapis.com/auth/test." .. name },
      now = clock,
      -- One attempt: a failure is the answer, not a reason to wait.
      retry = { attempts = 1 } })
    if not c then error(msg) end
    creds[k] = c
  end
  return c
end

-- things.list at https://api.gauth.test:<tls_port>/api/things.
local function service(c)
  local root = "https://api.gauth.test:" .. cfg.tls_port .. "/"
  local doc = {
    kind = "discovery#restDescription", discoveryVersion = "v1",
    id = "things:v1", name = "things", version = "v1",
    rootUrl = root, servicePath = "api/", baseUrl = root .. "api/",
    protocol = "rest", parameters = {},
    resources = { things = { methods = { list = {
      id = "things.things.list", path = "things", httpMethod = "GET",
      parameters = {}, response = { ["$ref"] = "Things" } } } } },
    schemas = { Things = { id = "Things", type = "object", properties = {} } },
  }
  return assert(require("gauth.discovery").build_from_document(doc, { credentials = c }))
end

-- Both return values (and the third) of a call, as plain data.
local function outcome(v, second, third)
  local o = { first = v == nil and "nil" or type(v), second_type = type(second) }
  if v == nil then
    local e = errors.of(second, third)
    o.msg = tostring(second)
    o.third_is_error = errors.is(third)
    o.err = { module = e.module, step = e.step, retryable = e.retryable, kind = e.kind,
              token_failed = e.token_failed, status = e.status }
  else
    o.value = v
  end
  return o
end

--- GET /token?name=[&host=]: a token in the content phase.
function _M.token()
  local tok, t2, t3 = get_creds(ngx.var.arg_name, ngx.var.arg_host):token()
  reply(200, { token = tok, pid = ngx.worker.pid(), outcome = outcome(tok and true, t2, t3) })
end

--- GET /api?name=[&host=]: things.list (Discovery execute) with the
-- credentials of `name`.
function _M.api()
  local v, e2, e3 = service(get_creds(ngx.var.arg_name, ngx.var.arg_host))
    :things():list():execute()
  reply(200, { pid = ngx.worker.pid(), outcome = outcome(v, e2, e3) })
end

--- GET /set?key=&value=
function _M.set()
  results():set(ngx.unescape_uri(ngx.var.arg_key), tonumber(ngx.var.arg_value) or ngx.var.arg_value)
  ngx.say("ok")
end

--- GET /state?name=: exchanges so far for `name`, how many of them wait
-- for their release, and whether a background refresh of its token is
-- under way (or backing off) for all workers.
function _M.state()
  local name = ngx.var.arg_name
  -- The flag gauth.token_cache.shdict keeps while a refresh runs.
  local refreshing = ngx.shared.gauth:get("b|" .. get_creds(name):cache_key()) ~= nil
  reply(200, { exchanges = results():get("exchanges " .. name) or 0,
               refreshing = refreshing,
               waiting = results():get("waiting " .. name) or 0 })
end

--- POST /token/<name> (the TLS server): the token endpoint.
function _M.ep_token()
  ngx.req.read_body()
  local name = ngx.var.uri:match("^/token/(.+)$")
  local r = results()
  local n = r:incr("exchanges " .. name, 1, 0)
  if r:get("hold " .. name) then
    r:incr("waiting " .. name, 1, 0)
    local deadline = ngx.now() + 30
    while not r:get("release " .. name) and ngx.now() < deadline do
      ngx.sleep(0.01)
      ngx.update_time()
    end
    r:incr("waiting " .. name, -1)
  end
  local tok = "tok-" .. name .. "-" .. n
  r:set("issued " .. tok, true)
  reply(200, { access_token = tok, expires_in = 3600, token_type = "Bearer" })
end

--- GET /api/things (the TLS server): 200 for a token issued above.
function _M.ep_api()
  local tok = (ngx.var.http_authorization or ""):match("^Bearer (.+)$")
  if not tok or not results():get("issued " .. tok) then
    return reply(401, { error = { code = 401, status = "UNAUTHENTICATED",
                                  message = "Request had invalid authentication credentials." } })
  end
  reply(200, { kind = "things", host = ngx.var.host, token = tok })
end

return _M
