#!/bin/sh
# Media throughput (issue 6): gauth.media against the curl CLI moving the same
# file to and from the same local server (spec/support/fake_upload.py) over
# the same kind of connection (plain HTTP and TLS, HTTP/1.1, loopback).
#
#   sh bench/media_bench.sh        (make bench runs it)
#
# Upload: uploadType=media (the file streamed as the body) and, for gauth,
# uploadType=resumable with the default 100 MiB chunks; download: alt=media
# (gauth in ranged requests of the default 100 MiB). Each figure is the best
# of BENCH_ROUNDS (5) transfers of BENCH_MEDIA_MB (256) MiB, the clients
# taking turns within each round so that they meet the same machine load.
# Only the transfer is timed: curl's time_total - time_pretransfer
# (connection and TLS handshake left out), gauth's own clock around
# execute()/download() on a connection already open. Prints "name value
# unit" lines, the ratios (gauth / curl) last; goal >= 0.8. The server is
# Python run with --no-digest (it only copies bytes between the socket and
# the disk); where it is the bottleneck both clients meet it.
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
PY=/usr/bin/python3
MB=${BENCH_MEDIA_MB:-256}
ROUNDS=${BENCH_ROUNDS:-5}
dir=$(mktemp -d)
pids=""
cleanup() {
  for p in $pids; do kill "$p" 2>/dev/null; done
  rm -rf "$dir"
}
trap cleanup EXIT INT TERM
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy LUA_PATH LUA_CPATH LUA_INIT
export no_proxy='*' NO_PROXY='*'

doc=$dir/drive.v3.json
gzip -dc "$root/spec/fixtures/discovery/drive.v3.json.gz" > "$doc" || { echo "media_bench: no drive.v3 fixture" >&2; exit 1; }
sh spec/support/mkcerts.sh "$dir/pki" >/dev/null 2>&1 || { echo "media_bench: mkcerts failed" >&2; exit 1; }
head -c $((MB * 1024 * 1024)) /dev/urandom > "$dir/file.bin"
size=$((MB * 1024 * 1024))
luas=""
for l in lua5.4 luajit; do command -v $l >/dev/null 2>&1 && luas="$luas $l"; done

# The gauth side: one transfer, its seconds on stdout.
cat > "$dir/one.lua" <<'EOF'
local root, build, url, ca, doc_path, file, out, mode = ...
package.path = root .. "/lua/?.lua;" .. package.path
package.cpath = build .. "/?.so;" .. package.cpath
local core = require "gauth.core"
local discovery = require "gauth.discovery"
local media = require "gauth.media"
local f = assert(io.open(doc_path)); local doc = f:read("*a"); f:close()
local http = assert(require("gauth.transport.curl").new{ ca_file = ca ~= "" and ca or nil })
local drive = assert(discovery.build_from_document(doc, { api_endpoint = url .. "/drive/v3/", http = http }))
-- the connection is opened (and TLS set up) before the clock starts
assert(assert(drive:files():create{ media_body = media.media_string("warm-up") }):execute())
local t0, t1
if mode == "download" then
  local req = drive:files():get_media{ fileId = "bench" }
  t0 = core.monotonic()
  assert(req:download(out))
  t1 = core.monotonic()
else
  local req = assert(drive:files():create{ media_body = assert(media.media_file(file, {
    mime_type = "application/octet-stream", resumable = mode == "resumable" })) })
  t0 = core.monotonic()
  assert(req:execute())
  t1 = core.monotonic()
end
print(string.format("%.6f", t1 - t0))
EOF

start() { # kind -> URL, CTL
  ready=$dir/ready-$1
  if [ "$1" = https ]; then
    set -- --cert "$dir/pki/server.pem" --key "$dir/pki/server.key"
  else
    set --
  fi
  mkdir -p "$dir/data"
  $PY spec/support/fake_upload.py --ready-file "$ready" --data-dir "$dir/data" \
    --parent-pid $$ --no-digest "$@" >"$dir/fake.log" 2>&1 &
  pids="$pids $!"
  i=0
  while [ ! -s "$ready" ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  URL=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$ready")
  CTL=http://127.0.0.1:$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["control_port"])' "$ready")
}

reset() { # forget uploads; serve the bench file as object "bench"
  curl -sS -X POST "$CTL/reset" -o /dev/null
  curl -sS -X POST "$CTL/objects" -H 'content-type: application/json' \
    --data "{\"id\": \"bench\", \"path\": \"$dir/file.bin\"}" -o /dev/null
}

curl_up() {
  curl -sS --http1.1 $cacert -X POST -T "$dir/file.bin" -H 'Expect:' \
    -H 'Content-Type: application/octet-stream' -o /dev/null \
    -w '%{time_total} %{time_pretransfer}\n' \
    "$URL/upload/drive/v3/files?alt=json&uploadType=media" | awk '{ print $1 - $2 }'
}

curl_down() {
  rm -f "$dir/out.bin"
  curl -sS --http1.1 $cacert -o "$dir/out.bin" -w '%{time_total} %{time_pretransfer}\n' \
    "$URL/drive/v3/files/bench?alt=media" | awk '{ print $1 - $2 }'
  cmp -s "$dir/file.bin" "$dir/out.bin" || echo "media_bench: curl download differs" >&2
}

lua_one() { # lua mode
  case $1 in lua5.4) v=5.4 ;; luajit) v=5.1 ;; esac
  rm -f "$dir/out.bin"
  $1 "$dir/one.lua" "$root" "$root/build/$v" "$URL" "$ca" "$doc" "$dir/file.bin" "$dir/out.bin" "$2"
  if [ "$2" = download ]; then
    cmp -s "$dir/file.bin" "$dir/out.bin" || echo "media_bench: $1 download differs" >&2
  fi
}

best() { [ -s "$1" ] && sort -g "$1" | head -1; }
mbps() { awk -v s="$size" -v t="$1" 'BEGIN { printf "%.1f", s / t / 1048576 }'; }

for kind in http https; do
  start $kind
  cacert=""; ca=""
  if [ $kind = https ]; then cacert="--cacert $dir/pki/ca.pem"; ca=$dir/pki/ca.pem; fi
  rm -f "$dir"/t.*
  r=0
  while [ $r -lt "$ROUNDS" ]; do
    reset; curl_up >> "$dir/t.upload.curl"
    for l in $luas; do
      reset; lua_one $l simple >> "$dir/t.simple.$l"
      reset; lua_one $l resumable >> "$dir/t.resumable.$l"
    done
    curl_down >> "$dir/t.download.curl"
    for l in $luas; do lua_one $l download >> "$dir/t.download.$l"; done
    r=$((r + 1))
  done
  echo "media_upload_${kind}_curl $(mbps "$(best "$dir/t.upload.curl")") MiB/s"
  echo "media_download_${kind}_curl $(mbps "$(best "$dir/t.download.curl")") MiB/s"
  for l in $luas; do
    for mode in simple resumable download; do
      t=$(best "$dir/t.$mode.$l")
      [ -n "$t" ] && echo "media_${mode}_${kind}_$l $(mbps "$t") MiB/s"
    done
  done
done > "$dir/figures"
cat "$dir/figures"

val() { awk -v n="$1" '$1 == n { print $2 }' "$dir/figures" | tail -1; }
for kind in http https; do
  for l in $luas; do
    for pair in "upload simple" "upload resumable" "download download"; do
      set -- $pair
      a=$(val "media_$2_${kind}_$l"); b=$(val "media_$1_${kind}_curl")
      [ -n "$a" ] && [ -n "$b" ] && awk -v n="media_${2}_${kind}_${l}_vs_curl" -v a="$a" -v b="$b" \
        'BEGIN { printf "%s %.3f ratio\n", n, a / b }'
    done
  done
done
