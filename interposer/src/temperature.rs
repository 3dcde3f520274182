//! Temperature: a decayed count of the passes in which an object's reference
//! count was seen to change (or a page was seen written), with hot/warm/cold
//! classes.
//!
//! Stored in 2 bytes, next to 2 bytes of the last reading for an object, so
//! the table costs 4 bytes per tracked object (1/8 of a 32-byte block at most).

/// Temperature is fixed point with 8 fractional bits, at most 63.99.
const ONE: u16 = 256;
const TEMP_MASK: u16 = 0x3fff;
const PRESENT: u16 = 1 << 14;
const HOT: u16 = 1 << 15;

/// The class of an object, for placement and for reports.
pub use pytier_contract::stats::Class;

/// Thresholds and decay, from the tracking settings.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    /// Enter the hot class at this temperature (fixed point).
    hot_enter: u16,
    /// Leave the hot class below this (hysteresis: half of `hot_enter`).
    hot_leave: u16,
    /// Below this an object that is not hot is cold.
    cold_below: u16,
    /// Multiplier per scan, 16-bit fixed point.
    decay_q16: u32,
}

impl Rules {
    /// `hot_threshold` in observed changes; `half_life_s` and `scan_interval_s`
    /// in seconds.
    pub fn new(hot_threshold: f64, half_life_s: f64, scan_interval_s: f64) -> Rules {
        let hot_enter = (hot_threshold.clamp(1.0 / 256.0, 63.0) * ONE as f64) as u16;
        let decay = 0.5f64.powf(scan_interval_s / half_life_s.max(1e-3));
        Rules {
            hot_enter,
            hot_leave: (hot_enter / 2).max(1),
            cold_below: (hot_enter / 8).max(1),
            decay_q16: (decay * 65536.0) as u32,
        }
    }
}

/// A decayed count of the passes in which something (an object, a page) was
/// seen in use, with its class. 2 bytes: 14 bits of temperature, a presence
/// bit and the hot bit that carries the hysteresis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Temperature(u16);

impl Temperature {
    /// Records one pass. The first only marks the thing present: whether it
    /// was used needs a baseline to compare with.
    pub fn record(&mut self, used: bool, rules: &Rules) -> Class {
        if self.0 == PRESENT && !used {
            return Class::Cold; // stone cold stays so: most of a heap, the quick way
        }
        let mut temp = self.0 & TEMP_MASK;
        if self.0 & PRESENT != 0 {
            // Round to nearest, but always lose at least one unit so a small
            // temperature still reaches zero.
            let decayed = ((temp as u32 * rules.decay_q16 + 0x8000) >> 16) as u16;
            temp = if rules.decay_q16 < 65536 { decayed.min(temp.saturating_sub(1)) } else { decayed };
            if used {
                temp = (temp + ONE).min(TEMP_MASK);
            }
        }
        let was_hot = self.0 & HOT != 0;
        let hot = if was_hot { temp >= rules.hot_leave } else { temp >= rules.hot_enter };
        self.0 = temp | PRESENT | if hot { HOT } else { 0 };
        self.class(rules)
    }

    pub fn class(&self, rules: &Rules) -> Class {
        if self.0 & HOT != 0 {
            Class::Hot
        } else if self.0 & TEMP_MASK < rules.cold_below {
            Class::Cold
        } else {
            Class::Warm
        }
    }

    /// Present, at zero and not hot: recording "not used" leaves it as it is.
    pub fn is_stone_cold(&self) -> bool {
        self.0 == PRESENT
    }

    /// Whether anything was recorded since the last clear.
    pub fn is_present(&self) -> bool {
        self.0 & PRESENT != 0
    }

    /// In observed uses.
    pub fn degrees(&self) -> f64 {
        Self::degrees_of(self.units())
    }

    /// In the fixed-point units it is kept in, which sum without rounding.
    pub fn units(&self) -> u32 {
        (self.0 & TEMP_MASK) as u32
    }

    /// Units (or a sum of them) in observed uses.
    pub fn degrees_of(units: u32) -> f64 {
        units as f64 / ONE as f64
    }

    /// Histogram bucket: 0 below 1/8 use, then one bucket per doubling, 9 from 32 up.
    pub fn bucket(&self) -> usize {
        let eighths = (self.0 & TEMP_MASK) >> 5;
        ((16 - eighths.leading_zeros()) as usize).min(9)
    }
}

/// One object's state: its last reference-count reading (low 16 bits) and its
/// temperature, 4 bytes in all.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Slot {
    last_refcnt: u16,
    temp: Temperature,
}

impl Slot {
    /// Records this scan's reading of a live object and returns its class.
    pub fn observe(&mut self, refcnt: u64, rules: &Rules) -> Class {
        let reading = refcnt as u16;
        let changed = reading != self.last_refcnt;
        self.last_refcnt = reading;
        self.temp.record(changed, rules)
    }

    /// The block no longer holds a live object.
    pub fn clear(&mut self) {
        *self = Slot::default();
    }

    pub fn class(&self, rules: &Rules) -> Class {
        self.temp.class(rules)
    }

    /// Whether the last pass found a live object here.
    pub fn is_present(&self) -> bool {
        self.temp.is_present()
    }

    /// Empty, or an object at zero that is not hot: another reading of an
    /// unchanged count leaves the slot exactly as it is.
    pub fn is_settled(&self) -> bool {
        !self.temp.is_present() || self.temp.is_stone_cold()
    }

    /// Temperature in observed changes.
    pub fn temperature(&self) -> f64 {
        self.temp.degrees()
    }

    /// Temperature in units (`Temperature::units`).
    pub fn units(&self) -> u32 {
        self.temp.units()
    }

    pub fn bucket(&self) -> usize {
        self.temp.bucket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untouched_object_stays_cold() {
        let rules = Rules::new(1.0, 10.0, 0.1);
        let mut slot = Slot::default();
        for _ in 0..100 {
            assert_eq!(slot.observe(5, &rules), Class::Cold);
        }
        assert_eq!(slot.temperature(), 0.0);
    }

    #[test]
    fn a_changing_count_heats_and_decays_by_half_life() {
        let rules = Rules::new(1.0, 10.0, 0.1);
        let mut slot = Slot::default();
        slot.observe(1, &rules);
        assert_eq!(slot.observe(2, &rules), Class::Hot);
        // 100 scans of 0.1 s = one half-life: about half the heat is left.
        for _ in 0..100 {
            slot.observe(2, &rules);
        }
        let t = slot.temperature();
        assert!((0.45..=0.55).contains(&t), "after one half-life: {t}");
    }

    #[test]
    fn hysteresis_keeps_a_cooling_object_hot_until_half_the_threshold() {
        let rules = Rules::new(2.0, 1.0, 0.1);
        let mut slot = Slot::default();
        let mut r = 0;
        slot.observe(r, &rules);
        while slot.observe(
            {
                r += 1;
                r
            },
            &rules,
        ) != Class::Hot
        {}
        // Cooling: still hot between the thresholds, then warm, then cold.
        let mut classes = Vec::new();
        for _ in 0..80 {
            let class = slot.observe(r, &rules);
            classes.push((slot.temperature(), class));
        }
        let first_not_hot = classes.iter().position(|(_, c)| *c != Class::Hot).unwrap();
        // Hot from 2.0 (enter) down to 1.0 (leave), not below.
        assert!(classes[first_not_hot].0 < 1.0, "left hot at {:?}", classes[first_not_hot]);
        assert!(classes[..first_not_hot].iter().all(|(t, _)| *t >= 1.0), "{classes:?}");
        assert!(first_not_hot > 3, "stayed hot while between the thresholds: {classes:?}");
        assert_eq!(classes.last().unwrap().1, Class::Cold);
    }

    #[test]
    fn settled_slots_are_left_as_they_are_by_an_unchanged_count() {
        let rules = Rules::new(1.0, 1.0, 0.5);
        let mut slot = Slot::default();
        assert!(slot.is_settled(), "empty");
        slot.observe(7, &rules);
        assert!(slot.is_settled(), "first reading: present at zero");
        slot.observe(8, &rules);
        assert!(!slot.is_settled(), "used");
        let mut cycles = 0;
        while !slot.is_settled() {
            slot.observe(8, &rules);
            cycles += 1;
        }
        assert!(cycles > 2, "cools over several readings, not at once: {cycles}");
        let settled = slot;
        slot.observe(8, &rules);
        assert_eq!(slot, settled);
    }

    #[test]
    fn histogram_buckets_double() {
        let bucket = |degrees: f64| Temperature((degrees * ONE as f64) as u16).bucket();
        assert_eq!(bucket(0.0), 0);
        assert_eq!(bucket(0.12), 0);
        assert_eq!(bucket(0.125), 1);
        assert_eq!(bucket(0.3), 2);
        assert_eq!(bucket(1.0), 4);
        assert_eq!(bucket(63.0), 9);
    }

    #[test]
    fn wrapping_and_saturating() {
        let rules = Rules::new(1.0, 1e9, 0.1);
        let mut slot = Slot::default();
        slot.observe(0, &rules);
        for i in 1..1000u64 {
            slot.observe(i, &rules);
        }
        assert!(slot.temperature() > 63.0, "saturates, does not wrap: {}", slot.temperature());
        slot.clear();
        assert_eq!(slot, Slot::default());
    }
}
