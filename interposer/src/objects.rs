//! Recognising live Python objects in copied pool memory.
//!
//! A block is taken to hold an object when a word at the right offset points
//! to a real type object (checked once per type with safe reads and cached),
//! the type's GC flags agree with that offset, the type's fixed size fits the
//! block, and the reference count is a plausible live count. A freed block
//! fails: pymalloc overwrites its first word with a free-list pointer, and a
//! freed object's count was zero.

use std::collections::HashMap;

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
    pub refcnt: u64,
}

/// Candidate type addresses seen so far: `Some` for real types, `None` for
/// words that turned out not to be types.
pub struct TypeCache {
    type_type: usize,
    known: HashMap<usize, Option<TypeInfo>>,
}

/// Beyond this many cached non-types the negative entries are dropped, so
/// random words cannot grow the cache without bound.
const MAX_CACHED: usize = 1 << 16;

impl TypeCache {
    /// `type_type` is the address of `PyType_Type` (`id(type)`).
    pub fn new(type_type: usize) -> TypeCache {
        TypeCache { type_type, known: HashMap::new() }
    }

    pub fn get(&self, addr: usize) -> Option<&TypeInfo> {
        self.known.get(&addr)?.as_ref()
    }

    /// Whether `addr` is a type object, reading it (safely) the first time.
    pub fn lookup(&mut self, addr: usize) -> Option<&TypeInfo> {
        if addr < 4096 || !addr.is_multiple_of(8) {
            return None;
        }
        if !self.known.contains_key(&addr) {
            if self.known.len() >= MAX_CACHED {
                self.known.retain(|_, v| v.is_some());
            }
            let info = self.validate(addr, 3);
            self.known.insert(addr, info);
        }
        self.known.get(&addr)?.as_ref()
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
        let gc = layout.gc_header_size;
        let managed = gc + layout.managed_dict_preheader;
        for offset in [0, gc, managed] {
            let Some(type_addr) = u64_at(block, offset + 8).map(|a| a as usize) else { continue };
            let Some(info) = self.lookup(type_addr) else { continue };
            let is_gc = info.flags & TPFLAGS_HAVE_GC != 0;
            let is_managed = is_gc && info.flags & layout.managed_dict_flag != 0;
            let expected = if !is_gc {
                0
            } else if is_managed {
                managed
            } else {
                gc
            };
            if offset != expected || offset + info.basic_size > block.len() {
                continue;
            }
            // A live count is positive; counts of 2^32 and more are pointers
            // (a free-list link) or garbage. Immortals (3.12+) stay below.
            let refcnt = u64_at(block, offset)?;
            if refcnt == 0 || refcnt >= 1 << 32 {
                return None;
            }
            return Some(Found { offset, type_addr, refcnt });
        }
        None
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
