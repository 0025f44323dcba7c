//! The dead-letter topic: what could not be delivered is kept there (never dropped), one
//! record per user and failed batch, keyed by user id so a user's dead letters stay in order
//! for `delivery replay`. Undecodable input is kept there too, with its bytes and position.

use std::time::Duration;

use model::{DeadLetterRecord, ErrorClass, SegmentStatusUpdate, SourcePosition};
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use telemetry::KafkaSettings;

use crate::batcher::RoutedEvent;
use crate::sender::{Failure, unix_ms_now};

pub struct DeadLetterWriter {
    producer: FutureProducer,
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
        let producer = kafka
            .client_config("delivery-dlq")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "5")
            .set("message.timeout.ms", "30000")
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes the events of a failed batch for `destination_id`, one record per user (their
    /// updates in arrival order). Returns once every record is acknowledged by the broker.
    pub async fn write_failed_batch(
        &self,
        destination_id: u64,
        events: &[RoutedEvent],
        failure: &Failure,
    ) {
        let dead_lettered_unix_ms = unix_ms_now();
        let mut by_user: Vec<(&str, Vec<SegmentStatusUpdate>)> = Vec::new();
        let mut index = std::collections::HashMap::new();
        for event in events {
            let user = event.update.user_id.as_str();
            let i = *index.entry(user).or_insert_with(|| {
                by_user.push((user, Vec::new()));
                by_user.len() - 1
            });
            by_user[i].1.push((*event.update).clone());
        }
        for (user, updates) in by_user {
            let record = DeadLetterRecord {
                updates,
                destination_id,
                attempts: failure.attempts,
                error_class: failure.class as i32,
                error: failure.error.clone(),
                first_attempt_unix_ms: failure.first_attempt_unix_ms,
                last_attempt_unix_ms: failure.last_attempt_unix_ms,
                dead_lettered_unix_ms,
                source: None,
                raw: Vec::new(),
            };
            self.write(user, &record.encode_to_vec()).await;
        }
    }

    /// Keeps an input message that could not be decoded, with where it came from.
    pub async fn write_undecodable(
        &self,
        source: SourcePosition,
        key: &[u8],
        raw: &[u8],
        error: String,
    ) {
        let now = unix_ms_now();
        let record = DeadLetterRecord {
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
        self.write(&String::from_utf8_lossy(key), &record.encode_to_vec())
            .await;
    }

    /// Produces until the broker acknowledges: a dead letter may not be lost, and the input
    /// offset is not finished before it is written, so waiting is the safe choice.
    async fn write(&self, key: &str, payload: &[u8]) {
        let mut backoff = Duration::from_millis(200);
        loop {
            let record = FutureRecord::to(&self.topic).key(key).payload(payload);
            match self.producer.send(record, Duration::from_secs(30)).await {
                Ok(_) => return,
                Err((error, _)) => {
                    tracing::error!(topic = %self.topic, %error, "Cannot write to the dead-letter topic; retrying. Delivery of the affected destination is stalled until it succeeds.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
        }
    }
}
