"""Paired, interleaved overhead measurement for tests/bench/overhead/run.

For each pyperformance benchmark script, runs PAIRS pairs of single-process
pyperf runs, one without and one with the interposer, alternating which goes
first (A B, B A, A B, ...) so drift on this noisy machine hits both sides
alike. A benchmark's ratio is the median of its per-pair ratios; the spread is
the range of the middle half of them.

Then, unless --no-callgrind, a timing-free figure: instructions per benchmark
loop under `valgrind --tool=callgrind` (repeatable, and it counts the scanner
thread's work too), from two runs with N and 2N loops so that start-up cancels
out. Start-up itself (`python -c pass`) is reported on its own line.

usage: overhead.py --python VENV_PYTHON --shim DIR [--pairs N] [--no-callgrind] BENCH...
"""

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile

import pyperf
from pyperformance import _manifest

CALLGRIND_SECONDS = 0.05


def parse_args():
    parser = argparse.ArgumentParser()
    parser.add_argument("--python", required=True, help="python of pyperformance's benchmark venv")
    parser.add_argument("--shim", required=True, help="interposer shim directory")
    parser.add_argument("--pairs", type=int, default=6)
    parser.add_argument("--values", type=int, default=3, help="timed values per process")
    parser.add_argument("--no-callgrind", action="store_true")
    parser.add_argument("benchmarks", nargs="+")
    return parser.parse_args()


class Runner:
    """Runs benchmark scripts with or without the interposer."""

    def __init__(self, python, shim, workdir):
        self.python = python
        self.workdir = workdir
        self.sockets = os.path.join(workdir, "sockets")
        os.makedirs(self.sockets, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PYTIER_"))}
        self.env = {
            False: base,
            True: {**base, "PYTHONPATH": shim, "PYTIER_SOCKET_DIR": self.sockets},
        }
        self.count = 0

    def timed(self, script, extra_opts, with_pytier, values):
        """One pyperf process; returns {benchmark name: mean seconds per outer loop}."""
        self.count += 1
        out = os.path.join(self.workdir, f"run{self.count}.json")
        argv = [self.python, "-u", script, *extra_opts, "--processes", "1",
                "--values", str(values), "--warmups", "1",
                "--inherit-environ", "PYTHONPATH,PYTIER_SOCKET_DIR", "--quiet", "-o", out]
        subprocess.run(argv, env=self.env[with_pytier], check=True, stdout=subprocess.DEVNULL)
        suite = pyperf.BenchmarkSuite.load(out)
        os.unlink(out)
        return {b.get_name(): b.mean() * b.get_metadata().get("inner_loops", 1)
                for b in suite.get_benchmarks()}

    def instructions(self, argv, with_pytier):
        """Instructions executed by the whole process (all threads) under callgrind."""
        out = os.path.join(self.workdir, "callgrind.out")
        # One hash seed for both sides: string hashes decide dict probing,
        # and a random seed alone moves a count by a percent.
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv],
                       env={**self.env[with_pytier], "PYTHONHASHSEED": "0"}, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(out) as f:
            totals = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        os.unlink(out)
        return int(totals.group(1))

    def instructions_per_loop(self, script, extra_opts, loops, with_pytier):
        def run(n):
            out = os.path.join(self.workdir, "worker.json")
            count = self.instructions([self.python, script, *extra_opts, "--worker", "--loops", str(n),
                                       "--values", "1", "--warmups", "0", "--quiet", "-o", out],
                                      with_pytier)
            os.unlink(out)
            return count
        return (run(2 * loops) - run(loops)) / loops


def quartiles(xs):
    if len(xs) < 4:
        return min(xs), max(xs)
    q = statistics.quantiles(xs, n=4)
    return q[0], q[2]


def timed_table(runner, scripts, pairs, values):
    """Per benchmark: median of per-pair ratios and its interquartile range."""
    ratios, means, loop_seconds = {}, {}, {}
    for script, extra_opts in scripts:
        for i in range(pairs):
            order = (False, True) if i % 2 == 0 else (True, False)
            result = {side: runner.timed(script, extra_opts, side, values) for side in order}
            for name in result[False].keys() & result[True].keys():
                base, tier = result[False][name], result[True][name]
                ratios.setdefault(name, []).append(tier / base)
                means.setdefault(name, ([], []))
                means[name][0].append(base)
                means[name][1].append(tier)
                key = (script, tuple(extra_opts))
                loop_seconds[key] = max(loop_seconds.get(key, 0), base)
            print(f"  {os.path.basename(os.path.dirname(script))} {' '.join(extra_opts)} pair {i + 1}/{pairs}",
                  file=sys.stderr, flush=True)
    print(f"{'benchmark (per loop)':<22} {'without':>11} {'with pytier':>11} {'ratio':>7} {'middle half of pairs':>21}")
    logs = []
    for name in sorted(ratios):
        ratio = statistics.median(ratios[name])
        low, high = quartiles(ratios[name])
        base, tier = (statistics.median(m) for m in means[name])
        logs.append((math.log(ratio), name))
        print(f"{name:<22} {base * 1e3:>9.3f}ms {tier * 1e3:>9.3f}ms {ratio:>7.3f} {low:>10.3f} .. {high:.3f}")
    return logs, loop_seconds


def callgrind_table(runner, loop_seconds):
    """Loops are sized so that N loops of a script's slowest benchmark take
    about CALLGRIND_SECONDS natively (callgrind runs some 50 times slower)."""
    print()
    print(f"{'script (callgrind)':<22} {'instr/loop without':>19} {'with pytier':>12} {'ratio':>7}")
    logs = []
    for (script, extra_opts), seconds in sorted(loop_seconds.items()):
        n = max(1, round(CALLGRIND_SECONDS / seconds))
        base = runner.instructions_per_loop(script, list(extra_opts), n, False)
        tier = runner.instructions_per_loop(script, list(extra_opts), n, True)
        name = " ".join([os.path.basename(os.path.dirname(script))[3:], *extra_opts])
        logs.append(math.log(tier / base))
        print(f"{name:<22} {base:>19.0f} {tier:>12.0f} {tier / base:>7.4f}", flush=True)
    start = [runner.instructions([runner.python, "-c", "pass"], side) for side in (False, True)]
    print(f"{'start-up (-c pass)':<22} {start[0]:>19} {start[1]:>12} {start[1] / start[0]:>7.4f}")
    return logs


def geomean_percent(logs):
    return 100 * (math.exp(sum(logs) / len(logs)) - 1)


def main():
    args = parse_args()
    manifest = _manifest.load_manifest(None)
    known = {b.name: b for b in manifest.benchmarks}
    unknown = [name for name in args.benchmarks if name not in known]
    if unknown:
        sys.exit(f"unknown pyperformance benchmarks: {', '.join(unknown)}")
    scripts = [(known[name].runscript, list(known[name].extra_opts)) for name in args.benchmarks]

    with tempfile.TemporaryDirectory() as workdir:
        runner = Runner(args.python, args.shim, workdir)
        logs, loop_seconds = timed_table(runner, scripts, args.pairs, args.values)
        instruction_logs = [] if args.no_callgrind else callgrind_table(runner, loop_seconds)

    worst_log, worst = max(logs)
    print()
    print(f"benchmarks: {len(logs)}, pairs each: {args.pairs}, worst: {worst} {100 * math.expm1(worst_log):+.1f}%")
    if instruction_logs:
        print(f"instructions geomean: {geomean_percent(instruction_logs):+.2f}%")
    print(f"overhead geomean: {geomean_percent([log for log, _ in logs]):+.2f}%")


if __name__ == "__main__":
    main()
