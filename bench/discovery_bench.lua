--- Discovery benchmark: request objects built per second for compute v1
-- `instances.list` with four parameters (project, zone, maxResults,
-- filter), and the time `build_from_document` takes on compute v1 (4 MB),
-- beside the time cjson alone takes to decode it.
--
--   lua5.4 bench/discovery_bench.lua
--   luajit bench/discovery_bench.lua
--
-- Reads spec/fixtures/discovery/compute.v1.json.gz (through gzip -dc). Prints `name value unit`
-- lines; names end in the interpreter's name:
--   request_build_<lua>          requests/s, the same values each time (what
--                                 an application building the same call for
--                                 a project and zone does)
--   request_build_unique_<lua>   requests/s, project, zone and filter new
--                                 each time (nothing memoised helps)
--   request_build_floor_<lua>    requests/s of the least any builder of
--                                 that request does in this interpreter:
--                                 four lookups, one concat, one object with
--                                 a metatable; no checks (the interpreter's
--                                 bound for request_build)
--   build_from_document_<lua>    ms per build_from_document(text)
--   json_decode_compute_<lua>    ms per cjson.decode(text), for scale
-- Every request built is kept for a while (a ring of 64), as a request is
-- when it is sent, so LuaJIT cannot skip making it; its method and uri are
-- read. Its headers are not: they are made when first read (execute()
-- makes each attempt's headers from the method's constants, so a request
-- that is only sent never needs a table of its own for them).
-- BENCH_SECONDS sets the time per measurement (default 2).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
local luav = jit and "5.1" or _VERSION:match("%d+%.%d+")
package.cpath = root .. "/build/" .. luav .. "/?.so;" .. package.cpath

local cjson = require "cjson"
local discovery = require "gauth.discovery"

local interp = jit and "luajit" or ("lua" .. luav)
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 2
local clock = os.clock  -- CPU time: the work here is all CPU

local path = root .. "/spec/fixtures/discovery/compute.v1.json.gz"
local f = assert(io.popen("gzip -dc '" .. path .. "'", "r"))
local text = f:read("*a")
f:close()
if #text == 0 then
  io.stderr:write("discovery_bench: ", path, " could not be read\n")
  os.exit(1)
end

-- Run fn(n) for growing n until it takes SECONDS; returns calls per second.
local function rate(fn)
  local n = 1000
  while true do
    collectgarbage()
    local t0 = clock()
    fn(n)
    local dt = clock() - t0
    if dt >= SECONDS then return n / dt end
    n = dt > 0.05 and math.ceil(n * SECONDS * 1.1 / dt) or n * 10
  end
end

-- Mean time of fn() over at least `reps` runs and SECONDS/2 of time, in ms.
local function time_ms(fn, reps)
  fn()  -- warm
  local n, total = 0, 0
  while n < reps or total < SECONDS / 2 do
    collectgarbage()
    local t0 = clock()
    fn()
    total = total + (clock() - t0)
    n = n + 1
  end
  return total / n * 1000
end

local function out(name, value, unit)
  io.write(string.format("%s_%s %.6g %s\n", name, interp, value, unit))
  io.flush()
end

local svc = assert(discovery.build_from_document(text))
local instances = svc:instances()
local sink, ring = 0, {}

local params = { project = "my-project", zone = "us-central1-a",
                 maxResults = 10, filter = "status = RUNNING" }
out("request_build", rate(function(n)
  for i = 1, n do
    local r = instances:list(params)
    ring[i % 64 + 1] = r
    sink = sink + #r.uri + #r.method
  end
end), "req/s")

-- The interpreter's floor: what is left of a builder with no checks at
-- all and every value already encoded (one lookup in a memo table each,
-- as gauth's builder does for values it has seen). Nothing can build the
-- same request object for less in this interpreter, so
-- request_build_floor / request_build_ref bounds what any Lua builder's
-- ratio to the reference can be here.
do
  local concat, setmetatable = table.concat, setmetatable
  local FB = { "https://compute.googleapis.com/compute/v1/projects/", "", "/zones/", "",
               "/instances?filter=", "", "&maxResults=", "", "&alt=json" }
  local ENC = { ["my-project"] = "my-project", ["us-central1-a"] = "us-central1-a",
                ["status = RUNNING"] = "status+%3D+RUNNING", [10] = "10" }
  local floor_mt = { __index = { method = "GET" } }
  local function floor_list(_, p)
    FB[2], FB[4], FB[6], FB[8] = ENC[p.project], ENC[p.zone], ENC[p.filter], ENC[p.maxResults]
    return setmetatable({ uri = concat(FB) }, floor_mt)
  end
  local probe = floor_list(nil, params)
  assert(probe.uri:find("status+%3D+RUNNING", 1, true) and #probe.uri > 80)
  out("request_build_floor", rate(function(n)
    for i = 1, n do
      local r = floor_list(instances, params)
      ring[i % 64 + 1] = r
      sink = sink + #r.uri + #r.method
    end
  end), "req/s")
end

-- Fresh values: the memo tables are bounded (512 entries), so cycling
-- through 4096 values misses every time.
local projects, zones, filters = {}, {}, {}
for i = 1, 4096 do
  projects[i] = "project-" .. i .. "-x"
  zones[i] = "europe-west" .. i .. "-b"
  filters[i] = "name = instance-" .. i
end
local p2 = { maxResults = 10 }
out("request_build_unique", rate(function(n)
  for i = 1, n do
    local k = i % 4096 + 1
    p2.project, p2.zone, p2.filter = projects[k], zones[k], filters[k]
    local r = instances:list(p2)
    ring[i % 64 + 1] = r
    sink = sink + #r.uri + #r.method
  end
end), "req/s")

out("build_from_document", time_ms(function()
  local s = discovery.build_from_document(text)
  sink = sink + (s and 1 or 0)
end, 10), "ms")

out("json_decode_compute", time_ms(function()
  local d = cjson.decode(text)
  sink = sink + (d and 1 or 0)
end, 10), "ms")

if sink == 0 or #ring == 0 then io.stderr:write("?\n") end
