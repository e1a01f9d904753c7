--- Services: the options of build() and build_from_document() checked,
-- the endpoint chosen (universe, mTLS, api_endpoint), credentials scoped
-- to the API, and the root resource made over the document. Internal.
-- @module gauth.discovery.service

local errors = require "gauth.errors"
local seam = require "gauth.lib.seam"
local common = require "gauth.discovery.common"
local uri = require "gauth.discovery.uri"
local resource = require "gauth.discovery.resource"

local type = type
local pairs = pairs
local error = error
local require = require
local sub = string.sub
local gsub = string.gsub
local sort = table.sort

local EMPTY = common.EMPTY
local USER_AGENT, DEFAULT_UNIVERSE = common.USER_AGENT, common.DEFAULT_UNIVERSE
local configured_universe = require("gauth.universe").configured
local check_number = common.check_number
local join_base = uri.join_base
local new_resource = resource.new_resource

local _M = {}

local function check_opts(opts, fname)
  if opts == nil then return {} end
  if type(opts) ~= "table" then
    error("gauth.discovery: " .. fname .. ": opts must be a table", 3)
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  for _, k in pairs({ "api_endpoint", "universe_domain", "quota_project",
                      "user_agent", "api_key", "client_cert", "client_key",
                      "certificate_config", "ca_file" }) do
    if o[k] ~= nil and (type(o[k]) ~= "string" or o[k] == "") then
      error("gauth.discovery: " .. fname .. ": opts." .. k .. " must be a non-empty string", 3)
    end
  end
  if o.credentials ~= nil and (type(o.credentials) ~= "table"
                               or type(o.credentials.apply) ~= "function") then
    error("gauth.discovery: " .. fname .. ": opts.credentials must have apply(headers)", 3)
  end
  if o.http ~= nil and (type(o.http) ~= "table" or type(o.http.request) ~= "function") then
    error("gauth.discovery: " .. fname .. ": opts.http must be a transport (with :request)", 3)
  end
  if o.shared_cache ~= nil and o.shared_cache ~= false and (type(o.shared_cache) ~= "table"
                                 or type(o.shared_cache.fetch) ~= "function") then
    error("gauth.discovery: " .. fname .. ": opts.shared_cache must be a "
          .. "gauth.discovery.shdict_cache (or false)", 3)
  end
  if o.store ~= nil and o.store ~= false and type(o.store) ~= "table" then
    error("gauth.discovery: " .. fname .. ": opts.store must be a gauth.token_cache.redis "
          .. "store or cache (or false)", 3)
  end
  check_number(o.num_retries, "opts.num_retries", fname, 3)
  check_number(o.timeout, "opts.timeout", fname, 3)
  if o.proxy ~= nil and o.proxy ~= false and type(o.proxy) ~= "string" then
    error("gauth.discovery: " .. fname .. ": opts.proxy must be a string (a proxy URL) or false", 3)
  end
  if o.no_proxy ~= nil and type(o.no_proxy) ~= "string" then
    error("gauth.discovery: " .. fname .. ": opts.no_proxy must be a string", 3)
  end
  return o
end

-- `proxy` / `no_proxy` without `http`: a transport of the service's own
-- (the document fetch and every request go through it).
-- @return true | nil, msg, err (a proxy URL that does not parse)
local function proxy_transport(o)
  if o.http or (o.proxy == nil and o.no_proxy == nil) then return true end
  local http, msg, err = require("gauth.http").new({ proxy = o.proxy, no_proxy = o.no_proxy })
  if not http then return nil, msg, err end
  o.http = http
  o._proxy_http = true  -- ours: replaced by one with the client certificate when there is one
  return true
end

local function scopes_of(doc)
  local s = type(doc.auth) == "table" and type(doc.auth.oauth2) == "table"
            and doc.auth.oauth2.scopes
  local list = {}
  if type(s) == "table" then
    for k in pairs(s) do list[#list + 1] = k end
  end
  sort(list)
  return list
end

local function new_service(doc, opts)
  if type(doc.rootUrl) ~= "string" then
    return errors.fail("discovery", "build", "not a Discovery document (no rootUrl)")
  end
  local base = join_base(doc.rootUrl, type(doc.servicePath) == "string" and doc.servicePath or "")
  -- googleapiclient's rule (gauth.universe): the option, else the
  -- environment, else Google's universe.
  local universe = configured_universe(opts.universe_domain)
  if universe ~= DEFAULT_UNIVERSE then
    base = gsub(base, "googleapis%.com", (gsub(universe, "%%", "%%%%")))
  end
  -- Certificate-based access, as google-api-python-client's discovery.build:
  -- the client certificate (explicit, or the default one when
  -- GOOGLE_API_USE_CLIENT_CERTIFICATE=true), then the endpoint by
  -- GOOGLE_API_USE_MTLS_ENDPOINT when the document has an mtlsRootUrl.
  local mtls = require "gauth.mtls"
  local cert, cmsg, cerr = mtls.client_cert(opts)
  if cert == nil then return nil, cmsg, cerr end
  local root_url = doc.rootUrl
  if not opts.api_endpoint and type(doc.mtlsRootUrl) == "string" then
    local m_base = join_base(doc.mtlsRootUrl, type(doc.servicePath) == "string" and doc.servicePath or "")
    local chosen, is_mtls, e3 = mtls.select_endpoint(base, m_base, cert and true or false, opts)
    if not chosen then return nil, is_mtls, e3 end
    if is_mtls then
      if universe and universe ~= DEFAULT_UNIVERSE then
        return errors.fail("discovery", "build", "mTLS is not supported in any universe other than "
          .. DEFAULT_UNIVERSE .. " (universe_domain " .. universe .. ")",
          { retryable = false, kind = "config", field = "GOOGLE_API_USE_MTLS_ENDPOINT" })
      end
      base, root_url = chosen, doc.mtlsRootUrl
    end
  end
  local http = opts.http
  if cert and (not http or opts._proxy_http) then
    -- The service's own transport, with the certificate (both transports:
    -- under nginx gauth.http hands it to the cosockets).
    local e2, e3
    http, e2, e3 = require("gauth.http").new({ client_cert = cert.client_cert,
                                               client_key = cert.client_key,
                                               ca_file = opts.ca_file,
                                               proxy = opts.proxy, no_proxy = opts.no_proxy })
    if not http then return errors.fail_with("discovery", "build", errors.of(e2, e3)) end
  end
  if opts.api_endpoint then base = opts.api_endpoint end
  local creds = opts.credentials
  if creds and type(creds.with_scopes) == "function" then
    -- googleapiclient scopes credentials that need scopes to the API's own
    local needs = creds.requires_scopes
    if type(needs) == "function" then needs = needs(creds) end
    if needs == true then
      local scoped = creds:with_scopes(scopes_of(doc))
      if scoped then creds = scoped end
    end
  end
  local features = type(doc.features) == "table" and doc.features or EMPTY
  local data_wrapper = false
  for _, f in pairs(features) do
    if f == "dataWrapper" then data_wrapper = true end
  end
  local svc = {
    doc = doc,
    name = doc.name,
    schemas = type(doc.schemas) == "table" and doc.schemas or EMPTY,
    base = base,
    base_slash = sub(base, -1) == "/" and base or (base .. "/"),
    root_url = root_url,
    batch_path = doc.batchPath,
    http = http,
    mtls = cert and true or false,
    credentials = creds,
    universe = universe,
    quota_project = opts.quota_project,
    user_agent = opts.user_agent and (USER_AGENT .. " " .. opts.user_agent) or USER_AGENT,
    num_retries = opts.num_retries,
    timeout = opts.timeout,
    sleep = seam.get(opts, "sleep"),
    data_wrapper = data_wrapper,
  }
  -- googleapiclient's developerKey: sent as ?key= on every request
  svc.api_key = opts.api_key
  return new_resource(svc, doc, "")
end

_M.check_opts = check_opts
_M.proxy_transport = proxy_transport
_M.new_service = new_service

return _M
