"""A pod's Python service in the NUMA VM: a big cold table and a small hot set
it keeps using (as tests/numa-vm/test_placement.py's workload does). It
takes no settings of its own: the node agent sends the policy's. After
SECONDS it prints, as JSON, where the pages of its hot and cold objects are
(move_pages, at the end of the loop), what the interposer reports, and
whether its data is intact.

    python3 agent_workload.py SECONDS METRICS_URL METRICS_FILE

Before it exits it saves the agent's metrics (while its interposer still
answers the agent).
"""

import ctypes
import json
import random
import sys
import time
import urllib.request

import pytier

seconds = float(sys.argv[1])
metrics_url, metrics_file = sys.argv[2], sys.argv[3]
cold = {i: ("cold-%d" % i) * 4 for i in range(200_000)}
hot = [float(i) + 0.5 for i in range(20_000)]
checksum = sum(len(v) for v in cold.values()) + sum(hot)

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long


def nodes_of(objects):
    """NUMA node of each object's page (-errno when not resident)."""
    n = len(objects)
    pages = (ctypes.c_void_p * n)(*[id(o) & ~4095 for o in objects])
    status = (ctypes.c_int * n)()
    SYS_move_pages = 279
    if libc.syscall(SYS_move_pages, 0, n, pages, None, status, 0) != 0:
        raise OSError(ctypes.get_errno(), "move_pages")
    return list(status)


deadline = time.monotonic() + seconds
while time.monotonic() < deadline:
    # Holding a changing half of the hot set moves its reference counts.
    holders = [x for x in hot if random.random() < 0.5]
    time.sleep(0.05)
del holders
# Where the pages are while the hot set is still in use: once the program
# stops using it, it is rightly no longer wanted on DRAM.
cold_nodes = nodes_of(list(cold.values())[::50])
hot_nodes = nodes_of(hot)

time.sleep(3)  # the agent observes every 2 s
with open(metrics_file, "w") as f:
    f.write(urllib.request.urlopen(metrics_url, timeout=10).read().decode())
stats = pytier.stats()
config = stats.get("config") or {}


def share_on(nodes, node):
    return sum(1 for n in nodes if n == node) / max(1, len(nodes))


print(json.dumps({
    "active": stats.get("active"),
    "configuredThreshold": (config.get("tracking") or {}).get("hotThreshold"),
    "configuredBudget": (config.get("dramBudget") or {}).get("bytes"),
    "placement": (stats.get("last") or {}).get("placement"),
    "coldOnNode1": share_on(cold_nodes, 1),
    "hotOnNode0": share_on(hot_nodes, 0),
    "intact": checksum == sum(len(v) for v in cold.values()) + sum(hot),
}))
