//! The `kafka:` block rules: defaults, file, environment override, and that a value is judged
//! the same wherever it was written.

use std::collections::HashMap;

use super::*;

#[derive(Debug, serde::Deserialize)]
struct File {
    #[serde(default)]
    kafka: RawKafkaBlock,
}

fn block(yaml: &str) -> RawKafkaBlock {
    serde_saphyr::from_str::<File>(yaml).unwrap().kafka
}

/// What a small service would read: one topic, one optional topic, a group and a timing.
#[derive(Debug, PartialEq, Eq)]
struct Read {
    topic: String,
    log: Option<String>,
    group: String,
    timeout_ms: u64,
}

fn read(yaml: &str, env: &[(&str, &str)]) -> Result<Read, Vec<String>> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let lookup = |name: &str| env.get(name).cloned();
    let mut kafka = KafkaBlock::new(block(yaml), &lookup);
    let read = Read {
        topic: kafka.topic("topic", "segment-status"),
        log: kafka.optional_topic("log_topic", "delivery-log"),
        group: kafka.id("group_id", "delivery"),
        timeout_ms: kafka.millis("timeout_ms", 10_000, 6_000..=300_000, "the broker's limits"),
    };
    let problems = kafka.finish();
    if problems.is_empty() {
        Ok(read)
    } else {
        Err(problems)
    }
}

#[test]
fn defaults_then_the_file_then_the_environment() {
    assert_eq!(
        read("", &[]).unwrap(),
        Read {
            topic: "segment-status".to_owned(),
            log: Some("delivery-log".to_owned()),
            group: "delivery".to_owned(),
            timeout_ms: 10_000,
        }
    );
    let file = "kafka:\n  topic: from-file\n  group_id: g-file\n  timeout_ms: 7000\n  log_topic:\n";
    assert_eq!(
        read(file, &[]).unwrap(),
        Read {
            topic: "from-file".to_owned(),
            log: Some("delivery-log".to_owned()),
            group: "g-file".to_owned(),
            timeout_ms: 7_000,
        }
    );
    let env = [
        ("KAFKA_TOPIC", "from-env"),
        ("KAFKA_TIMEOUT_MS", "8000"),
        ("KAFKA_LOG_TOPIC", ""),
    ];
    assert_eq!(
        read(file, &env).unwrap(),
        Read {
            topic: "from-env".to_owned(),
            log: None,
            group: "g-file".to_owned(),
            timeout_ms: 8_000,
        }
    );
}

#[test]
fn a_bad_value_reads_the_same_from_the_file_and_the_environment() {
    for (key, var, bad, message) in [
        (
            "topic",
            "KAFKA_TOPIC",
            "status topic",
            "`status topic` is not a topic name: ` ` is not allowed; use only a-z, A-Z, 0-9, `.`, `_` and `-` (default `segment-status`)",
        ),
        (
            "timeout_ms",
            "KAFKA_TIMEOUT_MS",
            "ten",
            "`ten` is not a whole number of milliseconds; write e.g. `10000` (the default)",
        ),
        (
            "timeout_ms",
            "KAFKA_TIMEOUT_MS",
            "1000",
            "must be between 6000 and 300000 (the broker's limits), got 1000",
        ),
        (
            "group_id",
            "KAFKA_GROUP_ID",
            "",
            "must not be empty (default `delivery`)",
        ),
        (
            "log_topic",
            "KAFKA_LOG_TOPIC",
            "..",
            "`..` is not a topic name (default `delivery-log`; `\"\"` turns it off)",
        ),
    ] {
        let from_file = read(&format!("kafka:\n  {key}: \"{bad}\"\n"), &[]).unwrap_err();
        assert_eq!(from_file, [format!("kafka.{key}: {message}")]);
        let from_env = read("", &[(var, bad)]).unwrap_err();
        assert_eq!(
            from_env,
            [format!(
                "{var} (environment, overrides kafka.{key}): {message}"
            )]
        );
    }
}

#[test]
fn numbers_and_nested_values_in_the_file() {
    assert_eq!(read("kafka:\n  topic: 1234\n", &[]).unwrap().topic, "1234");
    assert_eq!(
        read("kafka:\n  topic: [a, b]\n", &[]).unwrap_err(),
        ["kafka.topic: must be a single value (text or number), not a list or a map"]
    );
}

#[test]
fn unknown_keys_name_the_known_ones_and_connection_settings_their_variable() {
    let problems = read("kafka:\n  topik: x\n  brokers: b:9092\n", &[]).unwrap_err();
    assert_eq!(
        problems,
        [
            "kafka.brokers: unknown key; where Kafka is and how to reach it comes from the environment only: set \
             KAFKA_BROKERS (README, \"Kafka settings\"); the keys of this block are group_id, log_topic, timeout_ms, topic",
            "kafka.topik: unknown key; the keys of this block are group_id, log_topic, timeout_ms, topic",
        ]
    );
}

#[test]
fn renamed_variables_that_are_still_set_are_named() {
    let env = |name: &str| (name == "EVENTS_TOPIC").then(String::new);
    assert_eq!(
        renamed_variables(
            &env,
            &[("EVENTS_TOPIC", "events_topic"), ("DLQ_TOPIC", "dlq_topic")]
        ),
        [
            "EVENTS_TOPIC is set, but is no longer read: set kafka.events_topic in the config file or KAFKA_EVENTS_TOPIC instead, and remove EVENTS_TOPIC"
        ]
    );
}

#[test]
fn topic_names_and_ids() {
    assert!(check_topic_name("segment-status.v2_a").is_ok());
    assert!(check_topic_name(&"a".repeat(249)).is_ok());
    assert!(check_topic_name(&"a".repeat(250)).is_err());
    assert!(check_topic_name(".").is_err());
    assert!(check_topic_name("a/b").is_err());
    assert!(check_id("qualifier-0:x").is_ok());
    assert!(check_id("qualifier ").is_err());
    assert!(check_id("  ").is_err());
}
