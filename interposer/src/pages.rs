//! Page temperatures: how often each 4 KiB page of each arena was written,
//! from `pagewrites`, within a budget for the faults that costs the program.
//!
//! A collection (which protects the pages again, so costs faults) only says
//! whether a page was written since the last one; with collections seconds
//! apart, nearly every page of a busy heap was. Between two collections the
//! tracker therefore *peeks* (reads the written bits without protecting, so
//! at no cost to the program) 2, 4, 8, ... ms after the collection. The
//! sooner after protection a page is first written, the more often the
//! program uses it: that delay ranks pages by access rate, as hint-fault
//! latency does for the kernel's memory tiering. It feeds placement as the
//! page's *write heat*; classes keep counting collections.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use crate::arenas::ARENA_FREES;
use crate::pagewrites::{DEFAULT_FAULT_SECONDS, PAGE, PageWrites};
use crate::scanner::ByClass;
use crate::temperature::{Class, Rules, Temperature};

/// The first peek after a collection, in seconds; each later one waits
/// twice as long, up to `MAX_PEEKS` or the next collection.
const PEEK_BASE_SECONDS: f64 = 0.002;
const MAX_PEEKS: u8 = 16;

pub struct PageTracker {
    writes: Result<PageWrites, String>,
    arenas: BTreeMap<usize, ArenaPages>,
    /// What one written page costs the program (a write-protect fault).
    fault_seconds: f64,
    last_collection: Option<Instant>,
    last_written: u64,
    /// Peeks done since the last collection.
    peeks: u8,
    frees_seen: u64,
    report: PageReport,
}

struct ArenaPages {
    temps: Vec<Temperature>,
    /// The peek (1..=MAX_PEEKS) that first saw each page written since the
    /// last collection; 0 while none has.
    first_seen: Vec<u8>,
    /// Decayed sum, per collection, of the first peek's delay over the delay
    /// until the page was first seen written: 1 for a page written before
    /// the first peek, every time.
    write_heat: Vec<f32>,
    /// Registration failed (not anonymous memory): no temperatures.
    unwatchable: bool,
}

/// Page-write tracking as of the last collection.
#[derive(Debug, Default, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PageReport {
    /// Null when on; else why it is off.
    pub off_reason: Option<String>,
    pub watched_pages: u64,
    /// Pages by class (hot: written often lately; cold: not for a long time).
    pub pages: ByClass,
    /// Written pages found by the last collection, and collections so far.
    pub last_written_pages: u64,
    pub collections: u64,
    /// Measured cost of one written page to the program, and the estimated
    /// total the program has paid.
    pub fault_seconds_per_page: f64,
    pub fault_seconds_total: f64,
    pub collect_seconds: f64,
}

impl Default for PageTracker {
    fn default() -> Self {
        Self::new()
    }
}

impl PageTracker {
    pub fn new() -> PageTracker {
        let writes = PageWrites::open();
        let report = PageReport { off_reason: writes.as_ref().err().cloned(), ..Default::default() };
        PageTracker {
            writes,
            arenas: BTreeMap::new(),
            fault_seconds: DEFAULT_FAULT_SECONDS,
            last_collection: None,
            last_written: 0,
            peeks: 0,
            frees_seen: 0,
            report,
        }
    }

    /// Collects page writes for these arena regions when the fault budget
    /// allows: the program pays about `written pages x fault cost` per
    /// collection, so collections are spaced to keep that under
    /// `max_fault_fraction` of its time. 0 turns tracking off.
    /// `half_life_s` is the write heat's, as the temperatures'.
    pub fn maybe_collect(
        &mut self,
        regions: &[(usize, usize)],
        rules_for: impl Fn(f64) -> Rules,
        half_life_s: f64,
        max_fault_fraction: f64,
    ) {
        if self.writes.is_err() {
            return;
        }
        if max_fault_fraction <= 0.0 {
            self.report.off_reason = Some("turned off (maxFaultFraction is 0)".into());
            return;
        }
        self.report.off_reason = None;
        if self.last_collection.is_none()
            && let Ok(writes) = &mut self.writes
        {
            self.fault_seconds = writes.measure_fault_seconds();
            self.report.fault_seconds_per_page = self.fault_seconds;
        }
        let interval = self.interval(max_fault_fraction);
        let since = self.last_collection.map(|at| at.elapsed().as_secs_f64());
        match since {
            Some(since) if since < interval => {
                // The latest peek due: one woken late skips those it missed.
                let due = (1..=MAX_PEEKS).rev().find(|&k| since >= peek_offset(k)).unwrap_or(0);
                if due > self.peeks {
                    self.peek(due);
                }
                return;
            }
            _ => {}
        }
        let Ok(writes) = &mut self.writes else { return };
        let started = Instant::now();
        let rules = rules_for(since.unwrap_or(1.0));
        let decay = 0.5f32.powf((since.unwrap_or(1.0) / half_life_s.max(1e-3)) as f32);
        self.last_collection = Some(started);
        self.peeks = 0;
        let frees = ARENA_FREES.load(Ordering::Relaxed);
        let recheck = frees != self.frees_seen;
        self.frees_seen = frees;

        // Forget arenas that are gone.
        let present: std::collections::HashSet<usize> = regions.iter().map(|(base, _)| *base).collect();
        self.arenas.retain(|base, _| present.contains(base));
        let mut report = PageReport {
            collections: self.report.collections + 1,
            fault_seconds_per_page: self.fault_seconds,
            fault_seconds_total: self.report.fault_seconds_total,
            ..Default::default()
        };
        let mut written = Vec::new();
        for &(base, len) in regions {
            let pages = len / PAGE;
            let arena = self.arenas.entry(base).or_insert(ArenaPages {
                temps: Vec::new(),
                first_seen: Vec::new(),
                write_heat: Vec::new(),
                unwatchable: false,
            });
            if arena.unwatchable {
                continue;
            }
            if arena.temps.is_empty() || (recheck && !writes.is_watched(base, len)) {
                // New (or recycled) arena: watch it; its first collection is a baseline.
                if writes.watch(base, len).is_err() {
                    arena.unwatchable = true;
                    continue;
                }
                arena.temps = vec![Temperature::default(); pages];
                arena.first_seen = vec![0; pages];
                arena.write_heat = vec![0.0; pages];
            }
            written.clear();
            written.resize(pages, false);
            let Ok(n) = writes.take_written(base, len, |page| written[(page - base) / PAGE] = true) else { continue };
            report.last_written_pages += n as u64;
            for (i, was_written) in written.iter().enumerate() {
                let class = arena.temps[i].record(*was_written, &rules);
                report.pages.add(class, 1);
                let seen = std::mem::take(&mut arena.first_seen[i]);
                let heat = &mut arena.write_heat[i];
                *heat *= decay;
                if *was_written {
                    let first_seen_after = if seen == 0 { since.unwrap_or(1.0) } else { peek_offset(seen) };
                    *heat += (PEEK_BASE_SECONDS / first_seen_after.max(PEEK_BASE_SECONDS)) as f32;
                }
            }
            report.watched_pages += pages as u64;
        }
        self.last_written = report.last_written_pages;
        report.fault_seconds_total += report.last_written_pages as f64 * self.fault_seconds;
        report.collect_seconds = started.elapsed().as_secs_f64();
        self.report = report;
    }

    /// Notes, for every watched page written since the last collection and
    /// not seen yet, that this peek saw it first. Protects nothing: free for
    /// the program.
    fn peek(&mut self, peek: u8) {
        let Ok(writes) = &mut self.writes else { return };
        self.peeks = peek;
        for (&base, arena) in self.arenas.iter_mut().filter(|(_, a)| !a.first_seen.is_empty()) {
            let len = arena.first_seen.len() * PAGE;
            let _ = writes.peek_written(base, len, |page| {
                let seen = &mut arena.first_seen[(page - base) / PAGE];
                if *seen == 0 {
                    *seen = peek;
                }
            });
        }
    }

    /// Seconds between collections: the program pays about `written pages x
    /// fault cost` per collection, which must stay under `max_fault_fraction`.
    fn interval(&self, max_fault_fraction: f64) -> f64 {
        self.last_written as f64 * self.fault_seconds / max_fault_fraction
    }

    /// When the next peek is due, if page writes are tracked.
    pub fn next_peek(&self, max_fault_fraction: f64) -> Option<Instant> {
        let at = self.last_collection?;
        if self.writes.is_err() || max_fault_fraction <= 0.0 || self.peeks >= MAX_PEEKS {
            return None;
        }
        let offset = peek_offset(self.peeks + 1);
        let interval = self.interval(max_fault_fraction);
        (offset < interval).then(|| at + std::time::Duration::from_secs_f64(offset))
    }

    pub fn report(&self) -> &PageReport {
        &self.report
    }

    /// The write heat of the page holding `addr` (0 when not watched).
    pub fn write_heat_at(&self, addr: usize) -> f32 {
        let Some((base, arena)) = self.arenas.range(..=addr).next_back() else { return 0.0 };
        arena.write_heat.get((addr - base) / PAGE).copied().unwrap_or(0.0)
    }

    /// The class of the page holding `addr`, if it is watched.
    pub fn class_of(&self, addr: usize, rules: &Rules) -> Option<Class> {
        let (base, arena) = self.arenas.range(..=addr).next_back()?;
        let temp = arena.temps.get((addr - base) / PAGE)?;
        temp.is_present().then(|| temp.class(rules))
    }
}

/// Seconds after a collection at which peek `k` (1..=MAX_PEEKS) looks.
fn peek_offset(k: u8) -> f64 {
    PEEK_BASE_SECONDS * 2f64.powi(k as i32 - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sooner_a_page_is_written_after_a_collection_the_more_write_heat_it_gains() {
        let mut tracker = PageTracker::new();
        if let Err(reason) = &tracker.writes {
            assert_eq!(std::env::var("PYTIER_NO_PAGE_WRITES").as_deref(), Ok("1"), "{reason}");
            return;
        }
        let mut memory = vec![1u8; 10 * PAGE];
        let offset = memory.as_ptr().align_offset(PAGE);
        let start = memory.as_ptr() as usize + offset;
        let regions = [(start, 8 * PAGE)];
        let rules = |_| Rules::new(1.0, 10.0, 1.0);
        // A collection now, whatever the fault budget says; no decay to speak of.
        let collect = |t: &mut PageTracker| {
            t.last_collection = None;
            t.maybe_collect(&regions, rules, 1e9, 1.0);
        };
        let mut write = |page: usize| memory[offset + page * PAGE + 7] = 2;

        collect(&mut tracker); // registers: every page counts as written once
        write(2);
        tracker.peek(1);
        write(5);
        write(2);
        tracker.peek(3);
        write(6);
        collect(&mut tracker);

        let heat: Vec<f32> = (0..8).map(|p| tracker.write_heat_at(start + p * PAGE)).collect();
        // Only the collections saw these (1 s apart, as `collect` pretends): the base.
        let base = PEEK_BASE_SECONDS as f32;
        let want = [base, base, base + 1.0, base, base, base + 0.25, 2.0 * base, base];
        for (page, (got, want)) in heat.iter().zip(want).enumerate() {
            assert!((got - want).abs() < 1e-6, "page {page}: heat {got}, want {want} (all: {heat:?})");
        }
    }
}
