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
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::{Auth, HmacSigner, OAuthTokenSource};
use crate::circuit::Circuit;
use crate::config::{AuthConfig, DestinationConfig};
use crate::delivery_log::{AttemptReport, RESPONSE_BYTES};
use crate::metrics::{DestinationMetrics, RequestOutcome};

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

/// The most of a partner's response body that is read; the rest is dropped with the connection.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Retry or not, after one attempt.
enum Attempt {
    Success,
    Retry {
        class: ErrorClass,
        error: String,
        status: Option<u16>,
    },
}

/// What the partner answered to one attempt, for the delivery log: its status and the first
/// bytes of its body (kept inline: no allocation per request).
struct Answer {
    status: Option<u16>,
    head: [u8; RESPONSE_BYTES],
    head_len: usize,
}

impl Answer {
    fn none() -> Self {
        Self {
            status: None,
            head: [0; RESPONSE_BYTES],
            head_len: 0,
        }
    }
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
}

/// The `User-Agent` of every request to a partner (and to its token endpoint).
pub const USER_AGENT: &str = concat!("segment-relay-delivery/", env!("CARGO_PKG_VERSION"));

/// Everything needed to send to one destination, shared by all its lanes (and by the
/// real-time and batch pipelines): one connection pool, one token cache, one circuit.
#[derive(Debug)]
pub struct DestinationSender {
    pub config: Arc<DestinationConfig>,
    client: reqwest::Client,
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

/// Counts a real-time send as waiting for a token while it lives.
struct RealTimeWaiting<'a>(&'a DestinationSender);

impl<'a> RealTimeWaiting<'a> {
    fn enter(sender: &'a DestinationSender) -> Self {
        sender
            .real_time_waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(sender)
    }
}

impl Drop for RealTimeWaiting<'_> {
    fn drop(&mut self) {
        let left = self
            .0
            .real_time_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if left == 1 {
            self.0.real_time_served.notify_waiters();
        }
    }
}

impl DestinationSender {
    pub fn new(
        config: Arc<DestinationConfig>,
        metrics: DestinationMetrics,
        log: Option<Arc<crate::delivery_log::DeliveryLog>>,
    ) -> Result<Self, SenderBuildError> {
        let client = http_client(&config)?;
        let auth = match &config.auth {
            AuthConfig::None => Auth::None,
            AuthConfig::Hmac(hmac) => Auth::Hmac(HmacSigner::new(hmac.clone())),
            AuthConfig::OAuth2(oauth) => Auth::OAuth2(OAuthTokenSource::new(
                oauth.clone(),
                client.clone(),
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
            client,
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
    /// `on_attempt` hears how each attempt ended (the delivery log).
    pub async fn send(
        &self,
        json: Vec<u8>,
        idempotency_key: &str,
        priority: Priority,
        on_attempt: &mut (dyn FnMut(&AttemptReport<'_>) + Send),
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
            if attempt > 1 {
                self.metrics.retries.inc();
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

    /// Waits for a rate-limit token: a real-time send in turn, a batch send only at a moment
    /// when no real-time send is waiting (it checks without queueing, so it never holds a
    /// place ahead of real time).
    async fn take_token(&self, limiter: &DefaultDirectRateLimiter, priority: Priority) {
        if priority == Priority::RealTime {
            let _waiting = RealTimeWaiting::enter(self);
            limiter.until_ready().await;
            return;
        }
        loop {
            // Registered before the check, so a wake-up between the two is not missed.
            let served = self.real_time_served.notified();
            if self
                .real_time_waiting
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
            {
                served.await;
                continue;
            }
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let now =
                        governor::clock::Clock::now(&governor::clock::DefaultClock::default());
                    tokio::time::sleep(not_until.wait_time_from(now)).await;
                }
            }
        }
    }

    /// Takes this worker's share of the destination's `rate_limit_rps`: `owned` of the
    /// real-time input's `total` partitions (at least one request per second), so N workers
    /// together keep to the figure. No-op without a rate limit.
    pub fn set_rate_share(&self, owned: usize, total: usize) {
        let Some(rps) = self.config.rate_limit_rps else {
            return;
        };
        let share = if total == 0 {
            rps.get()
        } else {
            let share = u64::from(rps.get()) * owned as u64;
            u32::try_from(share.div_ceil(total as u64)).unwrap_or(u32::MAX)
        };
        let share = std::num::NonZeroU32::new(share).unwrap_or(std::num::NonZeroU32::MIN);
        tracing::info!(
            destination = self.config.id,
            rate_limit_rps = rps.get(),
            share = share.get(),
            owned,
            total,
            "Rate limit shared by owned partitions."
        );
        *self
            .rate_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arc::new(RateLimiter::direct(Quota::per_second(share))));
    }

    /// The end of a pause the partner asked for, if it is still ahead.
    fn paused_until(&self) -> Option<Instant> {
        let until = *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.filter(|&u| u > Instant::now())
    }

    /// Waits out a pause the partner asked for (every lane of the destination honours it).
    async fn wait_while_paused(&self) {
        while let Some(until) = self.paused_until() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Pauses the destination for `wait` (never shortens a longer pause already set).
    fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }

    async fn attempt(
        &self,
        body: &Bytes,
        idempotency_key: &str,
        signatures: &[(reqwest::header::HeaderName, HeaderValue)],
        answer: &mut Answer,
    ) -> Attempt {
        let mut request = self
            .client
            .post(self.config.url.clone())
            .timeout(self.config.timeout)
            .headers(request_headers(
                self.config.gzip,
                idempotency_key,
                signatures,
            ))
            .body(body.clone());
        let token = match &self.auth {
            Auth::OAuth2(tokens) => match tokens.token().await {
                Ok(token) => {
                    request = request.bearer_auth(&token);
                    Some((tokens, token))
                }
                Err(error) => {
                    tracing::warn!(destination = self.config.id, %error, "No OAuth token for a batch; the batch is retried, then dead-lettered.");
                    return Attempt::Retry {
                        class: ErrorClass::Auth,
                        error: error.to_string(),
                        status: None,
                    };
                }
            },
            Auth::None | Auth::Hmac(_) => None,
        };

        self.metrics.in_flight.inc();
        let started = tokio::time::Instant::now();
        // The whole response, body included, must arrive within the timeout.
        let result = match request.send().await {
            Ok(mut response) => {
                let status = response.status();
                answer.status = Some(status.as_u16());
                let retry_after = response
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
                read_capped(&mut response, MAX_RESPONSE_BYTES, answer)
                    .await
                    .map(|()| (status, retry_after))
            }
            Err(error) => Err(error),
        };
        self.metrics
            .request_duration
            .observe(started.elapsed().as_secs_f64());
        self.note_request_time(started.elapsed());
        self.metrics.in_flight.dec();

        match result {
            Ok((status, _)) if self.config.success_codes.contains(&status.as_u16()) => {
                self.metrics.request(RequestOutcome::Success).inc();
                Attempt::Success
            }
            Ok((StatusCode::TOO_MANY_REQUESTS, retry_after)) => {
                self.metrics.request(RequestOutcome::HttpStatus).inc();
                let wait = retry_after.unwrap_or(self.config.backoff.initial);
                self.pause(wait);
                tracing::warn!(
                    destination = self.config.id,
                    pause_ms = wait.as_millis() as u64,
                    "Partner asked to slow down (429); pausing the destination."
                );
                Attempt::Retry {
                    class: ErrorClass::RateLimited,
                    error: format!("HTTP 429, paused {} ms", wait.as_millis()),
                    status: Some(429),
                }
            }
            Ok((status, _)) => {
                self.metrics.request(RequestOutcome::HttpStatus).inc();
                if status == StatusCode::UNAUTHORIZED
                    && let Some((tokens, token)) = token
                {
                    // Fetch a fresh token for the retry.
                    tokens.invalidate(&token).await;
                }
                tracing::warn!(
                    destination = self.config.id,
                    status = status.as_u16(),
                    "Partner did not accept a batch."
                );
                Attempt::Retry {
                    class: ErrorClass::HttpStatus,
                    error: format!("HTTP {}", status.as_u16()),
                    status: Some(status.as_u16()),
                }
            }
            Err(error) => {
                let (outcome, class) = classify(&error);
                self.metrics.request(outcome).inc();
                let error = error.without_url();
                // What a TLS failure means and how to fix it, in plain words.
                let explanation = (class == ErrorClass::Tls)
                    .then(|| crate::tls_explain::explain_tls_error(&error))
                    .flatten();
                tracing::warn!(destination = self.config.id, outcome = outcome.label(), error = %error, explanation = explanation.as_deref(), "Request to partner failed.");
                // The same words go to the delivery log and the dead letter.
                let chain = error_chain(&error);
                Attempt::Retry {
                    class,
                    error: match explanation {
                        Some(words) => format!("{chain} ({words})"),
                        None => chain,
                    },
                    status: None,
                }
            }
        }
    }
}

/// The HTTPS client of one destination, for its requests and its OAuth token requests.
///
/// Certificates and host names are always verified (rustls with the system roots plus
/// `ca_file`, see `tls`); no setting turns that off. Redirects are not followed: a partner
/// answers with a success code or the attempt failed. Following one would send the signed body
/// (307/308) to a URL nobody configured, possibly over plain HTTP, or turn the POST into a
/// body-less GET (301/302/303) whose 200 would count a batch as delivered that the partner
/// never received. Plain `http://` only with `dangerous_allow_http`.
pub fn http_client(config: &DestinationConfig) -> Result<reqwest::Client, SenderBuildError> {
    let mut builder = reqwest::Client::builder()
        .https_only(!config.dangerous_allow_http)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(config.timeout)
        .pool_max_idle_per_host(config.max_in_flight * 2)
        .user_agent(USER_AGENT);
    for certificate in crate::tls::ca_file_certificates(config)? {
        let certificate = reqwest::Certificate::from_der(&certificate)
            .map_err(|e| SenderBuildError::Client(e, config.id))?;
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .map_err(|e| SenderBuildError::Client(e, config.id))
}

/// The headers of a request that delivery sets itself: the transport adds `host`,
/// `user-agent` ([`USER_AGENT`]), `accept` and `content-length`, and an OAuth destination's
/// `authorization` is added per attempt. `delivery render` prints these too.
pub fn request_headers(
    gzip: bool,
    idempotency_key: &str,
    signatures: &[(HeaderName, HeaderValue)],
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(3 + signatures.len());
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    // The key is hex: always a valid header value.
    if let Ok(key) = HeaderValue::from_str(idempotency_key) {
        headers.insert(HeaderName::from_static("idempotency-key"), key);
    }
    if gzip {
        headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    for (name, value) in signatures {
        headers.append(name.clone(), value.clone());
    }
    headers
}

/// Timeout, TLS or connection: the closed set that becomes a metric label. TLS failures are
/// recognised by a `rustls::Error` in the source chain, or by the text rustls gives them
/// (hyper-util flattens some handshake errors into its connect error).
fn classify(error: &reqwest::Error) -> (RequestOutcome, ErrorClass) {
    if error.is_timeout() {
        return (RequestOutcome::Timeout, ErrorClass::Timeout);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let is_tls = e.downcast_ref::<rustls::Error>().is_some()
            || e.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_tls {
            return (RequestOutcome::Tls, ErrorClass::Tls);
        }
        source = e.source();
    }
    let text = error_chain(error).to_ascii_lowercase();
    // "corrupt message": rustls' words for a peer that does not speak TLS at all (a plain
    // HTTP server on the HTTPS port).
    if [
        "certificate",
        "handshake",
        "tls",
        "alert",
        "corrupt message",
    ]
    .iter()
    .any(|word| text.contains(word))
    {
        return (RequestOutcome::Tls, ErrorClass::Tls);
    }
    (RequestOutcome::Connect, ErrorClass::Connect)
}

/// An error and its causes, `: `-separated.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// Reads at most `limit` bytes of the response body: a partner's answer is not needed beyond
/// that, and an endless one must not hold the lane or its memory.
async fn read_capped(
    response: &mut reqwest::Response,
    limit: usize,
    answer: &mut Answer,
) -> reqwest::Result<()> {
    let mut read = 0;
    while read < limit {
        match response.chunk().await? {
            Some(chunk) => {
                let room = &mut answer.head[answer.head_len..];
                let n = room.len().min(chunk.len());
                room[..n].copy_from_slice(&chunk[..n]);
                answer.head_len += n;
                read += chunk.len();
            }
            None => break,
        }
    }
    Ok(())
}

/// `Retry-After` as a wait: delay-seconds or an HTTP date (RFC 9110 §10.2.3). A date in the
/// past is no wait; anything else unreadable is `None`. Capped at one hour, so a wrong header
/// cannot park a destination for days.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    let wait = if let Ok(seconds) = value.parse::<u64>() {
        Duration::from_secs(seconds)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(wait.min(Duration::from_secs(3_600)))
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

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use super::{DestinationSender, parse_retry_after};

    #[test]
    fn a_destination_is_slow_from_its_first_slow_answer_until_a_quick_one() {
        let yaml = "kafka: { topic: status, dlq_topic: status-dlq, group_id: g }\n\
                    destinations:\n\
                      - { id: 1, url: https://a.example/x, client_id: x, user_dpid: 1, timeout_ms: 3000, segments: { 1: \"1\" } }\n";
        let config =
            crate::config::DeliveryConfig::parse(std::path::Path::new("slow.yaml"), yaml, &|_| {
                None
            })
            .unwrap();
        let metrics = crate::metrics::Metrics::register(&prometheus::Registry::new()).unwrap();
        let destination = config.destinations[0].clone();
        let sender = DestinationSender::new(
            destination.clone(),
            metrics.destination(destination.id, destination.max_backlog_age),
            None,
        )
        .unwrap();
        let ms = Duration::from_millis;
        assert!(sender.is_slow(), "no answer yet: cannot be told from stuck");
        for _ in 0..10 {
            sender.note_request_time(ms(50));
        }
        assert!(!sender.is_slow(), "answers in 50 ms");
        sender.note_request_time(ms(2_800));
        assert!(
            sender.is_slow(),
            "its first answer after 2.8 s of a 3 s timeout"
        );
        sender.note_request_time(ms(50));
        assert!(!sender.is_slow(), "one long request, then quick again");
        sender.note_request_time(ms(900));
        assert!(!sender.is_slow(), "900 ms: under a third of its timeout");
        sender.note_request_time(ms(1_000));
        assert!(sender.is_slow(), "1 s: a third of its timeout");
    }

    #[test]
    fn retry_after_is_seconds_or_an_http_date_capped_at_an_hour() {
        // Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
        let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
            Some(Duration::ZERO),
            "a date in the past: no wait"
        );
        assert_eq!(
            parse_retry_after("86400", now),
            Some(Duration::from_secs(3_600)),
            "capped at one hour"
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }
}
