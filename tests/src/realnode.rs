//! A real Kubernetes node on this machine: the upstream kubelet with
//! containerd, runc and the CNI bridge plugin, registered with a test
//! `ControlPlane` (whose scheduler and controller manager it starts), running
//! real pods from images built without a registry (`tests/realnode/images.sh`).
//!
//! One node at a time: the kubelet's cgroups (`kubepods`), the bridge and a
//! few host paths are fixed. Everything goes on drop, and `cleanup.sh --stale`
//! removes what a killed test left behind before a node starts.
//!
//! Binaries come from `$PYTIER_REALNODE_BIN` (else `tests/realnode/build.sh`),
//! images from `$PYTIER_IMAGES` (else `tests/realnode/images.sh`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, AttachParams, ListParams, LogParams, PostParams};
use kube::{Client, ResourceExt};

use crate::{ControlPlane, spawn_logged};

/// The Python image of a Debian suite (`images.sh` builds one per suite).
pub fn python_image(suite: &str) -> String {
    format!("pytier.test/python:{suite}")
}

/// The pod sandbox image.
pub const PAUSE_IMAGE: &str = "pytier.test/pause:1";

/// The bridge the node's pods attach to (its name is in `cleanup.sh` too).
const BRIDGE: &str = "pytier0";
const POD_SUBNET: &str = "10.244.0.0/24";
/// Kernel settings the kubelet sets on start; restored by `cleanup.sh`.
const SYSCTLS: [&str; 7] = [
    "vm/overcommit_memory",
    "vm/panic_on_oom",
    "kernel/panic",
    "kernel/panic_on_oops",
    "kernel/keys/root_maxkeys",
    "kernel/keys/root_maxbytes",
    "net/ipv4/ip_forward",
];
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running kubelet + containerd, registered as the node `name`.
pub struct RealNode {
    pub name: String,
    dir: PathBuf,
    processes: std::sync::Mutex<Vec<(&'static str, Child, PathBuf)>>,
    client: Client,
}

/// A container as the kubelet made it: its runtime id, its cgroup in every
/// hierarchy, and the processes in it.
#[derive(Debug)]
pub struct ContainerCgroups {
    pub id: String,
    /// `/sys/fs/cgroup/<controller>/kubepods/.../<id>`, one per v1 hierarchy.
    pub cgroups: Vec<PathBuf>,
    pub pids: Vec<u32>,
}

impl RealNode {
    /// Why this machine cannot run a real node, if it cannot
    /// (`tests/realnode/check.sh`, which tests/run asks too).
    pub fn unavailable() -> Option<String> {
        let script = crate::repo_root().join("tests/realnode/check.sh");
        match Command::new(&script).stdin(Stdio::null()).output() {
            Ok(out) if out.status.success() => None,
            Ok(out) => Some(String::from_utf8_lossy(&out.stdout).trim().to_string()),
            Err(e) => Some(format!("cannot run {}: {e}", script.display())),
        }
    }

    /// Starts the control plane's scheduler and controller manager, then
    /// containerd and the kubelet, imports the test images, and waits until
    /// the node is Ready.
    pub async fn start(plane: &mut ControlPlane) -> Result<RealNode> {
        if let Some(reason) = Self::unavailable() {
            bail!("this machine cannot run a real node: {reason}");
        }
        let bin = binaries()?;
        let images = images()?;
        cleanup(None)?;
        let dir = tempfile::Builder::new().prefix("pytier-realnode-").tempdir()?.keep();
        let mut node =
            RealNode { name: hostname()?, dir: dir.clone(), processes: Default::default(), client: plane.client() };
        save_sysctls(&dir)?;
        plane.start_controllers(&bin)?;
        node.start_containerd(&bin)?;
        node.import_images(&bin, &images)?;
        node.start_kubelet(&bin, plane)?;
        node.wait_ready().await?;
        Ok(node)
    }

    /// The per-run directory: kubelet root (`kubelet/`), containerd's state,
    /// logs, configuration.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubelet's root directory (`pods/<uid>/volumes/...` lives here).
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    fn containerd_socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    fn start_containerd(&mut self, bin: &Path) -> Result<()> {
        let d = self.dir.display();
        let b = bin.display();
        fs::create_dir_all(self.dir.join("cni/net.d"))?;
        let cni = format!(
            r#"{{"cniVersion": "1.0.0", "name": "pytier-test", "plugins": [{{"type": "bridge", "bridge": "{BRIDGE}",
  "isGateway": true, "ipMasq": false,
  "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "{POD_SUBNET}"}}]], "dataDir": "{d}/cni/networks"}}}}]}}"#
        );
        fs::write(self.dir.join("cni/net.d/10-pytier.conflist"), cni)?;
        // restrict_oom_score_adj: this VM takes CAP_SYS_RESOURCE from every
        // process, so runc cannot lower oom_score_adj below containerd's own
        // (the pause container asks for -998). Every other path is moved
        // under the run directory so that nothing outlives it.
        let config = format!(
            r#"version = 3
root = "{d}/containerd/root"
state = "{d}/containerd/state"
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{d}/containerd.sock"

[ttrpc]
  address = "{d}/containerd.sock.ttrpc"

[plugins.'io.containerd.internal.v1.opt']
  path = "{d}/containerd/opt"

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "{PAUSE_IMAGE}"

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = "{b}/runc"
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["{b}/cni"]
    conf_dir = "{d}/cni/net.d"
"#
        );
        let path = self.dir.join("containerd.toml");
        fs::write(&path, config)?;
        let mut cmd = Command::new(bin.join("containerd"));
        cmd.arg("--config").arg(&path).env("PATH", path_with(bin));
        self.spawn("containerd", &mut cmd)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.containerd_socket().exists() {
            self.check_running()?;
            if Instant::now() > deadline {
                bail!("containerd did not open its socket within 30s:\n{}", self.log_tail("containerd"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }

    fn import_images(&self, bin: &Path, images: &Path) -> Result<()> {
        let mut archives: Vec<PathBuf> = fs::read_dir(images)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "tar") && p.is_symlink())
            .collect();
        archives.sort();
        for archive in archives {
            let out = Command::new(bin.join("ctr"))
                .arg("--address")
                .arg(self.containerd_socket())
                .args(["--namespace", "k8s.io", "images", "import", "--local"])
                .arg(&archive)
                .output()?;
            if !out.status.success() {
                bail!("ctr images import {} failed: {}", archive.display(), String::from_utf8_lossy(&out.stderr));
            }
        }
        Ok(())
    }

    fn start_kubelet(&mut self, bin: &Path, plane: &ControlPlane) -> Result<()> {
        let root = self.kubelet_root();
        fs::create_dir_all(&root)?;
        let port = crate::controlplane::free_port()?;
        let d = self.dir.display();
        // Each setting is one this machine needs (README, "The real node").
        let config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: true}}
  webhook: {{enabled: false}}
authorization: {{mode: AlwaysAllow}}
containerRuntimeEndpoint: unix://{d}/containerd.sock
cgroupDriver: cgroupfs
failCgroupV1: false
failSwapOn: false
makeIPTablesUtilChains: false
enforceNodeAllocatable: []
oomScoreAdj: 0
rotateCertificates: false
serverTLSBootstrap: false
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/volume-plugins
imageGCHighThresholdPercent: 100
evictionHard: {{memory.available: "1Mi", nodefs.available: "1%", imagefs.available: "1%"}}
"#
        );
        let path = self.dir.join("kubelet.yaml");
        fs::write(&path, config)?;
        let mut cmd = Command::new(bin.join("kubelet"));
        cmd.arg(format!("--config={}", path.display()))
            .arg(format!("--kubeconfig={}", plane.kubeconfig().display()))
            .arg(format!("--root-dir={}", root.display()))
            .arg(format!("--cert-dir={d}/kubelet-pki"))
            .arg(format!("--node-ip={}", node_ip()?))
            .arg("--v=1")
            .env("PATH", path_with(bin));
        self.spawn("kubelet", &mut cmd)
    }

    async fn wait_ready(&self) -> Result<()> {
        let nodes: Api<Node> = Api::all(self.client.clone());
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            self.check_running()?;
            if let Some(node) = nodes.get_opt(&self.name).await?
                && node_is_ready(&node)
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("node {} not Ready within {READY_TIMEOUT:?}:\n{}", self.name, self.log_tail("kubelet"));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Creates `pod` and waits until it is Running (all containers started).
    /// A pod that cannot start fails at once with its status and events.
    pub async fn run_pod(&self, pod: &Pod) -> Result<Pod> {
        let ns = pod.namespace().unwrap_or_else(|| "default".into());
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), &ns);
        pods.create(&PostParams::default(), pod)
            .await
            .with_context(|| format!("cannot create pod {}", pod.name_any()))?;
        self.wait_running(&ns, &pod.name_any()).await
    }

    /// Waits until the pod `ns/name` is Running with every container started.
    pub async fn wait_running(&self, ns: &str, name: &str) -> Result<Pod> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            self.check_running()?;
            let pod = pods.get(name).await?;
            let status = pod.status.clone().unwrap_or_default();
            let containers = status.container_statuses.clone().unwrap_or_default();
            if status.phase.as_deref() == Some("Running")
                && !containers.is_empty()
                && containers.iter().all(|c| c.ready || c.started == Some(true))
            {
                return Ok(pod);
            }
            let waiting: Vec<String> = containers
                .iter()
                .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
                .filter(|w| {
                    matches!(
                        w.reason.as_deref(),
                        Some("ErrImageNeverPull" | "CrashLoopBackOff" | "CreateContainerError" | "RunContainerError")
                    )
                })
                .map(|w| format!("{}: {}", w.reason.clone().unwrap_or_default(), w.message.clone().unwrap_or_default()))
                .collect();
            if !waiting.is_empty() || status.phase.as_deref() == Some("Failed") || Instant::now() > deadline {
                bail!(
                    "pod {ns}/{name} did not start: phase {:?} {waiting:?}\nevents:\n{}\nkubelet:\n{}",
                    status.phase,
                    self.events(ns, name).await.unwrap_or_default(),
                    self.log_tail("kubelet")
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The pod's events, one per line (for error messages).
    pub async fn events(&self, ns: &str, name: &str) -> Result<String> {
        let events: Api<Event> = Api::namespaced(self.client.clone(), ns);
        let list = events.list(&ListParams::default().fields(&format!("involvedObject.name={name}"))).await?;
        Ok(list
            .items
            .iter()
            .map(|e| format!("  {} {}", e.reason.clone().unwrap_or_default(), e.message.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// A container's log, read through the API server (and so the kubelet).
    pub async fn logs(&self, ns: &str, pod: &str, container: &str) -> Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        Ok(pods.logs(pod, &LogParams { container: Some(container.into()), ..Default::default() }).await?)
    }

    /// Waits until a container's log has a line containing `text`; returns the log.
    pub async fn wait_log(&self, ns: &str, pod: &str, container: &str, text: &str) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.logs(ns, pod, container).await.unwrap_or_default();
            if log.contains(text) {
                return Ok(log);
            }
            if Instant::now() > deadline {
                bail!("{ns}/{pod}/{container} logged no {text:?} within 60s; log:\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs `command` in a container through the API server's exec (the
    /// kubelet's streaming server) and returns its stdout; an error with its
    /// stderr when it exits non-zero.
    pub async fn exec(&self, ns: &str, pod: &str, container: &str, command: &[&str]) -> Result<String> {
        let pods: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        let params = AttachParams::default().container(container).stdout(true).stderr(true);
        let mut attached = pods.exec(pod, command.iter().copied(), &params).await?;
        let stdout = read_all(attached.stdout());
        let stderr = read_all(attached.stderr());
        let status = attached.take_status().context("exec without a status")?;
        let (stdout, stderr) = futures::join!(stdout, stderr);
        let status = status.await.context("exec ended without a status")?;
        if status.status.as_deref() != Some("Success") {
            bail!(
                "exec {command:?} in {ns}/{pod}: {:?} {}\nstderr: {}",
                status.reason,
                status.message.unwrap_or_default(),
                stderr?
            );
        }
        stdout
    }

    /// The cgroups and processes of a container of `pod`, found from the
    /// pod's UID and the container ID in its status, as the agent finds them.
    pub fn container_cgroups(&self, pod: &Pod, container: &str) -> Result<ContainerCgroups> {
        let uid = pod.uid().context("pod without a UID")?;
        let status = pod
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.name == container))
            .with_context(|| format!("no status of container {container}"))?;
        let id = status.container_id.as_deref().context("container without an ID")?;
        let id = id.split_once("://").map_or(id, |(_, id)| id).to_string();
        let mut cgroups = Vec::new();
        for controller in fs::read_dir("/sys/fs/cgroup")? {
            let kubepods = controller?.path().join("kubepods");
            if let Some(found) = find_dir(&kubepods, &format!("pod{uid}"), 2).and_then(|pod_dir| {
                let dir = pod_dir.join(&id);
                dir.is_dir().then_some(dir)
            }) {
                cgroups.push(found);
            }
        }
        cgroups.sort();
        let procs =
            cgroups.first().with_context(|| format!("no cgroup of container {id} (pod {uid})"))?.join("cgroup.procs");
        let pids = fs::read_to_string(&procs)?.lines().filter_map(|l| l.trim().parse().ok()).collect();
        Ok(ContainerCgroups { id, cgroups, pids })
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    fn spawn(&mut self, name: &'static str, cmd: &mut Command) -> Result<()> {
        let log = self.dir.join(format!("{name}.log"));
        let child = spawn_logged(cmd, &log)?;
        self.processes.lock().unwrap().push((name, child, log));
        Ok(())
    }

    fn check_running(&self) -> Result<()> {
        for (name, child, log) in self.processes.lock().unwrap().iter_mut() {
            if let Some(status) = child.try_wait()? {
                bail!("{name} exited with {status}:\n{}", crate::controlplane::tail(log, 40));
            }
        }
        Ok(())
    }

    /// The end of a process's log.
    pub fn log_tail(&self, name: &str) -> String {
        crate::controlplane::tail(&self.dir.join(format!("{name}.log")), 30)
    }
}

impl Drop for RealNode {
    /// Stops the kubelet, then removes everything (`cleanup.sh`).
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (name, _, _) in self.processes.lock().unwrap().iter() {
                eprintln!("--- last lines of {name}:\n{}", self.log_tail(name));
            }
        }
        for (_, child, _) in self.processes.get_mut().unwrap().iter_mut().rev() {
            crate::stop_child(child);
        }
        if let Err(e) = cleanup(Some(&self.dir)) {
            eprintln!("real node cleanup failed: {e:#}");
        }
    }
}

/// What a node left on this machine after `run_dir` should have gone: one
/// line per leftover (processes, mounts, cgroups, the bridge, host paths).
pub fn leftovers(run_dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let needle = run_dir.display().to_string();
    if run_dir.exists() {
        found.push(format!("run directory {needle}"));
    }
    for entry in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains(&needle) {
            found.push(format!(
                "process {} {:?}",
                entry.file_name().to_string_lossy(),
                String::from_utf8_lossy(&cmdline).replace('\0', " ")
            ));
        }
    }
    for line in fs::read_to_string("/proc/self/mountinfo").unwrap_or_default().lines() {
        if let Some(point) = line.split(' ').nth(4)
            && (point.starts_with(&needle)
                || point.starts_with("/run/containerd")
                || point.starts_with("/var/lib/kubelet"))
        {
            found.push(format!("mount {point}"));
        }
    }
    for controller in fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        let kubepods = controller.path().join("kubepods");
        if kubepods.exists() {
            found.push(format!("cgroup {}", kubepods.display()));
        }
    }
    if Path::new("/sys/class/net").join(BRIDGE).exists() {
        found.push(format!("bridge {BRIDGE}"));
    }
    for path in ["/var/lib/kubelet", "/var/lib/cni", "/run/containerd", "/etc/cni"] {
        if Path::new(path).exists() {
            found.push(format!("host path {path}"));
        }
    }
    found
}

/// Runs `tests/realnode/cleanup.sh` for `run_dir`, or for every stale run.
fn cleanup(run_dir: Option<&Path>) -> Result<()> {
    let script = crate::repo_root().join("tests/realnode/cleanup.sh");
    let mut cmd = Command::new(&script);
    match run_dir {
        Some(dir) => cmd.arg(dir),
        None => cmd.arg("--stale"),
    };
    let status = cmd.stdin(Stdio::null()).status().with_context(|| format!("cannot run {}", script.display()))?;
    if !status.success() {
        bail!("{} failed ({status})", script.display());
    }
    Ok(())
}

fn save_sysctls(dir: &Path) -> Result<()> {
    let mut saved = String::new();
    for key in SYSCTLS {
        if let Ok(value) = fs::read_to_string(Path::new("/proc/sys").join(key)) {
            saved.push_str(&format!("{key} {}\n", value.trim()));
        }
    }
    Ok(fs::write(dir.join("sysctl.saved"), saved)?)
}

fn node_is_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The directory named `name` at most `depth` levels below `root`.
fn find_dir(root: &Path, name: &str, depth: usize) -> Option<PathBuf> {
    for entry in fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        if entry.file_name() == name {
            return Some(path);
        }
        if depth > 0
            && let Some(found) = find_dir(&path, name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

async fn read_all(stream: Option<impl tokio::io::AsyncRead + Unpin>) -> Result<String> {
    let mut out = Vec::new();
    if let Some(mut stream) = stream {
        tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut out).await?;
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}

fn hostname() -> Result<String> {
    Ok(fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_lowercase())
}

/// The first global IPv4 address of this machine: the kubelet refuses a
/// loopback node IP (the API server reaches it by host name instead).
fn node_ip() -> Result<String> {
    let out = Command::new("ip").args(["-4", "-o", "addr", "show", "scope", "global"]).output()?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains(BRIDGE))
        .find_map(|l| Some(l.split_whitespace().nth(3)?.split('/').next()?.to_string()))
        .context("no global IPv4 address for the node")
}

fn path_with(bin: &Path) -> String {
    format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default())
}

/// The directory with the node's binaries (kubelet, containerd, runc, cni/).
pub fn binaries() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    BIN.get_or_init(|| crate::built_dir("PYTIER_REALNODE_BIN", "tests/realnode/build.sh").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}

/// The directory with the test images as OCI archives.
pub fn images() -> Result<PathBuf> {
    static DIR: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    DIR.get_or_init(|| crate::built_dir("PYTIER_IMAGES", "tests/realnode/images.sh").map_err(|e| format!("{e:#}")))
        .clone()
        .map_err(anyhow::Error::msg)
}
