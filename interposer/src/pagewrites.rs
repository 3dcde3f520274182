//! Page writes: which 4 KiB heap pages the program wrote since the last look.
//!
//! CPython writes an object's reference count every time it uses the object,
//! a plain read included (`v = d[k]` increments it, dropping `v` decrements
//! it). Reference-count *snapshots* miss those pairs; the write itself is not
//! missed by the page it lands on. This is that signal, at page granularity.
//!
//! Mechanism (Linux 6.7+): userfaultfd write-protection in asynchronous mode
//! plus the `PAGEMAP_SCAN` ioctl, which lists the written pages of a range and
//! protects them again in one call. The kernel resolves the first write to a
//! protected page by itself (nobody reads the userfaultfd, nothing waits); the
//! program pays one minor fault per written page per collection, which is why
//! collections are spaced by a fault budget. Unlike soft-dirty bits this
//! covers only the ranges we register and needs no privilege.

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use crate::fds::Guarded;

pub const PAGE: usize = 4096;

const UFFD_API: u64 = 0xaa;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_UNPOPULATED: u64 = 1 << 13;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_API: libc::c_ulong = 0xc018_aa3f;
const UFFDIO_REGISTER: libc::c_ulong = 0xc020_aa00;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;
const PAGEMAP_SCAN: libc::c_ulong = 0xc060_6610;
const PM_SCAN_WP_MATCHING: u64 = 1 << 0;
const PAGE_IS_WPALLOWED: u64 = 1 << 0;
const PAGE_IS_WRITTEN: u64 = 1 << 1;

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct PmScanArg {
    size: u64,
    flags: u64,
    start: u64,
    end: u64,
    walk_end: u64,
    vec: u64,
    vec_len: u64,
    max_pages: u64,
    category_inverted: u64,
    category_mask: u64,
    category_anyof_mask: u64,
    return_mask: u64,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct PageRegion {
    start: u64,
    end: u64,
    categories: u64,
}

pub struct PageWrites {
    uffd: Guarded<OwnedFd>,
    pagemap: Guarded<File>,
    regions: Vec<PageRegion>,
    trial_pages: Option<TrialPages>,
}

impl PageWrites {
    /// Sets up write tracking, or says why this kernel or sandbox cannot.
    pub fn open() -> Result<PageWrites, String> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(format!("userfaultfd unavailable: {}", io::Error::last_os_error()));
        }
        // SAFETY: a fresh descriptor we own.
        let uffd = Guarded::new(unsafe { OwnedFd::from_raw_fd(fd as i32) }, "userfaultfd")
            .map_err(|e| format!("userfaultfd unusable: {e}"))?;
        let mut api =
            UffdioApi { api: UFFD_API, features: UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, ioctls: 0 };
        // SAFETY: `api` is the struct this ioctl reads and writes.
        if unsafe { libc::ioctl(uffd.get().map_err(|e| e.to_string())?.as_raw_fd(), UFFDIO_API, &mut api) } != 0 {
            return Err(format!(
                "userfaultfd asynchronous write-protection unsupported (Linux 6.7+ needed): {}",
                io::Error::last_os_error()
            ));
        }
        let pagemap = File::open("/proc/self/pagemap")
            .and_then(|f| Guarded::new(f, "/proc/self/pagemap"))
            .map_err(|e| format!("cannot open /proc/self/pagemap: {e}"))?;
        let tracker = PageWrites { uffd, pagemap, regions: vec![PageRegion::default(); 64], trial_pages: None };
        tracker.check_scan()?;
        Ok(tracker)
    }

    /// PAGEMAP_SCAN arrived in Linux 6.7: try it once on an empty range.
    fn check_scan(&self) -> Result<(), String> {
        let here = &self.regions as *const _ as usize & !(PAGE - 1);
        let mut regions = [PageRegion::default(); 1];
        self.scan(here, here + PAGE, false, &mut regions)
            .map(|_| ())
            .map_err(|e| format!("PAGEMAP_SCAN unsupported (Linux 6.7+ needed): {e}"))
    }

    /// Whether both descriptors are still pytier's (see `fds`); else why not.
    pub fn check(&self) -> Result<(), String> {
        self.uffd.get().and(self.pagemap.get()).map(|_| ()).map_err(|e| e.to_string())
    }

    /// Starts tracking writes to `[start, start + len)`, page aligned. Fails
    /// harmlessly if the range is no longer (or not only) anonymous memory.
    pub fn watch(&self, start: usize, len: usize) -> io::Result<()> {
        let mut register =
            UffdioRegister { start: start as u64, len: len as u64, mode: UFFDIO_REGISTER_MODE_WP, ioctls: 0 };
        // SAFETY: `register` is the struct this ioctl reads and writes.
        if unsafe { libc::ioctl(self.uffd.get()?.as_raw_fd(), UFFDIO_REGISTER, &mut register) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether any page of the range is still registered: an arena freed and
    /// allocated again at the same address is a new, unwatched mapping.
    pub fn is_watched(&self, start: usize, len: usize) -> bool {
        let mut regions = [PageRegion::default(); 1];
        let mut arg = self.scan_arg(start, start + len, false, &mut regions);
        arg.category_mask = PAGE_IS_WPALLOWED;
        arg.return_mask = PAGE_IS_WPALLOWED;
        arg.max_pages = 1;
        let Ok(pagemap) = self.pagemap.get() else { return false };
        // SAFETY: as in `scan`.
        unsafe { libc::ioctl(pagemap.as_raw_fd(), PAGEMAP_SCAN, &mut arg) > 0 }
    }

    /// Calls `written(page)` for every watched page in `[start, start + len)`
    /// written since the last call (or since `watch`), and protects them
    /// again. Returns how many pages were written.
    pub fn take_written(&mut self, start: usize, len: usize, written: impl FnMut(usize)) -> io::Result<usize> {
        self.written(start, len, true, written)
    }

    /// As `take_written`, but protects nothing: the pages stay written, and
    /// the program pays no fault.
    pub fn peek_written(&mut self, start: usize, len: usize, written: impl FnMut(usize)) -> io::Result<usize> {
        self.written(start, len, false, written)
    }

    fn written(
        &mut self,
        start: usize,
        len: usize,
        protect: bool,
        mut written: impl FnMut(usize),
    ) -> io::Result<usize> {
        let end = start + len;
        let mut at = start;
        let mut count = 0;
        let mut regions = std::mem::take(&mut self.regions);
        let result = loop {
            let (n, walk_end) = match self.scan(at, end, protect, &mut regions) {
                Ok(done) => done,
                Err(e) => break Err(e),
            };
            for region in &regions[..n] {
                for page in (region.start as usize..region.end as usize).step_by(PAGE) {
                    written(page);
                    count += 1;
                }
            }
            if walk_end >= end {
                break Ok(count);
            }
            at = walk_end;
        };
        self.regions = regions;
        result
    }

    /// One PAGEMAP_SCAN call: written, write-protectable pages of the range.
    /// Returns the regions filled and where the walk stopped.
    fn scan(&self, start: usize, end: usize, protect: bool, out: &mut [PageRegion]) -> io::Result<(usize, usize)> {
        let mut arg = self.scan_arg(start, end, protect, out);
        // SAFETY: `arg` describes `out`, which the kernel fills up to vec_len.
        let n = unsafe { libc::ioctl(self.pagemap.get()?.as_raw_fd(), PAGEMAP_SCAN, &mut arg) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((n as usize, arg.walk_end as usize))
    }

    fn scan_arg(&self, start: usize, end: usize, protect: bool, out: &mut [PageRegion]) -> PmScanArg {
        PmScanArg {
            size: std::mem::size_of::<PmScanArg>() as u64,
            flags: if protect { PM_SCAN_WP_MATCHING } else { 0 },
            start: start as u64,
            end: end as u64,
            walk_end: 0,
            vec: out.as_mut_ptr() as u64,
            vec_len: out.len() as u64,
            max_pages: 0,
            category_inverted: 0,
            // Both: a page outside any registered range also lacks the
            // write-protect bit, and must not count as written.
            category_mask: PAGE_IS_WRITTEN | PAGE_IS_WPALLOWED,
            category_anyof_mask: 0,
            return_mask: PAGE_IS_WRITTEN,
        }
    }

    /// What the program pays for one written page, timed `trials` times:
    /// writes to protected pages of our own, minus the same writes
    /// unprotected, per page, each within `DEFAULT_FAULT_SECONDS` and
    /// `MAX_FAULT_SECONDS`. Empty when no trial could run.
    pub fn time_faults(&mut self, trials: usize) -> Vec<f64> {
        if self.trial_pages.is_none() {
            self.trial_pages = TrialPages::map(self);
        }
        let Some(base) = self.trial_pages.as_ref().map(|pages| pages.base) else { return Vec::new() };
        let mut costs = Vec::with_capacity(trials);
        for _ in 0..trials {
            if self.take_written(base, TrialPages::LEN, |_| {}).is_err() {
                break;
            }
            let protected = TrialPages::touch(base);
            let plain = TrialPages::touch(base);
            costs
                .push(((protected - plain) / TrialPages::COUNT as f64).clamp(DEFAULT_FAULT_SECONDS, MAX_FAULT_SECONDS));
        }
        costs
    }
}

/// Pages of pytier's own that `time_faults` writes: mapped, written and
/// watched once, so that a trial protects them and writes them and nothing
/// more. A fresh mapping for each trial also took 64 page faults to fill it
/// and a second TLB flush to unmap it (see `take_written_run` in `pages`).
struct TrialPages {
    base: usize,
}

impl TrialPages {
    const COUNT: usize = 64;
    const LEN: usize = Self::COUNT * PAGE;

    fn map(writes: &PageWrites) -> Option<TrialPages> {
        // SAFETY: a private anonymous mapping, unmapped by `drop`.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return None;
        }
        let pages = TrialPages { base: base as usize };
        Self::touch(pages.base); // fill
        writes.watch(pages.base, Self::LEN).ok()?;
        Some(pages)
    }

    /// Writes a byte to each page of the trial pages at `base` (alive while
    /// `PageWrites` holds them); how long that took.
    fn touch(base: usize) -> f64 {
        let started = Instant::now();
        for page in 0..Self::COUNT {
            // SAFETY: inside the mapping, which outlives this call.
            unsafe { std::ptr::write_volatile((base + page * PAGE) as *mut u8, 1) };
        }
        started.elapsed().as_secs_f64()
    }
}

impl Drop for TrialPages {
    fn drop(&mut self) {
        // SAFETY: our mapping, used by nothing else.
        unsafe { libc::munmap(self.base as *mut libc::c_void, Self::LEN) };
    }
}

/// A minor write-protect fault on a typical x86 server: the least we assume.
pub const DEFAULT_FAULT_SECONDS: f64 = 1e-6;
/// The most one trial counts: anything dearer was the trial interrupted.
const MAX_FAULT_SECONDS: f64 = 1e-4;

#[cfg(test)]
mod tests {
    use super::*;

    /// The tracker, or a skip only where the environment says this kernel
    /// lacks it (PYTIER_NO_PAGE_WRITES=1); anywhere else a failure is a bug.
    fn open_or_skip() -> Option<PageWrites> {
        match PageWrites::open() {
            Ok(tracker) => Some(tracker),
            Err(reason) if std::env::var("PYTIER_NO_PAGE_WRITES").as_deref() == Ok("1") => {
                eprintln!("skipping: {reason}");
                None
            }
            Err(reason) => panic!("{reason} (set PYTIER_NO_PAGE_WRITES=1 on kernels older than 6.7)"),
        }
    }

    #[test]
    fn fault_trials_write_the_same_watched_pages_each_time() {
        let Some(mut tracker) = open_or_skip() else { return };
        assert_eq!(tracker.time_faults(3).len(), 3);
        let base = tracker.trial_pages.as_ref().map(|pages| pages.base).expect("trial pages mapped");
        let costs = tracker.time_faults(2);
        assert_eq!(costs.len(), 2);
        assert!(costs.iter().all(|cost| (DEFAULT_FAULT_SECONDS..=MAX_FAULT_SECONDS).contains(cost)));
        assert_eq!(tracker.trial_pages.as_ref().map(|pages| pages.base), Some(base), "no new mapping");
        // The last trial wrote every page after protecting it.
        assert_eq!(tracker.peek_written(base, TrialPages::LEN, |_| {}).unwrap(), TrialPages::COUNT);
    }

    #[test]
    fn reports_written_pages_once_and_not_read_ones() {
        let Some(mut tracker) = open_or_skip() else { return };
        let mut memory = vec![0u8; 40 * PAGE];
        let start = (memory.as_ptr() as usize + PAGE - 1) & !(PAGE - 1);
        let len = 32 * PAGE;
        tracker.watch(start, len).unwrap();
        // Registration alone counts every present page as written: baseline.
        tracker.take_written(start, len, |_| {}).unwrap();
        assert!(tracker.is_watched(start, len));
        let offset = start - memory.as_ptr() as usize;
        for page in [3usize, 7, 8, 31] {
            memory[offset + page * PAGE + 100] = 1;
        }
        let read: u64 = (0..32).map(|p| memory[offset + p * PAGE + 5] as u64).sum();
        assert_eq!(read, 0);
        let mut seen = Vec::new();
        tracker.take_written(start, len, |page| seen.push((page - start) / PAGE)).unwrap();
        assert_eq!(seen, vec![3, 7, 8, 31]);
        let again = tracker.take_written(start, len, |_| {}).unwrap();
        assert_eq!(again, 0, "protected again after a collection");
    }

    #[test]
    fn unwatched_memory_never_counts_as_written() {
        let Some(mut tracker) = open_or_skip() else { return };
        let mut memory = vec![1u8; 8 * PAGE];
        memory[PAGE * 2] = 3;
        let start = (memory.as_ptr() as usize + PAGE - 1) & !(PAGE - 1);
        assert_eq!(tracker.take_written(start, 4 * PAGE, |_| {}).unwrap(), 0);
        assert!(!tracker.is_watched(start, 4 * PAGE));
    }
}
