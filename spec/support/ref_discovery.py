#!/usr/bin/python3
"""Reference requests from Google's Python client, for the discovery specs.

Run with Debian's interpreter (/usr/bin/python3, python3-googleapi installed,
googleapiclient 1.7.12):

    /usr/bin/python3 spec/support/ref_discovery.py calls.json > results.jsonl

calls.json is a JSON list of calls:

    {"doc": "/tmp/gauth-spec.X/discovery/compute.v1.json",
     "method_path": ["instances", "list"],      # googleapiclient's names
     "params": {"project": "p", "zone": "z"},    # keyword arguments
     "next_page_token": "t",                     # optional: then the request
                                                 # is <method>_next(req, resp)
     "developer_key": "k"}                       # optional

For each call, in order, one JSON line: what HttpRequest.execute() sends
(it is run against an HttpMock that records it, so the 2048-byte GET to POST
rule applies):

    {"method": ..., "uri": ..., "body": ... or null, "headers": {...}}

or {"none": true} when <method>_next returns None, or {"error": "Type: text"}
when googleapiclient raises. Every document is built once per process.
"""

import json
import sys

from googleapiclient.discovery import build_from_document
from googleapiclient.http import HttpMock


class Recorder(HttpMock):
    """An HttpMock answering 200 "{}" to everything, keeping the request."""

    def __init__(self):
        HttpMock.__init__(self, headers={"status": "200"})
        self.data = b"{}"


def text(b):
    if b is None:
        return None
    if isinstance(b, bytes):
        return b.decode("utf-8", "surrogateescape")
    return b


def run(call, services):
    key = (call["doc"], call.get("developer_key"))
    entry = services.get(key)
    if entry is None:
        rec = Recorder()
        with open(call["doc"], "rb") as f:
            doc = f.read().decode("utf-8")
        svc = build_from_document(doc, http=rec, developerKey=call.get("developer_key"))
        entry = services[key] = (svc, rec, {})
    svc, rec, resources = entry
    path = call["method_path"]
    # Making a Resource makes every method on it (docstrings included): keep
    # each one, it is reusable.
    obj = resources.get(tuple(path[:-1]))
    if obj is None:
        obj = svc
        for name in path[:-1]:
            obj = getattr(obj, name)()
        resources[tuple(path[:-1])] = obj
    req = getattr(obj, path[-1])(**call.get("params", {}))
    tok = call.get("next_page_token")
    if tok is not None:
        req = getattr(obj, path[-1] + "_next")(
            req, {"nextPageToken": tok, "pageToken": tok})
        if req is None:
            return {"none": True}
    rec.uri = rec.method = rec.body = rec.headers = None
    req.execute()
    return {
        "method": rec.method,
        "uri": rec.uri,
        "body": text(rec.body),
        "headers": {k.lower(): text(v) for k, v in (rec.headers or {}).items()},
    }


def main():
    src = open(sys.argv[1], "rb") if len(sys.argv) > 1 else sys.stdin.buffer
    calls = json.loads(src.read().decode("utf-8"))
    services = {}
    out = sys.stdout
    for call in calls:
        try:
            res = run(call, services)
        except Exception as e:  # the reference's refusal is a result
            res = {"error": "%s: %s" % (type(e).__name__, e)}
        out.write(json.dumps(res, ensure_ascii=True))
        out.write("\n")
    out.flush()


if __name__ == "__main__":
    main()
