//! `relay-bench`: the fixtures and load of `make bench` (deploy/bench.sh runs it). Writes the
//! benchmark configurations, pre-loads status updates into a topic, reads back what the
//! qualifier must make of the trait events (how many it ignores) and how many bytes of state
//! its changelog holds per user, and writes the invalid events of a known-bad run. Its
//! `metrics` subcommand is how deploy/bench.sh, deploy/local/demo.sh and deploy/image/check.sh
//! read a `/metrics` scrape: testkit's one parser, whose module comment defines what a selector
//! matches, what a sum and a histogram quantile are, and that a missing series is an error.

use std::collections::HashMap;
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use prost::Message as _;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer as _, ThreadedProducer};
use rdkafka::types::RDKafkaErrorCode;
use relay_bench::{
    DeliveryFixture, EventOutcomes, StateBytes, qualifier_definitions_yaml, status_update,
};
use testkit::scrape::{Scrape, ScrapeError, Selector};

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
        /// How many destinations each segment is routed to (all of them when fewer).
        #[arg(long, default_value_t = 2)]
        fan_out: u64,
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
        /// The worker's queue budget in MiB (default: delivery's).
        #[arg(long)]
        queue_budget_mb: Option<u32>,
        /// Share of requests (0–1) partner-sim answers 503 (bench.sh's known-bad run
        /// `BENCH_FAULT=failing-partner`).
        #[arg(long, default_value_t = 0.0)]
        partner_error_rate: f64,
        /// The status of those failures (422 is permanent: dead-lettered after the retry).
        #[arg(long, default_value_t = 503)]
        partner_error_status: u16,
        /// The first N destinations' partners answer 503 to everything (the isolation run).
        #[arg(long, default_value_t = 0)]
        down: u64,
        /// How long partner-sim takes to answer, MIN,MAX ms (bench.sh's known-bad run
        /// `BENCH_FAULT=slow-partner` makes it 45,50).
        #[arg(long, value_delimiter = ',', default_values_t = [1, 5])]
        partner_latency_ms: Vec<u64>,
        #[arg(long)]
        dir: PathBuf,
    },
    /// Produce --updates SegmentStatusUpdates (1–3 changes each) to --topic as fast as the
    /// broker takes them; prints `updates changes deliveries healthy` (deliveries = changes ×
    /// --fan-out, or × --destinations when fewer; healthy: the deliveries to destinations past
    /// the first --down of --destinations).
    PreloadStatus {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 20)]
        destinations: u64,
        /// As delivery-fixture's.
        #[arg(long, default_value_t = 2)]
        fan_out: u64,
        #[arg(long, default_value_t = 0)]
        down: u64,
        #[arg(long, default_value_t = 2_000_000)]
        updates: u64,
        #[arg(long, default_value_t = 100_000)]
        users: u64,
        #[arg(long, default_value_t = 1_000)]
        segments: u64,
    },
    /// Read the compacted changelog --topic to its end; prints `users bytes bytes_per_user` of
    /// the latest state per user (a user's trait parts counted as theirs, keys included), then
    /// what those bytes hold per user (ids, histories, memberships, …).
    StateSize {
        #[arg(long)]
        topic: String,
    },
    /// Read the trait events --topic to its end; prints `events opt_outs after_opt_out
    /// undecodable`: `after_opt_out` are the events of users who opted out earlier, exactly
    /// the ones the qualifier must count as ignored.
    EventOutcomes {
        #[arg(long)]
        topic: String,
    },
    /// Produce --count trait events without an event (valid protobuf, but nothing to apply:
    /// the qualifier must count them invalid) to --topic, for users of their own. The fixture
    /// of bench.sh's known-bad run `BENCH_FAULT=invalid-events`.
    InvalidEvents {
        #[arg(long)]
        topic: String,
        #[arg(long, default_value_t = 10)]
        count: u64,
    },
    /// Read Prometheus text on stdin (a `/metrics` scrape, or several concatenated: their
    /// samples add up) with testkit's parser (crates/testkit/src/scrape.rs defines the
    /// semantics). A selector that matches nothing, or text it cannot read, exits 1.
    Metrics {
        #[command(subcommand)]
        command: MetricsCommand,
    },
}

#[derive(Debug, Subcommand)]
enum MetricsCommand {
    /// Print the sum of the samples each SELECTOR matches (`name` or
    /// `name{label="value",…}`: the exact name, and those labels with those values), on one
    /// line, separated by spaces.
    Sum {
        #[arg(required = true)]
        selectors: Vec<String>,
        /// Digits after the point (0: rounded to a whole number).
        #[arg(long, default_value_t = 0)]
        decimals: usize,
        /// Print this for a selector that matches nothing, instead of failing: for a caller
        /// to which no sample is a legitimate state (bench.sh's stopped delivery workers).
        #[arg(long)]
        absent: Option<String>,
    },
    /// Print the Q-quantile (0–1) of HISTOGRAM (its name without `_bucket`, and label
    /// matchers), summed over every label set it matches, interpolated within its bucket as
    /// Prometheus' histogram_quantile does: seconds with 3 decimals, `>BOUND` when it lies
    /// above the highest finite bucket bound, `-` without observations.
    Quantile {
        q: f64,
        histogram: String,
        /// An earlier scrape of the same processes: only the observations made since count.
        #[arg(long)]
        since: Option<PathBuf>,
        /// Print this when the histogram is in neither scrape or not in one of them, instead
        /// of failing.
        #[arg(long)]
        absent: Option<String>,
    },
}

/// Runs `relay-bench metrics` on `text` (stdin); prints the answer.
fn metrics(command: MetricsCommand, text: &str) -> anyhow::Result<()> {
    let scrape = Scrape::parse(text).context("reading the metrics text on stdin")?;
    let stand_in = |result, absent: &Option<String>| match (result, absent) {
        (Err(ScrapeError::Missing { .. }), Some(absent)) => Ok(absent.clone()),
        (result, _) => result,
    };
    let answer = match command {
        MetricsCommand::Sum {
            selectors,
            decimals,
            absent,
        } => {
            let mut sums = Vec::with_capacity(selectors.len());
            for selector in &selectors {
                let sum = Selector::parse(selector)
                    .and_then(|selector| scrape.sum(&selector))
                    .map(|sum| format!("{sum:.decimals$}"));
                sums.push(stand_in(sum, &absent)?);
            }
            sums.join(" ")
        }
        MetricsCommand::Quantile {
            q,
            histogram,
            since,
            absent,
        } => {
            let selector = Selector::parse(&histogram)?;
            let earlier = since.as_deref().map(read_scrape).transpose()?;
            let between = match &earlier {
                Some(earlier) => scrape.histogram_since(earlier, &selector),
                None => scrape.histogram(&selector),
            };
            let quantile = between.and_then(|h| {
                h.quantile(q)
                    .map(|quantile| quantile.to_string())
                    .map_err(|problem| ScrapeError::Histogram {
                        selector: selector.to_string(),
                        problem,
                    })
            });
            stand_in(quantile, &absent)?
        }
    };
    println!("{answer}");
    Ok(())
}

fn read_scrape(path: &Path) -> anyhow::Result<Scrape> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the earlier scrape {}", path.display()))?;
    Scrape::parse(&text).with_context(|| format!("reading the earlier scrape {}", path.display()))
}

fn write(path: &Path, text: &str) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

/// `routing`: (destinations, fan-out, how many of the first destinations are down), to count
/// the deliveries and the healthy ones.
fn preload_status(
    topic: &str,
    updates: u64,
    users: u64,
    segments: u64,
    (destinations, fan_out, down): (u64, u64, u64),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        destinations >= 1 && fan_out >= 1,
        "--destinations and --fan-out: at least 1"
    );
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
    let now = telemetry::clock::unix_ms();
    let (mut changes, mut deliveries, mut healthy) = (0_u64, 0_u64, 0_u64);
    let mut buffer = Vec::with_capacity(256);
    for index in 0..updates {
        let update = status_update(index, users, segments, now);
        changes += update.changes.len() as u64;
        for change in &update.changes {
            for d in relay_bench::routes(change.segment_id, destinations, fan_out) {
                deliveries += 1;
                healthy += u64::from(d >= down);
            }
        }
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
    println!("{updates} {changes} {deliveries} {healthy}");
    Ok(())
}

/// A changelog is as long as its users are many (10M users: tens of millions of records), so
/// the read is bounded by a stall, not by a total deadline.
fn state_size(topic: &str) -> anyhow::Result<()> {
    use model::changelog::is_part;
    let kafka = telemetry::KafkaSettings::from_env()?;
    let partitions: Vec<i32> = kafka
        .partition_ends(topic)?
        .into_iter()
        .map(|(p, _)| p)
        .collect();
    // Per key, what its latest record holds; a trait part's counts its key (which repeats its
    // user's id: bytes the layout costs).
    let mut latest: HashMap<Vec<u8>, StateBytes> = HashMap::new();
    let mut all = StateBytes::default();
    let mut invalid = None;
    kafka.read_to_end_while_moving(topic, &partitions, Duration::from_secs(30), |message| {
        use rdkafka::Message as _;
        let key = message.key().unwrap_or_default();
        let replaced = match message.payload() {
            Some(value) => match StateBytes::of_record(key, value) {
                Ok(bytes) => {
                    all.add(&bytes);
                    latest.insert(key.to_vec(), bytes)
                }
                Err(error) => {
                    invalid.get_or_insert_with(|| {
                        format!(
                            "offset {} of partition {}: {error}",
                            message.offset(),
                            message.partition()
                        )
                    });
                    latest.remove(key)
                }
            },
            None => latest.remove(key),
        };
        if let Some(replaced) = replaced {
            all.subtract(&replaced);
        }
    })?;
    if let Some(invalid) = invalid {
        anyhow::bail!(
            "the changelog {topic} holds a record that is not the qualifier's: {invalid}"
        );
    }
    let users = latest.keys().filter(|key| !is_part(key)).count();
    let bytes = all.total();
    println!(
        "{users} {bytes} {:.1} {}",
        bytes as f64 / users.max(1) as f64,
        all.per_user(users)
    );
    Ok(())
}

fn event_outcomes(topic: &str) -> anyhow::Result<()> {
    let kafka = telemetry::KafkaSettings::from_env()?;
    let mut outcomes = EventOutcomes::default();
    kafka.read_to_end(topic, None, |message| {
        use rdkafka::Message as _;
        let event = model::TraitEvent::decode(message.payload().unwrap_or_default()).ok();
        outcomes.add(event.as_ref());
    })?;
    println!(
        "{} {} {} {}",
        outcomes.events, outcomes.opt_outs, outcomes.after_opt_out, outcomes.undecodable
    );
    Ok(())
}

fn invalid_events(topic: &str, count: u64) -> anyhow::Result<()> {
    let kafka = telemetry::KafkaSettings::from_env()?;
    let producer: ThreadedProducer<DefaultProducerContext> = kafka
        .client_config("relay-bench")
        .set("enable.idempotence", "true")
        .create()?;
    for index in 0..count {
        let event = model::TraitEvent {
            user_id: format!("bench-invalid-{index}"),
            origin: model::Origin::Realtime as i32,
            event: None,
        };
        let payload = event.encode_to_vec();
        producer
            .send(BaseRecord::to(topic).key(&event.user_id).payload(&payload))
            .map_err(|(e, _)| e)
            .context("producing an invalid event")?;
    }
    producer.flush(Duration::from_secs(30))?;
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
            fan_out,
            segments,
            base_url,
            ca_file,
            suffix,
            max_users,
            linger_ms,
            max_in_flight,
            queue_capacity,
            queue_budget_mb,
            partner_error_rate,
            partner_error_status,
            down,
            partner_latency_ms,
            dir,
        } => {
            anyhow::ensure!(
                destinations >= 1 && fan_out >= 1,
                "--destinations and --fan-out: at least 1 (each segment goes to --fan-out of them, or to all when fewer)"
            );
            anyhow::ensure!(
                (0.0..=1.0).contains(&partner_error_rate),
                "--partner-error-rate: a share between 0 and 1, got {partner_error_rate}"
            );
            let &[fastest, slowest] = partner_latency_ms.as_slice() else {
                anyhow::bail!("--partner-latency-ms: MIN,MAX in ms, got {partner_latency_ms:?}");
            };
            anyhow::ensure!(
                fastest <= slowest,
                "--partner-latency-ms: MIN,MAX with MIN at most MAX, got {fastest},{slowest}"
            );
            let fixture = DeliveryFixture {
                destinations,
                fan_out,
                segments,
                base_url,
                ca_file,
                suffix,
                max_users,
                linger_ms,
                max_in_flight,
                queue_capacity,
                queue_budget_mb,
                partner_error_rate,
                partner_error_status,
                down,
                partner_latency_ms: [fastest, slowest],
            };
            write(&dir.join("destinations.yaml"), &fixture.destinations_yaml())?;
            write(&dir.join("partner-sim.yaml"), &fixture.partner_sim_yaml())
        }
        Command::PreloadStatus {
            topic,
            destinations,
            fan_out,
            down,
            updates,
            users,
            segments,
        } => preload_status(
            &topic,
            updates,
            users,
            segments,
            (destinations, fan_out, down),
        ),
        Command::StateSize { topic } => state_size(&topic),
        Command::EventOutcomes { topic } => event_outcomes(&topic),
        Command::InvalidEvents { topic, count } => invalid_events(&topic, count),
        Command::Metrics { command } => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .context("cannot read the metrics text on stdin")?;
            metrics(command, &text)
        }
    }
}
