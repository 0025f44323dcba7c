//! `destinations.yaml`: parsed strictly (unknown keys are errors), then validated into a
//! [`DeliveryConfig`] in one pass that reports every problem at once, each naming the file,
//! the key and the fix. Only a validated config can be built into a running service.
//!
//! This file holds the validated types and [`DeliveryConfig::load`]; the file as written is
//! in `raw`, the `kafka:` block in `kafka`, destinations in `validate`, their tunable keys in
//! `tuning`, and URLs, secrets and auth in `auth`.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use telemetry::Secret;
use telemetry::watch::Files;

mod auth;
mod kafka;
mod raw;
mod tuning;
mod validate;

pub use kafka::KafkaConfig;
use raw::RawFile;
use validate::validate;

/// Our segment id → the partner's `Segment_ID` ([`DestinationConfig::segments`]).
pub type SegmentMap = HashMap<u64, Arc<str>, foldhash::fast::RandomState>;

/// Everything delivery needs, validated.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub kafka: KafkaConfig,
    pub destinations: Vec<Arc<DestinationConfig>>,
    /// The bytes all lanes of the worker may hold, shared by its destinations
    /// (`queue_budget_mb`; default 16 MiB, or 40 KiB per destination when that is more: see
    /// `budget`).
    pub queue_budget_bytes: usize,
    /// The config file and every file it names (secrets, `ca_file`), with the bytes this
    /// config was made from: the service watches them, so a rotated secret applies like an
    /// edited config.
    pub files: Files,
}

/// One partner destination.
#[derive(Debug, PartialEq, Eq)]
pub struct DestinationConfig {
    /// `AAM_Destination_Id`: the id the partner assigned.
    pub id: u64,
    /// A name for logs; defaults to the id.
    pub name: String,
    /// Where batches are POSTed: `https://` (`http://` only with `dangerous_allow_http`).
    pub url: reqwest::Url,
    /// `Client_ID`.
    pub client_id: String,
    /// `User_DPID`.
    pub user_dpid: u64,
    /// Whose synced ids fill `DataPartner_UUID`; none → `""`.
    pub data_partner: Option<u64>,
    /// Our segment id → the partner's `Segment_ID`; each `Segment_ID` from one of ours.
    /// Looked up for every change a batch takes: hashed (foldhash; the ids are ours), where a
    /// search of a tree was 1 % of a drain.
    pub segments: SegmentMap,
    /// How requests show they are ours. Default none (logged at WARN on every start).
    pub auth: AuthConfig,
    /// Extra trust root (PEM) for the partner's certificate, besides the system roots.
    /// Default none.
    pub ca_file: Option<PathBuf>,
    /// The content of `ca_file` this config was made from: a rotated bundle is a changed
    /// config, so the destination's sender is rebuilt with it.
    pub ca_pem: Option<Vec<u8>>,
    /// `dangerous_allow_http`: the destination URL and the OAuth token URL may be plain
    /// `http://` (no TLS at all). For tests and local demos only; logged at WARN on every
    /// start. Default false. Nothing else turns certificate verification off.
    pub dangerous_allow_http: bool,
    /// Requests per second at most, for the whole cluster; `None` = unlimited. Default
    /// unlimited (`rate_limit_rps: 0`).
    pub rate_limit_rps: Option<std::num::NonZeroU32>,
    /// Compress bodies with gzip (`Content-Encoding: gzip`); the uncompressed JSON is signed.
    /// Default false.
    pub gzip: bool,
    /// Send the destination every current membership of its segments once, in the background,
    /// when it first appears (see `resync::backfill`). Default false.
    pub backfill: bool,
    /// Per-attempt timeout. Default 3000 ms.
    pub timeout: Duration,
    /// Attempts after the first. Default 1.
    pub retries: u32,
    /// Base wait before a retry; the actual wait is jittered between half and one and a half
    /// times this. Default 200 ms.
    pub retry_backoff: Duration,
    /// HTTP statuses that mean success. Default `[200]`.
    pub success_codes: Vec<u16>,
    /// HTTP statuses that mean the partner will never accept the batch: it is dead-lettered
    /// after its retries and the destination moves on. Every other failure is transient: the
    /// destination pauses and tries the batch again. Default `[400, 413, 422]`.
    pub permanent_codes: Vec<u16>,
    /// Waits between attempts of a batch that failed transiently.
    pub backoff: Backoff,
    /// A change waiting longer than this (since the qualifier produced it) while its
    /// destination fails is dead-lettered, so the input topics' retention never drops it
    /// unseen. Default 3 days; keep it well below the input topics' retention (7 days).
    pub max_backlog_age: Duration,
    pub batch: BatchLimits,
    /// Concurrent requests; each user always goes through the same one of these lanes, so
    /// their order holds. Default 4.
    pub max_in_flight: usize,
    /// Events buffered per lane; when a lane is full the destination falls back to reading
    /// the input on its own (see `consumer`). Default 2000.
    pub queue_capacity: usize,
    /// A destination whose queue is full and whose lanes took no batch for this long (or
    /// three of its recent request times, if longer, up to its timeout) is stuck: it detaches and
    /// reads on its own. One that took a batch more recently is busy, and the shared consumer
    /// waits for it (backpressure, as when all keep up). Default 250 ms: a destination that
    /// stops answering holds the others back about that long, once.
    pub detach_after: Duration,
    pub circuit: CircuitConfig,
    /// Record each request attempt, per user, on the delivery log topic. Default true (off
    /// for every destination when `kafka.delivery_log_topic` is `""`).
    pub delivery_log: bool,
}

impl DestinationConfig {
    /// Whether `update` is for this destination's data partner: every update is, except a
    /// targeted one (`only_data_partner_id`) for another data partner's ids.
    pub fn takes(&self, update: &crate::update::Update) -> bool {
        update
            .only_data_partner_id()
            .is_none_or(|only| self.data_partner == Some(only))
    }
}

/// When a batch is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Distinct users per request. Default 1000.
    pub max_users: usize,
    /// Body bytes per request (uncompressed JSON). Default 1 MiB.
    pub max_bytes: usize,
    /// How long the first event of a batch may wait for more. Default 250 ms.
    pub linger: Duration,
}

/// Capped exponential waits between attempts of a batch that keeps failing transiently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait. Default 1 s.
    pub initial: Duration,
    /// The longest wait. Default 60 s.
    pub max: Duration,
}

/// When a destination is cut off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitConfig {
    /// Consecutive failed batches (after retries) that open the circuit. Default 5.
    pub failure_threshold: u32,
    /// How long it stays open before one probe batch is let through. Default 30 s.
    pub cooldown: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// No authentication (logged at WARN on every start).
    None,
    Hmac(HmacConfig),
    OAuth2(OAuthConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HmacAlgorithm {
    Md5,
    Sha1,
    Sha256,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HmacConfig {
    /// The shared secret key, from `key_env` or `key_file`.
    pub key: Secret,
    /// The header carrying the signature. Default `X-Signature`.
    pub header: String,
    /// Default sha256.
    pub algorithm: HmacAlgorithm,
    /// During a key rotation: the previous key, signing into `previous_header` too (default
    /// `X-Signature-Previous`).
    pub previous: Option<(Secret, String)>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthConfig {
    pub token_url: reqwest::Url,
    pub client_id: String,
    pub client_secret: Secret,
}

pub use telemetry::ConfigError;

/// What `destinations.yaml` holds, for error messages.
const WHAT: &str = "configuration";

impl DeliveryConfig {
    /// Reads, parses and validates `path`; secrets come from the process environment or files.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = ConfigError::read(path, WHAT)?;
        let mut config = Self::parse(path, &text, &|name| std::env::var(name).ok())?;
        config.files.record(path, Some(text.into_bytes()));
        Ok(config)
    }

    /// Parses and validates `text` (read from `path`), looking secrets up with `env`.
    pub fn parse(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        // No source snippet in parse errors: the line it quotes could be a secret written
        // inline by mistake (`key: …` instead of `key_env`); line, column and key remain.
        let options = serde_saphyr::options! { with_snippet: false };
        let raw: RawFile = serde_saphyr::from_str_with_options(text, options)
            .map_err(|e| ConfigError::new(path, WHAT, vec![e.to_string()]))?;
        let mut problems = Problems(Vec::new());
        let mut sources = Sources {
            env,
            files: Files::default(),
        };
        let config = validate(raw, &mut sources, &mut problems);
        if problems.0.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::new(path, WHAT, problems.0))
        }
    }
}

struct Problems(Vec<String>);

/// Where a config's secrets and files come from: the environment, and files read once each
/// while validating, whose bytes the config keeps (see [`DeliveryConfig::files`]).
struct Sources<'a> {
    env: &'a dyn Fn(&str) -> Option<String>,
    files: Files,
}

impl Problems {
    fn add(&mut self, key: &str, message: impl fmt::Display) {
        self.0.push(format!("{key}: {message}"));
    }
}

#[cfg(test)]
mod tests;
