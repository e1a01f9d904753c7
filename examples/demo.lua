--- `make demo`: Google's complete server-to-server example, run against
-- gauth's built-in emulator with a throwaway service-account key.
--
-- It starts the emulator on loopback, writes a fresh key file whose
-- token_uri points at it, runs examples/list_instances.lua exactly as a
-- user would (key file + scopes -> token -> discovery.build -> list), and
-- prints what the emulator saw: the token exchange and the API call.

local emulator = require "gauth.emulator"
local cjson = require "cjson"

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
-- The interpreter running this script (lowest index of `arg`, past any -e).
local lua = "lua"
do
  local i = -1
  while arg and arg[i] do lua = arg[i]; i = i - 1 end
end

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -m 700 " .. dir))
local key_file = dir .. "/service.json"

local emu = assert(emulator.start{ new_key_file = key_file })

local function q(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

print("== gauth demo: the guide's complete example against the emulator at " .. emu.url)
print("   key file (throwaway, token_uri -> emulator): " .. key_file)
print("")
print("$ lua examples/list_instances.lua " .. key_file)
local cmd = table.concat({
  "GAUTH_DISCOVERY_URL=" .. q(emu.discovery_url),
  "LUA_PATH=" .. q(package.path), "LUA_CPATH=" .. q(package.cpath),
  q(lua), q(here .. "/list_instances.lua"), q(key_file),
}, " ")
local ok = os.execute(cmd)
print("")

print("== what happened (the emulator's trace; tokens and signatures are never shown)")
local trace = assert(emu:requests())
for i, r in ipairs(trace) do
  local line = string.format("%2d. %-6s %-52s -> %s", i, r.method, r.path, tostring(r.status))
  print(line)
  if r.grant_type then
    print("      grant_type: " .. r.grant_type)
  end
  if r.claims then
    local keys = {}
    for k in pairs(r.claims) do keys[#keys + 1] = k end
    table.sort(keys)
    for _, k in ipairs(keys) do
      print(string.format("      assertion %-6s %s", k .. ":", (cjson.encode(r.claims[k]):gsub("\\/", "/"))))
    end
  end
  if r.call then print("      call: " .. tostring(r.call)) end
  if r.principal then print("      as:   " .. tostring(r.principal)) end
end

emu:stop()
os.execute("rm -rf " .. q(dir))
if not (ok == true or ok == 0) then
  io.stderr:write("demo: the example failed\n")
  os.exit(1)
end
