//! Simulated node agents, one task per node, doing against the API server
//! what `node-agent serve` does:
//! - each watches the TieringPolicies over a watch of its own (the agent
//!   reads its pods' settings from the policies) and notes when it saw each
//!   policy's settings;
//! - each writes its TieringNode's status at once when the spec changes (a
//!   new generation), otherwise when its pods' byte counts changed and
//!   `every` (the agent's `--status-every`, 60 s by default) has passed. The
//!   bytes move at every write, so each node with pods writes once per
//!   `every`, at a phase of its own.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use pytier_crds::node::{PodState, PodStatus, PolicyGeneration, TieringNodeStatus};
use pytier_crds::{TieringNode, TieringPolicy};
use serde_json::json;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

pub struct Agents {
    stop: watch::Sender<bool>,
    tasks: JoinSet<()>,
    counts: Arc<Counts>,
    started: Instant,
    /// Per node: what its agent saw of each policy.
    pub seen: HashMap<String, Arc<Seen>>,
    /// Woken whenever an agent sees a policy change.
    pub saw_change: Arc<Notify>,
}

/// What one agent's policy watch delivered: per namespace, the generation,
/// scan interval and arrival time of the policy it last saw there.
#[derive(Default)]
pub struct Seen(Mutex<HashMap<String, (i64, u32, Instant)>>);

impl Seen {
    /// The scan interval of the namespace's policy and when it arrived.
    pub fn scan_interval(&self, namespace: &str) -> Option<(u32, Instant)> {
        self.0.lock().unwrap().get(namespace).map(|&(_, value, at)| (value, at))
    }

    fn generation(&self, namespace: &str) -> Option<i64> {
        self.0.lock().unwrap().get(namespace).map(|&(generation, _, _)| generation)
    }
}

#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    failures: AtomicU64,
    latencies: Mutex<Vec<f64>>,
}

/// What the agents did.
pub struct Report {
    pub writes: u64,
    pub failures: u64,
    pub per_second: f64,
    /// Seconds one status write took, as the agent sees it.
    pub latencies: Vec<f64>,
}

impl Agents {
    /// One agent per `(node, wake-up on its TieringNode's changes)`.
    pub fn start(
        client: &Client,
        store: &Store<TieringNode>,
        nodes: Vec<(String, Arc<Notify>)>,
        every: Duration,
    ) -> Agents {
        let (stop, stopped) = watch::channel(false);
        let counts = Arc::new(Counts::default());
        let saw_change = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        let mut seen = HashMap::new();
        let count = nodes.len().max(1) as u32;
        for (i, (node, changed)) in nodes.into_iter().enumerate() {
            let policies = Arc::new(Seen::default());
            seen.insert(node.clone(), policies.clone());
            tasks.spawn(watch_policies(client.clone(), policies.clone(), saw_change.clone(), stopped.clone()));
            let agent = Agent {
                api: Api::all(client.clone()),
                store: store.clone(),
                node,
                changed,
                policies,
                every,
                counts: counts.clone(),
            };
            tasks.spawn(agent.run(every * i as u32 / count, stopped.clone()));
        }
        Agents { stop, tasks, counts, started: Instant::now(), seen, saw_change }
    }

    pub async fn stop(mut self) -> Report {
        let _ = self.stop.send(true);
        while self.tasks.join_next().await.is_some() {}
        let writes = self.counts.writes.load(Ordering::Relaxed);
        Report {
            writes,
            failures: self.counts.failures.load(Ordering::Relaxed),
            per_second: writes as f64 / self.started.elapsed().as_secs_f64(),
            latencies: std::mem::take(&mut self.counts.latencies.lock().unwrap()),
        }
    }
}

/// One agent's watch of every TieringPolicy, as the real agent keeps it.
async fn watch_policies(client: Client, seen: Arc<Seen>, saw_change: Arc<Notify>, mut stop: watch::Receiver<bool>) {
    let events = watcher(Api::<TieringPolicy>::all(client), watcher::Config::default()).default_backoff();
    let mut events = std::pin::pin!(events);
    loop {
        let event = tokio::select! {
            event = events.next() => event,
            _ = stop.changed() => return,
        };
        let Some(event) = event else { return };
        if let Ok(watcher::Event::Apply(policy) | watcher::Event::InitApply(policy)) = event {
            let at = Instant::now();
            let value = policy.spec.settings.tracking.scan_interval_millis;
            let generation = policy.metadata.generation.unwrap_or_default();
            seen.0.lock().unwrap().insert(policy.namespace().unwrap_or_default(), (generation, value, at));
            saw_change.notify_waiters();
        }
    }
}

struct Agent {
    api: Api<TieringNode>,
    store: Store<TieringNode>,
    node: String,
    changed: Arc<Notify>,
    policies: Arc<Seen>,
    every: Duration,
    counts: Arc<Counts>,
}

impl Agent {
    async fn run(self, phase: Duration, mut stop: watch::Receiver<bool>) {
        let mut due = Instant::now() + phase;
        let mut written_generation = None;
        let mut round = 0u64;
        loop {
            let tn = self.store.get(&ObjectRef::new(&self.node));
            if let Some(tn) = tn.filter(|tn| !tn.spec.pods.is_empty())
                && (tn.metadata.generation != written_generation || Instant::now() >= due)
            {
                round += 1;
                self.write(&tn, round).await;
                written_generation = tn.metadata.generation;
                due = Instant::now() + self.every;
            }
            if Instant::now() >= due {
                due = Instant::now() + self.every; // nothing to report yet
            }
            tokio::select! {
                () = self.changed.notified() => {}
                () = tokio::time::sleep_until(due.into()) => {}
                _ = stop.changed() => return,
            }
        }
    }

    async fn write(&self, tn: &TieringNode, round: u64) {
        const MIB: u64 = 1 << 20;
        let pods: Vec<PodStatus> = (tn.spec.pods.iter().enumerate())
            .map(|(i, p)| PodStatus {
                namespace: p.namespace.clone(),
                name: p.name.clone(),
                state: PodState::Managed,
                processes: 1,
                dram_bytes: (64 + (round + i as u64) % 16) * MIB,
                cxl_bytes: (192 + (round + i as u64) % 32) * MIB,
                ..Default::default()
            })
            .collect();
        let mut policies: Vec<PolicyGeneration> = (tn.spec.pods.iter())
            .filter_map(|p| {
                let generation = self.policies.generation(&p.namespace)?;
                Some(PolicyGeneration { namespace: p.namespace.clone(), name: p.policy.clone(), generation })
            })
            .collect();
        policies.sort_by(|a, b| a.namespace.cmp(&b.namespace));
        policies.dedup();
        let status = TieringNodeStatus {
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "AllPodsManaged".into(),
                message: format!("{} pods managed", pods.len()),
                last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
                observed_generation: tn.metadata.generation,
            }],
            observed_generation: tn.metadata.generation,
            dram_nodes: Some("0".into()),
            cxl_nodes: Some("1".into()),
            managed_pods: pods.len() as u32,
            pods,
            policies,
            ..Default::default()
        };
        let start = Instant::now();
        let patch = Patch::Merge(json!({ "status": status }));
        match self.api.patch_status(&tn.name_any(), &PatchParams::default(), &patch).await {
            Ok(_) => {
                self.counts.writes.fetch_add(1, Ordering::Relaxed);
                self.counts.latencies.lock().unwrap().push(start.elapsed().as_secs_f64());
            }
            Err(_) => {
                self.counts.failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
