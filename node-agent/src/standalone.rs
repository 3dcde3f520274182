//! Standalone mode: run one Python program under the interposer on this
//! machine and print what it sees, without Kubernetes.

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use pytier_contract::stats::Stats;

use crate::control;

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

/// Runs `program` with the shim first on PYTHONPATH (the user's PYTHONPATH
/// kept after it), printing a stats line every `every` until it exits.
pub fn run(program: &[String], shim: &Path, config: Option<&str>, every: Duration) -> Result<ExitCode> {
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
    println!("running {:?} under pytier (pid {}, control socket {})", program.join(" "), child.id(), socket.display());
    let started = Instant::now();
    let mut next_report = started + every;
    loop {
        if let Some(status) = child.try_wait()? {
            let _ = std::fs::remove_dir_all(&socket_dir);
            println!("{:?} exited: {status}", program[0]);
            // Like a shell: 128 + signal for a program killed by a signal.
            let code = status.code().or_else(|| status.signal().map(|s| 128 + s)).unwrap_or(1);
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        if Instant::now() >= next_report {
            next_report += every;
            let t = started.elapsed().as_secs_f64();
            match control::stats(&socket) {
                Ok(stats) => println!("{t:>6.1}s  {}", summary(&stats)),
                Err(e) => println!("{t:>6.1}s  no stats yet ({e:#})"),
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A directory for the program's control socket, removed when it exits.
fn socket_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("pytier-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    Ok(dir)
}

fn summary(stats: &Stats) -> String {
    let Some(last) = &stats.last else { return "no scan finished yet".into() };
    let mib = |bytes: u64| bytes as f64 / (1 << 20) as f64;
    let (o, b) = (&last.objects, &last.bytes);
    format!(
        "hot {:>8} ({:.1} MiB)  warm {:>8} ({:.1} MiB)  cold {:>8} ({:.1} MiB)  coverage {:.0}%  scanner CPU {:.2}%",
        o.hot,
        mib(b.hot),
        o.warm,
        mib(b.warm),
        o.cold,
        mib(b.cold),
        100.0 * last.coverage,
        100.0 * stats.scanner_cpu_fraction,
    )
}
