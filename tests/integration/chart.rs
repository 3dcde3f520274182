//! The Helm chart `charts/pytier` with the real Helm (built from its pinned Go
//! module by tests/chart/build.sh): lint and render with default and other
//! values, bad values refused by its schema, and install, upgrade and
//! uninstall against the real kube-apiserver.

use std::process::Command;
use std::time::Duration;

use kube::api::{Api, DynamicObject};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::{Client, ResourceExt};
use pytier_tests::chart::{CHART, helm, helm_ok, monitoring_crds};
use pytier_tests::operator::eventually;
use pytier_tests::{ControlPlane, repo_root};
use serde::Deserialize;

const OTHER_VALUES: &str = "tests/chart/values-other.yaml";
const ALL_MONITORING: &str =
    "metrics.podMonitor.enabled=true,metrics.serviceMonitor.enabled=true,metrics.prometheusRule.enabled=true";

/// The objects of a rendered manifest.
fn objects(manifest: &str) -> Vec<DynamicObject> {
    serde_norway::Deserializer::from_str(manifest)
        .map(serde_json::Value::deserialize)
        .filter_map(|v| v.ok().filter(|v| !v.is_null()))
        .map(|v| serde_json::from_value(v).unwrap())
        .collect()
}

fn kind_name(o: &DynamicObject) -> String {
    format!("{}/{}", o.types.as_ref().unwrap().kind, o.name_any())
}

fn find<'a>(objects: &'a [DynamicObject], kind_and_name: &str) -> &'a serde_json::Value {
    &objects.iter().find(|o| kind_name(o) == kind_and_name).unwrap_or_else(|| panic!("no {kind_and_name}")).data
}

#[test]
fn the_chart_lints_and_renders_with_default_and_other_values() {
    helm_ok(&["lint", "--strict", CHART], None);
    helm_ok(&["lint", "--strict", CHART, "-f", OTHER_VALUES], None);

    let default = objects(&helm_ok(&["template", "pytier", CHART, "-n", "pytier-system"], None));
    let kinds: Vec<String> = default.iter().map(kind_name).collect();
    for want in [
        "ServiceAccount/pytier-operator",
        "ClusterRole/pytier-operator",
        "Role/pytier-operator",
        "Deployment/pytier-operator",
        "Service/pytier-operator",
        "MutatingWebhookConfiguration/pytier-operator",
        "ServiceAccount/pytier-node-agent",
        "ClusterRole/pytier-node-agent",
        "DaemonSet/pytier-node-agent",
        "ConfigMap/pytier-dashboard-overview",
        "ConfigMap/pytier-dashboard-pod",
    ] {
        assert!(kinds.iter().any(|k| k == want), "default render has no {want}: {kinds:?}");
    }
    assert!(
        !kinds
            .iter()
            .any(|k| k.starts_with("PodMonitor") || k.starts_with("ServiceMonitor") || k.starts_with("Prometheus")),
        "monitors are off by default (their CRDs may not exist): {kinds:?}"
    );
    let deployment = find(&default, "Deployment/pytier-operator");
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(deployment["spec"]["template"]["spec"]["containers"][0]["image"], "pytier/operator:0.1.0");
    let webhook = find(&default, "MutatingWebhookConfiguration/pytier-operator");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Ignore");

    let other = objects(&helm_ok(&["template", "pytier", CHART, "-n", "tiering", "-f", OTHER_VALUES], None));
    let deployment = find(&other, "Deployment/pytier-operator");
    assert_eq!(deployment["spec"]["replicas"], 3);
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "registry.example/pytier/operator:9.9.9");
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--webhook-dns-names=pytier-operator.tiering.svc"), "{args:?}");
    assert!(args.contains(&"--shim-host-path=/opt/pytier-shim"), "{args:?}");
    let webhook = find(&other, "MutatingWebhookConfiguration/pytier-operator");
    assert_eq!(webhook["webhooks"][0]["failurePolicy"], "Fail");
    assert_eq!(
        webhook["webhooks"][0]["namespaceSelector"]["matchExpressions"][0]["values"],
        serde_json::json!(["kube-system", "tiering", "batch"])
    );
    let agent = &find(&other, "DaemonSet/pytier-node-agent")["spec"]["template"]["spec"];
    let args: Vec<&str> =
        agent["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.contains(&"--no-memory-nodes") && args.contains(&"--kubelet-pods-dir=/data/kubelet/pods"), "{args:?}");
    let cgroup =
        agent["containers"][0]["volumeMounts"].as_array().unwrap().iter().find(|m| m["name"] == "cgroup").unwrap();
    assert_eq!(cgroup["readOnly"], true, "without memory nodes the cgroup tree is read-only");
    for monitor in ["PodMonitor/pytier-node-agent", "ServiceMonitor/pytier-operator", "PrometheusRule/pytier"] {
        let labels = &other.iter().find(|o| kind_name(o) == monitor).unwrap().metadata.labels;
        assert_eq!(labels.as_ref().unwrap()["release"], "kube-prometheus-stack", "{monitor}");
    }
    let dashboard = other.iter().find(|o| kind_name(o) == "ConfigMap/pytier-dashboard-pod").unwrap();
    assert_eq!(dashboard.namespace().as_deref(), Some("monitoring"));
    assert_eq!(dashboard.labels()["grafana_dashboard"], "yes");
    assert_eq!(dashboard.annotations()["grafana_folder"], "Memory tiering");
    let json: serde_json::Value = serde_json::from_str(dashboard.data["data"]["pod.json"].as_str().unwrap()).unwrap();
    assert_eq!(json["uid"], "pytier-pod", "the ConfigMap holds the dashboard's JSON as it is");
}

/// `promtool check rules` passes on the chart's alerts (they are also
/// evaluated on live series by tests/integration/agent.rs).
#[test]
fn promtool_passes_the_alert_rules() {
    let rendered = helm_ok(
        &["template", "pytier", CHART, "--set", ALL_MONITORING, "--show-only", "templates/prometheusrule.yaml"],
        None,
    );
    let rule = objects(&rendered).pop().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("rules.yaml");
    std::fs::write(&file, serde_json::to_string(&rule.data["spec"]).unwrap()).unwrap();
    let out = Command::new("promtool")
        .arg("check")
        .arg("rules")
        .arg(&file)
        .output()
        .expect("promtool (tests/run installs it)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check rules:\n{text}");
    assert!(text.contains("SUCCESS: 7 rules found"), "{text}");
}

#[test]
fn the_schema_refuses_bad_values_with_a_clear_message() {
    let cases = [
        ("operator.replica=3", "additional properties 'replica' not allowed"),
        ("operator.replicas=0", "/operator/replicas"),
        ("operator.webhook.failurePolicy=Sometimes", "value must be one of 'Ignore', 'Fail'"),
        ("nodeAgent.metricsPort=70000", "/nodeAgent/metricsPort"),
        ("nodeAgent.shimHostPath=relative/dir", "/nodeAgent/shimHostPath"),
        ("nodeAgent.memoryNodes=maybe", "/nodeAgent/memoryNodes"),
        ("metrics.prometheusRule.for=ten minutes", "/metrics/prometheusRule/for"),
        ("dashboards.namespace=Not_A_Namespace", "/dashboards/namespace"),
    ];
    for (set, message) in cases {
        let (ok, _, err) = helm(&["template", "pytier", CHART, "--set", set], None);
        assert!(!ok, "--set {set} was accepted");
        assert!(err.contains("values don't meet the specifications of the schema"), "--set {set}: {err}");
        assert!(err.contains(message), "--set {set}: wanted {message:?} in:\n{err}");
    }
}

/// Gets an object like `o` from the API server (None when it does not exist).
async fn get(client: &Client, o: &DynamicObject) -> Option<DynamicObject> {
    let gvk = GroupVersionKind::try_from(o.types.as_ref().unwrap()).unwrap();
    let (resource, caps) = kube::discovery::pinned_kind(client, &gvk).await.unwrap();
    let api: Api<DynamicObject> = match caps.scope {
        Scope::Namespaced => Api::namespaced_with(client.clone(), &o.namespace().unwrap(), &resource),
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    api.get_opt(&o.name_any()).await.unwrap()
}

#[tokio::test]
async fn the_chart_installs_upgrades_and_uninstalls_on_a_real_api_server() {
    let plane = ControlPlane::start_without_crds().await.unwrap();
    let client = plane.client();
    let kubeconfig = Some(plane.kubeconfig());
    plane.apply_crds(&monitoring_crds()).await.unwrap();

    let install = ["install", "pytier", CHART, "-n", "pytier-system", "--create-namespace", "--set", ALL_MONITORING];
    let (ok, _, err) = helm(&install, kubeconfig);
    assert!(ok, "helm install failed:\n{err}");
    // The API server's warnings reach helm's log through client-go's warnings.go.
    let warnings: Vec<&str> = err.lines().filter(|l| l.contains("warnings.go")).collect();
    assert!(warnings.is_empty(), "the API server warned about the chart's objects:\n{}", warnings.join("\n"));
    let manifest = helm_ok(&["get", "manifest", "pytier", "-n", "pytier-system"], kubeconfig);
    let installed = objects(&manifest);
    assert!(
        installed.len() >= 17,
        "{} objects: {:?}",
        installed.len(),
        installed.iter().map(kind_name).collect::<Vec<_>>()
    );
    for o in &installed {
        assert!(get(&client, o).await.is_some(), "{} is not in the API server", kind_name(o));
    }
    // Helm installed the CRDs from the chart: a policy is accepted.
    plane.apply_manifests(&repo_root().join("deploy/examples/tieringpolicy.yaml")).await.unwrap();

    let upgrade = [
        "upgrade",
        "pytier",
        CHART,
        "-n",
        "pytier-system",
        "--set",
        ALL_MONITORING,
        "--set",
        "operator.replicas=3,nodeAgent.memoryNodes=false,dashboards.folder=Tiering",
    ];
    helm_ok(&upgrade, kubeconfig);
    let upgraded = objects(&helm_ok(&["get", "manifest", "pytier", "-n", "pytier-system"], kubeconfig));
    let live = |kind_and_name: &str| {
        let o = upgraded.iter().find(|o| kind_name(o) == kind_and_name).unwrap().clone();
        let client = client.clone();
        async move { get(&client, &o).await.unwrap().data }
    };
    assert_eq!(live("Deployment/pytier-operator").await["spec"]["replicas"], 3);
    let agent = live("DaemonSet/pytier-node-agent").await;
    assert!(agent["spec"]["template"]["spec"]["containers"][0]["args"].to_string().contains("--no-memory-nodes"));
    let dashboard = upgraded.iter().find(|o| kind_name(o) == "ConfigMap/pytier-dashboard-overview").unwrap();
    let dashboard = get(&client, dashboard).await.unwrap();
    assert_eq!(dashboard.annotations()["grafana_folder"], "Tiering");

    helm_ok(&["uninstall", "pytier", "-n", "pytier-system"], kubeconfig);
    for o in installed.iter().chain(&upgraded) {
        let what = format!("{} deleted", kind_name(o));
        eventually(&what, Duration::from_secs(30), || async {
            if get(&client, o).await.is_none() { Ok(()) } else { Err("still there".to_string()) }
        })
        .await;
    }
    // Helm never deletes CRDs (nor, with them, anyone's policies).
    let crds = Api::<k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition>::all(
        client.clone(),
    );
    assert!(crds.get_opt("tieringpolicies.pytier.dev").await.unwrap().is_some());
}
