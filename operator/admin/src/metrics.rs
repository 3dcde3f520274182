//! Metrics registries (`prometheus-client`, typed labels) served the way
//! every scraper and `promtool check metrics` read them.

use prometheus_client::registry::Registry;

pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A registry in the Prometheus text format (0.0.4): the client's
/// OpenMetrics text with counters' HELP and TYPE named as their samples
/// (`_total`), without `# UNIT` and `# EOF`.
pub fn encode(registry: &Registry) -> String {
    let mut open_metrics = String::new();
    prometheus_client::encoding::text::encode(&mut open_metrics, registry).expect("writing to a String cannot fail");
    let counters: Vec<&str> =
        open_metrics.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter")).collect();
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let (name, tail) = line.strip_prefix(prefix)?.split_once(' ')?;
            counters.contains(&name).then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;

    #[test]
    fn counters_are_named_as_their_samples() {
        let mut registry = Registry::default();
        let counter: Counter = Counter::default();
        registry.register("pytier_things", "Things seen", counter.clone());
        counter.inc();
        let text = encode(&registry);
        assert_eq!(
            text,
            "# HELP pytier_things_total Things seen.\n# TYPE pytier_things_total counter\npytier_things_total 1\n"
        );
    }
}
