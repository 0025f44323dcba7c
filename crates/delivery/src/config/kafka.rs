//! The `kafka:` block: topics, consumer groups and timing of the Kafka side, as written
//! ([`RawKafka`]) and validated ([`KafkaConfig`]), each key overridden by `KAFKA_<KEY>`.

use std::time::Duration;

use telemetry::config::{KafkaBlock, RawKafkaBlock, renamed_variables};

use super::Problems;

/// The block as written: read key by key by [`validate_kafka`], each overridden by
/// `KAFKA_<KEY>`, exactly as the qualifier reads its own (see `telemetry::config`).
pub(super) type RawKafka = RawKafkaBlock;

/// Topics, group and timing of the Kafka side (`kafka:`; every key optional, each overridden by
/// the environment variable `KAFKA_<KEY>`, e.g. `KAFKA_GROUP_ID`).
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
    /// The qualifier's changelog topic, read by resyncs and backfills (`kafka.changelog_topic`
    /// of the qualifier). Default `qualifier-changelog`.
    pub changelog_topic: String,
}

/// Validates the block, with each key's `KAFKA_<KEY>` from `env` winning over the file.
pub(super) fn validate_kafka(
    raw: RawKafka,
    env: &dyn Fn(&str) -> Option<String>,
    problems: &mut Problems,
) -> KafkaConfig {
    let mut block = KafkaBlock::new(raw, env);
    let group_id = block.id("group_id", "delivery");
    let batch_group_id = block.id("batch_group_id", &format!("{group_id}-batch"));
    if batch_group_id == group_id {
        block.problem(
            "batch_group_id",
            "must differ from kafka.group_id: one group per input keeps their rebalances apart",
        );
    }
    let config = KafkaConfig {
        group_id,
        batch_group_id,
        topic: block.topic("topic", "segment-status"),
        batch_topic: block.optional_topic("batch_topic", "segment-status-batch"),
        dlq_topic: block.topic("dlq_topic", "segment-status-dlq"),
        delivery_log_topic: block.optional_topic("delivery_log_topic", "delivery-log"),
        session_timeout: Duration::from_millis(block.millis(
            "session_timeout_ms",
            10_000,
            6_000..=300_000,
            "the broker's limits",
        )),
        commit_interval: Duration::from_millis(block.millis(
            "commit_interval_ms",
            1_000,
            10..=60_000,
            "",
        )),
        drain_timeout: Duration::from_millis(block.millis(
            "drain_timeout_ms",
            20_000,
            0..=u64::MAX,
            "",
        )),
        changelog_topic: block.topic("changelog_topic", "qualifier-changelog"),
    };
    // Resyncs and backfills read the changelog topic from `CHANGELOG_TOPIC` before the block had
    // the key; a deployment that still sets it must not read the default unawares.
    problems.0.extend(renamed_variables(
        env,
        &[("CHANGELOG_TOPIC", "changelog_topic")],
    ));
    problems.0.extend(block.finish());
    config
}

#[cfg(test)]
mod tests;
