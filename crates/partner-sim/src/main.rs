//! `partner-sim`: a real HTTPS partner endpoint that checks the outbound contract.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use axum_server::accept::NoDelayAcceptor;
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use clap::{Parser, Subcommand, ValueEnum};
use partner_sim::config::{Algorithm, SimConfig};
use partner_sim::server::Simulator;
use telemetry::{AdminServer, Health};

// Every request's JSON is parsed into values and recorded change by change: with glibc malloc
// the allocator was ~30 % of the simulator's CPU at 40,000 events/s end to end, where it
// shares the machine with the pipeline it measures (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A real HTTPS partner endpoint: checks the outbound contract, signatures and OAuth on its
/// own, injects latency and failures, and records what it got (`/stats`, `/metrics` on the
/// admin port).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// The endpoints file (partner-sim.yaml).
    #[arg(long, env = "PARTNER_SIM_CONFIG")]
    config: Option<PathBuf>,
    /// Where the partner endpoints listen.
    #[arg(long, env = "PARTNER_SIM_LISTEN", default_value = "127.0.0.1:9443")]
    listen: SocketAddr,
    /// Admin server (`/stats`, `/accepted`, `/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9103")]
    admin_addr: SocketAddr,
    /// Certificate (PEM) to serve; without it a CA and certificate are made at start.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Where to write the CA certificate made at start, for clients to trust.
    #[arg(long)]
    ca_out: Option<PathBuf>,
    /// Serve plain HTTP instead of HTTPS (only for local experiments).
    #[arg(long)]
    insecure_http: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum AlgorithmArg {
    Md5,
    Sha1,
    Sha256,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the endpoints (the default).
    Run,
    /// Check one signature offline: exit 0 if it matches the body, 1 if not.
    Verify {
        /// The shared secret key.
        #[arg(long)]
        key: String,
        #[arg(long, value_enum, default_value = "sha256")]
        algorithm: AlgorithmArg,
        /// The exact body bytes that were signed.
        #[arg(long)]
        body: PathBuf,
        /// The Base64 signature from the request header.
        #[arg(long)]
        signature: String,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::exit_code("partner-sim", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(Command::Verify {
        key,
        algorithm,
        body,
        signature,
    }) = cli.command
    {
        let body =
            std::fs::read(&body).with_context(|| format!("cannot read {}", body.display()))?;
        let algorithm = match algorithm {
            AlgorithmArg::Md5 => Algorithm::Md5,
            AlgorithmArg::Sha1 => Algorithm::Sha1,
            AlgorithmArg::Sha256 => Algorithm::Sha256,
        };
        if partner_sim::auth::verify(algorithm, key.as_bytes(), &body, &signature) {
            println!("signature ok");
            return Ok(ExitCode::SUCCESS);
        }
        println!(
            "signature does NOT match; expected {}",
            partner_sim::auth::signature(algorithm, key.as_bytes(), &body)
        );
        return Ok(ExitCode::from(1));
    }

    let args = cli.run;
    telemetry::init_logging()?;
    let config_path = args
        .config
        .context("--config FILE (or PARTNER_SIM_CONFIG) is required")?;
    let config = SimConfig::load(&config_path)?;
    let registry = telemetry::new_registry();
    let simulator = Simulator::new(config, &registry)?;
    let health = Health::new("starting");
    let admin = AdminServer::bind(args.admin_addr, registry, health.clone())
        .await
        .with_context(|| format!("ADMIN_ADDR={}: cannot listen", args.admin_addr))?
        .with_routes(simulator.admin_routes());
    let stop = tokio_util::sync::CancellationToken::new();
    let admin_task = tokio::spawn(admin.serve(stop.clone().cancelled_owned()));

    let handle = axum_server::Handle::new();
    let app = simulator.router();
    // Responses go out at once (TCP_NODELAY), as from a web server in front of a real partner
    // (nginx's default): without it, a response written while the connection's last one was
    // unacknowledged waited for the sender's delayed ACK, ~40 ms on Linux, and a third of the
    // requests took 40–80 ms where the simulator answers in 1–5 (docs/BENCHMARKS.md).
    let server = axum_server::bind(args.listen).handle(handle.clone());
    let server = if args.insecure_http {
        tracing::warn!("Serving plain HTTP (--insecure-http).");
        let server = server.acceptor(NoDelayAcceptor::new());
        tokio::spawn(async move { server.serve(app.into_make_service()).await })
    } else {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => RustlsConfig::from_pem_file(cert, key)
                .await
                .context("cannot load --tls-cert/--tls-key")?,
            _ => {
                let (ca, cert, key) = partner_sim::tls::generate()?;
                if let Some(path) = &args.ca_out {
                    std::fs::write(path, ca)
                        .with_context(|| format!("cannot write {}", path.display()))?;
                }
                RustlsConfig::from_pem(cert.into_bytes(), key.into_bytes()).await?
            }
        };
        let server = server.acceptor(RustlsAcceptor::new(tls).acceptor(NoDelayAcceptor::new()));
        tokio::spawn(async move { server.serve(app.into_make_service()).await })
    };
    handle
        .listening()
        .await
        .context("cannot listen on --listen")?;
    health.set_ready();
    tracing::info!(listen = %args.listen, admin = %args.admin_addr, "partner-sim is serving.");
    telemetry::shutdown_signal().await;
    handle.graceful_shutdown(Some(std::time::Duration::from_secs(5)));
    let _ = server.await;
    stop.cancel();
    let _ = admin_task.await;
    Ok(ExitCode::SUCCESS)
}
