#!/bin/sh
# RS256 ID-token verification beside its floor (issue 14), for make bench:
#   sh bench/verify_ratio.sh DIR      (DIR from bench/verify_ref.py)
# Rounds of `openssl speed rsa2048` (the floor: its verify/s), then
# bench/verify_bench.lua on Lua 5.4 and on LuaJIT, BENCH_SECONDS (default 1)
# each, interleaved: on a shared machine a floor measured minutes earlier,
# under other load, would make the ratio a measure of the neighbours. Both
# sides single-threaded, RSA-2048, CPU time. Each round's ratio is taken
# against its own floor; prints the medians of VERIFY_ROUNDS (default 5)
# rounds as `name value unit`, and every round's ratio on stderr.
# Both sides on one CPU (taskset, util-linux): the CPUs of a virtual
# machine need not run at one speed (on the 2-CPU machine this was measured
# on, one ran 30% faster than the other), and a floor measured on one CPU
# against a subject scheduled on the other made rounds range 0.74-1.04.
cd "$(dirname "$0")/.." || exit 2
pin=""
if command -v taskset >/dev/null 2>&1; then
  pin="taskset -c $(($(nproc) - 1))"
fi
dir=${1:?usage: verify_ratio.sh DIR}
secs=${BENCH_SECONDS:-1}
rounds=${VERIFY_ROUNDS:-5}
out=$(mktemp)
trap 'rm -f "$out" "$out.one"' EXIT INT TERM
r=1
while [ "$r" -le "$rounds" ]; do
  $pin openssl speed -seconds "$secs" rsa2048 2>/dev/null | awk -v r="$r" '/^rsa 2048 bits/ {
    print r, "openssl_speed_verify_interleaved", $7, "verify/s" }' >>"$out"
  for lua in lua5.4 luajit; do
    if BENCH_ROUNDS=1 $pin $lua bench/verify_bench.lua "$dir" >"$out.one"; then
      sed "s/^/$r /" "$out.one" >>"$out"
    else
      echo "verify_ratio.sh: $lua bench/verify_bench.lua failed" >&2
      exit 1
    fi
  done
  r=$((r + 1))
done
awk '
  function median(a, n,   i, j, t) {
    for (i = 2; i <= n; i++) {
      t = a[i]
      for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
      a[j + 1] = t
    }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  { v[$1, $2] = $3; unit[$2] = $4; names[$2] = 1; if ($1 + 0 > nr) nr = $1 + 0 }
  END {
    fl = "openssl_speed_verify_interleaved"
    for (n in names) {
      k = 0
      for (r = 1; r <= nr; r++) if ((r, n) in v) a[++k] = v[r, n]
      printf "%s %.0f %s\n", n, median(a, k), unit[n]
      if (n == fl) continue
      k = 0; line = ""
      for (r = 1; r <= nr; r++) if ((r, n) in v && (r, fl) in v) {
        a[++k] = v[r, n] / v[r, fl]; line = line sprintf(" %.3f", a[k])
      }
      printf "%s_ratio %.3f ratio\n", n, median(a, k)
      printf "  %s / floor, per round:%s\n", n, line > "/dev/stderr"
    }
  }' "$out" | sort
