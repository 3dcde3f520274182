//! The agent's decisions, as pure functions of what it read: the settings
//! each interposer gets, the memory nodes each container may use, and the
//! status of each pod and of the node. No I/O here.

use std::collections::BTreeMap;

use pytier_contract::Settings;
use pytier_contract::stats::Stats;
use pytier_crds::node::{NumaNode, PodState, PodStatus, PodTiering, PolicyGeneration, Tier, TieringNodeStatus};

use crate::topology::{self, NodeFacts, Overrides};

/// A pod's settings as its interposers get them: the policy's, with every
/// NUMA node of this machine assigned a tier (the policy's lists first, then
/// discovery), checked as the interposer will check them.
pub fn resolve(settings: &Settings, facts: &[NodeFacts]) -> Result<Settings, String> {
    let listed = |l: &Option<Vec<u32>>| l.iter().flatten().copied().collect();
    let overrides = Overrides { dram: listed(&settings.tiers.dram_nodes), cxl: listed(&settings.tiers.cxl_nodes) };
    let nodes = topology::classify(facts, &overrides).map_err(|e| e.to_string())?;
    let ids = |tier: Tier| Some(nodes.iter().filter(|n| n.tier == tier).map(|n| n.id).collect::<Vec<_>>());
    let mut resolved = settings.clone();
    resolved.tiers.dram_nodes = ids(Tier::Dram);
    resolved.tiers.cxl_nodes = ids(Tier::Cxl);
    resolved.validate().map_err(|e| e.to_string())?;
    Ok(resolved)
}

/// The TieringPolicies the agent has read, by namespace and name: each one's
/// generation and settings.
pub type Policies = BTreeMap<(String, String), (i64, Settings)>;

/// `resolve` for a pod of the spec, with the settings of its policy.
pub fn resolve_pod(policies: &Policies, pod: &PodTiering, facts: &[NodeFacts]) -> Result<Settings, String> {
    let (_, settings) = policies.get(&(pod.namespace.clone(), pod.policy.clone())).ok_or_else(|| {
        format!("this agent has not seen the TieringPolicy {}/{} (deleted, or not read yet)", pod.namespace, pod.policy)
    })?;
    resolve(settings, facts)
}

/// The generation in use of each policy of these pods, for the status.
pub fn generations(policies: &Policies, pods: &[PodTiering]) -> Vec<PolicyGeneration> {
    let mut used: Vec<PolicyGeneration> = pods
        .iter()
        .filter_map(|pod| {
            let key = (pod.namespace.clone(), pod.policy.clone());
            let (generation, _) = policies.get(&key)?;
            Some(PolicyGeneration { namespace: key.0, name: key.1, generation: *generation })
        })
        .collect();
    used.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    used.dedup();
    used
}

/// The memory nodes a container of a pod with these (resolved) settings may
/// use, in kernel list format for `cpuset.mems`.
pub fn mems(resolved: &Settings) -> String {
    let mut nodes: Vec<u32> =
        resolved.tiers.dram_nodes.iter().chain(&resolved.tiers.cxl_nodes).flatten().copied().collect();
    nodes.sort_unstable();
    nodes.dedup();
    nodes.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// One interposer of a pod, as the agent last found it.
#[derive(Debug, Clone)]
pub struct InterposerView {
    pub container: String,
    /// Its stats, or why the agent could not configure or read it.
    pub outcome: Result<Stats, String>,
}

/// What the agent found for one pod of the spec.
#[derive(Debug, Clone, Default)]
pub struct PodFindings {
    pub interposers: Vec<InterposerView>,
    /// Python processes without the interposer, each with the reason.
    pub without_interposer: Vec<String>,
    /// Problems that do not stop tiering (a `cpuset.mems` the agent could not
    /// set, say).
    pub warnings: Vec<String>,
    /// The settings could not be resolved for this node.
    pub invalid: Option<String>,
}

/// A pod's status from what the agent found.
pub fn pod_status(pod: &PodTiering, found: &PodFindings) -> PodStatus {
    let mut status = PodStatus { namespace: pod.namespace.clone(), name: pod.name.clone(), ..Default::default() };
    let mut problems: Vec<String> = Vec::new();
    for view in &found.interposers {
        match &view.outcome {
            Ok(stats) => {
                status.processes += 1;
                if let Some(last) = &stats.last {
                    let p = &last.placement;
                    status.dram_bytes += p.dram_bytes;
                    status.cxl_bytes += p.cxl_bytes;
                    status.hot_bytes += last.bytes.hot;
                    status.warm_bytes += last.bytes.warm;
                    status.cold_bytes += last.bytes.cold;
                    status.promoted_bytes += p.promoted.bytes;
                    status.demoted_bytes += p.demoted.bytes;
                    status.failed_pages += p.promoted.failed_pages + p.demoted.failed_pages;
                }
            }
            Err(why) => problems.push(format!("container {}: {why}", view.container)),
        }
    }
    problems.extend(found.without_interposer.iter().cloned());
    problems.extend(found.warnings.iter().cloned());
    (status.state, status.message) = if let Some(why) = &found.invalid {
        (PodState::Failed, Some(format!("the policy's settings do not fit this node: {why}")))
    } else if status.processes > 0 {
        (PodState::Managed, (!problems.is_empty()).then(|| problems.join("; ")))
    } else if !problems.is_empty() {
        (PodState::Failed, Some(problems.join("; ")))
    } else {
        (PodState::Pending, Some("no Python process with the interposer seen yet".into()))
    };
    status
}

/// The node's status: its NUMA nodes, its pods and their policies.
pub fn node_status(
    numa_nodes: Vec<NumaNode>,
    pods: Vec<PodStatus>,
    policies: Vec<PolicyGeneration>,
    generation: Option<i64>,
) -> TieringNodeStatus {
    let list = |tier: Tier| {
        let ids: Vec<String> = numa_nodes.iter().filter(|n| n.tier == tier).map(|n| n.id.to_string()).collect();
        (!ids.is_empty()).then(|| ids.join(","))
    };
    TieringNodeStatus {
        conditions: Vec::new(),
        observed_generation: generation,
        dram_nodes: list(Tier::Dram),
        cxl_nodes: list(Tier::Cxl),
        managed_pods: pods.iter().filter(|p| p.state == PodState::Managed).count() as u32,
        numa_nodes,
        pods,
        policies,
    }
}

/// Whether a new status differs from the last written in what a person or
/// the operator acts on (states, messages, counts), not only in byte counts
/// or policy generations (a policy edit would otherwise cost a write on every
/// node it reaches).
pub fn significant_change(old: Option<&TieringNodeStatus>, new: &TieringNodeStatus) -> bool {
    let Some(old) = old else { return true };
    fn key(s: &TieringNodeStatus) -> impl PartialEq + '_ {
        let pods: Vec<_> = s.pods.iter().map(|p| (&p.namespace, &p.name, p.state, &p.message, p.processes)).collect();
        (s.observed_generation, &s.dram_nodes, &s.cxl_nodes, pods)
    }
    key(old) != key(new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pytier_contract::stats::PassReport;

    fn facts() -> Vec<NodeFacts> {
        let node = |id, cpus: &str| NodeFacts {
            id,
            cpus: cpus.into(),
            capacity_bytes: 1 << 30,
            free_bytes: 1 << 29,
            memory_tier: None,
        };
        vec![node(0, "0-3"), node(1, ""), node(2, "")]
    }

    fn pod() -> PodTiering {
        PodTiering { namespace: "ns".into(), name: "web-0".into(), uid: "u".into(), policy: "p".into() }
    }

    #[test]
    fn a_pod_gets_its_policys_settings_or_a_clear_error() {
        let mut policies = Policies::new();
        let err = resolve_pod(&policies, &pod(), &facts()).unwrap_err();
        assert!(err.contains("has not seen the TieringPolicy ns/p"), "{err}");
        let mut settings = Settings::default();
        settings.tracking.hot_threshold = 3.0;
        policies.insert(("ns".into(), "p".into()), (4, settings));
        assert_eq!(resolve_pod(&policies, &pod(), &facts()).unwrap().tracking.hot_threshold, 3.0);
        let in_use = generations(&policies, &[pod(), pod()]);
        assert_eq!(in_use, [PolicyGeneration { namespace: "ns".into(), name: "p".into(), generation: 4 }]);
    }

    #[test]
    fn discovery_fills_the_tiers_the_policy_leaves_open() {
        let resolved = resolve(&Settings::default(), &facts()).unwrap();
        assert_eq!(
            (resolved.tiers.dram_nodes.clone(), resolved.tiers.cxl_nodes.clone()),
            (Some(vec![0]), Some(vec![1, 2]))
        );
        assert_eq!(mems(&resolved), "0,1,2");
        let mut policy = Settings::default();
        policy.tiers.dram_nodes = Some(vec![0, 2]);
        let resolved = resolve(&policy, &facts()).unwrap();
        assert_eq!((resolved.tiers.dram_nodes, resolved.tiers.cxl_nodes), (Some(vec![0, 2]), Some(vec![1])));
    }

    #[test]
    fn pod_states_and_reasons() {
        let pending = pod_status(&pod(), &PodFindings::default());
        assert_eq!(pending.state, PodState::Pending);

        let mut stats = Stats { last: Some(PassReport::default()), ..Default::default() };
        stats.last.as_mut().unwrap().placement.cxl_bytes = 4096;
        stats.last.as_mut().unwrap().bytes.cold = 100;
        let managed = PodFindings {
            interposers: vec![InterposerView { container: "app".into(), outcome: Ok(stats.clone()) }],
            ..Default::default()
        };
        let status = pod_status(&pod(), &managed);
        assert_eq!(
            (status.state, status.processes, status.cxl_bytes, status.cold_bytes),
            (PodState::Managed, 1, 4096, 100)
        );
        assert_eq!(status.message, None);

        let failed =
            PodFindings { without_interposer: vec!["python3 (pid 7) ...overrides...".into()], ..Default::default() };
        let status = pod_status(&pod(), &failed);
        assert_eq!(status.state, PodState::Failed);
        assert!(status.message.unwrap().contains("overrides"));

        let refused = PodFindings {
            interposers: vec![InterposerView { container: "app".into(), outcome: Err("protocol version 1".into()) }],
            ..Default::default()
        };
        assert!(pod_status(&pod(), &refused).message.unwrap().contains("container app: protocol version 1"));
    }

    #[test]
    fn byte_counts_and_policy_generations_are_not_a_significant_change() {
        let mut pod_status_a = pod_status(&pod(), &PodFindings::default());
        let a = node_status(vec![], vec![pod_status_a.clone()], vec![], Some(1));
        pod_status_a.cold_bytes = 7;
        let edited = vec![PolicyGeneration { namespace: "ns".into(), name: "p".into(), generation: 2 }];
        let b = node_status(vec![], vec![pod_status_a.clone()], edited, Some(1));
        assert!(!significant_change(Some(&a), &b), "bytes and a policy edit wait for the pace");
        pod_status_a.state = PodState::Managed;
        assert!(significant_change(Some(&a), &node_status(vec![], vec![pod_status_a], vec![], Some(1))));
        assert!(significant_change(None, &a));
    }
}
