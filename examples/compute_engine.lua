--- Google's "Using OAuth 2.0 for Server to Server Applications", the
-- Compute Engine snippet, in Lua: the machine's service account, from the
-- metadata server, lists the Cloud SQL instances of a project.
--
--   lua examples/compute_engine.lua [PROJECT]
--
-- Runs on Compute Engine (and GKE, Cloud Run, Cloud Functions, App Engine
-- second generation). PROJECT defaults to the machine's project. The
-- instance must have been given scopes that allow Cloud SQL Admin (e.g.
-- cloud-platform). Against the local emulator (bin/gauth-emulator) instead:
-- GCE_METADATA_HOST=127.0.0.1:PORT and GAUTH_DISCOVERY_URL (its Discovery
-- URL template); GAUTH_SQLADMIN_VERSION picks the API version (v1beta4).
local compute_engine = require "gauth.compute_engine"
local discovery = require "gauth.discovery"
local cjson = require "cjson"

if not compute_engine.is_available() then
  -- The guide's note: detect this and use another mechanism
  -- (examples/default_credentials.lua finds one by itself).
  io.stderr:write("no metadata server here: not on Compute Engine\n")
  os.exit(1)
end

local credentials = assert(compute_engine.new())
local PROJECT = arg[1] or assert(compute_engine.project_id())

local sqladmin = assert(discovery.build("sqladmin",
  os.getenv("GAUTH_SQLADMIN_VERSION") or "v1beta4", {
    credentials = credentials,
    discovery_url = os.getenv("GAUTH_DISCOVERY_URL"),
  }))
local response = assert(sqladmin:instances():list({ project = PROJECT }):execute())

print(cjson.encode(response))
