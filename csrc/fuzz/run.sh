#!/bin/sh
# Builds each libFuzzer target against Lua 5.4 with ASan+UBSan and runs it
# for FUZZ_SECONDS (default 20). Findings land in build/fuzz/<target>/.
# FUZZ_TARGETS picks some ("headers jws"); default all.
set -e
cd "$(dirname "$0")/../.."
secs=${FUZZ_SECONDS:-20}
out=build/fuzz
mkdir -p "$out/keys"
[ -f "$out/keys/RS256.pem" ] || {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 2>/dev/null | openssl pkey -pubout -out "$out/keys/RS256.pem"
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 2>/dev/null | openssl pkey -pubout -out "$out/keys/ES256.pem"
}
export GAUTH_FUZZ_KEYS="$(pwd)/$out/keys"
SRC="csrc/core.c csrc/encoding.c csrc/digest.c csrc/random.c csrc/system.c csrc/pkey.c csrc/aead.c csrc/json.c csrc/http.c csrc/http_headers.c csrc/http_io.c csrc/http_setup.c"
for t in ${FUZZ_TARGETS:-pem b64 verify jwk jws verify_jws json aead headers}; do
  bin=$out/fuzz_$t
  clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -D_POSIX_C_SOURCE=200809L -I/usr/include/lua5.4 -Icsrc \
    -o "$bin" csrc/fuzz/fuzz_$t.c $SRC -llua5.4 -lcrypto -lcurl
  mkdir -p "$out/$t/corpus"
  case $t in
    pem) cp "$out/keys/"*.pem "$out/$t/corpus/" ;;
    b64) printf 'Zm9vYmFy' > "$out/$t/corpus/seed" ;;
    json) printf '{"iss":"https://accounts.google.com","aud":["a"],"n":-1.5e3,"t":true,"x":null,"s":"\\u00e9\\ud83d\\ude00\\n"}' > "$out/$t/corpus/seed" ;;
    jwk) printf '\000AQAB.AQAB' > "$out/$t/corpus/seed" ;;
    jws) printf 'eyJhbGciOiJSUzI1NiJ9.e30.c2ln' > "$out/$t/corpus/seed" ;;
    verify_jws)
      printf '\000eyJhbGciOiJSUzI1NiJ9.e30.c2ln' > "$out/$t/corpus/seed"
      # signatures of the keys' sizes, so the fuzzer reaches the verification
      { printf '\000eyJhbGciOiJSUzI1NiJ9.e30.'; head -c 342 /dev/zero | tr '\000' A; } > "$out/$t/corpus/seed-rsa"
      { printf '\001eyJhbGciOiJFUzI1NiJ9.e30.'; head -c 86 /dev/zero | tr '\000' A; } > "$out/$t/corpus/seed-ec" ;;
    headers) printf 'HTTP/1.1 200 OK\r\nContent-Type: a/b\r\nX-A: 1\r\nx-a:  2 \t\r\n\r\n' > "$out/$t/corpus/seed"
             printf 'HTTP/2 301 \nLocation: /x\nno colon\n: v\n\tfolded: v\n' > "$out/$t/corpus/seed2" ;;
    aead) printf '\001t|svc:0123456789abcdef0123456789abcdef\000nonce-nonce-ciphertext-tag-tag-tag' > "$out/$t/corpus/seed" ;;
  esac
  echo "== fuzz_$t for ${secs}s"
  ASAN_OPTIONS=detect_leaks=1 "$bin" -max_total_time="$secs" -max_len=4096 \
    -artifact_prefix="$out/$t/" "$out/$t/corpus" 2>"$out/$t/log" \
    || { tail -30 "$out/$t/log"; exit 1; }
  grep -E '^(Done|#[0-9]+ +DONE)' "$out/$t/log" | tail -1
done
echo "fuzz: all targets ran ${secs}s without a finding"
