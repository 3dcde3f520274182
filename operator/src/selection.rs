//! Which policy governs a pod. Pure logic over API objects, no client.
//!
//! A policy selects the pods of its namespace that match its `podSelector` or
//! carry `pytier.dev/policy: <its name>`. When several policies select a pod
//! the oldest one governs it (ties broken by name) and the others are in
//! conflict over it; a policy that is being deleted selects nothing.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::core::{Selector, SelectorExt};
use pytier_crds::{POLICY_ANNOTATION, TieringPolicy};

/// Whether `policy` selects `pod`. An invalid selector selects nothing (the
/// policy's status says why, see [`selector_error`]).
pub fn selects(policy: &TieringPolicy, pod: &Pod) -> bool {
    if policy.metadata.deletion_timestamp.is_some() || policy.metadata.namespace != pod.metadata.namespace {
        return false;
    }
    if pod.annotations().get(POLICY_ANNOTATION) == Some(&policy.name_any()) {
        return true;
    }
    match &policy.spec.pod_selector {
        Some(selector) => Selector::try_from(selector.clone()).is_ok_and(|s| s.matches(pod.labels())),
        None => false,
    }
}

/// Why a policy's `podSelector` cannot be used, if it cannot.
pub fn selector_error(policy: &TieringPolicy) -> Option<String> {
    let selector = policy.spec.pod_selector.clone()?;
    Selector::try_from(selector).err().map(|e| format!("podSelector is invalid: {e}"))
}

/// The policies that select `pod`, the governing (oldest) one first.
pub fn selecting_policies<'a>(pod: &Pod, policies: &'a [Arc<TieringPolicy>]) -> Vec<&'a Arc<TieringPolicy>> {
    let mut matching: Vec<_> = policies.iter().filter(|p| selects(p, pod)).collect();
    matching.sort_by_key(|p| age_order(p));
    matching
}

/// Oldest first; policies created in the same second are ordered by name.
fn age_order(policy: &TieringPolicy) -> (Option<k8s_openapi::jiff::Timestamp>, String) {
    (policy.creation_timestamp().map(|t| t.0), policy.name_any())
}

/// Whether a pod still runs (or may): pods that finished free their memory.
pub fn is_active(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The node a pod is bound to, if the scheduler placed it.
pub fn node_name(pod: &Pod) -> Option<&str> {
    pod.spec.as_ref()?.node_name.as_deref()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, Time};
    use kube::api::ObjectMeta;
    use pytier_crds::TieringPolicySpec;
    use std::collections::BTreeMap;

    pub fn pod(ns: &str, name: &str, labels: &[(&str, &str)], annotations: &[(&str, &str)]) -> Pod {
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Pod {
            metadata: ObjectMeta {
                namespace: Some(ns.into()),
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                labels: Some(map(labels)),
                annotations: Some(map(annotations)),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    pub fn policy(ns: &str, name: &str, created: i64, selector: Option<(&str, &str)>) -> Arc<TieringPolicy> {
        let mut p = TieringPolicy::new(
            name,
            TieringPolicySpec {
                pod_selector: selector.map(|(k, v)| LabelSelector {
                    match_labels: Some(BTreeMap::from([(k.to_string(), v.to_string())])),
                    ..Default::default()
                }),
                settings: Default::default(),
            },
        );
        p.metadata.namespace = Some(ns.into());
        p.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(created).unwrap()));
        Arc::new(p)
    }

    #[test]
    fn selector_or_annotation_selects_within_the_namespace() {
        let by_label = policy("a", "web", 1, Some(("app", "web")));
        assert!(selects(&by_label, &pod("a", "p", &[("app", "web")], &[])));
        assert!(!selects(&by_label, &pod("a", "p", &[("app", "db")], &[])));
        assert!(!selects(&by_label, &pod("b", "p", &[("app", "web")], &[])), "other namespace");
        assert!(selects(&by_label, &pod("a", "p", &[], &[(POLICY_ANNOTATION, "web")])));

        let annotation_only = policy("a", "batch", 1, None);
        assert!(!selects(&annotation_only, &pod("a", "p", &[("app", "web")], &[])));
        assert!(selects(&annotation_only, &pod("a", "p", &[], &[(POLICY_ANNOTATION, "batch")])));
    }

    #[test]
    fn oldest_policy_governs_and_deleted_policies_select_nothing() {
        let young = policy("a", "aaa-young", 20, Some(("app", "web")));
        let old = policy("a", "zzz-old", 10, Some(("app", "web")));
        let policies = vec![young.clone(), old.clone()];
        let p = pod("a", "p", &[("app", "web")], &[]);
        let names: Vec<String> = selecting_policies(&p, &policies).iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["zzz-old", "aaa-young"]);

        let mut deleting = (*old).clone();
        deleting.metadata.deletion_timestamp = deleting.metadata.creation_timestamp.clone();
        let policies = vec![young, Arc::new(deleting)];
        let names: Vec<String> = selecting_policies(&p, &policies).iter().map(|p| p.name_any()).collect();
        assert_eq!(names, ["aaa-young"]);
    }

    #[test]
    fn an_invalid_selector_selects_nothing_and_says_why() {
        let mut p = (*policy("a", "bad", 1, None)).clone();
        p.spec.pod_selector = Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "app".into(),
                operator: "Sometimes".into(),
                values: None,
            }]),
            ..Default::default()
        });
        assert!(!selects(&p, &pod("a", "x", &[("app", "web")], &[])));
        assert!(selector_error(&p).unwrap().contains("podSelector is invalid"));
    }

    #[test]
    fn finished_pods_are_not_active() {
        let mut p = pod("a", "p", &[], &[]);
        assert!(is_active(&p));
        p.status =
            Some(k8s_openapi::api::core::v1::PodStatus { phase: Some("Succeeded".into()), ..Default::default() });
        assert!(!is_active(&p));
    }
}
