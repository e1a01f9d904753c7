--- Google's "Using OAuth 2.0 for Server to Server Applications", complete
-- example, with Application Default Credentials: the same program runs
-- with a key file, gcloud's credentials, on App Engine or on Compute
-- Engine, and lists the Cloud SQL instances of a project.
--
--   lua examples/default_credentials.lua [PROJECT]
--
-- Credentials come from GOOGLE_APPLICATION_CREDENTIALS, else gcloud's
-- file (`gcloud auth application-default login`), else App Engine, else
-- the metadata server; the project from GOOGLE_CLOUD_PROJECT or the
-- credentials. When none is found, the error says what was tried.
-- Against the local emulator (bin/gauth-emulator): its key file in
-- GOOGLE_APPLICATION_CREDENTIALS (or GCE_METADATA_HOST=127.0.0.1:PORT),
-- and GAUTH_DISCOVERY_URL (its Discovery URL template).
local gauth = require "gauth"
local discovery = require "gauth.discovery"
local cjson = require "cjson"

local SCOPES = { "https://www.googleapis.com/auth/sqlservice.admin" }

local credentials, project = gauth.default({ scopes = SCOPES })
if not credentials then
  io.stderr:write(tostring(project), "\n")
  os.exit(1)
end
local PROJECT = arg[1] or project or "exemplary-example-123"

local sqladmin = assert(discovery.build("sqladmin",
  os.getenv("GAUTH_SQLADMIN_VERSION") or "v1beta4", {
    credentials = credentials,
    discovery_url = os.getenv("GAUTH_DISCOVERY_URL"),
  }))
local response = assert(sqladmin:instances():list({ project = PROJECT }):execute())

print(cjson.encode(response))
