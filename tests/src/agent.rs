//! The real node agent binary as a process, and pods made of real parts on
//! this machine for it to tier: the kubelet's pod directory with the
//! `pytier-run` emptyDir, a real cgroup of the kubelet's shape (either
//! driver), and real `python3` processes in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::daemon::Daemon;
use crate::{ControlPlane, spawn_logged};

/// The agent's host directories for one test: the shim it installs and the
/// kubelet's pod directory it finds sockets in.
#[derive(Debug, Clone)]
pub struct NodeDirs {
    pub shim_host: PathBuf,
    pub kubelet_pods: PathBuf,
}

impl NodeDirs {
    pub fn new(plane: &ControlPlane, node: &str) -> Result<NodeDirs> {
        let root = plane.data_dir().join(format!("node-{node}"));
        let dirs = NodeDirs { shim_host: root.join("shim"), kubelet_pods: root.join("kubelet/pods") };
        fs::create_dir_all(&dirs.kubelet_pods)?;
        Ok(dirs)
    }

    /// The `PYTHONPATH` entry a pod of this node gets (the agent's `current`).
    pub fn shim_entry(&self) -> PathBuf {
        self.shim_host.join("current")
    }
}

/// A running `node-agent serve`, killed when dropped.
pub struct NodeAgent {
    daemon: Daemon,
    pub metrics_addr: String,
}

impl NodeAgent {
    /// Starts the agent for `node`, connecting with `kubeconfig` and
    /// installing the shim at `$PYTIER_SHIM`; `args` replace the tests'
    /// defaults (observe and write status every second).
    pub fn start(
        plane: &ControlPlane,
        kubeconfig: &Path,
        node: &str,
        dirs: &NodeDirs,
        args: &[&str],
    ) -> Result<NodeAgent> {
        static STARTS: AtomicU32 = AtomicU32::new(0);
        let metrics_addr = format!("127.0.0.1:{}", crate::controlplane::free_port()?);
        let n = STARTS.fetch_add(1, Ordering::Relaxed);
        let log = plane.data_dir().join(format!("agent-{node}-{n}.log"));
        let shim =
            std::env::var("PYTIER_SHIM").context("PYTIER_SHIM must name the built shim (interposer/build-shim.sh)")?;
        let mut cmd = Command::new(binary()?);
        cmd.args(["serve", "--node-name", node, "--metrics-addr", &metrics_addr, "--shim", &shim])
            .arg("--shim-host-dir")
            .arg(&dirs.shim_host)
            .arg("--kubelet-pods-dir")
            .arg(&dirs.kubelet_pods)
            .args(if args.is_empty() { &["--observe-every", "1", "--status-every", "1"][..] } else { args })
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or("info,node_agent=debug".into()));
        let child = spawn_logged(&mut cmd, &log)?;
        Ok(NodeAgent {
            daemon: Daemon { child, log, admin_addr: metrics_addr.clone(), name: "node agent" },
            metrics_addr,
        })
    }

    pub fn get(&self, path: &str) -> Result<String> {
        self.daemon.get(path)
    }

    /// Waits until `/readyz` answers ok (the first observation is done).
    pub fn wait_ready(&mut self) -> Result<()> {
        self.daemon.wait_ready()
    }

    /// SIGKILL: no chance to clean up, as when the agent crashes.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn pid(&self) -> u32 {
        self.daemon.child.id()
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    crate::workspace_binary(&BIN, "PYTIER_AGENT_BIN", "pytier-node-agent", "node-agent")
}

/// How the kubelet names cgroups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Driver {
    Cgroupfs,
    Systemd,
}

/// A pod on this machine: its socket emptyDir where the kubelet would put
/// it, and a real cpuset cgroup (v1, as this machine has) of the kubelet's
/// shape for one container. Processes started with `spawn` run in it.
pub struct FakePod {
    pub uid: String,
    pub container: String,
    pub container_id: String,
    pub socket_dir: PathBuf,
    shim_entry: PathBuf,
    /// Cgroup directories made, outermost first (removed in reverse).
    cgroups: Vec<PathBuf>,
}

/// A running Python of a pod.
pub struct PodProcess {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: std::io::BufReader<ChildStdout>,
}

impl FakePod {
    pub fn new(dirs: &NodeDirs, uid: &str, container: &str, driver: Driver) -> Result<FakePod> {
        let socket_dir = dirs.kubelet_pods.join(uid).join("volumes/kubernetes.io~empty-dir/pytier-run");
        fs::create_dir_all(&socket_dir)?;
        // An emptyDir is world-writable, so non-root containers can bind there.
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&socket_dir, fs::Permissions::from_mode(0o777))?;
        let cpuset = Path::new("/sys/fs/cgroup/cpuset");
        if !cpuset.join("cpuset.mems").is_file() {
            bail!("no cgroup v1 cpuset hierarchy at {}: the agent tests need one (and root)", cpuset.display());
        }
        let container_id = format!("{:0>64}", uid.replace('-', ""));
        let prefix = format!("pytier-test-{}-{}", std::process::id(), &uid[..8]);
        let levels: Vec<String> = match driver {
            Driver::Cgroupfs => {
                vec![prefix, "kubepods".into(), "burstable".into(), format!("pod{uid}"), container_id.clone()]
            }
            Driver::Systemd => vec![
                prefix,
                "kubepods.slice".into(),
                "kubepods-burstable.slice".into(),
                format!("kubepods-burstable-pod{}.slice", uid.replace('-', "_")),
                format!("cri-containerd-{container_id}.scope"),
            ],
        };
        let mut cgroups = Vec::new();
        let mut dir = cpuset.to_path_buf();
        for level in levels {
            let parent = dir.clone();
            dir = dir.join(level);
            fs::create_dir_all(&dir).with_context(|| format!("cannot create cgroup {}", dir.display()))?;
            // A new v1 cpuset has no CPUs or nodes until given its parent's.
            for file in ["cpuset.cpus", "cpuset.mems"] {
                fs::write(dir.join(file), fs::read_to_string(parent.join(file))?.trim())?;
            }
            cgroups.push(dir.clone());
        }
        Ok(FakePod {
            uid: uid.into(),
            container: container.into(),
            container_id,
            socket_dir,
            shim_entry: dirs.shim_entry(),
            cgroups,
        })
    }

    /// The container's cgroup.
    pub fn cgroup(&self) -> &Path {
        self.cgroups.last().expect("a container cgroup")
    }

    /// Starts `argv` (for example `["python3", "-c", CODE]`) in the
    /// container's cgroup with the environment the webhook gives, plus `env`.
    pub fn spawn(&self, argv: &[&str], env: &[(&str, &str)]) -> Result<PodProcess> {
        let procs = self.cgroup().join("cgroup.procs");
        let mut cmd = Command::new("sh");
        // The shell joins the cgroup first, so everything it execs is in it.
        cmd.arg("-c").arg(r#"echo $$ > "$0" && exec "$@""#).arg(&procs).args(argv);
        cmd.env("PYTHONPATH", &self.shim_entry)
            .env("PYTIER_SOCKET_DIR", &self.socket_dir)
            .env("PYTIER_CONTAINER", &self.container)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().context("cannot start a pod process")?;
        let stdin = child.stdin.take();
        let stdout = std::io::BufReader::new(child.stdout.take().expect("piped stdout"));
        Ok(PodProcess { child, stdin, stdout })
    }
}

impl Drop for FakePod {
    fn drop(&mut self) {
        // Nothing may be left in the cgroups before they can go.
        for pid in fs::read_to_string(self.cgroup().join("cgroup.procs")).unwrap_or_default().lines() {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        for dir in self.cgroups.iter().rev() {
            let deadline = Instant::now() + Duration::from_secs(5);
            while fs::remove_dir(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

impl PodProcess {
    /// The next line the process prints (without the newline).
    pub fn line(&mut self) -> Result<String> {
        use std::io::BufRead;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        if line.is_empty() {
            bail!("the process closed its output");
        }
        Ok(line.trim_end().to_string())
    }

    /// Closes its stdin (the workloads below stop then) and returns the rest
    /// of what it printed and its exit status.
    pub fn finish(mut self) -> Result<(String, std::process::ExitStatus)> {
        use std::io::Read;
        drop(self.stdin.take());
        let mut rest = String::new();
        self.stdout.read_to_string(&mut rest)?;
        Ok((rest, self.child.wait()?))
    }
}

/// A small service with a changing heap: keeps 20 000 records, rewrites a
/// few each loop, says `ready <pid> <pytier active>` once started, and on
/// end of input checks every record against its checksum and prints
/// `intact <n>` (or `corrupt ...`).
pub const SERVICE: &str = r#"
import hashlib, os, sys, threading, time, pytier
records = {i: (str(i) * 8, [i, i * 2.5]) for i in range(20000)}
sums = {i: hashlib.md5(repr(v).encode()).hexdigest() for i, v in records.items()}
stop = threading.Event()
def work():
    n = 0
    while not stop.is_set():
        n += 1
        for i in range(0, 20000, 97):
            k = (i + n) % 20000
            v = records[k]
            records[k] = (v[0], list(v[1]))
        time.sleep(0.01)
t = threading.Thread(target=work)
t.start()
print("ready", os.getpid(), pytier.status()[0], flush=True)
sys.stdin.read()
stop.set()
t.join()
bad = [i for i, v in records.items() if hashlib.md5(repr(v).encode()).hexdigest() != sums[i]]
print("intact", len(records) if not bad else 0, "corrupt" if bad else "", flush=True)
"#;
