//! The operator's view of the cluster: one watch per kind, objects trimmed to
//! the fields the operator reads (10 000 full pods would cost ~100 MiB), and
//! the routing of every change, deletions included, to the reconciles it
//! affects. Both controllers read these stores; nothing else watches.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc::{UnboundedReceiver, UnboundedSender, unbounded};
use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{Node, Pod, PodSpec, PodStatus};
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
    pub pods: Store<Pod>,
    pub policies: Store<TieringPolicy>,
    pub tiering_nodes: Store<TieringNode>,
    pub nodes: Store<NodeMeta>,
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
}

impl Stores {
    /// Starts the four watches. The returned future drives them and must be
    /// polled for the stores to fill and the triggers to flow.
    pub fn start(client: Client, metrics: &Metrics) -> (Stores, Queues, Requests, impl Future<Output = ()> + use<>) {
        let (pods, pod_writer) = reflector::store();
        let (policies, policy_writer) = reflector::store();
        let (tiering_nodes, tn_writer) = reflector::store();
        let (nodes, node_writer) = reflector::store();
        let stores = Stores { pods, policies, tiering_nodes, nodes };
        let (node_queue, node_requests) = Queue::new(metrics.queue_depth(NODES));
        let (policy_queue, policy_requests) = Queue::new(metrics.queue_depth(POLICIES));
        let router = Router { stores: stores.clone(), nodes: node_queue.clone(), policies: policy_queue.clone() };
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

        let r = router.clone();
        let pods = route(pod_events, "pods", move |pod, deleted| r.pod_changed(pod, deleted));
        let r = router.clone();
        let policies = route(policy_events, "tieringpolicies", move |p, _| r.policy_changed(p));
        let r = router.clone();
        let tns = route(tn_events, "tieringnodes", move |tn, _| r.tiering_node_changed(tn));
        let r = router;
        let nodes = route(node_events, "nodes", move |node, deleted| r.node_changed(node, deleted));
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

/// Feeds every object of every event (`deleted` for deletions) to `changed`.
async fn route<K: Clone>(
    events: impl Stream<Item = watcher::Result<watcher::Event<K>>>,
    kind: &'static str,
    changed: impl Fn(&K, bool),
) {
    events
        .map_err(|e| warn!(kind, error = %e, "watch failed; retrying with backoff"))
        .for_each(|event| {
            match event {
                Ok(watcher::Event::Apply(obj) | watcher::Event::InitApply(obj)) => changed(&obj, false),
                Ok(watcher::Event::Delete(obj)) => changed(&obj, true),
                Ok(watcher::Event::Init | watcher::Event::InitDone) | Err(()) => {}
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
            if p.namespace().as_deref() == Some(namespace) {
                self.policy(namespace, &p.name_any());
            }
        }
    }

    fn pod_changed(&self, pod: &Pod, _deleted: bool) {
        if let Some(node) = selection::node_name(pod) {
            self.node(node);
        }
        if let Some(ns) = pod.namespace() {
            self.policies_in(&ns);
        }
    }

    /// A policy change may add or remove pods on any node where its namespace
    /// has pods, and any node that lists it now.
    fn policy_changed(&self, policy: &TieringPolicy) {
        let ns = policy.namespace().unwrap_or_default();
        let name = policy.name_any();
        let mut nodes = HashSet::new();
        for pod in self.stores.pods.state() {
            if pod.namespace().as_deref() == Some(&ns)
                && let Some(node) = selection::node_name(&pod)
            {
                nodes.insert(node.to_string());
            }
        }
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

    /// Spec drift is repaired by the node's reconcile; the agent's status feeds
    /// the status of every policy it lists.
    fn tiering_node_changed(&self, tn: &TieringNode) {
        self.node(&tn.name_any());
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
