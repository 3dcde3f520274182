"""Workloads with a known access distribution, for tests/bench/placement.

Each workload builds its data, then runs one or two phases of accesses drawn
from a distribution it knows exactly: every accessed object has a probability.
Four are synthetic; lru-cache is a program as people write it (the Python
documentation's LRU recipe memoising a handler), whose truth comes from the
requests it really served (see lru_phase).
At the end of each phase it asks the kernel (`move_pages`) where each object's
page is and reports the share of accesses that DRAM served, next to the
oracle's share: the hottest pages by true access probability, as many as the
DRAM budget holds. In the second phase of a shifting workload it also samples
that share every second, to time the re-convergence. Each workload checks its
data at the end.

    python3 workloads.py NAME --seconds S --dram-fraction F [--scale K]
prints one JSON report on stdout. Runs as is or under the pytier shim; what
places its memory (nothing, the kernel, pytier) is the caller's business.
"""

import argparse
import collections
import ctypes
import itertools
import json
import os
import random
import time

PAGE = 4096
DRAM_NODE = 0
SYS_move_pages = 279  # x86_64
libc = ctypes.CDLL(None, use_errno=True)


def zipf_weights(n, s=0.99):
    return [1.0 / rank**s for rank in range(1, n + 1)]


def anon_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def numa_maps(pid="self"):
    """Each mapping of a process's numa_maps: (address, its words such as
    "heap" or "stack", its key=value fields, its page size in KiB)."""
    with open(f"/proc/{pid}/numa_maps") as f:
        for line in f:
            address, *words = line.split()
            values = dict(w.split("=", 1) for w in words if "=" in w)
            yield address, [w for w in words if "=" not in w], values, int(values.get("kernelpagesize_kB", 4))


def node0_anon_by_mapping(limit=8):
    """The mappings holding the most anonymous memory on node 0, as (what,
    KiB), for the report's diagnostics: a file mapping's written pages count
    up to its anonymous ones."""
    rows = []
    for address, words, values, page_kib in numa_maps():
        anon, node0 = int(values.get("anon", 0)), int(values.get("N0", 0))
        if anon and node0:
            what = values["file"].rsplit("/", 1)[-1] if "file" in values else None
            what = what or next((w for w in words if w in ("heap", "stack")), f"anon@{address}")
            rows.append((what, min(node0, anon) * page_kib))
    return sorted(rows, key=lambda r: -r[1])[:limit]


def anon_bytes_by_node(pid="self"):
    """A process's anonymous memory per NUMA node, from its numa_maps."""
    by_node = {}
    for _, _, values, page_kib in numa_maps(pid):
        if "anon" not in values:
            continue
        for key, pages in values.items():
            if key[0] == "N" and key[1:].isdigit():
                by_node[int(key[1:])] = by_node.get(int(key[1:]), 0) + int(pages) * page_kib * 1024
    return by_node


def settle(below, most_seconds=2.0):
    """Waits, accessing nothing, until this process holds at most `below`
    bytes of anonymous memory on DRAM (None: no wait), or `most_seconds` have
    passed; returns how long it waited and its anonymous memory per node then.
    The harness's balloon has the kernel demote what a config takes past its
    budget within a round or two (bench.Balloon), but DAMOS promotes in
    bursts: a snapshot in the middle of one would credit it with DRAM a node
    of the budget's size does not have."""
    start = time.monotonic()
    while True:
        by_node = anon_bytes_by_node()
        waited = time.monotonic() - start
        if below is None or by_node.get(DRAM_NODE, 0) <= below or waited >= most_seconds:
            return waited, by_node
        time.sleep(0.01)


def measuring(now):
    """Tells the harness whether the workload is listing and measuring its
    truth (`PLACEMENT_MEASURING` names a file that exists meanwhile), so
    that its balloon does not have the kernel demote an excess then: the
    listing allocates lists of every object, and the demotion would move
    the workload's pages by the kernel's LRU, not by the config's placement,
    right before they are measured."""
    path = os.environ.get("PLACEMENT_MEASURING")
    if not path:
        return
    if now:
        open(path, "w").close()
    elif os.path.exists(path):
        os.unlink(path)


def nodes_of_pages(pages):
    """Node of each page (negative errno where it has none), by move_pages."""
    n = len(pages)
    addrs = (ctypes.c_void_p * n)(*pages)
    status = (ctypes.c_int * n)()
    if libc.syscall(SYS_move_pages, 0, ctypes.c_ulong(n), addrs, None, status, 0) != 0:
        raise OSError(ctypes.get_errno(), "move_pages")
    return list(status)


class Address(int):
    """Memory the program uses that is no Python object (an OrderedDict's
    nodes), listed by its address."""


def address_of(obj):
    return obj if isinstance(obj, Address) else id(obj)


class DictTable:
    """A dict's table as CPython lays it out (Objects/dictobject.c, checked
    on 3.11 to 3.13): ma_keys points to a header of 32 bytes, then the index
    array, then the entries, each a hash, a key and a value when the keys are
    not all strings. Read in place, so that finding the truth adds no
    objects to the heap it is measuring."""

    def __init__(self, d):
        self.d = d
        table = ctypes.c_void_p.from_address(id(d) + 32).value
        log2_size, log2_index_bytes, kind = (ctypes.c_uint8 * 3).from_address(table + 8)
        if kind != 0:
            raise RuntimeError(f"dict table of kind {kind}: only tables of non-string keys are read")
        self.mask = (1 << log2_size) - 1
        self.width = 1 << (log2_index_bytes - log2_size)
        index_type = {1: ctypes.c_int8, 2: ctypes.c_int16, 4: ctypes.c_int32, 8: ctypes.c_int64}[self.width]
        self.index_array = table + 32
        self.indices = (index_type * (self.mask + 1)).from_address(self.index_array)
        self.entry_array = self.index_array + (1 << log2_index_bytes)
        self.entries = (ctypes.c_size_t * (3 * ctypes.c_ssize_t.from_address(table + 24).value)).from_address(
            self.entry_array)

    def lookup(self, key):
        """What a lookup of `key` reads, as dictobject.c probes: each index
        slot on the way and each entry one leads to; and the key's entry
        position."""
        perturb = hash(key) & (2**64 - 1)
        i = perturb & self.mask
        read = []
        while True:
            read.append(self.index_array + i * self.width)
            ix = self.indices[i]
            if ix == -1:
                raise RuntimeError("a key is not in its dict's table (CPython's dictobject.c layout changed?)")
            if ix >= 0:
                read.append(self.entry_array + ix * 24)
                if self.entries[3 * ix + 1] == id(key):
                    if self.entries[3 * ix + 2] != id(dict.__getitem__(self.d, key)):
                        raise RuntimeError("a key's entry holds another value (dictobject.c layout changed?)")
                    return read, ix
            perturb >>= 5
            i = (i * 5 + perturb + 1) & self.mask


class PageMass(dict):
    """Weights summed per page, for memory that is no Python object."""

    def add(self, address, weight):
        page = address & ~(PAGE - 1)
        self[page] = self.get(page, 0) + weight

    def listing(self):
        """As a workload's listing: one Address per page, and its weight."""
        return [Address(page) for page in self], list(self.values())


def table_mass(d, keys, weights):
    """What lookups of `keys` (with their weights) read of `d`'s table, per
    page."""
    table, mass = DictTable(d), PageMass()
    for key, weight in zip(keys, weights):
        if not weight:
            continue
        for address in table.lookup(key)[0]:
            mass.add(address, weight)
    return mass


class Truth:
    """Access probability per page, from the objects' probabilities."""

    def __init__(self, objects, weights):
        total = sum(weights)
        mass = {}
        self.heaviest = {}  # page -> address of its most accessed object
        self.kind = {}  # page -> type name of that object ("table": no object, see Address)
        for obj, w in zip(objects, weights):
            page = address_of(obj) & ~(PAGE - 1)
            mass[page] = mass.get(page, 0.0) + w / total
            if w > self.heaviest.get(page, (None, -1.0))[1]:
                self.heaviest[page] = (address_of(obj), w)
                self.kind[page] = "table" if isinstance(obj, Address) else type(obj).__name__
        self.pages = list(mass)
        self.mass = [mass[p] for p in self.pages]

    def dram_share(self):
        nodes = nodes_of_pages(self.pages)
        return sum(m for m, node in zip(self.mass, nodes) if node == DRAM_NODE)

    def dram_pages(self):
        return sum(node == DRAM_NODE for node in nodes_of_pages(self.pages))

    def oracle_share(self, budget_pages):
        return sum(sorted(self.mass, reverse=True)[:budget_pages])

    def ranking_share(self, page_heat, budget_pages):
        """What pytier's ranking would serve with every page where it ranks
        it, whatever the migrations managed: the truth's share on its hottest
        `budget_pages` pages (those with any heat). With those pages and the
        oracle's counted by the type of their most accessed object ("table":
        a dict's table or nodes; "other": a page the truth does not count),
        each kind's median page against the ranking's and the oracle's last;
        and where placement and ranking part: the truth's share on ranked
        pages not on DRAM, by quarter of the ranking (hottest first), and on
        DRAM pages outside the ranking."""
        hottest = sorted((p for p, h in page_heat.items() if h > 0), key=lambda p: -page_heat[p])[:budget_pages]
        mass = dict(zip(self.pages, self.mass))
        oracle = sorted(self.pages, key=lambda p: -mass[p])[:budget_pages]
        kinds = lambda pages: dict(collections.Counter(self.kind.get(p, "other") for p in pages).most_common())
        ranked = set(hottest)
        on_dram = dict(zip(self.pages, (n == DRAM_NODE for n in nodes_of_pages(self.pages))))
        hottest_nodes = nodes_of_pages(hottest) if hottest else []
        missed = [0.0] * 4
        for rank, (p, node) in enumerate(zip(hottest, hottest_nodes)):
            if node != DRAM_NODE:
                missed[4 * rank // len(hottest)] += mass.get(p, 0.0)
        # Each kind's median page: its heat over that of the ranking's last
        # page, and its accesses over those of the oracle's last page. A kind
        # whose first is the higher is ranked above where the truth puts it.
        by_kind = collections.defaultdict(list)
        for p in self.pages:
            by_kind[self.kind[p]].append(p)
        median = lambda values: sorted(values)[len(values) // 2]
        heat_edge, mass_edge = (page_heat[hottest[-1]], mass[oracle[-1]]) if hottest else (1.0, 1.0)
        return {
            "share": sum(mass.get(p, 0.0) for p in hottest),
            "pages": kinds(hottest),
            "oraclePages": kinds(oracle),
            "medianPageByKind": {kind: [round(median([page_heat.get(p, 0.0) for p in pages]) / heat_edge, 2),
                                        round(median([mass[p] for p in pages]) / mass_edge, 2)]
                                 for kind, pages in by_kind.items()},
            "rankedNotOnDram": [round(m, 4) for m in missed],
            "onDramNotRanked": round(sum(m for p, m in mass.items() if on_dram[p] and p not in ranked), 4),
        }

    def how_pytier_sees(self, pytier, budget_pages):
        """For the hottest pages that take 90% of the accesses (at most the
        budget's worth): how many are on DRAM, and pytier's class of each
        one's most accessed object and of the page itself (None: not
        tracked), to tell a page pytier never saw from one it saw but did
        not place."""
        top, mass = [], 0.0
        for i in sorted(range(len(self.pages)), key=lambda i: -self.mass[i])[:budget_pages]:
            if mass >= 0.9:
                break
            top.append(i)
            mass += self.mass[i]
        pages = [self.pages[i] for i in top]
        ids = [self.heaviest[p][0] for p in pages]
        by_object = pytier.classify_ids(ids)
        by_page = pytier.classify_ids(ids, by="page")
        count = lambda classes: {str(c): classes.count(c) for c in set(classes)}
        on_dram = [node == DRAM_NODE for node in nodes_of_pages(pages)]
        return {
            "pages": len(pages),
            "onDram": sum(on_dram),
            "byObject": count(by_object),
            "byPage": count(by_page),
            "notOnDramByObject": count([c for c, d in zip(by_object, on_dram) if not d]),
        }


class Sampler:
    """Draws items with given weights, from a precomputed pool (drawing in
    Python per access would dominate the workload).

    The pool holds the items themselves, so the sampler adds no objects of
    its own for the placement to keep hot: only the pool (8 bytes a draw,
    512 KiB by default), read in order. What the workload really accesses is
    the pool, which differs from the weights in the long tail (most tail
    items are never drawn), so the truth takes its weights from `counts`."""

    def __init__(self, items, weights, rng, size=1 << 16):
        self.pool = rng.choices(items, weights=weights, k=size)

    def counts(self, items):
        """How often the pool holds each of `items`."""
        drawn = collections.Counter(map(id, self.pool))
        return [drawn[id(item)] for item in items]

    def __iter__(self):
        while True:
            yield from self.pool


class Slot:
    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value


# Each workload: build(rng, scale) -> state; phase(state, rng) -> (listing,
# run) where listing() gives the accessed objects as they are now and their
# weights (weights[i] is the probability of objects[i]) and run(deadline) does
# accesses until the deadline; check(state) -> bool.

def zipf_dict(rng, scale, writes):
    n = 200_000 * scale
    values = [Slot(float(i)) if writes else float(i) for i in range(n)]
    keys = list(range(n))
    d = dict(zip(keys, values))
    return {"d": d, "n": n, "writes": writes, "done": 0}


def zipf_phase(state, rng):
    """Zipf(0.99) over the keys in a fresh random rank order, so that the hot
    keys are scattered over the heap, as they are in real programs. An access
    touches the key object (its hash is read), the dict's table (see
    DictTable.lookup) and the value.

    A write also reads the value's float and replaces it by a new one, which
    takes the float freed by the write before (CPython's float free list):
    a float's memory passes from key to key in access order. However hot
    its current key, an address moves on at that key's next access, and in
    the long run every float address the drawn keys pass around is used
    equally often. So the floats count where they are now, each with the same
    share of the accesses."""
    d, n, writes = state["d"], state["n"], state["writes"]
    ranked = list(d)
    rng.shuffle(ranked)
    draws = Sampler(ranked, zipf_weights(n), rng)
    counts = draws.counts(ranked)

    def listing():
        values = [d[k] for k in ranked]
        table, table_weights = table_mass(d, ranked, counts).listing()
        objects = ranked + values + ([slot.value for slot in values] if writes else [])
        return objects + table, weights + table_weights

    weights = counts + counts
    if writes:
        per_float = sum(counts) / sum(c > 0 for c in counts)
        weights += [per_float if c else 0 for c in counts]

    def run(deadline):
        keys = iter(draws)
        total = 0.0
        while time.monotonic() < deadline:
            for k in itertools.islice(keys, 4096):
                if writes:
                    d[k].value += 1.0
                else:
                    total += d[k]
            state["done"] += 4096
        return total

    return listing, run


def zipf_check(state):
    d = state["d"]
    if state["writes"]:
        return sum(s.value for s in d.values()) == sum(range(state["n"])) + state["done"]
    return all(v == float(k) for k, v in d.items())


def records(rng, scale):
    """A few big cold containers of records and a small hot index."""
    n = 50_000 * scale
    tables = [[(i, f"name-{t}-{i}", float(i)) for i in range(n)] for t in range(4)]
    index = {f"key-{i}": [i, 0] for i in range(2_000)}
    return {"tables": tables, "index": index, "done": 0}


def records_phase(state, rng):
    """98% of accesses update entries of the hot index (uniformly; the key
    and the entry are touched), 2% read a record anywhere in the tables."""
    tables, index = state["tables"], state["index"]
    hot_keys = list(index)
    hot = hot_keys + list(index.values())
    cold = [r for table in tables for r in table]
    weights = [0.98 / len(hot)] * len(hot) + [0.02 / len(cold)] * len(cold)

    def listing():
        return hot + cold, weights

    def run(deadline):
        total = 0.0
        while time.monotonic() < deadline:
            for _ in range(4096):
                if rng.random() < 0.98:
                    index[hot_keys[rng.randrange(len(hot_keys))]][1] += 1
                    state["done"] += 1
                else:
                    total += rng.choice(tables[rng.randrange(4)])[2]
        return total

    return listing, run


def records_check(state):
    tables, index = state["tables"], state["index"]
    rows = all(r[0] == i and r[2] == float(i) for table in tables for i, r in enumerate(table))
    return rows and sum(v[1] for v in index.values()) == state["done"]


def mixed(rng, scale):
    """A service-like mix: a store of small documents looked up with Zipf
    keys, each lookup rendered with json.dumps, and short-lived garbage."""
    n = 100_000 * scale
    store = {i: {"id": i, "name": f"user{i}", "score": float(i), "tags": ["a", "b"]} for i in range(n)}
    return {"d": store, "n": n, "done": 0}


def mixed_phase(state, rng):
    """Zipf(0.99) over the documents; an access touches the key, the store's
    table (see DictTable.lookup), the document and its own fields (json.dumps
    reads them all)."""
    d, n = state["d"], state["n"]
    ranked = list(d)
    rng.shuffle(ranked)
    draws = Sampler(ranked, zipf_weights(n), rng)
    counts = draws.counts(ranked)

    def listing():
        docs = [d[k] for k in ranked]
        table, table_weights = table_mass(d, ranked, counts).listing()
        objects = ranked + docs + [doc["name"] for doc in docs] + [doc["score"] for doc in docs]
        return objects + table, counts * 4 + table_weights

    def run(deadline):
        keys = iter(draws)
        size = 0
        while time.monotonic() < deadline:
            scratch = []
            for k in itertools.islice(keys, 1024):
                doc = d[k]
                size += len(json.dumps(doc))
                scratch.append((doc["id"], doc["score"]))
            del scratch
            state["done"] += 1024
        return size

    return listing, run


def mixed_check(state):
    return all(doc["id"] == k and doc["score"] == float(k) for k, doc in state["d"].items())


def render_profile(user):
    """The cached handler of lru-cache: a user's profile as JSON."""
    return json.dumps({"id": user, "name": f"user{user}", "score": user * 0.5, "tags": ["a", "b"]})


class LRU:
    """The LRU cache recipe of the Python documentation (collections,
    OrderedDict examples), as programs copy it."""

    def __init__(self, func, maxsize):
        self.cache = collections.OrderedDict()
        self.func = func
        self.maxsize = maxsize

    def __call__(self, *args):
        if args in self.cache:
            self.cache.move_to_end(args)
            return self.cache[args]
        result = self.func(*args)
        self.cache[args] = result
        if len(self.cache) > self.maxsize:
            self.cache.popitem(last=False)
        return result


def lru_cache(rng, scale):
    """A real program rather than a synthetic access pattern: a profile
    service memoised by the documentation's LRU recipe, filled by a first
    pass over its users."""
    users, maxsize = 250_000 * scale, 80_000 * scale
    cache = LRU(render_profile, maxsize)
    for user in range(maxsize):
        cache(user)
    return {"cache": cache, "users": users, "done": 0}


def lru_phase(state, rng):
    """Requests for Zipf(0.99) users in a fresh rank order: most hot users
    miss at first, and every miss evicts the least recently used entry.

    The truth is what the requests served really touched: each request's
    user int, and for a user in the cache its stored key tuple (compared at
    each lookup), its response, its OrderedDict node (which every hit
    relinks at the end), the dict's table where the lookups find it (see
    DictTable.lookup) and the node table where move_to_end finds its node,
    weighted by the user's requests in the request pool. It leaves out the
    neighbours a relink writes too."""
    cache, users = state["cache"], state["users"]
    ranked = list(range(users))
    rng.shuffle(ranked)
    draws = Sampler(ranked, zipf_weights(users), rng, size=1 << 20)
    counts = draws.counts(ranked)
    requests = dict(zip(ranked, counts))

    def listing():
        entries = list(cache.cache.items())
        keys = [key for key, _ in entries]
        weights = [requests[key[0]] for key in keys]
        nodes = odict_nodes(cache.cache)
        tables = odict_tables_mass(cache.cache, keys, weights, nodes)
        table, table_weights = tables.listing()
        accessed = keys + [page for _, page in entries] + [nodes[id(key)] for key in keys]
        return ranked + accessed + table, counts + weights * 3 + table_weights

    def run(deadline):
        requests_in = iter(draws)
        size = 0
        while time.monotonic() < deadline:
            for user in itertools.islice(requests_in, 1024):
                size += len(cache(user))
            state["done"] += 1024
        return size

    return listing, run


def odict_nodes(od):
    """The address of each node of an OrderedDict, by the id of its key.

    CPython keeps them in C (Objects/odictobject.c, checked on 3.11 to
    3.13): the OrderedDict is a dict followed by od_first, and a node is its
    key, hash, next and prev. The first node must hold the first key before
    the list is followed, and every node a key of the dict."""
    keys = {id(k) for k in od}
    node = ctypes.c_void_p.from_address(id(od) + dict.__basicsize__).value
    nodes = {}
    while node and len(nodes) < len(od):
        key, _, next_node, _ = (ctypes.c_void_p * 4).from_address(node)
        if key not in keys or (not nodes and key != id(next(iter(od)))):
            break
        nodes[key] = Address(node)
        node = next_node
    if len(nodes) != len(od):
        raise RuntimeError("lru-cache: cannot follow the OrderedDict's nodes (CPython's odictobject.c layout changed?)")
    return nodes


def odict_tables_mass(od, keys, weights, nodes):
    """What a hit on each of `keys` reads of an OrderedDict's tables, per
    page: its dict's table (three lookups, the same memory each time), and
    where move_to_end finds the key's node: od_fast_nodes, its table of
    nodes by entry position, which follows od_first and od_last
    (Objects/odictobject.c, checked on 3.11 to 3.13)."""
    table, mass = DictTable(od), PageMass()
    node_table = ctypes.c_void_p.from_address(id(od) + dict.__basicsize__ + 16).value
    for key, weight in zip(keys, weights):
        if not weight:
            continue
        read, ix = table.lookup(key)
        slot = node_table + 8 * ix
        if ctypes.c_void_p.from_address(slot).value != nodes[id(key)]:
            raise RuntimeError("lru-cache: the OrderedDict's node table does not hold its nodes (odictobject.c changed?)")
        for address in read + [slot]:
            mass.add(address, weight)
    return mass


def lru_check(state):
    cache = state["cache"]
    entries = cache.cache
    return len(entries) == cache.maxsize and all(page == render_profile(key[0]) for key, page in entries.items())


WORKLOADS = {
    # name: (build, phase, check, phases)
    "zipf-read": (lambda rng, s: zipf_dict(rng, s, False), zipf_phase, zipf_check, 1),
    "zipf-write": (lambda rng, s: zipf_dict(rng, s, True), zipf_phase, zipf_check, 1),
    "zipf-shift": (lambda rng, s: zipf_dict(rng, s, False), zipf_phase, zipf_check, 2),
    "records": (records, records_phase, records_check, 1),
    "mixed": (mixed, mixed_phase, mixed_check, 1),
    "lru-cache": (lru_cache, lru_phase, lru_check, 1),
}


def loaded_pytier():
    """The pytier module when the shim is loaded, else None."""
    try:
        import pytier
    except ImportError:
        return None
    return pytier


def tables_by_entries(pytier):
    """Big dict tables (and OrderedDict node arrays) pytier's last cycle read
    by their entries."""
    last = pytier.stats()["last"]
    return last and last["bigBlocks"]["tablesByEntries"]


def placement_estimate(pytier):
    """pytier's placement report (its estimate of the share DRAM serves)."""
    last = pytier.stats()["last"]
    return last and last.get("placement")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("name", choices=sorted(WORKLOADS))
    parser.add_argument("--seconds", type=float, default=30, help="length of each phase")
    parser.add_argument("--dram-fraction", type=float, default=0.25)
    parser.add_argument("--scale", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--build-only", action="store_true", help="report the heap size and stop")
    parser.add_argument("--settle-below", type=int, metavar="BYTES",
                        help="at the end of each phase, wait (at most 2 s) until the process holds at most"
                             " BYTES on DRAM before measuring (see settle)")
    args = parser.parse_args()
    build, phase, check, phases = WORKLOADS[args.name]
    rng = random.Random(args.seed)

    state = build(rng, args.scale)
    heap = anon_rss_bytes()
    report = {"workload": args.name, "heapBytes": heap}
    if args.build_only:
        print(json.dumps(report))
        return
    budget_pages = int(args.dram_fraction * heap) // PAGE
    pytier = loaded_pytier()
    report["phases"] = []
    for number in range(phases):
        listing, run = phase(state, rng)
        measuring(True)
        truth = Truth(*listing())
        start = time.monotonic()
        deadline = start + args.seconds
        converged_after = None
        target = report["phases"][-1]["dramShare"] * 0.9 if report["phases"] else None
        # Right at the shift, before any access of the new phase: what DRAM
        # holds of the new hot set by chance. Already on target: no disruption.
        at_shift = truth.dram_share() if target is not None else None
        if at_shift is not None and at_shift >= target:
            converged_after = 0.0
        measuring(False)
        tables_read_after = None
        while time.monotonic() < deadline:
            run(min(deadline, time.monotonic() + 1.0))
            if target is not None and converged_after is None and truth.dram_share() >= target:
                converged_after = time.monotonic() - start
            if pytier and tables_read_after is None and tables_by_entries(pytier):
                tables_read_after = time.monotonic() - start
        # What the run held at the end of its accesses, before the listing
        # below allocates (first touches the balloon has not yet answered).
        settled, report["anonBytesByNode"] = settle(args.settle_below)
        report["node0AnonByMapping"] = node0_anon_by_mapping()
        measuring(True)  # to the next phase's accesses, or the end
        # pytier's own estimate first: the truth's listing of every object
        # writes every count, which page writes would take for use.
        estimate = pytier and placement_estimate(pytier)
        page_heat = pytier and pytier.page_heat()
        # Again at the end: a workload may have replaced objects meanwhile.
        truth = Truth(*listing())
        dram_pages = truth.dram_pages()
        report["phases"].append({
            "dramShare": truth.dram_share(),
            "oracleShare": truth.oracle_share(budget_pages),
            # The oracle with as many of these pages on DRAM as this run
            # really has there: how well it used the DRAM it got.
            "oracleShareAtHeld": truth.oracle_share(dram_pages),
            "shareAtShift": at_shift,
            "pages": len(truth.pages),
            "dramPages": dram_pages,
            "budgetPages": budget_pages,
            "convergedAfterSeconds": converged_after,
            "settleSeconds": settled,
            # When pytier first read a big table by its entries in this phase.
            "tablesReadAfterSeconds": tables_read_after,
        })
        if pytier:
            report["phases"][-1]["ranking"] = truth.ranking_share(page_heat, budget_pages)
    report["accesses"] = state["done"]
    report["intact"] = check(state)
    if pytier:
        stats = pytier.stats()
        last = stats["last"]
        report["pytier"] = estimate
        report["oraclePagesSeen"] = truth.how_pytier_sees(pytier, budget_pages)
        report["oraclePagesSeen"]["arenas"] = {"all": last and last["arenas"], "early": stats["earlyArenas"],
                                               "watchedPages": last and last["pageWrites"]["watchedPages"],
                                               "registrations": last and last["pageWrites"]["registrations"],
                                               "unwatchable": last and last["pageWrites"]["unwatchableArenas"],
                                               "collections": last and last["pageWrites"]["collections"],
                                               "faultSecondsPerPage": last and last["pageWrites"]["faultSecondsPerPage"],
                                               "waitedFor": last and last["pageWrites"]["waitedFor"],
                                               "lateSeconds": last and last["pageWrites"]["lateSeconds"],
                                               "cpuSeconds": last and last["pageWrites"]["cpuSeconds"]}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
