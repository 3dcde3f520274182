"""Prints the with/without-pytier table for tests/bench/overhead/run."""

import math
import sys

import pyperf


def mean_seconds(path):
    suite = pyperf.BenchmarkSuite.load(path)
    means = [b.mean() for b in suite.get_benchmarks()]
    # A benchmark file may hold several sub-benchmarks: compare their geomean.
    return math.exp(sum(math.log(m) for m in means) / len(means)), max(b.stdev() / b.mean() for b in suite.get_benchmarks())


def main():
    out, names = sys.argv[1], sys.argv[2:]
    print(f"{'benchmark':<18} {'without':>11} {'with pytier':>11} {'ratio':>7} {'noise':>6}")
    logs = []
    for name in names:
        base, base_noise = mean_seconds(f"{out}/{name}.base.json")
        tier, tier_noise = mean_seconds(f"{out}/{name}.pytier.json")
        ratio = tier / base
        logs.append(math.log(ratio))
        print(f"{name:<18} {base * 1e3:>9.2f}ms {tier * 1e3:>9.2f}ms {ratio:>7.3f} {100 * max(base_noise, tier_noise):>5.1f}%")
    worst = max(zip(logs, names))
    print(f"worst: {worst[1]} {100 * (math.exp(worst[0]) - 1):+.1f}%")
    print(f"overhead geomean: {100 * (math.exp(sum(logs) / len(logs)) - 1):+.2f}%")


if __name__ == "__main__":
    main()
