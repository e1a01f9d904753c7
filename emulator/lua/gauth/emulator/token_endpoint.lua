--- Google's OAuth 2.0 token endpoint (`POST /token`) as gauth's emulator
-- answers it: the jwt-bearer grant (access tokens, and ID tokens for a
-- `target_audience`) and the refresh_token grant, with Google's errors.
-- Methods of the emulator's state (`gauth.emulator.google`). Internal.
-- @module gauth.emulator.token_endpoint

local core = require "gauth.core"
local httpd = require "gauth.emulator.httpd"
local common = require "gauth.emulator.common"

local type = type
local ipairs = ipairs
local tostring = tostring
local concat = table.concat
local gsub = string.gsub
local match = string.match
local lower = string.lower

local JWT_BEARER = common.JWT_BEARER
local split_words = common.split_words
local set_of = common.set_of
local trace_claims = common.trace_claims
local reply_json = common.reply_json
local oauth_error = common.oauth_error
local method_not_allowed = common.method_not_allowed
local request_params = common.request_params

local _M = { _VERSION = "0.1.0" }

local MSG_UNAUTHORIZED_CLIENT = "Client is unauthorized to retrieve access "
  .. "tokens using this method, or client not authorized for any of the "
  .. "scopes requested."

function _M.token_endpoint(self, req, entry)
  entry.endpoint = "token"
  if req.method ~= "POST" then return method_not_allowed("POST") end
  local form = request_params(req)
  local gt = form.grant_type
  entry.grant_type = gt
  if gt == JWT_BEARER then
    entry.grant_type = "jwt-bearer"
    return self:jwt_bearer(form, entry)
  elseif gt == "refresh_token" then
    return self:refresh(req, form, entry)
  end
  entry.error = "unsupported_grant_type"
  return oauth_error(400, "unsupported_grant_type",
                     "Invalid grant_type: " .. (gt or ""))
end

local function grant_error(entry, status, err, description)
  entry.error = err
  entry.error_description = description
  return oauth_error(status, err, description)
end

function _M.jwt_bearer(self, form, entry)
  local assertion = form.assertion
  if not assertion or assertion == "" then
    return grant_error(entry, 400, "invalid_request",
                       "Missing required parameter: assertion")
  end
  local claims, acct, peeked = self:verify_account_jwt(assertion)
  if not claims then
    local description = acct
    if peeked then entry.claims = trace_claims(peeked) end
    entry.verified = false
    return grant_error(entry, 400, "invalid_grant", description)
  end
  entry.claims = trace_claims(claims)
  entry.verified = true
  if not self.audiences[claims.aud] then
    return grant_error(entry, 400, "invalid_grant",
      "Invalid JWT: Failed audience check. The expected value was " .. self.token_uri)
  end
  if claims.sub ~= nil and claims.sub ~= claims.iss then
    if type(claims.sub) ~= "string" or (self.subjects and not self.subjects[claims.sub]) then
      return grant_error(entry, 401, "unauthorized_client", MSG_UNAUTHORIZED_CLIENT)
    end
  end
  local target = claims.target_audience
  if type(target) == "string" and target ~= "" then
    local idt, err = self:id_token(target, acct.email, acct.client_id)
    if not idt then error("id token: " .. tostring(err)) end
    entry.issued = "id_token"
    return reply_json(200, { id_token = idt })
  end
  local scopes = split_words(claims.scope, " ")
  if #scopes == 0 then
    return grant_error(entry, 400, "invalid_scope",
                       "Invalid OAuth scope or ID token audience provided.")
  end
  local tok, expires_in = self:issue({ kind = "service_account", email = acct.email,
    subject = claims.sub, scopes = scopes, client_id = acct.client_id })
  entry.issued = "access_token"
  return reply_json(200, { access_token = tok, expires_in = expires_in,
                           token_type = "Bearer" },
    { ["Cache-Control"] = "no-cache, no-store, max-age=0, must-revalidate",
      Pragma = "no-cache" })
end

function _M.refresh(self, req, form, entry)
  local id, secret = form.client_id, form.client_secret
  local auth = req.headers.authorization
  if auth and match(lower(auth), "^basic%s") then
    local dec = core.b64_decode(match(auth, "^%S+%s+(%S+)") or "")
    local u, p = match(dec or "", "^([^:]*):(.*)$")
    if u then
      id = id or httpd.unescape(gsub(u, "+", " "))
      secret = secret or httpd.unescape(gsub(p, "+", " "))
    end
  end
  entry.client_id = id
  if not form.refresh_token or form.refresh_token == "" then
    return grant_error(entry, 400, "invalid_request",
                       "Missing required parameter: refresh_token")
  end
  local client = id and self.clients[id]
  if not client then
    return grant_error(entry, 401, "invalid_client", "The OAuth client was not found.")
  end
  if secret ~= client.secret then
    return grant_error(entry, 401, "invalid_client", "Unauthorized")
  end
  local user = client.tokens[form.refresh_token]
  if not user then
    return grant_error(entry, 400, "invalid_grant", "Token has been expired or revoked.")
  end
  local scopes = user.scopes
  if form.scope and form.scope ~= "" then
    -- A refresh may narrow the scopes, never widen them.
    local have = set_of(user.scopes)
    scopes = split_words(form.scope, " ")
    for _, s in ipairs(scopes) do
      if not have[s] then
        return grant_error(entry, 400, "invalid_scope",
          "The requested scope is not granted by the refresh token.")
      end
    end
  end
  entry.account = user.account
  local tok, expires_in = self:issue({ kind = "authorized_user", email = user.account,
    scopes = scopes, client_id = id })
  entry.issued = "access_token"
  return reply_json(200, { access_token = tok, expires_in = expires_in,
                           scope = concat(scopes, " "), token_type = "Bearer" })
end

return _M
