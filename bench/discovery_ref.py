#!/usr/bin/python3
"""Reference for bench/discovery_bench.lua: googleapiclient 1.7.12 (Debian
python3-googleapi) building the same requests from the same document.

  /usr/bin/python3 bench/discovery_ref.py

Prints `name value unit` lines:
  request_build_ref          requests/s, compute v1 instances.list with
                             project, zone, maxResults, filter
  request_build_unique_ref   the same with new values each time
  build_from_document_ref    ms per build_from_document(text)
  json_decode_compute_ref    ms per json.loads(text), for scale
BENCH_SECONDS sets the time per measurement (default 2).
"""

import gc
import gzip
import json
import os
import sys
import time

from googleapiclient.discovery import build_from_document
from googleapiclient.http import HttpMock

SECONDS = float(os.environ.get("BENCH_SECONDS") or 2)
HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "..", "spec", "fixtures", "discovery", "compute.v1.json.gz")


def rate(fn):
    n = 100
    while True:
        gc.collect()
        t0 = time.process_time()
        fn(n)
        dt = time.process_time() - t0
        if dt >= SECONDS:
            return n / dt
        n = int(n * SECONDS * 1.1 / dt) + 1 if dt > 0.05 else n * 10


def time_ms(fn, reps):
    fn()
    n, total = 0, 0.0
    while n < reps or total < SECONDS / 2:
        gc.collect()
        t0 = time.process_time()
        fn()
        total += time.process_time() - t0
        n += 1
    return total / n * 1000


def out(name, value, unit):
    sys.stdout.write("%s %.6g %s\n" % (name, value, unit))
    sys.stdout.flush()


def main():
    with gzip.open(PATH, "rb") as f:
        text = f.read().decode("utf-8")
    svc = build_from_document(text, http=HttpMock())
    instances = svc.instances()

    def same(n):
        for _ in range(n):
            r = instances.list(project="my-project", zone="us-central1-a",
                               maxResults=10, filter="status = RUNNING")
            r.uri

    out("request_build_ref", rate(same), "req/s")

    projects = ["project-%d-x" % i for i in range(4096)]
    zones = ["europe-west%d-b" % i for i in range(4096)]
    filters = ["name = instance-%d" % i for i in range(4096)]

    def unique(n):
        for i in range(n):
            k = i % 4096
            r = instances.list(project=projects[k], zone=zones[k],
                               maxResults=10, filter=filters[k])
            r.uri

    out("request_build_unique_ref", rate(unique), "req/s")

    out("build_from_document_ref",
        time_ms(lambda: build_from_document(text, http=HttpMock()), 10), "ms")
    out("json_decode_compute_ref", time_ms(lambda: json.loads(text), 10), "ms")


if __name__ == "__main__":
    main()
