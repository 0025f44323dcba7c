//! `qualifier`: Evaluates segment rules over users' trait events and publishes every change of segment status to Kafka.
//!
//! Today this binary is the service's shell (admin endpoints, Kafka connectivity, clean
//! shutdown); the pipeline itself lands with its own issue.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use telemetry::ServiceRuntime;

/// Evaluates segment rules over users' trait events and publishes every change of segment status to Kafka.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9101")]
    admin_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = ServiceRuntime::start(cli.admin_addr).await?;
    if runtime.wait_for_kafka().await {
        runtime.health.set_ready();
        tracing::info!("Ready.");
        runtime.shutdown.cancelled().await;
    }
    runtime.finish().await.context("admin server failed")?;
    tracing::info!("Stopped.");
    Ok(())
}
