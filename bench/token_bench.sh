#!/bin/sh
# Token figures (issue 3): bench/token_bench.lua under Lua 5.4 and LuaJIT
# and google-auth (bench/token_ref.py) against the same nginx, taking turns
# for BENCH_ROUNDS passes (default 3); each figure is the best seen over
# all passes, so that other load on a shared machine falls on all three
# alike. Two placements (bench/placement.sh): the clients on nginx's CPU
# (a POST then costs a few tens of microseconds beside the RSA signature's
# ~290, as in the issue's figures: a floor of ~3,300 refreshes/s), and on
# another CPU (each POST waits for the other CPU to wake: names end in
# _2cpu).
#
#   sh bench/token_bench.sh NGINX_URL NGINX_CA
#
# (bench/run.sh starts nginx with bench/nginx_fixed.sh and calls this.)
cd "$(dirname "$0")/.." || exit 2
url=$1 ca=$2
if [ -z "$url" ] || [ -z "$ca" ]; then
  echo "usage: sh bench/token_bench.sh NGINX_URL NGINX_CA" >&2
  exit 2
fi
rounds=${BENCH_ROUNDS:-3}
tmp=$(mktemp -d)
. bench/placement.sh
trap 'placement_restore "$tmp"; rm -rf "$tmp"' EXIT INT TERM
placement_start "$url" "$tmp"

pass() { # pin suffix
  clients "$1" "$2" bench/token_bench.lua bench/token_ref.py "$url" "$ca"
}

take_turns "$rounds"
