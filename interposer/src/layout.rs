//! What pytier knows about CPython's memory layout, per interpreter version.
//! Nothing outside this module knows an offset.
//!
//! pymalloc serves every request of at most 512 bytes from 16 KiB *pools*
//! carved out of 1 MiB *arenas*. A pool starts with a 48-byte header, then
//! holds equal blocks of `(szidx + 1) * 16` bytes. A block holds one object:
//! at offset 0 for a type without GC, after the 16-byte GC header for a GC
//! type, and after two more words when the type keeps a managed `__dict__`.

/// Why the interposer refuses an interpreter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported(pub String);

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
}

pub const TPFLAGS_HAVE_GC: u64 = 1 << 14;
pub const TPFLAGS_READY: u64 = 1 << 12;
pub const TPFLAGS_LIST_SUBCLASS: u64 = 1 << 25;
pub const TPFLAGS_DICT_SUBCLASS: u64 = 1 << 29;
pub const TPFLAGS_TYPE_SUBCLASS: u64 = 1 << 31;

/// Buffer pointers in `PyListObject` (`ob_item`) and `PyDictObject`
/// (`ma_keys`, `ma_values`), stable from 3.11 to 3.13.
pub const LIST_ITEMS: usize = 24;
pub const DICT_KEYS: usize = 32;
pub const DICT_VALUES: usize = 40;

/// Offsets into `PyTypeObject`, stable from 3.8 to 3.13.
pub const TP_NAME: usize = 24;
pub const TP_BASICSIZE: usize = 32;
pub const TP_FLAGS: usize = 168;
pub const TYPE_HEADER_LEN: usize = TP_FLAGS + 8;

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
        };
        match (major, minor) {
            (3, 11) => Ok(base),
            // Same pools; immortal objects; managed dict/weakref preheader.
            (3, 12) | (3, 13) => {
                Ok(Layout { immortal_refcnt: Some(1 << 31), managed_dict_flag: 1 << 4 | 1 << 3, ..base })
            }
            _ => Err(Unsupported(format!("CPython {major}.{minor} is not supported (supported: 3.11, 3.12, 3.13)"))),
        }
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
pub fn arena_index(pool_bytes: &[u8]) -> Option<u32> {
    u32_at(pool_bytes, 32)
}

impl PoolHeader {
    /// Decodes a pool header; `None` for a free or never-used pool, or bytes
    /// that cannot be a header (the copy may be torn or stale).
    pub fn parse(layout: &Layout, bytes: &[u8]) -> Option<PoolHeader> {
        let used = u32_at(bytes, 0)?;
        let szidx = u32_at(bytes, 36)?;
        let next_offset = u32_at(bytes, 40)?;
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
        let old = Layout::for_version(0x030a00f0, false).unwrap_err();
        assert!(old.0.contains("3.10 is not supported"), "{}", old.0);
        let ft = Layout::for_version(0x030d00f0, true).unwrap_err();
        assert!(ft.0.contains("free-threaded"), "{}", ft.0);
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
        assert_eq!(PoolHeader::parse(&l, &h), Some(PoolHeader { used: 510, szidx: 1, next_offset: 16368 }));
        assert_eq!(l.block_size(1), 32);
        h[0..4].copy_from_slice(&0u32.to_le_bytes());
        assert_eq!(PoolHeader::parse(&l, &h), None, "an empty pool is skipped");
        h[0..4].copy_from_slice(&1u32.to_le_bytes());
        h[36..40].copy_from_slice(&40u32.to_le_bytes());
        assert_eq!(PoolHeader::parse(&l, &h), None, "no such size class");
    }
}
