"""Placement on a real NUMA topology: run inside the VM of tests/numa-vm/run
(node 0 DRAM with the CPUs, node 1 CPU-less), where `move_pages` tells where
each object's page really is. tests/run starts it as
    tests/numa-vm/run -- python3 -m pytest -p no:cacheprovider tests/numa-vm
PYTIER_SHIM names the built shim directory."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

SHIM = os.environ.get("PYTIER_SHIM")


def cpu_less_node():
    """Id of a CPU-less NUMA node with memory, or None."""
    try:
        with open("/sys/devices/system/node/has_memory") as f:
            text = f.read().strip()
    except OSError:
        return None
    for node in text.replace("-", ",").split(","):
        with open(f"/sys/devices/system/node/node{node}/cpulist") as f:
            if not f.read().strip():
                return int(node)
    return None


pytestmark = [
    pytest.mark.skipif(not SHIM, reason="PYTIER_SHIM not set; run tests/run"),
    pytest.mark.skipif(cpu_less_node() is None, reason="no CPU-less NUMA node: run inside tests/numa-vm/run"),
]

# The workload: a big cold heap allocated first, a small hot set after it
# (so they sit in different arenas), the hot set's reference counts kept
# moving, and at the end where every object's page is and a checksum.
# What both workloads start with: the node of each page, by move_pages.
PRELUDE = """
    import ctypes, json, random, sys, time
    import pytier

    libc = ctypes.CDLL(None, use_errno=True)
    SYS_move_pages = 279  # x86_64

    def nodes_of_pages(pages):
        n = len(pages)
        addrs = (ctypes.c_void_p * n)(*pages)
        status = (ctypes.c_int * n)()
        if libc.syscall(SYS_move_pages, 0, ctypes.c_ulong(n), addrs, None, status, 0) != 0:
            raise OSError(ctypes.get_errno(), "move_pages")
        return list(status)

    def where(hot_pages, cold_pages):
        # The nodes of pages (by number) that should be on DRAM and on CXL.
        hot_nodes = nodes_of_pages([p * 4096 for p in hot_pages])
        cold_nodes = nodes_of_pages([p * 4096 for p in cold_pages])
        return {
            "pages": {"hot": len(hot_pages), "cold": len(cold_pages)},
            "nodes": {"hot": {n: hot_nodes.count(n) for n in set(hot_nodes)},
                      "cold": {n: cold_nodes.count(n) for n in set(cold_nodes)}},
            "hot_on_dram": sum(n == 0 for n in hot_nodes) / len(hot_nodes),
            "cold_on_cxl": sum(n == CXL for n in cold_nodes) / len(cold_nodes),
        }
"""

WORKLOAD = PRELUDE + """
    def nodes_of(objects):
        return nodes_of_pages(sorted({id(o) & ~4095 for o in objects}))

    def share(nodes, node):
        return sum(1 for s in nodes if s == node) / len(nodes)

    def kernel_numa_migrations():
        # Pages the kernel's own NUMA balancing moved (in the whole VM), printed
        # with the result: the kernel moves pages too, so a figure off by it shows.
        with open("/proc/vmstat") as f:
            return dict(line.split() for line in f).get("numa_pages_migrated", "0")

    kernel_before = int(kernel_numa_migrations())
    cold = [(float(i), float(-i)) for i in range(COLD)]
    hot = [float(i) + 0.5 for i in range(HOT)]
    checksum = sum(a - b for a, b in cold) + sum(hot)
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        holders = [x for x in hot if random.random() < 0.5]
        time.sleep(0.05)
    del holders
    # Where the pages are, before the checksum reads (and so warms) every object.
    hot_nodes = nodes_of(hot)
    cold_nodes = nodes_of(cold[::7] + [x for t in cold[::7] for x in t])
    stats = pytier.stats()
    intact = sum(a - b for a, b in cold) + sum(hot) == checksum
    print(json.dumps({
        "hot_on_dram": share(hot_nodes, 0),
        "cold_on_cxl": share(cold_nodes, CXL),
        "placement": stats["last"]["placement"],
        "intact": intact,
        "kernel_numa_migrations": int(kernel_numa_migrations()) - kernel_before,
    }))
"""


def run_script(template, values, config):
    """Runs `template` (with each of `values`' names, and CXL, replaced by
    its value) under pytier with `config` over the tests' tracking and
    migration settings; returns the JSON it prints."""
    code = textwrap.dedent(template)
    for name, value in {**values, "CXL": cpu_less_node()}.items():
        code = code.replace(name, str(value))
    base = {"tracking": {"scanIntervalMillis": 200, "maxCpuFraction": 0.5}, "migration": {"hysteresisSeconds": 1}}
    env = dict(os.environ, PYTHONPATH=SHIM, PYTIER_SOCKET="", PYTIER_CONFIG=json.dumps({**base, **config}))
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def run(config, cold=200_000, hot=20_000, seconds=12):
    return run_script(WORKLOAD, {"COLD": cold, "HOT": hot, "SECONDS": seconds}, config)


def test_cold_objects_pages_go_to_cxl_and_hot_ones_stay_on_dram():
    # The hot set and the interpreter's busy pages fit in 2 MiB; the ~30 MiB
    # cold heap does not (demotion is lazy: cold pages may stay where the
    # budget has room).
    out = run({"dramBudget": {"bytes": 2 << 20}}, seconds=20)
    placement = out["placement"]
    assert placement["offReason"] is None, placement
    assert out["intact"], "values changed under migration"
    # Not 1.0: a full garbage collection writes every tracked object's
    # header, so on kernels with page-write tracking (6.7+) the cold pages
    # look written for a moment and a few come back until the hysteresis
    # passes (seen: 0.84 in one run of six).
    assert out["cold_on_cxl"] >= 0.8, json.dumps(out)
    assert out["hot_on_dram"] >= 0.9, out
    demoted = placement["demoted"]
    # A page freed since the round's query (ENOENT: the program's short-lived
    # lists come and go) or busy at that moment (EBUSY) fails: counted, harmless.
    # EACCES (the kernel counts the page as mapped more than once, and will
    # not move it) shows in about half the runs since 2026-12-03; its cause
    # is not known yet (not the scanner's in-place reads: a build that copies
    # the pools shows it too). The page stays where it is: harmless.
    assert demoted["pages"] > 0 and demoted["failedPages"] <= 0.1 * demoted["pages"], placement
    assert set(demoted["errors"]) <= {"EBUSY", "ENOENT", "EFAULT", "EACCES"}, placement


def test_the_dram_budget_is_respected():
    budget = 4 << 20
    out = run({"dramBudget": {"bytes": budget}})
    placement = out["placement"]
    assert placement["budgetBytes"] == budget
    # As the kernel reported it at the start of the last round; the round's
    # own moves are in flight by then, hence one round's worth of slack.
    assert placement["dramBytes"] <= budget + 1024 * 4096, placement
    assert placement["heapPages"] * 4096 > 4 * budget, "the heap is bigger than the budget"


def test_observe_mode_moves_nothing_and_reports_what_it_would_move():
    out = run({"mode": "observe", "dramBudget": {"bytes": 4 << 20}}, seconds=6)
    placement = out["placement"]
    assert placement["demoted"]["pages"] == 0 and placement["promoted"]["pages"] == 0, placement
    assert placement["pendingDemotePages"] > 0, placement
    assert out["cold_on_cxl"] == 0.0, "nothing moved to the CXL node"


def test_failed_moves_are_counted_and_the_program_runs_on():
    # Node 1 counted as DRAM and a CXL node 7 that does not exist: every
    # demotion fails, and says why.
    tiers = {"dramNodes": [0, cpu_less_node()], "cxlNodes": [7]}
    out = run({"tiers": tiers, "dramBudget": {"bytes": 4 << 20}}, seconds=6)
    placement = out["placement"]
    assert out["intact"]
    assert placement["demoted"]["pages"] == 0, placement
    assert placement["demoted"]["failedPages"] > 0, placement
    assert placement["demoted"]["errors"], placement


# C memory pytier has no objects for, in glibc's brk heap: blocks written once
# (cold) and a buffer the program keeps writing (hot). Their pages are placed
# by their page writes (see interposer/src/brk.rs).
BRK_WORKLOAD = PRELUDE + """
    libc.malloc.restype = ctypes.c_void_p

    def pages_of(blocks, size):
        return sorted({page for b in blocks for page in range(b & ~4095, b + size, 4096)})

    def all_in_brk_heap(addresses):
        with open("/proc/self/maps") as f:
            spans = [[int(x, 16) for x in line.split()[0].split("-")] for line in f if line.rstrip().endswith("[heap]")]
        return all(any(start <= a < end for start, end in spans) for a in addresses)

    # Under glibc's mmap threshold, so from the brk heap.
    cold = [libc.malloc(4000) for _ in range(COLD)]
    for block in cold:
        ctypes.memset(block, 1, 4000)
    hot = libc.malloc(HOT_BYTES)
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        ctypes.memset(hot, 2, HOT_BYTES)
        time.sleep(0.01)
    cold_nodes = nodes_of_pages(pages_of(cold, 4000)[1:-1])  # not the edges, shared with other memory
    hot_nodes = nodes_of_pages(pages_of([hot], HOT_BYTES)[1:-1])
    print(json.dumps({
        "in_brk_heap": all_in_brk_heap(cold + [hot]),
        "cold_on_cxl": sum(n == CXL for n in cold_nodes) / len(cold_nodes),
        "hot_on_dram": sum(n == 0 for n in hot_nodes) / len(hot_nodes),
        "intact": all(ctypes.string_at(b, 4000) == bytes([1]) * 4000 for b in cold[::50]),
        "placement": pytier.stats()["last"]["placement"],
    }))
"""


def test_unused_c_memory_in_the_brk_heap_goes_to_cxl_and_written_c_memory_stays_on_dram():
    out = run_script(BRK_WORKLOAD, {"COLD": 6000, "HOT_BYTES": 64 << 10, "SECONDS": 20},
                     {"dramBudget": {"bytes": 6 << 20}})
    assert out["in_brk_heap"], "the blocks came from mmap, not the brk heap: the test proves nothing"
    assert out["intact"], "C memory changed under migration"
    # 23 MiB of blocks nothing uses, over a 6 MiB budget.
    assert out["cold_on_cxl"] >= 0.8, out
    assert out["hot_on_dram"] >= 0.9, out


# A big dict used all the time, through a few of its keys: the pages of its
# table holding those keys' entries are read at every lookup, the others
# never (see interposer/src/referents.rs). The hot keys are the first key of
# every fourth page of entries.
TABLE_WORKLOAD = PRELUDE + """
    import collections
    # No transparent huge pages for this process: the table is an mmap'd
    # 10 MiB block, and moving one 4 KiB page of a huge page moves all 2 MiB
    # of it (with them the table's pages went back and forth between the
    # tiers every round). pytier does not handle huge pages yet.
    PR_SET_THP_DISABLE = 41
    assert libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, ctypes.get_errno()
    d = {i: float(i) for i in range(KEYS)}
    # CPython's layout (Objects/dictobject.c): ma_keys points to a 32-byte
    # header, then the index array, then the entries (hash, key, value).
    table = ctypes.c_void_p.from_address(id(d) + 32).value
    log2_index_bytes = ctypes.c_uint8.from_address(table + 9).value
    entries = table + 32 + (1 << log2_index_bytes)
    page_of_entry = lambda i: (entries + 24 * i) // 4096
    assert ctypes.c_void_p.from_address(entries + 24 * 7 + 8).value == id(7), "not the layout expected"
    first_on_page = {}
    for i in range(KEYS):
        first_on_page.setdefault(page_of_entry(i), i)
    pages = sorted(first_on_page)[1:-1]  # not the edges, shared with other memory
    hot_pages = pages[::4]
    hot = [first_on_page[p] for p in hot_pages]
    # pytier knows how much a key or value is used from its own count and
    # its page's writes: a cold key sharing a page with a hot one looks used.
    # The cold pages are those whose entries' keys and values share no page
    # with a hot key or value.
    # Read from the table (using the objects would write their pages).
    words = (ctypes.c_size_t * (3 * KEYS)).from_address(entries)
    used = {address // 4096 for i in hot for address in words[3 * i + 1:3 * i + 3]}
    entry_pages = collections.defaultdict(set)
    for i, (key, value) in enumerate(zip(words[1::3], words[2::3])):
        entry_pages[page_of_entry(i)].update((key // 4096, value // 4096))
    cold_pages = [p for p in pages if p not in hot_pages and not entry_pages[p] & used]
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        # The dict in use all the time (a dict whose count is never seen
        # changing is not read by its entries: one nothing reads may hold hot
        # keys too), and the values held a while, their counts changing.
        held = [d[k] for k in hot if random.random() < 0.5]
    del held
    placed = where(hot_pages, cold_pages)
    last = pytier.stats()["last"]
    values = [d[k] for k in hot]
    print(json.dumps({
        **placed,
        "values": {c: pytier.classify(values).count(c) for c in ("hot", "warm", "cold", None)},
        "intact": all(v == float(k) for k, v in d.items()),
        "bigBlocks": last["bigBlocks"],
        "placement": last["placement"],
    }))
"""


def test_a_dict_tables_pages_of_hot_keys_stay_on_dram_and_those_of_cold_keys_go_to_cxl():
    out = run_script(TABLE_WORKLOAD, {"KEYS": 300_000, "SECONDS": 20}, {"dramBudget": {"bytes": 10 << 20}})
    assert out["intact"], "the dict changed under migration"
    assert out["bigBlocks"]["tablesByEntries"] >= 1, out["bigBlocks"]
    # About 440 pages of entries hold a hot key, some 1 000 only keys and
    # values far from any hot one; the heap is some 27 MiB over a 10 MiB
    # budget.
    assert out["hot_on_dram"] >= 0.9, out
    assert out["cold_on_cxl"] >= 0.8, out


# An OrderedDict used as an LRU cache uses: its hot keys moved to the end
# again and again. `move_to_end` finds a key's node in `od_fast_nodes`, an
# array with a node pointer for each entry of the dict's table, at the
# entry's index (Objects/odictobject.c): a page of it holding hot keys'
# slots is read at every move, the others never. The hot keys are the first
# slot of every fourth page of that array.
ODICT_WORKLOAD = PRELUDE + """
    import collections
    PR_SET_THP_DISABLE = 41  # as for the dict table: pytier moves 4 KiB pages
    assert libc.prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0, ctypes.get_errno()
    od = collections.OrderedDict((i, float(i)) for i in range(KEYS))
    od.move_to_end(7)  # builds the array
    # PyODictObject: the dict (48 bytes), od_first, od_last, od_fast_nodes.
    array = ctypes.c_void_p.from_address(id(od) + 64).value
    slots = (ctypes.c_size_t * KEYS).from_address(array)
    assert ctypes.c_void_p.from_address(slots[7]).value == id(7), "not the layout expected"
    page_of_slot = lambda i: (array + 8 * i) // 4096
    first_on_page = {}
    for i in range(KEYS):
        first_on_page.setdefault(page_of_slot(i), i)
    pages = sorted(first_on_page)[1:-1]  # not the edges, shared with other memory
    hot_pages = pages[::4]
    hot = [first_on_page[p] for p in hot_pages]
    # A slot's heat is its node's, known from the writes to the node's page:
    # the cold pages are those whose slots' nodes share no page with a hot
    # node (read with ctypes, which writes no counts).
    hot_node_pages = {slots[i] // 4096 for i in hot}
    node_pages = collections.defaultdict(set)
    for i in range(KEYS):
        node_pages[page_of_slot(i)].add(slots[i] // 4096)
    cold_pages = [p for p in pages if p not in hot_pages and not node_pages[p] & hot_node_pages]
    end = time.monotonic() + SECONDS
    while time.monotonic() < end:
        for k in hot:
            od.move_to_end(k)
    placed = where(hot_pages, cold_pages)
    last = pytier.stats()["last"]
    print(json.dumps({
        **placed,
        "intact": len(od) == KEYS and all(v == float(k) for k, v in od.items()),
        "bigBlocks": last["bigBlocks"],
    }))
"""


def test_an_ordered_dicts_node_array_pages_of_hot_keys_stay_on_dram_and_those_of_cold_keys_go_to_cxl():
    # Some 150 pages of each hold what the hot keys use: the node array, the
    # nodes with their keys, the table's entries and its index; with the
    # interpreter's, about 3 MiB. Pages nothing uses stay on DRAM while the
    # budget has room (at random among some 8 000: 0.46 to 0.71 of the cold
    # array pages on CXL with 10 MiB), so the budget leaves little.
    out = run_script(ODICT_WORKLOAD, {"KEYS": 300_000, "SECONDS": 20}, {"dramBudget": {"bytes": 4 << 20}})
    assert out["intact"], "the OrderedDict changed under migration"
    # Its table and its node array.
    assert out["bigBlocks"]["tablesByEntries"] >= 2, out["bigBlocks"]
    # Without their nodes' heat these pages have none and go to CXL.
    assert out["hot_on_dram"] >= 0.9, out
    assert out["cold_on_cxl"] >= 0.8, out


# pytier's table of big blocks (1 MiB in its library's .bss) is written by
# the allocator hook on the program's threads, so its pages are first
# touched there, on DRAM. Thousands of big blocks spread its hash slots over
# every page.
OWN_TABLE_WORKLOAD = PRELUDE + """
    blocks = [bytearray(300_000) for _ in range(3000)]
    time.sleep(SECONDS)
    # pytier's writable memory: its library's writable mappings and the
    # anonymous ones right after them (the .bss).
    pages, after = [], False
    for line in open("/proc/self/maps"):
        fields = line.split()
        if len(fields) > 5:
            after = fields[5].endswith("/_native.so")
        if after and "w" in fields[1]:
            low, high = (int(x, 16) for x in fields[0].split("-"))
            pages += range(low, high, 4096)
    nodes = nodes_of_pages(pages)
    print(json.dumps({"cxl": nodes.count(CXL), "dram": nodes.count(0), "pages": len(pages),
                      "placement": pytier.stats()["last"]["placement"]}))
"""


def test_pytiers_own_table_of_big_blocks_goes_to_cxl():
    out = run_script(OWN_TABLE_WORKLOAD, {"SECONDS": 5}, {"dramBudget": {"bytes": 4 << 20}})
    assert out["placement"]["offReason"] is None, out["placement"]
    # The table is 256 pages; the library's own data a few more.
    assert out["cxl"] >= 240, out
