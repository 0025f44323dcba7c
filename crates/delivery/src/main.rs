//! `delivery`: Delivers segment status changes to partner destinations as batched, signed JSON over HTTPS.
//!
//! Today this binary is the service's shell (admin endpoints, Kafka connectivity, clean
//! shutdown); the pipeline itself lands with its own issue.

use std::net::SocketAddr;

use anyhow::Context;
use clap::Parser;
use telemetry::ServiceRuntime;

/// Delivers segment status changes to partner destinations as batched, signed JSON over HTTPS.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "0.0.0.0:9102")]
    admin_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = ServiceRuntime::start(cli.admin_addr).await?;
    runtime.wait_for_kafka().await;
    runtime.health.set_ready();
    tracing::info!("Ready.");
    runtime
        .wait_for_shutdown()
        .await
        .context("admin server failed")?;
    tracing::info!("Stopped.");
    Ok(())
}
