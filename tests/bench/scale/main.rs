//! Control-plane scale benchmark: the real operator (release build, with the
//! RBAC of `deploy/operator`) against a real kube-apiserver + etcd, with kwok
//! keeping 1000 fake nodes Ready and 10 000 annotated pods Running, and a
//! simulated node agent per node writing its TieringNode's status as the real
//! agent does (see `agents.rs`).
//!
//! Each run, on a fresh control plane, goes through these phases:
//! 1. pod creation at a steady rate (no policy yet, so the agents are idle):
//!    webhook latency as the API server sees it (its own histogram), as the
//!    operator handles it, and as the creating client sees the whole creation;
//! 2. policies: time from creating all policies until every TieringNode is
//!    correct;
//! 3. edits, one policy at a time: time until the agent of every node with
//!    pods it governs has seen the new settings (p50/p99), over the agent's
//!    own watch of the policies, as `node-agent serve` reads them;
//! 4. churn: more pods created at the same rate while the agents report,
//!    the webhook measured again;
//! 5. catch-up: the agents stop; time until every policy's status shows the
//!    bytes of their last reports.
//!
//! For every phase it prints the operator's CPU, its reconciles by controller
//! and its API requests by verb and resource with the bytes sent. After
//! `--runs` runs (3 by default) it prints each measure's median and range;
//! the last line is `scale: edit p99 Xs, webhook p99 Yms, rss ZMiB` (medians;
//! the webhook's the worse of phases 1 and 4).
//!
//! With `--baseline-webhook`, a webhook that allows every pod unchanged, on
//! the operator's own HTTP stack, is registered beside the operator's (see
//! `baseline.rs`): the API server's calls to it are the floor of a webhook
//! call on this machine under the same load.
//!
//! Run with `tests/bench/scale/run`.

mod agents;
mod baseline;
mod probe;
mod profile;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use futures::StreamExt;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
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

use crate::agents::Agents;
use crate::probe::Probe;
use crate::profile::{Histogram, Phase, Profile, peak_rss_bytes, quantile};

const POLICY: &str = "tiering";
const WEBHOOK: &str = "inject.pytier.dev";

struct Args {
    nodes: usize,
    pods: usize,
    churn: usize,
    policies: usize,
    edits: usize,
    rate: f64,
    runs: usize,
    agent_every: f64,
    baseline_webhook: bool,
}

const USAGE: &str = "usage: scale-bench [--nodes N] [--pods N] [--churn PODS] [--policies N] [--edits N] \
                     [--rate PODS_PER_S] [--runs N] [--agent-every SECONDS] [--baseline-webhook]";

impl Args {
    fn parse() -> Result<Args> {
        let mut args = Args {
            nodes: 1000,
            pods: 10_000,
            churn: 1000,
            policies: 20,
            edits: 20,
            rate: 50.0,
            runs: 3,
            agent_every: 60.0,
            baseline_webhook: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
            match flag.as_str() {
                "--nodes" => args.nodes = value()?.parse()?,
                "--pods" => args.pods = value()?.parse()?,
                "--churn" => args.churn = value()?.parse()?,
                "--policies" => args.policies = value()?.parse()?,
                "--edits" => args.edits = value()?.parse()?,
                "--rate" => args.rate = value()?.parse()?,
                "--runs" => args.runs = value()?.parse()?,
                "--agent-every" => args.agent_every = value()?.parse()?,
                "--baseline-webhook" => args.baseline_webhook = true,
                "-h" | "--help" => {
                    println!("{USAGE}");
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other}\n{USAGE}"),
            }
        }
        if args.nodes == 0 || args.policies == 0 || args.pods < args.policies || args.rate <= 0.0 || args.runs == 0 {
            bail!("need at least one node, one policy, a pod per policy, a positive rate and one run");
        }
        if args.agent_every.is_nan() || args.agent_every <= 0.0 {
            bail!("--agent-every must be a positive number of seconds");
        }
        Ok(args)
    }
}

/// The synthetic cluster: pod `i` lives in namespace `i % policies` on node
/// `i * nodes / pods`, so each node runs pods of several namespaces and every
/// policy governs pods spread over many nodes (500 of 1000 by default). Even
/// namespaces' pods name their policy by annotation; odd namespaces' pods
/// opt in by annotation and are picked by the policy's podSelector. Churn
/// pods continue the numbering, wrapping round the nodes.
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
        let per_node = self.args.pods.max(self.args.nodes);
        self.node((i % per_node) * self.args.nodes / per_node)
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

    /// What every TieringNode should list once the first `pods` exist:
    /// (namespace, pod) sorted, as the operator writes them.
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

/// The TieringNodes as the operator writes them, a wake-up on each change,
/// and one per node for its simulated agent.
struct TieringNodes {
    store: Store<TieringNode>,
    changed: Arc<Notify>,
    per_node: Arc<Mutex<HashMap<String, Arc<Notify>>>>,
}

impl TieringNodes {
    fn watch(client: &Client) -> TieringNodes {
        let (store, writer) = reflector::store();
        let changed = Arc::new(Notify::new());
        let per_node: Arc<Mutex<HashMap<String, Arc<Notify>>>> = Arc::default();
        let (notify, nodes) = (changed.clone(), per_node.clone());
        let events = watcher(Api::<TieringNode>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(writer)
            .for_each(move |event| {
                if let Ok(watcher::Event::Apply(tn) | watcher::Event::InitApply(tn)) = event
                    && let Some(node) = nodes.lock().unwrap().get(&tn.name_any())
                {
                    node.notify_one();
                }
                notify.notify_waiters();
                std::future::ready(())
            });
        tokio::spawn(events);
        TieringNodes { store, changed, per_node }
    }

    /// A wake-up for every change of `node`'s TieringNode.
    fn on_change(&self, node: &str) -> Arc<Notify> {
        self.per_node.lock().unwrap().entry(node.to_string()).or_default().clone()
    }

    /// Nodes whose TieringNode differs from the wanted pods.
    fn wrong(&self, pods: &HashMap<String, Vec<(String, String)>>) -> usize {
        pods.iter()
            .filter(|(node, want)| {
                let Some(tn) = self.store.get(&reflector::ObjectRef::new(node)) else { return true };
                tn.spec.pods.len() != want.len()
                    || (tn.spec.pods.iter().zip(want.iter()))
                        .any(|(got, (ns, name))| got.namespace != *ns || got.name != *name || got.policy != POLICY)
            })
            .count()
    }

    /// Waits until every TieringNode is as wanted; returns the time it took from `since`.
    async fn converged(
        &self,
        pods: &HashMap<String, Vec<(String, String)>>,
        since: Instant,
        timeout: Duration,
    ) -> Result<Duration> {
        loop {
            let changed = self.changed.notified();
            let wrong = self.wrong(pods);
            if wrong == 0 {
                return Ok(since.elapsed());
            }
            if since.elapsed() > timeout {
                bail!("{wrong} TieringNodes still wrong after {timeout:?}");
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
        }
    }

    /// Each namespace's DRAM bytes, summed over the agents' reports.
    fn reported_dram_bytes(&self) -> BTreeMap<String, u64> {
        let mut sums = BTreeMap::new();
        for tn in self.store.state() {
            for pod in tn.status.iter().flat_map(|s| &s.pods) {
                *sums.entry(pod.namespace.clone()).or_default() += pod.dram_bytes;
            }
        }
        sums
    }
}

/// Waits until the agent of each of `nodes` has seen the policy of
/// `namespace` with scan interval `value`; returns the time from `since` to
/// the last arrival.
async fn arrived(
    agents: &Agents,
    nodes: &[&String],
    namespace: &str,
    value: u32,
    since: Instant,
    timeout: Duration,
) -> Result<Duration> {
    loop {
        let changed = agents.saw_change.notified();
        let (mut last, mut missing) = (since, 0);
        for node in nodes {
            match agents.seen[*node].scan_interval(namespace) {
                Some((seen, at)) if seen == value => last = last.max(at),
                _ => missing += 1,
            }
        }
        if missing == 0 {
            return Ok(last - since);
        }
        if since.elapsed() > timeout {
            bail!("{missing} agents had not seen it after {timeout:?}");
        }
        let _ = tokio::time::timeout(Duration::from_millis(200), changed).await;
    }
}

/// The API server's calls to one webhook in a phase, from its histogram:
/// p50 and p99 bucket bounds and the share within 5 ms.
#[derive(Clone, Copy)]
struct WebhookCalls {
    p50: f64,
    p99: f64,
    within_5ms: f64,
}

impl WebhookCalls {
    fn of(histogram: &Histogram) -> WebhookCalls {
        WebhookCalls {
            p50: histogram.quantile_bound(0.5),
            p99: histogram.quantile_bound(0.99),
            within_5ms: histogram.share_within(0.005),
        }
    }
}

/// One run's figures.
struct Run {
    create_rate: f64,
    create: (f64, f64),
    /// The API server's calls to the webhook, in pod creation and in churn.
    webhook: [WebhookCalls; 2],
    /// The same for the baseline webhook, with --baseline-webhook.
    baseline: Option<[WebhookCalls; 2]>,
    /// The probe's calls straight to the webhook, p50 and p99, in each phase.
    direct: [(f64, f64); 2],
    webhook_calls: f64,
    /// The operator's own handling, p50 and p99 (all calls).
    handling: (f64, f64),
    policies_applied: f64,
    edits: Vec<f64>,
    nodes_per_policy: usize,
    agents: agents::Report,
    policy_status_writes_per_s: f64,
    catch_up: Option<f64>,
    kwok: (usize, usize),
    rss_mib: f64,
    cpu: f64,
    phases: Vec<Phase>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cluster = Cluster { args: Args::parse()? };
    let a = &cluster.args;
    let mut runs = Vec::new();
    for r in 1..=a.runs {
        eprintln!("run {r} of {}", a.runs);
        let run = run(&cluster).await?;
        print_run(&cluster, r, &run);
        runs.push(run);
    }
    print_summary(&runs);
    let lost_edits = runs.iter().flat_map(|r| &r.edits).filter(|e| e.is_infinite()).count();
    let stale = runs.iter().filter(|r| r.catch_up.is_none()).count();
    if lost_edits > 0 || stale > 0 {
        bail!("{lost_edits} edits never reached their agents; {stale} runs ended with policy statuses behind");
    }
    Ok(())
}

async fn run(cluster: &Cluster) -> Result<Run> {
    let a = &cluster.args;
    eprintln!("starting etcd, kube-apiserver, the operator and kwok");
    let plane = ControlPlane::start().await?;
    let client = plane.client();
    let kubeconfig = install_rbac(&plane).await?;
    let mut op = Operator::start_with(&plane, &kubeconfig, "bench", &["--webhook-dns-names", "127.0.0.1"])?;
    op.wait_ready()?;
    install_webhook(&plane, &op).await?;
    let webhook = (op.webhook_addr.clone(), webhook_ca(&client).await?);
    if a.baseline_webhook {
        baseline::start(&client, WEBHOOK).await?;
    }
    let kwok = Kwok::start(&plane)?;

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

    let tns = TieringNodes::watch(&client);
    // As the real agents: their own identity, under their own RBAC (so the
    // API server's fairness treats them as the flow they are), a watch of
    // the policies each.
    plane.apply_manifests(&pytier_tests::repo_root().join("deploy/node-agent/rbac.yaml")).await?;
    let kubeconfig = plane.kubeconfig_as_service_account("pytier-system", "pytier-node-agent")?;
    let options = kube::config::KubeConfigOptions::default();
    let config =
        kube::Config::from_custom_kubeconfig(kube::config::Kubeconfig::read_from(&kubeconfig)?, &options).await?;
    let nodes = (0..a.nodes).map(|j| cluster.node(j)).map(|n| (n.clone(), tns.on_change(&n))).collect();
    let agents = Agents::start(&Client::try_from(config)?, &tns.store, nodes, Duration::from_secs_f64(a.agent_every));
    let mut others = plane.named_pids();
    others.extend([("kwok", kwok.pid()), ("benchmark", std::process::id())]);
    let mut profile = Profile::start(&op, others)?;

    // 1. Pods at a steady rate; every one goes through the webhook.
    let t = Instant::now();
    let creation = create_pods(cluster, &client, 0..a.pods, &webhook).await?;
    let create_latency = creation.latency;
    let create_seconds = t.elapsed().as_secs_f64();
    eprintln!("{} pods created in {create_seconds:.1}s", a.pods);
    profile.end("pod creation", &op)?;

    // 2. Policies: one per namespace; then every TieringNode must list its pods.
    let want = cluster.expected_pods();
    let t = Instant::now();
    for n in 0..a.policies {
        let ns = cluster.namespace(n);
        let api = Api::<TieringPolicy>::namespaced(client.clone(), &ns);
        api.create(&PostParams::default(), &serde_json::from_value(cluster.policy_json(n, 100))?).await?;
    }
    let policies_applied = tns.converged(&want, t, Duration::from_secs(300)).await?.as_secs_f64();
    eprintln!("policies applied to every TieringNode in {policies_applied:.2}s");
    profile.end("policies", &op)?;

    // 3. Edits: one policy at a time, each a new scan interval.
    let mut edits = Vec::new();
    for e in 0..a.edits {
        let n = e % a.policies;
        let ns = cluster.namespace(n);
        let value = 200 + e as u32;
        let patch = json!({"spec": {"tracking": {"scanIntervalMillis": value}}});
        let api = Api::<TieringPolicy>::namespaced(client.clone(), &ns);
        let nodes: Vec<&String> =
            (want.iter()).filter(|(_, pods)| pods.iter().any(|(p, _)| *p == ns)).map(|(n, _)| n).collect();
        let t = Instant::now();
        api.patch(POLICY, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        // An edit that never arrives counts as infinitely slow; the run goes on.
        let took = arrived(&agents, &nodes, &ns, value, t, Duration::from_secs(120)).await;
        edits.push(took.map_or_else(
            |e| {
                eprintln!("edit {e}");
                f64::INFINITY
            },
            |d| d.as_secs_f64(),
        ));
    }
    profile.end("edits", &op)?;

    // 4. Churn: more pods while the agents report.
    let churn = create_pods(cluster, &client, a.pods..a.pods + a.churn, &webhook).await?;
    profile.end("churn", &op)?;

    // 5. Catch-up: the agents stop; the policies' status must reach their last reports.
    // Status writes once the policies exist.
    let with_policies = &profile.phases[1..];
    let policy_status_writes_per_s = with_policies.iter().map(|p| p.count("patch tieringpolicies/status")).sum::<f64>()
        / with_policies.iter().map(|p| p.seconds).sum::<f64>();
    let agent_report = agents.stop().await;
    let mut catch_up = None;
    let t = Instant::now();
    let policies = Api::<TieringPolicy>::all(client.clone());
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let reported = tns.reported_dram_bytes();
        let shown: BTreeMap<String, u64> = (policies.list(&Default::default()).await?.items.iter())
            .map(|p| (p.namespace().unwrap_or_default(), p.status.as_ref().map_or(0, |s| s.dram_bytes)))
            .collect();
        if shown == reported {
            catch_up = Some(t.elapsed().as_secs_f64());
            break;
        }
        if t.elapsed() > Duration::from_secs(120) {
            eprintln!("policy statuses did not reach the agents' reports in 120 s");
            break;
        }
    }
    profile.end("catch-up", &op)?;

    let operator_webhook = Histogram::parse(&op.get("/metrics")?, "pytier_operator_webhook_duration_seconds", &[])?;
    let kwok_state = kwok_progress(&client).await?;
    let rss = peak_rss_bytes(op.pid())?;
    let nodes_per_policy = want.values().filter(|pods| pods.iter().any(|(ns, _)| *ns == cluster.namespace(0))).count();
    drop(kwok);
    Ok(Run {
        create_rate: a.pods as f64 / create_seconds,
        create: (quantile(&create_latency, 0.5), quantile(&create_latency, 0.99)),
        webhook: [WebhookCalls::of(&creation.webhook), WebhookCalls::of(&churn.webhook)],
        baseline: (creation.baseline.as_ref().zip(churn.baseline.as_ref()))
            .map(|(creation, churn)| [WebhookCalls::of(creation), WebhookCalls::of(churn)]),
        direct: [creation.direct, churn.direct],
        webhook_calls: creation.webhook.count + churn.webhook.count,
        handling: (operator_webhook.quantile(0.5), operator_webhook.quantile(0.99)),
        policies_applied,
        edits,
        nodes_per_policy,
        agents: agent_report,
        policy_status_writes_per_s,
        catch_up,
        kwok: kwok_state,
        rss_mib: rss as f64 / (1 << 20) as f64,
        cpu: profile.phases.iter().map(|p| p.cpu_seconds).sum(),
        phases: profile.phases,
    })
}

/// Creates the pods numbered `range` at the benchmark's rate; every one must
/// come back injected. Returns each creation's latency and the API server's
/// histogram of its webhook calls meanwhile.
/// A phase of pod creation as measured.
struct Creation {
    /// Seconds of each create request, at the client.
    latency: Vec<f64>,
    /// The API server's histogram of its webhook calls meanwhile.
    webhook: Histogram,
    /// The same for the baseline webhook, with --baseline-webhook.
    baseline: Option<Histogram>,
    /// The probe's calls straight to the webhook meanwhile, p50 and p99.
    direct: (f64, f64),
}

/// The probe's pace: a fifth of the pods' default rate, a couple of
/// thousand calls over the pod creation phase.
const PROBE_EVERY: Duration = Duration::from_millis(100);

async fn create_pods(
    cluster: &Cluster,
    client: &Client,
    range: std::ops::Range<usize>,
    (webhook_addr, webhook_ca): &(String, Vec<u8>),
) -> Result<Creation> {
    let baseline = cluster.args.baseline_webhook;
    let before = apiserver_webhook_histogram(client, WEBHOOK).await?;
    let baseline_before =
        if baseline { Some(apiserver_webhook_histogram(client, baseline::NAME).await?) } else { None };
    let probe = Probe::start(webhook_addr, webhook_ca, PROBE_EVERY).await?;
    let mut creations = tokio::task::JoinSet::new();
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / cluster.args.rate));
    let count = range.len();
    for i in range {
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
    let mut latency = Vec::new();
    let mut injected = 0;
    while let Some(done) = creations.join_next().await {
        let (took, was_injected) = done?.context("a pod creation failed")?;
        latency.push(took.as_secs_f64());
        injected += usize::from(was_injected);
    }
    let direct = probe.stop().await.context("the webhook probe failed")?;
    if injected != count {
        bail!("only {injected} of {count} pods came back injected");
    }
    let webhook = apiserver_webhook_histogram(client, WEBHOOK).await?.minus(&before);
    let baseline = match baseline_before {
        Some(before) => Some(apiserver_webhook_histogram(client, baseline::NAME).await?.minus(&before)),
        None => None,
    };
    Ok(Creation { latency, webhook, baseline, direct: (quantile(&direct, 0.5), quantile(&direct, 0.99)) })
}

/// The CA the API server trusts the webhook with (the operator sets it).
async fn webhook_ca(client: &Client) -> Result<Vec<u8>> {
    let configs = Api::<MutatingWebhookConfiguration>::all(client.clone()).list(&Default::default()).await?;
    (configs.items.iter().flat_map(|c| c.webhooks.iter().flatten()))
        .find(|w| w.name == WEBHOOK)
        .and_then(|w| w.client_config.ca_bundle.clone())
        .map(|bundle| bundle.0)
        .context("the webhook configuration has no caBundle")
}

impl Run {
    fn edit_p99(&self) -> f64 {
        quantile(&self.edits, 0.99)
    }
    /// The worse p99 of the two phases that create pods.
    fn webhook_p99(&self) -> f64 {
        self.webhook[0].p99.max(self.webhook[1].p99)
    }
}

fn print_run(cluster: &Cluster, number: usize, run: &Run) {
    let a = &cluster.args;
    let ms = |s: f64| s * 1e3;
    println!();
    println!(
        "run {number}: {} nodes (kwok), {} pods + {} churn, {} policies, {} edits, agents every {} s",
        a.nodes, a.pods, a.churn, a.policies, a.edits, a.agent_every
    );
    println!("{:<34} result", "measure");
    println!("{:<34} {} pods at {:.1}/s, all injected", "pod creation", a.pods, run.create_rate);
    println!("{:<34} p50 {:.1} ms, p99 {:.1} ms", "  create request (client)", ms(run.create.0), ms(run.create.1));
    let mut seen_by_api_server = vec![("API server", run.webhook)];
    seen_by_api_server.extend(run.baseline.map(|calls| ("baseline, API server", calls)));
    for (whose, phases) in seen_by_api_server {
        for (phase, calls) in ["pod creation", "churn"].iter().zip(phases) {
            println!(
                "{:<34} p50 <= {:.0} ms, p99 <= {:.0} ms (bucket bounds), {:.2}% within 5 ms",
                format!("  webhook call, {phase} ({whose})"),
                ms(calls.p50),
                ms(calls.p99),
                100.0 * calls.within_5ms
            );
        }
    }
    for (phase, (d50, d99)) in ["pod creation", "churn"].iter().zip(run.direct) {
        println!(
            "{:<34} p50 {:.2} ms, p99 {:.2} ms (TLS, HTTP/2, every {} ms)",
            format!("  webhook call, {phase} (probe)"),
            ms(d50),
            ms(d99),
            PROBE_EVERY.as_millis()
        );
    }
    println!(
        "{:<34} p50 {:.2} ms, p99 {:.2} ms ({:.0} calls)",
        "  webhook handling (operator)",
        ms(run.handling.0),
        ms(run.handling.1),
        run.webhook_calls
    );
    println!("{:<34} {:.2} s", "policies -> all TieringNodes", run.policies_applied);
    println!(
        "{:<34} p50 {:.2} s, p99 {:.2} s, max {:.2} s ({} nodes per policy)",
        "policy edit -> its nodes' agents",
        quantile(&run.edits, 0.5),
        run.edit_p99(),
        run.edits.iter().cloned().fold(0.0, f64::max),
        run.nodes_per_policy
    );
    let agents = &run.agents;
    println!(
        "{:<34} {} writes ({:.1}/s), {} failed, p99 {:.1} ms",
        "agent status writes",
        agents.writes,
        agents.per_second,
        agents.failures,
        ms(quantile(&agents.latencies, 0.99))
    );
    println!("{:<34} {:.2}/s", "policy status writes", run.policy_status_writes_per_s);
    let shown = run.catch_up.map_or("not within 120 s".to_string(), |s| format!("{s:.1} s"));
    println!("{:<34} {shown}", "policy status = agents' reports");
    println!("{:<34} {} nodes Ready, {} pods Running", "kwok at the end", run.kwok.0, run.kwok.1);
    println!("{:<34} peak RSS {:.0} MiB, CPU {:.1} s", "operator", run.rss_mib, run.cpu);
    println!("profile (operator, per phase):");
    for phase in &run.phases {
        phase.print();
    }
}

fn print_summary(runs: &[Run]) {
    let med = |f: &dyn Fn(&Run) -> f64| {
        let values: Vec<f64> = runs.iter().map(f).collect();
        let min = values.iter().cloned().fold(f64::INFINITY, f64::min);
        let max = values.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        (quantile(&values, 0.5), min, max)
    };
    let row = |name: &str, unit: &str, scale: f64, f: &dyn Fn(&Run) -> f64| {
        let (m, lo, hi) = med(f);
        println!("{name:<34} {:>9.2} {unit:<4} {:>9.2} - {:<9.2}", m * scale, lo * scale, hi * scale);
    };
    println!();
    println!("summary of {} runs: median, range", runs.len());
    row("policy edit p50", "s", 1.0, &|r| quantile(&r.edits, 0.5));
    row("policy edit p99", "s", 1.0, &|r| r.edit_p99());
    row("policies -> all TieringNodes", "s", 1.0, &|r| r.policies_applied);
    row("webhook p99 (API server bucket)", "ms", 1e3, &|r| r.webhook_p99());
    row("webhook within 5 ms, pod creation", "%", 100.0, &|r| r.webhook[0].within_5ms);
    row("webhook within 5 ms, churn", "%", 100.0, &|r| r.webhook[1].within_5ms);
    if runs.iter().all(|r| r.baseline.is_some()) {
        let baseline = |r: &Run, phase: usize| r.baseline.map_or(f64::NAN, |calls| calls[phase].within_5ms);
        row("baseline within 5 ms, pod creation", "%", 100.0, &|r| baseline(r, 0));
        row("baseline within 5 ms, churn", "%", 100.0, &|r| baseline(r, 1));
        row("baseline p99 (API server bucket)", "ms", 1e3, &|r| {
            r.baseline.map_or(f64::NAN, |calls| calls[0].p99.max(calls[1].p99))
        });
    }
    row("webhook probe p99, pod creation", "ms", 1e3, &|r| r.direct[0].1);
    row("webhook probe p99, churn", "ms", 1e3, &|r| r.direct[1].1);
    row("webhook handling p99 (operator)", "ms", 1e3, &|r| r.handling.1);
    row("create request p99 (client)", "ms", 1e3, &|r| r.create.1);
    row("policy status writes", "/s", 1.0, &|r| r.policy_status_writes_per_s);
    row("agent status writes", "/s", 1.0, &|r| r.agents.per_second);
    row("policy status catch-up", "s", 1.0, &|r| r.catch_up.unwrap_or(f64::NAN));
    row("operator peak RSS", "MiB", 1.0, &|r| r.rss_mib);
    row("operator CPU, all phases", "s", 1.0, &|r| r.cpu);
    for (i, phase) in runs[0].phases.iter().enumerate() {
        row(&format!("  CPU in {}", phase.name), "s", 1.0, &|r| r.phases[i].cpu_seconds);
    }
    let (edit, _, _) = med(&|r| r.edit_p99());
    let (webhook, _, _) = med(&|r| r.webhook_p99());
    let (rss, _, _) = med(&|r| r.rss_mib);
    println!("scale: edit p99 {edit:.2}s, webhook p99 {:.0}ms, rss {rss:.0}MiB", webhook * 1e3);
}

/// The API server's own histogram of its calls to the webhook `name`.
async fn apiserver_webhook_histogram(client: &Client, name: &str) -> Result<Histogram> {
    let text = client.request_text(http::Request::get("/metrics").body(Vec::new())?).await?;
    Histogram::parse(&text, "apiserver_admission_webhook_admission_duration_seconds", &[("name", name)])
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
