--- execute() benchmark: calls per second of `req:execute()` against a local
-- HTTPS endpoint that answers at once with a fixed JSON body (nginx,
-- bench/nginx_fixed.sh: `/json`), over one kept-alive connection.
--
--   lua5.4 bench/execute_bench.lua URL CA_FILE KEY_FILE
--   luajit bench/execute_bench.lua URL CA_FILE KEY_FILE
--
-- The service comes from a tiny Discovery document made here (one method,
-- `fixed.get`, GET `<URL>/json`, response schema, no parameters) with the
-- real machinery: `build_from_document`, the libcurl transport, and
-- service-account credentials (KEY_FILE: an RSA private key in PEM) whose
-- token came from `<URL>/token` (one exchange, RS256, at warm-up) and is then served from their cache, as in
-- an application between refreshes. Each call builds the request, applies
-- the credentials (token() with its clock check), sends it, checks the
-- status and decodes the JSON answer.
--
-- Prints `execute_<lua> <rate> calls/s` (wall clock: the work is mostly
-- I/O): the best burst of 1000 calls in BENCH_ROUNDS rounds (default 3)
-- of BENCH_SECONDS each (default 1).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luav = jit and "5.1" or _VERSION:match("%d+%.%d+")  -- luacheck: ignore
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luav .. "/?.so;" .. package.cpath

local core = require "gauth.core"
local discovery = require "gauth.discovery"
local sa = require "gauth.service_account"
local curl = require "gauth.transport.curl"

local interp = jit and "luajit" or ("lua" .. luav)  -- luacheck: ignore
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 1
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3
local monotonic = core.monotonic

local url, ca_file, keyfile = arg[1], arg[2], arg[3]
if not url or not ca_file or not keyfile then
  io.stderr:write("usage: execute_bench.lua URL CA_FILE KEY_FILE\n")
  os.exit(2)
end

local f = keyfile and io.open(keyfile, "rb")
local pem = f and f:read("*a")
if f then f:close() end
if not pem or pem == "" then
  io.stderr:write("execute_bench: cannot read the key file ", tostring(keyfile), "\n")
  os.exit(1)
end

local http = assert(curl.new({ ca_file = ca_file }))
local creds = assert(sa.from_info({
  type = "service_account",
  project_id = "bench-project",
  private_key_id = "0123456789abcdef0123456789abcdef01234567",
  private_key = pem,
  client_email = "bench@bench-project.iam.gserviceaccount.com",
  token_uri = url .. "/token",
}, { scopes = { "https://www.googleapis.com/auth/cloud-platform" }, http = http }))

local DOC = {
  kind = "discovery#restDescription", discoveryVersion = "v1",
  id = "bench:v1", name = "bench", version = "v1",
  rootUrl = url .. "/", servicePath = "",
  schemas = { Fixed = { id = "Fixed", type = "object", properties = {
    kind = { type = "string" },
    items = { type = "array", items = { type = "string" } } } } },
  resources = { fixed = { methods = { get = {
    id = "bench.fixed.get", path = "json", httpMethod = "GET",
    response = { ["$ref"] = "Fixed" } } } } },
}

local svc = assert(discovery.build_from_document(DOC, { credentials = creds, http = http }))
local fixed = svc:fixed()

-- Warm up: the token exchange, the connection, LuaJIT's traces.
for _ = 1, 200 do
  local resp, err = fixed:get():execute()
  if not resp then
    io.stderr:write("execute_bench: ", tostring(err), "\n")
    os.exit(1)
  end
  assert(resp.kind == "bench#fixed", "unexpected answer")
end

-- The best burst of BURST calls over SECONDS per round: on a shared
-- machine the rate moves with other load; the best window is the one
-- least disturbed, and bench/execute_bench.sh measures the floor alike.
local BURST = 1000
local best = 0
for _ = 1, ROUNDS do
  collectgarbage()
  local start = monotonic()
  repeat
    local t0 = monotonic()
    for _ = 1, BURST do
      local resp = fixed:get():execute()
      if not resp then error("execute failed") end
    end
    local t = monotonic()
    local r = BURST / (t - t0)
    if r > best then best = r end
  until t - start >= SECONDS
end
io.write(string.format("execute_%s %.0f calls/s\n", interp, best))
