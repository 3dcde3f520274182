"""Prints the with/without-pytier table for tests/bench/overhead/run:
compare.py BASE.json PYTIER.json (pyperformance result files)."""

import math
import sys

import pyperf


def by_name(path):
    return {b.get_name(): b for b in pyperf.BenchmarkSuite.load(path).get_benchmarks()}


def main():
    base, tier = by_name(sys.argv[1]), by_name(sys.argv[2])
    print(f"{'benchmark':<22} {'without':>11} {'with pytier':>11} {'ratio':>7} {'noise':>6}")
    logs = []
    for name in sorted(base.keys() & tier.keys()):
        b, t = base[name], tier[name]
        ratio = t.mean() / b.mean()
        logs.append((math.log(ratio), name))
        noise = max(b.stdev() / b.mean(), t.stdev() / t.mean())
        print(f"{name:<22} {b.mean() * 1e3:>9.3f}ms {t.mean() * 1e3:>9.3f}ms {ratio:>7.3f} {100 * noise:>5.1f}%")
    missing = sorted(base.keys() ^ tier.keys())
    if missing:
        print(f"missing from one run: {', '.join(missing)}")
    worst_log, worst = max(logs)
    print(f"benchmarks: {len(logs)}, worst: {worst} {100 * (math.exp(worst_log) - 1):+.1f}%")
    print(f"overhead geomean: {100 * (math.exp(sum(l for l, _ in logs) / len(logs)) - 1):+.2f}%")


if __name__ == "__main__":
    main()
