//! Leader election with a coordination.k8s.io `Lease`, as client-go does it:
//! the holder renews the lease every third of its duration; another replica
//! takes it over when the lease record has not changed for a whole duration
//! by that replica's own clock (so clock skew between machines does not
//! matter). Writes carry the resourceVersion they were based on, so of two
//! replicas racing for a lease exactly one wins.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{info, warn};

pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    /// The lease record last seen and when it was first seen (local clock).
    observed: Option<(String, Instant)>,
}

impl LeaderElection {
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> Self {
        LeaderElection { api, name: name.into(), identity: identity.into(), duration, observed: None }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&mut self) {
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = self.name, identity = self.identity, "became leader");
                    return;
                }
                Ok(false) => {}
                Err(e) => warn!(lease = self.name, error = %e, "cannot read or write the lease"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    /// Renews the lease until a renewal has failed for a whole lease duration
    /// (another replica may hold it by then); returns when leadership is lost.
    pub async fn hold(&mut self) {
        let mut last_renewed = Instant::now();
        loop {
            tokio::time::sleep(self.retry_period()).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_renewed = Instant::now(),
                Ok(false) => {
                    warn!(lease = self.name, "another replica holds the lease");
                    return;
                }
                Err(e) => warn!(lease = self.name, error = %e, "cannot renew the lease"),
            }
            if last_renewed.elapsed() > self.duration {
                warn!(lease = self.name, "lease not renewed for its whole duration");
                return;
            }
        }
    }

    /// Gives the lease up so another replica can take over at once.
    pub async fn release(&mut self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else { return };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(&self.identity) {
            return;
        }
        spec.holder_identity = None;
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(_) => info!(lease = self.name, "released the lease"),
            Err(e) => warn!(lease = self.name, error = %e, "cannot release the lease"),
        }
    }

    fn retry_period(&self) -> Duration {
        self.duration / 3
    }

    /// One attempt: true when this replica holds the lease afterwards.
    async fn try_acquire_or_renew(&mut self) -> kube::Result<bool> {
        let now = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let seconds = self.duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta { name: Some(self.name.clone()), ..Default::default() },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(now.clone()),
                    renew_time: Some(now),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let version = lease.metadata.resource_version.clone().unwrap_or_default();
        if self.observed.as_ref().is_none_or(|(v, _)| *v != version) {
            self.observed = Some((version, Instant::now()));
        }
        let spec = lease.spec.get_or_insert_with(Default::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(&self.identity);
        let expired = self.observed.as_ref().is_some_and(|(_, seen)| seen.elapsed() > self.duration);
        if holder.is_some() && !mine && !expired {
            return Ok(false);
        }
        if !mine {
            spec.acquire_time = Some(now.clone());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(now);
        match self.api.replace(&self.name, &PostParams::default(), &lease).await {
            Ok(updated) => {
                self.observed = Some((updated.metadata.resource_version.unwrap_or_default(), Instant::now()));
                Ok(true)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }
}
