//! Real parts for pytier's tests. Nothing here is a mock: `ControlPlane` runs
//! the upstream etcd and kube-apiserver binaries built from their Go modules.

pub mod controlplane;
pub mod kwok;
pub mod operator;
pub mod pki;

pub use controlplane::ControlPlane;

/// The repository root (this crate lives in `tests/`).
pub fn repo_root() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
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
