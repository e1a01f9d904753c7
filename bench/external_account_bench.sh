#!/bin/sh
# Keyless credentials (issue 13): a cold `gauth token --key-file cfg.json`
# (a new process: load, read the identity-pool file config, read the subject
# token file, one STS exchange) beside Google's Node library doing the same
# (a new node process: ExternalAccountClient.fromJSON + getAccessToken)
# against the same local STS (spec/support/fake_google.py, plain http on
# loopback), taking turns, BENCH_ROUNDS passes (default 3) of N runs each
# (BENCH_EA_RUNS, default 10); each figure is the best pass, in runs/s.
cd "$(dirname "$0")/.." || exit 2
root=$(pwd)
rounds=${BENCH_ROUNDS:-3}
n=${BENCH_EA_RUNS:-10}
tmp=$(mktemp -d)
fake_pid=
trap '[ -n "$fake_pid" ] && kill "$fake_pid" 2>/dev/null; rm -rf "$tmp"' EXIT INT TERM
PY=/usr/bin/python3
NODE_MODULES=$root/spec/support/node/node_modules
[ -d "$NODE_MODULES/google-auth-library" ] || { echo "run make node-judges first" >&2; exit 1; }

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$tmp/k.pem" 2>/dev/null
openssl pkey -in "$tmp/k.pem" -pubout -out "$tmp/k.pub" 2>/dev/null
$PY spec/support/fake_google.py --port 0 --control-port 0 --ready-file "$tmp/ready" \
  --signing-key "$tmp/sk.pem" >"$tmp/fake.log" 2>&1 &
fake_pid=$!
i=0; while [ ! -s "$tmp/ready" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i + 1)); done
port=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["port"])' "$tmp/ready")
ctl=$($PY -c 'import json,sys; print(json.load(open(sys.argv[1]))["control_port"])' "$tmp/ready")
$PY - "$tmp" "$port" "$ctl" <<'PY'
import json, sys, time, urllib.request, jwt
tmp, port, ctl = sys.argv[1], sys.argv[2], sys.argv[3]
priv, pub = open(tmp + "/k.pem").read(), open(tmp + "/k.pub").read()
now = int(time.time())
tok = jwt.encode({"iss": "https://i.example", "sub": "bench", "iat": now, "exp": now + 3600},
                 priv, algorithm="RS256")
open(tmp + "/subject.txt", "w").write(tok)
cfg = {"type": "external_account",
       "audience": "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/providers/b",
       "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
       "token_url": "http://127.0.0.1:%s/v1/token" % port,
       "credential_source": {"file": tmp + "/subject.txt"}}
json.dump(cfg, open(tmp + "/cfg.json", "w"))
req = urllib.request.Request("http://127.0.0.1:%s/config" % ctl, method="POST",
                             data=json.dumps({"federation": {"oidc_public_pem": pub}}).encode(),
                             headers={"content-type": "application/json"})
urllib.request.urlopen(req).read()
PY
cat > "$tmp/node.js" <<'JS'
const { ExternalAccountClient } = require('google-auth-library');
const c = ExternalAccountClient.fromJSON(require(process.argv[2]));
c.getAccessToken().then((r) => { if (!r.token) process.exit(1); process.stdout.write(r.token + '\n'); },
  (e) => { process.stderr.write(String(e)); process.exit(1); });
JS

now() { date +%s.%N; }
timed() { # name command...
  name=$1; shift
  t0=$(now)
  k=0
  while [ $k -lt "$n" ]; do
    "$@" >/dev/null 2>"$tmp/err" || { echo "$name failed: $(cat "$tmp/err")" >&2; exit 1; }
    k=$((k + 1))
  done
  t1=$(now)
  awk -v n="$n" -v a="$t0" -v b="$t1" -v name="$name" 'BEGIN { printf "%s %.2f\n", name, n / (b - a) }' >>"$tmp/passes"
}
gauth() { # lua abi
  env -u GOOGLE_APPLICATION_CREDENTIALS NO_GCE_CHECK=true \
    LUA_PATH="$root/lua/?.lua;$root/lua/?/init.lua;;" LUA_CPATH="$root/build/$2/?.so;;" \
    "$1" bin/gauth token --key-file "$tmp/cfg.json"
}
node_once() {
  env -u no_proxy -u NO_PROXY METADATA_SERVER_DETECTION=none NODE_PATH="$NODE_MODULES" \
    node "$tmp/node.js" "$tmp/cfg.json"
}
r=0
while [ $r -lt "$rounds" ]; do
  timed ea_cold_gauth_lua5.4 gauth lua5.4 5.4
  timed ea_cold_gauth_luajit gauth luajit 5.1
  timed ea_cold_node node_once
  r=$((r + 1))
done
# The best pass of each.
awk '{ if (!($1 in best) || $2 > best[$1]) best[$1] = $2 } END { for (k in best) print k, best[k], "runs/s" }' \
  "$tmp/passes" | sort
