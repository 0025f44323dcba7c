//! The qualifier's Prometheus metrics (a public interface: see the README).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub ingest_requests: IntCounterVec,
    pub events: IntCounterVec,
    pub status_changes: IntCounterVec,
    pub eval_duration: Histogram,
    pub users: IntGauge,
    pub expiry_due: IntGauge,
    pub restore_duration: Histogram,
    pub transaction_duration: Histogram,
    pub transactions_failed: IntCounter,
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let buckets =
            |start, count| prometheus::exponential_buckets(start, 2.0, count).unwrap_or_default();
        let metrics = Self {
            ingest_requests: IntCounterVec::new(
                Opts::new(
                    "qualifier_ingest_requests_total",
                    "Ingest API requests by HTTP status code.",
                ),
                &["code"],
            )?,
            events: IntCounterVec::new(
                Opts::new(
                    "qualifier_events_total",
                    "Input events by type (trait, id_sync, opt_out, unknown) and outcome (applied, ignored, invalid).",
                ),
                &["type", "outcome"],
            )?,
            status_changes: IntCounterVec::new(
                Opts::new(
                    "qualifier_status_changes_total",
                    "Segment status changes published, by status (1, 0) and reason.",
                ),
                &["status", "reason"],
            )?,
            eval_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "qualifier_eval_duration_seconds",
                    "Evaluating one user for one event or timer.",
                )
                .buckets(buckets(0.000_001, 16)),
            )?,
            users: IntGauge::new(
                "qualifier_users",
                "Users (and opt-out markers) held by this process.",
            )?,
            expiry_due: IntGauge::new(
                "qualifier_expiry_due",
                "Timers (ttl, windows, inactivity) due now and not yet processed.",
            )?,
            restore_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "qualifier_restore_duration_seconds",
                    "Restoring a partition's users from the changelog.",
                )
                .buckets(buckets(0.001, 16)),
            )?,
            transaction_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "qualifier_transaction_duration_seconds",
                    "One Kafka transaction: outputs, changelog and input offsets.",
                )
                .buckets(buckets(0.001, 14)),
            )?,
            transactions_failed: IntCounter::new(
                "qualifier_transactions_failed_total",
                "Kafka transactions that could not be committed (each is aborted; state and input are rewound to the changelog and committed offsets).",
            )?,
        };
        registry.register(Box::new(metrics.ingest_requests.clone()))?;
        registry.register(Box::new(metrics.events.clone()))?;
        registry.register(Box::new(metrics.status_changes.clone()))?;
        registry.register(Box::new(metrics.eval_duration.clone()))?;
        registry.register(Box::new(metrics.users.clone()))?;
        registry.register(Box::new(metrics.expiry_due.clone()))?;
        registry.register(Box::new(metrics.restore_duration.clone()))?;
        registry.register(Box::new(metrics.transaction_duration.clone()))?;
        registry.register(Box::new(metrics.transactions_failed.clone()))?;
        for kind in ["trait", "id_sync", "opt_out", "unknown"] {
            for outcome in ["applied", "ignored", "invalid"] {
                metrics.events.with_label_values(&[kind, outcome]);
            }
        }
        for (status, reason) in [
            ("1", "qualified"),
            ("0", "rule"),
            ("0", "ttl"),
            ("0", "inactive"),
            ("0", "opt_out"),
        ] {
            metrics.status_changes.with_label_values(&[status, reason]);
        }
        Ok(metrics)
    }
}
