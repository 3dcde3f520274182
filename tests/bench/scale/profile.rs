//! Where the operator's work goes: its CPU time and its own counters
//! (reconciles by controller, API requests by verb and resource, bytes sent),
//! sampled at phase boundaries, beside how busy the machine's cores were and
//! who kept them busy (the API server, etcd, kwok, the benchmark itself); and
//! the histogram arithmetic the benchmark needs for Prometheus text.

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use anyhow::{Context, Result};
use pytier_tests::operator::Operator;

/// The phases of one run, each ended by `end`.
pub struct Profile {
    last: Snapshot,
    /// The other processes on the machine whose CPU is reported, by name.
    others: Vec<(&'static str, u32)>,
    pub phases: Vec<Phase>,
}

impl Profile {
    pub fn start(op: &Operator, others: Vec<(&'static str, u32)>) -> Result<Profile> {
        Ok(Profile { last: Snapshot::take(op, &others)?, others, phases: Vec::new() })
    }

    /// Ends the phase `name`, begun when the last one ended.
    pub fn end(&mut self, name: &'static str, op: &Operator) -> Result<()> {
        let now = Snapshot::take(op, &self.others)?;
        self.phases.push(Phase::between(name, &self.last, &now));
        self.last = now;
        Ok(())
    }
}

/// The operator's counters and CPU time at one moment, and the machine's.
struct Snapshot {
    at: Instant,
    cpu_seconds: f64,
    /// Series (name and labels, as exposed) → value.
    series: HashMap<String, f64>,
    machine: MachineTicks,
    /// CPU seconds of the other processes, in `Profile::others`' order.
    others: Vec<(&'static str, f64)>,
}

impl Snapshot {
    fn take(op: &Operator, others: &[(&'static str, u32)]) -> Result<Snapshot> {
        let text = op.get("/metrics")?;
        let series = text
            .lines()
            .filter(|l| {
                l.starts_with("pytier_operator_reconciles_total") || l.starts_with("pytier_operator_api_request")
            })
            .filter_map(|l| l.rsplit_once(' '))
            .filter_map(|(series, value)| Some((series.to_string(), value.parse().ok()?)))
            .collect();
        let others = others.iter().map(|&(name, pid)| Ok((name, cpu_seconds(pid)?))).collect::<Result<_>>()?;
        let machine = MachineTicks::read()?;
        Ok(Snapshot { at: Instant::now(), cpu_seconds: cpu_seconds(op.pid())?, series, machine, others })
    }
}

/// The machine's CPU time in clock ticks, all cores together (`/proc/stat`).
#[derive(Clone, Copy)]
struct MachineTicks {
    busy: u64,
    total: u64,
    cores: usize,
}

impl MachineTicks {
    fn read() -> Result<MachineTicks> {
        let stat = std::fs::read_to_string("/proc/stat")?;
        let line = stat.lines().find(|l| l.starts_with("cpu ")).context("no cpu line in /proc/stat")?;
        // user nice system idle iowait irq softirq steal (guest time is in user).
        let ticks: Vec<u64> = line.split_whitespace().skip(1).take(8).map(str::parse).collect::<Result<_, _>>()?;
        let total: u64 = ticks.iter().sum();
        let cores = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
        Ok(MachineTicks { busy: total - ticks[3] - ticks[4], total, cores })
    }
}

/// What the operator did between two snapshots.
pub struct Phase {
    pub name: &'static str,
    pub seconds: f64,
    pub cpu_seconds: f64,
    /// Controller → reconciles.
    pub reconciles: BTreeMap<String, f64>,
    /// "verb resource" → (requests, bytes sent).
    pub requests: BTreeMap<String, (f64, f64)>,
    /// Share of all the machine's cores that was busy (steal included).
    pub machine_busy: f64,
    pub cores: usize,
    /// Other processes' CPU, in cores (1.0 = one core all the time).
    pub others: Vec<(&'static str, f64)>,
}

impl Phase {
    fn between(name: &'static str, before: &Snapshot, after: &Snapshot) -> Phase {
        let delta = |series: &str| after.series[series] - before.series.get(series).unwrap_or(&0.0);
        let mut phase = Phase {
            name,
            seconds: (after.at - before.at).as_secs_f64(),
            cpu_seconds: after.cpu_seconds - before.cpu_seconds,
            reconciles: BTreeMap::new(),
            requests: BTreeMap::new(),
            machine_busy: (after.machine.busy - before.machine.busy) as f64
                / (after.machine.total - before.machine.total).max(1) as f64,
            cores: after.machine.cores,
            others: Vec::new(),
        };
        let seconds = phase.seconds.max(f64::MIN_POSITIVE);
        phase.others = (after.others.iter().zip(&before.others))
            .map(|(&(name, now), &(_, then))| (name, (now - then) / seconds))
            .collect();
        for series in after.series.keys() {
            let labels = labels(series);
            let request = || format!("{} {}", labels["verb"], labels["resource"]);
            if series.starts_with("pytier_operator_reconciles_total{") {
                phase.reconciles.insert(labels["controller"].clone(), delta(series));
            } else if series.starts_with("pytier_operator_api_requests_total{") {
                phase.requests.entry(request()).or_default().0 += delta(series);
            } else if series.starts_with("pytier_operator_api_request_bytes_total{") {
                phase.requests.entry(request()).or_default().1 += delta(series);
            }
        }
        phase.requests.retain(|_, (n, _)| *n > 0.0);
        phase
    }

    /// Requests of one verb and resource ("patch tieringpolicies/status").
    pub fn count(&self, verb_resource: &str) -> f64 {
        self.requests.get(verb_resource).map_or(0.0, |r| r.0)
    }

    pub fn print(&self) {
        println!(
            "  {:<18} {:>6.1} s, operator CPU {:>5.1} s ({:.1}% of a core)",
            self.name,
            self.seconds,
            self.cpu_seconds,
            100.0 * self.cpu_seconds / self.seconds
        );
        let others: Vec<String> =
            self.others.iter().map(|(name, cores)| format!("{name} {:.0}%", 100.0 * cores)).collect();
        println!(
            "      machine: {:.0}% of {} cores busy; of a core: {}",
            100.0 * self.machine_busy,
            self.cores,
            others.join(", ")
        );
        let reconciles: Vec<String> = self.reconciles.iter().map(|(c, n)| format!("{c} {n:.0}")).collect();
        println!("      reconciles: {}", reconciles.join(", "));
        let mut requests: Vec<_> = self.requests.iter().collect();
        requests.sort_by(|a, b| b.1.0.total_cmp(&a.1.0));
        for (what, (n, bytes)) in requests {
            println!("      {n:>7.0} x {what:<34} {:>8.1} KiB sent", bytes / 1024.0);
        }
    }
}

/// `name{a="x",b="y"}` → {a: x, b: y}.
fn labels(series: &str) -> HashMap<String, String> {
    let inside = series.split_once('{').and_then(|(_, rest)| rest.strip_suffix('}')).unwrap_or("");
    inside
        .split("\",")
        .filter_map(|pair| pair.split_once("=\""))
        .map(|(k, v)| (k.to_string(), v.trim_end_matches('"').to_string()))
        .collect()
}

/// User + system CPU seconds a process has used.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("bad stat")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64)
}

/// Peak resident set size (VmHWM) of a process.
pub fn peak_rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse::<u64>().ok())
        .context("no VmHWM")?;
    Ok(kib * 1024)
}

/// The `q` quantile of `values` (nearest rank).
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len().max(1));
    v.get(rank - 1).copied().unwrap_or(f64::NAN)
}

/// A Prometheus histogram: cumulative counts by upper bound.
#[derive(Debug)]
pub struct Histogram {
    buckets: Vec<(f64, f64)>,
    pub count: f64,
}

impl Histogram {
    /// Sums the series of `name` whose labels contain every `labels` pair.
    pub fn parse(text: &str, name: &str, labels: &[(&str, &str)]) -> Result<Histogram> {
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

    pub fn minus(&self, before: &Histogram) -> Histogram {
        let old: HashMap<u64, f64> = before.buckets.iter().map(|(le, c)| (le.to_bits(), *c)).collect();
        let buckets: Vec<(f64, f64)> =
            self.buckets.iter().map(|(le, c)| (*le, c - old.get(&le.to_bits()).unwrap_or(&0.0))).collect();
        let count = buckets.last().map_or(0.0, |b| b.1);
        Histogram { buckets, count }
    }

    /// The share of observations at most `bound` (a bucket bound), NaN
    /// when no bucket ends there.
    pub fn share_within(&self, bound: f64) -> f64 {
        let within = self.buckets.iter().find(|(le, _)| (*le - bound).abs() < 1e-9);
        within.map_or(f64::NAN, |(_, c)| c / self.count.max(1.0))
    }

    /// Upper bound of the bucket holding the `q` quantile: what coarse
    /// buckets can honestly say.
    pub fn quantile_bound(&self, q: f64) -> f64 {
        let rank = q * self.count;
        self.buckets.iter().find(|(_, c)| *c >= rank).map_or(f64::NAN, |b| b.0)
    }

    /// The `q` quantile, interpolated within its bucket (as PromQL's
    /// histogram_quantile does).
    pub fn quantile(&self, q: f64) -> f64 {
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
