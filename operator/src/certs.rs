//! The webhook's serving certificate, made and rotated by the operator itself
//! (no cert-manager needed).
//!
//! A Secret holds a CA (10 years) and a serving certificate it signed
//! (`--cert-validity-days`, 1 year by default). Every replica reads the Secret,
//! serves its certificate, and re-reads it every minute; whichever replica
//! first finds it missing, expiring (a third of its life left) or made for
//! other DNS names writes a new one, with the Secret's resourceVersion as a
//! guard so two replicas never both win. Renewal keeps the CA, so the
//! `caBundle` of the MutatingWebhookConfiguration only changes when the CA does;
//! it is patched whenever it differs.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::{Context as _, Result};
use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};
use kube::{Client, ResourceExt};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tracing::{info, warn};

const NOT_AFTER: &str = "pytier.dev/not-after";
const DNS_NAMES: &str = "pytier.dev/dns-names";
const CA_DAYS: i64 = 3650;

/// Where the certificate lives and what it is for.
#[derive(Clone, Debug)]
pub struct CertConfig {
    pub namespace: String,
    pub secret: String,
    pub dns_names: Vec<String>,
    pub validity_days: i64,
    /// The MutatingWebhookConfiguration whose caBundle to keep current.
    pub webhook_config: Option<String>,
}

/// The certificate the TLS server presents; swapped in place on rotation.
#[derive(Debug, Default)]
pub struct ServingCert(RwLock<Option<Arc<CertifiedKey>>>);

impl ResolvesServerCert for ServingCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.read().unwrap().clone()
    }
}

/// What the Secret holds.
struct Bundle {
    ca_cert: String,
    ca_key: String,
    cert: String,
    key: String,
    not_after: i64,
    dns_names: String,
}

/// Loads (making it if needed) the certificate into `serving`, then keeps it
/// current until the process ends.
pub async fn maintain(client: Client, config: CertConfig, serving: Arc<ServingCert>) {
    let mut warned = false;
    loop {
        // Until the webhook configuration exists (it may be installed after the
        // operator starts), look for it often: no pod is injected without it.
        let pause = match refresh(&client, &config, &serving).await {
            Ok(Webhook::Configured) => Duration::from_secs(60),
            Ok(Webhook::Missing) => {
                if !std::mem::replace(&mut warned, true) {
                    let name = config.webhook_config.as_deref().unwrap_or_default();
                    warn!(name, "MutatingWebhookConfiguration not found; the API server will not call the webhook");
                }
                Duration::from_secs(2)
            }
            Err(e) => {
                warn!(error = format!("{e:#}"), "webhook certificate not refreshed; retrying in a minute");
                Duration::from_secs(60)
            }
        };
        tokio::time::sleep(pause).await;
    }
}

/// Whether the MutatingWebhookConfiguration was there to carry the caBundle.
#[derive(Debug, PartialEq)]
pub enum Webhook {
    Configured,
    Missing,
}

/// One round of `maintain`; the first call must succeed before serving.
pub async fn refresh(client: &Client, config: &CertConfig, serving: &ServingCert) -> Result<Webhook> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &config.namespace);
    let bundle = loop {
        let existing = secrets.get_opt(&config.secret).await.context("cannot read the webhook certificate Secret")?;
        let current = existing.as_ref().and_then(read_bundle);
        if let Some(b) = &current
            && !needs_renewal(b, config)
        {
            break current.unwrap();
        }
        let ca = current.as_ref().map(|b| (b.ca_cert.clone(), b.ca_key.clone()));
        let fresh = issue(config, ca)?;
        match write(&secrets, config, existing, &fresh).await {
            Ok(()) => {
                info!(secret = config.secret, "wrote a new webhook serving certificate");
                break fresh;
            }
            // Another replica wrote first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e).context("cannot write the webhook certificate Secret"),
        }
    };
    *serving.0.write().unwrap() = Some(Arc::new(certified_key(&bundle)?));
    match &config.webhook_config {
        Some(name) => patch_ca_bundle(client, name, &bundle.ca_cert).await,
        None => Ok(Webhook::Configured),
    }
}

fn needs_renewal(b: &Bundle, config: &CertConfig) -> bool {
    let remaining = b.not_after - now();
    remaining < config.validity_days * 86400 / 3 || b.dns_names != config.dns_names.join(",")
}

fn read_bundle(secret: &Secret) -> Option<Bundle> {
    let data = secret.data.as_ref()?;
    let text = |k: &str| data.get(k).and_then(|b| String::from_utf8(b.0.clone()).ok());
    let annotations = secret.annotations();
    Some(Bundle {
        ca_cert: text("ca.crt")?,
        ca_key: text("ca.key")?,
        cert: text("tls.crt")?,
        key: text("tls.key")?,
        not_after: annotations.get(NOT_AFTER)?.parse().ok()?,
        dns_names: annotations.get(DNS_NAMES)?.clone(),
    })
}

fn now() -> i64 {
    k8s_openapi::jiff::Timestamp::now().as_second()
}

fn ca_params() -> Result<CertificateParams> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, "pytier-operator webhook CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// A serving certificate signed by the existing CA, or by a new CA when there
/// is none.
fn issue(config: &CertConfig, ca: Option<(String, String)>) -> Result<Bundle> {
    let (ca_cert, ca_key) = match ca {
        Some(ca) => ca,
        None => {
            let key = KeyPair::generate()?;
            let mut params = ca_params()?;
            params.not_after = rcgen_time(CA_DAYS)?;
            (params.self_signed(&key)?.pem(), key.serialize_pem())
        }
    };
    // The issuer's name and key are what a signature needs; they match the CA certificate.
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca_key)?);
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(config.dns_names.clone())?;
    params.distinguished_name.push(DnType::CommonName, config.dns_names.first().cloned().unwrap_or_default());
    params.not_after = rcgen_time(config.validity_days)?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert: cert.pem(),
        key: key.serialize_pem(),
        not_after: now() + config.validity_days * 86400,
        dns_names: config.dns_names.join(","),
    })
}

fn rcgen_time(days_from_now: i64) -> Result<time::OffsetDateTime> {
    let at = now() + days_from_now * 86400;
    Ok(time::OffsetDateTime::from_unix_timestamp(at)?)
}

async fn write(secrets: &Api<Secret>, config: &CertConfig, existing: Option<Secret>, b: &Bundle) -> kube::Result<()> {
    let bytes = |s: &str| ByteString(s.as_bytes().to_vec());
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some(config.secret.clone()),
            namespace: Some(config.namespace.clone()),
            resource_version: existing.and_then(|s| s.metadata.resource_version),
            annotations: Some(
                [(NOT_AFTER.to_string(), b.not_after.to_string()), (DNS_NAMES.to_string(), b.dns_names.clone())].into(),
            ),
            ..Default::default()
        },
        type_: Some("kubernetes.io/tls".into()),
        data: Some(
            [
                ("ca.crt".to_string(), bytes(&b.ca_cert)),
                ("ca.key".to_string(), bytes(&b.ca_key)),
                ("tls.crt".to_string(), bytes(&b.cert)),
                ("tls.key".to_string(), bytes(&b.key)),
            ]
            .into(),
        ),
        ..Default::default()
    };
    if secret.metadata.resource_version.is_some() {
        secrets.replace(&config.secret, &PostParams::default(), &secret).await.map(drop)
    } else {
        secrets.create(&PostParams::default(), &secret).await.map(drop)
    }
}

fn certified_key(b: &Bundle) -> Result<CertifiedKey> {
    let certs = CertificateDer::pem_slice_iter(b.cert.as_bytes()).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(b.key.as_bytes())?;
    Ok(CertifiedKey::new(certs, any_supported_type(&key)?))
}

/// Sets the caBundle of every webhook in the named configuration.
async fn patch_ca_bundle(client: &Client, name: &str, ca_pem: &str) -> Result<Webhook> {
    let api: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let Some(mut config) = api.get_opt(name).await? else { return Ok(Webhook::Missing) };
    let bundle = ByteString(ca_pem.as_bytes().to_vec());
    let mut changed = false;
    for webhook in config.webhooks.iter_mut().flatten() {
        if webhook.client_config.ca_bundle.as_ref() != Some(&bundle) {
            webhook.client_config.ca_bundle = Some(bundle.clone());
            changed = true;
        }
    }
    if changed {
        api.replace(name, &PostParams::default(), &config)
            .await
            .with_context(|| format!("cannot set the caBundle of MutatingWebhookConfiguration {name}"))?;
        info!(name, "caBundle updated");
    }
    Ok(Webhook::Configured)
}
