#!/usr/bin/python3
"""Reference for bench/execute_bench.lua: googleapiclient 1.7.12 (Debian
python3-googleapi) executing the same request against the same endpoint.

  /usr/bin/python3 bench/execute_ref.py URL CA_FILE KEY_FILE

The same tiny Discovery document (one method, GET <URL>/json), built with
build_from_document over httplib2 with keep-alive (one httplib2.Http keeps
one connection per host), authorised by google-auth service-account
credentials (KEY_FILE: an RSA private key in PEM) through
google_auth_httplib2.AuthorizedHttp, their token taken
from <URL>/token once and then cached, as on the Lua side. Each call builds
the request and executes it (status check, JSON decoding).

Prints `execute_ref <rate> calls/s`: the best burst of 100 calls in
BENCH_ROUNDS rounds (default 3) of BENCH_SECONDS each (default 1).
"""

import json
import os
import sys
import time

import google_auth_httplib2
import httplib2
from google.oauth2 import service_account
from googleapiclient.discovery import build_from_document


def main():
    url, ca_file, key_file = sys.argv[1], sys.argv[2], sys.argv[3]
    seconds = float(os.environ.get("BENCH_SECONDS") or 1)
    rounds = int(os.environ.get("BENCH_ROUNDS") or 3)
    with open(key_file) as f:
        pem = f.read()
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
    doc = {
        "kind": "discovery#restDescription", "discoveryVersion": "v1",
        "id": "bench:v1", "name": "bench", "version": "v1",
        "rootUrl": url + "/", "servicePath": "",
        "schemas": {"Fixed": {"id": "Fixed", "type": "object", "properties": {
            "kind": {"type": "string"},
            "items": {"type": "array", "items": {"type": "string"}}}}},
        "resources": {"fixed": {"methods": {"get": {
            "id": "bench.fixed.get", "path": "json", "httpMethod": "GET",
            "response": {"$ref": "Fixed"}}}}},
    }
    authed = google_auth_httplib2.AuthorizedHttp(
        creds, http=httplib2.Http(ca_certs=ca_file))
    svc = build_from_document(json.dumps(doc), http=authed)
    fixed = svc.fixed()
    for _ in range(200):
        resp = fixed.get().execute()
        assert resp["kind"] == "bench#fixed", resp
    # The best burst, as on the Lua side (see execute_bench.lua).
    burst = 100
    best = 0.0
    for _ in range(rounds):
        start = time.monotonic()
        while True:
            t0 = time.monotonic()
            for _ in range(burst):
                fixed.get().execute()
            t = time.monotonic()
            best = max(best, burst / (t - t0))
            if t - start >= seconds:
                break
    print("execute_ref %.0f calls/s" % best)


if __name__ == "__main__":
    main()
