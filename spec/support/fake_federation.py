"""Workload identity federation in fake_google.py: Google's STS and the
places subject tokens come from (an URL source, AWS's instance metadata
service), checking what arrives as Google and AWS would. Stdlib + PyJWT +
cryptography (Debian).

Config setting "federation" (an object, replaced as a whole):
  oidc_public_pem   PEM key that OIDC subject tokens (jwt/id_token types)
                    must be signed with (RS256/ES256); exp and iat checked.
  oidc_audience     when set, the subject token's aud must be it.
  subject_tokens    list of opaque subject tokens accepted (saml2, tests).
  (mtls subject tokens: a JSON array of base64 DER certificates whose first
  must be the connection's client certificate; run with --client-ca.)
  aws_keys          {access_key_id: secret}: AWS subject tokens must carry
                    a SigV4 signature by one of them, of a GetCallerIdentity
                    POST to https://sts.<region>.amazonaws.com, signed at
                    most 15 minutes ago, x-goog-cloud-target-resource =
                    the audience.
  clients           {client_id: secret}: HTTP Basic client authentication
                    must match one (when the request carries it).
  expires_in        of STS tokens (default 3600).
  served_token      what GET /subject-token answers: {"text": "..."} or
                    {"json": {...}}; "require_headers": {name: value}.
  aws               the IMDS: {"zone", "role", "access_key_id",
                    "secret_access_key", "token", "imdsv2": bool}.

Main-port routes:
  POST /v1/token        RFC 8693 token exchange. 200 {"access_token",
                        "issued_token_type", "token_type", "expires_in"};
                        errors {"error", "error_description"} as STS sends.
                        The access token is accepted by :generateAccessToken.
  POST /v1/oauthtoken   refresh-token grant (workforce users): as /token.
  POST /v1/introspect   {"active", "scope", "exp", "username"} for a token.
  POST /v1/revoke       200 {} for a known refresh token (then unknown).
  GET  /subject-token   the served token.
  PUT  /latest/api/token, GET /latest/meta-data/placement/availability-zone,
  GET  /latest/meta-data/iam/security-credentials[/<role>]   the AWS IMDS
       (with imdsv2, GETs need X-aws-ec2-metadata-token of a PUT).
"""

import hashlib
import hmac
import json
import re
import time
import urllib.parse

import jwt

GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"
ACCESS = "urn:ietf:params:oauth:token-type:access_token"
JWT_TYPES = ("urn:ietf:params:oauth:token-type:jwt",
             "urn:ietf:params:oauth:token-type:id_token")
AWS_TYPE = "urn:ietf:params:aws:token-type:aws4_request"
SAML_TYPE = "urn:ietf:params:oauth:token-type:saml2"
MTLS_TYPE = "urn:ietf:params:oauth:token-type:mtls"
WORKLOAD = re.compile(r"^//iam\.googleapis\.com/projects/\d+/locations/global/"
                      r"workloadIdentityPools/[^/]+/providers/[^/]+$")
WORKFORCE = re.compile(r"^//iam\.googleapis\.com/locations/[^/]+/"
                       r"workforcePools/[^/]+/providers/[^/]+$")


def routes(path):
    return path in ("/v1/token", "/v1/oauthtoken", "/v1/introspect",
                    "/v1/revoke", "/subject-token") or \
        path.startswith("/latest/")


def handle(h, path):
    """Answer a federation route on handler h (fake_google's)."""
    fed = h.server.state.cfg("federation") or {}
    if path == "/v1/token":
        # Downscoping (an access token for a bounded one) is fake_google's.
        if h.params().get("subject_token_type") == ACCESS:
            return h.sts()
        return sts(h, fed)
    if path == "/v1/oauthtoken":
        return h.token_endpoint()
    if path == "/v1/introspect":
        return introspect(h)
    if path == "/v1/revoke":
        return revoke(h)
    if path == "/subject-token":
        return served(h, fed)
    return imds(h, fed, path)


def err(h, status, error, desc):
    return h.oauth_error(status, error, desc)


def basic_client(h):
    auth = h.req_headers.get("authorization", "")
    if not auth.lower().startswith("basic "):
        return None, None
    import base64
    try:
        cid, _, secret = base64.b64decode(auth[6:].strip()).decode().partition(":")
    except Exception:
        return "", ""
    return cid, secret


def sts(h, fed):
    st = h.server.state
    if h.command != "POST":
        return err(h, 405, "invalid_request", "Method not allowed.")
    ctype = (h.req_headers.get("content-type") or "").lower()
    if "application/x-www-form-urlencoded" not in ctype:
        return err(h, 400, "invalid_request", "Invalid content type.")
    form = h.params()
    if form.get("grant_type") != GRANT:
        return err(h, 400, "unsupported_grant_type",
                   "Invalid value for \"grant_type\".")
    if form.get("requested_token_type") != ACCESS:
        return err(h, 400, "invalid_request",
                   "Invalid value for \"requested_token_type\".")
    aud = form.get("audience") or ""
    workforce = WORKFORCE.match(aud) is not None
    if not (WORKLOAD.match(aud) or workforce):
        return err(h, 400, "invalid_request", "Invalid value for \"audience\".")
    if not form.get("scope"):
        return err(h, 400, "invalid_scope", "Scope(s) must be provided.")
    cid, secret = basic_client(h)
    clients = fed.get("clients") or {}
    if cid is not None and clients.get(cid) != secret:
        return err(h, 401, "invalid_client", "The OAuth client was not found.")
    options = {}
    if "options" in form:
        try:
            options = json.loads(form["options"])
        except ValueError:
            return err(h, 400, "invalid_request", "Invalid value for \"options\".")
    if workforce and cid is None and not options.get("userProject"):
        return err(h, 400, "invalid_request",
                   "userProject is required for workforce pools without a client.")
    stt = form.get("subject_token_type")
    tok = form.get("subject_token") or ""
    if not tok:
        return err(h, 400, "invalid_request", "Missing subject_token.")
    if stt in JWT_TYPES:
        problem = check_oidc(fed, tok, st.now())
    elif stt == AWS_TYPE:
        problem = check_aws(fed, tok, aud, st.now())
    elif stt == MTLS_TYPE:
        problem = check_mtls(h, tok)
    elif stt == SAML_TYPE:
        problem = None if tok in (fed.get("subject_tokens") or []) else \
            "The SAML response is invalid."
    else:
        return err(h, 400, "invalid_request",
                   "Invalid value for \"subject_token_type\".")
    if problem:
        return err(h, 400, "invalid_grant", problem)
    new = st.issue({"kind": "sts", "audience": aud, "scope": form["scope"],
                    "user_project": options.get("userProject")})
    return h.send_json(200, {"access_token": new, "issued_token_type": ACCESS,
                             "token_type": "Bearer",
                             "expires_in": fed.get("expires_in", 3600)})


def check_mtls(h, tok):
    """X.509 federation: the subject token is a JSON array of base64 DER
    certificates whose first is the client certificate of this very
    connection (mutual TLS: the fake runs with --client-ca)."""
    import base64
    der = getattr(h, "client_der", None)
    if not der:
        return "mTLS subject tokens need a client certificate on the connection."
    try:
        chain = json.loads(tok)
        if not isinstance(chain, list) or not chain or \
                not all(isinstance(c, str) for c in chain):
            raise ValueError
        leaf = base64.b64decode(chain[0], validate=True)
    except (ValueError, TypeError):
        return "The mTLS subject token is not a JSON array of base64 certificates."
    if leaf != der:
        return "The leaf certificate is not the client certificate of the connection."
    return None


def check_oidc(fed, tok, now):
    if tok in (fed.get("subject_tokens") or []):
        return None
    pem = fed.get("oidc_public_pem")
    if not pem:
        return "The subject token is not trusted by the provider."
    try:
        opts = {"verify_aud": bool(fed.get("oidc_audience"))}
        jwt.decode(tok, pem, algorithms=["RS256", "ES256"],
                   audience=fed.get("oidc_audience"), options=opts,
                   leeway=0)
    except jwt.ExpiredSignatureError:
        return "The given subject token has expired."
    except jwt.InvalidTokenError as e:
        return "The given subject token is invalid: %s" % e
    return None


def _q(s):
    return urllib.parse.quote(s, safe="-_.~")


def check_aws(fed, tok, aud, now):
    try:
        req = json.loads(urllib.parse.unquote(tok))
        url, method, hdrs = req["url"], req["method"], req["headers"]
        headers = {}
        for kv in hdrs:
            headers[kv["key"].lower()] = kv["value"]
    except (ValueError, KeyError, TypeError):
        return "The AWS request in the subject token is malformed."
    u = urllib.parse.urlsplit(url)
    m = re.match(r"^sts\.([a-z0-9-]+)\.amazonaws\.com$", u.hostname or "")
    if u.scheme != "https" or not m or method != "POST":
        return "The AWS request is not a POST to AWS STS."
    q = dict(urllib.parse.parse_qsl(u.query))
    if q.get("Action") != "GetCallerIdentity":
        return "The AWS request is not GetCallerIdentity."
    if headers.get("x-goog-cloud-target-resource") != aud:
        return "The target resource does not match the audience."
    a = re.match(r"^AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/"
                 r"aws4_request, SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$",
                 headers.get("authorization", ""))
    if not a:
        return "The AWS request has no SigV4 Authorization."
    ak, day, region, service, signed, sig = a.groups()
    secret = (fed.get("aws_keys") or {}).get(ak)
    if secret is None:
        return "The AWS access key is unknown."
    if region != m.group(1) or service != "sts":
        return "The AWS credential scope does not match the request."
    amz = headers.get("x-amz-date", "")
    try:
        t = time.mktime(time.strptime(amz, "%Y%m%dT%H%M%SZ")) - time.timezone
    except ValueError:
        return "The AWS request has no x-amz-date."
    if abs(now - t) > 900 or amz[:8] != day:
        return "The AWS request is not fresh."
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed."
    if "host" not in headers:
        headers["host"] = u.netloc
    try:
        canon_headers = "".join("%s:%s\n" % (n, " ".join(headers[n].split()))
                                for n in names)
    except KeyError:
        return "A signed header is missing."
    pairs = sorted((_q(k), _q(v)) for k, v in
                   urllib.parse.parse_qsl(u.query, keep_blank_values=True))
    creq = "\n".join([method, _q(u.path or "/").replace("%2F", "/") or "/",
                      "&".join("%s=%s" % p for p in pairs), canon_headers, signed,
                      hashlib.sha256(b"").hexdigest()])
    scope = "%s/%s/%s/aws4_request" % (day, region, service)
    sts_text = "\n".join(["AWS4-HMAC-SHA256", amz, scope,
                          hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (day, region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    want = hmac.new(k, sts_text.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(want, sig):
        return "The AWS signature does not match."
    return None


def introspect(h):
    st = h.server.state
    form = h.params()
    info = st.token_info(form.get("token") or "")
    if not info:
        return h.send_json(200, {"active": False})
    return h.send_json(200, {"active": True, "scope": info.get("scope", ""),
                             "exp": int(info["issued_at"] + 3600),
                             "username": info.get("client_id", "")})


def revoke(h):
    st = h.server.state
    form = h.params()
    rt = form.get("token") or ""
    with st.lock:
        known = st.config["refresh_tokens"].pop(rt, None)
    if known is None:
        return err(h, 400, "invalid_request", "Invalid token.")
    return h.send_json(200, {})


def served(h, fed):
    conf = fed.get("served_token") or {}
    for k, v in (conf.get("require_headers") or {}).items():
        if h.req_headers.get(k.lower()) != v:
            return h.send_json(401, {"error": "missing header %s" % k})
    if "json" in conf:
        return h.send_json(200, conf["json"])
    body = (conf.get("text") or "").encode()
    return h.send(200, body, [], "text/plain")


def imds(h, fed, path):
    st = h.server.state
    aws = fed.get("aws") or {}
    if path == "/latest/api/token":
        if h.command != "PUT" or not h.req_headers.get(
                "x-aws-ec2-metadata-token-ttl-seconds"):
            return h.send(400, b"bad request\n", [], "text/plain")
        with st.lock:
            st.counter += 1
            tok = "imds-session-%d" % st.counter
            st.config.setdefault("_imds_tokens", []).append(tok)
        return h.send(200, tok.encode(), [], "text/plain")
    if h.command != "GET":
        return h.send(405, b"", [], "text/plain")
    if aws.get("imdsv2"):
        with st.lock:
            good = st.config.get("_imds_tokens", [])
        if h.req_headers.get("x-aws-ec2-metadata-token") not in good:
            return h.send(401, b"", [], "text/plain")
    if path == "/latest/meta-data/placement/availability-zone":
        return h.send(200, aws.get("zone", "us-east-2b").encode(), [], "text/plain")
    base = "/latest/meta-data/iam/security-credentials"
    role = aws.get("role", "gauth-role")
    if path in (base, base + "/"):
        return h.send(200, role.encode(), [], "text/plain")
    if path == base + "/" + role:
        return h.send_json(200, {
            "Code": "Success", "Type": "AWS-HMAC",
            "AccessKeyId": aws.get("access_key_id"),
            "SecretAccessKey": aws.get("secret_access_key"),
            "Token": aws.get("token"),
            "Expiration": "2099-01-01T00:00:00Z"})
    return h.send(404, b"", [], "text/plain")
