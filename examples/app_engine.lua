--- Google's "Using OAuth 2.0 for Server to Server Applications", the App
-- Engine snippet, in Lua: the application's service account lists the
-- Cloud SQL instances of a project.
--
--   lua examples/app_engine.lua [PROJECT]
--
-- On App Engine the tokens come from the metadata server with the scopes
-- asked for. Elsewhere (a laptop, a test) App Engine credentials cannot
-- work, and, as the guide's note asks, the program detects that and falls
-- back to Application Default Credentials. PROJECT defaults to the
-- application's project. Against the local emulator (bin/gauth-emulator):
-- GAE_APPLICATION=s~PROJECT GCE_METADATA_HOST=127.0.0.1:PORT and
-- GAUTH_DISCOVERY_URL (its Discovery URL template).
local app_engine = require "gauth.app_engine"
local gauth = require "gauth"
local discovery = require "gauth.discovery"
local cjson = require "cjson"

local SCOPES = { "https://www.googleapis.com/auth/sqlservice.admin" }

local credentials, project = app_engine.new({ scopes = SCOPES })
if credentials then
  project = app_engine.project_id()
else
  io.stderr:write(tostring(project), "\n")
  credentials, project = assert(gauth.default({ scopes = SCOPES }))
end
local PROJECT = arg[1] or project or "exemplary-example-123"

local sqladmin = assert(discovery.build("sqladmin",
  os.getenv("GAUTH_SQLADMIN_VERSION") or "v1beta4", {
    credentials = credentials,
    discovery_url = os.getenv("GAUTH_DISCOVERY_URL"),
  }))
local response = assert(sqladmin:instances():list({ project = PROJECT }):execute())

print(cjson.encode(response))
