//! Both services read their `kafka:` block one way (`telemetry::config`): through each real
//! binary's `check-config`, an unknown key, a bad value and an environment override come out
//! the same, word for word but for the service's keys and defaults. Then what only the
//! qualifier has: the variables it no longer reads, its instance id's `$HOSTNAME` default, and
//! a reload that changes its block. Only the last needs the broker: every other case stops
//! before connecting.

use std::path::Path;
use std::time::Duration;

/// One service as these tests drive it.
struct Service {
    binary: &'static str,
    /// A valid config file without a `kafka:` block.
    valid: &'static str,
    /// What the first error line calls the file (`<file>: invalid <what>`).
    what: &'static str,
    /// A topic key of the block, and its default.
    topic_key: &'static str,
    topic_default: &'static str,
    /// Every key of the block, as the unknown-key problem lists them.
    keys: &'static str,
}

const QUALIFIER: Service = Service {
    binary: "qualifier",
    valid: "traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n",
    what: "definitions",
    topic_key: "events_topic",
    topic_default: "trait-events",
    keys: "changelog_topic, delivery_log_topic, dlq_topic, events_topic, group_id, instance_id, \
           status_batch_topic, status_topic",
};

const DELIVERY: Service = Service {
    binary: "delivery",
    valid: "destinations:\n  - { id: 1, client_id: a, user_dpid: 1, url: https://partner.example.com, segments: { 1: 1 } }\n",
    what: "configuration",
    topic_key: "topic",
    topic_default: "segment-status",
    keys: "batch_group_id, batch_topic, changelog_topic, commit_interval_ms, delivery_log_topic, dlq_topic, \
           drain_timeout_ms, group_id, session_timeout_ms, topic",
};

/// `<binary> <args> <file>` with only `env` (and PATH) in its environment: exit code, stdout
/// and stderr.
async fn run(
    binary: &str,
    args: &[&str],
    file: &Path,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    testkit::service::run_to_end(
        tokio::process::Command::new(testkit::service::binary(binary))
            .args(args)
            .arg(file)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .envs(env.iter().copied()),
    )
    .await
}

/// `check-config` of `text` (written to a file of its own) with `env`.
async fn check_config(
    service: &Service,
    text: &str,
    env: &[(&str, &str)],
) -> (i32, String, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join(format!("{}.yaml", service.binary));
    std::fs::write(&file, text).unwrap();
    let (code, out, err) = run(service.binary, &["check-config"], &file, env).await;
    (code, out, err, file.display().to_string())
}

/// The three cases every service must answer alike.
async fn unknown_key_bad_value_and_override(service: &Service) {
    let Service {
        valid,
        what,
        topic_key: key,
        topic_default,
        ..
    } = service;
    let var = format!("KAFKA_{}", key.to_uppercase());
    let not_a_topic = format!(
        "`bad topic` is not a topic name: ` ` is not allowed; use only a-z, A-Z, 0-9, `.`, `_` and `-` (default \
         `{topic_default}`)"
    );

    // An unknown key: refused, naming the known ones.
    let (code, _, err, file) =
        check_config(service, &format!("{valid}kafka:\n  topik: x\n"), &[]).await;
    assert_eq!(code, 1, "{err}");
    let expected = format!(
        "{file}: invalid {what}\n  - kafka.topik: unknown key; the keys of this block are {}\n",
        service.keys
    );
    assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");

    // A bad value in the file: refused, naming the key, the rule and the default.
    let bad_in_file = format!("{valid}kafka:\n  {key}: \"bad topic\"\n");
    let (code, _, err, file) = check_config(service, &bad_in_file, &[]).await;
    assert_eq!(code, 1, "{err}");
    let expected = format!("{file}: invalid {what}\n  - kafka.{key}: {not_a_topic}\n");
    assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");

    // The environment's value wins over the file's, and is judged by the same rule.
    let good_in_file = format!("{valid}kafka:\n  {key}: good-topic\n");
    let (code, _, err, file) = check_config(service, &good_in_file, &[(&var, "bad topic")]).await;
    assert_eq!(code, 1, "{err}");
    let expected = format!(
        "{file}: invalid {what}\n  - {var} (environment, overrides kafka.{key}): {not_a_topic}\n"
    );
    assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");
    let (code, out, err, file) = check_config(service, &bad_in_file, &[(&var, "good-topic")]).await;
    assert_eq!(
        code, 0,
        "{var} should override the file's bad value:\n{err}"
    );
    assert!(out.starts_with(&format!("{file}: ok")), "{out}");
}

#[tokio::test]
async fn the_qualifier_reads_its_kafka_block_like_delivery() {
    unknown_key_bad_value_and_override(&QUALIFIER).await;
}

#[tokio::test]
async fn delivery_reads_its_kafka_block_like_the_qualifier() {
    unknown_key_bad_value_and_override(&DELIVERY).await;
}

#[tokio::test]
async fn a_variable_read_before_the_kafka_block_refuses_the_start_naming_its_key() {
    for (service, old, key) in [
        (&QUALIFIER, "EVENTS_TOPIC", "events_topic"),
        (&QUALIFIER, "QUALIFIER_INSTANCE_ID", "instance_id"),
        (&DELIVERY, "CHANGELOG_TOPIC", "changelog_topic"),
    ] {
        let (code, _, err, _) = check_config(service, service.valid, &[(old, "x")]).await;
        assert_eq!(code, 1, "{err}");
        let expected = format!(
            "{old} is set, but is no longer read: set kafka.{key} in the config file or KAFKA_{} instead, and remove \
             {old}",
            key.to_uppercase()
        );
        assert!(
            err.contains(&expected),
            "{}: missing `{expected}` in:\n{err}",
            service.binary
        );
    }
}

#[tokio::test]
async fn the_qualifier_runs_as_its_host_and_refuses_to_start_without_an_instance_id() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segments.yaml");
    std::fs::write(&file, QUALIFIER.valid).unwrap();
    let run_qualifier = |env: &'static [(&'static str, &'static str)]| {
        let file = file.clone();
        async move {
            run(
                "qualifier",
                &["--admin-addr", "127.0.0.1:0", "--config"],
                &file,
                env,
            )
            .await
        }
    };

    let (code, _, err) = run_qualifier(&[]).await;
    assert_eq!(code, 1, "{err}");
    let expected = format!(
        "{}: kafka.instance_id is not set and neither are KAFKA_INSTANCE_ID nor HOSTNAME: set one of them to this \
         process's stable identity (e.g. the pod name)",
        file.display()
    );
    assert!(err.contains(&expected), "missing `{expected}` in:\n{err}");

    // With a host name the instance id is settled, and start-up goes on to the next check (here
    // a Kafka setting made bad on purpose, so that nothing connects).
    let (code, _, err) = run_qualifier(&[
        ("HOSTNAME", "qualifier-0"),
        ("KAFKA_SECURITY_PROTOCOL", "bogus"),
    ])
    .await;
    assert_eq!(code, 1, "{err}");
    assert!(!err.contains("kafka.instance_id"), "{err}");
    assert!(
        err.contains("KAFKA_SECURITY_PROTOCOL: must be one of plaintext, ssl, sasl_plaintext, sasl_ssl; got `bogus`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_qualifiers_block_applies_the_rules_and_keeps_the_running_topics()
{
    use crate::qualifier::{QualifierTest, changes, now, post, trait_event, updates};
    use model::{ChangeReason, SegmentStatus};

    let test = QualifierTest::new(1).await;
    let path =
        test.definitions("traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 100, rule: T1 }]\n");
    // The test's topics and group come from KAFKA_<KEY> (see QualifierTest::start), so the file's
    // events_topic below is overridden and unchanged; its delivery_log_topic is a change.
    let q = test.start(&path, "a").await;
    let reader = test.reader(&test.status);
    std::fs::write(
        &path,
        "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 100, rule: T1 }, { id: 200, rule: T2 }]\n\
         kafka:\n  events_topic: elsewhere\n  delivery_log_topic: elsewhere\n",
    )
    .unwrap();
    testkit::wait_until("reload logged", Duration::from_secs(20), || {
        let done = q.service.log().contains("Definitions reloaded.");
        async move { done }
    })
    .await;
    let log = q.service.log();
    let warning = log
        .lines()
        .find(|line| line.contains("The kafka block changed: it takes effect at the next restart"))
        .unwrap_or_else(|| panic!("no WARN about the kafka block in:\n{log}"));
    assert!(
        warning.contains("WARN") && warning.contains("kafka.delivery_log_topic"),
        "{warning}"
    );
    assert!(!warning.contains("kafka.events_topic"), "{warning}");

    // The new rules apply, on the topics the process started with.
    post(&q.ingest, &[trait_event("k1", 2, &now(), None)]).await;
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&update),
        [(200, SegmentStatus::Active, ChangeReason::Qualified)]
    );
}
