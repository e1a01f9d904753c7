-- The Redis fleet store (issue 16): a fleet of 3 nginx nodes x 2 workers
-- with gauth.token_cache.redis (encryption on) beside the same fleet with
-- the shared dict only, in the same run, against one loopback token
-- endpoint (spec/support/fake_google.py) and one redis-server on loopback.
--
--   luajit bench/redis_fleet_bench.lua      (from the repository root)
--
-- Prints "name value unit" lines (bench/run.sh collects them):
--   fleet_<setup>_cold_exchanges  token exchanges for one cold burst of
--                                 60 requests (20 per node, all at once)
--   fleet_<setup>_cold_rps        that burst's requests/s
--   fleet_<setup>_warm_rps        requests/s of wrk on the 3 nodes at once
--                                 (best of BENCH_ROUNDS alternating rounds)
--   fleet_layer_<memory|dict|redis>_p50_us, _p99_us  creds:token() that
--                                 finds the token in that layer (in nginx)
-- <setup> is "redis" or "shdict". BENCH_SECONDS (per round, default 2) and
-- BENCH_ROUNDS (default 2) tune it.
package.path = "lua/?.lua;lua/?/init.lua;spec/?.lua;" .. package.path
package.cpath = "build/5.1/?.so;" .. package.cpath

local helpers = require "helpers"
local nginx = require "support.nginx"
local socket = require "socket"
local cjson = require "cjson.safe"

local q = helpers.shell_quote
local secs = tonumber(os.getenv("BENCH_SECONDS") or "") or 2
local rounds = tonumber(os.getenv("BENCH_ROUNDS") or "") or 2

local fake = helpers.start_fake({ tls = true })
local sa_path, sa_info = helpers.make_service_account_file({
  token_uri = "https://localhost:" .. fake.port .. "/token" })
fake:config({ public_keys = { [sa_info.kid] = sa_info.public_pem },
              token_uri = "https://localhost:" .. fake.port .. "/token" })
local certs = helpers.certs()

local dir = helpers.tmpname("redis-bench")
os.execute("mkdir -p " .. q(dir))
local rport = nginx.free_port()
assert(helpers.sh(("redis-server --port %d --bind 127.0.0.1 --save '' --appendonly no "
  .. "--dir %s --daemonize yes --pidfile %s --logfile %s")
  :format(rport, q(dir), q(dir .. "/redis.pid"), q(dir .. "/redis.log"))))
local deadline = socket.gettime() + 20
while not select(2, helpers.sh("redis-cli -p " .. rport .. " ping")):match("PONG") do
  assert(socket.gettime() < deadline, "redis-server did not start")
  socket.sleep(0.02)
end

local fleets = {}
local function stop_all()
  for _, f in pairs(fleets) do for _, srv in ipairs(f) do srv:stop() end end
  local pid = helpers.read_file(dir .. "/redis.pid")
  if pid then os.execute("kill -KILL " .. pid:match("%d+") .. " 2>/dev/null") end
  fake:stop()
end

local function start_fleet(with_redis)
  local redis = with_redis and ("{ host = '127.0.0.1', port = " .. rport
    .. ", encryption_key = string.rep('ab', 32) }") or "nil"
  local app = 'require("support.ngx_redis_app")'
  local list = {}
  for i = 1, 3 do
    list[i] = assert(nginx.start({
      workers = 2, trusted_ca = certs.ca_file, log_level = "warn",
      http = "lua_shared_dict gauth 1m;\ninit_by_lua_block { " .. app .. (".init({ sa = %q, redis = %s }) }")
        :format(sa_path, redis),
      server = ([[
        location = /tok { content_by_lua_block { @APP@.token() } }
        location = /plain { content_by_lua_block { @APP@.plain() } }
        location = /layers { content_by_lua_block { @APP@.layers() } }
      ]]):gsub("@APP@", app),
    }))
  end
  return list
end

local function exchanges() return #fake:requests("/token") end

local function cold_burst(list, cred, per)
  local args = { "curl -s --parallel --parallel-immediate --parallel-max 200 --max-time 60" }
  for _, srv in ipairs(list) do
    for _ = 1, per do args[#args + 1] = q(srv.url .. "/plain?cred=" .. cred) .. " -o /dev/null" end
  end
  local before = exchanges()
  local t0 = socket.gettime()
  assert(helpers.sh(table.concat(args, " ")))
  local dt = socket.gettime() - t0
  return exchanges() - before, (#list * per) / dt
end

-- wrk on every node at once; the sum of their requests/s.
local function warm(list, cred)
  local outs = {}
  for i, srv in ipairs(list) do
    outs[i] = dir .. "/wrk." .. i
    os.execute(("wrk -t1 -c16 -d%ds %s > %s 2>&1 &")
      :format(secs, q(srv.url .. "/plain?cred=" .. cred), q(outs[i])))
  end
  socket.sleep(secs + 0.5)
  local total = 0
  for _, f in ipairs(outs) do
    local text
    local guard = socket.gettime() + 30
    repeat
      text = helpers.read_file(f) or ""
      if not text:find("Requests/sec", 1, true) then socket.sleep(0.1) end
    until text:find("Requests/sec", 1, true) or socket.gettime() > guard
    total = total + (tonumber(text:match("Requests/sec:%s*([%d%.]+)")) or 0)
  end
  return total
end

local ok, err = pcall(function()
  fleets.redis = start_fleet(true)
  fleets.shdict = start_fleet(false)
  local out = {}
  for _, setup in ipairs({ "redis", "shdict" }) do
    local n, rps = cold_burst(fleets[setup], "cold-" .. setup, 20)
    out[#out + 1] = ("fleet_%s_cold_exchanges %d exchanges"):format(setup, n)
    out[#out + 1] = ("fleet_%s_cold_rps %.1f req/s"):format(setup, rps)
  end
  local best = { redis = 0, shdict = 0 }
  for _ = 1, rounds do
    for _, setup in ipairs({ "redis", "shdict" }) do
      local r = warm(fleets[setup], "cold-" .. setup)
      if r > best[setup] then best[setup] = r end
    end
  end
  for _, setup in ipairs({ "redis", "shdict" }) do
    out[#out + 1] = ("fleet_%s_warm_rps %.1f req/s"):format(setup, best[setup])
  end
  local status, body = fleets.redis[1]:get("/layers?cred=cold-redis&n=500")
  local l = cjson.decode(body or "")
  assert(status == 200 and l, "layers: " .. tostring(body))
  for _, layer in ipairs({ "memory", "dict", "redis" }) do
    out[#out + 1] = ("fleet_layer_%s_p50_us %.1f us"):format(layer, l[layer].p50)
    out[#out + 1] = ("fleet_layer_%s_p99_us %.1f us"):format(layer, l[layer].p99)
  end
  print(table.concat(out, "\n"))
end)
stop_all()
if not ok then
  io.stderr:write("redis_fleet_bench: ", tostring(err), "\n")
  os.exit(1)
end
