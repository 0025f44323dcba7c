//! Domain types shared by segment-relay's services.
//!
//! [`pb`] holds the protobuf messages carried on Kafka topics, generated at build time from
//! `proto/` (the only source of truth for bytes on topics). Field numbers there are frozen once
//! released: see the header of each `.proto` file. [`partner`] is the JSON body partners
//! receive.

/// Protobuf messages of the `segment_relay.v1` package.
pub mod pb {
    #![allow(
        missing_docs,
        clippy::all,
        clippy::pedantic,
        missing_debug_implementations
    )]
    include!(concat!(env!("OUT_DIR"), "/segment_relay.v1.rs"));
}

pub mod changelog;
pub mod partner;
#[cfg(any(test, feature = "proptest"))]
pub mod strategies;

use prost::Message as _;

pub use pb::{
    ChangeReason, DeadLetterRecord, DeliveryLogAttempt, DeliveryLogRecord, ErrorClass,
    LoggedSegment, Origin, PartnerIds, SegmentChange, SegmentStatus, SegmentStatusUpdate,
    SourcePosition, TraitEvent, TraitHistory, TraitPart, UserState,
};

/// Milliseconds since the Unix epoch as RFC 3339 in UTC with exactly three fractional digits
/// (`2026-11-29T10:00:00.250Z`), so that printed times line up and sort as text; a time out
/// of range prints as its number.
pub fn rfc3339_ms(unix_ms: i64) -> String {
    const FORMAT: &[time::format_description::BorrowedFormatItem<'_>] = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000)
        .ok()
        .and_then(|t| t.format(FORMAT).ok())
        .unwrap_or_else(|| format!("{unix_ms} ms since 1970"))
}

/// RFC 3339 text (`2026-11-28T10:00:00Z`, any offset, any fraction) as milliseconds since the
/// Unix epoch: the inverse of [`rfc3339_ms`], for every time a user writes (events, command
/// flags). The error says what was expected.
pub fn unix_ms_from_rfc3339(text: &str) -> Result<i64, String> {
    let time = time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339)
        .map_err(|e| format!("not an RFC 3339 time like 2026-11-28T10:00:00Z ({e})"))?;
    i64::try_from(time.unix_timestamp_nanos() / 1_000_000).map_err(|_| "out of range".to_owned())
}

impl SegmentChange {
    /// The user qualified for `segment_id` at `time_unix_ms` (status 1).
    pub fn qualified(segment_id: u64, time_unix_ms: i64) -> Self {
        Self {
            segment_id,
            status: SegmentStatus::Active as i32,
            reason: ChangeReason::Qualified as i32,
            time_unix_ms,
        }
    }

    /// The user left `segment_id` for `reason` at `time_unix_ms` (status 0).
    pub fn unsegmented(segment_id: u64, reason: ChangeReason, time_unix_ms: i64) -> Self {
        Self {
            segment_id,
            status: SegmentStatus::Inactive as i32,
            reason: reason as i32,
            time_unix_ms,
        }
    }
}

/// The most bytes a dead-letter record (key and value) may take: below the 1 MB message limit
/// of Kafka's producers and brokers by default, with room for the record's other fields.
pub const MAX_DEAD_LETTER_BYTES: usize = 900 * 1024;

/// The longest Kafka key kept on a dead-letter record of undecodable input.
pub const MAX_DEAD_LETTER_KEY_BYTES: usize = 1024;

impl DeadLetterRecord {
    /// Makes a record of undecodable input fit in [`MAX_DEAD_LETTER_BYTES`] and returns the
    /// key to write it with: a key longer than [`MAX_DEAD_LETTER_KEY_BYTES`] is replaced by
    /// none, and when the input's `raw` bytes do not fit they are left out; `error` says what
    /// was left out, and `source` still tells where the message is on the input topic.
    /// Without this, a near-1 MB input message makes a dead-letter record the producer
    /// refuses, for ever.
    pub fn fit_undecodable<'k>(&mut self, key: &'k [u8]) -> &'k [u8] {
        let key = if key.len() > MAX_DEAD_LETTER_KEY_BYTES {
            self.error = format!(
                "{}; the key ({} bytes) is too long to keep",
                self.error,
                key.len()
            );
            &[]
        } else {
            key
        };
        if key.len() + self.encoded_len() > MAX_DEAD_LETTER_BYTES {
            let dropped = std::mem::take(&mut self.raw).len();
            self.error = format!(
                "{}; the message ({dropped} bytes) is too large to keep in the dead-letter record: read it at its source position",
                self.error
            );
        }
        key
    }
}

#[cfg(test)]
mod tests;
