//! Recognising live Python objects in pool memory (read in place or copied).
//!
//! A block is taken to hold an object when a word at the right offset points
//! to a real type object (checked once per type with safe reads and cached),
//! the type's GC flags agree with that offset, the type's fixed size fits the
//! block, and the reference count is a plausible live count. A freed block
//! fails: pymalloc overwrites its first word with a free-list pointer, and a
//! freed object's count was zero.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::layout::{
    self, Layout, TPFLAGS_DICT_SUBCLASS, TPFLAGS_HAVE_GC, TPFLAGS_READY, TPFLAGS_TYPE_SUBCLASS, u64_at,
};
use crate::memory::{Words, read_exact_self};

/// What pytier keeps about a type.
#[derive(Debug, Clone)]
pub struct TypeInfo {
    pub name: String,
    shape: Shape,
}

/// What a block is checked against to hold an object of a type.
#[derive(Debug, Clone, Copy)]
struct Shape {
    addr: usize,
    /// Its place in `TypeCache::types`, or `NOT_KNOWN`.
    index: u32,
    /// Where in a block its objects start (after a GC header and a managed
    /// dict's preheader, if any), and the fewest bytes they take.
    offset: u32,
    min_size: u32,
    flags: u64,
    /// `collections.OrderedDict` or a subclass.
    ordered_dict: bool,
}

impl Shape {
    const NOT_KNOWN: Shape = Shape { addr: 0, index: NOT_KNOWN, offset: 0, min_size: 0, flags: 0, ordered_dict: false };

    fn new(layout: &Layout, addr: usize, index: u32, flags: u64, basic_size: usize, ordered_dict: bool) -> Shape {
        let offset = if flags & TPFLAGS_HAVE_GC == 0 {
            0
        } else if flags & layout.managed_dict_flag != 0 {
            layout.gc_header_size + layout.managed_dict_preheader
        } else {
            layout.gc_header_size
        };
        let min_size = layout.min_object_size(flags, basic_size).min(u32::MAX as usize) as u32;
        Shape { addr, index, offset: offset as u32, min_size, flags, ordered_dict }
    }
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
    /// Whether the type is `collections.OrderedDict` or a subclass.
    pub ordered_dict: bool,
    pub refcnt: u64,
}

/// What a buffer an object owns holds, as the object says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferKind {
    /// A list's item array.
    ListItems,
    /// A dict's keys table (`PyDictKeysObject`).
    DictTable,
    /// A split dict's values array.
    DictValues,
    /// An `OrderedDict`'s node pointers, one for each entry of its table.
    OrderedDictNodes,
}

impl Found {
    /// The buffers an object owns outright, read from its fields (address 0
    /// where none): a list's item array, a dict's keys table and values
    /// array, an `OrderedDict`'s node pointers. The object is at `at` in
    /// `memory`. Subclasses share the base layout; type flags name the base.
    pub fn buffers(&self, memory: &(impl Words + ?Sized), at: usize) -> [(usize, BufferKind); 3] {
        let flags = self.type_flags;
        let word = |field| memory.word(at + field).unwrap_or(0) as usize;
        let none = (0, BufferKind::DictValues);
        if flags & layout::TPFLAGS_LIST_SUBCLASS != 0 {
            [(word(layout::LIST_ITEMS), BufferKind::ListItems), none, none]
        } else if flags & layout::TPFLAGS_DICT_SUBCLASS != 0 {
            let nodes = if self.ordered_dict { word(layout::ODICT_FAST_NODES) } else { 0 };
            [
                (word(layout::DICT_KEYS), BufferKind::DictTable),
                (word(layout::DICT_VALUES), BufferKind::DictValues),
                (nodes, BufferKind::OrderedDictNodes),
            ]
        } else {
            [none, none, none]
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

/// A set of addresses that answers "surely not" with one load (a bit per
/// hash of the address) and "perhaps" otherwise: in front of a map that
/// most lookups miss.
pub struct AddrFilter {
    bits: Vec<u64>,
    shift: u32,
}

impl AddrFilter {
    /// For about `capacity` addresses, with few false "perhaps" (1 in 16 at
    /// most).
    pub fn new(capacity: usize) -> AddrFilter {
        let bits = (capacity * 16).next_power_of_two().max(64);
        AddrFilter { bits: vec![0; bits / 64], shift: 64 - bits.trailing_zeros() }
    }

    #[inline(always)]
    fn bit(&self, addr: usize) -> usize {
        ((addr as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize
    }

    pub fn insert(&mut self, addr: usize) {
        let bit = self.bit(addr);
        self.bits[bit / 64] |= 1 << (bit % 64);
    }

    #[inline(always)]
    pub fn may_contain(&self, addr: usize) -> bool {
        let bit = self.bit(addr);
        self.bits[bit / 64] & (1 << (bit % 64)) != 0
    }
}

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
    layout: Layout,
    type_type: usize,
    /// `PyODict_Type`, 0 where the process has none (not Python).
    ordered_dict_type: usize,
    /// Types in the order they were found; `index` maps addresses to them.
    types: Vec<TypeInfo>,
    index: AddrMap<u32>,
    known: AddrFilter,
    /// Words looked up lately, by a few bits of their value, with their
    /// type's shape (or `Shape::NOT_KNOWN`): blocks hold objects of a few
    /// types, and many words that are not types are seen again.
    recent: Box<[Shape; RECENT]>,
    not_types: AddrMap<()>,
    validations_left: u32,
    /// pymalloc's arenas, sorted `(start, end)`: no type lives there (a type
    /// object is static or bigger than pymalloc's 512 bytes), so a word
    /// pointing into them is not checked. Most unknown words are such
    /// pointers: the items of small lists, a dict's keys and values.
    arenas: Vec<(usize, usize)>,
    /// Whether words that are not known types are checked at all.
    discovering: bool,
    /// The process's readable mappings this pass, sorted `(start, end)`: a
    /// word outside them is no pointer. Most unknown words are not (an int's
    /// digits, a hash, text, a float), and checking them spent the pass's
    /// budget before the types of rarer objects were looked at: in the
    /// placement benchmark's lru-cache (ints and strings) no list or dict
    /// owning a big buffer was found.
    mapped: Vec<(usize, usize)>,
}

const RECENT: usize = 512;
const NOT_KNOWN: u32 = u32::MAX;
/// Programs rarely have more types than this; more only make `known`'s
/// filter say "perhaps" more often.
const MAX_TYPES: usize = 4096;

/// Beyond this many cached non-types those entries are dropped, so random
/// words cannot grow the cache without bound.
const MAX_NOT_TYPES: usize = 1 << 15;
const VALIDATIONS_PER_PASS: u32 = 4096;
/// How far up its bases a dict subclass is followed to find `OrderedDict`.
const MAX_BASES: usize = 8;

impl TypeCache {
    /// `type_type` is the address of `PyType_Type` (`id(type)`).
    pub fn new(layout: Layout, type_type: usize) -> TypeCache {
        // SAFETY: dlsym only looks the name up in the loaded objects.
        let ordered_dict_type = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"PyODict_Type".as_ptr()) } as usize;
        TypeCache {
            layout,
            type_type,
            ordered_dict_type,
            types: Vec::new(),
            index: AddrMap::default(),
            known: AddrFilter::new(MAX_TYPES),
            recent: Box::new([Shape::NOT_KNOWN; RECENT]),
            not_types: AddrMap::default(),
            validations_left: VALIDATIONS_PER_PASS,
            arenas: Vec::new(),
            discovering: true,
            mapped: Vec::new(),
        }
    }

    /// Renews the budget of unknown words to check; `arenas` are the spans
    /// (start, length) of pymalloc's arenas this pass.
    pub fn new_pass(&mut self, arenas: impl Iterator<Item = (usize, usize)>) {
        self.validations_left = VALIDATIONS_PER_PASS;
        self.mapped = readable_mappings();
        self.arenas = arenas.map(|(start, len)| (start, start + len)).collect();
        self.arenas.sort_unstable();
    }

    /// Turns the checking of unknown words on or off.
    pub fn discover(&mut self, on: bool) {
        self.discovering = on;
    }

    /// Whether `addr` is in one of the process's readable mappings as of this
    /// pass (true when they could not be read).
    fn is_mapped(&self, addr: usize) -> bool {
        if self.mapped.is_empty() {
            return true;
        }
        let after = self.mapped.partition_point(|&(start, _)| start <= addr);
        after > 0 && addr < self.mapped[after - 1].1
    }

    /// Whether every unknown word looked at so far this pass was checked:
    /// checking on, and its budget not spent.
    pub fn checked_all(&self) -> bool {
        self.discovering && self.validations_left > 0
    }

    /// Whether `addr` is in one of this pass's pymalloc arenas.
    pub fn in_an_arena(&self, addr: usize) -> bool {
        let after = self.arenas.partition_point(|&(start, _)| start <= addr);
        after > 0 && addr < self.arenas[after - 1].1
    }

    /// The type `Found::type_index` names.
    pub fn get(&self, index: u32) -> Option<&TypeInfo> {
        self.types.get(index as usize)
    }

    /// A known type's shape, or `Shape::NOT_KNOWN`.
    #[inline(always)]
    fn known(&mut self, addr: usize) -> Shape {
        let recent = &mut self.recent[(addr >> 4) % RECENT];
        if recent.addr == addr {
            return *recent;
        }
        if !self.known.may_contain(addr) {
            return Shape::NOT_KNOWN; // most words that are not types: not cached, so not evicting types
        }
        *recent = match self.index.get(&addr) {
            Some(&index) => self.types[index as usize].shape,
            None => Shape { addr, ..Shape::NOT_KNOWN },
        };
        *recent
    }

    /// Whether `addr`, not a known type, is a type object: read (safely)
    /// the first time, within this pass's budget; its shape if so.
    fn check_unknown(&mut self, addr: usize) -> Option<Shape> {
        if addr < 4096
            || !addr.is_multiple_of(8)
            || !self.is_mapped(addr)
            || self.validations_left == 0
            || self.in_an_arena(addr)
            || self.not_types.contains_key(&addr)
            || self.index.contains_key(&addr)
        {
            // A known type is not checked again: found where its objects do
            // not fit (a stale word in a free block), it was, every time, and
            // pushed again, spending the pass's budget and growing `types`
            // without end (one word in libpython 8 938 times in 15 s of
            // lru-cache on the host).
            return None;
        }
        self.validations_left -= 1;
        match self.validate(addr, 3) {
            Some(info) => {
                let shape = info.shape;
                self.index.insert(addr, shape.index);
                self.types.push(info);
                self.known.insert(addr);
                self.recent.fill(Shape::NOT_KNOWN); // it may be there as not known
                Some(shape)
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
        // The index it will have if it is one.
        let index = self.types.len() as u32;
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
                && self.validate(metatype, depth - 1).is_some_and(|m| m.shape.flags & TPFLAGS_TYPE_SUBCLASS != 0));
        if !meta_ok {
            return None;
        }
        let basic_size = u64_at(&header, layout::TP_BASICSIZE)? as usize;
        let name = read_c_string(u64_at(&header, layout::TP_NAME)? as usize).unwrap_or_else(|| "?".into());
        let ordered_dict = flags & TPFLAGS_DICT_SUBCLASS != 0 && self.derives_from_ordered_dict(addr);
        Some(TypeInfo { name, shape: Shape::new(&self.layout, addr, index, flags, basic_size, ordered_dict) })
    }

    /// Whether the type at `addr` is `OrderedDict` or has it among its
    /// bases (`tp_base`, a few levels up at most).
    fn derives_from_ordered_dict(&self, mut addr: usize) -> bool {
        for _ in 0..MAX_BASES {
            if addr == 0 || self.ordered_dict_type == 0 {
                return false;
            }
            if addr == self.ordered_dict_type {
                return true;
            }
            let mut base = [0u8; 8];
            if read_exact_self(addr + layout::TP_BASE, &mut base).is_err() {
                return false;
            }
            addr = u64::from_le_bytes(base) as usize;
        }
        false
    }

    /// The live object at the start of the block of `block_len` bytes at
    /// `start` in `memory` (which may hold only its first bytes).
    #[inline(always)]
    pub fn find_in(
        &mut self,
        layout: &Layout,
        memory: &(impl Words + ?Sized),
        start: usize,
        block_len: usize,
    ) -> Option<Found> {
        let gc = layout.gc_header_size;
        let managed = gc + layout.managed_dict_preheader;
        // Known types first: no system call, and the usual case. The offset
        // whose first word can be a live count is tried first: a GC header
        // or a managed dict's preheader holds pointers (or zero) there, so
        // the first guess is mostly right, and a guess costs a lookup.
        let count_at = |o: usize| memory.word(start + o).is_some_and(|w| layout.refcount(w).is_some());
        let offsets = if count_at(0) {
            [0, gc, managed]
        } else if count_at(gc) {
            [gc, 0, managed]
        } else {
            [managed, 0, gc]
        };
        for offset in offsets {
            let type_addr = memory.word(start + offset + 8)? as usize;
            let shape = self.known(type_addr);
            if shape.index != NOT_KNOWN && shape.fits(offset, block_len) {
                return shape.object(layout, memory, start);
            }
        }
        if !self.discovering {
            return None;
        }
        for offset in offsets {
            let type_addr = memory.word(start + offset + 8)? as usize;
            if let Some(shape) = self.check_unknown(type_addr)
                && shape.fits(offset, block_len)
            {
                return shape.object(layout, memory, start);
            }
        }
        None
    }
}

impl Shape {
    /// Whether an object of this type can be at `offset` of a block of
    /// `block_len` bytes: the offset its GC flags say, and room for it.
    #[inline(always)]
    fn fits(&self, offset: usize, block_len: usize) -> bool {
        offset == self.offset as usize && offset + self.min_size as usize <= block_len
    }

    /// The object of this type at `start` in `memory`, if its reference count
    /// is a live object's.
    #[inline(always)]
    fn object(&self, layout: &Layout, memory: &(impl Words + ?Sized), start: usize) -> Option<Found> {
        let offset = self.offset as usize;
        let refcnt = layout.refcount(memory.word(start + offset)?)?;
        Some(Found { offset, type_index: self.index, type_flags: self.flags, ordered_dict: self.ordered_dict, refcnt })
    }
}

/// The readable mappings of `/proc/self/maps`, sorted (as listed); none
/// when it cannot be read.
fn readable_mappings() -> Vec<(usize, usize)> {
    let maps = crate::maps::read();
    crate::maps::parse(&maps).filter(|m| m.is_readable()).map(|m| (m.start, m.end)).collect()
}

fn read_c_string(addr: usize) -> Option<String> {
    let mut buf = [0u8; 64];
    // A name near the end of a mapping may not have 64 readable bytes.
    let n = crate::memory::read_self(addr, &mut buf).ok()?;
    let bytes = &buf[..n];
    let end = bytes.iter().position(|b| *b == 0).unwrap_or(n);
    Some(String::from_utf8_lossy(&bytes[..end]).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_type_is_not_checked_again() {
        let layout = Layout::for_version(0x030b07f0, false).unwrap();
        let mut types = TypeCache::new(layout, 0x1000);
        types.new_pass(std::iter::empty());
        let at = 0x7000_0000_0000usize;
        types.index.insert(at, 0); // as if found before
        assert!(types.check_unknown(at).is_none());
        assert_eq!(types.validations_left, VALIDATIONS_PER_PASS);
    }

    #[test]
    fn an_ordered_dict_is_known_by_its_bases() {
        let layout = Layout::for_version(0x030b07f0, false).unwrap();
        let mut types = TypeCache::new(layout, 0x1000);
        // Three type objects, only their `tp_base` set: a subclass of a
        // subclass of the one standing for `OrderedDict`, and a type with
        // no base.
        let mut objects = vec![[0u64; layout::TYPE_HEADER_LEN / 8]; 4];
        let addr = |objects: &Vec<[u64; layout::TYPE_HEADER_LEN / 8]>, i: usize| objects[i].as_ptr() as usize;
        let (ordered, middle, leaf, other) =
            (addr(&objects, 0), addr(&objects, 1), addr(&objects, 2), addr(&objects, 3));
        objects[1][layout::TP_BASE / 8] = ordered as u64;
        objects[2][layout::TP_BASE / 8] = middle as u64;
        types.ordered_dict_type = ordered;
        assert!(types.derives_from_ordered_dict(ordered));
        assert!(types.derives_from_ordered_dict(leaf));
        assert!(!types.derives_from_ordered_dict(other));
        // A cycle of bases (garbage) ends.
        objects[3][layout::TP_BASE / 8] = other as u64;
        assert!(!types.derives_from_ordered_dict(other));
    }

    #[test]
    fn words_outside_every_mapping_are_not_checked_and_spend_no_budget() {
        let layout = Layout::for_version(0x030b07f0, false).unwrap();
        let mut types = TypeCache::new(layout, 0x1000);
        types.new_pass(std::iter::empty());
        // The words of "user1234", of 1.5, and an int's digit: no pointers.
        for word in [u64::from_le_bytes(*b"user1234") as usize, 1.5f64.to_bits() as usize, 123_456 << 3] {
            assert!(types.check_unknown(word).is_none());
        }
        assert_eq!(types.validations_left, VALIDATIONS_PER_PASS);
        // A word pointing into memory is checked (and is no type).
        let here = [0u64; 4];
        assert!(types.check_unknown(here.as_ptr() as usize).is_none());
        assert_eq!(types.validations_left, VALIDATIONS_PER_PASS - 1);
    }
}
