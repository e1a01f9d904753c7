#!/bin/sh
# OpenResty (issue 7): requests/s through an nginx location that authorises
# with gauth (examples/openresty/handler.lua: access_by_lua sets the service
# account's token) and proxies to a local fake API, against the same
# location with a fixed Authorization header (no gauth), measured with wrk
# in one run, in alternating rounds. Also counts the requests that reached
# the token endpoint (gauth's emulator, plain HTTP on loopback) during the
# whole run, cold start included.
#
#   sh bench/openresty_bench.sh
#
# Prints "name value unit" lines (bench/run.sh collects them):
#   openresty_fixed_rps, openresty_gauth_rps, openresty_gauth_ratio (goal
#   >= 0.9), openresty_token_requests (goal 1).
# Rounds alternate the two locations and the best of each counts, so that
# load from elsewhere on the machine weighs on both alike.
# BENCH_SECONDS (per round, default 2), BENCH_ROUNDS (default 5),
# BENCH_CONNECTIONS (default 64), BENCH_WORKERS (default: CPUs) tune it.
set -eu
cd "$(dirname "$0")/.."
root=$(pwd -P)
secs=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-5}
conns=${BENCH_CONNECTIONS:-64}
workers=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}

for tool in nginx wrk luajit; do
  command -v $tool >/dev/null || { echo "openresty_bench: $tool is not installed" >&2; exit 1; }
done
[ -f build/5.1/gauth/core.so ] || { echo "openresty_bench: make LUA=luajit first" >&2; exit 1; }

unset LUA_PATH LUA_CPATH LUA_INIT
dir=$(mktemp -d /tmp/gauth-orbench.XXXXXX)
emu_pid=""
cleanup() {
  if [ -f "$dir/nginx.pid" ]; then
    pid=$(cat "$dir/nginx.pid")
    kill -TERM "$pid" 2>/dev/null || true
    i=0; while kill -0 "$pid" 2>/dev/null && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
    kill -KILL "$pid" 2>/dev/null || true
  fi
  [ -n "$emu_pid" ] && kill -TERM "$emu_pid" 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM

free_port() {
  luajit -e 'local s = require("socket").bind("127.0.0.1", 0)
    local _, p = s:getsockname(); s:close(); print(p)'
}

# The token endpoint: gauth's emulator with a throwaway service account.
luajit bin/gauth-emulator --new-key-file "$dir/sa.json" --ready-file "$dir/emu.ready" \
  --trace </dev/null >"$dir/emu.out" 2>"$dir/emu.log" &
emu_pid=$!
i=0
while [ ! -s "$dir/emu.ready" ]; do
  sleep 0.05; i=$((i + 1))
  [ $i -gt 200 ] && { echo "openresty_bench: the emulator did not start" >&2; cat "$dir/emu.log" >&2; exit 1; }
done

api_port=$(free_port)
proxy_port=$(free_port)
cdir=$(ls -d /usr/lib/*/lua/5.1 2>/dev/null | head -1)
ndk=$(sed -n 's/^load_module \([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-http-ndk.conf)
lua=$(sed -n 's/^load_module \([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-http-lua.conf)
case $ndk in /*) ;; *) ndk=/usr/share/nginx/$ndk ;; esac
case $lua in /*) ;; *) lua=/usr/share/nginx/$lua ;; esac
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
# As long as a Google access token (ya29. and ~170 more characters).
fixed_token="ya29.$(printf '%0170d' 0 | tr 0 f)"
mkdir -p "$dir/logs"

cat >"$dir/nginx.conf" <<EOF
load_module $ndk;
load_module $lua;
$user_line
worker_processes $workers;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $dir/body;
  proxy_temp_path $dir/proxy;
  lua_package_path "$root/lua/?.lua;$root/lua/?/init.lua;$root/examples/openresty/?.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua";
  lua_package_cpath "$root/build/5.1/?.so;$cdir/?.so";
  lua_shared_dict gauth 1m;
  init_by_lua_block {
    require("handler").init({ key_file = "$dir/sa.json" })
  }

  # The fake API both locations call.
  server {
    listen 127.0.0.1:$api_port;
    location / {
      default_type application/json;
      return 200 '{"kind":"bench#fake","items":[]}';
    }
    location = /whoami { return 200 "\$http_authorization"; }
  }

  upstream api {
    server 127.0.0.1:$api_port;
    keepalive 128;
  }

  server {
    listen 127.0.0.1:$proxy_port;
    proxy_http_version 1.1;
    proxy_set_header Connection "";

    # The same proxying in both: only where the header value comes from
    # differs.
    location /gauth/ {
      set \$gauth_authorization "";
      access_by_lua_block { require("handler").authorize() }
      proxy_set_header Connection "";
      proxy_set_header Authorization \$gauth_authorization;
      proxy_pass http://api/;
    }

    location /fixed/ {
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer $fixed_token";
      proxy_pass http://api/;
    }
  }
}
EOF

nginx -p "$dir" -c "$dir/nginx.conf"
i=0
until curl -s -o /dev/null "http://127.0.0.1:$proxy_port/fixed/"; do
  sleep 0.05; i=$((i + 1))
  [ $i -gt 100 ] && { echo "openresty_bench: nginx did not start" >&2; cat "$dir/logs/error.log" >&2; exit 1; }
done

rps() { # location seconds
  wrk -t 2 -c "$conns" -d "${2}s" "http://127.0.0.1:$proxy_port/$1/" 2>&1 |
    awk '/^Requests\/sec:/ { print $2 } /Non-2xx/ { print "non2xx", $NF > "/dev/stderr" }'
}

# Cold start under load: every connection asks for a token at once.
rps gauth 1 >/dev/null
rps fixed 1 >/dev/null
best_fixed=0; best_gauth=0
r=0
while [ $r -lt "$rounds" ]; do
  f=$(rps fixed "$secs"); g=$(rps gauth "$secs")
  best_fixed=$(awk -v a="$best_fixed" -v b="$f" 'BEGIN { print (b > a) ? b : a }')
  best_gauth=$(awk -v a="$best_gauth" -v b="$g" 'BEGIN { print (b > a) ? b : a }')
  r=$((r + 1))
done
tokens=$(grep -c '/token' "$dir/emu.log" || true)
status=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$proxy_port/gauth/")
# What the API received: the service account's token, not the baseline's.
seen=$(curl -s "http://127.0.0.1:$proxy_port/gauth/whoami")

echo "openresty_fixed_rps $best_fixed req/s"
echo "openresty_gauth_rps $best_gauth req/s"
awk -v g="$best_gauth" -v f="$best_fixed" 'BEGIN {
  printf "openresty_gauth_ratio %.3f (goal >= 0.9)\n", (f > 0) ? g / f : 0 }'
echo "openresty_token_requests $tokens (goal 1)"
[ "$status" = 200 ] || { echo "openresty_bench: /gauth/ answered $status" >&2; tail -5 "$dir/logs/error.log" >&2; exit 1; }
case $seen in
  "Bearer $fixed_token"|"") echo "openresty_bench: the API got no gauth token" >&2; exit 1 ;;
  "Bearer "?*) ;;
  *) echo "openresty_bench: the API got a strange Authorization" >&2; exit 1 ;;
esac
if grep -q '\[error\]' "$dir/logs/error.log"; then
  echo "openresty_bench: errors in nginx's log:" >&2; grep '\[error\]' "$dir/logs/error.log" | tail -5 >&2
fi
