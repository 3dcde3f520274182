//! `TieringPolicy`: which Python pods are tiered, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Which pods a TieringPolicy governs, and how the pytier interposer keeps their
/// hot objects on DRAM and their cold objects on CXL memory.
///
/// A pod is governed by a policy when the policy's podSelector matches it, or
/// when the pod carries the annotation `pytier.dev/policy: <policy name>`.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "pytier.dev",
    version = "v1alpha1",
    kind = "TieringPolicy",
    namespaced,
    shortname = "tp",
    doc = "A TieringPolicy selects Python pods and says how pytier places their memory on DRAM and CXL NUMA nodes.",
    status = "TieringPolicyStatus",
    printcolumn = r#"{"name":"Mode","type":"string","jsonPath":".spec.mode"}"#,
    printcolumn = r#"{"name":"Matched","type":"integer","jsonPath":".status.matchedPods"}"#,
    printcolumn = r#"{"name":"Injected","type":"integer","jsonPath":".status.injectedPods"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TieringPolicySpec {
    /// Pods in the policy's namespace that this policy applies to. Pods may also
    /// opt in with the annotation `pytier.dev/policy: <name>`. When omitted, only
    /// annotated pods are selected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,

    /// The tiering settings applied to every selected pod.
    #[serde(flatten)]
    pub settings: TieringSettings,
}

/// How pytier tracks and places the memory of a Python process. The operator
/// copies these settings, resolved, into each node's TieringNode.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TieringSettings {
    /// `enforce` moves memory between tiers; `observe` measures temperatures and
    /// reports what would move, but moves nothing.
    #[serde(default)]
    pub mode: Mode,

    /// Which NUMA nodes count as DRAM and which as CXL. Nodes not listed are
    /// classified automatically by the node agent.
    #[serde(default)]
    pub tiers: Tiers,

    /// How much of each process's memory may live on DRAM. Defaults to 25% of
    /// the Python heap.
    #[serde(default)]
    pub dram_budget: DramBudget,

    /// How the interposer finds objects and turns reference-count changes into
    /// temperatures.
    #[serde(default)]
    pub tracking: Tracking,

    /// When and how fast memory moves between tiers.
    #[serde(default)]
    pub migration: Migration,

    /// Who places memory that the Python allocator does not own (buffers that C
    /// extensions such as numpy allocate themselves): `none` leaves it where it
    /// was first touched, `kernel` hands it to the kernel's own tiering.
    #[serde(default)]
    pub native: NativeMemory,
}

/// Whether the policy moves memory or only reports.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Move memory between tiers.
    #[default]
    Enforce,
    /// Measure and report what would move; move nothing.
    Observe,
}

/// Who places memory the Python allocator does not own.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum NativeMemory {
    /// Leave it where it was first touched.
    #[default]
    None,
    /// Enable kernel memory tiering (NUMA balancing tiering mode) for it.
    Kernel,
}

/// Explicit NUMA node classification. A node listed here is treated as that tier
/// whatever discovery finds; a node in neither list is classified by the node
/// agent (hwloc memory attributes, kernel memory tiers, CPU-less nodes).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new(
    "!has(self.dramNodes) || !has(self.cxlNodes) || self.dramNodes.all(n, !(n in self.cxlNodes))"
).message("a NUMA node cannot be in both dramNodes and cxlNodes"))]
pub struct Tiers {
    /// NUMA node ids to treat as DRAM (the fast tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(range(min = 0, max = 1023)))]
    pub dram_nodes: Option<Vec<u32>>,

    /// NUMA node ids to treat as CXL (the slow, large tier).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), inner(range(min = 0, max = 1023)))]
    pub cxl_nodes: Option<Vec<u32>>,
}

/// DRAM budget per process: set exactly one of `bytes` or `heapFraction`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.bytes) != has(self.heapFraction)")
    .message("set exactly one of dramBudget.bytes or dramBudget.heapFraction"))]
pub struct DramBudget {
    /// Absolute DRAM budget per process in bytes (for example 536870912 for
    /// 512 MiB). At least one page (4096).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 4096))]
    pub bytes: Option<u64>,

    /// DRAM budget as a fraction of the process's Python heap, from 0 to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0.0, max = 1.0))]
    pub heap_fraction: Option<f64>,
}

impl Default for DramBudget {
    fn default() -> Self {
        DramBudget { bytes: None, heap_fraction: Some(0.25) }
    }
}

/// How objects are found and how their temperature is computed.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Tracking {
    /// Milliseconds between the starts of two scan passes over the heap. The
    /// interposer may stretch it when a pass runs over its time budget.
    #[serde(default = "default_scan_interval_millis")]
    #[schemars(range(min = 1, max = 60000))]
    pub scan_interval_millis: u32,

    /// How many references deep cascade tracing follows from a GC-tracked
    /// container to the objects it references (ints, strs, ...). At least 1.
    #[serde(default = "default_cascade_depth")]
    #[schemars(range(min = 1, max = 16))]
    pub cascade_depth: u32,

    /// At most how many referents cascade tracing follows from one container.
    #[serde(default = "default_cascade_length")]
    #[schemars(range(min = 1, max = 1000000))]
    pub cascade_length: u32,

    /// Temperature (decayed count of observed reference-count changes) at or
    /// above which an object is hot. Must be greater than zero.
    #[serde(default = "default_hot_threshold")]
    #[schemars(range(min = 0.001, max = 1000000.0))]
    pub hot_threshold: f64,

    /// Seconds after which an object's temperature halves when it is not used.
    #[serde(default = "default_decay_half_life_seconds")]
    #[schemars(range(min = 1, max = 86400))]
    pub decay_half_life_seconds: u32,
}

fn default_scan_interval_millis() -> u32 {
    100
}
fn default_cascade_depth() -> u32 {
    2
}
fn default_cascade_length() -> u32 {
    64
}
fn default_hot_threshold() -> f64 {
    1.0
}
fn default_decay_half_life_seconds() -> u32 {
    10
}

impl Default for Tracking {
    fn default() -> Self {
        Tracking {
            scan_interval_millis: default_scan_interval_millis(),
            cascade_depth: default_cascade_depth(),
            cascade_length: default_cascade_length(),
            hot_threshold: default_hot_threshold(),
            decay_half_life_seconds: default_decay_half_life_seconds(),
        }
    }
}

/// When and how fast memory moves between tiers.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Migration {
    /// Move memory that heats up from CXL to DRAM.
    #[serde(default = "yes")]
    pub promote: bool,

    /// Move memory that cools down from DRAM to CXL.
    #[serde(default = "yes")]
    pub demote: bool,

    /// Upper bound on bytes moved per second per process, in both directions
    /// together. At least 4096 (one page).
    #[serde(default = "default_max_bytes_per_second")]
    #[schemars(range(min = 4096))]
    pub max_bytes_per_second: u64,

    /// Hysteresis: seconds memory must stay cold before it is demoted, and
    /// stays on a tier after it moved before it may move back. 0 disables it.
    #[serde(default = "default_hysteresis_seconds")]
    #[schemars(range(max = 3600))]
    pub hysteresis_seconds: u32,
}

fn yes() -> bool {
    true
}
fn default_max_bytes_per_second() -> u64 {
    64 << 20
}
fn default_hysteresis_seconds() -> u32 {
    30
}

impl Default for Migration {
    fn default() -> Self {
        Migration {
            promote: true,
            demote: true,
            max_bytes_per_second: default_max_bytes_per_second(),
            hysteresis_seconds: default_hysteresis_seconds(),
        }
    }
}

/// What the operator observed about a policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TieringPolicyStatus {
    /// `Ready`: every matched pod is tiered as the policy says. `Degraded`: some
    /// pods could not be tiered; the message says which and why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// Running pods this policy governs: it selects them and no older policy
    /// does (see the Degraded condition for conflicts).
    #[serde(default)]
    pub matched_pods: u32,

    /// Governed pods whose Python processes run the interposer, as the node
    /// agents report.
    #[serde(default)]
    pub injected_pods: u32,

    /// Governed pods that could not be tiered (see the Degraded condition).
    #[serde(default)]
    pub failed_pods: u32,

    /// Bytes of the governed pods' tiered memory on DRAM nodes, summed over
    /// what the node agents last reported.
    #[serde(default)]
    pub dram_bytes: u64,

    /// Bytes of the governed pods' tiered memory on CXL nodes, summed over
    /// what the node agents last reported.
    #[serde(default)]
    pub cxl_bytes: u64,
}
