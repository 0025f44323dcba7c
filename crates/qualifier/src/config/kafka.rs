//! The `kafka:` block of segments.yaml: the topics the qualifier reads and writes, its consumer
//! group and its instance id. Every key is optional and overridden by `KAFKA_<KEY>`, read by
//! [`telemetry::config::KafkaBlock`] exactly as delivery reads its own block.

use std::path::Path;

use telemetry::ConfigError;
use telemetry::config::{KafkaBlock, RawKafkaBlock, check_id, renamed_variables};

/// The environment variables the qualifier read before the `kafka:` block, with the key that
/// replaced each: one still set refuses the start (see [`renamed_variables`]).
pub const RENAMED_VARIABLES: [(&str, &str); 8] = [
    ("QUALIFIER_GROUP_ID", "group_id"),
    ("QUALIFIER_INSTANCE_ID", "instance_id"),
    ("EVENTS_TOPIC", "events_topic"),
    ("STATUS_TOPIC", "status_topic"),
    ("STATUS_BATCH_TOPIC", "status_batch_topic"),
    ("CHANGELOG_TOPIC", "changelog_topic"),
    ("DELIVERY_LOG_TOPIC", "delivery_log_topic"),
    ("DLQ_TOPIC", "dlq_topic"),
];

/// Topics, group and identity of the qualifier (`kafka:`; every key optional, each overridden
/// by `KAFKA_<KEY>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Consumer group of the qualifier processes. Default `qualifier`.
    pub group_id: String,
    /// This process's stable identity (e.g. the pod name): its transactional id is
    /// `<group_id>-<instance_id>`, so a restarted process fences its previous incarnation.
    /// Default `$HOSTNAME`; `None`: neither is set (the service refuses to start).
    pub instance_id: Option<String>,
    /// Input topic. Default `trait-events`.
    pub events_topic: String,
    /// Output topic of real-time changes. Default `segment-status`.
    pub status_topic: String,
    /// Output topic of changes caused by batch (offline/onboarded) events. Default
    /// `segment-status-batch`.
    pub status_batch_topic: String,
    /// The compacted state topic (one partition per input partition). Default
    /// `qualifier-changelog`.
    pub changelog_topic: String,
    /// Delivery's log topic (`kafka.delivery_log_topic` of delivery): an erased user's records
    /// there are made unreadable. Default `delivery-log`; `""`: delivery runs without its log.
    pub delivery_log_topic: Option<String>,
    /// Where invalid input events are kept. Default `segment-status-dlq`.
    pub dlq_topic: String,
}

impl KafkaConfig {
    /// Reads the block as written, with `KAFKA_<KEY>` (and `HOSTNAME`, the instance id's
    /// default) from `env`; the problems name the key or the variable and the fix.
    pub fn read(
        written: RawKafkaBlock,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> (Self, Vec<String>) {
        let mut block = KafkaBlock::new(written, env);
        let group_id = block.id("group_id", "qualifier");
        let mut problems = renamed_variables(env, &RENAMED_VARIABLES);
        let instance_id = block.optional_id("instance_id").or_else(|| {
            let host = env("HOSTNAME").filter(|host| !host.is_empty())?;
            match check_id(&host) {
                Ok(()) => Some(host),
                Err(why) => {
                    problems.push(format!(
                        "HOSTNAME (the default of kafka.instance_id): {why}; or set kafka.instance_id (KAFKA_INSTANCE_ID)"
                    ));
                    None
                }
            }
        });
        let config = Self {
            group_id,
            instance_id,
            events_topic: block.topic("events_topic", "trait-events"),
            status_topic: block.topic("status_topic", "segment-status"),
            status_batch_topic: block.topic("status_batch_topic", "segment-status-batch"),
            changelog_topic: block.topic("changelog_topic", "qualifier-changelog"),
            delivery_log_topic: block.optional_topic("delivery_log_topic", "delivery-log"),
            dlq_topic: block.topic("dlq_topic", "segment-status-dlq"),
        };
        problems.extend(block.finish());
        (config, problems)
    }

    /// The block's defaults with the environment's overrides, for a command run without a
    /// definitions file.
    pub fn from_env(env: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let (config, problems) = Self::read(RawKafkaBlock::default(), env);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::new(
                Path::new("the environment (no --config)"),
                "Kafka settings",
                problems,
            ))
        }
    }

    /// `<group_id>-<instance_id>`, or why there is none and the fix.
    pub fn transactional_id(&self) -> Result<String, String> {
        match &self.instance_id {
            Some(instance) => Ok(format!("{}-{instance}", self.group_id)),
            None => Err(
                "kafka.instance_id is not set and neither are KAFKA_INSTANCE_ID nor HOSTNAME: set one of them to this \
                 process's stable identity (e.g. the pod name), unique among the qualifier processes; two processes \
                 with the same id fence each other"
                    .to_owned(),
            ),
        }
    }

    /// The keys whose values differ between `self` and `other`, as `kafka.<key>`.
    pub fn changed_keys(&self, other: &Self) -> Vec<&'static str> {
        let Self {
            group_id,
            instance_id,
            events_topic,
            status_topic,
            status_batch_topic,
            changelog_topic,
            delivery_log_topic,
            dlq_topic,
        } = self;
        [
            ("kafka.group_id", *group_id == other.group_id),
            ("kafka.instance_id", *instance_id == other.instance_id),
            ("kafka.events_topic", *events_topic == other.events_topic),
            ("kafka.status_topic", *status_topic == other.status_topic),
            (
                "kafka.status_batch_topic",
                *status_batch_topic == other.status_batch_topic,
            ),
            (
                "kafka.changelog_topic",
                *changelog_topic == other.changelog_topic,
            ),
            (
                "kafka.delivery_log_topic",
                *delivery_log_topic == other.delivery_log_topic,
            ),
            ("kafka.dlq_topic", *dlq_topic == other.dlq_topic),
        ]
        .into_iter()
        .filter(|(_, same)| !same)
        .map(|(key, _)| key)
        .collect()
    }
}

#[cfg(test)]
mod tests;
