//! Delivery's `kafka:` block: `KAFKA_<KEY>` overrides the file for every key, a bad number is
//! named with its variable, and the renamed `CHANGELOG_TOPIC` refuses the load.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use crate::config::{ConfigError, DeliveryConfig};

const DESTINATION: &str = "destinations:\n  - { id: 1, client_id: a, user_dpid: 1, url: https://partner.example.com, segments: { 1: 1 } }\n";

fn parse(kafka: &str, env: &[(&str, &str)]) -> Result<DeliveryConfig, ConfigError> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    DeliveryConfig::parse(
        Path::new("destinations.yaml"),
        &format!("{DESTINATION}{kafka}"),
        &|name| env.get(name).cloned(),
    )
}

#[test]
fn every_key_is_overridden_by_its_variable() {
    let file =
        "kafka:\n  group_id: g\n  topic: t\n  session_timeout_ms: 7000\n  changelog_topic: c\n";
    let from_file = parse(file, &[]).unwrap().kafka;
    assert_eq!(
        (
            from_file.group_id.as_str(),
            from_file.batch_group_id.as_str(),
            from_file.topic.as_str(),
            from_file.session_timeout,
            from_file.changelog_topic.as_str()
        ),
        ("g", "g-batch", "t", Duration::from_secs(7), "c")
    );
    let env = [
        ("KAFKA_GROUP_ID", "g2"),
        ("KAFKA_BATCH_GROUP_ID", "b2"),
        ("KAFKA_TOPIC", "t2"),
        ("KAFKA_BATCH_TOPIC", ""),
        ("KAFKA_DLQ_TOPIC", "d2"),
        ("KAFKA_DELIVERY_LOG_TOPIC", "l2"),
        ("KAFKA_SESSION_TIMEOUT_MS", "8000"),
        ("KAFKA_COMMIT_INTERVAL_MS", "20"),
        ("KAFKA_DRAIN_TIMEOUT_MS", "5"),
        ("KAFKA_CHANGELOG_TOPIC", "c2"),
    ];
    let kafka = parse(file, &env).unwrap().kafka;
    assert_eq!(kafka.group_id, "g2");
    assert_eq!(kafka.batch_group_id, "b2");
    assert_eq!(kafka.topic, "t2");
    assert_eq!(kafka.batch_topic, None);
    assert_eq!(kafka.dlq_topic, "d2");
    assert_eq!(kafka.delivery_log_topic.as_deref(), Some("l2"));
    assert_eq!(kafka.session_timeout, Duration::from_secs(8));
    assert_eq!(kafka.commit_interval, Duration::from_millis(20));
    assert_eq!(kafka.drain_timeout, Duration::from_millis(5));
    assert_eq!(kafka.changelog_topic, "c2");
}

#[test]
fn a_bad_number_reads_the_same_from_the_file_and_the_environment() {
    let message = "must be between 10 and 60000, got 5";
    let from_file = parse("kafka:\n  commit_interval_ms: 5\n", &[])
        .unwrap_err()
        .problems;
    assert_eq!(from_file, [format!("kafka.commit_interval_ms: {message}")]);
    let from_env = parse("", &[("KAFKA_COMMIT_INTERVAL_MS", "5")])
        .unwrap_err()
        .problems;
    assert_eq!(
        from_env,
        [format!(
            "KAFKA_COMMIT_INTERVAL_MS (environment, overrides kafka.commit_interval_ms): {message}"
        )]
    );
    let not_a_number = parse("", &[("KAFKA_SESSION_TIMEOUT_MS", "10s")])
        .unwrap_err()
        .problems;
    assert_eq!(
        not_a_number,
        [
            "KAFKA_SESSION_TIMEOUT_MS (environment, overrides kafka.session_timeout_ms): `10s` is not a whole number \
          of milliseconds; write e.g. `10000` (the default)"
        ]
    );
}

#[test]
fn a_batch_group_equal_to_the_group_is_named_where_it_was_set() {
    let problems = parse("kafka:\n  group_id: g\n", &[("KAFKA_BATCH_GROUP_ID", "g")])
        .unwrap_err()
        .problems;
    assert_eq!(
        problems,
        [
            "KAFKA_BATCH_GROUP_ID (environment, overrides kafka.batch_group_id): must differ from kafka.group_id: one \
          group per input keeps their rebalances apart"
        ]
    );
}

#[test]
fn the_old_changelog_variable_refuses_the_load() {
    let problems = parse("", &[("CHANGELOG_TOPIC", "c")]).unwrap_err().problems;
    assert_eq!(
        problems,
        [
            "CHANGELOG_TOPIC is set, but is no longer read: set kafka.changelog_topic in the config file or \
          KAFKA_CHANGELOG_TOPIC instead, and remove CHANGELOG_TOPIC"
        ]
    );
}
