"""Placement benchmark, run inside the tiered NUMA VM by ./run.

For each workload (workloads.py), with DRAM limited to a fraction of the
workload's heap, runs it under
  first-touch  no tiering: pages stay where they were first touched;
  kernel       kernel tiering: numa_balancing=2 with demotion enabled;
  pytier       the interposer (and the kernel's own balancing off);
and reports the share of accesses DRAM served, next to the oracle's (the
hottest pages by true access probability, as many as the budget holds).

DRAM is limited with a balloon: a process that binds and locks node-0 memory
until only the budget (plus the kernel's low watermark, below which it
allocates elsewhere) is free. The budget is DRAM_FRACTION of the workload's
anonymous memory, measured by a build-only run first. pytier is given the
same fraction as its dramBudget.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = ("first-touch", "kernel", "pytier")
BALLOON = r"""
import ctypes, mmap, sys
size = int(sys.argv[1])
libc = ctypes.CDLL(None, use_errno=True)
m = mmap.mmap(-1, size)
addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
mask = ctypes.c_ulong(1)  # node 0
SYS_mbind, MPOL_BIND = 237, 2
if libc.syscall(SYS_mbind, ctypes.c_void_p(addr), ctypes.c_ulong(size), MPOL_BIND,
                ctypes.byref(mask), ctypes.c_ulong(64), 0) != 0:
    sys.exit(f"balloon: mbind: errno {ctypes.get_errno()}")
if libc.mlock(ctypes.c_void_p(addr), ctypes.c_size_t(size)) != 0:
    sys.exit(f"balloon: mlock: errno {ctypes.get_errno()}")
print("ready", flush=True)
sys.stdin.read()
"""


def write(path, value):
    with open(path, "w") as f:
        f.write(str(value))


def node0_free_bytes():
    with open("/sys/devices/system/node/node0/meminfo") as f:
        for line in f:
            if "MemFree:" in line:
                return int(line.split()[-2]) * 1024
    raise RuntimeError("no MemFree for node 0")


def node0_low_watermark_bytes():
    pages, node = 0, None
    with open("/proc/zoneinfo") as f:
        for line in f:
            words = line.split()
            if words[:1] == ["Node"]:
                node = words[1].rstrip(",")
            elif node == "0" and words[:1] == ["low"]:
                pages += int(words[1])
    return pages * 4096


def vmstat(*names):
    values = {}
    with open("/proc/vmstat") as f:
        for line in f:
            name, value = line.split()
            values[name] = int(value)
    return sum(values.get(n, 0) for n in names)


MIGRATED_PAGES = ("pgpromote_success", "pgdemote_kswapd", "pgdemote_direct", "pgdemote_khugepaged",
                  "numa_pages_migrated")


class Balloon:
    """Holds node-0 memory so that about `leave` bytes stay free."""

    def __init__(self, leave):
        size = node0_free_bytes() - leave - node0_low_watermark_bytes()
        self.proc = None
        if size <= 0:
            return
        self.proc = subprocess.Popen([sys.executable, "-c", BALLOON, str(size & ~4095)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the balloon did not inflate")

    def close(self):
        if self.proc:
            self.proc.stdin.close()
            self.proc.wait()


def set_kernel_tiering(on):
    write("/proc/sys/kernel/numa_balancing", 2 if on else 0)
    write("/sys/kernel/mm/numa/demotion_enabled", 1 if on else 0)


def run_workload(name, args, config, heap):
    argv = [sys.executable, os.path.join(HERE, "workloads.py"), name, "--seconds", str(args.seconds),
            "--dram-fraction", str(args.dram_fraction), "--scale", str(args.scale)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTIER_CONFIG")}
    if config == "pytier":
        env["PYTHONPATH"] = args.shim
        env["PYTIER_SOCKET"] = ""
        env["PYTIER_CONFIG"] = json.dumps({
            "dramBudget": {"heapFraction": args.dram_fraction},
            "migration": {"hysteresisSeconds": args.hysteresis},
        })
    set_kernel_tiering(config == "kernel")
    balloon = Balloon(int(args.dram_fraction * heap))
    migrated_before = vmstat(*MIGRATED_PAGES)
    try:
        out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30 * args.seconds + 300)
    finally:
        balloon.close()
        set_kernel_tiering(False)
    if out.returncode != 0:
        raise RuntimeError(f"{name} under {config} failed:\n{out.stderr}")
    report = json.loads(out.stdout)
    if config == "pytier":
        placement = report.get("pytier") or {}
        if placement.get("offReason"):
            raise RuntimeError(f"pytier placement is off: {placement['offReason']}")
        moved = placement.get("promoted", {}).get("bytes", 0) + placement.get("demoted", {}).get("bytes", 0)
    else:
        moved = (vmstat(*MIGRATED_PAGES) - migrated_before) * 4096
    report["migratedBytes"] = moved
    return report


def heap_bytes(name, args):
    argv = [sys.executable, os.path.join(HERE, "workloads.py"), name, "--build-only", "--scale", str(args.scale)]
    return json.loads(subprocess.run(argv, check=True, capture_output=True, text=True).stdout)["heapBytes"]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--shim", default=os.environ.get("PYTIER_SHIM"), required="PYTIER_SHIM" not in os.environ)
    parser.add_argument("--seconds", type=float, default=30, help="length of each workload phase")
    parser.add_argument("--dram-fraction", type=float, default=0.25)
    parser.add_argument("--hysteresis", type=float, default=5, help="pytier's migration.hysteresisSeconds")
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("workloads", nargs="*", default=["zipf-read", "zipf-write", "zipf-shift", "records", "mixed"])
    args = parser.parse_args()
    if not os.path.exists("/sys/kernel/mm/numa/demotion_enabled"):
        sys.exit("placement bench: no memory tiering in this kernel (run it through ./run)")

    print(f"DRAM = {args.dram_fraction:.0%} of each workload's heap; phases of {args.seconds:.0f} s; "
          f"pytier hysteresis {args.hysteresis:.0f} s")
    print(f"{'workload':<11} {'config':<12} {'dram-hit':>8} {'oracle':>7} {'vs oracle':>9} "
          f"{'migrated':>10} {'reconverge':>10} {'intact':>6}")
    summary = {}
    for name in args.workloads:
        heap = heap_bytes(name, args)
        for config in args.configs.split(","):
            started = time.monotonic()
            report = run_workload(name, args, config, heap)
            last = report["phases"][-1]
            hit, oracle = last["dramShare"], last["oracleShare"]
            summary[name, config] = (hit, oracle)
            after = last["convergedAfterSeconds"]
            reconverge = "-" if len(report["phases"]) < 2 else ("never" if after is None else f"{after:.1f}s")
            print(f"{name:<11} {config:<12} {hit:>8.3f} {oracle:>7.3f} {hit / oracle:>9.2f} "
                  f"{report['migratedBytes'] / 2**20:>8.1f}Mi {reconverge:>10} "
                  f"{'yes' if report['intact'] else 'NO':>6}", flush=True)
            print(f"  ({config}: heap {heap / 2**20:.1f} MiB, {report['accesses']} accesses, "
                  f"{time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    if ("zipf-read", "pytier") in summary and ("zipf-read", "kernel") in summary:
        pytier, oracle = summary["zipf-read", "pytier"]
        kernel, _ = summary["zipf-read", "kernel"]
        print(f"dram-hit pytier: {pytier:.3f}, kernel: {kernel:.3f}, oracle: {oracle:.3f}")


if __name__ == "__main__":
    main()
