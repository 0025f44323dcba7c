//! `qualifier topics create|check` against the real broker, and the qualifier's refusal to
//! start on a changelog that is not co-partitioned with its input. Every test names its own six
//! topics; what the command made is read back with a plain admin client, not with its code.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use testkit::kafka;
use testkit::service::ServiceBuilder;

/// One test's topic names, passed the way the services take them (environment).
struct Topics {
    events: String,
    status: String,
    status_batch: String,
    changelog: String,
    dlq: String,
    delivery_log: String,
}

impl Topics {
    fn new() -> Self {
        kafka::require_broker();
        Self {
            events: testkit::unique_name("t-events"),
            status: testkit::unique_name("t-status"),
            status_batch: testkit::unique_name("t-status-batch"),
            changelog: testkit::unique_name("t-changelog"),
            dlq: testkit::unique_name("t-dlq"),
            delivery_log: testkit::unique_name("t-delivery-log"),
        }
    }

    fn env(&self) -> [(&'static str, &str); 6] {
        [
            ("KAFKA_EVENTS_TOPIC", &self.events),
            ("KAFKA_STATUS_TOPIC", &self.status),
            ("KAFKA_STATUS_BATCH_TOPIC", &self.status_batch),
            ("KAFKA_CHANGELOG_TOPIC", &self.changelog),
            ("KAFKA_DLQ_TOPIC", &self.dlq),
            ("KAFKA_DELIVERY_LOG_TOPIC", &self.delivery_log),
        ]
    }

    /// `qualifier topics <args>` on the single local broker (replication factor 1): exit
    /// code, stdout, stderr.
    async fn command(&self, args: &[&str]) -> (i32, String, String) {
        testkit::service::run_to_end(
            tokio::process::Command::new(testkit::service::binary("qualifier"))
                .arg("topics")
                .args(args)
                .env("KAFKA_BROKERS", &kafka::settings().brokers)
                .env("TOPIC_REPLICATION_FACTOR", "1")
                .envs(self.env()),
        )
        .await
    }
}

/// (partitions, the configs named) of `topic`, read with a plain admin client.
async fn read_back(topic: &str, keys: &[&str]) -> (usize, BTreeMap<String, String>) {
    let probe: BaseConsumer = kafka::client_config().create().unwrap();
    let metadata = probe
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let partitions = metadata.topics()[0].partitions().len();
    let admin: AdminClient<DefaultClientContext> = kafka::client_config().create().unwrap();
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let resource = described.into_iter().next().unwrap().unwrap();
    let configs = keys
        .iter()
        .map(|k| {
            let value = resource.get(k).and_then(|e| e.value.clone());
            ((*k).to_owned(), value.unwrap_or_default())
        })
        .collect();
    (partitions, configs)
}

#[tokio::test]
async fn topics_create_makes_every_topic_with_its_settings_and_a_second_run_changes_nothing() {
    let topics = Topics::new();
    let (code, out, err) = topics.command(&["create", "--partitions", "3"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.matches("created ").count(), 6, "{out}");

    let keys = ["cleanup.policy", "retention.ms", "min.insync.replicas"];
    let expected = [
        (&topics.events, "delete", "604800000"),
        (&topics.status, "delete", "604800000"),
        (&topics.status_batch, "delete", "604800000"),
        (&topics.dlq, "delete", "-1"),
        (&topics.delivery_log, "delete", "604800000"),
    ];
    for (topic, policy, retention) in expected {
        let (partitions, configs) = read_back(topic, &keys).await;
        assert_eq!(partitions, 3, "{topic}");
        assert_eq!(configs["cleanup.policy"], policy, "{topic}");
        assert_eq!(configs["retention.ms"], retention, "{topic}");
        assert_eq!(configs["min.insync.replicas"], "1", "{topic}");
    }
    let (partitions, configs) = read_back(&topics.changelog, &keys).await;
    assert_eq!(partitions, 3);
    assert_eq!(configs["cleanup.policy"], "compact");

    // Again: everything is there and right, so nothing is created and it says so.
    let (code, out, err) = topics.command(&["create", "--partitions", "3"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(!out.contains("created "), "{out}");
    assert_eq!(out.matches("exists: left alone").count(), 6, "{out}");

    let (code, out, err) = topics.command(&["check", "--partitions", "3"]).await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.matches("ok ").count(), 6, "{out}");

    // The catalog's count differs from the cluster's: check names each topic and fails.
    let (code, _, err) = topics.command(&["check", "--partitions", "4"]).await;
    assert_eq!(code, 1, "{err}");
    let line = format!(
        "topic `{}`: partitions: found 3, expected 4; fix: ",
        topics.events
    );
    assert!(err.contains(&line), "{err}");
}

/// Makes `topics`' changelog with 2 partitions and every other topic with 4, as an operator
/// who created the changelog by hand might.
async fn mis_partitioned(topics: &Topics) {
    kafka::create_topic(&topics.changelog, 2, &[("cleanup.policy", "compact")]).await;
    let (code, out, err) = topics.command(&["create", "--partitions", "4"]).await;
    // The other five are created; the changelog is reported, not changed.
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    assert_eq!(out.matches("created ").count(), 5, "{out}");
    assert!(
        out.contains(&format!("{} exists: left alone", topics.changelog)),
        "{out}"
    );
    assert_eq!(read_back(&topics.changelog, &[]).await.0, 2);
}

#[tokio::test]
async fn topics_check_refuses_a_changelog_not_co_partitioned_with_its_input() {
    let topics = Topics::new();
    mis_partitioned(&topics).await;

    let (code, out, err) = topics.command(&["check", "--partitions", "4"]).await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let refusal = format!(
        "topic `{}`: partitions, co-partitioned with input `{}`: found 2, expected 4 (as many as `{}`); fix: add partitions to `{}` until it has 4",
        topics.changelog, topics.events, topics.events, topics.changelog
    );
    assert!(err.contains(&refusal), "missing `{refusal}` in:\n{err}");
    assert!(!out.contains(&format!("ok {}", topics.changelog)), "{out}");
}

#[tokio::test]
async fn the_qualifier_refuses_to_start_on_a_changelog_not_co_partitioned_with_its_input() {
    let topics = Topics::new();
    mis_partitioned(&topics).await;
    let dir = tempfile::tempdir().unwrap();
    let definitions = dir.path().join("segments.yaml");
    std::fs::write(
        &definitions,
        "traits: [{ id: 1 }]\nsegments:\n  - { id: 100, rule: T1 }\n",
    )
    .unwrap();
    let mut builder = ServiceBuilder::new("qualifier")
        .arg("--config")
        .arg(definitions.to_str().unwrap())
        .env(
            "INGEST_ADDR",
            format!("127.0.0.1:{}", testkit::service::free_port()),
        )
        .env("KAFKA_GROUP_ID", testkit::unique_name("t-qualifier"))
        .env("KAFKA_INSTANCE_ID", "a");
    for (key, value) in topics.env() {
        builder = builder.env(key, value);
    }
    let mut qualifier = builder.spawn();
    let status = qualifier.wait_exit(Duration::from_secs(60)).await;
    let log = qualifier.log();
    assert!(!status.success(), "{log}");
    let refusal = format!(
        "refusing to start: changelog `{}` has 2 partitions but input `{}` has 4",
        topics.changelog, topics.events
    );
    assert!(log.contains(&refusal), "missing `{refusal}` in:\n{log}");
    assert!(log.contains("--partitions 4"), "{log}");
}
