//! The delivery log: one record per (user, destination, request attempt) on the
//! `delivery-log` topic, keyed by user id — the changes sent, the attempt's outcome and the
//! first bytes of the partner's answer — so `delivery log --user` can say what a partner got
//! for a user and what it answered.
//!
//! Off the hot path: the users' part of their records is encoded into one buffer of the batch
//! as each user joins it ([`PreparedUsers`]: no message struct, no allocation per user), and
//! each attempt adds its own fields once and hands the records to librdkafka, whose own thread
//! batches, compresses and sends. Writing never waits: a record the producer cannot queue is
//! counted in `delivery_log_dropped_total`, and delivery goes on.

pub mod read;

use model::ErrorClass;
use model::partner::PartnerUser;
use prost::bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};
use telemetry::KafkaSettings;
use telemetry::partition::KeyPartitioner;
use telemetry::prometheus::IntCounter;

use crate::update::PartnerUuids;

/// The most of a partner's response a record keeps.
pub const RESPONSE_BYTES: usize = 256;

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

/// Counts records the broker did not take; places each record by its user as librdkafka's
/// default partitioner would, only cheaper ([`KeyPartitioner`]).
struct LogContext {
    dropped: IntCounter,
    partitioner: KeyPartitioner,
}

impl ClientContext for LogContext {}

impl ProducerContext<KeyPartitioner> for LogContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, (): ()) {
        if result.is_err() {
            self.dropped.inc();
        }
    }

    fn get_custom_partitioner(&self) -> Option<&KeyPartitioner> {
        Some(&self.partitioner)
    }
}

/// The writer, shared by every destination of the process.
pub struct DeliveryLog {
    producer: ThreadedProducer<LogContext, KeyPartitioner>,
    topic: String,
    worker: String,
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
    pub fn new(
        kafka: &KafkaSettings,
        topic: &str,
        records: IntCounter,
        dropped: IntCounter,
    ) -> Result<Self, KafkaError> {
        let producer = Self::client_config(kafka).create_with_context(LogContext {
            dropped: dropped.clone(),
            partitioner: KeyPartitioner::default(),
        })?;
        let worker = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| format!("pid-{}", std::process::id()));
        Ok(Self {
            producer,
            topic: topic.to_owned(),
            worker,
            records,
            dropped,
        })
    }

    /// The producer's settings: acks=all and idempotent ([`KafkaSettings::producer_config`]),
    /// so a record is kept once even across a leader change; records placed by their key.
    pub fn client_config(kafka: &KafkaSettings) -> rdkafka::ClientConfig {
        let mut config = kafka.producer_config("delivery-log");
        KeyPartitioner::configure(&mut config)
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

    /// Records one attempt of a batch whose users are `users` (sent with `ProcessTime`
    /// `process_time_unix_ms` and `idempotency_key`), one record per user. Never waits.
    pub fn record(
        &self,
        users: &PreparedUsers,
        process_time_unix_ms: i64,
        idempotency_key: &str,
        report: &AttemptReport<'_>,
    ) {
        let context = RecordContext {
            process_time_unix_ms,
            idempotency_key,
            report,
            worker: &self.worker,
            time_unix_ms: telemetry::clock::unix_ms(),
            batch_users: users.len() as u32,
        };
        let mut attempt = Vec::with_capacity(128 + RESPONSE_BYTES);
        encode_attempt(&mut attempt, &context);
        users.each_record(&attempt, |key, payload| {
            // The attempt's time, so librdkafka need not read the clock for every record.
            let record = BaseRecord::to(&self.topic)
                .key(key)
                .payload(payload)
                .timestamp(context.time_unix_ms);
            match self.producer.send(record) {
                Ok(()) => self.records.inc(),
                Err(_) => self.dropped.inc(),
            }
        });
    }

    /// Waits up to `timeout` for queued records to reach the broker (at shutdown).
    pub fn flush(&self, timeout: std::time::Duration) {
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(%error, "Delivery log records were still queued at shutdown; they are lost.");
        }
    }
}

/// What every user's record of one attempt shares.
struct RecordContext<'a> {
    process_time_unix_ms: i64,
    idempotency_key: &'a str,
    report: &'a AttemptReport<'a>,
    worker: &'a str,
    time_unix_ms: i64,
    batch_users: u32,
}

/// The first fields of every user's record in one buffer: a user's record is their part
/// followed by the attempt's fields ([`encode_attempt`]), the field order prost writes.
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

/// Where one user's part, and their id (the record's key) within it, lie in the buffer.
#[derive(Debug)]
struct UserPart {
    start: usize,
    key: std::ops::Range<usize>,
    end: usize,
}

impl PreparedUsers {
    /// Encodes the part of the records of the user at `position` in the batch (a new user is
    /// the next position): what stays the same across the batch's attempts. A user's
    /// earlier part, replaced, stays in the buffer until the batch is sent.
    pub fn put(
        &mut self,
        position: usize,
        user: &PartnerUser<'_>,
        destination_id: u64,
        partner_uuids: PartnerUuids<'_>,
    ) {
        let start = self.bytes.len();
        encode_user(&mut self.bytes, user, destination_id, partner_uuids);
        let user_id = user.aam_uuid;
        // The id is the first field, when not empty (proto3 leaves an empty one out).
        let key_end = if user_id.is_empty() {
            start
        } else {
            start + length_delimited_len(1, user_id.len())
        };
        let part = UserPart {
            start,
            key: key_end - user_id.len()..key_end,
            end: self.bytes.len(),
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

    /// The number of users (each one record per attempt).
    pub fn len(&self) -> usize {
        self.parts.len()
    }

    /// Whether no user joined the batch.
    pub fn is_empty(&self) -> bool {
        self.parts.is_empty()
    }

    /// Hands each user's record of an attempt (their part, then `attempt`'s fields) to
    /// `record`, with its key: the user id.
    fn each_record(&self, attempt: &[u8], mut record: impl FnMut(&[u8], &[u8])) {
        let mut buffer = Vec::with_capacity(512);
        for part in &self.parts {
            buffer.clear();
            buffer.extend_from_slice(&self.bytes[part.start..part.end]);
            buffer.extend_from_slice(attempt);
            record(&self.bytes[part.key.clone()], &buffer);
        }
    }
}

/// Encodes the fields of a `DeliveryLogRecord` (see `delivery_log.proto`) that are the user's,
/// 1 to 5, from borrowed parts (the user's entry without its partner id, and their ids): the
/// bytes prost would write for them.
fn encode_user<'a>(
    buf: &mut Vec<u8>,
    user: &PartnerUser<'_>,
    destination_id: u64,
    partner_uuids: impl IntoIterator<Item = &'a str>,
) {
    bytes_field(buf, 1, user.aam_uuid.as_bytes());
    varint_field(buf, 2, destination_id);
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

/// Encodes the fields of a `DeliveryLogRecord` that are the attempt's, 6 to 16.
fn encode_attempt(buf: &mut Vec<u8>, context: &RecordContext<'_>) {
    let report = context.report;
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
