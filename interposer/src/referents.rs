//! The heat of a dict's table page by page, from the keys and values its
//! entries point at (and of an `OrderedDict`'s node array, from its nodes).
//!
//! A lookup reads the entry of the key it finds, so the page holding the
//! entries of hot keys is read as often as they are used, and a page of cold
//! keys' entries is not read at all. The dict's own temperature cannot tell
//! those pages apart, nor say how often the table is read: a dict used a
//! million times a second is as hot as one used once a scan, and spread over
//! a 5 MiB table that is next to nothing per page. So a table's page takes
//! the heat of the objects its entries point at. A lookup also reads the
//! index slot at the key's hash: that slot's page takes the entry's heat
//! (string keys' hashes are spread evenly, and their tables keep no hash, so
//! there the index pages share the entries' heat evenly).
//!
//! An `OrderedDict`'s `od_fast_nodes` is read the same way: `move_to_end`
//! finds a key's node at its entry's index there, so a slot is read as
//! often as its node is relinked (written).
//!
//! Only dict tables and those node arrays: a key is in its table once, so
//! an entry is read about as often as its key or value is used. A list can
//! hold one object many times (a sampler's pool of draws), and its slots are
//! then read far less often than the object is used; a list's item array
//! keeps its owner's heat.

use crate::layout::dict_keys;
use crate::memory::read_exact_self;

const PAGE: usize = 4096;
/// Buffers are read in pieces of about this size, a whole number of slots.
const PIECE: usize = 64 << 10;

/// What a dict table's entries say of it.
#[derive(Debug, PartialEq)]
pub struct TableReading {
    /// The heat of each page, in address order.
    pub pages: Vec<(usize, f32)>,
    /// Entries holding a value here (a split table's are elsewhere), and
    /// those whose value has heat: a lookup hands out its value, and an
    /// index nobody reads has values nobody uses.
    pub values: usize,
    pub values_in_use: usize,
}

/// The heat of each page of the dict table of `size` bytes at `addr`, from
/// `heat_of` each object an entry points at (0 where none is known); None
/// when the block does not read as a table (freed meanwhile, or a layout
/// this does not know): its owner's heat is then spread over it instead.
pub fn dict_table_heat(addr: usize, size: usize, heat_of: impl Fn(usize) -> f32) -> Option<TableReading> {
    use dict_keys::*;
    let mut header = [0u8; INDICES];
    if size < INDICES || read_exact_self(addr, &mut header).is_err() {
        return None;
    }
    let (log2_size, log2_index_bytes, kind) = (header[LOG2_SIZE] as u32, header[LOG2_INDEX_BYTES] as u32, header[KIND]);
    let entries = word(&header, NENTRIES);
    let (key_at, entry_size) = if kind == KIND_GENERAL { (8, 24) } else { (0, 16) };
    // What the header says must be a table, and fit what the allocator gave:
    // indices of 1 to 8 bytes, at most two thirds of the slots used.
    let plausible = kind <= KIND_SPLIT
        && (3..=40).contains(&log2_size)
        && (log2_size..=log2_size + 3).contains(&log2_index_bytes)
        && entries <= (2usize << log2_size) / 3
        && INDICES + (1usize << log2_index_bytes) + entries * entry_size <= size;
    if !plausible {
        return None;
    }
    let index = addr + INDICES;
    let index_len = 1usize << log2_index_bytes;
    let slot_width = 1usize << (log2_index_bytes - log2_size);
    let mut pages: Vec<(usize, f32)> =
        (index & !(PAGE - 1)..index + index_len).step_by(PAGE).map(|p| (p, 0.0)).collect();
    let index_pages = pages.len();
    let mut spread = 0.0;
    let (mut values, mut values_in_use) = (0, 0);
    let read = for_each_record(index + index_len, entries * entry_size, entry_size, |at, entry| {
        // A split table's values are in the dict's values array, not here.
        let value = word(entry, key_at + 8);
        let value_heat = heat_of(value);
        values += (value != 0) as usize;
        values_in_use += (value_heat > 0.0) as usize;
        let used = heat_of(word(entry, key_at)).max(value_heat);
        add_to_page(&mut pages, at, used);
        if kind == KIND_GENERAL {
            // A lookup reads first the index slot at the key's hash (and
            // mostly no other). Int keys hash to themselves: a dict of
            // 0..n reads only the first n slots of a bigger index.
            let slot = word(entry, 0) & ((1usize << log2_size) - 1);
            pages[(index + slot * slot_width) / PAGE - index / PAGE].1 += used;
        } else {
            spread += used; // string hashes are spread evenly
        }
    });
    if !read {
        return None;
    }
    for (page, heat) in &mut pages[..index_pages] {
        let overlap = (*page + PAGE).min(index + index_len) - (*page).max(index);
        *heat += spread * overlap as f32 / index_len as f32;
    }
    Some(TableReading { pages, values, values_in_use })
}

/// The heat of each page of an array of `size` bytes at `addr` of pointers
/// each read when the object it points at is used (an `OrderedDict`'s
/// nodes, which `move_to_end` finds there), in address order, from
/// `heat_of` each pointer; None if it could not be read.
pub fn pointer_array_heat(addr: usize, size: usize, heat_of: impl Fn(usize) -> f32) -> Option<Vec<(usize, f32)>> {
    let mut pages = Vec::with_capacity(size.div_ceil(PAGE) + 1);
    let read = for_each_record(addr, size / 8 * 8, 8, |at, slot| add_to_page(&mut pages, at, heat_of(word(slot, 0))));
    read.then_some(pages)
}

/// Reads `len` bytes at `addr` in pieces and calls `each(address, record)`
/// for every `size`-byte record; false if any piece could not be read.
fn for_each_record(addr: usize, len: usize, size: usize, mut each: impl FnMut(usize, &[u8])) -> bool {
    let mut piece = vec![0u8; (PIECE / size * size).min(len)];
    let mut done = 0;
    while done < len {
        let part = &mut piece[..(len - done).min(PIECE / size * size)];
        if read_exact_self(addr + done, part).is_err() {
            return false;
        }
        for (i, record) in part.chunks_exact(size).enumerate() {
            each(addr + done + i * size, record);
        }
        done += part.len();
    }
    true
}

/// Adds `degrees` to the page of `at` in `pages`, kept as (page, heat) in
/// address order: consecutive slots mostly share the last page.
fn add_to_page(pages: &mut Vec<(usize, f32)>, at: usize, degrees: f32) {
    let page = at & !(PAGE - 1);
    match pages.last_mut() {
        Some((last, sum)) if *last == page => *sum += degrees,
        _ => pages.push((page, degrees)),
    }
}

fn word(bytes: &[u8], at: usize) -> usize {
    bytes.get(at..at + 8).map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()) as usize)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// Objects by address and their temperatures, standing in for the
    /// scanner's tables.
    fn temperatures(known: &[(usize, f32)]) -> impl Fn(usize) -> f32 + '_ {
        move |addr| known.iter().find(|(a, _)| *a == addr).map_or(0.0, |(_, t)| *t)
    }

    /// Room for `len` bytes from the first page boundary in it.
    fn page_aligned(len: usize) -> Vec<u64> {
        vec![0u64; len / 8 + PAGE / 8]
    }

    fn aligned_start(v: &[u64]) -> usize {
        (v.as_ptr() as usize).next_multiple_of(PAGE)
    }

    /// A table of 2^12 slots with 2-byte indices (8 KiB from byte 32), then
    /// 2730 entries of `entry_size` bytes, page-aligned; `set(entry, field,
    /// word)` fills an entry. Returns (storage, its address, its length,
    /// where the entries start).
    fn table(kind: u8, entry_size: usize, set: &[(usize, usize, usize)]) -> (Vec<u64>, usize, usize, usize) {
        let (log2_size, log2_index_bytes, entries) = (12u8, 13u8, 2730usize);
        let len = dict_keys::INDICES + (1 << log2_index_bytes) + entries * entry_size;
        let mut storage = page_aligned(len);
        let base = aligned_start(&storage);
        let first = (base - storage.as_ptr() as usize) / 8;
        storage[first] = 1; // dk_refcnt
        storage[first + 1] = u64::from_le_bytes([log2_size, log2_index_bytes, kind, 0, 0, 0, 0, 0]);
        storage[first + 3] = entries as u64;
        let entries_at = base + dict_keys::INDICES + (1 << log2_index_bytes);
        for &(entry, field, value) in set {
            storage[(entries_at - base + entry * entry_size) / 8 + first + field] = value as u64;
        }
        (storage, base, len, entries_at)
    }

    const HOT_KEY: usize = 0x1000_0000;
    const HOT_VALUE: usize = 0x1000_1000;
    const WARM_KEY: usize = 0x3000_0000;
    const COLD: usize = 0x5000_0000;
    const KNOWN: [(usize, f32); 3] = [(HOT_KEY, 3.0), (HOT_VALUE, 6.0), (WARM_KEY, 1.0)];

    #[test]
    fn a_dict_table_page_takes_the_heat_of_its_entries_and_the_index_slot_at_their_hash() {
        // Entry 0: hash 3000 (slot 3000, 6000 bytes into the index: its second
        // page), a hot key and value; entry 2000: hash 100 (the first page), a
        // warm key and a value with no heat.
        let set =
            [(0, 0, 3000), (0, 1, HOT_KEY), (0, 2, HOT_VALUE), (2000, 0, 100), (2000, 1, WARM_KEY), (2000, 2, COLD)];
        let (_storage, base, len, entries_at) = table(dict_keys::KIND_GENERAL, 24, &set);
        let reading = dict_table_heat(base, len, temperatures(&KNOWN)).expect("read as a table");
        assert_eq!((reading.values, reading.values_in_use), (2, 1), "of two values, the hot one in use");
        let heat: HashMap<usize, f32> = reading.pages.into_iter().collect();

        // An entry is as hot as the hotter of its key and value...
        assert_eq!(heat[&((entries_at + 2000 * 24) & !(PAGE - 1))], 1.0);
        assert_eq!(entries_at & !(PAGE - 1), base + 2 * PAGE);
        assert_eq!(heat[&(base + 2 * PAGE)], 6.0);
        // ...and so is the index slot its hash leads to.
        assert_eq!(heat[&base], 1.0);
        assert_eq!(heat[&(base + PAGE)], 6.0);
        assert_eq!(heat.values().sum::<f32>(), 14.0);

        // A header that does not fit the block, or is no table, reads as none.
        assert_eq!(dict_table_heat(base, len - 24, temperatures(&KNOWN)), None);
        let (_storage, base, len, _) = table(7, 24, &set);
        assert_eq!(dict_table_heat(base, len, temperatures(&KNOWN)), None);
    }

    #[test]
    fn a_string_keyed_tables_index_pages_share_its_entries_heat_evenly() {
        // Entries of a key and a value, no hash: entry 0 hot (6 degrees).
        let (_storage, base, len, _) = table(1, 16, &[(0, 0, HOT_KEY), (0, 1, HOT_VALUE)]);
        let heat: HashMap<usize, f32> =
            dict_table_heat(base, len, temperatures(&KNOWN)).expect("read as a table").pages.into_iter().collect();
        // Each index page by how much of the 8 KiB index it holds: the first
        // all but the 32-byte header, the second whole, the third the last
        // 32 bytes, beside entry 0.
        let share = |bytes: usize| 6.0 * bytes as f32 / 8192.0;
        assert_eq!(heat[&base], share(PAGE - 32));
        assert_eq!(heat[&(base + PAGE)], share(PAGE));
        assert_eq!(heat[&(base + 2 * PAGE)], 6.0 + share(32));
    }

    #[test]
    fn a_pointer_arrays_page_takes_the_heat_of_what_its_pointers_point_at() {
        // Two pages of pointers: the first holds the hot key's at slot 5, the
        // second the warm key's twice and one to nothing known.
        let mut storage = page_aligned(2 * PAGE);
        let base = aligned_start(&storage);
        let first = (base - storage.as_ptr() as usize) / 8;
        for (slot, pointer) in [(5, HOT_KEY), (512, WARM_KEY), (600, WARM_KEY), (700, COLD)] {
            storage[first + slot] = pointer as u64;
        }
        let heat = pointer_array_heat(base, 2 * PAGE, temperatures(&KNOWN)).expect("readable");
        assert_eq!(heat, vec![(base, 3.0), (base + PAGE, 2.0)]);
    }
}
