#!/usr/bin/env python3
"""Independent judge of gauth's SigV4: botocore (Debian's python3-botocore)
signs the same requests. Reads a JSON array of cases on stdin, each
{method, url, headers: [[name, value], ...], body, access_key_id,
secret_access_key, session_token, region, service, amz_date}; prints a JSON
array of {authorization, canonical_request, string_to_sign}."""
import datetime
import json
import sys
from unittest import mock
from urllib.parse import urlsplit, parse_qsl

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def sign(c):
    when = datetime.datetime.strptime(c["amz_date"], "%Y%m%dT%H%M%SZ")
    req = AWSRequest()
    req.method = c["method"]
    split = urlsplit(c["url"])
    req.url = "%s://%s%s" % (split.scheme, split.netloc, split.path or "/")
    req.params = dict(parse_qsl(split.query, keep_blank_values=True))
    for k, v in c["headers"]:
        req.headers[k] = v
    req.data = c.get("body", "").encode()
    req.context["timestamp"] = c["amz_date"]
    creds = Credentials(c["access_key_id"], c["secret_access_key"], c.get("session_token"))
    auth = botocore.auth.SigV4Auth(creds, c["service"], c["region"])
    with mock.patch.object(botocore.auth, "datetime") as dt:
        dt.datetime.utcnow.return_value = when
        dt.datetime.now.return_value = when.replace(tzinfo=datetime.timezone.utc)
        auth.add_auth(req)
        authz = req.headers["Authorization"]
        # What add_auth signed (x-amz-date and the token now among the
        # headers), without the Authorization header it added.
        del req.headers["Authorization"]
        creq = auth.canonical_request(req)
        sts = auth.string_to_sign(req, creq)
    return {"authorization": authz,
            "canonical_request": creq, "string_to_sign": sts}


print(json.dumps([sign(c) for c in json.load(sys.stdin)]))
