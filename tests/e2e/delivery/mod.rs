//! Delivery end to end: the real `delivery` binary, the real broker, real HTTPS receivers.

mod check_connect;
mod commits;
mod contract;
pub mod delivery_log;
mod failures;
mod isolation;
mod lifecycle;
mod oauth;
mod observability;
mod ordering;
mod recovery;
mod render;
mod resync;
mod rotation;
mod secrets;
mod tls;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use model::{
    ChangeReason, DeadLetterRecord, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate,
};
use prost::Message as _;
use rdkafka::ClientContext;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::FutureRecord;
use telemetry::KafkaSettings;
use testkit::kafka;
use testkit::receiver::{Receiver, RecordedRequest};
use testkit::service::{Service, ServiceBuilder};

/// 2016-07-27T16:17:22Z.
pub const T0: i64 = 1_469_636_242_000;

/// Topics and a consumer group of one test, and where its config files go.
pub struct DeliveryTest {
    pub topic: String,
    pub batch_topic: String,
    pub dlq_topic: String,
    /// The delivery log topic (`kafka.delivery_log_topic`).
    pub log_topic: String,
    pub group: String,
    /// The broker the topics live on: the shared test broker, or a test's own mock cluster.
    kafka: KafkaSettings,
    producer: rdkafka::producer::FutureProducer,
    dir: tempfile::TempDir,
}

impl DeliveryTest {
    pub async fn new(partitions: i32) -> Self {
        let topic = kafka::unique_topic("status", partitions).await;
        let batch_topic = kafka::unique_topic("status-batch", partitions).await;
        let dlq_topic = kafka::unique_topic("status-dlq", partitions).await;
        let log_topic = kafka::unique_topic("delivery-log", partitions).await;
        Self {
            topic,
            batch_topic,
            dlq_topic,
            log_topic,
            group: testkit::unique_name("delivery"),
            kafka: kafka::settings(),
            producer: kafka::producer(),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// The same on librdkafka's mock cluster instead of the shared broker: for broker answers
    /// a real broker cannot be made to give (`MockCluster::request_errors`). The service,
    /// [`Self::produce`], [`Self::committed`] and [`Self::dead_letters`] all use the cluster.
    pub fn on_mock_cluster<C: ClientContext>(
        cluster: &MockCluster<'_, C>,
        partitions: i32,
    ) -> Self {
        let [topic, batch_topic, dlq_topic, log_topic] =
            ["status", "status-batch", "status-dlq", "delivery-log"].map(testkit::unique_name);
        for name in [&topic, &batch_topic, &dlq_topic, &log_topic] {
            cluster.create_topic(name, partitions, 1).unwrap();
        }
        let brokers = cluster.bootstrap_servers();
        let kafka =
            KafkaSettings::from_lookup(|name| (name == "KAFKA_BROKERS").then(|| brokers.clone()))
                .unwrap();
        let producer = kafka
            .client_config("segment-relay-tests")
            .set("enable.idempotence", "true")
            .set("linger.ms", "5")
            .create()
            .unwrap();
        Self {
            topic,
            batch_topic,
            dlq_topic,
            log_topic,
            group: testkit::unique_name("delivery"),
            kafka,
            producer,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A consumer of this test's broker in `group` that reads from the beginning and never
    /// commits.
    fn consumer(&self, group: &str) -> StreamConsumer {
        kafka::consumer_on(&self.kafka, group)
    }

    /// Writes a config with this test's topics and `destinations` (YAML list items).
    pub fn config(&self, destinations: &[String]) -> PathBuf {
        let yaml = format!(
            "kafka:\n  group_id: {}\n  topic: {}\n  batch_topic: {}\n  dlq_topic: {}\n  delivery_log_topic: {}\n  commit_interval_ms: 100\n  session_timeout_ms: 6000\n  drain_timeout_ms: 15000\ndestinations:\n{}",
            self.group,
            self.topic,
            self.batch_topic,
            self.dlq_topic,
            self.log_topic,
            destinations
                .iter()
                .map(|d| format!("  - {d}\n"))
                .collect::<String>()
        );
        let path = self
            .dir
            .path()
            .join(format!("{}.yaml", testkit::unique_name("destinations")));
        std::fs::write(&path, yaml).unwrap();
        path
    }

    pub async fn start(&self, config: &std::path::Path, env: &[(&str, &str)]) -> Service {
        let mut builder = ServiceBuilder::new("delivery")
            .arg("--config")
            .arg(config.to_str().unwrap())
            .env("KAFKA_BROKERS", &self.kafka.brokers);
        for (key, value) in env {
            builder = builder.env(key, *value);
        }
        let mut service = builder.spawn();
        service.wait_ready(Duration::from_secs(30)).await;
        service
    }

    /// Produces `updates` in order and returns where each landed (partition, offset).
    pub async fn produce(&self, topic: &str, updates: &[SegmentStatusUpdate]) -> Vec<(i32, i64)> {
        let mut positions = Vec::with_capacity(updates.len());
        for update in updates {
            let bytes = update.encode_to_vec();
            positions.push(self.produce_raw_to(topic, &update.user_id, &bytes).await);
        }
        positions
    }

    /// [`Self::produce`] for many updates: all queued at once (the producer is idempotent,
    /// so each partition keeps their order), then each confirmed.
    pub async fn produce_many(&self, topic: &str, updates: &[SegmentStatusUpdate]) {
        let mut confirmations = Vec::with_capacity(updates.len());
        for update in updates {
            let bytes = update.encode_to_vec();
            let record = FutureRecord::to(topic).key(&update.user_id).payload(&bytes);
            match self.producer.send_result(record) {
                Ok(confirmation) => confirmations.push(confirmation),
                Err((e, _)) => panic!("produce failed: {e}"),
            }
        }
        for confirmation in confirmations {
            match confirmation.await {
                Ok(Ok(_)) => {}
                Ok(Err((e, _))) => panic!("produce failed: {e}"),
                Err(_canceled) => panic!("produce failed: the producer dropped the record"),
            }
        }
    }

    pub async fn produce_raw(&self, key: &str, payload: &[u8]) {
        self.produce_raw_to(&self.topic, key, payload).await;
    }

    async fn produce_raw_to(&self, topic: &str, key: &str, payload: &[u8]) -> (i32, i64) {
        let delivery = self
            .producer
            .send(
                FutureRecord::to(topic).key(key).payload(payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
        (delivery.partition, delivery.offset)
    }

    /// Reads the dead-letter topic until `n` records arrived.
    pub async fn dead_letters(&self, n: usize, timeout: Duration) -> Vec<DeadLetterRecord> {
        let consumer = self.consumer(&testkit::unique_name("dlq-reader"));
        consumer.subscribe(&[&self.dlq_topic]).unwrap();
        let mut records = Vec::new();
        while records.len() < n {
            let message = tokio::time::timeout(timeout, consumer.recv())
                .await
                .unwrap_or_else(|_| panic!("only {} of {n} dead letters arrived", records.len()))
                .unwrap();
            records.push(DeadLetterRecord::decode(message.payload().unwrap()).unwrap());
        }
        records
    }

    /// The group's committed offsets of the real-time topic, by partition.
    pub fn committed(&self, partitions: i32) -> HashMap<i32, i64> {
        self.committed_in(&self.topic, partitions)
    }

    /// The committed offsets of the real-time topic (group `group`) or the batch topic (its
    /// group, `<group>-batch`).
    pub fn committed_in(&self, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let group = if topic == self.batch_topic {
            format!("{}-batch", self.group)
        } else {
            self.group.clone()
        };
        let consumer = self.consumer(&group);
        let mut list = rdkafka::TopicPartitionList::new();
        for p in 0..partitions {
            list.add_partition(topic, p);
        }
        let committed = consumer
            .committed_offsets(list, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }
}

/// A destination entry for `receiver` mapping our 14356 → "14356" and 12176 → "99", with a
/// 50 ms linger unless `extra` sets `batch`.
pub fn destination(id: u64, receiver: &Receiver, extra: &str) -> String {
    let batch = if extra.contains("batch:") {
        ""
    } else {
        ", batch: { linger_ms: 50 }"
    };
    format!(
        "{{ id: {id}, url: \"{}\", ca_file: \"{}\", client_id: \"74323\", user_dpid: 20915, \
         segments: {{ 14356: \"14356\", 12176: \"99\" }}{batch}{extra} }}",
        receiver.url("/aam"),
        receiver.ca_file().display()
    )
}

pub fn change(segment_id: u64, active: bool, time_unix_ms: i64) -> SegmentChange {
    if active {
        SegmentChange::qualified(segment_id, time_unix_ms)
    } else {
        SegmentChange::unsegmented(segment_id, ChangeReason::Ttl, time_unix_ms)
    }
}

pub fn update(
    user: &str,
    regions: &[u32],
    partner_ids: &[&str],
    changes: Vec<SegmentChange>,
) -> SegmentStatusUpdate {
    SegmentStatusUpdate {
        user_id: user.to_owned(),
        regions: regions.to_vec(),
        partner_ids: if partner_ids.is_empty() {
            vec![]
        } else {
            vec![PartnerIds {
                data_partner_id: 1234,
                partner_uuids: partner_ids.iter().map(|s| (*s).to_owned()).collect(),
            }]
        },
        changes,
        origin: Origin::Realtime as i32,
        produced_unix_ms: T0,
        // As from a qualifier before sequences: ordered by topic position only.
        sequence: 0,
        only_data_partner_id: None,
    }
}

/// An update as the qualifier writes it: with the user's sequence, on `origin`'s topic.
pub fn sequenced(
    user: &str,
    active: bool,
    sequence: u64,
    origin: model::Origin,
) -> model::SegmentStatusUpdate {
    let mut update = update(
        user,
        &[],
        &[],
        vec![change(14356, active, T0 + sequence as i64)],
    );
    update.sequence = sequence;
    update.origin = origin as i32;
    update
}

/// An update of `user` activating segment 14356, made and dated now.
pub fn update_now(user: &str) -> SegmentStatusUpdate {
    let now = telemetry::clock::unix_ms();
    let mut update = update(user, &[], &[], vec![change(14356, true, now)]);
    update.produced_unix_ms = now;
    update
}

/// Users seen in the requests the receiver accepted.
pub fn delivered_users(receiver: &Receiver) -> std::collections::HashSet<String> {
    entries(
        receiver
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| json(&r.body)),
    )
    .into_iter()
    .map(|(user, _, _)| user)
    .collect()
}

/// Waits until the receiver accepted requests for `users` distinct users and returns its
/// requests. Counting requests would not do: delivery is at least once, and a destination
/// whose config changed sends again what it had in flight.
pub async fn wait_for_users(
    receiver: &Receiver,
    users: usize,
    timeout: Duration,
) -> Vec<RecordedRequest> {
    testkit::wait_until(&format!("{users} users at the receiver"), timeout, || {
        let delivered = delivered_users(receiver).len();
        async move { delivered >= users }
    })
    .await;
    receiver.requests()
}

/// The body as JSON.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// `f` of every (`Users` entry, `Segments` entry) pair in the bodies, in order.
pub fn map_segments<T>(
    bodies: impl IntoIterator<Item = serde_json::Value>,
    f: impl Fn(&serde_json::Value, &serde_json::Value) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    for body in bodies {
        for user in body["Users"].as_array().unwrap() {
            for segment in user["Segments"].as_array().unwrap() {
                out.push(f(user, segment));
            }
        }
    }
    out
}

/// A string field of a body's JSON object.
pub fn text(value: &serde_json::Value, field: &str) -> String {
    value[field].as_str().unwrap().to_owned()
}

/// After a worker gave partitions up while its slow first request was out: that request was
/// answered, the partner accepted each of `users` (one change each) once and no user twice,
/// as the new owner sent again nothing the first worker had delivered.
pub fn assert_each_accepted_once(receiver: &Receiver, users: usize) {
    let mut requests = receiver.requests();
    requests.retain(|r| r.status == 200);
    assert!(
        requests.iter().any(|r| !r.answered_after.is_zero()),
        "the slow request was answered"
    );
    let (accepted, twice) = accepted_users(&requests);
    assert!(
        twice.is_empty(),
        "changes the first worker delivered were sent again by the new owner (user, times): {twice:?}"
    );
    assert_eq!(accepted, users, "every user's change was accepted");
}

/// Of the requests the partner accepted (200), how many users' changes were in them, and the
/// users whose changes were accepted more than once (user, times), sorted.
pub fn accepted_users(
    requests: &[testkit::receiver::RecordedRequest],
) -> (usize, Vec<(String, usize)>) {
    let mut accepted: HashMap<String, usize> = HashMap::new();
    let bodies = requests
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| json(&r.body));
    for user in map_segments(bodies, |user, _| text(user, "AAM_UUID")) {
        *accepted.entry(user).or_default() += 1;
    }
    let users = accepted.len();
    let mut twice: Vec<_> = accepted.into_iter().filter(|&(_, n)| n > 1).collect();
    twice.sort();
    (users, twice)
}

/// (user, Segment_ID, Status) of every segment entry in the bodies, in order.
pub fn entries(
    bodies: impl IntoIterator<Item = serde_json::Value>,
) -> Vec<(String, String, String)> {
    map_segments(bodies, |user, segment| {
        (
            text(user, "AAM_UUID"),
            text(segment, "Segment_ID"),
            text(segment, "Status"),
        )
    })
}
