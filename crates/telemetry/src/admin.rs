//! The admin HTTP server every service embeds: `/metrics` (Prometheus text format), `/livez`
//! (no long-running part is stuck or dead: see [`crate::Liveness`]; the livenessProbe),
//! `/readyz` (the service can do its job: connected, assigned, restored; the readinessProbe)
//! and `/healthz` (the admin server answers: for scripts and container checks that only ask
//! whether the process is up). Kubernetes probes and Prometheus scrapes talk to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

use crate::Liveness;

/// Readiness and liveness shared between a service and its admin server. A service starts
/// not ready and says why; `/readyz` answers 503 with that reason until
/// [`Health::set_ready`]. `/livez` answers from [`Health::liveness`].
#[derive(Debug, Clone)]
pub struct Health {
    not_ready: Arc<Mutex<Option<String>>>,
    liveness: Liveness,
}

impl Health {
    /// Not ready for `initial_reason`; liveness with the default threshold.
    pub fn new(initial_reason: impl Into<String>) -> Self {
        Self::with_liveness(
            initial_reason,
            Liveness::new(crate::liveness::DEFAULT_STALL_AFTER, None),
        )
    }

    pub fn with_liveness(initial_reason: impl Into<String>, liveness: Liveness) -> Self {
        Self {
            not_ready: Arc::new(Mutex::new(Some(initial_reason.into()))),
            liveness,
        }
    }

    /// Where the service's long-running parts register their heartbeats.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    pub fn set_ready(&self) {
        *self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = None;
    }

    pub fn set_not_ready(&self, reason: impl Into<String>) {
        *self
            .not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(reason.into());
    }

    /// `None` when ready, else why not.
    pub fn not_ready_reason(&self) -> Option<String> {
        self.not_ready
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A registry with the process collector (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, open fds…) already registered; services add their own.
pub fn new_registry() -> Registry {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    if let Err(error) = registry.register(Box::new(
        prometheus::process_collector::ProcessCollector::for_self(),
    )) {
        tracing::warn!(%error, "Cannot register the process metrics collector.");
    }
    registry
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    health: Health,
}

/// A bound admin server; [`AdminServer::serve`] runs it until the shutdown future resolves.
#[derive(Debug)]
pub struct AdminServer {
    listener: TcpListener,
    router: Router,
}

impl AdminServer {
    /// Binds `addr` (port 0 picks a free port; see [`AdminServer::local_addr`]).
    pub async fn bind(
        addr: SocketAddr,
        registry: Registry,
        health: Health,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let router = Router::new()
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/livez", get(livez))
            .route("/readyz", get(readyz))
            .with_state(AdminState { registry, health });
        Ok(Self { listener, router })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Adds a service's own admin routes (e.g. partner-sim's `/stats`).
    #[must_use]
    pub fn with_routes(mut self, routes: Router) -> Self {
        self.router = self.router.merge(routes);
        self
    }

    /// Serves until `shutdown` resolves.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
    }
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let encoder = TextEncoder::new();
    let mut body = Vec::with_capacity(16 * 1024);
    match encoder.encode(&state.registry.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response(),
        Err(error) => {
            tracing::warn!(%error, "Cannot encode metrics.");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {error}\n"),
            )
                .into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    match state.health.not_ready_reason() {
        None => (StatusCode::OK, "ready\n".to_owned()),
        Some(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}\n"),
        ),
    }
}

/// 200 while every registered part makes progress or waits on something a restart would not
/// help; else 503 and, one line each, which part is stuck or dead and for how long.
async fn livez(State(state): State<AdminState>) -> impl IntoResponse {
    let stuck = state.health.liveness.check();
    if stuck.is_empty() {
        return (StatusCode::OK, "live\n".to_owned());
    }
    let mut body = String::from("not live:\n");
    for part in &stuck {
        body.push_str(&format!("  {part}\n"));
    }
    (StatusCode::SERVICE_UNAVAILABLE, body)
}

#[cfg(test)]
mod tests {
    use prometheus::{IntCounterVec, Opts};

    use super::*;

    #[tokio::test]
    async fn serves_metrics_health_liveness_and_readiness() {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new("test_events_total", "Events seen."),
            &["destination"],
        )
        .unwrap();
        registry.register(Box::new(events.clone())).unwrap();
        events.with_label_values(&["423"]).inc_by(7);

        let clock: &'static std::sync::atomic::AtomicU64 =
            Box::leak(Box::new(std::sync::atomic::AtomicU64::new(0)));
        let liveness = Liveness::with_clock(clock, std::time::Duration::from_secs(30), None);
        let health = Health::with_liveness("connecting to Kafka", liveness.clone());
        let server = AdminServer::bind(([127, 0, 0, 1], 0).into(), registry, health.clone())
            .await
            .unwrap();
        let base = format!("http://{}", server.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async {
            let _ = stopped.await;
        }));
        let client = reqwest::Client::new();

        let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(
            metrics.headers()[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("text/plain")
        );
        let text = metrics.text().await.unwrap();
        assert!(
            text.contains("test_events_total{destination=\"423\"} 7"),
            "{text}"
        );

        assert_eq!(
            client
                .get(format!("{base}/healthz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
        let consumer = liveness.heartbeat("consumer[status]");
        let live = client.get(format!("{base}/livez")).send().await.unwrap();
        assert_eq!(live.status(), 200);
        assert_eq!(live.text().await.unwrap(), "live\n");
        clock.store(31_000, std::sync::atomic::Ordering::Relaxed);
        let stuck = client.get(format!("{base}/livez")).send().await.unwrap();
        assert_eq!(stuck.status(), 503);
        assert_eq!(
            stuck.text().await.unwrap(),
            "not live:\n  consumer[status]: no progress for 31.0 s (threshold 30.0 s)\n"
        );
        consumer.beat();
        let live = client.get(format!("{base}/livez")).send().await.unwrap();
        assert_eq!(live.status(), 200);

        let not_ready = client.get(format!("{base}/readyz")).send().await.unwrap();
        assert_eq!(not_ready.status(), 503);
        assert_eq!(
            not_ready.text().await.unwrap(),
            "not ready: connecting to Kafka\n"
        );
        health.set_ready();
        assert_eq!(
            client
                .get(format!("{base}/readyz"))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );

        stop.send(()).unwrap();
        task.await.unwrap().unwrap();
    }
}
