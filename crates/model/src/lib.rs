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

pub mod partner;

pub use pb::{
    ChangeReason, DeadLetterRecord, ErrorClass, Origin, PartnerIds, SegmentChange, SegmentStatus,
    SegmentStatusUpdate, SourcePosition, TraitEvent, UserState,
};

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

#[cfg(test)]
mod tests;
