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
    pub type_addr: usize,
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
/// not types (a GC object's first words are list links), so `find` tries the
/// known types first and checks at most `VALIDATIONS_PER_PASS` unknown words
/// per pass; an object of a type not yet checked is found a pass later.
pub struct TypeCache {
    type_type: usize,
    types: AddrMap<TypeInfo>,
    not_types: AddrMap<()>,
    validations_left: u32,
}

/// Beyond this many cached non-types those entries are dropped, so random
/// words cannot grow the cache without bound.
const MAX_NOT_TYPES: usize = 1 << 15;
const VALIDATIONS_PER_PASS: u32 = 4096;

impl TypeCache {
    /// `type_type` is the address of `PyType_Type` (`id(type)`).
    pub fn new(type_type: usize) -> TypeCache {
        TypeCache {
            type_type,
            types: AddrMap::default(),
            not_types: AddrMap::default(),
            validations_left: VALIDATIONS_PER_PASS,
        }
    }

    /// Renews the budget of unknown words to check.
    pub fn new_pass(&mut self) {
        self.validations_left = VALIDATIONS_PER_PASS;
    }

    pub fn get(&self, addr: usize) -> Option<&TypeInfo> {
        self.types.get(&addr)
    }

    /// Whether `addr` is a type object, reading it (safely) the first time,
    /// within this pass's budget.
    pub fn lookup(&mut self, addr: usize) -> Option<&TypeInfo> {
        if self.types.contains_key(&addr) {
            return self.types.get(&addr);
        }
        if addr < 4096 || !addr.is_multiple_of(8) || self.validations_left == 0 || self.not_types.contains_key(&addr) {
            return None;
        }
        self.validations_left -= 1;
        match self.validate(addr, 3) {
            Some(info) => {
                self.types.insert(addr, info);
                self.types.get(&addr)
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

    /// The live object in `block`, if there is one.
    pub fn find(&mut self, layout: &Layout, block: &[u8]) -> Option<Found> {
        self.find_in(layout, block, block.len())
    }

    /// The live object at the start of a block of `block_len` bytes, of which
    /// `head` holds the first ones.
    pub fn find_in(&mut self, layout: &Layout, head: &[u8], block_len: usize) -> Option<Found> {
        let block = head;
        let gc = layout.gc_header_size;
        let managed = gc + layout.managed_dict_preheader;
        let offsets = [0, gc, managed];
        // Known types first: no system call, and the usual case.
        if let Some(found) = offsets.iter().find_map(|&o| self.object_at(layout, block, block_len, o, false)) {
            return found;
        }
        offsets.iter().find_map(|&o| self.object_at(layout, block, block_len, o, true)).flatten()
    }

    /// `None`: no type at this offset; `Some(None)`: a type, but the block
    /// does not hold a live object of it; `Some(Some(_))`: found.
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
        let info = if check_unknown { self.lookup(type_addr)? } else { self.types.get(&type_addr)? };
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
        Some(Some(Found { offset, type_addr, type_flags: info.flags, refcnt }))
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
