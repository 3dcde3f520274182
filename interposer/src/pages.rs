//! Page temperatures: how often each 4 KiB page of each arena was written,
//! from `pagewrites`, within a budget for the faults that costs the program.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde::Serialize;

use crate::arenas::ARENA_FREES;
use crate::pagewrites::{DEFAULT_FAULT_SECONDS, PAGE, PageWrites};
use crate::scanner::ByClass;
use crate::temperature::{Class, Rules, Temperature};

pub struct PageTracker {
    writes: Result<PageWrites, String>,
    arenas: BTreeMap<usize, ArenaPages>,
    /// What one written page costs the program (a write-protect fault).
    fault_seconds: f64,
    last_collection: Option<Instant>,
    last_written: u64,
    frees_seen: u64,
    report: PageReport,
}

struct ArenaPages {
    temps: Vec<Temperature>,
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
            frees_seen: 0,
            report,
        }
    }

    /// Collects page writes for these arena regions when the fault budget
    /// allows: the program pays about `written pages x fault cost` per
    /// collection, so collections are spaced to keep that under
    /// `max_fault_fraction` of its time. 0 turns tracking off.
    pub fn maybe_collect(
        &mut self,
        regions: &[(usize, usize)],
        rules_for: impl Fn(f64) -> Rules,
        max_fault_fraction: f64,
    ) {
        let Ok(writes) = &mut self.writes else { return };
        if max_fault_fraction <= 0.0 {
            self.report.off_reason = Some("turned off (maxFaultFraction is 0)".into());
            return;
        }
        self.report.off_reason = None;
        if self.last_collection.is_none() {
            self.fault_seconds = writes.measure_fault_seconds();
            self.report.fault_seconds_per_page = self.fault_seconds;
        }
        let due = self.last_collection.is_none_or(|at| {
            at.elapsed().as_secs_f64() >= self.last_written as f64 * self.fault_seconds / max_fault_fraction
        });
        if !due {
            return;
        }
        let started = Instant::now();
        let rules = rules_for(self.last_collection.map_or(1.0, |at| at.elapsed().as_secs_f64()));
        self.last_collection = Some(started);
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
            let arena = self.arenas.entry(base).or_insert(ArenaPages { temps: Vec::new(), unwatchable: false });
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
            }
            written.clear();
            written.resize(pages, false);
            let Ok(n) = writes.take_written(base, len, |page| written[(page - base) / PAGE] = true) else { continue };
            report.last_written_pages += n as u64;
            for (temp, was_written) in arena.temps.iter_mut().zip(&written) {
                let class = temp.record(*was_written, &rules);
                report.pages.add(class, 1);
            }
            report.watched_pages += pages as u64;
        }
        self.last_written = report.last_written_pages;
        report.fault_seconds_total += report.last_written_pages as f64 * self.fault_seconds;
        report.collect_seconds = started.elapsed().as_secs_f64();
        self.report = report;
    }

    pub fn report(&self) -> &PageReport {
        &self.report
    }

    /// The write temperature of the page holding `addr` (0 when not watched).
    pub fn degrees_at(&self, addr: usize) -> f32 {
        let Some((base, arena)) = self.arenas.range(..=addr).next_back() else { return 0.0 };
        arena.temps.get((addr - base) / PAGE).map_or(0.0, |t| t.degrees() as f32)
    }

    /// The class of the page holding `addr`, if it is watched.
    pub fn class_of(&self, addr: usize, rules: &Rules) -> Option<Class> {
        let (base, arena) = self.arenas.range(..=addr).next_back()?;
        let temp = arena.temps.get((addr - base) / PAGE)?;
        temp.is_present().then(|| temp.class(rules))
    }
}
