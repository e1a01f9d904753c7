#!/bin/sh
# Google down (issue 18): p50/p99 latency of requests through the
# access-phase token recipe (README: access_by_lua sets the token, then
# proxy_pass) while the token endpoint answers 503 to everything, in two
# states: the cached token is past its refresh time but valid ("stale":
# served, a timer tries to refresh) and expired (every request fails at
# once: the failure is remembered for all workers). Beside the same
# proxying without gauth ("fixed"), measured with wrk --latency in the same
# run. Also counts what reached the token endpoint while it was down.
#
# The token's age is moved with the credentials' `now` option (an offset in
# a shared dict), not by waiting an hour.
#
#   sh bench/openresty_down_bench.sh
#
# Prints "name value unit" lines: openresty_down_{fixed,stale,expired}_{p50,p99}_ms,
# openresty_down_{stale,expired}_p99_ratio (to fixed), openresty_down_token_requests.
# BENCH_SECONDS (per measurement, default 2), BENCH_CONNECTIONS (default 32).
set -eu
cd "$(dirname "$0")/.."
root=$(pwd -P)
secs=${BENCH_SECONDS:-2}
conns=${BENCH_CONNECTIONS:-32}
workers=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}

for tool in nginx wrk luajit curl; do
  command -v $tool >/dev/null || { echo "openresty_down_bench: $tool is not installed" >&2; exit 1; }
done
[ -f build/5.1/gauth/core.so ] || { echo "openresty_down_bench: make LUA=luajit first" >&2; exit 1; }

unset LUA_PATH LUA_CPATH LUA_INIT
dir=$(mktemp -d /tmp/gauth-downbench.XXXXXX)
cleanup() {
  if [ -f "$dir/nginx.pid" ]; then
    pid=$(cat "$dir/nginx.pid")
    kill -TERM "$pid" 2>/dev/null || true
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() {
  luajit -e 'local s = require("socket").bind("127.0.0.1", 0)
    local _, p = s:getsockname(); s:close(); print(p)'
}

port=$(free_port)
api_port=$(free_port)
# A service-account key file whose token_uri is this nginx (plain http, loopback).
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$dir/key.pem" 2>/dev/null
cat >"$dir/mk.lua" <<'LUA'
local pem = io.open(arg[1]):read("*a")
local cjson = require("cjson")
io.open(arg[2], "w"):write(cjson.encode({ type = "service_account", project_id = "bench",
  private_key_id = "k1", private_key = pem, client_email = "bench@bench.iam.gserviceaccount.com",
  client_id = "1", token_uri = "http://127.0.0.1:" .. arg[3] .. "/ep_token" }))
LUA
luajit "$dir/mk.lua" "$dir/key.pem" "$dir/sa.json" "$port"

cdir=$(ls -d /usr/lib/*/lua/5.1 2>/dev/null | head -1)
ndk=$(sed -n 's/^load_module \([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-http-ndk.conf)
lua=$(sed -n 's/^load_module \([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-http-lua.conf)
case $ndk in /*) ;; *) ndk=/usr/share/nginx/$ndk ;; esac
case $lua in /*) ;; *) lua=/usr/share/nginx/$lua ;; esac
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
fixed_token="ya29.$(printf '%0170d' 0 | tr 0 f)"
mkdir -p "$dir/logs"

cat >"$dir/nginx.conf" <<EOF
load_module $ndk;
load_module $lua;
$user_line
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  lua_socket_log_errors off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  lua_package_path "$root/lua/?.lua;$root/lua/?/init.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua";
  lua_package_cpath "$root/build/5.1/?.so;$cdir/?.so";
  lua_shared_dict gauth 1m;
  lua_shared_dict bench 1m;
  init_by_lua_block {
    local bench = ngx.shared.bench
    creds = assert(require("gauth.service_account").from_file("$dir/sa.json", {
      scopes = { "https://www.googleapis.com/auth/cloud-platform" },
      -- The token's age, moved by the bench (seconds added to the clock).
      now = function() return ngx.now() + (bench:get("offset") or 0) end }))
  }

  server {
    listen 127.0.0.1:$api_port;
    location / { default_type application/json; return 200 '{"kind":"bench#fake"}'; }
  }
  upstream api {
    server 127.0.0.1:$api_port;
    keepalive 128;
  }

  server {
    listen 127.0.0.1:$port;
    proxy_http_version 1.1;
    proxy_set_header Connection "";

    # The token endpoint: a token when up, 503 when down; counts requests.
    location = /ep_token {
      content_by_lua_block {
        local bench = ngx.shared.bench
        bench:incr("hits " .. (bench:get("mode") or "up"), 1, 0)
        if bench:get("mode") == "down" then
          ngx.status = 503
          ngx.say('{"error":{"code":503,"status":"UNAVAILABLE","message":"down"}}')
          return
        end
        ngx.header["content-type"] = "application/json"
        ngx.say('{"access_token":"ya29.bench-' .. ngx.now() .. '","expires_in":3600,"token_type":"Bearer"}')
      }
    }
    location = /set {
      content_by_lua_block {
        ngx.shared.bench:set(ngx.var.arg_k, tonumber(ngx.var.arg_v) or ngx.var.arg_v)
        ngx.say("ok")
      }
    }
    location = /hits { content_by_lua_block { ngx.say(ngx.shared.bench:get("hits down") or 0) } }

    # The README's access-phase recipe.
    location /gauth/ {
      access_by_lua_block {
        local tok, err = creds:token()
        if not tok then
          ngx.log(ngx.INFO, "gauth: ", tostring(err))
          return ngx.exit(503)
        end
        ngx.req.set_header("Authorization", "Bearer " .. tok)
      }
      proxy_pass http://api/;
    }
    location /fixed/ {
      proxy_set_header Authorization "Bearer $fixed_token";
      proxy_pass http://api/;
    }
  }
}
EOF

nginx -p "$dir" -c "$dir/nginx.conf"
i=0
until curl -s -o /dev/null "http://127.0.0.1:$port/fixed/"; do
  sleep 0.05; i=$((i + 1))
  [ $i -gt 100 ] && { echo "openresty_down_bench: nginx did not start" >&2; cat "$dir/logs/error.log" >&2; exit 1; }
done
set_var() { curl -s -o /dev/null "http://127.0.0.1:$port/set?k=$1&v=$2"; }

# p50 and p99 in ms of `location` over $secs s.
lat() {
  wrk -t 2 -c "$conns" -d "${secs}s" --latency "http://127.0.0.1:$port/$1/" 2>&1 | awk -v n="$2" '
    function ms(v) { if (v ~ /us$/) return v / 1000; if (v ~ /ms$/) return v + 0; if (v ~ /s$/) return v * 1000; return v }
    /^ *50%/ { p50 = ms($2) } /^ *99%/ { p99 = ms($2) }
    /Non-2xx/ { non = $NF }
    END { printf "openresty_down_%s_p50_ms %.3f ms\nopenresty_down_%s_p99_ms %.3f ms\n", n, p50, n, p99
          if (non != "") printf "openresty_down_%s_non2xx %s responses\n", n, non }'
}

# A token while Google is up, then Google goes down.
code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/gauth/")
[ "$code" = 200 ] || { echo "openresty_down_bench: no first token ($code)" >&2; tail -5 "$dir/logs/error.log" >&2; exit 1; }
set_var mode down
lat fixed fixed >"$dir/fixed.txt"
# Past the refresh time (3600 - 225 s), before expiry: served while a timer tries.
set_var offset 3400
lat gauth stale >"$dir/stale.txt"
# Expired: no token to serve; the failure is remembered for all workers.
set_var offset 3700
lat gauth expired >"$dir/expired.txt"
cat "$dir/fixed.txt" "$dir/stale.txt" "$dir/expired.txt"
hits=$(curl -s "http://127.0.0.1:$port/hits")
echo "openresty_down_token_requests $hits requests to the dead endpoint"
f99=$(awk '/_p99_ms/ { print $2 }' "$dir/fixed.txt")
for s in stale expired; do
  awk -v f="$f99" -v n="$s" '/_p99_ms/ { printf "openresty_down_%s_p99_ratio %.3f (to fixed)\n", n, (f > 0) ? $2 / f : 0 }' "$dir/$s.txt"
done
