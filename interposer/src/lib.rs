//! pytier interposer: the code that runs inside each Python process.
//!
//! In memtierd's vocabulary: the **Tracker** (`scanner`, `objects`, `arenas`)
//! reads reference counts of live objects and turns their changes into
//! temperatures (`temperature`) and page heat; the **Policy** (`policy`)
//! decides which pages belong on DRAM under the budget; the **Mover**
//! (`mover`) moves them with `move_pages`. `placement` runs the two after
//! each scan cycle.
//!
//! The scanner never holds the GIL: it copies pymalloc pools with
//! `process_vm_readv` (see `memory`) and recognises objects in the copies.
//! The `pytier` package (see `interposer/python`) imports this library as
//! the extension module `pytier._native` (see `module`), whose functions
//! call the public functions below with the GIL held. Every entry point
//! catches panics: the interposer fails open.

pub mod arenas;
pub mod brk;
pub mod control;
pub mod cputime;
pub mod early;
pub mod fds;
pub mod large;
pub mod layout;
pub mod maps;
pub mod memory;
mod module;
pub mod mover;
pub mod numa;
pub mod objects;
pub mod owners;
pub mod pages;
pub mod pagewrites;
pub mod placement;
pub mod policy;
pub mod referents;
pub mod scanner;
pub mod temperature;

use std::panic::catch_unwind;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pytier_contract::Settings;
use pytier_contract::stats::Stats;

use layout::Layout;
use placement::Placement;
use scanner::{PassReport, Tracker};
use temperature::{Class, Rules};

/// State shared by the scanner thread, the control thread and Python.
pub struct Shared {
    pub stop: AtomicBool,
    pub config: Mutex<Settings>,
    pub python: String,
    latest: Mutex<Option<PassReport>>,
    passes: AtomicU64,
    scan_nanos: AtomicU64,
    wake: Condvar,
    started: Instant,
    start_gil_seconds: f64,
    early_arenas: usize,
    socket: Option<PathBuf>,
    /// Why the control socket stopped answering, if it did.
    socket_error: OnceLock<String>,
    tracker: Mutex<Tracker>,
}

impl Shared {
    /// Everything a stats request reports.
    pub fn stats(&self) -> Stats {
        // After a fork the child may find this held by a scanner thread that
        // no longer exists, and must not wait for it; else the scanner holds
        // it only to store a report, and a caller must not miss the report.
        let forked = FORKED.load(Ordering::Acquire);
        let latest = if forked { self.latest.try_lock().ok() } else { self.latest.lock().ok() };
        let last = latest.and_then(|report| report.clone());
        let scan_seconds = self.scan_nanos.load(Ordering::Relaxed) as f64 / 1e9;
        let uptime = self.started.elapsed().as_secs_f64();
        Stats {
            active: !forked && !self.stop.load(Ordering::Relaxed),
            reason: forked.then(|| "stopped in a forked child".to_string()),
            python: self.python.clone(),
            config: self.config.try_lock().ok().map(|c| c.clone()),
            passes: self.passes.load(Ordering::Relaxed),
            uptime_seconds: uptime,
            scan_seconds_total: scan_seconds,
            scanner_cpu_fraction: if uptime > 0.0 { scan_seconds / uptime } else { 0.0 },
            // The scanner itself never takes the GIL; only start-up did.
            gil_seconds_total: self.start_gil_seconds,
            early_arenas: self.early_arenas as u64,
            deferred_arena_frees: arenas::DEFERRED_FREES.load(Ordering::Relaxed),
            socket: self.socket.as_ref().map(|p| p.display().to_string()),
            socket_error: self.socket_error.get().cloned(),
            last,
        }
    }
}

static SHARED: OnceLock<Arc<Shared>> = OnceLock::new();
static THREADS: Mutex<Vec<JoinHandle<()>>> = Mutex::new(Vec::new());
/// Set in a child after `fork()`: its copy of our state has no threads.
static FORKED: AtomicBool = AtomicBool::new(false);

/// What `start` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Started {
    Now,
    /// Already running: sitecustomize ran again, or a subinterpreter's did.
    Before,
}

/// An entry point's result, with a panic (a bug of ours) as an error.
fn failure<T>(result: std::thread::Result<Result<T, String>>, doing: &str) -> Result<T, String> {
    result.unwrap_or_else(|_| Err(format!("internal error while {doing} (a bug in pytier)")))
}

/// The interpreter's layout and the settings, or why pytier cannot run.
fn check(config_json: &str, hexversion: u32, free_threaded: bool) -> Result<(Layout, Settings), String> {
    let layout = Layout::for_version(hexversion, free_threaded).map_err(|e| e.0)?;
    let config = if config_json.trim().is_empty() {
        Settings::default()
    } else {
        Settings::from_json(config_json).map_err(|e| e.to_string())?
    };
    Ok((layout, config))
}

/// Starts tracking. Called with the GIL held.
///
/// `config_json` may be empty (defaults). `type_type` is `id(type)`.
/// `socket` may be empty (no control socket). The interpreter and the
/// settings are checked before anything changes, and on any error nothing
/// of pytier's stays in the process: it goes on as it would without pytier.
pub fn start(
    config_json: &str,
    hexversion: u32,
    free_threaded: bool,
    type_type: usize,
    socket: &str,
) -> Result<Started, String> {
    if SHARED.get().is_some() {
        return Ok(Started::Before);
    }
    let result = catch_unwind(|| start_tracking(config_json, hexversion, free_threaded, type_type, socket));
    let result = failure(result, "starting");
    if result.is_err() {
        // SAFETY: the caller holds the GIL.
        unsafe {
            arenas::uninstall_hook();
            large::uninstall_hook();
        }
    }
    result.map(|()| Started::Now)
}

fn start_tracking(
    config_json: &str,
    hexversion: u32,
    free_threaded: bool,
    type_type: usize,
    socket: &str,
) -> Result<(), String> {
    let t0 = Instant::now();
    let (layout, config) = check(config_json, hexversion, free_threaded)?;
    memory::read_exact_self(type_type, &mut [0u8; 8])
        .map_err(|e| format!("cannot read this process's memory with process_vm_readv: {e}"))?;

    // The socket is bound by the control thread a second from now (a
    // process that ends sooner never has it); that it can be is checked now.
    let socket = (!socket.is_empty()).then(|| PathBuf::from(socket));
    if let Some(socket) = &socket {
        control::check_can_bind(socket).map_err(|e| format!("cannot listen on {}: {e}", socket.display()))?;
    }

    let tracker = Tracker::new(layout, type_type);
    // SAFETY: called with the GIL held, from inside CPython. Arenas made
    // before this are found just below.
    unsafe { arenas::install_hook(layout.arena_size) };
    if config.tracking.allocator_view {
        // SAFETY: as above.
        unsafe { large::install_hook() };
    }
    // With the hook in, the heap's other arenas are all older: find them now.
    let early_arenas = early::find_arenas(&layout);
    unsafe { libc::pthread_atfork(None, None, Some(after_fork_in_child)) };

    let shared = Arc::new(Shared {
        stop: AtomicBool::new(false),
        config: Mutex::new(config),
        python: format!("{}.{}", hexversion >> 24, (hexversion >> 16) & 0xff),
        latest: Mutex::new(None),
        passes: AtomicU64::new(0),
        scan_nanos: AtomicU64::new(0),
        wake: Condvar::new(),
        started: Instant::now(),
        start_gil_seconds: t0.elapsed().as_secs_f64(),
        early_arenas,
        socket: socket.clone(),
        socket_error: OnceLock::new(),
        tracker: Mutex::new(tracker),
    });
    let _ = SHARED.set(shared.clone());

    let mut threads = THREADS.lock().map_err(|_| "internal lock poisoned")?;
    let scanner_shared = shared.clone();
    threads.push(
        std::thread::Builder::new()
            .name("pytier-scan".into())
            .spawn(move || scan_loop(scanner_shared))
            .map_err(|e| format!("cannot start the scanner thread: {e}"))?,
    );
    if let Some(socket) = socket {
        threads.push(
            std::thread::Builder::new()
                .name("pytier-control".into())
                .spawn(move || {
                    if shared.sleep(START_DELAY) {
                        control::serve(&socket, &shared);
                    }
                })
                .map_err(|e| format!("cannot start the control thread: {e}"))?,
        );
    }
    Ok(())
}

/// How long after start-up the scanner begins and the control socket is
/// bound: a process that ends sooner pays for no scan and never holds a
/// descriptor of pytier's. Short scripts, command-line tools, test runners
/// and pool workers are many of the interpreters a pod starts, and a heap is
/// worth tracking only once it has lived a while.
const START_DELAY: Duration = Duration::from_secs(1);

impl Shared {
    /// Waits `time`, or less if pytier stops meanwhile; false if it stops.
    fn sleep(&self, time: Duration) -> bool {
        if let Ok(guard) = self.latest.lock() {
            let _ = self.wake.wait_timeout_while(guard, time, |_| !self.stop.load(Ordering::Acquire));
        }
        !self.stop.load(Ordering::Acquire)
    }
}

/// Every scan interval: collects page writes (when their fault budget
/// allows) and, when the CPU budget allows, scans a slice of the heap; after
/// the last slice of a cycle, places the heap's pages. A cycle
/// over a big heap spans many slices; the next begins a scan interval after
/// the start of the last at the earliest.
fn scan_loop(shared: Arc<Shared>) {
    if !shared.sleep(START_DELAY) {
        return;
    }
    let mut next_slice = Instant::now();
    let mut next_cycle = Instant::now();
    let mut placement = Placement::default();
    if let Ok(config) = shared.config.lock() {
        placement.place_own_memory(&config);
    }
    while !shared.stop.load(Ordering::Acquire) {
        let config = shared.config.lock().map(|c| c.clone()).unwrap_or_default();
        let interval = Duration::from_millis(config.tracking.scan_interval_millis as u64);
        let started = Instant::now();
        let cpu = cputime::Stopwatch::start();
        let Ok(mut tracker) = shared.tracker.lock() else { return };
        let pages = tracker.collect_page_writes(&config).clone();
        let mut report = None;
        let slice_due = if tracker.in_cycle() { next_slice } else { next_slice.max(next_cycle) };
        if started >= slice_due {
            if !tracker.in_cycle() {
                next_cycle = started + interval;
            }
            report = tracker.scan_slice(&config, Duration::from_millis(config.tracking.slice_millis as u64));
            if let Some(report) = report.as_mut() {
                // The cycle is complete: place its pages (within the same budget).
                report.placement = placement.round(tracker.page_heat(), report.heap_bytes, &config).clone();
            }
        }
        // All of this turn's work (collection, peeks, slice, placement) adds
        // to the pause that keeps the scanner within its CPU budget. CPU
        // time, not wall time: on a busy machine a turn waits for a core,
        // and that wait is not the program's loss.
        let cpu = cpu.seconds();
        let fraction = config.tracking.cpu_fraction(shared.passes.load(Ordering::Relaxed));
        let pause = Duration::from_secs_f64(cpu * (1.0 / fraction - 1.0));
        next_slice = next_slice.max(Instant::now()) + pause;
        let slice_due = if tracker.in_cycle() { next_slice } else { next_slice.max(next_cycle) };
        let look_due = tracker.next_page_look(&config);
        drop(tracker);
        shared.scan_nanos.fetch_add((cpu * 1e9) as u64, Ordering::Relaxed);
        if let Ok(mut latest) = shared.latest.lock() {
            match report {
                Some(report) => {
                    shared.passes.fetch_add(1, Ordering::Relaxed);
                    *latest = Some(report);
                }
                None => {
                    if let Some(latest) = latest.as_mut() {
                        latest.page_writes = pages;
                    }
                }
            }
        }
        let now = Instant::now();
        let wake = (started + interval).min(slice_due).min(look_due.unwrap_or(slice_due));
        shared.sleep(wake.max(now + Duration::from_millis(1)) - now);
    }
}

extern "C" fn after_fork_in_child() {
    // The child has our memory but not our threads. Tracking stays off there;
    // the arena hook keeps working (it only touches atomics).
    FORKED.store(true, Ordering::Release);
    arenas::forget_reading();
    if let Some(shared) = SHARED.get() {
        shared.stop.store(true, Ordering::Release);
    }
}

/// Stops the threads (the control thread removes its socket). Called at
/// interpreter exit.
pub fn stop() {
    let _ = catch_unwind(|| {
        let Some(shared) = SHARED.get() else { return };
        shared.stop.store(true, Ordering::Release);
        shared.wake.notify_all();
        if FORKED.load(Ordering::Acquire) {
            return; // the threads were the parent's
        }
        if let Ok(mut threads) = THREADS.try_lock() {
            for t in threads.drain(..) {
                let _ = t.join();
            }
        }
    });
}

/// The stats as JSON, or None when tracking never started.
pub fn stats_json() -> Option<String> {
    catch_unwind(|| serde_json::to_string(&SHARED.get()?.stats()).ok()).ok().flatten()
}

/// Every heap page and its heat as of the last complete cycle, packed as
/// (address: u64, heat: f32) in native byte order, 12 bytes a page: what the
/// Policy ranks. None when not tracking (never started, or in a forked
/// child). Like `classify`, safe to call with the GIL held.
pub fn page_heat_packed() -> Option<Vec<u8>> {
    catch_unwind(|| {
        if FORKED.load(Ordering::Acquire) {
            return None;
        }
        let tracker = SHARED.get()?.tracker.lock().ok()?;
        let heat = tracker.page_heat();
        let mut packed = Vec::with_capacity(heat.len() * 12);
        for &(addr, degrees) in heat {
            packed.extend_from_slice(&(addr as u64).to_ne_bytes());
            packed.extend_from_slice(&degrees.to_ne_bytes());
        }
        Some(packed)
    })
    .ok()
    .flatten()
}

/// The class of the object at each address as of the last pass: 0 cold,
/// 1 warm, 2 hot, 255 not tracked. With `by_page`, the class of the page the
/// address is on (from page writes) instead of the object's own. None when
/// not tracking (never started, or in a forked child). The scanner never
/// takes the GIL, so waiting here for the tracker with it held cannot
/// deadlock.
pub fn classify(addresses: &[usize], by_page: bool) -> Option<Vec<u8>> {
    catch_unwind(|| {
        // In a forked child the tracker may be locked by a thread that did
        // not survive the fork.
        if FORKED.load(Ordering::Acquire) {
            return None;
        }
        let shared = SHARED.get()?;
        let tracker = shared.tracker.lock().ok()?;
        let config = shared.config.lock().ok()?.clone();
        let rules = Rules::new(config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64, 1.0);
        let classes = addresses.iter().map(|&address| {
            let class =
                if by_page { tracker.page_class_of(address, &rules) } else { tracker.class_of(address, &rules) };
            match class {
                Some(Class::Cold) => 0,
                Some(Class::Warm) => 1,
                Some(Class::Hot) => 2,
                None => 255,
            }
        });
        Some(classes.collect())
    })
    .ok()
    .flatten()
}
