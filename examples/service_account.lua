--- "Other platforms" in Google's server-to-server guide: credentials from a
-- service account's key file and the scopes the application needs. Prints
-- when the access token expires and the header gauth would send (with the
-- token itself left out). examples/list_instances.lua goes on to call an API.
--
--   lua examples/service_account.lua [KEY_FILE]
--
-- KEY_FILE defaults to $GOOGLE_APPLICATION_CREDENTIALS. Against the local
-- emulator: `bin/gauth-emulator --new-key-file /tmp/sa.json` writes a key
-- file whose token_uri points at it; pass that file.
local service_account = require "gauth.service_account"

local SCOPES = { "https://www.googleapis.com/auth/sqlservice.admin" }
local SERVICE_ACCOUNT_FILE = arg[1] or os.getenv("GOOGLE_APPLICATION_CREDENTIALS")
                             or "/path/to/service.json"

local credentials, err = service_account.from_file(SERVICE_ACCOUNT_FILE, {
  scopes = SCOPES,
  token_uri = os.getenv("GAUTH_TOKEN_URI"),
})
if not credentials then
  io.stderr:write(tostring(err), "\n")
  os.exit(1)
end

local token, expires_at = credentials:token()
if not token then
  io.stderr:write(tostring(expires_at), "\n")
  os.exit(1)
end
local headers = assert(credentials:apply({}))
print("service account: " .. credentials.service_account_email)
print(string.format("token expires in %.0f s", expires_at - os.time()))
print("authorization: " .. headers.authorization:sub(1, 7) .. "<" .. #token .. " bytes>")
