//! Topics as code: the one catalog of every Kafka topic segment-relay uses, with its settings,
//! and `qualifier topics create|check`, which create the missing ones and verify the rest.
//!
//! The topic names come from the `kafka:` block of the qualifier's definitions file and its
//! `KAFKA_<KEY>` overrides (`KAFKA_EVENTS_TOPIC`, …), so the command and the services agree on
//! them. The settings are the
//! same for every topic but where a topic's role needs otherwise: the changelog is compacted
//! (one record per user, the latest wins), dead letters are kept until `delivery replay` takes
//! them, the delivery log for 7 days. The Strimzi `KafkaTopic` resources in
//! `deploy/k8s/topics/strimzi/` say the same (a test below keeps them in step).
//!
//! Two counts must match besides the catalog's: the changelog has exactly as many partitions as
//! the events topic (a user's state is written to the changelog partition numbered like their
//! input partition), and the batch status topic as many as the real-time one (one delivery
//! worker reads both topics of a user). The qualifier refuses to start without the first
//! ([`copartition_problem`]).
//!
//! An existing topic with other settings is reported, never changed: adding partitions to a
//! keyed topic moves users to other partitions (their order and their state break), a
//! replication factor changes only by reassigning replicas, and Kafka's AlterConfigs (all that
//! rdkafka offers) resets every config not named to its default. The report names the fix.

use std::collections::BTreeMap;
use std::fmt;

mod cluster;

pub use cluster::{describe, run};

/// How long the input topics keep a message: 7 days. Delivery's `dead_letter_after` (3 days by
/// default) must stay well below it, so that no change expires unseen.
pub const INPUT_RETENTION_MS: &str = "604800000";
/// How long the delivery log keeps a record: 7 days (set it to taste).
pub const DELIVERY_LOG_RETENTION_MS: &str = "604800000";

/// `qualifier topics create|check`.
#[derive(Debug, clap::Args)]
pub struct TopicsCommand {
    #[command(subcommand)]
    pub action: TopicsAction,
    #[command(flatten)]
    pub sizing: Sizing,
}

#[derive(Debug, clap::Subcommand)]
pub enum TopicsAction {
    /// Create the missing topics with the catalog's settings; leave correct ones alone; report
    /// (and exit 1 on) existing ones whose settings differ, without changing them.
    Create,
    /// Verify every topic against the catalog; exit 1 naming each topic, setting, found and
    /// expected value, and the fix.
    Check {
        /// Keep checking (every 2 s) until the topics are right or this many seconds passed
        /// (e.g. in an init container, while the topics Job runs). Default 0: check once.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

/// How big the topics are: the same for every topic.
#[derive(Debug, Clone, Copy, clap::Args)]
pub struct Sizing {
    /// Partitions of every topic (delivery scales up to this many workers; the changelog must
    /// have as many as the events topic).
    #[arg(long, env = "TOPIC_PARTITIONS", default_value_t = 6, global = true, value_parser = clap::value_parser!(i32).range(1..))]
    pub partitions: i32,
    /// Replicas of every partition; `min.insync.replicas` is one less (at least 1), so a write
    /// acknowledged by all in-sync replicas survives one broker lost. 1 for a single broker.
    #[arg(long, env = "TOPIC_REPLICATION_FACTOR", default_value_t = 3, global = true, value_parser = clap::value_parser!(i32).range(1..))]
    pub replication_factor: i32,
}

/// The topic names the qualifier runs with (its `kafka:` block's `*_topic` keys).
#[derive(Debug, Clone)]
pub struct TopicNames {
    pub events: String,
    pub status: String,
    pub status_batch: String,
    pub changelog: String,
    pub dlq: String,
    /// `None`: delivery runs without its log (`kafka.delivery_log_topic: ""`).
    pub delivery_log: Option<String>,
}

/// What a topic is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Events,
    Status,
    StatusBatch,
    Changelog,
    DeadLetters,
    DeliveryLog,
}

impl Role {
    /// The key of the `kafka:` block that names the topic, with its environment variable.
    pub fn key(self) -> &'static str {
        match self {
            Self::Events => "kafka.events_topic / KAFKA_EVENTS_TOPIC",
            Self::Status => "kafka.status_topic / KAFKA_STATUS_TOPIC",
            Self::StatusBatch => "kafka.status_batch_topic / KAFKA_STATUS_BATCH_TOPIC",
            Self::Changelog => "kafka.changelog_topic / KAFKA_CHANGELOG_TOPIC",
            Self::DeadLetters => "kafka.dlq_topic / KAFKA_DLQ_TOPIC",
            Self::DeliveryLog => "kafka.delivery_log_topic / KAFKA_DELIVERY_LOG_TOPIC",
        }
    }
}

/// One topic as it should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub role: Role,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic configs (`cleanup.policy`, `retention.ms`, `min.insync.replicas`).
    pub configs: BTreeMap<&'static str, String>,
}

/// Every topic segment-relay uses.
#[derive(Debug, Clone)]
pub struct Catalog {
    pub topics: Vec<TopicSpec>,
}

impl Catalog {
    /// The catalog for these names and sizes; fails if two roles share a topic name.
    pub fn new(names: &TopicNames, sizing: Sizing) -> Result<Self, String> {
        let min_insync = (sizing.replication_factor - 1).max(1).to_string();
        let deleted_after = |retention: &str| {
            BTreeMap::from([
                ("cleanup.policy", "delete".to_owned()),
                ("retention.ms", retention.to_owned()),
                ("min.insync.replicas", min_insync.clone()),
            ])
        };
        let mut roles = vec![
            (
                Role::Events,
                &names.events,
                deleted_after(INPUT_RETENTION_MS),
            ),
            (
                Role::Status,
                &names.status,
                deleted_after(INPUT_RETENTION_MS),
            ),
            (
                Role::StatusBatch,
                &names.status_batch,
                deleted_after(INPUT_RETENTION_MS),
            ),
            // The qualifier's state: one record per user, the latest wins; time deletes none.
            (
                Role::Changelog,
                &names.changelog,
                BTreeMap::from([
                    ("cleanup.policy", "compact".to_owned()),
                    ("min.insync.replicas", min_insync.clone()),
                ]),
            ),
            // Dead letters wait for `delivery replay`: time must not delete them.
            (Role::DeadLetters, &names.dlq, deleted_after("-1")),
        ];
        if let Some(log) = &names.delivery_log {
            roles.push((
                Role::DeliveryLog,
                log,
                deleted_after(DELIVERY_LOG_RETENTION_MS),
            ));
        }
        let mut problems = Vec::new();
        for (i, (role, name, _)) in roles.iter().enumerate() {
            if name.trim().is_empty() {
                problems.push(format!("{}: empty topic name", role.key()));
            }
            if let Some((other, _, _)) = roles[..i].iter().find(|(_, n, _)| n == name) {
                problems.push(format!(
                    "{} and {}: both name topic `{name}`; give each its own topic",
                    other.key(),
                    role.key()
                ));
            }
        }
        if !problems.is_empty() {
            return Err(problems.join("\n"));
        }
        Ok(Self {
            topics: roles
                .into_iter()
                .map(|(role, name, configs)| TopicSpec {
                    name: name.clone(),
                    role,
                    partitions: sizing.partitions,
                    replication_factor: sizing.replication_factor,
                    configs,
                })
                .collect(),
        })
    }

    fn by_role(&self, role: Role) -> Option<&TopicSpec> {
        self.topics.iter().find(|t| t.role == role)
    }
}

/// A topic as the cluster has it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundTopic {
    pub partitions: i32,
    /// The smallest replica count over its partitions.
    pub replication_factor: i32,
    /// The effective value of every config the catalog sets.
    pub configs: BTreeMap<String, String>,
}

/// One setting of one topic that differs from the catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub topic: String,
    pub setting: String,
    pub found: String,
    pub expected: String,
    pub fix: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "topic `{}`: {}: found {}, expected {}; fix: {}",
            self.topic, self.setting, self.found, self.expected, self.fix
        )
    }
}

/// Why a changelog of `changelog_partitions` partitions cannot serve an events topic of
/// `events_partitions`, with the fix; `None` when the counts are equal (co-partitioned).
pub fn copartition_problem(
    events: &str,
    events_partitions: usize,
    changelog: &str,
    changelog_partitions: usize,
) -> Option<String> {
    if events_partitions == changelog_partitions {
        return None;
    }
    let fix = if changelog_partitions < events_partitions {
        format!(
            "add partitions to `{changelog}` until it has {events_partitions} (`kafka-topics.sh --alter --topic {changelog} \
             --partitions {events_partitions}`, or spec.partitions of its KafkaTopic): the qualifier writes each user's state \
             to the partition numbered like their input partition, so this moves no state"
        )
    } else {
        format!(
            "point kafka.events_topic and kafka.changelog_topic at topics that belong together, or, with no qualifier running, recreate \
             `{changelog}` with {events_partitions} partitions (the qualifier's state is then lost)"
        )
    };
    Some(format!(
        "changelog `{changelog}` has {changelog_partitions} partitions but input `{events}` has {events_partitions}: the \
         changelog must have exactly one partition per input partition (co-partitioned); fix: {fix}"
    ))
}

/// Every difference between the catalog and what the cluster has (`None`: no such topic),
/// then the counts that must match each other whatever the catalog says.
pub fn compare(catalog: &Catalog, found: &BTreeMap<String, Option<FoundTopic>>) -> Vec<Problem> {
    let mut problems = Vec::new();
    for spec in &catalog.topics {
        let Some(Some(topic)) = found.get(&spec.name) else {
            problems.push(Problem {
                topic: spec.name.clone(),
                setting: "existence".to_owned(),
                found: "no such topic".to_owned(),
                expected: "the topic".to_owned(),
                fix: format!(
                    "run `qualifier topics create` (or apply deploy/k8s/topics/strimzi with Strimzi), or point {} at \
                     the topic you meant",
                    spec.role.key()
                ),
            });
            continue;
        };
        if topic.partitions != spec.partitions {
            problems.push(Problem {
                topic: spec.name.clone(),
                setting: "partitions".to_owned(),
                found: topic.partitions.to_string(),
                expected: spec.partitions.to_string(),
                fix: format!(
                    "if {} is the count you chose for every topic, pass --partitions {} (TOPIC_PARTITIONS); else recreate \
                     the topic empty with {} partitions (adding partitions to a topic in use moves users to other \
                     partitions: their order and the qualifier's state break)",
                    topic.partitions, topic.partitions, spec.partitions
                ),
            });
        }
        if topic.replication_factor != spec.replication_factor {
            problems.push(Problem {
                topic: spec.name.clone(),
                setting: "replication factor".to_owned(),
                found: topic.replication_factor.to_string(),
                expected: spec.replication_factor.to_string(),
                fix: format!(
                    "reassign its replicas (kafka-reassign-partitions.sh, or spec.replicas of its KafkaTopic), or pass \
                     --replication-factor {} (TOPIC_REPLICATION_FACTOR) if that is what this cluster can hold",
                    topic.replication_factor
                ),
            });
        }
        for (key, expected) in &spec.configs {
            let value = topic.configs.get(*key).map(String::as_str);
            if value != Some(expected.as_str()) {
                problems.push(Problem {
                    topic: spec.name.clone(),
                    setting: (*key).to_owned(),
                    found: value.unwrap_or("(not reported)").to_owned(),
                    expected: expected.clone(),
                    fix: format!(
                        "`kafka-configs.sh --alter --entity-type topics --entity-name {} --add-config {key}={expected}` \
                         (or spec.config of its KafkaTopic)",
                        spec.name
                    ),
                });
            }
        }
    }
    let count = |role: Role| {
        let spec = catalog.by_role(role)?;
        let found = found.get(&spec.name)?.as_ref()?;
        Some((spec.name.as_str(), found.partitions))
    };
    if let (Some((events, e)), Some((changelog, c))) = (count(Role::Events), count(Role::Changelog))
        && let Some(why) = copartition_problem(events, e as usize, changelog, c as usize)
    {
        let (_, fix) = why.split_once("; fix: ").unwrap_or((&why, ""));
        problems.push(Problem {
            topic: changelog.to_owned(),
            setting: format!("partitions, co-partitioned with input `{events}`"),
            found: c.to_string(),
            expected: format!("{e} (as many as `{events}`)"),
            fix: fix.to_owned(),
        });
    }
    if let (Some((status, s)), Some((batch, b))) = (count(Role::Status), count(Role::StatusBatch))
        && s != b
    {
        problems.push(Problem {
            topic: batch.to_owned(),
            setting: format!("partitions, equal to real-time `{status}`"),
            found: b.to_string(),
            expected: format!("{s} (as many as `{status}`: one delivery worker reads both topics of a user)"),
            fix: format!(
                "recreate `{batch}` with {s} partitions while it is empty (adding partitions to a topic in use moves users to \
                 other partitions)"
            ),
        });
    }
    problems
}

#[cfg(test)]
mod tests;
