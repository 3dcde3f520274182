//! Standalone mode's screen: what the interposer sees in the program and
//! what tiering does with it. With a CXL node, where the heap's bytes are;
//! without one, what CXL would do: the hottest pages up to the DRAM budget
//! stay on DRAM and the rest go to CXL, which serves the share of accesses
//! their heat carries, each about `cxl_extra_ns` slower.

use pytier_contract::settings::{STARTUP_BOOST, STARTUP_CYCLES};
use pytier_contract::stats::{ByClass, HISTOGRAM_UPPER_BOUNDS, Stats};
use serde::Serialize;

/// CXL's extra latency over DRAM for an access that misses the CPU caches:
/// about twice DRAM's, +70 to 90 ns on the first devices.
pub const DEFAULT_CXL_EXTRA_NS: f64 = 80.0;

/// One look at the program: its heap by temperature, and the tiers.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Outlook {
    pub seconds: f64,
    pub objects: ByClass,
    pub bytes: ByClass,
    pub coverage: f64,
    /// Objects by temperature, buckets of `HISTOGRAM_UPPER_BOUNDS`.
    pub histogram: [u64; 10],
    pub scanner_cpu: f64,
    /// Whether the bytes per tier are where the kernel has them (a CXL node
    /// is there) or what CXL would do (none is).
    pub measured: bool,
    pub heap_bytes: u64,
    pub budget_bytes: u64,
    pub dram_bytes: u64,
    pub cxl_bytes: u64,
    /// Share of the program's heap accesses DRAM serves once placed (null
    /// before any page has heat).
    pub dram_share: Option<f64>,
    /// What CXL adds per heap access that misses the caches, on average.
    pub extra_ns_per_access: Option<f64>,
    pub moved_pages: u64,
    /// The types with the most cold bytes: what CXL would take.
    pub coldest_types: Vec<(String, u64)>,
}

impl Outlook {
    /// From the interposer's stats, or None before its first full scan.
    /// `has_cxl`: whether this machine has a CXL node.
    pub fn new(stats: &Stats, has_cxl: bool, cxl_extra_ns: f64) -> Option<Outlook> {
        let last = stats.last.as_ref()?;
        let placement = &last.placement;
        let heap_bytes = placement.heap_pages * 4096;
        let (dram_bytes, cxl_bytes) = if has_cxl {
            (placement.dram_bytes, placement.cxl_bytes)
        } else {
            let dram = placement.budget_bytes.min(heap_bytes);
            (dram, heap_bytes - dram)
        };
        let share = placement.dram_heat_share;
        Some(Outlook {
            seconds: stats.uptime_seconds,
            objects: last.objects,
            bytes: last.bytes,
            coverage: last.coverage,
            histogram: last.histogram,
            scanner_cpu: stats.scanner_cpu_fraction,
            measured: has_cxl,
            heap_bytes,
            budget_bytes: placement.budget_bytes,
            dram_bytes,
            cxl_bytes,
            dram_share: share,
            extra_ns_per_access: share.map(|s| (1.0 - s) * cxl_extra_ns),
            moved_pages: placement.promoted.pages + placement.demoted.pages,
            coldest_types: last.top_types_by_cold_bytes.iter().map(|t| (t.type_name.clone(), t.bytes)).collect(),
        })
    }

    /// The header over `line`s.
    pub fn header() -> String {
        format!(
            "{:>6} {:>6} {:>6} {:>6} {:<10} {:>4} {:>6} {:>5} {:>6} {:>5}",
            "TIME", "HOT", "WARM", "COLD", "HEAT", "COV", "DRAM", "CXL", "SERVED", "SCAN"
        )
    }

    /// One line of at most 80 columns.
    pub fn line(&self) -> String {
        format!(
            "{:>5.1}s {:>6} {:>6} {:>6} {:<10} {:>3.0}% {:>6} {:>5} {:>6} {:>4.1}%",
            self.seconds,
            count(self.objects.hot),
            count(self.objects.warm),
            count(self.objects.cold),
            sparkline(&self.histogram),
            100.0 * self.coverage,
            mib(self.dram_bytes),
            mib(self.cxl_bytes),
            self.dram_share.map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
            100.0 * self.scanner_cpu,
        )
    }

    /// Lines of at most 80 columns for the end of the run.
    pub fn summary(&self, cxl_extra_ns: f64) -> String {
        let objects = self.objects.total();
        let mut out =
            format!("after {:.1} s: heap {} MiB, {} objects\n", self.seconds, mib(self.heap_bytes), count(objects));
        out += &format!(
            "  hot {} ({} MiB), warm {} ({} MiB), cold {} ({} MiB)\n",
            count(self.objects.hot),
            mib(self.bytes.hot),
            count(self.objects.warm),
            mib(self.bytes.warm),
            count(self.objects.cold),
            mib(self.bytes.cold),
        );
        if self.measured {
            out += &format!(
                "  on DRAM {} MiB, on CXL {} MiB (budget {} MiB); {} pages moved\n",
                mib(self.dram_bytes),
                mib(self.cxl_bytes),
                mib(self.budget_bytes),
                self.moved_pages
            );
        } else {
            out += &format!(
                "if CXL took all but the hottest {} MiB (the DRAM budget):\n  DRAM {:>8} MiB\n  CXL  {:>8} MiB of DRAM saved\n",
                mib(self.budget_bytes),
                mib(self.dram_bytes),
                mib(self.cxl_bytes)
            );
        }
        out += &match (self.dram_share, self.extra_ns_per_access) {
            (Some(share), Some(extra)) => format!(
                "  DRAM serves {:.1}% of heap accesses, CXL {:.1}%: +{extra:.1} ns on average\n  \
                 per access that misses the caches (+{cxl_extra_ns:.0} ns each on CXL)\n",
                100.0 * share,
                100.0 * (1.0 - share),
            ),
            _ => "  no page has been seen in use yet: no share of accesses to give\n".into(),
        };
        let types: Vec<String> =
            self.coldest_types.iter().take(4).map(|(name, bytes)| format!("{name} {} MiB", mib(*bytes))).collect();
        if !types.is_empty() {
            out += &format!("  most cold bytes: {}\n", types.join(", "));
        }
        out
    }
}

/// A count in at most 6 characters: 950, 12.3k, 634k, 1.2M.
fn count(n: u64) -> String {
    match n {
        0..10_000 => n.to_string(),
        10_000..1_000_000 => format!("{:.0}k", n as f64 / 1e3),
        _ => format!("{:.1}M", n as f64 / 1e6),
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / (1u64 << 20) as f64)
}

/// The temperature histogram, coldest bucket first, as one character per
/// bucket: its share of objects on a log scale (a bucket holding one object
/// in a million still shows).
pub fn sparkline(histogram: &[u64; 10]) -> String {
    const BARS: [char; 9] = [' ', '▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];
    let total: u64 = histogram.iter().sum();
    histogram
        .iter()
        .map(|&n| {
            if n == 0 || total == 0 {
                return BARS[0];
            }
            // 1 object in a million is the lowest bar, all of them the highest.
            let level = 1.0 + (n as f64 / total as f64).log10() / 6.0;
            BARS[1 + (level.clamp(0.0, 1.0) * 7.0).round() as usize]
        })
        .collect()
}

/// What the columns mean, over the header.
pub fn legend(has_cxl: bool) -> String {
    let (coldest, hottest) = (HISTOGRAM_UPPER_BOUNDS[0], HISTOGRAM_UPPER_BOUNDS[HISTOGRAM_UPPER_BOUNDS.len() - 1]);
    let tiers = if has_cxl { "now" } else { "if there were CXL" };
    format!(
        "HEAT: objects per temperature, cold (< {coldest} uses) to hot (>= {hottest}), log scale\n\
         DRAM, CXL: heap MiB per tier {tiers}; SERVED: share of heap accesses on DRAM\n\
         SCAN: scanner CPU since start (its first {STARTUP_CYCLES} cycles may use {STARTUP_BOOST}x its budget)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use pytier_contract::stats::{PassReport, TypeBytes};

    fn stats() -> Stats {
        let mut last = PassReport::default();
        last.objects.hot = 650;
        last.objects.cold = 633_696;
        last.bytes.cold = 40 << 20;
        last.histogram = [633_000, 696, 0, 0, 0, 0, 0, 0, 0, 650];
        last.placement.heap_pages = 11_000;
        last.placement.budget_bytes = 11_000 * 4096 / 4;
        last.placement.dram_bytes = 11_000 * 4096;
        last.placement.dram_heat_share = Some(0.9);
        last.top_types_by_cold_bytes = vec![TypeBytes { type_name: "dict".into(), objects: 1, bytes: 30 << 20 }];
        Stats { uptime_seconds: 6.0, scanner_cpu_fraction: 0.0102, last: Some(last), ..Stats::default() }
    }

    #[test]
    fn without_cxl_the_budget_stays_on_dram_and_the_rest_would_go_to_cxl() {
        let o = Outlook::new(&stats(), false, 80.0).unwrap();
        assert_eq!((o.heap_bytes, o.dram_bytes, o.cxl_bytes), (11_000 * 4096, 2_750 * 4096, 8_250 * 4096));
        assert!((o.extra_ns_per_access.unwrap() - 8.0).abs() < 1e-9, "10% of accesses on CXL at +80 ns");
        let summary = o.summary(80.0);
        assert!(summary.contains("DRAM serves 90.0% of heap accesses, CXL 10.0%: +8.0 ns"), "{summary}");
        assert!(summary.contains("most cold bytes: dict 30.0 MiB"), "{summary}");
        assert!(summary.lines().all(|l| l.chars().count() <= 80), "{summary}");
    }

    #[test]
    fn with_cxl_the_bytes_are_where_the_kernel_has_them() {
        let o = Outlook::new(&stats(), true, 80.0).unwrap();
        assert_eq!((o.dram_bytes, o.cxl_bytes), (11_000 * 4096, 0));
        assert!(o.summary(80.0).contains("on DRAM 43.0 MiB, on CXL 0.0 MiB"));
    }

    #[test]
    fn a_line_fits_80_columns() {
        let o = Outlook::new(&stats(), false, 80.0).unwrap();
        let line = o.line();
        assert!(line.chars().count() <= 80 && Outlook::header().chars().count() <= 80, "{line}");
        assert!(line.starts_with("  6.0s    650      0   634k "), "{line}");
        assert!(line.ends_with(" 90.0%  1.0%"), "{line}");
    }

    #[test]
    fn no_outlook_before_the_first_full_scan() {
        assert_eq!(Outlook::new(&Stats::default(), false, 80.0), None);
    }

    #[test]
    fn the_histogram_shows_rare_buckets_and_empty_ones() {
        assert_eq!(sparkline(&[1_000_000, 1, 0, 0, 0, 0, 0, 0, 0, 0]), "█▁        ");
        assert_eq!(sparkline(&[0; 10]), "          ");
    }
}
