//! `delivery resync --destination D`: one resync from the command line, in consumer group
//! `<kafka.group_id>-resync-<D>` (every changelog partition assigned), with progress on stderr
//! every 2 s. Ctrl-C (or SIGTERM) stops reading, gives what was handed to the lanes
//! `drain_timeout_ms` to finish, commits what is finished and exits 130; the same command
//! resumes. A finished resync says so and exits 0; it starts over only with `--restart`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use telemetry::KafkaSettings;
use tokio_util::sync::CancellationToken;

use crate::config::DeliveryConfig;
use crate::metrics::Metrics;
use crate::resync::progress::{self, Progress, Snapshot};
use crate::resync::{Ending, Job, Membership, SegmentFilter};
use crate::service::{build_shared, require_topics};

/// What to resync.
#[derive(Debug, Clone)]
pub struct Request {
    /// The destination id (`AAM_Destination_Id`).
    pub destination: u64,
    /// Only these of its segments (our ids); empty: every segment it maps.
    pub segments: Vec<u64>,
    /// The qualifier's changelog topic.
    pub changelog_topic: String,
    /// Start over from the beginning of the changelog, even after a complete run.
    pub restart: bool,
}

/// How often progress is printed.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Exit code of an interrupted run (the shell's code for Ctrl-C).
const INTERRUPTED: u8 = 130;

/// Runs the resync and prints how it ended; the exit code says so too (3: some users were
/// dead-lettered).
pub async fn run(
    config: &DeliveryConfig,
    kafka: &KafkaSettings,
    request: Request,
) -> anyhow::Result<ExitCode> {
    let id = request.destination;
    let index = config
        .destinations
        .iter()
        .position(|d| d.id == id)
        .with_context(|| {
            let ids: Vec<String> = config
                .destinations
                .iter()
                .map(|d| d.id.to_string())
                .collect();
            format!(
                "--destination {id}: no such destination in the config (its destinations: {})",
                ids.join(", ")
            )
        })?;
    let filter = SegmentFilter::new(&config.destinations[index], &request.segments)?;
    let mut topics = vec![
        request.changelog_topic.as_str(),
        config.kafka.dlq_topic.as_str(),
    ];
    topics.extend(config.kafka.delivery_log_topic.as_deref());
    require_topics(kafka, &topics).await?;

    let metrics = Metrics::register(&prometheus::Registry::new())?;
    let shared = build_shared(config, kafka, &metrics)?;
    let progress = Arc::new(Progress::new(&metrics, id));
    let group = format!("{}-resync-{id}", config.kafka.group_id);
    let job = Job {
        sender: shared.senders[index].clone(),
        filter,
        changelog_topic: request.changelog_topic.clone(),
        group: group.clone(),
        membership: Membership::Assigned {
            restart: request.restart,
        },
        dead_letters: shared.dead_letters.clone(),
        progress: progress.clone(),
        drain_timeout: config.kafka.drain_timeout,
    };
    let stop = CancellationToken::new();
    let signal = tokio::spawn({
        let stop = stop.clone();
        async move {
            telemetry::shutdown_signal().await;
            stop.cancel();
        }
    });
    let printer = tokio::spawn(print_progress(id, progress.clone()));
    let ending = crate::resync::run(job, kafka, stop).await;
    printer.abort();
    signal.abort();
    if let Some(log) = &shared.log {
        log.flush(Duration::from_secs(5));
    }
    Ok(report(id, &group, ending?, progress.snapshot()))
}

/// Prints the progress line every [`PROGRESS_INTERVAL`], until aborted.
async fn print_progress(destination: u64, progress: Arc<Progress>) {
    let mut before = progress.snapshot();
    let mut at = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(PROGRESS_INTERVAL).await;
        let now = progress.snapshot();
        eprintln!("{}", progress::line(destination, now, before, at.elapsed()));
        (before, at) = (now, tokio::time::Instant::now());
    }
}

/// Prints how the run ended and returns the exit code.
fn report(destination: u64, group: &str, ending: Ending, totals: Snapshot) -> ExitCode {
    let counts = format!(
        "{} users read, {} sent, {} delivered, {} dead-lettered",
        totals.read, totals.sent, totals.delivered, totals.dead_lettered
    );
    match ending {
        Ending::AlreadyComplete { as_of_unix_ms } => {
            println!(
                "resync of destination {destination} is already complete as of {} (consumer group {group}); pass --restart to send every membership again",
                model::rfc3339_ms(as_of_unix_ms)
            );
            ExitCode::SUCCESS
        }
        Ending::Interrupted => {
            println!(
                "resync of destination {destination} interrupted: {counts}; what was finished is committed in consumer group {group}: run the same command to resume"
            );
            ExitCode::from(INTERRUPTED)
        }
        Ending::Complete => {
            println!("resync of destination {destination} complete: {counts}");
            if totals.dead_lettered > 0 {
                eprintln!(
                    "{} users were dead-lettered: `delivery replay --destination {destination}` re-sends them once the partner accepts them",
                    totals.dead_lettered
                );
                return ExitCode::from(3);
            }
            ExitCode::SUCCESS
        }
    }
}
