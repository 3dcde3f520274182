//! The agent's Prometheus metrics, encoded at each scrape from the last
//! snapshot of what the interposers reported: a pod that is gone from the
//! snapshot has no series any more. Processes of one container are summed.
//!
//! Series (labels: `node` on all; `namespace`, `pod`, `container` on the
//! per-container ones):
//!
//! | name | type | extra labels |
//! | --- | --- | --- |
//! | `pytier_memory_bytes` | gauge | `tier` (dram, cxl, other): heap bytes resident there |
//! | `pytier_dram_budget_bytes` | gauge | the most heap the policy lets stay on DRAM (0 unless placement enforces: off, or `observe` mode) |
//! | `pytier_dram_heat_share` | gauge | the share of the heap's page heat on its hottest pages up to the DRAM budget, placing or not: the share of accesses DRAM serves (or would, with CXL); processes weighted by heap; absent until a page has heat |
//! | `pytier_objects` | gauge | `class` (hot, warm, cold) |
//! | `pytier_object_bytes` | gauge | `class` |
//! | `pytier_type_bytes` | gauge | `type`, `class` (hot, cold): the interposers' top types by hot and by cold bytes |
//! | `pytier_object_temperature` | histogram | objects by temperature in observed uses (`le` buckets 0.125 .. 32); `_sum` estimated from bucket midpoints |
//! | `pytier_migrated_pages_total`, `pytier_migrated_bytes_total` | counter | `direction` (promote, demote) |
//! | `pytier_migration_failures_total` | counter | `direction`, `reason` (ENOMEM, ...): pages |
//! | `pytier_scan_cpu_seconds_total` | counter | scanner CPU time |
//! | `pytier_scan_cpu_budget` | gauge | the share of a core the scanners may use (their `maxCpuFraction`s summed) |
//! | `pytier_gil_seconds_total` | counter | time pytier held the GIL |
//! | `pytier_interposers` | gauge | interposers answering in the container |
//! | `pytier_pod_state` | gauge | `policy`, `state` (Managed, Pending, Failed): 1 for the pod's state |
//! | `pytier_numa_node_capacity_bytes`, `pytier_numa_node_free_bytes` | gauge | `numa_node`, `tier` |

use std::collections::BTreeMap;
use std::fmt::Error;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use pytier_contract::settings::Mode;
use pytier_contract::stats::{Class, HISTOGRAM_UPPER_BOUNDS, Stats};
use pytier_crds::node::{NumaNode, PodState};

/// What the metrics show: replaced whole after each observation.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub numa_nodes: Vec<NumaNode>,
    pub pods: Vec<PodSample>,
}

#[derive(Debug, Clone)]
pub struct PodSample {
    pub namespace: String,
    pub name: String,
    /// The TieringPolicy governing the pod (its name, in the pod's namespace).
    pub policy: String,
    pub state: PodState,
    /// (container, stats) per interposer that answered.
    pub interposers: Vec<(String, Stats)>,
}

pub type Shared = Arc<Mutex<Snapshot>>;

/// A registry holding the agent's collector.
pub fn registry(node: &str, snapshot: Shared) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(AgentCollector { node: node.to_string(), snapshot }));
    registry
}

pub use pytier_admin::metrics::{CONTENT_TYPE, encode};

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, EncodeLabelSet)]
struct ContainerLabels {
    node: String,
    namespace: String,
    pod: String,
    container: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct TierLabels {
    #[prometheus(flatten)]
    at: ContainerLabels,
    tier: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct ClassLabels {
    #[prometheus(flatten)]
    at: ContainerLabels,
    class: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct DirectionLabels {
    #[prometheus(flatten)]
    at: ContainerLabels,
    direction: &'static str,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct FailureLabels {
    #[prometheus(flatten)]
    at: ContainerLabels,
    direction: &'static str,
    reason: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct TypeLabels {
    #[prometheus(flatten)]
    at: ContainerLabels,
    r#type: String,
    class: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct PodStateLabels {
    node: String,
    namespace: String,
    pod: String,
    policy: String,
    state: String,
}

#[derive(Debug, Clone, EncodeLabelSet)]
struct NumaLabels {
    node: String,
    numa_node: String,
    tier: String,
}

/// One container's figures, summed over its processes.
#[derive(Default)]
struct Sums {
    interposers: u64,
    tier_bytes: [u64; 3],
    budget_bytes: u64,
    /// Each process's `dramHeatShare` times its heap, and those heaps.
    heat_share_by_heap: f64,
    heat_share_heap: u64,
    cpu_budget: f64,
    /// (type, hot or cold) -> bytes, from each process's top types.
    types: BTreeMap<(String, Class), u64>,
    objects: [u64; 3],
    object_bytes: [u64; 3],
    histogram: [u64; 10],
    pages: [u64; 2],
    bytes: [u64; 2],
    failures: BTreeMap<(usize, String), u64>,
    scan_seconds: f64,
    gil_seconds: f64,
}

const TIERS: [&str; 3] = ["dram", "cxl", "other"];
const DIRECTIONS: [&str; 2] = ["promote", "demote"];

impl Sums {
    fn add(&mut self, stats: &Stats) {
        self.interposers += 1;
        self.scan_seconds += stats.scan_seconds_total;
        self.gil_seconds += stats.gil_seconds_total;
        self.cpu_budget += stats.config.as_ref().map_or(0.0, |c| c.tracking.max_cpu_fraction);
        let Some(last) = &stats.last else { return };
        let p = &last.placement;
        if p.off_reason.is_none() && p.mode == Mode::Enforce {
            self.budget_bytes += p.budget_bytes;
        }
        if let Some(share) = p.dram_heat_share {
            self.heat_share_by_heap += share * last.heap_bytes as f64;
            self.heat_share_heap += last.heap_bytes;
        }
        for (class, top) in [(Class::Hot, &last.top_types_by_hot_bytes), (Class::Cold, &last.top_types_by_cold_bytes)] {
            for t in top {
                *self.types.entry((t.type_name.clone(), class)).or_default() += t.bytes;
            }
        }
        for (sum, v) in self.tier_bytes.iter_mut().zip([p.dram_bytes, p.cxl_bytes, p.other_bytes]) {
            *sum += v;
        }
        for (i, class) in Class::ALL.iter().enumerate() {
            self.objects[i] += last.objects.of(*class);
            self.object_bytes[i] += last.bytes.of(*class);
        }
        for (sum, v) in self.histogram.iter_mut().zip(last.histogram) {
            *sum += v;
        }
        for (d, totals) in [&p.promoted, &p.demoted].into_iter().enumerate() {
            self.pages[d] += totals.pages;
            self.bytes[d] += totals.bytes;
            for (reason, n) in &totals.errors {
                *self.failures.entry((d, reason.clone())).or_default() += n;
            }
        }
    }
}

/// The API's spelling of an enum value (`hot`, `Managed`, `dram`), so labels,
/// tables and status say the same.
pub fn api_name<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_value(value).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
}

#[derive(Debug)]
struct AgentCollector {
    node: String,
    snapshot: Shared,
}

impl Collector for AgentCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), Error> {
        let snapshot = self.snapshot.lock().map(|s| s.clone()).unwrap_or_default();
        let mut containers: BTreeMap<ContainerLabels, Sums> = BTreeMap::new();
        for pod in &snapshot.pods {
            for (container, stats) in &pod.interposers {
                let at = ContainerLabels {
                    node: self.node.clone(),
                    namespace: pod.namespace.clone(),
                    pod: pod.name.clone(),
                    container: container.clone(),
                };
                containers.entry(at).or_default().add(stats);
            }
        }
        let e = &mut encoder;
        // With a unit, the encoder appends it to the name (`_bytes`, `_seconds`);
        // counters get `_total`.

        gauges(e, "pytier_memory", "Python heap bytes resident on each tier", Some(Unit::Bytes), &{
            let mut rows = Vec::new();
            for (at, s) in &containers {
                for (i, tier) in TIERS.iter().enumerate() {
                    rows.push((TierLabels { at: at.clone(), tier }, s.tier_bytes[i] as f64));
                }
            }
            rows
        })?;
        gauges(
            e,
            "pytier_dram_budget",
            "The most Python heap the policy lets stay on DRAM (0 unless placement enforces)",
            Some(Unit::Bytes),
            &containers.iter().map(|(at, s)| (at.clone(), s.budget_bytes as f64)).collect::<Vec<_>>(),
        )?;
        gauges(
            e,
            "pytier_dram_heat_share",
            "Share of the heap's page heat on its hottest pages up to the DRAM budget: of accesses DRAM serves",
            None,
            &(containers.iter())
                .filter(|(_, s)| s.heat_share_heap > 0)
                .map(|(at, s)| (at.clone(), s.heat_share_by_heap / s.heat_share_heap as f64))
                .collect::<Vec<_>>(),
        )?;
        let by_class = |values: fn(&Sums) -> [u64; 3]| {
            let mut rows = Vec::new();
            for (at, s) in &containers {
                for (i, class) in Class::ALL.iter().enumerate() {
                    rows.push((ClassLabels { at: at.clone(), class: api_name(class) }, values(s)[i] as f64));
                }
            }
            rows
        };
        gauges(e, "pytier_objects", "Python objects by temperature class", None, &by_class(|s| s.objects))?;
        gauges(
            e,
            "pytier_object",
            "Bytes of Python objects by temperature class",
            Some(Unit::Bytes),
            &by_class(|s| s.object_bytes),
        )?;
        let types: Vec<_> = containers
            .iter()
            .flat_map(|(at, s)| {
                s.types.iter().map(|((type_name, class), bytes)| {
                    (TypeLabels { at: at.clone(), r#type: type_name.clone(), class: api_name(class) }, *bytes as f64)
                })
            })
            .collect();
        gauges(e, "pytier_type", "Bytes of the top Python types by hot and by cold bytes", Some(Unit::Bytes), &types)?;

        let mut histogram = e.encode_descriptor(
            "pytier_object_temperature",
            "Python objects by temperature (decayed count of observed uses)",
            None,
            MetricType::Histogram,
        )?;
        for (at, s) in &containers {
            let buckets: Vec<(f64, u64)> =
                HISTOGRAM_UPPER_BOUNDS.iter().copied().chain([f64::MAX]).zip(s.histogram).collect();
            let (sum, count) = histogram_sum(&s.histogram);
            histogram.encode_family(at)?.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }

        let by_direction = |values: fn(&Sums) -> [u64; 2]| {
            let mut rows = Vec::new();
            for (at, s) in &containers {
                for (d, direction) in DIRECTIONS.iter().enumerate() {
                    rows.push((DirectionLabels { at: at.clone(), direction }, values(s)[d] as f64));
                }
            }
            rows
        };
        counters(e, "pytier_migrated_pages", "Pages moved between tiers", None, &by_direction(|s| s.pages))?;
        counters(e, "pytier_migrated", "Bytes moved between tiers", Some(Unit::Bytes), &by_direction(|s| s.bytes))?;
        let failures: Vec<_> = containers
            .iter()
            .flat_map(|(at, s)| {
                s.failures.iter().map(|((d, reason), n)| {
                    (FailureLabels { at: at.clone(), direction: DIRECTIONS[*d], reason: reason.clone() }, *n as f64)
                })
            })
            .collect();
        counters(e, "pytier_migration_failures", "Pages the kernel did not move, by error", None, &failures)?;
        let per_container =
            |value: fn(&Sums) -> f64| containers.iter().map(|(at, s)| (at.clone(), value(s))).collect::<Vec<_>>();
        counters(
            e,
            "pytier_scan_cpu",
            "CPU time of the interposers' scanners",
            Some(Unit::Seconds),
            &per_container(|s| s.scan_seconds),
        )?;
        gauges(
            e,
            "pytier_scan_cpu_budget",
            "Share of a core the container's scanners may use (their maxCpuFraction summed)",
            None,
            &per_container(|s| s.cpu_budget),
        )?;
        counters(
            e,
            "pytier_gil",
            "Time pytier held the GIL (start-up)",
            Some(Unit::Seconds),
            &per_container(|s| s.gil_seconds),
        )?;
        gauges(
            e,
            "pytier_interposers",
            "Interposers answering in the container",
            None,
            &per_container(|s| s.interposers as f64),
        )?;

        let states: Vec<_> = snapshot
            .pods
            .iter()
            .flat_map(|pod| {
                [PodState::Managed, PodState::Pending, PodState::Failed].map(|state| {
                    let labels = PodStateLabels {
                        node: self.node.clone(),
                        namespace: pod.namespace.clone(),
                        pod: pod.name.clone(),
                        policy: pod.policy.clone(),
                        state: api_name(&state),
                    };
                    (labels, (pod.state == state) as u8 as f64)
                })
            })
            .collect();
        gauges(
            e,
            "pytier_pod_state",
            "The agent's state for each pod it tiers (1 for the current one)",
            None,
            &states,
        )?;

        let numa = |value: fn(&NumaNode) -> u64| {
            snapshot
                .numa_nodes
                .iter()
                .map(|n| {
                    let labels =
                        NumaLabels { node: self.node.clone(), numa_node: n.id.to_string(), tier: api_name(&n.tier) };
                    (labels, value(n) as f64)
                })
                .collect::<Vec<_>>()
        };
        gauges(
            e,
            "pytier_numa_node_capacity",
            "Memory of each NUMA node",
            Some(Unit::Bytes),
            &numa(|n| n.capacity_bytes),
        )?;
        gauges(
            e,
            "pytier_numa_node_free",
            "Free memory of each NUMA node",
            Some(Unit::Bytes),
            &numa(|n| n.free_bytes),
        )?;
        Ok(())
    }
}

fn gauges<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: &[(L, f64)],
) -> Result<(), Error> {
    let mut family = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Gauge)?;
    for (labels, value) in rows {
        family.encode_family(labels)?.encode_gauge(value)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<Unit>,
    rows: &[(L, f64)],
) -> Result<(), Error> {
    let mut family = e.encode_descriptor(name, help, unit.as_ref(), MetricType::Counter)?;
    for (labels, value) in rows {
        family.encode_family(labels)?.encode_counter::<NoLabelSet, _, f64>(value, None)?;
    }
    Ok(())
}

/// (estimated sum, count) of a temperature histogram: each object counted at
/// its bucket's midpoint (the last bucket at 48, the middle of 32..64).
fn histogram_sum(buckets: &[u64; 10]) -> (f64, u64) {
    let mut lower = 0.0;
    let mut sum = 0.0;
    for (i, n) in buckets.iter().enumerate() {
        let upper = HISTOGRAM_UPPER_BOUNDS.get(i).copied().unwrap_or(64.0);
        sum += *n as f64 * (lower + upper) / 2.0;
        lower = upper;
    }
    (sum, buckets.iter().sum())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pytier_contract::Settings;
    use pytier_contract::stats::{PassReport, TypeBytes};

    fn snapshot_with(pods: &[(&str, PodState, usize)]) -> Shared {
        let mut stats = Stats {
            scan_seconds_total: 1.5,
            config: Some(Settings::default()),
            last: Some(PassReport::default()),
            ..Default::default()
        };
        let last = stats.last.as_mut().unwrap();
        last.placement.cxl_bytes = 8192;
        last.placement.budget_bytes = 1024;
        last.placement.dram_heat_share = Some(0.75);
        last.heap_bytes = 4096;
        last.top_types_by_cold_bytes = vec![TypeBytes { type_name: "dict".into(), objects: 2, bytes: 500 }];
        last.objects.hot = 3;
        last.histogram[4] = 3;
        last.placement.demoted.errors.insert("ENOMEM".into(), 2);
        let pods = pods
            .iter()
            .map(|(name, state, n)| PodSample {
                namespace: "ns".into(),
                name: name.to_string(),
                policy: "web".into(),
                state: *state,
                interposers: (0..*n).map(|_| ("app".to_string(), stats.clone())).collect(),
            })
            .collect();
        Arc::new(Mutex::new(Snapshot { numa_nodes: vec![], pods }))
    }

    #[test]
    fn series_per_container_summed_over_processes() {
        let text = encode(&registry("n1", snapshot_with(&[("web-0", PodState::Managed, 2)])));
        let labels = r#"node="n1",namespace="ns",pod="web-0",container="app""#;
        assert!(text.contains(&format!("pytier_memory_bytes{{{labels},tier=\"cxl\"}} 16384")), "{text}");
        assert!(text.contains(&format!("pytier_objects{{{labels},class=\"hot\"}} 6")), "{text}");
        assert!(text.contains(&format!("pytier_scan_cpu_seconds_total{{{labels}}} 3.0")), "{text}");
        assert!(
            text.contains(&format!(
                "pytier_migration_failures_total{{{labels},direction=\"demote\",reason=\"ENOMEM\"}} 4"
            )),
            "{text}"
        );
        assert!(text.contains(&format!("pytier_object_temperature_bucket{{le=\"2.0\",{labels}}} 6")), "{text}");
        assert!(
            text.contains(r#"pytier_pod_state{node="n1",namespace="ns",pod="web-0",policy="web",state="Managed"} 1"#),
            "{text}"
        );
        assert!(text.contains(&format!("pytier_dram_budget_bytes{{{labels}}} 2048")), "{text}");
        assert!(text.contains(&format!("pytier_dram_heat_share{{{labels}}} 0.75")), "{text}");
        assert!(text.contains(&format!("pytier_type_bytes{{{labels},type=\"dict\",class=\"cold\"}} 1000")), "{text}");
        assert!(text.contains(&format!("pytier_scan_cpu_budget{{{labels}}} 0.02")), "{text}");
        assert!(text.contains("# TYPE pytier_scan_cpu_seconds_total counter\n"), "{text}");
        assert!(!text.contains("# EOF") && !text.contains("# UNIT"), "{text}");
    }

    #[test]
    fn a_pod_gone_from_the_snapshot_has_no_series() {
        let snapshot = snapshot_with(&[("web-0", PodState::Managed, 1), ("web-1", PodState::Pending, 0)]);
        let registry = registry("n1", snapshot.clone());
        assert!(encode(&registry).contains("pod=\"web-1\""));
        snapshot.lock().unwrap().pods.retain(|p| p.name == "web-0");
        let text = encode(&registry);
        assert!(!text.contains("pod=\"web-1\""), "{text}");
        assert!(text.contains("pod=\"web-0\""));
    }

    #[test]
    fn dram_heat_share_is_weighted_by_heap_and_absent_before_any_heat() {
        let snapshot = snapshot_with(&[("web-0", PodState::Managed, 3)]);
        {
            let mut s = snapshot.lock().unwrap();
            let processes = &mut s.pods[0].interposers;
            for ((_, stats), (share, heap)) in
                processes.iter_mut().zip([(Some(1.0), 3000), (Some(0.0), 1000), (None, 9000)])
            {
                let last = stats.last.as_mut().unwrap();
                (last.placement.dram_heat_share, last.heap_bytes) = (share, heap);
            }
        }
        let text = encode(&registry("n1", snapshot.clone()));
        assert!(
            text.contains(r#"pytier_dram_heat_share{node="n1",namespace="ns",pod="web-0",container="app"} 0.75"#),
            "{text}"
        );
        for (_, stats) in &mut snapshot.lock().unwrap().pods[0].interposers {
            stats.last.as_mut().unwrap().placement.dram_heat_share = None;
        }
        assert!(!encode(&registry("n1", snapshot)).contains("pytier_dram_heat_share{"), "no share, no series");
    }
}
