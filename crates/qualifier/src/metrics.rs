//! The qualifier's Prometheus metrics (a public interface: see the README).

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

#[derive(Debug, Clone)]
pub struct Metrics {
    pub ingest_requests: IntCounterVec,
    pub events: IntCounterVec,
    pub status_changes: IntCounterVec,
    pub eval_duration: Histogram,
    pub users: IntGauge,
    pub expiry_due: IntGauge,
    pub restore_duration: Histogram,
    /// `qualifier_restore_records_total`: changelog records read by restores.
    pub restore_records: IntCounter,
    /// `qualifier_restore_pending_partitions`: assigned partitions whose users are not restored
    /// yet (their input waits).
    pub restore_pending: IntGauge,
    pub transaction_duration: Histogram,
    pub transactions_failed: IntCounter,
    /// `qualifier_sweep_pending_users`: users still to re-evaluate under new definitions.
    pub sweep_pending: IntGauge,
    /// `qualifier_sweep_users_total`: users re-evaluated under new definitions.
    pub swept: IntCounter,
    /// `qualifier_changelog_bytes_total{record}`: bytes (key and value) of the changelog
    /// records transactions wrote, by `record` = `user` | `part` (see [`ChangelogBytes`]).
    pub changelog_bytes: IntCounterVec,
    /// `qualifier_state_decoded_bytes_total`: bytes of stored records decoded to evaluate
    /// their users, who were not kept decoded (`--warm-state-bytes`).
    pub decoded_bytes: IntCounter,
    /// `qualifier_warm_state_bytes`: what the users kept decoded between transactions count
    /// against `--warm-state-bytes` (their records' bytes, a state's size each, and a busy
    /// user's index of their record's histories).
    pub warm_bytes: IntGauge,
    /// `qualifier_state_bytes`: the bytes of the users' stored records as held in memory
    /// (compressed where it paid).
    pub state_bytes: IntGauge,
    /// `qualifier_consumer_lag_messages{topic, partition}`: input messages not yet consumed,
    /// per partition assigned to this process (see `telemetry::lag`).
    pub consumer_lag: IntGaugeVec,
    /// `qualifier_partitions_revoked_total{topic}` (see `telemetry::partitions_revoked`).
    pub partitions_revoked: IntCounterVec,
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
            restore_records: IntCounter::new(
                "qualifier_restore_records_total",
                "Changelog records read while restoring assigned partitions (the restore's progress).",
            )?,
            restore_pending: IntGauge::new(
                "qualifier_restore_pending_partitions",
                "Assigned partitions whose users are not restored from the changelog yet; their input waits.",
            )?,
            transaction_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "qualifier_transaction_duration_seconds",
                    "One Kafka transaction, from its begin to its commit's end: outputs, changelog and input offsets (its events are evaluated before it begins, while the last one commits).",
                )
                .buckets(buckets(0.001, 14)),
            )?,
            transactions_failed: IntCounter::new(
                "qualifier_transactions_failed_total",
                "Kafka transactions that could not be committed (each is aborted; state and input are rewound to the changelog and committed offsets).",
            )?,
            sweep_pending: IntGauge::new(
                "qualifier_sweep_pending_users",
                "Users still to re-evaluate in the background because the definitions changed (a reload, or a restore under other definitions).",
            )?,
            swept: IntCounter::new(
                "qualifier_sweep_users_total",
                "Users re-evaluated in the background because the definitions changed.",
            )?,
            changelog_bytes: IntCounterVec::new(
                Opts::new(
                    "qualifier_changelog_bytes_total",
                    "Bytes (key and value) of the changelog records transactions wrote, by record: user (a user's record or tombstone), part (a trait part or its tombstone).",
                ),
                &["record"],
            )?,
            decoded_bytes: IntCounter::new(
                "qualifier_state_decoded_bytes_total",
                "Bytes of stored user records decoded to evaluate users who were not kept decoded between transactions (see --warm-state-bytes).",
            )?,
            warm_bytes: IntGauge::new(
                "qualifier_warm_state_bytes",
                "What the users kept decoded between transactions count against --warm-state-bytes: their stored records' bytes, ~220 B each, and 8 B per history of a user with over 32 (at the last transaction's end).",
            )?,
            state_bytes: IntGauge::new(
                "qualifier_state_bytes",
                "Bytes of the users' stored records as held in memory: compressed once a user is not kept decoded, where that makes them shorter (the map, user ids and allocator's rounding come on top).",
            )?,
            consumer_lag: IntGaugeVec::new(
                Opts::new(
                    "qualifier_consumer_lag_messages",
                    "Input messages not yet consumed, per partition assigned to this process (from librdkafka's statistics, every 5 s).",
                ),
                &["topic", "partition"],
            )?,
            partitions_revoked: telemetry::partitions_revoked("qualifier")?,
        };
        telemetry::register_all(
            registry,
            &[
                &metrics.ingest_requests,
                &metrics.events,
                &metrics.status_changes,
                &metrics.eval_duration,
                &metrics.users,
                &metrics.expiry_due,
                &metrics.restore_duration,
                &metrics.restore_records,
                &metrics.restore_pending,
                &metrics.transaction_duration,
                &metrics.transactions_failed,
                &metrics.sweep_pending,
                &metrics.swept,
                &metrics.changelog_bytes,
                &metrics.decoded_bytes,
                &metrics.warm_bytes,
                &metrics.state_bytes,
                &metrics.consumer_lag,
                &metrics.partitions_revoked,
            ],
        )?;
        for kind in EventKind::ALL {
            for outcome in EventOutcome::ALL {
                metrics
                    .events
                    .with_label_values(&[kind.label(), outcome.label()]);
            }
        }
        for (status, reason) in [
            ("1", "qualified"),
            ("0", "rule"),
            ("0", "ttl"),
            ("0", "inactive"),
            ("0", "opt_out"),
            ("1", "partner_id_synced"),
            ("0", "partner_id_evicted"),
            ("0", "erased"),
            ("1", "refresh"),
        ] {
            metrics.status_changes.with_label_values(&[status, reason]);
        }
        for record in ["user", "part"] {
            metrics.changelog_bytes.with_label_values(&[record]);
        }
        Ok(metrics)
    }

    /// Sets what the store holds: its users and their records' bytes.
    pub fn state(&self, store: &crate::store::Store) {
        self.users.set(store.users() as i64);
        self.state_bytes.set(store.held_bytes() as i64);
    }
}

/// Counts a transaction's changelog bytes, added to `qualifier_changelog_bytes_total` once per
/// transaction (not a counter update per record).
#[derive(Debug, Default)]
pub struct ChangelogBytes {
    user: u64,
    part: u64,
}

impl ChangelogBytes {
    pub fn record(&mut self, key: &[u8], value: Option<&[u8]>) {
        let bytes = (key.len() + value.map_or(0, <[u8]>::len)) as u64;
        match model::changelog::is_part(key) {
            true => self.part += bytes,
            false => self.user += bytes,
        }
    }

    pub fn add_to(&self, metrics: &Metrics) {
        for (record, bytes) in [("user", self.user), ("part", self.part)] {
            if bytes > 0 {
                metrics
                    .changelog_bytes
                    .with_label_values(&[record])
                    .inc_by(bytes);
            }
        }
    }
}

/// The `type` label of `qualifier_events_total`: what an input event is. A closed set, so
/// the label's cardinality stays bounded and a new kind cannot go uncounted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Trait,
    IdSync,
    OptOut,
    Forget,
    /// Not decodable, or no event in it.
    Unknown,
}

impl EventKind {
    pub const ALL: [Self; 5] = [
        Self::Trait,
        Self::IdSync,
        Self::OptOut,
        Self::Forget,
        Self::Unknown,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Self::Trait => "trait",
            Self::IdSync => "id_sync",
            Self::OptOut => "opt_out",
            Self::Forget => "forget",
            Self::Unknown => "unknown",
        }
    }
}

/// The `outcome` label of `qualifier_events_total`: what became of an input event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventOutcome {
    /// It changed, or may have changed, the user.
    Applied,
    /// Valid, but it changes nothing (e.g. an opted-out user's trait).
    Ignored,
    /// It cannot be applied: dead-lettered.
    Invalid,
}

impl EventOutcome {
    pub const ALL: [Self; 3] = [Self::Applied, Self::Ignored, Self::Invalid];

    pub fn label(self) -> &'static str {
        match self {
            Self::Applied => "applied",
            Self::Ignored => "ignored",
            Self::Invalid => "invalid",
        }
    }
}

/// The per-event counters, resolved once so the processing loop does no label lookup per
/// event or change.
#[derive(Debug, Clone)]
pub struct HotCounters {
    /// `qualifier_events_total`, indexed by [`HotCounters::event_index`].
    events: Vec<IntCounter>,
    changes: Vec<(model::SegmentStatus, model::ChangeReason, IntCounter)>,
    all_changes: IntCounterVec,
}

impl HotCounters {
    pub fn new(metrics: &Metrics) -> Self {
        use model::{ChangeReason, SegmentStatus};
        let events = EventKind::ALL
            .iter()
            .flat_map(|kind| {
                EventOutcome::ALL.iter().map(move |outcome| {
                    metrics
                        .events
                        .with_label_values(&[kind.label(), outcome.label()])
                })
            })
            .collect();
        let changes = [
            (SegmentStatus::Active, ChangeReason::Qualified),
            (SegmentStatus::Inactive, ChangeReason::Rule),
            (SegmentStatus::Inactive, ChangeReason::Ttl),
            (SegmentStatus::Inactive, ChangeReason::Inactive),
            (SegmentStatus::Inactive, ChangeReason::OptOut),
            (SegmentStatus::Active, ChangeReason::PartnerIdSynced),
            (SegmentStatus::Inactive, ChangeReason::PartnerIdEvicted),
            (SegmentStatus::Inactive, ChangeReason::Erased),
            (SegmentStatus::Active, ChangeReason::Refresh),
        ]
        .into_iter()
        .map(|(status, reason)| {
            let counter = metrics
                .status_changes
                .with_label_values(&[status_label(status), reason_label(reason)]);
            (status, reason, counter)
        })
        .collect();
        Self {
            events,
            changes,
            all_changes: metrics.status_changes.clone(),
        }
    }

    /// `qualifier_events_total{type=kind, outcome}`.
    pub fn event(&self, kind: EventKind, outcome: EventOutcome) {
        self.events[Self::event_index(kind, outcome)].inc();
    }

    /// Where `(kind, outcome)` is in `events`: the order [`HotCounters::new`] resolves them in.
    fn event_index(kind: EventKind, outcome: EventOutcome) -> usize {
        kind as usize * EventOutcome::ALL.len() + outcome as usize
    }

    /// `qualifier_status_changes_total{status, reason}` for one change.
    pub fn change(&self, change: &model::SegmentChange) {
        let (status, reason) = (change.status(), change.reason());
        match self
            .changes
            .iter()
            .find(|(s, r, _)| *s == status && *r == reason)
        {
            Some((_, _, counter)) => counter.inc(),
            None => self
                .all_changes
                .with_label_values(&[status_label(status), reason_label(reason)])
                .inc(),
        }
    }
}

fn status_label(status: model::SegmentStatus) -> &'static str {
    if status == model::SegmentStatus::Active {
        "1"
    } else {
        "0"
    }
}

fn reason_label(reason: model::ChangeReason) -> &'static str {
    match reason {
        model::ChangeReason::Qualified => "qualified",
        model::ChangeReason::Rule => "rule",
        model::ChangeReason::Ttl => "ttl",
        model::ChangeReason::Inactive => "inactive",
        model::ChangeReason::OptOut => "opt_out",
        model::ChangeReason::PartnerIdSynced => "partner_id_synced",
        model::ChangeReason::PartnerIdEvicted => "partner_id_evicted",
        model::ChangeReason::Erased => "erased",
        model::ChangeReason::Refresh => "refresh",
        model::ChangeReason::Unspecified => "unspecified",
    }
}

#[cfg(test)]
mod tests;
