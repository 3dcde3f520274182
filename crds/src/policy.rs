//! `TieringPolicy`: which Python pods are tiered, and how.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::CustomResource;
pub use pytier_contract::Settings;
pub use pytier_contract::settings::{DramBudget, Migration, Mode, Tiers, Tracking};
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

    /// The tiering settings applied to every selected pod: exactly what the
    /// interposer accepts (`pytier_contract::Settings`).
    #[serde(flatten)]
    pub settings: Settings,
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
