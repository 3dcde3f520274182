//! Interposer settings: how one Python process is tracked and placed.
//!
//! These are the TieringPolicy API's settings, field for field: the API crate
//! embeds [`Settings`] (with the `schema` feature), the operator copies them
//! into each TieringNode, the node agent fills in the tiers it discovered and
//! sends them over the control socket, and `PYTIER_CONFIG` takes the same
//! JSON. The schema's bounds are the constants in [`limits`], and
//! [`Settings::validate`] checks exactly those, so whatever the API server
//! admits, the interposer accepts with the same meaning.
//!
//! Unknown fields are refused everywhere (a typo, or a setting from a newer
//! API the interposer does not implement, is an error, not a silent default).

use serde::{Deserialize, Serialize};

/// Bounds of every setting. The schema attributes below and `validate` both
/// use them; nothing else states a bound.
pub mod limits {
    pub const SCAN_INTERVAL_MILLIS: (u32, u32) = (1, 60_000);
    pub const SLICE_MILLIS: (u32, u32) = (1, 1000);
    /// Temperatures are fixed point with 8 fractional bits and saturate just
    /// below 64 (`interposer/src/temperature.rs`): a threshold outside this
    /// range could never be told apart from its neighbour.
    pub const HOT_THRESHOLD: (f64, f64) = (1.0 / 256.0, 63.0);
    pub const DECAY_HALF_LIFE_SECONDS: (u32, u32) = (1, 86_400);
    pub const MAX_CPU_FRACTION: (f64, f64) = (0.001, 1.0);
    pub const MAX_FAULT_FRACTION: (f64, f64) = (0.0, 0.5);
    pub const MIN_BUDGET_BYTES: u64 = 4096;
    pub const HEAP_FRACTION: (f64, f64) = (0.0, 1.0);
    pub const MIN_MIGRATION_BYTES_PER_SECOND: u64 = 4096;
    pub const MAX_HYSTERESIS_SECONDS: u32 = 3600;
    /// The interposer keeps NUMA node sets as 64-bit masks (`mbind`).
    pub const MAX_NUMA_NODE: u32 = 63;
    pub const MAX_LISTED_NODES: usize = 64;
}

use limits::*;

/// How pytier tracks and places the memory of a Python process.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Settings {
    /// `enforce` moves memory between tiers; `observe` measures temperatures and
    /// reports what would move, but moves nothing.
    pub mode: Mode,

    /// Which NUMA nodes count as DRAM and which as CXL. Nodes not listed are
    /// classified by the node agent from the machine's topology.
    pub tiers: Tiers,

    /// How much of each process's memory may live on DRAM. Defaults to 25% of
    /// the Python heap.
    pub dram_budget: DramBudget,

    /// How the interposer finds objects and turns reference-count changes and
    /// page writes into temperatures, and what it may cost.
    pub tracking: Tracking,

    /// When and how fast memory moves between tiers.
    pub migration: Migration,
}

/// Whether the policy moves memory or only reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Move memory between tiers.
    #[default]
    Enforce,
    /// Measure and report what would move; move nothing.
    Observe,
}

/// Explicit NUMA node classification. A node listed here is treated as that
/// tier whatever discovery finds; a node in neither list is classified by the
/// node agent (kernel memory tiers, CPU-less nodes).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("x-kubernetes-validations" = [{
    "rule": "!has(self.dramNodes) || !has(self.cxlNodes) || self.dramNodes.all(n, !(n in self.cxlNodes))",
    "message": "a NUMA node cannot be in both dramNodes and cxlNodes",
}])))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tiers {
    /// NUMA node ids (0 to 63) to treat as DRAM (the fast tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_LISTED_NODES), inner(range(max = MAX_NUMA_NODE))))]
    pub dram_nodes: Option<Vec<u32>>,

    /// NUMA node ids (0 to 63) to treat as CXL (the slow, large tier).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(length(max = MAX_LISTED_NODES), inner(range(max = MAX_NUMA_NODE))))]
    pub cxl_nodes: Option<Vec<u32>>,
}

/// DRAM budget per process: set exactly one of `bytes` or `heapFraction`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[cfg_attr(feature = "schema", schemars(extend("x-kubernetes-validations" = [{
    "rule": "has(self.bytes) != has(self.heapFraction)",
    "message": "set exactly one of dramBudget.bytes or dramBudget.heapFraction",
}])))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DramBudget {
    /// Absolute DRAM budget per process in bytes (for example 536870912 for
    /// 512 MiB). At least one page (4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = MIN_BUDGET_BYTES)))]
    pub bytes: Option<u64>,

    /// DRAM budget as a fraction of the process's Python heap, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "schema", schemars(range(min = HEAP_FRACTION.0, max = HEAP_FRACTION.1)))]
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

/// How objects are found, how their temperature is computed, and what the
/// tracking may cost the program.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Tracking {
    /// Milliseconds between the starts of two scan cycles over the heap (and
    /// between two page-write collections) at the shortest. A cycle over a big
    /// heap takes longer: it is spread out to stay within `maxCpuFraction`.
    #[cfg_attr(feature = "schema", schemars(range(min = SCAN_INTERVAL_MILLIS.0, max = SCAN_INTERVAL_MILLIS.1)))]
    pub scan_interval_millis: u32,

    /// Longest a scan slice runs before the scanner pauses for its CPU budget,
    /// in milliseconds.
    #[cfg_attr(feature = "schema", schemars(range(min = SLICE_MILLIS.0, max = SLICE_MILLIS.1)))]
    pub slice_millis: u32,

    /// Temperature (decayed count of observed reference-count changes) at or
    /// above which an object is hot; from 1/256 to 63.
    #[cfg_attr(feature = "schema", schemars(range(min = HOT_THRESHOLD.0, max = HOT_THRESHOLD.1)))]
    pub hot_threshold: f64,

    /// Seconds after which an object's temperature halves when it is not used.
    #[cfg_attr(feature = "schema", schemars(range(min = DECAY_HALF_LIFE_SECONDS.0, max = DECAY_HALF_LIFE_SECONDS.1)))]
    pub decay_half_life_seconds: u32,

    /// Share of one CPU the scanner may use (0.01 is 1%).
    #[cfg_attr(feature = "schema", schemars(range(min = MAX_CPU_FRACTION.0, max = MAX_CPU_FRACTION.1)))]
    pub max_cpu_fraction: f64,

    /// Share of the program's time that page-write tracking may cost it (one
    /// minor fault per written heap page per collection); 0 turns page-write
    /// tracking off.
    #[cfg_attr(feature = "schema", schemars(range(min = MAX_FAULT_FRACTION.0, max = MAX_FAULT_FRACTION.1)))]
    pub max_fault_fraction: f64,

    /// Wrap the raw allocator to see allocations too big for pymalloc (long
    /// strings, list item arrays, dict tables). Read when the process starts.
    pub allocator_view: bool,
}

impl Default for Tracking {
    fn default() -> Self {
        Tracking {
            scan_interval_millis: 100,
            slice_millis: 10,
            hot_threshold: 1.0,
            decay_half_life_seconds: 10,
            max_cpu_fraction: 0.01,
            max_fault_fraction: 0.002,
            allocator_view: true,
        }
    }
}

/// The scanner's first `STARTUP_CYCLES` cycles may use `STARTUP_BOOST` times
/// `maxCpuFraction` (at most `STARTUP_MAX_CPU_FRACTION` of a core): a working
/// set needs two full cycles to show, and at 1% of a core a cycle over a
/// 50 MiB heap takes 1.5 s.
pub const STARTUP_CYCLES: u64 = 2;
pub const STARTUP_BOOST: f64 = 5.0;
pub const STARTUP_MAX_CPU_FRACTION: f64 = 0.05;

impl Tracking {
    /// The scanner's share of a core after `cycles` complete cycles.
    pub fn cpu_fraction(&self, cycles: u64) -> f64 {
        if cycles < STARTUP_CYCLES {
            self.max_cpu_fraction.max((self.max_cpu_fraction * STARTUP_BOOST).min(STARTUP_MAX_CPU_FRACTION))
        } else {
            self.max_cpu_fraction
        }
    }
}

/// When and how fast memory moves between tiers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct Migration {
    /// Move memory that heats up from CXL to DRAM.
    pub promote: bool,

    /// Move memory that cools down from DRAM to CXL.
    pub demote: bool,

    /// Upper bound on bytes moved per second per process, in both directions
    /// together. At least 4096 (one page).
    #[cfg_attr(feature = "schema", schemars(range(min = MIN_MIGRATION_BYTES_PER_SECOND)))]
    pub max_bytes_per_second: u64,

    /// Hysteresis: seconds memory must stay cold before it is demoted, and
    /// stays on a tier after it moved before it may move back. 0 disables it.
    #[cfg_attr(feature = "schema", schemars(range(max = MAX_HYSTERESIS_SECONDS)))]
    pub hysteresis_seconds: u32,
}

impl Default for Migration {
    fn default() -> Self {
        Migration { promote: true, demote: true, max_bytes_per_second: 64 << 20, hysteresis_seconds: 30 }
    }
}

/// A setting that is out of bounds or inconsistent; says which and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(pub String);

impl std::fmt::Display for Invalid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid pytier settings: {}", self.0)
    }
}

impl std::error::Error for Invalid {}

impl Settings {
    /// Parses and checks JSON settings (`PYTIER_CONFIG`, a config request).
    pub fn from_json(text: &str) -> Result<Settings, Invalid> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| Invalid(e.to_string()))?;
        Settings::from_value(value)
    }

    /// Checks JSON settings already parsed.
    pub fn from_value(value: serde_json::Value) -> Result<Settings, Invalid> {
        let settings: Settings = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            if path == "." {
                Invalid(e.into_inner().to_string())
            } else {
                Invalid(format!("{path}: {}", e.into_inner()))
            }
        })?;
        settings.validate()?;
        Ok(settings)
    }

    /// Checks every bound of [`limits`] and the rules across fields: exactly
    /// the checks the CRD schema makes.
    pub fn validate(&self) -> Result<(), Invalid> {
        let t = &self.tracking;
        within("tracking.scanIntervalMillis", t.scan_interval_millis, SCAN_INTERVAL_MILLIS)?;
        within("tracking.sliceMillis", t.slice_millis, SLICE_MILLIS)?;
        within("tracking.hotThreshold", t.hot_threshold, HOT_THRESHOLD)?;
        within("tracking.decayHalfLifeSeconds", t.decay_half_life_seconds, DECAY_HALF_LIFE_SECONDS)?;
        within("tracking.maxCpuFraction", t.max_cpu_fraction, MAX_CPU_FRACTION)?;
        within("tracking.maxFaultFraction", t.max_fault_fraction, MAX_FAULT_FRACTION)?;
        match (self.dram_budget.bytes, self.dram_budget.heap_fraction) {
            (Some(_), Some(_)) | (None, None) => {
                return fail("set exactly one of dramBudget.bytes or dramBudget.heapFraction");
            }
            (Some(bytes), None) => within("dramBudget.bytes", bytes, (MIN_BUDGET_BYTES, u64::MAX))?,
            (None, Some(fraction)) => within("dramBudget.heapFraction", fraction, HEAP_FRACTION)?,
        }
        let m = &self.migration;
        within("migration.maxBytesPerSecond", m.max_bytes_per_second, (MIN_MIGRATION_BYTES_PER_SECOND, u64::MAX))?;
        within("migration.hysteresisSeconds", m.hysteresis_seconds, (0, MAX_HYSTERESIS_SECONDS))?;
        let dram = self.tiers.dram_nodes.as_deref().unwrap_or_default();
        let cxl = self.tiers.cxl_nodes.as_deref().unwrap_or_default();
        for (name, list) in [("tiers.dramNodes", dram), ("tiers.cxlNodes", cxl)] {
            if list.len() > MAX_LISTED_NODES {
                return fail(&format!("{name} lists more than {MAX_LISTED_NODES} nodes"));
            }
            for &node in list {
                within(name, node, (0, MAX_NUMA_NODE))?;
            }
        }
        if dram.iter().any(|n| cxl.contains(n)) {
            return fail("a NUMA node cannot be in both dramNodes and cxlNodes");
        }
        Ok(())
    }
}

fn fail(why: &str) -> Result<(), Invalid> {
    Err(Invalid(why.to_string()))
}

fn within<T: PartialOrd + std::fmt::Display>(name: &str, value: T, (min, max): (T, T)) -> Result<(), Invalid> {
    // Written so that NaN is out of every range.
    if value >= min && value <= max {
        Ok(())
    } else {
        fail(&format!("{name} is {value}; it must be between {min} and {max}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_partial_and_bad_settings() {
        assert_eq!(Settings::from_json("{}").unwrap(), Settings::default());
        let partial = Settings::from_json(r#"{"tracking": {"hotThreshold": 2.5}}"#).unwrap();
        assert_eq!((partial.tracking.hot_threshold, partial.tracking.scan_interval_millis), (2.5, 100));
        let typo = Settings::from_json(r#"{"tracking": {"hotThreshhold": 2}}"#).unwrap_err().0;
        assert!(typo.contains("unknown field `hotThreshhold`"), "{typo}");
        let flat = Settings::from_json(r#"{"maxCpuFraction": 0.1}"#).unwrap_err().0;
        assert!(flat.contains("unknown field `maxCpuFraction`"), "{flat}");
        let zero = Settings::from_json(r#"{"tracking": {"scanIntervalMillis": 0}}"#).unwrap_err().0;
        assert!(zero.contains("tracking.scanIntervalMillis is 0"), "{zero}");
        assert!(Settings::from_json(r#"{"mode": "fast"}"#).unwrap_err().0.contains("unknown variant `fast`"));
        assert!(Settings::from_json("not json").is_err());
        let both = r#"{"dramBudget": {"bytes": 8192, "heapFraction": 0.5}}"#;
        assert!(Settings::from_json(both).unwrap_err().0.contains("exactly one"));
        let bytes = Settings::from_json(r#"{"dramBudget": {"bytes": 8192}}"#).unwrap();
        assert_eq!(bytes.dram_budget.bytes_for(1 << 30), 8192);
        assert_eq!(Settings::default().dram_budget.bytes_for(1000), 250);
        let overlap = r#"{"tiers": {"dramNodes": [0, 1], "cxlNodes": [1]}}"#;
        assert!(Settings::from_json(overlap).unwrap_err().0.contains("both"));
        let far = r#"{"tiers": {"cxlNodes": [64]}}"#;
        assert!(Settings::from_json(far).unwrap_err().0.contains("tiers.cxlNodes is 64"));
        let partial = Settings::from_json(r#"{"migration": {"hysteresisSeconds": 2}}"#).unwrap();
        assert_eq!((partial.migration.hysteresis_seconds, partial.migration.promote), (2, true));
    }

    #[test]
    fn nan_and_infinity_are_out_of_range() {
        let mut s = Settings::default();
        s.tracking.max_cpu_fraction = f64::NAN;
        assert!(s.validate().is_err());
        s.tracking.max_cpu_fraction = f64::INFINITY;
        assert!(s.validate().is_err());
    }
}
