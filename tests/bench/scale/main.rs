//! Control-plane scale benchmark: the real operator (release build, with the
//! RBAC of `deploy/operator`) against a real kube-apiserver + etcd, with kwok
//! keeping 1000 fake nodes Ready and 10 000 annotated pods Running.
//!
//! Measures, in one run:
//! - webhook admission latency while pods are created at a steady rate, as
//!   the API server sees it (its own histogram), as the operator handles it,
//!   and as the creating client sees the whole pod creation;
//! - time from creating all policies until every TieringNode is correct;
//! - time for one policy edit to reach every TieringNode it affects (p50/p99);
//! - the operator's peak RSS and CPU time.
//!
//! Run with `tests/bench/scale/run`; the last line is
//! `scale: edit p99 Xs, webhook p99 Yms, rss ZMiB`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use pytier_crds::{TieringNode, TieringPolicy};
use pytier_tests::ControlPlane;
use pytier_tests::kwok::{FAKE_NODE_ANNOTATION, Kwok};
use pytier_tests::operator::{Operator, install_rbac, install_webhook};
use serde_json::json;
use tokio::sync::Notify;

const POLICY: &str = "tiering";
const WEBHOOK: &str = "inject.pytier.dev";

struct Args {
    nodes: usize,
    pods: usize,
    policies: usize,
    edits: usize,
    rate: f64,
}

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args { nodes: 1000, pods: 10_000, policies: 20, edits: 20, rate: 50.0 };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--nodes" => args.nodes = value()?.parse()?,
                "--pods" => args.pods = value()?.parse()?,
                "--policies" => args.policies = value()?.parse()?,
                "--edits" => args.edits = value()?.parse()?,
                "--rate" => args.rate = value()?.parse()?,
                "-h" | "--help" => {
                    println!(
                        "usage: scale-bench [--nodes N] [--pods N] [--policies N] [--edits N] [--rate PODS_PER_S]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other} (see --help)"),
            }
        }
        if args.nodes == 0 || args.policies == 0 || args.pods < args.policies || args.rate <= 0.0 {
            bail!("need at least one node, one policy, a pod per policy and a positive rate");
        }
        Ok(args)
    }
}

/// The synthetic cluster: pod `i` lives in namespace `i % policies` on node
/// `i * nodes / pods`, so each node runs pods of several namespaces and every
/// policy governs pods spread over many nodes (500 of 1000 by default). Even
/// namespaces' pods name their policy by annotation; odd namespaces' pods
/// opt in by annotation and are picked by the policy's podSelector.
struct Cluster {
    args: Args,
}

impl Cluster {
    fn namespace(&self, i: usize) -> String {
        format!("team-{:02}", i % self.args.policies)
    }
    fn node(&self, j: usize) -> String {
        format!("kwok-node-{j:04}")
    }
    fn node_of_pod(&self, i: usize) -> String {
        self.node(i * self.args.nodes / self.args.pods.max(self.args.nodes))
    }
    fn pod(&self, i: usize) -> String {
        format!("py-{i:05}")
    }
    fn by_selector(&self, ns_index: usize) -> bool {
        ns_index % 2 == 1
    }

    fn pod_json(&self, i: usize) -> serde_json::Value {
        let ns_index = i % self.args.policies;
        let (labels, annotations) = if self.by_selector(ns_index) {
            (json!({"app": "python"}), json!({"pytier.dev/inject": "true"}))
        } else {
            (json!({}), json!({"pytier.dev/policy": POLICY}))
        };
        // Half the pods bring their own PYTHONPATH, which the webhook appends to.
        let env = if i.is_multiple_of(2) { json!([{"name": "PYTHONPATH", "value": "/app/lib"}]) } else { json!([]) };
        json!({
            "metadata": {"name": self.pod(i), "labels": labels, "annotations": annotations},
            "spec": {
                "nodeName": self.node_of_pod(i),
                "containers": [{"name": "app", "image": "python:3.11", "env": env}],
            },
        })
    }

    fn policy_json(&self, ns_index: usize, scan_interval_millis: u32) -> serde_json::Value {
        let mut spec = json!({"tracking": {"scanIntervalMillis": scan_interval_millis}});
        if self.by_selector(ns_index) {
            spec["podSelector"] = json!({"matchLabels": {"app": "python"}});
        }
        json!({
            "apiVersion": "pytier.dev/v1alpha1", "kind": "TieringPolicy",
            "metadata": {"name": POLICY},
            "spec": spec,
        })
    }

    /// What every TieringNode should list: (namespace, pod, policy) sorted,
    /// as the operator writes them.
    fn expected_pods(&self) -> HashMap<String, Vec<(String, String)>> {
        let mut by_node: HashMap<String, Vec<(String, String)>> = HashMap::new();
        for i in 0..self.args.pods {
            by_node.entry(self.node_of_pod(i)).or_default().push((self.namespace(i), self.pod(i)));
        }
        for pods in by_node.values_mut() {
            pods.sort();
        }
        by_node
    }
}

/// The TieringNodes as the operator writes them, and a wake-up on each change.
struct TieringNodes {
    store: Store<TieringNode>,
    changed: Arc<Notify>,
}

impl TieringNodes {
    fn watch(client: &Client) -> TieringNodes {
        let (store, writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let notify = changed.clone();
        let events = watcher(Api::<TieringNode>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(move |_| {
                notify.notify_waiters();
                std::future::ready(())
            });
        tokio::spawn(events);
        TieringNodes { store, changed }
    }

    /// Nodes whose TieringNode differs from the wanted pods and settings.
    fn wrong(&self, pods: &HashMap<String, Vec<(String, String)>>, settings: &BTreeMap<String, u32>) -> usize {
        pods.iter()
            .filter(|(node, want)| {
                let Some(tn) = self.store.get(&reflector::ObjectRef::new(node)) else { return true };
                tn.spec.pods.len() != want.len()
                    || tn.spec.pods.iter().zip(want.iter()).any(|(got, (ns, name))| {
                        got.namespace != *ns
                            || got.name != *name
                            || got.policy != POLICY
                            || settings.get(ns) != tn.spec.settings_of(got).map(|s| &s.tracking.scan_interval_millis)
                    })
            })
            .count()
    }

    /// Waits until every TieringNode is as wanted; returns the time it took from `since`.
    async fn converged(
        &self,
        pods: &HashMap<String, Vec<(String, String)>>,
        settings: &BTreeMap<String, u32>,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        loop {
            let changed = self.changed.notified();
            let wrong = self.wrong(pods, settings);
            if wrong == 0 {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                bail!("{wrong} TieringNodes still wrong after {timeout:?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
        }
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let cluster = Cluster { args: Args::parse()? };
    let a = &cluster.args;
    eprintln!("starting etcd, kube-apiserver, the operator and kwok");
    let plane = ControlPlane::start().await?;
    let client = plane.client();
    let kubeconfig = install_rbac(&plane).await?;
    let mut op = Operator::start_with(&plane, &kubeconfig, "bench", &["--webhook-dns-names", "127.0.0.1"])?;
    op.wait_ready()?;
    install_webhook(&plane, &op).await?;
    let kwok = Kwok::start(&plane)?;
    let cpu_start = cpu_seconds(op.pid())?;

    for n in 0..a.policies {
        let ns = json!({"metadata": {"name": cluster.namespace(n)}});
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &serde_json::from_value(ns)?).await?;
    }
    let t = Instant::now();
    let nodes = Api::<Node>::all(client.clone());
    futures::stream::iter(0..a.nodes)
        .map(|i| {
            let nodes = nodes.clone();
            let mut node = Node::default();
            node.metadata.name = Some(cluster.node(i));
            let (key, value) = FAKE_NODE_ANNOTATION;
            node.metadata.annotations = Some([(key.to_string(), value.to_string())].into());
            async move { nodes.create(&PostParams::default(), &node).await.map(drop) }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<Vec<_>, _>>()
        .context("cannot create the nodes")?;
    eprintln!("{} nodes created in {:.1}s", a.nodes, t.elapsed().as_secs_f64());

    // Pods at a steady rate; every one goes through the webhook.
    let webhook_before = apiserver_webhook_histogram(&client).await?;
    let t = Instant::now();
    let mut creations = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / a.rate));
    for i in 0..a.pods {
        tick.tick().await;
        let api = Api::<Pod>::namespaced(client.clone(), &cluster.namespace(i));
        let pod: Pod = serde_json::from_value(cluster.pod_json(i))?;
        creations.spawn(async move {
            let start = Instant::now();
            let created = api.create(&PostParams::default(), &pod).await?;
            Ok::<_, kube::Error>((start.elapsed(), created.annotations().contains_key("pytier.dev/injected")))
        });
        if i > 0 && i % 2000 == 0 {
            eprintln!("{i} pods created");
        }
    }
    let mut create_latency = Vec::new();
    let mut injected = 0;
    while let Some(done) = creations.join_next().await {
        let (latency, was_injected) = done?.context("a pod creation failed")?;
        create_latency.push(latency.as_secs_f64());
        injected += usize::from(was_injected);
    }
    let create_seconds = t.elapsed().as_secs_f64();
    let webhook = apiserver_webhook_histogram(&client).await?.minus(&webhook_before);
    let operator_webhook = Histogram::parse(&op.get("/metrics")?, "pytier_operator_webhook_duration_seconds", &[])?;
    eprintln!("{} pods created in {create_seconds:.1}s", a.pods);
    if injected != a.pods {
        bail!("only {injected} of {} pods came back injected", a.pods);
    }

    // Policies: one per namespace; then every TieringNode must list its pods.
    let tns = TieringNodes::watch(&client);
    let want = cluster.expected_pods();
    let mut settings: BTreeMap<String, u32> = BTreeMap::new();
    let t = Instant::now();
    for n in 0..a.policies {
        let ns = cluster.namespace(n);
        let api = Api::<TieringPolicy>::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &serde_json::from_value(cluster.policy_json(n, 100))?).await?;
        settings.insert(ns, 100);
    }
    let policies_applied = tns.converged(&want, &settings, t, Duration::from_secs(300)).await?;
    eprintln!("policies applied to every TieringNode in {:.2}s", policies_applied.as_secs_f64());

    // Edits: one policy at a time, each a new scan interval.
    let mut edits = Vec::new();
    for e in 0..a.edits {
        let n = e % a.policies;
        let ns = cluster.namespace(n);
        let value = 200 + e as u32;
        let patch = json!({"spec": {"tracking": {"scanIntervalMillis": value}}});
        let api = Api::<TieringPolicy>::namespaced(client.clone(), &ns);
        let t = Instant::now();
        api.patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        settings.insert(ns, value);
        edits.push(tns.converged(&want, &settings, t, Duration::from_secs(120)).await?.as_secs_f64());
    }

    let (ready_nodes, running_pods) = kwok_progress(&client).await?;
    let rss = peak_rss_bytes(op.pid())?;
    let cpu = cpu_seconds(op.pid())? - cpu_start;
    let nodes_per_policy = want.values().filter(|pods| pods.iter().any(|(ns, _)| *ns == cluster.namespace(0))).count();
    drop(kwok);

    let (c50, c99) = (quantile(&create_latency, 0.5), quantile(&create_latency, 0.99));
    let (w50, w99) = (webhook.quantile_bound(0.5), webhook.quantile_bound(0.99));
    let (o50, o99) = (operator_webhook.quantile(0.5), operator_webhook.quantile(0.99));
    let (e50, e99) = (quantile(&edits, 0.5), quantile(&edits, 0.99));
    let rss_mib = rss as f64 / (1 << 20) as f64;
    println!();
    println!("scale: {} nodes (kwok), {} pods, {} policies, {} edits", a.nodes, a.pods, a.policies, a.edits);
    println!("{:<34} result", "measure");
    println!(
        "{:<34} {} pods in {create_seconds:.1}s ({:.1}/s), all injected",
        "pod creation",
        a.pods,
        a.pods as f64 / create_seconds
    );
    println!("{:<34} p50 {:.1} ms, p99 {:.1} ms", "  create request (client)", c50 * 1e3, c99 * 1e3);
    println!(
        "{:<34} p50 <= {:.0} ms, p99 <= {:.0} ms ({} calls; bucket bounds)",
        "  webhook call (API server)",
        w50 * 1e3,
        w99 * 1e3,
        webhook.count
    );
    println!("{:<34} p50 {:.2} ms, p99 {:.2} ms", "  webhook handling (operator)", o50 * 1e3, o99 * 1e3);
    println!(
        "{:<34} {:.2} s ({} TieringNodes)",
        "policies -> all TieringNodes",
        policies_applied.as_secs_f64(),
        want.len()
    );
    println!(
        "{:<34} p50 {e50:.2} s, p99 {e99:.2} s, max {:.2} s ({nodes_per_policy} nodes per policy)",
        "policy edit -> its TieringNodes",
        edits.iter().cloned().fold(0.0, f64::max)
    );
    println!("{:<34} {ready_nodes} nodes Ready, {running_pods} pods Running", "kwok at the end");
    println!("{:<34} peak RSS {rss_mib:.0} MiB, CPU {cpu:.1} s", "operator");
    println!("scale: edit p99 {e99:.2}s, webhook p99 {:.0}ms, rss {rss_mib:.0}MiB", w99 * 1e3);
    Ok(())
}

/// The `q` quantile of `values` (nearest rank).
fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// A Prometheus histogram: cumulative counts by upper bound.
#[derive(Debug)]
struct Histogram {
    buckets: Vec<(f64, f64)>,
    count: f64,
}

impl Histogram {
    /// Sums the series of `name` whose labels contain every `labels` pair.
    fn parse(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<Histogram> {
        let mut buckets: BTreeMap<u64, f64> = BTreeMap::new();
        let prefix = format!("{name}_bucket{{");
        for line in text.lines().filter(|l| l.starts_with(&prefix)) {
            let (series, value) = line.rsplit_once(' ').context("metric line without value")?;
            if !labels.iter().all(|(k, v)| series.contains(&format!("{k}=\"{v}\""))) {
                continue;
            }
            let le = series.split("le=\"").nth(1).and_then(|s| s.split('"').next()).context("bucket without le")?;
            let le: f64 = if le == "+Inf" { f64::INFINITY } else { le.parse()? };
            *buckets.entry(le.to_bits()).or_default() += value.parse::<f64>()?;
        }
        let mut buckets: Vec<(f64, f64)> = buckets.into_iter().map(|(b, c)| (f64::from_bits(b), c)).collect();
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let count = buckets.last().map_or(0.0, |b| b.1);
        Ok(Histogram { buckets, count })
    }

    fn minus(&self, before: &Histogram) -> Histogram {
        let old: HashMap<u64, f64> = before.buckets.iter().map(|(le, c)| (le.to_bits(), *c)).collect();
        let buckets: Vec<(f64, f64)> =
            self.buckets.iter().map(|(le, c)| (*le, c - old.get(&le.to_bits()).unwrap_or(&0.0))).collect();
        let count = buckets.last().map_or(0.0, |b| b.1);
        Histogram { buckets, count }
    }

    /// Upper bound of the bucket holding the `q` quantile: what coarse
    /// buckets can honestly say.
    fn quantile_bound(&self, q: f64) -> f64 {
        let rank = q * self.count;
        self.buckets.iter().find(|(_, c)| *c >= rank).map_or(f64::NAN, |b| b.0)
    }

    /// The `q` quantile, interpolated within its bucket (as PromQL's
    /// histogram_quantile does).
    fn quantile(&self, q: f64) -> f64 {
        let rank = q * self.count;
        let mut lower = (0.0, 0.0);
        for &(le, c) in &self.buckets {
            if c >= rank {
                if le.is_infinite() {
                    return lower.0;
                }
                return lower.0 + (le - lower.0) * (rank - lower.1) / (c - lower.1).max(f64::MIN_POSITIVE);
            }
            lower = (le, c);
        }
        f64::NAN
    }
}

/// The API server's own histogram of its calls to the pytier webhook.
async fn apiserver_webhook_histogram(client: &Client) -> Result<Histogram> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    Histogram::parse(&text, "apiserver_admission_webhook_admission_duration_seconds", &[("name", WEBHOOK)])
}

/// Nodes kwok made Ready and pods it made Running: the fake cluster is alive.
async fn kwok_progress(client: &Client) -> Result<(usize, usize)> {
    let nodes = Api::<Node>::all(client.clone()).list(&Default::default()).await?;
    let ready = nodes
        .items
        .iter()
        .filter(|n| {
            let conditions = n.status.as_ref().and_then(|s| s.conditions.as_ref());
            conditions.is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .count();
    let running = kube::api::ListParams::default().fields("status.phase=Running");
    let pods = Api::<Pod>::all(client.clone()).list_metadata(&running).await?;
    Ok((ready, pods.items.len()))
}

/// Peak resident set size (VmHWM) of a process.
fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .context("no VmHWM")?;
    Ok(kib * 1024)
}

/// User + system CPU seconds a process has used.
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}
