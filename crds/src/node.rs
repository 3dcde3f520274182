//! `TieringNode`: one per Kubernetes node. The operator writes the spec (what
//! should be tiered there); the node agent writes the status (what it found).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired tiering on one node, named after the node. Written by the operator;
/// people read it, they do not edit it.
#[derive(CustomResource, JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "pytier.dev",
    version = "v1alpha1",
    kind = "TieringNode",
    shortname = "tn",
    doc = "A TieringNode holds pytier's desired state for one node (spec, from the operator) and what the node agent found there (status).",
    status = "TieringNodeStatus",
    printcolumn = r#"{"name":"Pods","type":"integer","jsonPath":".status.managedPods"}"#,
    printcolumn = r#"{"name":"DRAM nodes","type":"string","jsonPath":".status.dramNodes"}"#,
    printcolumn = r#"{"name":"CXL nodes","type":"string","jsonPath":".status.cxlNodes"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct TieringNodeSpec {
    /// The pods on this node that a policy governs. Only which policy: the
    /// agent reads its settings from the TieringPolicy itself, so an edit of
    /// the settings writes no TieringNode (at 1000 nodes, copying them here
    /// cost an edit 500 writes and seconds of the API server's time).
    #[serde(default)]
    #[schemars(length(max = 1000))]
    pub pods: Vec<PodTiering>,
}

/// One pod the node agent should tier, and the policy that says how.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodTiering {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// UID of the pod; the agent finds its containers' cgroups by it.
    pub uid: String,
    /// Name of the TieringPolicy (in the pod's namespace) that governs it.
    pub policy: String,
}

/// What the node agent found on this node.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TieringNodeStatus {
    /// `Ready`: topology discovered and every pod in the spec is managed.
    /// `Degraded`: something is wrong; the message says what.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,

    /// The metadata.generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The NUMA nodes of this machine and the tier each was assigned.
    #[serde(default)]
    pub numa_nodes: Vec<NumaNode>,

    /// NUMA node ids classified as DRAM, comma-separated (for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dram_nodes: Option<String>,

    /// NUMA node ids classified as CXL, comma-separated (for display).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cxl_nodes: Option<String>,

    /// Number of pods in `pods` whose state is `Managed`.
    #[serde(default)]
    pub managed_pods: u32,

    /// The pods of the spec as the agent sees them.
    #[serde(default)]
    pub pods: Vec<PodStatus>,

    /// The policies governing the spec's pods, each at the generation whose
    /// settings the agent gives their interposers. Written with the byte
    /// counts (every `--status-every`), not at each edit: an edit reaching
    /// 500 nodes must not cost 500 writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<PolicyGeneration>,
}

/// A policy as the node agent applies it.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PolicyGeneration {
    /// Namespace of the TieringPolicy.
    pub namespace: String,
    /// Name of the TieringPolicy.
    pub name: String,
    /// Its metadata.generation whose settings are in use.
    pub generation: i64,
}

/// The memory tier a NUMA node belongs to.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tier {
    /// Fast memory, usually with CPUs attached.
    #[serde(rename = "dram")]
    Dram,
    /// Slow, large memory such as a CXL expander; usually CPU-less.
    #[serde(rename = "cxl")]
    Cxl,
}

/// Why a NUMA node got its tier.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub enum TierSource {
    /// Listed explicitly in the policy.
    Policy,
    /// hwloc memory attributes (latency, bandwidth).
    Hwloc,
    /// The kernel's memory tiers (/sys/devices/virtual/memory_tiering).
    MemoryTiering,
    /// Last resort: a node with CPUs is DRAM, a CPU-less node is CXL.
    Cpus,
}

/// One NUMA node of the machine.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NumaNode {
    /// NUMA node id as the kernel numbers it.
    pub id: u32,
    /// The tier this node was assigned.
    pub tier: Tier,
    /// Why it was assigned that tier.
    pub source: TierSource,
    /// CPUs on this node in kernel list format (for example `0-3`); empty when
    /// the node has none.
    #[serde(default)]
    pub cpus: String,
    /// Total memory of the node in bytes.
    pub capacity_bytes: u64,
    /// Free memory of the node in bytes when last read.
    pub free_bytes: u64,
}

/// How the agent is doing with one pod of the spec.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// `Managed`, `Pending` (no Python process seen yet) or `Failed`.
    pub state: PodState,
    /// Why the pod is not managed, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Python processes of the pod running the interposer.
    #[serde(default)]
    pub processes: u32,
    /// Bytes of the pod's tiered memory resident on DRAM nodes, when last read.
    #[serde(default)]
    pub dram_bytes: u64,
    /// Bytes of the pod's tiered memory resident on CXL nodes, when last read.
    #[serde(default)]
    pub cxl_bytes: u64,
    /// Bytes of the pod's hot Python objects, when last read.
    #[serde(default)]
    pub hot_bytes: u64,
    /// Bytes of the pod's warm Python objects, when last read.
    #[serde(default)]
    pub warm_bytes: u64,
    /// Bytes of the pod's cold Python objects, when last read.
    #[serde(default)]
    pub cold_bytes: u64,
    /// Bytes moved to DRAM nodes since the pod's processes started.
    #[serde(default)]
    pub promoted_bytes: u64,
    /// Bytes moved to CXL nodes since the pod's processes started.
    #[serde(default)]
    pub demoted_bytes: u64,
    /// Pages the kernel refused to move since the pod's processes started.
    #[serde(default)]
    pub failed_pages: u64,
}

/// The agent's state for one pod.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum PodState {
    /// The interposer runs in the pod's Python processes and takes settings.
    Managed,
    /// No Python process with the interposer has been seen yet.
    #[default]
    Pending,
    /// The pod cannot be tiered; see the message.
    Failed,
}
