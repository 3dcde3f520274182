//! The real operator binary, run as a process against a test control plane.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::api::{Api, PostParams};

use crate::controlplane::free_port;
use crate::daemon::Daemon;
use crate::{ControlPlane, spawn_logged};

/// A running `operator run`, killed when dropped.
pub struct Operator {
    daemon: Daemon,
    pub metrics_addr: String,
    pub webhook_addr: String,
}

impl Operator {
    /// Starts the operator, connecting with `kubeconfig`, with `args`
    /// appended to the defaults for tests: loopback ports picked here,
    /// namespace `pytier-system`, the given identity.
    pub fn start_with(plane: &ControlPlane, kubeconfig: &Path, identity: &str, args: &[&str]) -> Result<Operator> {
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let webhook_addr = format!("127.0.0.1:{}", free_port()?);
        let log = plane.data_dir().join(format!("operator-{identity}.log"));
        let mut cmd = Command::new(binary()?);
        cmd.arg("run")
            .args(["--namespace", "pytier-system", "--identity", identity])
            .args(["--metrics-addr", &metrics_addr, "--webhook-addr", &webhook_addr])
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or("info,pytier_operator=debug".into()));
        let child = spawn_logged(&mut cmd, &log)?;
        let daemon = Daemon { child, log, admin_addr: metrics_addr.clone(), name: "operator" };
        Ok(Operator { daemon, metrics_addr, webhook_addr })
    }

    /// The body of an endpoint of the metrics server (`/metrics`, `/readyz`).
    pub fn get(&self, path: &str) -> Result<String> {
        self.daemon.get(path)
    }

    /// Waits until `/readyz` answers ok.
    pub fn wait_ready(&mut self) -> Result<()> {
        self.daemon.wait_ready()
    }

    /// The value of an unlabelled metric, if exported.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let text = self.get("/metrics").ok()?;
        text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    pub fn pid(&self) -> u32 {
        self.daemon.child.id()
    }

    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn log_text(&self) -> String {
        self.daemon.log_text()
    }
}

/// The operator binary: `$PYTIER_OPERATOR_BIN`, or else the debug build,
/// built once per test process.
pub fn binary() -> Result<PathBuf> {
    static BIN: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();
    crate::workspace_binary(&BIN, "PYTIER_OPERATOR_BIN", "pytier-operator", "operator")
}

/// Installs the operator's namespace and RBAC from `deploy/operator` and
/// returns a kubeconfig acting as its service account, so an operator started
/// with it has exactly the rights the shipped manifests grant.
pub async fn install_rbac(plane: &ControlPlane) -> Result<PathBuf> {
    let deploy = crate::repo_root().join("deploy/operator");
    for file in ["namespace.yaml", "rbac.yaml"] {
        plane.apply_manifests(&deploy.join(file)).await?;
    }
    plane.kubeconfig_as_service_account("pytier-system", "pytier-operator")
}

/// Installs `deploy/operator/webhook.yaml` with the API server calling `op`
/// at its loopback address (a Service would need a cluster network), and
/// waits until the operator has set the caBundle.
pub async fn install_webhook(plane: &ControlPlane, op: &Operator) -> Result<()> {
    let path = crate::repo_root().join("deploy/operator/webhook.yaml");
    let mut config: serde_json::Value = serde_norway::from_str(&fs::read_to_string(&path)?)?;
    for webhook in config["webhooks"].as_array_mut().context("webhook.yaml has no webhooks")? {
        webhook["clientConfig"] = serde_json::json!({"url": format!("https://{}/mutate", op.webhook_addr)});
    }
    let config: MutatingWebhookConfiguration = serde_json::from_value(config)?;
    let name = config.metadata.name.clone().context("webhook.yaml: no name")?;
    let api = Api::<MutatingWebhookConfiguration>::all(plane.client());
    api.create(&PostParams::default(), &config).await.context("cannot create the webhook configuration")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let config = api.get(&name).await?;
        if config.webhooks.iter().flatten().all(|w| w.client_config.ca_bundle.is_some()) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the operator did not set the caBundle of {name} within 30s:\n{}", op.log_text());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Polls `check` until it returns Some, or fails after `timeout` saying what
/// was awaited and what `check` last saw.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(last) if Instant::now() > deadline => panic!("{what}: not within {timeout:?}; last seen: {last}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
