"""How well a page's write heat ranks pages: a simulation of the estimator
of `interposer/src/pages.rs` (WriteHeat) and of three others, no VM needed.

300 000 objects with Zipf(0.99) access probabilities, scattered at random
over 8 000 pages, are used 200 000 times a second; a quarter of the pages fit
on DRAM. Each collection write-protects every page; a page used λ times a
second is first written after an exponential delay of mean 1/λ, which the
peeks time to the next rung of their ladder (0.25, 0.5, 1, ... ms after the
collection). The estimators rank the pages from those delays, decayed with
a 10 s half-life; the DRAM pages are the top quarter. After 30 s the hot
set shifts (a fresh scattering of the objects). Prints, for each estimator,
the share of the accesses its DRAM pages would serve over the oracle's
(the truly hottest quarter) before the shift and 1, 3, 5 and 10 s after.

pytier uses the first ("in use"). The others rank this heap better, but in
the placement benchmark's VM (2026-12-04, three runs each, interleaved with
pytier's) the last did not carry over: as a share of the oracle at the DRAM
each run held, 0.98 against 0.97 on zipf-read and zipf-shift, 0.91 against
0.90 on zipf-write, but 0.82 against 0.88 on lru-cache, whose heap churns;
and pytier's prediction read up to 20 points low (zipf-write 0.46 against
0.66 served). The second ("most likely"), tried in the VM on 2026-12-05 in
single runs beside pytier's: zipf-read 0.793 served (ranking 0.814) against
0.775 (0.803), zipf-write 0.655 (0.680) against 0.645 (0.715), and the
prediction 15 points low on zipf-read (0.645 against 0.793); four times its
weight, 0.754 and 0.654. On the host its ranking equalled pytier's (0.814
against 0.816 on zipf-read). This model has no allocation, no object
temperatures, no churn.

With --replaced-values it models zipf-write's floats instead (see
replaced_values): a page of values that a write replaces, whose memory
passes from key to key, is written as often as its floats are in the long
run, but in bursts. Every estimator here takes it for a steady page written
0.55 to 0.8 times as often (at the VM's pace, --rate 780000 --interval
0.35: 0.70-0.71 for pytier's over seeds 1-3, the others 0.57-0.68).
Looking sooner mends little: pytier's is 0.58 with the first look at 4 ms,
0.65 at 1 ms, 0.71 at 0.25 ms (in the VM the first look waits for the next
run's collection, which takes milliseconds there). A first write after
protection says how hot a page is now, and a float page is hot now only
while a hot key holds one of its floats.

    python3 tests/bench/placement/write_heat.py [--interval S] [--rate N] [--seed K]
    python3 tests/bench/placement/write_heat.py --replaced-values [--first-look S] [--interval S] [--rate N]
"""

import argparse
import math
import random

PAGES, OBJECTS, DRAM_PAGES, HALF_LIFE = 8000, 300_000, 2000, 10.0
LADDER = [0.000_25 * 2 ** k for k in range(19)]
UNWRITTEN_DELAYS = 2.0
RECENT_DISCOUNT = 2.0
VALUES_PER_PAGE = 4096 // 24


def page_rates(rng, total):
    h = sum(1 / r ** 0.99 for r in range(1, OBJECTS + 1))
    rates = [0.0] * PAGES
    for r in range(1, OBJECTS + 1):
        rates[rng.randrange(PAGES)] += total / (r ** 0.99 * h)
    return rates


class Estimator:
    def collection(self, decay):
        """Called once per collection, before its pages' delays."""


class MeanOfInverse(Estimator):
    """In use: a decayed sum of 2 ms / delay, 0 for an unwritten collection."""
    def __init__(self, pages=PAGES):
        self.sum = [0.0] * pages

    def add(self, i, delay, interval, decay):
        self.sum[i] = self.sum[i] * decay + (0.002 / delay if delay is not None else 0.0)

    def scores(self):
        return self.sum


class MostLikely(Estimator):
    """Collections written over the seconds watched before the first write."""
    def __init__(self, pages=PAGES):
        self.written, self.watched = [0.0] * pages, [0.0] * pages

    def add(self, i, delay, interval, decay):
        self.written[i] = self.written[i] * decay + (delay is not None)
        self.watched[i] = self.watched[i] * decay + (delay if delay is not None else interval)

    def scores(self):
        return [w / t if t else 0.0 for w, t in zip(self.written, self.watched)]


class GeometricMean(Estimator):
    """One over the decayed geometric mean of the delays (unwritten: twice
    the interval); 0 for a page never seen written."""
    def __init__(self, pages=PAGES):
        self.logs, self.ever = [0.0] * pages, [False] * pages
        self.collections = 0.0

    def collection(self, decay):
        self.collections = self.collections * decay + 1

    def add(self, i, delay, interval, decay):
        self.ever[i] |= delay is not None
        self.logs[i] = self.logs[i] * decay + math.log(delay if delay is not None else UNWRITTEN_DELAYS * interval)

    def scores(self):
        return [math.exp(-s / self.collections) if e else 0.0 for s, e in zip(self.logs, self.ever)]


class GeometricMeanOrRecent(GeometricMean):
    """The geometric mean's rate, or half of one over the longer of the last
    two delays if that is more."""
    def __init__(self, pages=PAGES):
        super().__init__(pages)
        self.last, self.recent = [0.0] * pages, [0.0] * pages

    def add(self, i, delay, interval, decay):
        super().add(i, delay, interval, decay)
        delay = delay if delay is not None else UNWRITTEN_DELAYS * interval
        self.recent[i], self.last[i] = max(self.last[i], delay), delay

    def scores(self):
        return [max(gm, 1 / (RECENT_DISCOUNT * r)) if gm else 0.0 for gm, r in zip(super().scores(), self.recent)]


def first_seen(t, looks):
    """The look (seconds after the collection; the last is the next
    collection) that first sees a page written `t` after it; None if none."""
    return next((look for look in looks if look >= t), None)


ESTIMATORS = {"mean of 1/delay (in use)": MeanOfInverse, "most likely rate": MostLikely,
              "geometric mean": GeometricMean, "geometric mean or last 2": GeometricMeanOrRecent}


def replaced_values(args, rng):
    """zipf-write's floats: a write replaces its key's value by a new float,
    which takes the memory freed by the write before (CPython's float free
    list), so a value's memory passes from key to key in access order. At
    any moment each float's memory holds a key drawn uniformly (a key holds
    it until its next use, 1/rate on average), and is next written when that
    key is used: a page of them is written at VALUES_PER_PAGE times the mean
    key rate in the long run, but in bursts, while a hot key holds one of
    its floats. Prints, for each estimator, the steady page (written at a
    fixed rate) that a page of such floats scores like, as a share of the
    floats' long-run rate: what the estimator makes of them against pages
    of fixed objects used as often."""
    keys, per_page, pages_each = 200_000, VALUES_PER_PAGE, 500
    h = sum(1 / r ** 0.99 for r in range(1, keys + 1))
    key_rates = [args.rate / (r ** 0.99 * h) for r in range(1, keys + 1)]
    rate = per_page * args.rate / keys
    looks = [t for t in LADDER if args.first_look <= t < args.interval] + [args.interval]
    # The chance that no float of the page is written by each look.
    unwritten = [(sum(math.exp(-w * t) for w in key_rates) / keys) ** per_page for t in looks]
    multiples = [0.25, 0.35, 0.5, 0.7, 1.0, 1.4, 2.0]
    steady = [rate * m for m in multiples for _ in range(pages_each)]
    estimators = {name: make(len(steady) + pages_each) for name, make in ESTIMATORS.items()}
    decay = 0.5 ** (args.interval / HALF_LIFE)
    for _ in range(round(30 / args.interval)):
        delays = []
        for lam in steady:
            delays.append(first_seen(rng.expovariate(lam), looks))
        for _ in range(pages_each):
            u = rng.random()
            delays.append(next((look for look, s in zip(looks, unwritten) if 1 - s >= u), None))
        for est in estimators.values():
            est.collection(decay)
            for i, delay in enumerate(delays):
                est.add(i, delay, args.interval, decay)
    print(f"pages of floats passed from key to key: {per_page} floats a page over {keys} keys, Zipf(0.99),"
          f" {args.rate:.0f} writes/s, a page written {rate:.0f} times a second in the long run;"
          f" collections every {args.interval} s, first look {args.first_look * 1000:g} ms after")
    print(f"{'estimator':32s}  scores like a steady page at this share of its rate")
    for name, est in estimators.items():
        scores = est.scores()
        mean = [sum(scores[k * pages_each:(k + 1) * pages_each]) / pages_each for k in range(len(multiples) + 1)]
        floats, curve = mean[-1], list(zip(multiples, mean[:-1]))
        share = next((m0 + (m1 - m0) * (floats - s0) / (s1 - s0) for (m0, s0), (m1, s1) in zip(curve, curve[1:])
                      if s0 <= floats <= s1), None)
        print(f"{name:32s}  " + (f"{share:.2f}" if share is not None else f"outside {multiples[0]}-{multiples[-1]}"))


def served(rates, scores):
    top = sorted(range(PAGES), key=lambda i: -scores[i])[:DRAM_PAGES]
    return sum(rates[i] for i in top) / sum(sorted(rates, reverse=True)[:DRAM_PAGES])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--interval", type=float, default=0.72, help="seconds between collections (VM runs: 0.5-1)")
    parser.add_argument("--rate", type=float, default=200_000, help="object uses a second")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--replaced-values", action="store_true",
                        help="instead: what each estimator makes of zipf-write's floats (see replaced_values)")
    parser.add_argument("--first-look", type=float, default=LADDER[0],
                        help="seconds after a collection of the first look, for --replaced-values")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    if args.replaced_values:
        replaced_values(args, rng)
        return
    before, after = page_rates(rng, args.rate), page_rates(rng, args.rate)
    decay = 0.5 ** (args.interval / HALF_LIFE)
    looks = [t for t in LADDER if t < args.interval] + [args.interval]
    estimators = {name: make() for name, make in ESTIMATORS.items()}
    per_phase = round(30 / args.interval)
    # The last collection before the shift, and the first at least 1, 3, 5 and 10 s after it.
    marks = {per_phase - 1: "steady", **{per_phase - 1 + math.ceil(s / args.interval): f"+{s} s" for s in (1, 3, 5, 10)}}
    table = {name: {} for name in estimators}
    for c in range(2 * per_phase):
        rates = before if c < per_phase else after
        delays = []
        for lam in rates:
            delays.append(first_seen(rng.expovariate(lam) if lam > 0 else math.inf, looks))
        for est in estimators.values():
            est.collection(decay)
            for i, delay in enumerate(delays):
                est.add(i, delay, args.interval, decay)
        if c in marks:
            for name, est in estimators.items():
                table[name][marks[c]] = served(rates, est.scores())
    print(f"served / oracle, {PAGES} pages, {DRAM_PAGES} on DRAM, {args.rate:.0f} uses/s, collections every "
          f"{args.interval} s; the hot set shifts at 30 s")
    print(f"{'estimator':32s}" + "".join(f"{m:>8s}" for m in marks.values()))
    for name, row in table.items():
        print(f"{name:32s}" + "".join(f"{row[m]:8.3f}" for m in marks.values()))


if __name__ == "__main__":
    main()
