"""Judge of an X.509 federation subject token (issue 19), independent of
gauth: python3-cryptography loads each base64 DER certificate of the JSON
array and compares it with the PEM files given, in order.

  /usr/bin/python3 x509_judge.py TOKEN_FILE PEM_FILE...

Prints JSON: {"count": n, "subjects": [...], "match": [true|false, ...],
"spacing_as_json_dumps": bool}. Exit 0 unless the token is not such an
array (then exit 1 with the reason on stderr).
"""
import base64
import json
import sys

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding


def main():
    with open(sys.argv[1], "rb") as f:
        token = f.read().decode("utf-8")
    try:
        chain = json.loads(token)
        assert isinstance(chain, list)
        certs = [x509.load_der_x509_certificate(base64.b64decode(c, validate=True))
                 for c in chain]
    except Exception as e:  # noqa: BLE001 -- any failure is the verdict
        sys.stderr.write("not a JSON array of base64 DER certificates: %r\n" % e)
        sys.exit(1)
    pems = []
    for path in sys.argv[2:]:
        with open(path, "rb") as f:
            pems.append(x509.load_pem_x509_certificate(f.read()))
    match = [i < len(pems) and c.public_bytes(Encoding.DER) == pems[i].public_bytes(Encoding.DER)
             for i, c in enumerate(certs)]
    print(json.dumps({
        "count": len(certs),
        "subjects": [c.subject.rfc4514_string() for c in certs],
        "match": match,
        "spacing_as_json_dumps": token == json.dumps(chain),
    }))


if __name__ == "__main__":
    main()
