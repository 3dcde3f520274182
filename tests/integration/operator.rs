//! The operator against a real kube-apiserver + etcd: policies become
//! TieringNode specs, agent reports become policy status, the webhook injects
//! pods the API server sends it over TLS, and a follower takes over when the
//! leader dies. The operator runs as its real binary; the test client plays
//! the node agent where one is needed.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use pytier_crds::node::{PodState, PodStatus};
use pytier_crds::{TieringNode, TieringNodeStatus, TieringPolicy};
use pytier_tests::ControlPlane;
use pytier_tests::operator::{Operator, eventually, install_rbac, install_webhook};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(30);

async fn create<K>(api: &Api<K>, value: Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(value).unwrap();
    api.create(&PostParams::default(), &obj).await.unwrap()
}

async fn namespace(client: &Client, name: &str, labels: Value) {
    create(&Api::<Namespace>::all(client.clone()), json!({"metadata": {"name": name, "labels": labels}})).await;
}

async fn node(client: &Client, name: &str) {
    create(&Api::<Node>::all(client.clone()), json!({"metadata": {"name": name}})).await;
}

fn pod_json(name: &str, node: Option<&str>, labels: Value, annotations: Value, env: Value) -> Value {
    json!({
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "app", "image": "python:3.11", "env": env}],
        },
    })
}

async fn pod(client: &Client, ns: &str, name: &str, node: &str, labels: Value, annotations: Value) {
    let api = Api::<Pod>::namespaced(client.clone(), ns);
    create(&api, pod_json(name, Some(node), labels, annotations, json!([]))).await;
}

async fn policy(client: &Client, ns: &str, name: &str, spec: Value) {
    let api = Api::<TieringPolicy>::namespaced(client.clone(), ns);
    create(
        &api,
        json!({"apiVersion": "pytier.dev/v1alpha1", "kind": "TieringPolicy", "metadata": {"name": name}, "spec": spec}),
    )
    .await;
}

/// (pod, policy) pairs of a TieringNode's spec, or an error while it is missing.
async fn listed(client: &Client, node: &str) -> Result<Vec<(String, String)>, String> {
    let api = Api::<TieringNode>::all(client.clone());
    let tn = api.get_opt(node).await.map_err(|e| e.to_string())?.ok_or("no TieringNode yet")?;
    Ok(tn.spec.pods.iter().map(|p| (p.name.clone(), p.policy.clone())).collect())
}

async fn wait_listed(client: &Client, node: &str, want: &[(&str, &str)]) {
    let want: Vec<(String, String)> = want.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect();
    eventually(&format!("TieringNode {node} lists {want:?}"), WAIT, || async {
        let got = listed(client, node).await?;
        if got == want { Ok(()) } else { Err(format!("{got:?}")) }
    })
    .await
}

fn condition(policy: &TieringPolicy, type_: &str) -> Option<(String, String, String)> {
    let c = policy.status.as_ref()?.conditions.iter().find(|c| c.type_ == type_)?;
    Some((c.status.clone(), c.reason.clone(), c.message.clone()))
}

/// Waits until the policy's `type_` condition has `reason`; returns the policy.
async fn wait_condition(client: &Client, ns: &str, name: &str, type_: &str, reason: &str) -> TieringPolicy {
    let api = Api::<TieringPolicy>::namespaced(client.clone(), ns);
    eventually(&format!("policy {name}: {type_} reason {reason}"), WAIT, || async {
        let p = api.get(name).await.map_err(|e| e.to_string())?;
        match condition(&p, type_) {
            Some((_, r, _)) if r == reason => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// Starts the operator with only the rights `deploy/operator/rbac.yaml` grants.
async fn start_operator(plane: &ControlPlane, identity: &str, args: &[&str]) -> Operator {
    let kubeconfig = install_rbac(plane).await.unwrap();
    let mut op = Operator::start_with(plane, &kubeconfig, identity, args).unwrap();
    op.wait_ready().unwrap();
    op
}

#[tokio::test]
async fn deploy_manifests_apply_cleanly() {
    let plane = ControlPlane::start().await.unwrap();
    let deploy = pytier_tests::repo_root().join("deploy/operator");
    for file in ["namespace.yaml", "rbac.yaml", "operator.yaml", "webhook.yaml"] {
        plane.apply_manifests(&deploy.join(file)).await.unwrap();
    }
    let kustomization = std::fs::read_to_string(deploy.join("kustomization.yaml")).unwrap();
    for file in ["namespace.yaml", "rbac.yaml", "operator.yaml", "webhook.yaml"] {
        assert!(kustomization.contains(file), "kustomization.yaml misses {file}");
    }
}

#[tokio::test]
async fn policies_become_tiering_node_specs() {
    let plane = ControlPlane::start().await.unwrap();
    let c = plane.client();
    namespace(&c, "shop", json!({})).await;
    for n in ["n1", "n2", "n3"] {
        node(&c, n).await;
    }
    pod(&c, "shop", "web-1", "n1", json!({"app": "web"}), json!({})).await;
    pod(&c, "shop", "web-2", "n2", json!({"app": "web"}), json!({})).await;
    pod(&c, "shop", "db", "n1", json!({"app": "db"}), json!({})).await;
    pod(&c, "shop", "batch", "n3", json!({}), json!({"pytier.dev/policy": "batch"})).await;
    let op = start_operator(&plane, "solo", &["--no-webhook"]).await;

    // Every node gets a TieringNode, empty until a policy selects its pods.
    wait_listed(&c, "n2", &[]).await;
    policy(&c, "shop", "web", json!({"podSelector": {"matchLabels": {"app": "web"}}})).await;
    policy(&c, "shop", "batch", json!({"mode": "observe"})).await;
    wait_listed(&c, "n1", &[("web-1", "web")]).await;
    wait_listed(&c, "n2", &[("web-2", "web")]).await;
    wait_listed(&c, "n3", &[("batch", "batch")]).await;
    let tn = Api::<TieringNode>::all(c.clone()).get("n3").await.unwrap();
    assert_eq!(tn.owner_references()[0].kind, "Node", "a TieringNode goes with its node");

    // A settings edit is the agents' to read from the policy: once the
    // operator has seen it, the TieringNode is as it was.
    let batch = Api::<TieringPolicy>::namespaced(c.clone(), "shop");
    let edit = json!({"spec": {"tracking": {"hotThreshold": 5.0}}});
    let generation =
        batch.patch("batch", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap().metadata.generation;
    eventually("the edit observed by the operator", WAIT, || async {
        let seen = batch.get("batch").await.map_err(|e| e.to_string())?.status.and_then(|s| s.observed_generation);
        if seen == generation { Ok(()) } else { Err(format!("observed {seen:?}")) }
    })
    .await;
    let after = Api::<TieringNode>::all(c.clone()).get("n3").await.unwrap();
    assert_eq!(after.resource_version(), tn.resource_version(), "a settings edit writes no TieringNode");

    // A selector edit moves pods in and out.
    let policies = Api::<TieringPolicy>::namespaced(c.clone(), "shop");
    let edit = json!({"spec": {"podSelector": {"matchLabels": {"app": "db"}}}});
    policies.patch("web", &PatchParams::default(), &Patch::Merge(&edit)).await.unwrap();
    wait_listed(&c, "n1", &[("db", "web")]).await;
    wait_listed(&c, "n2", &[]).await;

    // A younger policy selecting the same pod: the older one governs, both report it.
    policy(&c, "shop", "web-too", json!({"podSelector": {"matchLabels": {"app": "db"}}})).await;
    let older = wait_condition(&c, "shop", "web", "Degraded", "Conflict").await;
    assert!(condition(&older, "Degraded").unwrap().2.contains("also selected by web-too"));
    let younger = wait_condition(&c, "shop", "web-too", "Degraded", "Conflict").await;
    assert!(condition(&younger, "Degraded").unwrap().2.contains("governed by the older policy web"));
    wait_listed(&c, "n1", &[("db", "web")]).await;

    // Deleting the governing policy hands the pod over; its finalizer goes.
    policies.delete("web", &DeleteParams::default()).await.unwrap();
    wait_listed(&c, "n1", &[("db", "web-too")]).await;
    eventually("policy web is gone", WAIT, || async {
        match policies.get_opt("web").await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(p) => Err(format!("finalizers {:?}", p.finalizers())),
        }
    })
    .await;

    // A deleted pod leaves its node's list.
    Api::<Pod>::namespaced(c.clone(), "shop")
        .delete("batch", &DeleteParams::background().grace_period(0))
        .await
        .unwrap();
    wait_listed(&c, "n3", &[]).await;

    let metrics = op.get("/metrics").unwrap();
    assert!(metrics.contains("pytier_operator_reconciles_total{controller=\"tieringnodes\"}"), "{metrics}");
    assert_eq!(op.metric("pytier_operator_leader"), Some(1.0));
}

#[tokio::test]
async fn policy_status_aggregates_agent_reports() {
    let plane = ControlPlane::start().await.unwrap();
    let c = plane.client();
    namespace(&c, "ml", json!({})).await;
    node(&c, "n1").await;
    pod(&c, "ml", "train-1", "n1", json!({"app": "train"}), json!({})).await;
    pod(&c, "ml", "train-2", "n1", json!({"app": "train"}), json!({})).await;
    let _op = start_operator(&plane, "solo", &["--no-webhook"]).await;
    policy(&c, "ml", "train", json!({"podSelector": {"matchLabels": {"app": "train"}}})).await;
    wait_listed(&c, "n1", &[("train-1", "train"), ("train-2", "train")]).await;
    let pending = wait_condition(&c, "ml", "train", "Ready", "PodsPending").await;
    assert_eq!(pending.status.as_ref().unwrap().matched_pods, 2);

    // The test client acts as the node agent and reports on both pods.
    let report = |name: &str, state: PodState, message: Option<&str>, dram: u64| PodStatus {
        namespace: "ml".into(),
        name: name.into(),
        state,
        message: message.map(String::from),
        processes: 1,
        dram_bytes: dram,
        cxl_bytes: 2 * dram,
        ..Default::default()
    };
    let write_status = |pods: Vec<PodStatus>| {
        let c = c.clone();
        async move {
            let status = TieringNodeStatus { pods, ..Default::default() };
            let patch = json!({"status": status});
            Api::<TieringNode>::all(c)
                .patch_status("n1", &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .unwrap();
        }
    };
    write_status(vec![
        report("train-1", PodState::Managed, None, 1 << 20),
        report("train-2", PodState::Failed, Some("Python 3.8 is not supported; pytier needs 3.11"), 0),
    ])
    .await;
    let failed = wait_condition(&c, "ml", "train", "Ready", "PodsFailed").await;
    let s = failed.status.as_ref().unwrap();
    assert_eq!((s.matched_pods, s.injected_pods, s.failed_pods), (2, 1, 1));
    assert_eq!((s.dram_bytes, s.cxl_bytes), (1 << 20, 2 << 20));
    let (status, reason, message) = condition(&failed, "Degraded").unwrap();
    assert_eq!((status.as_str(), reason.as_str()), ("True", "PodsFailed"));
    assert!(message.contains("train-2: Python 3.8 is not supported"), "{message}");

    write_status(vec![
        report("train-1", PodState::Managed, None, 1 << 20),
        report("train-2", PodState::Managed, None, 3 << 20),
    ])
    .await;
    let ready = wait_condition(&c, "ml", "train", "Ready", "AllPodsManaged").await;
    assert_eq!(ready.status.as_ref().unwrap().dram_bytes, 4 << 20);
    assert_eq!(condition(&ready, "Degraded").unwrap().0, "False");

    // The transitions were announced as Events on the policy.
    let events = Api::<Event>::namespaced(c.clone(), "ml");
    let reasons: Vec<String> = eventually("events on the policy", WAIT, || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("train"))
            .filter_map(|e| e.reason.clone())
            .collect();
        if reasons.contains(&"AllPodsManaged".to_string()) { Ok(reasons) } else { Err(format!("{reasons:?}")) }
    })
    .await;
    assert!(reasons.contains(&"PodsFailed".to_string()), "{reasons:?}");
}

#[tokio::test]
async fn webhook_injects_opted_in_pods_over_tls() {
    let plane = ControlPlane::start().await.unwrap();
    let c = plane.client();
    namespace(&c, "app", json!({})).await;
    namespace(&c, "labelled", json!({"pytier.dev/inject": "true"})).await;
    let mut op = start_operator(&plane, "solo", &["--webhook-dns-names", "127.0.0.1"]).await;
    // deploy/operator/webhook.yaml, pointed at the test operator; the operator sets its caBundle.
    install_webhook(&plane, &op).await.unwrap();

    let pods = Api::<Pod>::namespaced(c.clone(), "app");
    let annotated = json!({"pytier.dev/inject": "true"});
    let user_path = json!([{"name": "PYTHONPATH", "value": "/app/lib"}]);
    // The API server picks up the new caBundle within a few seconds.
    let mut attempt = 0;
    let injected = eventually("an annotated pod comes back injected", WAIT, || {
        attempt += 1;
        let name = format!("web-{attempt}");
        let (pods, annotated, user_path) = (pods.clone(), annotated.clone(), user_path.clone());
        async move {
            let pod: Pod = serde_json::from_value(pod_json(&name, None, json!({}), annotated, user_path)).unwrap();
            let pod = pods.create(&PostParams::default(), &pod).await.map_err(|e| e.to_string())?;
            if pod.annotations().contains_key("pytier.dev/injected") {
                Ok(pod)
            } else {
                Err(format!("{name} not injected"))
            }
        }
    })
    .await;
    let spec = injected.spec.as_ref().unwrap();
    let env: BTreeMap<_, _> =
        spec.containers[0].env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or(""))).collect();
    assert_eq!(
        env["PYTHONPATH"], "/app/lib:/opt/pytier/shim/current",
        "the user's PYTHONPATH is kept, the shim appended"
    );
    assert_eq!(env["PYTIER_SOCKET_DIR"], "/run/pytier");
    assert_eq!(env["PYTIER_CONTAINER"], "app", "sockets are named after their container");
    let run = spec.volumes.iter().flatten().find(|v| v.name == "pytier-run").unwrap();
    assert!(run.empty_dir.is_some(), "the pod's sockets live in an emptyDir of its own: {run:?}");
    let volume = spec.volumes.iter().flatten().find(|v| v.name == "pytier-shim").unwrap();
    assert_eq!(volume.host_path.as_ref().unwrap().path, "/var/lib/pytier/shim");
    let mount = spec.containers[0].volume_mounts.iter().flatten().find(|m| m.name == "pytier-shim").unwrap();
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/opt/pytier/shim", Some(true)));
    let summary: Value = serde_json::from_str(&injected.annotations()["pytier.dev/injected"]).unwrap();
    assert_eq!(summary["containers"], json!(["app"]));

    // Not opted in: untouched.
    let plain = create(&pods, pod_json("plain", None, json!({}), json!({}), json!([]))).await;
    assert!(!plain.annotations().contains_key("pytier.dev/injected"));
    assert!(plain.spec.unwrap().volumes.unwrap_or_default().iter().all(|v| v.name != "pytier-shim"));

    // Opted in by the namespace label, and by a policy's selector.
    let labelled = Api::<Pod>::namespaced(c.clone(), "labelled");
    let by_label = create(&labelled, pod_json("by-label", None, json!({}), json!({}), json!([]))).await;
    assert!(by_label.annotations().contains_key("pytier.dev/injected"));
    policy(&c, "app", "ml", json!({"podSelector": {"matchLabels": {"app": "ml"}}})).await;
    eventually("a pod matching a policy's selector is injected", WAIT, || {
        attempt += 1;
        let pods = pods.clone();
        let name = format!("ml-{attempt}");
        async move {
            let pod: Pod =
                serde_json::from_value(pod_json(&name, None, json!({"app": "ml"}), json!({}), json!([]))).unwrap();
            let pod = pods.create(&PostParams::default(), &pod).await.map_err(|e| e.to_string())?;
            if pod.annotations().contains_key("pytier.dev/injected") {
                Ok(())
            } else {
                Err(format!("{name} not injected"))
            }
        }
    })
    .await;

    // PYTHONPATH from valueFrom: left alone, and an Event on the pod says why.
    let from_field = json!([{"name": "PYTHONPATH", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}]);
    let refused = create(&pods, pod_json("value-from", None, json!({}), annotated.clone(), from_field)).await;
    assert!(!refused.annotations().contains_key("pytier.dev/injected"));
    assert!(refused.spec.as_ref().unwrap().volumes.iter().flatten().all(|v| v.name != "pytier-shim"));
    let events = Api::<Event>::namespaced(c.clone(), "app");
    eventually("an InjectionSkipped event on the pod", WAIT, || async {
        let list = events.list(&ListParams::default()).await.map_err(|e| e.to_string())?;
        let found = list.items.iter().any(|e| {
            e.reason.as_deref() == Some("InjectionSkipped")
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some("value-from")
                && e.note.as_deref().is_some_and(|n| n.contains("valueFrom"))
        });
        if found { Ok(()) } else { Err(format!("{} events", list.items.len())) }
    })
    .await;

    // HTTP/2 is offered: the API server's calls share one connection.
    let url = format!("https://{}/", op.webhook_addr);
    let out = std::process::Command::new("curl")
        .args(["-sk", "--http2", "-o", "/dev/null", "-w", "%{http_version}", &url])
        .output()
        .expect("curl runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "2", "ALPN chose HTTP/2: {out:?}");

    // With the webhook down, pods are still admitted (failurePolicy: Ignore).
    let webhook_requests = op.get("/metrics").unwrap();
    assert!(webhook_requests.contains("pytier_operator_webhook_requests_total{outcome=\"injected\"}"));
    op.kill();
    let admitted = create(&pods, pod_json("while-down", None, json!({}), annotated, json!([]))).await;
    assert!(!admitted.annotations().contains_key("pytier.dev/injected"));
}

#[tokio::test]
async fn a_follower_takes_over_when_the_leader_dies() {
    let plane = ControlPlane::start().await.unwrap();
    let c = plane.client();
    namespace(&c, "shop", json!({})).await;
    node(&c, "n1").await;
    let args = ["--no-webhook", "--lease-duration-seconds", "3"];
    let mut a = start_operator(&plane, "replica-a", &args).await;
    let mut b = start_operator(&plane, "replica-b", &args).await;
    let leases = Api::<Lease>::namespaced(c.clone(), "pytier-system");
    let holder = || async {
        let lease = leases.get_opt("pytier-operator").await.map_err(|e| e.to_string())?.ok_or("no lease")?;
        lease.spec.and_then(|s| s.holder_identity).ok_or_else(|| "no holder".to_string())
    };
    let first = eventually("a leader", WAIT, holder).await;
    wait_listed(&c, "n1", &[]).await;
    let (leader, follower) = if first == "replica-a" { (&mut a, &mut b) } else { (&mut b, &mut a) };
    assert_eq!(leader.metric("pytier_operator_leader"), Some(1.0));
    assert_eq!(follower.metric("pytier_operator_leader"), Some(0.0), "only one replica leads");

    leader.kill();
    pod(&c, "shop", "web", "n1", json!({"app": "web"}), json!({})).await;
    policy(&c, "shop", "web", json!({"podSelector": {"matchLabels": {"app": "web"}}})).await;
    let second = eventually("the follower leads", WAIT, || async {
        let h = holder().await?;
        if h != first { Ok(h) } else { Err(h) }
    })
    .await;
    assert_ne!(second, first);
    wait_listed(&c, "n1", &[("web", "web")]).await;
    assert_eq!(follower.metric("pytier_operator_leader"), Some(1.0));
}
