"""Hotness benchmark: how well pytier's hot class matches a known access
distribution. Run under the shim (tests/bench/hotness/run does that):

A dict of N small objects (floats) is read with Zipf(0.99)-distributed keys;
halfway through, the ranking is reshuffled (the hot set shifts). Truth: the
top 1% of keys by probability are hot. Reported per phase, for the object
classes (reference-count changes) and the page classes (page writes): the
precision and recall of pytier's hot class against that truth, the share of
objects called hot (what DRAM would have to hold), the share of accesses that
went to objects called hot (what placement could serve from DRAM), and after
the shift the time until the object recall reaches half its level before it.

Three access styles: "read" (v = d[k]; total += v: reference counts go up and
back down between scans), "retain" (each read object is also kept in a ring
of the last 1024 reads, which is what happens when reads are stored) and
"local" (each object is held in the local variable of a generator of its own,
and an access resumes that generator, which reads the local: the way `self`
or a table bound to a local is used). CPython 3.14's LOAD_FAST_BORROW reads
a local without writing its reference count, so on 3.14+ "local" accesses
write nothing of the object at all: the measure of the signal that is lost.
"""

import argparse
import itertools
import json
import random
import sys
import time

import pytier


def zipf_cum_weights(n, s):
    acc = 0.0
    out = []
    for rank in range(1, n + 1):
        acc += 1.0 / rank**s
        out.append(acc)
    return out


def holder(obj):
    """Holds `obj` in a local and reads it on every resumption."""
    while True:
        yield obj * 2.0


def measure(ids_by_rank, hot_count, cum, total, by="object"):
    classes = pytier.classify_ids(ids_by_rank, by)
    called_hot = [c == "hot" for c in classes]
    n_hot = sum(called_hot)
    true_pos = sum(called_hot[:hot_count])
    # Probability mass of the objects called hot.
    mass = 0.0
    prev = 0.0
    for i, (c, w) in enumerate(zip(called_hot, cum)):
        if c:
            mass += w - prev
        prev = w
    return {
        "calledHot": n_hot,
        "precision": true_pos / n_hot if n_hot else 0.0,
        "recall": true_pos / hot_count,
        "heapShareHot": n_hot / len(classes),
        "accessShareOnHot": mass / total,
        "tracked": sum(c is not None for c in classes) / len(classes),
    }


def run(n, seconds, style, seed):
    rng = random.Random(seed)
    d = {k: float(k) + 0.5 for k in range(n)}
    keys = list(range(n))
    cum = zipf_cum_weights(n, 0.99)
    total = cum[-1]
    hot_count = max(1, n // 100)
    ring = [None] * 1024
    # A list, not a dict: a dict lookup by an int writes the count of the
    # stored key, which shares the value's page, and the page would be
    # written on every version.
    holders = [holder(d[k]) for k in keys] if style == "local" else None
    if holders:
        for g in holders:
            next(g)
    rows = []

    # Addresses by key, taken now: `id(d[k])` in a phase would itself write
    # every object's count (a page write on every page, on every version).
    address = {k: id(v) for k, v in d.items()}

    def phase(name, ranking, deadline, watch_recall_target=None):
        by_rank = [address[k] for k in ranking]
        sample = lambda: rng.choices(ranking, cum_weights=cum, k=65536)  # noqa: E731
        start = time.monotonic()
        detected = None
        next_check = start + 1.0
        acc = 0.0
        pos = 0
        while time.monotonic() < deadline:
            if style == "local":
                for k in sample():
                    acc += next(holders[k])
            else:
                for k in sample():
                    v = d[k]
                    acc += v
                    if style == "retain":
                        ring[pos] = v
                        pos = (pos + 1) & 1023
            now = time.monotonic()
            if watch_recall_target is not None and detected is None and now >= next_check:
                next_check = now + 1.0
                if measure(by_rank, hot_count, cum, total)["recall"] >= watch_recall_target:
                    detected = now - start
        m = measure(by_rank, hot_count, cum, total)
        m["phase"] = name
        m["detectSeconds"] = detected
        m["by"] = "object"
        rows.append(m)
        p = measure(by_rank, hot_count, cum, total, by="page")
        p["phase"] = name
        p["detectSeconds"] = None
        p["by"] = "page"
        rows.append(p)
        return m

    ranking = keys[:]
    rng.shuffle(ranking)
    t0 = time.monotonic()
    before = phase("before shift", ranking, t0 + seconds)
    shifted = keys[:]
    rng.shuffle(shifted)
    target = max(before["recall"] / 2, 1e-9) if before["recall"] > 0 else None
    phase("after shift", shifted, time.monotonic() + seconds, watch_recall_target=target)
    # Read now: once this returns the heap is freed, and a cycle caught in
    # the middle of that reports a coverage of half a heap.
    return rows, pytier.stats()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--objects", type=int, default=1_000_000)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--style", choices=["read", "retain", "local"], default="read")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    active, reason = pytier.status()
    if not active:
        sys.exit(f"pytier is not active: {reason}")
    rows, s = run(args.objects, args.seconds, args.style, args.seed)
    last = s.get("last") or {}
    print(json.dumps({"style": args.style, "objects": args.objects, "rows": rows,
                      "scannerCpuFraction": s["scannerCpuFraction"], "passes": s["passes"], "uptime": s["uptimeSeconds"],
                      "coverage": last.get("coverage"), "scanSeconds": last.get("scanSeconds"),
                      "pageWrites": last.get("pageWrites")}))


if __name__ == "__main__":
    main()
