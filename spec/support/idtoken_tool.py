#!/usr/bin/python3
"""Independent signer for the ID-token specs: PyJWT with cryptography.

  idtoken_tool.py INPUT.json

INPUT: {"keys": {name: private PEM}, "tokens": [{"key": name | null,
        "alg": "RS256" | "ES256" | "HS256" | "none", "secret": "...",
        "headers": {...}, "claims": {...}}], "jwk": [name, ...]}
Prints {"tokens": [token, ...], "jwk": {name: JWK of the public key}}.
A header value null removes that field (e.g. "kid": null; "typ").
"""

import json
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm, RSAAlgorithm


def main():
    with open(sys.argv[1]) as f:
        a = json.load(f)
    keys = {n: serialization.load_pem_private_key(p.encode(), None)
            for n, p in a.get("keys", {}).items()}
    tokens = []
    for t in a.get("tokens", []):
        alg = t["alg"]
        if alg == "none":
            key = None
        elif alg.startswith("HS"):
            key = t["secret"]
        else:
            key = keys[t["key"]]
        headers = t.get("headers") or {}
        tok = jwt.encode(t["claims"], key, algorithm=alg,
                         headers={k: v for k, v in headers.items() if v is not None})
        tokens.append(tok)
    jwks = {}
    for n in a.get("jwk", []):
        pub = keys[n].public_key()
        alg = ECAlgorithm if isinstance(pub, ec.EllipticCurvePublicKey) else RSAAlgorithm
        jwks[n] = json.loads(alg.to_jwk(pub))
    sys.stdout.write(json.dumps({"tokens": tokens, "jwk": jwks}))


if __name__ == "__main__":
    main()
