#!/usr/bin/env python3
"""An independent checker of Cloud Storage V4 signatures (signed URLs and
POST policies), written from Google's description of the V4 signing process
(canonical request, string to sign, GOOG4-RSA-SHA256 / GOOG4-HMAC-SHA256
signing-key chain, policy documents) with Python's `cryptography` and
`hmac`: not gauth, and not Google's Node client (which signs RSA only and
knows no HEAD).

  storage_ref.py check           stdin: JSON array of cases, stdout: results
  storage_ref.py serve --ready-file F --config JSON
                                 a loopback "Cloud Storage" that answers a
                                 request 200 when its signature holds, else
                                 403 with the reason

A URL case: {"method", "url", "headers": {name: value}, "payload": hex|null,
"public_pem" | "secret", "now": epoch}; a policy case: {"policy": true,
"fields": {...}, "public_pem" | "secret"}. Results: {"ok", "reason",
"canonical_request", "params"}.
"""
import argparse
import base64
import datetime
import hashlib
import hmac
import json
import re
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

UNRESERVED = "-_.~"


def enc(s):
    return urllib.parse.quote(s, safe=UNRESERVED)


def fold(v):
    # Leading and trailing white space removed, inner runs made one space.
    return re.sub(r"\s{2,}", " ", v.strip())


def hmac_key(secret, datestamp):
    k = ("GOOG4" + secret).encode()
    for part in (datestamp, "auto", "storage", "goog4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    return k


def check_signature(alg, text, sig_hex, case, datestamp):
    try:
        sig = bytes.fromhex(sig_hex)
    except ValueError:
        return "signature is not hex"
    if alg == "GOOG4-HMAC-SHA256":
        if "secret" not in case:
            return "no HMAC secret for this credential"
        want = hmac.new(hmac_key(case["secret"], datestamp), text.encode(),
                        hashlib.sha256).digest()
        return None if hmac.compare_digest(want, sig) else "HMAC signature mismatch"
    if alg == "GOOG4-RSA-SHA256":
        if "public_pem" not in case:
            return "no public key for this credential"
        pub = serialization.load_pem_public_key(case["public_pem"].encode())
        try:
            pub.verify(sig, text.encode(), padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            return "RSA signature mismatch"
        return None
    return "unknown algorithm " + alg


def parse_ts(ts):
    return datetime.datetime.strptime(ts, "%Y%m%dT%H%M%SZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def check_url(method, raw_path, raw_query, host, headers, payload, case):
    """Recompute the V4 signature of a request. Returns (reason|None, info)."""
    pairs = urllib.parse.parse_qsl(raw_query, keep_blank_values=True)
    params = dict(pairs)
    info = {"params": params}
    sig = params.get("X-Goog-Signature")
    if sig is None:
        return "no X-Goog-Signature", info
    if pairs[-1][0] != "X-Goog-Signature":
        return "X-Goog-Signature is not the last parameter", info
    for p in ("X-Goog-Algorithm", "X-Goog-Credential", "X-Goog-Date",
              "X-Goog-Expires", "X-Goog-SignedHeaders"):
        if p not in params:
            return "missing " + p, info
    alg, ts = params["X-Goog-Algorithm"], params["X-Goog-Date"]
    cred = params["X-Goog-Credential"]
    datestamp = ts[:8]
    scope = datestamp + "/auto/storage/goog4_request"
    if not cred.endswith("/" + scope):
        return "credential scope is not " + scope, info
    now = case.get("now")
    if now is not None:
        start = parse_ts(ts)
        if now < start - 900:
            return "signed in the future", info
        if now > start + int(params["X-Goog-Expires"]):
            return "expired", info
    hdrs = {k.lower(): v for k, v in headers.items()}
    hdrs["host"] = host
    signed = params["X-Goog-SignedHeaders"].split(";")
    if "host" not in signed:
        return "host is not signed", info
    for name in signed:
        if name not in hdrs:
            return "signed header %s not sent" % name, info
    canon_q = "&".join("%s=%s" % (enc(k), enc(v)) for k, v in sorted(
        (k, v) for k, v in pairs if k != "X-Goog-Signature"))
    canon_h = "".join("%s:%s\n" % (n, fold(hdrs[n])) for n in signed)
    if "x-goog-content-sha256" in hdrs:
        body_hash = hdrs["x-goog-content-sha256"]
    else:
        body_hash = payload or "UNSIGNED-PAYLOAD"
    creq = "\n".join([method, raw_path, canon_q, canon_h,
                      params["X-Goog-SignedHeaders"], body_hash])
    info["canonical_request"] = creq
    sts = "\n".join([alg, ts, scope, hashlib.sha256(creq.encode()).hexdigest()])
    return check_signature(alg, sts, sig, case, datestamp), info


def check_policy(case):
    f = case["fields"]
    for p in ("policy", "x-goog-signature", "x-goog-algorithm", "x-goog-date",
              "x-goog-credential", "key"):
        if p not in f:
            return "missing field " + p, {}
    text = base64.b64decode(f["policy"], validate=True).decode("ascii")
    doc = json.loads(text)
    info = {"policy": doc}
    conds = doc["conditions"]
    for name in ("key", "x-goog-date", "x-goog-credential", "x-goog-algorithm"):
        if {name: f[name]} not in conds:
            return "no exact condition for " + name, info
    if any(ord(c) > 127 for c in text):
        return "policy is not ASCII", info
    ts = f["x-goog-date"]
    return check_signature(f["x-goog-algorithm"], f["policy"],
                           f["x-goog-signature"], case, ts[:8]), info


def run_checks():
    out = []
    for case in json.load(sys.stdin):
        if case.get("policy"):
            reason, info = check_policy(case)
        else:
            u = urllib.parse.urlsplit(case["url"])
            reason, info = check_url(case["method"], u.path, u.query, u.netloc,
                                     case.get("headers") or {}, case.get("payload"),
                                     case)
            if "object" in case and reason is None:
                # The path Google's description asks for: every byte but
                # the unreserved characters and "/" percent-encoded.
                want = urllib.parse.quote(case["object"].encode("utf-8"),
                                          safe="/" + UNRESERVED)
                if not u.path.endswith("/" + want):
                    reason = "path %s does not end in the encoded object %s" % (u.path, want)
        info["ok"] = reason is None
        info["reason"] = reason
        out.append(info)
    json.dump(out, sys.stdout)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *a):
        pass

    def answer(self):
        cfg = self.server.cfg
        length = int(self.headers.get("content-length") or 0)
        body = self.rfile.read(length) if length else b""
        path, _, query = self.path.partition("?")
        params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        who = params.get("X-Goog-Credential", "").split("/")[0]
        case = dict(cfg["keys"].get(who, {}))
        case["now"] = __import__("time").time()
        headers = {k: v for k, v in self.headers.items()}
        payload = None
        if "x-goog-content-sha256" in {k.lower() for k in headers}:
            got = hashlib.sha256(body).hexdigest()
            want = [v for k, v in headers.items() if k.lower() == "x-goog-content-sha256"][0]
            if got != want.lower():
                return self.reply(400, "payload hash mismatch")
        reason, _ = check_url(self.command, path, query, self.headers.get("host", ""),
                              headers, payload, case)
        with self.server.lock:
            self.server.seen.append({"method": self.command, "path": path,
                                     "ok": reason is None, "reason": reason})
        if reason:
            return self.reply(403, "SignatureDoesNotMatch: " + reason)
        return self.reply(200, "ok")

    def reply(self, status, text):
        data = (text + "\n").encode()
        self.send_response(status)
        self.send_header("content-type", "text/plain")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = answer


def serve(args):
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.cfg = json.loads(args.config)
    srv.lock = threading.Lock()
    srv.seen = []
    with open(args.ready_file + ".tmp", "w") as f:
        json.dump({"port": srv.server_address[1]}, f)
    import os
    os.rename(args.ready_file + ".tmp", args.ready_file)
    srv.serve_forever()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["check", "serve"])
    ap.add_argument("--ready-file")
    ap.add_argument("--config")
    args = ap.parse_args()
    if args.mode == "check":
        run_checks()
    else:
        serve(args)


if __name__ == "__main__":
    main()
