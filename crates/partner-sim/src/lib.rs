//! partner-sim: a real HTTPS partner endpoint for segment-relay — and for partners testing
//! their own endpoint. It checks the outbound contract (`docs/PARTNER-CONTRACT.md`) with its
//! own code: the body's shape and types, `User_count`, the date format, the HMAC signature or
//! the OAuth bearer token it issued. It answers a violation with `400` and counts it by
//! reason, injects latency, errors and outages, and records what it accepted: requests, users,
//! segment entries, duplicates by `Idempotency-Key`, order violations per user.

pub mod auth;
pub mod config;
pub mod contract;
pub mod server;
pub mod tls;
