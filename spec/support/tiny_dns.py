#!/usr/bin/python3
"""A tiny DNS server on loopback (UDP) for nginx's `resolver` directive in
the specs: A records for the names it is given, NXDOMAIN for any other.

  tiny_dns.py --name oauth2.gauth.test=127.0.0.1 [--name ...]
              --ready-file F --log-file L [--parent-pid P]

Writes {"port": N, "pid": N} to the ready file once bound (127.0.0.1, a
free port). Each query appends one JSON line to the log file: {"name",
"qtype", "rcode"}. A known name asked for another type (AAAA) gets an
empty NOERROR answer. Plain sockets, stdlib only; exits on SIGTERM or when
the parent process is gone.
"""
import argparse
import json
import os
import signal
import socket
import struct
import sys

from fake_common import parent_alive, write_ready

QTYPE_A = 1


def parse_question(msg):
    """(id, flags, name, qtype, qclass, end of question) or None."""
    if len(msg) < 12:
        return None
    qid, flags, qdcount = struct.unpack("!HHH", msg[:6])
    if qdcount != 1:
        return None
    labels, i = [], 12
    while True:
        if i >= len(msg):
            return None
        n = msg[i]
        i += 1
        if n == 0:
            break
        if n & 0xC0 or i + n > len(msg):
            return None  # no compression in a question from nginx
        labels.append(msg[i:i + n].decode("ascii", "replace"))
        i += n
    if i + 4 > len(msg):
        return None
    qtype, qclass = struct.unpack("!HH", msg[i:i + 4])
    return qid, flags, ".".join(labels).lower(), qtype, qclass, i + 4


def answer(msg, names):
    q = parse_question(msg)
    if q is None:
        return None, None
    qid, flags, name, qtype, qclass, end = q
    question = msg[12:end]
    rd = flags & 0x0100
    addr = names.get(name)
    if addr is None:
        rcode, records = 3, b""  # NXDOMAIN
    elif qtype == QTYPE_A:
        rcode = 0
        # Name by pointer to the question (offset 12), type A, class IN,
        # TTL 5 s, 4 bytes of address.
        records = struct.pack("!HHHIH", 0xC00C, QTYPE_A, 1, 5, 4) + socket.inet_aton(addr)
    else:
        rcode, records = 0, b""
    ancount = 1 if records else 0
    # QR, AA, RD copied, RA; the rcode.
    head = struct.pack("!HHHHHH", qid, 0x8000 | 0x0400 | rd | 0x0080 | rcode,
                       1, ancount, 0, 0)
    return head + question + records, {"name": name, "qtype": qtype, "rcode": rcode}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", action="append", default=[])
    ap.add_argument("--ready-file", required=True)
    ap.add_argument("--log-file", required=True)
    ap.add_argument("--parent-pid", type=int, default=0)
    args = ap.parse_args()
    names = {}
    for spec in args.name:
        n, _, a = spec.partition("=")
        names[n.lower().rstrip(".")] = a or "127.0.0.1"
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.25)
    open(args.log_file, "a").close()
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    write_ready(args.ready_file, {"port": sock.getsockname()[1], "pid": os.getpid()})
    while not stopping:
        if args.parent_pid and not parent_alive(args.parent_pid):
            break
        try:
            msg, peer = sock.recvfrom(4096)
        except socket.timeout:
            continue
        except OSError:
            break
        reply, rec = answer(msg, names)
        if reply is None:
            continue
        with open(args.log_file, "a") as f:
            f.write(json.dumps(rec) + "\n")
        try:
            sock.sendto(reply, peer)
        except OSError:
            pass
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
