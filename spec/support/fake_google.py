#!/usr/bin/python3
"""A fake of Google's auth endpoints for gauth's specs (loopback only).

Run with /usr/bin/python3 (stdlib + PyJWT + cryptography from Debian):

  fake_google.py --ready-file PATH [--host 127.0.0.1|::1] [--port 0]
                 [--control-port 0] [--cert server.pem --key server.key]
                 [--signing-key PATH] [--parent-pid PID] [--max-lifetime S]

When both ports listen it writes {"port", "control_port", "pid", "url"} as
JSON to the ready file (tmp file + rename). SIGTERM/SIGINT: exit 0 at once.
--parent-pid: exit when that process is gone. Nothing goes to stdout; errors
of the fake itself go to stderr. spec/helpers.lua wraps all of this.
Options, TLS, the ready file and serving: spec/support/fake_common.py.

Main port (HTTPS when --cert; HTTP/1.1, keep-alive, always Content-Length;
every answer has a Date header shifted by clock_offset):
  POST /token (also /o/oauth2/token, /oauth2/v4/token), form or JSON body
    grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer, assertion=JWT
      RS256/ES256, verified against public_keys (the kid's key if the header
      kid is known, else every key). Then: iat, exp numbers, 0 < exp-iat <=
      3600, iat <= now+leeway, exp >= now-leeway (now = clock + clock_offset);
      aud in token_uri; iss non-empty; scope or target_audience present.
      200 {"access_token": "<access_token>-<n>", "expires_in", "token_type":
      "Bearer"}; with target_audience: 200 {"id_token"} (RS256 by the fake's
      key; iss https://accounts.google.com, aud=target_audience, email=iss).
    grant_type=refresh_token, refresh_token, client_id, client_secret (or
      HTTP Basic): checked against refresh_tokens; 200 {"access_token",
      "expires_in", "scope", "token_type"}.
    Errors (JSON {"error", "error_description"}):
      400 invalid_grant "Invalid JWT Signature."  (bad/unknown signature,
          malformed JWT, alg not RS256/ES256)
      400 invalid_grant "Invalid JWT: Token must be a short-lived token (60
          minutes) and in a reasonable timeframe. Check your iat and exp
          values in the JWT claim."
      400 invalid_grant "Invalid JWT: Failed audience check. The expected
          value is <token_uri>"
      400 invalid_grant "Invalid grant: account not found"   (no iss)
      400 invalid_scope "Invalid OAuth scope or ID token audience provided."
      400 invalid_request "Missing required parameter: assertion" (or
          refresh_token)
      400 unsupported_grant_type "Invalid grant_type: <value>"
      400 invalid_grant "Token has been expired or revoked." (refresh token)
      401 invalid_client "The OAuth client was not found." / "Unauthorized"
      405 (Google error shape) for a method other than POST.
  GET / -> 200 "computeMetadata/\n" with Metadata-Flavor: Google (no header
    needed, as on GCE).
  /computeMetadata/v1/... (GCE metadata server): requests without
    "Metadata-Flavor: Google" get 403 text; every answer, scripted ones
    included, carries Metadata-Flavor: Google. Values (application/text or
    JSON): project/project-id, project/numeric-project-id, instance/id,
    instance/zone, instance/hostname, instance/service-accounts/ (listing),
    instance/service-accounts/<sa>/{email,scopes,aliases} and
    <sa>/?recursive=true (JSON {aliases, email, scopes}), where <sa> is
    "default", the service_account email, or any X with a
    "instance/service-accounts/X/email" metadata entry (else 404).
    <sa>/token[?scopes=a,b] -> {"access_token", "expires_in", "token_type"}.
    <sa>/identity?audience=A[&format=full] -> a JWT (text/html), RS256 by the
    fake's key, aud=A; format=full adds email, email_verified and
    google.compute_engine. No audience: 400 text.
    The metadata setting overrides any path (relative to /computeMetadata/v1/):
    a string is sent as is, an object/array as JSON, null makes it a 404.
  POST /v1/projects/-/serviceAccounts/<email>:generateAccessToken
    {"scope": [...], "lifetime": "Ns"} -> {"accessToken", "expireTime"
    (RFC 3339 UTC)}; also :generateIdToken {"audience", "includeEmail"} ->
    {"token"}, :signBlob {"payload": b64} -> {"keyId", "signedBlob"},
    :signJwt {"payload": "<json>"} -> {"keyId", "signedJwt"}. Needs
    "Authorization: Bearer <an access token this fake issued>", else 401
    UNAUTHENTICATED; bad input 400 INVALID_ARGUMENT (Google error shape).
  GET/POST /tokeninfo, /oauth2/v3/tokeninfo ?access_token= -> {"azp", "aud",
    "scope", "exp", "expires_in", "access_type"} or 400 invalid_token.
  GET /oauth2/v3/certs (JWKS) and /oauth2/v1/certs ({kid: cert PEM}): the
    fake's signing key.
  GET /v1/projects/<number> (Cloud Resource Manager v1 projects.get) ->
    {"projectNumber", "projectId", ...} for a number in the "projects"
    setting; 403 PERMISSION_DENIED for any other; 401 without a token of
    this fake.
  Anything else: 404 {"error": {"code": 404, "message": "...", "status":
    "NOT_FOUND"}}.
  Access tokens of every kind are "<access_token>-<n>", n = 1, 2, ... over
  all endpoints since the last reset.

Control port (plain HTTP, 127.0.0.1, JSON bodies and answers; 400 on bad
input):
  POST /config   merge settings; answers like GET /config. Settings:
      public_keys {kid: PEM public key or certificate}
      token_uri   string or list (default [<url>/token])
      access_token  token prefix (default "fake-token")
      expires_in  default 3599 (sent as given: a string stays a string)
      clock_offset  seconds the fake's clock is ahead (default 0)
      clock       epoch seconds: the fake's clock stands still there
                  (clock_offset is then ignored; default null: real time)
      leeway      seconds of iat/exp tolerance (default 60)
      require_scope  default true
      refresh_tokens {refresh_token: {client_id, client_secret[, scope]}}
      metadata    {path: value} (see above)
      service_account  default SA email
          (default "fake-sa@fake-project.iam.gserviceaccount.com")
      project_id ("fake-project"), numeric_project_id ("123456789012")
    public_keys, refresh_tokens and metadata merge key by key (null removes
    a key; in metadata null stores a 404); a null top-level setting goes
    back to its default; other settings are replaced.
  GET /config    settings plus token_uri (always a list), server_kid,
    server_public_pem, server_cert_pem (the fake's signing key), base_url.
  POST /script   {"path": "/token", "responses": [{...}], "replace": false}
    queues responses for that exact path (query ignored; the percent-decoded
    path matches too), consumed in order before the default handler. Entry
    fields: status, headers {name: value or [values]}, body (string) or
    body_b64 or json (any JSON value), delay (seconds, before answering),
    hang (never answer; the socket stays open until the fake stops), drop
    (close without answering), truncate (send the headers and half the
    body, then close). Without status (and without hang/drop) the default
    handler answers, after delay. Content-Type defaults to JSON when the
    body starts with { or [, else text/plain.
  GET /script    what is still queued: {path: [entries]}.
  GET /requests[?path=P]  every request the main port received, in order:
    {method, path, query (raw), headers (lower-case names; repeats joined by
    ", "), body (UTF-8, invalid bytes replaced), body_b64 (exact), time
    (epoch seconds, real clock), conn (connection number: same number, same
    keep-alive connection); with --client-ca also client_subject (the client
    certificate's CN) and client_cert_b64 (its DER)}. Requests are recorded
    before scripts play.
  GET /tokens    {token: {kind, scope, iss/email/client_id, issued_at, ...}}
  POST /reset    config, scripts, records, tokens and the counter back to
    their start state.
  GET /health    {"ok": true}
"""

import base64
import copy
import datetime
import email.utils
import hashlib
import json
import os
import re
import socket
import sys
import threading
import time
import traceback
import urllib.parse

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import fake_federation  # noqa: E402  (workload identity federation)
from fake_common import (  # noqa: E402  (found through the line above)
    QUIET_ERRORS, STOP, FakeServer, QuietHandler, Recorder, arg_parser,
    exit_now, iter_chunked, log_err, serve, tls_context, url_of,
    peer_cert)

JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"
STS_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
STS_ACCESS_TOKEN = "urn:ietf:params:oauth:token-type:access_token"
MAX_BODY = 64 * 1024 * 1024
MD_PREFIX = "/computeMetadata/v1/"

MSG_BAD_SIGNATURE = "Invalid JWT Signature."
MSG_TIME_WINDOW = (
    "Invalid JWT: Token must be a short-lived token (60 minutes) and in a "
    "reasonable timeframe. Check your iat and exp values in the JWT claim."
)
MSG_UNAUTHENTICATED = (
    "Request had invalid authentication credentials. Expected OAuth 2 access "
    "token, login cookie or other valid authentication credential. See "
    "https://developers.google.com/identity/sign-in/web/devconsole-project."
)


def default_config():
    return {
        # kid -> PEM public key or certificate, to verify assertions.
        "public_keys": {},
        # str or list of str; None means <this server's URL>/token.
        "token_uri": None,
        "access_token": "fake-token",
        "expires_in": 3599,
        "clock_offset": 0,
        # A standing clock (epoch seconds) instead of time.time() + offset.
        "clock": None,
        # Seconds of tolerance on iat (future) and exp (past).
        "leeway": 60,
        # Require scope or target_audience in assertions, as Google does.
        "require_scope": True,
        # refresh_token -> {client_id, client_secret[, scope]}
        "refresh_tokens": {},
        # metadata path (relative to /computeMetadata/v1/) -> value.
        "metadata": {},
        "service_account": "fake-sa@fake-project.iam.gserviceaccount.com",
        "project_id": "fake-project",
        "numeric_project_id": "123456789012",
        # expires_in of STS token exchanges (false: left out of the answer).
        "sts_expires_in": 3600,
        # Workload identity federation: see fake_federation.py.
        "federation": {},
        # Cloud Resource Manager (GET /v1/projects/<number>): project
        # number -> project id; any valid token of this fake may read them.
        "projects": {},
    }


# Settings whose value is a map merged key by key (null removes a key).
# The scope of a self-signed JWT that IAM Credentials accepts.
IAM_SCOPE = "https://www.googleapis.com/auth/iam"
MAP_SETTINGS = ("public_keys", "refresh_tokens", "metadata")


def rfc3339(ts):
    return datetime.datetime.fromtimestamp(
        ts, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def load_public_key(pem):
    data = pem.encode() if isinstance(pem, str) else pem
    if b"BEGIN CERTIFICATE" in data:
        return x509.load_pem_x509_certificate(data).public_key()
    return serialization.load_pem_public_key(data)


def b64url_uint(n):
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


class Signer:
    """The fake's own RSA key: signs ID tokens, signBlob, signJwt."""

    def __init__(self, path=None):
        self.key = self.load_or_make(path)
        pub = self.key.public_key()
        self.public_pem = pub.public_bytes(
            serialization.Encoding.PEM,
            serialization.PublicFormat.SubjectPublicKeyInfo).decode()
        self.kid = hashlib.sha1(self.public_pem.encode()).hexdigest()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.kid)])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(pub).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30))
                .sign(self.key, hashes.SHA256()))
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
        nums = pub.public_numbers()
        self.jwk = {"kty": "RSA", "alg": "RS256", "use": "sig",
                    "kid": self.kid, "n": b64url_uint(nums.n),
                    "e": b64url_uint(nums.e)}

    @staticmethod
    def load_or_make(path):
        # RSA key generation is most of the start-up time: --signing-key
        # lets a test run share one key between its fakes.
        if path:
            try:
                with open(path, "rb") as f:
                    return serialization.load_pem_private_key(f.read(), None)
            except (OSError, ValueError):
                pass
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if path:
            tmp = "%s.tmp.%d" % (path, os.getpid())
            with open(tmp, "wb") as f:
                f.write(key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()))
            os.rename(tmp, path)
        return key

    def jwt(self, claims):
        return jwt.encode(claims, self.key, algorithm="RS256",
                          headers={"kid": self.kid})

    def sign(self, data):
        return self.key.sign(data, padding.PKCS1v15(), hashes.SHA256())


class State(Recorder):
    """Everything the control port changes; one lock guards it all."""

    def __init__(self, base_url, signing_key=None):
        # Reentrant: a helper holding it may call another (e.g. now()).
        Recorder.__init__(self, threading.RLock())
        self.base_url = base_url
        self.signer = Signer(signing_key)
        self.reset()

    def reset(self):
        with self.lock:
            self.config = default_config()
            self.scripts = {}
            self.records = []
            self.issued = {}
            self.counter = 0

    def cfg(self, name):
        with self.lock:
            return copy.deepcopy(self.config[name])

    def snapshot(self):
        with self.lock:
            c = copy.deepcopy(self.config)
        c["token_uri"] = self.token_uris()
        c["server_kid"] = self.signer.kid
        c["server_public_pem"] = self.signer.public_pem
        c["server_cert_pem"] = self.signer.cert_pem
        c["base_url"] = self.base_url
        return c

    def merge_config(self, body):
        if not isinstance(body, dict):
            raise ValueError("config must be a JSON object")
        with self.lock:
            for k, v in body.items():
                if k in MAP_SETTINGS:
                    if v is None:
                        self.config[k] = {}
                        continue
                    if not isinstance(v, dict):
                        raise ValueError("%s must be an object" % k)
                    for kk, vv in v.items():
                        if vv is None and k == "metadata":
                            # A null metadata value makes the path a 404.
                            self.config[k][kk] = None
                        elif vv is None:
                            self.config[k].pop(kk, None)
                        else:
                            self.config[k][kk] = vv
                elif v is None and k in default_config():
                    self.config[k] = default_config()[k]
                else:
                    self.config[k] = v

    def token_uris(self):
        with self.lock:
            t = self.config["token_uri"]
        if t is None:
            return [self.base_url + "/token"]
        return t if isinstance(t, list) else [t]

    def now(self):
        with self.lock:
            off = self.config["clock_offset"]
            fixed = self.config.get("clock")
        if isinstance(fixed, (int, float)) and not isinstance(fixed, bool):
            return float(fixed)
        try:
            return time.time() + float(off)
        except (TypeError, ValueError):
            return time.time()

    def issue(self, info):
        with self.lock:
            self.counter += 1
            tok = "%s-%d" % (self.config["access_token"], self.counter)
            info = dict(info)
            info["issued_at"] = time.time()
            self.issued[tok] = info
            return tok

    def token_info(self, tok):
        with self.lock:
            return copy.deepcopy(self.issued.get(tok))

    def add_script(self, path, responses, replace=False):
        with self.lock:
            q = self.scripts.setdefault(path, [])
            if replace:
                del q[:]
            q.extend(responses)

    def pop_script(self, paths):
        with self.lock:
            for p in paths:
                q = self.scripts.get(p)
                if q:
                    r = q.pop(0)
                    if not q:
                        del self.scripts[p]
                    return r
        return None


class BaseHandler(QuietHandler):
    server_version = "ESF"
    # Idle keep-alive connections are closed after this many seconds.
    timeout = 120

    def date_time_string(self, timestamp=None):
        if timestamp is None:
            timestamp = self.server.state.now()
        return email.utils.formatdate(timestamp, usegmt=True)

    def read_body(self):
        te = (self.headers.get("Transfer-Encoding") or "").lower()
        if "chunked" in te:
            parts, total = [], 0
            for b in iter_chunked(self.rfile, MAX_BODY):
                total += len(b)
                if total > MAX_BODY:
                    raise ValueError("body too large")
                parts.append(b)
            return b"".join(parts)
        n = int(self.headers.get("Content-Length") or 0)
        if n < 0 or n > MAX_BODY:
            raise ValueError("bad Content-Length")
        return self.rfile.read(n) if n else b""

    def send(self, status, body=b"", headers=None, ctype=None,
             truncate=False):
        if isinstance(body, str):
            body = body.encode()
        hdrs = []
        names = set()
        for k, v in (headers or []):
            hdrs.append((k, v))
            names.add(k.lower())
        self.send_response_only(status)
        if "date" not in names:
            self.send_header("Date", self.date_time_string())
        if "server" not in names:
            self.send_header("Server", self.server_version)
        if "content-type" not in names and ctype:
            self.send_header("Content-Type", ctype)
        for k, v in hdrs:
            if k.lower() == "content-length":
                continue
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            if truncate:
                self.wfile.write(body[:len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.hard_close()
                return
            self.wfile.write(body)
        self.wfile.flush()

    def send_json(self, status, obj, headers=None):
        self.send(status, json.dumps(obj), headers,
                  "application/json; charset=utf-8")

    def bad_framing(self, err):
        # The stream cannot be trusted past a broken body: answer and close.
        self.close_connection = True
        self.send_json(400, google_error(
            400, "INVALID_ARGUMENT", "Malformed request body: %s" % err),
            [("Connection", "close")])

    def hard_close(self):
        self.close_connection = True
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def split_target(self):
        target = self.path
        if not target.startswith("/"):
            u = urllib.parse.urlsplit(target)
            target = (u.path or "/") + ("?" + u.query if u.query else "")
        path, _, query = target.partition("?")
        path = path.split("#", 1)[0]
        return path, query

    def do_GET(self):
        self.dispatch()

    do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = do_OPTIONS = do_GET

    def dispatch(self):
        try:
            self.route()
        except QUIET_ERRORS:
            self.close_connection = True
        except Exception:
            log_err("handler error on %s %s:\n%s" % (
                self.command, self.path, traceback.format_exc()))
            try:
                self.send_json(500, {"error": {
                    "code": 500, "message": "fake_google internal error",
                    "status": "INTERNAL"}})
            except Exception:
                self.close_connection = True


class ControlHandler(BaseHandler):
    timeout = 30

    def route(self):
        st = self.server.state
        path, query = self.split_target()
        try:
            raw = self.read_body()
        except ValueError as e:
            return self.bad_framing(e)
        try:
            body = json.loads(raw.decode("utf-8")) if raw.strip() else None
        except (ValueError, UnicodeDecodeError) as e:
            return self.send_json(400, {"error": "bad JSON: %s" % e})
        m = self.command
        try:
            if path == "/config" and m == "POST":
                st.merge_config(body or {})
                return self.send_json(200, st.snapshot())
            if path == "/config" and m == "GET":
                return self.send_json(200, st.snapshot())
            if path == "/script" and m == "POST":
                if not isinstance(body, dict) or not isinstance(
                        body.get("path"), str):
                    raise ValueError("script needs a path")
                resp = body.get("responses", [])
                if isinstance(resp, dict):  # Lua's {} is an empty object
                    resp = [resp] if resp else []
                if not isinstance(resp, list) or not all(
                        isinstance(r, dict) for r in resp):
                    raise ValueError("responses must be a list of objects")
                for r in resp:
                    check_script_entry(r)
                st.add_script(body["path"], resp, bool(body.get("replace")))
                return self.send_json(200, {"ok": True})
            if path == "/script" and m == "GET":
                with st.lock:
                    scripts = copy.deepcopy(st.scripts)
                return self.send_json(200, scripts)
            if path == "/requests" and m == "GET":
                with st.lock:
                    recs = list(st.records)
                want = urllib.parse.parse_qs(query).get("path")
                if want:
                    recs = [r for r in recs if r["path"] == want[0]]
                return self.send_json(200, recs)
            if path == "/tokens" and m == "GET":
                with st.lock:
                    issued = copy.deepcopy(st.issued)
                return self.send_json(200, issued)
            if path == "/reset" and m == "POST":
                st.reset()
                return self.send_json(200, {"ok": True})
            if path == "/health":
                return self.send_json(200, {"ok": True})
        except ValueError as e:
            return self.send_json(400, {"error": str(e)})
        return self.send_json(404, {"error": "no control endpoint %s %s"
                                    % (m, path)})


def check_script_entry(r):
    """Refuse at /script time what would break when played."""
    if "status" in r:
        st = r["status"]
        if isinstance(st, bool) or not isinstance(st, (int, float)) \
                or not 100 <= int(st) <= 599:
            raise ValueError("status must be a number in 100..599: %r" % (st,))
    if "delay" in r and (isinstance(r["delay"], bool) or not isinstance(
            r["delay"], (int, float)) or r["delay"] < 0):
        raise ValueError("delay must be a number >= 0: %r" % (r["delay"],))
    if not isinstance(r.get("headers") or {}, dict):
        raise ValueError("headers must be an object")
    if "body" in r and not isinstance(r["body"], (str, dict, list)):
        raise ValueError("body must be a string")
    if "body_b64" in r:
        base64.b64decode(r["body_b64"], validate=True)
    unknown = set(r) - {"status", "headers", "body", "body_b64", "json",
                        "delay", "hang", "drop", "truncate"}
    if unknown:
        raise ValueError("unknown script fields: %s" % ", ".join(
            sorted(unknown)))


def google_error(code, status, message, details=None):
    err = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return {"error": err}


class MainHandler(BaseHandler):

    def setup(self):
        BaseHandler.setup(self)
        self.conn_id = self.server.state.next_conn_id()

    # -- plumbing ---------------------------------------------------------

    def route(self):
        st = self.server.state
        path, query = self.split_target()
        try:
            body = self.read_body()
        except ValueError as e:
            return self.bad_framing(e)
        headers = {}
        for k, v in self.headers.items():
            k = k.lower()
            headers[k] = headers[k] + ", " + v if k in headers else v
        rec = {
            "method": self.command, "path": path, "query": query,
            "headers": headers, "body": body.decode("utf-8", "replace"),
            "body_b64": base64.b64encode(body).decode(),
            "time": time.time(), "conn": self.conn_id,
        }
        cn, der = peer_cert(self.connection)
        if der:
            # Mutual TLS (--client-ca): who the client proved to be.
            rec["client_subject"] = cn
            rec["client_cert_b64"] = base64.b64encode(der).decode()
        self.client_der = der
        st.record(rec)
        self.req_path, self.req_query = path, query
        self.req_headers, self.req_body = headers, body
        self.qs = {k: v[0] for k, v in urllib.parse.parse_qs(
            query, keep_blank_values=True).items()}

        script = st.pop_script([path, urllib.parse.unquote(path)])
        if script is not None:
            if self.play(script):
                return
        self.default_route(path)

    def play(self, s):
        """Play one scripted response; False means: fall through."""
        delay = s.get("delay")
        if delay:
            if STOP.wait(float(delay)):
                self.hard_close()
                return True
        if s.get("hang"):
            STOP.wait()
            self.hard_close()
            return True
        if s.get("drop"):
            self.hard_close()
            return True
        if "status" not in s:
            return False
        headers = list((s.get("headers") or {}).items())
        flat = []
        for k, v in headers:
            for one in (v if isinstance(v, list) else [v]):
                flat.append((k, str(one)))
        if "json" in s:
            body, ctype = json.dumps(s["json"]), "application/json; charset=utf-8"
        elif "body_b64" in s:
            body, ctype = base64.b64decode(s["body_b64"]), None
        else:
            body, ctype = s.get("body", ""), None
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
        if ctype is None and body:
            head = body.lstrip()[:1]
            ctype = ("application/json; charset=utf-8"
                     if head in ("{", "[", b"{", b"[") else
                     "text/plain; charset=utf-8")
        if self.req_path.startswith("/computeMetadata/"):
            if not any(k.lower() == "metadata-flavor" for k, _ in flat):
                flat.append(("Metadata-Flavor", "Google"))
        self.send(int(s["status"]), body, flat, ctype,
                  truncate=bool(s.get("truncate")))
        return True

    def default_route(self, path):
        if fake_federation.routes(path):
            return fake_federation.handle(self, path)
        if path == "/token" or path in ("/o/oauth2/token", "/oauth2/v4/token"):
            return self.token_endpoint()
        if path == "/" or path.startswith("/computeMetadata"):
            return self.metadata(path)
        m = re.match(r"^/v1/projects/([^/]+)/serviceAccounts/([^/:]+):"
                     r"(generateAccessToken|generateIdToken|signBlob|signJwt)$",
                     path)
        if m:
            return self.iam(urllib.parse.unquote(m.group(2)), m.group(3))
        if path in ("/tokeninfo", "/oauth2/v3/tokeninfo"):
            return self.tokeninfo()
        m = re.match(r"^/v1/projects/([^/:]+)$", path)
        if m and self.command == "GET":
            return self.crm_project(urllib.parse.unquote(m.group(1)))
        if path == "/v1/token":
            return self.sts()
        if path == "/oauth2/v3/certs":
            return self.send_json(200, {"keys": [self.server.state.signer.jwk]})
        if path == "/oauth2/v1/certs":
            s = self.server.state.signer
            return self.send_json(200, {s.kid: s.cert_pem})
        return self.not_found()

    def not_found(self):
        return self.send_json(404, google_error(
            404, "NOT_FOUND",
            "The requested URL %s was not found on this server."
            % self.req_path))

    def oauth_error(self, status, error, description):
        return self.send_json(status, {"error": error,
                                       "error_description": description})

    def expires_in(self):
        return self.server.state.cfg("expires_in")

    def params(self):
        ctype = (self.req_headers.get("content-type") or "").lower()
        text = self.req_body.decode("utf-8", "replace")
        if "json" in ctype:
            try:
                v = json.loads(text)
                return {k: str(x) for k, x in v.items()} if isinstance(
                    v, dict) else {}
            except ValueError:
                return {}
        return {k: v[0] for k, v in urllib.parse.parse_qs(
            text, keep_blank_values=True).items()}

    # -- OAuth 2.0 token endpoint -----------------------------------------

    def token_endpoint(self):
        if self.command != "POST":
            return self.send_json(405, google_error(
                405, "METHOD_NOT_ALLOWED", "Method not allowed."))
        form = self.params()
        gt = form.get("grant_type")
        if gt == JWT_BEARER:
            return self.jwt_bearer(form)
        if gt == "refresh_token":
            return self.refresh(form)
        return self.oauth_error(400, "unsupported_grant_type",
                                "Invalid grant_type: %s" % (gt or ""))

    def jwt_bearer(self, form):
        st = self.server.state
        assertion = form.get("assertion")
        if not assertion:
            return self.oauth_error(400, "invalid_request",
                                    "Missing required parameter: assertion")
        try:
            header = jwt.get_unverified_header(assertion)
        except Exception:
            return self.oauth_error(400, "invalid_grant", MSG_BAD_SIGNATURE)
        alg = header.get("alg")
        keys = st.cfg("public_keys")
        kid = header.get("kid")
        if kid in keys:
            candidates = [keys[kid]]
        else:
            candidates = list(keys.values())
        claims = None
        if alg in ("RS256", "ES256"):
            for pem in candidates:
                try:
                    claims = jwt.decode(
                        assertion, load_public_key(pem), algorithms=[alg],
                        options={"verify_signature": True,
                                 "verify_exp": False, "verify_nbf": False,
                                 "verify_iat": False, "verify_aud": False,
                                 "verify_iss": False})
                    break
                except Exception:
                    continue
        if claims is None:
            return self.oauth_error(400, "invalid_grant", MSG_BAD_SIGNATURE)

        now = st.now()
        leeway = float(st.cfg("leeway") or 0)
        iat, exp = claims.get("iat"), claims.get("exp")
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool)
                      for v in (iat, exp))
        if (not numeric or exp <= iat or exp - iat > 3600
                or iat > now + leeway or exp < now - leeway):
            return self.oauth_error(400, "invalid_grant", MSG_TIME_WINDOW)
        uris = st.token_uris()
        if claims.get("aud") not in uris:
            return self.oauth_error(
                400, "invalid_grant",
                "Invalid JWT: Failed audience check. The expected value is %s"
                % uris[0])
        iss = claims.get("iss")
        if not isinstance(iss, str) or not iss:
            return self.oauth_error(400, "invalid_grant",
                                    "Invalid grant: account not found")

        target = claims.get("target_audience")
        if target:
            idt = self.id_token(target, iss, now)
            st.issue({"kind": "id_token", "iss": iss, "aud": target})
            return self.send_json(200, {"id_token": idt})
        scope = claims.get("scope")
        if not scope and st.cfg("require_scope"):
            return self.oauth_error(
                400, "invalid_scope",
                "Invalid OAuth scope or ID token audience provided.")
        tok = st.issue({"kind": "jwt-bearer", "iss": iss,
                        "sub": claims.get("sub"), "scope": scope or "",
                        "kid": kid})
        return self.send_json(200, {"access_token": tok,
                                    "expires_in": self.expires_in(),
                                    "token_type": "Bearer"})

    def id_token(self, aud, email, now, extra=None, include_email=True):
        num = str(int(hashlib.sha256(email.encode()).hexdigest(), 16)
                  % 10 ** 21).rjust(21, "1")
        claims = {"iss": "https://accounts.google.com", "aud": aud,
                  "azp": num, "sub": num, "email": email,
                  "email_verified": True, "iat": int(now),
                  "exp": int(now) + 3600}
        if not include_email:
            del claims["email"], claims["email_verified"]
        if extra:
            claims.update(extra)
        return self.server.state.signer.jwt(claims)

    def refresh(self, form):
        st = self.server.state
        rt = form.get("refresh_token")
        cid, csec = form.get("client_id"), form.get("client_secret")
        auth = self.req_headers.get("authorization", "")
        if auth.lower().startswith("basic "):
            try:
                dec = base64.b64decode(auth[6:].strip()).decode()
                u, _, p = dec.partition(":")
                cid = cid or urllib.parse.unquote_plus(u)
                csec = csec or urllib.parse.unquote_plus(p)
            except Exception:
                pass
        if not rt:
            return self.oauth_error(400, "invalid_request",
                                    "Missing required parameter: refresh_token")
        entry = st.cfg("refresh_tokens").get(rt)
        if not isinstance(entry, dict):
            return self.oauth_error(400, "invalid_grant",
                                    "Token has been expired or revoked.")
        if cid != entry.get("client_id"):
            return self.oauth_error(401, "invalid_client",
                                    "The OAuth client was not found.")
        if csec != entry.get("client_secret"):
            return self.oauth_error(401, "invalid_client", "Unauthorized")
        scope = entry.get("scope") or form.get("scope") or ""
        tok = st.issue({"kind": "refresh_token", "client_id": cid,
                        "scope": scope})
        return self.send_json(200, {"access_token": tok,
                                    "expires_in": self.expires_in(),
                                    "scope": scope, "token_type": "Bearer"})

    # -- GCE metadata server ----------------------------------------------

    def md_values(self):
        st = self.server.state
        with st.lock:
            c = st.config
            sa, proj, num = (c["service_account"], c["project_id"],
                             c["numeric_project_id"])
            over = copy.deepcopy(c["metadata"])
        vals = {
            "project/project-id": proj,
            "project/numeric-project-id": num,
            "instance/id": "4520031799277581759",
            "instance/hostname": "fake-vm.c.%s.internal" % proj,
            "instance/zone": "projects/%s/zones/us-central1-a" % num,
            "instance/service-accounts/default/email": sa,
            "instance/service-accounts/default/aliases": "default\n",
            "instance/service-accounts/default/scopes":
                "https://www.googleapis.com/auth/cloud-platform\n",
        }
        vals.update(over)
        return vals, sa

    def md_send(self, status, body, ctype="application/text"):
        if isinstance(body, (dict, list)):
            body, ctype = json.dumps(body), "application/json"
        elif not isinstance(body, (str, bytes)):
            body = json.dumps(body)
        self.send(status, body, [("Metadata-Flavor", "Google")], ctype)

    def metadata(self, path):
        if path == "/":
            return self.md_send(200, "computeMetadata/\n")
        if self.req_headers.get("metadata-flavor") != "Google":
            return self.md_send(
                403, "Your client does not have permission to get URL %s "
                "from this server. Missing Metadata-Flavor:Google header.\n"
                % path, "text/html; charset=UTF-8")
        if path == "/computeMetadata" or path == "/computeMetadata/":
            return self.md_send(200, "v1/\n")
        if not path.startswith(MD_PREFIX) and path != MD_PREFIX[:-1]:
            return self.md_send(404, "Not Found\n", "text/html; charset=UTF-8")
        rel = path[len(MD_PREFIX):]
        vals, sa = self.md_values()
        if rel in vals:
            if vals[rel] is None:
                return self.md_send(404, "Not Found\n",
                                    "text/html; charset=UTF-8")
            return self.md_send(200, vals[rel])
        if rel == "":
            return self.md_send(200, "instance/\noauth2/\nproject/\n")
        m = re.match(r"^instance/service-accounts/([^/]+)/"
                     r"(token|identity|email|scopes|aliases)?$", rel)
        if rel == "instance/service-accounts/":
            return self.md_send(200, "default/\n%s/\n" % sa)
        if not m:
            return self.md_send(404, "Not Found\n", "text/html; charset=UTF-8")
        name, leaf = urllib.parse.unquote(m.group(1)), m.group(2)
        known = (name in ("default", sa)
                 or ("instance/service-accounts/%s/email" % name) in vals)
        if not known:
            return self.md_send(404, "Not Found\n", "text/html; charset=UTF-8")
        email = sa if name == "default" else vals.get(
            "instance/service-accounts/%s/email" % name, name)
        base = "instance/service-accounts/%s/" % name
        dflt = "instance/service-accounts/default/"
        scopes = vals.get(base + "scopes", vals.get(dflt + "scopes", ""))
        st = self.server.state
        if leaf is None:
            if self.qs.get("recursive") == "true":
                return self.md_send(200, {
                    "aliases": ["default"] if name in ("default", sa) else [],
                    "email": email,
                    "scopes": [s for s in str(scopes).split("\n") if s]})
            return self.md_send(200, "aliases\nemail\nidentity\nscopes\ntoken\n")
        if leaf == "email":
            return self.md_send(200, email)
        if leaf in ("scopes", "aliases"):
            return self.md_send(200, vals.get(dflt + leaf, ""))
        if leaf == "token":
            req_scopes = self.qs.get("scopes")
            scope = (" ".join(s for s in req_scopes.split(",") if s)
                     if req_scopes else " ".join(str(scopes).split()))
            tok = st.issue({"kind": "metadata", "email": email,
                            "scope": scope})
            return self.md_send(200, {"access_token": tok,
                                      "expires_in": self.expires_in(),
                                      "token_type": "Bearer"})
        # identity
        aud = self.qs.get("audience")
        if not aud:
            return self.md_send(400, "non-empty audience parameter required\n",
                                "text/html; charset=UTF-8")
        extra = None
        if self.qs.get("format") == "full":
            extra = {"google": {"compute_engine": {
                "instance_id": vals.get("instance/id"),
                "instance_name": "fake-vm",
                "project_id": vals.get("project/project-id"),
                "project_number": int(str(vals.get(
                    "project/numeric-project-id", "0")) or 0),
                "zone": "us-central1-a"}}}
        idt = self.id_token(aud, email, st.now(), extra,
                            include_email=extra is not None)
        st.issue({"kind": "metadata_identity", "email": email, "aud": aud})
        return self.md_send(200, idt, "text/html; charset=utf-8")

    # -- IAM Credentials, tokeninfo ----------------------------------------

    def self_signed_info(self, tok):
        """A self-signed JWT as IAM Credentials takes one from a service
        account (google-auth's service_account IDTokenCredentials outside
        googleapis.com): signed by a key of public_keys (its kid's), iss ==
        sub, within its hour, and the IAM scope. None otherwise."""
        st = self.server.state
        try:
            header = jwt.get_unverified_header(tok)
        except Exception:
            return None
        pem = st.cfg("public_keys").get(header.get("kid"))
        if not pem or header.get("alg") not in ("RS256", "ES256"):
            return None
        try:
            claims = jwt.decode(tok, load_public_key(pem), algorithms=[header["alg"]],
                                options={"verify_aud": False})
        except Exception:
            return None
        now = st.now()
        iat, exp = claims.get("iat"), claims.get("exp")
        if (claims.get("iss") != claims.get("sub") or not isinstance(iat, (int, float))
                or not isinstance(exp, (int, float)) or exp - iat > 3600 or exp < now):
            return None
        if IAM_SCOPE not in str(claims.get("scope", "")).split():
            return None
        return {"kind": "self_signed", "iss": claims.get("iss"), "scope": claims.get("scope")}

    def iam(self, email, method):
        st = self.server.state
        if self.command != "POST":
            return self.not_found()
        auth = self.req_headers.get("authorization", "")
        tok = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        info = st.token_info(tok) if tok else None
        if info is None and tok:
            info = self.self_signed_info(tok)
        if not info or info.get("kind") == "id_token":
            return self.send_json(401, google_error(
                401, "UNAUTHENTICATED", MSG_UNAUTHENTICATED),
                [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')])
        try:
            body = json.loads(self.req_body.decode("utf-8") or "{}")
            if not isinstance(body, dict):
                raise ValueError
        except ValueError:
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
        now = st.now()
        if method == "generateAccessToken":
            scope = body.get("scope")
            if not scope or not isinstance(scope, list):
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT", "Scope required."))
            life = body.get("lifetime", "3600s")
            m = re.match(r"^(\d+(?:\.\d+)?)s$", str(life))
            if not m or float(m.group(1)) > 3600 or float(m.group(1)) <= 0:
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT",
                    "The lifetime must be between 1s and 3600s."))
            new = st.issue({"kind": "iam", "email": email,
                            "scope": " ".join(scope),
                            "delegates": body.get("delegates"),
                            "caller": tok})
            return self.send_json(200, {
                "accessToken": new,
                "expireTime": rfc3339(now + float(m.group(1)))})
        if method == "generateIdToken":
            aud = body.get("audience")
            if not aud:
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT", "Audience required."))
            idt = self.id_token(aud, email, now,
                                include_email=bool(body.get("includeEmail")))
            return self.send_json(200, {"token": idt})
        if method == "signBlob":
            try:
                payload = base64.b64decode(body.get("payload") or "",
                                           validate=True)
            except Exception:
                return self.send_json(400, google_error(
                    400, "INVALID_ARGUMENT", "Invalid payload."))
            return self.send_json(200, {
                "keyId": st.signer.kid,
                "signedBlob": base64.b64encode(
                    st.signer.sign(payload)).decode()})
        # signJwt
        try:
            claims = json.loads(body.get("payload") or "")
        except (ValueError, TypeError):
            return self.send_json(400, google_error(
                400, "INVALID_ARGUMENT", "Invalid payload."))
        return self.send_json(200, {"keyId": st.signer.kid,
                                    "signedJwt": st.signer.jwt(claims)})

    # -- Cloud Resource Manager v1 projects.get ----------------------------

    def crm_project(self, name):
        st = self.server.state
        auth = self.req_headers.get("authorization", "")
        tok = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        info = st.token_info(tok) if tok else None
        if not info or info.get("kind") == "id_token":
            return self.send_json(401, google_error(
                401, "UNAUTHENTICATED", MSG_UNAUTHENTICATED),
                [("WWW-Authenticate", 'Bearer realm="https://accounts.google.com/"')])
        projects = st.cfg("projects") or {}
        pid = projects.get(name)
        if pid is None:
            # What Google answers for a project the caller cannot see.
            return self.send_json(403, google_error(
                403, "PERMISSION_DENIED",
                "The caller does not have permission"))
        return self.send_json(200, {
            "projectNumber": name, "projectId": pid,
            "lifecycleState": "ACTIVE", "name": pid,
            "createTime": "2020-01-01T00:00:00.000Z"})

    # -- Security Token Service (token exchange, RFC 8693) --------------------

    def sts(self):
        """Exchanges an access token this fake issued for one with the
        Credential Access Boundary in `options` (downscoping)."""
        st = self.server.state
        if self.command != "POST":
            return self.not_found()
        form = self.params()
        if form.get("grant_type") != STS_GRANT:
            return self.oauth_error(400, "unsupported_grant_type",
                                    "Invalid grant_type: %s" % form.get("grant_type", ""))
        for k in ("subject_token_type", "requested_token_type"):
            if form.get(k) != STS_ACCESS_TOKEN:
                return self.oauth_error(400, "invalid_request", "Invalid %s." % k)
        tok = form.get("subject_token")
        info = st.token_info(tok) if tok else None
        if not info:
            return self.oauth_error(400, "invalid_grant", "The subject token is invalid.")
        options = form.get("options")
        if options is not None:
            try:
                rules = json.loads(options)["accessBoundary"]["accessBoundaryRules"]
                if not isinstance(rules, list) or not rules:
                    raise ValueError
            except (ValueError, KeyError, TypeError):
                return self.oauth_error(400, "invalid_request",
                                        "The options are not a valid access boundary.")
        new = st.issue({"kind": "sts", "subject": tok, "options": options})
        body = {"access_token": new, "token_type": "Bearer",
                "issued_token_type": STS_ACCESS_TOKEN}
        exp = st.cfg("sts_expires_in")
        if exp is not None and exp is not False:
            body["expires_in"] = exp
        return self.send_json(200, body)

    def tokeninfo(self):
        st = self.server.state
        form = self.params() if self.command == "POST" else {}
        tok = self.qs.get("access_token") or form.get("access_token")
        info = st.token_info(tok) if tok else None
        if not info:
            return self.oauth_error(400, "invalid_token", "Invalid Value")
        exp = int(info["issued_at"] + float(self.expires_in()))
        return self.send_json(200, {
            "azp": info.get("client_id") or info.get("email") or
            info.get("iss") or "",
            "aud": info.get("client_id") or info.get("email") or
            info.get("iss") or "",
            "scope": info.get("scope", ""),
            "exp": str(exp),
            "expires_in": str(max(0, exp - int(time.time()))),
            "access_type": "online"})


def main():
    ap = arg_parser(__doc__)
    ap.add_argument("--signing-key",
                    help="PEM RSA key for the fake's own signatures; made "
                    "and written there when missing")
    ap.add_argument("--max-lifetime", type=float, default=0,
                    help="exit after this many seconds (0: never)")
    args = ap.parse_args()

    # The state needs the base URL, known once the port is bound.
    main_srv = FakeServer((args.host, args.port), MainHandler, None,
                          tls_context(args.cert, args.key, args.client_ca))
    main_srv.state = State(url_of(args.host, main_srv), args.signing_key)
    ctl_srv = FakeServer(("127.0.0.1", args.control_port), ControlHandler,
                         main_srv.state)
    serve(main_srv, ctl_srv, args, args.max_lifetime)
    exit_now()


if __name__ == "__main__":
    main()
