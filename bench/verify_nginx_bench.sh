#!/bin/sh
# ID-token verification in nginx (issue 14): requests/s through a location
# guarded by gauth.nginx.require_id_token (access phase) against the same
# location without it, with wrk at the same concurrency, in alternating
# rounds (best of each). Every request carries the same Bearer token (a
# Google ID token signed by bench/verify_ref.py; the key set is served by
# the same nginx on loopback, fetched once for all workers).
#
#   sh bench/verify_nginx_bench.sh DIR      (DIR from bench/verify_ref.py)
#
# Prints: verify_nginx_plain_rps, verify_nginx_gauth_rps,
# verify_nginx_ratio (goal >= 0.9; best of each side's rounds) and the
# median of the rounds' own ratios (steadier on a shared machine),
# verify_nginx_key_fetches (goal 1). Beside it, a second reference, labelled
# as such: the same pair of locations proxying to a loopback upstream (a
# static answer in the same nginx, kept-alive connections), which is what a
# guard usually sits in front of (verify_nginx_proxy_*). The plain location
# stays the issue's reference. A third pair, also labelled: the plain
# location against one whose access handler only reads the header and sets
# ngx.ctx (what the guard must do before it checks anything; its ratio is
# the most any Lua guard of this API could reach here).
# BENCH_SECONDS (per round, default 2), BENCH_ROUNDS (default 5),
# BENCH_CONNECTIONS (default 64), BENCH_WORKERS (default: CPUs).
set -eu
cd "$(dirname "$0")/.."
root=$(pwd -P)
src=$(cd "$1" && pwd -P)
secs=${BENCH_SECONDS:-2}
rounds=${BENCH_ROUNDS:-5}
conns=${BENCH_CONNECTIONS:-64}
workers=${BENCH_WORKERS:-$(nproc 2>/dev/null || echo 2)}
for tool in nginx wrk luajit; do
  command -v $tool >/dev/null || { echo "verify_nginx_bench: $tool is not installed" >&2; exit 1; }
done
unset LUA_PATH LUA_CPATH LUA_INIT
dir=$(mktemp -d /tmp/gauth-vbench.XXXXXX)
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
port=$(luajit -e 'local s = require("socket").bind("127.0.0.1", 0)
  local _, p = s:getsockname(); s:close(); print(p)')
port2=$(luajit -e 'local s = require("socket").bind("127.0.0.1", 0)
  local _, p = s:getsockname(); s:close(); print(p)')
cdir=$(ls -d /usr/lib/*/lua/5.1 2>/dev/null | head -1)
ndk=$(sed -n 's/^load_module \([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-http-ndk.conf)
lua=$(sed -n 's/^load_module \([^;]*\);.*/\1/p' /usr/share/nginx/modules-available/mod-http-lua.conf)
case $ndk in /*) ;; *) ndk=/usr/share/nginx/$ndk ;; esac
case $lua in /*) ;; *) lua=/usr/share/nginx/$lua ;; esac
user_line=""
[ "$(id -u)" = 0 ] && user_line="user root;"
mkdir -p "$dir/logs" "$dir/www"
cp "$src/certs.json" "$dir/www/certs.json"
token=$(head -1 "$src/tokens.txt")

cat >"$dir/nginx.conf" <<EOF2
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
  lua_package_path "$root/lua/?.lua;$root/lua/?/init.lua;/usr/share/lua/5.1/?.lua;/usr/share/lua/5.1/?/init.lua";
  lua_package_cpath "$root/build/5.1/?.so;$cdir/?.so";
  lua_shared_dict gauth 1m;
  upstream backend {
    server 127.0.0.1:$port2;
    keepalive 64;
  }
  server {
    listen 127.0.0.1:$port2;
    location / { return 200 "ok\n"; }
  }
  server {
    listen 127.0.0.1:$port;
    location = /certs.json {
      access_log $dir/logs/certs.log;
      root $dir/www;
      default_type application/json;
      add_header Cache-Control "public, max-age=3600";
    }
    # The same content in both; only the access phase differs.
    location = /plain {
      content_by_lua_block { ngx.say("ok") }
    }
    location = /verified {
      access_by_lua_block {
        require("gauth.nginx").require_id_token{
          audience = "https://bench.example.run.app",
          certs_url = "http://127.0.0.1:$port/certs.json" }
      }
      content_by_lua_block { ngx.say("ok") }
    }
    # What any Lua guard does before it checks anything (read the header,
    # hand the handlers a table through ngx.ctx), for the third pair.
    location = /ctx_only {
      access_by_lua_block { ngx.ctx.gauth_claims = { ngx.var.http_authorization ~= nil } }
      content_by_lua_block { ngx.say("ok") }
    }
    # The second reference: both proxy to the upstream.
    location = /proxy_plain {
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://backend;
    }
    location = /proxy_verified {
      access_by_lua_block {
        require("gauth.nginx").require_id_token{
          audience = "https://bench.example.run.app",
          certs_url = "http://127.0.0.1:$port/certs.json" }
      }
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_pass http://backend;
    }
  }
}
EOF2

nginx -p "$dir" -c "$dir/nginx.conf"
i=0
until curl -s -o /dev/null "http://127.0.0.1:$port/plain"; do
  sleep 0.05; i=$((i + 1))
  [ $i -gt 100 ] && { echo "verify_nginx_bench: nginx did not start" >&2; cat "$dir/logs/error.log" >&2; exit 1; }
done
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/verified")
[ "$status" = 200 ] || { echo "verify_nginx_bench: /verified answered $status" >&2; tail -5 "$dir/logs/error.log" >&2; exit 1; }
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer x$token" "http://127.0.0.1:$port/verified")
[ "$status" = 401 ] || { echo "verify_nginx_bench: a bad token got $status" >&2; exit 1; }

rps() { # location seconds
  wrk -t 2 -c "$conns" -d "${2}s" -H "Authorization: Bearer $token" "http://127.0.0.1:$port/$1" 2>&1 |
    awk '/^Requests\/sec:/ { print $2 } /Non-2xx/ { print "non2xx", $NF > "/dev/stderr" }'
}
status=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" "http://127.0.0.1:$port/proxy_verified")
[ "$status" = 200 ] || { echo "verify_nginx_bench: /proxy_verified answered $status" >&2; exit 1; }

# pair NAME PLAIN GUARDED GOAL [SIDE]: alternating rounds; best of each side, and the
# median of the rounds' ratios
pair() {
  rps "$3" 1 >/dev/null
  rps "$2" 1 >/dev/null
  best_plain=0; best_gauth=0; ratios=""
  r=0
  while [ $r -lt "$rounds" ]; do
    p=$(rps "$2" "$secs"); g=$(rps "$3" "$secs")
    best_plain=$(awk -v a="$best_plain" -v b="$p" 'BEGIN { print (b > a) ? b : a }')
    best_gauth=$(awk -v a="$best_gauth" -v b="$g" 'BEGIN { print (b > a) ? b : a }')
    ratios="$ratios $(awk -v g="$g" -v p="$p" 'BEGIN { printf "%.4f", (p > 0) ? g / p : 0 }')"
    r=$((r + 1))
  done
  median=$(echo $ratios | tr ' ' '\n' | sort -n | awk '{ v[NR] = $1 } END {
    printf "%.3f", (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }')
  echo "$1_plain_rps $best_plain req/s"
  echo "$1_${5:-gauth}_rps $best_gauth req/s"
  awk -v g="$best_gauth" -v f="$best_plain" -v m="$median" -v n="$1" -v goal="$4" 'BEGIN {
    printf "%s_ratio %.3f (median of rounds %s)%s\n", n, (f > 0) ? g / f : 0, m, goal }'
}
pair verify_nginx plain verified " (goal >= 0.9)"
pair verify_nginx_proxy proxy_plain proxy_verified " (second reference: both proxy to a loopback upstream)"
pair verify_nginx_ctx_only plain ctx_only " (third reference: an access handler that only reads the header and sets ngx.ctx, what DECISIONS asks of the guard before any check)" ctx_only
fetches=$(wc -l <"$dir/logs/certs.log" | tr -d ' ')
echo "verify_nginx_key_fetches $fetches (goal 1)"
