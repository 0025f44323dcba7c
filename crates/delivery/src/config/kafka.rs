//! The `kafka:` block: topics, consumer groups and timing of the Kafka side, as written
//! ([`RawKafka`]) and validated ([`KafkaConfig`]).

use std::time::Duration;

use serde::Deserialize;

use super::Problems;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKafka {
    pub(super) group_id: Option<String>,
    pub(super) batch_group_id: Option<String>,
    pub(super) topic: Option<String>,
    pub(super) batch_topic: Option<String>,
    pub(super) dlq_topic: Option<String>,
    pub(super) delivery_log_topic: Option<String>,
    pub(super) session_timeout_ms: Option<u64>,
    pub(super) commit_interval_ms: Option<u64>,
    pub(super) drain_timeout_ms: Option<u64>,
}

/// Topics, group and timing of the Kafka side (`kafka:`; every key optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Consumer group of the real-time input, shared by every delivery process. Default
    /// `delivery`.
    pub group_id: String,
    /// Consumer group of the batch input. Default `<group_id>-batch`: a group of its own, so
    /// batch consumers joining or leaving never pause real-time consumption for a rebalance.
    pub batch_group_id: String,
    /// Real-time input. Default `segment-status`.
    pub topic: String,
    /// Offline/onboarded input, a lower-priority lane. Default `segment-status-batch`;
    /// `""` disables the lane.
    pub batch_topic: Option<String>,
    /// Where undeliverable events go. Default `segment-status-dlq`.
    pub dlq_topic: String,
    /// Where each request attempt is recorded per user (`delivery log`). Default
    /// `delivery-log`; `""` turns the delivery log off for every destination.
    pub delivery_log_topic: Option<String>,
    /// Consumer session timeout: how soon a crashed process's partitions move. Default 10 s.
    pub session_timeout: Duration,
    /// How often finished offsets are committed. Default 1 s.
    pub commit_interval: Duration,
    /// On SIGTERM, how long in-flight batches may take to finish before the process commits
    /// what is done and exits. Default 20 s (keep it below the pod's grace period).
    pub drain_timeout: Duration,
}

pub(super) fn validate_kafka(raw: RawKafka, problems: &mut Problems) -> KafkaConfig {
    let mut name = |key: &str, value: Option<String>, default: &str| {
        let value = value.unwrap_or_else(|| default.to_owned());
        if value.trim().is_empty() {
            problems.add(
                &format!("kafka.{key}"),
                format!("must not be empty (default `{default}`)"),
            );
        }
        value
    };
    let group_id = name("group_id", raw.group_id, "delivery");
    let topic = name("topic", raw.topic, "segment-status");
    let dlq_topic = name("dlq_topic", raw.dlq_topic, "segment-status-dlq");
    let batch_group_id = raw
        .batch_group_id
        .unwrap_or_else(|| format!("{group_id}-batch"));
    if batch_group_id == group_id {
        problems.add(
            "kafka.batch_group_id",
            "must differ from kafka.group_id: one group per input keeps their rebalances apart",
        );
    }
    let optional = |value: Option<String>, default: &str| match value {
        None => Some(default.to_owned()),
        Some(t) if t.trim().is_empty() => None,
        Some(t) => Some(t),
    };
    let batch_topic = optional(raw.batch_topic, "segment-status-batch");
    let delivery_log_topic = optional(raw.delivery_log_topic, "delivery-log");
    let session_timeout_ms = raw.session_timeout_ms.unwrap_or(10_000);
    if !(6_000..=300_000).contains(&session_timeout_ms) {
        problems.add(
            "kafka.session_timeout_ms",
            format!(
                "must be between 6000 and 300000 (the broker's limits), got {session_timeout_ms}"
            ),
        );
    }
    let commit_interval_ms = raw.commit_interval_ms.unwrap_or(1_000);
    if !(10..=60_000).contains(&commit_interval_ms) {
        problems.add(
            "kafka.commit_interval_ms",
            format!("must be between 10 and 60000, got {commit_interval_ms}"),
        );
    }
    KafkaConfig {
        group_id,
        batch_group_id,
        topic,
        batch_topic,
        dlq_topic,
        delivery_log_topic,
        session_timeout: Duration::from_millis(session_timeout_ms),
        commit_interval: Duration::from_millis(commit_interval_ms),
        drain_timeout: Duration::from_millis(raw.drain_timeout_ms.unwrap_or(20_000)),
    }
}
