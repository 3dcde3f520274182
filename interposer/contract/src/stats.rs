//! What an interposer reports: the `stats` reply of the control protocol,
//! read by the node agent (status, metrics) and `python -m pytier stats`.
//! Readers fill in what a reply leaves out and ignore what they do not know,
//! so an agent and an interposer of neighbouring releases understand each
//! other's stats.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::settings::{Mode, Settings};

/// An object's or a page's temperature class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Class {
    Hot,
    Warm,
    Cold,
}

impl Class {
    pub const ALL: [Class; 3] = [Class::Hot, Class::Warm, Class::Cold];

    /// The hotter of two classes.
    pub fn hotter(self, other: Class) -> Class {
        match (self, other) {
            (Class::Hot, _) | (_, Class::Hot) => Class::Hot,
            (Class::Warm, _) | (_, Class::Warm) => Class::Warm,
            _ => Class::Cold,
        }
    }
}

/// Upper bounds (exclusive) of the temperature histogram's buckets, in
/// observed uses; the last bucket, 32 and up, has none.
pub const HISTOGRAM_UPPER_BOUNDS: [f64; 9] = [0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0];

/// Everything one `stats` request returns.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    /// Whether tracking runs; `reason` says why not.
    pub active: bool,
    pub reason: Option<String>,
    /// `major.minor` of the interpreter.
    pub python: String,
    /// The settings in force.
    pub config: Option<Settings>,
    /// Scan cycles completed.
    pub passes: u64,
    pub uptime_seconds: f64,
    /// CPU time of the scanner thread, in all and as a share of uptime.
    pub scan_seconds_total: f64,
    pub scanner_cpu_fraction: f64,
    /// Time the program's own threads held the GIL for pytier (start-up only:
    /// the scanner never takes it).
    pub gil_seconds_total: f64,
    /// Arenas that existed at start (found by their pool headers).
    pub early_arenas: u64,
    /// Arenas the program freed while the scanner was reading them in place:
    /// each was kept mapped until the scanner moved on, then freed.
    pub deferred_arena_frees: u64,
    /// The control socket's path; `socketError` says why it stopped
    /// answering, if it did (the program closed its descriptor, ...).
    pub socket: Option<String>,
    pub socket_error: Option<String>,
    /// The last complete scan cycle.
    pub last: Option<PassReport>,
}

/// One complete scan cycle and the placement round after it.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PassReport {
    pub arenas: u64,
    pub pools: u64,
    /// Blocks in use in the scanned pools, and their bytes.
    pub used_blocks: u64,
    pub used_bytes: u64,
    /// Objects recognised (in pools and big blocks), by class.
    pub objects: ByClass,
    pub bytes: ByClass,
    /// Share of the heap's bytes (`heap_bytes`) whose temperature is known.
    pub coverage: f64,
    /// 4 KiB pages holding objects, pages holding a hot one, and the bytes of
    /// cold objects sitting on hot pages (what page-level tiering keeps in DRAM
    /// for nothing).
    pub pages: u64,
    pub hot_pages: u64,
    pub cold_bytes_on_hot_pages: u64,
    /// Objects by temperature, buckets of [`HISTOGRAM_UPPER_BOUNDS`].
    pub histogram: [u64; 10],
    pub top_types_by_cold_bytes: Vec<TypeBytes>,
    pub top_types_by_hot_bytes: Vec<TypeBytes>,
    /// Time spent scanning in this cycle, its slices and the longest one (in
    /// the scanner thread's CPU time, so a wait for a busy core is not
    /// counted), and the wall-clock time from its start to its end.
    pub scan_seconds: f64,
    pub slices: u64,
    pub longest_slice_seconds: f64,
    pub cycle_seconds: f64,
    /// Bytes of the heap read: arenas read in place (each pool up to its
    /// last block ever used), early arenas copied whole.
    pub bytes_read: u64,
    /// Pools not read: none of their pages was written since their last
    /// read, which found every object in them stone cold (or the pool free),
    /// so a read would find the same; that reading is counted again.
    pub pools_unread: u64,
    pub read_errors: u64,
    /// Memory the temperature table itself takes.
    pub table_bytes: u64,
    /// Page temperatures from page writes, as of their last collection.
    pub page_writes: PageReport,
    /// Allocations too big for pymalloc (the allocator view).
    pub big_blocks: BigReport,
    /// Bytes in pymalloc blocks and big blocks: the heap the coverage is of.
    pub heap_bytes: u64,
    /// Where the heap's pages are and what moved (after this cycle).
    pub placement: PlacementReport,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ByClass {
    pub hot: u64,
    pub warm: u64,
    pub cold: u64,
}

impl ByClass {
    pub fn add(&mut self, class: Class, n: u64) {
        *self.of_mut(class) += n;
    }

    pub fn of(&self, class: Class) -> u64 {
        match class {
            Class::Hot => self.hot,
            Class::Warm => self.warm,
            Class::Cold => self.cold,
        }
    }

    fn of_mut(&mut self, class: Class) -> &mut u64 {
        match class {
            Class::Hot => &mut self.hot,
            Class::Warm => &mut self.warm,
            Class::Cold => &mut self.cold,
        }
    }

    pub fn total(&self) -> u64 {
        self.hot + self.warm + self.cold
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TypeBytes {
    #[serde(rename = "type")]
    pub type_name: String,
    pub objects: u64,
    pub bytes: u64,
}

/// What the allocator view saw in one cycle.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct BigReport {
    pub blocks: u64,
    pub bytes: u64,
    /// Blocks holding an object (the rest are buffers: list items, dict tables).
    pub objects: ByClass,
    pub object_bytes: ByClass,
    /// Buffers whose owner was found (list item arrays, dict tables), by the
    /// owner's class.
    pub owned_bytes: ByClass,
    /// Dict tables in use whose pages took the heat of the keys and values
    /// their entries point at, and `OrderedDict` node arrays that took their
    /// nodes' (see the interposer's `referents`); other buffers have their
    /// owner's heat spread over their pages.
    pub tables_by_entries: u64,
    /// Blocks the table had no room for since start.
    pub dropped: u64,
}

/// Page-write tracking as of the last collection.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PageReport {
    /// Null when on; else why it is off.
    pub off_reason: Option<String>,
    pub watched_pages: u64,
    /// Pages by class (hot: written often lately; cold: not for a long time).
    /// An arena's pages get a class at its second collection: the first, at
    /// registration, is a baseline that counts every page as written.
    pub pages: ByClass,
    /// Written pages found by the last collection, and collections so far.
    pub last_written_pages: u64,
    pub collections: u64,
    /// Measured cost of one written page to the program, and the estimated
    /// total the program has paid.
    pub fault_seconds_per_page: f64,
    pub fault_seconds_total: f64,
    pub collect_seconds: f64,
    /// Arenas registered for write tracking so far (a registration's first
    /// collection is a baseline, so an arena registered again loses its
    /// pages' classes for a collection), and arenas that could not be.
    pub registrations: u64,
    pub unwatchable_arenas: u64,
    /// What each collection so far waited for, and how late after that it
    /// came, all told: a collection that came late was held up by the
    /// scanner's other work.
    pub waited_for: WaitedFor,
    pub late_seconds: f64,
    /// CPU seconds the collections and the peeks between them took.
    pub cpu_seconds: f64,
}

/// Collections by the limit that set their wait: the faults the program
/// pays for the pages written (`maxFaultFraction`), the tracker's own CPU
/// (its share of `maxCpuFraction`), or the scan interval.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct WaitedFor {
    pub faults: u64,
    pub cpu: u64,
    pub scan_interval: u64,
}

/// Placement as of the last round. Page counts are 4 KiB pages.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PlacementReport {
    /// Null when placing (or observing); else why not.
    pub off_reason: Option<String>,
    pub mode: Mode,
    pub dram_nodes: Vec<i32>,
    pub cxl_nodes: Vec<i32>,
    pub budget_bytes: u64,
    /// Heap pages (arenas, big blocks and glibc's brk heap) and the bytes of them resident on
    /// each tier, from `move_pages` queries; `otherBytes` are on nodes in no tier.
    pub heap_pages: u64,
    pub dram_bytes: u64,
    pub cxl_bytes: u64,
    pub other_bytes: u64,
    /// Free memory on the DRAM node above its zones' high watermarks (and
    /// the protection that keeps user pages out of low zones): what
    /// promotions can fill without demoting first. Null when unknown.
    pub dram_room_bytes: Option<u64>,
    /// Pages the Policy wants on DRAM (the hottest, at most the budget).
    pub wanted_pages: u64,
    /// Share of the heap's page heat on its hottest pages up to the budget
    /// (placing, up to what the DRAM node can hold of ours when it fills
    /// first): the share of the program's heap accesses DRAM serves once
    /// every page is placed. Computed placing or not (without a CXL node it
    /// says what CXL would do); null before any page has heat.
    pub dram_heat_share: Option<f64>,
    /// Decided but not moved: rate-limited, or everything in `observe` mode.
    pub pending_promote_pages: u64,
    pub pending_demote_pages: u64,
    /// Wanted on DRAM but left on CXL this round for want of room: DRAM is
    /// at the budget and no page there has been unwanted for the hysteresis
    /// time to swap with.
    pub waiting_promote_pages: u64,
    /// Since start.
    pub promoted: MoveTotals,
    pub demoted: MoveTotals,
    pub rounds: u64,
    pub round_seconds: f64,
}

/// Pages moved in one direction since start.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MoveTotals {
    pub pages: u64,
    pub bytes: u64,
    pub failed_pages: u64,
    /// Failed pages by error (ENOMEM: the target node is full, ...).
    pub errors: BTreeMap<String, u64>,
}
