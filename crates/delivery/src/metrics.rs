//! Delivery's Prometheus metrics. The names and labels are a public interface (dashboards and
//! alerts use them): see the README before changing one.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};

/// Every delivery metric, registered once; per-destination handles come from
/// [`Metrics::destination`] so the hot path does no label lookups.
#[derive(Debug, Clone)]
pub struct Metrics {
    events: IntCounterVec,
    changes: IntCounterVec,
    requests: IntCounterVec,
    retries: IntCounterVec,
    request_duration: HistogramVec,
    end_to_end_latency: HistogramVec,
    upstream_latency: HistogramVec,
    batch_users: HistogramVec,
    batch_bytes: HistogramVec,
    queue_depth: IntGaugeVec,
    in_flight: IntGaugeVec,
    circuit_open: IntGaugeVec,
    backoffs: IntCounterVec,
    detaches: IntCounterVec,
    catch_up_reads: IntCounterVec,
    max_backlog_age: IntGaugeVec,
    /// `delivery_backlog_messages{destination, topic}`, set by the catch-up readers.
    pub backlog_messages: IntGaugeVec,
    /// `delivery_backlog_oldest_age_seconds{destination, topic}`.
    pub backlog_age: IntGaugeVec,
    oauth_token_requests: IntCounterVec,
    pub decode_errors: IntCounter,
    pub consumer_lag: IntGaugeVec,
    pub committed_offset: IntGaugeVec,
    /// `delivery_queue_budget_bytes`: the worker's queue budget (`queue_budget_mb` or its
    /// default), in bytes.
    pub queue_budget: IntGauge,
    /// `delivery_queued_bytes`: what the worker's lanes hold against it.
    pub queued_bytes: IntGauge,
    /// `delivery_order_pairs`: (user, segment) pairs the order table holds (see `order`).
    pub order_pairs: IntGauge,
    /// `delivery_log_records_total`: delivery log entries (a user's part of an attempt's record)
    /// handed to Kafka.
    pub log_records: IntCounter,
    /// `delivery_log_dropped_total`: delivery log entries lost (producer queue full, or the
    /// broker did not take them); deliveries themselves are never held back by the log.
    pub log_dropped: IntCounter,
    /// `delivery_resync_users_total{destination, outcome}`: see [`Metrics::resync_users`].
    resync_users: IntCounterVec,
    /// `delivery_partitions_revoked_total{topic}` (see `telemetry::partitions_revoked`).
    pub partitions_revoked: IntCounterVec,
}

/// The outcome label of `delivery_requests_total`: a closed set, so cardinality stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    Success,
    HttpStatus,
    Timeout,
    Connect,
    Tls,
}

impl RequestOutcome {
    pub const ALL: [Self; 5] = [
        Self::Success,
        Self::HttpStatus,
        Self::Timeout,
        Self::Connect,
        Self::Tls,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::HttpStatus => "http_status",
            Self::Timeout => "timeout",
            Self::Connect => "connect",
            Self::Tls => "tls",
        }
    }
}

/// The handles of one destination.
#[derive(Debug, Clone)]
pub struct DestinationMetrics {
    pub delivered: IntCounter,
    pub dead_lettered: IntCounter,
    /// `delivery_changes_total`: one per segment change, by what became of it.
    pub changes_delivered: IntCounter,
    pub changes_dead_lettered: IntCounter,
    pub changes_coalesced: IntCounter,
    /// Not sent: a newer change of the same user and segment came on the other input topic.
    pub changes_superseded: IntCounter,
    requests: [IntCounter; 5],
    pub retries: IntCounter,
    pub request_duration: Histogram,
    /// `delivery_end_to_end_latency_seconds`, by [`SendPath`].
    end_to_end_latency: LatencyByPath,
    pub batch_users: Histogram,
    pub batch_bytes: Histogram,
    pub queue_depth: IntGauge,
    pub in_flight: IntGauge,
    pub circuit_open: IntGauge,
    pub backoffs: IntCounter,
    pub detaches: IntCounter,
    /// Messages the destination's catch-up reader read: each one is read a second time.
    pub catch_up_reads: IntCounter,
    pub oauth_token_ok: IntCounter,
    pub oauth_token_error: IntCounter,
}

impl DestinationMetrics {
    pub fn request(&self, outcome: RequestOutcome) -> &IntCounter {
        &self.requests[outcome as usize]
    }

    pub fn end_to_end_latency(&self, path: SendPath) -> &Histogram {
        let by_path = &self.end_to_end_latency;
        by_path.paths[path as usize].get_or_init(|| {
            by_path
                .family
                .with_label_values(&[by_path.destination.as_str(), path.label()])
        })
    }
}

/// A destination's end-to-end latency histograms, one per [`SendPath`], each made when its
/// path is first observed: a path is 24 series per destination, and most destinations only
/// ever see `real_time` — a thousand destinations would export 72,000 series of zeros.
#[derive(Debug, Clone)]
struct LatencyByPath {
    family: HistogramVec,
    destination: String,
    paths: [std::sync::OnceLock<Histogram>; 4],
}

/// The `path` label of `delivery_end_to_end_latency_seconds`: how a change reached the
/// partner, so that a catch-up, an onboarding or a replay (whose changes are old by design)
/// does not page anyone for real-time latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// Read by the shared consumer from a real-time update.
    RealTime,
    /// A batch-origin (offline, onboarded) update.
    Batch,
    /// Read by the destination's catch-up reader after it fell behind.
    CatchUp,
    /// Re-sent by `delivery replay`.
    Replay,
}

impl SendPath {
    pub fn label(self) -> &'static str {
        match self {
            Self::RealTime => "real_time",
            Self::Batch => "batch",
            Self::CatchUp => "catch_up",
            Self::Replay => "replay",
        }
    }
}

/// `delivery_end_to_end_latency_seconds`'s bucket bounds: 50 ms apart from 0.1 s to 0.4 s,
/// around the real-time target (`linger_ms` + 100 ms), so a p99 of 0.3 s reads apart from one
/// of 0.6 s; wider above, up to 80 s (catch-up and replay sends are old by design).
const END_TO_END_BUCKETS: [f64; 21] = [
    0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0, 20.0, 40.0, 80.0,
];

fn buckets(start: f64, factor: f64, count: usize) -> Vec<f64> {
    prometheus::exponential_buckets(start, factor, count).unwrap_or_default()
}

impl Metrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let latency = buckets(0.005, 2.0, 13); // 5 ms … 20 s
        let metrics = Self {
            events: IntCounterVec::new(
                Opts::new(
                    "delivery_events_total",
                    "Status changes finished per destination: delivered (200) or dead-lettered.",
                ),
                &["destination", "outcome"],
            )?,
            changes: IntCounterVec::new(
                Opts::new(
                    "delivery_changes_total",
                    "Segment changes finished per destination: delivered (sent in a batch the partner accepted), dead_lettered, coalesced (replaced by a later status of the same user and segment in a delivered batch), or superseded (not sent: a newer change of the same user and segment came on the other input topic).",
                ),
                &["destination", "outcome"],
            )?,
            requests: IntCounterVec::new(
                Opts::new(
                    "delivery_requests_total",
                    "HTTP attempts per destination by outcome.",
                ),
                &["destination", "outcome"],
            )?,
            retries: IntCounterVec::new(
                Opts::new(
                    "delivery_retries_total",
                    "Retried requests per destination.",
                ),
                &["destination"],
            )?,
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "delivery_request_duration_seconds",
                    "Duration of one HTTP attempt.",
                )
                .buckets(latency.clone()),
                &["destination"],
            )?,
            end_to_end_latency: HistogramVec::new(
                HistogramOpts::new(
                    "delivery_end_to_end_latency_seconds",
                    "From a status change's time to the partner's success answer, by how it was sent (path: real_time, batch, catch_up, replay).",
                )
                .buckets(END_TO_END_BUCKETS.to_vec()),
                &["destination", "path"],
            )?,
            upstream_latency: HistogramVec::new(
                HistogramOpts::new(
                    "delivery_upstream_latency_seconds",
                    "How late status updates reach the worker's shared consumer, per input (real_time: segment-status; batch: segment-status-batch), by span: change_to_produced (the oldest change's time to when the qualifier produced the update), produced_to_read (from then to when this worker read it: the qualifier's transaction, the broker, the fetch), change_to_read (the two together).",
                )
                .buckets(END_TO_END_BUCKETS.to_vec()),
                &["input", "span"],
            )?,
            batch_users: HistogramVec::new(
                HistogramOpts::new("delivery_batch_users", "Distinct users per request.")
                    .buckets(buckets(1.0, 2.0, 15)),
                &["destination"],
            )?,
            batch_bytes: HistogramVec::new(
                HistogramOpts::new(
                    "delivery_batch_bytes",
                    "JSON body bytes per request (before gzip).",
                )
                .buckets(buckets(256.0, 2.0, 15)),
                &["destination"],
            )?,
            queue_depth: IntGaugeVec::new(
                Opts::new(
                    "delivery_queue_depth",
                    "Status changes waiting in the destination's queues and open batches.",
                ),
                &["destination"],
            )?,
            in_flight: IntGaugeVec::new(
                Opts::new(
                    "delivery_in_flight_requests",
                    "Requests being sent to the destination now.",
                ),
                &["destination"],
            )?,
            circuit_open: IntGaugeVec::new(
                Opts::new(
                    "delivery_circuit_open",
                    "1 while the destination is cut off after sustained failure.",
                ),
                &["destination"],
            )?,
            backoffs: IntCounterVec::new(
                Opts::new(
                    "delivery_backoffs_total",
                    "Transient failures (after the one retry) after which a batch waited and was tried again instead of being dead-lettered.",
                ),
                &["destination"],
            )?,
            detaches: IntCounterVec::new(
                Opts::new(
                    "delivery_detaches_total",
                    "Times the destination's queue was full and it went on reading a partition on its own, behind the shared consumer.",
                ),
                &["destination"],
            )?,
            catch_up_reads: IntCounterVec::new(
                Opts::new(
                    "delivery_catch_up_messages_total",
                    "Messages the destination's catch-up reader read from the input (while detached): each is read a second time, the price of not holding the others back.",
                ),
                &["destination"],
            )?,
            max_backlog_age: IntGaugeVec::new(
                Opts::new(
                    "delivery_max_backlog_age_seconds",
                    "The destination's max_backlog_age: changes waiting longer while it fails are dead-lettered (alerts compare the backlog's age with it).",
                ),
                &["destination"],
            )?,
            backlog_messages: IntGaugeVec::new(
                Opts::new(
                    "delivery_backlog_messages",
                    "Input messages the destination has not finished while it reads behind the shared consumer (0 when it keeps up).",
                ),
                &["destination", "topic"],
            )?,
            backlog_age: IntGaugeVec::new(
                Opts::new(
                    "delivery_backlog_oldest_age_seconds",
                    "Age of the oldest input message the destination has not finished while it reads behind the shared consumer (0 when it keeps up).",
                ),
                &["destination", "topic"],
            )?,
            oauth_token_requests: IntCounterVec::new(
                Opts::new(
                    "delivery_oauth_token_requests_total",
                    "OAuth token requests per destination by outcome (ok, error).",
                ),
                &["destination", "outcome"],
            )?,
            decode_errors: IntCounter::new(
                "delivery_decode_errors_total",
                "Input messages that could not be decoded (dead-lettered with their bytes).",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "delivery_consumer_lag",
                    "Messages behind the partition's end, per assigned partition.",
                ),
                &["topic", "partition"],
            )?,
            committed_offset: IntGaugeVec::new(
                Opts::new(
                    "delivery_committed_offset",
                    "Last committed offset per partition.",
                ),
                &["topic", "partition"],
            )?,
            queue_budget: IntGauge::new(
                "delivery_queue_budget_bytes",
                "The bytes all lanes of the worker may hold (queue_budget_mb, or its default: 16 MiB, or 40 KiB per destination when that is more), shared by its destinations.",
            )?,
            queued_bytes: IntGauge::new(
                "delivery_queued_bytes",
                "The bytes the worker's lanes hold against its queue budget (an estimate of the heap the queued updates cost: the updates, their batch entries, their bytes in request bodies); at most twice the budget.",
            )?,
            order_pairs: IntGauge::new(
                "delivery_order_pairs",
                "(user, segment) pairs whose newest sequence the worker keeps, so that a change older than one routed from the other input topic is not sent.",
            )?,
            log_records: IntCounter::new(
                "delivery_log_records_total",
                "Delivery log entries (one per user, destination and request attempt) handed to Kafka.",
            )?,
            log_dropped: IntCounter::new(
                "delivery_log_dropped_total",
                "Delivery log entries lost: the producer queue was full or the broker did not take them.",
            )?,
            resync_users: IntCounterVec::new(
                Opts::new(
                    "delivery_resync_users_total",
                    "Users a resync (`delivery resync` or a destination's backfill) sent their current memberships (sent), and those the partner accepted (delivered).",
                ),
                &["destination", "outcome"],
            )?,
            partitions_revoked: telemetry::partitions_revoked("delivery")?,
        };
        telemetry::register_all(
            registry,
            &[
                &metrics.events,
                &metrics.changes,
                &metrics.requests,
                &metrics.retries,
                &metrics.request_duration,
                &metrics.end_to_end_latency,
                &metrics.upstream_latency,
                &metrics.batch_users,
                &metrics.batch_bytes,
                &metrics.queue_depth,
                &metrics.in_flight,
                &metrics.circuit_open,
                &metrics.backoffs,
                &metrics.detaches,
                &metrics.catch_up_reads,
                &metrics.max_backlog_age,
                &metrics.backlog_messages,
                &metrics.backlog_age,
                &metrics.oauth_token_requests,
                &metrics.decode_errors,
                &metrics.consumer_lag,
                &metrics.committed_offset,
                &metrics.order_pairs,
                &metrics.queue_budget,
                &metrics.queued_bytes,
                &metrics.log_records,
                &metrics.log_dropped,
                &metrics.resync_users,
                &metrics.partitions_revoked,
            ],
        )?;
        Ok(metrics)
    }

    /// `delivery_upstream_latency_seconds` of `input`, span `span` (see `consumer::upstream`).
    pub fn upstream_latency(&self, input: crate::order::Topic, span: &str) -> Histogram {
        self.upstream_latency
            .with_label_values(&[input.label(), span])
    }

    /// `delivery_resync_users_total` of destination `id`: users sent, and users delivered.
    pub fn resync_users(&self, id: u64) -> (IntCounter, IntCounter) {
        let id = id.to_string();
        (
            self.resync_users.with_label_values(&[id.as_str(), "sent"]),
            self.resync_users
                .with_label_values(&[id.as_str(), "delivered"]),
        )
    }

    /// The handles of destination `id`; every series exists (at 0) from start-up on, so
    /// dashboards and alerts see it before the first event.
    pub fn destination(&self, id: u64, max_backlog_age: std::time::Duration) -> DestinationMetrics {
        let id = id.to_string();
        let d = id.as_str();
        self.max_backlog_age
            .with_label_values(&[d])
            .set(i64::try_from(max_backlog_age.as_secs()).unwrap_or(i64::MAX));
        DestinationMetrics {
            delivered: self.events.with_label_values(&[d, "delivered"]),
            dead_lettered: self.events.with_label_values(&[d, "dead_lettered"]),
            changes_delivered: self.changes.with_label_values(&[d, "delivered"]),
            changes_dead_lettered: self.changes.with_label_values(&[d, "dead_lettered"]),
            changes_coalesced: self.changes.with_label_values(&[d, "coalesced"]),
            changes_superseded: self.changes.with_label_values(&[d, "superseded"]),
            requests: RequestOutcome::ALL.map(|o| self.requests.with_label_values(&[d, o.label()])),
            retries: self.retries.with_label_values(&[d]),
            request_duration: self.request_duration.with_label_values(&[d]),
            end_to_end_latency: LatencyByPath {
                family: self.end_to_end_latency.clone(),
                destination: id.clone(),
                paths: Default::default(),
            },
            batch_users: self.batch_users.with_label_values(&[d]),
            batch_bytes: self.batch_bytes.with_label_values(&[d]),
            queue_depth: self.queue_depth.with_label_values(&[d]),
            in_flight: self.in_flight.with_label_values(&[d]),
            circuit_open: self.circuit_open.with_label_values(&[d]),
            backoffs: self.backoffs.with_label_values(&[d]),
            detaches: self.detaches.with_label_values(&[d]),
            catch_up_reads: self.catch_up_reads.with_label_values(&[d]),
            oauth_token_ok: self.oauth_token_requests.with_label_values(&[d, "ok"]),
            oauth_token_error: self.oauth_token_requests.with_label_values(&[d, "error"]),
        }
    }
}

#[cfg(test)]
mod tests;
