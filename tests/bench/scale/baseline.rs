//! A baseline webhook for `--baseline-webhook`: it answers every
//! AdmissionReview "allowed" with no patch, on the operator's own HTTP stack
//! (`pytier_admin::http`: TLS, HTTP/2 by ALPN, a thread and runtime of its
//! own), and is registered for the same pods as the operator's webhook. The
//! API server calls both for every pod, so its histogram for this one is
//! the floor of a webhook call on this machine under the same load: what no
//! work of the operator's could go below.

use std::sync::Arc;

use anyhow::{Context, Result};
use hyper::{Method, StatusCode};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use kube::Client;
use kube::api::{Api, PostParams};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;

/// The baseline's name in the API server's metrics.
pub const NAME: &str = "baseline.pytier.dev";

/// Starts the baseline webhook on 127.0.0.1 and registers it for the pods
/// the operator's webhook (`operator_webhook`, in deploy/operator/webhook.yaml)
/// sees.
pub async fn start(client: &Client, operator_webhook: &str) -> Result<()> {
    let key = rcgen::KeyPair::generate()?;
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])?.self_signed(&key)?;
    let tls = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    );
    let mut tls = tls.context("the baseline webhook's certificate")?;
    tls.alpn_protocols = pytier_admin::http::ALPN.iter().map(|p| p.to_vec()).collect();
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let listener = {
        let _inside = runtime.enter();
        tokio::net::TcpListener::from_std(listener)?
    };
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let handler: pytier_admin::http::Handler = Arc::new(|method, path, body| match (method, path) {
        (&Method::POST, "/mutate") => (StatusCode::OK, "application/json", allow(body).into_bytes()),
        _ => (StatusCode::NOT_FOUND, "text/plain", b"not found\n".to_vec()),
    });
    std::thread::Builder::new()
        .name("baseline-webhook".into())
        .spawn(move || runtime.block_on(pytier_admin::http::serve(listener, Some(acceptor), handler)))?;

    let path = pytier_tests::repo_root().join("deploy/operator/webhook.yaml");
    let config: serde_json::Value = serde_norway::from_str(&std::fs::read_to_string(&path)?)?;
    let mut webhook = (config["webhooks"].as_array().into_iter().flatten())
        .find(|w| w["name"] == operator_webhook)
        .with_context(|| format!("{} has no webhook {operator_webhook}", path.display()))?
        .clone();
    webhook["name"] = json!(NAME);
    webhook["clientConfig"] = json!({"url": format!("https://{addr}/mutate")});
    let mut config: MutatingWebhookConfiguration =
        serde_json::from_value(json!({"metadata": {"name": "pytier-bench-baseline"}, "webhooks": [webhook]}))?;
    for webhook in config.webhooks.iter_mut().flatten() {
        webhook.client_config.ca_bundle = Some(ByteString(cert.pem().into_bytes()));
    }
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &config)
        .await
        .context("cannot register the baseline webhook")?;
    Ok(())
}

/// The answer to a review: allowed, nothing changed.
fn allow(body: &[u8]) -> String {
    let uid = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|r| r["request"]["uid"].as_str().map(String::from));
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "response": {"uid": uid.unwrap_or_default(), "allowed": true},
    })
    .to_string()
}
