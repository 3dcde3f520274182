//! Standalone mode: run one Python program under the interposer on this
//! machine and print what it sees, without Kubernetes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pytier_contract::Settings;
use pytier_contract::settings::DramBudget;

use crate::control;
use crate::outlook::{self, Outlook};
use crate::report;

/// The shim directory: `--shim`, else `pytier-shim` beside the directory of
/// this binary (where `interposer/build-shim.sh` puts it in a cargo build).
pub fn find_shim(flag: Option<PathBuf>) -> Result<PathBuf> {
    let shim = match flag {
        Some(dir) => dir,
        None => std::env::current_exe()?
            .parent()
            .and_then(Path::parent)
            .map(|d| d.join("pytier-shim"))
            .context("cannot locate the shim next to this binary")?,
    };
    if !shim.join("sitecustomize.py").is_file() || !shim.join("pytier/_native.so").is_file() {
        bail!("no interposer shim at {}: build it with interposer/build-shim.sh, or pass --shim DIR", shim.display());
    }
    Ok(shim)
}

/// How standalone mode shows a run.
pub struct Screen {
    /// Time between two looks at the program (a line each).
    pub every: Duration,
    /// Whether this machine has a CXL node (else: what CXL would do).
    pub has_cxl: bool,
    pub cxl_extra_ns: f64,
    /// Print one JSON document at exit instead of lines.
    pub json: bool,
    /// Write a picture of the run there at exit (`.html` or `.svg`).
    pub report: Option<PathBuf>,
}

/// Runs `program` with the shim first on PYTHONPATH (the user's PYTHONPATH
/// kept after it), printing a line every `screen.every` and a summary when
/// it exits. Returns the program's exit code.
pub fn run(program: &[String], shim: &Path, config: Option<&str>, screen: &Screen) -> Result<ExitCode> {
    let socket_dir = socket_dir()?;
    let socket = socket_dir.join("app.sock");
    let pythonpath = match std::env::var_os("PYTHONPATH") {
        Some(user) if !user.is_empty() => {
            let mut joined = shim.as_os_str().to_owned();
            joined.push(":");
            joined.push(user);
            joined
        }
        _ => shim.as_os_str().to_owned(),
    };
    let mut command = Command::new(&program[0]);
    command.args(&program[1..]).env("PYTHONPATH", pythonpath).env("PYTIER_SOCKET", &socket);
    if let Some(config) = config {
        command.env("PYTIER_CONFIG", config);
    }
    let mut child = command.spawn().with_context(|| format!("cannot start {:?}", program[0]))?;
    let say = |line: &str| {
        if !screen.json {
            println!("{line}");
        }
    };
    say(&format!(
        "running {:?} under pytier (pid {}, control socket {})",
        program.join(" "),
        child.id(),
        socket.display()
    ));
    say(&outlook::legend(screen.has_cxl));
    say(&Outlook::header());
    let started = Instant::now();
    let mut next_look = started + screen.every;
    let mut looks: Vec<Outlook> = Vec::new();
    let mut last_stats = None;
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() >= next_look {
            next_look += screen.every;
            let t = started.elapsed().as_secs_f64();
            match control::stats(&socket) {
                Ok(stats) => {
                    match Outlook::new(&stats, screen.has_cxl, screen.cxl_extra_ns) {
                        Some(look) => {
                            say(&look.line());
                            looks.push(look);
                        }
                        None => say(&format!("{t:>5.1}s  no full scan yet")),
                    }
                    last_stats = Some(stats);
                }
                // The interposer listens from a second after start-up.
                Err(e) => say(&format!("{t:>5.1}s  no stats yet ({e:#})")),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let _ = std::fs::remove_dir_all(&socket_dir);
    // Like a shell: 128 + signal for a program killed by a signal.
    let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
    let summary = match looks.last() {
        Some(look) => look.summary(screen.cxl_extra_ns),
        None => {
            "no full scan of the program's heap: it ended before one (pytier waits a second after start-up)\n".into()
        }
    };
    if screen.json {
        let document = serde_json::json!({
            "program": program,
            "exitCode": code,
            "looks": looks,
            "stats": last_stats,
        });
        println!("{}", serde_json::to_string_pretty(&document)?);
    } else {
        println!("{:?} exited: {status}", program[0]);
        print!("{summary}");
    }
    if let Some(path) = &screen.report {
        let svg = path.extension().is_some_and(|e| e == "svg");
        let title = format!("pytier: {}", program.join(" "));
        std::fs::write(path, report::render(&title, &looks, &summary, svg))
            .with_context(|| format!("cannot write the report to {}", path.display()))?;
        say(&format!("report written to {}", path.display()));
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// The interposer settings for a run: `--config`'s JSON with `--dram-budget`
/// (`25%` of the heap, or bytes: `512MiB`, `2GiB`, `1048576`) put in, and
/// checked as the interposer will check them.
pub fn settings(config: Option<&str>, dram_budget: Option<&str>) -> Result<Option<String>> {
    let Some(budget) = dram_budget else {
        if let Some(config) = config {
            Settings::from_json(config).context("--config")?;
        }
        return Ok(config.map(str::to_string));
    };
    let mut value: serde_json::Value = match config {
        Some(config) => serde_json::from_str(config).context("--config is not JSON")?,
        None => serde_json::json!({}),
    };
    let Some(object) = value.as_object_mut() else { bail!("--config must be a JSON object") };
    if object.contains_key("dramBudget") {
        bail!("--dram-budget and a dramBudget in --config: give the budget once");
    }
    object.insert("dramBudget".into(), serde_json::to_value(parse_budget(budget)?)?);
    let json = value.to_string();
    Settings::from_json(&json).context("--dram-budget")?;
    Ok(Some(json))
}

fn parse_budget(text: &str) -> Result<DramBudget> {
    let text = text.trim();
    if let Some(percent) = text.strip_suffix('%') {
        let percent: f64 =
            percent.trim().parse().with_context(|| format!("--dram-budget {text:?}: not a percentage"))?;
        return Ok(DramBudget { bytes: None, heap_fraction: Some(percent / 100.0) });
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => bail!("--dram-budget {text:?}: give a percentage of the heap (25%) or bytes (512MiB, 2GiB, 1048576)"),
    };
    let number: u64 = number.parse().with_context(|| format!("--dram-budget {text:?}: no number"))?;
    Ok(DramBudget { bytes: Some(number.saturating_mul(scale)), heap_fraction: None })
}

/// A directory for the program's control socket, removed when it exits.
fn socket_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pytier-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dram_budget_is_a_share_of_the_heap_or_bytes() {
        assert_eq!(parse_budget("25%").unwrap(), DramBudget { bytes: None, heap_fraction: Some(0.25) });
        assert_eq!(parse_budget("512MiB").unwrap().bytes, Some(512 << 20));
        assert_eq!(parse_budget("4096").unwrap().bytes, Some(4096));
        assert!(parse_budget("lots").unwrap_err().to_string().contains("512MiB"));
    }

    #[test]
    fn the_budget_joins_the_settings_and_is_checked_as_the_interposer_checks() {
        let json = settings(Some(r#"{"mode": "observe"}"#), Some("10%")).unwrap().unwrap();
        let parsed = Settings::from_json(&json).unwrap();
        assert_eq!(parsed.dram_budget.heap_fraction, Some(0.1));
        let err = settings(None, Some("150%")).unwrap_err();
        assert!(format!("{err:#}").contains("heapFraction"), "{err:#}");
        let twice = settings(Some(r#"{"dramBudget": {"bytes": 4096}}"#), Some("1MiB")).unwrap_err();
        assert!(twice.to_string().contains("once"));
        assert_eq!(settings(None, None).unwrap(), None);
    }
}
