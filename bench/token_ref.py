#!/usr/bin/python3
"""Reference for bench/token_bench.lua: google-auth's service-account
Credentials.refresh() (Debian python3-google-auth, over httplib2 with
keep-alive through google_auth_httplib2) against the same local endpoint.

  /usr/bin/python3 bench/token_ref.py URL CA_FILE

URL is the endpoint's base (its /token answers with a fixed token; see
bench/nginx_fixed.sh). Prints `google_auth_refresh <rate> refreshes/s`.
The figure is the best of BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS
each (default 1), as in token_bench.lua.
"""

import os
import subprocess
import sys
import tempfile
import time

import google_auth_httplib2
import httplib2
from google.oauth2 import service_account


def main():
    url, ca_file = sys.argv[1], sys.argv[2]
    seconds = float(os.environ.get("BENCH_SECONDS") or 1)
    rounds = int(os.environ.get("BENCH_ROUNDS") or 3)
    with tempfile.NamedTemporaryFile(suffix=".pem") as f:
        subprocess.run(["openssl", "genpkey", "-algorithm", "RSA",
                        "-pkeyopt", "rsa_keygen_bits:2048", "-out", f.name],
                       check=True, stderr=subprocess.DEVNULL)
        pem = open(f.name).read()
    info = {
        "type": "service_account",
        "project_id": "bench-project",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": pem,
        "client_email": "bench@bench-project.iam.gserviceaccount.com",
        "token_uri": url + "/token",
    }
    creds = service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"])
    # One httplib2.Http keeps one connection per host open between requests.
    request = google_auth_httplib2.Request(httplib2.Http(ca_certs=ca_file))
    for _ in range(50):
        creds.refresh(request)
    assert creds.token == "ya29.bench-fixed-token", creds.token
    best = 0.0
    for _ in range(rounds):
        n, t0 = 0, time.monotonic()
        while True:
            creds.refresh(request)
            n += 1
            t = time.monotonic()
            if t - t0 >= seconds:
                break
        best = max(best, n / (t - t0))
    print("google_auth_refresh %.0f refreshes/s" % best)


if __name__ == "__main__":
    main()
