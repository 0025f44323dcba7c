//! `loadgen`: synthetic traffic through the qualifier's ingest API or straight to Kafka.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use loadgen::{Generator, TrafficModel, to_json_line};
use prost::Message as _;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use telemetry::Secret;

/// Generates users' trait realizations, ID syncs and opt-outs (Zipf-like user activity) at a
/// fixed rate or as fast as possible, for a duration or a count, and prints the achieved rate.
/// Deterministic for a --seed.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// The qualifier's ingest API, e.g. http://127.0.0.1:8080/v1/events.
    #[arg(long, conflicts_with = "topic", required_unless_present = "topic")]
    ingest: Option<String>,
    /// Bearer token for the ingest API (one of the qualifier's `--ingest-tokens-file`). Give
    /// it through the environment or --ingest-token-file: a flag's value is visible in `ps`.
    #[arg(long, env = "INGEST_TOKEN", hide_env_values = true, value_parser = secret, conflicts_with = "ingest_token_file")]
    ingest_token: Option<Secret>,
    /// File holding the bearer token for the ingest API (its first line that is not blank or
    /// a `#` comment).
    #[arg(long, env = "INGEST_TOKEN_FILE")]
    ingest_token_file: Option<PathBuf>,
    /// CA certificate (PEM) to trust for an `https://` --ingest, besides the system roots.
    #[arg(long, env = "INGEST_CA_FILE")]
    ingest_ca_file: Option<PathBuf>,
    /// Write TraitEvents straight to this Kafka topic instead (KAFKA_BROKERS etc. from the env).
    #[arg(long)]
    topic: Option<String>,
    /// Number of distinct users.
    #[arg(long, default_value_t = 10_000)]
    users: usize,
    /// Trait ids to realize, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "101,102,103")]
    traits: Vec<u64>,
    /// Region ids, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "3,6,7")]
    regions: Vec<u32>,
    /// Data partner of the ID syncs.
    #[arg(long, default_value_t = 1234)]
    data_partner: u64,
    /// Share of events that are ID syncs.
    #[arg(long, default_value_t = 0.05)]
    id_sync_share: f64,
    /// Share of events that are opt-outs.
    #[arg(long, default_value_t = 0.001)]
    opt_out_share: f64,
    /// Zipf exponent of user activity (0 = uniform).
    #[arg(long, default_value_t = 1.1)]
    zipf: f64,
    /// Events per second; 0 = as fast as possible.
    #[arg(long, default_value_t = 500.0)]
    rate: f64,
    /// Stop after this many seconds.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
    /// Stop after this many events (whichever comes first).
    #[arg(long)]
    count: Option<u64>,
    /// Events per ingest request / produce burst.
    #[arg(long, default_value_t = 100)]
    batch: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Prefix of user ids.
    #[arg(long, default_value = "user-")]
    user_prefix: String,
}

fn secret(value: &str) -> Result<Secret, String> {
    Ok(Secret::new(value))
}

/// The token of --ingest-token, or the first line of --ingest-token-file that is not blank
/// or a comment.
fn ingest_token(cli: &Cli) -> anyhow::Result<Option<Secret>> {
    if let Some(token) = &cli.ingest_token {
        return Ok(Some(token.clone()));
    }
    let Some(path) = &cli.ingest_token_file else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("--ingest-token-file: cannot read {}", path.display()))?;
    let token = text
        .lines()
        .map(str::trim)
        .find(|line| !line.is_empty() && !line.starts_with('#'))
        .with_context(|| format!("--ingest-token-file: {} holds no token", path.display()))?;
    Ok(Some(Secret::new(token)))
}

/// The HTTP client of the ingest API: trusting --ingest-ca-file too, if given.
fn ingest_client(cli: &Cli) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder();
    if let Some(path) = &cli.ingest_ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("--ingest-ca-file: cannot read {}", path.display()))?;
        for certificate in reqwest::Certificate::from_pem_bundle(&pem).with_context(|| {
            format!(
                "--ingest-ca-file: {} is not PEM certificates",
                path.display()
            )
        })? {
            builder = builder.add_root_certificate(certificate);
        }
    }
    builder
        .build()
        .context("cannot build the ingest HTTP client")
}

enum Sink {
    Ingest {
        client: reqwest::Client,
        url: String,
        /// `Bearer <token>`, marked sensitive so that it is never printed.
        authorization: Option<reqwest::header::HeaderValue>,
    },
    Kafka {
        producer: FutureProducer,
        topic: String,
    },
}

impl Sink {
    async fn send(&self, events: &[model::TraitEvent]) -> anyhow::Result<()> {
        match self {
            Self::Ingest {
                client,
                url,
                authorization,
            } => {
                let body: Vec<String> = events.iter().map(to_json_line).collect();
                let mut request = client.post(url).body(body.join("\n"));
                if let Some(value) = authorization {
                    request = request.header(reqwest::header::AUTHORIZATION, value.clone());
                }
                let response = request.send().await.context("ingest request failed")?;
                let status = response.status();
                anyhow::ensure!(
                    status.as_u16() == 202,
                    "ingest answered {status}: {}",
                    response.text().await.unwrap_or_default()
                );
                Ok(())
            }
            Self::Kafka { producer, topic } => {
                let mut pending = Vec::with_capacity(events.len());
                for event in events {
                    let payload = event.encode_to_vec();
                    let record = FutureRecord::to(topic)
                        .key(&event.user_id)
                        .payload(&payload);
                    pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
                }
                for delivery in pending {
                    delivery.await?.map_err(|(e, _)| e)?;
                }
                Ok(())
            }
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    anyhow::ensure!(
        !cli.traits.is_empty(),
        "--traits: give at least one trait id"
    );
    anyhow::ensure!(cli.users > 0, "--users: must be at least 1");
    let sink = match (&cli.ingest, &cli.topic) {
        (Some(url), _) => {
            let authorization = ingest_token(&cli)?
                .map(|token| {
                    let mut value = reqwest::header::HeaderValue::try_from(format!(
                        "Bearer {}",
                        token.expose()
                    ))
                    .context("the ingest token holds characters a header cannot carry")?;
                    value.set_sensitive(true);
                    anyhow::Ok(value)
                })
                .transpose()?;
            Sink::Ingest {
                client: ingest_client(&cli)?,
                url: url.clone(),
                authorization,
            }
        }
        (None, Some(topic)) => {
            let kafka = telemetry::KafkaSettings::from_env()?;
            let producer = kafka
                .client_config("loadgen")
                .set("linger.ms", "5")
                .set("enable.idempotence", "true")
                .create()?;
            Sink::Kafka {
                producer,
                topic: topic.clone(),
            }
        }
        (None, None) => anyhow::bail!("give --ingest URL or --topic NAME"),
    };
    let mut generator = Generator::new(
        TrafficModel {
            users: cli.users,
            traits: cli.traits.clone(),
            regions: cli.regions.clone(),
            data_partner: cli.data_partner,
            id_sync_share: cli.id_sync_share,
            opt_out_share: cli.opt_out_share,
            zipf: cli.zipf,
            user_prefix: cli.user_prefix.clone(),
        },
        cli.seed,
    );
    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(cli.duration);
    let limit = cli.count.unwrap_or(u64::MAX);
    let mut sent: u64 = 0;
    let mut last_report = started;
    let mut batch = Vec::with_capacity(cli.batch);
    while sent < limit && Instant::now() < deadline {
        let size = usize::try_from((limit - sent).min(cli.batch as u64)).unwrap_or(cli.batch);
        let now = telemetry::clock::unix_ms();
        batch.clear();
        batch.extend((0..size).map(|_| generator.next_event(now)));
        sink.send(&batch).await?;
        sent += size as u64;
        if cli.rate > 0.0 {
            let due = started + Duration::from_secs_f64(sent as f64 / cli.rate);
            tokio::time::sleep_until(due.into()).await;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            last_report = Instant::now();
            println!(
                "loadgen: {sent} events sent, {:.0}/s",
                sent as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    if let Sink::Kafka { producer, .. } = &sink {
        producer.flush(Duration::from_secs(10))?;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "loadgen: sent {sent} events in {seconds:.1} s: {:.0} events/s (target {})",
        sent as f64 / seconds,
        if cli.rate > 0.0 {
            format!("{:.0}/s", cli.rate)
        } else {
            "as fast as possible".to_owned()
        }
    );
    Ok(())
}
