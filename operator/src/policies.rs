//! The TieringPolicy controller: keeps each policy's status (conditions, pod
//! counts, bytes per tier) in step with its pods and what the node agents
//! report, emits Events on notable transitions, and on deletion releases the
//! policy's pods from every TieringNode before its finalizer goes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{self, Event as Finalizer};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use pytier_crds::node::{PodState, PodStatus};
use pytier_crds::{TieringNode, TieringPolicy, TieringPolicyStatus};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::cache::POLICIES;
use crate::{Context, nodes, selection};

/// Held by every policy until its pods are released from the TieringNodes.
pub const FINALIZER: &str = "pytier.dev/release-pods";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot update the status of TieringPolicy {0}: {1}")]
    Status(String, #[source] kube::Error),
    #[error(transparent)]
    ReleaseNode(#[from] nodes::Error),
    #[error("finalizer of TieringPolicy {0}: {1}")]
    Finalizer(String, #[source] Box<finalizer::Error<Error>>),
}

pub async fn run(
    ctx: Arc<Context>,
    requests: impl futures::Stream<Item = ObjectRef<TieringPolicy>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let store = ctx.stores.policies.clone();
    Controller::for_stream(futures::stream::pending(), store)
        // Agents report often; a second of debounce folds bursts into one status write.
        .with_config(Config::default().concurrency(8).debounce(Duration::from_secs(1)))
        .reconcile_on(requests)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(controller = POLICIES, error = %e, "reconcile not run");
            }
        })
        .await;
}

async fn reconcile(policy: Arc<TieringPolicy>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.queues.policies.started(&ObjectRef::from_obj(&*policy));
    let timer = ctx.metrics.reconcile(POLICIES);
    let ns = policy.namespace().unwrap_or_default();
    let api: Api<TieringPolicy> = Api::namespaced(ctx.client.clone(), &ns);
    let name = format!("{ns}/{}", policy.name_any());
    let result = finalizer::finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Finalizer::Apply(policy) => update_status(&policy, &api, &ctx).await,
            Finalizer::Cleanup(policy) => release(&policy, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(name, Box::new(e)));
    timer.done(&result);
    result
}

fn error_policy(policy: Arc<TieringPolicy>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(policy = policy.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

async fn update_status(policy: &TieringPolicy, api: &Api<TieringPolicy>, ctx: &Context) -> Result<Action, Error> {
    let previous = policy.status.clone().unwrap_or_default();
    // Only the pods of its namespace, and the TieringNodes of their nodes.
    let ns = policy.namespace().unwrap_or_default();
    let tiering_nodes: Vec<_> =
        ctx.stores.nodes_of(&ns).iter().filter_map(|n| ctx.stores.tiering_nodes.get(&ObjectRef::new(n))).collect();
    let (pods, now) = (ctx.stores.pods_in(&ns), Time(k8s_openapi::jiff::Timestamp::now()));
    let status = summarize(policy, &pods, &ctx.stores.policies.state(), &tiering_nodes, &previous, now.clone());
    // A pod still starting may turn the policy PodsPending when its grace ends.
    let recheck = pods.iter().filter_map(|p| starting_for(p, &now)).min().unwrap_or(Duration::from_secs(300));
    if status == previous {
        return Ok(Action::requeue(recheck));
    }
    let key = ObjectRef::from_obj(policy);
    if only_counts_differ(&previous, &status)
        && let Some(wait) = ctx.status_pacer.wait(&key)
    {
        return Ok(Action::requeue(wait));
    }
    let patch = json!({ "status": status });
    api.patch_status(&policy.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::Status(policy.name_any(), e))?;
    ctx.status_pacer.written(key);
    publish_transitions(policy, &previous, &status, ctx).await;
    Ok(Action::requeue(recheck))
}

/// Spaces the status writes of a policy that only move its counts. The
/// agents report bytes every minute per node and pods come and go, so a
/// policy over hundreds of nodes would otherwise be rewritten at every
/// reconcile; a change of condition or observed generation is written at
/// once.
pub struct StatusPacer {
    every: Duration,
    last_write: Mutex<HashMap<ObjectRef<TieringPolicy>, Instant>>,
}

impl StatusPacer {
    pub fn new(every: Duration) -> StatusPacer {
        StatusPacer { every, last_write: Mutex::default() }
    }

    /// How long a bytes-only write of `policy` must still wait, if at all.
    fn wait(&self, policy: &ObjectRef<TieringPolicy>) -> Option<Duration> {
        let last = *self.last_write.lock().unwrap().get(policy)?;
        self.every.checked_sub(last.elapsed()).filter(|w| !w.is_zero())
    }

    fn written(&self, policy: ObjectRef<TieringPolicy>) {
        self.last_write.lock().unwrap().insert(policy, Instant::now());
    }

    fn forget(&self, policy: &ObjectRef<TieringPolicy>) {
        self.last_write.lock().unwrap().remove(policy);
    }
}

/// Whether two statuses agree on what someone acts on: the observed
/// generation and each condition's status and reason. Pod counts, bytes and
/// messages can wait for the pacer (in a churn of pods they change at every
/// reconcile).
fn only_counts_differ(a: &TieringPolicyStatus, b: &TieringPolicyStatus) -> bool {
    let key = |s: &TieringPolicyStatus| {
        let conditions: Vec<_> =
            s.conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone())).collect();
        (s.observed_generation, conditions)
    };
    key(a) == key(b)
}

/// Rewrites every TieringNode that still lists the policy's pods. The policy
/// carries a deletion timestamp, so selection already ignores it.
async fn release(policy: &TieringPolicy, ctx: &Context) -> Result<Action, Error> {
    let (ns, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
    let mut released = 0;
    for tn in ctx.stores.tiering_nodes.state() {
        let listed = tn.spec.pods.iter().filter(|p| p.namespace == ns && p.policy == name).count();
        if listed == 0 {
            continue;
        }
        if let Some(node) = ctx.stores.nodes.get(&ObjectRef::new(&tn.name_any())) {
            nodes::apply(&node, ctx).await?;
        }
        released += listed;
    }
    ctx.status_pacer.forget(&ObjectRef::from_obj(policy));
    info!(policy = format!("{ns}/{name}"), released, "policy deleted; its pods are released");
    let note = format!("Released {released} pods from tiering; they keep running untiered.");
    publish(policy, ctx, EventType::Normal, "Released", note).await;
    Ok(Action::await_change())
}

/// The status a policy should have, given the cluster as cached. Conditions
/// keep their transition time while their status stays the same.
pub fn summarize(
    policy: &TieringPolicy,
    pods: &[Arc<Pod>],
    policies: &[Arc<TieringPolicy>],
    tiering_nodes: &[Arc<TieringNode>],
    previous: &TieringPolicyStatus,
    now: Time,
) -> TieringPolicyStatus {
    let ns = policy.namespace().unwrap_or_default();
    let name = policy.name_any();
    let agent: HashMap<&str, &PodStatus> = tiering_nodes
        .iter()
        .filter_map(|tn| tn.status.as_ref())
        .flat_map(|s| &s.pods)
        .filter(|p| p.namespace == ns)
        .map(|p| (p.name.as_str(), p))
        .collect();

    let mut status = TieringPolicyStatus { observed_generation: policy.meta().generation, ..Default::default() };
    let (mut conflicts, mut failures, mut pending) = (Vec::new(), Vec::new(), Vec::new());
    let mut all_pending_starting = true;
    for pod in pods.iter().filter(|p| selection::is_active(p) && selection::selects(policy, p)) {
        let pod_name = pod.name_any();
        let selecting = selection::selecting_policies(pod, policies);
        let governor = selecting.first().map(|p| p.name_any()).unwrap_or_default();
        if governor != name {
            conflicts.push(format!("pod {pod_name} is governed by the older policy {governor}"));
            continue;
        }
        if selecting.len() > 1 {
            let others: Vec<String> = selecting[1..].iter().map(|p| p.name_any()).collect();
            conflicts.push(format!(
                "pod {pod_name} is also selected by {}; this older policy governs it",
                others.join(", ")
            ));
        }
        status.matched_pods += 1;
        match agent.get(pod_name.as_str()) {
            Some(s) if s.state == PodState::Managed => {
                status.injected_pods += 1;
                status.dram_bytes += s.dram_bytes;
                status.cxl_bytes += s.cxl_bytes;
            }
            Some(s) if s.state == PodState::Failed => {
                status.failed_pods += 1;
                failures.push(format!("{pod_name}: {}", s.message.as_deref().unwrap_or("failed")));
            }
            _ => {
                all_pending_starting &= starting_for(pod, &now).is_some();
                pending.push(pod_name);
            }
        }
    }
    // A Ready policy stays Ready while new pods start: in a rollout of
    // hundreds of pods it would otherwise flip with every pod, each flip a
    // status write and an Event.
    let was_ready = find(previous, "Ready").is_some_and(|c| c.status == "True" && c.reason == "AllPodsManaged");
    let only_starting = was_ready && all_pending_starting;

    let selector_error = selection::selector_error(policy);
    // The interposer's own check (the schema makes the same ones, so this
    // only fires for a policy stored before a bound changed).
    let settings_error = policy.spec.settings.validate().err().map(|e| e.to_string());
    let (ready, ready_reason, ready_message) = if let Some(e) = &selector_error {
        (false, "InvalidSelector", e.clone())
    } else if let Some(e) = &settings_error {
        (false, "InvalidSettings", e.clone())
    } else if !failures.is_empty() {
        (false, "PodsFailed", format!("{} of {} pods cannot be tiered", failures.len(), status.matched_pods))
    } else if !pending.is_empty() && !only_starting {
        let msg = format!(
            "{} of {} pods have no Python process under the interposer yet: {}",
            pending.len(),
            status.matched_pods,
            first_few(&pending)
        );
        (false, "PodsPending", msg)
    } else if status.matched_pods == 0 {
        (true, "NoPodsSelected", "no running pod is selected by this policy".to_string())
    } else if !pending.is_empty() {
        let (tiered, starting) = (status.injected_pods, pending.len());
        (true, "AllPodsManaged", format!("{tiered} of {} pods are tiered, {starting} starting", status.matched_pods))
    } else {
        (true, "AllPodsManaged", format!("all {} pods are tiered", status.matched_pods))
    };
    let (degraded, degraded_reason, degraded_message) = if let Some(e) = selector_error {
        (true, "InvalidSelector", format!("{e}; fix spec.podSelector"))
    } else if let Some(e) = settings_error {
        (true, "InvalidSettings", format!("{e}; the interposers keep their last valid settings"))
    } else if !failures.is_empty() {
        (true, "PodsFailed", first_few(&failures))
    } else if !conflicts.is_empty() {
        (true, "Conflict", format!("{}; the oldest policy selecting a pod governs it", first_few(&conflicts)))
    } else {
        (false, "AsExpected", "nothing is wrong".to_string())
    };
    status.conditions = vec![
        condition(previous, "Ready", ready, ready_reason, ready_message, policy, &now),
        condition(previous, "Degraded", degraded, degraded_reason, degraded_message, policy, &now),
    ];
    status
}

fn condition(
    previous: &TieringPolicyStatus,
    type_: &str,
    value: bool,
    reason: &str,
    message: String,
    policy: &TieringPolicy,
    now: &Time,
) -> Condition {
    let status = if value { "True" } else { "False" }.to_string();
    let last_transition_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status,
        reason: reason.into(),
        message,
        last_transition_time,
        observed_generation: policy.meta().generation,
    }
}

/// How long a pod not yet reported managed counts as starting: the kubelet
/// pulls its image and Python starts, then the agent's next pass reports it.
pub const STARTING_GRACE: Duration = Duration::from_secs(60);

/// How much longer `pod` counts as starting, if it still does.
fn starting_for(pod: &Pod, now: &Time) -> Option<Duration> {
    let created = pod.creation_timestamp()?.0.as_second();
    let left = STARTING_GRACE.as_secs() as i64 - (now.0.as_second() - created);
    (left > 0).then(|| Duration::from_secs(left as u64))
}

/// At most three items, and how many more there are.
fn first_few(items: &[String]) -> String {
    let mut out = items.iter().take(3).cloned().collect::<Vec<_>>().join("; ");
    if items.len() > 3 {
        out.push_str(&format!("; and {} more", items.len() - 3));
    }
    out
}

fn find<'a>(status: &'a TieringPolicyStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

/// Events for a condition that changed status or reason.
async fn publish_transitions(
    policy: &TieringPolicy,
    before: &TieringPolicyStatus,
    after: &TieringPolicyStatus,
    ctx: &Context,
) {
    for type_ in ["Ready", "Degraded"] {
        let (Some(new), old) = (find(after, type_), find(before, type_)) else { continue };
        if old.is_some_and(|o| o.status == new.status && o.reason == new.reason) {
            continue;
        }
        let bad = (type_ == "Degraded") == (new.status == "True");
        if type_ == "Degraded" && !bad && old.is_none() {
            continue; // a new policy that is not degraded is not news
        }
        let kind = if bad { EventType::Warning } else { EventType::Normal };
        publish(policy, ctx, kind, &new.reason, new.message.clone()).await;
    }
}

async fn publish(policy: &TieringPolicy, ctx: &Context, type_: EventType, reason: &str, note: String) {
    let event =
        KubeEvent { type_, reason: reason.to_string(), note: Some(note), action: "Reconcile".into(), secondary: None };
    if let Err(e) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(policy = policy.name_any(), error = %e, "cannot publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{pod, policy};
    use pytier_crds::TieringNodeStatus;

    fn agent_reports(pods: &[(&str, PodState, u64)]) -> Arc<TieringNode> {
        let mut tn = TieringNode::new("n1", Default::default());
        tn.status = Some(TieringNodeStatus {
            pods: pods
                .iter()
                .map(|(name, state, bytes)| PodStatus {
                    namespace: "a".into(),
                    name: name.to_string(),
                    state: *state,
                    message: (*state == PodState::Failed).then(|| "Python 3.8 is not supported".into()),
                    processes: 1,
                    dram_bytes: *bytes,
                    cxl_bytes: 3 * *bytes,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        });
        Arc::new(tn)
    }

    fn now() -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(1000).unwrap())
    }

    fn cond<'a>(s: &'a TieringPolicyStatus, t: &str) -> &'a Condition {
        find(s, t).unwrap()
    }

    #[test]
    fn settings_the_interposer_refuses_make_the_policy_degraded() {
        let mut bad = (*policy("a", "web", 1, Some(("app", "web")))).clone();
        bad.spec.settings.tracking.hot_threshold = 100.0;
        let bad = Arc::new(bad);
        let s = summarize(&bad, &[], std::slice::from_ref(&bad), &[], &Default::default(), now());
        assert_eq!(
            (cond(&s, "Ready").reason.as_str(), cond(&s, "Degraded").reason.as_str()),
            ("InvalidSettings", "InvalidSettings")
        );
        assert!(cond(&s, "Degraded").message.contains("tracking.hotThreshold is 100"), "{:?}", cond(&s, "Degraded"));
    }

    #[test]
    fn counts_and_bytes_come_from_the_agents() {
        let web = policy("a", "web", 1, Some(("app", "web")));
        let pods: Vec<_> = ["w1", "w2", "w3"].iter().map(|n| Arc::new(pod("a", n, &[("app", "web")], &[]))).collect();
        let tns = [agent_reports(&[("w1", PodState::Managed, 100), ("w2", PodState::Managed, 10)])];
        let s = summarize(&web, &pods, std::slice::from_ref(&web), &tns, &Default::default(), now());
        assert_eq!((s.matched_pods, s.injected_pods, s.failed_pods), (3, 2, 0));
        assert_eq!((s.dram_bytes, s.cxl_bytes), (110, 330));
        assert_eq!(cond(&s, "Ready").reason, "PodsPending");
        assert!(cond(&s, "Ready").message.contains("w3"));
        assert_eq!(cond(&s, "Degraded").status, "False");

        let tns =
            [agent_reports(&[("w1", PodState::Managed, 1), ("w2", PodState::Managed, 1), ("w3", PodState::Failed, 0)])];
        let s = summarize(&web, &pods, std::slice::from_ref(&web), &tns, &s, now());
        assert_eq!(s.failed_pods, 1);
        assert_eq!(
            (cond(&s, "Degraded").status.as_str(), cond(&s, "Degraded").reason.as_str()),
            ("True", "PodsFailed")
        );
        assert!(cond(&s, "Degraded").message.contains("w3: Python 3.8 is not supported"));
    }

    #[test]
    fn a_conflict_is_reported_on_both_policies() {
        let old = policy("a", "old", 1, Some(("app", "web")));
        let young = policy("a", "young", 2, None);
        let pods = [Arc::new(pod("a", "w1", &[("app", "web")], &[("pytier.dev/policy", "young")]))];
        let all = [old.clone(), young.clone()];
        let s_old = summarize(&old, &pods, &all, &[], &Default::default(), now());
        let s_young = summarize(&young, &pods, &all, &[], &Default::default(), now());
        assert_eq!((s_old.matched_pods, s_young.matched_pods), (1, 0));
        assert_eq!(cond(&s_old, "Degraded").reason, "Conflict");
        assert!(cond(&s_old, "Degraded").message.contains("also selected by young"));
        assert_eq!(cond(&s_young, "Degraded").reason, "Conflict");
        assert!(cond(&s_young, "Degraded").message.contains("governed by the older policy old"));
    }

    #[test]
    fn a_ready_policy_stays_ready_while_new_pods_start() {
        let web = policy("a", "web", 1, Some(("app", "web")));
        let all = std::slice::from_ref(&web);
        let created = |name: &str, second: i64| {
            let mut p = pod("a", name, &[("app", "web")], &[]);
            p.metadata.creation_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap()));
            Arc::new(p)
        };
        let at = |second: i64| Time(k8s_openapi::jiff::Timestamp::from_second(second).unwrap());
        let reports = [agent_reports(&[("w1", PodState::Managed, 100)])];
        let ready = summarize(&web, &[created("w1", 0)], all, &reports, &Default::default(), at(1000));
        assert_eq!(cond(&ready, "Ready").reason, "AllPodsManaged");

        let pods = [created("w1", 0), created("w2", 990)];
        let starting = summarize(&web, &pods, all, &reports, &ready, at(1000));
        assert_eq!(cond(&starting, "Ready").status, "True");
        assert_eq!(cond(&starting, "Ready").message, "1 of 2 pods are tiered, 1 starting");
        assert!(only_counts_differ(&ready, &starting), "a starting pod waits for the pacer");
        assert_eq!(starting_for(&pods[1], &at(1000)), Some(Duration::from_secs(50)));

        let late = summarize(&web, &pods, all, &reports, &starting, at(1051));
        assert_eq!(cond(&late, "Ready").reason, "PodsPending", "its grace is over");
        let fresh = summarize(&web, &[created("w2", 990)], all, &[], &Default::default(), at(1000));
        assert_eq!(cond(&fresh, "Ready").reason, "PodsPending", "a policy not yet Ready does not become Ready");
    }

    #[test]
    fn counts_wait_for_the_pacer_conditions_do_not() {
        let web = policy("a", "web", 1, Some(("app", "web")));
        let pods: Vec<_> = ["w1", "w2"].iter().map(|n| Arc::new(pod("a", n, &[("app", "web")], &[]))).collect();
        let before = [agent_reports(&[("w1", PodState::Managed, 100)])];
        let after_bytes = [agent_reports(&[("w1", PodState::Managed, 200)])];
        let after_state = [agent_reports(&[("w1", PodState::Managed, 100), ("w2", PodState::Managed, 1)])];
        let all = std::slice::from_ref(&web);
        let s = summarize(&web, &pods, all, &before, &Default::default(), now());
        assert!(only_counts_differ(&s, &summarize(&web, &pods, all, &after_bytes, &s, now())));
        let managed = summarize(&web, &pods, all, &after_state, &s, now());
        assert!(!only_counts_differ(&s, &managed), "PodsPending became AllPodsManaged");
        let mut more = pods.clone();
        more.push(Arc::new(pod("a", "w3", &[("app", "web")], &[])));
        let three = [agent_reports(&[
            ("w1", PodState::Managed, 100),
            ("w2", PodState::Managed, 1),
            ("w3", PodState::Managed, 1),
        ])];
        let grown = summarize(&web, &more, all, &three, &managed, now());
        assert_eq!((managed.matched_pods, grown.matched_pods), (2, 3));
        assert!(only_counts_differ(&managed, &grown), "one more pod, all still managed");

        let pacer = StatusPacer::new(Duration::from_secs(10));
        let key = ObjectRef::from_obj(&*web);
        assert_eq!(pacer.wait(&key), None, "the first write never waits");
        pacer.written(key.clone());
        assert!(pacer.wait(&key).is_some_and(|w| w > Duration::from_secs(9)));
        assert_eq!(StatusPacer::new(Duration::ZERO).wait(&key), None);
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let web = policy("a", "web", 1, Some(("app", "web")));
        let first = summarize(&web, &[], std::slice::from_ref(&web), &[], &Default::default(), now());
        assert_eq!(cond(&first, "Ready").reason, "NoPodsSelected");
        let later = Time(k8s_openapi::jiff::Timestamp::from_second(2000).unwrap());
        let again = summarize(&web, &[], std::slice::from_ref(&web), &[], &first, later.clone());
        assert_eq!(again, first, "nothing changed, so nothing is written");
        let pods = [Arc::new(pod("a", "w1", &[("app", "web")], &[]))];
        let pending = summarize(&web, &pods, std::slice::from_ref(&web), &[], &first, later.clone());
        assert_eq!(cond(&pending, "Ready").last_transition_time, later);
        assert_eq!(cond(&pending, "Degraded").last_transition_time, now());
    }
}
