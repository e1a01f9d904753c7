#!/usr/bin/python3
"""Reference for bench/discovery_memory.lua: the peak resident memory
(ru_maxrss) of a Python process in which googleapiclient (Debian
python3-googleapi) builds compute v1 and the same 1,000 requests.

  /usr/bin/python3 bench/discovery_memory_ref.py

Prints `discovery_peak_ref <MiB> MiB`.
"""

import gc
import gzip
import os
import resource
import sys

from googleapiclient.discovery import build_from_document
from googleapiclient.http import HttpMock

HERE = os.path.dirname(os.path.abspath(__file__))
PATH = os.path.join(HERE, "..", "spec", "fixtures", "discovery", "compute.v1.json.gz")


def main():
    with gzip.open(PATH, "rb") as f:
        text = f.read().decode("utf-8")
    svc = build_from_document(text, http=HttpMock())
    del text
    instances = svc.instances()
    keep = []
    for i in range(1, 1001):
        if i % 10 == 0:
            r = instances.insert(project="project-%d" % i, zone="us-central1-a",
                                 body={"name": "vm-%d" % i, "machineType": "e2-small"})
        else:
            r = instances.list(project="project-%d" % i, zone="us-central1-a",
                               maxResults=10, filter="status = RUNNING")
        keep.append(r)
    gc.collect()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    sys.stdout.write("discovery_peak_ref %.1f MiB\n" % peak)


if __name__ == "__main__":
    main()
