//! Page temperatures: how often each 4 KiB page of each arena was written,
//! from `pagewrites`, within a budget for the faults that costs the program.
//!
//! A collection (which protects the pages again, so costs faults) only says
//! whether a page was written since the last one; with collections seconds
//! apart, nearly every page of a busy heap was. Between two collections the
//! tracker therefore *peeks* (reads the written bits without protecting, so
//! at no cost to the program) 0.25, 0.5, 1, 2, ... ms after the collection,
//! and each arena once more during it, right after the next arena's
//! collection (see `peek_arena`). The
//! sooner after protection a page is first written, the more often the
//! program uses it: that delay ranks pages by access rate, as hint-fault
//! latency does for the kernel's memory tiering. It feeds placement as the
//! page's *write heat*; classes keep counting collections.
//!
//! The peeks also count what the next collection will cost: every page
//! written since the last one faults once. A collection waits until that
//! count, times the cost of a fault, is within `maxFaultFraction` of the
//! time since the last one. That cost is timed again at every collection
//! (see `FaultCost`).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::time::Instant;

pub use pytier_contract::stats::{ByClass, PageReport, WaitedFor};

use crate::arenas::ARENA_FREES;
use crate::cputime::Stopwatch;
use crate::pagewrites::{DEFAULT_FAULT_SECONDS, PAGE, PageWrites};
use crate::temperature::{Class, Rules, Temperature};

/// The first peek after a collection, in seconds; each later one waits
/// twice as long, up to `MAX_PEEKS` (about a minute) or the next collection.
const FIRST_PEEK_SECONDS: f64 = 0.000_25;
const MAX_PEEKS: u8 = 19;
/// A page first seen written `t` seconds after its arena's collection gains
/// this much write heat divided by `t`: 1 for 2 ms, 8 for the first peek.
const WRITE_HEAT_SECONDS: f64 = 0.002;

/// Fault-cost trials at the first collection, and at each one after; and
/// how many recent trials the cost is the median of.
const FAULT_TRIALS_FIRST: usize = 5;
const FAULT_TRIALS_EACH: usize = 1;
const FAULT_TRIALS_KEPT: usize = 15;

/// How long after their registration new arenas are measured (see
/// `PageTracker::measure_new_arenas`).
const MEASURE_NEW_AFTER: f64 = 1.0;

/// The limit that set a collection's wait (see `PageTracker::wait`).
#[derive(Debug, Clone, Copy, PartialEq)]
enum Limit {
    Faults,
    Cpu,
    ScanInterval,
}

impl Limit {
    fn count(self, waited_for: &mut WaitedFor) -> &mut u64 {
        match self {
            Limit::Faults => &mut waited_for.faults,
            Limit::Cpu => &mut waited_for.cpu,
            Limit::ScanInterval => &mut waited_for.scan_interval,
        }
    }
}

/// How far apart collections must be.
#[derive(Debug, Clone, Copy)]
pub struct Spacing {
    /// The faults a collection causes may cost the program this fraction
    /// of its time since the last one; 0 turns page tracking off.
    pub max_fault_fraction: f64,
    /// And at least this many seconds (the scan interval), however little is
    /// written: a page's heat comes from the peeks in between.
    pub min_seconds: f64,
    /// The share of one CPU a collection and its peeks may take (part of
    /// the scanner's budget): on a heap written little, collections a scan
    /// interval apart, each with its ladder of peeks, would cost more.
    pub max_cpu_fraction: f64,
}

pub struct PageTracker {
    writes: Result<PageWrites, String>,
    arenas: BTreeMap<usize, ArenaPages>,
    /// What one written page costs the program (a write-protect fault).
    fault_cost: FaultCost,
    last_collection: Option<Instant>,
    /// Seconds after the last collection of the latest peek (0 before any).
    last_peek: f64,
    /// Pages written since the last collection, as far as peeks have seen:
    /// the faults the next collection will have cost.
    written_since: u64,
    /// CPU seconds the last collection and the peeks since took on this
    /// thread: not wall time, which counts waits for a core too (as the
    /// scanner's own budget does not; see `scan_loop`). Measured in the
    /// placement benchmark: 113 to 115 collections in a zipf-read run
    /// where wall time allowed 91 to 98.
    round_seconds: f64,
    frees_seen: u64,
    /// Scratch for peeks: the pages one look found newly written.
    fresh: Vec<usize>,
    report: PageReport,
}

struct ArenaPages {
    temps: Vec<Temperature>,
    /// Seconds after the start of the last collection of the whole heap at
    /// which a peek first saw each page written since; 0 while none has.
    first_seen: Vec<f32>,
    /// Each page's write heat.
    write_heat: Vec<WriteHeat>,
    /// Seconds after the start of the last collection of the whole heap at
    /// which this arena was last collected (write-protected again): a page's
    /// first write is timed from then. Later when it was measured alone.
    collected_after: f64,
    /// Registration failed (not anonymous memory): no temperatures.
    unwatchable: bool,
    /// A collection after the baseline has run: until then registration has
    /// counted every page as written, and the pages have no class.
    measured: bool,
    /// Pages written since the scanner last read them, a bit each: set by
    /// collections (every page at a baseline), taken by `written_since_read`.
    unread_writes: Vec<u64>,
}

/// The cost of a write-protect fault to the program: the median of the
/// recent trials. One trial stretched by preemption must not space a whole
/// run's collections: in the TCG VM the median is about 3.6 µs, and the
/// dearest of five trials at start-up, the estimate before, read 26 to
/// 96 µs (5 to 17 collections in a run that now has 50 to 100).
#[derive(Default)]
struct FaultCost {
    recent: VecDeque<f64>,
}

impl FaultCost {
    fn add(&mut self, trials: Vec<f64>) {
        self.recent.extend(trials);
        while self.recent.len() > FAULT_TRIALS_KEPT {
            self.recent.pop_front();
        }
    }

    fn seconds(&self) -> f64 {
        let mut sorted: Vec<f64> = self.recent.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(DEFAULT_FAULT_SECONDS)
    }
}

/// The tracker's state before its first collection.
const NOT_OPENED: &str = "not started yet";

impl ArenaPages {
    fn new() -> ArenaPages {
        ArenaPages {
            temps: Vec::new(),
            first_seen: Vec::new(),
            write_heat: Vec::new(),
            collected_after: 0.0,
            unwatchable: false,
            measured: false,
            unread_writes: Vec::new(),
        }
    }

    /// Starts watching the arena (at `base`, `len` bytes long) afresh, or
    /// marks it unwatchable.
    fn watch(&mut self, writes: &mut PageWrites, base: usize, len: usize) {
        if writes.watch(base, len).is_err() {
            self.unwatchable = true;
            return;
        }
        let pages = len / PAGE;
        self.temps = vec![Temperature::default(); pages];
        self.first_seen = vec![0.0; pages];
        self.write_heat = vec![WriteHeat::default(); pages];
        self.measured = false;
        // New memory: whatever the scanner knew of this range is stale.
        self.unread_writes = vec![u64::MAX; pages.div_ceil(64)];
    }

    /// Takes the arena's written pages (it is at `base`) and records them
    /// (see `record`).
    fn collect(
        &mut self,
        writes: &mut PageWrites,
        base: usize,
        since: f64,
        rules: &Rules,
        half_life_s: f64,
        classes: &mut ByClass,
    ) -> Option<usize> {
        let written = take_written_run(writes, &[(base, self.temps.len() * PAGE)]).and_then(|mut run| run.pop());
        self.record(written, since, rules, half_life_s, classes)
    }

    /// Records the arena's written pages, taken `since` seconds after the
    /// last collection of the whole heap: page classes (counted in
    /// `classes` once measured), write heat, and the writes the scanner has
    /// not read. The pages written, or None if taking them failed.
    fn record(
        &mut self,
        written: Option<Vec<bool>>,
        since: f64,
        rules: &Rules,
        half_life_s: f64,
        classes: &mut ByClass,
    ) -> Option<usize> {
        let Some(written) = written else {
            // Some pages may be protected again unreported: count all written.
            self.unread_writes.fill(u64::MAX);
            return None;
        };
        let (offset, since) = (self.collected_after, since - self.collected_after);
        let decay = 0.5f32.powf((since / half_life_s.max(1e-3)) as f32);
        let measuring = self.measured; // a baseline says nothing of writes
        let n = written.iter().filter(|&&was| was).count();
        for (i, was_written) in written.into_iter().enumerate() {
            if was_written {
                self.unread_writes[i / 64] |= 1 << (i % 64);
            }
            let class = self.temps[i].record(was_written, rules);
            if self.measured {
                classes.add(class, 1);
            }
            let seen = std::mem::take(&mut self.first_seen[i]) as f64;
            if measuring {
                // When a peek first saw it written, else by the collection.
                let first_seen = was_written.then(|| if seen > 0.0 { (seen - offset).max(1e-6) } else { since });
                self.write_heat[i].add(first_seen, decay);
            }
        }
        Some(n)
    }
}

/// What a page's writes say of its use: `WRITE_HEAT_SECONDS` over the
/// delay until it was first seen written after each collection (a page
/// written λ times a second is first written about 1/λ after being
/// protected), decayed like temperatures. At most 8 a collection, so one
/// burst of writes weighs no more than a page written that soon every time.
#[derive(Debug, Clone, Copy, Default)]
struct WriteHeat(f32);

impl WriteHeat {
    /// One collection; `first_seen` is how long after the arena's
    /// protection a peek (or the collection) first saw the page written, if
    /// it was.
    fn add(&mut self, first_seen: Option<f64>, decay: f32) {
        self.0 *= decay;
        if let Some(seen) = first_seen {
            self.0 += (WRITE_HEAT_SECONDS / seen.max(FIRST_PEEK_SECONDS)) as f32;
        }
    }
}

impl Default for PageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl PageTracker {
    pub fn new() -> PageTracker {
        PageTracker {
            writes: Err(NOT_OPENED.into()),
            arenas: BTreeMap::new(),
            fault_cost: FaultCost::default(),
            last_collection: None,
            last_peek: 0.0,
            written_since: 0,
            round_seconds: 0.0,
            frees_seen: 0,
            fresh: Vec::new(),
            report: PageReport::default(),
        }
    }

    /// Collects page writes for these arena regions when the fault budget
    /// allows (see `interval`), and peeks in between. 0 turns tracking off.
    /// `half_life_s` is the write heat's, as the temperatures'.
    pub fn maybe_collect(
        &mut self,
        regions: &[(usize, usize)],
        rules_for: impl Fn(f64) -> Rules,
        half_life_s: f64,
        spacing: Spacing,
    ) {
        if spacing.max_fault_fraction <= 0.0 {
            self.report.off_reason = Some("turned off (maxFaultFraction is 0)".into());
            return;
        }
        // Opened at the first collection, not at start-up: a process that
        // ends early never sees pytier's descriptors.
        if matches!(&self.writes, Err(why) if why == NOT_OPENED) {
            self.writes = PageWrites::open();
        }
        if let Err(why) = &self.writes {
            self.report.off_reason = Some(why.clone());
            return;
        }
        self.report.off_reason = None;
        let since = self.last_collection.map(|at| at.elapsed().as_secs_f64());
        let mut waited = None;
        if let (Some(since), Some(at)) = (since, self.last_collection) {
            let clock = || at.elapsed().as_secs_f64();
            // A peek due on the ladder (one woken late skips those it missed).
            if next_peek_offset(self.last_peek).is_some_and(|offset| since >= offset) {
                self.peek(clock);
            }
            // Due by the count so far: count again now, before the program
            // pays. That look's own time does not put the collection off:
            // each recount would push it a little further, for ever (one
            // collection in 30 s at the default settings, seen).
            let round_before_recount = self.round_seconds;
            if since >= self.interval(spacing) && self.last_peek < since {
                self.peek(clock);
            }
            let (wait, limit) = self.wait(spacing, round_before_recount);
            if since < wait {
                self.watch_new_arenas(regions, since, &rules_for(since));
                self.measure_new_arenas(since, rules_for, half_life_s);
                return;
            }
            waited = Some((limit, since - wait));
        }
        self.stop_if_descriptors_lost();
        let Ok(writes) = &mut self.writes else { return };
        let started = Instant::now();
        let cpu = Stopwatch::start();
        let trials = if since.is_none() { FAULT_TRIALS_FIRST } else { FAULT_TRIALS_EACH };
        self.fault_cost.add(writes.time_faults(trials));
        let fault_seconds = self.fault_cost.seconds();
        let rules = rules_for(since.unwrap_or(1.0));
        self.last_collection = Some(started);
        self.last_peek = 0.0;
        self.written_since = 0;
        self.round_seconds = 0.0;
        let frees = ARENA_FREES.load(Ordering::Relaxed);
        let recheck = frees != self.frees_seen;
        self.frees_seen = frees;

        // Forget arenas that are gone.
        let present: std::collections::HashSet<usize> = regions.iter().map(|(base, _)| *base).collect();
        self.arenas.retain(|base, _| present.contains(base));
        let mut report = PageReport {
            collections: self.report.collections + 1,
            fault_seconds_per_page: fault_seconds,
            fault_seconds_total: self.report.fault_seconds_total,
            registrations: self.report.registrations,
            waited_for: self.report.waited_for,
            late_seconds: self.report.late_seconds,
            cpu_seconds: self.report.cpu_seconds,
            ..Default::default()
        };
        if let Some((limit, late)) = waited {
            *limit.count(&mut report.waited_for) += 1;
            report.late_seconds += late;
        }
        let mut watched = Vec::with_capacity(regions.len());
        for &(base, len) in regions {
            let pages = len / PAGE;
            let arena = self.arenas.entry(base).or_insert_with(ArenaPages::new);
            // A region that grew or shrank (the brk heap) is watched afresh.
            let resized = arena.temps.len() != pages;
            let baseline = arena.temps.is_empty() || resized || (recheck && !writes.is_watched(base, len));
            if baseline && !arena.unwatchable {
                // New (or recycled) arena: its first collection is a baseline.
                report.registrations += 1;
                arena.watch(writes, base, len);
            }
            if arena.unwatchable {
                report.unwatchable_arenas += 1;
                continue;
            }
            arena.measured = !baseline;
            watched.push((base, len));
        }
        watched.sort_unstable();
        let mut just_collected: &[(usize, usize)] = &[];
        for run in watched.chunk_by(|a, b| a.0 + a.1 == b.0) {
            let mut taken = take_written_run(writes, run).map(Vec::into_iter);
            let collected_after = started.elapsed().as_secs_f64();
            for &(base, len) in run {
                let written = taken.as_mut().and_then(Iterator::next);
                let Some(arena) = self.arenas.get_mut(&base) else { continue };
                let collected = arena.record(written, since.unwrap_or(1.0), &rules, half_life_s, &mut report.pages);
                arena.collected_after = collected_after;
                let Some(n) = collected else { continue };
                report.last_written_pages += n as u64;
                report.watched_pages += (len / PAGE) as u64;
            }
            // The run before this one was protected one run's collection
            // ago: look at it now (see `peek_arena`).
            for &(previous, _) in std::mem::replace(&mut just_collected, run) {
                self.written_since += peek_arena(writes, previous, &mut self.arenas, &mut self.fresh, &started);
            }
        }
        for &(last, _) in just_collected {
            self.written_since += peek_arena(writes, last, &mut self.arenas, &mut self.fresh, &started);
        }
        report.fault_seconds_total += report.last_written_pages as f64 * fault_seconds;
        report.collect_seconds = started.elapsed().as_secs_f64();
        self.report = report;
        self.count_cpu(cpu);
    }

    /// Watches arenas made since the last collection at once, with a
    /// baseline collection of their own, rather than at the next collection
    /// of the whole heap: on a heap written much, the fault budget spaces
    /// those so far apart that this was a whole run. (The placement
    /// benchmark's `records` builds its hot index last: in one run of six,
    /// its arenas came after the only collection, and it sat on CXL.)
    fn watch_new_arenas(&mut self, regions: &[(usize, usize)], since: f64, rules: &Rules) {
        let Ok(writes) = &mut self.writes else { return };
        let started = Instant::now();
        let cpu = Stopwatch::start();
        for &(base, len) in regions {
            if self.arenas.contains_key(&base) {
                continue;
            }
            let arena = self.arenas.entry(base).or_insert_with(ArenaPages::new);
            self.report.registrations += 1;
            arena.watch(writes, base, len);
            if arena.unwatchable {
                self.report.unwatchable_arenas += 1;
                continue;
            }
            // A baseline: it records no heat, so no half-life is needed.
            let _ = arena.collect(writes, base, since, rules, 1.0, &mut ByClass::default());
            arena.collected_after = since + started.elapsed().as_secs_f64();
        }
        self.count_cpu(cpu);
    }

    /// Collects, alone, arenas whose first collection (a baseline) was
    /// `MEASURE_NEW_AFTER` ago: until their next they have no page class
    /// and no write heat, and the next collection of the whole heap may be
    /// far off (see `watch_new_arenas`). Only their own written pages fault
    /// again.
    fn measure_new_arenas(&mut self, since: f64, rules_for: impl Fn(f64) -> Rules, half_life_s: f64) {
        let due = |a: &ArenaPages| !a.measured && !a.temps.is_empty() && since - a.collected_after >= MEASURE_NEW_AFTER;
        if !self.arenas.values().any(due) {
            return;
        }
        let Ok(writes) = &mut self.writes else { return };
        let started = Instant::now();
        let cpu = Stopwatch::start();
        let rules = rules_for(since);
        let mut written = 0;
        for (&base, arena) in self.arenas.iter_mut().filter(|(_, a)| due(a)) {
            arena.measured = true;
            written += arena.collect(writes, base, since, &rules, half_life_s, &mut ByClass::default()).unwrap_or(0);
            arena.collected_after = since + started.elapsed().as_secs_f64();
        }
        self.report.fault_seconds_total += written as f64 * self.fault_cost.seconds();
        self.count_cpu(cpu);
    }

    /// Stops tracking page writes, saying why, if the program closed or
    /// reused the tracker's descriptors (see `fds`).
    fn stop_if_descriptors_lost(&mut self) {
        if let Ok(writes) = &self.writes
            && let Err(why) = writes.check()
        {
            self.report.off_reason = Some(why.clone());
            self.writes = Err(why);
        }
    }

    /// Notes, for every watched page written since the last collection and
    /// not seen yet, when (by `clock`, seconds since the collection) a peek
    /// first saw it: when the look at its arena ended, the latest it can
    /// have been written. Protects nothing: free for the program.
    fn peek(&mut self, clock: impl Fn() -> f64) {
        let cpu = Stopwatch::start();
        self.stop_if_descriptors_lost();
        let Ok(writes) = &mut self.writes else { return };
        for (&base, arena) in self.arenas.iter_mut().filter(|(_, a)| !a.first_seen.is_empty()) {
            self.written_since += peek_into(writes, base, arena, &mut self.fresh, &clock) as u64;
        }
        self.last_peek = clock();
        self.count_cpu(cpu);
    }

    /// Adds the CPU a piece of the tracker's work took to the round's and
    /// the report's.
    fn count_cpu(&mut self, work: Stopwatch) {
        let seconds = work.seconds();
        self.round_seconds += seconds;
        self.report.cpu_seconds += seconds;
    }

    /// The time the last collection must be past before the next: the
    /// program pays a fault for each page written meanwhile, which must stay
    /// within `max_fault_fraction` of that time, and the round's own work
    /// within `max_cpu_fraction` of it.
    fn interval(&self, spacing: Spacing) -> f64 {
        self.wait(spacing, self.round_seconds).0
    }

    /// `interval`, as if the round's work so far had taken `round_seconds`,
    /// and the limit that sets it.
    fn wait(&self, spacing: Spacing, round_seconds: f64) -> (f64, Limit) {
        let faults = self.written_since as f64 * self.fault_cost.seconds() / spacing.max_fault_fraction;
        let cpu = round_seconds / spacing.max_cpu_fraction;
        [(spacing.min_seconds, Limit::ScanInterval), (cpu, Limit::Cpu), (faults, Limit::Faults)]
            .into_iter()
            .fold((0.0, Limit::ScanInterval), |longest, term| if term.0 > longest.0 { term } else { longest })
    }

    /// When page writes should next be looked at: the next peek, or the
    /// collection if that comes first.
    pub fn next_look(&self, spacing: Spacing) -> Option<Instant> {
        let at = self.last_collection?;
        if self.writes.is_err() || spacing.max_fault_fraction <= 0.0 {
            return None;
        }
        let interval = self.interval(spacing);
        let offset = next_peek_offset(self.last_peek).map_or(interval, |peek| peek.min(interval));
        Some(at + std::time::Duration::from_secs_f64(offset))
    }

    /// Which pages of the arena at `base` were written since the last call
    /// for it (a bit per page), counting writes since the last collection
    /// too; None when that is not known (page writes off, the range not or no
    /// longer watched), and then anything may have been written.
    pub fn written_since_read(&mut self, base: usize, len: usize) -> Option<Vec<u64>> {
        let writes = self.writes.as_mut().ok()?;
        let arena = self.arenas.get_mut(&base).filter(|a| !a.unwatchable && a.temps.len() * PAGE == len)?;
        if !writes.is_watched(base, len) {
            return None; // freed and mapped again since the last collection
        }
        let mut written = std::mem::replace(&mut arena.unread_writes, vec![0; arena.temps.len().div_ceil(64)]);
        let peeked = writes.peek_written(base, len, |page| {
            let i = (page - base) / PAGE;
            written[i / 64] |= 1 << (i % 64);
        });
        peeked.is_ok().then_some(written)
    }

    pub fn report(&self) -> &PageReport {
        &self.report
    }

    /// Adds to each page's heat its write heat (0 when not watched) times
    /// `weight`. Pages come an arena at a time: one lookup per arena.
    pub fn add_write_heat(&self, pages: &mut [(usize, f32)], weight: f32) {
        let mut arena: Option<(usize, &[WriteHeat])> = None;
        for (page, heat) in pages {
            if arena.is_none_or(|(base, heats)| *page < base || *page >= base + heats.len() * PAGE) {
                arena = self.arenas.range(..=*page).next_back().map(|(&base, a)| (base, &a.write_heat[..]));
            }
            if let Some((base, heats)) = arena {
                *heat += weight * heats.get((*page - base) / PAGE).map_or(0.0, |h| h.0);
            }
        }
    }

    /// The write heat of the page holding `addr` (0 where none is known).
    pub fn write_heat_of(&self, addr: usize) -> f32 {
        let Some((base, arena)) = self.arenas.range(..=addr).next_back() else { return 0.0 };
        arena.write_heat.get((addr - base) / PAGE).map_or(0.0, |h| h.0)
    }

    /// Whether the region at `base`, `len` bytes long, is watched and has
    /// been measured (its pages have write heat).
    pub fn is_measured(&self, base: usize, len: usize) -> bool {
        self.arenas.get(&base).is_some_and(|a| a.measured && !a.unwatchable && a.temps.len() * PAGE == len)
    }

    /// The class of the page holding `addr`, if it is watched and has been
    /// measured (a collection after its arena's baseline).
    pub fn class_of(&self, addr: usize, rules: &Rules) -> Option<Class> {
        let (base, arena) = self.arenas.range(..=addr).next_back()?;
        let temp = arena.temps.get((addr - base) / PAGE)?;
        (arena.measured && temp.is_present()).then(|| temp.class(rules))
    }
}

/// Notes when a peek of the arena at `base` first saw each page written
/// since its collection: `clock`, when the look ended (the latest the page
/// can have been written), in seconds after the whole collection's start.
/// Returns how many pages were new.
fn peek_into(
    writes: &mut PageWrites,
    base: usize,
    arena: &mut ArenaPages,
    fresh: &mut Vec<usize>,
    clock: impl Fn() -> f64,
) -> usize {
    fresh.clear();
    let len = arena.first_seen.len() * PAGE;
    let _ = writes.peek_written(base, len, |page| {
        let i = (page - base) / PAGE;
        if arena.first_seen[i] == 0.0 {
            fresh.push(i);
        }
    });
    let seen_by = clock() as f32;
    for &i in fresh.iter() {
        arena.first_seen[i] = seen_by;
    }
    fresh.len()
}

/// Takes the written pages of arenas that follow one another in memory,
/// `(base, len)` in address order, with one call, a `Vec` of written flags
/// per arena; None if that failed. The kernel flushes the TLBs of every CPU
/// the program runs on for each 2 MiB of page table a call protects pages
/// in: a call per arena flushed twice where two arenas share one. Each
/// flush interrupts the program; and in a VM whose host is busy, it waits
/// for a descheduled vCPU (in the TCG VM, about 2 ms a flush with two busy
/// loops on the host, against 0.2 ms idle).
fn take_written_run(writes: &mut PageWrites, run: &[(usize, usize)]) -> Option<Vec<Vec<bool>>> {
    let (&(start, _), &(last, last_len)) = (run.first()?, run.last()?);
    let mut written: Vec<Vec<bool>> = run.iter().map(|&(_, len)| vec![false; len / PAGE]).collect();
    let taken = writes.take_written(start, last + last_len - start, |page| {
        let i = run.partition_point(|&(base, _)| base <= page).saturating_sub(1);
        if let Some(flag) = page.checked_sub(run[i].0).and_then(|offset| written[i].get_mut(offset / PAGE)) {
            *flag = true;
        }
    });
    taken.ok().map(|_| written)
}

/// The first look at an arena's writes after its collection, one run's
/// collection later (the ladder's first peek waits for the whole heap's:
/// 6 to 25 ms for 40 arenas in the TCG VM, when a page used 40 times a
/// second is as likely written by then as one used 4000 times, so write
/// heat could not tell them apart). Returns how many pages were seen.
fn peek_arena(
    writes: &mut PageWrites,
    base: usize,
    arenas: &mut BTreeMap<usize, ArenaPages>,
    fresh: &mut Vec<usize>,
    collection: &Instant,
) -> u64 {
    let Some(arena) = arenas.get_mut(&base).filter(|a| !a.first_seen.is_empty()) else { return 0 };
    peek_into(writes, base, arena, fresh, || collection.elapsed().as_secs_f64()) as u64
}

/// Seconds after a collection of the first peek on the ladder (0.25, 0.5,
/// 1, ... ms) after one at `last_peek`; none after the last rung.
fn next_peek_offset(last_peek: f64) -> Option<f64> {
    (0..MAX_PEEKS).map(|k| FIRST_PEEK_SECONDS * 2f64.powi(k as i32)).find(|&offset| offset > last_peek)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracker and 10 pages of memory whose page `offset` is page aligned;
    /// None where the kernel cannot track page writes (declared by the
    /// test environment).
    fn tracker_and_memory() -> Option<(PageTracker, Vec<u8>, usize)> {
        let mut tracker = PageTracker::new();
        tracker.writes = PageWrites::open();
        if let Err(reason) = &tracker.writes {
            assert_eq!(std::env::var("PYTIER_NO_PAGE_WRITES").as_deref(), Ok("1"), "{reason}");
            return None;
        }
        let memory = vec![1u8; 10 * PAGE];
        let offset = memory.as_ptr().align_offset(PAGE);
        Some((tracker, memory, offset))
    }

    #[test]
    fn new_arenas_are_measured_a_second_after_registration_however_far_off_the_next_collection() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        let rules = |interval| Rules::new(1.0, 10.0, interval);
        // A fault budget that the first written page spends for a long time.
        let tight = Spacing { max_fault_fraction: 1e-9, min_seconds: 0.0, max_cpu_fraction: 1.0 };
        tracker.maybe_collect(&regions, rules, 10.0, tight); // registers: a baseline
        assert_eq!(tracker.class_of(start, &rules(1.0)), None, "a baseline gives no class");
        memory[offset + 3 * PAGE + 7] = 2;
        tracker.maybe_collect(&regions, rules, 10.0, tight); // peeks, and counts the write
        assert!(tracker.interval(tight) > 60.0, "the next collection is far off");
        std::thread::sleep(std::time::Duration::from_secs_f64(MEASURE_NEW_AFTER + 0.1));
        tracker.maybe_collect(&regions, rules, 10.0, tight);
        assert_eq!(tracker.report.collections, 1, "no collection of the whole heap");
        assert_eq!(tracker.class_of(start + 3 * PAGE, &rules(1.0)), Some(Class::Hot));
        assert_eq!(tracker.class_of(start, &rules(1.0)), Some(Class::Cold));
        let mut pages = vec![(start + 3 * PAGE, 0.0), (start, 0.0)];
        tracker.add_write_heat(&mut pages, 1.0);
        // Seen by the peek, within 0.2 s even on a loaded machine (heat over
        // 0.01), not only by the measure a second later (0.002).
        assert!(pages[0].1 > 0.01 && pages[1].1 == 0.0, "the written page gained write heat: {pages:?}");
    }

    #[test]
    fn arenas_made_between_collections_are_watched_at_once_and_measured_a_second_later() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let (a, b) = (memory.as_ptr() as usize + offset, memory.as_ptr() as usize + offset + 4 * PAGE);
        let rules = |interval| Rules::new(1.0, 10.0, interval);
        let tight = Spacing { max_fault_fraction: 1e-9, min_seconds: 0.0, max_cpu_fraction: 1.0 };
        tracker.maybe_collect(&[(a, 4 * PAGE)], rules, 10.0, tight);
        memory[offset + 7] = 2; // spends the fault budget for a long time
        tracker.maybe_collect(&[(a, 4 * PAGE)], rules, 10.0, tight);
        assert!(tracker.interval(tight) > 60.0, "the next collection is far off");
        // Arena b appears: watched now, with a baseline of its own.
        tracker.maybe_collect(&[(a, 4 * PAGE), (b, 4 * PAGE)], rules, 10.0, tight);
        assert_eq!((tracker.report.collections, tracker.report.registrations), (1, 2));
        memory[offset + 5 * PAGE + 7] = 2;
        std::thread::sleep(std::time::Duration::from_secs_f64(MEASURE_NEW_AFTER + 0.1));
        tracker.maybe_collect(&[(a, 4 * PAGE), (b, 4 * PAGE)], rules, 10.0, tight);
        assert_eq!(tracker.report.collections, 1, "no collection of the whole heap");
        assert_eq!(tracker.class_of(b + PAGE, &rules(1.0)), Some(Class::Hot));
        assert_eq!(tracker.class_of(b, &rules(1.0)), Some(Class::Cold));
    }

    #[test]
    fn the_sooner_a_page_is_written_after_a_collection_the_more_write_heat_it_gains() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        // The arena counts as protected at the collection's start.
        let collect = |t: &mut PageTracker| {
            collect_now(t, &regions);
            t.arenas.values_mut().for_each(|a| a.collected_after = 0.0);
        };
        let heat = |t: &PageTracker| {
            let mut pages: Vec<(usize, f32)> = (0..8).map(|p| (start + p * PAGE, 0.0)).collect();
            t.add_write_heat(&mut pages, 1.0);
            pages.into_iter().map(|(_, heat)| heat).collect::<Vec<f32>>()
        };
        let mut write = |page: usize| memory[offset + page * PAGE + 7] = 2;

        collect(&mut tracker); // registers: a baseline, which says nothing
        assert_eq!(heat(&tracker), [0.0; 8]);
        write(2);
        tracker.peek(|| 0.002);
        write(5);
        write(2);
        tracker.peek(|| 0.008);
        write(6);
        collect(&mut tracker);
        // 2 ms over the delay until first seen; page 6 only by the collection, 1 s.
        let want = [0.0, 0.0, 1.0, 0.0, 0.0, 0.25, 0.002, 0.0];
        for (page, (got, want)) in heat(&tracker).iter().zip(want).enumerate() {
            assert!((got - want).abs() < 1e-6, "page {page}: heat {got}, want {want}");
        }
    }

    #[test]
    fn a_page_is_timed_from_its_own_arenas_protection() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        collect_now(&mut tracker, &regions);
        collect_now(&mut tracker, &regions);
        // As if the arena were protected 10 ms into a collection of a big
        // heap: a write seen at 12 ms came 2 ms after.
        tracker.arenas.values_mut().for_each(|a| a.collected_after = 0.010);
        memory[offset + 7] = 2;
        tracker.peek(|| 0.012);
        collect_now(&mut tracker, &regions);
        let mut pages = vec![(start, 0.0)];
        tracker.add_write_heat(&mut pages, 1.0);
        assert!((pages[0].1 - 1.0).abs() < 1e-3, "heat {} for a write 2 ms after protection", pages[0].1);
    }

    #[test]
    fn the_look_right_after_an_arenas_collection_times_its_writes_from_then() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        collect_now(&mut tracker, &regions);
        collect_now(&mut tracker, &regions);
        // As if the next arena's collection had just ended: a write by then
        // is seen at once, not at the ladder's first peek 10 ms later.
        let collection = Instant::now();
        tracker.arenas.values_mut().for_each(|a| a.collected_after = 0.0);
        memory[offset + 7] = 2;
        let Ok(writes) = &mut tracker.writes else { unreachable!() };
        assert_eq!(peek_arena(writes, start, &mut tracker.arenas, &mut Vec::new(), &collection), 1, "one page written");
        std::thread::sleep(std::time::Duration::from_millis(10));
        tracker.peek(|| 0.010); // the ladder's first peek: already seen
        collect_now(&mut tracker, &regions);
        let mut pages = vec![(start, 0.0)];
        tracker.add_write_heat(&mut pages, 1.0);
        // Seen at once: heat 8 (1 if the test thread was held up 2 ms);
        // 0.2 would mean it was first seen by the 10 ms peek.
        assert!(pages[0].1 > 0.2, "heat {} for a write seen before the 10 ms peek", pages[0].1);
    }

    #[test]
    fn pages_have_no_class_until_a_collection_after_the_baseline() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        let rules = Rules::new(1.0, 10.0, 1.0);
        let collect = |t: &mut PageTracker| {
            t.last_collection = None;
            t.maybe_collect(&regions, |_| rules, 1e9, NO_SPACING);
        };
        collect(&mut tracker);
        assert_eq!(tracker.class_of(start, &rules), None, "the baseline says nothing about use");
        assert_eq!(tracker.report().pages, Default::default());
        memory[offset + 3 * PAGE] = 2;
        collect(&mut tracker);
        assert_eq!(tracker.class_of(start + 3 * PAGE, &rules), Some(Class::Hot));
        assert_eq!(tracker.class_of(start, &rules), Some(Class::Cold));
        let pages = &tracker.report().pages;
        assert_eq!(pages.hot + pages.warm + pages.cold, 8);
    }

    /// A collection now, whatever the fault budget says, 1 s after the last
    /// as far as the tracker knows; no decay to speak of.
    fn collect_now(tracker: &mut PageTracker, regions: &[(usize, usize)]) {
        tracker.last_collection = None;
        tracker.maybe_collect(regions, |_| Rules::new(1.0, 10.0, 1.0), 1e9, NO_SPACING);
    }

    #[test]
    fn the_fault_cost_is_the_median_of_the_recent_trials_so_one_interrupted_trial_does_not_count() {
        let mut cost = FaultCost::default();
        assert_eq!(cost.seconds(), DEFAULT_FAULT_SECONDS, "no trial yet");
        cost.add(vec![26e-6, 25e-6, 96e-6, 27e-6, 26e-6]);
        assert_eq!(cost.seconds(), 26e-6);
        // The machine gets slower: once most kept trials have the new cost,
        // so does the estimate.
        cost.add(vec![60e-6; 2]);
        assert_eq!(cost.seconds(), 27e-6);
        cost.add(vec![60e-6; FAULT_TRIALS_KEPT]);
        assert_eq!(cost.seconds(), 60e-6);
        assert_eq!(cost.recent.len(), FAULT_TRIALS_KEPT);
    }

    /// No limit on the spacing of collections but the round's own CPU time.
    const NO_SPACING: Spacing = Spacing { max_fault_fraction: 1.0, min_seconds: 0.0, max_cpu_fraction: 1.0 };

    #[test]
    fn arenas_next_to_each_other_are_collected_together_and_each_gets_its_own_writes() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start + 4 * PAGE, 4 * PAGE), (start, 4 * PAGE)]; // not in address order
        collect_now(&mut tracker, &regions);
        for (base, len) in regions {
            tracker.written_since_read(base, len); // the baseline's
        }
        memory[offset + PAGE] = 2;
        memory[offset + 6 * PAGE] = 2;
        // Forced: with NO_SPACING the collection still waits for its own
        // round's CPU time, which a loaded machine can make longer than the
        // time since the baseline (seen in CI).
        collect_now(&mut tracker, &regions);
        assert_eq!(tracker.report.collections, 2);
        assert_eq!(tracker.report.last_written_pages, 2);
        assert_eq!(tracker.written_since_read(start, 4 * PAGE), Some(vec![1 << 1]));
        assert_eq!(tracker.written_since_read(start + 4 * PAGE, 4 * PAGE), Some(vec![1 << 2]));
    }

    #[test]
    fn a_collection_waits_until_its_round_of_work_is_within_the_cpu_share() {
        let Some((mut tracker, memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let spacing = Spacing { max_fault_fraction: 1.0, min_seconds: 0.1, max_cpu_fraction: 0.005 };
        tracker.maybe_collect(&[(start, 8 * PAGE)], |_| Rules::new(1.0, 10.0, 1.0), 10.0, spacing);
        assert!(tracker.round_seconds > 0.0, "the collection's own time counts");
        tracker.round_seconds = 0.002;
        // 2 ms of collection and peeks within 0.5% of a CPU: 0.4 s apart.
        let (wait, limit) = tracker.wait(spacing, tracker.round_seconds);
        assert!((wait - 0.4).abs() < 1e-9);
        assert_eq!(limit, Limit::Cpu);
    }

    #[test]
    fn the_recount_that_finds_a_collection_due_does_not_put_it_off_by_its_own_time() {
        let Some((mut tracker, memory, offset)) = tracker_and_memory() else { return };
        let regions = [(memory.as_ptr() as usize + offset, 8 * PAGE)];
        // A share so small that any look's time puts the next collection off by far.
        let spacing = Spacing { max_fault_fraction: 1.0, min_seconds: 0.0, max_cpu_fraction: 1e-6 };
        let rules = |_| Rules::new(1.0, 10.0, 1.0);
        tracker.maybe_collect(&regions, rules, 10.0, spacing);
        // 10 s on, the round's 9.99 µs made it due at 9.99 s: the recount's
        // own microsecond or more would put it past now. The last rung of
        // the ladder was at 9 s, the next is at 16 s.
        tracker.last_collection = Some(Instant::now() - std::time::Duration::from_secs(10));
        (tracker.round_seconds, tracker.last_peek) = (9.99e-6, 9.0);
        tracker.maybe_collect(&regions, rules, 10.0, spacing);
        assert_eq!(tracker.report.collections, 2, "collected after its recount");
        assert_eq!(tracker.report.waited_for, WaitedFor { cpu: 1, ..WaitedFor::default() });
        assert!((0.01..0.1).contains(&tracker.report.late_seconds), "due at 9.99 s, collected at 10 s");
    }

    #[test]
    fn a_collection_waits_for_the_faults_the_peeks_counted() {
        let Some((mut tracker, mut memory, offset)) = tracker_and_memory() else { return };
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        let spacing = Spacing { max_fault_fraction: 0.1, min_seconds: 0.5, max_cpu_fraction: 1.0 };
        tracker.maybe_collect(&regions, |_| Rules::new(1.0, 10.0, 1.0), 10.0, spacing);
        tracker.fault_cost = FaultCost { recent: VecDeque::from([0.1]) };
        tracker.round_seconds = 0.0;
        assert_eq!(tracker.wait(spacing, 0.0), (0.5, Limit::ScanInterval), "nothing written yet");
        for page in [1, 3, 4] {
            memory[offset + page * PAGE] = 2;
        }
        tracker.peek(|| 0.001);
        // Three faults of 0.1 s each within 10% of the program's time: 3 s.
        assert_eq!(tracker.written_since, 3);
        let (wait, limit) = tracker.wait(spacing, tracker.round_seconds);
        assert!((wait - 3.0).abs() < 1e-9);
        assert_eq!(limit, Limit::Faults);
        let due = tracker.next_look(spacing).unwrap().duration_since(tracker.last_collection.unwrap());
        assert!((due.as_secs_f64() - 0.002).abs() < 1e-6, "the next rung comes first: {due:?}");
    }
}
