//! The owners of big tables (a dict's table, an `OrderedDict`'s node array),
//! their reference counts read between the regions of a cycle rather than
//! once in it. A big table is read by its entries only while its owner is
//! seen in use (see the scanner), and a dict that is only looked up (a store
//! read once per request) holds the extra reference of a lookup for a moment:
//! with one reading a cycle, the placement benchmark's `mixed` store was first
//! seen in use 3 to 19 s into a phase in the VM, and once not in 30 s.

use std::time::Instant;

use crate::memory::read_each;
use crate::temperature::{Rules, Temperature};

/// Owners watched at most: big tables are few (a lookup among them is a
/// short scan), and each reading of them all is one `process_vm_readv`.
const MOST_OWNERS: usize = 256;

#[derive(Default)]
pub struct TableOwners {
    /// The owners' addresses, in one list for the readings...
    addrs: Vec<usize>,
    /// ...and what is known of each, at the same index.
    owners: Vec<Owner>,
    buf: Vec<u8>,
    last_pass_end: Option<Instant>,
}

struct Owner {
    /// The count last read (a whole word: on 3.14 its low half).
    count: u64,
    /// Seen changing since the pass began.
    changed: bool,
    /// Passes in which it was seen changing, decayed.
    temperature: Temperature,
    /// Still an owner of a big table in this pass.
    watched: bool,
}

impl TableOwners {
    /// Watches the object at `addr` as the owner of a big table in this
    /// pass; whether it was seen in use (its count changing), in this pass or
    /// lately. An owner first watched now is not: its count is the baseline.
    pub fn watch(&mut self, addr: usize) -> bool {
        if let Some(i) = self.addrs.iter().position(|&a| a == addr) {
            let owner = &mut self.owners[i];
            owner.watched = true;
            return owner.changed || owner.temperature.degrees() > 0.0;
        }
        if self.addrs.len() < MOST_OWNERS
            && let Some(count) = read_counts(&[addr], &mut self.buf).first().copied().flatten()
        {
            self.addrs.push(addr);
            self.owners.push(Owner { count, changed: false, temperature: Temperature::default(), watched: true });
        }
        false
    }

    /// Reads every owner's count again; one that changed was in use.
    pub fn sample(&mut self) {
        let counts = read_counts(&self.addrs, &mut self.buf);
        for (owner, count) in self.owners.iter_mut().zip(counts) {
            if let Some(count) = count {
                owner.changed |= owner.count != count;
                owner.count = count;
            }
        }
    }

    /// Ends a pass: each owner watched in it records whether it was seen in
    /// use; the others are forgotten.
    pub fn end_pass(&mut self, now: Instant, rules_for: impl Fn(f64) -> Rules) {
        let since = self.last_pass_end.map_or(1.0, |at| now.duration_since(at).as_secs_f64());
        self.last_pass_end = Some(now);
        let rules = rules_for(since);
        // The addresses first, by their owners' state, which the owners' own
        // retain then clears.
        let mut kept = self.owners.iter().map(|owner| owner.watched);
        self.addrs.retain(|_| kept.next().unwrap_or(false));
        self.owners.retain_mut(|owner| {
            if !owner.watched {
                return false;
            }
            if !owner.temperature.is_present() {
                // Its baseline is the count read when it was first watched.
                owner.temperature.record(false, &rules);
            }
            owner.temperature.record(owner.changed, &rules);
            (owner.changed, owner.watched) = (false, false);
            true
        });
    }
}

/// The word at each address (an object's count), None where it cannot be read.
fn read_counts(addrs: &[usize], buf: &mut Vec<u8>) -> Vec<Option<u64>> {
    let read = read_each(addrs, 8, buf);
    let words = buf.chunks_exact(8).map(|word| u64::from_ne_bytes(word.try_into().expect("8 bytes")));
    read.into_iter().zip(words).map(|(ok, word)| ok.then_some(word)).collect()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    fn rules(_since: f64) -> Rules {
        Rules::new(1.0, 10.0, 1.0)
    }

    #[test]
    fn an_owner_whose_count_changes_between_readings_is_in_use_and_stays_so_for_a_while() {
        let count = AtomicU64::new(5); // an object's count, written by "the program"
        let addr = count.as_ptr() as usize;
        let mut owners = TableOwners::default();
        assert!(!owners.watch(addr), "first watched: a baseline only");
        owners.sample();
        assert!(!owners.watch(addr), "unchanged");
        count.store(6, Ordering::Relaxed);
        owners.sample();
        count.store(5, Ordering::Relaxed);
        assert!(owners.watch(addr), "changed between two readings");
        owners.end_pass(Instant::now(), rules);
        owners.watch(addr);
        owners.sample();
        assert!(owners.watch(addr), "in use lately, though not in this pass");
    }

    #[test]
    fn an_owner_not_watched_in_a_pass_is_forgotten() {
        let count = AtomicU64::new(1);
        let addr = count.as_ptr() as usize;
        let mut owners = TableOwners::default();
        owners.watch(addr);
        owners.end_pass(Instant::now(), rules);
        owners.end_pass(Instant::now(), rules);
        assert!(owners.owners.is_empty() && owners.addrs.is_empty());
    }
}
