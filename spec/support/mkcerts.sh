#!/bin/sh
# Make the throwaway PKI the specs use, with the openssl CLI.
#
#   mkcerts.sh OUTDIR
#
# OUTDIR gets (EC P-256 keys, PKCS#8 PEM, certificates valid 30 days):
#   ca.pem, ca.key                    test CA ("gauth test CA")
#   server.pem, server.key            CN=localhost, SAN DNS:localhost,
#                                     IP:127.0.0.1, IP:::1, signed by ca.pem
#   other-ca.pem, other-ca.key        an unrelated CA
#   other-server.pem, other-server.key  same names as server.pem, signed by
#                                     other-ca.pem ("untrusted CA" tests)
#   wronghost-server.pem, wronghost-server.key  signed by ca.pem but only for
#                                     DNS:wrong.example ("hostname mismatch")
#   named-server.pem, named-server.key  signed by ca.pem for DNS:*.gauth.test
#                                     (names served by spec/support/tiny_dns.py
#                                     through nginx's resolver)
#   client.pem, client.key            CN=gauth test client, clientAuth,
#                                     signed by ca.pem (mutual TLS)
#   other-client.pem, other-client.key  CN=gauth stray client, signed by
#                                     other-ca.pem (a client cert the
#                                     server does not trust)
#
# Idempotent: when every file is there, it does nothing. Files appear by
# rename, under a lock, so concurrent runs never see half a PKI.
set -eu

out=${1:?usage: mkcerts.sh OUTDIR}
mkdir -p "$out"
out=$(cd "$out" && pwd -P)

FILES="ca.pem ca.key server.pem server.key other-ca.pem other-ca.key
other-server.pem other-server.key wronghost-server.pem wronghost-server.key
named-server.pem named-server.key
client.pem client.key other-client.pem other-client.key"

complete() {
  for f in $FILES; do
    [ -s "$out/$f" ] || return 1
  done
  return 0
}

complete && exit 0

# Serialise concurrent runs on the same OUTDIR.
exec 9>"$out/.mkcerts.lock"
flock 9
complete && exit 0

work=$(mktemp -d "$out/.mkcerts.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"

# Quiet openssl unless it fails.
ossl() {
  if ! openssl "$@" >ossl.log 2>&1; then
    cat ossl.log >&2
    echo "mkcerts.sh: openssl $1 failed" >&2
    exit 1
  fi
}

serial() {
  echo "0x$(openssl rand -hex 12)"
}

# mkca NAME CN
mkca() {
  ossl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.pem" -days 30 -subj "/CN=$2" -sha256 \
    -set_serial "$(serial)" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
}

# mkleaf NAME CA CN SAN [EKU]
mkleaf() {
  cat >"$1.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=${5:-serverAuth}
subjectAltName=$4
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid,issuer
EOF
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1.key" -out "$1.csr" -subj "/CN=$3"
  ossl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" \
    -set_serial "$(serial)" -days 30 -sha256 -extfile "$1.ext" -out "$1.pem"
}

SAN="DNS:localhost,IP:127.0.0.1,IP:::1"
mkca ca "gauth test CA"
mkca other-ca "gauth unrelated test CA"
mkleaf server ca localhost "$SAN"
mkleaf other-server other-ca localhost "$SAN"
mkleaf wronghost-server ca wrong.example "DNS:wrong.example"
mkleaf named-server ca oauth2.gauth.test "DNS:oauth2.gauth.test,DNS:api.gauth.test"
mkleaf client ca "gauth test client" "URI:spiffe://gauth.test/client" clientAuth
mkleaf other-client other-ca "gauth stray client" "URI:spiffe://stray.test/client" clientAuth

chmod 600 ./*.key
for f in $FILES; do
  mv -f "$f" "$out/$f"
done
