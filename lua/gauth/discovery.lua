--- Google API clients made from Discovery documents, shaped like Google's
-- Python client (googleapiclient) and building the same requests.
--
--     local discovery = require "gauth.discovery"
--     local compute = assert(discovery.build("compute", "v1", { credentials = creds }))
--     local req = compute:instances():list({ project = "p", zone = "z" })
--     -- req.method, req.uri, req.headers, req.body can be looked at here
--     local resp, msg, err = req:execute()   -- msg a string, err its object
--     for page in req:pages() do ... end     -- then req.last_error, if any
--
-- Resources and methods are reached with colons, by the names of the
-- document or by googleapiclient's names (`import_`); a name that is a Lua
-- keyword also answers with a trailing `_` (`end_`), and one with
-- characters Lua names cannot hold with `_` in their place (`well_known`).
-- Parameters take the document's names (`["$.xgafv"]`) or googleapiclient's
-- (`x__xgafv`); the request body goes under `body`.
--
-- Nothing is prepared before it is used: `build_from_document` decodes the
-- JSON (when given text) and makes the root resource; each resource object
-- is made on first use and kept; each method's parameter table, path
-- template and a builder compiled for it are made on first use and kept,
-- so that building a request is a look-up per parameter and one string.
--
-- A request object's `method`, `uri`, `headers` and `body` read like
-- fields (a request's headers table is made when first read); googleapiclient
-- differs from gauth on purpose in a few places, listed in
-- spec/51-discovery_conformance_spec.lua: gauth refuses values of the wrong
-- type that Python would coerce (`str(True)`, `int(1.5)`), and pages a
-- body-token method whose first request had no body.
--
-- The parts, in lua/gauth/discovery/: document.lua (fetching and the
-- caches), service.lua (options, endpoint, credentials), resource.lua,
-- method.lua (a method prepared, its request objects and compiled
-- builder), values.lua (parameter values checked and encoded), uri.lua
-- (URI templates and joining), body.lua (JSON bodies beside their schema),
-- names.lua, common.lua, regex.lua (Python `re` for `pattern`),
-- shdict_cache.lua (documents under nginx). This file is the public face,
-- and sends requests.
-- @module gauth.discovery

local errors = require "gauth.errors"
local seam = require "gauth.lib.seam"
local common = require "gauth.discovery.common"
local method = require "gauth.discovery.method"
local service = require "gauth.discovery.service"
local document = require "gauth.discovery.document"

local type = type
local pairs = pairs
local error = error
local rawget = rawget
local rawset = rawset
local setmetatable = setmetatable
local require = require
local format = string.format

local _M = { _VERSION = common.VERSION }

local json_decode = common.json_decode
local check_number = common.check_number
local request, make_headers = method.request, method.make_headers
local next_request = method.next_request
local check_opts, proxy_transport = service.check_opts, service.proxy_transport
local new_service = service.new_service
local DEFAULT_RETRIES = require("gauth.request").DEFAULT_RETRIES
-- The universe rule (gauth.universe): Discovery's execute, media and batch
-- refuse credentials of another universe.
local check_universe = require("gauth.universe").check

-- Credentials that may sit in a URI's query go before it enters an error.
local redact = errors.redact_uri

-- ------------------------------------------------------------------------
-- Executing.

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end


-- A 2xx answer of execute(): the body text for raw methods, else the
-- decoded JSON (gauth.request's `decode`).
local function decode_answer(op, res)
  local spec = op.spec
  local text = res.body or ""
  if spec.raw then return text end
  local status = res.status
  if text == "" or status == 204 then return {} end
  local v = json_decode(text)
  if v == nil then
    return nil, errors.new("discovery", spec.id, "malformed JSON response",
                           { status = status, body = text, uri = redact(op.url) })
  end
  if spec.svc.data_wrapper and type(v) == "table" and v.data ~= nil then v = v.data end
  return v
end

-- The universe check, once per call before the credentials are asked.
local function universe_check(op)
  return check_universe(op.spec.svc, "discovery", op.spec.id)
end

local send  -- gauth.request.send, loaded at first use

--- Send the request, with retries, and decode the response.
-- Retries (exponential backoff with jitter, `Retry-After` honoured) follow
-- 5xx, 429, 403 `rateLimitExceeded`/`userRateLimitExceeded` and transport
-- errors marked retryable; by default 3 retries for GET, HEAD, PUT and
-- DELETE and none for POST and PATCH. A 401 drops the credentials' token
-- and is tried once more at once.
-- @tparam[opt] table opts `num_retries` (retries after the first attempt;
--   for any method), `timeout` (seconds per attempt), `deadline` (seconds
--   for all attempts and the token fetch), `sleep` (function(seconds), for
--   tests), `random` (function() -> [0, 1), for tests), `http` (a
--   transport for this call)
-- @return the decoded JSON response (an empty table for an empty 2xx body;
--   the body text for `_media` methods and methods without a response
--   schema) | nil, msg, err (`gauth.errors`, module "discovery", step the
--   method id, with `status`, `reason`, `google_status`, `message`,
--   `details`, `body`, `uri`; after retries also `attempts`). Inside nginx,
--   in a phase without cosockets: `nil, msg, err` at once (`retryable`,
--   `kind` "phase", `phase`).
function request:execute(opts)
  local spec = self._spec
  local svc = spec.svc
  local mt = spec.op_mt
  if not mt then
    -- What every call of this method sends with, looked up through the
    -- call's own table: a call makes a table of what differs only.
    local creds = svc.credentials
    mt = { __index = {
      module = "discovery", step = spec.id, spec = spec, method = spec.http_method,
      http = svc.http, timeout = svc.timeout, credentials = creds,
      api_key = svc.api_key ~= nil, check = creds and universe_check or nil,
      decode = decode_answer, sleep = svc.sleep,
    } }
    spec.op_mt = mt
  end
  local body = rawget(self, "body")
  local own = rawget(self, "headers")
  -- One call of gauth.request's loop (the https-or-loopback rule,
  -- credentials, one refresh on 401, retries, one deadline); the headers
  -- are the request's own when it has some (a copy: the loop writes the
  -- credentials into them), else made from the method's constants.
  local op = setmetatable({
    url = rawget(self, "uri"), body = body, retries = 0,
    headers = own and copy(own) or make_headers(spec, body ~= nil),
  }, mt)
  local n = svc.num_retries
  if opts ~= nil then
    if type(opts) ~= "table" then
      error("gauth.discovery: execute: opts must be a table", 2)
    end
    check_number(opts.num_retries, "opts.num_retries", "execute", 2)
    check_number(opts.timeout, "opts.timeout", "execute", 2)
    check_number(opts.deadline, "opts.deadline", "execute", 2)
    if opts.http then op.http = opts.http end
    if opts.num_retries ~= nil then n = opts.num_retries end
    if opts.timeout then op.timeout = opts.timeout end
    op.deadline = opts.deadline
    local sleep = seam.get(opts, "sleep")
    if sleep then op.sleep = sleep end
    op.random = seam.get(opts, "random")
  end
  local m = rawget(self, "method")
  if m then op.method = m end
  if n == nil then n = spec.idempotent and DEFAULT_RETRIES or 0 end
  op.retries = n
  if not send then send = require("gauth.request").send end
  return send(op)
end

--- Download what the request answers (a `_media` variant's bytes) into a
-- file, in ranged requests: see `gauth.media.download`.
-- @param dest a path or an open file
-- @tparam[opt] table opts `chunk_size`, `progress`, `resume`, ...
-- @return bytes, total | nil, msg, err
function request:download(dest, opts)
  return require("gauth.media").download(self, dest, opts)
end

--- Iterate over the pages of a paged method:
--
--     for page in req:pages() do ... end
--     if req.last_error then ... end   -- the failure that ended it, if any
--
-- The request itself gives the first page; each page's next-page token
-- makes the next request. The loop body only ever gets pages: a failure
-- ends the iteration, and leaves its message in `req.last_message` and
-- its `gauth.errors` object in `req.last_error` (both cleared when
-- `pages()` is called; nil when every page came).
-- @tparam[opt] table opts as for `execute`
-- @return the iterator
function request:pages(opts)
  local spec = self._spec
  if not spec.page then
    error(format("gauth.discovery: %s: pages: the method has no page token", spec.id), 2)
  end
  local first = self
  rawset(first, "last_error", nil)
  rawset(first, "last_message", nil)
  local req, last = self, nil
  return function()
    if not req then return nil end
    local resp, msg, err = req:execute(opts)
    if resp == nil then
      req = nil
      rawset(first, "last_message", msg)
      rawset(first, "last_error", err)
      return nil
    end
    local tok = type(resp) == "table" and resp[spec.page.next_name]
    if tok ~= nil and tok == last then
      -- the same token twice would loop for ever
      req = nil
    else
      last = tok
      req = next_request(spec, req, resp)
    end
    return resp
  end
end

--- Make a service from a Discovery document.
-- @param doc the document: JSON text or its decoded table (not changed,
--   and may be shared between services)
-- @tparam[opt] table opts `credentials` (anything with `apply(headers)`;
--   none: requests go unauthenticated), `http` (a transport; default
--   `gauth.http.default()` at first execute), `api_endpoint` (replaces
--   rootUrl + servicePath), `universe_domain` (default
--   `GOOGLE_CLOUD_UNIVERSE_DOMAIN` or googleapis.com), `quota_project`
--   (`x-goog-user-project`), `user_agent` (added after gauth's), `api_key`
--   (`?key=`), `num_retries`, `timeout`, `sleep` (defaults for `execute`),
--   `proxy`, `no_proxy` (without `http`: a transport of its own with
--   these, see `gauth.transport.curl`);
--   mutual TLS (see `gauth.mtls`): `client_cert` + `client_key` (paths),
--   else the default certificate when `GOOGLE_API_USE_CLIENT_CERTIFICATE=true`
--   (`certificate_config`: its configuration file in place of
--   `GOOGLE_API_CERTIFICATE_CONFIG`), sent by a transport of the service's
--   own (with `ca_file`, `proxy`, `no_proxy`) unless `http` is given; the document's
--   `mtlsRootUrl` is used as `GOOGLE_API_USE_MTLS_ENDPOINT` says (never,
--   auto: with a client certificate, always); `env` (a table or function)
--   in place of the process environment for these variables
-- @return the service (its root resource) | nil, msg, err
function _M.build_from_document(doc, opts)
  opts = check_opts(opts, "build_from_document")
  local pok, pmsg, perr = proxy_transport(opts)
  if not pok then return nil, pmsg, perr end
  if type(doc) == "string" then
    local d = json_decode(doc)
    if type(d) ~= "table" then
      return errors.fail("discovery", "build", "malformed JSON document")
    end
    doc = d
  elseif type(doc) ~= "table" then
    error("gauth.discovery: build_from_document: doc must be JSON text or a table", 2)
  end
  return new_service(doc, opts)
end

--- Make a service for an API: fetch its Discovery document (or take it
-- from the caches) and build from it.
-- @tparam string api e.g. "sqladmin"
-- @tparam string version e.g. "v1beta4"
-- @tparam[opt] table opts as for `build_from_document`, and
--   `discovery_url` (a template with `{api}` and `{apiVersion}`, or a list
--   of them tried in turn while they answer 404; default Google's two; any
--   other `{...}` is an error, step "discovery_url"),
--   `cache` (false: neither cache), `cache_dir` (default
--   `$XDG_CACHE_HOME/gauth/discovery` or `~/.cache/gauth/discovery`),
--   `cache_max_age` (seconds, default one day), `store` (under nginx: a
--   `gauth.token_cache.redis` store or cache sharing documents across the
--   fleet; default the one `install` made, if any; `false`: none)
-- @return the service | nil, msg, err
function _M.build(api, version, opts)
  if type(api) ~= "string" or api == "" then
    error("gauth.discovery: build: api must be a non-empty string", 2)
  end
  if type(version) ~= "string" or version == "" then
    error("gauth.discovery: build: version must be a non-empty string", 2)
  end
  opts = check_opts(opts, "build")
  local pok, pmsg, perr = proxy_transport(opts)
  if not pok then return nil, pmsg, perr end
  local templates = opts.discovery_url or document.DISCOVERY_URLS
  if type(templates) == "string" then templates = { templates } end
  if type(templates) ~= "table" or #templates == 0 then
    error("gauth.discovery: build: opts.discovery_url must be a string or a list of strings", 2)
  end
  local doc, msg, err = document.get(api, version, templates, opts)
  if not doc then return nil, msg, err end
  return new_service(doc, opts)
end

--- Media for `media_body` from a file (streamed when sent): see
-- `gauth.media.media_file`.
function _M.media_file(path, opts)
  return require("gauth.media").media_file(path, opts)
end

--- Media for `media_body` from a string: see `gauth.media.media_string`.
function _M.media_string(data, opts)
  return require("gauth.media").media_string(data, opts)
end

--- The Discovery document a service (or any of its resources) was built
-- from: the decoded table, shared, to be read and not changed. A function of
-- the module rather than a method, because a service's names are the API's.
-- @param svc a service or resource object
-- @return the document table
function _M.document(svc)
  local inner = type(svc) == "table" and rawget(svc, "_svc")
  if not inner then
    error("gauth.discovery: document: not a service or resource object", 2)
  end
  return inner.doc
end

--- Forget the documents cached in this process (the disk cache stays).
function _M.clear_cache()
  document.clear_cache()
end

return _M
