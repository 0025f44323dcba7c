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

#[cfg(test)]
mod tests;
