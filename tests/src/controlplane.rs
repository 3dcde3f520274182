//! A real Kubernetes control plane for tests: upstream etcd and kube-apiserver
//! on loopback, with a fresh data directory, torn down when dropped (also when
//! the test panics; the processes also die with the test process).
//!
//! Binaries come from `$PYTIER_CONTROLPLANE_BIN`, or else from
//! `tests/controlplane/build.sh` (which builds them once and caches them).

use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::GroupVersionKind;
use kube::discovery::Scope;
use kube::runtime::wait::{await_condition, conditions};
use kube::{Client, Config};
use serde::Deserialize;

use crate::pki::{TestCa, key_pair_pem};

/// How long the API server may take to become ready (TCG VMs and cold caches
/// are slow; a warm start on loopback takes a few seconds).
const READY_TIMEOUT: Duration = Duration::from_secs(90);
const ADMIN_TOKEN: &str = "pytier-test-admin-token";

/// A running etcd + kube-apiserver pair.
pub struct ControlPlane {
    processes: Vec<Process>,
    dir: tempfile::TempDir,
    kubeconfig: PathBuf,
    client: Client,
    port: u16,
}

struct Process {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver, waits until the API server is ready, and
    /// applies every CRD under `crds/`.
    pub async fn start() -> Result<Self> {
        let plane = Self::start_without_crds().await?;
        plane.apply_crds(&crd_files()?).await?;
        Ok(plane)
    }

    /// Starts etcd and kube-apiserver and waits until the API server is ready.
    pub async fn start_without_crds() -> Result<Self> {
        Self::launch(false).await
    }

    /// Like `start`, for a cluster whose own pods talk to it (the chart's
    /// operator and agent on a real node): pods get service account tokens
    /// (the ServiceAccount admission plugin; the controller manager makes the
    /// accounts and the CA ConfigMap), and the API server calls webhooks at
    /// their Service's endpoints (no kube-proxy here to route a ClusterIP).
    pub async fn start_for_cluster_pods() -> Result<Self> {
        let plane = Self::launch(true).await?;
        plane.apply_crds(&crd_files()?).await?;
        Ok(plane)
    }

    async fn launch(cluster_pods: bool) -> Result<Self> {
        let bin = binaries()?;
        let dir = tempfile::Builder::new().prefix("pytier-controlplane-").tempdir()?;
        let mut processes = Vec::new();

        let (etcd_client, etcd_peer, apiserver_port) = (free_port()?, free_port()?, free_port()?);
        let client_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        processes.push(spawn(
            "etcd",
            &bin.join("etcd"),
            dir.path(),
            &[
                "--name=default",
                &format!("--data-dir={}", dir.path().join("etcd").display()),
                &format!("--listen-client-urls={client_url}"),
                &format!("--advertise-client-urls={client_url}"),
                &format!("--listen-peer-urls={peer_url}"),
                &format!("--initial-advertise-peer-urls={peer_url}"),
                &format!("--initial-cluster=default={peer_url}"),
                "--log-level=warn",
                "--unsafe-no-fsync", // test data is thrown away; fsync only costs time
            ],
        )?);

        let ca = TestCa::new()?;
        // 10.0.2.2: the host's loopback as a QEMU guest (the NUMA VM) reaches it.
        let serving = ca.issue(&["localhost", "127.0.0.1", "10.0.2.2"])?;
        let pki = dir.path().join("pki");
        fs::create_dir_all(&pki)?;
        fs::write(pki.join("ca.crt"), ca.cert_pem())?;
        fs::write(pki.join("serving.crt"), &serving.cert_pem)?;
        fs::write(pki.join("serving.key"), &serving.key_pem)?;
        let (sa_private, sa_public) = key_pair_pem()?;
        fs::write(pki.join("service-account.key"), sa_private)?;
        fs::write(pki.join("service-account.pub"), sa_public)?;
        // A static admin token in system:masters, which RBAC allows everything.
        fs::write(pki.join("tokens.csv"), format!("{ADMIN_TOKEN},admin,admin,system:masters\n"))?;

        processes.push(spawn(
            "kube-apiserver",
            &bin.join("kube-apiserver"),
            dir.path(),
            &[
                &format!("--etcd-servers={client_url}"),
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                // The kubernetes Service endpoint may not be a loopback address.
                "--endpoint-reconciler-type=none",
                &format!("--secure-port={apiserver_port}"),
                &format!("--tls-cert-file={}", pki.join("serving.crt").display()),
                &format!("--tls-private-key-file={}", pki.join("serving.key").display()),
                &format!("--token-auth-file={}", pki.join("tokens.csv").display()),
                &format!("--service-account-key-file={}", pki.join("service-account.pub").display()),
                &format!("--service-account-signing-key-file={}", pki.join("service-account.key").display()),
                "--service-account-issuer=https://kubernetes.default.svc",
                "--service-cluster-ip-range=10.96.0.0/16",
                "--authorization-mode=RBAC",
                // Unless cluster_pods: pods get no service account token (no
                // other test needs one, and without a controller manager no
                // default account exists).
                if cluster_pods {
                    "--enable-aggregator-routing=true"
                } else {
                    "--disable-admission-plugins=ServiceAccount"
                },
                // A real node's kubelet listens on loopback only; its host name
                // resolves there (its InternalIP may not be loopback).
                "--kubelet-preferred-address-types=Hostname,InternalIP",
            ],
        )?);

        let kubeconfig = dir.path().join("kubeconfig");
        fs::write(&kubeconfig, kubeconfig_yaml(apiserver_port, &pki.join("ca.crt")))?;
        let config = Config::from_custom_kubeconfig(Kubeconfig::read_from(&kubeconfig)?, &KubeConfigOptions::default())
            .await
            .context("test kubeconfig is unusable")?;
        let client = Client::try_from(config)?;
        let mut plane = ControlPlane { processes, dir, kubeconfig, client, port: apiserver_port };
        plane.wait_ready().await?;
        Ok(plane)
    }

    /// The API server's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A client authenticated as a cluster administrator.
    pub fn client(&self) -> Client {
        self.client.clone()
    }

    /// Path of a kubeconfig for this control plane (for processes under test).
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Path of a kubeconfig that acts as a service account, through
    /// impersonation: a process using it has exactly that account's RBAC rights.
    pub fn kubeconfig_as_service_account(&self, namespace: &str, name: &str) -> Result<PathBuf> {
        let admin = fs::read_to_string(&self.kubeconfig)?;
        let user = format!("system:serviceaccount:{namespace}:{name}");
        let groups = format!("[system:serviceaccounts, \"system:serviceaccounts:{namespace}\", system:authenticated]");
        let text = admin.replace(
            &format!("    token: {ADMIN_TOKEN}\n"),
            &format!("    token: {ADMIN_TOKEN}\n    as: \"{user}\"\n    as-groups: {groups}\n"),
        );
        let path = self.dir.path().join(format!("kubeconfig-{namespace}-{name}"));
        fs::write(&path, text)?;
        Ok(path)
    }

    /// Applies every object of a multi-document YAML file with server-side
    /// apply, as `kubectl apply --server-side` would.
    pub async fn apply_manifests(&self, path: &Path) -> Result<()> {
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value = serde_json::Value::deserialize(document)?;
            if value.is_null() {
                continue;
            }
            let obj: DynamicObject = serde_json::from_value(value)?;
            let types =
                obj.types.as_ref().with_context(|| format!("{}: object without apiVersion/kind", path.display()))?;
            let gvk = GroupVersionKind::try_from(types)?;
            let (resource, caps) = kube::discovery::pinned_kind(&self.client, &gvk).await?;
            let api: Api<DynamicObject> = match (caps.scope, obj.namespace()) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(self.client(), &ns, &resource),
                _ => Api::all_with(self.client(), &resource),
            };
            api.patch(&obj.name_any(), &PatchParams::apply("pytier-tests").force(), &Patch::Apply(&obj))
                .await
                .with_context(|| {
                    format!("{}: the API server refused {} {}", path.display(), gvk.kind, obj.name_any())
                })?;
        }
        Ok(())
    }

    /// Starts kube-scheduler and kube-controller-manager (from
    /// `tests/realnode/build.sh`, the API server's release), so that
    /// Deployments, ReplicaSets and DaemonSets become pods on a real node.
    pub fn start_controllers(&mut self, bin: &Path) -> Result<()> {
        let kubeconfig = self.kubeconfig.display().to_string();
        let pki = self.dir.path().join("pki");
        self.processes.push(spawn(
            "kube-scheduler",
            &bin.join("kube-scheduler"),
            self.dir.path(),
            &[&format!("--kubeconfig={kubeconfig}"), "--leader-elect=false", "--secure-port=0"],
        )?);
        self.processes.push(spawn(
            "kube-controller-manager",
            &bin.join("kube-controller-manager"),
            self.dir.path(),
            &[
                &format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false",
                "--secure-port=0",
                &format!("--service-account-private-key-file={}", pki.join("service-account.key").display()),
                &format!("--root-ca-file={}", pki.join("ca.crt").display()),
                "--use-service-account-credentials=false",
            ],
        )?);
        Ok(())
    }

    /// Process ids of etcd and kube-apiserver (and the controllers, if started).
    pub fn pids(&self) -> Vec<u32> {
        self.processes.iter().map(|p| p.child.id()).collect()
    }

    /// The same processes with their names ("etcd", "kube-apiserver", ...).
    pub fn named_pids(&self) -> Vec<(&'static str, u32)> {
        self.processes.iter().map(|p| (p.name, p.child.id())).collect()
    }

    /// The directory holding etcd's data, certificates and logs; removed on drop.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    async fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            for p in &mut self.processes {
                if let Some(status) = p.child.try_wait()? {
                    bail!("{} exited with {status} before the API server was ready:\n{}", p.name, tail(&p.log, 40));
                }
            }
            let request = http::Request::get("/readyz").body(Vec::new())?;
            match self.client.request_text(request).await {
                Ok(body) if body.trim() == "ok" => return Ok(()),
                _ if Instant::now() > deadline => {
                    bail!("kube-apiserver not ready after {READY_TIMEOUT:?}:\n{}", tail(&self.processes[1].log, 40))
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Applies CRD files with server-side apply and waits until each is
    /// Established, so tests can use the types at once.
    pub async fn apply_crds(&self, paths: &[PathBuf]) -> Result<()> {
        let api: Api<CustomResourceDefinition> = Api::all(self.client());
        for path in paths {
            let text = fs::read_to_string(path)?;
            let crd: CustomResourceDefinition =
                serde_norway::from_str(&text).with_context(|| format!("{} is not a CRD", path.display()))?;
            let name = crd.metadata.name.clone().context("CRD without a name")?;
            api.patch(&name, &PatchParams::apply("pytier-tests").force(), &Patch::Apply(&crd))
                .await
                .with_context(|| format!("the API server refused {}", path.display()))?;
            tokio::time::timeout(
                Duration::from_secs(30),
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            .with_context(|| format!("CRD {name} not Established within 30s"))??;
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // Stop the API server before etcd so it does not spin on a dead backend.
        for p in self.processes.iter_mut().rev() {
            crate::stop_child(&mut p.child);
            if std::thread::panicking() {
                eprintln!("--- last lines of {} ({}):\n{}", p.name, self.dir.path().display(), tail(&p.log, 30));
            }
        }
    }
}

/// The directory with the `etcd` and `kube-apiserver` binaries. Prints their
/// versions once per test process so every test log says what it ran against.
pub fn binaries() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    let bin = BIN.get_or_init(|| find_binaries().map_err(|e| format!("{e:#}"))).clone();
    bin.map_err(anyhow::Error::msg)
}

fn find_binaries() -> Result<PathBuf> {
    let dir = crate::built_dir("PYTIER_CONTROLPLANE_BIN", "tests/controlplane/build.sh")?;
    for name in ["etcd", "kube-apiserver"] {
        let out = Command::new(dir.join(name))
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", dir.join(name).display()))?;
        eprintln!("control plane: {}", String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or("?"));
    }
    Ok(dir)
}

fn spawn(name: &'static str, bin: &Path, dir: &Path, args: &[&str]) -> Result<Process> {
    let log = dir.join(format!("{name}.log"));
    let child = crate::spawn_logged(Command::new(bin).args(args), &log)?;
    Ok(Process { name, child, log })
}

fn crd_files() -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = fs::read_dir(crate::repo_root().join("crds"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no CRD YAML under crds/; run `cargo run -p pytier-crds --bin crdgen`");
    }
    Ok(files)
}

fn kubeconfig_yaml(port: u16, ca_file: &Path) -> String {
    let ca = ca_file.display();
    format!(
        "apiVersion: v1\nkind: Config\n\
         clusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\n\
         users:\n- name: admin\n  user:\n    token: {ADMIN_TOKEN}\n\
         contexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n\
         current-context: test\n"
    )
}

/// A TCP port that was free a moment ago, for a server started next. Taken
/// below the kernel's ephemeral range: a port from that range (what binding
/// port 0 gives) can be taken as the local port of some outgoing connection
/// before the server binds it, which failed CI runs. Tests running at once
/// start from different points and go on from there.
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000; // above the kubelet's and the usual servers' ports
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let below = ephemeral.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32_768u32);
    let span = below.saturating_sub(FIRST).max(1);
    let _ = NEXT.compare_exchange(
        0,
        std::process::id().wrapping_mul(7919) % span + 1,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return Ok(port as u16);
        }
    }
    bail!("no free TCP port between {FIRST} and {below}")
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
