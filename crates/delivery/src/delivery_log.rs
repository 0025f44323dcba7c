//! The delivery log: on the `delivery-log` topic, one record per request attempt and partition
//! its users go to (a `DeliveryLogAttempt`: each user's segments, partner ids and regions, then
//! the attempt's outcome and the first bytes of the partner's answer), so `delivery log --user`
//! can say what a partner got for a user and what it answered. A user's part is in the
//! partition their id goes to as a key, where `qualifier forget` writes their erasure.
//!
//! Off the hot path: the users' parts are encoded into one buffer of the batch as each user
//! joins it ([`PreparedUsers`]: no message struct, no allocation per user), and each attempt
//! gathers them per partition, adds its own fields once per record and hands the records to
//! librdkafka, whose own thread batches, compresses and sends. A record per user and attempt,
//! as before, cost librdkafka's fixed work per record for each: ~27 % of a busy worker's CPU.
//! Writing never waits: a user's part the producer cannot queue is counted in
//! `delivery_log_dropped_total`, and delivery goes on.

pub mod read;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use model::ErrorClass;
use model::partner::PartnerUser;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer as _, ProducerContext};
use telemetry::KafkaSettings;
use telemetry::prometheus::IntCounter;

use crate::update::PartnerUuids;

/// The most of a partner's response a record keeps.
pub const RESPONSE_BYTES: usize = 256;

/// The most bytes of users' parts one record carries (a larger part of a request is split over
/// several records): well within the brokers' default `message.max.bytes` (1 MiB).
const RECORD_USER_BYTES: usize = 256 * 1024;

/// How often the writer asks for the topic's partition count: a topic given more partitions
/// has its users' parts placed by the new count from then on, as the erasures and the readers
/// place them.
const PARTITIONS_REFRESH: Duration = Duration::from_secs(60);

/// What one request attempt came to.
#[derive(Debug, Clone, Copy)]
pub struct AttemptReport<'a> {
    /// 1 for the batch's first attempt (the caller adds earlier rounds).
    pub attempt: u32,
    pub http_status: Option<u16>,
    /// `Unspecified` when the partner accepted the batch.
    pub class: ErrorClass,
    pub error: &'a str,
    /// The first [`RESPONSE_BYTES`] of the partner's response body.
    pub response: &'a [u8],
    pub delivered: bool,
}

/// Counts the users' parts of the records the broker did not take (each record's count is its
/// delivery opaque).
struct LogContext {
    dropped: IntCounter,
}

impl ClientContext for LogContext {}

impl ProducerContext for LogContext {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, parts: usize) {
        if result.is_err() {
            self.dropped.inc_by(parts as u64);
        }
    }
}

/// The writer, shared by every destination of the process.
pub struct DeliveryLog {
    producer: BaseProducer<LogContext>,
    topic: String,
    worker: String,
    /// The topic's partition count, asked again every [`PARTITIONS_REFRESH`].
    partitions: AtomicU32,
    records: IntCounter,
    dropped: IntCounter,
}

impl std::fmt::Debug for DeliveryLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeliveryLog")
            .field("topic", &self.topic)
            .field("worker", &self.worker)
            .finish_non_exhaustive()
    }
}

impl DeliveryLog {
    /// A writer to `topic`, whose partition count it reads first (blocking up to 10 s). A
    /// thread of its own polls the producer ([`telemetry::produce::poll_in_thread`]: not
    /// rdkafka's, which spins) and reads the count again every minute; it ends with the
    /// writer. Counts the users' parts written in `records` and those lost in `dropped`.
    pub fn start(
        kafka: &KafkaSettings,
        topic: &str,
        records: IntCounter,
        dropped: IntCounter,
    ) -> Result<Arc<Self>, KafkaError> {
        Self::start_refreshing(kafka, topic, records, dropped, PARTITIONS_REFRESH)
    }

    /// [`Self::start`], reading the partition count again every `refresh` (a test's
    /// broker sees a change sooner than the service's minute).
    fn start_refreshing(
        kafka: &KafkaSettings,
        topic: &str,
        records: IntCounter,
        dropped: IntCounter,
        refresh: Duration,
    ) -> Result<Arc<Self>, KafkaError> {
        let producer = Self::client_config(kafka).create_with_context(LogContext {
            dropped: dropped.clone(),
        })?;
        let worker = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("pid-{}", std::process::id()));
        let log = Arc::new(Self {
            producer,
            topic: topic.to_owned(),
            worker,
            partitions: AtomicU32::new(0),
            records,
            dropped,
        });
        log.partitions
            .store(log.read_partitions()?, Ordering::Relaxed);
        let mut asked = std::time::Instant::now();
        telemetry::produce::poll_in_thread(
            "delivery-log",
            &log,
            |log| &log.producer,
            move |log| {
                if asked.elapsed() >= refresh {
                    asked = std::time::Instant::now();
                    log.refresh_partitions();
                }
            },
        )?;
        Ok(log)
    }

    /// Reads the topic's partition count again (in the polling thread). Blocks up to 10 s.
    fn refresh_partitions(&self) {
        match self.read_partitions() {
            Ok(count) => {
                let before = self.partitions.swap(count, Ordering::Relaxed);
                if before != count {
                    tracing::info!(topic = %self.topic, before, count, "The delivery log topic's partition count changed; users are placed by the new count.");
                }
            }
            Err(error) => {
                tracing::debug!(topic = %self.topic, %error, "Cannot read the delivery log topic's partition count; the last one stays.");
            }
        }
    }

    /// The topic's partition count, from the brokers. Blocks up to 10 s.
    fn read_partitions(&self) -> Result<u32, KafkaError> {
        let metadata = self
            .producer
            .client()
            .fetch_metadata(Some(&self.topic), Duration::from_secs(10))?;
        let count = metadata
            .topics()
            .first()
            .map_or(0, |t| t.partitions().len());
        match u32::try_from(count) {
            Ok(count) if count > 0 => Ok(count),
            _ => Err(KafkaError::MetadataFetch(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )),
        }
    }

    /// The producer's settings: acks=all and idempotent ([`KafkaSettings::producer_config`]),
    /// so a record is kept once even across a leader change.
    pub fn client_config(kafka: &KafkaSettings) -> rdkafka::ClientConfig {
        let mut config = kafka.producer_config("delivery-log");
        config
            .set("linger.ms", "100")
            .set("compression.type", "lz4")
            // Bounded: a broker that is away makes the log drop records, never delivery grow.
            .set("queue.buffering.max.kbytes", "32768")
            .set("message.timeout.ms", "60000")
            // Only a record the broker did not take is reported back (and counted): a report
            // per record cost the producer's polling thread ~4 % of a drain's CPU.
            .set("delivery.report.only.error", "true");
        config
    }

    /// Records one attempt to `destination_id` of a batch whose users are `users` (sent with
    /// `ProcessTime` `process_time_unix_ms` and `idempotency_key`): one record per partition
    /// the users go to. Never waits.
    pub fn record(
        &self,
        users: &PreparedUsers,
        destination_id: u64,
        process_time_unix_ms: i64,
        idempotency_key: &str,
        report: &AttemptReport<'_>,
    ) {
        let context = RecordContext {
            destination_id,
            process_time_unix_ms,
            idempotency_key,
            report,
            worker: &self.worker,
            time_unix_ms: telemetry::clock::unix_ms(),
            batch_users: users.len() as u32,
        };
        let mut attempt = Vec::with_capacity(128 + RESPONSE_BYTES);
        encode_attempt(&mut attempt, &context);
        let partitions = self.partitions.load(Ordering::Relaxed);
        users.each_record(
            partitions,
            RECORD_USER_BYTES,
            &attempt,
            |partition, payload, parts| {
                // The attempt's time, so librdkafka need not read the clock for every record.
                let record = BaseRecord::<(), [u8], usize>::with_opaque_to(&self.topic, parts)
                    .partition(partition)
                    .payload(payload)
                    .timestamp(context.time_unix_ms);
                match self.producer.send(record) {
                    Ok(()) => self.records.inc_by(parts as u64),
                    Err(_) => self.dropped.inc_by(parts as u64),
                }
            },
        );
    }

    /// Waits up to `timeout` for queued records to reach the broker (at shutdown).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "Delivery log records were still queued at shutdown; they are lost.");
        }
    }
}

/// What every record of one attempt shares.
struct RecordContext<'a> {
    destination_id: u64,
    process_time_unix_ms: i64,
    idempotency_key: &'a str,
    report: &'a AttemptReport<'a>,
    worker: &'a str,
    time_unix_ms: i64,
    batch_users: u32,
}

/// Every user's part of the batch's records in one buffer: a record is its users' parts, each
/// as a `users` entry, followed by the attempt's fields ([`encode_attempt`]), the field order
/// prost writes.
#[derive(Debug, Default)]
pub struct PreparedUsers {
    bytes: Vec<u8>,
    parts: Vec<UserPart>,
}

/// How far a batch's [`PreparedUsers`] grew, for the next batch to reserve.
#[derive(Debug, Default, Clone, Copy)]
pub struct PreparedSizes {
    bytes: usize,
    parts: usize,
}

impl PreparedSizes {
    /// Both sizes through `f`.
    pub fn map(self, f: impl Fn(usize) -> usize) -> Self {
        Self {
            bytes: f(self.bytes),
            parts: f(self.parts),
        }
    }
}

/// Where one user's part lies in the buffer, and their id's hash (which partition it goes to).
#[derive(Debug)]
struct UserPart {
    start: usize,
    end: usize,
    hash: u32,
}

impl PreparedUsers {
    /// Encodes the part of the records of the user at `position` in the batch (a new user is
    /// the next position): what stays the same across the batch's attempts. A user's
    /// earlier part, replaced, stays in the buffer until the batch is sent.
    pub fn put(
        &mut self,
        position: usize,
        user: &PartnerUser<'_>,
        partner_uuids: PartnerUuids<'_>,
    ) {
        let start = self.bytes.len();
        encode_user(&mut self.bytes, user, partner_uuids);
        let part = UserPart {
            start,
            end: self.bytes.len(),
            hash: telemetry::partition::key_hash(user.aam_uuid.as_bytes()),
        };
        match self.parts.get_mut(position) {
            Some(earlier) => *earlier = part,
            None => self.parts.push(part),
        }
    }

    /// How far the buffers grew.
    pub fn sizes(&self) -> PreparedSizes {
        PreparedSizes {
            bytes: self.bytes.len(),
            parts: self.parts.len(),
        }
    }

    /// Reserves room for as much as `sizes` (another batch's).
    pub fn reserve(&mut self, sizes: PreparedSizes) {
        self.bytes.reserve(sizes.bytes);
        self.parts.reserve(sizes.parts);
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no user joined the batch.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Hands the records of an attempt to `record`: for each of the `partitions` the users'
    /// ids go to, their parts followed by `attempt`'s fields, with the partition and the
    /// number of parts. A partition's parts beyond `most` bytes go in more records.
    fn each_record(
        &self,
        partitions: u32,
        most: usize,
        attempt: &[u8],
        mut record: impl FnMut(i32, &[u8], usize),
    ) {
        let partitions = partitions.max(1);
        let place = |part: &UserPart| {
            let len = part.end - part.start;
            let bytes = key_len(1) + encoded_len_varint(len as u64) + len;
            ((part.hash % partitions) as usize, bytes)
        };
        // A partition's buffer, its number of parts, and how many bytes its parts come to: a
        // buffer is made as large as its record will be, at once (grown as its parts came, it
        // was copied as often).
        let mut records: Vec<(Vec<u8>, usize, usize)> = Vec::new();
        records.resize_with(partitions as usize, Default::default);
        for part in &self.parts {
            let (partition, bytes) = place(part);
            records[partition].2 += bytes;
        }
        for part in &self.parts {
            let (partition, bytes) = place(part);
            let (buffer, parts, total) = &mut records[partition];
            if *parts > 0 && buffer.len() + bytes > most {
                buffer.extend_from_slice(attempt);
                record(partition as i32, buffer, *parts);
                buffer.clear();
                *parts = 0;
            }
            if buffer.capacity() == 0 {
                buffer.reserve_exact((*total).min(most) + attempt.len());
            }
            encode_key(1, WireType::LengthDelimited, buffer);
            encode_varint((part.end - part.start) as u64, buffer);
            buffer.extend_from_slice(&self.bytes[part.start..part.end]);
            *parts += 1;
        }
        for (partition, (buffer, parts, _)) in records.iter_mut().enumerate() {
            if *parts > 0 {
                buffer.extend_from_slice(attempt);
                record(partition as i32, buffer, *parts);
            }
        }
    }
}

/// Encodes the fields of a `DeliveryLogRecord` (see `delivery_log.proto`) that are the user's,
/// 1, 3, 4 and 5, from borrowed parts (the user's entry without its partner id, and their
/// ids): the bytes prost would write for them.
fn encode_user<'a>(
    buf: &mut Vec<u8>,
    user: &PartnerUser<'_>,
    partner_uuids: impl IntoIterator<Item = &'a str>,
) {
    bytes_field(buf, 1, user.aam_uuid.as_bytes());
    for segment in user.segments {
        let time = segment.time_unix_ms as u64;
        let len = length_delimited_len(1, segment.segment_id.len())
            + if segment.active { key_len(2) + 1 } else { 0 }
            + varint_len(3, time);
        encode_key(3, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        bytes_field(buf, 1, segment.segment_id.as_bytes());
        varint_field(buf, 2, u64::from(segment.active));
        varint_field(buf, 3, time);
    }
    for uuid in partner_uuids {
        // Repeated strings keep empty ones: the entry count is the partner's `User_count`.
        encode_key(4, WireType::LengthDelimited, buf);
        encode_varint(uuid.len() as u64, buf);
        buf.put_slice(uuid.as_bytes());
    }
    let regions = user.regions;
    if !regions.is_empty() {
        let len: usize = regions
            .iter()
            .map(|&r| encoded_len_varint(u64::from(r)))
            .sum();
        encode_key(5, WireType::LengthDelimited, buf);
        encode_varint(len as u64, buf);
        for &region in regions {
            encode_varint(u64::from(region), buf);
        }
    }
}

/// Encodes the fields of a `DeliveryLogAttempt` (and of a `DeliveryLogRecord`) that are the
/// attempt's, 2 and 6 to 16.
fn encode_attempt(buf: &mut Vec<u8>, context: &RecordContext<'_>) {
    let report = context.report;
    varint_field(buf, 2, context.destination_id);
    varint_field(buf, 6, context.process_time_unix_ms as u64);
    bytes_field(buf, 7, context.idempotency_key.as_bytes());
    varint_field(buf, 8, u64::from(report.attempt));
    varint_field(buf, 9, u64::from(report.http_status.unwrap_or(0)));
    varint_field(buf, 10, report.class as i32 as u64);
    bytes_field(buf, 11, report.error.as_bytes());
    bytes_field(
        buf,
        12,
        &report.response[..report.response.len().min(RESPONSE_BYTES)],
    );
    bytes_field(buf, 13, context.worker.as_bytes());
    varint_field(buf, 14, context.time_unix_ms as u64);
    varint_field(buf, 15, u64::from(report.delivered));
    varint_field(buf, 16, u64::from(context.batch_users));
}

/// A varint field; proto3 leaves a zero out.
fn varint_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

/// A string or bytes field; proto3 leaves an empty one out.
fn bytes_field(buf: &mut Vec<u8>, tag: u32, value: &[u8]) {
    if !value.is_empty() {
        encode_key(tag, WireType::LengthDelimited, buf);
        encode_varint(value.len() as u64, buf);
        buf.put_slice(value);
    }
}

fn varint_len(tag: u32, value: u64) -> usize {
    if value == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(value)
    }
}

fn length_delimited_len(tag: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        key_len(tag) + encoded_len_varint(len as u64) + len
    }
}

#[cfg(test)]
mod tests;
