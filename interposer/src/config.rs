//! Interposer settings: a TieringPolicy's `tracking` (flattened), `mode`,
//! `tiers`, `dramBudget` and `migration`, plus the scanner's budgets. Same
//! JSON field names as the TieringPolicy API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Config {
    /// Shortest time between the starts of two scan cycles, and between two
    /// page-write collections.
    pub scan_interval_millis: u32,
    /// Longest a scan slice runs before the scanner pauses for its budget.
    pub slice_millis: u32,
    /// Temperature (decayed count of observed changes) at which an object is hot.
    pub hot_threshold: f64,
    /// Seconds for an unused object's temperature to halve.
    pub decay_half_life_seconds: u32,
    /// Share of one CPU the scanner may use: each slice is followed by a pause
    /// that keeps its cost within it.
    pub max_cpu_fraction: f64,
    /// Share of the program's time that page-write tracking may cost it (one
    /// minor fault per written heap page per collection); 0 turns it off.
    pub max_fault_fraction: f64,
    /// Wrap the RAW allocator to learn of blocks too big for pymalloc (big
    /// objects and buffers). Read at start only.
    pub allocator_view: bool,
    /// `enforce` moves pages between tiers; `observe` decides and reports
    /// the same, moving nothing.
    pub mode: String,
    pub tiers: Tiers,
    pub dram_budget: DramBudget,
    pub migration: Migration,
}

/// NUMA nodes to treat as DRAM or CXL; others are classified by whether they
/// have CPUs (see `numa`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tiers {
    pub dram_nodes: Option<Vec<u32>>,
    pub cxl_nodes: Option<Vec<u32>>,
}

/// DRAM budget per process: `bytes`, or a fraction of the Python heap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DramBudget {
    #[serde(default)]
    pub bytes: Option<u64>,
    #[serde(default)]
    pub heap_fraction: Option<f64>,
}

impl Default for DramBudget {
    fn default() -> Self {
        DramBudget { bytes: None, heap_fraction: Some(0.25) }
    }
}

impl DramBudget {
    pub fn bytes_for(&self, heap_bytes: u64) -> u64 {
        match (self.bytes, self.heap_fraction) {
            (Some(bytes), _) => bytes,
            (None, Some(fraction)) => (heap_bytes as f64 * fraction) as u64,
            (None, None) => heap_bytes,
        }
    }
}

/// When and how fast pages move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Migration {
    pub promote: bool,
    pub demote: bool,
    /// Both directions together.
    pub max_bytes_per_second: u64,
    /// How long a page must be unwanted on DRAM before it makes room for
    /// another, and how long a page that moved stays put.
    pub hysteresis_seconds: u32,
}

impl Default for Migration {
    fn default() -> Self {
        Migration { promote: true, demote: true, max_bytes_per_second: 64 << 20, hysteresis_seconds: 30 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scan_interval_millis: 100,
            slice_millis: 10,
            hot_threshold: 1.0,
            decay_half_life_seconds: 10,
            max_cpu_fraction: 0.01,
            max_fault_fraction: 0.002,
            allocator_view: true,
            mode: "enforce".into(),
            tiers: Tiers::default(),
            dram_budget: DramBudget::default(),
            migration: Migration::default(),
        }
    }
}

impl Config {
    /// Parses and checks a JSON config; the error says which field is wrong.
    pub fn from_json(text: &str) -> Result<Config, String> {
        let config: Config = serde_json::from_str(text).map_err(|e| format!("invalid pytier config: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    pub fn validate(&self) -> Result<(), String> {
        let fail = |what: &str| Err(format!("invalid pytier config: {what}"));
        if !(1..=60_000).contains(&self.scan_interval_millis) {
            return fail("scanIntervalMillis must be between 1 and 60000");
        }
        if !(1..=1000).contains(&self.slice_millis) {
            return fail("sliceMillis must be between 1 and 1000");
        }
        if !(self.hot_threshold > 0.0 && self.hot_threshold <= 63.0) {
            return fail("hotThreshold must be greater than 0 and at most 63");
        }
        if !(1..=86_400).contains(&self.decay_half_life_seconds) {
            return fail("decayHalfLifeSeconds must be between 1 and 86400");
        }
        if !(self.max_cpu_fraction >= 0.001 && self.max_cpu_fraction <= 1.0) {
            return fail("maxCpuFraction must be between 0.001 and 1");
        }
        if !(0.0..=0.5).contains(&self.max_fault_fraction) {
            return fail("maxFaultFraction must be between 0 and 0.5");
        }
        if self.mode != "enforce" && self.mode != "observe" {
            return fail("mode must be \"enforce\" or \"observe\"");
        }
        match (self.dram_budget.bytes, self.dram_budget.heap_fraction) {
            (Some(_), Some(_)) | (None, None) => {
                return fail("set exactly one of dramBudget.bytes or dramBudget.heapFraction");
            }
            (Some(bytes), None) if bytes < 4096 => return fail("dramBudget.bytes must be at least 4096"),
            (None, Some(f)) if !(0.0..=1.0).contains(&f) => {
                return fail("dramBudget.heapFraction must be between 0 and 1");
            }
            _ => {}
        }
        if self.migration.max_bytes_per_second < 4096 {
            return fail("migration.maxBytesPerSecond must be at least 4096");
        }
        if self.migration.hysteresis_seconds > 3600 {
            return fail("migration.hysteresisSeconds must be at most 3600");
        }
        let listed = |l: &Option<Vec<u32>>| l.clone().unwrap_or_default();
        if listed(&self.tiers.dram_nodes).iter().any(|n| listed(&self.tiers.cxl_nodes).contains(n)) {
            return fail("a NUMA node cannot be in both tiers.dramNodes and tiers.cxlNodes");
        }
        if listed(&self.tiers.dram_nodes).iter().chain(&listed(&self.tiers.cxl_nodes)).any(|n| *n > 63) {
            return fail("NUMA node ids above 63 are not supported");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_partial_and_bad_configs() {
        assert_eq!(Config::from_json("{}").unwrap(), Config::default());
        assert_eq!(Config::from_json(r#"{"hotThreshold": 2.5}"#).unwrap().hot_threshold, 2.5);
        let typo = Config::from_json(r#"{"hotThreshhold": 2}"#).unwrap_err();
        assert!(typo.contains("unknown field `hotThreshhold`"), "{typo}");
        assert!(Config::from_json(r#"{"scanIntervalMillis": 0}"#).unwrap_err().contains("scanIntervalMillis"));
        assert!(Config::from_json(r#"{"mode": "fast"}"#).unwrap_err().contains("mode"));
        assert!(Config::from_json("not json").is_err());
        assert!(Config::from_json(r#"{"maxFaultFraction": -1}"#).unwrap_err().contains("maxFaultFraction"));
        let both = r#"{"dramBudget": {"bytes": 8192, "heapFraction": 0.5}}"#;
        assert!(Config::from_json(both).unwrap_err().contains("exactly one"));
        let bytes = Config::from_json(r#"{"dramBudget": {"bytes": 8192}}"#).unwrap();
        assert_eq!(bytes.dram_budget.bytes_for(1 << 30), 8192);
        assert_eq!(Config::default().dram_budget.bytes_for(1000), 250);
        let overlap = r#"{"tiers": {"dramNodes": [0, 1], "cxlNodes": [1]}}"#;
        assert!(Config::from_json(overlap).unwrap_err().contains("both"));
        let partial = Config::from_json(r#"{"migration": {"hysteresisSeconds": 2}}"#).unwrap();
        assert_eq!((partial.migration.hysteresis_seconds, partial.migration.promote), (2, true));
    }
}
