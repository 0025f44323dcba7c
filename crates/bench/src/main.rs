//! `relay-bench`: the fixtures and load of `make bench` (deploy/bench.sh runs it). Writes the
//! benchmark configurations, pre-loads status updates into a topic, and reads back how many
//! bytes of state the qualifier's changelog holds per user.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use relay_bench::{DeliveryFixture, qualifier_definitions_yaml, status_update};

#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Write the qualifier's definitions (segments.yaml) to --out.
    QualifierFixture {
        #[arg(long, default_value_t = 1_000)]
        segments: u64,
        #[arg(long, default_value_t = 5_000)]
        traits: u64,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Write delivery's destinations.yaml and partner-sim.yaml into --dir.
    DeliveryFixture {
        #[arg(long, default_value_t = 20)]
        destinations: u64,
        #[arg(long, default_value_t = 1_000)]
        segments: u64,
        /// partner-sim's address, e.g. https://127.0.0.1:19543.
        #[arg(long)]
        base_url: String,
        #[arg(long)]
        ca_file: String,
        /// Suffix of the topics and consumer group (`kafka.sh topics SUFFIX`).
        #[arg(long)]
        suffix: String,
        #[arg(long, default_value_t = 1_000)]
        max_users: u32,
        #[arg(long, default_value_t = 200)]
        linger_ms: u64,
        /// Concurrent requests per destination (one partner-sim serves all 20 here).
        #[arg(long, default_value_t = 1)]
        max_in_flight: u32,
        /// Updates buffered per lane (default: delivery's).
        #[arg(long)]
        queue_capacity: Option<u32>,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Produce --updates SegmentStatusUpdates (1–3 changes each) to --topic as fast as the
    /// broker takes them; prints `updates changes deliveries` (deliveries = changes × 2).
    PreloadStatus {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 2_000_000)]
        updates: u64,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000)]
        segments: u64,
    },
    /// Read the compacted changelog --topic to its end; prints `users bytes bytes_per_user` of
    /// the latest state per user.
    StateSize {
        #[arg(long)]
        topic: String,
    },
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0))
}

fn write(path: &std::path::Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

fn preload_status(topic: &str, updates: u64, users: u64, segments: u64) -> anyhow::Result<()> {
    anyhow::ensure!(
        users > 0 && segments > 0,
        "--users and --segments must be at least 1"
    );
    anyhow::ensure!(
        updates.div_ceil(users) * 3 <= segments,
        "--updates {updates} over --users {users} would repeat a (user, segment) pair: raise --users or --segments"
    );
    let kafka = telemetry::KafkaSettings::from_env()?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config("relay-bench")
        .set("linger.ms", "20")
        .set("batch.size", "1000000")
        .set("compression.type", "lz4")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "1000000")
        .create()?;
    let started = Instant::now();
    let now = now_ms();
    let (mut changes, mut buffer) = (0_u64, Vec::with_capacity(256));
    for index in 0..updates {
        let update = status_update(index, users, segments, now);
        changes += update.changes.len() as u64;
        buffer.clear();
        update.encode(&mut buffer)?;
        let mut record = BaseRecord::to(topic).key(&update.user_id).payload(&buffer);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((e, _)) => return Err(e).context("producing a status update"),
            }
        }
    }
    producer.flush(Duration::from_secs(60))?;
    eprintln!(
        "relay-bench: produced {updates} updates ({changes} changes) in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    println!("{updates} {changes} {}", changes * 2);
    Ok(())
}

fn state_size(topic: &str) -> anyhow::Result<()> {
    let kafka = telemetry::KafkaSettings::from_env()?;
    let mut latest: HashMap<Vec<u8>, usize> = HashMap::new();
    kafka.read_to_end(topic, None, |message| {
        use rdkafka::Message as _;
        let key = message.key().unwrap_or_default().to_vec();
        match message.payload() {
            Some(value) => latest.insert(key, value.len()),
            None => latest.remove(&key),
        };
    })?;
    let users = latest.len();
    let bytes: usize = latest.values().sum();
    println!("{users} {bytes} {:.1}", bytes as f64 / users.max(1) as f64);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::QualifierFixture {
            segments,
            traits,
            seed,
            out,
        } => write(&out, &qualifier_definitions_yaml(segments, traits, seed)),
        Command::DeliveryFixture {
            destinations,
            segments,
            base_url,
            ca_file,
            suffix,
            max_users,
            linger_ms,
            max_in_flight,
            queue_capacity,
            dir,
        } => {
            anyhow::ensure!(
                destinations >= 2,
                "--destinations: at least 2 (each segment goes to two)"
            );
            let fixture = DeliveryFixture {
                destinations,
                segments,
                base_url,
                ca_file,
                suffix,
                max_users,
                linger_ms,
                max_in_flight,
                queue_capacity,
            };
            write(&dir.join("destinations.yaml"), &fixture.destinations_yaml())?;
            write(&dir.join("partner-sim.yaml"), &fixture.partner_sim_yaml())
        }
        Command::PreloadStatus {
            topic,
            updates,
            users,
            segments,
        } => preload_status(&topic, updates, users, segments),
        Command::StateSize { topic } => state_size(&topic),
    }
}
