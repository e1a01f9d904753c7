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
local util = require "gauth.util"
local metrics = require "gauth.metrics"
local common = require "gauth.discovery.common"
local method = require "gauth.discovery.method"
local service = require "gauth.discovery.service"
local document = require "gauth.discovery.document"
local nonblocking_phase = util.nonblocking_phase
local phase_refusal = util.phase_refusal
local check_credentials_url = util.check_credentials_url

local type = type
local pairs = pairs
local error = error
local tostring = tostring
local rawget = rawget
local rawset = rawset
local require = require
local format = string.format

local _M = { _VERSION = common.VERSION }

local json_decode = common.json_decode
local DEFAULT_UNIVERSE = common.DEFAULT_UNIVERSE
local check_number = common.check_number
local request, make_headers = method.request, method.make_headers
local next_request = method.next_request
local check_opts, proxy_transport = service.check_opts, service.proxy_transport
local new_service = service.new_service
local DEFAULT_RETRIES = 3

-- Credentials that may sit in a URI's query go before it enters an error.
local redact = errors.redact_uri

-- ------------------------------------------------------------------------
-- Executing.

-- The error object for a non-2xx response.
local function http_error(spec, req, res)
  return errors.from_response("discovery", spec.id, res, req.uri)
end

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

local retry_call, within  -- gauth.retry's, loaded when first needed

-- The universe of credentials: their `universe_domain` field when it is
-- known without the network; else `get_universe_domain()` (metadata-based
-- credentials: one read, cached by them); else Google's default universe
-- (as google-auth's base class says).
-- @return domain | nil, err
local function creds_universe(creds)
  local ud = creds.universe_domain
  if type(ud) == "string" and ud ~= "" then return ud end
  if type(creds.get_universe_domain) == "function" then
    local v, e2, e3 = creds:get_universe_domain()
    if not v then return nil, errors.of(e2, e3) end
    return v
  end
  return DEFAULT_UNIVERSE
end

--- Refuse to send credentials of one universe to a service of another
-- (google-api-python-client 2.x's check, at the first request of each
-- service object; a success is remembered). Without credentials there is
-- nothing to check (an unauthenticated call, or `api_key` as `?key=`).
-- Internal: used by execute, media and batch.
-- @tparam table svc the service's shared state
-- @tparam string module the module named in the error
-- @tparam string step
-- @return true | nil, err (`kind` "universe_mismatch", `service_universe`,
--   `credentials_universe`; not retryable)
function _M._check_universe(svc, module, step)
  local creds = svc.credentials
  if not creds or svc.universe_ok == creds then return true end
  local cu, err = creds_universe(creds)
  if not cu then
    return nil, errors.wrap(module, step, err, { retryable = false,
      message = "cannot learn the credentials' universe domain: " .. tostring(err and err.message) })
  end
  local su = svc.universe
  if cu ~= su then
    return nil, errors.new(module, step, "the service's universe domain (" .. su
      .. ") does not match the universe domain of its credentials (" .. cu
      .. "); nothing was sent (the service's universe is opts.universe_domain,"
      .. " else GOOGLE_CLOUD_UNIVERSE_DOMAIN, else " .. DEFAULT_UNIVERSE .. ")",
      { retryable = false, kind = "universe_mismatch", service_universe = su,
        credentials_universe = cu })
  end
  svc.universe_ok = creds
  return true
end
local check_universe = _M._check_universe

-- One attempt: headers (the request's own when it has some, else made from
-- the method's constants), credentials, the transport, the answer decoded.
-- A 401 drops the credentials' token and is tried again at once, once per
-- execute(): `refreshed` says whether that happened already, and comes
-- back as the third result. Internal: fails with `nil, err` (the object),
-- `execute` gives the public shape.
local function attempt(self, spec, http, timeout, remaining, refreshed)
  local svc = spec.svc
  local creds = svc.credentials
  local body = rawget(self, "body")
  local own = rawget(self, "headers")
  local h = own and copy(own) or make_headers(spec, body ~= nil)
  if creds or svc.api_key then
    -- Never a token or key in clear text to a remote host, whatever the
    -- document's rootUrl (a planted or tampered document, say).
    local ok, _, err = check_credentials_url(rawget(self, "uri"), "discovery", spec.id)
    if not ok then return nil, err, refreshed end
  end
  if creds then
    local uok, uerr = check_universe(svc, "discovery", spec.id)
    if not uok then return nil, uerr, refreshed end
    local ok, err = errors.pair(creds:apply(h))
    if not ok then
      -- No token: the API was not asked. The credentials retried already
      -- (and under nginx the failure is remembered for all workers): the
      -- retry loop below does not try again (`token_failed`).
      return nil, errors.wrap("discovery", spec.id, err, { uri = redact(rawget(self, "uri")),
                                                           token_failed = true }),
             refreshed
    end
  end
  if remaining and (not timeout or remaining < timeout) then timeout = remaining end
  local uri = rawget(self, "uri")
  local res, err = errors.pair(http:request({
    method = rawget(self, "method") or spec.http_method, url = uri,
    headers = h, body = body, timeout = timeout,
  }))
  if not res then
    metrics.api_request(metrics.host_of(uri), "error")
    return nil, errors.wrap("discovery", spec.id, err, { uri = redact(uri) }),
           refreshed
  end
  local status = res.status
  metrics.api_request(metrics.host_of(uri), status)
  if status >= 200 and status < 300 then
    local text = res.body or ""
    if spec.raw then return text, nil, refreshed end
    if text == "" or status == 204 then return {}, nil, refreshed end
    local v = json_decode(text)
    if v == nil then
      return nil, errors.new("discovery", spec.id, "malformed JSON response",
                             { status = status, body = text, uri = redact(rawget(self, "uri")) }),
             refreshed
    end
    if svc.data_wrapper and type(v) == "table" and v.data ~= nil then v = v.data end
    return v, nil, refreshed
  end
  if status == 401 and creds and not refreshed and creds.invalidate then
    creds:invalidate()
    return attempt(self, spec, http, timeout, remaining, true)
  end
  return nil, http_error(spec, self, res), refreshed
end

-- The attempts after the first (or all of them, under a deadline), through
-- gauth.retry.
local function with_retries(self, spec, http, n, timeout, deadline, opts, first_err, refreshed)
  if not retry_call then retry_call = require("gauth.retry").call end
  return retry_call(function(a, remaining)
    if a == 1 and first_err then return errors.ret(first_err) end
    local res, err
    res, err, refreshed = attempt(self, spec, http, timeout, remaining, refreshed)
    return res, err
  end, {
    attempts = n + 1, deadline = deadline, sleep = util.seam(opts, "sleep") or spec.svc.sleep,
    random = util.seam(opts, "random"),
    on_retry = function()
      metrics.api_retry(metrics.host_of(rawget(self, "uri")))
    end,
  })
end

-- The attempts of execute(): the first, then the retry loop.
local function run(self, spec, http, n, timeout, deadline, opts)
  -- The first attempt is made here, outside the retry loop: most calls
  -- need no other. (No closure is made in this function: under LuaJIT a
  -- function that makes one cannot be compiled through its returns.)
  local first_err, refreshed
  if deadline == nil or n == 0 then
    local res, err
    res, err, refreshed = attempt(self, spec, http, timeout, deadline, false)
    if res ~= nil then return res end
    -- A token failure is not retried here (`token_failed`, see attempt).
    if n == 0 or not errors.is(err) or err.retryable ~= true or err.token_failed then
      return errors.ret(err, "discovery", spec.id)
    end
    first_err = err
  end
  return with_retries(self, spec, http, n, timeout, deadline, opts, first_err, refreshed)
end

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
  -- Inside nginx, a phase without cosockets fails at once: nothing there
  -- may block (no libcurl, no sleep between retries).
  local phase = nonblocking_phase()
  if phase then
    return errors.fail("discovery", spec.id, "cannot send a request: " .. phase_refusal(phase),
                       { retryable = true, kind = "phase", phase = phase,
                         uri = redact(rawget(self, "uri")) })
  end
  local http, n, timeout, deadline
  if opts == nil then
    http, n, timeout = svc.http, svc.num_retries, svc.timeout
  else
    if type(opts) ~= "table" then
      error("gauth.discovery: execute: opts must be a table", 2)
    end
    check_number(opts.num_retries, "opts.num_retries", "execute", 2)
    check_number(opts.timeout, "opts.timeout", "execute", 2)
    check_number(opts.deadline, "opts.deadline", "execute", 2)
    http = opts.http or svc.http
    n = opts.num_retries
    if n == nil then n = svc.num_retries end
    timeout = opts.timeout or svc.timeout
    deadline = opts.deadline
  end
  if not http then
    local err
    http, err = errors.pair(require("gauth.http").default())
    if not http then return errors.fail_with("discovery", spec.id, err) end
  end
  if n == nil then n = spec.idempotent and DEFAULT_RETRIES or 0 end
  if deadline then
    -- One deadline for everything, the token fetch included.
    if not within then within = require("gauth.retry").within end
    return within(deadline, run, self, spec, http, n, timeout, deadline, opts)
  end
  return run(self, spec, http, n, timeout, deadline, opts)
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
