//! `delivery log --user U`: the user's delivery log records, read from the partition their key
//! goes to (newest last), as a table or JSON: their parts of the records of attempts (without
//! a key), and the records keyed by them that delivery wrote before. A tombstone (`qualifier
//! forget`) hides every record of the user's changes dated up to it.

use std::fmt::Write as _;

use anyhow::Context as _;
use model::{DeliveryLogAttempt, DeliveryLogRecord, ErrorClass, rfc3339_ms as rfc3339};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::Offset;
use serde::Serialize;
use telemetry::KafkaSettings;

/// Which records to show.
#[derive(Debug, Clone)]
pub struct Query {
    pub user: String,
    pub destination: Option<u64>,
    /// Only records written at or after this time, ms since the Unix epoch.
    pub since_unix_ms: Option<i64>,
}

/// One record as `--json` prints it.
#[derive(Debug, Serialize)]
pub struct Entry {
    pub time: String,
    pub time_unix_ms: i64,
    #[serde(skip)]
    newest_change_ms: i64,
    pub destination: u64,
    pub attempt: u32,
    /// `delivered`, or why the attempt failed.
    pub outcome: String,
    pub http_status: Option<u32>,
    pub segments: Vec<SegmentEntry>,
    pub partner_uuids: Vec<String>,
    pub regions: Vec<u32>,
    pub process_time: String,
    pub idempotency_key: String,
    pub response: String,
    pub worker: String,
    pub batch_users: u32,
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Serialize)]
pub struct SegmentEntry {
    pub segment_id: String,
    pub status: &'static str,
    pub date_time: String,
}

/// The user's records matching `query`, oldest first. Blocks.
pub fn read(kafka: &KafkaSettings, topic: &str, query: &Query) -> anyhow::Result<Vec<Entry>> {
    let ends = kafka
        .partition_ends(topic)
        .with_context(|| format!("cannot read the partitions of {topic}"))?;
    let partitions = telemetry::partition::key_partitions(query.user.as_bytes(), ends.len() as i32);
    let start = query
        .since_unix_ms
        .map_or(Offset::Beginning, Offset::Offset);
    let ranges: Vec<(i32, Offset, i64)> = ends
        .iter()
        .filter(|(p, _)| partitions.contains(p))
        .map(|&(p, end)| (p, start, end))
        .collect();
    let mut found = Found::new(query);
    kafka
        .read_ranges(
            topic,
            &ranges,
            query.since_unix_ms.is_some(),
            std::time::Duration::from_secs(300),
            |message| {
                found.message(
                    message.key(),
                    message.payload(),
                    message.timestamp().to_millis(),
                    (message.partition(), message.offset()),
                );
            },
        )
        .with_context(|| format!("cannot read {topic}"))?;
    if found.undecodable > 0 {
        eprintln!(
            "{} records of {} in {topic} could not be decoded (written by a newer delivery?)",
            found.undecodable, query.user
        );
    }
    let mut entries = found.entries;
    entries.sort_by_key(|e| (e.time_unix_ms, e.offset));
    Ok(entries)
}

/// The user's entries among the messages of their partition, read in order.
pub(super) struct Found<'q> {
    query: &'q Query,
    /// Finds the user's id in a record of an attempt before it is decoded.
    id: memchr::memmem::Finder<'q>,
    pub(super) entries: Vec<Entry>,
    /// Erased up to (a tombstone's timestamp): records of changes dated no later are hidden.
    erased_up_to: i64,
    undecodable: usize,
}

impl<'q> Found<'q> {
    pub(super) fn new(query: &'q Query) -> Self {
        Self {
            query,
            id: memchr::memmem::Finder::new(query.user.as_bytes()),
            entries: Vec::new(),
            erased_up_to: i64::MIN,
            undecodable: 0,
        }
    }

    /// Takes the user's entries from the next message (`timestamp_ms` and `position`: its
    /// timestamp and its partition and offset).
    pub(super) fn message(
        &mut self,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        timestamp_ms: Option<i64>,
        position: (i32, i64),
    ) {
        let user = self.query.user.as_bytes();
        match (key, payload) {
            (Some(key), None) if key == user => {
                // Erased (`qualifier forget`): hide every record of changes dated up to the
                // erasure, also those a lagging destination writes after it.
                self.erased_up_to = self.erased_up_to.max(timestamp_ms.unwrap_or(i64::MAX));
                let erased_up_to = self.erased_up_to;
                self.entries.retain(|e| e.newest_change_ms > erased_up_to);
            }
            (Some(key), Some(payload)) if key == user => match DeliveryLogRecord::decode(payload) {
                Ok(record) => self.take(record, position),
                Err(_) => self.undecodable += 1,
            },
            (None, Some(payload)) if self.id.find(payload).is_some() => {
                match DeliveryLogAttempt::decode(payload) {
                    Ok(mut attempt) => {
                        let users = std::mem::take(&mut attempt.users);
                        for part in users.into_iter().filter(|u| u.user_id == self.query.user) {
                            self.take(user_record(&attempt, part), position);
                        }
                    }
                    Err(_) => self.undecodable += 1,
                }
            }
            _ => {}
        }
    }

    fn take(&mut self, record: DeliveryLogRecord, (partition, offset): (i32, i64)) {
        if self
            .query
            .destination
            .is_none_or(|d| d == record.destination_id)
            && newest_change_ms(&record) > self.erased_up_to
        {
            self.entries.push(entry(record, partition, offset));
        }
    }
}

/// A user's part of an attempt's record, with the attempt's fields: the user's record.
fn user_record(attempt: &DeliveryLogAttempt, user: DeliveryLogRecord) -> DeliveryLogRecord {
    DeliveryLogRecord {
        destination_id: attempt.destination_id,
        process_time_unix_ms: attempt.process_time_unix_ms,
        idempotency_key: attempt.idempotency_key.clone(),
        attempt: attempt.attempt,
        http_status: attempt.http_status,
        error_class: attempt.error_class,
        error: attempt.error.clone(),
        response: attempt.response.clone(),
        worker: attempt.worker.clone(),
        time_unix_ms: attempt.time_unix_ms,
        delivered: attempt.delivered,
        batch_users: attempt.batch_users,
        ..user
    }
}

/// The latest `DateTime` among a record's segments.
fn newest_change_ms(record: &DeliveryLogRecord) -> i64 {
    record
        .segments
        .iter()
        .map(|s| s.time_unix_ms)
        .max()
        .unwrap_or(i64::MIN)
}

fn entry(record: DeliveryLogRecord, partition: i32, offset: i64) -> Entry {
    let class = record.error_class();
    let outcome = if record.delivered {
        "delivered".to_owned()
    } else if class == ErrorClass::HttpStatus || class == ErrorClass::RateLimited {
        format!("HTTP {}", record.http_status)
    } else {
        let name = class.as_str_name().trim_start_matches("ERROR_CLASS_");
        format!("{}: {}", name.to_ascii_lowercase(), record.error)
    };
    Entry {
        time: rfc3339(record.time_unix_ms),
        time_unix_ms: record.time_unix_ms,
        newest_change_ms: newest_change_ms(&record),
        destination: record.destination_id,
        attempt: record.attempt,
        outcome,
        http_status: (record.http_status > 0).then_some(record.http_status),
        segments: record
            .segments
            .iter()
            .map(|s| SegmentEntry {
                segment_id: s.partner_segment_id.clone(),
                status: if s.active { "1" } else { "0" },
                date_time: rfc3339(s.time_unix_ms),
            })
            .collect(),
        partner_uuids: record.partner_uuids,
        regions: record.regions,
        process_time: rfc3339(record.process_time_unix_ms),
        idempotency_key: record.idempotency_key,
        response: String::from_utf8_lossy(&record.response).into_owned(),
        worker: record.worker,
        batch_users: record.batch_users,
        partition,
        offset,
    }
}

/// The entries as a table, one line per attempt, newest last.
pub fn render(user: &str, entries: &[Entry]) -> String {
    let mut out = String::new();
    if entries.is_empty() {
        let _ = writeln!(out, "no delivery log records for {user}");
        return out;
    }
    let _ = writeln!(
        out,
        "{:<24}  {:>11}  {:>7}  {:<14}  {:<32}  {:<16}  response",
        "time", "destination", "attempt", "outcome", "segments (Segment_ID=Status)", "partner ids"
    );
    for e in entries {
        let segments: Vec<String> = e
            .segments
            .iter()
            .map(|s| format!("{}={}", s.segment_id, s.status))
            .collect();
        let partner_ids = if e.partner_uuids.is_empty() {
            "\"\"".to_owned()
        } else {
            e.partner_uuids.join(",")
        };
        let response: String = e
            .response
            .chars()
            .take(40)
            .collect::<String>()
            .replace('\n', " ");
        let _ = writeln!(
            out,
            "{:<24}  {:>11}  {:>7}  {:<14}  {:<32}  {:<16}  {}",
            e.time,
            e.destination,
            e.attempt,
            e.outcome,
            segments.join(" "),
            partner_ids,
            response
        );
    }
    let last = &entries[entries.len() - 1];
    let _ = writeln!(
        out,
        "{} records; last: key {} by {} (ProcessTime {}, {} users in the request)",
        entries.len(),
        last.idempotency_key,
        last.worker,
        last.process_time,
        last.batch_users
    );
    out
}
