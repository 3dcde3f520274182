//! A real Prometheus (Debian's `prometheus` package) scraping test targets.

use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::{Context, Result, bail};

use crate::{ControlPlane, spawn_logged};

pub struct Prometheus {
    child: Child,
    log: PathBuf,
    pub addr: String,
}

impl Prometheus {
    /// Starts Prometheus scraping `targets` (host:port) every second.
    pub fn start(plane: &ControlPlane, job: &str, targets: &[&str]) -> Result<Prometheus> {
        let bin = which("prometheus")
            .context("no prometheus binary: install Debian's prometheus package (tests/run does)")?;
        let dir = plane.data_dir().join(format!("prometheus-{job}"));
        std::fs::create_dir_all(&dir)?;
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: {job}\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )?;
        let addr = format!("127.0.0.1:{}", crate::operator::free_port()?);
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
