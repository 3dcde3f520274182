//! A webhook probe: AdmissionReviews of an opted-in pod sent straight to the
//! operator's webhook the way the API server sends them (TLS with the
//! operator's CA, HTTP/2, one connection), each timed at the client to the
//! microsecond. Beside the API server's coarse histogram, it tells the
//! operator's part of a call (TLS, HTTP/2, its thread waiting for a core)
//! from the API server's own (encoding the review, queueing, applying the
//! patch), on the same loaded machine at the same moment.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use serde_json::json;
use tokio::sync::watch;

pub struct Probe {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<Vec<f64>>>,
}

impl Probe {
    /// Connects to the webhook at `addr` (`host:port`), trusting `ca_pem`,
    /// and sends a review every `every` until stopped. The probe has a thread
    /// and a runtime of its own, as the operator's webhook does: the
    /// benchmark's runtime, busy with a thousand simulated agents, would
    /// otherwise delay its timings.
    pub async fn start(addr: &str, ca_pem: &[u8], every: Duration) -> Result<Probe> {
        let (addr, ca_pem) = (addr.to_string(), ca_pem.to_vec());
        let (stop, stopped) = watch::channel(false);
        let (connected, is_connected) = tokio::sync::oneshot::channel();
        let thread = std::thread::Builder::new().name("webhook-probe".into()).spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async move {
                let sender = match connect(&addr, &ca_pem).await {
                    Ok(sender) => sender,
                    Err(e) => {
                        let _ = connected.send(Err(e));
                        return Ok(Vec::new());
                    }
                };
                let _ = connected.send(Ok(()));
                probe(sender, &format!("https://{addr}/mutate"), every, stopped).await
            })
        })?;
        is_connected.await.context("the probe's thread ended")??;
        Ok(Probe { stop, thread })
    }

    /// Stops; returns each call's seconds.
    pub async fn stop(self) -> Result<Vec<f64>> {
        let _ = self.stop.send(true);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join()).await?.map_err(|_| anyhow::anyhow!("the probe panicked"))?
    }
}

type Sender = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// One TLS connection speaking HTTP/2, as the API server's.
async fn connect(addr: &str, ca_pem: &[u8]) -> Result<Sender> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.context("the webhook's caBundle is not PEM")?)?;
    }
    let mut tls = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec()];
    let host = addr.rsplit_once(':').context("address without port")?.0.to_string();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    tcp.set_nodelay(true)?;
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls)).connect(ServerName::try_from(host)?, tcp).await?;
    if stream.get_ref().1.alpn_protocol() != Some(b"h2") {
        bail!("the webhook did not choose HTTP/2");
    }
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Sends a review every `every` until `stopped`; each call's seconds.
async fn probe(mut sender: Sender, uri: &str, every: Duration, mut stopped: watch::Receiver<bool>) -> Result<Vec<f64>> {
    let mut took = Vec::new();
    let mut tick = tokio::time::interval(every);
    for n in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stopped.changed() => break,
        }
        let body = serde_json::to_vec(&review(n))?;
        let request = http::Request::post(uri)
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body)))?;
        let start = Instant::now();
        let response = sender.send_request(request).await?;
        let status = response.status();
        let answer = response.into_body().collect().await?.to_bytes();
        took.push(start.elapsed().as_secs_f64());
        if !status.is_success() || !answer.windows(7).any(|w| w == b"\"patch\"") {
            bail!("the webhook answered {status} without a patch: {}", String::from_utf8_lossy(&answer));
        }
    }
    Ok(took)
}

/// A CREATE review of a pod that asks for injection, as the API server sends it.
fn review(n: u64) -> serde_json::Value {
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": format!("probe-{n}"), "namespace": "probe",
                     "annotations": {"pytier.dev/inject": "true"}},
        "spec": {"containers": [{"name": "app", "image": "python:3.11"}]},
    });
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": format!("00000000-0000-4000-8000-{n:012}"),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": format!("probe-{n}"), "namespace": "probe", "operation": "CREATE",
            "userInfo": {"username": "scale-bench"},
            "object": pod, "oldObject": null, "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    })
}
