//! pytier operator: turns TieringPolicies into per-node TieringNode specs,
//! reports each policy's state in its status, and injects the interposer into
//! Python pods through a mutating admission webhook.
//!
//! Every replica serves the webhook and the metrics endpoint; only the replica
//! holding the leader Lease runs the controllers. A replica that loses the
//! lease exits, and Kubernetes restarts it as a follower.

mod cache;
mod certs;
mod client;
mod lease;
mod metrics;
mod nodes;
mod policies;
mod selection;
mod webhook;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use futures::StreamExt;
use hyper::{Method, StatusCode};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Namespace;
use kube::Client;
use kube::api::{Api, PartialObjectMeta};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use pytier_crds::TieringPolicy;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::cache::{Queues, Stores};
use crate::metrics::Metrics;

#[derive(Parser)]
#[command(name = "operator", version, about = "pytier operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the CustomResourceDefinitions (for `kubectl apply -f -`).
    Crds,
    /// Run the controllers (on the leader) and the webhook (on every replica).
    /// Connects with the in-cluster service account, or `$KUBECONFIG`.
    Run(Box<RunArgs>),
}

#[derive(Parser, Clone)]
struct RunArgs {
    /// Namespace of the leader Lease and the webhook certificate Secret.
    #[arg(long, env = "POD_NAMESPACE", default_value = "pytier-system")]
    namespace: String,
    /// This replica's name in the Lease and in Events.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Name of the leader election Lease.
    #[arg(long, default_value = "pytier-operator")]
    lease_name: String,
    /// Seconds a leader's lease lasts without renewal before another replica
    /// takes over.
    #[arg(long, default_value_t = 15)]
    lease_duration_seconds: u64,
    /// Address of the plain-HTTP endpoint: /metrics, /healthz, /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Address the webhook serves HTTPS on (path /mutate).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// Run without the webhook (no pod injection).
    #[arg(long)]
    no_webhook: bool,
    /// The MutatingWebhookConfiguration whose caBundle the operator keeps current.
    #[arg(long, default_value = "pytier-operator")]
    webhook_config: String,
    /// The Secret holding the webhook's CA and serving certificate.
    #[arg(long, default_value = "pytier-webhook-tls")]
    webhook_secret: String,
    /// DNS names (or IP addresses) of the webhook's serving certificate.
    #[arg(long, value_delimiter = ',', default_value = "pytier-operator.pytier-system.svc")]
    webhook_dns_names: Vec<String>,
    /// Lifetime of a serving certificate; it is renewed with a third left.
    #[arg(long, default_value_t = 365)]
    cert_validity_days: i64,
    /// Least seconds between two writes of a policy's status that only change
    /// its pod and byte counts (and messages); a change of condition or
    /// observed generation is written at once.
    #[arg(long, default_value_t = 10.0)]
    status_every: f64,
    /// Host directory with the interposer shim, which the node agent fills.
    #[arg(long, default_value = "/var/lib/pytier/shim")]
    shim_host_path: String,
}

/// What both controllers share.
pub struct Context {
    pub client: Client,
    pub stores: Stores,
    pub queues: Queues,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    pub status_pacer: policies::StatusPacer,
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds => {
            for crd in pytier_crds::crds() {
                print!("---\n{}", pytier_crds::to_yaml(&crd));
            }
            ExitCode::SUCCESS
        }
        Command::Run(args) => {
            pytier_admin::init_logging();
            let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
            match runtime.block_on(run(*args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    error!(error = format!("{e:#}"), "operator stopped");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(args: RunArgs) -> Result<()> {
    let status_every = Duration::try_from_secs_f64(args.status_every)
        .map_err(|e| anyhow::anyhow!("--status-every {}: {e}", args.status_every))?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let metrics = Metrics::new();
    let client = client::connect(metrics.clone()).await.context("cannot connect to the Kubernetes API server")?;
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let recorder = Recorder::new(
        client.clone(),
        Reporter { controller: "pytier-operator".into(), instance: Some(identity.clone()) },
    );
    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });

    let listener =
        TcpListener::bind(args.metrics_addr).await.with_context(|| format!("cannot bind {}", args.metrics_addr))?;
    info!(addr = %listener.local_addr()?, "serving /metrics, /healthz, /readyz");
    tokio::spawn(pytier_admin::http::serve(listener, None, metrics_handler(metrics.clone())));

    if !args.no_webhook {
        start_webhook(&args, client.clone(), metrics.clone(), recorder.clone()).await?;
    }
    metrics.ready.store(true, Ordering::Relaxed);

    let leases: Api<Lease> = Api::namespaced(client.clone(), &args.namespace);
    let mut election = lease::LeaderElection::new(
        leases,
        &args.lease_name,
        &identity,
        Duration::from_secs(args.lease_duration_seconds),
    );
    tokio::select! {
        () = election.acquire() => {}
        () = stopped(stop.clone()) => return Ok(()),
    }
    metrics.leader.set(1);

    let (stores, queues, requests, drive) = Stores::start(client.clone(), &metrics);
    let caches = tokio::spawn(drive);
    stores.wait_until_ready().await.context("caches did not sync")?;
    info!("caches synced; reconciling");
    let status_pacer = policies::StatusPacer::new(status_every);
    let ctx = Arc::new(Context { client, stores, queues, metrics, recorder, status_pacer });
    let controllers = futures::future::join(
        nodes::run(ctx.clone(), requests.nodes, stopped(stop.clone())),
        policies::run(ctx.clone(), requests.policies, stopped(stop.clone())),
    );
    let result = tokio::select! {
        _ = controllers => Ok(()),
        () = election.hold() => Err(anyhow::anyhow!("lost the leader lease; exiting so that a follower takes over")),
    };
    caches.abort();
    election.release().await;
    result
}

/// Serves the webhook over TLS with a certificate the operator maintains.
async fn start_webhook(args: &RunArgs, client: Client, metrics: Arc<Metrics>, recorder: Recorder) -> Result<()> {
    let config = certs::CertConfig {
        namespace: args.namespace.clone(),
        secret: args.webhook_secret.clone(),
        dns_names: args.webhook_dns_names.clone(),
        validity_days: args.cert_validity_days,
        webhook_config: Some(args.webhook_config.clone()),
    };
    let serving = Arc::new(certs::ServingCert::default());
    certs::refresh(&client, &config, &serving).await.context("cannot set up the webhook certificate")?;
    tokio::spawn(certs::maintain(client.clone(), config, serving.clone()));

    // The webhook's own small caches: namespace labels and policies (opt-in).
    let (namespaces, ns_writer) = reflector::store();
    let ns_watch = watcher(Api::<PartialObjectMeta<Namespace>>::all(client.clone()), watcher::Config::default());
    tokio::spawn(ns_watch.default_backoff().reflect(ns_writer).for_each(|_| async {}));
    let (policies, policy_writer) = reflector::store();
    let policy_watch = watcher(Api::<TieringPolicy>::all(client), watcher::Config::default());
    tokio::spawn(policy_watch.default_backoff().reflect(policy_writer).for_each(|_| async {}));

    let hook = webhook::Webhook {
        namespaces,
        policies,
        paths: webhook::HostPaths { shim: args.shim_host_path.clone() },
        recorder,
        metrics,
    };
    let handler: pytier_admin::http::Handler = Arc::new(move |method, path, body| match (method, path) {
        (&Method::POST, "/mutate") => {
            let review = hook.review(body).unwrap_or_else(|e| {
                warn!(error = e, "unreadable admission request");
                webhook::unreadable(&e)
            });
            (StatusCode::OK, "application/json", review.to_string().into_bytes())
        }
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    });
    let mut tls = rustls::ServerConfig::builder().with_no_client_auth().with_cert_resolver(serving);
    tls.alpn_protocols = pytier_admin::http::ALPN.iter().map(|p| p.to_vec()).collect();
    let tls = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener =
        std::net::TcpListener::bind(args.webhook_addr).with_context(|| format!("cannot bind {}", args.webhook_addr))?;
    listener.set_nonblocking(true)?;
    info!(addr = %listener.local_addr()?, "serving the webhook");
    serve_on_own_thread(listener, tls, handler)
}

/// The webhook gets a thread and a runtime of its own: the API server waits
/// on it for every pod it admits, so no burst of reconciles on the
/// controllers' runtime may delay an answer.
fn serve_on_own_thread(
    listener: std::net::TcpListener,
    tls: tokio_rustls::TlsAcceptor,
    handler: pytier_admin::http::Handler,
) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = {
        let _inside = runtime.enter();
        TcpListener::from_std(listener)?
    };
    std::thread::Builder::new()
        .name("webhook".into())
        .spawn(move || runtime.block_on(pytier_admin::http::serve(listener, Some(tls), handler)))?;
    Ok(())
}

fn metrics_handler(metrics: Arc<Metrics>) -> pytier_admin::http::Handler {
    Arc::new(move |_, path, _| match path {
        "/metrics" => (StatusCode::OK, pytier_admin::metrics::CONTENT_TYPE, metrics.render().into_bytes()),
        "/healthz" => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" if metrics.is_ready() => (StatusCode::OK, "text/plain", b"ok\n".to_vec()),
        "/readyz" => (StatusCode::SERVICE_UNAVAILABLE, "text/plain", b"starting\n".to_vec()),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    })
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

async fn shutdown_signal() {
    pytier_admin::shutdown_signal().await;
    info!("shutting down");
}

/// Resolves once shutdown was asked for.
async fn stopped(mut stop: watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
