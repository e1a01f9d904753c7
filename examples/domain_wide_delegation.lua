--- Domain-wide delegation: a service account acting for a user of a
-- Google Workspace domain whose administrator granted it these scopes
-- ("Delegating domain-wide authority to the service account" in Google's
-- server-to-server guide).
--
--   lua examples/domain_wide_delegation.lua [KEY_FILE [USER_EMAIL [PROJECT]]]
--
-- KEY_FILE defaults to $GOOGLE_APPLICATION_CREDENTIALS, USER_EMAIL to
-- $GAUTH_SUBJECT. GAUTH_TOKEN_URI, GAUTH_DISCOVERY_URL and
-- GAUTH_SQLADMIN_VERSION point it at a local emulator, as in
-- examples/service_account.lua.
local service_account = require "gauth.service_account"
local discovery = require "gauth.discovery"
local cjson = require "cjson"

local SCOPES = { "https://www.googleapis.com/auth/sqlservice.admin" }
local SERVICE_ACCOUNT_FILE = arg[1] or os.getenv("GOOGLE_APPLICATION_CREDENTIALS")
                             or "/path/to/service.json"
local USER = arg[2] or os.getenv("GAUTH_SUBJECT") or "user@example.org"
local PROJECT = arg[3] or "exemplary-example-123"

local credentials = assert(service_account.from_file(SERVICE_ACCOUNT_FILE, {
  scopes = SCOPES,
  token_uri = os.getenv("GAUTH_TOKEN_URI"),
}))
-- The same account, acting for USER: the grant assertion carries sub = USER.
local delegated_credentials = credentials:with_subject(USER)

local sqladmin = assert(discovery.build("sqladmin",
  os.getenv("GAUTH_SQLADMIN_VERSION") or "v1beta4", {
    credentials = delegated_credentials,
    discovery_url = os.getenv("GAUTH_DISCOVERY_URL"),
  }))
local response = assert(sqladmin:instances():list({ project = PROJECT }):execute())

print(cjson.encode(response))
