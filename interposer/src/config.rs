//! Interposer settings: the `tracking` part of a TieringPolicy, plus the
//! scanner's CPU budget. Same JSON field names as the TieringPolicy API.

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
    /// `enforce` or `observe`. Placement is not built yet, so both only observe.
    pub mode: String,
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
    }
}
