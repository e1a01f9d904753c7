#!/usr/bin/python3
"""A fake of Google's media endpoints for gauth's specs and media bench.

Run with /usr/bin/python3 (stdlib only):

  fake_upload.py --ready-file PATH [--host 127.0.0.1] [--port 0]
                 [--control-port 0] [--cert server.pem --key server.key]
                 [--data-dir DIR] [--parent-pid PID] [--no-digest]

When both ports listen it writes {"port", "control_port", "pid", "url"} to
the ready file (tmp file + rename). SIGTERM/SIGINT: exit at once.
--no-digest (for benchmarks): uploaded bodies are not hashed (md5Hash and
sha256 are then ""), so the fake spends as little as it can per byte.
Options, TLS, the ready file and serving: spec/support/fake_common.py.

Main port (HTTPS with --cert; HTTP/1.1 keep-alive; bodies streamed to and
from disk, so a 1 GiB transfer costs the fake no memory):

  Uploads, as Google documents them
  (https://developers.google.com/drive/api/guides/manage-uploads,
  https://cloud.google.com/storage/docs/performing-resumable-uploads):
    <POST|PUT|PATCH> /upload/<path>  (or /resumable/upload/<path>)
      ?uploadType=media      body = the media (Content-Type = its type)
      ?uploadType=multipart  multipart/related: a JSON metadata part, then
                             the media part; parsed with Python's `email`
                             package (400 when it does not parse as such)
      ?uploadType=resumable  starts a session: optional JSON metadata body,
                             X-Upload-Content-Type / -Length; answers 200
                             with Location: <same URL>&upload_id=<id>
    PUT <session URL> with Content-Range:
      bytes A-B/T or bytes A-B/*   a chunk; A must be what the session has
                             (else 400). A non-final chunk is committed in
                             multiples of `granularity` (256 KiB): the rest
                             is dropped, as Google does. 308 with
                             "Range: bytes=0-N" (none while nothing is
                             committed) until all T bytes are in, then 200
                             with the object's JSON.
      bytes */T (or */*)     status query: 308 (+ Range) or 200 when done.
    An unknown upload_id: 404.
    The object made: the last path segment is an existing object's id (an
    update), else a new id; its name is ?name=, the metadata's "name", or
    the id. The JSON answer: {"kind": "fake#object", "id", "name",
    "mimeType", "size" (string), "md5Hash" (base64), "sha256" (hex),
    "metadata" (what was sent), "uploadType"}.
  Objects: GET <any path ending in /<id or name>>?alt=media serves the bytes
    (Range: bytes=A-B | A- | -N: 206 with Content-Range; past the end: 416
    with "Content-Range: bytes */size"); without alt=media the object's
    JSON; DELETE: 204; PATCH with a JSON body: metadata merged, the JSON.
    Unknown: 404 in Google's error shape.
  POST /batch/<api>: multipart/mixed, parsed with `email`; every part must
    be application/http with a unique Content-ID; each embedded request is
    answered as above (in memory) and the answer is multipart/mixed, one
    application/http part per request with Content-ID <response-ID>.
  Authorization: a request (or batch part) whose "Bearer <token>" is in
    config reject_tokens gets 401 UNAUTHENTICATED.

Control port (plain HTTP, 127.0.0.1, JSON):
  POST /config   merge {reject_tokens: [...], granularity: n,
                 record_body_max: n (bytes of a body kept in records,
                 default 65536; base64 in body_b64), batch_reverse: true
                 (batch answers in the reverse order of the parts)}
  POST /inject   {"rules": [rule, ...]} appends failure rules. A rule:
                 on: "initiate" | "chunk" | "query" | "simple" |
                     "multipart" | "download" | "batch" | "object" | "any"
                 skip (let this many matching requests through first),
                 times (default 1), and what to do:
                 status (+ optional json / headers): answer that (a chunk's
                     body is read and dropped first: nothing is committed);
                 drop_after: bytes -- a chunk or simple upload: read that
                     many body bytes (a chunk commits them, rounded down to
                     the granularity), then close without an answer; a
                     download: send the head and that many body bytes, then
                     close.
  GET /requests  every request: {method, path, query, headers, body_len,
                 body_sha256, body_b64 (up to record_body_max), conn, kind,
                 injected, multipart: [{headers, len, sha256, json?, b64?}],
                 batch: [{content_id, headers, method, path, query,
                 req_headers, body}]}
  GET /objects, GET /objects/<id>  {id: object JSON + "path"}
  POST /objects  {id, name?, mimeType?, path? | data_b64?}: add an object
                 (path: served from that file, not copied)
  POST /reset    records, rules, sessions, objects and config to start
  GET /health
"""

import base64
import email.parser
import email.policy
import hashlib
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import traceback
import urllib.parse
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fake_common import (  # noqa: E402  (found through the line above)
    QUIET_ERRORS, FakeServer, QuietHandler, Recorder, arg_parser, exit_now,
    iter_chunked, log_err, serve, tls_context)

BLOCK = 1 << 20
MAX_MEMORY_BODY = 64 << 20   # batch and multipart bodies are parsed in memory


def google_error(code, status, message, reason=None):
    e = {"code": code, "message": message, "status": status}
    if reason:
        e["errors"] = [{"reason": reason, "message": message,
                        "domain": "global"}]
    return {"error": e}


class Dropped(Exception):
    """The handler closed the connection on purpose (an injected drop)."""


class State(Recorder):
    def __init__(self, data_dir, digest=True):
        Recorder.__init__(self)
        self.data_dir = data_dir
        self.digest = digest
        self.reset()

    def reset(self):
        with self.lock:
            self.config = {"reject_tokens": [], "granularity": 256 * 1024,
                           "record_body_max": 65536}
            self.records = []
            self.rules = []
            self.sessions = {}
            old = getattr(self, "objects", {})
            self.objects = {}
            self.seq = 0
        for o in old.values():
            if o.get("own"):
                try:
                    os.remove(o["path"])
                except OSError:
                    pass

    def next_id(self, prefix):
        with self.lock:
            self.seq += 1
            return "%s%d" % (prefix, self.seq)

    def take_rule(self, kind):
        """The action of the first rule matching this kind of request."""
        with self.lock:
            for r in self.rules:
                if r.get("on") not in (kind, "any"):
                    continue
                if r.get("skip", 0) > 0:
                    r["skip"] -= 1
                    continue
                r["times"] = r.get("times", 1) - 1
                if r["times"] <= 0:
                    self.rules.remove(r)
                return r
        return None

    def find_object(self, key):
        with self.lock:
            o = self.objects.get(key)
            if o:
                return o
            for o in self.objects.values():
                if o["name"] == key:
                    return o
        return None


def object_json(o):
    out = {"kind": "fake#object", "id": o["id"], "name": o["name"],
           "mimeType": o["mimeType"], "size": str(o["size"]),
           "md5Hash": o["md5Hash"], "sha256": o["sha256"],
           "metadata": o.get("metadata") or {},
           "uploadType": o.get("uploadType")}
    return out


def file_digests(path):
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(BLOCK)
            if not b:
                break
            md5.update(b)
            sha.update(b)
            size += len(b)
    return size, base64.b64encode(md5.digest()).decode(), sha.hexdigest()


class UploadServer(FakeServer):
    # A client may drop a transfer at any point: none of that is an error.
    quiet_errors = QUIET_ERRORS + (OSError,)


class Handler(QuietHandler):
    server_version = "UploadServer"
    timeout = 120
    # Large socket buffers: the bench measures the client, not this.
    rbufsize = BLOCK

    def setup(self):
        QuietHandler.setup(self)
        self.conn_id = self.server.state.next_conn_id()

    # -- plumbing --------------------------------------------------------

    def send(self, status, body=b"", headers=None, ctype=None):
        if isinstance(body, str):
            body = body.encode()
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        names = set()
        for k, v in (headers or []):
            names.add(k.lower())
            self.send_header(k, v)
        if ctype and "content-type" not in names:
            self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and body:
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status, obj, headers=None):
        self.send(status, json.dumps(obj), headers,
                  "application/json; charset=UTF-8")

    def hard_close(self):
        self.close_connection = True
        try:
            self.wfile.flush()
        except OSError:
            pass
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        raise Dropped()

    def body_length(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            return None
        n = self.headers.get("Content-Length")
        return int(n) if n else 0

    def iter_body(self, limit=None):
        """Yields the request body in blocks (Content-Length or chunked);
        stops after `limit` bytes when given (the rest stays unread)."""
        n = self.body_length()
        left_limit = limit
        if n is not None:
            left = n
            while left > 0:
                want = min(BLOCK, left)
                if left_limit is not None:
                    if left_limit <= 0:
                        return
                    want = min(want, left_limit)
                b = self.rfile.read(want)
                if not b:
                    raise ConnectionError("eof in body")
                left -= len(b)
                if left_limit is not None:
                    left_limit -= len(b)
                yield b
            return
        yield from iter_chunked(self.rfile, BLOCK)

    def read_body(self, cap=MAX_MEMORY_BODY):
        parts, total = [], 0
        for b in self.iter_body():
            total += len(b)
            if total > cap:
                raise ValueError("body too large for this endpoint")
            parts.append(b)
        return b"".join(parts)

    def new_record(self, kind):
        path, _, query = self.path.partition("?")
        return {"method": self.command, "path": path, "query": query,
                "headers": {k.lower(): v for k, v in self.headers.items()},
                "conn": self.conn_id, "kind": kind, "time": time.time(),
                "body_len": 0}

    def note_body(self, rec, data):
        """Record a body given whole (bytes)."""
        st = self.server.state
        rec["body_len"] = len(data)
        rec["body_sha256"] = hashlib.sha256(data).hexdigest()
        if len(data) <= st.config["record_body_max"]:
            rec["body_b64"] = base64.b64encode(data).decode()

    def stream_body_to(self, rec, f, limit=None):
        """Copy the body to file f; record its length and digest."""
        st = self.server.state
        sha = hashlib.sha256() if st.digest else None
        keep = []
        kept = 0
        n = 0
        for b in self.iter_body(limit):
            f.write(b)
            if sha:
                sha.update(b)
            n += len(b)
            if kept <= st.config["record_body_max"]:
                keep.append(b)
                kept += len(b)
        rec["body_len"] = n
        rec["body_sha256"] = sha.hexdigest() if sha else ""
        if n <= st.config["record_body_max"]:
            rec["body_b64"] = base64.b64encode(b"".join(keep)).decode()
        return n

    def drain(self):
        for _ in self.iter_body():
            pass

    def rejected(self, headers):
        auth = headers.get("authorization") or ""
        tok = auth[7:] if auth.lower().startswith("bearer ") else None
        return tok is not None and tok in self.server.state.config["reject_tokens"]

    def base_url(self):
        host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
        return "%s://%s" % ("https" if self.server.ssl_ctx else "http", host)

    # -- dispatch ---------------------------------------------------------

    def do_GET(self):
        try:
            self.route()
        except Dropped:
            pass
        except QUIET_ERRORS:
            self.close_connection = True
        except Exception:
            log_err("handler error on %s %s:\n%s" % (
                self.command, self.path, traceback.format_exc()))
            self.close_connection = True
            try:
                self.send_json(500, google_error(500, "INTERNAL",
                                                 "fake_upload internal error"))
            except Exception:
                pass

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_GET

    def route(self):
        path, _, query = self.path.partition("?")
        q = urllib.parse.parse_qs(query, keep_blank_values=True)
        if path.startswith("/upload/") or path.startswith("/resumable/upload/"):
            if "upload_id" in q:
                return self.session_put(q["upload_id"][0])
            ut = (q.get("uploadType") or [""])[0]
            if ut == "media":
                return self.simple_upload(path, q)
            if ut == "multipart":
                return self.multipart_upload(path, q)
            if ut == "resumable":
                return self.initiate(path, q, query)
            rec = self.new_record("upload")
            self.drain()
            self.server.state.record(rec)
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT",
                "Upload requests must include an uploadType URL parameter "
                "and a URL path beginning with /upload/", "badRequest"))
        if path.startswith("/batch"):
            return self.batch(path)
        return self.object_route(path, q)

    # -- injected failures ----------------------------------------------

    def injected_status(self, rec, rule):
        rec["injected"] = rule
        self.server.state.record(rec)
        st = rule["status"]
        body = rule.get("json") or google_error(
            st, "UNAVAILABLE" if st >= 500 else "FAILED_PRECONDITION",
            "injected failure %d" % st,
            "backendError" if st >= 500 else "failedPrecondition")
        hdrs = list((rule.get("headers") or {}).items())
        self.send_json(st, body, hdrs)

    def unauthorized(self, rec):
        rec["status"] = 401
        self.server.state.record(rec)
        self.send_json(401, google_error(
            401, "UNAUTHENTICATED",
            "Request had invalid authentication credentials.", "authError"),
            [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')])

    # -- simple and multipart ---------------------------------------------

    def make_object(self, path, q, meta, mime, tmp_path, upload_type):
        st = self.server.state
        seg = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
        existing = st.find_object(seg)
        if st.digest:
            size, md5, sha = file_digests(tmp_path)
        else:
            size, md5, sha = os.path.getsize(tmp_path), "", ""
        name = (q.get("name") or [None])[0] or (meta or {}).get("name")
        if existing:
            oid = existing["id"]
            name = name or existing["name"]
            if existing.get("own"):
                try:
                    os.remove(existing["path"])
                except OSError:
                    pass
        else:
            oid = st.next_id("obj")
            name = name or oid
        final = os.path.join(st.data_dir, "object-%s-%s" % (oid, uuid.uuid4().hex))
        os.rename(tmp_path, final)
        o = {"id": oid, "name": name, "mimeType": mime or
             "application/octet-stream", "size": size, "md5Hash": md5,
             "sha256": sha, "metadata": meta or {}, "path": final,
             "own": True, "uploadType": upload_type}
        with st.lock:
            st.objects[oid] = o
        return o

    def temp_file(self):
        fd, p = tempfile.mkstemp(dir=self.server.state.data_dir, prefix="in-")
        return os.fdopen(fd, "wb"), p

    def simple_upload(self, path, q):
        st = self.server.state
        rec = self.new_record("simple")
        rec["upload_type"] = "media"
        if self.rejected(rec["headers"]):
            self.drain()
            return self.unauthorized(rec)
        rule = st.take_rule("simple")
        f, tmp = self.temp_file()
        try:
            if rule and "drop_after" in rule:
                rec["injected"] = rule
                with f:
                    self.stream_body_to(rec, f, rule["drop_after"])
                os.remove(tmp)
                st.record(rec)
                return self.hard_close()
            with f:
                self.stream_body_to(rec, f)
            if rule and "status" in rule:
                os.remove(tmp)
                return self.injected_status(rec, rule)
            mime = self.headers.get("Content-Type")
            o = self.make_object(path, q, None, mime, tmp, "media")
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        rec["object"] = o["id"]
        st.record(rec)
        self.send_json(200, object_json(o))

    def multipart_upload(self, path, q):
        st = self.server.state
        rec = self.new_record("multipart")
        rec["upload_type"] = "multipart"
        if self.rejected(rec["headers"]):
            self.drain()
            return self.unauthorized(rec)
        rule = st.take_rule("multipart")
        ctype = self.headers.get("Content-Type") or ""
        f, tmp = self.temp_file()
        try:
            with f:
                self.stream_body_to(rec, f)
            if rule and "status" in rule:
                return self.injected_status(rec, rule)
            err, meta, mime, parts = self.parse_related(ctype, tmp)
            rec["multipart"] = parts
            if err:
                st.record(rec)
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT", err, "badContent"))
            with open(tmp, "wb") as out:
                out.write(self._media_payload)
            self._media_payload = None
            o = self.make_object(path, q, meta, mime, tmp, "multipart")
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        rec["object"] = o["id"]
        st.record(rec)
        self.send_json(200, object_json(o))

    def parse_related(self, ctype, body_path):
        """Parse a multipart/related body with Python's email package.
        Returns error, metadata, media type, the parts' description."""
        if os.path.getsize(body_path) > MAX_MEMORY_BODY:
            return "multipart body too large for the fake", None, None, []
        with open(body_path, "rb") as f:
            raw = f.read()
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n"
            b"MIME-Version: 1.0\r\n\r\n" + raw)
        if msg.get_content_type() != "multipart/related":
            return "Content-Type is not multipart/related: %s" % ctype, None, None, []
        if msg.defects:
            return "malformed multipart body: %r" % msg.defects, None, None, []
        payload = msg.get_payload()
        if not isinstance(payload, list):
            return "multipart body without parts", None, None, []
        parts = []
        for p in payload:
            data = p.get_payload(decode=True) or b""
            d = {"headers": {k.lower(): v for k, v in p.items()},
                 "content_type": p.get_content_type(), "len": len(data),
                 "sha256": hashlib.sha256(data).hexdigest(),
                 "defects": [repr(x) for x in p.defects]}
            if len(data) <= self.server.state.config["record_body_max"]:
                d["b64"] = base64.b64encode(data).decode()
            parts.append(d)
        if len(payload) != 2:
            return "expected 2 parts (metadata, media), got %d" % len(payload), None, None, parts
        if payload[0].get_content_type() != "application/json":
            return "the first part is not application/json", None, None, parts
        try:
            meta = json.loads(payload[0].get_payload(decode=True) or b"null")
        except ValueError as e:
            return "metadata part is not JSON: %s" % e, None, None, parts
        parts[0]["json"] = meta
        self._media_payload = payload[1].get_payload(decode=True) or b""
        mime = payload[1].get("Content-Type")
        return None, meta, mime, parts

    # -- resumable ---------------------------------------------------------

    def initiate(self, path, q, query):
        st = self.server.state
        rec = self.new_record("initiate")
        rec["upload_type"] = "resumable"
        body = self.read_body()
        self.note_body(rec, body)
        if self.rejected(rec["headers"]):
            return self.unauthorized(rec)
        rule = st.take_rule("initiate")
        if rule and "status" in rule:
            return self.injected_status(rec, rule)
        meta = None
        if body:
            ct = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            if ct != "application/json":
                st.record(rec)
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT",
                    "metadata must be application/json, got %r" % ct, "badContent"))
            try:
                meta = json.loads(body)
            except ValueError:
                st.record(rec)
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT", "metadata is not JSON", "parseError"))
        total = self.headers.get("X-Upload-Content-Length")
        sid = uuid.uuid4().hex
        fd, spath = tempfile.mkstemp(dir=st.data_dir, prefix="session-")
        os.close(fd)
        sess = {"id": sid, "path": path, "q": q, "meta": meta,
                "mime": self.headers.get("X-Upload-Content-Type"),
                "declared": int(total) if total is not None else None,
                "file": spath, "committed": 0, "object": None}
        with st.lock:
            st.sessions[sid] = sess
        rec["session"] = sid
        st.record(rec)
        loc = "%s%s?%s&upload_id=%s" % (self.base_url(), path, query, sid)
        self.send(200, b"", [("Location", loc), ("X-GUploader-UploadID", sid)])

    def session_put(self, sid):
        st = self.server.state
        with st.lock:
            sess = st.sessions.get(sid)
        cr = self.headers.get("Content-Range") or ""
        is_query = bool(re.match(r"^bytes \*/(\d+|\*)$", cr.strip()))
        rec = self.new_record("query" if is_query else "chunk")
        rec["session"] = sid
        rec["content_range"] = cr
        if sess is None:
            self.drain()
            st.record(rec)
            return self.send_json(404, google_error(
                404, "NOT_FOUND", "No such upload session", "notFound"))
        if self.command != "PUT":
            self.drain()
            st.record(rec)
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT", "chunks are sent with PUT", "badRequest"))
        if self.rejected(rec["headers"]):
            self.drain()
            return self.unauthorized(rec)
        rule = st.take_rule(rec["kind"])
        if is_query:
            self.drain()
            if rule and "status" in rule:
                return self.injected_status(rec, rule)
            m = re.match(r"^bytes \*/(\d+|\*)$", cr.strip())
            if m.group(1) != "*":
                total = int(m.group(1))
                if sess["object"] is None and total == 0 and sess["committed"] == 0:
                    return self.finish_session(rec, sess)
            return self.session_state(rec, sess)
        m = re.match(r"^bytes (\d+)-(\d+)/(\d+|\*)$", cr.strip())
        if not m:
            self.drain()
            st.record(rec)
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT", "bad Content-Range: %r" % cr, "badRequest"))
        a, b = int(m.group(1)), int(m.group(2))
        total = None if m.group(3) == "*" else int(m.group(3))
        n = self.body_length()
        if sess["object"] is not None:
            self.drain()
            return self.session_state(rec, sess)
        if b < a or (n is not None and n != b - a + 1) or \
                (total is not None and b >= total) or \
                (sess["declared"] is not None and total is not None and
                 total != sess["declared"]):
            self.drain()
            st.record(rec)
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT",
                "Content-Range %r does not fit the body (%s bytes) or the upload"
                % (cr, n), "badRequest"))
        if a != sess["committed"]:
            self.drain()
            st.record(rec)
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT",
                "Invalid request. According to the Content-Range header, the "
                "upload offset is %d byte(s), which does not match the %d "
                "byte(s) already uploaded." % (a, sess["committed"]),
                "badRequest"))
        if rule and "status" in rule:
            self.drain()
            return self.injected_status(rec, rule)
        gran = st.config["granularity"]
        final = total is not None and b + 1 == total
        with open(sess["file"], "ab") as f:
            if rule and "drop_after" in rule:
                rec["injected"] = rule
                got = self.stream_body_to(rec, f, rule["drop_after"])
                keep = a + (got // gran) * gran
            else:
                got = self.stream_body_to(rec, f)
                keep = a + got if final else a + (got // gran) * gran
            f.flush()
            os.ftruncate(f.fileno(), keep)
        sess["committed"] = keep
        rec["committed"] = keep
        if rule and "drop_after" in rule:
            st.record(rec)
            return self.hard_close()
        if final and keep == total:
            return self.finish_session(rec, sess)
        return self.session_state(rec, sess)

    def finish_session(self, rec, sess):
        o = self.make_object(sess["path"], sess["q"], sess["meta"],
                             sess["mime"], sess["file"], "resumable")
        sess["object"] = o["id"]
        rec["object"] = o["id"]
        self.server.state.record(rec)
        self.send_json(200, object_json(o))

    def session_state(self, rec, sess):
        st = self.server.state
        if sess["object"] is not None:
            o = st.objects.get(sess["object"])
            rec["object"] = sess["object"]
            st.record(rec)
            return self.send_json(200, object_json(o))
        hdrs = []
        if sess["committed"] > 0:
            hdrs.append(("Range", "bytes=0-%d" % (sess["committed"] - 1)))
        rec["status"] = 308
        st.record(rec)
        self.send(308, b"", hdrs)

    # -- objects -----------------------------------------------------------

    def object_route(self, path, q):
        st = self.server.state
        alt = (q.get("alt") or [""])[0]
        kind = "download" if (alt == "media" and self.command == "GET") else "object"
        rec = self.new_record(kind)
        if self.command in ("GET", "DELETE", "HEAD"):
            self.drain()
            body = b""
        else:
            body = self.read_body()
            self.note_body(rec, body)
        if self.rejected(rec["headers"]):
            return self.unauthorized(rec)
        rule = st.take_rule(kind)
        if rule and "status" in rule:
            return self.injected_status(rec, rule)
        if kind == "download":
            return self.download(rec, path, rule)
        status, hdrs, out = self.object_api(self.command, path, q, body)
        rec["status"] = status
        st.record(rec)
        self.send(status, out, hdrs)

    def object_api(self, method, path, q, body):
        """JSON object API, in memory: (status, headers, body)."""
        st = self.server.state
        key = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
        o = st.find_object(key)
        jh = [("Content-Type", "application/json; charset=UTF-8")]
        if o is None:
            return 404, jh, json.dumps(google_error(
                404, "NOT_FOUND", "File not found: %s." % key, "notFound")).encode()
        if method == "DELETE":
            with st.lock:
                st.objects.pop(o["id"], None)
            return 204, [], b""
        if method == "PATCH":
            try:
                patch = json.loads(body or b"{}")
            except ValueError:
                return 400, jh, json.dumps(google_error(
                    400, "INVALID_ARGUMENT", "body is not JSON", "parseError")).encode()
            o["metadata"] = dict(o.get("metadata") or {}, **patch)
            if "name" in patch:
                o["name"] = patch["name"]
            return 200, jh, json.dumps(object_json(o)).encode()
        if method != "GET":
            return 405, jh, json.dumps(google_error(
                405, "METHOD_NOT_ALLOWED", "method not allowed")).encode()
        if (q.get("alt") or [""])[0] == "media":
            with open(o["path"], "rb") as f:
                data = f.read()
            return 200, [("Content-Type", o["mimeType"])], data
        return 200, jh, json.dumps(object_json(o)).encode()

    def download(self, rec, path, rule):
        st = self.server.state
        key = urllib.parse.unquote(path.rstrip("/").rsplit("/", 1)[-1])
        o = st.find_object(key)
        if o is None:
            rec["status"] = 404
            st.record(rec)
            return self.send_json(404, google_error(
                404, "NOT_FOUND", "File not found: %s." % key, "notFound"))
        size = os.path.getsize(o["path"])
        rng = self.headers.get("Range")
        start, end, status = 0, size - 1, 200
        hdrs = [("Content-Type", o["mimeType"]), ("Accept-Ranges", "bytes")]
        if o["md5Hash"]:
            hdrs.append(("X-Goog-Hash", "md5=" + o["md5Hash"]))
        if rng:
            m = re.match(r"^bytes=(\d*)-(\d*)", rng.strip())
            if not m or (m.group(1) == "" and m.group(2) == ""):
                rec["status"] = 400
                st.record(rec)
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT", "bad Range %r" % rng, "badRequest"))
            if m.group(1) == "":
                n = int(m.group(2))
                start, end = max(0, size - n), size - 1
            else:
                start = int(m.group(1))
                end = int(m.group(2)) if m.group(2) else size - 1
                end = min(end, size - 1)
            if start >= size or end < start:
                rec["status"] = 416
                st.record(rec)
                return self.send(416, json.dumps(google_error(
                    416, "OUT_OF_RANGE", "Request range not satisfiable",
                    "requestedRangeNotSatisfiable")),
                    [("Content-Range", "bytes */%d" % size)],
                    "application/json; charset=UTF-8")
            status = 206
            hdrs.append(("Content-Range", "bytes %d-%d/%d" % (start, end, size)))
        count = end - start + 1 if size > 0 else 0
        rec["status"] = status
        rec["range"] = [start, end]
        st.record(rec)
        self.send_response_only(status)
        self.send_header("Date", self.date_time_string())
        for k, v in hdrs:
            self.send_header(k, v)
        self.send_header("Content-Length", str(count))
        self.end_headers()
        self.wfile.flush()
        drop = rule.get("drop_after") if rule else None
        if drop is not None:
            rec["injected"] = rule
            count = min(count, drop)
        with open(o["path"], "rb") as f:
            if count > 0:
                self.connection.sendfile(f, start, count)
        if drop is not None:
            return self.hard_close()

    # -- batch -------------------------------------------------------------

    def batch(self, path):
        st = self.server.state
        rec = self.new_record("batch")
        body = self.read_body()
        self.note_body(rec, body)
        if self.command != "POST":
            st.record(rec)
            return self.send_json(405, google_error(405, "METHOD_NOT_ALLOWED",
                                                    "batch takes POST"))
        if self.rejected(rec["headers"]):
            return self.unauthorized(rec)
        rule = st.take_rule("batch")
        if rule and "status" in rule:
            return self.injected_status(rec, rule)
        ctype = self.headers.get("Content-Type") or ""
        msg = email.parser.BytesParser(policy=email.policy.compat32).parsebytes(
            b"Content-Type: " + ctype.encode("latin-1") + b"\r\n"
            b"MIME-Version: 1.0\r\n\r\n" + body)

        def bad(message):
            st.record(rec)
            return self.send_json(400, google_error(400, "INVALID_ARGUMENT",
                                                    message, "badRequest"))

        if msg.get_content_type() != "multipart/mixed":
            return bad("batch Content-Type must be multipart/mixed, got %r" % ctype)
        if msg.defects:
            return bad("malformed multipart body: %r" % msg.defects)
        payload = msg.get_payload()
        if not isinstance(payload, list) or not payload:
            return bad("batch without parts")
        parts, seen = [], set()
        for p in payload:
            cid = p.get("Content-ID")
            d = {"content_id": cid, "headers": {k.lower(): v for k, v in p.items()},
                 "content_type": p.get_content_type()}
            parts.append(d)
            if p.get_content_type() != "application/http":
                rec["batch"] = parts
                return bad("every part must be application/http")
            if not cid or cid in seen:
                rec["batch"] = parts
                return bad("every part needs a unique Content-ID")
            seen.add(cid)
            raw = p.get_payload(decode=True) or b""
            try:
                d.update(self.parse_embedded(raw))
            except ValueError as e:
                rec["batch"] = parts
                return bad("part %s: %s" % (cid, e))
        rec["batch"] = parts
        boundary = "batch_" + uuid.uuid4().hex
        out = []
        for d in parts:
            if self.rejected(d["req_headers"]):
                status, hdrs, rbody = 401, [("Content-Type", "application/json; charset=UTF-8")], \
                    json.dumps(google_error(401, "UNAUTHENTICATED",
                                            "Request had invalid authentication credentials.",
                                            "authError")).encode()
            else:
                sub_rule = st.take_rule("object")
                if sub_rule and "status" in sub_rule:
                    status = sub_rule["status"]
                    hdrs = [("Content-Type", "application/json; charset=UTF-8")]
                    rbody = json.dumps(sub_rule.get("json") or google_error(
                        status, "FAILED_PRECONDITION", "injected failure %d" % status,
                        "failedPrecondition")).encode()
                else:
                    q = urllib.parse.parse_qs(d["query"], keep_blank_values=True)
                    status, hdrs, rbody = self.object_api(d["method"], d["path"], q,
                                                          d["body_bytes"])
            d["status"] = status
            d["body"] = d.pop("body_bytes").decode("utf-8", "replace")
            reason = self.responses.get(status, ("",))[0]
            head = ["HTTP/1.1 %d %s" % (status, reason)]
            for k, v in hdrs:
                head.append("%s: %s" % (k, v))
            head.append("Content-Length: %d" % len(rbody))
            out.append(("--%s\r\nContent-Type: application/http\r\n"
                        "Content-ID: <response-%s>\r\n\r\n" % (
                            boundary, d["content_id"].strip("<>"))).encode()
                       + ("\r\n".join(head) + "\r\n\r\n").encode() + rbody + b"\r\n")
        if st.config.get("batch_reverse"):
            out.reverse()
        out.append(("--%s--\r\n" % boundary).encode())
        st.record(rec)
        self.send(200, b"".join(out), [
            ("Content-Type", "multipart/mixed; boundary=%s" % boundary)])

    def parse_embedded(self, raw):
        """An application/http request: request line, headers, body."""
        sep = raw.find(b"\r\n\r\n")
        seplen = 4
        if sep < 0:
            sep, seplen = raw.find(b"\n\n"), 2
        if sep < 0:
            head, body = raw, b""
        else:
            head, body = raw[:sep], raw[sep + seplen:]
        lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
        m = re.match(r"^(GET|POST|PUT|PATCH|DELETE) (/\S*) HTTP/1\.1$", lines[0])
        if not m:
            raise ValueError("bad request line %r" % lines[0])
        hdrs = {}
        for line in lines[1:]:
            if not line:
                continue
            k, sep2, v = line.partition(":")
            if not sep2:
                raise ValueError("bad header line %r" % line)
            hdrs[k.strip().lower()] = v.strip()
        if "content-length" in hdrs:
            n = int(hdrs["content-length"])
            if n > len(body):
                raise ValueError("body shorter than its Content-Length")
            body = body[:n]
        elif body.endswith(b"\r\n"):
            body = body[:-2]
        target = m.group(2)
        path, _, query = target.partition("?")
        return {"method": m.group(1), "path": path, "query": query,
                "req_headers": hdrs, "body_bytes": body}


class ControlHandler(QuietHandler):

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response_only(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        try:
            self.route()
        except Exception as e:
            log_err("control error:\n%s" % traceback.format_exc())
            self.reply(400, {"error": str(e)})

    do_POST = do_GET

    def route(self):
        st = self.server.state
        n = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(n) or b"null") if n else None
        path = self.path.partition("?")[0]
        if path == "/health":
            return self.reply(200, {"ok": True})
        if path == "/config" and self.command == "POST":
            with st.lock:
                st.config.update(body or {})
            return self.reply(200, st.config)
        if path == "/config":
            return self.reply(200, st.config)
        if path == "/inject":
            with st.lock:
                for r in (body or {}).get("rules", []):
                    if r.get("on") not in ("initiate", "chunk", "query", "simple",
                                           "multipart", "download", "batch",
                                           "object", "any"):
                        raise ValueError("bad rule: %r" % r)
                    st.rules.append(dict(r))
            return self.reply(200, {"rules": st.rules})
        if path == "/requests":
            with st.lock:
                return self.reply(200, list(st.records))
        if path == "/reset":
            st.reset()
            return self.reply(200, {"ok": True})
        if path == "/objects" and self.command == "POST":
            o = dict(body)
            oid = o.get("id") or st.next_id("obj")
            if "data_b64" in o:
                fd, p = tempfile.mkstemp(dir=st.data_dir, prefix="object-")
                with os.fdopen(fd, "wb") as f:
                    f.write(base64.b64decode(o.pop("data_b64")))
                o["path"], o["own"] = p, True
            if st.digest:
                size, md5, sha = file_digests(o["path"])
            else:
                size, md5, sha = os.path.getsize(o["path"]), "", ""
            o.update({"id": oid, "name": o.get("name") or oid,
                      "mimeType": o.get("mimeType") or "application/octet-stream",
                      "size": size, "md5Hash": md5, "sha256": sha,
                      "metadata": o.get("metadata") or {}})
            with st.lock:
                st.objects[oid] = o
            return self.reply(200, dict(object_json(o), path=o["path"]))
        if path == "/objects":
            with st.lock:
                return self.reply(200, {k: dict(object_json(o), path=o["path"])
                                        for k, o in st.objects.items()})
        if path.startswith("/objects/"):
            o = st.objects.get(urllib.parse.unquote(path[len("/objects/"):]))
            if not o:
                return self.reply(404, {"error": "no such object"})
            return self.reply(200, dict(object_json(o), path=o["path"]))
        return self.reply(404, {"error": "unknown control path"})


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--data-dir")
    ap.add_argument("--no-digest", action="store_true")
    args = ap.parse_args()

    own_dir = args.data_dir is None
    data_dir = args.data_dir or tempfile.mkdtemp(prefix="fake-upload-")
    os.makedirs(data_dir, exist_ok=True)
    state = State(data_dir, digest=not args.no_digest)
    main_srv = UploadServer((args.host, args.port), Handler, state,
                            tls_context(args.cert, args.key))
    ctl_srv = UploadServer(("127.0.0.1", args.control_port), ControlHandler,
                           state)
    serve(main_srv, ctl_srv, args)
    if own_dir:
        shutil.rmtree(data_dir, ignore_errors=True)
    else:
        state.reset()
    exit_now()


if __name__ == "__main__":
    main()
