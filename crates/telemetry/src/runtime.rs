//! The start-up every service shares: logging, Kafka settings, metrics registry, health, and
//! the admin server running in the background.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::{
    AdminServer, Health, KafkaConfigError, KafkaSettings, Liveness, LoggingError, new_registry,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Logging(#[from] LoggingError),
    #[error(transparent)]
    Kafka(#[from] KafkaConfigError),
    #[error("invalid liveness settings in the environment:\n  - {}", .0.join("\n  - "))]
    Liveness(Vec<String>),
    #[error(
        "ADMIN_ADDR={addr}: cannot listen ({source}); pick a free port, e.g. ADMIN_ADDR=0.0.0.0:9102"
    )]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What a running service holds from [`ServiceRuntime::start`].
#[derive(Debug)]
pub struct ServiceRuntime {
    pub kafka: KafkaSettings,
    pub registry: Registry,
    pub health: Health,
    pub admin_addr: SocketAddr,
    /// Cancelled on the first SIGTERM / SIGINT: the service stops taking work and drains.
    pub shutdown: CancellationToken,
    admin_stop: CancellationToken,
    admin: JoinHandle<std::io::Result<()>>,
}

impl ServiceRuntime {
    /// Installs logging, validates the Kafka environment, and serves the admin endpoints on
    /// `admin_addr` (not ready until the service says so) until [`ServiceRuntime::finish`],
    /// so `/metrics` stays up while the service drains after SIGTERM.
    pub async fn start(admin_addr: SocketAddr) -> Result<Self, StartError> {
        crate::init_logging()?;
        let kafka = KafkaSettings::from_env()?;
        let liveness =
            Liveness::from_lookup(|name| std::env::var(name).ok()).map_err(StartError::Liveness)?;
        let registry = new_registry();
        if let Err(error) = registry.register(Box::new(liveness.clone())) {
            tracing::warn!(%error, "Cannot register the liveness metrics.");
        }
        let health = Health::with_liveness("starting", liveness);
        let server = AdminServer::bind(admin_addr, registry.clone(), health.clone())
            .await
            .map_err(|source| StartError::AdminBind {
                addr: admin_addr,
                source,
            })?;
        let admin_addr = server.local_addr().unwrap_or(admin_addr);
        let admin_stop = CancellationToken::new();
        let admin = tokio::spawn(server.serve(admin_stop.clone().cancelled_owned()));
        let shutdown = CancellationToken::new();
        let on_signal = shutdown.clone();
        tokio::spawn(async move {
            crate::shutdown_signal().await;
            on_signal.cancel();
        });
        tracing::info!(%admin_addr, brokers = %kafka.brokers, "Admin server listening.");
        Ok(Self {
            kafka,
            registry,
            health,
            admin_addr,
            shutdown,
            admin_stop,
            admin,
        })
    }

    /// Waits until a Kafka broker answers a metadata request, retrying every few seconds and
    /// saying so in `/readyz` meanwhile. Returns false if shutdown was requested first.
    pub async fn wait_for_kafka(&self) -> bool {
        self.health
            .set_not_ready(format!("waiting for Kafka at {}", self.kafka.brokers));
        loop {
            let kafka = self.kafka.clone();
            let answer =
                tokio::task::spawn_blocking(move || kafka.check_connection(Duration::from_secs(5)))
                    .await;
            match answer {
                Ok(Ok(())) => return true,
                Ok(Err(error)) => {
                    tracing::warn!(%error, brokers = %self.kafka.brokers, "Kafka does not answer yet; retrying.");
                }
                Err(error) => tracing::warn!(%error, "Kafka connection check failed; retrying."),
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return false,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Stops the admin server: the last step of a shutdown.
    pub async fn finish(self) -> std::io::Result<()> {
        self.health.set_not_ready("shutting down");
        self.admin_stop.cancel();
        match self.admin.await {
            Ok(result) => result,
            Err(join) => Err(std::io::Error::other(join)),
        }
    }
}
