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
//! Python loads this library with `ctypes.PyDLL` from the `pytier` package
//! (see `interposer/python`) and calls the `pytier_*` functions below with the
//! GIL held. Every entry point catches panics: the interposer fails open.

pub mod arenas;
pub mod control;
pub mod early;
pub mod fds;
pub mod large;
pub mod layout;
pub mod memory;
pub mod mover;
pub mod numa;
pub mod objects;
pub mod pages;
pub mod pagewrites;
pub mod placement;
pub mod policy;
pub mod scanner;
pub mod temperature;

use std::ffi::{CStr, CString, c_char};
use std::os::unix::net::UnixListener;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pytier_contract::Settings;
use pytier_contract::stats::Stats;

use fds::Guarded;
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
        // try_lock: after a fork the child may find this held by a scanner
        // thread that no longer exists; it must not wait for it.
        let last = match self.latest.try_lock() {
            Ok(guard) => guard.clone(),
            Err(_) => None,
        };
        let forked = FORKED.load(Ordering::Relaxed);
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

/// Whether `pytier_start` would refuse this interpreter or these settings:
/// 0 if not, else 1 with a one-line reason in `err`. Changes nothing, so a
/// refused process stays exactly as it was.
///
/// # Safety
/// `config_json` is a C string; `err` holds `err_len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pytier_check(
    config_json: *const c_char,
    hexversion: u32,
    free_threaded: i32,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    let result = catch_unwind(AssertUnwindSafe(|| {
        let config = unsafe { CStr::from_ptr(config_json) }.to_string_lossy().into_owned();
        check(&config, hexversion, free_threaded != 0)
    }));
    let Some(message) = failure(result, "checking") else { return 0 };
    unsafe { write_c_string(&message, err, err_len) };
    1
}

/// Why an entry point failed, if it did (a panic is a bug of ours).
fn failure<T>(result: std::thread::Result<Result<T, String>>, doing: &str) -> Option<String> {
    match result {
        Ok(Ok(_)) => None,
        Ok(Err(message)) => Some(message),
        Err(_) => Some(format!("internal error while {doing} (a bug in pytier)")),
    }
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

/// Starts learning of new arenas. Call first, with the GIL held, so that
/// arenas allocated while `pytier_start`'s arguments are built are seen.
#[unsafe(no_mangle)]
pub extern "C" fn pytier_install_hook() {
    // SAFETY: called from CPython with the GIL held (ctypes.PyDLL).
    let _ = catch_unwind(|| unsafe { arenas::install_hook() });
}

/// Starts tracking. Called once, with the GIL held.
///
/// `config_json` may be empty (defaults). `type_type` is `id(type)`.
/// `socket_path` may be empty (no control socket). Returns 0 when started,
/// 2 when it was already running (sitecustomize ran twice), else 1 with a
/// one-line reason in `err`; the program continues untouched either way.
///
/// # Safety
/// Pointers must be valid as described; the caller holds the GIL.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pytier_start(
    config_json: *const c_char,
    hexversion: u32,
    free_threaded: i32,
    type_type: usize,
    socket_path: *const c_char,
    err: *mut c_char,
    err_len: usize,
) -> i32 {
    if SHARED.get().is_some() {
        return 2;
    }
    let result = catch_unwind(AssertUnwindSafe(|| unsafe {
        let config = CStr::from_ptr(config_json).to_string_lossy().into_owned();
        let socket = CStr::from_ptr(socket_path).to_string_lossy().into_owned();
        start(&config, hexversion, free_threaded != 0, type_type, &socket)
    }));
    let Some(message) = failure(result, "starting") else { return 0 };
    // Not started: the process goes on as it would without pytier.
    // SAFETY: the caller holds the GIL.
    unsafe {
        arenas::uninstall_hook();
        large::uninstall_hook();
        write_c_string(&message, err, err_len);
    }
    1
}

fn start(
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

    let listener = if socket.is_empty() {
        None
    } else {
        let _ = std::fs::remove_file(socket); // a stale socket of an earlier process with this pid
        let listener = bind(Path::new(socket)).and_then(|l| Guarded::new(l, "control socket"));
        Some(listener.map_err(|e| format!("cannot listen on {socket}: {e}"))?)
    };

    let tracker = Tracker::new(layout, type_type);
    // SAFETY: called with the GIL held, from inside CPython. Usually already
    // done by pytier_install_hook.
    unsafe { arenas::install_hook() };
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
        socket: listener.as_ref().map(|_| PathBuf::from(socket)),
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
    if let Some(listener) = listener {
        threads.push(
            std::thread::Builder::new()
                .name("pytier-control".into())
                .spawn(move || control::serve(listener, shared))
                .map_err(|e| format!("cannot start the control thread: {e}"))?,
        );
    }
    Ok(())
}

/// Binds a Unix socket, also at a path longer than a socket address holds
/// (108 bytes): through its directory's descriptor in `/proc/self/fd`.
fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::fd::AsRawFd;
    match (UnixListener::bind(path), path.parent(), path.file_name()) {
        (Err(e), Some(dir), Some(name)) if e.kind() == std::io::ErrorKind::InvalidInput => {
            let dir = std::fs::File::open(dir)?;
            UnixListener::bind(Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name))
        }
        (result, _, _) => result,
    }
}

/// How long after start-up the scanner begins.
const FIRST_SCAN_DELAY: Duration = Duration::from_secs(1);

/// Every scan interval: collects page writes (when their fault budget
/// allows) and, when the CPU budget allows, scans a slice of the heap; after
/// the last slice of a cycle, places the heap's pages. A cycle
/// over a big heap spans many slices; the next begins a scan interval after
/// the start of the last at the earliest.
fn scan_loop(shared: Arc<Shared>) {
    // A process that ends within its first second pays for no scan: short
    // scripts, command-line tools, test runners and pool workers are many of
    // the interpreters a pod starts, and a heap is worth tracking only once
    // it has lived a while.
    if let Ok(guard) = shared.latest.lock() {
        let _ = shared.wake.wait_timeout_while(guard, FIRST_SCAN_DELAY, |_| !shared.stop.load(Ordering::Acquire));
    }
    let mut next_slice = Instant::now();
    let mut next_cycle = Instant::now();
    let mut placement = Placement::default();
    while !shared.stop.load(Ordering::Acquire) {
        let config = shared.config.lock().map(|c| c.clone()).unwrap_or_default();
        let interval = Duration::from_millis(config.tracking.scan_interval_millis as u64);
        let started = Instant::now();
        let cpu_started = scanner::thread_cpu_seconds();
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
        let cpu = scanner::thread_cpu_seconds() - cpu_started;
        let pause = Duration::from_secs_f64(cpu * (1.0 / config.tracking.max_cpu_fraction - 1.0));
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
        let wake = wake.max(now + Duration::from_millis(1));
        if let Ok(guard) = shared.latest.lock() {
            let _ = shared.wake.wait_timeout_while(guard, wake - now, |_| !shared.stop.load(Ordering::Acquire));
        }
    }
}

extern "C" fn after_fork_in_child() {
    // The child has our memory but not our threads. Tracking stays off there;
    // the arena hook keeps working (it only touches atomics).
    FORKED.store(true, Ordering::Release);
    if let Some(shared) = SHARED.get() {
        shared.stop.store(true, Ordering::Release);
    }
}

/// Stops the threads and removes the socket. Called at interpreter exit.
#[unsafe(no_mangle)]
pub extern "C" fn pytier_stop() {
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
        if let Some(socket) = &shared.socket {
            let _ = std::fs::remove_file(socket);
        }
    });
}

/// Stats as a JSON C string (free it with `pytier_free`), or NULL when
/// tracking never started.
#[unsafe(no_mangle)]
pub extern "C" fn pytier_stats() -> *mut c_char {
    catch_unwind(|| {
        let shared = SHARED.get()?;
        CString::new(serde_json::to_string(&shared.stats()).ok()?).ok().map(CString::into_raw)
    })
    .ok()
    .flatten()
    .unwrap_or(std::ptr::null_mut())
}

/// Classes of the objects at `addrs` as of the last pass, written to `out`:
/// 0 cold, 1 warm, 2 hot, -1 not tracked. With `by_page` set, the class of
/// the page each address is on (from page writes) instead of the object's
/// own. Returns 0, or -1 when not tracking (never started, or in a forked
/// child).
///
/// # Safety
/// `addrs` and `out` point to `n` elements. Call with the GIL held or not:
/// the scanner never takes it, so waiting for it cannot deadlock.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pytier_classify(addrs: *const usize, out: *mut i8, n: usize, by_page: i32) -> i32 {
    catch_unwind(AssertUnwindSafe(|| {
        // In a forked child the tracker may be locked by a thread that did
        // not survive the fork.
        if FORKED.load(Ordering::Acquire) {
            return None;
        }
        let shared = SHARED.get()?;
        let tracker = shared.tracker.lock().ok()?;
        let config = shared.config.lock().ok()?.clone();
        let rules = Rules::new(config.tracking.hot_threshold, config.tracking.decay_half_life_seconds as f64, 1.0);
        let (addrs, out) = unsafe { (std::slice::from_raw_parts(addrs, n), std::slice::from_raw_parts_mut(out, n)) };
        for (addr, out) in addrs.iter().zip(out) {
            let class =
                if by_page != 0 { tracker.page_class_of(*addr, &rules) } else { tracker.class_of(*addr, &rules) };
            *out = match class {
                Some(Class::Cold) => 0,
                Some(Class::Warm) => 1,
                Some(Class::Hot) => 2,
                None => -1,
            };
        }
        Some(0)
    }))
    .ok()
    .flatten()
    .unwrap_or(-1)
}

/// Frees a string returned by `pytier_stats`.
///
/// # Safety
/// `s` came from `pytier_stats` and is freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn pytier_free(s: *mut c_char) {
    if !s.is_null() {
        drop(unsafe { CString::from_raw(s) });
    }
}

unsafe fn write_c_string(message: &str, out: *mut c_char, len: usize) {
    if out.is_null() || len == 0 {
        return;
    }
    let n = message.len().min(len - 1);
    unsafe {
        std::ptr::copy_nonoverlapping(message.as_ptr().cast(), out, n);
        *out.add(n) = 0;
    }
}
