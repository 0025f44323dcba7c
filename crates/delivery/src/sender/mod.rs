//! A body → one destination over HTTPS: authentication, timeout per attempt, success only for
//! the destination's success codes, one retry (by default) with jitter, the circuit breaker,
//! the rate limit, and the metrics of every attempt.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use model::ErrorClass;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{Auth, HmacSigner, OAuthTokenSource};
use crate::circuit::Circuit;
use crate::config::{AuthConfig, DestinationConfig};
use crate::delivery_log::AttemptReport;
use crate::metrics::DestinationMetrics;
use crate::offsets::Sending;

mod pace;
mod request;
#[cfg(test)]
mod tests;

pub(crate) use request::error_chain;
use request::{Answer, Attempt};
#[cfg(test)]
pub(crate) use request::{RequestError, bare_post_error, one_destination};
pub use request::{USER_AGENT, http_client, parse_retry_after, request_headers};

/// Why a batch was not delivered, after its last attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: ErrorClass,
    /// The last error, without URLs, secrets or tokens.
    pub error: String,
    pub attempts: u32,
    pub first_attempt_unix_ms: i64,
    pub last_attempt_unix_ms: i64,
    /// Trying again cannot help: the partner answered one of the destination's
    /// `permanent_codes`, or the batch is larger than it accepts. Anything else is transient.
    pub permanent: bool,
    /// When trying again makes sense at the earliest: the partner's `Retry-After`, or the end
    /// of the circuit's cool-down.
    pub not_before: Option<Instant>,
}

#[derive(Debug, thiserror::Error)]
pub enum SenderBuildError {
    #[error("destination {id}: ca_file `{path}`: {reason}")]
    CaFile {
        id: u64,
        path: String,
        reason: String,
    },
    #[error("destination {id}: cannot build an HTTPS client: {0}", id = .1)]
    Client(reqwest::Error, u64),
    #[error("destination {0}: cannot set up TLS: {1}")]
    Tls(u64, String),
    #[error("destination {0}: url: {1}")]
    Url(u64, String),
}

/// Everything needed to send to one destination, shared by all its lanes (and by the
/// real-time and batch pipelines): one connection pool, one token cache, one circuit.
#[derive(Debug)]
pub struct DestinationSender {
    pub config: Arc<DestinationConfig>,
    /// The client of its batches, and the `url` in the form it takes (parsed once).
    partner: request::PartnerClient,
    uri: hyper::Uri,
    auth: Auth,
    circuit: Circuit,
    /// `rate_limit_rps` is for the whole cluster: this worker's share, by the real-time
    /// input partitions it owns (replaced at each rebalance, see [`Self::set_rate_share`]).
    rate_limiter: std::sync::Mutex<Option<Arc<DefaultDirectRateLimiter>>>,
    /// Real-time sends waiting for a rate-limit token, and a signal when none is left: a batch
    /// send takes a token only while this is zero (see [`Priority`]).
    real_time_waiting: std::sync::atomic::AtomicUsize,
    real_time_served: tokio::sync::Notify,
    /// Until when the partner asked (429 with `Retry-After`) not to be sent anything.
    paused_until: std::sync::Mutex<Option<Instant>>,
    /// Counts the times the destination recovered (its circuit closed), so lanes waiting out
    /// a backoff start again at once.
    recovered: watch::Sender<u64>,
    /// Counts the batches the destination's lanes took from their queues: a destination
    /// whose queue is full but that takes batches is busy, one that took none while the
    /// shared consumer waited [`Self::stuck_after`] is stuck (see `consumer::route`).
    progress: std::sync::atomic::AtomicU64,
    /// A moving average of the destination's request time (ms): a lane that is merely busy
    /// takes its next batch within a few of these.
    request_ms: std::sync::atomic::AtomicU64,
    /// The destination's last request time (ms): a partner that just turned slow is slow
    /// from its first slow answer on, before the average follows.
    last_request_ms: std::sync::atomic::AtomicU64,
    pub metrics: DestinationMetrics,
    /// Where each attempt is recorded per user; `None` when the destination's log is off.
    pub log: Option<Arc<crate::delivery_log::DeliveryLog>>,
}

/// Which lane a send comes from. Both share the destination's rate limit, and the batch lane
/// (onboarded data, catch-up of the batch topic, replays) takes a token only while no
/// real-time send waits for one: an onboarding never slows real time down to the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    RealTime,
    Batch,
}

impl DestinationSender {
    pub fn new(
        config: Arc<DestinationConfig>,
        metrics: DestinationMetrics,
        log: Option<Arc<crate::delivery_log::DeliveryLog>>,
    ) -> Result<Self, SenderBuildError> {
        let (clients, _built) = request::shared_clients(&config)?;
        let uri = hyper::Uri::try_from(config.url.as_str())
            .map_err(|e| SenderBuildError::Url(config.id, e.to_string()))?;
        let auth = match &config.auth {
            AuthConfig::None => Auth::None,
            AuthConfig::Hmac(hmac) => Auth::Hmac(HmacSigner::new(hmac.clone())),
            AuthConfig::OAuth2(oauth) => Auth::OAuth2(OAuthTokenSource::new(
                oauth.clone(),
                clients.token,
                config.timeout,
                metrics.oauth_token_ok.clone(),
                metrics.oauth_token_error.clone(),
            )),
        };
        let circuit = Circuit::new(config.circuit, metrics.circuit_open.clone());
        let rate_limiter = std::sync::Mutex::new(
            config
                .rate_limit_rps
                .map(|rps| Arc::new(RateLimiter::direct(Quota::per_second(rps)))),
        );
        Ok(Self {
            config,
            partner: clients.partner,
            uri,
            auth,
            circuit,
            rate_limiter,
            real_time_waiting: std::sync::atomic::AtomicUsize::new(0),
            real_time_served: tokio::sync::Notify::new(),
            paused_until: std::sync::Mutex::new(None),
            recovered: watch::Sender::new(0),
            progress: std::sync::atomic::AtomicU64::new(0),
            request_ms: std::sync::atomic::AtomicU64::new(0),
            last_request_ms: std::sync::atomic::AtomicU64::new(0),
            metrics,
            log,
        })
    }

    /// A lane took events from its queue: the destination is making progress.
    pub fn note_progress(&self) {
        self.progress
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Changes whenever a lane of the destination takes events from its queue.
    pub fn progress_mark(&self) -> u64 {
        self.progress.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn note_request_time(&self, took: Duration) {
        let sample = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        let average = self.request_ms.load(std::sync::atomic::Ordering::Relaxed);
        let next = if average == 0 {
            sample.max(1)
        } else {
            (average - average / 8 + sample / 8).max(1)
        };
        self.request_ms
            .store(next, std::sync::atomic::Ordering::Relaxed);
        self.last_request_ms
            .store(sample.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// How long a full destination may take no batch before it counts as stuck: three of its
    /// recent request times, at least `detach_after` and at most its timeout (a request takes
    /// no longer); before its first request finished, its timeout.
    pub fn stuck_after(&self) -> Duration {
        let most = self.longest_wait();
        match self.request_ms.load(std::sync::atomic::Ordering::Relaxed) {
            0 => most,
            ms => (Duration::from_millis(ms) * 3).clamp(self.config.detach_after, most),
        }
    }

    /// Whether the destination's requests are so slow that waiting for it cannot be told from
    /// its being stuck: three of its recent request times, or three times its last one, reach
    /// its timeout (before its first request finished, too). A partner answering just under
    /// its timeout is slow from its first such answer; one whose single request took long is
    /// slow only until its next request comes back quickly.
    pub fn is_slow(&self) -> bool {
        let most = self.longest_wait();
        let last = self
            .last_request_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        self.stuck_after() >= most || Duration::from_millis(last) * 3 >= most
    }

    /// The longest the shared consumer waits for a full destination: its timeout (a request
    /// takes no longer), or `detach_after` if that is longer.
    fn longest_wait(&self) -> Duration {
        self.config.timeout.max(self.config.detach_after)
    }

    /// A receiver that changes each time the destination recovers (its circuit closes).
    pub fn recoveries(&self) -> watch::Receiver<u64> {
        self.recovered.subscribe()
    }

    /// Sends `json` (the uncompressed body) until it succeeds or the retries are spent;
    /// `on_attempt` hears how each attempt ended (the delivery log). `hold` holds the batch's
    /// input partitions for each attempt and lets them go while the send waits and when it
    /// fails; after the attempt the partner accepted they stay held, until the caller finished
    /// the batch's events ([`Sending::finish`]). When one was revoked meanwhile, the send
    /// stops before the attempt with a transient failure (the caller, which asked `hold`,
    /// tells it apart; the circuit does not count it).
    pub async fn send(
        &self,
        json: Vec<u8>,
        idempotency_key: &str,
        priority: Priority,
        on_attempt: &mut (dyn FnMut(&AttemptReport<'_>) + Send),
        hold: &mut Sending,
    ) -> Result<(), Failure> {
        let first_attempt_unix_ms = telemetry::clock::unix_ms();
        if !self.circuit.allow() {
            return Err(Failure {
                class: ErrorClass::CircuitOpen,
                error: format!(
                    "circuit open: {} batches in a row failed; next probe after the cool-down",
                    self.config.circuit.failure_threshold
                ),
                attempts: 0,
                first_attempt_unix_ms,
                last_attempt_unix_ms: first_attempt_unix_ms,
                permanent: false,
                not_before: self.circuit.open_until(),
            });
        }
        let signatures: Vec<_> = match &self.auth {
            Auth::Hmac(signer) => signer.headers(&json).collect(),
            Auth::None | Auth::OAuth2(_) => Vec::new(),
        };
        let body = Bytes::from(if self.config.gzip { gzip(&json) } else { json });

        let attempts = 1 + self.config.retries;
        let mut last = (ErrorClass::Unspecified, String::new(), None);
        for attempt in 1..=attempts {
            hold.let_go();
            if attempt > 1 {
                tokio::time::sleep(jittered(self.config.retry_backoff)).await;
            }
            self.wait_while_paused().await;
            let limiter = self
                .rate_limiter
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            if let Some(limiter) = limiter {
                self.take_token(&limiter, priority).await;
            }
            if !hold.hold() {
                let now = telemetry::clock::unix_ms();
                return Err(Failure {
                    class: last.0,
                    error: "an input partition of the batch was revoked before the attempt"
                        .to_owned(),
                    attempts: attempt - 1,
                    first_attempt_unix_ms,
                    last_attempt_unix_ms: now,
                    permanent: false,
                    not_before: None,
                });
            }
            if attempt > 1 {
                self.metrics.retries.inc();
            }
            let mut answer = Answer::none();
            let outcome = self
                .attempt(&body, idempotency_key, &signatures, &mut answer)
                .await;
            let (class, error) = match &outcome {
                Attempt::Success => (ErrorClass::Unspecified, ""),
                Attempt::Retry { class, error, .. } => (*class, error.as_str()),
            };
            on_attempt(&AttemptReport {
                attempt,
                http_status: answer.status,
                class,
                error,
                response: &answer.head[..answer.head_len],
                delivered: matches!(outcome, Attempt::Success),
            });
            match outcome {
                Attempt::Success => {
                    if self.circuit.record_success() {
                        tracing::info!(
                            destination = self.config.id,
                            "Destination answers again; circuit closed."
                        );
                        self.recovered.send_modify(|n| *n += 1);
                    }
                    return Ok(());
                }
                Attempt::Retry {
                    class,
                    error,
                    status,
                } => last = (class, error, status),
            }
        }
        hold.let_go();
        let (class, error, status) = last;
        let permanent = class == ErrorClass::HttpStatus
            && status.is_some_and(|s| self.config.permanent_codes.contains(&s));
        // A partner that asks to slow down is not failing: 429 does not count toward the
        // circuit (its Retry-After pauses the destination instead).
        if class != ErrorClass::RateLimited && self.circuit.record_failure() {
            tracing::warn!(
                destination = self.config.id,
                cooldown_ms = self.config.circuit.cooldown.as_millis() as u64,
                "Destination keeps failing; circuit opened: its batches wait (in Kafka) until a probe succeeds."
            );
        }
        Err(Failure {
            class,
            error,
            attempts,
            first_attempt_unix_ms,
            last_attempt_unix_ms: telemetry::clock::unix_ms(),
            permanent,
            not_before: self.paused_until(),
        })
    }
}

/// Between half and one and a half times `base`, so retries of many lanes spread out.
pub(crate) fn jittered(base: Duration) -> Duration {
    base.mul_f64(0.5 + fastrand::f64())
}

/// The body sent for `json` with `gzip: true` (the JSON itself is what is signed).
pub(crate) fn gzip(json: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(json.len() / 4), Compression::fast());
    // Writing to a Vec cannot fail.
    let _ = encoder.write_all(json);
    encoder.finish().unwrap_or_default()
}
