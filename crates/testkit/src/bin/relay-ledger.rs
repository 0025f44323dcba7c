//! `relay-ledger`: judges a run of the whole system change by change (see `testkit::ledger`).
//!
//! Reads the committed status changes (`read_committed`) from the real-time and batch status
//! topics of a delivery config, the dead letters, partner-sim's `/accepted` and `/stats`, and
//! the coalesced changes the delivery processes reported (`--coalesced-report`); prints one
//! line per destination and exits 0 when every committed change was delivered, dead-lettered
//! or coalesced with nothing
//! unexpected, out of order or against the contract, 1 when not, 2 when an input cannot be read
//! (a missing input never reads as zero).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use serde::Deserialize;
use telemetry::KafkaSettings;
use testkit::ledger::{self, Destination};

#[derive(Debug, Parser)]
#[command(
    about = "Account for every committed status change of a run: delivered, dead-lettered, coalesced, or missing."
)]
struct Args {
    /// delivery's config file: the topics of its `kafka:` block and each destination's id,
    /// URL path (partner-sim's endpoint) and segment mapping.
    #[arg(long)]
    config: PathBuf,
    /// partner-sim's admin base URL (serving `/accepted` and `/stats`), e.g. `http://127.0.0.1:19103`.
    #[arg(long)]
    partner_sim: String,
    /// A delivery process's coalesced-change report (`delivery --coalesced-report FILE`);
    /// repeat for every process that ran (workers, restarts, replays).
    #[arg(long = "coalesced-report", required = true)]
    coalesced_reports: Vec<PathBuf>,
    /// Kafka bootstrap servers (default: `KAFKA_BROKERS`, else `127.0.0.1:9092`).
    #[arg(long)]
    brokers: Option<String>,
}

/// The part of delivery's config the ledger needs; the rest is delivery's business.
#[derive(Debug, Deserialize)]
struct DeliveryFile {
    #[serde(default)]
    kafka: KafkaBlock,
    destinations: Vec<DestinationEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(default)]
struct KafkaBlock {
    topic: String,
    batch_topic: Option<String>,
    dlq_topic: String,
}

/// delivery's defaults (README, "Kafka topics").
impl Default for KafkaBlock {
    fn default() -> Self {
        Self {
            topic: "segment-status".to_owned(),
            batch_topic: Some("segment-status-batch".to_owned()),
            dlq_topic: "segment-status-dlq".to_owned(),
        }
    }
}

#[derive(Debug, Deserialize)]
struct DestinationEntry {
    id: u64,
    url: String,
    #[serde(default)]
    data_partner: Option<u64>,
    segments: HashMap<SegmentKey, String>,
}

/// A segment mapping's key: YAML may write our id as a number or a string.
#[derive(Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(untagged)]
enum SegmentKey {
    Number(u64),
    Text(String),
}

fn url_path(url: &str) -> &str {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    after_scheme.find('/').map_or("/", |i| &after_scheme[i..])
}

fn load_config(path: &Path) -> anyhow::Result<(KafkaBlock, Vec<Destination>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let file: DeliveryFile =
        serde_saphyr::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut destinations = Vec::new();
    for entry in file.destinations {
        let mut segments = HashMap::new();
        for (ours, theirs) in entry.segments {
            let ours = match ours {
                SegmentKey::Number(n) => n,
                SegmentKey::Text(s) => s.parse().with_context(|| {
                    format!(
                        "{}: destination {}: segment `{s}` is not a number",
                        path.display(),
                        entry.id
                    )
                })?,
            };
            segments.insert(ours, theirs);
        }
        destinations.push(Destination {
            id: entry.id,
            path: url_path(&entry.url).to_owned(),
            data_partner: entry.data_partner,
            segments,
        });
    }
    anyhow::ensure!(
        !destinations.is_empty(),
        "{}: no destinations",
        path.display()
    );
    Ok((file.kafka, destinations))
}

async fn get_json(base: &str, path: &str) -> anyhow::Result<serde_json::Value> {
    let url = format!("{}{path}", base.trim_end_matches('/'));
    let response = reqwest::get(&url)
        .await
        .with_context(|| format!("partner-sim: GET {url}"))?;
    anyhow::ensure!(
        response.status().is_success(),
        "partner-sim: GET {url}: HTTP {}",
        response.status()
    );
    response
        .json()
        .await
        .with_context(|| format!("partner-sim: GET {url}: not JSON"))
}

async fn run(args: Args) -> anyhow::Result<bool> {
    let (kafka, destinations) = load_config(&args.config)?;
    let brokers = args.brokers.clone();
    let settings = KafkaSettings::from_lookup(|key| match (key, &brokers) {
        ("KAFKA_BROKERS", Some(b)) => Some(b.clone()),
        _ => std::env::var(key).ok(),
    })
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    // What was received is read before what was committed: a change is committed before it
    // can reach the partner or the DLQ, so nothing received can look uncommitted (unexpected)
    // while the pipeline runs; a change committed meanwhile may look missing, which a caller
    // waiting for the drain asks again about.
    let coalesced = ledger::coalesced_in_reports(&args.coalesced_reports)?;
    let accepted = ledger::accepted(&get_json(&args.partner_sim, "/accepted").await?)?;
    let violations = ledger::violations(&get_json(&args.partner_sim, "/stats").await?)?;

    let topics: Vec<String> = std::iter::once(kafka.topic.clone())
        .chain(kafka.batch_topic.clone())
        .collect();
    let (committed, dlq) = tokio::task::spawn_blocking({
        let (settings, topics, dlq_topic, destinations) = (
            settings,
            topics.clone(),
            kafka.dlq_topic.clone(),
            destinations.clone(),
        );
        move || -> anyhow::Result<_> {
            let dlq = ledger::dead_letters(&settings, &dlq_topic, &destinations)?;
            let mut committed = Vec::new();
            for topic in &topics {
                committed.extend(ledger::committed(&settings, topic)?);
            }
            Ok((committed, dlq))
        }
    })
    .await??;

    let lines = ledger::lines(
        &destinations,
        &committed,
        &accepted,
        &dlq,
        &coalesced,
        &violations,
    )?;
    let mut problems = Vec::new();
    for line in &lines {
        if line.committed == 0 {
            problems.push(format!(
                "destination {} ({}): the run committed no change for it, so nothing was proven",
                line.id, line.path
            ));
        }
        problems.extend(line.problems());
    }
    let qualifier = ledger::qualifier_duplicates(&committed);
    if qualifier.identical > 0 || qualifier.repeated_status > 0 {
        problems.push(format!(
            "the qualifier re-committed {} changes and repeated a status {} times: its output is not exactly-once, e.g. {:?}",
            qualifier.identical, qualifier.repeated_status, qualifier.examples
        ));
    }
    println!(
        "ledger: {} status changes committed in {}; {} coalesced-change reports read",
        committed.len(),
        topics.join(" + "),
        args.coalesced_reports.len()
    );
    print!("{}", ledger::render(&lines));
    for problem in &problems {
        println!("ledger: FAIL: {problem}");
    }
    Ok(problems.is_empty())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("ledger: cannot judge the run: {error:#}");
            ExitCode::from(2)
        }
    }
}
