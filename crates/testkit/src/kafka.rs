//! The real broker, and per-test topics and consumer groups.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use telemetry::KafkaSettings;

use crate::wait_until;

/// Client settings for the test broker: the same environment variables the services read
/// (`KAFKA_BROKERS`, default `127.0.0.1:9092`).
pub fn settings() -> KafkaSettings {
    KafkaSettings::from_env().unwrap_or_else(|e| panic!("{e}"))
}

pub fn client_config() -> ClientConfig {
    settings().client_config("segment-relay-tests")
}

/// Panics with instructions when no broker answers: a test that needs Kafka never skips.
pub fn require_broker() {
    let settings = settings();
    let consumer: BaseConsumer = settings
        .client_config("segment-relay-tests")
        .create()
        .unwrap_or_else(|e| panic!("cannot create a Kafka client: {e}"));
    if let Err(e) = consumer.fetch_metadata(None, Duration::from_secs(10)) {
        panic!(
            "no Kafka broker answers at {} ({e}). These tests need a real broker: run `make kafka-up` \
             (or `make test`, which starts it), or point KAFKA_BROKERS at one.",
            settings.brokers
        );
    }
}

/// Creates `name` with `partitions` partitions (replication 1) and waits until every
/// partition has a leader, so a consumer or producer can use it at once.
pub async fn create_topic(name: &str, partitions: i32, config: &[(&str, &str)]) {
    require_broker();
    create_topic_on(&client_config(), name, partitions, config).await;
}

/// [`create_topic`] on the broker `client` points at (e.g. a test's own broker).
pub async fn create_topic_on(
    client: &ClientConfig,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    create_replicated_topic_on(client, name, partitions, 1, config).await;
}

/// How often a topic's creation is asked for when the cluster answers with a transient error.
const CREATE_ATTEMPTS: u32 = 3;

/// Errors after which a CreateTopics request may succeed when sent again: those librdkafka
/// recovers from, and a controller that moved.
fn is_transient(code: RDKafkaErrorCode) -> bool {
    telemetry::is_transient(code) || code == RDKafkaErrorCode::NotController
}

/// [`create_topic_on`] with `replicas` replicas (a test's own cluster).
pub async fn create_replicated_topic_on(
    client: &ClientConfig,
    name: &str,
    partitions: i32,
    replicas: i32,
    config: &[(&str, &str)],
) {
    let admin: AdminClient<DefaultClientContext> = client.create().unwrap();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replicas));
    for (key, value) in config {
        topic = topic.set(key, value);
    }
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(20)))
        .request_timeout(Some(Duration::from_secs(30)));
    // A cluster that has just listed all its nodes can still let a first CreateTopics time
    // out (a CI run's fresh three-node cluster did, after 60 s): asking again is safe, since
    // a topic the first request did create answers TopicAlreadyExists.
    let mut attempt = 1;
    loop {
        let outcome = match admin.create_topics([&topic], &options).await {
            Ok(results) => results.into_iter().try_for_each(|result| match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => Ok(()),
                Err((_, code)) => Err(code),
            }),
            Err(KafkaError::AdminOp(code)) => Err(code),
            Err(e) => panic!("cannot create topic {name}: {e}"),
        };
        match outcome {
            Ok(()) => break,
            Err(code) if attempt < CREATE_ATTEMPTS && is_transient(code) => {
                eprintln!("creating topic {name}: {code} (attempt {attempt}); asking again");
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(code) => panic!("cannot create topic {name}: {code} (attempt {attempt})"),
        }
    }
    let probe: BaseConsumer = client.create().unwrap();
    let expected = usize::try_from(partitions).unwrap();
    wait_until(
        &format!("topic {name} to have leaders"),
        Duration::from_secs(30),
        || {
            let ready = probe
                .fetch_metadata(Some(name), Duration::from_secs(2))
                .ok()
                .and_then(|m| {
                    m.topics().first().map(|t| {
                        t.error().is_none()
                            && t.partitions().len() == expected
                            && t.partitions().iter().all(|p| p.leader() >= 0)
                    })
                })
                .unwrap_or(false);
            async move { ready }
        },
    )
    .await;
}

/// A unique topic with `partitions` partitions, created and ready.
pub async fn unique_topic(prefix: &str, partitions: i32) -> String {
    let name = crate::unique_name(prefix);
    create_topic(&name, partitions, &[]).await;
    name
}

/// An idempotent producer (acks=all) for writing test input.
pub fn producer() -> FutureProducer {
    client_config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap()
}

/// librdkafka's in-process mock cluster, as `MockCluster::new` makes it: named here so that a
/// service's tests need not name rdkafka's producer module (its `producer_settings` test lists
/// every file that does as one that creates a producer).
pub type MockCluster =
    rdkafka::mocking::MockCluster<'static, rdkafka::producer::DefaultProducerContext>;

/// Writes one record to partition 0 of `topic` on the cluster at `brokers` (a test's mock
/// cluster) and waits until it is acknowledged.
pub fn produce_one(brokers: &str, topic: &str, key: &str, payload: &[u8]) {
    produce_keyed(brokers, topic, &[(key.as_bytes(), Some(payload))]);
}

/// Produces `records` (key, value; `None`: a tombstone) to partition 0 of `topic` on the
/// cluster at `brokers`, in order. Blocks.
pub fn produce_keyed(brokers: &str, topic: &str, records: &[(&[u8], Option<&[u8]>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    for &(key, payload) in records {
        let mut record = BaseRecord::<[u8], [u8]>::to(topic).partition(0).key(key);
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        producer.send(record).unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
}

/// The key of the first committed record of partition 0 of `topic` on the cluster at
/// `brokers`, if one comes within `within`. Reads from an explicit offset, so that it never
/// asks the group coordinator for commits (a test may be making it fail). Blocks.
pub fn first_key(brokers: &str, topic: &str, within: Duration) -> Option<Vec<u8>> {
    first_key_where(brokers, topic, within, |_| true)
}

/// Whether a committed record keyed `key` comes on partition 0 of `topic` within `within`
/// (read as [`first_key`] reads).
pub fn has_key(brokers: &str, topic: &str, key: &[u8], within: Duration) -> bool {
    first_key_where(brokers, topic, within, |read| read == key).is_some()
}

/// The key of the first committed record of partition 0 of `topic` that `wanted` accepts, read
/// from the beginning for at most `within`.
fn first_key_where(
    brokers: &str,
    topic: &str,
    within: Duration,
    wanted: impl Fn(&[u8]) -> bool,
) -> Option<Vec<u8>> {
    let mut found = None;
    read_committed(brokers, topic, within, |key, _| {
        if wanted(key) {
            found = Some(key.to_vec());
        }
        found.is_some()
    });
    found
}

/// Hands each committed record (key, value) of partition 0 of `topic` on the cluster at
/// `brokers`, from the beginning, to `each` until it returns `true` (then `true`) or `within`
/// has passed (`false`). Reads from an explicit offset, so that it never asks the group
/// coordinator for commits (a test may be making it fail). Blocks.
pub fn read_committed(
    brokers: &str,
    topic: &str,
    within: Duration,
    mut each: impl FnMut(&[u8], Option<&[u8]>) -> bool,
) -> bool {
    use rdkafka::{Message, Offset, TopicPartitionList};
    let reader: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "segment-relay-tests-first-key")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap();
    let mut start = TopicPartitionList::new();
    start
        .add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    reader.assign(&start).unwrap();
    let deadline = std::time::Instant::now() + within;
    while std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(100))
            && each(message.key().unwrap_or_default(), message.payload())
        {
            return true;
        }
    }
    false
}

/// A consumer in its own group that reads from the beginning and never commits.
pub fn consumer(group: &str) -> StreamConsumer {
    consumer_on(&settings(), group)
}

/// A consumer of `kafka` (the test broker, or a test's own mock cluster) in `group` that reads
/// from the beginning, `read_committed`, and never commits.
pub fn consumer_on(kafka: &KafkaSettings, group: &str) -> StreamConsumer {
    kafka
        .client_config("segment-relay-tests")
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .unwrap()
}

/// The check both services make of their producers (each service's `producer_settings` test):
/// every producer config in `producers` (file name under `src`, the config it builds) has
/// `acks=all` and `enable.idempotence=true` and is accepted by librdkafka (which refuses
/// settings contradicting idempotence, e.g. `acks=1` or more than 5 in flight, at creation,
/// without a broker); and every file under `src` that uses rdkafka's producer module, but
/// `lib.rs` (where the test lives), is in the list, so a new producer cannot go unchecked.
pub fn assert_producers_safe(src: &std::path::Path, producers: &[(&str, ClientConfig)]) {
    for (file, config) in producers {
        assert_eq!(config.get("acks"), Some("all"), "{file}: acks");
        assert_eq!(
            config.get("enable.idempotence"),
            Some("true"),
            "{file}: enable.idempotence"
        );
        if let Err(e) = config.create::<rdkafka::producer::BaseProducer>() {
            panic!("{file}: librdkafka refuses the producer settings: {e}");
        }
    }
    let mut checked: Vec<&str> = producers.iter().map(|(f, _)| *f).collect();
    checked.sort_unstable();
    let mut creating = rs_files(src)
        .into_iter()
        .filter(|path| *path != src.join("lib.rs"))
        .filter(|path| {
            let text = std::fs::read_to_string(path).unwrap();
            text.contains("rdkafka::producer") || text.contains("AckedProducer::new")
        })
        .map(|path| path.strip_prefix(src).unwrap().display().to_string())
        .collect::<Vec<_>>();
    creating.sort();
    assert_eq!(
        creating, checked,
        "a file creates a producer: list its config in the producer_settings test"
    );
}

/// Every `.rs` file under `dir`.
fn rs_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(rs_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            files.push(path);
        }
    }
    files
}
