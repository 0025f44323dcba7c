//! The ingest API: `POST /v1/events` with a JSON array or NDJSON of events (see [`crate::events`]).
//! All-or-nothing: any invalid line → `400 {"errors":[{"line":n,"error":"…"}]}` and nothing is
//! produced; otherwise `202 {"accepted":n}` once the broker acknowledged every event.
//! `?origin=batch` marks the events as offline/onboarded data. Bodies above the limit → `413`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use model::{Origin, TraitEvent};
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Deserialize;
use serde_json::json;
use telemetry::KafkaSettings;
use tokio_util::sync::CancellationToken;

use crate::events::parse_body;
use crate::metrics::Metrics;

/// Produces validated events to the input topic and waits for the broker's acknowledgement.
pub struct EventWriter {
    producer: FutureProducer,
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
        let producer = kafka
            .client_config("qualifier-ingest")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("message.timeout.ms", "15000")
            .create()?;
        Ok(Self {
            producer,
            topic: topic.to_owned(),
        })
    }

    /// Writes every event (keyed by user, so a user's events stay in order on one partition)
    /// and returns once all are acknowledged, or the first error.
    pub async fn write(&self, events: &[TraitEvent]) -> Result<(), KafkaError> {
        let mut pending = Vec::with_capacity(events.len());
        for event in events {
            let payload = event.encode_to_vec();
            let record = FutureRecord::to(&self.topic)
                .key(&event.user_id)
                .payload(&payload);
            let delivery = self
                .producer
                .send_result(record)
                .map_err(|(error, _)| error)?;
            pending.push(delivery);
        }
        for delivery in pending {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) => return Err(error),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
        Ok(())
    }

    pub fn flush(&self) {
        let _ = rdkafka::producer::Producer::flush(&self.producer, Duration::from_secs(10));
    }
}

#[derive(Clone)]
struct IngestState {
    writer: Arc<EventWriter>,
    metrics: Metrics,
    max_body_bytes: usize,
}

#[derive(Deserialize)]
struct IngestQuery {
    origin: Option<String>,
}

/// Serves the ingest API on `addr` until `shutdown`.
pub async fn serve(
    addr: SocketAddr,
    writer: Arc<EventWriter>,
    metrics: Metrics,
    max_body_bytes: usize,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "Ingest API listening.");
    let app = Router::new()
        .route("/v1/events", post(ingest))
        .with_state(IngestState {
            writer,
            metrics,
            max_body_bytes,
        });
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

fn reply(state: &IngestState, status: StatusCode, body: serde_json::Value) -> Response {
    state
        .metrics
        .ingest_requests
        .with_label_values(&[status.as_str()])
        .inc();
    (status, axum::Json(body)).into_response()
}

async fn ingest(
    State(state): State<IngestState>,
    Query(query): Query<IngestQuery>,
    body: Body,
) -> Response {
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
    let Ok(bytes) = axum::body::to_bytes(body, state.max_body_bytes).await else {
        return reply(
            &state,
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": format!("body larger than {} bytes: split it into several requests", state.max_body_bytes)}),
        );
    };
    let events = match parse_body(&bytes, origin) {
        Ok(events) => events,
        Err(errors) => return reply(&state, StatusCode::BAD_REQUEST, json!({ "errors": errors })),
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
