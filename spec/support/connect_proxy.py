#!/usr/bin/env python3
"""A CONNECT proxy for Node judges that call fixed Google hosts: each
routed host:port is tunnelled to a loopback address (where a fake serves
a certificate for that name from the test CA); any other CONNECT, and any
plain request, is refused and logged as a violation, which fails the spec.
Each entry logs the Proxy-Authorization the client sent (test credentials
only); --require-auth makes the proxy answer 407 without exactly that one.

  connect_proxy.py --ready-file F --log L --route sts.googleapis.com:443=127.0.0.1:PORT ...
"""
import argparse
import json
import os
import select
import socket
import socketserver
import threading

LOCK = threading.Lock()


def log(path, entry):
    with LOCK:
        with open(path, "a") as f:
            f.write(json.dumps(entry) + "\n")


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        line = self.rfile.readline(8192).decode("latin-1").strip()
        auth = None
        while True:
            h = self.rfile.readline(8192)
            if not h or h in (b"\r\n", b"\n"):
                break
            name, _, value = h.decode("latin-1").partition(":")
            if name.strip().lower() == "proxy-authorization":
                auth = value.strip()
        parts = line.split()
        target = parts[1] if len(parts) >= 2 else ""
        route = self.server.routes.get(target) if parts and parts[0] == "CONNECT" else None
        if route is None:
            log(self.server.log, {"target": line, "refused": True, "auth": auth})
            self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
            return
        if self.server.require_auth and auth != self.server.require_auth:
            log(self.server.log, {"target": target, "refused": True, "auth": auth})
            self.wfile.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                             b"Proxy-Authenticate: Basic realm=\"gauth\"\r\nContent-Length: 0\r\n\r\n")
            return
        log(self.server.log, {"target": target, "refused": False, "auth": auth})
        host, port = route.rsplit(":", 1)
        up = socket.create_connection((host, int(port)), timeout=10)
        self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        self.wfile.flush()
        down = self.connection
        socks = [down, up]
        try:
            while True:
                r, _, _ = select.select(socks, [], [], 30)
                if not r:
                    break
                for s in r:
                    data = s.recv(65536)
                    if not data:
                        return
                    (up if s is down else down).sendall(data)
        finally:
            up.close()


class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--route", action="append", default=[])
    ap.add_argument("--require-auth", default=None,
                    help="answer 407 unless Proxy-Authorization is exactly this")
    a = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    srv.routes = dict(r.split("=", 1) for r in a.route)
    srv.require_auth = a.require_auth
    srv.log = a.log
    open(a.log, "a").close()
    with open(a.ready_file + ".tmp", "w") as f:
        json.dump({"port": srv.server_address[1]}, f)
    os.rename(a.ready_file + ".tmp", a.ready_file)
    srv.serve_forever()


if __name__ == "__main__":
    main()
