"""The interposer inside real CPython processes, loaded the way users load it:
the shim directory first on PYTHONPATH. PYTIER_SHIM names that directory
(tests/run builds it with interposer/build-shim.sh)."""

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

SHIM = os.environ.get("PYTIER_SHIM")
pytestmark = pytest.mark.skipif(not SHIM, reason="PYTIER_SHIM not set; run tests/run")

FAST = json.dumps({"tracking": {"scanIntervalMillis": 20, "maxCpuFraction": 0.5}})


# Defined in every test program: waits until a whole scan cycle has started
# and finished after the call, so every object made before it has been seen.
# (The cycle running at the call may have passed an arena before the objects
# were put there.)
WAIT_FOR_A_FULL_CYCLE = """
def wait_for_a_full_cycle(timeout=30):
    import pytier, time
    first = pytier.stats()["passes"] + 2
    deadline = time.monotonic() + timeout
    while pytier.stats()["passes"] < first:
        assert time.monotonic() < deadline, "no full scan cycle within %d s" % timeout
        time.sleep(0.02)
"""


def wait_for_socket(path, timeout=10):
    """The interposer binds its control socket a second after start-up."""
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"no control socket at {path} within {timeout} s"
        time.sleep(0.02)


def python(code, env=None, shim=None, timeout=60, args=(), **kw):
    """Runs `code` in a fresh python3 with the shim; returns the CompletedProcess."""
    full = dict(os.environ, PYTHONPATH=shim or SHIM, PYTIER_SOCKET="")
    full.update(env or {})
    program = WAIT_FOR_A_FULL_CYCLE + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", program, *args], env=full, capture_output=True,
                          text=True, timeout=timeout, **kw)


def test_loads_and_reports_stats():
    r = python("""
        import pytier, time
        data = [float(i) for i in range(50000)] + [str(i) for i in range(50000)]
        wait_for_a_full_cycle()
        s = pytier.stats()
        assert s["active"], s
        last = s["last"]
        untracked = pytier.classify(data).count(None)
        print(s["passes"], last["coverage"], last["objects"]["cold"] + last["objects"]["warm"] + last["objects"]["hot"], untracked)
    """, env={"PYTIER_CONFIG": FAST})
    assert r.returncode == 0, r.stderr
    passes, coverage, objects, untracked = r.stdout.split()
    assert int(passes) >= 2
    assert int(untracked) == 0, "every object the program made has a temperature (short strings too)"
    assert int(objects) >= 100000
    # The rest of pymalloc's blocks are not objects (list item arrays, dict keys).
    assert float(coverage) > 0.6
    assert "pytier" not in r.stderr


def test_objects_made_in_arenas_older_than_the_interposer_are_tracked():
    # Arenas that hold only strings when pytier starts have no object the
    # garbage collector lists; their free pools then take the floats.
    r = python("""
        import os, sys
        strings = [str(i) for i in range(300000)]
        kept = strings[::5000]  # a live string in every arena keeps it allocated
        del strings
        sys.path.insert(0, os.environ["SHIM"])
        import pytier._boot
        pytier._boot.start()
        import pytier
        floats = [float(i) for i in range(100000)]
        wait_for_a_full_cycle()
        print(pytier.stats()["earlyArenas"], pytier.classify(floats).count(None), pytier.classify(kept).count(None))
    """, shim=os.devnull, env={"PYTIER_CONFIG": FAST, "SHIM": SHIM})
    assert r.returncode == 0, r.stderr
    early, untracked_floats, untracked_strings = map(int, r.stdout.split())
    assert early >= 5, "the string arenas were found at start"
    assert untracked_floats == 0 and untracked_strings == 0


def test_a_big_heap_is_scanned_in_slices_within_the_cpu_budget():
    r = python("""
        import pytier, time
        data = [(float(i), str(i)) for i in range(400000)]  # ~60 arenas
        wait_for_a_full_cycle()
        untracked = pytier.classify(data[:1000]).count(None)
        # The longest slice of each of five cycles: one slice can be stretched
        # by a hypervisor that takes the core away (the thread's CPU clock runs on).
        longest = []
        for _ in range(5):
            wait_for_a_full_cycle()
            longest.append(pytier.stats()["last"]["longestSliceSeconds"])
        s = pytier.stats()
        last = s["last"]
        print(last["slices"], sorted(longest)[2], last["arenas"], s["scannerCpuFraction"],
              untracked, pytier.classify(data[:1000]).count(None))
    """, env={"PYTIER_CONFIG": json.dumps({"tracking": {"sliceMillis": 1, "maxCpuFraction": 0.2, "scanIntervalMillis": 20,
                                                        # Every pool read: none left unread for want of writes.
                                                        "maxFaultFraction": 0}})})
    assert r.returncode == 0, r.stderr
    slices, longest, arenas, cpu, untracked, untracked_later = r.stdout.split()
    assert int(arenas) > 40
    assert int(slices) > 5, "a cycle over many arenas takes many 1 ms slices"
    # A slice stops after the arena that crosses its budget (~1.5 ms of the
    # scanner thread's CPU here; a wait for a busy core is not counted).
    assert float(longest) < 0.02, "the median cycle's longest slice"
    assert float(cpu) < 0.3, "the pauses between slices keep the scanner near its 20% budget"
    assert int(untracked) == 0, f"{untracked_later} of them still untracked ten passes later"


def test_arenas_freed_while_read_in_place_are_kept_until_read_then_freed():
    # The scanner reads arenas in place; an arena the program frees meanwhile
    # must stay mapped until the scanner moves on (or it would fault), and be
    # freed after (or memory would leak). Churn arenas under a scanner that
    # never rests until such a free happened a few times.
    r = python("""
        import pytier, time
        def rss_mib():
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * 4096 / 2**20
        wait_for_a_full_cycle()
        base = rss_mib()
        deadline = time.monotonic() + 60
        rounds = 0
        while pytier.stats()["deferredArenaFrees"] < 3 and time.monotonic() < deadline:
            chunk = [(float(i), str(i)) for i in range(50000)]  # ~8 arenas, freed at once
            assert sum(f for f, _ in chunk) == 50000 * 49999 / 2
            del chunk
            rounds += 1
        [str(i) for i in range(1000)]  # arena calls free what is still deferred
        s = pytier.stats()
        print(s["active"], s["deferredArenaFrees"], rounds, round(rss_mib() - base, 1))
    """, env={"PYTIER_CONFIG": json.dumps(
        {"tracking": {"scanIntervalMillis": 1, "maxCpuFraction": 1.0, "sliceMillis": 100}})}, timeout=120)
    assert r.returncode == 0, r.stderr
    active, deferred, rounds, grown = r.stdout.split()
    assert active == "True"
    assert int(deferred) >= 3, f"no free met a read in {rounds} rounds of churn"
    assert float(grown) < 16, f"RSS grew {grown} MiB over {rounds} rounds: deferred arenas not freed"


def test_frame_stacks_from_the_arena_allocator_are_not_taken_for_arenas():
    # The interpreter takes its threads' frame stacks from the arena
    # allocator too, in 16 KiB chunks. They are not arenas: reading one as an
    # arena would run off its end, and taking its size for the arenas' would
    # leave all but the first pool of every arena unread.
    r = python("""
        import sys, threading, pytier
        data = [str(i) * 3 for i in range(300000)]  # about 15 arenas of strings
        stop = threading.Event()
        def deep(n):
            return deep(n - 1) if n else None
        def churn():
            while not stop.is_set():
                deep(900)  # pushes and pops frame stack chunks
        threads = [threading.Thread(target=churn) for _ in range(4)]
        for t in threads:
            t.start()
        wait_for_a_full_cycle()
        wait_for_a_full_cycle()
        untracked = pytier.classify(data[::1000]).count(None)
        stop.set()
        for t in threads:
            t.join()
        s = pytier.stats()
        print(s["active"], untracked, len(data[::1000]))
    """, env={"PYTIER_CONFIG": json.dumps(
        {"tracking": {"scanIntervalMillis": 1, "maxCpuFraction": 1.0, "sliceMillis": 100}})}, timeout=120)
    assert r.returncode == 0, r.stderr
    active, untracked, sampled = r.stdout.split()
    assert active == "True"
    assert int(untracked) == 0, f"{untracked} of {sampled} objects untracked: arenas read short"


def test_blocks_too_big_for_pymalloc_are_seen_through_the_allocator():
    code = """
        import pytier, time, json
        strings = ["s%d" % i * 300 for i in range(1000)]   # ~1.2 KB each
        tuples = [tuple(range(i, i + 100)) for i in range(1000)]
        lists = [list(range(100)) for i in range(1000)]     # 800-byte item arrays
        wait_for_a_full_cycle()
        big = pytier.stats()["last"]["bigBlocks"]
        print(json.dumps(big), pytier.classify(strings + tuples).count(None))
    """
    r = python(code, env={"PYTIER_CONFIG": FAST})
    assert r.returncode == 0, r.stderr
    big, untracked = r.stdout.rsplit(" ", 1)
    big = json.loads(big)
    assert int(untracked) == 0, "every big string and tuple has a temperature"
    assert sum(big["objects"].values()) >= 2000
    # Each list's item array is attributed to its list.
    assert sum(big["ownedBytes"].values()) >= 1000 * 800
    assert big["dropped"] == 0

    r = python(code, env={"PYTIER_CONFIG": json.dumps({"tracking": {"scanIntervalMillis": 20, "maxCpuFraction": 0.5, "allocatorView": False}})})
    assert r.returncode == 0, r.stderr
    big, untracked = r.stdout.rsplit(" ", 1)
    assert json.loads(big)["blocks"] == 0 and int(untracked) == 2000, "without the allocator view, big blocks are unseen"


@pytest.mark.parametrize("through", ["global", "local"])
def test_a_big_dict_looked_up_now_and_then_has_its_table_read_by_its_entries_and_one_never_read_has_not(through):
    # A big dict table takes its entries' heat only while the dict is seen in
    # use: its own count changing, or (3.14+, where a lookup through a
    # function's local leaves the count alone) its values having heat. A
    # lookup holds the dict only for a moment between long stretches of other
    # work (json.dumps here); the index's count never changes, and nothing
    # uses its values.
    r = python("""
        import json, pytier, sys, time
        store = {i: float(i) for i in range(200_000)}
        index = {i: float(i) for i in range(200_000)}  # kept, never read
        filler = [str(i) for i in range(1_000_000)]  # arenas: regions for a cycle
        payload = {"id": 1, "tags": ["a", "b"], "score": 0.5}
        def tables_by_entries():
            last = pytier.stats()["last"]
            return last and last["bigBlocks"]["tablesByEntries"]
        def look_up(local):
            # Looks the store up until its table is read by its entries, and
            # two passes more: (seconds until then, tables read so at the end).
            # Called once: the local is this frame's for the whole loop.
            start, k, seen_after, until_pass = time.monotonic(), 0, None, None
            while time.monotonic() - start < 20:
                for _ in range(10):
                    json.dumps(payload)
                if local is None:
                    store[k % 200_000]  # LOAD_GLOBAL: a new reference on every version
                else:
                    local[k % 200_000]  # LOAD_FAST: borrowed on 3.14+, the count left alone
                k += 1
                if k % 1000:
                    continue
                if seen_after is None:
                    if tables_by_entries():
                        seen_after, until_pass = time.monotonic() - start, pytier.stats()["passes"] + 2
                elif pytier.stats()["passes"] >= until_pass:
                    break
            return seen_after, tables_by_entries()
        seen_after, tables = look_up(store if sys.argv[1] == "local" else None)
        print(json.dumps({"seenAfter": seen_after, "tables": tables}))
    """, args=[through], env={"PYTIER_CONFIG": FAST})
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["seenAfter"] is not None, "the store's table was never read by its entries in 20 s"
    assert out["tables"] == 1, f"the store's table alone, not the index nobody reads: {out}"


def test_objects_whose_references_change_are_hot_and_untouched_ones_cold():
    r = python("""
        import pytier, random, time
        touched = [float(i) + 0.5 for i in range(5000)]
        untouched = [float(i) + 0.25 for i in range(5000)]
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            # A changing set of holders, re-picked more slowly than the scans
            # run: each touched object's count moves between 1 and 2.
            holders = [x for x in touched if random.random() < 0.5]
            time.sleep(0.025)
        del holders
        hot = pytier.classify(touched)
        cold = pytier.classify(untouched)
        print(hot.count("hot") / len(hot), cold.count("cold") / len(cold))
    """, env={"PYTIER_CONFIG": FAST})
    assert r.returncode == 0, r.stderr
    touched_hot, untouched_cold = map(float, r.stdout.split())
    assert touched_hot >= 0.8, f"only {touched_hot:.0%} of touched objects are hot"
    assert untouched_cold >= 0.95, f"only {untouched_cold:.0%} of untouched objects are cold"


def test_pools_left_unread_while_settled_are_read_again_once_written():
    # Once every object in a pool is stone cold and none of its pages is
    # written, the scanner counts its last reading again instead of reading
    # it (poolsUnread). A use writes a count, a free writes the pool: either
    # must bring the pool back to a read. The floats (19 MB) are most of the
    # heap, whatever the interpreter's own objects (3.14 has more) do.
    r = python("""
        import pytier, random, time
        objs = [float(i) + 0.5 for i in range(600000)]
        ids = [id(x) for x in objs]
        wait_for_a_full_cycle()
        full = pytier.stats()["last"]
        deadline = time.monotonic() + 30
        while True:
            last = pytier.stats()["last"]
            if last["bytesRead"] < full["usedBytes"] / 4 and pytier.classify_ids(ids).count("cold") == len(ids):
                break
            assert time.monotonic() < deadline, ("never settled", full["bytesRead"], last)
            time.sleep(0.05)
        settled = last
        # A tenth of them in use, spread over all their pools.
        used = objs[::10]
        end = time.monotonic() + 2.0
        while time.monotonic() < end:
            holders = [x for x in used if random.random() < 0.5]
            time.sleep(0.025)
        del holders
        hot = pytier.classify(used).count("hot") / len(used)
        # Half of them freed: their pools are written, and read again.
        del used
        del objs[:300000]
        wait_for_a_full_cycle()
        after_free = pytier.stats()["last"]
        print(full["objects"]["cold"] + full["objects"]["warm"] + full["objects"]["hot"],
              sum(settled["objects"].values()), settled["poolsUnread"], hot,
              sum(after_free["objects"].values()))
    """, env={"PYTIER_CONFIG": json.dumps({"tracking": {"scanIntervalMillis": 20, "maxCpuFraction": 0.5,
                                                        "decayHalfLifeSeconds": 1}})})
    assert r.returncode == 0, r.stderr
    full, settled, unread, hot, after_free = r.stdout.split()
    full, settled, unread, after_free = int(full), int(settled), int(unread), int(after_free)
    assert unread > 600000 * 24 // 16384, r.stdout  # at least the floats' pools
    assert abs(settled - full) < full * 0.02, f"unread pools counted as read would count: {r.stdout}"
    assert float(hot) >= 0.8, f"objects in unread pools were not seen in use: {r.stdout}"
    assert settled - after_free > 250000, f"freed objects still counted: {r.stdout}"


def test_pages_of_objects_only_read_are_hot_and_untouched_pages_cold():
    # Reading an object writes its reference count, so page writes see plain
    # reads that reference-count snapshots miss. The two groups are allocated
    # one after the other, so each fills pages of its own. Creating them (and
    # taking their ids: iterating writes counts too) wrote both; with a 1 s
    # half-life that is forgotten (cold) after a few seconds. The check goes
    # by id so that it does not itself touch the objects.
    r = python("""
        import pytier, time
        read = [float(i) + 0.5 for i in range(20000)]
        untouched = [float(i) + 0.25 for i in range(20000)]
        read_ids, untouched_ids = [id(x) for x in read], [id(x) for x in untouched]
        def shares():
            read_pages = pytier.classify_ids(read_ids, by="page")
            untouched_pages = pytier.classify_ids(untouched_ids, by="page")
            return read_pages.count("hot") / len(read), untouched_pages.count("cold") / len(untouched)

        # Reads for 5 s, then on until both groups are classified (a busy
        # machine may grant page-write collection less time), for 15 s more at most.
        start = time.monotonic()
        total = 0.0
        while True:
            for x in read:
                total += x
            elapsed = time.monotonic() - start
            if elapsed > 20 or elapsed > 5 and min(shares()) > 0.95:
                break
        s = pytier.stats()["last"]["pageWrites"]
        assert s["offReason"] is None, s
        assert s["collections"] >= 3, s
        print(*shares())
    """, env={"PYTIER_CONFIG": json.dumps({"tracking": {"scanIntervalMillis": 20, "maxCpuFraction": 0.5, "maxFaultFraction": 0.05,
                                                        "decayHalfLifeSeconds": 1}})})
    assert r.returncode == 0, r.stderr
    read_hot, untouched_cold = map(float, r.stdout.split())
    assert read_hot > 0.95, r.stdout
    # The boundary pages hold both groups.
    assert untouched_cold > 0.95, r.stdout


def test_a_process_pays_for_no_scan_and_holds_no_descriptor_in_its_first_second(tmp_path):
    sock = tmp_path / "app.sock"
    r = python("""
        import os, pytier, sys, time
        def descriptors():  # pytier's: userfaultfd, pagemap, control socket
            count = 0
            for fd in os.listdir("/proc/self/fd"):
                try:
                    link = os.readlink(f"/proc/self/fd/{fd}")
                except OSError:
                    continue  # the listing's own descriptor, closed by now
                count += link == "anon_inode:[userfaultfd]" or link.endswith("/pagemap") or link.startswith("socket:")
            return count
        time.sleep(0.5)
        early = pytier.stats(), descriptors(), os.path.exists(sys.argv[1])
        wait_for_a_full_cycle()
        print(early[0]["passes"], early[0]["scanSecondsTotal"], early[1], early[2],
              pytier.stats()["passes"], descriptors(), os.path.exists(sys.argv[1]))
    """, env={"PYTIER_CONFIG": FAST, "PYTIER_SOCKET": str(sock)}, args=[str(sock)])
    assert r.returncode == 0, r.stderr
    early_passes, early_cpu, early_fds, early_socket, later_passes, later_fds, later_socket = r.stdout.split()
    assert (int(early_passes), float(early_cpu), int(early_fds), early_socket) == (0, 0.0, 0, "False"), r.stdout
    assert (int(later_passes) >= 2, int(later_fds), later_socket) == (True, 3, "True"), r.stdout
    assert not sock.exists(), "the socket is removed at exit"


def test_page_write_tracking_can_be_turned_off():
    r = python("""
        import pytier, time
        wait_for_a_full_cycle()
        s = pytier.stats()["last"]["pageWrites"]
        print(s["offReason"], s["collections"])
    """, env={"PYTIER_CONFIG": json.dumps({"tracking": {"scanIntervalMillis": 20, "maxCpuFraction": 0.5, "maxFaultFraction": 0}})})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["turned", "off", "(maxFaultFraction", "is", "0)", "0"], r.stdout


# Folds every 2 MiB-aligned range of the heap's mappings into a huge page, as
# khugepaged does in time (3.15 even asks for it with MADV_HUGEPAGE), and
# prints how many folds worked and the heap's huge-page kilobytes after.
COLLAPSE_THE_HEAP = """
    import ctypes, json
    libc = ctypes.CDLL(None, use_errno=True)
    MADV_COLLAPSE, HUGE = 25, 1 << 21
    heap = [float(i) for i in range(1_000_000)]
    pages = {id(x) & ~4095 for x in heap[::500]}

    def mappings():
        found, current = [], None
        with open("/proc/self/smaps") as f:
            for line in f:
                head = line.split()[0]
                if "-" in head and ":" not in head:
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    current = [lo, hi, 0] if any(lo <= p < hi for p in pages) else None
                    if current:
                        found.append(current)
                elif current and line.startswith("AnonHugePages:"):
                    current[2] = int(line.split()[1])
        return found

    collapsed = 0
    for lo, hi, _ in mappings():
        start, end = (lo + HUGE - 1) & ~(HUGE - 1), hi & ~(HUGE - 1)
        if end > start:
            collapsed += libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), MADV_COLLAPSE) == 0
    print(json.dumps({"collapsed": collapsed, "hugeKiB": sum(m[2] for m in mappings())}))
"""


def test_every_arena_is_advised_small_pages_those_older_than_pytier_too():
    # Floats land in free pools of arenas made before pytier started, too:
    # all of them must carry the advice (VmFlags "nh"), or khugepaged (or
    # MADV_COLLAPSE) may fold them into huge pages. Needs no THP to check.
    r = python("""
        heap = [float(i) for i in range(1_000_000)]
        pages = {id(x) & ~4095 for x in heap[::500]}
        sampled = advised = 0
        for line in open("/proc/self/smaps"):
            head = line.split()[0]
            if "-" in head and ":" not in head:
                lo, hi = (int(x, 16) for x in head.split("-"))
                here = sum(lo <= p < hi for p in pages)
            elif line.startswith("VmFlags:"):
                sampled += here
                advised += here if " nh" in line else 0
        print(sampled, advised)
    """)
    assert r.returncode == 0, r.stderr
    sampled, advised = map(int, r.stdout.split())
    assert sampled > 1000 and advised == sampled, r.stdout


def test_arenas_stay_in_small_pages_where_huge_pages_would_be_made():
    # Page writes, heat and moves are per 4 KiB page: a huge page would make
    # each one 2 MiB. Without pytier the same heap folds (else this kernel
    # makes no huge pages here, and there is nothing to show).
    plain = subprocess.run([sys.executable, "-c", textwrap.dedent(COLLAPSE_THE_HEAP)], capture_output=True, text=True,
                           timeout=60, env={k: v for k, v in os.environ.items() if not k.startswith("PYTHON")})
    assert plain.returncode == 0, plain.stderr
    if json.loads(plain.stdout)["hugeKiB"] == 0:
        pytest.skip(f"no transparent huge pages here (THP off, or no MADV_COLLAPSE): {plain.stdout}")
    r = python(COLLAPSE_THE_HEAP)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out == {"collapsed": 0, "hugeKiB": 0}, out


def test_control_socket_answers_and_survives_garbage(tmp_path):
    path = str(tmp_path / "pytier.sock")
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys, time
            data = {i: str(i) for i in range(10000)}
            sys.stdout.write("ready\\n"); sys.stdout.flush()
            sys.stdin.readline()
            print(sum(len(v) for v in data.values()))
        """)],
        env=dict(os.environ, PYTHONPATH=SHIM, PYTIER_SOCKET=path, PYTIER_CONFIG=FAST),
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        wait_for_socket(path)

        def ask(payload):
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(payload)
                data = b""
                while not data.endswith(b"\n"):
                    chunk = s.recv(1 << 16)
                    if not chunk:
                        break
                    data += chunk
                return json.loads(data) if data else None

        assert "not a JSON request" in ask(b"\x00\xff garbage\n")["error"]
        assert "protocol version 9" in ask(b'{"v":9,"op":"stats"}\n')["error"]
        assert "unknown variant `explode`" in ask(b'{"v":2,"op":"explode"}\n')["error"]
        assert "protocol version 1 is not supported" in ask(b'{"v":1,"op":"stats"}\n')["error"]
        assert "longer than" in ask(b"x" * (70 << 10))["error"]
        bad = ask(b'{"v":2,"op":"config","config":{"tracking":{"hotThreshold":-1}}}\n')
        assert "tracking.hotThreshold is -1" in bad["error"] and not bad["ok"]
        set_ = ask(b'{"v":2,"op":"config","config":{"tracking":{"hotThreshold":2.0}}}\n')
        assert set_["config"]["tracking"]["hotThreshold"] == 2.0
        hello = ask(b'{"v":2,"op":"hello"}\n')
        assert hello["ok"] and hello["hello"]["pid"] == proc.pid and hello["hello"]["protocol"] == 2
        stats = ask(b'{"v":2,"op":"stats"}\n')
        assert stats["ok"] and stats["stats"]["active"] and stats["stats"]["config"]["tracking"]["hotThreshold"] == 2.0
        deadline = time.monotonic() + 20  # the CLI below prints a finished scan
        while stats["stats"]["passes"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
            stats = ask(b'{"v":2,"op":"stats"}\n')

        cli = subprocess.run([sys.executable, "-m", "pytier", "stats", "--socket", path], capture_output=True,
                             text=True, env=dict(os.environ, PYTHONPATH=SHIM, PYTIER_DISABLE="1"), timeout=30)
        assert cli.returncode == 0, cli.stderr
        assert "coverage" in cli.stdout and "top types by cold bytes" in cli.stdout
        assert "page writes: " in cli.stdout and "pages watched" in cli.stdout, cli.stdout
        assert "collections waited for: the faults " in cli.stdout, cli.stdout

        out, err = proc.communicate("go\n", timeout=30)
        assert proc.returncode == 0, err
        assert out.strip() == str(sum(len(str(i)) for i in range(10000))), "the program's data is intact"
        assert not os.path.exists(path), "the socket is removed at exit"
    finally:
        proc.kill()


WORK = "print(sum(x * 2 for x in range(1000)))"
EXPECTED = str(sum(x * 2 for x in range(1000)))


def test_corrupt_native_module_fails_open(tmp_path):
    shim = tmp_path / "shim"
    shutil.copytree(SHIM, shim)
    (shim / "pytier" / "_native.so").write_bytes(b"not an ELF file")
    r = python(WORK, shim=str(shim))
    assert r.returncode == 0 and r.stdout.strip() == EXPECTED
    assert r.stderr.count("\n") == 1 and "pytier: not active: cannot load" in r.stderr


def test_unsupported_allocator_fails_open():
    r = python(WORK, env={"PYTHONMALLOC": "malloc"})
    assert r.returncode == 0 and r.stdout.strip() == EXPECTED
    assert "pytier: not active: PYTHONMALLOC=malloc is not supported" in r.stderr


def test_bad_config_fails_open_with_the_field_named():
    r = python(WORK + "\nimport pytier; print(pytier.status())", env={"PYTIER_CONFIG": '{"hotThreshhold": 2}'})
    assert r.returncode == 0 and r.stdout.splitlines()[0] == EXPECTED
    assert "unknown field `hotThreshhold`" in r.stderr
    assert "(False," in r.stdout


# Prints where the arena allocator's functions are: in pytier's library while
# its hook is in, in the interpreter otherwise.
ARENA_ALLOCATOR_OWNER = """
import ctypes, pytier
class Allocator(ctypes.Structure):
    _fields_ = [("ctx", ctypes.c_void_p), ("alloc", ctypes.c_void_p), ("free", ctypes.c_void_p)]
a = Allocator()
ctypes.pythonapi.PyObject_GetArenaAllocator(ctypes.byref(a))
owner = "?"
for line in open("/proc/self/maps"):
    fields = line.split()
    start, end = (int(x, 16) for x in fields[0].split("-"))
    if start <= a.alloc < end:
        owner = fields[-1].rsplit("/", 1)[-1]
print(pytier.status()[0], owner)
"""


@pytest.mark.parametrize("why,env", [
    ("bad settings", {"PYTIER_CONFIG": '{"tracking": {"hotThreshold": 100}}'}),
    ("socket that cannot be made", {"PYTIER_SOCKET": "/nonexistent/dir/app.sock"}),
])
def test_a_refused_process_keeps_its_own_allocator(why, env):
    r = python(ARENA_ALLOCATOR_OWNER, env=env)
    assert r.returncode == 0, r.stderr
    assert "pytier: not active" in r.stderr, why
    active, owner = r.stdout.split()
    assert active == "False" and owner != "_native.so", f"{why}: the arena hook stayed in: {r.stdout}"
    # And the same check sees the hook when pytier runs.
    r = python(ARENA_ALLOCATOR_OWNER)
    assert r.stdout.split() == ["True", "_native.so"], r.stdout + r.stderr


def test_dev_mode_is_refused_with_the_way_out():
    r = python(WORK + "\nimport pytier; print(pytier.status()[0])", env={"PYTHONDEVMODE": "1"})
    assert r.returncode == 0 and r.stdout.split() == [EXPECTED, "False"], r.stdout
    assert "pytier: not active: python -X dev" in r.stderr and "PYTHONMALLOC=pymalloc" in r.stderr
    r = python("import pytier; print(pytier.status()[0])", env={"PYTHONDEVMODE": "1", "PYTHONMALLOC": "pymalloc"})
    assert r.stdout.strip() == "True", r.stdout + r.stderr


@pytest.mark.skipif(sys.version_info < (3, 12), reason="isolated subinterpreters came in 3.12")
def test_an_isolated_subinterpreter_runs_without_a_word_from_pytier():
    # It runs site (so the shim's sitecustomize) but cannot load ctypes.
    r = python("""
        import pytier
        try:
            import _interpreters as interpreters
        except ImportError:
            import _xxsubinterpreters as interpreters
        run = getattr(interpreters, "run_string", None) or interpreters.exec
        sub = interpreters.create()
        run(sub, "import sys, sitecustomize; print('subinterpreter ran'); sys.stdout.flush()")
        interpreters.destroy(sub)
        print(pytier.status()[0])
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["subinterpreter ran", "True"], r.stdout
    assert "pytier" not in r.stderr, r.stderr


FREE_THREADED = os.environ.get("PYTIER_FREE_THREADED_PYTHON")


@pytest.mark.skipif(not FREE_THREADED, reason="PYTIER_FREE_THREADED_PYTHON not set (tests/pythons/build.sh makes one)")
@pytest.mark.parametrize("gil", ["default", "PYTHON_GIL=1"])
def test_a_free_threaded_build_is_refused_and_left_as_it_was(gil):
    # With PYTHON_GIL=1 the build runs with a GIL but keeps its object layout.
    env = dict(os.environ, PYTHONPATH=SHIM, PYTIER_SOCKET="")
    if gil != "default":
        env["PYTHON_GIL"] = "1"
    code = "import sys; print(sum(range(10)), sys._is_gil_enabled(), 'ctypes' in sys.modules)"
    r = subprocess.run([FREE_THREADED, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["45", str(gil != "default"), "False"], "ran, and pytier loaded nothing: " + r.stdout
    assert "pytier: not active: free-threaded CPython is not supported yet" in r.stderr, r.stderr


def test_users_sitecustomize_still_runs_and_pythonpath_is_kept(tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "sitecustomize.py").write_text("import builtins\nbuiltins.USER_SITE_RAN = True\n")
    (user / "usermod.py").write_text("VALUE = 42\n")
    r = python("import usermod, pytier; print(USER_SITE_RAN, usermod.VALUE, pytier.status()[0])",
               shim=f"{SHIM}{os.pathsep}{user}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["True", "42", "True"]


def test_forked_child_runs_and_stops_tracking():
    r = python("""
        import os, pytier, time
        data = [str(i) for i in range(20000)]
        time.sleep(0.2)
        pid = os.fork()
        if pid == 0:
            more = [str(i) * 2 for i in range(20000)]  # allocates arenas: the hook runs in the child
            s = pytier.stats()
            try:
                pytier.classify(data[:10])
                classify_refused = False
            except RuntimeError:
                classify_refused = True
            os._exit(0 if (not s["active"] and "fork" in s["reason"] and classify_refused and len(more) == 20000) else 3)
        _, status = os.waitpid(pid, 0)
        time.sleep(0.2)
        print(os.waitstatus_to_exitcode(status), pytier.stats()["active"])
    """, env={"PYTIER_CONFIG": FAST})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "True"]


def test_exit_is_prompt_with_a_long_scan_interval():
    start = time.monotonic()
    r = python("import pytier; print(pytier.status()[0])", env={"PYTIER_CONFIG": '{"tracking": {"scanIntervalMillis": 60000}}'})
    assert r.returncode == 0 and r.stdout.strip() == "True", r.stderr
    assert time.monotonic() - start < 5, "interpreter exit waited for the scanner"


def test_a_program_that_closes_and_reuses_pytiers_descriptors_is_not_touched(tmp_path):
    """Daemons close every descriptor they did not open and reuse the numbers.
    pytier's descriptors sit high, out of the way; once the program has taken
    their numbers for its own listening socket, pytier accepts none of its
    connections, closes nothing of it, and says in its stats what it lost."""
    r = python(f"""
        import os, socket, time, pytier
        wait_for_a_full_cycle()
        # pytier's descriptors: its userfaultfd, pagemap and control socket.
        sockets = {{line.split()[6] for line in open("/proc/net/unix") if line.rstrip().endswith("pytier.sock")}}
        ours = []
        for n in os.listdir("/proc/self/fd"):
            try:
                link = os.readlink(f"/proc/self/fd/{{n}}")
            except OSError:
                continue
            if link in ("anon_inode:[userfaultfd]", f"/proc/{{os.getpid()}}/pagemap") or link[8:-1] in sockets:
                ours.append(int(n))
        print(len(ours), min(ours))
        os.closerange(3, 65536)
        server = socket.socket(socket.AF_UNIX)
        server.bind("{tmp_path}/app.sock")
        server.listen(16)
        server.settimeout(1.0)
        for n in ours:
            os.dup2(server.fileno(), n)
        files = [open("{tmp_path}/f%d" % i, "w+") for i in range(8)]
        # Connections wait a while before the program accepts them: time for
        # anything else polling those numbers to take one.
        clients = [socket.socket(socket.AF_UNIX) for i in range(10)]
        for client in clients:
            client.connect("{tmp_path}/app.sock")
            client.sendall(b"ping")
        time.sleep(0.5)
        answered = 0
        for client in clients:
            try:
                conn, _ = server.accept()
                answered += conn.recv(4) == b"ping"
                conn.close()
            except socket.timeout:
                pass
            client.close()
        wait_for_a_full_cycle()
        for f in files:
            f.write("kept")
            f.flush()
            f.seek(0)
            assert f.read() == "kept"
        same = all(os.path.samestat(os.fstat(n), os.fstat(server.fileno())) for n in ours)
        s = pytier.stats()
        print(answered, same, s["active"])
        print(s["socketError"])
        print(s["last"]["pageWrites"]["offReason"])
    """, env={"PYTIER_CONFIG": FAST, "PYTIER_SOCKET": str(tmp_path / "pytier.sock")})
    assert r.returncode == 0, r.stderr
    counts, outcome, socket_error, page_writes = r.stdout.splitlines()
    n, lowest = map(int, counts.split())
    assert n == 3 and lowest >= 256, f"pytier's control socket, userfaultfd and pagemap sit high: {counts}"
    assert outcome == "10 True True", "every connection reached the program; its descriptors stayed open"
    assert "control socket" in socket_error and "reused" in socket_error, socket_error
    assert "reused" in page_writes, page_writes
