//! One attempt to send a body to a partner: the HTTPS client, the request's headers and
//! auth, what the partner answered (status, `Retry-After`, the head of its body), and how a
//! failure is classified for the metrics.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use model::ErrorClass;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue};

use super::{DestinationSender, SenderBuildError};
use crate::auth::Auth;
use crate::config::DestinationConfig;
use crate::delivery_log::RESPONSE_BYTES;
use crate::metrics::RequestOutcome;

/// The most of a partner's response body that is read; the rest is dropped with the connection.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

/// Retry or not, after one attempt.
pub(super) enum Attempt {
    Success,
    Retry {
        class: ErrorClass,
        error: String,
        status: Option<u16>,
    },
}

/// What the partner answered to one attempt, for the delivery log: its status and the first
/// bytes of its body (kept inline: no allocation per request).
pub(super) struct Answer {
    pub(super) status: Option<u16>,
    pub(super) head: [u8; RESPONSE_BYTES],
    pub(super) head_len: usize,
}

impl Answer {
    pub(super) fn none() -> Self {
        Self {
            status: None,
            head: [0; RESPONSE_BYTES],
            head_len: 0,
        }
    }
}

/// The `User-Agent` of every request to a partner (and to its token endpoint).
pub const USER_AGENT: &str = concat!("segment-relay-delivery/", env!("CARGO_PKG_VERSION"));

impl DestinationSender {
    pub(super) async fn attempt(
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
///
/// Destinations with the same settings (trust, `dangerous_allow_http`, `timeout`) share one
/// client, for the life of the process: its root store (the system's, parsed once), its
/// connection pools and TLS sessions. A thousand destinations of a few partners hold a few
/// clients, not a thousand. Idle connections close after reqwest's 90 s.
pub fn http_client(config: &DestinationConfig) -> Result<reqwest::Client, SenderBuildError> {
    shared_client(config).map(|(client, _built)| client)
}

/// [`http_client`], and whether this call built it (else another destination's is shared).
pub(super) fn shared_client(
    config: &DestinationConfig,
) -> Result<(reqwest::Client, bool), SenderBuildError> {
    let key = ClientKey {
        allow_http: config.dangerous_allow_http,
        connect_timeout: config.timeout,
        trusted: crate::tls::ca_file_certificates(config)?,
    };
    let mut clients = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(client) = clients.get(&key) {
        return Ok((client.clone(), false));
    }
    let mut builder = reqwest::Client::builder()
        .https_only(!key.allow_http)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(key.connect_timeout)
        .user_agent(USER_AGENT);
    for certificate in &key.trusted {
        let certificate = reqwest::Certificate::from_der(certificate)
            .map_err(|e| SenderBuildError::Client(e, config.id))?;
        builder = builder.add_root_certificate(certificate);
    }
    let client = builder
        .build()
        .map_err(|e| SenderBuildError::Client(e, config.id))?;
    clients.insert(key, client.clone());
    Ok((client, true))
}

/// What an HTTPS client is built from: destinations with equal keys share one.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    allow_http: bool,
    connect_timeout: Duration,
    /// The `ca_file`'s certificates (by content: a changed file on reload gets a new client).
    trusted: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// The clients built so far, one per distinct [`ClientKey`].
static CLIENTS: std::sync::LazyLock<std::sync::Mutex<HashMap<ClientKey, reqwest::Client>>> =
    std::sync::LazyLock::new(Default::default);

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
