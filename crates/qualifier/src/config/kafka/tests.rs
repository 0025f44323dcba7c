//! The qualifier's `kafka:` block: its defaults, the instance id's `$HOSTNAME` default, the
//! renamed variables a start refuses, and what a reload reports as changed.

use std::collections::HashMap;
use std::path::Path;

use crate::config::Definitions;

use super::*;

const RULES: &str = "traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n";

fn parse(text: &str, env: &[(&str, &str)]) -> Result<Definitions, String> {
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Definitions::parse_with_env(Path::new("segments.yaml"), text, &|name| {
        env.get(name).cloned()
    })
    .map_err(|e| e.to_string())
}

#[test]
fn without_a_block_the_defaults_hold_and_the_instance_is_the_host() {
    let kafka = parse(RULES, &[("HOSTNAME", "qualifier-2")]).unwrap().kafka;
    assert_eq!(
        kafka,
        KafkaConfig {
            group_id: "qualifier".to_owned(),
            instance_id: Some("qualifier-2".to_owned()),
            events_topic: "trait-events".to_owned(),
            status_topic: "segment-status".to_owned(),
            status_batch_topic: "segment-status-batch".to_owned(),
            changelog_topic: "qualifier-changelog".to_owned(),
            delivery_log_topic: Some("delivery-log".to_owned()),
            dlq_topic: "segment-status-dlq".to_owned(),
        }
    );
    assert_eq!(kafka.transactional_id().unwrap(), "qualifier-qualifier-2");
}

#[test]
fn the_file_then_the_environment_set_the_instance() {
    let text = format!("{RULES}kafka:\n  group_id: q\n  instance_id: from-file\n");
    let from_file = parse(&text, &[("HOSTNAME", "host")]).unwrap().kafka;
    assert_eq!(from_file.transactional_id().unwrap(), "q-from-file");
    let from_env = parse(&text, &[("HOSTNAME", "host"), ("KAFKA_INSTANCE_ID", "env")])
        .unwrap()
        .kafka;
    assert_eq!(from_env.transactional_id().unwrap(), "q-env");
}

#[test]
fn without_an_instance_id_or_a_host_there_is_no_transactional_id() {
    let kafka = parse(RULES, &[("HOSTNAME", "")]).unwrap().kafka;
    assert_eq!(kafka.instance_id, None);
    let error = kafka.transactional_id().unwrap_err();
    assert!(
        error.starts_with(
            "kafka.instance_id is not set and neither are KAFKA_INSTANCE_ID nor HOSTNAME: set one of them"
        ),
        "{error}"
    );
    let error = parse(RULES, &[("HOSTNAME", "my host")]).unwrap_err();
    assert!(
        error.contains("HOSTNAME (the default of kafka.instance_id): `my host` contains a space"),
        "{error}"
    );
}

#[test]
fn a_variable_the_qualifier_no_longer_reads_refuses_the_load() {
    for (old, key) in RENAMED_VARIABLES {
        let error = parse(RULES, &[(old, "x")]).unwrap_err();
        let var = telemetry::config::env_var(key);
        assert!(
            error.contains(&format!(
                "{old} is set, but is no longer read: set kafka.{key} in the config file or {var} instead"
            )),
            "{error}"
        );
    }
}

#[test]
fn problems_in_the_block_name_the_file_and_the_key_with_the_rules() {
    let text = format!("{RULES}kafka:\n  events_topic: trait events\n  group: q\n");
    let error = parse(&text, &[]).unwrap_err();
    assert!(
        error.starts_with("segments.yaml: invalid definitions"),
        "{error}"
    );
    assert!(
        error.contains("kafka.events_topic: `trait events` is not a topic name"),
        "{error}"
    );
    assert!(
        error.contains(
            "kafka.group: unknown key; the keys of this block are changelog_topic, delivery_log_topic, dlq_topic, \
             events_topic, group_id, instance_id, status_batch_topic, status_topic"
        ),
        "{error}"
    );
}

#[test]
fn changed_keys_name_what_a_reload_cannot_apply() {
    let before = parse(RULES, &[("HOSTNAME", "h")]).unwrap().kafka;
    let after = parse(
        &format!("{RULES}kafka:\n  events_topic: other\n  delivery_log_topic: \"\"\n"),
        &[("HOSTNAME", "h")],
    )
    .unwrap()
    .kafka;
    assert_eq!(before.changed_keys(&before), Vec::<&str>::new());
    assert_eq!(
        before.changed_keys(&after),
        ["kafka.events_topic", "kafka.delivery_log_topic"]
    );
}

#[test]
fn without_a_file_the_environment_alone_sets_the_block() {
    let kafka = KafkaConfig::from_env(&|name| {
        (name == "KAFKA_CHANGELOG_TOPIC").then(|| "changes".to_owned())
    })
    .unwrap();
    assert_eq!(kafka.changelog_topic, "changes");
    let error = KafkaConfig::from_env(&|name| (name == "KAFKA_DLQ_TOPIC").then(String::new))
        .unwrap_err()
        .to_string();
    assert_eq!(
        error,
        "the environment (no --config): invalid Kafka settings\n  - KAFKA_DLQ_TOPIC (environment, overrides \
         kafka.dlq_topic): must not be empty (default `segment-status-dlq`)"
    );
}
