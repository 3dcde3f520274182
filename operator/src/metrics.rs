//! Prometheus metrics of the operator (`prometheus-client`, typed labels;
//! served by `pytier_admin::metrics` in the same format as the agent's).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ControllerLabels {
    controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn reconcile_buckets() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0])
}

fn webhook_buckets() -> Histogram {
    Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5])
}

/// Every metric the operator exports (names follow DESIGN.md §7).
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ControllerLabels, Counter>,
    reconcile_duration: Histograms<ControllerLabels>,
    queue_depth: Family<ControllerLabels, Gauge>,
    webhook_requests: Family<OutcomeLabels, Counter>,
    webhook_duration: Histograms<OutcomeLabels>,
    api_requests: Family<RequestLabels, Counter>,
    api_request_bytes: Family<RequestLabels, Counter>,
    pub leader: Gauge,
    /// Set once this replica can do its job: the webhook serves, and (on the
    /// leader) the caches are synced.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let mut registry = Registry::default();
        let reconciles = Family::default();
        let reconcile_errors = Family::default();
        let reconcile_duration = Histograms::new_with_constructor(reconcile_buckets as fn() -> Histogram);
        let queue_depth = Family::default();
        let webhook_requests = Family::default();
        let webhook_duration = Histograms::new_with_constructor(webhook_buckets as fn() -> Histogram);
        let api_requests = Family::default();
        let api_request_bytes = Family::default();
        let leader = Gauge::default();
        registry.register("pytier_operator_reconciles", "Reconciles run, by controller", reconciles.clone());
        registry.register(
            "pytier_operator_reconcile_errors",
            "Reconciles that failed and will be retried",
            reconcile_errors.clone(),
        );
        registry.register_with_unit(
            "pytier_operator_reconcile_duration",
            "Time one reconcile took",
            Unit::Seconds,
            reconcile_duration.clone(),
        );
        registry.register(
            "pytier_operator_queue_depth",
            "Objects waiting for a reconcile, by controller",
            queue_depth.clone(),
        );
        registry.register(
            "pytier_operator_webhook_requests",
            "Admission requests, by outcome",
            webhook_requests.clone(),
        );
        registry.register_with_unit(
            "pytier_operator_webhook_duration",
            "Time to answer an admission request",
            Unit::Seconds,
            webhook_duration.clone(),
        );
        registry.register(
            "pytier_operator_api_requests",
            "Requests sent to the API server, by verb and resource",
            api_requests.clone(),
        );
        registry.register_with_unit(
            "pytier_operator_api_request",
            "Bytes of request bodies sent to the API server, by verb and resource",
            Unit::Bytes,
            api_request_bytes.clone(),
        );
        registry.register("pytier_operator_leader", "1 while this replica holds the leader lease", leader.clone());
        Arc::new(Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            queue_depth,
            webhook_requests,
            webhook_duration,
            api_requests,
            api_request_bytes,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    /// The queue-depth gauge of one controller.
    pub fn queue_depth(&self, controller: &'static str) -> Gauge {
        self.queue_depth.get_or_create(&ControllerLabels { controller }).clone()
    }

    /// Starts timing one reconcile of `controller`; call `done` on the result.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&ControllerLabels { controller }).inc();
        ReconcileTimer { metrics: self, controller, start: Instant::now() }
    }

    pub fn webhook_request(&self, outcome: &'static str, start: Instant) {
        let labels = OutcomeLabels { outcome };
        self.webhook_requests.get_or_create(&labels).inc();
        self.webhook_duration.get_or_create(&labels).observe(start.elapsed().as_secs_f64());
    }

    /// Counts one request to the API server.
    pub fn api_request(&self, verb: &'static str, resource: String, body_bytes: u64) {
        let labels = RequestLabels { verb, resource };
        self.api_request_bytes.get_or_create(&labels).inc_by(body_bytes);
        self.api_requests.get_or_create(&labels).inc();
    }

    pub fn render(&self) -> String {
        pytier_admin::metrics::encode(&self.registry)
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl ReconcileTimer<'_> {
    pub fn done<T, E>(self, result: &Result<T, E>) {
        let labels = ControllerLabels { controller: self.controller };
        self.metrics.reconcile_duration.get_or_create(&labels).observe(self.start.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.get_or_create(&labels).inc();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_as_documented() {
        let m = Metrics::new();
        m.reconcile("tieringnodes").done(&Ok::<(), ()>(()));
        m.webhook_request("injected", Instant::now());
        m.queue_depth("tieringpolicies").set(3);
        m.leader.set(1);
        m.api_request("patch", "tieringpolicies/status".into(), 300);
        let text = m.render();
        for line in [
            "pytier_operator_reconciles_total{controller=\"tieringnodes\"} 1",
            "pytier_operator_webhook_requests_total{outcome=\"injected\"} 1",
            "pytier_operator_queue_depth{controller=\"tieringpolicies\"} 3",
            "pytier_operator_leader 1",
            "pytier_operator_api_requests_total{verb=\"patch\",resource=\"tieringpolicies/status\"} 1",
            "pytier_operator_api_request_bytes_total{verb=\"patch\",resource=\"tieringpolicies/status\"} 300",
            "# TYPE pytier_operator_webhook_duration_seconds histogram",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
    }
}
