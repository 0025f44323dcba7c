//! Qualifier end to end: the real `qualifier` binary, the real broker, its ingest API.

mod auth;
mod bad_input;
mod lag;
mod lifecycle;
mod rebalance;
mod recovery;
mod refresh;
mod rules;
mod show;
mod sweep;
mod topics;
mod trait_parts;

use std::path::{Path, PathBuf};
use std::time::Duration;

use model::{ChangeReason, SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use testkit::kafka;
use testkit::service::{Service, ServiceBuilder, free_port};

/// Topics and group of one test.
pub struct QualifierTest {
    pub events: String,
    pub status: String,
    pub status_batch: String,
    pub changelog: String,
    pub dlq: String,
    pub group: String,
    dir: tempfile::TempDir,
}

/// A running qualifier and its ingest URL.
pub struct Qualifier {
    pub service: Service,
    pub ingest: String,
}

impl QualifierTest {
    pub async fn new(partitions: i32) -> Self {
        let events = kafka::unique_topic("events", partitions).await;
        let status = kafka::unique_topic("q-status", partitions).await;
        let status_batch = kafka::unique_topic("q-status-batch", partitions).await;
        let changelog = testkit::unique_name("changelog");
        kafka::create_topic(&changelog, partitions, &[("cleanup.policy", "compact")]).await;
        let dlq = kafka::unique_topic("q-dlq", 1).await;
        Self {
            events,
            status,
            status_batch,
            changelog,
            dlq,
            group: testkit::unique_name("qualifier"),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn definitions(&self, yaml: &str) -> PathBuf {
        let path = self.dir.path().join("segments.yaml");
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub async fn start(&self, definitions: &Path, instance: &str) -> Qualifier {
        self.start_with(definitions, instance, &[]).await
    }

    /// Starts the qualifier with extra environment variables.
    pub async fn start_with(
        &self,
        definitions: &Path,
        instance: &str,
        env: &[(&str, &str)],
    ) -> Qualifier {
        let port = free_port();
        let mut builder = self
            .builder(definitions, instance)
            .env("INGEST_ADDR", format!("127.0.0.1:{port}"));
        for (key, value) in env {
            builder = builder.env(key, *value);
        }
        let mut service = builder.spawn();
        service.wait_ready(Duration::from_secs(30)).await;
        Qualifier {
            service,
            ingest: format!("http://127.0.0.1:{port}/v1/events"),
        }
    }

    /// The qualifier with this test's topics and group, as `instance`, not started.
    pub fn builder(&self, definitions: &Path, instance: &str) -> ServiceBuilder {
        ServiceBuilder::new("qualifier")
            .arg("--config")
            .arg(definitions.to_str().unwrap())
            .env("KAFKA_GROUP_ID", &self.group)
            .env("KAFKA_INSTANCE_ID", instance)
            .env("KAFKA_EVENTS_TOPIC", &self.events)
            .env("KAFKA_STATUS_TOPIC", &self.status)
            .env("KAFKA_STATUS_BATCH_TOPIC", &self.status_batch)
            .env("KAFKA_CHANGELOG_TOPIC", &self.changelog)
            .env("KAFKA_DLQ_TOPIC", &self.dlq)
    }

    /// How many input events the qualifier's group has committed (its transactions' input
    /// offsets, summed over the events topic's `partitions`). Read without requiring stable
    /// offsets, so that a transaction left open by a killed process does not hold the answer
    /// back: its offsets were never committed and are not counted.
    pub fn committed_input(&self, partitions: i32) -> i64 {
        let client: BaseConsumer = kafka::client_config()
            .set("group.id", &self.group)
            .set("isolation.level", "read_uncommitted")
            .create()
            .unwrap();
        let mut list = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions {
            list.add_partition(&self.events, partition);
        }
        client
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("cannot read the committed offsets of {}: {e}", self.group))
            .elements()
            .iter()
            .map(|e| match e.offset() {
                rdkafka::Offset::Offset(offset) => offset,
                _ => 0,
            })
            .sum()
    }

    /// Runs a one-shot `qualifier` command (e.g. `show`) with this test's topics and group;
    /// returns its exit code, stdout and stderr.
    pub async fn command(&self, args: &[&str]) -> (i32, String, String) {
        testkit::service::run_to_end(
            tokio::process::Command::new(testkit::service::binary("qualifier"))
                .args(args)
                .env("KAFKA_BROKERS", &kafka::settings().brokers)
                .env("KAFKA_GROUP_ID", &self.group)
                .env("KAFKA_EVENTS_TOPIC", &self.events)
                .env("KAFKA_STATUS_TOPIC", &self.status)
                .env("KAFKA_STATUS_BATCH_TOPIC", &self.status_batch)
                .env("KAFKA_CHANGELOG_TOPIC", &self.changelog)
                .env("KAFKA_DLQ_TOPIC", &self.dlq),
        )
        .await
    }

    /// A read_committed reader of `topic` from its start.
    pub fn reader(&self, topic: &str) -> StreamConsumer {
        let consumer = kafka::consumer(&testkit::unique_name("reader"));
        consumer.subscribe(&[topic]).unwrap();
        consumer
    }
}

/// POSTs NDJSON lines; returns (status, body).
pub async fn post(url: &str, lines: &[String]) -> (u16, serde_json::Value) {
    let response = reqwest::Client::new()
        .post(url)
        .body(lines.join("\n"))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (
        status,
        response.json().await.unwrap_or(serde_json::Value::Null),
    )
}

pub fn trait_event(user: &str, trait_id: u64, time: &str, region: Option<u32>) -> String {
    let region = region
        .map(|r| format!(r#","region":{r}"#))
        .unwrap_or_default();
    format!(r#"{{"type":"trait","user":"{user}","trait":{trait_id},"time":"{time}"{region}}}"#)
}

/// A realization of trait 1 by `user`, as the ingest API writes it to the input topic (for
/// tests that produce to Kafka directly).
pub fn trait_realization(user: String) -> model::TraitEvent {
    model::TraitEvent {
        user_id: user,
        origin: model::Origin::Realtime as i32,
        event: Some(model::pb::trait_event::Event::TraitRealization(
            model::pb::TraitRealization {
                trait_id: 1,
                time_unix_ms: 1_764_324_000_000,
                region: None,
            },
        )),
    }
}

/// Now as RFC 3339.
pub fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

/// Reads updates until `n` arrived (panics after `timeout`).
pub async fn updates(
    reader: &StreamConsumer,
    n: usize,
    timeout: Duration,
) -> Vec<SegmentStatusUpdate> {
    let mut out = Vec::new();
    while out.len() < n {
        let message = tokio::time::timeout(timeout, reader.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} updates arrived: {out:?}", out.len()))
            .unwrap();
        out.push(SegmentStatusUpdate::decode(message.payload().unwrap()).unwrap());
    }
    out
}

/// Asserts nothing more arrives within `wait`.
pub async fn no_more(reader: &StreamConsumer, wait: Duration) {
    if let Ok(Ok(message)) = tokio::time::timeout(wait, reader.recv()).await {
        panic!(
            "unexpected update: {:?}",
            SegmentStatusUpdate::decode(message.payload().unwrap())
        );
    }
}

/// Asserts no message at all arrives within `wait` (for topics that are not status updates).
pub async fn no_more_messages(reader: &StreamConsumer, wait: Duration) {
    if let Ok(Ok(message)) = tokio::time::timeout(wait, reader.recv()).await {
        panic!(
            "unexpected message with key {:?}",
            message.key().map(String::from_utf8_lossy)
        );
    }
}

/// (segment, status, reason) of an update's changes.
pub fn changes(update: &SegmentStatusUpdate) -> Vec<(u64, SegmentStatus, ChangeReason)> {
    update
        .changes
        .iter()
        .map(|c| (c.segment_id, c.status(), c.reason()))
        .collect()
}
