#!/usr/bin/python3
"""ID-token verification references for make bench (issue 14).

  verify_ref.py KEY.pem CERT.pem OUTDIR

Signs N different RS256 ID tokens with KEY (PyJWT), writes OUTDIR/tokens.txt
(one per line) and OUTDIR/certs.json ({"k1": CERT}), then prints how many
of them PyJWT verifies per second with the key parsed once (the best of
BENCH_ROUNDS rounds of BENCH_SECONDS), and google-auth's jwt.decode (which
parses the certificate on every call) for information.
"""

import json
import os
import sys
import time

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization

AUD = "https://bench.example.run.app"
N = 2000


def rate(fn, tokens):
    secs = float(os.environ.get("BENCH_SECONDS", "1"))
    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))
    best = 0.0
    for _ in range(rounds):
        n, i, t0 = 0, 0, time.process_time()
        while True:
            for _ in range(20):
                fn(tokens[i])
                i = (i + 1) % len(tokens)
            n += 20
            t = time.process_time() - t0
            if t >= secs:
                break
        best = max(best, n / t)
    return best


def main():
    key_path, cert_path, out = sys.argv[1:4]
    key = serialization.load_pem_private_key(open(key_path, "rb").read(), None)
    cert_pem = open(cert_path).read()
    now = int(time.time())
    tokens = []
    for i in range(N):
        claims = {"iss": "https://accounts.google.com", "aud": AUD,
                  "sub": str(100000000000000000000 + i), "azp": str(i),
                  "email": "caller-%d@bench-project.iam.gserviceaccount.com" % i,
                  "email_verified": True, "iat": now, "exp": now + 3600}
        tokens.append(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"}))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokens.txt"), "w") as f:
        f.write("\n".join(tokens) + "\n")
    with open(os.path.join(out, "certs.json"), "w") as f:
        json.dump({"k1": cert_pem}, f)
    pub = x509.load_pem_x509_certificate(cert_pem.encode()).public_key()

    def pyjwt(tok):
        jwt.decode(tok, pub, algorithms=["RS256"], audience=AUD,
                   issuer="https://accounts.google.com")
    print("verify_pyjwt %.0f verify/s" % rate(pyjwt, tokens))
    try:
        from google.auth import jwt as gjwt
        certs = {"k1": cert_pem}

        def google(tok):
            gjwt.decode(tok, certs=certs, audience=AUD)
        print("verify_google_auth %.0f verify/s" % rate(google, tokens))
    except ImportError:
        pass


if __name__ == "__main__":
    main()
