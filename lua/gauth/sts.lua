--- The OAuth 2.0 token exchange (RFC 8693) at Google's Security Token
-- Service, as downscoped credentials (and, later, workload identity
-- federation) use it.
--
--     local sts = require "gauth.sts"
--     local data, msg, err = sts.exchange({
--       url = sts.token_url("googleapis.com"),
--       subject_token = tok,
--       subject_token_type = sts.ACCESS_TOKEN_TYPE,
--       requested_token_type = sts.ACCESS_TOKEN_TYPE,
--       options = '{"accessBoundary":...}',
--     })
--     -- data.access_token, data.issued_token_type, data.token_type, data.expires_in
--
-- The request is a form POST with the fields google-auth sends
-- (`grant_type`, `resource`, `audience`, `scope`, `requested_token_type`,
-- `subject_token`, `subject_token_type`, `actor_token`, `actor_token_type`,
-- `options`), absent ones left out; client authentication by HTTP Basic
-- when `client_id` is given. Subject tokens go only over https, or http to
-- a loopback host. 5xx, 429 and transport failures are retried.
--
-- This is the one STS client of gauth: downscoped credentials and external
-- accounts (workload/workforce identity federation) both exchange here,
-- retried by `gauth.retry` on 5xx, 429 and transport failures, never on an
-- OAuth error no retry fixes (`invalid_grant`, `invalid_client`, ...).
--
-- Errors: `nil, msg, err`, module "sts" (or `opts.module`): step "endpoint",
-- "token request" (transport), "token response" (the endpoint's refusal:
-- `status`, `oauth_error`, `error_description`, `http_reason`, `retryable`,
-- `retry_after`), or `opts.step` for both of the last two.
-- No token is ever in an error.
-- @module gauth.sts

local token_request = require "gauth.token_request"
local errors = require "gauth.errors"
local retry = require "gauth.retry"
local time = require "gauth.lib.time"
local url_lib = require "gauth.lib.url"
local core = require "gauth.core"
local cjson = require "cjson.safe"
local universe = require "gauth.universe"

local type = type
local pairs = pairs
local ipairs = ipairs
local error = error
local tostring = tostring
local concat = table.concat
local gsub = string.gsub
local sub = string.sub

local _M = { _VERSION = "0.1.0" }

_M.GRANT_TYPE = "urn:ietf:params:oauth:grant-type:token-exchange"
_M.ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token"

--- Retry policy: `gauth.token_request.RETRY`, the one table of every
-- token request.
_M.RETRY = token_request.RETRY

_M.MAX_RESPONSE = 256 * 1024

--- The STS token URL of a universe: `https://sts.<universe_domain>/v1/token`.
function _M.token_url(universe_domain)
  return "https://sts." .. (universe_domain or universe.DEFAULT) .. "/v1/token"
end

-- The form fields in the order google-auth writes them.
local FIELDS = { "grant_type", "resource", "audience", "scope", "requested_token_type",
                 "subject_token", "subject_token_type", "actor_token", "actor_token_type",
                 "options" }

-- A description on one line, bounded: Google's may run over several.
local function one_line(s)
  s = gsub(gsub(s, "%s+", " "), "^ ", "")
  s = gsub(s, " $", "")
  if #s > 300 then s = sub(s, 1, 300) .. "..." end
  return s
end

-- The endpoint's refusal: its OAuth error (`opts.step`: under that step,
-- with the OAuth error, else the status, as the message).
local function refused(op, res, now)
  local fields = token_request.refusal(res, now, op.url)
  local oerr, desc = fields.oauth_error, fields.error_description
  local msg
  if op.sts_step then
    -- The step already says where: the OAuth error, else the status.
    msg = oerr and (oerr .. (desc and (": " .. one_line(desc)) or ""))
      or ("HTTP " .. tostring(res.status))
  else
    msg = "the STS endpoint refused the token exchange"
    if oerr then
      msg = msg .. ": " .. oerr
      if desc then msg = msg .. ": " .. one_line(desc) end
    end
  end
  return errors.new(op.module, op.sts_step or "token response", msg, fields)
end

-- A 200 answer: the decoded exchange (its body holds a token: never in an
-- error).
local function answer(op, res)
  local data = cjson.decode(res.body)
  if type(data) ~= "table" or type(data.access_token) ~= "string" or data.access_token == "" then
    return nil, errors.new(op.module, op.sts_step or "token response", "the answer has no access_token",
                           { status = 200, retryable = false, uri = op.url })
  end
  return data
end

--- One token exchange.
-- @tparam table opts `url` (the token URL; required), `subject_token`,
--   `subject_token_type` (both required), `grant_type` (default
--   `GRANT_TYPE`), `requested_token_type`, `audience`, `resource`, `scope`
--   (array or space-separated string), `actor_token`, `actor_token_type`,
--   `options` (a string: Google's JSON options, sent as it is; or a table,
--   encoded as JSON), `user_project` (a workforce pool's user project: put
--   in `options` as `userProject` unless `client_id` is given, as Google's
--   libraries do), `client_id` and `client_secret` (HTTP Basic client
--   authentication of `client_id:client_secret`, as Google's libraries
--   write it), `headers` (extra request headers), `http`, `timeout`,
--   `retry` (fields over `RETRY`, or false), `now` (clock function),
--   `module` (the module named in errors; default "sts"), `step` (the step
--   named in every error instead of "token request"/"token response"; the
--   refusal's message is then the OAuth error and its description alone)
-- @return the decoded answer (`access_token`, `issued_token_type`,
--   `token_type`, `expires_in`, ...) | nil, msg, err
function _M.exchange(opts)
  if type(opts) ~= "table" then error("gauth.sts: exchange: opts must be a table", 2) end
  local module = opts.module or "sts"
  for _, k in ipairs({ "url", "subject_token", "subject_token_type" }) do
    if type(opts[k]) ~= "string" or opts[k] == "" then
      error("gauth.sts: exchange: opts." .. k .. " must be a non-empty string", 2)
    end
  end
  local ok, umsg, uerr = token_request.check_url(opts.url, module, "endpoint", "a token")
  if not ok then return nil, umsg, uerr end
  local values = {
    grant_type = opts.grant_type or _M.GRANT_TYPE, resource = opts.resource,
    audience = opts.audience, requested_token_type = opts.requested_token_type,
    subject_token = opts.subject_token, subject_token_type = opts.subject_token_type,
    actor_token = opts.actor_token, actor_token_type = opts.actor_token_type,
    options = opts.options,
  }
  if type(values.options) == "table" then
    values.options = cjson.encode(values.options)
  end
  if opts.user_project ~= nil and not opts.client_id then
    if type(opts.user_project) ~= "string" or opts.user_project == "" then
      error("gauth.sts: exchange: opts.user_project must be a non-empty string", 2)
    end
    if values.options then
      error("gauth.sts: exchange: opts.user_project and opts.options together", 2)
    end
    values.options = cjson.encode({ userProject = opts.user_project })
  end
  local scope = opts.scope
  if type(scope) == "table" then scope = concat(scope, " ") end
  values.scope = scope
  local list = {}
  for _, k in ipairs(FIELDS) do
    local v = values[k]
    if v ~= nil and v ~= "" then
      if type(v) ~= "string" then error("gauth.sts: exchange: opts." .. k .. " must be a string", 2) end
      list[#list + 1] = { k, v }
    end
  end
  local headers = { ["content-type"] = "application/x-www-form-urlencoded",
                    accept = "application/json" }
  if opts.client_id then
    -- As google-auth (Python and Node) write it: the id and secret as they
    -- are, not form-encoded first.
    headers.authorization = "Basic " .. core.b64_encode(
      opts.client_id .. ":" .. (opts.client_secret or ""))
  end
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  local policy = retry.policy(_M.RETRY, opts.retry)
  if not policy then error("gauth.sts: exchange: opts.retry must be a table or false", 2) end
  local http = opts.http
  if not http then
    local hmsg, herr
    http, hmsg, herr = token_request.transport({ ca_file = opts.ca_file, timeout = opts.timeout,
                                         proxy = opts.proxy, no_proxy = opts.no_proxy }, module)
    if not http then return errors.ret(errors.of(hmsg, herr)) end
  end
  return token_request.send({
    module = module, step = opts.step, sts_step = opts.step, url = opts.url,
    headers = headers, body = url_lib.form_encode(list), http = http, max_body = _M.MAX_RESPONSE,
    timeout = opts.timeout, policy = policy, now = opts.now or time.now,
    refused = refused, accept = answer,
  })
end

return _M
