//! What pytier knows about CPython's memory layout, per interpreter version.
//! Nothing outside this module knows an offset.
//!
//! pymalloc serves every request of at most 512 bytes from 16 KiB *pools*
//! carved out of 1 MiB *arenas*. A pool starts with a 48-byte header, then
//! holds equal blocks of `(szidx + 1) * 16` bytes. A block holds one object:
//! at offset 0 for a type without GC, after the 16-byte GC header for a GC
//! type, and after two more words when the type keeps a managed `__dict__`.

use crate::memory::Words;

/// Why the interposer refuses an interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

/// The CPython versions the interposer knows, as people write them.
pub const SUPPORTED: &str = "3.11, 3.12, 3.13, 3.14, 3.15";

/// Layout constants for one CPython version (64-bit, default build).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// `sys.hexversion` major.minor, e.g. 0x030b for 3.11.
    pub version: u16,
    pub pool_size: usize,
    pub arena_size: usize,
    pub pool_header_size: usize,
    pub gc_header_size: usize,
    /// Words before the GC header of types with a managed `__dict__`.
    pub managed_dict_preheader: usize,
    pub managed_dict_flag: u64,
    /// Refcounts at or above this are immortal (3.12+) and never change.
    pub immortal_refcnt: Option<u64>,
    /// The reference-count word's upper 16 bits are `ob_flags`, not count
    /// (3.14+: `uint32 ob_refcnt, uint16 ob_overflow, uint16 ob_flags`).
    pub flags_in_refcount_word: bool,
    /// Locals are borrowed (3.14+, `LOAD_FAST_BORROW`): an object used
    /// through a function's local keeps its count.
    pub borrows_locals: bool,
    /// Size of `PyASCIIObject`, the header of the compact strings programs
    /// make (the characters follow it). `str`'s `tp_basicsize` is that of a
    /// legacy string, larger than most compact ones.
    pub compact_str_header: usize,
}

pub const TPFLAGS_HAVE_GC: u64 = 1 << 14;
pub const TPFLAGS_READY: u64 = 1 << 12;
pub const TPFLAGS_LIST_SUBCLASS: u64 = 1 << 25;
pub const TPFLAGS_UNICODE_SUBCLASS: u64 = 1 << 28;
pub const TPFLAGS_DICT_SUBCLASS: u64 = 1 << 29;
pub const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

/// Buffer pointers in `PyListObject` (`ob_item`) and `PyDictObject`
/// (`ma_keys`, `ma_values`), stable from 3.11 to 3.13.
pub const LIST_ITEMS: usize = 24;
pub const DICT_KEYS: usize = 32;
pub const DICT_VALUES: usize = 40;
/// `PyODictObject` (Objects/odictobject.c, 3.11 to 3.14) follows its dict
/// with `od_first` and `od_last`, then `od_fast_nodes`: an array with a
/// node pointer for each entry of the dict's table, at the entry's index,
/// which `move_to_end` and `__delitem__` read.
pub const ODICT_FAST_NODES: usize = 64;

/// `PyDictKeysObject` (Objects/dictobject.c, the same from 3.11 to 3.14
/// without free threading): a header, the index array of
/// `1 << log2_index_bytes` bytes, then `nentries` entries of a hash, a key and
/// a value (general tables) or of a key and a value (string keys).
pub mod dict_keys {
    pub const LOG2_SIZE: usize = 8;
    pub const LOG2_INDEX_BYTES: usize = 9;
    pub const KIND: usize = 10;
    pub const NENTRIES: usize = 24;
    pub const INDICES: usize = 32;
    pub const KIND_GENERAL: u8 = 0;
    pub const KIND_SPLIT: u8 = 2;
}

/// Offsets into `PyTypeObject`, stable from 3.8 to 3.13.
pub const TP_NAME: usize = 24;
pub const TP_BASICSIZE: usize = 32;
pub const TP_FLAGS: usize = 168;
pub const TP_BASE: usize = 256;
pub const TYPE_HEADER_LEN: usize = TP_BASE + 8;

impl Layout {
    /// The layout of the interpreter whose `sys.hexversion` is `hexversion`,
    /// or why it is not supported.
    pub fn for_version(hexversion: u32, free_threaded: bool) -> Result<Layout, Unsupported> {
        let version = (hexversion >> 16) as u16;
        let (major, minor) = (version >> 8, version & 0xff);
        if free_threaded {
            return Err(Unsupported(format!(
                "free-threaded CPython {major}.{minor} is not supported yet (objects have split reference counts)"
            )));
        }
        let base = Layout {
            version,
            pool_size: 16 << 10,
            arena_size: 1 << 20,
            pool_header_size: 48,
            gc_header_size: 16,
            managed_dict_preheader: 16,
            managed_dict_flag: 1 << 4,
            immortal_refcnt: None,
            flags_in_refcount_word: false,
            borrows_locals: false,
            compact_str_header: 48,
        };
        // Same pools from 3.11 to 3.15. 3.12 adds immortal objects (low 32
        // bits of the count at 2^31 or more) and the managed weakref slot in
        // the preheader, and drops the strings' `wstr` pointer; 3.14 splits
        // the count word and borrows locals.
        let immortal = Layout {
            immortal_refcnt: Some(1 << 31),
            managed_dict_flag: 1 << 4 | 1 << 3,
            compact_str_header: 40,
            ..base
        };
        match (major, minor) {
            (3, 11) => Ok(base),
            (3, 12) | (3, 13) => Ok(immortal),
            (3, 14) | (3, 15) => Ok(Layout { flags_in_refcount_word: true, borrows_locals: true, ..immortal }),
            (3, ..=10) => Err(Unsupported(format!(
                "CPython {major}.{minor} is not supported: it has reached its end of life (supported: {SUPPORTED})"
            ))),
            _ => Err(Unsupported(format!("CPython {major}.{minor} is not supported yet (supported: {SUPPORTED})"))),
        }
    }

    /// The fewest bytes an object of a type with these flags and
    /// `tp_basicsize` takes.
    pub fn min_object_size(&self, type_flags: u64, basic_size: usize) -> usize {
        if type_flags & TPFLAGS_UNICODE_SUBCLASS != 0 { basic_size.min(self.compact_str_header) } else { basic_size }
    }

    /// The reference count in an object's first word, or `None` when the
    /// word cannot be a live object's: zero, or 2^32 and more (a pointer —
    /// pymalloc's free-list link — or garbage). `ob_flags` (3.14+) are not
    /// part of the count; `ob_overflow` must be zero.
    pub fn refcount(&self, word: u64) -> Option<u64> {
        let count = if self.flags_in_refcount_word { word & 0x0000_ffff_ffff_ffff } else { word };
        (count != 0 && count < 1 << 32).then_some(count)
    }

    /// Whether a count read by `refcount` is an immortal object's.
    pub fn is_immortal(&self, refcount: u64) -> bool {
        self.immortal_refcnt.is_some_and(|limit| refcount >= limit)
    }

    pub fn block_size(&self, szidx: u32) -> usize {
        (szidx as usize + 1) * 16
    }

    /// Start of the pool holding `addr`.
    pub fn pool_of(&self, addr: usize) -> usize {
        addr & !(self.pool_size - 1)
    }

    /// Pool start addresses of the arena at `base` (pools are pool-aligned).
    pub fn pools_of_arena(&self, base: usize, size: usize) -> impl Iterator<Item = usize> + use<> {
        let pool_size = self.pool_size;
        let first = (base + pool_size - 1) & !(pool_size - 1);
        let end = base + size;
        (first..end).step_by(pool_size).filter(move |p| p + pool_size <= end)
    }
}

/// The parts of a pool header pytier reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PoolHeader {
    /// Blocks currently allocated.
    pub used: u32,
    pub szidx: u32,
    /// Offset of the first never-allocated block: blocks below it are in use
    /// or on the free list.
    pub next_offset: u32,
}

/// The index of the arena a pool belongs to; kept in the header even while
/// the pool is empty.
pub fn arena_index(pool: &(impl Words + ?Sized)) -> Option<u32> {
    Some(pool.word(32)? as u32)
}

impl PoolHeader {
    /// Decodes a pool header; `None` for a free or never-used pool, or bytes
    /// that cannot be a header (the copy may be torn or stale).
    pub fn parse(layout: &Layout, pool: &(impl Words + ?Sized)) -> Option<PoolHeader> {
        // `used` is the first half of word 0, `arenaindex` and `szidx` the
        // halves of word 32, `nextoffset` the first half of word 40.
        let used = pool.word(0)? as u32;
        let szidx = (pool.word(32)? >> 32) as u32;
        let next_offset = pool.word(40)? as u32;
        let plausible = used > 0
            && szidx < 32
            && (next_offset as usize) <= layout.pool_size
            && (next_offset as usize) >= layout.pool_header_size;
        plausible.then_some(PoolHeader { used, szidx, next_offset })
    }
}

pub fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

pub fn u64_at(bytes: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supported_versions() {
        assert!(Layout::for_version(0x030b07f0, false).unwrap().immortal_refcnt.is_none());
        assert_eq!(Layout::for_version(0x030c00f0, false).unwrap().immortal_refcnt, Some(1 << 31));
        for hexversion in [0x030e0af0, 0x030f02f0] {
            let layout = Layout::for_version(hexversion, false).unwrap();
            assert!(layout.flags_in_refcount_word && layout.borrows_locals);
        }
        let old = Layout::for_version(0x030a00f0, false).unwrap_err();
        assert!(old.0.contains("3.10 is not supported: it has reached its end of life"), "{}", old.0);
        let new = Layout::for_version(0x031000a1, false).unwrap_err();
        assert!(new.0.contains("3.16 is not supported yet"), "{}", new.0);
        let ft = Layout::for_version(0x030d00f0, true).unwrap_err();
        assert!(ft.0.contains("free-threaded"), "{}", ft.0);
    }

    #[test]
    fn compact_strings_are_smaller_than_str_basic_size() {
        let (v311, v312) =
            (Layout::for_version(0x030b07f0, false).unwrap(), Layout::for_version(0x030c01f0, false).unwrap());
        assert_eq!(v311.min_object_size(TPFLAGS_UNICODE_SUBCLASS, 80), 48, "3.11 keeps the wstr pointer");
        assert_eq!(v312.min_object_size(TPFLAGS_UNICODE_SUBCLASS, 72), 40);
        assert_eq!(v312.min_object_size(TPFLAGS_LIST_SUBCLASS, 40), 40, "other types: tp_basicsize");
    }

    #[test]
    fn reference_count_words() {
        let l311 = Layout::for_version(0x030b07f0, false).unwrap();
        let l314 = Layout::for_version(0x030e0af0, false).unwrap();
        for l in [l311, l314] {
            assert_eq!(l.refcount(3), Some(3));
            assert_eq!(l.refcount(0), None, "a freed block");
            assert_eq!(l.refcount(0x7f12_3456_7890), None, "a free-list link");
        }
        // 3.14: an object made immortal at run time, with ob_flags set.
        let word = 0x0001_0000_c000_0000;
        assert_eq!(l311.refcount(word), None);
        assert_eq!(l314.refcount(word), Some(0xc000_0000));
        assert!(l314.is_immortal(0xc000_0000) && !l314.is_immortal(5));
        assert!(!l311.is_immortal(0xc000_0000), "3.11 has no immortal objects");
        // ob_flags on a mortal object (statically allocated flag, say).
        assert_eq!(l314.refcount(0x0080_0000_0000_0002), Some(2));
    }

    #[test]
    fn pools_of_an_unaligned_arena() {
        let l = Layout::for_version(0x030b0000, false).unwrap();
        // An arena that starts 4 KiB past a pool boundary loses one pool.
        let pools: Vec<usize> = l.pools_of_arena(0x10_1000, 1 << 20).collect();
        assert_eq!(pools.len(), 63);
        assert_eq!(pools[0], 0x10_4000);
        assert!(pools.iter().all(|p| p % l.pool_size == 0 && p + l.pool_size <= 0x10_1000 + (1 << 20)));
        assert_eq!(l.pools_of_arena(0x20_0000, 1 << 20).count(), 64);
    }

    #[test]
    fn pool_header_decoding() {
        let l = Layout::for_version(0x030b0000, false).unwrap();
        let mut h = [0u8; 48];
        h[0..4].copy_from_slice(&510u32.to_le_bytes());
        h[36..40].copy_from_slice(&1u32.to_le_bytes());
        h[40..44].copy_from_slice(&16368u32.to_le_bytes());
        assert_eq!(PoolHeader::parse(&l, &h[..]), Some(PoolHeader { used: 510, szidx: 1, next_offset: 16368 }));
        assert_eq!(l.block_size(1), 32);
        h[0..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(PoolHeader::parse(&l, &h[..]), None, "an empty pool is skipped");
        h[0..4].copy_from_slice(&1u32.to_le_bytes());
        h[36..40].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(PoolHeader::parse(&l, &h[..]), None, "no such size class");
    }
}
