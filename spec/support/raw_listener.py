#!/usr/bin/python3
"""A raw socket listener on loopback that records each request's head as it
came on the wire (request line and header lines, byte for byte, before any
HTTP library could parse or normalise it) and answers 200 "ok".

  raw_listener.py --host 127.0.0.1 --ready-file F --log-file L [--parent-pid P]

Writes {"port": N, "pid": N} to the ready file once listening. Each request
appends one JSON line to the log file: {"head": "<request line>\\r\\n<headers>",
"body_len": N}. Used as a target that shows what a transport really sent
(dot segments, percent-encoding) and as a would-be proxy that must receive
nothing. It exits on SIGTERM or when the parent process is gone.
"""
import argparse
import json
import os
import signal
import socket
import sys
import threading

from fake_common import parent_alive, write_ready

LOCK = threading.Lock()


def handle(conn, log_file):
    conn.settimeout(10)
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip() or b"0")
        while len(rest) < length:
            chunk = conn.recv(65536)
            if not chunk:
                break
            rest += chunk
        if head:
            with LOCK, open(log_file, "a") as f:
                f.write(json.dumps({"head": head.decode("latin-1"),
                                    "body_len": len(rest)}) + "\n")
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                     b"Content-Length: 2\r\nConnection: close\r\n\r\nok")
    except OSError:
        pass
    finally:
        conn.close()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--log-file", required=True)
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args()
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    srv = socket.socket(family, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind((args.host, 0))
    srv.listen(64)
    open(args.log_file, "a").close()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())

    def accept_loop():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(conn, args.log_file),
                             daemon=True).start()

    threading.Thread(target=accept_loop, daemon=True).start()
    write_ready(args.ready_file, {"port": srv.getsockname()[1], "pid": os.getpid()})
    while not stop.wait(0.25):
        if args.parent_pid and not parent_alive(args.parent_pid):
            break
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
