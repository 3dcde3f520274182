//! Real parts for pytier's tests. Nothing here is a mock: `ControlPlane` runs
//! the upstream etcd and kube-apiserver binaries built from their Go modules.

pub mod agent;
pub mod chart;
pub mod controlplane;
pub mod daemon;
pub mod kwok;
pub mod operator;
pub mod pki;
pub mod prometheus;
pub mod realnode;

pub use controlplane::ControlPlane;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// `$env_var` when set, else the directory `script` (a path in the
/// repository that builds and caches) prints.
pub fn built_dir(env_var: &str, script: &str) -> anyhow::Result<std::path::PathBuf> {
    if let Some(dir) = std::env::var_os(env_var) {
        return Ok(dir.into());
    }
    let script = repo_root().join(script);
    let out = std::process::Command::new(&script).stderr(std::process::Stdio::inherit()).output()?;
    if !out.status.success() {
        anyhow::bail!("{} failed ({})", script.display(), out.status);
    }
    Ok(std::path::PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

/// Starts `cmd` with no stdin and its stdout and stderr in the file `log`,
/// to be killed when the thread that started it exits: a test process that
/// dies without running Drop takes its children with it. (So whatever owns
/// the child must live no longer than the thread that started it.)
pub fn spawn_logged(cmd: &mut std::process::Command, log: &std::path::Path) -> anyhow::Result<std::process::Child> {
    use anyhow::Context;
    use std::os::unix::process::CommandExt;
    let out = std::fs::File::create(log).with_context(|| format!("cannot create {}", log.display()))?;
    cmd.stdin(std::process::Stdio::null()).stdout(out.try_clone()?).stderr(out);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn().with_context(|| format!("cannot start {:?}", cmd.get_program()))
}

/// Stops a child: SIGTERM, up to 5 s to exit, then SIGKILL.
pub fn stop_child(child: &mut std::process::Child) {
    use std::time::{Duration, Instant};
    // SAFETY: plain syscall on a pid we started and have not reaped.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(5);
    while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The body of a plain-HTTP GET of `path` at `addr`; an error unless 200.
pub fn http_get(addr: &str, path: &str) -> anyhow::Result<String> {
    use anyhow::Context;
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: pytier\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").context("no HTTP header")?;
    if !head.starts_with("HTTP/1.0 200") && !head.starts_with("HTTP/1.1 200") {
        anyhow::bail!("GET {path}: {}", head.lines().next().unwrap_or(""));
    }
    Ok(body.to_string())
}

/// A binary of this workspace: `$env_var` when set, else its debug build,
/// built once per test process (`cell` remembers it).
pub fn workspace_binary(
    cell: &'static std::sync::OnceLock<Result<std::path::PathBuf, String>>,
    env_var: &str,
    package: &str,
    bin: &str,
) -> anyhow::Result<std::path::PathBuf> {
    if let Some(path) = std::env::var_os(env_var) {
        return Ok(path.into());
    }
    let built = cell.get_or_init(|| {
        let root = repo_root();
        let status = std::process::Command::new(std::env::var("CARGO").unwrap_or("cargo".into()))
            .args(["build", "-q", "--locked", "-p", package, "--bin", bin])
            .current_dir(&root)
            .status()
            .map_err(|e| format!("cannot run cargo: {e}"))?;
        if !status.success() {
            return Err(format!("cargo build -p {package} failed"));
        }
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), Into::into);
        let path = target.join("debug").join(bin);
        if path.exists() { Ok(path) } else { Err(format!("{} not found after building", path.display())) }
    });
    built.clone().map_err(anyhow::Error::msg)
}

/// Connects to a Unix socket at any path length (the kubelet's pod
/// directories make paths longer than a socket address holds): through the
/// directory's descriptor in `/proc/self/fd`, as the agent does.
pub fn connect_unix(path: &std::path::Path) -> std::io::Result<std::os::unix::net::UnixStream> {
    use std::os::fd::AsRawFd;
    let dir = std::fs::File::open(path.parent().unwrap_or(std::path::Path::new("/")))?;
    let name = path.file_name().unwrap_or_default();
    std::os::unix::net::UnixStream::connect(
        std::path::Path::new(&format!("/proc/self/fd/{}", dir.as_raw_fd())).join(name),
    )
}
