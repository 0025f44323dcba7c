//! `delivery`: delivers segment status changes to partner destinations as batched, signed JSON
//! over HTTPS — at least once, in order per user, with retries and a dead-letter topic.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use delivery::config::DeliveryConfig;
use delivery::render::RenderInput;
use telemetry::ServiceRuntime;

// Allocation-heavy paths (decoded events, batches, bodies) cost less and fragment less with
// mimalloc than with glibc malloc (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Delivers segment status changes from Kafka to partner destinations as batched, signed JSON
/// over HTTPS: at least once, in order per user, with one retry and a dead-letter topic.
///
/// Kafka connection settings come from the environment (KAFKA_BROKERS, KAFKA_SECURITY_PROTOCOL,
/// KAFKA_SASL_*, KAFKA_SSL_*); see the README.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The destinations file (destinations.yaml).
    #[arg(long, env = "DELIVERY_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "0.0.0.0:9102",
        global = true
    )]
    admin_addr: SocketAddr,

    /// Append each change that a delivered batch replaced by a later status of the same user
    /// and segment (coalesced) to this file, as JSON lines: what `relay-ledger` needs to tell a
    /// coalesced change from a lost one. Off by default.
    #[arg(long, env = "DELIVERY_COALESCED_REPORT", global = true)]
    coalesced_report: Option<PathBuf>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Print what each destination was sent for one user, and what it answered: the user's
    /// delivery log entries (one per request attempt), newest last.
    Log {
        /// The user id (`AAM_UUID`).
        #[arg(long)]
        user: String,
        /// Only this destination (`AAM_Destination_Id`).
        #[arg(long)]
        destination: Option<u64>,
        /// Only records written at or after this time (RFC 3339, e.g. 2026-11-28T10:00:00Z).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The delivery log topic. Default: the config's `kafka.delivery_log_topic` with
        /// --config, else `delivery-log`.
        #[arg(long)]
        topic: Option<String>,
    },
    /// Count, per destination, the updates on the input topics that route to it and the ones
    /// dead-lettered for it (JSON on stdout): with delivery_events_total from /metrics, it
    /// shows whether every routed change was delivered or dead-lettered.
    Audit,
    /// Validate a destinations file and print every problem at once; exit 1 if any.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Also connect to every destination (DNS, TCP, the TLS handshake with the sender's
        /// trust, an OAuth token), sending no request; one line per destination, exit 1 if
        /// any has a problem.
        #[arg(long)]
        connect: bool,
    },
    /// Print the exact requests delivery would send a destination for some updates (method,
    /// URL, every header with the real signature, the body), sending nothing. Updates come
    /// as JSON on stdin (or --input), one object per line or an array, or from a topic
    /// position (--topic, --partition, --offset).
    Render {
        /// The destination id (`AAM_Destination_Id`).
        #[arg(long)]
        destination: u64,
        /// Read the JSON updates from this file instead of stdin.
        #[arg(long, conflicts_with = "topic")]
        input: Option<PathBuf>,
        /// Read the updates (protobuf) from this topic instead of JSON.
        #[arg(long, requires_all = ["partition", "offset"])]
        topic: Option<String>,
        /// The partition of --topic.
        #[arg(long, requires = "topic")]
        partition: Option<i32>,
        /// The offset of the first message to render.
        #[arg(long, requires = "topic")]
        offset: Option<i64>,
        /// How many offsets to read from --offset on.
        #[arg(long, requires = "topic", default_value_t = 1)]
        count: u64,
    },
    /// Send a destination every current membership of its segments, read from the qualifier's
    /// changelog, through the normal path. Progress is the consumer group
    /// `<group_id>-resync-<D>`'s commits: Ctrl-C stops (exit 130), the same command resumes.
    Resync {
        /// The destination id (`AAM_Destination_Id`).
        #[arg(long)]
        destination: u64,
        /// Only these of its segments (our ids, comma-separated); default every one it maps.
        #[arg(long, value_delimiter = ',')]
        segments: Vec<u64>,
        /// The qualifier's changelog topic. Default `kafka.changelog_topic` of --config
        /// (`KAFKA_CHANGELOG_TOPIC`).
        #[arg(long)]
        changelog_topic: Option<String>,
        /// Start over from the beginning of the changelog, also after a complete run.
        #[arg(long)]
        restart: bool,
    },
    /// Re-send a destination's dead-lettered events through the normal path and report how
    /// many were delivered. Events that fail again are dead-lettered again.
    Replay {
        /// The destination id (`AAM_Destination_Id`) whose dead letters to re-send.
        #[arg(long)]
        destination: u64,
        /// Only dead letters written at or after this time (RFC 3339, e.g. 2026-11-28T10:00:00Z).
        #[arg(long, value_parser = parse_time)]
        since: Option<i64>,
        /// Only dead letters written at or before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        until: Option<i64>,
    },
}

fn parse_time(text: &str) -> Result<i64, String> {
    model::unix_ms_from_rfc3339(text)
}

fn load(config: Option<&PathBuf>) -> anyhow::Result<DeliveryConfig> {
    let path =
        config.context("--config FILE (or DELIVERY_CONFIG) is required: the destinations file")?;
    Ok(DeliveryConfig::load(path)?)
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::exit_code("delivery", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    if let Some(path) = &cli.coalesced_report {
        delivery::coalesced::install(path).with_context(|| {
            format!(
                "--coalesced-report (DELIVERY_COALESCED_REPORT) {}: cannot open it for appending",
                path.display()
            )
        })?;
    }
    match cli.command.unwrap_or(Command::Run) {
        Command::Log {
            user,
            destination,
            since,
            json,
            topic,
        } => {
            let topic = match topic {
                Some(topic) => topic,
                None if cli.config.is_some() => load(cli.config.as_ref())?
                    .kafka
                    .delivery_log_topic
                    .context("the config turns the delivery log off (kafka.delivery_log_topic: \"\"); pass --topic to read one")?,
                None => "delivery-log".to_owned(),
            };
            let kafka = telemetry::KafkaSettings::from_env()?;
            let query = delivery::delivery_log::read::Query {
                user: user.clone(),
                destination,
                since_unix_ms: since,
            };
            let entries = tokio::task::spawn_blocking(move || {
                delivery::delivery_log::read::read(&kafka, &topic, &query)
            })
            .await??;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
            } else {
                print!("{}", delivery::delivery_log::read::render(&user, &entries));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::CheckConfig { file, connect } => {
            let config = DeliveryConfig::load(&file)?;
            println!("{}: ok", file.display());
            if !connect {
                return Ok(ExitCode::SUCCESS);
            }
            let checks = delivery::check_connect::check_all(&config).await;
            for check in &checks {
                println!("{check}");
            }
            Ok(if checks.iter().all(|c| c.is_ok()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Render {
            destination,
            input,
            topic,
            partition,
            offset,
            count,
        } => {
            let config = load(cli.config.as_ref())?;
            let input = match (topic, partition, offset) {
                (Some(topic), Some(partition), Some(offset)) => RenderInput::Topic {
                    topic,
                    partition,
                    offset,
                    count,
                },
                (Some(_), _, _) => anyhow::bail!("--topic needs --partition and --offset"),
                (None, _, _) => RenderInput::Json(input),
            };
            let kafka = || Ok(telemetry::KafkaSettings::from_env()?);
            delivery::render::run(&config, kafka, destination, input).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Run => {
            let config = load(cli.config.as_ref())?;
            let path = cli.config.unwrap_or_default();
            let runtime = ServiceRuntime::start(cli.admin_addr).await?;
            if runtime.wait_for_kafka().await {
                delivery::service::run(&path, config, &runtime).await?;
            }
            runtime.finish().await.context("admin server failed")?;
            tracing::info!("Stopped.");
            Ok(ExitCode::SUCCESS)
        }
        Command::Audit => {
            let config = load(cli.config.as_ref())?;
            let kafka = telemetry::KafkaSettings::from_env()?;
            let counts =
                tokio::task::spawn_blocking(move || delivery::audit::audit(&config, &kafka))
                    .await??;
            println!("{}", serde_json::to_string(&counts)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Resync {
            destination,
            segments,
            changelog_topic,
            restart,
        } => {
            let config = load(cli.config.as_ref())?;
            telemetry::init_logging()?;
            let kafka = telemetry::KafkaSettings::from_env()?;
            let request = delivery::resync::command::Request {
                destination,
                segments,
                changelog_topic: changelog_topic
                    .unwrap_or_else(|| config.kafka.changelog_topic.clone()),
                restart,
            };
            delivery::resync::command::run(&config, &kafka, request).await
        }
        Command::Replay {
            destination,
            since,
            until,
        } => {
            let config = load(cli.config.as_ref())?;
            telemetry::init_logging()?;
            let kafka = telemetry::KafkaSettings::from_env()?;
            let report =
                delivery::replay::replay(&config, &kafka, destination, since, until).await?;
            println!(
                "replayed {} events from {} dead letters of destination {destination}: {} delivered, {} dead-lettered again, {} not re-sent, {} changes superseded",
                report.events,
                report.records,
                report.delivered,
                report.dead_lettered_again,
                report.not_resent.len(),
                report.superseded.len()
            );
            for change in &report.superseded {
                eprintln!("not re-sent, superseded: {change}");
            }
            for record in &report.not_resent {
                eprintln!(
                    "not re-sent (the update is kept only by its position; read it there and re-produce it): {record}"
                );
            }
            Ok(if report.dead_lettered_again > 0 {
                ExitCode::from(3)
            } else if !report.not_resent.is_empty() {
                ExitCode::from(4)
            } else {
                ExitCode::SUCCESS
            })
        }
    }
}
