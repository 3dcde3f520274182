//! The Mover: where pages are, and moving them, with `move_pages(2)` on this
//! process. A page move never changes an address, so it is safe at any moment
//! and needs no GIL. Every page's status is read back: a move counts only
//! when the kernel says the page is on the target node.

use std::collections::BTreeMap;
use std::io;

use crate::pagewrites::PAGE;

/// Pages per system call: bounds the arrays, not the kernel's work.
const BATCH: usize = 4096;
const MPOL_MF_MOVE: libc::c_int = 1 << 1;
const MPOL_DEFAULT: libc::c_int = 0;
const MPOL_PREFERRED: libc::c_int = 1;

/// The NUMA node of each page (or `-errno`: `-ENOENT` for a page never
/// touched), into `out`.
pub fn where_are(pages: &[usize], out: &mut Vec<i32>) -> io::Result<()> {
    out.clear();
    out.resize(pages.len(), 0);
    for (chunk, status) in pages.chunks(BATCH).zip(out.chunks_mut(BATCH)) {
        move_pages(chunk, None, status)?;
    }
    Ok(())
}

/// What one batch of moves did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Moved {
    pub pages: u64,
    pub failed: u64,
    /// Failures by error name (`ENOMEM`: target node full, ...).
    pub errors: BTreeMap<String, u64>,
}

impl Moved {
    fn fail(&mut self, errno: i32, n: u64) {
        self.failed += n;
        *self.errors.entry(errno_name(errno)).or_default() += n;
    }
}

/// Moves `pages` to `node`. Failures (a page gone, the node full or offline)
/// are counted, never assumed away; the program is not affected by them.
pub fn move_to(pages: &[usize], node: i32) -> Moved {
    let mut moved = Moved::default();
    let mut status = vec![0i32; BATCH];
    let nodes = vec![node; BATCH];
    for chunk in pages.chunks(BATCH) {
        let status = &mut status[..chunk.len()];
        if let Err(e) = move_pages(chunk, Some(&nodes[..chunk.len()]), status) {
            moved.fail(e.raw_os_error().unwrap_or(libc::EIO), chunk.len() as u64);
            continue;
        }
        for &s in status.iter() {
            if s == node {
                moved.pages += 1;
            } else {
                moved.fail(if s < 0 { -s } else { libc::EAGAIN }, 1);
            }
        }
    }
    moved
}

fn move_pages(pages: &[usize], nodes: Option<&[i32]>, status: &mut [i32]) -> io::Result<()> {
    // SAFETY: the arrays are `pages.len()` long; pid 0 is this process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_pages,
            0,
            pages.len() as libc::c_ulong,
            pages.as_ptr(),
            nodes.map_or(std::ptr::null(), |n| n.as_ptr()),
            status.as_mut_ptr(),
            if nodes.is_some() { MPOL_MF_MOVE } else { 0 },
        )
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Asks the kernel to put pages of `[addr, addr + len)` that are not yet
/// touched on `node` when they are, falling back to other nodes when it is full.
pub fn prefer_node(addr: usize, len: usize, node: i32) -> io::Result<()> {
    mbind(addr, len, Some(node), 0)
}

/// Puts the whole pages of `[addr, addr + len)` on `node`, moving those
/// already touched (MPOL_MF_MOVE) and preferring it for the others; with
/// None, lets the pages not yet touched follow the default policy again.
/// Pages shared with memory around the range are left alone.
pub fn bind_range(addr: usize, len: usize, node: Option<i32>) -> io::Result<()> {
    let start = addr.next_multiple_of(PAGE);
    let end = (addr + len) / PAGE * PAGE;
    if end <= start {
        return Ok(());
    }
    mbind(start, end - start, node, if node.is_some() { MPOL_MF_MOVE } else { 0 })
}

/// `mbind(2)`: the range prefers `node`, or follows the default policy.
fn mbind(addr: usize, len: usize, node: Option<i32>, flags: libc::c_int) -> io::Result<()> {
    let r = match node {
        Some(node) if (0..64).contains(&node) => {
            let mask: u64 = 1 << node;
            // SAFETY: the mask is one word of 64 node bits.
            unsafe { libc::syscall(libc::SYS_mbind, addr, len, MPOL_PREFERRED, &mask as *const u64, 64, flags) }
        }
        Some(_) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        // SAFETY: no mask with the default policy.
        None => unsafe { libc::syscall(libc::SYS_mbind, addr, len, MPOL_DEFAULT, std::ptr::null::<u64>(), 0, flags) },
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Has the calling thread's future allocations prefer `node` (falling back
/// to other nodes when it is full), or follow the default policy again.
pub fn prefer_node_for_this_thread(node: Option<i32>) -> io::Result<()> {
    let r = match node {
        Some(node) if (0..64).contains(&node) => {
            let mask: u64 = 1 << node;
            // SAFETY: the mask is one word of 64 node bits.
            unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_PREFERRED, &mask as *const u64, 64) }
        }
        Some(_) => return Err(io::Error::from_raw_os_error(libc::EINVAL)),
        // SAFETY: no mask with the default policy.
        None => unsafe { libc::syscall(libc::SYS_set_mempolicy, MPOL_DEFAULT, std::ptr::null::<u64>(), 0) },
    };
    if r < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

fn errno_name(errno: i32) -> String {
    match errno {
        libc::ENOMEM => "ENOMEM".into(),
        libc::ENOENT => "ENOENT".into(),
        libc::EBUSY => "EBUSY".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EACCES => "EACCES".into(),
        libc::ENODEV => "ENODEV".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EPERM => "EPERM".into(),
        libc::EAGAIN => "EAGAIN".into(),
        libc::ENOSYS => "ENOSYS".into(),
        other => format!("errno {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_of_this_process_are_found_on_a_node_and_untouched_ones_are_not() {
        let touched = vec![1u8; 8192];
        let page = touched.as_ptr() as usize & !4095;
        // SAFETY: a fresh anonymous mapping, never touched, unmapped below.
        let untouched = unsafe {
            libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_READ, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0)
        };
        let mut status = Vec::new();
        where_are(&[page, untouched as usize], &mut status).unwrap();
        assert!(status[0] >= 0, "a touched page is on a node: {status:?}");
        assert_eq!(status[1], -libc::ENOENT, "an untouched page is nowhere");
        unsafe { libc::munmap(untouched, 4096) };
    }

    /// The calling thread's memory policy and its node mask.
    fn this_threads_policy() -> (libc::c_int, u64) {
        let (mut mode, mut mask) = (0 as libc::c_int, 0u64);
        // SAFETY: both outputs are ours; a mask of one 64-bit word.
        let r = unsafe {
            libc::syscall(libc::SYS_get_mempolicy, &mut mode as *mut libc::c_int, &mut mask as *mut u64, 64, 0, 0)
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        (mode, mask)
    }

    #[test]
    fn a_thread_can_prefer_a_node_for_its_own_allocations_and_go_back_to_the_default() {
        std::thread::spawn(|| {
            prefer_node_for_this_thread(Some(0)).unwrap();
            assert_eq!(this_threads_policy(), (MPOL_PREFERRED, 1));
            prefer_node_for_this_thread(None).unwrap();
            assert_eq!(this_threads_policy().0, MPOL_DEFAULT);
            assert!(prefer_node_for_this_thread(Some(64)).is_err(), "no such node bit");
        })
        .join()
        .unwrap();
        assert_eq!(this_threads_policy().0, MPOL_DEFAULT, "other threads keep theirs");
    }

    /// The memory policy of the page at `addr`.
    fn policy_at(addr: usize) -> (libc::c_int, u64) {
        const MPOL_F_ADDR: libc::c_ulong = 1 << 1;
        let (mut mode, mut mask) = (0 as libc::c_int, 0u64);
        // SAFETY: both outputs are ours; a mask of one 64-bit word.
        let r = unsafe {
            libc::syscall(
                libc::SYS_get_mempolicy,
                &mut mode as *mut libc::c_int,
                &mut mask as *mut u64,
                64,
                addr,
                MPOL_F_ADDR,
            )
        };
        assert_eq!(r, 0, "{}", io::Error::last_os_error());
        (mode, mask)
    }

    #[test]
    fn a_range_is_bound_to_a_node_by_its_whole_pages_and_its_contents_stay() {
        // SAFETY: a private anonymous mapping of our own, unmapped below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        } as usize;
        // SAFETY: the mapping above, alive until the munmap below.
        let memory = unsafe { std::slice::from_raw_parts_mut(base as *mut u8, 4 * 4096) };
        memory.fill(7);
        // From the middle of page 0 to the middle of page 3: pages 1 and 2.
        bind_range(base + 2048, 3 * 4096, Some(0)).unwrap();
        assert_eq!(policy_at(base).0, MPOL_DEFAULT, "a page shared with what is before the range");
        assert_eq!(policy_at(base + 4096), (MPOL_PREFERRED, 1));
        assert_eq!(policy_at(base + 2 * 4096), (MPOL_PREFERRED, 1));
        assert_eq!(policy_at(base + 3 * 4096).0, MPOL_DEFAULT, "a page shared with what is after it");
        let mut status = Vec::new();
        where_are(&[base + 4096], &mut status).unwrap();
        assert_eq!(status, [0], "on the node asked for");
        bind_range(base + 2048, 3 * 4096, None).unwrap();
        assert_eq!(policy_at(base + 4096).0, MPOL_DEFAULT);
        assert!(memory.iter().all(|&b| b == 7), "contents intact");
        assert!(bind_range(base, 4096, Some(64)).is_err(), "no such node bit");
        // SAFETY: our mapping; `memory` is not used after this.
        unsafe { libc::munmap(base as *mut libc::c_void, 4 * 4096) };
    }

    #[test]
    fn a_move_to_a_node_that_does_not_exist_is_counted_as_failed() {
        let memory = vec![1u8; 3 * 4096];
        let page = (memory.as_ptr() as usize + 4095) & !4095;
        let moved = move_to(&[page], 63);
        assert_eq!((moved.pages, moved.failed), (0, 1), "{moved:?}");
        assert_eq!(memory.iter().map(|b| *b as u64).sum::<u64>(), 3 * 4096, "memory intact");
    }

    #[test]
    fn a_move_to_the_node_a_page_is_on_succeeds() {
        let memory = vec![7u8; 3 * 4096];
        let page = (memory.as_ptr() as usize + 4095) & !4095;
        let mut status = Vec::new();
        where_are(&[page], &mut status).unwrap();
        let moved = move_to(&[page], status[0]);
        assert_eq!((moved.pages, moved.failed), (1, 0), "{moved:?}");
    }
}
