//! The Tracker: a cycle copies every known pool (without the GIL), finds the
//! live objects in it, feeds their reference counts to the temperature table,
//! and summarises what it saw. It also collects the arenas' page writes
//! (`pages`).
//!
//! A cycle runs in slices of whole arenas, each bounded by a time budget, so
//! the scanner's CPU use is smooth and its budget can be kept on any heap.
//! Arenas are visited oldest first: long-lived objects are the ones placement
//! is about, and an arena born during a cycle waits for the next one (its
//! objects are young and most will be gone by then).

use std::time::{Duration, Instant};

use pytier_contract::Settings;
pub use pytier_contract::stats::{BigReport, ByClass, PassReport, TypeBytes};

use crate::arenas::{ARENA_SIZE, ARENAS, EARLY_ARENAS};
use crate::large::BIG_BLOCKS;
use crate::layout::{Layout, PoolHeader, arena_index};
use crate::memory::{read_each, read_self};
use crate::objects::{AddrMap, Found, TypeCache};
use crate::pages::{PageReport, PageTracker, Spacing};
use crate::temperature::{Class, Rules, Slot};

const PAGE: usize = 4096;
/// How much a page's write heat weighs against its objects' temperatures: a
/// page written before the first peek of every collection weighs as much as
/// 64 of its objects seen changing every cycle. Writes see every use, plain
/// reads included; reference-count snapshots miss most of them.
const WRITE_HEAT_WEIGHT: f32 = 64.0;
/// Beyond the first passes, a pass looks for types it does not know yet in
/// one arena of this many (a different one each pass): most of what fails to
/// be a known type is a block holding no object, and checking its words is a
/// good part of a pass. An object of a new type is found within this many
/// passes.
const DISCOVER_EVERY: u64 = 8;
/// The first passes look for types everywhere: most types are learnt then.
const DISCOVERY_PASSES: u64 = 3;
/// The share of the scanner's CPU budget page-write collections and peeks
/// may take; slices get what they leave.
const PAGE_WRITES_CPU_SHARE: f64 = 0.25;

/// Temperature state of one pool.
struct PoolState {
    szidx: u32,
    slots: Vec<Slot>,
    /// The pass that last saw this pool; older pools are forgotten.
    seen: u64,
}

pub struct Tracker {
    layout: Layout,
    types: TypeCache,
    pools: AddrMap<PoolState>,
    /// Cycles begun so far.
    pass: u64,
    buf: Vec<u8>,
    pages: PageTracker,
    arenas: AddrMap<ArenaState>,
    /// Temperatures of objects in big blocks (see `large`), by object address
    /// (`id()`); entries not seen in a cycle are dropped at its end.
    big: AddrMap<BigState>,
    cycle: Option<Cycle>,
    /// Heat of every heap page as of the last complete cycle (see `Cycle::heat`).
    heat: AddrMap<f32>,
}

struct BigState {
    slot: Slot,
    /// The cycle that last saw it.
    seen: u64,
    scanned_at: Instant,
}

/// Big blocks are read in batches of this many.
const BIG_BATCH: usize = 1024;
/// Bytes read from the start of a big block: enough for the headers of an
/// object after a GC header and a managed-dict preheader.
const BIG_HEAD: usize = 64;

/// A known arena: `len` bytes at `base`; an early arena's pools must carry
/// `index` (its extent is not known exactly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    base: usize,
    len: usize,
    index: Option<u32>,
}

struct ArenaState {
    /// The cycle that first saw it: the order of visits.
    born: u64,
    /// When its pools were last read, for their temperatures' decay.
    scanned_at: Option<Instant>,
}

/// A cycle in progress.
struct Cycle {
    queue: Vec<Region>,
    next: usize,
    big_queue: Vec<(usize, usize)>,
    big_next: usize,
    /// Big blocks by address, and the hottest class of an object seen owning
    /// each (a list's item array, a dict's table), found while scanning pools.
    big_index: AddrMap<usize>,
    owner_class: Vec<Option<Class>>,
    /// And the highest temperature among those owners.
    owner_heat: Vec<f32>,
    /// Every heap page seen (arena pages and pages of big blocks) and its heat:
    /// the summed temperatures of the objects starting on it (a buffer takes
    /// its owner's), plus the page's own write temperature when tracked.
    heat: AddrMap<f32>,
    started: Instant,
    report: PassReport,
    per_type: TypeTallies,
}

/// Objects and bytes by class, per type (by `Found::type_index`), within one pass.
#[derive(Default)]
struct TypeTallies(Vec<(ByClass, ByClass)>);

impl TypeTallies {
    fn of(&mut self, type_index: u32) -> &mut (ByClass, ByClass) {
        let i = type_index as usize;
        if i >= self.0.len() {
            self.0.resize(i + 1, Default::default());
        }
        &mut self.0[i]
    }
}

/// Per-page tally within one pool.
#[derive(Default, Clone, Copy)]
struct PageTally {
    objects: bool,
    hot: bool,
    cold_bytes: u64,
}

impl Tracker {
    pub fn new(layout: Layout, type_type: usize) -> Tracker {
        Tracker {
            layout,
            types: TypeCache::new(type_type),
            pools: AddrMap::default(),
            pass: 0,
            buf: Vec::new(),
            pages: PageTracker::new(),
            arenas: AddrMap::default(),
            big: AddrMap::default(),
            cycle: None,
            heat: AddrMap::default(),
        }
    }

    /// The class of the object at `addr`, if the last pass recognised one there.
    pub fn class_of(&self, addr: usize, rules: &Rules) -> Option<Class> {
        if let Some(big) = self.big.get(&addr) {
            return big.slot.is_present().then(|| big.slot.class(rules));
        }
        let pool = self.layout.pool_of(addr);
        let state = self.pools.get(&pool)?;
        let offset = (addr - pool).checked_sub(self.layout.pool_header_size)?;
        let slot = state.slots.get(offset / self.layout.block_size(state.szidx))?;
        slot.is_present().then(|| slot.class(rules))
    }

    /// Every known arena as (start, length, the arena index its pools must
    /// carry). An early arena's extent is not known exactly: read as much as
    /// an arena can span and keep the pools that carry its index.
    fn regions(&self) -> Vec<Region> {
        let arena_size = ARENA_SIZE.load(std::sync::atomic::Ordering::Relaxed);
        let mut regions: Vec<Region> =
            ARENAS.snapshot().into_iter().map(|base| Region { base, len: arena_size, index: None }).collect();
        for first in EARLY_ARENAS.snapshot() {
            let mut header = [0u8; 48];
            if read_self(first, &mut header).ok() == Some(48) {
                regions.push(Region { base: first, len: self.layout.arena_size, index: arena_index(&header) });
            }
        }
        regions
    }

    /// Collects page writes if the fault budget allows (see `pages`). Cheap
    /// next to an object pass, so it runs on its own, more frequent, cadence.
    pub fn collect_page_writes(&mut self, config: &Settings) -> &PageReport {
        let spans: Vec<(usize, usize)> = self.regions().into_iter().map(|r| (r.base, r.len)).collect();
        let rules_for = |interval: f64| {
            Rules::new(config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64, interval)
        };
        let half_life = config.tracking.decay_half_life_seconds as f64;
        self.pages.maybe_collect(&spans, rules_for, half_life, spacing(config));
        self.pages.report()
    }

    /// When page writes should next be looked at (a peek or a collection).
    pub fn next_page_look(&self, config: &Settings) -> Option<Instant> {
        self.pages.next_look(spacing(config))
    }

    /// The class of the page holding `addr`, from page writes.
    pub fn page_class_of(&self, addr: usize, rules: &Rules) -> Option<Class> {
        self.pages.class_of(addr, rules)
    }

    /// Heap pages and their heat, as of the last complete cycle.
    pub fn page_heat(&self) -> &AddrMap<f32> {
        &self.heat
    }

    /// Whether a cycle is under way (the next slice continues it).
    pub fn in_cycle(&self) -> bool {
        self.cycle.is_some()
    }

    /// Scans arenas for about `budget` (at least one arena), beginning a cycle
    /// if none is under way. Returns the cycle's report when this slice ends it.
    pub fn scan_slice(&mut self, config: &Settings, budget: Duration) -> Option<PassReport> {
        let started = Instant::now();
        let cpu_started = thread_cpu_seconds();
        let mut cycle = match self.cycle.take() {
            Some(cycle) => cycle,
            None => self.begin_cycle(started),
        };
        let mut buf = std::mem::take(&mut self.buf);
        while started.elapsed() < budget {
            if let Some(&region) = cycle.queue.get(cycle.next) {
                cycle.next += 1;
                self.scan_region(region, config, &mut buf, &mut cycle);
            } else if cycle.big_next < cycle.big_queue.len() {
                self.scan_big_blocks(config, &mut buf, &mut cycle);
            } else {
                break;
            }
        }
        self.buf = buf;
        let cpu = thread_cpu_seconds() - cpu_started;
        let report = &mut cycle.report;
        report.scan_seconds += cpu;
        report.slices += 1;
        report.longest_slice_seconds = report.longest_slice_seconds.max(cpu);
        if cycle.next < cycle.queue.len() || cycle.big_next < cycle.big_queue.len() {
            self.cycle = Some(cycle);
            return None;
        }
        Some(self.finish_cycle(cycle))
    }

    fn begin_cycle(&mut self, now: Instant) -> Cycle {
        self.pass += 1;
        let mut queue = self.regions();
        self.types.new_pass(queue.iter().map(|r| (r.base, r.len)));
        let pass = self.pass;
        for region in &queue {
            self.arenas.entry(region.base).or_insert(ArenaState { born: pass, scanned_at: None });
        }
        let live: std::collections::HashSet<usize> = queue.iter().map(|r| r.base).collect();
        self.arenas.retain(|base, _| live.contains(base));
        queue.sort_by_key(|r| (self.arenas[&r.base].born, r.base));
        let report = PassReport { arenas: queue.len() as u64, ..Default::default() };
        let big_queue = BIG_BLOCKS.snapshot();
        let big_index = big_queue.iter().enumerate().map(|(i, (addr, _))| (*addr, i)).collect();
        let owner_class = vec![None; big_queue.len()];
        let owner_heat = vec![0.0; big_queue.len()];
        Cycle {
            queue,
            next: 0,
            big_queue,
            big_next: 0,
            big_index,
            owner_class,
            owner_heat,
            heat: AddrMap::default(),
            started: now,
            report,
            per_type: TypeTallies::default(),
        }
    }

    fn scan_region(&mut self, region: Region, config: &Settings, buf: &mut Vec<u8>, cycle: &mut Cycle) {
        buf.resize(region.len, 0);
        match read_self(region.base, buf) {
            Ok(n) => {
                cycle.report.bytes_read += n as u64;
                buf.truncate(n);
            }
            Err(_) => {
                cycle.report.read_errors += 1;
                return;
            }
        }
        // Decay by the time since this arena was last read.
        let now = Instant::now();
        let arena = self.arenas.get_mut(&region.base);
        let since = arena
            .as_ref()
            .and_then(|a| a.scanned_at)
            .map_or(config.tracking.scan_interval_millis as f64 / 1000.0, |at| (now - at).as_secs_f64());
        if let Some(arena) = arena {
            arena.scanned_at = Some(now);
        }
        let rules = Rules::new(config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64, since);
        if region.index.is_none() {
            // A whole arena: its free pools are heap pages too.
            for page in (region.base..region.base + buf.len()).step_by(PAGE) {
                cycle.heat.entry(page).or_insert(0.0);
            }
        }
        let order = cycle.next as u64; // this arena's place in the cycle
        self.types.discover(self.pass <= DISCOVERY_PASSES || (order + self.pass).is_multiple_of(DISCOVER_EVERY));
        for pool in self.layout.pools_of_arena(region.base, buf.len()) {
            let at = pool - region.base;
            let bytes = &buf[at..at + self.layout.pool_size];
            if region.index.is_some() && arena_index(bytes) != region.index {
                continue;
            }
            self.scan_pool(pool, bytes, &rules, cycle);
        }
    }

    /// Reads the heads of the next batch of big blocks and tracks the objects
    /// in them. A block freed since the snapshot reads as garbage or not at
    /// all, and is then not an object.
    fn scan_big_blocks(&mut self, config: &Settings, buf: &mut Vec<u8>, cycle: &mut Cycle) {
        let first = cycle.big_next;
        let end = cycle.big_queue.len().min(first + BIG_BATCH);
        let batch = &cycle.big_queue[first..end];
        cycle.big_next = end;
        let addrs: Vec<usize> = batch.iter().map(|(addr, _)| *addr).collect();
        self.types.discover(true); // few blocks, each likely an object (heap types are here too)
        let read = read_each(&addrs, BIG_HEAD, buf);
        let report = &mut cycle.report;
        let now = Instant::now();
        let interval = config.tracking.scan_interval_millis as f64 / 1000.0;
        for (i, &(addr, size)) in batch.iter().enumerate() {
            if !read[i] {
                report.read_errors += 1;
                continue;
            }
            report.big_blocks.blocks += 1;
            report.big_blocks.bytes += size as u64;
            let head = &buf[i * BIG_HEAD..(i + 1) * BIG_HEAD];
            let Some(found) = self.types.find_in(&self.layout, head, size, 0) else {
                // A buffer: it is as hot as the object that owns it, if known.
                if let Some(class) = cycle.owner_class[first + i] {
                    report.big_blocks.owned_bytes.add(class, size as u64);
                    report.bytes.add(class, size as u64);
                }
                add_heat(&mut cycle.heat, addr, size, cycle.owner_heat[first + i]);
                continue;
            };
            let state = self.big.entry(addr + found.offset).or_insert(BigState {
                slot: Slot::default(),
                seen: 0,
                scanned_at: now,
            });
            let since = if state.seen == 0 { interval } else { (now - state.scanned_at).as_secs_f64() };
            state.seen = self.pass;
            state.scanned_at = now;
            let rules =
                Rules::new(config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64, since);
            let class = state.slot.observe(found.refcnt, &rules);
            report.big_blocks.objects.add(class, 1);
            report.big_blocks.object_bytes.add(class, size as u64);
            report.objects.add(class, 1);
            report.bytes.add(class, size as u64);
            tally(report, &mut cycle.per_type, &found, &state.slot, class, size as u64);
            add_heat(&mut cycle.heat, addr, size, state.slot.temperature() as f32);
        }
    }

    fn finish_cycle(&mut self, cycle: Cycle) -> PassReport {
        let Cycle { started, mut report, per_type, mut heat, .. } = cycle;
        for (page, h) in heat.iter_mut() {
            *h += WRITE_HEAT_WEIGHT * self.pages.write_heat_at(*page);
        }
        self.heat = heat;
        // Forget pools that are gone (arena freed, pool emptied).
        let pass = self.pass;
        self.pools.retain(|_, p| p.seen == pass);
        self.big.retain(|_, b| b.seen == pass);

        report.big_blocks.dropped = BIG_BLOCKS.dropped.load(std::sync::atomic::Ordering::Relaxed);
        report.heap_bytes = report.used_bytes + report.big_blocks.bytes;
        report.coverage =
            if report.heap_bytes == 0 { 0.0 } else { report.bytes.total() as f64 / report.heap_bytes as f64 };
        report.top_types_by_cold_bytes = self.top_types(&per_type, |c| c.cold);
        report.top_types_by_hot_bytes = self.top_types(&per_type, |c| c.hot);
        report.table_bytes =
            self.pools.values().map(|p| (p.slots.len() * std::mem::size_of::<Slot>()) as u64 + 48).sum::<u64>()
                + (self.big.len() * (std::mem::size_of::<BigState>() + 8)) as u64;
        report.page_writes = self.pages.report().clone();
        report.cycle_seconds = started.elapsed().as_secs_f64();
        report
    }

    fn scan_pool(&mut self, pool: usize, bytes: &[u8], rules: &Rules, cycle: &mut Cycle) {
        let Cycle { report, per_type, big_index, owner_class, owner_heat, heat, .. } = cycle;
        let layout = self.layout;
        let Some(header) = PoolHeader::parse(&layout, bytes) else { return };
        let block_size = layout.block_size(header.szidx);
        let capacity = (layout.pool_size - layout.pool_header_size) / block_size;
        let state =
            self.pools.entry(pool).or_insert_with(|| PoolState { szidx: header.szidx, slots: Vec::new(), seen: 0 });
        if state.szidx != header.szidx || state.slots.len() != capacity {
            // New pool, or reused for another size class: start over.
            state.szidx = header.szidx;
            state.slots = vec![Slot::default(); capacity];
        }
        state.seen = self.pass;
        report.pools += 1;
        report.used_blocks += header.used as u64;
        report.used_bytes += header.used as u64 * block_size as u64;

        // Pools are page aligned; a block counts on the page it starts on.
        let mut pages = [PageTally::default(); 16];
        let mut page_heat = [0f32; 16];
        let end = (header.next_offset as usize).min(layout.pool_size);
        let mut hint = 0;
        for (i, start) in (layout.pool_header_size..end).step_by(block_size).enumerate() {
            if start + block_size > bytes.len() || i >= state.slots.len() {
                break;
            }
            let slot = &mut state.slots[i];
            let Some(found) = self.types.find_in(&layout, &bytes[start..start + block_size], block_size, hint) else {
                slot.clear();
                continue;
            };
            hint = found.offset;
            if layout.is_immortal(found.refcnt) {
                slot.clear();
                continue;
            }
            let class = slot.observe(found.refcnt, rules);
            let size = block_size as u64;
            report.objects.add(class, 1);
            report.bytes.add(class, size);
            tally(report, per_type, &found, slot, class, size);
            if !big_index.is_empty() {
                let object = &bytes[start + found.offset..start + block_size];
                for buffer in found.buffers(object) {
                    if let Some(&i) = big_index.get(&buffer) {
                        owner_class[i] = Some(owner_class[i].map_or(class, |c| c.hotter(class)));
                        owner_heat[i] = owner_heat[i].max(slot.temperature() as f32);
                    }
                }
            }
            page_heat[(start / PAGE).min(15)] += slot.temperature() as f32;
            let page = &mut pages[(start / PAGE).min(15)];
            page.objects = true;
            match class {
                Class::Hot => page.hot = true,
                Class::Cold => page.cold_bytes += size,
                Class::Warm => {}
            }
        }
        for (i, h) in page_heat.iter().take(layout.pool_size.div_ceil(PAGE)).enumerate() {
            *heat.entry(pool + i * PAGE).or_insert(0.0) += h;
        }
        for page in pages.iter().filter(|p| p.objects) {
            report.pages += 1;
            if page.hot {
                report.hot_pages += 1;
                report.cold_bytes_on_hot_pages += page.cold_bytes;
            }
        }
    }

    fn top_types(&self, per_type: &TypeTallies, class: impl Fn(&ByClass) -> u64) -> Vec<TypeBytes> {
        let mut top: Vec<TypeBytes> = (per_type.0.iter().enumerate())
            .filter(|(_, (_, bytes))| class(bytes) > 0)
            .map(|(index, (objects, bytes))| TypeBytes {
                type_name: self.types.get(index as u32).map_or_else(|| "?".into(), |t| t.name.clone()),
                objects: class(objects),
                bytes: class(bytes),
            })
            .collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        top.truncate(10);
        top
    }
}

/// Page-write collections' spacing, from the settings.
fn spacing(config: &Settings) -> Spacing {
    Spacing {
        max_fault_fraction: config.tracking.max_fault_fraction,
        min_seconds: config.tracking.scan_interval_millis as f64 / 1000.0,
        max_cpu_fraction: config.tracking.max_cpu_fraction * PAGE_WRITES_CPU_SHARE,
    }
}

/// Spreads `degrees` over the pages of the block at `[addr, addr + size)`:
/// one use of a big object or buffer (an item of a long list, a slot of a
/// dict's table) touches one of its pages, not all of them.
fn add_heat(heat: &mut AddrMap<f32>, addr: usize, size: usize, degrees: f32) {
    let pages = ((addr & !(PAGE - 1))..addr + size).step_by(PAGE);
    let share = degrees / pages.len().max(1) as f32;
    for page in pages {
        *heat.entry(page).or_insert(0.0) += share;
    }
}

/// Adds an object to the histogram and its type's tallies.
#[inline]
fn tally(report: &mut PassReport, per_type: &mut TypeTallies, found: &Found, slot: &Slot, class: Class, size: u64) {
    report.histogram[slot.bucket()] += 1;
    let (objects, bytes) = per_type.of(found.type_index);
    objects.add(class, 1);
    bytes.add(class, size);
}

/// CPU time the calling thread has used. A slice's length in CPU time leaves
/// out the time the scanner waited for a core on a busy machine.
pub fn thread_cpu_seconds() -> f64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes only the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut now) };
    now.tv_sec as f64 + now.tv_nsec as f64 / 1e9
}
