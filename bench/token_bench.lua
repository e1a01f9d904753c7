--- Token benchmark: cached token() calls per second, and full refreshes
-- (sign an RS256 assertion + POST it + parse the answer) per second against
-- a local HTTPS endpoint that answers at once (nginx with a fixed token,
-- bench/nginx_fixed.sh), over one kept-alive connection and over a new
-- connection (TCP + TLS handshake) each time.
--
--   lua5.4 bench/token_bench.lua [URL CA_FILE]
--   luajit bench/token_bench.lua [URL CA_FILE]
--
-- Without URL it starts bench/nginx_fixed.sh itself (and stops it after).
-- Prints `name value unit` lines; names end in the interpreter's name.
-- Each figure is the best of BENCH_ROUNDS rounds (default 3) of
-- BENCH_SECONDS each (default 1).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luav = jit and "5.1" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luav .. "/?.so;" .. package.cpath

local core = require "gauth.core"
local sa = require "gauth.service_account"
local curl = require "gauth.transport.curl"
local token_cache = require "gauth.token_cache"

local interp = jit and "luajit" or ("lua" .. luav)
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 1
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3
local monotonic = core.monotonic

local function sh(cmd)
  local p = assert(io.popen(cmd))
  local out = p:read("*a")
  local ok = p:close()
  return out, ok
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

local url, ca_file = arg[1], arg[2]
local nginx_dir
if not url then
  nginx_dir = (sh("mktemp -d /tmp/gauth-bench.XXXXXX"):gsub("%s+$", ""))
  local out = sh("sh " .. q(here .. "/nginx_fixed.sh") .. " start " .. q(nginx_dir))
  url = out:match("NGINX_URL=(%S+)")
  ca_file = out:match("NGINX_CA=(%S+)")
  if not url then
    io.stderr:write("token_bench: cannot start nginx:\n", out, "\n")
    os.exit(1)
  end
end

local function cleanup()
  if nginx_dir then
    sh("sh " .. q(here .. "/nginx_fixed.sh") .. " stop " .. q(nginx_dir))
    sh("rm -rf " .. q(nginx_dir))
    nginx_dir = nil
  end
end

-- A fresh RSA-2048 key, as in a real key file.
local keyfile = os.tmpname()
local _, ok = sh("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "
                 .. q(keyfile) .. " 2>/dev/null")
local f = io.open(keyfile, "rb")
local pem = f and f:read("*a")
if f then f:close() end
os.remove(keyfile)
if not ok or not pem or pem == "" then
  cleanup()
  io.stderr:write("token_bench: openssl genpkey failed\n")
  os.exit(1)
end

local info = {
  type = "service_account",
  project_id = "bench-project",
  private_key_id = "0123456789abcdef0123456789abcdef01234567",
  private_key = pem,
  client_email = "bench@bench-project.iam.gserviceaccount.com",
  token_uri = url .. "/token",
}
local SCOPES = { "https://www.googleapis.com/auth/cloud-platform" }

local function report(name, value, unit)
  io.write(string.format("%s_%s %.0f %s\n", name, interp, value, unit))
  io.flush()
end

-- Run `step` in batches for SECONDS, ROUNDS times; returns the best
-- round's calls/s (the round least disturbed by other processes, as
-- timeit reports its minimum; token_ref.py does the same).
local function rate(step, batch)
  batch = batch or 1
  local best = 0
  for _ = 1, ROUNDS do
    local n, t0 = 0, monotonic()
    local t
    repeat
      for _ = 1, batch do step() end
      n = n + batch
      t = monotonic()
    until t - t0 >= SECONDS
    local r = n / (t - t0)
    if r > best then best = r end
  end
  return best
end

local function check(tok, err)
  if not tok then
    cleanup()
    error("token_bench: " .. tostring(err))
  end
end

local ok_run, run_err = pcall(function()
  -- 1. Cached token(): the hot path.
  local creds = assert(sa.from_info(info, { scopes = SCOPES, ca_file = ca_file,
                                            cache = token_cache.new() }))
  check(creds:token())
  local token = creds.token
  report("token_cached", rate(function() token(creds) end, 100000), "calls/s")

  -- 2. The assertion alone (RS256 signature + JSON): the floor of a refresh.
  report("assertion_sign", rate(function() check(creds:assertion()) end, 10), "signs/s")

  -- 3. Full refreshes over one kept-alive connection.
  local function refresh(c)
    c:invalidate()
    check(c:token())
  end
  for _ = 1, 50 do refresh(creds) end
  report("token_refresh_keepalive", rate(function() refresh(creds) end), "refreshes/s")

  -- 4. Full refreshes with a new connection (and TLS handshake) each time.
  local fresh = {
    request = function(_, req)
      local t = assert(curl.new({ ca_file = ca_file }))
      local res, err = t:request(req)
      t:close()
      return res, err
    end,
  }
  local creds2 = assert(sa.from_info(info, { scopes = SCOPES, http = fresh,
                                             cache = token_cache.new() }))
  for _ = 1, 10 do refresh(creds2) end
  report("token_refresh_new_conn", rate(function() refresh(creds2) end), "refreshes/s")
end)

cleanup()
if not ok_run then
  io.stderr:write(tostring(run_err), "\n")
  os.exit(1)
end
