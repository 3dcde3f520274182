//! The brk heap: glibc's main malloc arena, `[heap]` in `/proc/self/maps`.
//!
//! Besides pymalloc's arenas and the big blocks pytier knows (see `large`),
//! a Python process's anonymous memory holds the brk heap: memory big blocks
//! freed (a build phase's temporaries, a list's item array before it grew)
//! and C code's own `malloc` calls. Nothing else places it: it stays where it
//! was first touched, usually DRAM, and holds DRAM the budget counts (1.2 to
//! 4.6 MiB of a 7.7 to 10 MiB budget in the placement benchmark, while hot
//! heap pages waited on CXL). So its pages are part of the heap pytier
//! places: their page writes are watched as an arena's are, and a page
//! nothing writes (free memory) gains no heat and is the first to go to CXL
//! when DRAM is short. Memory only read, and written by nothing, is not
//! seen in use there.

use std::time::{Duration, Instant};

use crate::maps;

/// How long the spans read from `/proc/self/maps` are trusted: the brk heap
/// grows and shrinks rarely once a program is built, and reading the maps on
/// every look at page writes (peeks are a quarter of a millisecond apart)
/// would cost more than it tells.
const REREAD_AFTER: Duration = Duration::from_secs(1);

/// The brk heap's writable spans, as (start, length), read again once they
/// are `REREAD_AFTER` old.
#[derive(Default)]
pub struct BrkHeap {
    spans: Vec<(usize, usize)>,
    read_at: Option<Instant>,
}

impl BrkHeap {
    pub fn spans(&mut self) -> &[(usize, usize)] {
        if self.read_at.is_none_or(|at| at.elapsed() >= REREAD_AFTER) {
            self.spans = spans_in(&maps::read());
            self.read_at = Some(Instant::now());
        }
        &self.spans
    }
}

/// The writable `[heap]` mappings of a maps file (one per mapping: a part
/// with a memory policy of its own is a mapping of its own).
fn spans_in(maps: &str) -> Vec<(usize, usize)> {
    maps::parse(maps).filter(|m| m.path == "[heap]" && m.is_writable()).map(|m| (m.start, m.end - m.start)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_writable_heap_mappings_only() {
        let maps = "\
55d0c0800000-55d0c0829000 r--p 00000000 00:1f 123   /usr/bin/python3.11
55d0c0a2e000-55d0c0b4f000 rw-p 00000000 00:00 0                          [heap]
55d0c0b4f000-55d0c0b50000 r--p 00000000 00:00 0                          [heap]
55d0c0b50000-55d0c0c00000 rw-p 00000000 00:00 0                          [heap]
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
";
        assert_eq!(spans_in(maps), vec![(0x55d0c0a2e000, 0x121000), (0x55d0c0b50000, 0xb0000)]);
    }
}
