#!/usr/bin/python3
"""The judge of spec/57-session_spec.lua: Python's
google.auth.transport.requests.AuthorizedSession (Debian python3-google-auth
+ python3-requests) sends a batch of requests to the loopback fake, so the
spec can compare what reached the server with what gauth.session sent.

stdin: JSON {"ca_file", "token_uri", "client_id", "client_secret",
             "cases": [{"name", "refresh_token", "method", "url",
                        "headers", "body"}]}
stdout: JSON [{"name", "status"} | {"name", "error": "retry"|"other",
                                     "detail"}]

Each case gets its own user credentials (refresh-token grant against the
fake's token endpoint) and its own session, so token exchanges can be
counted per case by refresh token. The session is AuthorizedSession with
max_refresh_attempts=1 (one refresh and retry on 401: the rule of gauth;
Python's default is 2) and urllib3 retries as google-api-core's defaults
read: 3 retries of idempotent methods (urllib3's DEFAULT_ALLOWED_METHODS:
GET, HEAD, PUT, DELETE, OPTIONS, TRACE; never POST or PATCH) on 408, 429
and every 5xx, Retry-After honoured, no backoff (the spec judges decisions,
not pauses); retries that run out raise (RetryError).
"""
import json
import os
import sys

import requests
import requests.adapters
from urllib3.util.retry import Retry

import google.oauth2.credentials
from google.auth.transport.requests import AuthorizedSession

STATUSES = [408, 429] + list(range(500, 600))


def main():
    cfg = json.load(sys.stdin)
    # requests trusts this bundle for every session, the credentials' own
    # token requests included; nothing else is trusted.
    os.environ["REQUESTS_CA_BUNDLE"] = cfg["ca_file"]
    out = []
    for case in cfg["cases"]:
        creds = google.oauth2.credentials.Credentials(
            None, refresh_token=case["refresh_token"],
            token_uri=cfg["token_uri"], client_id=cfg["client_id"],
            client_secret=cfg["client_secret"])
        s = AuthorizedSession(creds, max_refresh_attempts=1)
        s.verify = cfg["ca_file"]
        retry = Retry(total=3, connect=3, read=3, status=3,
                      status_forcelist=STATUSES, backoff_factor=0,
                      respect_retry_after_header=True, raise_on_status=True)
        s.mount("https://", requests.adapters.HTTPAdapter(max_retries=retry))
        body = case.get("body")
        try:
            r = s.request(case["method"], case["url"],
                          data=body.encode() if body is not None else None,
                          headers=case.get("headers") or {}, timeout=30)
            out.append({"name": case["name"], "status": r.status_code})
        except requests.exceptions.RetryError as e:
            out.append({"name": case["name"], "error": "retry",
                        "detail": str(e)[:200]})
        except Exception as e:  # noqa: BLE001 - reported to the spec
            out.append({"name": case["name"], "error": "other",
                        "detail": repr(e)[:300]})
        s.close()
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
