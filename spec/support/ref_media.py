#!/usr/bin/python3
"""What googleapiclient 1.7.12 (Debian's python3-googleapi) builds for media
uploads and batches, for spec/60-media_spec.lua and spec/61-batch_spec.lua.

  ref_media.py CASES.json   ->  JSON array on stdout, one answer per case

A case: {"doc": path, "resource": ["files"], "method": "create",
"params": {...}, "media": {"data_b64", "mime", "resumable", "path"}} or
{"doc": path, "batch_uri": true}. An answer: {"uri", "method",
"content_type", "resumable", "parts": [{"content_type", "json"|"b64"}]}
(multipart bodies parsed with the email package), {"batch_uri"}, or
{"error": "<exception class>: <message>"}.
"""

import base64
import email.parser
import email.policy
import io
import json
import sys

from googleapiclient.discovery import build_from_document
from googleapiclient.http import HttpMock, MediaIoBaseUpload


def answer(case):
    with open(case["doc"]) as f:
        doc = f.read()
    svc = build_from_document(doc, http=HttpMock(None, {"status": "200"}))
    if case.get("batch_uri"):
        return {"batch_uri": svc.new_batch_http_request()._batch_uri}
    obj = svc
    for r in case["resource"]:
        obj = getattr(obj, r)()
    params = dict(case.get("params") or {})
    m = case.get("media")
    if m:
        if m.get("path"):
            params["media_body"] = m["path"]
            if m.get("mime"):
                params["media_mime_type"] = m["mime"]
        else:
            data = base64.b64decode(m["data_b64"])
            params["media_body"] = MediaIoBaseUpload(
                io.BytesIO(data), mimetype=m["mime"],
                resumable=bool(m.get("resumable")))
    req = getattr(obj, case["method"])(**params)
    out = {"uri": req.uri, "method": req.method,
           "content_type": req.headers.get("content-type"),
           "resumable": req.resumable is not None}
    ct = req.headers.get("content-type") or ""
    if ct.startswith("multipart/related"):
        body = req.body if isinstance(req.body, bytes) else req.body.encode()
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            b"Content-Type: " + ct.encode() + b"\r\n\r\n" + body)
        parts = []
        for p in msg.get_payload():
            d = {"content_type": p.get_content_type()}
            raw = p.get_payload(decode=True)
            if d["content_type"] == "application/json":
                d["json"] = json.loads(raw)
            else:
                d["b64"] = base64.b64encode(raw).decode()
            parts.append(d)
        out["parts"] = parts
    return out


def main():
    with open(sys.argv[1]) as f:
        cases = json.load(f)
    out = []
    for c in cases:
        try:
            out.append(answer(c))
        except Exception as e:  # the spec compares refusals too
            out.append({"error": "%s: %s" % (type(e).__name__, e)})
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
