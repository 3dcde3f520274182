//! Prometheus metrics of the operator, and the plain-HTTP endpoint that serves
//! them with the health and readiness probes.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Every metric the operator exports (names follow DESIGN.md §7).
pub struct Metrics {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_duration: HistogramVec,
    pub queue_depth: IntGaugeVec,
    webhook_requests: IntCounterVec,
    webhook_duration: HistogramVec,
    pub leader: IntGauge,
    /// Set once this replica can do its job: the webhook serves, and (on the
    /// leader) the caches are synced.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        let registry = Registry::new();
        let reconciles = IntCounterVec::new(
            Opts::new("pytier_operator_reconciles_total", "Reconciles run, by controller."),
            &["controller"],
        )
        .unwrap();
        let reconcile_errors = IntCounterVec::new(
            Opts::new("pytier_operator_reconcile_errors_total", "Reconciles that failed and will be retried."),
            &["controller"],
        )
        .unwrap();
        let reconcile_duration = HistogramVec::new(
            HistogramOpts::new("pytier_operator_reconcile_duration_seconds", "Time one reconcile took.")
                .buckets(vec![0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
            &["controller"],
        )
        .unwrap();
        let queue_depth = IntGaugeVec::new(
            Opts::new("pytier_operator_queue_depth", "Objects waiting for a reconcile, by controller."),
            &["controller"],
        )
        .unwrap();
        let webhook_requests = IntCounterVec::new(
            Opts::new("pytier_operator_webhook_requests_total", "Admission requests, by outcome."),
            &["outcome"],
        )
        .unwrap();
        let webhook_duration = HistogramVec::new(
            HistogramOpts::new("pytier_operator_webhook_duration_seconds", "Time to answer an admission request.")
                .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5]),
            &["outcome"],
        )
        .unwrap();
        let leader = IntGauge::new("pytier_operator_leader", "1 while this replica holds the leader lease.").unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reconcile_errors.clone()),
            Box::new(reconcile_duration.clone()),
            Box::new(queue_depth.clone()),
            Box::new(webhook_requests.clone()),
            Box::new(webhook_duration.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Arc::new(Metrics {
            registry,
            reconciles,
            reconcile_errors,
            reconcile_duration,
            queue_depth,
            webhook_requests,
            webhook_duration,
            leader,
            ready: AtomicBool::new(false),
        })
    }

    /// Starts timing one reconcile of `controller`; call `done` on the result.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.with_label_values(&[controller]).inc();
        ReconcileTimer { metrics: self, controller, start: Instant::now() }
    }

    pub fn webhook_request(&self, outcome: &str, start: Instant) {
        self.webhook_requests.with_label_values(&[outcome]).inc();
        self.webhook_duration.with_label_values(&[outcome]).observe(start.elapsed().as_secs_f64());
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).unwrap();
        String::from_utf8(out).unwrap()
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
        let label = [self.controller];
        self.metrics.reconcile_duration.with_label_values(&label).observe(self.start.elapsed().as_secs_f64());
        if result.is_err() {
            self.metrics.reconcile_errors.with_label_values(&label).inc();
        }
    }
}
