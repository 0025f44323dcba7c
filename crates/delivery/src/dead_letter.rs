//! The dead-letter topic: what could not be delivered is kept there (never dropped), one
//! record per user and failed batch, keyed by user id so a user's dead letters stay in order
//! for `delivery replay`. Undecodable input is kept there too, with its bytes and position.

use std::time::Duration;

use model::{DeadLetterRecord, ErrorClass, MAX_DEAD_LETTER_BYTES, SourcePosition};
use prost::Message as _;
use rdkafka::error::KafkaError;
use telemetry::KafkaSettings;
use telemetry::produce::AckedProducer;

use crate::batcher::RoutedEvent;
use crate::sender::Failure;

pub struct DeadLetterWriter {
    producer: AckedProducer,
    topic: String,
}

impl std::fmt::Debug for DeadLetterWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeadLetterWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl DeadLetterWriter {
    pub fn new(kafka: &KafkaSettings, topic: &str) -> Result<Self, KafkaError> {
        let producer = AckedProducer::new(&Self::client_config(kafka), "delivery-dlq")?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// The producer's settings: acks=all and idempotent ([`KafkaSettings::producer_config`]):
    /// a dead letter is the only copy of what could not be delivered.
    pub fn client_config(kafka: &KafkaSettings) -> rdkafka::ClientConfig {
        let mut config = kafka.producer_config("delivery-dlq");
        config
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000");
        config
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes the events of a failed batch for `destination_id`, one record per user (their
    /// updates in arrival order) — several when they would not fit in one record — all at
    /// once. Returns once every record is acknowledged by the broker. `input_topic` is where
    /// the events were read.
    pub async fn write_failed_batch(
        &self,
        destination_id: u64,
        input_topic: &str,
        events: &[RoutedEvent],
        failure: &Failure,
    ) {
        let template = DeadLetterRecord {
            updates: Vec::new(),
            destination_id,
            attempts: failure.attempts,
            error_class: failure.class as i32,
            error: failure.error.clone(),
            first_attempt_unix_ms: failure.first_attempt_unix_ms,
            last_attempt_unix_ms: failure.last_attempt_unix_ms,
            dead_lettered_unix_ms: telemetry::clock::unix_ms(),
            source: None,
            raw: Vec::new(),
        };
        let mut by_user: Vec<(&str, Vec<&RoutedEvent>)> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for event in events {
            let user = event.update.user_id();
            let i = *index.entry(user).or_insert_with(|| {
                by_user.push((user, Vec::new()));
                by_user.len() - 1
            });
            by_user[i].1.push(event);
        }
        let records: Vec<(&str, Vec<u8>)> = by_user
            .into_iter()
            .flat_map(|(user, events)| {
                user_records(&template, user, &events, input_topic)
                    .into_iter()
                    .map(move |record| (user, record.encode_to_vec()))
            })
            .collect();
        self.write_all(&records).await;
    }

    /// Produces every record at once and awaits them together: one round trip for a batch,
    /// not one per user. A record the producer could not take, or the broker did not
    /// acknowledge, is then written on its own until it is (in order).
    async fn write_all(&self, records: &[(&str, Vec<u8>)]) {
        let mut pending = Vec::with_capacity(records.len());
        let mut again = Vec::new();
        for (i, (key, payload)) in records.iter().enumerate() {
            match self.producer.send(&self.topic, key.as_bytes(), payload) {
                Ok(acked) => pending.push((i, acked)),
                Err(_) => again.push(i),
            }
        }
        for (i, acked) in pending {
            if acked.await.is_err() {
                again.push(i);
            }
        }
        again.sort_unstable();
        for i in again {
            let (key, payload) = &records[i];
            self.write(key, payload).await;
        }
    }

    /// Keeps an input message that could not be decoded, with where it came from (its bytes
    /// too, when they fit in a record).
    pub async fn write_undecodable(
        &self,
        source: SourcePosition,
        key: &[u8],
        raw: &[u8],
        error: String,
    ) {
        let now = telemetry::clock::unix_ms();
        let mut record = DeadLetterRecord {
            updates: Vec::new(),
            destination_id: 0,
            attempts: 0,
            error_class: ErrorClass::Undecodable as i32,
            error,
            first_attempt_unix_ms: now,
            last_attempt_unix_ms: now,
            dead_lettered_unix_ms: now,
            source: Some(source),
            raw: raw.to_vec(),
        };
        let key = record.fit_undecodable(key);
        self.write(&String::from_utf8_lossy(key), &record.encode_to_vec())
            .await;
    }

    /// Produces until the broker acknowledges: a dead letter may not be lost, and the input
    /// offset is not finished before it is written, so waiting is the safe choice.
    async fn write(&self, key: &str, payload: &[u8]) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let acked = match self.producer.send(&self.topic, key.as_bytes(), payload) {
                Ok(acked) => acked.await,
                Err(error) => Err(error),
            };
            match acked {
                Ok(()) => return,
                Err(error) => {
                    tracing::error!(topic = %self.topic, %error, "Cannot write to the dead-letter topic; retrying. Delivery of the affected destination is stalled until it succeeds.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}

/// One user's dead letters as records of at most [`MAX_DEAD_LETTER_BYTES`] (with the key), the
/// updates in order: a record Kafka refuses would stall the destination for ever. An update
/// too large for a record of its own (it nearly filled an input message) is recorded by its
/// input position instead, with the reason in `error`.
fn user_records(
    template: &DeadLetterRecord,
    user: &str,
    events: &[&RoutedEvent],
    input_topic: &str,
) -> Vec<DeadLetterRecord> {
    let fixed = user.len() + template.encoded_len();
    let mut records = Vec::new();
    let mut current = template.clone();
    let mut size = fixed;
    for event in events {
        let update = event.update.to_proto();
        let length = update.encoded_len();
        // Field tag (1 byte) and length prefix of one `updates` entry.
        let entry = 1 + prost::encoding::encoded_len_varint(length as u64) + length;
        if fixed + entry > MAX_DEAD_LETTER_BYTES {
            let mut alone = template.clone();
            alone.source = event.source.map(|s| SourcePosition {
                topic: input_topic.to_owned(),
                partition: s.assignment.partition,
                offset: s.offset,
            });
            alone.error = format!(
                "{}; the update ({length} bytes) is too large to keep in a dead-letter record: read it at its source position",
                template.error
            );
            if !current.updates.is_empty() {
                records.push(std::mem::replace(&mut current, template.clone()));
                size = fixed;
            }
            records.push(alone);
            continue;
        }
        if size + entry > MAX_DEAD_LETTER_BYTES {
            records.push(std::mem::replace(&mut current, template.clone()));
            size = fixed;
        }
        current.updates.push(update);
        size += entry;
    }
    if !current.updates.is_empty() {
        records.push(current);
    }
    records
}

#[cfg(test)]
mod tests {

    use model::{Origin, SegmentChange, SegmentStatusUpdate};

    use super::*;
    use crate::batcher::EventSource;
    use crate::offsets::PartitionAssignment;

    fn event(user: &str, padding: usize, offset: i64) -> RoutedEvent {
        RoutedEvent {
            held: Default::default(),
            update: crate::update::Update::new(&SegmentStatusUpdate {
                user_id: user.to_owned(),
                regions: Vec::new(),
                partner_ids: vec![model::PartnerIds {
                    data_partner_id: 1,
                    partner_uuids: vec!["p".repeat(padding)],
                }],
                changes: vec![SegmentChange::qualified(14356, 1)],
                origin: Origin::Realtime as i32,
                produced_unix_ms: 1,
                sequence: 1,
                only_data_partner_id: None,
            }),
            source: Some(EventSource {
                catch_up: false,
                written_unix_ms: None,
                assignment: PartitionAssignment {
                    partition: 3,
                    generation: 1,
                },
                offset,
            }),
        }
    }

    fn template() -> DeadLetterRecord {
        DeadLetterRecord {
            destination_id: 423,
            attempts: 2,
            error_class: ErrorClass::HttpStatus as i32,
            error: "HTTP 413".into(),
            ..DeadLetterRecord::default()
        }
    }

    #[test]
    fn a_users_updates_are_split_into_records_that_fit_in_order() {
        // Three updates of ~400 KB: two records (two fit, then one).
        let events: Vec<_> = (0..3).map(|i| event("u1", 400_000, i)).collect();
        let refs: Vec<&RoutedEvent> = events.iter().collect();
        let records = user_records(&template(), "u1", &refs, "segment-status");
        assert_eq!(
            records.iter().map(|r| r.updates.len()).collect::<Vec<_>>(),
            [2, 1]
        );
        for record in &records {
            assert!(2 + record.encoded_len() <= MAX_DEAD_LETTER_BYTES);
            assert_eq!(record.error, "HTTP 413");
        }
        let kept: Vec<_> = records.iter().flat_map(|r| r.updates.iter()).collect();
        assert_eq!(kept.len(), 3);
        assert!(
            kept.iter()
                .zip(&events)
                .all(|(k, e)| **k == e.update.to_proto())
        );

        // Small ones stay in one record.
        let small: Vec<_> = (0..50).map(|i| event("u1", 10, i)).collect();
        let refs: Vec<&RoutedEvent> = small.iter().collect();
        let records = user_records(&template(), "u1", &refs, "segment-status");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].updates.len(), 50);
    }

    #[test]
    fn an_update_too_large_for_any_record_is_kept_by_its_position() {
        let events = [
            event("u1", 10, 7),
            event("u1", 950_000, 8),
            event("u1", 10, 9),
        ];
        let refs: Vec<&RoutedEvent> = events.iter().collect();
        let records = user_records(&template(), "u1", &refs, "segment-status");
        assert_eq!(
            records.len(),
            3,
            "before, the position of the huge one, after"
        );
        assert_eq!(records[0].updates.len(), 1);
        assert!(records[1].updates.is_empty());
        let source = records[1].source.as_ref().unwrap();
        assert_eq!(
            (source.topic.as_str(), source.partition, source.offset),
            ("segment-status", 3, 8)
        );
        assert!(
            records[1].error.starts_with("HTTP 413; the update ("),
            "{}",
            records[1].error
        );
        assert!(
            records[1]
                .error
                .contains("too large to keep in a dead-letter record")
        );
        assert_eq!(records[2].updates.len(), 1);
        for record in &records {
            assert!(2 + record.encoded_len() <= MAX_DEAD_LETTER_BYTES);
        }
    }

    fn failure() -> Failure {
        Failure {
            class: ErrorClass::HttpStatus,
            error: "HTTP 422".to_owned(),
            attempts: 2,
            first_attempt_unix_ms: 1,
            last_attempt_unix_ms: 2,
            permanent: true,
            not_before: None,
        }
    }

    /// A batch's dead letters go out together: with a broker 200 ms away, 50 users' records
    /// take about one round trip, where one awaited produce per user took 50 (10 s).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_is_dead_lettered_in_one_round_trip_not_one_per_user() {
        let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
        cluster.create_topic("dlq", 1, 1).unwrap();
        let kafka = KafkaSettings::from_lookup(|name| {
            (name == "KAFKA_BROKERS").then(|| cluster.bootstrap_servers())
        })
        .unwrap();
        let writer = DeadLetterWriter::new(&kafka, "dlq").unwrap();
        // Connected and warm before the round trips get slow.
        writer
            .write_failed_batch(1, "in", &[event("warm", 1, 0)], &failure())
            .await;
        cluster
            .broker_round_trip_time(1, std::time::Duration::from_millis(200))
            .unwrap();
        let events: Vec<_> = (0..50).map(|i| event(&format!("u{i}"), 10, i)).collect();
        let started = std::time::Instant::now();
        writer
            .write_failed_batch(1, "in", &events, &failure())
            .await;
        let took = started.elapsed();
        assert!(
            took < std::time::Duration::from_secs(3),
            "50 users' dead letters took {took:?}: written one round trip at a time"
        );
    }
}
