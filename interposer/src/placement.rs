//! Placement: after each scan cycle, asks the kernel where every heap page is,
//! lets the Policy decide, and has the Mover carry it out (in `enforce` mode)
//! within the migration rate limit. Reports bytes per tier as the kernel
//! sees them, not as bookkeeping says they should be.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use pytier_contract::Settings;
use pytier_contract::settings::Mode;
pub use pytier_contract::stats::{MoveTotals, PlacementReport};

use crate::arenas::{ARENA_SIZE, ARENAS, PREFERRED_NODE};
use crate::large::BIG_BLOCKS;
use crate::mover::{self, Moved};
use crate::numa::{self, Topology};
use crate::policy::{self, Decisions, Page, Policy, Tier};

const PAGE: u64 = 4096;
/// How often an interposer that does not place (one tier) still reports where
/// its heap resides: a `move_pages` query of every heap page is not free.
const OFF_QUERY_EVERY: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Placement {
    policy: Policy,
    /// Arenas given an explicit memory policy (see `claim_arenas`).
    claimed: HashSet<usize>,
    last_round: Option<Instant>,
    /// When placement is off, the last time the heap's residency was queried.
    last_off_query: Option<Instant>,
    /// The node the scanner thread's own allocations prefer, once set.
    own_memory_node: Option<Option<i32>>,
    report: PlacementReport,
    status: Vec<i32>,
}

/// Adds what one move reported to the totals.
fn add(totals: &mut MoveTotals, moved: &Moved) {
    totals.pages += moved.pages;
    totals.bytes += moved.pages * PAGE;
    totals.failed_pages += moved.failed;
    for (e, n) in &moved.errors {
        *totals.errors.entry(e.clone()).or_default() += n;
    }
}

impl Placement {
    /// Gives every arena an explicit memory policy (prefer DRAM), as new
    /// arenas get in the allocator hook. Besides placing future pages, this
    /// takes the arenas out of the kernel's NUMA balancing, which only scans
    /// memory under the default policy: otherwise it would move demoted pages
    /// back to the CPUs' node as soon as anything (our own scans included)
    /// reads them. Existing pages do not move.
    fn claim_arenas(&mut self, node: i32) {
        let size = ARENA_SIZE.load(Ordering::Relaxed);
        let arenas: HashSet<usize> = ARENAS.snapshot().into_iter().collect();
        self.claimed.retain(|a| arenas.contains(a));
        for arena in arenas {
            if self.claimed.insert(arena) {
                let _ = mover::prefer_node(arena, size, node);
            }
        }
    }

    /// Puts pytier's own memory (its tables, which the scanner thread
    /// allocates and alone reads) on CXL while placing: the program never
    /// touches it, and it would otherwise sit on DRAM beside the budget (some
    /// 3.5 MiB for a 31 MiB heap). Call on the scanner thread, before it
    /// allocates: pages it touched already stay where they are. The table of
    /// big blocks, which the program's threads write, moves.
    pub fn place_own_memory(&mut self, config: &Settings) {
        let topology = Topology::discover(&config.tiers);
        self.place_own_memory_on(&topology, config.mode);
    }

    fn place_own_memory_on(&mut self, topology: &Topology, mode: Mode) {
        let placing = mode == Mode::Enforce && !topology.dram.is_empty();
        let node = topology.cxl.first().copied().filter(|_| placing);
        if self.own_memory_node != Some(node) {
            self.own_memory_node = Some(node);
            let _ = mover::prefer_node_for_this_thread(node);
            // The big-block table is written on the program's threads, where
            // it was first touched: 1 MiB on DRAM, most of its pages written
            // once its hash slots spread (all of them at the end of zipf-write).
            let (table, size) = BIG_BLOCKS.span();
            let _ = mover::bind_range(table, size, node);
        }
    }

    /// One round over the heap pages and their heat from the last cycle.
    pub fn round(&mut self, heat: &[(usize, f32)], heap_bytes: u64, config: &Settings) -> &PlacementReport {
        let started = Instant::now();
        let topology = Topology::discover(&config.tiers);
        let report = &mut self.report;
        report.mode = config.mode;
        report.dram_nodes = topology.dram.clone();
        report.cxl_nodes = topology.cxl.clone();
        report.off_reason = match (topology.dram.first(), topology.cxl.first()) {
            (None, _) => Some("no DRAM NUMA node (set tiers.dramNodes)".into()),
            (_, None) => Some("no CXL NUMA node: every node with memory has CPUs (set tiers.cxlNodes)".into()),
            _ => None,
        };
        let off = report.off_reason.is_some();
        let enforce = !off && config.mode == Mode::Enforce;
        // New arenas prefer DRAM from their first touch.
        PREFERRED_NODE.store(if enforce { topology.dram[0] } else { -1 }, Ordering::Relaxed);
        if enforce {
            self.claim_arenas(topology.dram[0]);
        }
        self.place_own_memory_on(&topology, config.mode);

        let report = &mut self.report;
        report.heap_pages = heat.len() as u64;
        report.budget_bytes = config.dram_budget.bytes_for(heap_bytes);
        report.dram_heat_share =
            policy::dram_heat_share(heat.iter().map(|&(_, h)| h).collect(), (report.budget_bytes / PAGE) as usize);

        // Where the heap is, placing or not (with one tier it is all on it).
        // Off, that is only for the stats: at most every OFF_QUERY_EVERY.
        if off {
            if self.last_off_query.is_some_and(|at| at.elapsed() < OFF_QUERY_EVERY) {
                return &self.report;
            }
            self.last_off_query = Some(Instant::now());
        }
        let addrs: Vec<usize> = heat.iter().map(|&(addr, _)| addr).collect();
        if let Err(e) = mover::where_are(&addrs, &mut self.status) {
            self.report.off_reason = Some(format!("move_pages cannot query page locations: {e}"));
            return &self.report;
        }
        let mut pages = Vec::with_capacity(addrs.len());
        let (mut dram, mut cxl, mut other) = (0, 0, 0);
        for (&(addr, heat), &node) in heat.iter().zip(&self.status) {
            let tier = if topology.dram.contains(&node) {
                dram += 1;
                Tier::Dram
            } else if topology.cxl.contains(&node) {
                cxl += 1;
                Tier::Cxl
            } else {
                other += (node >= 0) as u64;
                continue; // not resident, or on a node in no tier
            };
            pages.push(Page { addr, heat, tier });
        }
        let report = &mut self.report;
        (report.dram_bytes, report.cxl_bytes, report.other_bytes) = (dram * PAGE, cxl * PAGE, other * PAGE);
        if report.off_reason.is_some() {
            return &self.report;
        }

        let now = Instant::now();
        let elapsed = self.last_round.map_or(1.0, |at| now.duration_since(at).as_secs_f64().min(1.0));
        self.last_round = Some(now);
        let room = numa::room_pages(topology.dram[0]);
        report.dram_room_bytes = room.map(|pages| pages * PAGE);
        // A DRAM node that fills before the budget does holds less of ours.
        let capacity = room.map_or(u64::MAX, |room| dram + room);
        if capacity < report.budget_bytes / PAGE {
            report.dram_heat_share = policy::dram_heat_share(heat.iter().map(|&(_, h)| h).collect(), capacity as usize);
        }
        let settings = policy::Settings {
            budget_pages: (report.budget_bytes / PAGE) as usize,
            promote: config.migration.promote,
            demote: config.migration.demote,
            hysteresis: Duration::from_secs(config.migration.hysteresis_seconds as u64),
            dram_room_pages: room.map_or(usize::MAX, |p| p as usize),
            max_pages: if enforce {
                (config.migration.max_bytes_per_second as f64 * elapsed / PAGE as f64) as usize
            } else {
                0
            },
        };
        let Decisions { promote, demote, pending_promote, pending_demote, waiting_promote, wanted } =
            self.policy.decide(&pages, &settings, now);
        // Demote first: it makes the room promotions fill.
        let demoted = mover::move_to(&demote, topology.cxl[0]);
        let promoted = mover::move_to(&promote, topology.dram[0]);
        self.policy.moved(&demote, now);
        self.policy.moved(&promote, now);

        let report = &mut self.report;
        report.wanted_pages = wanted as u64;
        report.pending_promote_pages = pending_promote as u64;
        report.pending_demote_pages = pending_demote as u64;
        report.waiting_promote_pages = waiting_promote as u64;
        add(&mut report.demoted, &demoted);
        add(&mut report.promoted, &promoted);
        report.rounds += 1;
        report.round_seconds = started.elapsed().as_secs_f64();
        &self.report
    }
}
