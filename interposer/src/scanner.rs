//! The Tracker: a cycle reads every known pool (without the GIL), finds the
//! live objects in it, feeds their reference counts to the temperature table,
//! and summarises what it saw. It also collects the arenas' page writes
//! (`pages`).
//!
//! Hooked arenas are read in place, only the words needed, while the hook
//! keeps them mapped (`arenas::hold`); the few arenas older than pytier are
//! copied with `process_vm_readv` (their extent is not known exactly).
//! Temperatures live in arrays per arena, indexed by pool and block.
//!
//! A cycle runs in slices of whole arenas, each bounded by a time budget, so
//! the scanner's CPU use is smooth and its budget can be kept on any heap.
//! Arenas are visited oldest first: long-lived objects are the ones placement
//! is about, and an arena born during a cycle waits for the next one (its
//! objects are young and most will be gone by then).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use pytier_contract::Settings;
pub use pytier_contract::stats::{BigReport, ByClass, PassReport, TypeBytes};

use crate::arenas::{self, ARENA_SIZE, ARENAS, EARLY_ARENAS};
use crate::brk::BrkHeap;
use crate::cputime::Stopwatch;
use crate::large::BIG_BLOCKS;
use crate::layout::{Layout, PoolHeader, arena_index};
use crate::memory::{InPlace, Words, read_each, read_self};
use crate::objects::{AddrFilter, AddrMap, BufferKind, Found, TypeCache};
use crate::owners::TableOwners;
use crate::pages::{PageReport, PageTracker, Spacing};
use crate::referents;
use crate::temperature::{Class, Rules, Slot, Temperature};

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
/// may take; slices get what they leave. Half: where a collection costs
/// much CPU (in the TCG VM with the host's cores busy, each TLB shootdown
/// waits for a descheduled vCPU), a quarter held zipf-read to 31-61
/// collections a run and served 0.746 (median of 9), half to 66-127 and
/// 0.766. Idle, most wait for the fault budget either way, and zipf-read
/// and zipf-write served the same.
const PAGE_WRITES_CPU_SHARE: f64 = 0.5;

/// Temperature state of one pool: a slot per block (none while the pool is
/// free).
#[derive(Default)]
struct PoolState {
    szidx: u32,
    slots: Vec<Slot>,
    /// Its last reading, if that found the pool settled.
    settled: Option<Settled>,
}

#[derive(Default, Clone, Copy, PartialEq, Eq)]
enum Contents {
    /// This many blocks in use (the pool header's count).
    InUse(u32),
    #[default]
    Free,
    /// The pool of an arena next to an early one (`Kind::Early`).
    OtherArenas,
}

/// What a pool's last read added to its pass, kept when every slot was
/// settled (`Slot::is_settled`) or the pool free: while none of its pages is
/// written, another read would find exactly the same, so this is counted
/// again instead (most of a big heap, most of the time).
#[derive(Default)]
struct Settled {
    contents: Contents,
    /// Its objects (all cold) by type: (type index, objects).
    types: Vec<(u32, u32)>,
    /// The buffers they own outside pymalloc (`Found::buffers`).
    buffers: Vec<(usize, BufferKind)>,
    /// Pages its objects start on.
    pages: u64,
    /// Read checking every word that was not a known type: a pass looking
    /// for new types would find none here either.
    discovered: bool,
}

/// Heap pages and their heat (see `Cycle::heat`).
pub type PageHeat = Vec<(usize, f32)>;

pub struct Tracker {
    layout: Layout,
    types: TypeCache,
    /// Cycles begun so far.
    pass: u64,
    buf: Vec<u8>,
    pages: PageTracker,
    /// Known arenas by start address.
    arenas: BTreeMap<usize, ArenaState>,
    /// Temperatures of objects in big blocks (see `large`), by object address
    /// (`id()`); entries not seen in a cycle are dropped at its end.
    big: AddrMap<BigState>,
    cycle: Option<Cycle>,
    /// Heat of every heap page as of the last complete cycle.
    heat: PageHeat,
    /// glibc's brk heap, placed with the heap (see `brk`).
    brk: BrkHeap,
    /// The dict tables and `OrderedDict` node arrays in use, by address, and
    /// their pages' heat from their entries as last read.
    tables: AddrMap<TableHeat>,
    /// Their owners, whose counts are read between regions (see `owners`).
    owners: TableOwners,
}

struct TableHeat {
    size: usize,
    kind: BufferKind,
    read_in_pass: u64,
    seen_in_pass: u64,
    pages: Vec<(usize, f32)>,
    /// Enough of a dict table's values have heat (`VALUES_IN_USE`).
    values_in_use: bool,
}

/// A dict's table is read again once every this many of its bytes cycles
/// (a 5 MiB table every fifth): reading one takes about 3 ms a MiB (on the
/// host; some 30 times more under TCG), and which entries are hot changes
/// more slowly than the temperatures are read.
const TABLE_BYTES_PER_CYCLE: usize = 1 << 20;
/// Dict tables (and `OrderedDict` node arrays) this big or bigger are placed
/// by their entries; a smaller one is a few pages, placed by its dict's heat.
const TABLE_BY_ENTRIES: usize = 64 << 10;
/// Where locals are borrowed (3.14+), a dict looked up through one keeps its
/// count, and its table is taken as in use when this share of its values
/// have heat. A share, not any one value: a table's first or last values
/// share a page with other objects, whose writes they then seem to have.
const VALUES_IN_USE: f64 = 0.01;

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

/// A known arena: `len` bytes at `base`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Region {
    base: usize,
    len: usize,
    kind: Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Made since the hook went in: exactly known, in `ARENAS` at `slot`.
    Hooked { slot: usize },
    /// Older: its extent is not known exactly, so as much as an arena can
    /// span is read, and only the pools that carry its `index` are its own.
    Early { index: u32 },
}

struct ArenaState {
    /// The cycle that first saw it: the order of visits.
    born: u64,
    /// When its pools were last read, for their temperatures' decay.
    scanned_at: Option<Instant>,
    /// Its first pool, and the state of each pool from there.
    first_pool: usize,
    pools: Vec<PoolState>,
}

impl Region {
    /// How much of it page writes are watched in: all of a hooked arena; of
    /// an early one, the pools it surely has. Its first pool is the first
    /// pool-aligned address in it, so it has 63 pools after that one, or 64
    /// if it began on a pool boundary; the span of 64 can reach into the
    /// next mapping, and a file mapping or a hole there would make
    /// registering it fail, leaving the whole arena unwatched.
    fn watched_len(&self, pool_size: usize) -> usize {
        match self.kind {
            Kind::Hooked { .. } => self.len,
            Kind::Early { .. } => self.len - pool_size,
        }
    }
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
    big_filter: AddrFilter,
    owner_class: Vec<Option<Class>>,
    /// And the highest temperature among those owners.
    owner_heat: Vec<f32>,
    /// The address of an owner (0 where none was read in this cycle).
    owner_addr: Vec<usize>,
    /// What the owners say the block holds.
    owner_kind: Vec<Option<BufferKind>>,
    /// Every heap page seen (arena pages and pages of big blocks) and its heat:
    /// the summed temperatures of the objects starting on it (a buffer takes
    /// its owner's), plus the page's own write temperature when tracked.
    /// Arena pages are listed as they are read; pages of big blocks, which
    /// may share a page, are summed in `big_heat` and added at the end.
    heat: PageHeat,
    big_heat: AddrMap<f32>,
    started: Instant,
    report: PassReport,
    per_type: TypeTallies,
}

/// Objects and bytes per type (by `Found::type_index`) and class (by
/// `Class as usize`: one add per object, no match), within one pass.
#[derive(Default)]
struct TypeTallies(Vec<[(u64, u64); 3]>);

impl TypeTallies {
    #[inline(always)]
    fn add(&mut self, type_index: u32, class: Class, objects: u64, bytes: u64) {
        let i = type_index as usize;
        if i >= self.0.len() {
            self.0.resize(i + 1, Default::default());
        }
        let tally = &mut self.0[i][class as usize];
        tally.0 += objects;
        tally.1 += bytes;
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
            types: TypeCache::new(layout, type_type),
            pass: 0,
            buf: Vec::new(),
            pages: PageTracker::new(),
            arenas: BTreeMap::new(),
            big: AddrMap::default(),
            cycle: None,
            heat: PageHeat::new(),
            brk: BrkHeap::default(),
            tables: AddrMap::default(),
            owners: TableOwners::default(),
        }
    }

    /// The class of the object at `addr`, if the last pass recognised one there.
    pub fn class_of(&self, addr: usize, rules: &Rules) -> Option<Class> {
        if let Some(big) = self.big.get(&addr) {
            return big.slot.is_present().then(|| big.slot.class(rules));
        }
        let pool = self.layout.pool_of(addr);
        let (_, arena) = self.arenas.range(..=pool).next_back()?;
        let number = pool.checked_sub(arena.first_pool)? / self.layout.pool_size;
        let state = arena.pools.get(number)?;
        let offset = (addr - pool).checked_sub(self.layout.pool_header_size)?;
        let slot = state.slots.get(offset / self.layout.block_size(state.szidx))?;
        slot.is_present().then(|| slot.class(rules))
    }

    /// The heat of each page of the buffer at `addr`, holding `kind`, from
    /// what its entries point at (see `referents`): a dict's table or an
    /// `OrderedDict`'s nodes. Read again once every
    /// `size / TABLE_BYTES_PER_CYCLE` cycles, its last reading standing in
    /// between. None for other kinds, or if it does not read as its kind.
    fn heat_by_entries(&mut self, addr: usize, size: usize, kind: BufferKind) -> Option<&TableHeat> {
        let pass = self.pass;
        let every = (size / TABLE_BYTES_PER_CYCLE).max(1) as u64;
        // A block freed and allocated again at the same address holds
        // another table (an LRU cache's table and node array take turns in
        // the same places).
        let same = |t: &TableHeat| t.size == size && t.kind == kind;
        let fresh = self.tables.get(&addr).is_some_and(|t| same(t) && pass - t.read_in_pass < every);
        if !fresh {
            let heat_of = |object| self.heat_of(object);
            let (pages, values_in_use) = match kind {
                BufferKind::DictTable => {
                    let read = referents::dict_table_heat(addr, size, heat_of)?;
                    (read.pages, read.values_in_use as f64 >= VALUES_IN_USE * read.values.max(1) as f64)
                }
                BufferKind::OrderedDictNodes => (referents::pointer_array_heat(addr, size, heat_of)?, false),
                BufferKind::ListItems | BufferKind::DictValues => return None,
            };
            let table = TableHeat { size, kind, read_in_pass: pass, seen_in_pass: pass, pages, values_in_use };
            self.tables.insert(addr, table);
        }
        let table = self.tables.get_mut(&addr)?;
        table.seen_in_pass = pass;
        Some(table)
    }

    /// How much the object at `addr` is used, in the units of page heat: its
    /// own temperature plus its share of its page's write heat (by size).
    /// Reference-count readings far apart miss an object used and let go in
    /// between (a dict's key while it is looked up); its page's writes do
    /// not. 0 where no object is known.
    fn heat_of(&self, addr: usize) -> f32 {
        if let Some(big) = self.big.get(&addr) {
            return big.slot.temperature() as f32;
        }
        let pool = self.layout.pool_of(addr);
        let Some((_, arena)) = self.arenas.range(..=pool).next_back() else { return 0.0 };
        let Some(state) = (pool.checked_sub(arena.first_pool).map(|offset| offset / self.layout.pool_size))
            .and_then(|number| arena.pools.get(number))
        else {
            return 0.0;
        };
        let block_size = self.layout.block_size(state.szidx);
        let slot =
            (addr - pool).checked_sub(self.layout.pool_header_size).and_then(|o| state.slots.get(o / block_size));
        slot.map_or(0.0, |slot| {
            let page_share = WRITE_HEAT_WEIGHT * self.pages.write_heat_of(addr) * block_size as f32 / PAGE as f32;
            slot.temperature() as f32 + page_share
        })
    }

    /// Every known arena.
    fn regions(&self) -> Vec<Region> {
        let arena_size = ARENA_SIZE.load(std::sync::atomic::Ordering::Relaxed);
        let mut regions: Vec<Region> = (ARENAS.snapshot_slots().into_iter())
            .map(|(slot, base)| Region { base, len: arena_size, kind: Kind::Hooked { slot } })
            .collect();
        for first in EARLY_ARENAS.snapshot() {
            let mut header = [0u8; 48];
            if read_self(first, &mut header).ok() == Some(48)
                && let Some(index) = arena_index(&header[..])
            {
                regions.push(Region { base: first, len: self.layout.arena_size, kind: Kind::Early { index } });
            }
        }
        regions
    }

    /// Collects page writes if the fault budget allows (see `pages`). Cheap
    /// next to an object pass, so it runs on its own, more frequent, cadence.
    pub fn collect_page_writes(&mut self, config: &Settings) -> &PageReport {
        let mut spans: Vec<(usize, usize)> =
            self.regions().into_iter().map(|r| (r.base, r.watched_len(self.layout.pool_size))).collect();
        spans.extend_from_slice(self.brk.spans());
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
    pub fn page_heat(&self) -> &[(usize, f32)] {
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
        let cpu = Stopwatch::start();
        let mut cycle = match self.cycle.take() {
            Some(cycle) => cycle,
            None => self.begin_cycle(started),
        };
        let mut buf = std::mem::take(&mut self.buf);
        while started.elapsed() < budget {
            self.owners.sample();
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
        let cpu = cpu.seconds();
        let report = &mut cycle.report;
        report.scan_seconds += cpu;
        report.slices += 1;
        report.longest_slice_seconds = report.longest_slice_seconds.max(cpu);
        if cycle.next < cycle.queue.len() || cycle.big_next < cycle.big_queue.len() {
            self.cycle = Some(cycle);
            return None;
        }
        let (hot, half_life) = (config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64);
        self.owners.end_pass(Instant::now(), |since| Rules::new(hot, half_life, since));
        Some(self.finish_cycle(cycle))
    }

    fn begin_cycle(&mut self, now: Instant) -> Cycle {
        self.pass += 1;
        let mut queue = self.regions();
        self.types.new_pass(queue.iter().map(|r| (r.base, r.len)));
        let pass = self.pass;
        for region in &queue {
            self.arenas.entry(region.base).or_insert(ArenaState {
                born: pass,
                scanned_at: None,
                first_pool: self.layout.pools_of_arena(region.base, region.len).next().unwrap_or(region.base),
                pools: Vec::new(),
            });
        }
        let live: std::collections::HashSet<usize> = queue.iter().map(|r| r.base).collect();
        self.arenas.retain(|base, _| live.contains(base));
        queue.sort_by_key(|r| (self.arenas[&r.base].born, r.base));
        let report = PassReport { arenas: queue.len() as u64, ..Default::default() };
        let big_queue = BIG_BLOCKS.snapshot();
        let big_index = big_queue.iter().enumerate().map(|(i, (addr, _))| (*addr, i)).collect();
        let mut big_filter = AddrFilter::new(big_queue.len());
        big_queue.iter().for_each(|&(addr, _)| big_filter.insert(addr));
        let owner_class = vec![None; big_queue.len()];
        let owner_heat = vec![0.0; big_queue.len()];
        let owner_addr = vec![0; big_queue.len()];
        let owner_kind = vec![None; big_queue.len()];
        Cycle {
            queue,
            next: 0,
            big_queue,
            big_next: 0,
            big_index,
            big_filter,
            owner_class,
            owner_heat,
            owner_addr,
            owner_kind,
            heat: PageHeat::new(),
            big_heat: AddrMap::default(),
            started: now,
            report,
            per_type: TypeTallies::default(),
        }
    }

    fn scan_region(&mut self, region: Region, config: &Settings, buf: &mut Vec<u8>, cycle: &mut Cycle) {
        let Some(arena) = self.arenas.get_mut(&region.base) else { return };
        // Decay by the time since this arena was last read.
        let now = Instant::now();
        let since = arena
            .scanned_at
            .map_or(config.tracking.scan_interval_millis as f64 / 1000.0, |at| (now - at).as_secs_f64());
        arena.scanned_at = Some(now);
        let rules = Rules::new(config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64, since);
        let order = cycle.next as u64; // this arena's place in the cycle
        let discovering = self.pass <= DISCOVERY_PASSES || (order + self.pass).is_multiple_of(DISCOVER_EVERY);
        self.types.discover(discovering);
        let mut scan = PoolScan { layout: &self.layout, types: &mut self.types, rules: &rules, cycle, settling: false };
        let pool_size = self.layout.pool_size;
        let pools = self.layout.pools_of_arena(region.base, region.len).enumerate();
        match region.kind {
            Kind::Hooked { slot } => {
                let Some(_held) = arenas::hold(slot, region.base) else { return }; // freed since the cycle began
                // Looked at once held: a write after this is seen next time.
                let written = self.pages.written_since_read(region.base, region.len);
                scan.settling = written.is_some();
                // SAFETY: a hooked arena is `len` bytes from `base`, page
                // aligned, and stays mapped while held.
                let memory = unsafe { InPlace::new(region.base, region.len) };
                // A whole arena: its free pools are heap pages too.
                let first_page = scan.cycle.heat.len();
                scan.cycle.heat.extend((region.base..region.base + region.len).step_by(PAGE).map(|page| (page, 0.0)));
                for (number, pool) in pools {
                    let at = pool - region.base;
                    let state = arena.pool(number);
                    match replayable(state, written.as_deref(), at / PAGE, pool_size, discovering) {
                        Some(settled) => scan.replay(settled, state.szidx),
                        None => scan.pool(state, &memory.part(at, pool_size), first_page + at / PAGE),
                    }
                }
            }
            Kind::Early { index } => {
                // Copied pool by pool: where the arena's mapping ends is not known.
                let written = self.pages.written_since_read(region.base, region.watched_len(pool_size));
                scan.settling = written.is_some();
                buf.resize(pool_size, 0);
                for (number, pool) in pools {
                    let at = pool - region.base;
                    let state = arena.pool(number);
                    let first_page = scan.cycle.heat.len();
                    if let Some(settled) = replayable(state, written.as_deref(), at / PAGE, pool_size, discovering) {
                        if settled.contents != Contents::OtherArenas {
                            scan.cycle.heat.extend((pool..pool + pool_size).step_by(PAGE).map(|page| (page, 0.0)));
                        }
                        scan.replay(settled, state.szidx);
                        continue;
                    }
                    if read_self(pool, buf).ok() != Some(pool_size) {
                        scan.cycle.report.read_errors += (number == 0) as u64;
                        break; // the end of its mapping
                    }
                    scan.cycle.report.bytes_read += pool_size as u64;
                    if arena_index(&buf[..]) != Some(index) {
                        // Another arena's: nothing of this one's, until written.
                        state.slots = Vec::new();
                        state.settled =
                            scan.settling.then(|| Settled { contents: Contents::OtherArenas, ..Settled::default() });
                        continue;
                    }
                    scan.cycle.heat.extend((pool..pool + pool_size).step_by(PAGE).map(|page| (page, 0.0)));
                    scan.pool(state, &buf[..], first_page);
                }
            }
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
            let Some(found) = self.types.find_in(&self.layout, head, 0, size) else {
                // A buffer: as hot as the object that owns it, if known; the
                // pages of a big dict table in use, as hot as their entries
                // (see `referents`).
                if let Some(class) = cycle.owner_class[first + i] {
                    report.big_blocks.owned_bytes.add(class, size as u64);
                    report.bytes.add(class, size as u64);
                }
                let owner_heat = cycle.owner_heat[first + i];
                // Only while the dict's own count is seen changing (read
                // between regions too: `owners`), or, where locals are
                // borrowed and it may not change, its values seen in use:
                // one nothing reads (an index kept for later) holds hot keys
                // too, and its page's writes may be its neighbours'.
                let kind = cycle.owner_kind[first + i];
                let table = matches!(kind, Some(BufferKind::DictTable | BufferKind::OrderedDictNodes));
                let owner = cycle.owner_addr[first + i];
                // Watched in every pass it owns a big table, whatever its heat.
                let seen_in_use = table && size >= TABLE_BY_ENTRIES && owner != 0 && self.owners.watch(owner);
                let owner_in_use = owner_heat > 0.0 || seen_in_use;
                let values_may_tell = self.layout.borrows_locals && kind == Some(BufferKind::DictTable);
                let by_entries = size >= TABLE_BY_ENTRIES && (owner_in_use || values_may_tell);
                let read = kind.filter(|_| by_entries).and_then(|kind| self.heat_by_entries(addr, size, kind));
                match read.filter(|table| owner_in_use || table.values_in_use) {
                    Some(table) => {
                        report.big_blocks.tables_by_entries += 1;
                        for &(page, heat) in &table.pages {
                            *cycle.big_heat.entry(page).or_insert(0.0) += heat;
                        }
                    }
                    None => add_heat(&mut cycle.big_heat, addr, size, owner_heat),
                }
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
            add_heat(&mut cycle.big_heat, addr, size, state.slot.temperature() as f32);
        }
    }

    fn finish_cycle(&mut self, cycle: Cycle) -> PassReport {
        let Cycle { started, mut report, per_type, mut heat, mut big_heat, .. } = cycle;
        // The brk heap's pages, once their writes are measured: those of
        // big blocks have their objects' heat already, the rest none.
        for &(base, len) in self.brk.spans().iter().filter(|&&(base, len)| self.pages.is_measured(base, len)) {
            for page in (base..base + len).step_by(PAGE) {
                big_heat.entry(page).or_insert(0.0);
            }
        }
        heat.extend(big_heat);
        self.pages.add_write_heat(&mut heat, WRITE_HEAT_WEIGHT);
        self.heat = heat;
        // Forget big objects that are gone (arenas were forgotten at the
        // cycle's start, free pools when read).
        let pass = self.pass;
        self.big.retain(|_, b| b.seen == pass);
        self.tables.retain(|_, t| t.seen_in_pass == pass);

        report.big_blocks.dropped = BIG_BLOCKS.dropped.load(std::sync::atomic::Ordering::Relaxed);
        report.heap_bytes = report.used_bytes + report.big_blocks.bytes;
        report.coverage =
            if report.heap_bytes == 0 { 0.0 } else { report.bytes.total() as f64 / report.heap_bytes as f64 };
        report.top_types_by_cold_bytes = self.top_types(&per_type, Class::Cold);
        report.top_types_by_hot_bytes = self.top_types(&per_type, Class::Hot);
        let pools = self.arenas.values().flat_map(|a| &a.pools);
        report.table_bytes = pools
            .map(|p| (p.slots.len() * std::mem::size_of::<Slot>() + std::mem::size_of::<PoolState>()) as u64)
            .sum::<u64>()
            + (self.big.len() * (std::mem::size_of::<BigState>() + 8)) as u64;
        report.page_writes = self.pages.report().clone();
        report.cycle_seconds = started.elapsed().as_secs_f64();
        report
    }

    fn top_types(&self, per_type: &TypeTallies, class: Class) -> Vec<TypeBytes> {
        let mut top: Vec<TypeBytes> = (per_type.0.iter().enumerate())
            .map(|(index, tallies)| (index, tallies[class as usize]))
            .filter(|&(_, (_, bytes))| bytes > 0)
            .map(|(index, (objects, bytes))| TypeBytes {
                type_name: self.types.get(index as u32).map_or_else(|| "?".into(), |t| t.name.clone()),
                objects,
                bytes,
            })
            .collect();
        top.sort_by_key(|t| std::cmp::Reverse(t.bytes));
        top.truncate(10);
        top
    }
}

impl ArenaState {
    /// The state of its pool `number` (from its first pool).
    fn pool(&mut self, number: usize) -> &mut PoolState {
        if number >= self.pools.len() {
            self.pools.resize_with(number + 1, PoolState::default);
        }
        &mut self.pools[number]
    }
}

/// Scans the pools of one arena.
struct PoolScan<'a> {
    layout: &'a Layout,
    types: &'a mut TypeCache,
    rules: &'a Rules,
    cycle: &'a mut Cycle,
    /// Whether a pool's reading may be counted again (see `Settled`): page
    /// writes are known for the arena. Else nothing is kept for it.
    settling: bool,
}

impl PoolScan<'_> {
    /// Finds the live objects of the pool in `memory` (its bytes), updates
    /// their temperatures in `state`, and adds its pages' heat to the cycle's
    /// pages from `first_page` on.
    fn pool(&mut self, state: &mut PoolState, memory: &(impl Words + ?Sized), first_page: usize) {
        let layout = self.layout;
        let cycle = &mut *self.cycle;
        let mut settled = state.settled.take().unwrap_or_default();
        settled.types.clear();
        settled.buffers.clear();
        let Some(header) = PoolHeader::parse(layout, memory) else {
            state.slots = Vec::new(); // free: forget its blocks
            state.settled = self.settling.then_some(Settled { contents: Contents::Free, discovered: true, ..settled });
            return;
        };
        let block_size = layout.block_size(header.szidx);
        let capacity = (layout.pool_size - layout.pool_header_size) / block_size;
        if state.szidx != header.szidx || state.slots.len() != capacity {
            // New pool, or reused for another size class: start over.
            state.szidx = header.szidx;
            state.slots = vec![Slot::default(); capacity];
        }
        let end = (header.next_offset as usize).min(layout.pool_size).min(memory.size());
        let report = &mut cycle.report;
        report.pools += 1;
        report.used_blocks += header.used as u64;
        report.used_bytes += header.used as u64 * block_size as u64;
        report.bytes_read += end as u64;

        // Objects by class are counted per pool (bytes are blocks times
        // size), page heat in temperature units (see `Slot::units`).
        let mut objects = [0u64; 3];
        // Pools are page aligned; a block counts on the page it starts on.
        let mut pages = [PageTally::default(); 16];
        let mut page_heat = [0u32; 16];
        let mut settles = self.settling;
        // The pool's address: its first page's.
        let pool_addr = cycle.heat.get(first_page).map_or(0, |&(page, _)| page);
        let starts = (layout.pool_header_size..end.saturating_sub(block_size - 1)).step_by(block_size);
        for (slot, start) in state.slots.iter_mut().zip(starts) {
            let Some(found) = self.types.find_in(layout, memory, start, block_size) else {
                slot.clear();
                continue;
            };
            if layout.is_immortal(found.refcnt) {
                slot.clear();
                continue;
            }
            let class = slot.observe(found.refcnt, self.rules);
            settles = settles && slot.is_settled();
            objects[class as usize] += 1;
            cycle.per_type.add(found.type_index, class, 1, block_size as u64);
            cycle.report.histogram[slot.bucket()] += 1;
            for (buffer, kind) in found.buffers(memory, start + found.offset).into_iter().filter(|&(b, _)| b != 0) {
                let heat = slot.temperature() as f32;
                let owner = if pool_addr == 0 { 0 } else { pool_addr + start + found.offset };
                if !cycle.note_owner(buffer, kind, class, heat, owner)
                    && !self.types.in_an_arena(buffer)
                    && cycle.add_late_block(buffer)
                {
                    cycle.note_owner(buffer, kind, class, heat, owner);
                }
                // One in an arena is a small block, never a big one while the
                // owner (which points to it) is unwritten.
                if settles && !self.types.in_an_arena(buffer) {
                    settled.buffers.push((buffer, kind));
                }
            }
            if settles {
                // A pool holds objects of a few types, often mixed.
                match settled.types.iter_mut().rev().find(|(index, _)| *index == found.type_index) {
                    Some((_, n)) => *n += 1,
                    None => settled.types.push((found.type_index, 1)),
                }
            }
            let page = (start / PAGE).min(15);
            page_heat[page] += slot.units();
            let tally = &mut pages[page];
            tally.objects = true;
            match class {
                Class::Hot => tally.hot = true,
                Class::Cold => tally.cold_bytes += block_size as u64,
                Class::Warm => {}
            }
        }
        let report = &mut cycle.report;
        for class in Class::ALL {
            report.objects.add(class, objects[class as usize]);
            report.bytes.add(class, objects[class as usize] * block_size as u64);
        }
        let pool_pages = layout.pool_size.div_ceil(PAGE);
        for (page, &units) in cycle.heat[first_page..].iter_mut().zip(&page_heat[..pool_pages]) {
            page.1 += Temperature::degrees_of(units) as f32;
        }
        let mut object_pages = 0;
        for page in pages.iter().filter(|p| p.objects) {
            object_pages += 1;
            if page.hot {
                report.hot_pages += 1;
                report.cold_bytes_on_hot_pages += page.cold_bytes;
            }
        }
        report.pages += object_pages;
        let discovered = self.types.checked_all();
        state.settled = settles.then_some(Settled {
            contents: Contents::InUse(header.used),
            pages: object_pages,
            discovered,
            ..settled
        });
    }

    /// Counts a settled pool's last reading again (see `Settled`), the pool
    /// of size class `szidx` unread: its objects are cold, their heat zero.
    fn replay(&mut self, settled: &Settled, szidx: u32) {
        let cycle = &mut *self.cycle;
        cycle.report.pools_unread += 1;
        let Contents::InUse(used) = settled.contents else { return };
        let block_size = self.layout.block_size(szidx) as u64;
        let report = &mut cycle.report;
        report.pools += 1;
        report.used_blocks += used as u64;
        report.used_bytes += used as u64 * block_size;
        report.pages += settled.pages;
        let mut objects = 0;
        for &(type_index, n) in &settled.types {
            cycle.per_type.add(type_index, Class::Cold, n as u64, n as u64 * block_size);
            objects += n as u64;
        }
        let report = &mut cycle.report;
        report.objects.add(Class::Cold, objects);
        report.bytes.add(Class::Cold, objects * block_size);
        report.histogram[0] += objects;
        for &(buffer, kind) in &settled.buffers {
            cycle.note_owner(buffer, kind, Class::Cold, 0.0, 0);
        }
    }
}

impl Cycle {
    /// Notes that an object of `class` and temperature `heat`, at `owner` (0
    /// if not known), owns `buffer`, which holds `kind`, if that is one of the
    /// cycle's big blocks; whether it is.
    #[inline]
    fn note_owner(&mut self, buffer: usize, kind: BufferKind, class: Class, heat: f32, owner: usize) -> bool {
        let Some(&i) = self.big_filter.may_contain(buffer).then(|| self.big_index.get(&buffer)).flatten() else {
            return false;
        };
        self.owner_class[i] = Some(self.owner_class[i].map_or(class, |c| c.hotter(class)));
        self.owner_heat[i] = self.owner_heat[i].max(heat);
        if owner != 0 {
            self.owner_addr[i] = owner;
        }
        self.owner_kind[i] = Some(kind);
        true
    }

    /// Adds `buffer` to the cycle's big blocks if it is one, allocated since
    /// the cycle began; whether it was. A dict's table is allocated anew at
    /// each resize, and on the host an LRU cache's (inserts and evictions
    /// fill it with dummies) was, every second or so: most cycles began
    /// before it was and never read it.
    fn add_late_block(&mut self, buffer: usize) -> bool {
        let Some(size) = BIG_BLOCKS.size_of(buffer).filter(|&size| size > 0) else { return false };
        self.big_index.insert(buffer, self.big_queue.len());
        self.big_filter.insert(buffer);
        self.big_queue.push((buffer, size));
        self.owner_class.push(None);
        self.owner_heat.push(0.0);
        self.owner_addr.push(0);
        self.owner_kind.push(None);
        true
    }
}

/// A pool's last reading, if it can stand for a read now: it was settled,
/// and none of the pool's pages (from `first_page`, of `written`: pages
/// written since its arena's last read) was written since. A pass that
/// discovers types reads pools not read that way yet.
fn replayable<'a>(
    state: &'a PoolState,
    written: Option<&[u64]>,
    first_page: usize,
    pool_size: usize,
    discovering: bool,
) -> Option<&'a Settled> {
    let settled = state.settled.as_ref().filter(|s| s.discovered || !discovering)?;
    let written = written?;
    let page_written = |i: usize| written.get(i / 64).is_none_or(|word| word & (1 << (i % 64)) != 0);
    (!(first_page..first_page + pool_size.div_ceil(PAGE)).any(page_written)).then_some(settled)
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
    per_type.add(found.type_index, class, 1, size);
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: usize = 4 * PAGE;

    fn settled_pool(discovered: bool) -> PoolState {
        let settled = Settled { contents: Contents::InUse(1), discovered, ..Settled::default() };
        PoolState { settled: Some(settled), ..PoolState::default() }
    }

    #[test]
    fn a_settled_pool_is_replayed_only_while_none_of_its_pages_is_written() {
        let state = settled_pool(true);
        // The pool spans pages 4..8 of its arena.
        let written = |pages: &[usize]| {
            let mut bits = vec![0u64; 4];
            pages.iter().for_each(|&p| bits[p / 64] |= 1 << (p % 64));
            bits
        };
        assert!(replayable(&state, Some(&written(&[]) as &[u64]), 4, POOL, false).is_some());
        assert!(replayable(&state, Some(&written(&[3, 8, 200]) as &[u64]), 4, POOL, false).is_some());
        for page in 4..8 {
            assert!(replayable(&state, Some(&written(&[page]) as &[u64]), 4, POOL, false).is_none(), "page {page}");
        }
        assert!(replayable(&state, None, 4, POOL, false).is_none(), "writes not known");
        assert!(replayable(&PoolState::default(), Some(&written(&[]) as &[u64]), 4, POOL, false).is_none());
    }

    #[test]
    fn a_pass_discovering_types_reads_pools_not_read_that_way() {
        let none = vec![0u64; 4];
        assert!(replayable(&settled_pool(false), Some(&none as &[u64]), 0, POOL, true).is_none());
        assert!(replayable(&settled_pool(false), Some(&none as &[u64]), 0, POOL, false).is_some());
        assert!(replayable(&settled_pool(true), Some(&none as &[u64]), 0, POOL, true).is_some());
    }
}
