--- Google's "Using OAuth 2.0 for Server to Server Applications", complete
-- example, in Lua: list the Cloud SQL instances of a project with a service
-- account's credentials.
--
--   lua examples/service_account.lua [KEY_FILE [PROJECT]]
--
-- KEY_FILE defaults to $GOOGLE_APPLICATION_CREDENTIALS. To run against a
-- local emulator instead of Google, set GAUTH_TOKEN_URI (its token
-- endpoint; the key file's token_uri otherwise) and GAUTH_DISCOVERY_URL
-- (its Discovery URL template); GAUTH_SQLADMIN_VERSION picks the API
-- version (default v1beta4).
local service_account = require "gauth.service_account"
local discovery = require "gauth.discovery"
local cjson = require "cjson"

local SCOPES = { "https://www.googleapis.com/auth/sqlservice.admin" }
local SERVICE_ACCOUNT_FILE = arg[1] or os.getenv("GOOGLE_APPLICATION_CREDENTIALS")
                             or "/path/to/service.json"
local PROJECT = arg[2] or "exemplary-example-123"

local credentials = assert(service_account.from_file(SERVICE_ACCOUNT_FILE, {
  scopes = SCOPES,
  token_uri = os.getenv("GAUTH_TOKEN_URI"),
}))

local sqladmin = assert(discovery.build("sqladmin",
  os.getenv("GAUTH_SQLADMIN_VERSION") or "v1beta4", {
    credentials = credentials,
    discovery_url = os.getenv("GAUTH_DISCOVERY_URL"),
  }))
local response = assert(sqladmin:instances():list({ project = PROJECT }):execute())

print(cjson.encode(response))
