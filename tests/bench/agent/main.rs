//! Node agent benchmark: one real agent (release build, RBAC of
//! `deploy/node-agent`) managing N real Python services (default 50, one per
//! pod, each a small service with a changing heap) in real cgroups, with the
//! real operator and control plane.
//!
//! Measures, in one run:
//! - the agent's CPU time as a share of one core and its peak RSS while it
//!   manages them in steady state (stats every `--observe-every`, status
//!   writes, metrics scrapes every 15 s as Prometheus would);
//! - the time from a policy edit to every interposer holding the new
//!   settings (read back over each interposer's socket), p50/p99 over all
//!   interposers and edits.
//!
//! Run with `tests/bench/agent/run`; the last line is
//! `agent: cpu X%, rss Y MiB, configure p99 Z s`.

use std::time::{Duration, Instant};

/// How often each interposer is asked whether it has
/// the edited settings: the resolution of the latencies. Fifty threads asking
/// every 10 ms took enough CPU on two cores to slow the very path measured.
const PROBE_EVERY: Duration = Duration::from_millis(50);

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use pytier_contract::protocol::{Answer, Request};
use pytier_crds::TieringPolicy;
use pytier_tests::agent::{Driver, FakePod, NodeAgent, NodeDirs, PodProcess, SERVICE};
use pytier_tests::operator::{Operator, install_rbac};
use pytier_tests::{ControlPlane, repo_root};
use serde_json::json;

struct Args {
    processes: usize,
    edits: usize,
    seconds: f64,
}

fn parse() -> Result<Args> {
    let mut args = Args { processes: 50, edits: 10, seconds: 60.0 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--processes" => args.processes = value()?.parse()?,
            "--edits" => args.edits = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "-h" | "--help" => {
                println!("usage: agent-bench [--processes N] [--edits N] [--seconds S]");
                std::process::exit(0);
            }
            other => bail!("unknown flag {other}"),
        }
    }
    Ok(args)
}

/// The settings threshold an interposer holds, read over its socket.
fn threshold(socket: &std::path::Path) -> Option<f64> {
    use std::io::{BufRead, BufReader, Write};
    let mut stream = pytier_tests::connect_unix(socket).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream.write_all(format!("{}\n", Request::Settings.to_line()).as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(stream).read_line(&mut line).ok()?;
    match Answer::parse(line.as_bytes()).ok()? {
        Answer::Config(settings) => Some(settings.tracking.hot_threshold),
        _ => None,
    }
}

/// (utime + stime) in seconds and peak RSS in bytes of a process.
fn cpu_and_peak_rss(pid: u32) -> Result<(f64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat")?.1.split_whitespace().collect();
    let ticks = 100.0; // USER_HZ on Linux
    let cpu = (fields[11].parse::<f64>()? + fields[12].parse::<f64>()?) / ticks;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let hwm = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).context("VmHWM")?;
    let kib: u64 = hwm.trim().trim_end_matches(" kB").trim().parse()?;
    Ok((cpu, kib * 1024))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse()?;
    let plane = ControlPlane::start().await?;
    let c = plane.client();
    let kubeconfig = install_rbac(&plane).await?;
    let mut operator = Operator::start_with(&plane, &kubeconfig, "op", &[])?;
    operator.wait_ready()?;
    plane.apply_manifests(&repo_root().join("deploy/node-agent/rbac.yaml")).await?;
    let agent_kubeconfig = plane.kubeconfig_as_service_account("pytier-system", "pytier-node-agent")?;
    let node: Node = serde_json::from_value(json!({"metadata": {"name": "n1"}}))?;
    Api::<Node>::all(c.clone()).create(&PostParams::default(), &node).await?;
    let policies: Api<TieringPolicy> = Api::namespaced(c.clone(), "default");
    let policy: TieringPolicy = serde_json::from_value(json!({
        "metadata": {"name": "svc", "namespace": "default"},
        "spec": {"podSelector": {"matchLabels": {"app": "svc"}}, "tracking": {"hotThreshold": 1.0}},
    }))?;
    policies.create(&PostParams::default(), &policy).await?;

    let dirs = NodeDirs::new(&plane, "n1")?;
    let mut agent =
        NodeAgent::start(&plane, &agent_kubeconfig, "n1", &dirs, &["--observe-every", "5", "--status-every", "10"])?;
    agent.wait_ready()?;
    let pods_api: Api<Pod> = Api::namespaced(c.clone(), "default");
    let mut fakes = Vec::new();
    let mut processes: Vec<PodProcess> = Vec::new();
    let mut sockets = Vec::new();
    let started = Instant::now();
    for i in 0..args.processes {
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": format!("svc-{i}"), "namespace": "default", "labels": {"app": "svc"}},
            "spec": {"nodeName": "n1", "containers": [{"name": "app", "image": "python:3.11"}]},
        }))?;
        let uid = pods_api.create(&PostParams::default(), &pod).await?.uid().context("uid")?;
        let driver = if i % 2 == 0 { Driver::Cgroupfs } else { Driver::Systemd };
        let fake = FakePod::new(&dirs, &uid, "app", driver)?;
        let mut process = fake.spawn(&["python3", "-c", SERVICE], &[])?;
        let ready = process.line()?;
        let pid = ready.split(' ').nth(1).context("ready line")?;
        sockets.push(fake.socket_dir.join(format!("app.{pid}.sock")));
        fakes.push(fake);
        processes.push(process);
    }
    println!("{} Python services started in {:.1}s", args.processes, started.elapsed().as_secs_f64());

    // All configured with the first settings.
    let deadline = Instant::now() + Duration::from_secs(120);
    while sockets.iter().any(|s| threshold(s) != Some(1.0)) {
        if Instant::now() > deadline {
            bail!("not every interposer configured within 120s:\n{}", agent.log_text());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Steady state: CPU and RSS over the window, scraped like Prometheus.
    let (cpu0, _) = cpu_and_peak_rss(agent.pid())?;
    let window = Instant::now();
    let mut scrapes = 0;
    while window.elapsed().as_secs_f64() < args.seconds {
        tokio::time::sleep(Duration::from_secs(15).min(Duration::from_secs_f64(args.seconds))).await;
        agent.get("/metrics")?;
        scrapes += 1;
    }
    let (cpu1, rss_steady) = cpu_and_peak_rss(agent.pid())?;
    let cpu_share = (cpu1 - cpu0) / window.elapsed().as_secs_f64();

    // Edits: time until each interposer holds the new threshold.
    let mut latencies = Vec::new();
    for edit in 0..args.edits {
        let value = 2.0 + edit as f64 * 0.5;
        let patch = Patch::Merge(json!({"spec": {"tracking": {"hotThreshold": value}}}));
        let at = Instant::now();
        policies.patch("svc", &PatchParams::default(), &patch).await?;
        // Every interposer watched on a thread of its own, every PROBE_EVERY.
        let watchers: Vec<_> = sockets
            .iter()
            .cloned()
            .map(|socket| {
                std::thread::spawn(move || {
                    while threshold(&socket) != Some(value) {
                        if at.elapsed() > Duration::from_secs(60) {
                            return None;
                        }
                        std::thread::sleep(PROBE_EVERY);
                    }
                    Some(at.elapsed().as_secs_f64())
                })
            })
            .collect();
        for watcher in watchers {
            match watcher.join().expect("a watcher thread") {
                Some(latency) => latencies.push(latency),
                None => bail!("edit {edit}: an interposer was not configured within 60s"),
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    latencies.sort_by(f64::total_cmp);
    let (_, rss_peak) = cpu_and_peak_rss(agent.pid())?;

    let mut intact = 0;
    for process in processes {
        let (out, status) = process.finish()?;
        intact += (status.success() && out.contains("intact 20000")) as usize;
    }
    drop(fakes);

    println!();
    println!("{:<40} {}", "interposers managed", args.processes);
    println!(
        "{:<40} {:.2}% of a core over {:.0}s ({scrapes} scrapes)",
        "agent CPU, steady state",
        100.0 * cpu_share,
        args.seconds
    );
    println!(
        "{:<40} {:.1} MiB (steady {:.1} MiB)",
        "agent peak RSS",
        rss_peak as f64 / 1048576.0,
        rss_steady as f64 / 1048576.0
    );
    println!(
        "{:<40} p50 {:.3}s, p99 {:.3}s, max {:.3}s ({} edits x {} interposers)",
        "policy edit -> interposer configured",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0.0),
        args.edits,
        args.processes
    );
    println!("{:<40} {intact} of {}", "services with intact data", args.processes);
    println!(
        "agent: cpu {:.2}%, rss {:.1} MiB, configure p99 {:.3} s",
        100.0 * cpu_share,
        rss_peak as f64 / 1048576.0,
        percentile(&latencies, 0.99)
    );
    if intact != args.processes {
        bail!("{} services found their data changed", args.processes - intact);
    }
    Ok(())
}
