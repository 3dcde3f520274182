"""DAMOS tiering for the placement benchmark: the kernel's DAMON-based
memory tiering, set up through DAMON's sysfs interface as the kernel's own
sample for it (samples/damon/mtier.c, Linux 6.16) recommends, within what
the VM's 6.12 kernel has.

Two kdamonds watch physical memory (`paddr`): one node 0, migrating regions
DAMON saw no access to (`migrate_cold`) to node 1; one node 1, migrating
regions with any access (`migrate_hot`) to node 0. As in the sample: 5 ms
sampling, 100 ms aggregation, 10 to 1000 regions, at most 200 MiB a second
each, prioritised by access rate and age (not size), a `young` page filter
(promote only pages accessed since the last check, demote only pages that
were not), and a quota goal each, on node 0's use for promotion and its
free memory for demotion, both active in the band between them (swapping
cold pages for hot ones). Linux 6.12 has no node memory goals (6.16 does),
so each is a `user_input` goal that this module feeds at every quota reset,
computed over the DRAM the workload may use (what it holds on node 0 plus
the room the balloon leaves it), not over the node, which the balloon keeps
full. A `memcg` filter keeps the schemes to the workload's cgroup: physical
memory also holds the balloon's locked pages, which `migrate_cold` would
otherwise move.

Two changes to the sample. The goals are 97% used and 5% free, the
sample's 99.7% and 0.5% band made ten times wider: 0.5% of a budget of some
8 MiB is 40 KiB, less than the balloon's precision. And one for TCG, as
pytier's budgets are scaled: the sample applies its schemes and resets their
quotas every second, and a goal-tuned quota starts at one byte and at most
doubles at each reset, so it would need some 23 s to reach 8 MiB a second,
most of a phase here (where the workload runs some 30 times slower than on
hardware). `interval_ms` sets both intervals (the benchmark's default:
100 ms); the quota stays 200 MiB a second. The harness runs it with
demotion in reclaim on (see bench.set_kernel_tiering).
"""

import os
import threading

from sysfs import read, write

DAMON = "/sys/kernel/mm/damon/admin/kdamonds"
UNLIMITED = 2**32 - 1


def node_physical_range(node):
    """[start, end) of a node's memory blocks."""
    block = int(read("/sys/devices/system/memory/block_size_bytes"), 16)
    folder = f"/sys/devices/system/node/node{node}"
    ids = [int(name[len("memory"):]) for name in os.listdir(folder)
           if name.startswith("memory") and name[len("memory"):].isdigit()]
    return min(ids) * block, (max(ids) + 1) * block


class Damos:
    """Starts the two kdamonds; `feed(used_bp)` at each quota reset; `stop()`
    returns, per scheme and by DAMON's own counts, the bytes it migrated and
    the bytes of the regions it was tried on (those its access pattern
    matched, before the page filters), with the bytes its goal asked for
    (see `feed`)."""

    # (kdamond, watched node, action, target node, nr_accesses range,
    #  young filter matching: which pages it filters out, goal)
    SCHEMES = (
        (0, 1, "migrate_hot", 0, (1, UNLIMITED), "N", 9700),  # keep node 0 97% used
        (1, 0, "migrate_cold", 1, (0, 0), "Y", 500),  # keep 5% of it free
    )

    def __init__(self, interval_ms, memcg_path):
        """memcg_path: the workload's cgroup, from the cgroup2 root."""
        if not os.path.exists(DAMON):
            raise RuntimeError(f"damos: no DAMON sysfs interface at {DAMON}")
        write(f"{DAMON}/nr_kdamonds", len(self.SCHEMES))
        for kdamond, node, action, target, (least, most), young, goal in self.SCHEMES:
            ctx = f"{DAMON}/{kdamond}/contexts/0"
            write(f"{DAMON}/{kdamond}/contexts/nr_contexts", 1)
            write(f"{ctx}/operations", "paddr")
            intervals = f"{ctx}/monitoring_attrs/intervals"
            write(f"{intervals}/sample_us", 5000)
            write(f"{intervals}/aggr_us", 100_000)
            write(f"{intervals}/update_us", 60_000_000)
            write(f"{ctx}/monitoring_attrs/nr_regions/min", 10)
            write(f"{ctx}/monitoring_attrs/nr_regions/max", 1000)
            write(f"{ctx}/targets/nr_targets", 1)
            write(f"{ctx}/targets/0/regions/nr_regions", 1)
            start, end = node_physical_range(node)
            write(f"{ctx}/targets/0/regions/0/start", start)
            write(f"{ctx}/targets/0/regions/0/end", end)
            write(f"{ctx}/schemes/nr_schemes", 1)
            scheme = f"{ctx}/schemes/0"
            write(f"{scheme}/action", action)
            write(f"{scheme}/target_nid", target)
            write(f"{scheme}/apply_interval_us", interval_ms * 1000)
            pattern = f"{scheme}/access_pattern"
            for name, (low, high) in (("sz", (4096, UNLIMITED)), ("nr_accesses", (least, most)),
                                      ("age", (0, UNLIMITED))):
                write(f"{pattern}/{name}/min", low)
                write(f"{pattern}/{name}/max", high)
            write(f"{scheme}/quotas/bytes", (200 << 20) * interval_ms // 1000)
            write(f"{scheme}/quotas/reset_interval_ms", interval_ms)
            write(f"{scheme}/quotas/weights/sz_permil", 0)
            write(f"{scheme}/quotas/weights/nr_accesses_permil", 100)
            write(f"{scheme}/quotas/weights/age_permil", 100)
            write(f"{scheme}/quotas/goals/nr_goals", 1)
            write(f"{scheme}/quotas/goals/0/target_metric", "user_input")
            write(f"{scheme}/quotas/goals/0/target_value", goal)
            write(f"{scheme}/quotas/goals/0/current_value", 0)
            write(f"{scheme}/watermarks/metric", "none")
            write(f"{scheme}/filters/nr_filters", 2)
            write(f"{scheme}/filters/0/type", "memcg")
            write(f"{scheme}/filters/0/memcg_path", memcg_path)
            write(f"{scheme}/filters/0/matching", "N")  # out: pages of other cgroups
            write(f"{scheme}/filters/1/type", "young")
            write(f"{scheme}/filters/1/matching", young)
        for kdamond, *_ in self.SCHEMES:
            write(f"{DAMON}/{kdamond}/state", "on")
        # The sum, over the quota resets, of each scheme's quota as its goal
        # tuned it: what the goal asked it to migrate. A goal met all along
        # keeps the quota at a byte, and the scheme rightly migrates nothing.
        self.asked = {action: 0 for _, _, action, *_ in self.SCHEMES}

    def feed(self, used_bp):
        """Tells both goals how full the workload's DRAM is (basis points),
        and adds each scheme's quota, as its goal has tuned it, to `asked`."""
        for kdamond, _, action, *_, goal in self.SCHEMES:
            scheme = f"{DAMON}/{kdamond}/contexts/0/schemes/0"
            current = used_bp if goal > 5000 else 10000 - used_bp  # used for one, free for the other
            write(f"{scheme}/quotas/goals/0/current_value", max(0, current))
            write(f"{DAMON}/{kdamond}/state", "commit_schemes_quota_goals")
            write(f"{DAMON}/{kdamond}/state", "update_schemes_effective_quotas")
            self.asked[action] += int(read(f"{scheme}/quotas/effective_bytes"))

    def stop(self):
        migrated, tried = {}, {}
        for kdamond, _, action, *_ in self.SCHEMES:
            write(f"{DAMON}/{kdamond}/state", "update_schemes_stats")
            stats = f"{DAMON}/{kdamond}/contexts/0/schemes/0/stats"
            migrated[action] = int(read(f"{stats}/sz_applied"))
            tried[action] = int(read(f"{stats}/sz_tried"))
            write(f"{DAMON}/{kdamond}/state", "off")
        return {"migrated": migrated, "tried": tried, "asked": self.asked}


class Feeder:
    """Feeds a Damos the workload's DRAM use every `interval_ms`, on a thread."""

    def __init__(self, damos, used_bp, interval_ms):
        self.damos, self.used_bp, self.interval = damos, used_bp, interval_ms / 1000
        self.fed = 0  # feeds that succeeded: with none, `asked` says nothing
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while not self.stop_event.wait(self.interval):
            try:
                self.damos.feed(self.used_bp())
                self.fed += 1
            except (OSError, ProcessLookupError, FileNotFoundError):
                pass  # the workload exited: the run is ending

    def stop(self):
        self.stop_event.set()
        self.thread.join()
        return {**self.damos.stop(), "feeds": self.fed}
