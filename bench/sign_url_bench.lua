--- Cloud Storage V4 signed URLs per second: with a local RSA key (a
-- service-account key file: the signature is the cost, so the bound is
-- `openssl speed rsa2048` sign) and with an HMAC key.
--
--   lua5.4 bench/sign_url_bench.lua KEY.pem
--
-- Prints `name value unit` lines; each figure is the best of BENCH_ROUNDS
-- rounds (default 3) of BENCH_SECONDS each (default 1).

local here = (arg and arg[0] or ""):match("^(.*)/[^/]*$") or "."
local root = here .. "/.."
local luav = jit and "5.1" or _VERSION:match("%d+%.%d+")
package.path = root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. luav .. "/?.so;" .. package.cpath

local core = require "gauth.core"
local storage = require "gauth.storage"
local sa = require "gauth.service_account"

local interp = jit and "luajit" or ("lua" .. luav)
local SECONDS = tonumber(os.getenv("BENCH_SECONDS")) or 1
local ROUNDS = tonumber(os.getenv("BENCH_ROUNDS")) or 3
local monotonic = core.monotonic

local f = assert(io.open(assert(arg[1], "usage: sign_url_bench.lua KEY.pem"), "rb"))
local pem = f:read("*a")
f:close()
local creds = assert(sa.from_info({ type = "service_account", private_key = pem,
  client_email = "bench@example-project.iam.gserviceaccount.com", private_key_id = "k" }))

local function rate(fn)
  local best = 0
  for _ = 1, ROUNDS do
    local n, t0 = 0, monotonic()
    local deadline = t0 + SECONDS
    repeat
      for _ = 1, 10 do fn() end
      n = n + 10
    until monotonic() >= deadline
    local r = n / (monotonic() - t0)
    if r > best then best = r end
  end
  return best
end

-- The same request as bench/sign_url_ref.js signs with Node's client.
local now = 1577836800
local rsa = { credentials = creds, bucket = "bench-bucket", object = "dir/report 2024.pdf",
              method = "GET", expires = 900, now = now }
local hmac = { hmac = { access_id = "GOOG1EBENCHACCESSID", secret = "bench-secret-0123456789" },
               bucket = "bench-bucket", object = "dir/report 2024.pdf", method = "GET",
               expires = 900, now = now }
print(string.format("sign_url_rsa_%s %.0f url/s", interp,
  rate(function() assert(storage.signed_url(rsa)) end)))
print(string.format("sign_url_hmac_%s %.0f url/s", interp,
  rate(function() assert(storage.signed_url(hmac)) end)))
