--- The GCE metadata server of gauth's emulator (`/computeMetadata/v1/`):
-- project and instance values, the service account's email, scopes,
-- access tokens and ID tokens (`identity`), the Metadata-Flavor and
-- X-Forwarded-For checks. Methods of the emulator's state
-- (`gauth.emulator.google`). Internal.
-- @module gauth.emulator.metadata_server

local httpd = require "gauth.emulator.httpd"
local common = require "gauth.emulator.common"

local tonumber = tonumber
local concat = table.concat
local match = string.match

local TEXT_TYPE = common.TEXT_TYPE
local json = common.json
local split_words = common.split_words
local reply = common.reply

local _M = { _VERSION = "0.1.0" }

-- The account the metadata server speaks for: the configured one, else the
-- first service account we were given, else a Compute Engine default.
function _M.metadata_email(self)
  return self.metadata_email_cfg or self.first_account
    or (self.numeric_project .. "-compute@developer.gserviceaccount.com")
end

-- ------------------------------------------------------------------------
-- GCE metadata server

local function md_reply(status, body, ctype)
  return reply(status, body, ctype or TEXT_TYPE, { ["Metadata-Flavor"] = "Google" })
end

function _M.metadata(self, req, entry)
  entry.endpoint = "metadata"
  local path = req.path
  if path == "/" or path == "/computeMetadata/" then
    return md_reply(200, "computeMetadata/\n")
  end
  if req.headers["metadata-flavor"] ~= "Google" then
    entry.error = "missing Metadata-Flavor header"
    return md_reply(403, "Your client does not have permission to get URL "
      .. path .. " from this server. Missing Metadata-Flavor:Google header.\n",
      "text/html; charset=UTF-8")
  end
  if req.headers["x-forwarded-for"] then
    -- The real server refuses proxied requests: a guard against SSRF.
    entry.error = "X-Forwarded-For present"
    return md_reply(403, "Your client does not have permission to get URL "
      .. path .. " from this server.\n", "text/html; charset=UTF-8")
  end
  if req.method ~= "GET" then
    return md_reply(405, "Method not allowed\n", "text/html; charset=UTF-8")
  end
  local rel = match(path, "^/computeMetadata/v1/?(.*)$")
  if not rel then return md_reply(404, "Not Found\n", "text/html; charset=UTF-8") end
  local q = req.query
  local function value(v)
    if q.alt == "json" then return md_reply(200, json(v), "application/json") end
    return md_reply(200, v)
  end
  if rel == "" then return md_reply(200, "instance/\nproject/\nuniverse/\n") end
  if rel == "project/project-id" then return value(self.project) end
  if rel == "project/numeric-project-id" then return value(self.numeric_project) end
  if rel == "instance/zone" then
    return value("projects/" .. self.numeric_project .. "/zones/us-central1-a")
  end
  if rel == "instance/id" then return value("4520031799277581759") end
  if rel == "instance/hostname" then
    return value("gauth-emulator.us-central1-a.c." .. self.project .. ".internal")
  end
  if rel == "universe/universe-domain" then return value("googleapis.com") end
  if rel == "instance/service-accounts" or rel == "instance/service-accounts/" then
    return md_reply(200, "default/\n" .. self:metadata_email() .. "/\n")
  end
  local acct, what = match(rel, "^instance/service%-accounts/([^/]+)/?(.*)$")
  if not acct then return md_reply(404, "Not Found\n", "text/html; charset=UTF-8") end
  acct = httpd.unescape(acct)
  if acct ~= "default" and acct ~= self:metadata_email() then
    return md_reply(404, "Not Found\n", "text/html; charset=UTF-8")
  end
  local email = self:metadata_email()
  entry.account = email
  if what == "" then
    if q.recursive == "true" then
      return md_reply(200, json({ aliases = { "default" }, email = email,
                                  scopes = self.metadata_scopes }), "application/json")
    end
    return md_reply(200, "aliases\nemail\nidentity\nscopes\ntoken\n")
  elseif what == "email" then
    return value(email)
  elseif what == "aliases" then
    return value("default\n")
  elseif what == "scopes" then
    return value(concat(self.metadata_scopes, "\n") .. "\n")
  elseif what == "token" then
    local scopes = self.metadata_scopes
    if q.scopes and q.scopes ~= "" then scopes = split_words(q.scopes, ",") end
    entry.scopes = scopes
    local acct_entry = self.accounts[email]
    local tok, expires_in = self:issue({ kind = "metadata", email = email,
      scopes = scopes, client_id = acct_entry and acct_entry.client_id })
    entry.issued = "access_token"
    return md_reply(200, json({ access_token = tok, expires_in = expires_in,
                                token_type = "Bearer" }), "application/json")
  elseif what == "identity" then
    if not q.audience or q.audience == "" then
      return md_reply(400, "non-empty audience parameter required\n",
                      "text/html; charset=UTF-8")
    end
    local full = q.format == "full"
    local acct_entry = self.accounts[email]
    local extra
    if full then
      extra = { google = { compute_engine = {
        project_id = self.project, project_number = tonumber(self.numeric_project),
        zone = "us-central1-a", instance_id = "4520031799277581759",
        instance_name = "gauth-emulator" } } }
    end
    local idt, err = self:id_token(q.audience, email,
      acct_entry and acct_entry.client_id, full, extra)
    if not idt then error(err) end
    entry.issued = "id_token"
    return md_reply(200, idt)
  end
  return md_reply(404, "Not Found\n", "text/html; charset=UTF-8")
end

return _M
