//! Recognising live Python objects in copied pool memory.
//!
//! A block is taken to hold an object when a word at the right offset points
//! to a real type object (checked once per type with safe reads and cached),
//! the type's GC flags agree with that offset, the type's fixed size fits the
//! block, and the reference count is a plausible live count. A freed block
//! fails: pymalloc overwrites its first word with a free-list pointer, and a
//! freed object's count was zero.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::layout::{self, Layout, TPFLAGS_HAVE_GC, TPFLAGS_READY, TPFLAGS_TYPE_SUBCLASS, u64_at};
use crate::memory::read_exact_self;

/// What pytier keeps about a type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    pub flags: u64,
    pub basic_size: usize,
    pub name: String,
}

/// A live object found in a block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    /// Offset of the object within its block.
    pub offset: usize,
    /// The type's place in the cache (`TypeCache::get`): per-type tallies
    /// are kept in a vector, not a map.
    pub type_index: u32,
    /// The type's `tp_flags`.
    pub type_flags: u64,
    pub refcnt: u64,
}

impl Found {
    /// Addresses of the buffers an object owns outright, read from its fields
    /// (0 where none): a list's item array, a dict's keys table and values
    /// array. `object` holds its bytes. Subclasses share the base layout; type
    /// flags name the base.
    pub fn buffers(&self, object: &[u8]) -> [usize; 2] {
        let flags = self.type_flags;
        let word = |at| u64_at(object, at).unwrap_or(0) as usize;
        if flags & layout::TPFLAGS_LIST_SUBCLASS != 0 {
            [word(layout::LIST_ITEMS), 0]
        } else if flags & layout::TPFLAGS_DICT_SUBCLASS != 0 {
            [word(layout::DICT_KEYS), word(layout::DICT_VALUES)]
        } else {
            [0, 0]
        }
    }
}

/// A hasher for addresses: one multiply. Addresses are not attacker-chosen
/// keys, and the scanner looks one up per block.
#[derive(Default)]
pub struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0.rotate_left(8) ^ *b as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_usize(&mut self, n: usize) {
        self.0 = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(26);
    }
}

pub type AddrMap<V> = HashMap<usize, V, BuildHasherDefault<AddrHasher>>;

/// Type objects found so far, and words that turned out not to be types.
///
/// Checking an unknown word costs a system call, and most candidate words are
/// not types (a GC object's first words are list links), so `find_in` tries
/// the known types first and checks at most `VALIDATIONS_PER_PASS` unknown
/// words per pass; an object of a type not yet checked is found a pass later.
/// Even rejecting a word costs lookups, and every block that holds no object
/// (a small list's items, a dict's keys) offers three, so unknown words are
/// only looked at while `discovering` (see `Tracker::scan_region`).
pub struct TypeCache {
    type_type: usize,
    /// Types in the order they were found; `index` maps addresses to them.
    types: Vec<TypeInfo>,
    index: AddrMap<u32>,
    /// The last types looked up, by a few bits of their address: a pool's
    /// blocks mostly hold objects of one or two types.
    recent: [(usize, u32); RECENT],
    not_types: AddrMap<()>,
    validations_left: u32,
    /// pymalloc's arenas, sorted `(start, end)`: no type lives there (a type
    /// object is static or bigger than pymalloc's 512 bytes), so a word
    /// pointing into them is not checked. Most unknown words are such
    /// pointers: the items of small lists, a dict's keys and values.
    arenas: Vec<(usize, usize)>,
    /// Whether words that are not known types are checked at all.
    discovering: bool,
}

const RECENT: usize = 16;

/// Beyond this many cached non-types those entries are dropped, so random
/// words cannot grow the cache without bound.
const MAX_NOT_TYPES: usize = 1 << 15;
const VALIDATIONS_PER_PASS: u32 = 4096;

impl TypeCache {
    /// `type_type` is the address of `PyType_Type` (`id(type)`).
    pub fn new(type_type: usize) -> TypeCache {
        TypeCache {
            type_type,
            types: Vec::new(),
            index: AddrMap::default(),
            recent: [(0, 0); RECENT],
            not_types: AddrMap::default(),
            validations_left: VALIDATIONS_PER_PASS,
            arenas: Vec::new(),
            discovering: true,
        }
    }

    /// Renews the budget of unknown words to check; `arenas` are the spans
    /// (start, length) of pymalloc's arenas this pass.
    pub fn new_pass(&mut self, arenas: impl Iterator<Item = (usize, usize)>) {
        self.validations_left = VALIDATIONS_PER_PASS;
        self.arenas = arenas.map(|(start, len)| (start, start + len)).collect();
        self.arenas.sort_unstable();
    }

    /// Turns the checking of unknown words on or off.
    pub fn discover(&mut self, on: bool) {
        self.discovering = on;
    }

    fn in_an_arena(&self, addr: usize) -> bool {
        let after = self.arenas.partition_point(|&(start, _)| start <= addr);
        after > 0 && addr < self.arenas[after - 1].1
    }

    /// The type `Found::type_index` names.
    pub fn get(&self, index: u32) -> Option<&TypeInfo> {
        self.types.get(index as usize)
    }

    /// A known type's index.
    #[inline(always)]
    fn known(&mut self, addr: usize) -> Option<u32> {
        if addr < 4096 {
            return None; // also never matches an empty `recent` entry
        }
        let recent = &mut self.recent[(addr >> 4) % RECENT];
        if recent.0 == addr {
            return Some(recent.1);
        }
        let index = *self.index.get(&addr)?;
        *recent = (addr, index);
        Some(index)
    }

    /// Whether `addr`, not a known type, is a type object: read (safely)
    /// the first time, within this pass's budget; its index if so.
    fn check_unknown(&mut self, addr: usize) -> Option<u32> {
        if addr < 4096
            || !addr.is_multiple_of(8)
            || self.validations_left == 0
            || self.in_an_arena(addr)
            || self.not_types.contains_key(&addr)
        {
            return None;
        }
        self.validations_left -= 1;
        match self.validate(addr, 3) {
            Some(info) => {
                let index = self.types.len() as u32;
                self.types.push(info);
                self.index.insert(addr, index);
                Some(index)
            }
            None => {
                if self.not_types.len() >= MAX_NOT_TYPES {
                    self.not_types.clear();
                }
                self.not_types.insert(addr, ());
                None
            }
        }
    }

    /// A type is an object whose own type is `type` or a metaclass (itself a
    /// type whose flags say it makes types), and whose flags say it is ready.
    fn validate(&mut self, addr: usize, depth: u32) -> Option<TypeInfo> {
        let mut header = [0u8; layout::TYPE_HEADER_LEN];
        read_exact_self(addr, &mut header).ok()?;
        let flags = u64_at(&header, layout::TP_FLAGS)?;
        if flags & TPFLAGS_READY == 0 {
            return None;
        }
        let metatype = u64_at(&header, 8)? as usize;
        let meta_ok = metatype == self.type_type
            || (depth > 0
                && metatype != addr
                && self.validate(metatype, depth - 1).is_some_and(|m| m.flags & TPFLAGS_TYPE_SUBCLASS != 0));
        if !meta_ok {
            return None;
        }
        let basic_size = u64_at(&header, layout::TP_BASICSIZE)? as usize;
        let name = read_c_string(u64_at(&header, layout::TP_NAME)? as usize).unwrap_or_else(|| "?".into());
        Some(TypeInfo { flags, basic_size, name })
    }

    /// The live object at the start of a block of `block_len` bytes, of which
    /// `head` holds the first ones. `hint` is the offset to try first: the
    /// one the last object of the same pool had (a pool's blocks mostly hold
    /// one kind of object), which saves a failed lookup or two per block.
    #[inline]
    pub fn find_in(&mut self, layout: &Layout, head: &[u8], block_len: usize, hint: usize) -> Option<Found> {
        let gc = layout.gc_header_size;
        let managed = gc + layout.managed_dict_preheader;
        // Known types first: no system call, and the usual case.
        let offsets = [hint, 0, gc, managed];
        let tried = |i: usize, o: usize| i > 0 && o == hint;
        for (i, &o) in offsets.iter().enumerate() {
            if !tried(i, o)
                && let Some(found) = self.object_at(layout, head, block_len, o, false)
            {
                return found;
            }
        }
        if !self.discovering {
            return None;
        }
        offsets[1..].iter().find_map(|&o| self.object_at(layout, head, block_len, o, true)).flatten()
    }

    /// `None`: no type at this offset; `Some(None)`: a type, but the block
    /// does not hold a live object of it; `Some(Some(_))`: found.
    #[inline(always)]
    fn object_at(
        &mut self,
        layout: &Layout,
        block: &[u8],
        block_len: usize,
        offset: usize,
        check_unknown: bool,
    ) -> Option<Option<Found>> {
        let gc = layout.gc_header_size;
        let managed = gc + layout.managed_dict_preheader;
        let type_addr = u64_at(block, offset + 8)? as usize;
        let type_index = if check_unknown { self.check_unknown(type_addr)? } else { self.known(type_addr)? };
        let info = &self.types[type_index as usize];
        let is_gc = info.flags & TPFLAGS_HAVE_GC != 0;
        let is_managed = is_gc && info.flags & layout.managed_dict_flag != 0;
        let expected = if !is_gc {
            0
        } else if is_managed {
            managed
        } else {
            gc
        };
        if offset != expected || offset + layout.min_object_size(info.flags, info.basic_size) > block_len {
            return None;
        }
        let Some(refcnt) = layout.refcount(u64_at(block, offset)?) else { return Some(None) };
        Some(Some(Found { offset, type_index, type_flags: info.flags, refcnt }))
    }
}

fn read_c_string(addr: usize) -> Option<String> {
    let mut buf = [0u8; 64];
    // A name near the end of a mapping may not have 64 readable bytes.
    let n = crate::memory::read_self(addr, &mut buf).ok()?;
    let bytes = &buf[..n];
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(n);
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}
