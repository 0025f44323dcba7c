//! segment-relay qualifier: evaluates segment rules over users' trait events and publishes
//! every change of segment status, exactly once within Kafka.

pub mod config;
pub mod evaluate;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod processor;
pub mod rules;
pub mod service;
pub mod show;
pub mod store;
pub mod topics;
