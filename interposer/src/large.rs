//! The allocator view: blocks too big for pymalloc's pools (over 512 bytes).
//! Big objects (long strings, big tuples) and big buffers (list item arrays,
//! dict tables) live there, outside the pools the scanner reads.
//!
//! pymalloc (the OBJ and MEM domains) hands every request over 512 bytes, and
//! every free of such a block, to the RAW domain's allocator. Wrapping the RAW
//! domain therefore sees exactly those blocks (plus C code's own
//! `PyMem_RawMalloc` calls) and costs nothing on the small allocations that
//! make up nearly all of a Python program's: wrapping OBJ and MEM instead put
//! a call on every one of them, measured at +8 to +14% on an allocation-bound
//! loop. RAW allocators are called without the GIL, so the table takes no locks.

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// pymalloc serves requests up to this size itself.
pub const SMALL_REQUEST_THRESHOLD: usize = 512;

const EMPTY: usize = 0;
const GONE: usize = 1;
const MAX_PROBES: usize = 64;

/// Address → size of live big blocks; open addressing, fixed capacity, no
/// locks (the writers are allocator calls, the reader is the scanner).
pub struct BlockTable<const N: usize> {
    keys: [AtomicUsize; N],
    sizes: [AtomicUsize; N],
    /// Blocks not recorded because their probe run was full.
    pub dropped: AtomicU64,
}

impl<const N: usize> Default for BlockTable<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> BlockTable<N> {
    pub const fn new() -> Self {
        BlockTable {
            keys: [const { AtomicUsize::new(EMPTY) }; N],
            sizes: [const { AtomicUsize::new(0) }; N],
            dropped: AtomicU64::new(0),
        }
    }

    /// Where the table lies: its address and its size in bytes.
    pub fn span(&self) -> (usize, usize) {
        (self as *const Self as usize, std::mem::size_of::<Self>())
    }

    fn home(addr: usize) -> usize {
        ((addr >> 4) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as usize >> 16 & (N - 1)
    }

    /// Records a block that was just allocated.
    pub fn insert(&self, addr: usize, size: usize) {
        let home = Self::home(addr);
        for probe in 0..MAX_PROBES {
            let i = (home + probe) & (N - 1);
            let key = self.keys[i].load(Ordering::Acquire);
            if (key == EMPTY || key == GONE)
                && self.keys[i].compare_exchange(key, addr, Ordering::AcqRel, Ordering::Relaxed).is_ok()
            {
                self.sizes[i].store(size, Ordering::Release);
                return;
            }
        }
        self.dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Forgets the block at `addr`, if recorded.
    pub fn remove(&self, addr: usize) {
        let home = Self::home(addr);
        for probe in 0..MAX_PROBES {
            let i = (home + probe) & (N - 1);
            match self.keys[i].load(Ordering::Acquire) {
                EMPTY => return,
                key if key == addr => {
                    let _ = self.keys[i].compare_exchange(addr, GONE, Ordering::AcqRel, Ordering::Relaxed);
                    return;
                }
                _ => {}
            }
        }
    }

    /// The size of the block at `addr`, if recorded (0 for a moment while
    /// it is being recorded).
    pub fn size_of(&self, addr: usize) -> Option<usize> {
        let home = Self::home(addr);
        for probe in 0..MAX_PROBES {
            let i = (home + probe) & (N - 1);
            match self.keys[i].load(Ordering::Acquire) {
                EMPTY => return None,
                key if key == addr => return Some(self.sizes[i].load(Ordering::Acquire)),
                _ => {}
            }
        }
        None
    }

    /// Every recorded block as (address, size). A block freed while this runs
    /// may still be listed: readers must not trust the memory to be there.
    pub fn snapshot(&self) -> Vec<(usize, usize)> {
        let mut blocks = Vec::new();
        for (key, size) in self.keys.iter().zip(&self.sizes) {
            let addr = key.load(Ordering::Acquire);
            if addr != EMPTY && addr != GONE {
                blocks.push((addr, size.load(Ordering::Acquire)));
            }
        }
        blocks
    }
}

/// Big blocks: 64 Ki entries, 1 MiB, touched only as used.
pub static BIG_BLOCKS: BlockTable<65536> = BlockTable::new();

/// CPython's `PyMemAllocatorEx`.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct MemAllocator {
    ctx: *mut c_void,
    malloc: Option<unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void>,
    calloc: Option<unsafe extern "C" fn(*mut c_void, usize, usize) -> *mut c_void>,
    realloc: Option<unsafe extern "C" fn(*mut c_void, *mut c_void, usize) -> *mut c_void>,
    free: Option<unsafe extern "C" fn(*mut c_void, *mut c_void)>,
}

unsafe extern "C" {
    fn PyMem_GetAllocator(domain: i32, allocator: *mut MemAllocator);
    fn PyMem_SetAllocator(domain: i32, allocator: *mut MemAllocator);
}

const DOMAIN_RAW: i32 = 0;

/// The allocator we wrap. Written once, under the GIL, before our wrapper is
/// installed, and never after.
static mut ORIGINAL: MemAllocator =
    MemAllocator { ctx: std::ptr::null_mut(), malloc: None, calloc: None, realloc: None, free: None };

fn original() -> MemAllocator {
    // SAFETY: see ORIGINAL.
    unsafe { ORIGINAL }
}

// The wrappers are handed the original's context (see `install_hook`), whose
// functions are never null.

unsafe extern "C" fn big_malloc(ctx: *mut c_void, size: usize) -> *mut c_void {
    let ptr = unsafe { original().malloc.unwrap_unchecked()(ctx, size) };
    if size > SMALL_REQUEST_THRESHOLD && !ptr.is_null() {
        BIG_BLOCKS.insert(ptr as usize, size);
    }
    ptr
}

unsafe extern "C" fn big_calloc(ctx: *mut c_void, n: usize, elsize: usize) -> *mut c_void {
    let ptr = unsafe { original().calloc.unwrap_unchecked()(ctx, n, elsize) };
    let size = n.saturating_mul(elsize);
    if size > SMALL_REQUEST_THRESHOLD && !ptr.is_null() {
        BIG_BLOCKS.insert(ptr as usize, size);
    }
    ptr
}

unsafe extern "C" fn big_realloc(ctx: *mut c_void, old: *mut c_void, size: usize) -> *mut c_void {
    let ptr = unsafe { original().realloc.unwrap_unchecked()(ctx, old, size) };
    if !ptr.is_null() {
        // A failed realloc leaves the old block as it was.
        BIG_BLOCKS.remove(old as usize);
        if size > SMALL_REQUEST_THRESHOLD {
            BIG_BLOCKS.insert(ptr as usize, size);
        }
    }
    ptr
}

unsafe extern "C" fn big_free(ctx: *mut c_void, ptr: *mut c_void) {
    BIG_BLOCKS.remove(ptr as usize);
    unsafe { original().free.unwrap_unchecked()(ctx, ptr) }
}

static HOOKED: AtomicBool = AtomicBool::new(false);

/// Wraps the RAW allocator (once; later calls do nothing). Memory allocated
/// before stays valid: the wrapper hands every call to the allocator it wraps.
///
/// # Safety
/// The caller holds the GIL of a running CPython whose symbols are visible.
pub unsafe fn install_hook() {
    if HOOKED.swap(true, Ordering::AcqRel) {
        return;
    }
    unsafe {
        PyMem_GetAllocator(DOMAIN_RAW, &raw mut ORIGINAL);
        let mut ours = MemAllocator {
            ctx: original().ctx,
            malloc: Some(big_malloc),
            calloc: Some(big_calloc),
            realloc: Some(big_realloc),
            free: Some(big_free),
        };
        PyMem_SetAllocator(DOMAIN_RAW, &mut ours);
    }
}

/// Puts the wrapped allocator back (see `arenas::uninstall_hook`).
///
/// # Safety
/// As `install_hook`.
pub unsafe fn uninstall_hook() {
    if HOOKED.swap(false, Ordering::AcqRel) {
        unsafe { PyMem_SetAllocator(DOMAIN_RAW, &raw mut ORIGINAL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_forgets_and_reuses_slots() {
        let table: BlockTable<64> = BlockTable::new();
        table.insert(0x7000_0000, 600);
        table.insert(0x7000_1000, 4096);
        table.remove(0x7000_0000);
        table.remove(0x7000_2000); // never recorded
        assert_eq!(table.snapshot(), vec![(0x7000_1000, 4096)]);
        // Freed slots are reused, so churn does not fill the table.
        for i in 0..10_000usize {
            let addr = 0x5000_0000 + i * 1024;
            table.insert(addr, 1024);
            table.remove(addr);
        }
        assert_eq!(table.snapshot().len(), 1);
        assert_eq!(table.dropped.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_full_table_drops_and_counts() {
        let table: BlockTable<64> = BlockTable::new();
        for i in 0..100usize {
            table.insert(0x6000_0000 + i * 16, 1000);
        }
        assert_eq!(table.snapshot().len(), 64);
        assert_eq!(table.dropped.load(Ordering::Relaxed), 36);
    }
}
