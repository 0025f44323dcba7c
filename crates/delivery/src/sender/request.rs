//! One attempt to send a body to a partner: the HTTPS client, the request's headers and
//! auth, what the partner answered (status, `Retry-After`, the head of its body), and how a
//! failure is classified for the metrics.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::StatusCode;
use hyper::header::{
    ACCEPT, CONTENT_ENCODING, CONTENT_TYPE, HeaderMap, HeaderName, HeaderValue,
    USER_AGENT as USER_AGENT_HEADER,
};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use model::ErrorClass;

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
        signatures: &[(HeaderName, HeaderValue)],
        answer: &mut Answer,
    ) -> Attempt {
        let mut headers = request_headers(self.config.gzip, idempotency_key, signatures);
        let token = match &self.auth {
            Auth::OAuth2(tokens) => match tokens.token().await {
                Ok(token) => match bearer(&token) {
                    Some(value) => {
                        headers.insert(hyper::header::AUTHORIZATION, value);
                        Some((tokens, token))
                    }
                    None => {
                        tokens.invalidate(&token).await;
                        return Attempt::Retry {
                            class: ErrorClass::Auth,
                            error: "the token endpoint's access_token cannot be sent in a header"
                                .to_owned(),
                            status: None,
                        };
                    }
                },
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
        let request = post(self.uri.clone(), headers, body.clone());

        self.metrics.in_flight.inc();
        let started = tokio::time::Instant::now();
        // The whole response, body included, must arrive within the timeout.
        let timeout = self.config.timeout;
        let exchange = async {
            let response = self
                .partner
                .request(request)
                .await
                .map_err(RequestError::Send)?;
            let status = response.status();
            answer.status = Some(status.as_u16());
            let retry_after = response
                .headers()
                .get(hyper::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, std::time::SystemTime::now()));
            read_capped(response.into_body(), MAX_RESPONSE_BYTES, answer)
                .await
                .map_err(RequestError::Body)?;
            Ok((status, retry_after))
        };
        let result = tokio::time::timeout(timeout, exchange)
            .await
            .unwrap_or(Err(RequestError::Timeout(timeout)));
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

/// A destination's HTTPS clients: hyper's, for the batches it sends, and reqwest's, for its
/// OAuth token requests and `check-config --connect`'s token check.
///
/// Certificates and host names are always verified (rustls with the system roots plus
/// `ca_file`, see `tls`); no setting turns that off. Redirects are not followed (neither client
/// follows any): a partner answers with a success code or the attempt failed. Following one
/// would send the signed body (307/308) to a URL nobody configured, possibly over plain HTTP,
/// or turn the POST into a body-less GET (301/302/303) whose 200 would count a batch as
/// delivered that the partner never received. Plain `http://` only with
/// `dangerous_allow_http`.
///
/// Destinations with the same settings (trust, `dangerous_allow_http`, `timeout`) share both
/// clients, for the life of the process: their root store (the system's, parsed once), their
/// connection pools and TLS sessions. A thousand destinations of a few partners hold a few
/// clients, not a thousand. Idle connections close after 90 s.
#[derive(Clone)]
pub(super) struct Clients {
    pub(super) partner: PartnerClient,
    pub(super) token: reqwest::Client,
}

/// The client of a destination's batches: hyper's pooled client over rustls, with the trust,
/// TLS versions and ALPN offer (`h2`, `http/1.1`) of [`crate::tls::handshake_config`], which
/// `check-config --connect` uses too. Requests go to it as built, without reqwest's layers.
pub(super) type PartnerClient = HyperClient<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// The reqwest client of a destination (its OAuth token requests): see [`Clients`].
pub fn http_client(config: &DestinationConfig) -> Result<reqwest::Client, SenderBuildError> {
    shared_clients(config).map(|(clients, _built)| clients.token)
}

/// The destination's [`Clients`], and whether this call built them (else another
/// destination's are shared).
pub(super) fn shared_clients(
    config: &DestinationConfig,
) -> Result<(Clients, bool), SenderBuildError> {
    let key = ClientKey {
        allow_http: config.dangerous_allow_http,
        connect_timeout: config.timeout,
        trusted: crate::tls::ca_file_certificates(config)?,
    };
    let mut clients = CLIENTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(built) = clients.get(&key) {
        return Ok((built.clone(), false));
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
    let token = builder
        .build()
        .map_err(|e| SenderBuildError::Client(e, config.id))?;
    let built = Clients {
        partner: partner_client(config, &key)?,
        token,
    };
    clients.insert(key, built.clone());
    Ok((built, true))
}

fn partner_client(
    config: &DestinationConfig,
    key: &ClientKey,
) -> Result<PartnerClient, SenderBuildError> {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false); // the TLS connector above it takes https
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(key.connect_timeout));
    let mut tls = crate::tls::handshake_config(config)?;
    // hyper-rustls sets the ALPN offer itself, from the versions enabled below: the same
    // `h2`, `http/1.1`.
    tls.alpn_protocols.clear();
    let tls = hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls);
    let tls = if key.allow_http {
        tls.https_or_http()
    } else {
        tls.https_only()
    };
    let connector = tls.enable_http1().enable_http2().wrap_connector(tcp);
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .build(connector))
}

/// What an HTTPS client is built from: destinations with equal keys share one.
#[derive(Debug, PartialEq, Eq, Hash)]
struct ClientKey {
    allow_http: bool,
    connect_timeout: Duration,
    /// The `ca_file`'s certificates (by content: a changed file on reload gets a new client).
    trusted: Vec<rustls::pki_types::CertificateDer<'static>>,
}

/// The clients built so far, one pair per distinct [`ClientKey`].
static CLIENTS: std::sync::LazyLock<std::sync::Mutex<HashMap<ClientKey, Clients>>> =
    std::sync::LazyLock::new(Default::default);

/// A POST of `body` to `uri` with `headers`.
fn post(uri: hyper::Uri, headers: HeaderMap, body: Bytes) -> hyper::Request<Full<Bytes>> {
    let mut request = hyper::Request::new(Full::new(body));
    *request.method_mut() = hyper::Method::POST;
    *request.uri_mut() = uri;
    *request.headers_mut() = headers;
    request
}

/// `Authorization: Bearer <token>`, marked sensitive (kept out of hyper's debug output);
/// `None` for a token no header can hold.
fn bearer(token: &str) -> Option<HeaderValue> {
    let mut value = HeaderValue::try_from(format!("Bearer {token}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Why an attempt got no complete answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// The partner's whole answer, body included, did not arrive within `timeout_ms`.
    #[error("no complete answer within the destination's timeout_ms ({} ms)", .0.as_millis())]
    Timeout(Duration),
    #[error("error sending request")]
    Send(#[source] hyper_util::client::legacy::Error),
    #[error("error reading the partner's answer")]
    Body(#[source] hyper::Error),
}

/// The headers of a request that delivery sets itself: the transport adds `host` (HTTP/1.1;
/// `:authority` over HTTP/2) and `content-length`, and an OAuth destination's `authorization`
/// is added per attempt. `delivery render` prints these too.
pub fn request_headers(
    gzip: bool,
    idempotency_key: &str,
    signatures: &[(HeaderName, HeaderValue)],
) -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(5 + signatures.len());
    headers.insert(USER_AGENT_HEADER, HeaderValue::from_static(USER_AGENT));
    headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
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
/// (hyper-util flattens some handshake errors into its connect error). A connection that timed
/// out (`timeout_ms` is the connect timeout too) is a timeout.
fn classify(error: &RequestError) -> (RequestOutcome, ErrorClass) {
    if matches!(error, RequestError::Timeout(_)) {
        return (RequestOutcome::Timeout, ErrorClass::Timeout);
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        let io = e.downcast_ref::<std::io::Error>();
        let is_tls = e.downcast_ref::<rustls::Error>().is_some()
            || io
                .and_then(|io| io.get_ref())
                .is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some());
        if is_tls {
            return (RequestOutcome::Tls, ErrorClass::Tls);
        }
        if io.is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut) {
            return (RequestOutcome::Timeout, ErrorClass::Timeout);
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

/// One destination of the test config `fields` (its url and whatever else, YAML flow-map
/// entries) with an id, a client id, a dpid and one segment.
#[cfg(test)]
pub(crate) fn one_destination(fields: &str) -> std::sync::Arc<DestinationConfig> {
    let yaml = format!(
        "destinations:\n  - {{ id: 1, {fields}, client_id: x, user_dpid: 1, segments: {{ 1: \"1\" }} }}\n"
    );
    crate::config::DeliveryConfig::parse(std::path::Path::new("t.yaml"), &yaml, &|_| None)
        .expect("a valid test config")
        .destinations
        .remove(0)
}

/// What one bare POST to the destination's `url` with its partner client failed with, and the
/// class the sender gives that (the tests of real connection failures).
#[cfg(test)]
pub(crate) async fn bare_post_error(config: &DestinationConfig) -> (RequestError, ErrorClass) {
    let (clients, _) = shared_clients(config).expect("the destination's clients");
    let uri = config.url.as_str().parse().expect("a url hyper takes");
    let request = post(uri, HeaderMap::new(), Bytes::from_static(b"[]"));
    let error = match tokio::time::timeout(config.timeout, clients.partner.request(request)).await {
        Ok(Ok(response)) => panic!("the request was answered: {}", response.status()),
        Ok(Err(error)) => RequestError::Send(error),
        Err(_) => RequestError::Timeout(config.timeout),
    };
    let (_, class) = classify(&error);
    (error, class)
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
/// that, and an endless one must not hold the lane or its memory (the rest is dropped with the
/// connection or the stream).
async fn read_capped(
    mut body: hyper::body::Incoming,
    limit: usize,
    answer: &mut Answer,
) -> Result<(), hyper::Error> {
    let mut read = 0;
    while read < limit {
        let Some(frame) = body.frame().await.transpose()? else {
            break;
        };
        // Trailers are not the answer's body.
        if let Ok(chunk) = frame.into_data() {
            let room = &mut answer.head[answer.head_len..];
            let n = room.len().min(chunk.len());
            room[..n].copy_from_slice(&chunk[..n]);
            answer.head_len += n;
            read += chunk.len();
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
