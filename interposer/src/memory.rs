//! Reading this process's own memory without trusting that it is mapped.
//!
//! The scanner runs without the GIL while the interpreter frees objects and
//! returns arenas to the OS. `process_vm_readv` on ourselves copies memory and
//! fails with EFAULT where a plain load would crash, so a stale address can
//! cost a wrong reading, never the process.

use std::io;
use std::sync::atomic::{AtomicU64, Ordering};

/// Memory the scanner reads words from: a copy in a byte slice, or an arena
/// read in place (`InPlace`). Offsets are in bytes; a read past the end is
/// `None`.
pub trait Words {
    /// How many bytes there are.
    fn size(&self) -> usize;
    /// The little-endian word at `at` (8-byte aligned in place).
    fn word(&self, at: usize) -> Option<u64>;
}

impl Words for [u8] {
    fn size(&self) -> usize {
        self.len()
    }
    #[inline(always)]
    fn word(&self, at: usize) -> Option<u64> {
        Some(u64::from_le_bytes(self.get(at..at.checked_add(8)?)?.try_into().ok()?))
    }
}

/// `len` bytes at `addr` of live memory that another thread may be writing,
/// read a word at a time where they are. Only for memory that stays mapped
/// while it is read (see `arenas::hold`).
#[derive(Clone, Copy)]
pub struct InPlace {
    addr: usize,
    len: usize,
}

impl InPlace {
    /// # Safety
    /// `[addr, addr + len)` is mapped and readable, 8-byte aligned, and stays
    /// so for as long as this value (and those made from it) is used.
    pub unsafe fn new(addr: usize, len: usize) -> InPlace {
        InPlace { addr, len }
    }

    /// The part `[at, at + len)` (clamped to this one).
    pub fn part(&self, at: usize, len: usize) -> InPlace {
        let at = at.min(self.len);
        InPlace { addr: self.addr + at, len: len.min(self.len - at) }
    }
}

impl Words for InPlace {
    fn size(&self) -> usize {
        self.len
    }
    #[inline(always)]
    fn word(&self, at: usize) -> Option<u64> {
        if at.checked_add(8)? > self.len || !at.is_multiple_of(8) {
            return None;
        }
        // SAFETY: in bounds of memory `new`'s caller keeps mapped, and
        // aligned. An atomic load: the interpreter may be writing the word.
        let word = unsafe { AtomicU64::from_ptr((self.addr + at) as *mut u64) };
        Some(word.load(Ordering::Relaxed))
    }
}

/// Copies `buf.len()` bytes at `addr` of this process into `buf`. Returns how
/// many bytes were copied (fewer when the range runs into unmapped memory).
pub fn read_self(addr: usize, buf: &mut [u8]) -> io::Result<usize> {
    let local = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    let remote = libc::iovec { iov_base: addr as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: `local` is our own writable buffer; `remote` is only read by the
    // kernel, which checks it.
    let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 { Err(io::Error::last_os_error()) } else { Ok(n as usize) }
}

/// Copies exactly `buf.len()` bytes, or fails.
pub fn read_exact_self(addr: usize, buf: &mut [u8]) -> io::Result<()> {
    match read_self(addr, buf)? {
        n if n == buf.len() => Ok(()),
        n => Err(io::Error::new(io::ErrorKind::UnexpectedEof, format!("only {n} of {} bytes mapped", buf.len()))),
    }
}

/// Copies `len` bytes from each of `addrs` into consecutive `len`-byte
/// pieces of `out`, in batches of up to 1024 addresses per system call. Returns
/// whether each piece was read; an unmapped address fails alone.
pub fn read_each(addrs: &[usize], len: usize, out: &mut Vec<u8>) -> Vec<bool> {
    out.clear();
    out.resize(addrs.len() * len, 0);
    let mut ok = vec![false; addrs.len()];
    let mut next = 0;
    while next < addrs.len() {
        let batch = &addrs[next..addrs.len().min(next + 1024)];
        let local = libc::iovec { iov_base: out[next * len..].as_mut_ptr().cast(), iov_len: batch.len() * len };
        let remote: Vec<libc::iovec> =
            batch.iter().map(|a| libc::iovec { iov_base: *a as *mut libc::c_void, iov_len: len }).collect();
        // SAFETY: `local` is our own buffer, `remote` is only read by the
        // kernel, which checks it. The kernel stops at the first piece it
        // cannot read: that one is skipped and the rest read again.
        let n = unsafe { libc::process_vm_readv(libc::getpid(), &local, 1, remote.as_ptr(), remote.len() as _, 0) };
        let whole = if n < 0 { 0 } else { n as usize / len };
        ok[next..next + whole].fill(true);
        next += whole + usize::from(whole < batch.len());
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_mapped_memory_and_survives_unmapped() {
        let data = [7u8, 1, 2, 3, 4, 5, 6, 9];
        let mut buf = [0u8; 8];
        read_exact_self(data.as_ptr() as usize, &mut buf).unwrap();
        assert_eq!(buf, data);
        // Page zero is never mapped: an error, not a crash.
        assert!(read_exact_self(0x10, &mut buf).is_err());
    }

    #[test]
    fn reads_each_address_and_skips_unmapped_ones() {
        let a = [1u8; 16];
        let b = [2u8; 16];
        let mut out = Vec::new();
        let ok = read_each(&[a.as_ptr() as usize, 0x10, b.as_ptr() as usize], 16, &mut out);
        assert_eq!(ok, vec![true, false, true]);
        assert_eq!(&out[..16], &a);
        assert_eq!(&out[32..], &b);
    }
}
