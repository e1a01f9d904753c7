"""What the loopback fakes of gauth's specs share (fake_google.py and
fake_upload.py, both run with /usr/bin/python3; stdlib only).

Each fake is a main port (HTTPS with --cert, HTTP/1.1 keep-alive, one thread
per connection) and a plain-HTTP control port on 127.0.0.1. Both are started
the same way:

  --ready-file PATH [--host 127.0.0.1|::1] [--port 0] [--control-port 0]
  [--cert server.pem --key server.key] [--parent-pid PID]

When both ports listen, {"port", "control_port", "pid", "url"} is written as
JSON to the ready file (tmp file + rename). SIGTERM/SIGINT, or the parent
process gone, stops serve(); the fake then exits with os._exit(0). Nothing
goes to stdout; errors of the fake itself go to stderr, prefixed with the
script's name.
"""

import argparse
import json
import os
import signal
import socket
import socketserver
import ssl
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, HTTPServer

# Set by SIGTERM/SIGINT; fakes wait on it for scripted delays and hangs.
STOP = threading.Event()

# Connection-level failures are the client's business, not errors of the fake.
QUIET_ERRORS = (ConnectionError, TimeoutError, socket.timeout, ssl.SSLError,
                BrokenPipeError)

PROG = os.path.splitext(os.path.basename(sys.argv[0] or "fake"))[0]


def log_err(msg):
    try:
        sys.stderr.write("%s: %s\n" % (PROG, msg))
        sys.stderr.flush()
    except Exception:
        pass


class FakeServer(socketserver.ThreadingMixIn, HTTPServer):
    """A threaded HTTP server; with ssl_ctx, TLS is wrapped per connection
    in that connection's thread, so a slow or failing client never blocks
    accept(). `state` is whatever the handlers share."""
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    request_queue_size = 128
    quiet_errors = QUIET_ERRORS

    def __init__(self, addr, handler, state, ssl_ctx=None):
        self.address_family = (socket.AF_INET6 if ":" in addr[0]
                               else socket.AF_INET)
        self.state = state
        self.ssl_ctx = ssl_ctx
        HTTPServer.__init__(self, addr, handler)

    def server_bind(self):
        # HTTPServer.server_bind calls getfqdn(), a DNS lookup: skip it.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.server_address[0]
        self.server_port = self.server_address[1]

    def finish_request(self, request, client_address):
        conn = request
        try:
            if self.ssl_ctx is not None:
                # The handshake is bounded; the handler sets its own timeout.
                request.settimeout(10)
                conn = self.ssl_ctx.wrap_socket(
                    request, server_side=True, do_handshake_on_connect=False)
                try:
                    conn.do_handshake()
                except ssl.SSLError:
                    if self.ssl_ctx.verify_mode == ssl.CERT_REQUIRED:
                        # TLS 1.3 judges the client certificate after the
                        # client has finished: OpenSSL has sent its alert;
                        # the connection stays open until the client closes
                        # it, so the client always reads that alert (and
                        # never races a closed socket with its request).
                        try:
                            while socket.socket.recv(conn, 65536):
                                pass
                        except OSError:
                            pass
                    raise
                conn.settimeout(None)
            self.RequestHandlerClass(conn, client_address, self)
        except self.quiet_errors:
            pass
        finally:
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, self.quiet_errors):
            return
        log_err("error serving %r:\n%s" % (client_address,
                                            traceback.format_exc()))


class QuietHandler(BaseHTTPRequestHandler):
    """HTTP/1.1 (keep-alive) and no access log."""
    protocol_version = "HTTP/1.1"
    sys_version = ""

    def log_message(self, fmt, *args):
        pass


def iter_chunked(rfile, block):
    """The data of a chunked request body, in pieces of at most `block`
    bytes; trailers are read and dropped. ConnectionError at EOF,
    ValueError on a bad chunk size."""
    while True:
        line = rfile.readline(65537)
        if not line:
            raise ConnectionError("eof in chunked body")
        size = int(line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                pass
            return
        while size > 0:
            b = rfile.read(min(block, size))
            if not b:
                raise ConnectionError("eof in chunked body")
            size -= len(b)
            yield b
        rfile.readline(3)


class Recorder:
    """A lock, the requests recorded and connection numbers (1, 2, ...)."""

    def __init__(self, lock=None):
        self.lock = lock or threading.Lock()
        self.records = []
        self.conn_seq = 0

    def next_conn_id(self):
        with self.lock:
            self.conn_seq += 1
            return self.conn_seq

    def record(self, rec):
        with self.lock:
            self.records.append(rec)


def arg_parser(doc):
    """The options every fake takes; add the fake's own to it."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--control-port", type=int, default=0)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--client-ca",
                    help="PEM CA file: require a client certificate it signed"
                    " (mutual TLS); requests record its subject")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--parent-pid", type=int, default=0,
                    help="exit when this process is gone")
    return ap


def tls_context(cert, key, client_ca=None):
    """A server context for --cert/--key (TLS 1.2+, ALPN http/1.1), or None
    without --cert. With client_ca, a client certificate signed by it is
    required (CERT_REQUIRED)."""
    if not cert:
        return None
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cert, key)
    if client_ca:
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(cafile=client_ca)
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def peer_cert(conn):
    """(subject CN, DER bytes) of the client certificate of a TLS connection,
    or (None, None)."""
    try:
        der = conn.getpeercert(binary_form=True)
        info = conn.getpeercert()
    except (AttributeError, ValueError, ssl.SSLError):
        return None, None
    if not der:
        return None, None
    cn = None
    for rdn in (info or {}).get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                cn = v
    return cn, der


def url_of(host, srv):
    """http(s)://host:port of a FakeServer bound on host (IPv6 in brackets)."""
    if ":" in host:
        host = "[%s]" % host
    return "%s://%s:%d" % ("https" if srv.ssl_ctx else "http", host,
                           srv.server_address[1])


def write_ready(path, data):
    tmp = "%s.tmp.%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)


def parent_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def serve(main_srv, ctl_srv, args, max_lifetime=0):
    """Serve both ports, write the ready file, and return once stopped:
    SIGTERM/SIGINT, the --parent-pid process gone, or max_lifetime seconds
    (0: never) passed. STOP is set on return."""

    def on_signal(signum, frame):
        STOP.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    for srv in (main_srv, ctl_srv):
        threading.Thread(target=srv.serve_forever,
                         kwargs={"poll_interval": 0.1}, daemon=True).start()
    write_ready(args.ready_file, {"port": main_srv.server_address[1],
                                  "control_port": ctl_srv.server_address[1],
                                  "pid": os.getpid(),
                                  "url": url_of(args.host, main_srv)})
    started = time.time()
    while not STOP.wait(0.25):
        if args.parent_pid and not parent_alive(args.parent_pid):
            break
        if max_lifetime and time.time() - started > max_lifetime:
            log_err("max lifetime reached, exiting")
            break
    STOP.set()


def exit_now():
    """Exit 0 at once. Serving and handler threads are daemons: a hung
    handler must not delay the exit, and the kernel closes every open
    connection."""
    sys.stderr.flush()
    os._exit(0)
