//! `qualifier`: evaluates segment rules over users' trait events and publishes every change
//! of segment status to Kafka, exactly once within Kafka.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use qualifier::config::Definitions;
use qualifier::config::kafka::KafkaConfig;
use qualifier::ingest::EventWriter;
use qualifier::ingest::auth::{IngestAuth, IngestTokens};
use qualifier::ingest::tls::{CertificateFiles, IngestTls};
use qualifier::processor::Topology;
use telemetry::ServiceRuntime;

// Allocation-heavy paths (decoded events, batches, bodies) cost less and fragment less with
// mimalloc than with glibc malloc (see docs/BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Evaluates segment rules over users' trait events (time-to-live, inactivity, opt-out, ID
/// sync, regions) and publishes every change of segment status to Kafka.
///
/// Kafka connection settings come from the environment (KAFKA_BROKERS, KAFKA_SECURITY_PROTOCOL,
/// KAFKA_SASL_*, KAFKA_SSL_*); topics, group and instance id from the `kafka:` block of the
/// definitions file, each overridden by KAFKA_<KEY> (e.g. KAFKA_EVENTS_TOPIC); see the README.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The definitions file (segments.yaml); reloaded when it changes. Required to run; the
    /// other commands read its `kafka:` block when given (else the defaults and KAFKA_<KEY>).
    #[arg(long, env = "QUALIFIER_CONFIG", global = true)]
    config: Option<PathBuf>,

    /// Address of the admin HTTP server (`/metrics`, `/healthz`, `/readyz`).
    #[arg(
        long,
        env = "ADMIN_ADDR",
        default_value = "0.0.0.0:9101",
        global = true
    )]
    admin_addr: SocketAddr,

    /// Address of the ingest API (`POST /v1/events`).
    #[arg(
        long,
        env = "INGEST_ADDR",
        default_value = "0.0.0.0:8080",
        global = true
    )]
    ingest_addr: SocketAddr,

    /// Largest ingest request body, in bytes.
    #[arg(long, env = "INGEST_MAX_BODY_BYTES", default_value_t = 10 << 20, global = true)]
    ingest_max_body_bytes: usize,

    /// How long an ingest client may take to send a request's headers (else the connection is
    /// closed), and then its whole body (else 408), in milliseconds.
    #[arg(
        long,
        env = "INGEST_READ_TIMEOUT_MS",
        default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(1..),
        global = true
    )]
    ingest_read_timeout_ms: u64,

    /// File of the ingest API's bearer tokens: one a line (blank lines and `#` comments
    /// ignored), each at least 16 characters; several are valid at once, for rotation. Reloaded
    /// when it changes. Without it the ingest API accepts anyone (a WARN at every start).
    #[arg(long, env = "INGEST_TOKENS_FILE", global = true)]
    ingest_tokens_file: Option<PathBuf>,

    /// Certificate chain (PEM, leaf first) for HTTPS on the ingest port; reloaded when it
    /// changes. Without it the ingest port speaks plain HTTP.
    #[arg(
        long,
        env = "INGEST_TLS_CERT_FILE",
        requires = "ingest_tls_key_file",
        global = true
    )]
    ingest_tls_cert_file: Option<PathBuf>,

    /// Private key (PEM) of --ingest-tls-cert-file.
    #[arg(
        long,
        env = "INGEST_TLS_KEY_FILE",
        requires = "ingest_tls_cert_file",
        global = true
    )]
    ingest_tls_key_file: Option<PathBuf>,

    /// Write busy users' trait histories to the changelog in records of their own (trait
    /// parts): a busy user's new state then costs the changelog the histories that changed, not
    /// all of them. Turn it on only once every qualifier that may restore the changelog reads
    /// trait parts (every build since they were added does; an earlier one would lose the
    /// histories of a user written apart). Turned off again, users are written whole as they
    /// change.
    #[arg(
        long,
        env = "CHANGELOG_TRAIT_PARTS",
        default_value_t = false,
        global = true
    )]
    changelog_trait_parts: bool,

    /// Bytes of stored records (and ~220 B per user, 8 B per history of a user with over 32,
    /// the index of their record's histories) whose users are kept decoded between
    /// transactions, shared evenly by the partitions this process owns, the longest untaken
    /// let go first: a user taken again is then not decoded from their record (tens of KB for
    /// a busy user). The last transaction's users are kept whatever their bytes. A decoded
    /// state takes about four times its record's bytes.
    #[arg(
        long,
        env = "WARM_STATE_BYTES",
        default_value_t = 24 << 20,
        global = true
    )]
    warm_state_bytes: usize,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the service (the default).
    Run,
    /// Validate a definitions file (with its `kafka:` block and the KAFKA_<KEY> overrides) and
    /// print every problem at once; exit 1 if any.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
    },
    /// Print what the qualifier knows about one user (memberships, partner ids, regions, last
    /// seen, next timer), read from the changelog topic: works with the qualifier running or
    /// not. Pass --config to name the segments and compute the next timer.
    Show {
        /// The user id.
        #[arg(long)]
        user: String,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Erase a user (right to erasure): produce a `forget` event. The qualifier sends 0 for
    /// every membership to every destination, then removes the user's state, opt-out marker
    /// and partner ids, and makes their delivery log records unreadable.
    Forget {
        /// The user id.
        #[arg(long)]
        user: String,
    },
    /// Produce the events of an NDJSON file (the ingest API's shapes) as batch-origin input:
    /// their status changes go to the batch topic, a lane that never delays real time.
    Onboard {
        /// The NDJSON file.
        file: PathBuf,
    },
    /// Create (`create`, idempotent) or verify (`check`) every Kafka topic of segment-relay
    /// with its settings (partitions, replication, cleanup.policy, retention.ms,
    /// min.insync.replicas), named by the `kafka:` block of --config (or KAFKA_<KEY>); existing
    /// topics are never changed.
    Topics(qualifier::topics::TopicsCommand),
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::exit_code("qualifier", run(Cli::parse()).await)
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Some(Command::CheckConfig { file }) => {
            let definitions = Definitions::load(&file)?;
            println!(
                "{}: ok ({} traits, {} segments)",
                file.display(),
                definitions.traits.len(),
                definitions.segments.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Show { user, json }) => {
            let definitions = cli.config.as_deref().map(Definitions::load).transpose()?;
            let block = match &definitions {
                Some(definitions) => definitions.kafka.clone(),
                None => kafka_block(None)?,
            };
            let kafka = telemetry::KafkaSettings::from_env()?;
            let topic = block.changelog_topic.clone();
            let lookup = user.clone();
            let found =
                tokio::task::spawn_blocking(move || qualifier::show::find(&kafka, &topic, &lookup))
                    .await??;
            let Some(found) = found else {
                eprintln!(
                    "{user}: no record in {} (never seen by this qualifier group)",
                    block.changelog_topic
                );
                return Ok(ExitCode::from(2));
            };
            let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
            let report = qualifier::show::report(
                &user,
                &block.changelog_topic,
                found,
                definitions.as_ref(),
                now,
            );
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", qualifier::show::render(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Forget { user }) => {
            telemetry::init_logging()?;
            let block = kafka_block(cli.config.as_deref())?;
            let kafka = telemetry::KafkaSettings::from_env()?;
            let event = model::TraitEvent {
                user_id: user.clone(),
                origin: model::Origin::Realtime as i32,
                event: Some(model::pb::trait_event::Event::Forget(model::pb::Forget {
                    time_unix_ms: time::OffsetDateTime::now_utc().unix_timestamp() * 1000,
                })),
            };
            qualifier::evaluate::validate(&event).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
            let writer = EventWriter::new(&kafka, &block.events_topic)?;
            writer
                .write(&[event])
                .await
                .context("Kafka did not acknowledge the forget event")?;
            println!(
                "asked to forget {user}: the qualifier sends their 0s, then erases them ({})",
                block.events_topic
            );
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Topics(command)) => {
            let block = kafka_block(cli.config.as_deref())?;
            let kafka = telemetry::KafkaSettings::from_env()?;
            let names = qualifier::topics::TopicNames {
                events: block.events_topic,
                status: block.status_topic,
                status_batch: block.status_batch_topic,
                changelog: block.changelog_topic,
                dlq: block.dlq_topic,
                delivery_log: block.delivery_log_topic,
            };
            qualifier::topics::run(command, &names, &kafka).await
        }
        Some(Command::Onboard { file }) => {
            telemetry::init_logging()?;
            let block = kafka_block(cli.config.as_deref())?;
            let kafka = telemetry::KafkaSettings::from_env()?;
            let body =
                std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let events =
                qualifier::events::parse_body(&body, model::Origin::Batch).map_err(|errors| {
                    let mut lines: Vec<String> = errors
                        .errors
                        .iter()
                        .map(|e| format!("  - line {}: {}", e.line, e.error))
                        .collect();
                    if errors.more > 0 {
                        lines.push(format!("  - and {} more invalid lines", errors.more));
                    }
                    anyhow::anyhow!(
                        "{}: invalid events, nothing produced:\n{}",
                        file.display(),
                        lines.join("\n")
                    )
                })?;
            let writer = EventWriter::new(&kafka, &block.events_topic)?;
            writer
                .write(&events)
                .await
                .context("Kafka did not acknowledge the events")?;
            println!(
                "onboarded {} events from {} as batch input",
                events.len(),
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        None | Some(Command::Run) => {
            let path = cli
                .config
                .context("--config FILE (or QUALIFIER_CONFIG) is required: the definitions file")?;
            let definitions = Definitions::load(&path)?;
            let transactional_id = definitions
                .kafka
                .transactional_id()
                .map_err(|why| anyhow::anyhow!("{}: {why}", path.display()))?;
            let (ingest_auth, ingest_tokens_file) = match &cli.ingest_tokens_file {
                Some(file) => {
                    let (tokens, file) = IngestTokens::load(file)
                        .context("--ingest-tokens-file (INGEST_TOKENS_FILE)")?;
                    (IngestAuth::tokens(tokens), Some(file))
                }
                None => (IngestAuth::open(), None),
            };
            let ingest_tls = match (cli.ingest_tls_cert_file, cli.ingest_tls_key_file) {
                (Some(cert), Some(key)) => Some(
                    IngestTls::load(CertificateFiles { cert, key })
                        .context("--ingest-tls-cert-file / --ingest-tls-key-file (INGEST_TLS_CERT_FILE / INGEST_TLS_KEY_FILE)")?,
                ),
                _ => None,
            };
            let runtime = ServiceRuntime::start(cli.admin_addr).await?;
            if ingest_auth.is_open() {
                tracing::warn!(
                    "The ingest API accepts requests from anyone: set --ingest-tokens-file (INGEST_TOKENS_FILE) to require bearer tokens."
                );
            }
            let block = definitions.kafka.clone();
            let topology = Topology {
                transactional_id,
                group_id: block.group_id,
                events_topic: block.events_topic,
                status_topic: block.status_topic,
                status_batch_topic: block.status_batch_topic,
                changelog_topic: block.changelog_topic,
                changelog_trait_parts: cli.changelog_trait_parts,
                warm_state_bytes: cli.warm_state_bytes,
                dlq_topic: block.dlq_topic,
                delivery_log_topic: block.delivery_log_topic,
            };
            let options = qualifier::service::Options {
                definitions_path: path,
                ingest_addr: cli.ingest_addr,
                limits: qualifier::ingest::IngestLimits {
                    max_body_bytes: cli.ingest_max_body_bytes,
                    read_timeout: std::time::Duration::from_millis(cli.ingest_read_timeout_ms),
                },
                ingest_auth,
                ingest_tokens_file,
                ingest_tls,
            };
            let result = if runtime.wait_for_kafka().await {
                qualifier::service::run(options, definitions, topology, &runtime).await
            } else {
                Ok(())
            };
            runtime.finish().await.context("admin server failed")?;
            result?;
            tracing::info!("Stopped.");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The `kafka:` block: the definitions file's (with the environment's overrides), or, without
/// --config, the defaults with the environment's.
fn kafka_block(config: Option<&Path>) -> Result<KafkaConfig, telemetry::ConfigError> {
    match config {
        Some(path) => Ok(Definitions::load(path)?.kafka),
        None => KafkaConfig::from_env(&|name| std::env::var(name).ok()),
    }
}
