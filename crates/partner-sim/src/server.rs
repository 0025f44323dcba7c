//! The HTTPS server: data endpoints (check, behave, record) and OAuth token endpoints, plus
//! `/stats` for the admin port.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use foldhash::{HashMap, HashSet};
use prometheus::{IntCounterVec, Opts, Registry};
use serde_json::json;

use crate::auth::TokenIssuer;
use crate::config::{AuthConfig, EndpointConfig, SimConfig};
use crate::contract::Violation;

mod check;
mod record;
mod token;

use check::check;
use record::Recorder;
use token::token;

/// What one endpoint received.
#[derive(Debug, Default)]
struct EndpointStats {
    requests: u64,
    accepted: u64,
    rejected: u64,
    injected_errors: u64,
    violations: BTreeMap<&'static str, u64>,
    users: u64,
    distinct_users: HashSet<String>,
    segments_active: u64,
    segments_inactive: u64,
    duplicates: u64,
    order_violations: u64,
    token_requests: u64,
    token_rejected: u64,
    keys: HashSet<String>,
    /// Last `DateTime` per (user, partner id, segment) accepted.
    last_time: HashMap<(String, String, String), i64>,
    /// Every segment entry of every accepted request, re-sends included, as how many times
    /// each (user, segment, status, time) was accepted: the partner's side of a ledger.
    accepted_changes: HashMap<AcceptedChange, u64>,
}

/// One segment entry as accepted: `AAM_UUID`, `Segment_ID`, `Status` and `DateTime` (seconds
/// since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct AcceptedChange {
    user: String,
    segment: String,
    active: bool,
    time: i64,
}

struct Endpoint {
    config: EndpointConfig,
    hmac_key: Option<Vec<u8>>,
    oauth_secret: Option<String>,
    tokens: TokenIssuer,
    stats: Mutex<EndpointStats>,
}

#[derive(Clone)]
struct Metrics {
    requests: IntCounterVec,
    violations: IntCounterVec,
    segments: IntCounterVec,
    duplicates: IntCounterVec,
    order_violations: IntCounterVec,
    token_requests: IntCounterVec,
}

/// The simulator's shared state.
pub struct Simulator {
    endpoints: HashMap<String, Endpoint>,
    token_paths: HashMap<String, String>,
    started: Instant,
    metrics: Metrics,
    /// Records accepted requests off the request path.
    recorder: Recorder,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("endpoints", &self.endpoints.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Simulator {
    pub fn new(config: SimConfig, registry: &Registry) -> anyhow::Result<Arc<Self>> {
        let counter = |name: &str, help: &str, labels: &[&str]| -> anyhow::Result<IntCounterVec> {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok(c)
        };
        let metrics = Metrics {
            requests: counter(
                "partner_sim_requests_total",
                "Data requests by outcome (accepted, rejected, injected_error).",
                &["endpoint", "outcome"],
            )?,
            violations: counter(
                "partner_sim_violations_total",
                "Contract violations by reason.",
                &["endpoint", "reason"],
            )?,
            segments: counter(
                "partner_sim_segments_total",
                "Accepted segment entries by status.",
                &["endpoint", "status"],
            )?,
            duplicates: counter(
                "partner_sim_duplicates_total",
                "Accepted requests whose Idempotency-Key was accepted before.",
                &["endpoint"],
            )?,
            order_violations: counter(
                "partner_sim_order_violations_total",
                "Segment entries older than one accepted before for the same user and segment.",
                &["endpoint"],
            )?,
            token_requests: counter(
                "partner_sim_token_requests_total",
                "OAuth token requests by outcome (issued, rejected).",
                &["endpoint", "outcome"],
            )?,
        };
        let mut endpoints = HashMap::default();
        let mut token_paths = HashMap::default();
        for config in config.endpoints {
            let (mut hmac_key, mut oauth_secret) = (None, None);
            match &config.auth {
                Some(AuthConfig::Hmac(hmac)) => hmac_key = Some(hmac.key()?.into_bytes()),
                Some(AuthConfig::Oauth2(oauth)) => {
                    oauth_secret = Some(oauth.secret()?);
                    token_paths.insert(oauth.token_path.clone(), config.path.clone());
                }
                None => {}
            }
            for reason in Violation::ALL {
                metrics
                    .violations
                    .with_label_values(&[&config.path, reason.label()]);
            }
            endpoints.insert(
                config.path.clone(),
                Endpoint {
                    config,
                    hmac_key,
                    oauth_secret,
                    tokens: TokenIssuer::default(),
                    stats: Mutex::new(EndpointStats::default()),
                },
            );
        }
        let (recorder, queue) = Recorder::new();
        let simulator = Arc::new(Self {
            endpoints,
            token_paths,
            started: Instant::now(),
            metrics,
            recorder,
        });
        Recorder::spawn(Arc::downgrade(&simulator), queue)
            .map_err(|e| anyhow::anyhow!("cannot start the recording thread: {e}"))?;
        Ok(simulator)
    }

    /// Everything received so far, per endpoint, as JSON.
    pub fn stats(&self) -> serde_json::Value {
        self.recorder.settle();
        let mut out = serde_json::Map::new();
        for (path, endpoint) in &self.endpoints {
            let s = endpoint
                .stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            out.insert(
                path.clone(),
                json!({
                    "requests": s.requests,
                    "accepted": s.accepted,
                    "rejected": s.rejected,
                    "injected_errors": s.injected_errors,
                    "violations": s.violations,
                    "users": s.users,
                    "distinct_users": s.distinct_users.len(),
                    "segments": {"1": s.segments_active, "0": s.segments_inactive},
                    "duplicates": s.duplicates,
                    "order_violations": s.order_violations,
                    "token_requests": s.token_requests,
                    "token_rejected": s.token_rejected,
                }),
            );
        }
        json!({ "endpoints": out })
    }

    /// Every segment entry accepted so far, per endpoint: `[user, Segment_ID, status, DateTime
    /// (Unix seconds), times accepted]`, sorted. Entries of a re-sent request count again, so a
    /// count above 1 is a duplicate; rejected and failed requests are not in it.
    pub fn accepted(&self) -> serde_json::Value {
        self.recorder.settle();
        let mut out = serde_json::Map::new();
        for (path, endpoint) in &self.endpoints {
            let s = endpoint
                .stats
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let mut changes: Vec<_> = s.accepted_changes.iter().collect();
            changes.sort();
            let changes: Vec<_> = changes
                .into_iter()
                .map(|(c, n)| json!([c.user, c.segment, u8::from(c.active), c.time, n]))
                .collect();
            out.insert(path.clone(), json!({ "changes": changes }));
        }
        json!({ "endpoints": out })
    }

    /// The router of the partner-facing server.
    pub fn router(self: &Arc<Self>) -> axum::Router {
        axum::Router::new()
            .fallback(handle)
            .with_state(self.clone())
    }

    /// The admin routes (`/stats`, `/accepted`).
    pub fn admin_routes(self: &Arc<Self>) -> axum::Router {
        let (sim, accepted) = (self.clone(), self.clone());
        axum::Router::new()
            .route(
                "/stats",
                axum::routing::get(move || async move { axum::Json(sim.stats()) }),
            )
            .route(
                "/accepted",
                axum::routing::get(move || async move { axum::Json(accepted.accepted()) }),
            )
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

async fn handle(
    State(sim): State<Arc<Simulator>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if let Some(endpoint_path) = sim.token_paths.get(path) {
        return token(
            &sim,
            &sim.endpoints[endpoint_path],
            &method,
            &headers,
            &body,
        );
    }
    let Some(endpoint) = sim.endpoints.get(path) else {
        return (StatusCode::NOT_FOUND, "no such endpoint\n").into_response();
    };
    let rejection = match check(endpoint, &method, &headers, &body) {
        Ok(received) => {
            let since_start = sim.started.elapsed();
            let outage = endpoint.config.behaviour.outage_at(since_start);
            let latency = {
                let mut rng = fastrand::Rng::new();
                let latency = endpoint.config.behaviour.latency(&mut rng)
                    + outage.map_or(Duration::ZERO, |o| Duration::from_millis(o.delay_ms));
                let forced = endpoint
                    .config
                    .behaviour
                    .forced_status(since_start, &mut rng);
                (latency, forced)
            };
            tokio::time::sleep(latency.0).await;
            if let Some(status) = latency.1 {
                let mut stats = endpoint
                    .stats
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                stats.requests += 1;
                stats.injected_errors += 1;
                sim.metrics
                    .requests
                    .with_label_values(&[path, "injected_error"])
                    .inc();
                let mut response = StatusCode::from_u16(status)
                    .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                    .into_response();
                if let Some(seconds) = outage.and_then(|o| o.retry_after_s) {
                    response.headers_mut().insert(
                        axum::http::header::RETRY_AFTER,
                        axum::http::HeaderValue::from(seconds),
                    );
                }
                return response;
            }
            // Counted, like everything else about it, by the recorder: no lock on the way.
            sim.recorder.accepted(
                path,
                header(&headers, "idempotency-key").unwrap_or_default(),
                received,
            );
            sim.metrics
                .requests
                .with_label_values(&[path, "accepted"])
                .inc();
            return StatusCode::OK.into_response();
        }
        Err(rejection) => rejection,
    };
    let mut stats = endpoint
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    stats.requests += 1;
    stats.rejected += 1;
    *stats
        .violations
        .entry(rejection.violation.label())
        .or_default() += 1;
    sim.metrics
        .requests
        .with_label_values(&[path, "rejected"])
        .inc();
    sim.metrics
        .violations
        .with_label_values(&[path, rejection.violation.label()])
        .inc();
    tracing::warn!(endpoint = path, reason = rejection.violation.label(), detail = %rejection.detail, "Contract violation.");
    (
        StatusCode::BAD_REQUEST,
        axum::Json(json!({"violation": rejection.violation.label(), "detail": rejection.detail})),
    )
        .into_response()
}
