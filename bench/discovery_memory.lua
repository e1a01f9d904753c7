--- Discovery memory: the peak resident memory (VmHWM) of a whole Lua
-- process that builds compute v1 (a 4 MB document) and 1,000 requests
-- from it, beside a process that only decodes the document with cjson.
-- Each mode runs in a process of its own (bench/run.sh starts them):
--
--   lua5.4 bench/discovery_memory.lua gauth   -> discovery_peak_gauth_lua5.4 <MiB>
--   lua5.4 bench/discovery_memory.lua cjson   -> discovery_peak_cjson_lua5.4 <MiB>
--
-- Both read the text the same way (gzip -dc spec/fixtures/discovery/
-- compute.v1.json.gz) and let it go once it is decoded; the gauth process
-- keeps its 1,000 requests (instances.list, a new project each, and
-- instances.insert with a body every tenth) until it measures. Linux only
-- (/proc/self/status).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
local luav = jit and "5.1" or _VERSION:match("%d+%.%d+")
package.cpath = root .. "/build/" .. luav .. "/?.so;" .. package.cpath

local mode = arg[1]
if mode ~= "gauth" and mode ~= "cjson" then
  io.stderr:write("usage: discovery_memory.lua gauth|cjson\n")
  os.exit(2)
end
local interp = jit and "luajit" or ("lua" .. luav)

local function peak_mib()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmHWM:%s*(%d+)")
    if kb then return tonumber(kb) / 1024 end
  end
  error("no VmHWM in /proc/self/status")
end

-- Loaded before the text is read, as an application has them.
local cjson = require "cjson"
local discovery = mode == "gauth" and require "gauth.discovery"

local path = root .. "/spec/fixtures/discovery/compute.v1.json.gz"
local f = assert(io.popen("gzip -dc '" .. path .. "'", "r"))
local text = f:read("*a")
f:close()
assert(#text > 4e6, "compute.v1 could not be read")

local keep, sink = {}, 0
if mode == "cjson" then
  local doc = cjson.decode(text)
  text = nil  -- luacheck: ignore
  keep[1] = doc
else
  local svc = assert(discovery.build_from_document(text))
  text = nil  -- luacheck: ignore
  local instances = svc:instances()
  for i = 1, 1000 do
    local r
    if i % 10 == 0 then
      r = instances:insert({ project = "project-" .. i, zone = "us-central1-a",
                             body = { name = "vm-" .. i, machineType = "e2-small" } })
    else
      r = instances:list({ project = "project-" .. i, zone = "us-central1-a",
                           maxResults = 10, filter = "status = RUNNING" })
    end
    keep[i] = r
    sink = sink + #r.uri
  end
  keep.svc = svc
end
collectgarbage()
io.write(string.format("discovery_peak_%s_%s %.1f MiB\n", mode, interp, peak_mib()))
if sink < 0 then print(keep) end
