//! Reading this process's own memory without trusting that it is mapped.
//!
//! The scanner runs without the GIL while the interpreter frees objects and
//! returns arenas to the OS. `process_vm_readv` on ourselves copies memory and
//! fails with EFAULT where a plain load would crash, so a stale address can
//! cost a wrong reading, never the process.

use std::io;

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
