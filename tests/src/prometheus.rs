//! A real Prometheus (Debian's `prometheus` package) scraping test targets.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};

use crate::{ControlPlane, spawn_logged};

pub struct Prometheus {
    child: Child,
    log: PathBuf,
    pub addr: String,
}

impl Prometheus {
    /// Starts Prometheus scraping each job's targets (host:port) every
    /// second, and evaluating the rule files `rules` (Prometheus's own
    /// format) every second.
    pub fn start(plane: &ControlPlane, jobs: &[(&str, &[&str])], rules: &[&Path]) -> Result<Prometheus> {
        let bin = which("prometheus")
            .context("no prometheus binary: install Debian's prometheus package (tests/run does)")?;
        let dir = tempfile::Builder::new().prefix("prometheus-").tempdir_in(plane.data_dir())?.keep();
        let config = dir.join("prometheus.yml");
        let mut text = String::from("global: {scrape_interval: 1s, evaluation_interval: 1s}\n");
        text += &format!("rule_files: {}\n", serde_json::to_string(rules)?);
        text += "scrape_configs:\n";
        for (job, targets) in jobs {
            text += &format!(
                "  - job_name: {}\n    static_configs:\n      - targets: {}\n",
                serde_json::to_string(job)?,
                serde_json::to_string(targets)?
            );
        }
        std::fs::write(&config, text)?;
        let addr = format!("127.0.0.1:{}", crate::controlplane::free_port()?);
        let log = dir.join("prometheus.log");
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"));
        let child = spawn_logged(&mut cmd, &log)?;
        Ok(Prometheus { child, log, addr })
    }

    /// The `data.result` of an instant query.
    pub fn query(&self, query: &str) -> Result<Vec<serde_json::Value>> {
        let path = format!("/api/v1/query?query={}", encode(query));
        let body = crate::http_get(&self.addr, &path)?;
        let reply: serde_json::Value = serde_json::from_str(&body)?;
        if reply["status"] != "success" {
            bail!("query {query:?}: {reply}");
        }
        Ok(reply["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The rule groups as Prometheus evaluates them (`/api/v1/rules`).
    pub fn rule_groups(&self) -> Result<Vec<serde_json::Value>> {
        let reply: serde_json::Value = serde_json::from_str(&crate::http_get(&self.addr, "/api/v1/rules")?)?;
        if reply["status"] != "success" {
            bail!("/api/v1/rules: {reply}");
        }
        Ok(reply["data"]["groups"].as_array().cloned().unwrap_or_default())
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- {}:\n{}", self.log.display(), self.log_text());
        }
    }
}

/// Percent-encodes a query for a URL.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn which(name: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join(name)).find(|p| p.is_file())
}

/// `promtool check metrics` on `text`: its complaints, empty when clean.
pub fn promtool_check(text: &str) -> Result<String> {
    use std::io::Write;
    let bin = which("promtool").context("no promtool: install Debian's prometheus package (tests/run does)")?;
    let mut child = Command::new(bin)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    child.stdin.take().context("stdin")?.write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    Ok(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)).trim().to_string())
}

/// (dashboard, panel title, PromQL) of every panel target and every query
/// variable (`label_values(M, L)` run as `count by (L) (M)`) of the dashboards
/// the chart ships.
pub fn dashboard_queries() -> Vec<(String, String, String)> {
    let mut queries = Vec::new();
    let dir = crate::repo_root().join("charts/pytier/dashboards");
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let title = dashboard["title"].as_str().unwrap().to_string();
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            let Some(q) = variable["query"]["query"].as_str() else { continue };
            let (metric, label) = q
                .strip_prefix("label_values(")
                .and_then(|q| q.strip_suffix(')'))
                .and_then(|q| q.rsplit_once(", "))
                .unwrap_or_else(|| panic!("{title}: variable query {q} is not label_values(metric, label)"));
            queries.push((
                title.clone(),
                format!("${}", variable["name"].as_str().unwrap()),
                format!("count by ({label}) ({metric})"),
            ));
        }
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap().to_string();
                queries.push((title.clone(), panel["title"].as_str().unwrap().to_string(), expr));
            }
        }
    }
    queries
}
