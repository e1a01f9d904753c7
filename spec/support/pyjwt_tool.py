#!/usr/bin/python3
"""PyJWT as an independent judge of gauth's JWTs (used by spec/helpers.lua).

  pyjwt_tool.py verify INPUT.json   {"token", "key", "algorithms", "audience",
                                     "issuer", "leeway", "verify_exp",
                                     "require"}
  pyjwt_tool.py encode INPUT.json   {"claims", "key", "alg", "headers"}

Prints one JSON object on stdout: {"ok": true, "claims", "header"} or
{"ok": true, "token"}, or {"ok": false, "error": "<Exception>: <text>"}.
"""

import json
import sys

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


def public_key(pem):
    data = pem.encode()
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    if b"PRIVATE KEY" in data:
        return serialization.load_pem_private_key(data, None).public_key()
    return serialization.load_pem_public_key(data)


def verify(a):
    aud = a.get("audience")
    options = {
        "verify_aud": aud is not None,
        "verify_exp": a.get("verify_exp", True),
        "require": a.get("require") or [],
    }
    claims = jwt.decode(a["token"], public_key(a["key"]),
                        algorithms=a.get("algorithms") or ["RS256", "ES256"],
                        audience=aud, issuer=a.get("issuer"),
                        leeway=a.get("leeway", 0), options=options)
    return {"ok": True, "claims": claims,
            "header": jwt.get_unverified_header(a["token"])}


def encode(a):
    key = serialization.load_pem_private_key(a["key"].encode(), None)
    alg = a.get("alg") or ("ES256" if isinstance(key, ec.EllipticCurvePrivateKey)
                           else "RS256")
    token = jwt.encode(a["claims"], key, algorithm=alg,
                       headers=a.get("headers") or None)
    return {"ok": True, "token": token}


def main():
    cmd, path = sys.argv[1], sys.argv[2]
    with open(path) as f:
        a = json.load(f)
    try:
        out = verify(a) if cmd == "verify" else encode(a)
    except Exception as e:  # the verdict, not a crash
        out = {"ok": False, "error": "%s: %s" % (type(e).__name__, e)}
    sys.stdout.write(json.dumps(out))


if __name__ == "__main__":
    main()
