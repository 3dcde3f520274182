//! The operator's view of the cluster: one watch per kind, objects trimmed to
//! the fields the operator reads (10 000 full pods would cost ~100 MiB), pods
//! indexed by node and namespace, and the routing of every change, deletions
//! included, to the reconciles it affects. Both controllers read these
//! stores; nothing else watches. A reconcile reads the objects it concerns,
//! never the whole cluster, so its cost does not grow with the cluster.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use prometheus_client::metrics::gauge::Gauge;
use pytier_crds::{TieringNode, TieringPolicy};
use tracing::warn;

use crate::metrics::Metrics;
use crate::selection;

/// Controller names, as metric labels and in logs.
pub const NODES: &str = "tieringnodes";
pub const POLICIES: &str = "tieringpolicies";

pub type NodeMeta = PartialObjectMeta<Node>;

/// Read-only caches of the kinds the operator reconciles from.
#[derive(Clone)]
pub struct Stores {
    pods: Store<Pod>,
    pod_index: Arc<RwLock<PodIndex>>,
    pub policies: Store<TieringPolicy>,
    pub tiering_nodes: Store<TieringNode>,
    pub nodes: Store<NodeMeta>,
}

impl Stores {
    /// The cached pods bound to `node`.
    pub fn pods_on(&self, node: &str) -> Vec<Arc<Pod>> {
        let index = self.pod_index.read().unwrap();
        self.lookup(index.on_node.get(node))
    }

    /// The cached pods of `namespace`.
    pub fn pods_in(&self, namespace: &str) -> Vec<Arc<Pod>> {
        let index = self.pod_index.read().unwrap();
        self.lookup(index.in_namespace.get(namespace))
    }

    /// The nodes where `namespace` has pods.
    pub fn nodes_of(&self, namespace: &str) -> HashSet<String> {
        let index = self.pod_index.read().unwrap();
        let pods = index.in_namespace.get(namespace).into_iter().flatten();
        pods.filter_map(|pod| index.node_of.get(pod).cloned()).collect()
    }

    /// The pods the store still holds: the index may name one a relist
    /// dropped, until its rebuild.
    fn lookup(&self, refs: Option<&HashSet<ObjectRef<Pod>>>) -> Vec<Arc<Pod>> {
        refs.into_iter().flatten().filter_map(|r| self.pods.get(r)).collect()
    }
}

/// Pods by node and by namespace, kept from the pod watch's events.
#[derive(Default)]
struct PodIndex {
    node_of: HashMap<ObjectRef<Pod>, String>,
    on_node: HashMap<String, HashSet<ObjectRef<Pod>>>,
    in_namespace: HashMap<String, HashSet<ObjectRef<Pod>>>,
}

impl PodIndex {
    fn insert(&mut self, pod: &Pod) {
        let key = ObjectRef::from_obj(pod);
        if let Some(ns) = &pod.metadata.namespace {
            self.in_namespace.entry(ns.clone()).or_default().insert(key.clone());
        }
        // A pod is bound once and stays on its node.
        if let Some(node) = selection::node_name(pod)
            && !self.node_of.contains_key(&key)
        {
            self.on_node.entry(node.to_string()).or_default().insert(key.clone());
            self.node_of.insert(key, node.to_string());
        }
    }

    fn remove(&mut self, pod: &Pod) {
        let key = ObjectRef::from_obj(pod);
        if let Some(node) = self.node_of.remove(&key) {
            remove_from(&mut self.on_node, &node, &key);
        }
        if let Some(ns) = &pod.metadata.namespace {
            remove_from(&mut self.in_namespace, ns, &key);
        }
    }

    fn rebuild(&mut self, pods: &[Arc<Pod>]) {
        *self = PodIndex::default();
        for pod in pods {
            self.insert(pod);
        }
    }
}

fn remove_from<K: Resource>(map: &mut HashMap<String, HashSet<ObjectRef<K>>>, key: &str, obj: &ObjectRef<K>)
where
    K::DynamicType: Eq + std::hash::Hash,
{
    if let Some(set) = map.get_mut(key) {
        set.remove(obj);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

/// Reconcile requests of one controller. A request waits in `pending` until
/// its reconcile starts, so repeated changes to one object queue it once; the
/// number waiting is the controller's queue depth.
pub struct Queue<K: Resource> {
    tx: UnboundedSender<ObjectRef<K>>,
    pending: Mutex<HashSet<ObjectRef<K>>>,
    depth: Gauge,
}

impl<K: Resource<DynamicType = ()>> Queue<K> {
    fn new(depth: Gauge) -> (Arc<Self>, UnboundedReceiver<ObjectRef<K>>) {
        let (tx, rx) = unbounded();
        (Arc::new(Queue { tx, pending: Mutex::default(), depth }), rx)
    }

    fn push(&self, obj: ObjectRef<K>) {
        if self.pending.lock().unwrap().insert(obj.clone()) {
            self.depth.inc();
            let _ = self.tx.unbounded_send(obj);
        }
    }

    /// Called when a reconcile of `obj` starts: changes from now on queue it again.
    pub fn started(&self, obj: &ObjectRef<K>) {
        if self.pending.lock().unwrap().remove(obj) {
            self.depth.dec();
        }
    }
}

/// The queues of both controllers.
#[derive(Clone)]
pub struct Queues {
    pub nodes: Arc<Queue<NodeMeta>>,
    pub policies: Arc<Queue<TieringPolicy>>,
}

/// The reconcile requests the controllers consume.
pub struct Requests {
    pub nodes: UnboundedReceiver<ObjectRef<NodeMeta>>,
    pub policies: UnboundedReceiver<ObjectRef<TieringPolicy>>,
}

#[derive(Clone)]
struct Router {
    stores: Stores,
    nodes: Arc<Queue<NodeMeta>>,
    policies: Arc<Queue<TieringPolicy>>,
    /// What selection read of each policy, and its generation, when it was
    /// last routed.
    policy_seen: Arc<Mutex<HashMap<ObjectRef<TieringPolicy>, PolicySeen>>>,
    /// Each TieringNode's spec generation when it was last routed.
    tiering_node_seen: Arc<Mutex<HashMap<String, Option<i64>>>>,
}

type PolicySeen = (PolicyKey, Option<i64>);

/// The parts of a policy that decide which pods it governs (TieringNodes
/// name the policy, not its settings) and whether it is being deleted or
/// still needs its finalizer. Status writes and settings edits change none
/// of them.
#[derive(PartialEq)]
struct PolicyKey {
    uid: Option<String>,
    selector: Option<LabelSelector>,
    deleting: bool,
    finalizers: Option<Vec<String>>,
}

impl PolicyKey {
    fn of(policy: &TieringPolicy) -> PolicyKey {
        let meta = &policy.metadata;
        PolicyKey {
            uid: meta.uid.clone(),
            selector: policy.spec.pod_selector.clone(),
            deleting: meta.deletion_timestamp.is_some(),
            finalizers: meta.finalizers.clone(),
        }
    }
}

impl Stores {
    /// Starts the four watches. The returned future drives them and must be
    /// polled for the stores to fill and the triggers to flow.
    pub fn start(client: Client, metrics: &Metrics) -> (Stores, Queues, Requests, impl Future<Output = ()> + use<>) {
        let (pods, pod_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let (tiering_nodes, tn_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        let pod_index = Arc::default();
        let stores = Stores { pods, pod_index, policies, tiering_nodes, nodes };
        let (node_queue, node_requests) = Queue::new(metrics.queue_depth(NODES));
        let (policy_queue, policy_requests) = Queue::new(metrics.queue_depth(POLICIES));
        let router = Router {
            stores: stores.clone(),
            nodes: node_queue.clone(),
            policies: policy_queue.clone(),
            policy_seen: Arc::default(),
            tiering_node_seen: Arc::default(),
        };
        let queues = Queues { nodes: node_queue, policies: policy_queue };
        let requests = Requests { nodes: node_requests, policies: policy_requests };

        let config = watcher::Config::default().any_semantic();
        let pod_events = reflector::reflector(
            pod_writer,
            watcher(Api::<Pod>::all(client.clone()), config.clone()).default_backoff().modify(trim_pod),
        );
        let policy_events = reflector::reflector(
            policy_writer,
            watcher(Api::<TieringPolicy>::all(client.clone()), config.clone()).default_backoff().modify(trim_meta),
        );
        let tn_events = reflector::reflector(
            tn_writer,
            watcher(Api::<TieringNode>::all(client.clone()), config.clone()).default_backoff().modify(trim_meta),
        );
        let node_events = reflector::reflector(
            node_writer,
            watcher(Api::<NodeMeta>::all(client), config).default_backoff().modify(trim_node),
        );

        let (r, r2) = (router.clone(), router.clone());
        let pods =
            route(pod_events, "pods", move |pod, deleted| r.pod_changed(pod, deleted), move || r2.pods_relisted());
        let (r, r2) = (router.clone(), router.clone());
        let policies = route(
            policy_events,
            "tieringpolicies",
            move |p, deleted| r.policy_changed(p, deleted),
            move || r2.forget_vanished(),
        );
        let (r, r2) = (router.clone(), router.clone());
        let tns = route(
            tn_events,
            "tieringnodes",
            move |tn, deleted| r.tiering_node_changed(tn, deleted),
            move || r2.forget_vanished(),
        );
        let r = router;
        let nodes = route(node_events, "nodes", move |node, deleted| r.node_changed(node, deleted), || {});
        let drive = async move {
            futures::join!(pods, policies, tns, nodes);
        };
        (stores, queues, requests, drive)
    }

    /// Resolves once every store holds a complete initial list.
    pub async fn wait_until_ready(&self) -> anyhow::Result<()> {
        self.pods.wait_until_ready().await?;
        self.policies.wait_until_ready().await?;
        self.tiering_nodes.wait_until_ready().await?;
        self.nodes.wait_until_ready().await?;
        Ok(())
    }
}

/// Feeds every object of every event (`deleted` for deletions) to `changed`,
/// and calls `relisted` once a relist has replaced the store.
async fn route<K: Clone>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>>,
    kind: &'static str,
    changed: impl Fn(&K, bool),
    relisted: impl Fn(),
) {
    events
        .map_err(|e| warn!(kind, error = %e, "watch failed; retrying with backoff"))
        .for_each(|event| {
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => changed(&obj, false),
                Ok(watcher::Event::Delete(obj)) => changed(&obj, true),
                Ok(watcher::Event::InitDone) => relisted(),
                Ok(watcher::Event::Init) | Err(()) => {}
            }
            std::future::ready(())
        })
        .await
}

impl Router {
    fn node(&self, name: &str) {
        self.nodes.push(ObjectRef::new(name));
    }

    fn policy(&self, namespace: &str, name: &str) {
        self.policies.push(ObjectRef::new(name).within(namespace));
    }

    /// Every policy of a namespace: any of them may select the pod, and a
    /// change to one may change which of them governs (conflicts).
    fn policies_in(&self, namespace: &str) {
        for p in self.stores.policies.state() {
            if p.metadata.namespace.as_deref() == Some(namespace) {
                self.policy(namespace, &p.name_any());
            }
        }
    }

    fn pod_changed(&self, pod: &Pod, deleted: bool) {
        let mut index = self.stores.pod_index.write().unwrap();
        if deleted {
            index.remove(pod)
        } else {
            index.insert(pod)
        }
        drop(index);
        if let Some(node) = selection::node_name(pod) {
            self.node(node);
        }
        if let Some(ns) = pod.namespace() {
            self.policies_in(&ns);
        }
    }

    /// What a relist dropped (deleted while the watch was away) is
    /// forgotten: the memory of what was last routed stays as large as the
    /// cluster.
    fn forget_vanished(&self) {
        let policies = &self.stores.policies;
        self.policy_seen.lock().unwrap().retain(|key, _| policies.get(key).is_some());
        let tiering_nodes = &self.stores.tiering_nodes;
        self.tiering_node_seen.lock().unwrap().retain(|name, _| tiering_nodes.get(&ObjectRef::new(name)).is_some());
    }

    /// A relist may have dropped pods without a deletion event.
    fn pods_relisted(&self) {
        self.stores.pod_index.write().unwrap().rebuild(&self.stores.pods.state());
    }

    /// A change of what selection reads may add or remove pods on any node
    /// where its namespace has pods, and any node that lists it now. A
    /// settings edit only needs the policy's own status (its observed
    /// generation): agents read settings from the policy. A status write
    /// needs nothing.
    fn policy_changed(&self, policy: &TieringPolicy, deleted: bool) {
        let key = ObjectRef::from_obj(policy);
        let now_selection = PolicyKey::of(policy);
        let mut seen = self.policy_seen.lock().unwrap();
        let before = if deleted {
            seen.remove(&key)
        } else {
            seen.insert(key, (PolicyKey::of(policy), policy.metadata.generation))
        };
        drop(seen);
        let (ns, name) = (policy.namespace().unwrap_or_default(), policy.name_any());
        if let Some((selection, generation)) = before
            && !deleted
            && selection == now_selection
        {
            if generation != policy.metadata.generation {
                self.policy(&ns, &name);
            }
            return;
        }
        let mut nodes = self.stores.nodes_of(&ns);
        for tn in self.stores.tiering_nodes.state() {
            if tn.spec.pods.iter().any(|p| p.namespace == ns && p.policy == name) {
                nodes.insert(tn.name_any());
            }
        }
        for node in nodes {
            self.node(&node);
        }
        self.policies_in(&ns);
    }

    /// A spec changed by anyone else (or a deleted TieringNode) is repaired by
    /// the node's reconcile; the agent's status feeds the status of every
    /// policy it lists.
    fn tiering_node_changed(&self, tn: &TieringNode, deleted: bool) {
        let name = tn.name_any();
        let mut seen = self.tiering_node_seen.lock().unwrap();
        let spec_changed = if deleted {
            seen.remove(&name);
            true
        } else {
            seen.insert(name.clone(), tn.metadata.generation) != Some(tn.metadata.generation)
        };
        drop(seen);
        if spec_changed {
            self.node(&name);
        }
        let mut seen = HashSet::new();
        for p in &tn.spec.pods {
            if seen.insert((&p.namespace, &p.policy)) {
                self.policy(&p.namespace, &p.policy);
            }
        }
    }

    /// New nodes get a TieringNode; a node's own updates (heartbeats) change
    /// nothing the operator writes, so only first sight triggers.
    fn node_changed(&self, node: &NodeMeta, deleted: bool) {
        let name = node.name_any();
        if !deleted && self.stores.tiering_nodes.get(&ObjectRef::new(&name)).is_none() {
            self.node(&name);
        }
    }
}

/// Keeps what selection and node placement read: metadata without managed
/// fields, the node name and the phase.
fn trim_pod(pod: &mut Pod) {
    pod.metadata.managed_fields = None;
    let node_name = pod.spec.as_mut().and_then(|s| s.node_name.take());
    pod.spec = Some(PodSpec { node_name, containers: Vec::new(), ..Default::default() });
    let phase = pod.status.as_mut().and_then(|s| s.phase.take());
    pod.status = Some(PodStatus { phase, ..Default::default() });
}

fn trim_meta<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

fn trim_node(node: &mut NodeMeta) {
    node.metadata.managed_fields = None;
    node.metadata.annotations = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{pod, policy};

    fn on(node: &str, mut p: Pod) -> Pod {
        p.spec = Some(PodSpec { node_name: Some(node.into()), ..Default::default() });
        p
    }

    fn names(refs: Option<&HashSet<ObjectRef<Pod>>>) -> Vec<String> {
        let mut names: Vec<String> = refs.into_iter().flatten().map(|r| r.name.clone()).collect();
        names.sort();
        names
    }

    #[test]
    fn the_index_follows_binding_and_deletion() {
        let mut index = PodIndex::default();
        let unbound = pod("a", "p1", &[], &[]);
        index.insert(&unbound);
        assert_eq!(names(index.in_namespace.get("a")), ["p1"]);
        assert!(index.on_node.is_empty(), "not bound yet");

        let bound = on("n1", unbound);
        index.insert(&bound);
        index.insert(&on("n2", pod("a", "p2", &[], &[])));
        index.insert(&on("n1", pod("b", "p3", &[], &[])));
        assert_eq!(names(index.on_node.get("n1")), ["p1", "p3"]);
        assert_eq!(names(index.in_namespace.get("a")), ["p1", "p2"]);

        index.remove(&bound);
        assert_eq!(names(index.on_node.get("n1")), ["p3"]);
        assert_eq!(names(index.in_namespace.get("a")), ["p2"]);
        index.remove(&on("n1", pod("b", "p3", &[], &[])));
        assert!(!index.on_node.contains_key("n1") && !index.in_namespace.contains_key("b"), "no empty sets are kept");

        index.rebuild(&[Arc::new(on("n9", pod("c", "p9", &[], &[])))]);
        assert_eq!(names(index.on_node.get("n9")), ["p9"]);
        assert!(!index.in_namespace.contains_key("a"), "a rebuild forgets what the relist dropped");
    }

    /// A router over empty stores but for a pod of namespace `a` on `n1`.
    fn router() -> (Router, UnboundedReceiver<ObjectRef<NodeMeta>>, UnboundedReceiver<ObjectRef<TieringPolicy>>) {
        let mut index = PodIndex::default();
        index.insert(&on("n1", pod("a", "p1", &[], &[])));
        let stores = Stores {
            pods: reflector::store().0,
            pod_index: Arc::new(RwLock::new(index)),
            policies: reflector::store().0,
            tiering_nodes: reflector::store().0,
            nodes: reflector::store().0,
        };
        let (nodes, node_requests) = Queue::new(Gauge::default());
        let (policies, policy_requests) = Queue::new(Gauge::default());
        let router = Router { stores, nodes, policies, policy_seen: Arc::default(), tiering_node_seen: Arc::default() };
        (router, node_requests, policy_requests)
    }

    fn drain<K: Resource<DynamicType = ()>>(rx: &mut UnboundedReceiver<ObjectRef<K>>, queue: &Queue<K>) -> Vec<String> {
        let mut names = Vec::new();
        while let Ok(obj) = rx.try_recv() {
            queue.started(&obj);
            names.push(obj.name);
        }
        names
    }

    #[test]
    fn a_settings_edit_reaches_no_node_a_selector_edit_does() {
        let (router, mut nodes, mut policies) = router();
        let mut web = (*policy("a", "web", 1, Some(("app", "web")))).clone();
        web.metadata.generation = Some(1);
        router.policy_changed(&web, false);
        assert_eq!(drain(&mut nodes, &router.nodes), ["n1"], "a new policy may select pods of its namespace");

        web.metadata.generation = Some(2);
        web.spec.settings.tracking.hot_threshold = 9.0;
        router.policy_changed(&web, false);
        assert!(drain(&mut nodes, &router.nodes).is_empty(), "agents read the settings from the policy");
        assert_eq!(drain(&mut policies, &router.policies), ["web"], "its status shows the new generation");

        router.policy_changed(&web, false);
        assert!(drain(&mut nodes, &router.nodes).is_empty(), "a status write changes nothing");

        web.metadata.generation = Some(3);
        web.spec.pod_selector = None;
        router.policy_changed(&web, false);
        assert_eq!(drain(&mut nodes, &router.nodes), ["n1"], "a selector edit may move pods");
        router.policy_changed(&web, true);
        assert_eq!(drain(&mut nodes, &router.nodes), ["n1"], "a deletion releases its pods");

        // Seen again, then gone in a relist (this test's store is empty).
        router.policy_changed(&web, false);
        router.forget_vanished();
        assert!(router.policy_seen.lock().unwrap().is_empty(), "what a relist dropped is forgotten");
    }
}
