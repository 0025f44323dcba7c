//! The file as written: `destinations.yaml`'s keys as serde reads them, every one optional
//! here so that validation can name each missing key instead of stopping at the first.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::kafka::RawKafka;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFile {
    #[serde(default)]
    pub(super) kafka: RawKafka,
    #[serde(default)]
    pub(super) defaults: RawTuning,
    pub(super) queue_budget_mb: Option<u64>,
    #[serde(default)]
    pub(super) destinations: Vec<RawDestination>,
}

/// Keys that `defaults:` sets for every destination and each destination may override.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTuning {
    pub(super) timeout_ms: Option<u64>,
    pub(super) retries: Option<u32>,
    pub(super) retry_backoff_ms: Option<u64>,
    pub(super) success_codes: Option<Vec<u16>>,
    pub(super) permanent_codes: Option<Vec<u16>>,
    pub(super) backoff: Option<RawBackoff>,
    pub(super) max_backlog_age_s: Option<u64>,
    pub(super) batch: Option<RawBatch>,
    pub(super) max_in_flight: Option<usize>,
    pub(super) queue_capacity: Option<usize>,
    pub(super) detach_after_ms: Option<u64>,
    pub(super) circuit: Option<RawCircuit>,
    pub(super) delivery_log: Option<bool>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBatch {
    pub(super) max_users: Option<usize>,
    pub(super) max_bytes: Option<usize>,
    pub(super) linger_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackoff {
    pub(super) initial_ms: Option<u64>,
    pub(super) max_ms: Option<u64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCircuit {
    pub(super) failure_threshold: Option<u32>,
    pub(super) cooldown_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    pub(super) id: Option<u64>,
    pub(super) name: Option<String>,
    pub(super) url: Option<String>,
    pub(super) client_id: Option<Scalar>,
    pub(super) user_dpid: Option<u64>,
    pub(super) data_partner: Option<u64>,
    #[serde(default)]
    pub(super) segments: BTreeMap<Scalar, Scalar>,
    pub(super) auth: Option<RawAuth>,
    pub(super) ca_file: Option<PathBuf>,
    #[serde(default)]
    pub(super) dangerous_allow_http: bool,
    /// The key's old name, kept only to refuse it with the new name in the message (renamed
    /// on purpose, so that a config turning TLS off says so).
    pub(super) allow_insecure_http: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub(super) rate_limit_rps: u32,
    #[serde(default)]
    pub(super) gzip: bool,
    #[serde(default)]
    pub(super) backfill: bool,
    #[serde(flatten)]
    pub(super) tuning: RawTuning,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawAuth {
    pub(super) hmac: Option<RawHmac>,
    pub(super) oauth2: Option<RawOauth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHmac {
    pub(super) key_env: Option<String>,
    pub(super) key_file: Option<PathBuf>,
    pub(super) header: Option<String>,
    pub(super) algorithm: Option<String>,
    pub(super) previous_key_env: Option<String>,
    pub(super) previous_key_file: Option<PathBuf>,
    pub(super) previous_header: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOauth {
    pub(super) token_url: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) client_id_env: Option<String>,
    pub(super) client_id_file: Option<PathBuf>,
    pub(super) client_secret_env: Option<String>,
    pub(super) client_secret_file: Option<PathBuf>,
}

/// A YAML scalar that may be written as a number or a string (`14356` or `"14356"`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(untagged)]
pub(super) enum Scalar {
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
