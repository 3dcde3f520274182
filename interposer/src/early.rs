//! Arenas that existed before the arena hook went in: found by their pool
//! headers in the process's anonymous memory, at start.
//!
//! Objects alive at start cannot tell them all: an arena holding only
//! strings, numbers or buffers has no object the garbage collector lists,
//! and objects made later in its free blocks would go unseen. Every live
//! arena has at least one pool in use (pymalloc frees empty arenas), and a
//! pool in use has a header that can be recognised.

use crate::arenas::{ARENAS, EARLY_ARENAS};
use crate::layout::{Layout, PoolHeader, arena_index, u32_at};
use crate::maps;
use crate::memory::read_each;

const PAGE: usize = 4096;
const HEADER: usize = 48;

/// Finds the arenas of `layout`'s pymalloc that the hook has not seen and
/// records the first pool of each in `EARLY_ARENAS`; returns how many.
pub fn find_arenas(layout: &Layout) -> usize {
    let hooked = hooked_arenas(layout);
    let mappings = anonymous_mappings();
    let mut candidates: Vec<usize> = Vec::new();
    for &(start, end) in &mappings {
        let resident = resident_pages(start, end);
        let first = start.next_multiple_of(layout.pool_size);
        for pool in (first..end.saturating_sub(HEADER)).step_by(layout.pool_size) {
            let in_hooked = hooked.iter().any(|&(base, len)| pool >= base && pool < base + len);
            if resident[(pool - start) / PAGE] && !in_hooked {
                candidates.push(pool);
            }
        }
    }
    let mut headers = Vec::new();
    let read = read_each(&candidates, HEADER, &mut headers);

    // Pools of one arena are contiguous and share its index (empty pools
    // keep it); a run of them starts at the arena's first pool.
    let mut run: Option<(usize, Option<u32>, usize)> = None; // (first pool, index, last pool)
    let mut added = 0;
    for (i, &pool) in candidates.iter().enumerate() {
        if !read[i] {
            run = None;
            continue;
        }
        let bytes = &headers[i * HEADER..(i + 1) * HEADER];
        let index = arena_index(bytes);
        let first = match run {
            Some((first, run_index, last)) if run_index == index && last + layout.pool_size == pool => first,
            _ => pool,
        };
        run = Some((first, index, pool));
        if is_pool_in_use(layout, bytes) && !EARLY_ARENAS.contains(first) && EARLY_ARENAS.insert(first) {
            added += 1;
            keep_small_pages(first, layout.arena_size, &mappings);
        }
    }
    added
}

/// Advises an early arena's pools `MADV_NOHUGEPAGE`, as the hook does new
/// arenas (see `arenas`): from its first pool, an arena's length at most,
/// within its mapping. An arena not aligned to pools ends up to a pool
/// before that, so the advice may cover a few KiB of what follows it in the
/// same mapping (another arena, as a rule). Pages already huge stay so.
fn keep_small_pages(first_pool: usize, arena_size: usize, mappings: &[(usize, usize)]) {
    let Some(&(_, end)) = mappings.iter().find(|&&(start, end)| start <= first_pool && first_pool < end) else {
        return;
    };
    let len = arena_size.min(end - first_pool);
    // SAFETY: advice on pytier's view of an arena; it changes no data.
    unsafe { libc::madvise(first_pool as *mut libc::c_void, len, libc::MADV_NOHUGEPAGE) };
}

/// A pool header of a pool in use: the checks of `PoolHeader::parse`, and
/// the last block offset its size class implies.
fn is_pool_in_use(layout: &Layout, bytes: &[u8]) -> bool {
    let Some(header) = PoolHeader::parse(layout, bytes) else { return false };
    let max_next_offset = layout.pool_size - layout.block_size(header.szidx);
    u32_at(bytes, 44) == Some(max_next_offset as u32)
}

/// Arenas the hook has seen: [base, base + size).
fn hooked_arenas(layout: &Layout) -> Vec<(usize, usize)> {
    ARENAS.snapshot().into_iter().map(|base| (base, layout.arena_size)).collect()
}

/// Private anonymous read-write mappings, where pymalloc's arenas live.
fn anonymous_mappings() -> Vec<(usize, usize)> {
    let maps = maps::read();
    maps::parse(&maps).filter(|m| m.is_private_anonymous()).map(|m| (m.start, m.end)).collect()
}

/// Which pages of `[start, end)` are resident: the rest were never touched
/// and hold no pool (reading them would only map zero pages).
fn resident_pages(start: usize, end: usize) -> Vec<bool> {
    let mut vec = vec![0u8; (end - start).div_ceil(PAGE)];
    // SAFETY: `vec` has one byte per page of the range, as mincore writes.
    let ok = unsafe { libc::mincore(start as *mut libc::c_void, end - start, vec.as_mut_ptr()) } == 0;
    vec.iter().map(|v| !ok || v & 1 != 0).collect()
}
