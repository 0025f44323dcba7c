//! segment-relay delivery: consumes segment status changes from Kafka, batches them per
//! partner destination and POSTs them as signed JSON over HTTPS, at least once, in order per
//! user, with retries, a dead-letter topic and a circuit breaker per destination.
//!
//! One file per stage of an event's way through the service:
//! [`config`] → [`consumer`] → [`router`] → [`batcher`] → [`payload`] → [`auth`] →
//! [`sender`] → [`dead_letter`], with [`offsets`] deciding what may be committed.

pub mod audit;
pub mod auth;
pub mod batcher;
pub mod catch_up;
pub mod check_connect;
pub mod circuit;
pub mod coalesced;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod delivery_log;
pub mod lane;
pub mod metrics;
pub mod offsets;
pub mod order;
pub mod payload;
pub mod render;
pub mod replay;
pub mod resync;
pub mod router;
pub mod sender;
pub mod service;
pub mod tls;
pub mod tls_explain;
