//! `destinations.yaml`: parsed strictly (unknown keys are errors), then validated into a
//! [`DeliveryConfig`] in one pass that reports every problem at once, each naming the file,
//! the key and the fix. Only a validated config can be built into a running service.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use telemetry::Secret;
use telemetry::watch::Files;

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    kafka: RawKafka,
    #[serde(default)]
    defaults: RawTuning,
    #[serde(default)]
    destinations: Vec<RawDestination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKafka {
    group_id: Option<String>,
    batch_group_id: Option<String>,
    topic: Option<String>,
    batch_topic: Option<String>,
    dlq_topic: Option<String>,
    delivery_log_topic: Option<String>,
    session_timeout_ms: Option<u64>,
    commit_interval_ms: Option<u64>,
    drain_timeout_ms: Option<u64>,
}

/// Keys that `defaults:` sets for every destination and each destination may override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTuning {
    timeout_ms: Option<u64>,
    retries: Option<u32>,
    retry_backoff_ms: Option<u64>,
    success_codes: Option<Vec<u16>>,
    permanent_codes: Option<Vec<u16>>,
    backoff: Option<RawBackoff>,
    max_backlog_age_s: Option<u64>,
    batch: Option<RawBatch>,
    max_in_flight: Option<usize>,
    queue_capacity: Option<usize>,
    detach_after_ms: Option<u64>,
    circuit: Option<RawCircuit>,
    delivery_log: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBatch {
    max_users: Option<usize>,
    max_bytes: Option<usize>,
    linger_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    initial_ms: Option<u64>,
    max_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCircuit {
    failure_threshold: Option<u32>,
    cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDestination {
    id: Option<u64>,
    name: Option<String>,
    url: Option<String>,
    client_id: Option<Scalar>,
    user_dpid: Option<u64>,
    data_partner: Option<u64>,
    #[serde(default)]
    segments: BTreeMap<Scalar, Scalar>,
    auth: Option<RawAuth>,
    ca_file: Option<PathBuf>,
    #[serde(default)]
    dangerous_allow_http: bool,
    /// The key's old name, kept only to refuse it with the new name in the message (renamed
    /// on purpose, so that a config turning TLS off says so).
    allow_insecure_http: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    rate_limit_rps: u32,
    #[serde(default)]
    gzip: bool,
    #[serde(default)]
    backfill: bool,
    #[serde(flatten)]
    tuning: RawTuning,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    hmac: Option<RawHmac>,
    oauth2: Option<RawOauth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHmac {
    key_env: Option<String>,
    key_file: Option<PathBuf>,
    header: Option<String>,
    algorithm: Option<String>,
    previous_key_env: Option<String>,
    previous_key_file: Option<PathBuf>,
    previous_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOauth {
    token_url: Option<String>,
    client_id: Option<String>,
    client_id_env: Option<String>,
    client_id_file: Option<PathBuf>,
    client_secret_env: Option<String>,
    client_secret_file: Option<PathBuf>,
}

/// A YAML scalar that may be written as a number or a string (`14356` or `"14356"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Int(u64),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The validated config.

/// Everything delivery needs, validated.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    pub kafka: KafkaConfig,
    pub destinations: Vec<Arc<DestinationConfig>>,
    /// The config file and every file it names (secrets, `ca_file`), with the bytes this
    /// config was made from: the service watches them, so a rotated secret applies like an
    /// edited config.
    pub files: Files,
}

/// Topics, group and timing of the Kafka side (`kafka:`; every key optional).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// Consumer group of the real-time input, shared by every delivery process. Default
    /// `delivery`.
    pub group_id: String,
    /// Consumer group of the batch input. Default `<group_id>-batch`: a group of its own, so
    /// batch consumers joining or leaving never pause real-time consumption for a rebalance.
    pub batch_group_id: String,
    /// Real-time input. Default `segment-status`.
    pub topic: String,
    /// Offline/onboarded input, a lower-priority lane. Default `segment-status-batch`;
    /// `""` disables the lane.
    pub batch_topic: Option<String>,
    /// Where undeliverable events go. Default `segment-status-dlq`.
    pub dlq_topic: String,
    /// Where each request attempt is recorded per user (`delivery log`). Default
    /// `delivery-log`; `""` turns the delivery log off for every destination.
    pub delivery_log_topic: Option<String>,
    /// Consumer session timeout: how soon a crashed process's partitions move. Default 10 s.
    pub session_timeout: Duration,
    /// How often finished offsets are committed. Default 1 s.
    pub commit_interval: Duration,
    /// On SIGTERM, how long in-flight batches may take to finish before the process commits
    /// what is done and exits. Default 20 s (keep it below the pod's grace period).
    pub drain_timeout: Duration,
}

/// One partner destination.
#[derive(Debug, PartialEq, Eq)]
pub struct DestinationConfig {
    /// `AAM_Destination_Id`: the id the partner assigned.
    pub id: u64,
    /// A name for logs; defaults to the id.
    pub name: String,
    pub url: reqwest::Url,
    /// `Client_ID`.
    pub client_id: String,
    /// `User_DPID`.
    pub user_dpid: u64,
    /// Whose synced ids fill `DataPartner_UUID`; none → `""`.
    pub data_partner: Option<u64>,
    /// Our segment id → the partner's `Segment_ID`.
    pub segments: BTreeMap<u64, Arc<str>>,
    pub auth: AuthConfig,
    /// Extra trust root (PEM) for the partner's certificate, besides the system roots.
    pub ca_file: Option<PathBuf>,
    /// The content of `ca_file` this config was made from: a rotated bundle is a changed
    /// config, so the destination's sender is rebuilt with it.
    pub ca_pem: Option<Vec<u8>>,
    /// `dangerous_allow_http`: the destination URL and the OAuth token URL may be plain
    /// `http://` (no TLS at all). For tests and local demos only; logged at WARN on every
    /// start. Default false. Nothing else turns certificate verification off.
    pub dangerous_allow_http: bool,
    /// Requests per second at most; `None` = unlimited.
    pub rate_limit_rps: Option<std::num::NonZeroU32>,
    /// Compress bodies with gzip (`Content-Encoding: gzip`); the uncompressed JSON is signed.
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
    /// Record each request attempt per user on the delivery log topic. Default true (off
    /// for every destination when `kafka.delivery_log_topic` is `""`).
    pub delivery_log: bool,
}

impl DestinationConfig {
    /// Whether `update` is for this destination's data partner: every update is, except a
    /// targeted one (`only_data_partner_id`) for another data partner's ids.
    pub fn takes(&self, update: &model::SegmentStatusUpdate) -> bool {
        update
            .only_data_partner_id
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
    pub key: Secret,
    pub header: String,
    pub algorithm: HmacAlgorithm,
    /// During a key rotation: the previous key, signing into `previous_header` too.
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

fn validate(raw: RawFile, sources: &mut Sources<'_>, problems: &mut Problems) -> DeliveryConfig {
    let kafka = validate_kafka(raw.kafka, problems);
    if raw.destinations.is_empty() {
        problems.add(
            "destinations",
            "at least one destination is required (example: `destinations: [{ id: 423, url: https://…, … }]`)",
        );
    }
    let mut seen_ids = BTreeMap::new();
    let destinations = raw
        .destinations
        .into_iter()
        .enumerate()
        .map(|(i, raw_destination)| {
            let key = format!("destinations[{i}]");
            let destination =
                validate_destination(&key, raw_destination, &raw.defaults, sources, problems);
            if let Some(first) = seen_ids.insert(destination.id, i) {
                problems.add(
                    &format!("{key}.id"),
                    format!(
                        "{} is already the id of destinations[{first}]; ids must be unique",
                        destination.id
                    ),
                );
            }
            Arc::new(destination)
        })
        .collect();
    DeliveryConfig {
        kafka,
        destinations,
        files: std::mem::take(&mut sources.files),
    }
}

fn validate_kafka(raw: RawKafka, problems: &mut Problems) -> KafkaConfig {
    let mut name = |key: &str, value: Option<String>, default: &str| {
        let value = value.unwrap_or_else(|| default.to_owned());
        if value.trim().is_empty() {
            problems.add(
                &format!("kafka.{key}"),
                format!("must not be empty (default `{default}`)"),
            );
        }
        value
    };
    let group_id = name("group_id", raw.group_id, "delivery");
    let topic = name("topic", raw.topic, "segment-status");
    let dlq_topic = name("dlq_topic", raw.dlq_topic, "segment-status-dlq");
    let batch_group_id = raw
        .batch_group_id
        .unwrap_or_else(|| format!("{group_id}-batch"));
    if batch_group_id == group_id {
        problems.add(
            "kafka.batch_group_id",
            "must differ from kafka.group_id: one group per input keeps their rebalances apart",
        );
    }
    let optional = |value: Option<String>, default: &str| match value {
        None => Some(default.to_owned()),
        Some(t) if t.trim().is_empty() => None,
        Some(t) => Some(t),
    };
    let batch_topic = optional(raw.batch_topic, "segment-status-batch");
    let delivery_log_topic = optional(raw.delivery_log_topic, "delivery-log");
    let session_timeout_ms = raw.session_timeout_ms.unwrap_or(10_000);
    if !(6_000..=300_000).contains(&session_timeout_ms) {
        problems.add(
            "kafka.session_timeout_ms",
            format!(
                "must be between 6000 and 300000 (the broker's limits), got {session_timeout_ms}"
            ),
        );
    }
    let commit_interval_ms = raw.commit_interval_ms.unwrap_or(1_000);
    if !(10..=60_000).contains(&commit_interval_ms) {
        problems.add(
            "kafka.commit_interval_ms",
            format!("must be between 10 and 60000, got {commit_interval_ms}"),
        );
    }
    KafkaConfig {
        group_id,
        batch_group_id,
        topic,
        batch_topic,
        dlq_topic,
        delivery_log_topic,
        session_timeout: Duration::from_millis(session_timeout_ms),
        commit_interval: Duration::from_millis(commit_interval_ms),
        drain_timeout: Duration::from_millis(raw.drain_timeout_ms.unwrap_or(20_000)),
    }
}

fn validate_destination(
    key: &str,
    raw: RawDestination,
    defaults: &RawTuning,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> DestinationConfig {
    let id = raw.id.unwrap_or_else(|| {
        problems.add(
            &format!("{key}.id"),
            "required: the partner's AAM_Destination_Id (example: `id: 423`)",
        );
        0
    });
    if raw.allow_insecure_http.is_some() {
        problems.add(
            &format!("{key}.allow_insecure_http"),
            "this key was renamed to `dangerous_allow_http` (it turns TLS off for this destination and its token endpoint): write `dangerous_allow_http: true` only for tests and local demos, or remove the key",
        );
    }
    let dangerous_allow_http = raw.dangerous_allow_http;
    let url = parse_url(
        &format!("{key}.url"),
        raw.url.as_deref(),
        dangerous_allow_http,
        problems,
    );
    let client_id = raw.client_id.map(|c| c.to_string()).unwrap_or_else(|| {
        problems.add(
            &format!("{key}.client_id"),
            "required: the Client_ID the partner uses (example: `client_id: \"74323\"`)",
        );
        String::new()
    });
    let user_dpid = raw.user_dpid.unwrap_or_else(|| {
        problems.add(
            &format!("{key}.user_dpid"),
            "required: the device-ID namespace (20914 = Android GAID, 20915 = iOS IDFA)",
        );
        0
    });

    let mut segments = BTreeMap::new();
    if raw.segments.is_empty() {
        problems.add(
            &format!("{key}.segments"),
            "map at least one of our segment ids to the partner's Segment_ID (example: `segments: { \"14356\": \"99\" }`)",
        );
    }
    for (ours, theirs) in raw.segments {
        let ours_id = match &ours {
            Scalar::Int(n) => Some(*n),
            Scalar::Str(s) => s.trim().parse().ok(),
        };
        let theirs = theirs.to_string();
        match ours_id {
            Some(ours_id) if !theirs.trim().is_empty() => {
                segments.insert(ours_id, Arc::from(theirs.as_str()));
            }
            Some(_) => problems.add(
                &format!("{key}.segments.{ours}"),
                "the partner's Segment_ID must not be empty",
            ),
            None => problems.add(
                &format!("{key}.segments"),
                format!("`{ours}` is not one of our segment ids (an unsigned integer)"),
            ),
        }
    }

    let auth = match raw.auth {
        None => AuthConfig::None,
        Some(RawAuth {
            hmac: Some(_),
            oauth2: Some(_),
        }) => {
            problems.add(
                &format!("{key}.auth"),
                "set either `hmac` or `oauth2`, not both",
            );
            AuthConfig::None
        }
        Some(RawAuth {
            hmac: Some(hmac),
            oauth2: None,
        }) => AuthConfig::Hmac(validate_hmac(
            &format!("{key}.auth.hmac"),
            hmac,
            sources,
            problems,
        )),
        Some(RawAuth {
            hmac: None,
            oauth2: Some(oauth),
        }) => AuthConfig::OAuth2(validate_oauth(
            &format!("{key}.auth.oauth2"),
            oauth,
            dangerous_allow_http,
            sources,
            problems,
        )),
        Some(RawAuth {
            hmac: None,
            oauth2: None,
        }) => {
            problems.add(
                &format!("{key}.auth"),
                "set `hmac: {…}` or `oauth2: {…}`, or remove `auth`",
            );
            AuthConfig::None
        }
    };
    let ca_pem = raw
        .ca_file
        .as_deref()
        .and_then(|ca_file| match sources.files.read(ca_file) {
            Ok(pem) => Some(pem),
            Err(e) => {
                problems.add(
                    &format!("{key}.ca_file"),
                    format!("cannot read `{}`: {e}", ca_file.display()),
                );
                None
            }
        });

    let tuning = validate_tuning(key, &raw.tuning, defaults, problems);
    DestinationConfig {
        id,
        name: raw.name.unwrap_or_else(|| id.to_string()),
        url,
        client_id,
        user_dpid,
        data_partner: raw.data_partner,
        segments,
        auth,
        ca_file: raw.ca_file,
        ca_pem,
        dangerous_allow_http,
        rate_limit_rps: std::num::NonZeroU32::new(raw.rate_limit_rps),
        gzip: raw.gzip,
        backfill: raw.backfill,
        timeout: tuning.timeout,
        retries: tuning.retries,
        retry_backoff: tuning.retry_backoff,
        success_codes: tuning.success_codes,
        permanent_codes: tuning.permanent_codes,
        backoff: tuning.backoff,
        max_backlog_age: tuning.max_backlog_age,
        batch: tuning.batch,
        max_in_flight: tuning.max_in_flight,
        queue_capacity: tuning.queue_capacity,
        detach_after: tuning.detach_after,
        circuit: tuning.circuit,
        delivery_log: tuning.delivery_log,
    }
}

struct Tuning {
    timeout: Duration,
    retries: u32,
    retry_backoff: Duration,
    success_codes: Vec<u16>,
    permanent_codes: Vec<u16>,
    backoff: Backoff,
    max_backlog_age: Duration,
    batch: BatchLimits,
    max_in_flight: usize,
    queue_capacity: usize,
    detach_after: Duration,
    circuit: CircuitConfig,
    delivery_log: bool,
}

/// A destination's value for a tunable key, else `defaults:`'s, else the built-in default.
fn validate_tuning(
    key: &str,
    own: &RawTuning,
    defaults: &RawTuning,
    problems: &mut Problems,
) -> Tuning {
    let batch = |f: fn(&RawBatch) -> Option<u64>| {
        own.batch
            .as_ref()
            .and_then(f)
            .or_else(|| defaults.batch.as_ref().and_then(f))
    };
    let backoff = |f: fn(&RawBackoff) -> Option<u64>| {
        own.backoff
            .as_ref()
            .and_then(f)
            .or_else(|| defaults.backoff.as_ref().and_then(f))
    };
    let circuit = |f: fn(&RawCircuit) -> Option<u64>| {
        own.circuit
            .as_ref()
            .and_then(f)
            .or_else(|| defaults.circuit.as_ref().and_then(f))
    };
    let mut in_range =
        |name: &str, value: u64, range: std::ops::RangeInclusive<u64>, unit: &str| {
            if !range.contains(&value) {
                problems.add(
                    &format!("{key}.{name}"),
                    format!(
                        "must be between {} and {}{unit}, got {value}",
                        range.start(),
                        range.end()
                    ),
                );
            }
            value
        };

    let timeout_ms = in_range(
        "timeout_ms",
        own.timeout_ms.or(defaults.timeout_ms).unwrap_or(3_000),
        1..=600_000,
        " ms",
    );
    let retries = in_range(
        "retries",
        own.retries.or(defaults.retries).unwrap_or(1).into(),
        0..=10,
        "",
    );
    let retry_backoff_ms = in_range(
        "retry_backoff_ms",
        own.retry_backoff_ms
            .or(defaults.retry_backoff_ms)
            .unwrap_or(200),
        0..=60_000,
        " ms",
    );
    let backoff_initial_ms = in_range(
        "backoff.initial_ms",
        backoff(|b| b.initial_ms).unwrap_or(1_000),
        1..=600_000,
        " ms",
    );
    let backoff_max_ms = in_range(
        "backoff.max_ms",
        backoff(|b| b.max_ms).unwrap_or(60_000),
        1..=3_600_000,
        " ms",
    );
    let max_backlog_age_s = in_range(
        "max_backlog_age_s",
        own.max_backlog_age_s
            .or(defaults.max_backlog_age_s)
            .unwrap_or(3 * 86_400),
        1..=30 * 86_400,
        " s",
    );
    let max_users = in_range(
        "batch.max_users",
        batch(|b| b.max_users.map(|v| v as u64)).unwrap_or(1_000),
        1..=100_000,
        "",
    );
    let max_bytes = in_range(
        "batch.max_bytes",
        batch(|b| b.max_bytes.map(|v| v as u64)).unwrap_or(1 << 20),
        1_024..=(64 << 20),
        " bytes",
    );
    let linger_ms = in_range(
        "batch.linger_ms",
        batch(|b| b.linger_ms).unwrap_or(250),
        0..=60_000,
        " ms",
    );
    let max_in_flight = in_range(
        "max_in_flight",
        own.max_in_flight.or(defaults.max_in_flight).unwrap_or(4) as u64,
        1..=256,
        "",
    );
    let queue_capacity = in_range(
        "queue_capacity",
        own.queue_capacity
            .or(defaults.queue_capacity)
            .unwrap_or(2_000) as u64,
        1..=10_000_000,
        "",
    );
    let detach_after_ms = in_range(
        "detach_after_ms",
        own.detach_after_ms
            .or(defaults.detach_after_ms)
            .unwrap_or(250),
        0..=60_000,
        " ms",
    );
    let failure_threshold = in_range(
        "circuit.failure_threshold",
        circuit(|c| c.failure_threshold.map(u64::from)).unwrap_or(5),
        1..=1_000_000,
        "",
    );
    let cooldown_ms = in_range(
        "circuit.cooldown_ms",
        circuit(|c| c.cooldown_ms).unwrap_or(30_000),
        1..=3_600_000,
        " ms",
    );

    let success_codes = own
        .success_codes
        .clone()
        .or_else(|| defaults.success_codes.clone())
        .unwrap_or_else(|| vec![200]);
    if success_codes.is_empty() || success_codes.iter().any(|c| !(100..=599).contains(c)) {
        problems.add(
            &format!("{key}.success_codes"),
            format!("must list HTTP statuses (100–599), e.g. `[200]`; got {success_codes:?}"),
        );
    }

    if backoff_max_ms < backoff_initial_ms {
        problems.add(
            &format!("{key}.backoff.max_ms"),
            format!(
                "must be at least backoff.initial_ms ({backoff_initial_ms}), got {backoff_max_ms}"
            ),
        );
    }
    let permanent_codes = own
        .permanent_codes
        .clone()
        .or_else(|| defaults.permanent_codes.clone())
        .unwrap_or_else(|| vec![400, 413, 422]);
    if permanent_codes.iter().any(|c| !(100..=599).contains(c)) {
        problems.add(
            &format!("{key}.permanent_codes"),
            format!(
                "must list HTTP statuses (100–599), e.g. `[400, 413, 422]`; got {permanent_codes:?}"
            ),
        );
    }
    if let Some(code) = permanent_codes.iter().find(|c| success_codes.contains(c)) {
        problems.add(
            &format!("{key}.permanent_codes"),
            format!(
                "{code} is also a success code: a status is either success or permanent failure"
            ),
        );
    }
    if permanent_codes.contains(&429) {
        problems.add(
            &format!("{key}.permanent_codes"),
            "429 cannot be permanent: it asks to retry later (Retry-After is honoured)",
        );
    }

    Tuning {
        timeout: Duration::from_millis(timeout_ms),
        retries: u32::try_from(retries).unwrap_or(1),
        retry_backoff: Duration::from_millis(retry_backoff_ms),
        success_codes,
        permanent_codes,
        backoff: Backoff {
            initial: Duration::from_millis(backoff_initial_ms),
            max: Duration::from_millis(backoff_max_ms),
        },
        max_backlog_age: Duration::from_secs(max_backlog_age_s),
        batch: BatchLimits {
            max_users: usize::try_from(max_users).unwrap_or(1_000),
            max_bytes: usize::try_from(max_bytes).unwrap_or(1 << 20),
            linger: Duration::from_millis(linger_ms),
        },
        max_in_flight: usize::try_from(max_in_flight).unwrap_or(4),
        queue_capacity: usize::try_from(queue_capacity).unwrap_or(10_000),
        detach_after: Duration::from_millis(detach_after_ms),
        circuit: CircuitConfig {
            failure_threshold: u32::try_from(failure_threshold).unwrap_or(5),
            cooldown: Duration::from_millis(cooldown_ms),
        },
        delivery_log: own.delivery_log.or(defaults.delivery_log).unwrap_or(true),
    }
}

/// An `https://` URL, or `http://` when the destination sets `dangerous_allow_http`. A URL
/// must not carry credentials (`https://user:password@…`): they would bypass `auth` and the
/// secret handling, and reach logs and error messages with the URL. Error messages print the
/// URL without them.
fn parse_url(
    key: &str,
    url: Option<&str>,
    dangerous_allow_http: bool,
    problems: &mut Problems,
) -> reqwest::Url {
    let fallback =
        || reqwest::Url::parse("https://invalid.invalid/").unwrap_or_else(|_| unreachable!());
    let Some(text) = url else {
        problems.add(key, "required (example: `https://partner.example.com/aam`)");
        return fallback();
    };
    let url = match reqwest::Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            // The text itself is not echoed: an unparsable URL may still hold a password.
            problems.add(
                key,
                format!("not a URL ({e}); example: `https://partner.example.com/aam`"),
            );
            return fallback();
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        problems.add(
            key,
            format!(
                "must not contain a user name or password, got `{}`; put credentials in `auth` (from `*_env` or `*_file`)",
                without_credentials(&url)
            ),
        );
        return fallback();
    }
    match url.scheme() {
        "https" => url,
        "http" if dangerous_allow_http => url,
        "http" => {
            problems.add(
                key,
                format!(
                    "must be https (set `dangerous_allow_http: true` on the destination to allow plain http, for tests only), got `{url}`"
                ),
            );
            fallback()
        }
        _ => {
            problems.add(key, format!("must be an https URL, got `{url}`"));
            fallback()
        }
    }
}

fn without_credentials(url: &reqwest::Url) -> reqwest::Url {
    let mut url = url.clone();
    // Only URLs that cannot have credentials refuse these, and those have none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// A secret from `<name>_env` (an environment variable) or `<name>_file` (a file, e.g. a
/// Kubernetes secret mount; a trailing newline is dropped).
fn secret(
    key: &str,
    name: &str,
    from_env: Option<&str>,
    from_file: Option<&Path>,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> Option<Secret> {
    match (from_env, from_file) {
        (Some(_), Some(_)) => {
            problems.add(
                &format!("{key}.{name}_env"),
                format!("set either `{name}_env` or `{name}_file`, not both"),
            );
            None
        }
        (Some(var), None) => match (sources.env)(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None => {
                problems.add(
                    &format!("{key}.{name}_env"),
                    format!("environment variable `{var}` is not set or empty"),
                );
                None
            }
        },
        (None, Some(path)) => match sources.files.read(path).map(String::from_utf8) {
            Ok(Ok(value)) if !value.trim().is_empty() => {
                Some(Secret::new(value.trim_end_matches(['\r', '\n'])))
            }
            Ok(Err(_)) => {
                problems.add(
                    &format!("{key}.{name}_file"),
                    format!("`{}` is not UTF-8 text", path.display()),
                );
                None
            }
            Ok(Ok(_)) => {
                problems.add(
                    &format!("{key}.{name}_file"),
                    format!("`{}` is empty", path.display()),
                );
                None
            }
            Err(e) => {
                problems.add(
                    &format!("{key}.{name}_file"),
                    format!("cannot read `{}`: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

fn validate_hmac(
    key: &str,
    raw: RawHmac,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> HmacConfig {
    let signing_key = secret(
        key,
        "key",
        raw.key_env.as_deref(),
        raw.key_file.as_deref(),
        sources,
        problems,
    );
    if signing_key.is_none() && raw.key_env.is_none() && raw.key_file.is_none() {
        problems.add(
            &format!("{key}.key_env"),
            "required: the environment variable (or `key_file`) holding the shared secret key",
        );
    }
    let algorithm = match raw
        .algorithm
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("sha256") => HmacAlgorithm::Sha256,
        Some("sha1") => HmacAlgorithm::Sha1,
        Some("md5") => HmacAlgorithm::Md5,
        Some(other) => {
            problems.add(
                &format!("{key}.algorithm"),
                format!("must be md5, sha1 or sha256, got `{other}`"),
            );
            HmacAlgorithm::Sha256
        }
    };
    let header = raw.header.unwrap_or_else(|| "X-Signature".to_owned());
    check_header_name(&format!("{key}.header"), &header, problems);
    let previous_key = secret(
        key,
        "previous_key",
        raw.previous_key_env.as_deref(),
        raw.previous_key_file.as_deref(),
        sources,
        problems,
    );
    let previous = match (previous_key, raw.previous_header) {
        (Some(previous_key), header) => {
            let header = header.unwrap_or_else(|| "X-Signature-Previous".to_owned());
            check_header_name(&format!("{key}.previous_header"), &header, problems);
            Some((previous_key, header))
        }
        (None, Some(_)) => {
            if raw.previous_key_env.is_none() && raw.previous_key_file.is_none() {
                problems.add(
                    &format!("{key}.previous_header"),
                    "set only with `previous_key_env` or `previous_key_file`",
                );
            }
            None
        }
        (None, None) => None,
    };
    HmacConfig {
        key: signing_key.unwrap_or_else(|| Secret::new("")),
        header,
        algorithm,
        previous,
    }
}

fn check_header_name(key: &str, header: &str, problems: &mut Problems) {
    if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
        problems.add(key, format!("`{header}` is not a valid HTTP header name"));
    }
}

fn validate_oauth(
    key: &str,
    raw: RawOauth,
    dangerous_allow_http: bool,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> OAuthConfig {
    let token_url = parse_url(
        &format!("{key}.token_url"),
        raw.token_url.as_deref(),
        dangerous_allow_http,
        problems,
    );
    let client_id = match (
        raw.client_id,
        secret(
            key,
            "client_id",
            raw.client_id_env.as_deref(),
            raw.client_id_file.as_deref(),
            sources,
            problems,
        ),
    ) {
        (Some(_), Some(_)) => {
            problems.add(
                &format!("{key}.client_id"),
                "set one of `client_id`, `client_id_env`, `client_id_file`",
            );
            String::new()
        }
        (Some(id), None) => id,
        (None, Some(id)) => id.expose().to_owned(),
        (None, None) => {
            if raw.client_id_env.is_none() && raw.client_id_file.is_none() {
                problems.add(
                    &format!("{key}.client_id"),
                    "required: `client_id`, `client_id_env` or `client_id_file`",
                );
            }
            String::new()
        }
    };
    let client_secret = secret(
        key,
        "client_secret",
        raw.client_secret_env.as_deref(),
        raw.client_secret_file.as_deref(),
        sources,
        problems,
    );
    if client_secret.is_none()
        && raw.client_secret_env.is_none()
        && raw.client_secret_file.is_none()
    {
        problems.add(&format!("{key}.client_secret_env"), "required: the environment variable (or `client_secret_file`) holding the client secret");
    }
    OAuthConfig {
        token_url,
        client_id,
        client_secret: client_secret.unwrap_or_else(|| Secret::new("")),
    }
}

#[cfg(test)]
mod tests;
