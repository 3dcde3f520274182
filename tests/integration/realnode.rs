//! A real node: the upstream kubelet with containerd and runc running real
//! pods on this machine, registered with the test control plane. Pods start
//! from images made without a registry; the webhook's injection, the
//! kubelet's cgroups and volumes, and the node agent meet here as they do on a
//! cluster. Run by tests/run with `cargo test -p pytier-tests --test realnode`.
//!
//! One node at a time (its cgroups, bridge and host paths are fixed), so the
//! tests take turns.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, ResourceExt};
use pytier_contract::protocol::{Answer, Request};
use pytier_crds::TieringPolicy;
use pytier_crds::node::PodState;
use pytier_tests::agent::{NodeAgent, NodeDirs};
use pytier_tests::operator::{Operator, eventually, install_rbac, install_webhook};
use pytier_tests::realnode::{RealNode, leftovers, python_image};
use pytier_tests::{ControlPlane, repo_root};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(90);

static ONE_NODE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn python_pod(name: &str, code: &str, labels: serde_json::Value, annotations: serde_json::Value) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": labels, "annotations": annotations},
        "spec": {
            "containers": [{
                "name": "app",
                "image": python_image("bookworm"),
                "imagePullPolicy": "Never",
                "args": ["-c", code],
            }],
            "terminationGracePeriodSeconds": 1,
        },
    }))
    .unwrap()
}

/// Drops the node and checks that nothing of it is left on the machine.
fn tear_down(node: RealNode) {
    let dir = node.dir().to_path_buf();
    drop(node);
    let left = leftovers(&dir);
    assert!(left.is_empty(), "the real node left behind: {left:#?}");
}

#[tokio::test]
async fn a_python_pod_runs_and_its_logs_exec_and_cgroups_are_reachable() {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let mut plane = ControlPlane::start().await.unwrap();
    let node = RealNode::start(&mut plane).await.unwrap();

    let code = "import sys, time; print('hello from', sys.version.split()[0], flush=True); time.sleep(3600)";
    let pod = node.run_pod(&python_pod("hello", code, json!({}), json!({}))).await.unwrap();
    assert_eq!(pod.spec.as_ref().unwrap().node_name.as_deref(), Some(node.name.as_str()), "scheduled onto the node");

    let log = node.wait_log("default", "hello", "app", "hello from 3.").await.unwrap();
    assert!(log.starts_with("hello from 3.11"), "{log}");
    let out = node.exec("default", "hello", "app", &["python3", "-c", "print(6 * 7)"]).await.unwrap();
    assert_eq!(out.trim(), "42");
    assert!(node.exec("default", "hello", "app", &["python3", "-c", "raise SystemExit(3)"]).await.is_err());

    // The container's cgroups as the kubelet made them (cgroupfs driver, v1:
    // the same path in every hierarchy), and the Python process in them.
    let container = node.container_cgroups(&pod, "app").unwrap();
    let uid = pod.uid().unwrap();
    assert!(container.cgroups.len() >= 4, "{container:?}");
    for cgroup in &container.cgroups {
        let rel = cgroup.to_string_lossy().split_once("/kubepods/").unwrap().1.to_string();
        assert_eq!(rel, format!("besteffort/pod{uid}/{}", container.id), "{}", cgroup.display());
    }
    let python: Vec<_> = container
        .pids
        .iter()
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default().starts_with(b"python3"))
        .collect();
    assert_eq!(python.len(), 1, "one python3 in {container:?}");
    let proc_cgroup = std::fs::read_to_string(format!("/proc/{}/cgroup", python[0])).unwrap();
    assert!(proc_cgroup.contains(&format!("cpuset:/kubepods/besteffort/pod{uid}/{}", container.id)), "{proc_cgroup}");

    tear_down(node);
}

#[tokio::test]
async fn deployments_and_daemonsets_get_running_pods_on_the_node() {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let mut plane = ControlPlane::start().await.unwrap();
    let node = RealNode::start(&mut plane).await.unwrap();
    let c = plane.client();

    let template = |app: &str| {
        json!({
            "selector": {"matchLabels": {"app": app}},
            "template": {
                "metadata": {"labels": {"app": app}},
                "spec": {
                    "containers": [{"name": "app", "image": python_image("bookworm"), "imagePullPolicy": "Never",
                                    "args": ["-c", "import time; print('up', flush=True); time.sleep(3600)"]}],
                    "terminationGracePeriodSeconds": 1,
                },
            },
        })
    };
    let mut deployment = template("deployed");
    deployment["replicas"] = json!(2);
    let deployment: Deployment =
        serde_json::from_value(json!({"metadata": {"name": "deployed"}, "spec": deployment})).unwrap();
    Api::<Deployment>::namespaced(c.clone(), "default").create(&PostParams::default(), &deployment).await.unwrap();
    let daemonset: DaemonSet =
        serde_json::from_value(json!({"metadata": {"name": "everywhere"}, "spec": template("everywhere")})).unwrap();
    Api::<DaemonSet>::namespaced(c.clone(), "default").create(&PostParams::default(), &daemonset).await.unwrap();

    for (app, want) in [("deployed", 2), ("everywhere", 1)] {
        let names = eventually(&format!("{want} pods of {app}"), WAIT, || async {
            let pods = Api::<Pod>::namespaced(c.clone(), "default")
                .list(&ListParams::default().labels(&format!("app={app}")))
                .await
                .map_err(|e| e.to_string())?;
            let names: Vec<String> = pods.items.iter().map(|p| p.name_any()).collect();
            if names.len() == want { Ok(names) } else { Err(format!("{names:?}")) }
        })
        .await;
        for name in names {
            let pod = node.wait_running("default", &name).await.unwrap();
            assert_eq!(pod.spec.unwrap().node_name.as_deref(), Some(node.name.as_str()));
            node.wait_log("default", &name, "app", "up").await.unwrap();
        }
    }
    tear_down(node);
}

/// What a Python in an injected pod prints about pytier.
const REPORT: &str = r#"
import os, sys, time
try:
    import pytier
    print("pytier", pytier.status()[0], pytier.__file__, flush=True)
except ImportError as e:
    shim = os.listdir("/opt/pytier/shim") if os.path.isdir("/opt/pytier/shim") else "not mounted"
    print("pytier missing:", e, "; shim:", shim, flush=True)
print("PYTHONPATH", os.environ.get("PYTHONPATH"), flush=True)
time.sleep(3600)
"#;

/// The control plane, a real node, and the operator serving the webhook with
/// the shim at `<node dir>/shim` (where the agent, or the test, puts it).
async fn cluster_with_webhook() -> (ControlPlane, RealNode, Operator, NodeDirs) {
    let mut plane = ControlPlane::start().await.unwrap();
    let node = RealNode::start(&mut plane).await.unwrap();
    let dirs = NodeDirs { shim_host: node.dir().join("shim"), kubelet_pods: node.kubelet_root().join("pods") };
    std::fs::create_dir_all(&dirs.shim_host).unwrap();
    let kubeconfig = install_rbac(&plane).await.unwrap();
    let shim_path = dirs.shim_host.display().to_string();
    // The API server calls the webhook at its loopback address (no Service
    // network here), so the serving certificate names that address.
    let args = ["--shim-host-path", &shim_path, "--webhook-dns-names", "127.0.0.1"];
    let mut operator = Operator::start_with(&plane, &kubeconfig, "op", &args).unwrap();
    operator.wait_ready().unwrap();
    install_webhook(&plane, &operator).await.unwrap();
    (plane, node, operator, dirs)
}

#[tokio::test]
async fn the_webhook_injects_pytier_into_a_real_pod() {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let (_plane, node, _operator, dirs) = cluster_with_webhook().await;
    let inject = json!({"pytier.dev/inject": "true"});

    // The shim directory is still empty: the pod runs all the same, untiered.
    let pod = node.run_pod(&python_pod("early", REPORT, json!({}), inject.clone())).await.unwrap();
    assert!(pod.annotations().contains_key("pytier.dev/injected"), "mutated: {:?}", pod.annotations());
    let log = node.wait_log("default", "early", "app", "PYTHONPATH").await.unwrap();
    assert!(log.contains("pytier missing: No module named 'pytier' ; shim: []"), "{log}");

    // The shim installed as the agent installs it (its own command): a pod
    // started now has pytier active, from the shim's current version.
    let out = Command::new(pytier_tests::agent::binary().unwrap())
        .args(["install-shim", "--shim-host-dir"])
        .arg(&dirs.shim_host)
        .env("PYTIER_SHIM", std::env::var("PYTIER_SHIM").expect("PYTIER_SHIM names the built shim"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    node.run_pod(&python_pod("late", REPORT, json!({}), inject)).await.unwrap();
    let log = node.wait_log("default", "late", "app", "PYTHONPATH").await.unwrap();
    assert!(log.contains("pytier True /opt/pytier/shim/versions/"), "{log}");
    assert!(log.contains("PYTHONPATH /opt/pytier/shim/current"), "{log}");

    // A pod without the annotation is left alone.
    let pod = node.run_pod(&python_pod("plain", REPORT, json!({}), json!({}))).await.unwrap();
    assert!(!pod.annotations().contains_key("pytier.dev/injected"));
    let log = node.wait_log("default", "plain", "app", "PYTHONPATH").await.unwrap();
    assert!(log.contains("shim: not mounted") && log.contains("PYTHONPATH None"), "{log}");

    drop(_operator);
    tear_down(node);
}

/// The interposer's settings, read over its socket in the pod's emptyDir.
fn interposer_settings(socket: &Path) -> Result<pytier_contract::Settings, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = pytier_tests::connect_unix(socket).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(format!("{}\n", Request::Settings.to_line()).as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| e.to_string())?;
    match Answer::parse(line.as_bytes())? {
        Answer::Config(settings) => Ok(settings),
        other => Err(format!("{other:?}")),
    }
}

fn sockets_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect()
}

#[tokio::test]
async fn the_agent_tiers_a_pod_the_kubelet_started() {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let (plane, node, _operator, dirs) = cluster_with_webhook().await;
    let c: Client = plane.client();
    plane.apply_manifests(&repo_root().join("deploy/node-agent/rbac.yaml")).await.unwrap();
    let agent_kubeconfig = plane.kubeconfig_as_service_account("pytier-system", "pytier-node-agent").unwrap();
    let mut agent = NodeAgent::start(&plane, &agent_kubeconfig, &node.name, &dirs, &[]).unwrap();
    agent.wait_ready().unwrap();

    let policy: TieringPolicy = serde_json::from_value(json!({
        "metadata": {"name": "web", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "tracking": {"hotThreshold": 2.5}},
    }))
    .unwrap();
    Api::<TieringPolicy>::namespaced(c.clone(), "default").create(&PostParams::default(), &policy).await.unwrap();
    let pod = python_pod("web-0", REPORT, json!({"app": "web"}), json!({"pytier.dev/inject": "true"}));
    let pod = node.run_pod(&pod).await.unwrap();
    let log = node.wait_log("default", "web-0", "app", "PYTHONPATH").await.unwrap();
    assert!(log.contains("pytier True"), "{log}");

    // The socket in the emptyDir the webhook added, as the kubelet made it;
    // the agent configured the interposer behind it with the policy.
    let uid = pod.uid().unwrap();
    let run_dir = dirs.kubelet_pods.join(&uid).join("volumes/kubernetes.io~empty-dir/pytier-run");
    let socket = eventually("the interposer's socket in the pod's emptyDir", WAIT, || async {
        sockets_in(&run_dir).pop().ok_or(format!("nothing in {}", run_dir.display()))
    })
    .await;
    assert!(socket.file_name().unwrap().to_string_lossy().starts_with("app."), "{}", socket.display());
    eventually("the policy's threshold in the interposer", WAIT, || async {
        let t = interposer_settings(&socket)?.tracking.hot_threshold;
        if t == 2.5 { Ok(()) } else { Err(format!("hotThreshold {t}")) }
    })
    .await;

    // Status and metrics come back for the kubelet-made pod, and the policy
    // counts it.
    let tiering_nodes: Api<pytier_crds::TieringNode> = Api::all(c.clone());
    eventually("web-0 Managed in the TieringNode status", WAIT, || async {
        let tn = tiering_nodes.get(&node.name).await.map_err(|e| e.to_string())?;
        let pods = tn.status.map(|s| s.pods).unwrap_or_default();
        match pods.iter().find(|p| p.name == "web-0") {
            Some(p) if p.state == PodState::Managed && p.processes == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    wait_web_policy_ready(&c).await;
    let metrics = agent.get("/metrics").unwrap();
    let series = format!(
        r#"pytier_pod_state{{node="{}",namespace="default",pod="web-0",policy="web",state="Managed"}} 1"#,
        node.name
    );
    assert!(metrics.contains(&series), "{series} not in\n{metrics}");

    drop(agent);
    drop(_operator);
    tear_down(node);
}

/// pytier's own images (deploy/images.sh, no Docker engine) run on the real
/// node with the chart's security settings: the operator as non-root on a
/// read-only root file system, the node agent on one too.
#[tokio::test]
async fn the_operator_and_node_agent_images_run_on_the_node() {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let mut plane = ControlPlane::start().await.unwrap();
    let node = RealNode::start(&mut plane).await.unwrap();
    let pods = Api::<Pod>::namespaced(node.client(), "default");
    let version = env!("CARGO_PKG_VERSION");
    let one_shot = |name: &str, image: &str, args: serde_json::Value, security: serde_json::Value| -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {
                "containers": [{"name": name, "image": format!("docker.io/pytier/{image}:{version}"),
                                "imagePullPolicy": "Never", "args": args, "securityContext": security}],
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 1,
            },
        }))
        .unwrap()
    };
    let non_root = json!({"runAsNonRoot": true, "readOnlyRootFilesystem": true, "allowPrivilegeEscalation": false,
                          "capabilities": {"drop": ["ALL"]}});
    pods.create(&PostParams::default(), &one_shot("operator", "operator", json!(["crds"]), non_root)).await.unwrap();
    let log = node.wait_log("default", "operator", "operator", "name: tieringnodes.pytier.dev").await.unwrap();
    assert!(log.contains("kind: CustomResourceDefinition"), "{log}");

    // The agent reads the node's NUMA nodes through the container's sysfs.
    let agent_security = json!({"readOnlyRootFilesystem": true, "capabilities": {"drop": ["ALL"]}});
    pods.create(
        &PostParams::default(),
        &one_shot("agent", "node-agent", json!(["topology", "--json"]), agent_security),
    )
    .await
    .unwrap();
    let log = node.wait_log("default", "agent", "agent", "\"tier\"").await.unwrap();
    assert!(log.contains("\"capacityBytes\""), "{log}");
    tear_down(node);
}

/// The user's path, on the real node: the chart installed with pytier's own
/// images (operator Deployment, agent DaemonSet, monitors), the example
/// policy and the sample Deployment applied as they are (but for the image:
/// no registry here). The pod comes up injected, its Python has pytier
/// active, the agent reports it in the TieringNode status, the policy turns
/// Ready, and a real Prometheus scraping what the chart's monitors select has
/// the pod's series and data for the pod dashboard's panels.
///
/// What the harness cannot give pods is bridged by values a user could set
/// too: no kube-proxy routes the API server's ClusterIP, so the operator and
/// agent run in the host's network (`hostNetwork`) and are pointed at the
/// API server on loopback (`extraEnv`); one operator replica (two would
/// share the node's ports).
#[tokio::test]
async fn the_chart_installed_on_the_node_tiers_the_sample_deployment() {
    let _turn = ONE_NODE_AT_A_TIME.lock().await;
    let mut plane = ControlPlane::start_for_cluster_pods().await.unwrap();
    plane.apply_crds(&pytier_tests::chart::monitoring_crds()).await.unwrap();
    let node = RealNode::start(&mut plane).await.unwrap();
    let c = plane.client();

    let api_server = json!([
        {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
        {"name": "KUBERNETES_SERVICE_PORT", "value": plane.port().to_string()},
    ]);
    let values = json!({
        "operator": {"image": {"repository": "docker.io/pytier/operator", "pullPolicy": "Never"}, "replicas": 1,
                     "hostNetwork": true, "extraEnv": api_server},
        "nodeAgent": {"image": {"repository": "docker.io/pytier/node-agent", "pullPolicy": "Never"},
                      "hostNetwork": true, "extraEnv": api_server,
                      "kubeletRoot": node.kubelet_root(), "shimHostPath": node.dir().join("shim")},
        "metrics": {"podMonitor": {"enabled": true}, "serviceMonitor": {"enabled": true},
                    "prometheusRule": {"enabled": true}},
    });
    let values_file = node.dir().join("values.json");
    std::fs::write(&values_file, values.to_string()).unwrap();
    let kubeconfig = Some(plane.kubeconfig());
    pytier_tests::chart::helm_ok(
        &[
            "install",
            "pytier",
            pytier_tests::chart::CHART,
            "-n",
            "pytier-system",
            "--create-namespace",
            "-f",
            values_file.to_str().unwrap(),
        ],
        kubeconfig,
    );
    let system = Api::<Pod>::namespaced(c.clone(), "pytier-system");
    for app in ["pytier-operator", "pytier-node-agent"] {
        eventually(&format!("{app} Ready"), WAIT, || async {
            let pods = system
                .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={app}")))
                .await
                .map_err(|e| e.to_string())?;
            let ready = pods.items.iter().any(|p| {
                p.status
                    .iter()
                    .flat_map(|s| s.conditions.iter().flatten())
                    .any(|c| c.type_ == "Ready" && c.status == "True")
            });
            if ready { Ok(()) } else { Err(format!("{:?}", pods.items.iter().map(|p| &p.status).collect::<Vec<_>>())) }
        })
        .await;
    }

    plane.apply_manifests(&repo_root().join("deploy/examples/tieringpolicy.yaml")).await.unwrap();
    let mut web: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(repo_root().join("deploy/examples/web.yaml")).unwrap())
            .unwrap();
    let container = &mut web["spec"]["template"]["spec"]["containers"][0];
    container["image"] = json!(python_image("bookworm"));
    container["imagePullPolicy"] = json!("Never");
    let web: Deployment = serde_json::from_value(web).unwrap();
    Api::<Deployment>::namespaced(c.clone(), "default").create(&PostParams::default(), &web).await.unwrap();

    let pods = Api::<Pod>::namespaced(c.clone(), "default");
    let pod = eventually("the sample Deployment's pod Running", WAIT, || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.map_err(|e| e.to_string())?;
        let running =
            list.items.into_iter().find(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"));
        running.ok_or_else(|| "not Running yet".to_string())
    })
    .await;
    let name = pod.name_any();
    assert!(pod.annotations().contains_key("pytier.dev/injected"), "the webhook injected it: {:?}", pod.metadata);
    let stats = eventually("pytier active in the pod's Python", WAIT, || async {
        let out = node
            .exec("default", &name, "app", &["python3", "-m", "pytier", "stats", "1"])
            .await
            .map_err(|e| e.to_string())?;
        if out.contains("active: True") { Ok(out) } else { Err(out) }
    })
    .await;
    assert!(stats.starts_with("python 3.11"), "{stats}");

    let tiering_nodes: Api<pytier_crds::TieringNode> = Api::all(c.clone());
    eventually("the pod Managed in the TieringNode status", WAIT, || async {
        let tn = tiering_nodes.get(&node.name).await.map_err(|e| e.to_string())?;
        let status = tn.status.unwrap_or_default();
        match status.pods.iter().find(|p| p.name == name) {
            Some(p) if p.state == PodState::Managed => Ok(()),
            other => Err(format!("{other:?} {:?}", status.conditions)),
        }
    })
    .await;
    wait_web_policy_ready(&c).await;

    // Prometheus scrapes what the chart's monitors select, under the job
    // names the Prometheus Operator would give them.
    let agent_ip = pod_ips(&system, "app.kubernetes.io/name=pytier-node-agent").await;
    let operator_ip = pod_ips(&system, "app.kubernetes.io/name=pytier-operator").await;
    let agent_target = format!("{}:9478", agent_ip[0]);
    let operator_target = format!("{}:8080", operator_ip[0]);
    let prometheus = pytier_tests::prometheus::Prometheus::start(
        &plane,
        &[("pytier-system/pytier-node-agent", &[&agent_target]), ("pytier-operator", &[&operator_target])],
        &[],
    )
    .unwrap();
    let selector = format!(r#"namespace="default",pod="{name}""#);
    eventually("the pod's series in Prometheus", WAIT, || async {
        let r = prometheus
            .query(&format!(r#"pytier_pod_state{{{selector},state="Managed"}} == 1"#))
            .map_err(|e| e.to_string())?;
        if r.is_empty() { Err("no data".into()) } else { Ok(()) }
    })
    .await;
    for (dashboard, panel, expr) in pytier_tests::prometheus::dashboard_queries() {
        if dashboard != "pytier: pod" {
            continue;
        }
        let expr = expr.replace("$namespace", "default").replace("$pod", &name).replace("$__rate_interval", "30s");
        let result = eventually(&format!("{panel}: {expr}"), WAIT, || async {
            let r = prometheus.query(&expr).map_err(|e| format!("invalid: {e}"))?;
            if r.is_empty() && panel != "Migration failures" { Err("no data".into()) } else { Ok(r) }
        })
        .await;
        let values: Vec<String> = result.iter().map(|r| format!("{} {}", r["metric"], r["value"][1])).collect();
        eprintln!("{panel}: {expr}\n    {}", values.join("\n    "));
    }
    drop(prometheus);
    pytier_tests::chart::helm_ok(&["uninstall", "pytier", "-n", "pytier-system", "--wait"], kubeconfig);
    tear_down(node);
}

/// Waits until the policy `default/web` is Ready with one injected pod.
async fn wait_web_policy_ready(c: &Client) {
    eventually("the policy Ready with one injected pod", WAIT, || async {
        let p = Api::<TieringPolicy>::namespaced(c.clone(), "default").get("web").await.map_err(|e| e.to_string())?;
        let s = p.status.unwrap_or_default();
        let ready = s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if ready && s.injected_pods == 1 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;
}

/// The IPs of the running pods matching `labels`.
async fn pod_ips(pods: &Api<Pod>, labels: &str) -> Vec<String> {
    let list = pods.list(&ListParams::default().labels(labels)).await.unwrap();
    list.items.iter().filter_map(|p| p.status.as_ref()?.pod_ip.clone()).collect()
}
