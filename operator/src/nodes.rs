//! The TieringNode controller: one TieringNode per Kubernetes node, whose spec
//! lists the pods on that node that a policy governs, with that policy's
//! settings. Its spec is written by this controller alone (the agents write
//! the status); owned by the Node so it goes when the node goes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Config, Controller};
use kube::runtime::reflector::ObjectRef;
use pytier_crds::node::{PodTiering, TieringNodeSpec};
use pytier_crds::{TieringNode, TieringPolicy};
use serde_json::json;
use tracing::{debug, warn};

use crate::Context;
use crate::cache::{NODES, NodeMeta};
use crate::selection;

/// Field manager of the operator's server-side applies.
pub const MANAGER: &str = "pytier-operator";

#[derive(Debug, thiserror::Error)]
#[error("cannot write TieringNode {node}: {source}")]
pub struct Error {
    node: String,
    source: kube::Error,
}

/// Runs the controller until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    requests: impl futures::Stream<Item = ObjectRef<NodeMeta>> + Send + 'static,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let store = ctx.stores.nodes.clone();
    // All triggers come from the shared cache (see `cache`), none from a watch of our own.
    Controller::for_stream(futures::stream::pending(), store)
        .with_config(Config::default().concurrency(32).debounce(Duration::from_millis(50)))
        .reconcile_on(requests)
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                debug!(controller = NODES, error = %e, "reconcile not run");
            }
        })
        .await;
}

async fn reconcile(node: Arc<NodeMeta>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.queues.nodes.started(&ObjectRef::from_obj(&*node));
    let timer = ctx.metrics.reconcile(NODES);
    let result = apply(&node, &ctx).await;
    timer.done(&result);
    result.map(|()| Action::requeue(Duration::from_secs(600)))
}

fn error_policy(node: Arc<NodeMeta>, error: &Error, _ctx: Arc<Context>) -> Action {
    warn!(node = node.name_any(), %error, "reconcile failed; retrying");
    Action::requeue(Duration::from_secs(2))
}

pub async fn apply(node: &NodeMeta, ctx: &Context) -> Result<(), Error> {
    let name = node.name_any();
    let spec = desired_spec(&name, &ctx.stores.pods_on(&name), &ctx.stores.policies.state());
    let current = ctx.stores.tiering_nodes.get(&ObjectRef::new(&name));
    if current.as_ref().is_some_and(|tn| tn.spec == spec) {
        return Ok(());
    }
    let api: Api<TieringNode> = Api::all(ctx.client.clone());
    let written = match current {
        Some(_) => write_spec(&api, &name, &spec).await,
        None => {
            let mut tn = TieringNode::new(&name, spec.clone());
            tn.metadata.owner_references = Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: name.clone(),
                uid: node.uid().unwrap_or_default(),
                ..Default::default()
            }]);
            match api.create(&PostParams { field_manager: Some(MANAGER.into()), ..Default::default() }, &tn).await {
                // The cache had not seen it yet.
                Err(kube::Error::Api(e)) if e.code == 409 => write_spec(&api, &name, &spec).await,
                other => other.map(drop),
            }
        }
    };
    written.map_err(|source| Error { node: name.clone(), source })?;
    debug!(node = name, pods = spec.pods.len(), "TieringNode written");
    Ok(())
}

/// Replaces the spec with a merge patch: both of its lists are replaced
/// whole. The API server does far less work for it than for a server-side
/// apply of the same object (no managed-fields merge), and an edit of one
/// policy writes hundreds of TieringNodes at once.
async fn write_spec(api: &Api<TieringNode>, name: &str, spec: &TieringNodeSpec) -> kube::Result<()> {
    let params = PatchParams { field_manager: Some(MANAGER.into()), ..Default::default() };
    api.patch(name, &params, &Patch::Merge(json!({ "spec": spec }))).await.map(drop)
}

/// The pods on `node` that a policy governs, sorted by namespace and name,
/// each with the name of that policy (the agent reads its settings).
pub fn desired_spec(node: &str, pods: &[Arc<Pod>], policies: &[Arc<TieringPolicy>]) -> TieringNodeSpec {
    let mut spec = TieringNodeSpec::default();
    for pod in pods.iter().filter(|p| selection::node_name(p) == Some(node) && selection::is_active(p)) {
        let selecting = selection::selecting_policies(pod, policies);
        let (Some(policy), Some(namespace), Some(uid)) = (selecting.first(), pod.namespace(), pod.uid()) else {
            continue;
        };
        spec.pods.push(PodTiering { namespace, name: pod.name_any(), uid, policy: policy.name_any() });
    }
    spec.pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    spec
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::selection::tests::{pod, policy};

    fn on(node: &str, mut p: Pod) -> Arc<Pod> {
        p.spec = Some(k8s_openapi::api::core::v1::PodSpec { node_name: Some(node.into()), ..Default::default() });
        Arc::new(p)
    }

    #[test]
    fn a_node_lists_its_governed_pods_with_the_governing_policy() {
        let pods = vec![
            on("n1", pod("a", "web-2", &[("app", "web")], &[])),
            on("n1", pod("a", "web-1", &[("app", "web")], &[])),
            on("n1", pod("a", "db", &[("app", "db")], &[])),
            on("n2", pod("a", "web-3", &[("app", "web")], &[])),
        ];
        let policies =
            vec![policy("a", "younger", 20, Some(("app", "web"))), policy("a", "first", 10, Some(("app", "web")))];
        let spec = desired_spec("n1", &pods, &policies);
        let names: Vec<_> = spec.pods.iter().map(|p| (p.name.as_str(), p.policy.as_str())).collect();
        assert_eq!(names, [("web-1", "first"), ("web-2", "first")]);
        assert_eq!(spec.pods[0].uid, "uid-web-1");
    }
}
