//! The node agent as its real binary, under the RBAC of `deploy/node-agent`,
//! against the real control plane and the real operator, tiering real
//! `python3` processes in real cgroups of the kubelet's shapes: the whole
//! chain from a TieringPolicy to the interposer's own config and back to the
//! policy's status and the agent's metrics.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use pytier_contract::Settings;
use pytier_contract::protocol::{Answer, Request};
use pytier_contract::stats::Stats;
use pytier_crds::node::{PodState, PodTiering, PolicyGeneration, TieringNodeSpec};
use pytier_crds::{TieringNode, TieringPolicy};
use pytier_tests::agent::{Driver, FakePod, NodeAgent, NodeDirs, PodProcess, SERVICE};
use pytier_tests::operator::{Operator, eventually, install_rbac, install_webhook};
use pytier_tests::prometheus::Prometheus;
use pytier_tests::{ControlPlane, repo_root};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

/// The control plane, the operator under its RBAC, and the agent's RBAC.
async fn cluster() -> (ControlPlane, Operator, std::path::PathBuf) {
    let plane = ControlPlane::start().await.unwrap();
    let kubeconfig = install_rbac(&plane).await.unwrap();
    // The API server reaches its webhook (where a test installs it) at 127.0.0.1.
    let mut operator = Operator::start_with(&plane, &kubeconfig, "op", &["--webhook-dns-names", "127.0.0.1"]).unwrap();
    operator.wait_ready().unwrap();
    plane.apply_manifests(&repo_root().join("deploy/node-agent/rbac.yaml")).await.unwrap();
    let agent_kubeconfig = plane.kubeconfig_as_service_account("pytier-system", "pytier-node-agent").unwrap();
    (plane, operator, agent_kubeconfig)
}

async fn node(c: &Client, name: &str) {
    let node: Node = serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    Api::<Node>::all(c.clone()).create(&PostParams::default(), &node).await.unwrap();
}

async fn policy(c: &Client, name: &str, spec: serde_json::Value) {
    let policy: TieringPolicy =
        serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap();
    Api::<TieringPolicy>::namespaced(c.clone(), "default").create(&PostParams::default(), &policy).await.unwrap();
}

/// A pod bound to `node` (no scheduler here), labelled `app: web`; its uid.
async fn pod(c: &Client, name: &str, node: &str) -> String {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"app": "web"}},
        "spec": {"nodeName": node, "containers": [{"name": "app", "image": "python:3.11"}]},
    }))
    .unwrap();
    Api::<Pod>::namespaced(c.clone(), "default").create(&PostParams::default(), &pod).await.unwrap().uid().unwrap()
}

/// One request to an interposer's socket, as any client would send it.
fn ask(socket: &Path, request: Request) -> Result<Answer, String> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = pytier_tests::connect_unix(socket).map_err(|e| e.to_string())?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    stream.write_all(format!("{}\n", request.to_line()).as_bytes()).map_err(|e| e.to_string())?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).map_err(|e| e.to_string())?;
    Answer::parse(line.as_bytes())
}

fn stats(socket: &Path) -> Result<Stats, String> {
    match ask(socket, Request::Stats)? {
        Answer::Stats(stats) => Ok(*stats),
        other => Err(format!("{other:?}")),
    }
}

/// The interposer's own settings, read over its socket.
fn interposer_config(socket: &Path) -> Result<Settings, String> {
    stats(socket)?.config.ok_or_else(|| "no config in stats".into())
}

async fn node_status(c: &Client, name: &str) -> Result<pytier_crds::TieringNodeStatus, String> {
    let tn = Api::<TieringNode>::all(c.clone()).get(name).await.map_err(|e| e.to_string())?;
    tn.status.ok_or_else(|| "no status yet".into())
}

async fn wait_state(c: &Client, node: &str, pod: &str, state: PodState) -> pytier_crds::node::PodStatus {
    eventually(&format!("{pod} {state:?} in the TieringNode status"), WAIT, || async {
        let status = node_status(c, node).await?;
        let p = status.pods.iter().find(|p| p.name == pod).ok_or(format!("{pod} not in {status:?}"))?;
        if p.state == state { Ok(p.clone()) } else { Err(format!("{p:?}")) }
    })
    .await
}

#[tokio::test]
async fn a_policy_reaches_the_interposer_and_its_status_comes_back() {
    let (plane, _operator, agent_kubeconfig) = cluster().await;
    let c = plane.client();
    node(&c, "n1").await;
    let spec = json!({
        "podSelector": {"matchLabels": {"app": "web"}},
        "tracking": {"hotThreshold": 2.5, "scanIntervalMillis": 50, "maxCpuFraction": 0.2},
        "dramBudget": {"bytes": 1048576},
    });
    policy(&c, "web", spec).await;
    let uid = pod(&c, "web-0", "n1").await;

    let dirs = NodeDirs::new(&plane, "n1").unwrap();
    let mut agent = NodeAgent::start(&plane, &agent_kubeconfig, "n1", &dirs, &[]).unwrap();
    agent.wait_ready().unwrap();
    assert!(dirs.shim_entry().join("pytier/_native.so").is_file(), "the agent installed the shim");

    let fake = FakePod::new(&dirs, &uid, "app", Driver::Systemd).unwrap();
    let mut app = fake.spawn(&["python3", "-c", SERVICE], &[]).unwrap();
    let ready = app.line().unwrap();
    assert!(ready.ends_with(" True"), "pytier active in the pod's Python: {ready}");
    let pid: u32 = ready.split(' ').nth(1).unwrap().parse().unwrap();
    let socket = fake.socket_dir.join(format!("app.{pid}.sock"));

    // The agent configured the interposer with the policy's values, and the
    // tiers it discovered (this machine: node 0 is DRAM).
    let config = eventually("the policy's settings in the interposer", WAIT, || async {
        let config = interposer_config(&socket)?;
        if config.tracking.hot_threshold == 2.5 { Ok(config) } else { Err(format!("{config:?}")) }
    })
    .await;
    assert_eq!(config.dram_budget.bytes, Some(1 << 20));
    assert_eq!(config.tracking.scan_interval_millis, 50);
    assert!(config.tiers.dram_nodes.as_ref().is_some_and(|n| n.contains(&0)), "{:?}", config.tiers);

    // Status: the pod is managed, with bytes per class; the policy is Ready.
    let status = wait_state(&c, "n1", "web-0", PodState::Managed).await;
    assert_eq!(status.processes, 1);
    let numa = node_status(&c, "n1").await.unwrap().numa_nodes;
    assert!(numa.iter().any(|n| n.id == 0 && n.capacity_bytes > 0), "{numa:?}");
    let with_bytes = eventually("bytes per class in the status", WAIT, || async {
        let s = wait_state(&c, "n1", "web-0", PodState::Managed).await;
        if s.hot_bytes + s.warm_bytes + s.cold_bytes > 1 << 20 { Ok(s) } else { Err(format!("{s:?}")) }
    })
    .await;
    assert!(with_bytes.dram_bytes > 0, "{with_bytes:?}");
    let policies: Api<TieringPolicy> = Api::namespaced(c.clone(), "default");
    eventually("the policy Ready with one injected pod", WAIT, || async {
        let p = policies.get("web").await.map_err(|e| e.to_string())?;
        let s = p.status.clone().unwrap_or_default();
        let ready = s.conditions.iter().any(|c| c.type_ == "Ready" && c.status == "True");
        if ready && s.injected_pods == 1 { Ok(()) } else { Err(format!("{s:?}")) }
    })
    .await;

    // Metrics: the documented series with the documented labels.
    let labels = r#"node="n1",namespace="default",pod="web-0",container="app""#;
    let metrics = agent.get("/metrics").unwrap();
    for series in [
        format!(r#"pytier_memory_bytes{{{labels},tier="dram"}}"#),
        format!(r#"pytier_object_bytes{{{labels},class="cold"}}"#),
        format!(r#"pytier_object_temperature_bucket{{le="+Inf",{labels}}}"#),
        format!(r#"pytier_scan_cpu_seconds_total{{{labels}}}"#),
        r#"pytier_pod_state{node="n1",namespace="default",pod="web-0",policy="web",state="Managed"} 1"#.to_string(),
        r#"pytier_numa_node_capacity_bytes{node="n1",numa_node="0",tier="dram"}"#.to_string(),
    ] {
        assert!(metrics.contains(&series), "{series} not in\n{metrics}");
    }

    // An edit of the policy reaches the interposer from the policy itself:
    // the TieringNode's spec is not rewritten, its status names the
    // generation in use.
    let nodes: Api<TieringNode> = Api::all(c.clone());
    let spec_generation = nodes.get("n1").await.unwrap().metadata.generation;
    let patch = Patch::Merge(json!({"spec": {"tracking": {"hotThreshold": 4.0}}}));
    let edited = policies.patch("web", &PatchParams::default(), &patch).await.unwrap().metadata.generation.unwrap();
    eventually("the edited threshold in the interposer", WAIT, || async {
        let t = interposer_config(&socket)?.tracking.hot_threshold;
        if t == 4.0 { Ok(()) } else { Err(format!("hotThreshold {t}")) }
    })
    .await;
    eventually("the edited generation in the TieringNode's status", WAIT, || async {
        let in_use = node_status(&c, "n1").await?.policies;
        let want = PolicyGeneration { namespace: "default".into(), name: "web".into(), generation: edited };
        if in_use == [want] { Ok(()) } else { Err(format!("{in_use:?}")) }
    })
    .await;
    assert_eq!(nodes.get("n1").await.unwrap().metadata.generation, spec_generation, "no TieringNode write");

    // A deleted pod leaves the status and the metrics.
    Api::<Pod>::namespaced(c.clone(), "default")
        .delete("web-0", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    eventually("web-0 gone from the status and the metrics", WAIT, || async {
        let status = node_status(&c, "n1").await?;
        let metrics = agent.get("/metrics").map_err(|e| e.to_string())?;
        if status.pods.is_empty() && !metrics.contains("pod=\"web-0\"") { Ok(()) } else { Err(format!("{status:?}")) }
    })
    .await;

    let (out, exit) = app.finish().unwrap();
    assert!(exit.success() && out.contains("intact 20000"), "{out}");
}

/// A service the agent tiers, its pod admitted through the operator's
/// webhook, scraped by a real Prometheus under the job names the chart's
/// monitors give (`pytier-system/pytier-node-agent`, `pytier-operator`),
/// which also evaluates the chart's alerts. Fields drop in order.
struct Scraped {
    prometheus: Prometheus,
    app: PodProcess,
    _fake: FakePod,
    agent: NodeAgent,
    _operator: Operator,
    _plane: ControlPlane,
}

async fn scraped_service() -> Scraped {
    let (plane, operator, agent_kubeconfig) = cluster().await;
    install_webhook(&plane, &operator).await.unwrap();
    let c = plane.client();
    // The API server calls the webhook once it has read the new caBundle:
    // admit unlabelled pods until one reaches the operator.
    let mut attempt = 0;
    eventually("the webhook called by the API server", WAIT, || {
        attempt += 1;
        let (pods, metrics) = (Api::<Pod>::namespaced(c.clone(), "default"), operator.get("/metrics"));
        async move {
            if metrics.map_err(|e| e.to_string())?.contains("pytier_operator_webhook_requests_total{") {
                return Ok(());
            }
            let pod = serde_json::from_value(json!({
                "metadata": {"name": format!("probe-{attempt}")},
                "spec": {"containers": [{"name": "app", "image": "python:3.11"}]},
            }))
            .unwrap();
            pods.create(&PostParams::default(), &pod).await.map_err(|e| e.to_string())?;
            Err("not called yet".into())
        }
    })
    .await;
    node(&c, "n1").await;
    policy(&c, "web", json!({"podSelector": {"matchLabels": {"app": "web"}}, "tracking": {"maxCpuFraction": 0.2}}))
        .await;
    let uid = pod(&c, "web-0", "n1").await;
    let dirs = NodeDirs::new(&plane, "n1").unwrap();
    let mut agent = NodeAgent::start(&plane, &agent_kubeconfig, "n1", &dirs, &[]).unwrap();
    agent.wait_ready().unwrap();
    let fake = FakePod::new(&dirs, &uid, "app", Driver::Cgroupfs).unwrap();
    let mut app = fake.spawn(&["python3", "-c", SERVICE], &[]).unwrap();
    assert!(app.line().unwrap().ends_with(" True"));
    wait_state(&c, "n1", "web-0", PodState::Managed).await;
    eventually("a completed scan in the metrics", WAIT, || async {
        let m = agent.get("/metrics").map_err(|e| e.to_string())?;
        if m.contains(r#"pytier_object_temperature_count{node="n1",namespace="default",pod="web-0",container="app"} 0"#)
            || !m.contains("pytier_object_temperature_count{")
        {
            Err("no scan yet".into())
        } else {
            Ok(())
        }
    })
    .await;
    let rules = plane.data_dir().join("pytier-rules.yaml");
    std::fs::write(&rules, chart_rules()).unwrap();
    let prometheus = Prometheus::start(
        &plane,
        &[("pytier-system/pytier-node-agent", &[&agent.metrics_addr]), ("pytier-operator", &[&operator.metrics_addr])],
        &[&rules],
    )
    .unwrap();
    Scraped { prometheus, app, _fake: fake, agent, _operator: operator, _plane: plane }
}

/// The chart's alert groups (from the PrometheusRule rendered into
/// `deploy/monitoring`, which tests/run checks is fresh) as a rule file.
fn chart_rules() -> String {
    let path = repo_root().join("deploy/monitoring/prometheusrule.yaml");
    let rule: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    serde_json::to_string(&rule["spec"]).unwrap()
}

/// The real Prometheus scrapes the agent: the output passes `promtool check
/// metrics`, and every documented series has data with the documented labels.
#[tokio::test]
async fn prometheus_scrapes_the_documented_series() {
    let s = scraped_service().await;
    let prometheus = &s.prometheus;
    let problems = pytier_tests::prometheus::promtool_check(&s.agent.get("/metrics").unwrap()).unwrap();
    assert!(problems.is_empty(), "promtool check metrics: {problems}");
    let documented = [
        ("pytier_memory_bytes", &["node", "namespace", "pod", "container", "tier"][..]),
        ("pytier_dram_budget_bytes", &["node", "namespace", "pod", "container"]),
        ("pytier_dram_heat_share", &["node", "namespace", "pod", "container"]),
        ("pytier_type_bytes", &["node", "namespace", "pod", "container", "type", "class"]),
        ("pytier_objects", &["node", "namespace", "pod", "container", "class"]),
        ("pytier_object_bytes", &["node", "namespace", "pod", "container", "class"]),
        ("pytier_object_temperature_bucket", &["node", "namespace", "pod", "container", "le"]),
        ("pytier_migrated_pages_total", &["node", "namespace", "pod", "container", "direction"]),
        ("pytier_migrated_bytes_total", &["node", "namespace", "pod", "container", "direction"]),
        ("pytier_scan_cpu_seconds_total", &["node", "namespace", "pod", "container"]),
        ("pytier_scan_cpu_budget", &["node", "namespace", "pod", "container"]),
        ("pytier_gil_seconds_total", &["node", "namespace", "pod", "container"]),
        ("pytier_interposers", &["node", "namespace", "pod", "container"]),
        ("pytier_pod_state", &["node", "namespace", "pod", "policy", "state"]),
        ("pytier_numa_node_capacity_bytes", &["node", "numa_node", "tier"]),
        ("pytier_numa_node_free_bytes", &["node", "numa_node", "tier"]),
    ];
    for (name, labels) in documented {
        let result = eventually(&format!("{name} in Prometheus"), WAIT, || async {
            let r = prometheus.query(name).map_err(|e| e.to_string())?;
            if r.is_empty() { Err("no data".into()) } else { Ok(r) }
        })
        .await;
        let metric = &result[0]["metric"];
        for label in labels {
            assert!(metric.get(label).is_some(), "{name} has no label {label}: {metric}");
        }
    }
    let cold = prometheus.query(r#"sum(pytier_object_bytes{pod="web-0",class="cold"})"#).unwrap();
    let value: f64 = cold[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(value > 1e6, "the service's cold records are cold: {value}");
    let (out, _) = s.app.finish().unwrap();
    assert!(out.contains("intact 20000"), "{out}");
}

/// Every query of the shipped Grafana dashboards (panels and variables) and
/// every alert of the chart runs in the real Prometheus against the live
/// series: none is invalid, and every panel has data but those listed below.
#[tokio::test]
async fn every_dashboard_query_and_alert_runs_on_the_live_series() {
    let s = scraped_service().await;
    let prometheus = &s.prometheus;
    // Panels that are rightly empty here, and why.
    let empty_here = [("Migration failures", "no page failed to move")];
    let mut checked = 0;
    for (dashboard, panel, expr) in pytier_tests::prometheus::dashboard_queries() {
        let expr = expr.replace("$namespace", "default").replace("$pod", "web-0").replace("$__rate_interval", "30s");
        let what = format!("{dashboard} / {panel}: {expr}");
        if let Some((_, why)) = empty_here.iter().find(|(title, _)| *title == panel) {
            prometheus.query(&expr).unwrap_or_else(|e| panic!("{what}: {e}"));
            eprintln!("{what}: may be empty ({why})");
        } else {
            let result = eventually(&what, WAIT, || async {
                let r = prometheus.query(&expr).map_err(|e| format!("invalid: {e}"))?;
                if r.is_empty() { Err("no data".into()) } else { Ok(r) }
            })
            .await;
            eprintln!("{what}: {}", result.len());
        }
        checked += 1;
    }
    assert!(checked > 20, "only {checked} dashboard queries found");

    let rules = eventually("the chart's alerts evaluated", WAIT, || async {
        let groups = prometheus.rule_groups().map_err(|e| e.to_string())?;
        let rules: Vec<_> = groups.iter().flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default()).collect();
        if !rules.is_empty()
            && rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")))
        {
            Ok(rules)
        } else {
            Err(format!("{} rules, not all evaluated yet", rules.len()))
        }
    })
    .await;
    assert!(rules.len() >= 7, "{rules:?}");
    for rule in &rules {
        assert_eq!(rule["health"], "ok", "alert {} does not evaluate: {}", rule["name"], rule["lastError"]);
        assert_eq!(rule["state"], "inactive", "alert {} fires on a healthy service: {rule}", rule["name"]);
    }
}

/// Two pods whose Python is PID 1 in its own PID namespace: no collision,
/// and neither reaches the other's socket. Then the agent is killed and
/// restarted: the processes run on with their data intact, and the new
/// agent manages them again from what it finds.
#[tokio::test]
async fn pid_1_pods_are_isolated_and_survive_an_agent_crash() {
    let (plane, _operator, agent_kubeconfig) = cluster().await;
    let c = plane.client();
    node(&c, "n1").await;
    policy(&c, "web", json!({"podSelector": {"matchLabels": {"app": "web"}}, "tracking": {"hotThreshold": 3.0}})).await;
    let (uid_a, uid_b) = (pod(&c, "web-a", "n1").await, pod(&c, "web-b", "n1").await);
    let dirs = NodeDirs::new(&plane, "n1").unwrap();
    let mut agent = NodeAgent::start(&plane, &agent_kubeconfig, "n1", &dirs, &[]).unwrap();
    agent.wait_ready().unwrap();

    let pod_a = FakePod::new(&dirs, &uid_a, "app", Driver::Cgroupfs).unwrap();
    let pod_b = FakePod::new(&dirs, &uid_b, "app", Driver::Systemd).unwrap();
    let pid1 = ["unshare", "--pid", "--fork", "--kill-child", "python3", "-c", SERVICE];
    let mut a = pod_a.spawn(&pid1, &[]).unwrap();
    let mut b = pod_b.spawn(&pid1, &[]).unwrap();
    for p in [&mut a, &mut b] {
        assert_eq!(p.line().unwrap(), "ready 1 True", "Python is PID 1 and pytier is active");
    }
    let (socket_a, socket_b) = (pod_a.socket_dir.join("app.1.sock"), pod_b.socket_dir.join("app.1.sock"));
    for socket in [&socket_a, &socket_b] {
        eventually("the policy's threshold in each interposer", WAIT, || async {
            let t = interposer_config(socket)?.tracking.hot_threshold;
            if t == 3.0 { Ok(()) } else { Err(format!("{t}")) }
        })
        .await;
    }
    wait_state(&c, "n1", "web-a", PodState::Managed).await;
    wait_state(&c, "n1", "web-b", PodState::Managed).await;

    // Another user's process (as a non-root container runs) cannot connect.
    let probe = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3", "-c"])
        .arg("import os, socket, sys\nd = os.open(os.path.dirname(sys.argv[1]), os.O_RDONLY)\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect(f'/proc/self/fd/{d}/' + os.path.basename(sys.argv[1])); print('connected')\nexcept PermissionError:\n    print('refused')")
        .arg(&socket_a)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&probe.stdout).trim(), "refused", "{probe:?}");

    // SIGKILL the agent: the interposers run on; a new agent takes over.
    agent.kill();
    // A cycle spans seconds at the default CPU budget, longer on a loaded machine.
    let before = stats(&socket_a).unwrap().passes;
    eventually("the interposer scanning on without the agent", WAIT, || async {
        let passes = stats(&socket_a)?.passes;
        if passes > before { Ok(()) } else { Err(format!("{passes} scan cycles, {before} when the agent died")) }
    })
    .await;
    let mut agent = NodeAgent::start(&plane, &agent_kubeconfig, "n1", &dirs, &[]).unwrap();
    agent.wait_ready().unwrap();
    let metrics = eventually("the restarted agent reporting both pods", WAIT, || async {
        let m = agent.get("/metrics").map_err(|e| e.to_string())?;
        let both = ["web-a", "web-b"].iter().all(|p| {
            m.contains(&format!(
                r#"pytier_pod_state{{node="n1",namespace="default",pod="{p}",policy="web",state="Managed"}} 1"#
            ))
        });
        if both { Ok(m) } else { Err("not both Managed".into()) }
    })
    .await;
    assert!(metrics.contains("pytier_interposers{"), "{metrics}");
    for p in [a, b] {
        let (out, exit) = p.finish().unwrap();
        assert!(exit.success() && out.contains("intact 20000"), "{out}");
    }
}

/// Python processes starting while the shim is replaced, again and again,
/// load one version whole: the pytier package and the native library they
/// map come from the same version directory.
#[tokio::test]
async fn processes_starting_during_shim_swaps_load_one_version_whole() {
    let shim = std::path::PathBuf::from(std::env::var("PYTIER_SHIM").expect("PYTIER_SHIM"));
    let work = tempfile::tempdir().unwrap();
    let (a, b, host) = (work.path().join("a"), work.path().join("b"), work.path().join("host"));
    for (dir, variant) in [(&a, "a"), (&b, "b")] {
        copy_dir(&shim, dir);
        std::fs::write(dir.join("pytier/_variant"), variant).unwrap();
    }
    install_shim(&a, &host);
    let swapping = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let swapper = {
        let (a, b, host, swapping) = (a.clone(), b.clone(), host.clone(), swapping.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while swapping.load(std::sync::atomic::Ordering::Relaxed) {
                install_shim(if n % 2 == 0 { &b } else { &a }, &host);
                n += 1;
            }
            n
        })
    };
    let probe = r#"
import os, pytier, pytier._boot as boot
pkg = os.path.dirname(boot.__file__)
native = [l.split()[-1] for l in open("/proc/self/maps") if l.rstrip().endswith("_native.so")]
print(pytier.status()[0], pkg == os.path.dirname(native[0]) if native else "unmapped", open(os.path.join(pkg, "_variant")).read())
"#;
    let mut variants = std::collections::BTreeSet::new();
    for _ in 0..30 {
        let out = std::process::Command::new("python3")
            .args(["-c", probe])
            .env("PYTHONPATH", host.join("current"))
            .env("PYTIER_SOCKET", "")
            .output()
            .unwrap();
        let line = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let fields: Vec<&str> = line.split(' ').collect();
        assert_eq!(&fields[..2], ["True", "True"], "active, package and library of one version: {line}: {out:?}");
        variants.insert(fields[2].to_string());
    }
    swapping.store(false, std::sync::atomic::Ordering::Relaxed);
    let swaps = swapper.join().unwrap();
    assert!(swaps >= 10, "only {swaps} swaps happened during the starts");
    println!("{swaps} swaps; versions loaded: {variants:?}");
}

/// A TieringPolicy whose settings carry a field this agent does not know (a
/// newer CRD) is reported on the TieringNode; the agent keeps running.
#[tokio::test]
async fn a_policy_from_a_newer_api_is_reported_not_fatal() {
    let plane = ControlPlane::start().await.unwrap();
    let c = plane.client();
    type Crd = k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    let crds: Api<Crd> = Api::all(c.clone());
    let mut crd = serde_json::to_value(crds.get("tieringpolicies.pytier.dev").await.unwrap()).unwrap();
    let tracking =
        &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["tracking"];
    tracking["properties"]["futureSetting"] = json!({"type": "string", "description": "from a newer pytier"});
    crds.replace("tieringpolicies.pytier.dev", &PostParams::default(), &serde_json::from_value(crd).unwrap())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await; // the new schema takes effect
    plane.apply_manifests(&repo_root().join("deploy/operator/namespace.yaml")).await.unwrap();
    plane.apply_manifests(&repo_root().join("deploy/node-agent/rbac.yaml")).await.unwrap();
    let kubeconfig = plane.kubeconfig_as_service_account("pytier-system", "pytier-node-agent").unwrap();
    // A raw object: this test's own types would refuse the new field too.
    let policies: Api<DynamicObject> =
        Api::namespaced_with(c.clone(), "default", &ApiResource::erase::<TieringPolicy>(&()));
    let policy = DynamicObject::new("web", &ApiResource::erase::<TieringPolicy>(&()))
        .data(json!({"spec": {"tracking": {"futureSetting": "x"}}}));
    policies.create(&PostParams::default(), &policy).await.unwrap();
    let pod = PodTiering {
        namespace: "default".into(),
        name: "web-0".into(),
        uid: "7d1c5a1e-0000-4000-8000-000000000001".into(),
        policy: "web".into(),
    };
    let nodes: Api<TieringNode> = Api::all(c.clone());
    nodes.create(&PostParams::default(), &TieringNode::new("n1", TieringNodeSpec { pods: vec![pod] })).await.unwrap();

    let dirs = NodeDirs::new(&plane, "n1").unwrap();
    let agent = NodeAgent::start(&plane, &kubeconfig, "n1", &dirs, &[]).unwrap();
    let condition = eventually("a PolicyUnreadable condition", WAIT, || async {
        let status = node_status(&c, "n1").await?;
        let ready = status.conditions.into_iter().find(|c| c.type_ == "Ready").ok_or("no Ready condition")?;
        if ready.reason == "PolicyUnreadable" { Ok(ready) } else { Err(format!("{ready:?}")) }
    })
    .await;
    assert_eq!(condition.status, "False");
    assert!(condition.message.contains("futureSetting"), "{}", condition.message);
    assert_eq!(agent.get("/healthz").unwrap(), "ok", "the agent runs on");
}

/// `node-agent install-shim`, as the agent does it at start.
fn install_shim(from: &Path, host: &Path) {
    let out = std::process::Command::new(pytier_tests::agent::binary().unwrap())
        .args(["install-shim", "--shim"])
        .arg(from)
        .arg("--shim-host-dir")
        .arg(host)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}
