//! The ingest API: `POST /v1/events` with a JSON array or NDJSON of events (see [`crate::events`]).
//! All-or-nothing: any invalid line → `400 {"errors":[{"line":n,"error":"…"}]}` and nothing is
//! produced; otherwise `202 {"accepted":n}` once the broker acknowledged every event.
//! `?origin=batch` marks the events as offline/onboarded data. Bodies above the limit → `413`;
//! a `Content-Type` that is not JSON / NDJSON, or a compressed body → `415`; a body that does
//! not arrive within the read timeout → `408` (and headers that do not → the connection is
//! closed). Nothing is produced for any of these.
//!
//! With a tokens file ([`auth`]), a request without `Authorization: Bearer <valid token>` is
//! answered `401` (with `WWW-Authenticate: Bearer`) before its body is read. With a
//! certificate ([`tls`]), the port speaks HTTPS only.

pub mod auth;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use model::{Origin, TraitEvent};
use prost::Message as _;
use rdkafka::error::KafkaError;
use serde::Deserialize;
use serde_json::json;
use telemetry::KafkaSettings;
use telemetry::produce::AckedProducer;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::events::parse_body;
use crate::metrics::Metrics;
use auth::{IngestAuth, Refusal};

/// Produces validated events to the input topic and waits for the broker's acknowledgement.
pub struct EventWriter {
    producer: AckedProducer,
    topic: String,
}

impl std::fmt::Debug for EventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventWriter")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl EventWriter {
    pub fn new(kafka: &KafkaSettings, topic: &str) -> Result<Self, KafkaError> {
        let producer = AckedProducer::new(&Self::client_config(kafka), "qualifier-ingest")?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// The producer's settings: acks=all and idempotent ([`KafkaSettings::producer_config`]);
    /// an event not acknowledged within 15 s fails, and the request answers 503 (the client
    /// sends it again) rather than waiting out a long broker fault.
    pub fn client_config(kafka: &KafkaSettings) -> rdkafka::ClientConfig {
        let mut config = kafka.producer_config("qualifier-ingest");
        config
            .set("linger.ms", "2")
            .set("message.timeout.ms", "15000");
        config
    }

    /// Writes every event (keyed by user, so a user's events stay in order on one partition)
    /// and returns once all are acknowledged, or the first error.
    pub async fn write(&self, events: &[TraitEvent]) -> Result<(), KafkaError> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = event.encode_to_vec();
            let acked = self
                .producer
                .send(&self.topic, event.user_id.as_bytes(), &payload)?;
            pending.push(acked);
        }
        for acked in pending {
            acked.await?;
        }
        Ok(())
    }

    pub fn flush(&self) {
        let _ = self.producer.flush(Duration::from_secs(10));
    }
}

/// Where accepted events go: Kafka ([`EventWriter`]), or a recording fake in tests.
pub trait EventSink: Send + Sync + 'static {
    /// Writes every event and returns once all are acknowledged, or the first error.
    fn write(&self, events: &[TraitEvent]) -> impl Future<Output = Result<(), KafkaError>> + Send;
}

impl EventSink for EventWriter {
    fn write(&self, events: &[TraitEvent]) -> impl Future<Output = Result<(), KafkaError>> + Send {
        EventWriter::write(self, events)
    }
}

/// How much a client may send, and how slowly.
#[derive(Debug, Clone, Copy)]
pub struct IngestLimits {
    /// Largest request body, in bytes (`413` above).
    pub max_body_bytes: usize,
    /// How long a client may take to send a request's headers (else the connection is
    /// closed), and then its whole body (else `408`). Default 30 s.
    pub read_timeout: Duration,
}

struct IngestState<W> {
    writer: Arc<W>,
    metrics: Metrics,
    limits: IngestLimits,
    auth: IngestAuth,
}

impl<W> Clone for IngestState<W> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            metrics: self.metrics.clone(),
            limits: self.limits,
            auth: self.auth.clone(),
        }
    }
}

#[derive(Deserialize)]
struct IngestQuery {
    origin: Option<String>,
}

/// The ingest API's routes, writing accepted events to `writer` for clients `auth` admits.
pub fn router<W: EventSink>(
    writer: Arc<W>,
    metrics: Metrics,
    limits: IngestLimits,
    auth: IngestAuth,
) -> Router {
    Router::new()
        .route("/v1/events", post(ingest::<W>))
        .with_state(IngestState {
            writer,
            metrics,
            limits,
            auth,
        })
}

/// Listens on `addr` and serves `app` there (HTTPS with `tls`) until `shutdown`. The listener
/// is bound before this returns: a port that cannot be had stops the start-up with the error,
/// rather than leaving a process that is ready but serves no ingest.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<impl Future<Output = ()>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(%addr, scheme, "Ingest API listening.");
    Ok(serve_on(listener, app, tls, header_timeout, shutdown))
}

/// Serves `app` on `listener` (HTTPS with `tls`) until `shutdown`, then lets requests in
/// progress finish. Unlike `axum::serve`, every connection has a header read timeout (which
/// also bounds the TLS handshake): a client that opens connections and trickles their
/// headers (or sends none) cannot hold them open for ever.
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    header_timeout: Duration,
    shutdown: CancellationToken,
) {
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // E.g. out of file descriptors: wait a little rather than spin.
                    tracing::warn!(%error, "Cannot accept an ingest connection.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let stop = shutdown.clone();
        let tls = tls.clone();
        connections.spawn(async move {
            let Some(acceptor) = tls else {
                return serve_connection(stream, app, header_timeout, stop).await;
            };
            let handshake = tokio::select! {
                () = stop.cancelled() => return,
                handshake = tokio::time::timeout(header_timeout, acceptor.accept(stream)) => handshake,
            };
            match handshake {
                Ok(Ok(stream)) => serve_connection(stream, app, header_timeout, stop).await,
                // A plain-HTTP client, a scanner or a client that distrusts the certificate:
                // nothing was sent, so nothing to report above DEBUG.
                Ok(Err(error)) => tracing::debug!(%error, "Ingest TLS handshake failed."),
                Err(_) => tracing::debug!("Ingest TLS handshake timed out."),
            }
        });
    }
    drop(listener);
    // A request in progress is bounded by the read timeout and the broker's acknowledgement.
    let drained = tokio::time::timeout(header_timeout + Duration::from_secs(20), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            connections = connections.len(),
            "Ingest connections still open at shutdown; closing them."
        );
        connections.abort_all();
    }
}

/// Serves one connection's requests (HTTP/1.1) until it closes, or lets the request in
/// progress finish once `stop` fires.
async fn serve_connection<S>(
    stream: S,
    app: Router,
    header_timeout: Duration,
    stop: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = TowerToHyperService::new(app);
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout);
    let mut connection = std::pin::pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        _ = connection.as_mut() => return,
        () = stop.cancelled() => connection.as_mut().graceful_shutdown(),
    }
    let _ = connection.await;
}

fn reply<W>(state: &IngestState<W>, status: StatusCode, body: serde_json::Value) -> Response {
    state
        .metrics
        .ingest_requests
        .with_label_values(&[status.as_str()])
        .inc();
    (status, axum::Json(body)).into_response()
}

/// Media types of a body of events: JSON (an array, or one object per line) and the names
/// NDJSON / JSON Lines go by. A request without a `Content-Type` is read as events too.
fn check_content_type(headers: &HeaderMap) -> Result<(), String> {
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let encoding = String::from_utf8_lossy(encoding.as_bytes());
        if !encoding.trim().eq_ignore_ascii_case("identity") {
            return Err(format!(
                "Content-Encoding `{encoding}` is not supported: send the body uncompressed"
            ));
        }
    }
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(());
    };
    let text = String::from_utf8_lossy(value.as_bytes());
    let essence = text
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = matches!(
        essence.as_str(),
        "application/json"
            | "application/x-ndjson"
            | "application/ndjson"
            | "application/jsonl"
            | "application/jsonlines"
            | "application/x-jsonlines"
    ) || (essence.starts_with("application/") && essence.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(format!(
            "Content-Type `{text}` is not accepted: send events as `application/json` (an array or one object per line) or `application/x-ndjson`"
        ))
    }
}

/// Whether reading the body failed because it passed the size limit.
fn is_length_limit(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = source {
        if error.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = error.source();
    }
    false
}

async fn ingest<W: EventSink>(
    State(state): State<IngestState<W>>,
    Query(query): Query<IngestQuery>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    // Before anything else: a stranger learns nothing about the API but that it wants a token.
    if let Err(refusal) = state.auth.check(headers.get(header::AUTHORIZATION)) {
        let (challenge, error) = match refusal {
            Refusal::Missing => (
                "Bearer",
                "missing bearer token: send `Authorization: Bearer <token>` with a token of the qualifier's ingest tokens file",
            ),
            Refusal::Invalid => (
                r#"Bearer error="invalid_token""#,
                "invalid bearer token: send a token of the qualifier's ingest tokens file",
            ),
        };
        let mut response = reply(&state, StatusCode::UNAUTHORIZED, json!({ "error": error }));
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            axum::http::HeaderValue::from_static(challenge),
        );
        return response;
    }
    let origin = match query.origin.as_deref() {
        None | Some("realtime") => Origin::Realtime,
        Some("batch") => Origin::Batch,
        Some(other) => {
            return reply(
                &state,
                StatusCode::BAD_REQUEST,
                json!({"errors": [{"line": 0, "error": format!("origin: must be `realtime` or `batch`, got `{other}`")}]}),
            );
        }
    };
    if let Err(error) = check_content_type(&headers) {
        return reply(
            &state,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            json!({ "error": error }),
        );
    }
    let limit = state.limits.max_body_bytes;
    let too_large = || json!({"error": format!("body larger than {limit} bytes: split it into several requests")});
    // A declared size above the limit is refused before a byte is read (or allocated).
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return reply(&state, StatusCode::PAYLOAD_TOO_LARGE, too_large());
    }
    let timeout = state.limits.read_timeout;
    let bytes = match tokio::time::timeout(timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => bytes,
        Ok(Err(error)) if is_length_limit(&error) => {
            return reply(&state, StatusCode::PAYLOAD_TOO_LARGE, too_large());
        }
        Ok(Err(error)) => {
            return reply(
                &state,
                StatusCode::BAD_REQUEST,
                json!({"error": format!("cannot read the body: {error}")}),
            );
        }
        Err(_) => {
            return reply(
                &state,
                StatusCode::REQUEST_TIMEOUT,
                json!({"error": format!("the body did not arrive within {} ms: send it at once, or in several smaller requests", timeout.as_millis())}),
            );
        }
    };
    let events = match parse_body(&bytes, origin) {
        Ok(events) => events,
        Err(errors) => {
            let body = serde_json::to_value(&errors).unwrap_or_default();
            return reply(&state, StatusCode::BAD_REQUEST, body);
        }
    };
    match state.writer.write(&events).await {
        Ok(()) => reply(
            &state,
            StatusCode::ACCEPTED,
            json!({ "accepted": events.len() }),
        ),
        Err(error) => {
            tracing::warn!(%error, "Cannot write ingested events to Kafka.");
            reply(
                &state,
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": format!("Kafka did not acknowledge the events ({error}); some may have been written: retry later")}),
            )
        }
    }
}

#[cfg(test)]
mod tests;
