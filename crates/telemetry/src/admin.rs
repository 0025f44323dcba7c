//! The admin HTTP server every service embeds: `/metrics` (Prometheus text format), `/healthz`
//! (the process is alive and serving) and `/readyz` (the service can do its job: connected,
//! assigned, restored). Kubernetes probes and Prometheus scrapes talk to it.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Readiness shared between a service and its admin server. A service starts not ready and
/// says why; `/readyz` answers 503 with that reason until [`Health::set_ready`].
#[derive(Debug, Clone)]
pub struct Health {
    not_ready: Arc<Mutex<Option<String>>>,
}

impl Health {
    pub fn new(initial_reason: impl Into<String>) -> Self {
        Self {
            not_ready: Arc::new(Mutex::new(Some(initial_reason.into()))),
        }
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

#[cfg(test)]
mod tests {
    use prometheus::{IntCounterVec, Opts};

    use super::*;

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let registry = Registry::new();
        let events = IntCounterVec::new(
            Opts::new("test_events_total", "Events seen."),
            &["destination"],
        )
        .unwrap();
        registry.register(Box::new(events.clone())).unwrap();
        events.with_label_values(&["423"]).inc_by(7);

        let health = Health::new("connecting to Kafka");
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
