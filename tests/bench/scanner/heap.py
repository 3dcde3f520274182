"""One heap for tests/bench/scanner/run: builds about HEAP_MIB MiB of typical
Python objects (records as class instances, dicts and tuples holding strings,
ints, floats and small lists, in lists of 10 000), lets pytier finish CYCLES complete scan
cycles over it at the scanner budget PYTIER_CONFIG gives, and prints the
scanner thread's CPU per cycle (from /proc, over all CYCLES) and the last
cycle's figures as JSON. Run with the shim on PYTHONPATH.

Meanwhile the program uses a share of its records over and over (`--in-use
PERCENT`, none by default): picked at random across the heap (`--spread`),
or the records built one after another from a random point on.

Measuring begins --settle SECONDS after the heap is built (none by default).

usage: heap.py HEAP_MIB [CYCLES] [--in-use PERCENT [--spread]] [--settle SECONDS]
"""

import argparse
import json
import os
import random
import sys
import time

import pytier


class Record:
    def __init__(self, i):
        self.id = i
        self.name = f"record-{i}"
        self.score = i * 0.5
        self.tags = (i % 7, i % 11)


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def build(mib):
    start = rss_bytes()
    heap = []
    i = 0
    while rss_bytes() - start < mib << 20:
        batch = []
        for _ in range(10_000):
            kind = i % 3
            if kind == 0:
                batch.append(Record(i))
            elif kind == 1:
                batch.append({"id": i, "name": f"row-{i}", "value": i * 1.5, "tags": [i, str(i)]})
            else:
                batch.append((i, f"item {i}", [i * 2.5]))
            i += 1
        heap.append(batch)
    return heap


def scanner_cpu_seconds():
    """CPU time of pytier's scanner thread, from /proc (not pytier's own count)."""
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            stat = f.read()
        if "(pytier-scan" in stat:
            fields = stat.rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    sys.exit("no pytier scanner thread")


def in_use(heap, percent, spread):
    """The records the program keeps using (PERCENT of them)."""
    records = [r for batch in heap for r in batch]
    n = int(len(records) * percent / 100)
    if spread:
        return random.Random(1).sample(records, n)
    first = random.Random(1).randrange(len(records) - n + 1)
    return records[first:first + n]


def all_watched(last):
    """Whether every arena is watched for page writes, or none is (off)."""
    writes = last["pageWrites"]
    return writes["offReason"] is not None or writes["watchedPages"] * 4096 >= last["usedBytes"]


def wait_for_passes(n, deadline, using):
    while True:
        stats = pytier.stats()
        if not stats.get("active"):
            sys.exit(f"pytier is not active: {stats.get('reason')}")
        if stats["passes"] >= n:
            return stats
        if time.monotonic() > deadline:
            sys.exit(f"only {stats['passes']} of {n} cycles in time")
        if using:
            until = time.monotonic() + 0.01
            while time.monotonic() < until:
                for record in using:  # each turn writes its reference count
                    pass
        else:
            time.sleep(0.01)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mib", type=int)
    parser.add_argument("cycles", type=int, nargs="?", default=20)
    parser.add_argument("--in-use", type=float, default=0.0, metavar="PERCENT")
    parser.add_argument("--spread", action="store_true")
    parser.add_argument("--settle", type=float, default=0.0, metavar="SECONDS")
    args = parser.parse_args()
    t = time.monotonic()
    heap = build(args.mib)
    built = time.monotonic() - t
    using = in_use(heap, args.in_use, args.spread)
    deadline = time.monotonic() + 600
    # Whole cycles over the finished heap first (the types are known), time
    # for the heat of building it to cool, and the whole heap's pages watched
    # for writes: a program's steady state. (Writing the whole heap, the build
    # costs page faults that space page-write collections out, up to tens of
    # seconds at 1 GiB.)
    settled = time.monotonic() + args.settle
    stats = wait_for_passes(pytier.stats()["passes"] + 2, deadline, using)
    while time.monotonic() < settled or not all_watched(stats["last"]):
        stats = wait_for_passes(stats["passes"] + 1, deadline, using)
    cpu, first = scanner_cpu_seconds(), stats["passes"]
    stats = wait_for_passes(first + args.cycles, deadline, using)
    cpu = scanner_cpu_seconds() - cpu
    done = stats["passes"] - first
    last = stats["last"]
    print(json.dumps({
        "heapMiB": args.mib,
        "inUse": args.in_use,
        "spread": args.spread,
        "buildSeconds": built,
        "objects": sum(last["objects"].values()),
        "heapBytes": last["heapBytes"],
        "bytesRead": last["bytesRead"],
        "poolsUnread": last.get("poolsUnread", 0),  # not in shims before it
        "cycleCpuSeconds": cpu / done,
        "cycles": done,
        "records": sum(map(len, heap)),
    }))


if __name__ == "__main__":
    main()
