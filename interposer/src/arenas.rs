//! Where Python's small objects live: the pymalloc arenas created since the
//! interposer started (learned by wrapping the arena allocator), plus arenas
//! found at start-up by their pool headers (see `early`).
//!
//! The registry is a fixed array of atomics: the hook runs on the application
//! thread under the GIL and must never wait for the scanner, and a `fork()`
//! can never leave a lock held in the child.
//!
//! The scanner reads hooked arenas in place (no copy). An arena it is
//! reading stays mapped: the hook defers that arena's free to its next call
//! (`hold`).

use std::ffi::c_void;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering, fence};

/// A set of non-zero addresses, lock-free, fixed capacity.
pub struct AddrSet<const N: usize> {
    slots: [AtomicUsize; N],
    /// One past the highest slot ever used, to bound the scans.
    high: AtomicUsize,
}

impl<const N: usize> Default for AddrSet<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> AddrSet<N> {
    pub const fn new() -> Self {
        AddrSet { slots: [const { AtomicUsize::new(0) }; N], high: AtomicUsize::new(0) }
    }

    /// Adds `addr`; false when the set is full (the address is then not tracked).
    pub fn insert(&self, addr: usize) -> bool {
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.compare_exchange(0, addr, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
                self.high.fetch_max(i + 1, Ordering::AcqRel);
                return true;
            }
        }
        false
    }

    /// Removes every address in `[start, end)`.
    pub fn remove_range(&self, start: usize, end: usize) {
        let high = self.high.load(Ordering::Acquire);
        for slot in &self.slots[..high] {
            let a = slot.load(Ordering::Acquire);
            if a >= start && a < end {
                let _ = slot.compare_exchange(a, 0, Ordering::AcqRel, Ordering::Relaxed);
            }
        }
    }

    pub fn contains(&self, addr: usize) -> bool {
        let high = self.high.load(Ordering::Acquire);
        self.slots[..high].iter().any(|s| s.load(Ordering::Acquire) == addr)
    }

    pub fn snapshot(&self) -> Vec<usize> {
        self.snapshot_slots().into_iter().map(|(_, addr)| addr).collect()
    }

    /// The addresses with their slots, for `holds`.
    pub fn snapshot_slots(&self) -> Vec<(usize, usize)> {
        let high = self.high.load(Ordering::Acquire);
        (self.slots[..high].iter().enumerate())
            .map(|(slot, s)| (slot, s.load(Ordering::Acquire)))
            .filter(|&(_, addr)| addr != 0)
            .collect()
    }

    /// Whether `addr` is (still) in the set at `slot`.
    pub fn holds(&self, slot: usize, addr: usize) -> bool {
        self.slots.get(slot).is_some_and(|s| s.load(Ordering::SeqCst) == addr)
    }
}

/// Arenas allocated since start: 16384 slots cover 16 GiB of small objects.
pub static ARENAS: AddrSet<16384> = AddrSet::new();
/// First pools of arenas that existed before start (see `early`).
pub static EARLY_ARENAS: AddrSet<4096> = AddrSet::new();
/// Size of pymalloc's arenas (the layout's, set when the hook goes in).
/// The arena allocator serves other callers too, with other sizes: the
/// interpreter's frame stacks take 16 KiB chunks from it. Those are not
/// arenas and pass through untouched.
pub static ARENA_SIZE: AtomicUsize = AtomicUsize::new(0);
/// Arenas freed so far: when it moves, an address may now be a new arena.
pub static ARENA_FREES: AtomicU64 = AtomicU64::new(0);
/// The NUMA node new arenas should land on (placement sets it to a DRAM
/// node), or -1 to leave them to the process's memory policy.
pub static PREFERRED_NODE: AtomicI32 = AtomicI32::new(-1);

/// CPython's `PyObjectArenaAllocator`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ArenaAllocator {
    ctx: *mut c_void,
    alloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize)>,
}

unsafe extern "C" {
    fn PyObject_GetArenaAllocator(allocator: *mut ArenaAllocator);
    fn PyObject_SetArenaAllocator(allocator: *mut ArenaAllocator);
}

/// The allocator we wrap. Written once, under the GIL, before our hook runs.
static mut ORIGINAL: ArenaAllocator = ArenaAllocator { ctx: std::ptr::null_mut(), alloc: None, free: None };

/// The arena the scanner is reading in place, or 0.
static READING: AtomicUsize = AtomicUsize::new(0);
/// An arena the application freed while the scanner was reading it; the
/// hook frees it at its next call (under the GIL, as the allocator expects).
static DEFERRED: AtomicUsize = AtomicUsize::new(0);
/// How many frees were deferred so.
pub static DEFERRED_FREES: AtomicU64 = AtomicU64::new(0);

/// While it lives, the hooked arena at `base` stays mapped and can be read
/// in place.
pub struct Held(());

/// Holds the hooked arena at `base` mapped, if it is still one (at `slot` of
/// `ARENAS`, from `snapshot_slots`).
pub fn hold(slot: usize, base: usize) -> Option<Held> {
    READING.store(base, Ordering::SeqCst);
    // Pairs with the fence in `arena_free`: either it sees this arena being
    // read and defers the free, or this sees the arena gone.
    fence(Ordering::SeqCst);
    if ARENAS.holds(slot, base) {
        Some(Held(()))
    } else {
        READING.store(0, Ordering::SeqCst);
        None
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        READING.store(0, Ordering::SeqCst);
    }
}

/// After `fork()`: the child has no scanner, so nothing is being read.
pub fn forget_reading() {
    READING.store(0, Ordering::SeqCst);
}

/// Frees a deferred arena the scanner is done with. Hook only (GIL held).
unsafe fn free_deferred() {
    let arena = DEFERRED.load(Ordering::SeqCst);
    if arena != 0 && READING.load(Ordering::SeqCst) != arena {
        DEFERRED.store(0, Ordering::SeqCst);
        unsafe { original_free(arena as *mut c_void, ARENA_SIZE.load(Ordering::Relaxed)) };
    }
}

unsafe fn original_free(ptr: *mut c_void, size: usize) {
    // SAFETY: ORIGINAL is written before the hook is installed, never after.
    let original = unsafe { ORIGINAL };
    if let Some(free) = original.free {
        unsafe { free(original.ctx, ptr, size) }
    }
}

unsafe extern "C" fn arena_alloc(_ctx: *mut c_void, size: usize) -> *mut c_void {
    unsafe { free_deferred() };
    // SAFETY: ORIGINAL is written before the hook is installed, never after.
    let original = unsafe { ORIGINAL };
    let ptr = match original.alloc {
        Some(alloc) => unsafe { alloc(original.ctx, size) },
        None => std::ptr::null_mut(),
    };
    if !ptr.is_null() && size == ARENA_SIZE.load(Ordering::Relaxed) {
        ARENAS.insert(ptr as usize);
        // Small pages only: page writes, page heat and moves are all per
        // 4 KiB page, and a transparent huge page would make each one 2 MiB
        // (3.15 asks for huge pages on its arenas; khugepaged may collapse
        // any arena). Before the first touch, so no huge page is ever made.
        // SAFETY: the range is the arena just mapped; advice changes no data.
        unsafe { libc::madvise(ptr, size, libc::MADV_NOHUGEPAGE) };
        let node = PREFERRED_NODE.load(Ordering::Relaxed);
        if node >= 0 {
            // Before the first touch, so the pages land there; a failure only
            // leaves the arena to the default policy.
            let _ = crate::mover::prefer_node(ptr as usize, size, node);
        }
    }
    ptr
}

unsafe extern "C" fn arena_free(_ctx: *mut c_void, ptr: *mut c_void, size: usize) {
    // Forget the arena before it is unmapped: the scanner reads arenas in
    // place, and one it is reading now must stay mapped (see `hold`).
    let start = ptr as usize;
    if size != ARENA_SIZE.load(Ordering::Relaxed) {
        // Not an arena (a frame stack chunk): never registered, never read.
        unsafe { original_free(ptr, size) };
        return;
    }
    ARENA_FREES.fetch_add(1, Ordering::Relaxed);
    ARENAS.remove_range(start, start + 1);
    EARLY_ARENAS.remove_range(start, start + size);
    unsafe { free_deferred() };
    fence(Ordering::SeqCst); // see `hold`
    if READING.load(Ordering::SeqCst) == start {
        // Being read: freed by the next call. At most one arena is read at a
        // time, and the one deferred before was freed just above (or is
        // still being read, and so is not this one).
        DEFERRED.store(start, Ordering::SeqCst);
        DEFERRED_FREES.fetch_add(1, Ordering::Relaxed);
        return;
    }
    unsafe { original_free(ptr, size) }
}

static HOOKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Wraps the arena allocator (once; later calls do nothing).
///
/// # Safety
/// The caller holds the GIL of a running CPython whose symbols are visible.
pub unsafe fn install_hook(arena_size: usize) {
    if HOOKED.swap(true, Ordering::AcqRel) {
        return;
    }
    ARENA_SIZE.store(arena_size, Ordering::Relaxed);
    unsafe {
        let original = &raw mut ORIGINAL;
        PyObject_GetArenaAllocator(original);
        let mut ours = ArenaAllocator { ctx: std::ptr::null_mut(), alloc: Some(arena_alloc), free: Some(arena_free) };
        PyObject_SetArenaAllocator(&mut ours);
    }
}

/// Puts the wrapped allocator back, for a start that failed after the hook
/// went in. Arenas allocated meanwhile are freed by it as they would be by us.
///
/// # Safety
/// As `install_hook`.
pub unsafe fn uninstall_hook() {
    if HOOKED.swap(false, Ordering::AcqRel) {
        unsafe { PyObject_SetArenaAllocator(&raw mut ORIGINAL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addr_set_inserts_removes_ranges_and_fills_up() {
        let set: AddrSet<4> = AddrSet::new();
        for a in [0x1000, 0x2000, 0x3000] {
            assert!(set.insert(a));
        }
        set.remove_range(0x1800, 0x3000);
        assert_eq!(set.snapshot(), vec![0x1000, 0x3000]);
        assert!(set.insert(0x4000) && set.insert(0x5000));
        assert!(!set.insert(0x6000), "full");
        assert!(set.contains(0x5000) && !set.contains(0x2000));
    }
}
