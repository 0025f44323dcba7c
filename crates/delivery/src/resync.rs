//! Resync: send one destination every *current* membership of its segments, read from the
//! qualifier's compacted changelog (`UserState` per user) — `delivery resync` for a partner
//! that lost its data, and a destination's `backfill: true` for a partner that is new.
//!
//! Each user's memberships become a `SegmentStatusUpdate` (status 1, dated when the user
//! qualified, origin batch, sequence 0) that takes the normal path: the destination's lanes,
//! batching, signing, retry, rate limit (as the batch lane, yielding to real time), metrics and
//! the delivery log. A failing partner makes the lanes wait (never a dead letter for a
//! transient failure). Opted-out markers and tombstones send nothing (but take back a 1 this
//! run sent the user before, see below).
//!
//! **Progress is the resync group's committed offsets** (`<group_id>-resync-<D>`, or
//! `-backfill-<D>`): an offset is committed once every user before it in its partition was
//! delivered or dead-lettered, so an interrupted run resumes where it was; a partition done
//! is committed with metadata `complete:<unix ms>`, and a run finding every partition so
//! says it is complete already.
//!
//! **Ordering with live traffic.** A user whose membership ends while the resync runs could
//! get the resync's stale 1 after the live 0. So once a partition's main pass (to the end
//! offsets taken at the start) is delivered, a converge pass reads the records written since
//! and sends each of those users their current view: 1s for their memberships, and a 0 dated
//! now for a segment this run sent as 1 that is no longer one (see `view`). The 0 follows the
//! stale 1 through the same lane, so the partner ends on it. Each pass starts once the
//! previous one's users were delivered, so it sees every record written before any of their 1s
//! arrived; passes repeat until one finds nothing new, at most three. What is left: when the
//! third converge pass still found records, a user it sent a 1 whose membership ended again
//! while that 1 was on its way (a record written during the last pass) keeps it; and a run
//! takes back only the 1s it sent itself, not those of an interrupted run it resumes, or of
//! another worker that owned a backfill partition before a rebalance.

mod engine;
mod partition;
mod read;
mod view;

/// `backfill: true`, run by the service.
pub mod backfill;
/// `delivery resync`.
pub mod command;
/// Counts, the progress line and `delivery_resync_users_total`.
pub mod progress;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::{Offset, TopicPartitionList};
use telemetry::KafkaSettings;
use tokio_util::sync::CancellationToken;

use crate::dead_letter::DeadLetterWriter;
use crate::resync::partition::Phase;
use crate::resync::read::{ChangelogConsumer, ResyncContext};
use crate::sender::DestinationSender;
pub use view::{SegmentFilter, UnmappedSegments};

/// How the resync's consumer gets its partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Membership {
    /// Every partition, assigned (`delivery resync`); `restart`: from the beginning,
    /// whatever the group committed.
    Assigned { restart: bool },
    /// Subscribed in the group, sharing the partitions with the other workers (a backfill).
    Subscribed,
}

/// One resync of one destination.
#[derive(Debug)]
pub struct Job {
    pub sender: Arc<DestinationSender>,
    pub filter: SegmentFilter,
    pub changelog_topic: String,
    /// The consumer group holding the progress.
    pub group: String,
    pub membership: Membership,
    pub dead_letters: Arc<DeadLetterWriter>,
    pub progress: Arc<progress::Progress>,
    /// On a stop, how long the users already handed to the lanes may take.
    pub drain_timeout: Duration,
}

/// How a resync ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    /// Every partition (every one of this worker's, for a backfill) is complete.
    Complete,
    /// Nothing to do: every partition was complete already, the last since this time.
    AlreadyComplete { as_of_unix_ms: i64 },
    /// Stopped: what was finished is committed, a new run resumes from there.
    Interrupted,
}

/// Runs `job` until it is complete or `stop` is cancelled.
pub async fn run(
    job: Job,
    kafka: &KafkaSettings,
    stop: CancellationToken,
) -> anyhow::Result<Ending> {
    let restart = matches!(job.membership, Membership::Assigned { restart: true });
    let context = ResyncContext::new(
        &job.changelog_topic,
        job.sender.config.id,
        restart,
        job.membership == Membership::Subscribed,
        job.progress.clone(),
        job.drain_timeout,
    );
    let consumer = Arc::new(
        read::consumer(kafka, &job.group, context)
            .context("cannot create the changelog consumer")?,
    );
    let opener = consumer.clone();
    let membership = job.membership;
    let already = tokio::task::spawn_blocking(move || open(&opener, membership, restart))
        .await
        .context("opening the changelog panicked")??;
    if let Some(as_of_unix_ms) = already {
        return Ok(Ending::AlreadyComplete { as_of_unix_ms });
    }
    engine::Engine::new(job, consumer).run(stop).await
}

/// Starts reading: `Some(time)` when every partition is complete already (and no
/// `--restart`). Blocks.
fn open(
    consumer: &ChangelogConsumer,
    membership: Membership,
    restart: bool,
) -> anyhow::Result<Option<i64>> {
    let context = consumer.context();
    let topic = context.topic.clone();
    let partitions: Vec<i32> = consumer
        .fetch_metadata(Some(&topic), read::KAFKA_TIMEOUT)
        .with_context(|| format!("cannot read the partitions of changelog topic {topic}"))?
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        anyhow::bail!(
            "changelog topic `{topic}` does not exist: set kafka.changelog_topic (KAFKA_CHANGELOG_TOPIC, or --changelog-topic) to the qualifier's changelog topic"
        );
    }
    if !restart {
        let complete = read::group_complete(consumer, &topic)
            .with_context(|| format!("cannot read the resync's commits on {topic}"))?;
        if complete.is_some() {
            return Ok(complete);
        }
    }
    if membership == Membership::Subscribed {
        consumer.subscribe(&[&topic])?;
        return Ok(None);
    }
    let opened = context
        .open(consumer, &partitions)
        .with_context(|| format!("cannot read the commits and ends of {topic}"))?;
    let mut assignment = TopicPartitionList::new();
    for &(partition, start, phase) in &opened {
        if phase != Phase::Complete {
            assignment.add_partition_offset(&topic, partition, Offset::Offset(start))?;
        }
    }
    consumer.assign(&assignment)?;
    let idle: Vec<i32> = opened
        .iter()
        .filter(|(_, _, phase)| *phase == Phase::Settling)
        .map(|&(p, _, _)| p)
        .collect();
    if !idle.is_empty() {
        consumer.pause(&context.list(&idle))?;
    }
    Ok(None)
}
