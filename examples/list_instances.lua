--- The complete example of Google's "Using OAuth 2.0 for Server to Server
-- Applications", in Lua: print a JSON list of the Cloud SQL instances of a
-- project, with a service account's key file and the Cloud SQL Admin scope.
--
--   lua examples/list_instances.lua [KEY_FILE [PROJECT]]
--
-- KEY_FILE defaults to $GOOGLE_APPLICATION_CREDENTIALS, PROJECT to
-- exemplary-example-123. Against Google, that is all.
--
-- Against gauth's emulator (what `make demo` does), with no Google account:
--
--   bin/gauth-emulator --new-key-file /tmp/sa.json &    # prints its URL
--   GAUTH_DISCOVERY_URL='http://127.0.0.1:PORT/discovery/v1/apis/{api}/{apiVersion}/rest' \
--     lua examples/list_instances.lua /tmp/sa.json
--
-- The throwaway key file's token_uri already points at the emulator;
-- GAUTH_DISCOVERY_URL points the Discovery fetch there too (the document
-- it serves sends the API calls to it). GAUTH_TOKEN_URI overrides the key
-- file's token_uri and GAUTH_SQLADMIN_VERSION the API version (v1beta4),
-- as in the other examples. From a clone, put lua/ and build/<version>/ on
-- LUA_PATH / LUA_CPATH (or install with `luarocks make`).
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

-- cjson writes "/" as "\/"; both are JSON, the first is easier to read.
print((cjson.encode(response):gsub("\\/", "/")))
