//! `node-agent serve`: the DaemonSet process. Watches this node's
//! TieringNode and pods and the TieringPolicies, installs the shim,
//! configures every interposer of the pods the spec lists with its policy's
//! settings, keeps their containers on the memory nodes their policy
//! allows, and reports status and metrics.
//!
//! Each pass reads facts (sysfs, cgroups, `/proc`, sockets, API objects),
//! decides in `decide`, then applies effects. Nothing is kept only in
//! memory: a restarted agent finds the same sockets and cgroups and
//! configures them again (a config request is idempotent), and an agent that
//! stops leaves every process running as it was.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures::StreamExt;
use hyper::{Method, StatusCode};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use pytier_contract::Settings;
use pytier_crds::injection::SHIM_PYTHONPATH;
use pytier_crds::node::{NumaNode, PodState, PodTiering, PolicyGeneration, TieringNodeSpec, TieringNodeStatus};
use pytier_crds::{TieringNode, TieringPolicy};
use serde_json::json;
use tokio::sync::Notify;
use tracing::{debug, info, warn};

use crate::decide::{self, InterposerView, PodFindings, Policies};
use crate::metrics::{self, PodSample, Snapshot};
use crate::topology::{self, NodeFacts, Overrides};
use crate::{cgroups, control, processes, shim, sockets};

/// Flags of `node-agent serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// This node's name (from the downward API: `spec.nodeName`).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: String,
    /// The shim to install (in the agent's image). Default: `pytier-shim`
    /// beside this binary's directory.
    #[arg(long, env = "PYTIER_SHIM")]
    pub shim: Option<PathBuf>,
    /// Host directory the webhook mounts into pods as the shim.
    #[arg(long, default_value = "/var/lib/pytier/shim")]
    pub shim_host_dir: PathBuf,
    /// The kubelet's pod directory, where each pod's socket emptyDir lives.
    #[arg(long, default_value = "/var/lib/kubelet/pods")]
    pub kubelet_pods_dir: PathBuf,
    /// Where the cgroup file systems are mounted.
    #[arg(long, default_value = "/sys/fs/cgroup")]
    pub cgroup_root: PathBuf,
    /// procfs of the host PID namespace.
    #[arg(long, default_value = "/proc")]
    pub proc: PathBuf,
    /// sysfs, for the NUMA topology.
    #[arg(long, default_value = "/sys")]
    pub sysfs: PathBuf,
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[arg(long, default_value = "0.0.0.0:9478")]
    pub metrics_addr: SocketAddr,
    /// Seconds between two reads of every interposer's stats, processes and
    /// memory nodes (settings reach interposers at once, whatever this is).
    #[arg(long, default_value_t = 5.0)]
    pub observe_every: f64,
    /// Least seconds between two status writes that only change byte counts;
    /// a change of state is written at once. Every write costs the API server
    /// a decode, validation and watch fan-out of the whole TieringNode: at
    /// 1000 nodes, 10 s saturated a two-core control plane (see the scale
    /// benchmark); live bytes are in the metrics.
    #[arg(long, default_value_t = 60.0)]
    pub status_every: f64,
    /// Leave containers' `cpuset.mems` alone.
    #[arg(long)]
    pub no_memory_nodes: bool,
}

/// What the configure loop and the observe loop share. A lock is held only
/// to read or write its value, never across a socket request: an observe
/// pass (stats of every interposer) never delays a configure.
#[derive(Default)]
struct Shared {
    /// This machine's NUMA nodes as last read.
    facts: Mutex<Vec<NodeFacts>>,
    /// Per socket: why it could not be configured.
    refused: Mutex<HashMap<PathBuf, String>>,
}

impl Shared {
    /// The NUMA nodes, read now if they have not been yet.
    fn facts(&self, sysfs: &std::path::Path) -> Vec<NodeFacts> {
        let mut facts = self.facts.lock().expect("facts lock");
        if facts.is_empty() {
            match topology::read_facts(sysfs) {
                Ok(read) => *facts = read,
                Err(e) => warn!(error = format!("{e:#}"), "cannot read the NUMA topology"),
            }
        }
        facts.clone()
    }
}

/// The configure loop's memory. All of it can be rebuilt from the sockets:
/// it only saves sending a config an interposer already has.
struct Configurer {
    args: ServeArgs,
    /// Per socket: the socket's identity and the settings it confirmed.
    configured: HashMap<PathBuf, ((u64, i64), Settings)>,
}

impl Configurer {
    /// Sends each interposer of the spec's pods its policy's settings unless
    /// it has them. Returns how many were configured.
    fn configure(&mut self, spec: &TieringNodeSpec, policies: &Policies, shared: &Shared) -> usize {
        let facts = shared.facts(&self.args.sysfs);
        let mut seen = Vec::new();
        let mut work = Vec::new();
        for pod in &spec.pods {
            let Ok(resolved) = decide::resolve_pod(policies, pod, &facts) else { continue };
            for socket in sockets::pod_sockets(&self.args.kubelet_pods_dir, &pod.uid) {
                seen.push(socket.path.clone());
                let current = self.configured.get(&socket.path);
                if !current.is_some_and(|(id, s)| *id == socket.identity && *s == resolved) {
                    work.push((pod, socket, resolved.clone()));
                }
            }
        }
        let results = in_parallel(&work, |(_, socket, resolved)| control::configure(&socket.path, resolved));
        let mut refused = shared.refused.lock().expect("refused lock");
        let mut sent = 0;
        for ((pod, socket, resolved), result) in work.into_iter().zip(results) {
            match result {
                Ok(_) => {
                    sent += 1;
                    debug!(namespace = pod.namespace, pod = pod.name, container = socket.container, "configured");
                    refused.remove(&socket.path);
                    self.configured.insert(socket.path, (socket.identity, resolved));
                }
                Err(e) => {
                    let why = format!("{e:#}");
                    if refused.get(&socket.path) != Some(&why) {
                        let (namespace, name, container) = (&pod.namespace, &pod.name, &socket.container);
                        warn!(namespace, pod = name, container, error = why, "cannot configure an interposer");
                    }
                    self.configured.remove(&socket.path);
                    refused.insert(socket.path, why);
                }
            }
        }
        self.configured.retain(|path, _| seen.contains(path));
        refused.retain(|path, _| seen.contains(path));
        sent
    }
}

/// The observe loop's memory: the shim it installed.
struct Observer {
    args: ServeArgs,
    shim: Result<shim::Installed, String>,
    shim_checked: Option<Instant>,
}

impl Observer {
    fn new(args: ServeArgs) -> Observer {
        Observer { args, shim: Err("not installed yet".into()), shim_checked: None }
    }

    /// Installs (or re-checks) the shim at most once a minute.
    fn ensure_shim(&mut self) {
        if self.shim_checked.is_some_and(|at| at.elapsed() < Duration::from_secs(60)) && self.shim.is_ok() {
            return;
        }
        self.shim_checked = Some(Instant::now());
        let result = crate::standalone::find_shim(self.args.shim.clone())
            .and_then(|source| shim::install(&source, &self.args.shim_host_dir));
        match &result {
            Ok(installed) if installed.switched => {
                info!(version = installed.version, dir = %installed.dir.display(), "shim installed and made current")
            }
            Ok(_) => {}
            Err(e) => warn!(error = format!("{e:#}"), "cannot install the shim"),
        }
        self.shim = result.map_err(|e| format!("{e:#}"));
    }

    /// Re-reads the NUMA topology, then every pod's interposers, processes
    /// and cgroups; sets memory nodes; returns the pods' findings.
    fn observe(
        &mut self,
        spec: &TieringNodeSpec,
        policies: &Policies,
        container_names: &HashMap<String, String>,
        shared: &Shared,
    ) -> Vec<PodFindings> {
        let facts = match topology::read_facts(&self.args.sysfs) {
            Ok(read) => {
                *shared.facts.lock().expect("facts lock") = read.clone();
                read
            }
            Err(e) => {
                warn!(error = format!("{e:#}"), "cannot read the NUMA topology");
                shared.facts.lock().expect("facts lock").clone()
            }
        };
        let refused = shared.refused.lock().expect("refused lock").clone();
        let cgroups = cgroups::find_pods(&cgroups::hierarchy(&self.args.cgroup_root));
        let mut all = Vec::new();
        for pod in &spec.pods {
            let mut found = PodFindings::default();
            let resolved = decide::resolve_pod(policies, pod, &facts);
            if let Err(why) = &resolved {
                found.invalid = Some(why.clone());
            }
            let sockets = sockets::pod_sockets(&self.args.kubelet_pods_dir, &pod.uid);
            let outcomes = in_parallel(&sockets, |socket| match refused.get(&socket.path) {
                Some(why) => Err(why.clone()),
                None => control::stats(&socket.path).map_err(|e| format!("{e:#}")),
            });
            for (socket, outcome) in sockets.into_iter().zip(outcomes) {
                found.interposers.push(InterposerView { container: socket.container, outcome });
            }
            if let Some(cgroup) = cgroups.get(&pod.uid) {
                for container in &cgroup.containers {
                    let name = container_names.get(&container.id).cloned().unwrap_or_else(|| short(&container.id));
                    for pid in cgroups::procs(&container.dir) {
                        let Some(facts) = processes::read(&self.args.proc, pid) else { continue };
                        if facts.python.is_some() && !facts.interposer_loaded {
                            found
                                .without_interposer
                                .push(format!("container {name}: {}", facts.why_not_loaded(SHIM_PYTHONPATH)));
                        }
                    }
                    if let (Ok(resolved), false) = (&resolved, self.args.no_memory_nodes) {
                        let mems = decide::mems(resolved);
                        match cgroups::set_mems(&container.dir, &mems) {
                            Ok(true) => info!(
                                namespace = pod.namespace,
                                pod = pod.name,
                                container = name,
                                mems,
                                "memory nodes set"
                            ),
                            Ok(false) => {}
                            Err(e) => found.warnings.push(format!("container {name}: memory nodes not set: {e:#}")),
                        }
                    }
                }
            }
            all.push(found);
        }
        all
    }
}

/// `f` over `items` on up to 16 threads at once, results in order: socket
/// requests wait on other processes, so one slow interposer must not hold up
/// the rest. Each thread takes the next item when it is done with one.
fn in_parallel<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    const THREADS: usize = 16;
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut done: Vec<(usize, R)> = std::thread::scope(|scope| {
        let (f, next) = (&f, &next);
        let threads: Vec<_> = (0..THREADS.min(items.len()))
            .map(|_| {
                scope.spawn(move || {
                    let mut out = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some(item) = items.get(i) else { return out };
                        out.push((i, f(item)));
                    }
                })
            })
            .collect();
        threads.into_iter().flat_map(|t| t.join().expect("socket requests do not panic")).collect()
    });
    done.sort_unstable_by_key(|(i, _)| *i);
    done.into_iter().map(|(_, r)| r).collect()
}

fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Container id (without `containerd://`) to name, for this node's pods.
fn container_names(pods: &Store<Pod>) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for pod in pods.state() {
        for status in pod.status.iter().flat_map(|s| s.container_statuses.iter().flatten()) {
            if let Some((_, id)) = status.container_id.as_deref().and_then(|id| id.split_once("://")) {
                names.insert(id.to_string(), status.name.clone());
            }
        }
    }
    names
}

/// The settings of the policies governing `pods`, as the watch last saw them.
fn policies_of(store: &Store<TieringPolicy>, pods: &[PodTiering]) -> Policies {
    let mut policies = Policies::new();
    for pod in pods {
        let key = (pod.namespace.clone(), pod.policy.clone());
        if policies.contains_key(&key) {
            continue;
        }
        if let Some(policy) = store.get(&ObjectRef::new(&pod.policy).within(&pod.namespace)) {
            let generation = policy.metadata.generation.unwrap_or_default();
            policies.insert(key, (generation, policy.spec.settings.clone()));
        }
    }
    policies
}

/// The node's conditions, keeping transition times of those that did not change.
fn conditions(old: Option<&TieringNodeStatus>, ready: bool, reason: &str, message: String) -> Vec<Condition> {
    let status = if ready { "True" } else { "False" };
    let previous = old.and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"));
    let since = match previous {
        Some(c) if c.status == status && c.reason == reason => c.last_transition_time.clone(),
        _ => Time(k8s_openapi::jiff::Timestamp::now()),
    };
    vec![Condition {
        type_: "Ready".into(),
        status: status.into(),
        reason: reason.into(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }]
}

pub async fn run(args: ServeArgs) -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    if !(args.observe_every > 0.0 && args.status_every >= 0.0) {
        anyhow::bail!("--observe-every must be positive and --status-every at least 0");
    }
    let client = Client::try_default().await.context("cannot connect to the Kubernetes API server")?;
    let node = args.node_name.clone();
    info!(node, "node agent starting");

    let wake = Arc::new(Notify::new());
    let spec_error: Arc<Mutex<Option<String>>> = Arc::default();
    let tiering_nodes = watch::<TieringNode>(
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("metadata.name={node}")),
        wake.clone(),
        spec_error.clone(),
    );
    let pods = watch::<Pod>(
        Api::all(client.clone()),
        watcher::Config::default().fields(&format!("spec.nodeName={node}")),
        wake.clone(),
        Arc::default(),
    );
    // The settings come from the policies themselves: an edit reaches this
    // agent as one watch event, with no TieringNode written.
    let policy_error: Arc<Mutex<Option<String>>> = Arc::default();
    let policies = watch::<TieringPolicy>(
        Api::all(client.clone()),
        watcher::Config::default(),
        wake.clone(),
        policy_error.clone(),
    );

    let snapshot: metrics::Shared = Arc::default();
    let registry = Arc::new(metrics::registry(&node, snapshot.clone()));
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let listener = tokio::net::TcpListener::bind(args.metrics_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.metrics_addr))?;
    let handler_ready = ready.clone();
    let handler: pytier_admin::http::Handler = Arc::new(move |method, path, _body| match (method, path) {
        (&Method::GET, "/metrics") => (StatusCode::OK, metrics::CONTENT_TYPE, metrics::encode(&registry).into_bytes()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", b"ok".to_vec()),
        (&Method::GET, "/readyz") if handler_ready.load(std::sync::atomic::Ordering::Relaxed) => {
            (StatusCode::OK, "text/plain", b"ok".to_vec())
        }
        (&Method::GET, "/readyz") => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"not ready".to_vec()),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found".to_vec()),
    });
    tokio::spawn(pytier_admin::http::serve(listener, None, handler));

    let shared = Arc::new(Shared::default());
    let reporter = Reporter {
        api: Api::all(client),
        node: node.clone(),
        tiering_nodes: tiering_nodes.clone(),
        pods,
        policies: policies.clone(),
        spec_error,
        policy_error,
        snapshot,
        ready,
        observe_every: Duration::from_secs_f64(args.observe_every),
        status_every: Duration::from_secs_f64(args.status_every),
    };
    tokio::spawn(reporter.run(Observer::new(args.clone()), shared.clone()));

    // The configure loop: settings go out as soon as the spec or a policy changes.
    let configurer = Arc::new(Mutex::new(Configurer { args, configured: HashMap::new() }));
    let mut shutdown = std::pin::pin!(pytier_admin::shutdown_signal());
    loop {
        tokio::select! {
            _ = &mut shutdown => {
                info!("stopping; interposers keep running as they are");
                return Ok(());
            }
            _ = wake.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        let spec = tiering_nodes.get(&ObjectRef::new(&node)).map(|tn| tn.spec.clone()).unwrap_or_default();
        let governing = policies_of(&policies, &spec.pods);
        let (configurer, shared) = (configurer.clone(), shared.clone());
        let _ = tokio::task::spawn_blocking(move || {
            let mut configurer = configurer.lock().expect("the configurer's lock is never poisoned: it does not panic");
            configurer.configure(&spec, &governing, &shared)
        })
        .await;
    }
}

/// The observe loop: every `observe_every`, reads what every pod's
/// interposers and cgroups show, publishes it as metrics and writes the
/// TieringNode's status.
struct Reporter {
    api: Api<TieringNode>,
    node: String,
    tiering_nodes: Store<TieringNode>,
    pods: Store<Pod>,
    policies: Store<TieringPolicy>,
    /// Why this agent cannot read its TieringNode, if it cannot.
    spec_error: Arc<Mutex<Option<String>>>,
    /// Why this agent cannot read the TieringPolicies, if it cannot.
    policy_error: Arc<Mutex<Option<String>>>,
    snapshot: metrics::Shared,
    ready: Arc<std::sync::atomic::AtomicBool>,
    observe_every: Duration,
    status_every: Duration,
}

/// What one observe pass found.
struct Pass {
    /// Per pod of the spec, in its order.
    findings: Vec<PodFindings>,
    numa: Vec<NumaNode>,
    shim_error: Option<String>,
    spec_pods: Vec<PodTiering>,
    /// The generation of each policy whose settings the pods get.
    in_use: Vec<PolicyGeneration>,
}

impl Reporter {
    async fn run(self, mut observer: Observer, shared: Arc<Shared>) {
        let mut last_written: Option<(TieringNodeStatus, Instant)> = None;
        loop {
            let tn = self.tiering_nodes.get(&ObjectRef::new(&self.node));
            let spec = tn.as_ref().map(|tn| tn.spec.clone()).unwrap_or_default();
            let policies = policies_of(&self.policies, &spec.pods);
            let names = container_names(&self.pods);
            let shared = shared.clone();
            let pass = tokio::task::spawn_blocking(move || {
                observer.ensure_shim();
                let findings = observer.observe(&spec, &policies, &names, &shared);
                let facts = shared.facts.lock().expect("facts lock").clone();
                let pass = Pass {
                    findings,
                    numa: topology::classify(&facts, &Overrides::default()).unwrap_or_default(),
                    shim_error: observer.shim.clone().err(),
                    in_use: decide::generations(&policies, &spec.pods),
                    spec_pods: spec.pods,
                };
                (observer, pass)
            })
            .await;
            let Ok((back, pass)) = pass else {
                warn!("an observe pass failed; observing stops");
                return;
            };
            observer = back;
            self.report(tn, pass, &mut last_written).await;
            tokio::time::sleep(self.observe_every).await;
        }
    }

    /// Publishes one pass's findings as metrics and writes the status when
    /// it changed (at once for a change of state, else at most every
    /// `status_every`).
    async fn report(
        &self,
        tn: Option<Arc<TieringNode>>,
        pass: Pass,
        last_written: &mut Option<(TieringNodeStatus, Instant)>,
    ) {
        let Pass { findings, numa, shim_error, spec_pods, in_use } = pass;
        let node = &self.node;
        let statuses: Vec<_> = spec_pods.iter().zip(&findings).map(|(p, f)| decide::pod_status(p, f)).collect();
        *self.snapshot.lock().expect("metrics snapshot lock") = Snapshot {
            numa_nodes: numa.clone(),
            pods: spec_pods
                .iter()
                .zip(&findings)
                .zip(&statuses)
                .map(|((pod, found), status)| PodSample {
                    namespace: pod.namespace.clone(),
                    name: pod.name.clone(),
                    policy: pod.policy.clone(),
                    state: status.state,
                    interposers: found
                        .interposers
                        .iter()
                        .filter_map(|v| Some((v.container.clone(), v.outcome.clone().ok()?)))
                        .collect(),
                })
                .collect(),
        };
        self.ready.store(true, std::sync::atomic::Ordering::Relaxed);

        let spec_error = self.spec_error.lock().expect("spec error lock").clone();
        let Some(tn) = tn else {
            if let Some(e) = spec_error {
                // The object exists but this agent cannot read it: say so on it.
                let message = format!("this agent cannot read the TieringNode (from a newer pytier?): {e}");
                let patch = Patch::Merge(
                    json!({ "status": { "conditions": conditions(None, false, "SpecUnreadable", message) } }),
                );
                if let Err(e) = self.api.patch_status(node, &PatchParams::default(), &patch).await {
                    debug!(node, error = %e, "cannot write the TieringNode status");
                }
            } else {
                debug!(node, "no TieringNode for this node yet");
            }
            return;
        };
        let mut status = decide::node_status(numa, statuses, in_use, tn.metadata.generation);
        let unmanaged: Vec<String> = status
            .pods
            .iter()
            .filter(|p| p.state != PodState::Managed)
            .map(|p| format!("{}/{}: {}", p.namespace, p.name, p.message.as_deref().unwrap_or("not managed")))
            .collect();
        let (ok, reason, message) = if let Some(e) = spec_error {
            (false, "SpecUnreadable", format!("this agent cannot read the TieringNode (from a newer pytier?): {e}"))
        } else if let Some(e) = self.policy_error.lock().expect("policy error lock").clone() {
            (
                false,
                "PolicyUnreadable",
                format!("this agent cannot read the TieringPolicies (from a newer pytier?): {e}"),
            )
        } else if let Some(e) = shim_error {
            (false, "ShimNotInstalled", e)
        } else if !unmanaged.is_empty() {
            (false, "PodsNotManaged", unmanaged.join("; "))
        } else {
            (true, "AllPodsManaged", format!("{} pods managed", status.managed_pods))
        };
        let old = last_written.as_ref().map(|(s, _)| s).or(tn.status.as_ref());
        status.conditions = conditions(old, ok, reason, message);
        let due = last_written.as_ref().is_none_or(|(_, at)| at.elapsed() >= self.status_every);
        if decide::significant_change(old, &status) || (due && Some(&status) != old) {
            let patch = Patch::Merge(json!({ "status": status }));
            match self.api.patch_status(node, &PatchParams::default(), &patch).await {
                Ok(_) => *last_written = Some((status, Instant::now())),
                Err(e) => warn!(node, error = %e, "cannot write the TieringNode status"),
            }
        }
    }
}

/// A reflector store kept by a background watch; every change wakes the
/// agent. A watch error (the API server away, an object this agent cannot
/// read) is logged and kept in `error` until the next good event.
fn watch<K>(api: Api<K>, config: watcher::Config, wake: Arc<Notify>, error: Arc<Mutex<Option<String>>>) -> Store<K>
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config).default_backoff().reflect(writer);
    tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(_) => *error.lock().expect("watch error lock") = None,
                Err(e) => {
                    warn!(kind = K::kind(&()).as_ref(), error = %e, "watch failed; retrying");
                    *error.lock().expect("watch error lock") = Some(e.to_string());
                }
            }
            wake.notify_one();
        }
    });
    reader
}

#[cfg(test)]
mod tests {
    use super::in_parallel;

    #[test]
    fn in_parallel_returns_every_result_in_order() {
        let items: Vec<u64> = (0..50).collect();
        // Early items are the slow ones: the others must not queue behind them.
        let out = in_parallel(&items, |&i| {
            std::thread::sleep(std::time::Duration::from_millis(if i < 4 { 20 } else { 1 }));
            i * 2
        });
        assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
        assert!(in_parallel(&[] as &[u64], |&i| i).is_empty());
    }
}
