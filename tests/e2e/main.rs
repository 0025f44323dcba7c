//! End-to-end tests: the real binaries against the real broker (`make kafka-up`) and a real
//! HTTPS receiver. Every test uses its own topics and consumer groups.

#![allow(clippy::unwrap_used)] // Test code: a panic is the failure report.

mod consumer_lag;
mod delivery;
mod erasure;
mod kafka_block;
mod kafka_roundtrip;
mod ledger;
mod liveness;
mod partner_ids;
mod pipeline;
mod qualifier;
mod read_bounds;
mod tree;
mod wait;
