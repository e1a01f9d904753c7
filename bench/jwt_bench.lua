--- RS256 JWTs signed per second: with a key loaded once (`jwt.load_key`)
-- and with the PEM passed on every call, so the cost of parsing shows.
--
--   lua5.4 bench/jwt_bench.lua KEY.pem
--
-- Prints `name value unit` lines; each figure is the best of BENCH_ROUNDS
-- rounds (default 3) of BENCH_SECONDS each (default 1).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luav = jit and "5.1" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luav .. "/?.so;" .. package.cpath

local core = require "gauth.core"
local jwt = require "gauth.jwt"

local interp = jit and "luajit" or ("lua" .. luav)
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 1
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3
local monotonic = core.monotonic

local f = assert(io.open(assert(arg[1], "usage: jwt_bench.lua KEY.pem"), "rb"))
local pem = f:read("*a")
f:close()
local key = assert(jwt.load_key(pem))

local function rate(fn)
  local best = 0
  for _ = 1, ROUNDS do
    local n, t0 = 0, monotonic()
    local deadline = t0 + SECONDS
    repeat
      for _ = 1, 20 do fn() end
      n = n + 20
    until monotonic() >= deadline
    local r = n / (monotonic() - t0)
    if r > best then best = r end
  end
  return best
end

-- The claims a service account signs for the token exchange.
local now = os.time()
local claims = {
  iss = "bench@example-project.iam.gserviceaccount.com",
  scope = "https://www.googleapis.com/auth/sqlservice.admin",
  aud = "https://oauth2.googleapis.com/token",
  iat = now, exp = now + 3600,
}
local opts = { kid = "0123456789abcdef0123456789abcdef01234567" }

print(string.format("jwt_sign_loaded_%s %.0f jwt/s", interp,
  rate(function() assert(jwt.encode(claims, key, opts)) end)))
print(string.format("jwt_sign_pem_%s %.0f jwt/s", interp,
  rate(function() assert(jwt.encode(claims, pem, opts)) end)))
