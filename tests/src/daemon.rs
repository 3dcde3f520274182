//! One of pytier's daemons (operator, node agent) running as a process with
//! its log in a file and its admin HTTP server on a loopback port.

use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

pub struct Daemon {
    pub child: Child,
    pub log: PathBuf,
    /// Address of `/metrics`, `/healthz`, `/readyz`.
    pub admin_addr: String,
    pub name: &'static str,
}

impl Daemon {
    /// The body of an admin endpoint; an error unless 200.
    pub fn get(&self, path: &str) -> Result<String> {
        crate::http_get(&self.admin_addr, path)
    }

    /// Waits until `/readyz` answers ok.
    pub fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.get("/readyz").is_err() {
            if let Some(status) = self.child.try_wait()? {
                bail!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
            if Instant::now() > deadline {
                bail!("{} not ready after 60s:\n{}", self.name, self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    /// SIGKILL: no chance to clean up, as in a crash.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Daemon {
    /// Kills it; when a test fails, shows the end of its log.
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- last lines of {}:\n{}",
                self.log.display(),
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}
