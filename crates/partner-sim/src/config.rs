//! `partner-sim.yaml`: the endpoints one partner-sim process serves, what each expects
//! (signature or OAuth) and how it behaves (latency, errors, outage).
//!
//! ```yaml
//! endpoints:
//!   - path: /acme                 # where delivery POSTs
//!     destination_id: 423         # optional: the AAM_Destination_Id every body must carry
//!     auth:                       # optional; one of:
//!       hmac: { key_env: ACME_KEY, header: X-Signature, algorithm: sha1 }   # or key: "…" (test tool)
//!       # oauth2: { client_id: relay, client_secret_env: SECRET, token_path: /acme/token, token_ttl_s: 3600 }
//!     behaviour:
//!       latency_ms: [5, 50]       # uniform between the two
//!       error_rate: 0.2           # share of requests answered error_status
//!       error_status: 500
//!       outage: { after_s: 20, for_s: 10, status: 503 }   # every request in that window fails
//!       # delay_ms: 60000 answers each one that late (longer than delivery's timeout: a hang;
//!       # just under it with status: 200: a slow partner that accepts); retry_after_s: 2 adds
//!       # a Retry-After header (with status: 429)
//! ```

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    pub endpoints: Vec<EndpointConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointConfig {
    pub path: String,
    pub destination_id: Option<u64>,
    pub auth: Option<AuthConfig>,
    #[serde(default)]
    pub behaviour: Behaviour,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum AuthConfig {
    Hmac(HmacConfig),
    Oauth2(OAuthConfig),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    Md5,
    Sha1,
    Sha256,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HmacConfig {
    pub key: Option<String>,
    pub key_env: Option<String>,
    #[serde(default = "default_header")]
    pub header: String,
    #[serde(default = "default_algorithm")]
    pub algorithm: Algorithm,
}

fn default_header() -> String {
    "X-Signature".to_owned()
}

fn default_algorithm() -> Algorithm {
    Algorithm::Sha256
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: Option<String>,
    pub client_secret_env: Option<String>,
    pub token_path: String,
    /// Lifetime of issued tokens, in seconds (sent as `expires_in`).
    #[serde(default = "default_ttl")]
    pub token_ttl_s: u64,
}

fn default_ttl() -> u64 {
    3600
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Behaviour {
    /// Answer after a uniformly random delay in this range (ms).
    pub latency_ms: Option<(u64, u64)>,
    /// Share of requests (0–1) answered with `error_status`.
    #[serde(default)]
    pub error_rate: f64,
    #[serde(default = "default_error_status")]
    pub error_status: u16,
    pub outage: Option<Outage>,
}

fn default_error_status() -> u16 {
    500
}

/// From `after_s` seconds after start, for `for_s` seconds, every data request is answered
/// `status` (200: accepted as usual) after `delay_ms`, with `Retry-After: retry_after_s` if
/// set.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Outage {
    pub after_s: u64,
    pub for_s: u64,
    #[serde(default = "default_outage_status")]
    pub status: u16,
    #[serde(default)]
    pub delay_ms: u64,
    pub retry_after_s: Option<u64>,
}

fn default_outage_status() -> u16 {
    503
}

impl Behaviour {
    pub fn latency(&self, rng: &mut fastrand::Rng) -> Duration {
        match self.latency_ms {
            Some((low, high)) if high > low => Duration::from_millis(rng.u64(low..=high)),
            Some((low, _)) => Duration::from_millis(low),
            None => Duration::ZERO,
        }
    }

    /// The outage, while its window is open.
    pub fn outage_at(&self, since_start: Duration) -> Option<Outage> {
        self.outage.filter(|outage| {
            (Duration::from_secs(outage.after_s)
                ..Duration::from_secs(outage.after_s + outage.for_s))
                .contains(&since_start)
        })
    }

    /// The status forced by the outage window or the error rate, if any (an outage answering
    /// 200 forces nothing).
    pub fn forced_status(&self, since_start: Duration, rng: &mut fastrand::Rng) -> Option<u16> {
        if let Some(outage) = self.outage_at(since_start)
            && outage.status != 200
        {
            return Some(outage.status);
        }
        (self.error_rate > 0.0 && rng.f64() < self.error_rate).then_some(self.error_status)
    }
}

fn secret(inline: Option<&String>, env: Option<&String>, what: &str) -> anyhow::Result<String> {
    match (inline, env) {
        (Some(value), None) => Ok(value.clone()),
        (None, Some(var)) => std::env::var(var)
            .map_err(|_| anyhow::anyhow!("{what}: environment variable `{var}` is not set")),
        _ => anyhow::bail!("{what}: set exactly one of the inline value and its `_env` variable"),
    }
}

impl HmacConfig {
    pub fn key(&self) -> anyhow::Result<String> {
        secret(self.key.as_ref(), self.key_env.as_ref(), "hmac key")
    }
}

impl OAuthConfig {
    pub fn secret(&self) -> anyhow::Result<String> {
        secret(
            self.client_secret.as_ref(),
            self.client_secret_env.as_ref(),
            "oauth2 client_secret",
        )
    }
}

impl SimConfig {
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("{}: cannot read: {e}", path.display()))?;
        let config: Self = serde_saphyr::from_str(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        for (i, endpoint) in config.endpoints.iter().enumerate() {
            anyhow::ensure!(
                endpoint.path.starts_with('/'),
                "{}: endpoints[{i}].path must start with `/`",
                path.display()
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&endpoint.behaviour.error_rate),
                "{}: endpoints[{i}].behaviour.error_rate must be between 0 and 1",
                path.display()
            );
        }
        Ok(config)
    }
}
