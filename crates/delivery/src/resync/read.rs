//! The resync's reader of the qualifier's changelog, in a consumer group of its own whose
//! committed offsets are the resync's progress — no other store. A partition is opened at the
//! group's committed offset (its beginning without one, or with `--restart`), up to the end it
//! has then; a commit whose metadata reads `complete:<ms>` marks a partition done. The CLI
//! assigns every partition itself; a backfill subscribes, so the delivery workers share the
//! partitions, and a rebalance commits what is finished of a revoked partition for its next
//! owner, once the requests on the wire holding its users were answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use telemetry::{KafkaSettings, commits};

use crate::consumer::off_the_runtime;
use crate::offsets::Watermarks;
use crate::resync::partition::{Marker, PartitionRun, Phase};
use crate::resync::progress::Progress;

/// The changelog consumer of one resync.
pub type ChangelogConsumer = rdkafka::consumer::StreamConsumer<ResyncContext>;

/// How long a call to the broker may take.
pub const KAFKA_TIMEOUT: Duration = Duration::from_secs(30);

/// What the engine and the rebalance callbacks share.
#[derive(Debug)]
pub struct ResyncContext {
    pub topic: String,
    pub destination: u64,
    /// Start every partition from its beginning, whatever was committed (`--restart`).
    restart: bool,
    /// When this run started: the `running:` marker of its commits.
    pub started_unix_ms: i64,
    /// Per-partition INFO logs (a backfill, running inside the service); the CLI prints
    /// progress instead.
    pub announce: bool,
    pub watermarks: Watermarks,
    runs: Mutex<HashMap<i32, PartitionRun>>,
    pub progress: Arc<Progress>,
    /// How long a revoked partition waits for the attempts on the wire that hold its users.
    drain_timeout: Duration,
    /// Why the run cannot go on (set in a rebalance callback).
    fatal: Mutex<Option<String>>,
}

impl ResyncContext {
    /// The context of a resync of `destination` reading `topic`.
    pub fn new(
        topic: &str,
        destination: u64,
        restart: bool,
        announce: bool,
        progress: Arc<Progress>,
        drain_timeout: Duration,
    ) -> Self {
        Self {
            topic: topic.to_owned(),
            destination,
            restart,
            started_unix_ms: telemetry::clock::unix_ms(),
            announce,
            watermarks: Watermarks::new(vec![destination]),
            runs: Mutex::new(HashMap::new()),
            progress,
            drain_timeout,
            fatal: Mutex::new(None),
        }
    }

    /// The partitions this consumer reads, by number (never held across an await).
    pub fn runs(&self) -> MutexGuard<'_, HashMap<i32, PartitionRun>> {
        self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Why the run cannot go on, if a rebalance callback found out.
    pub fn fatal(&self) -> Option<String> {
        self.fatal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the group's commits and the ends of `partitions` and starts a run for each
    /// (complete ones stay complete unless `--restart`). Returns each partition's start and
    /// phase: a complete one is not read, one with nothing to read yet waits paused (a
    /// converge pass may read it). Blocks.
    pub fn open<C: Consumer<Self>>(
        &self,
        consumer: &C,
        partitions: &[i32],
    ) -> KafkaResult<Vec<(i32, i64, Phase)>> {
        let committed = commits::read_commits(consumer, &self.list(partitions), KAFKA_TIMEOUT)?;
        let mut opened = Vec::new();
        for element in committed.elements() {
            let partition = element.partition();
            let (low, high) = consumer.fetch_watermarks(&self.topic, partition, KAFKA_TIMEOUT)?;
            let marker = Marker::parse(element.metadata());
            let committed = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let start = match committed {
                Some(offset) if !self.restart => offset.max(low),
                _ => low,
            };
            let run = match marker {
                Marker::Complete { at_unix_ms } if !self.restart => {
                    self.progress.partition_done();
                    self.log_partition(
                        "Backfill of this partition was complete already.",
                        partition,
                        start,
                        high,
                    );
                    tracing::debug!(destination = self.destination, partition, complete_since = %model::rfc3339_ms(at_unix_ms), "Resync partition found complete.");
                    PartitionRun::complete(start)
                }
                _ => {
                    self.log_partition("Backfill of partition starts.", partition, start, high);
                    self.watermarks.lock().assign(partition, Some(start), &[]);
                    PartitionRun::new(start, high)
                }
            };
            opened.push((partition, start, run.phase));
            self.runs().insert(partition, run);
        }
        self.progress.partitions(partitions.len() as u64);
        Ok(opened)
    }

    fn log_partition(&self, message: &str, partition: i32, from: i64, to: i64) {
        if self.announce {
            tracing::info!(
                destination = self.destination,
                topic = %self.topic,
                partition,
                from,
                to,
                "{message}"
            );
        }
    }

    /// `partitions` of the changelog topic, as librdkafka takes them.
    pub fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for &partition in partitions {
            list.add_partition(&self.topic, partition);
        }
        list
    }

    /// The commit of every partition not complete: up to what is finished, marked running.
    pub fn progress_commits(&self) -> Vec<(i32, i64, String)> {
        let table = self.watermarks.lock();
        let metadata = self.running();
        self.runs()
            .iter()
            .filter(|(_, run)| run.phase != Phase::Complete)
            .filter_map(|(&partition, run)| {
                let lowest = table.lowest_position(partition)?;
                Some((partition, run.commit_offset(lowest), metadata.clone()))
            })
            .collect()
    }

    /// The metadata of this run's commits while it is not complete.
    fn running(&self) -> String {
        Marker::Running {
            started_unix_ms: self.started_unix_ms,
        }
        .metadata()
    }

    /// Gives `partitions` up ([`crate::offsets::Watermarks::give_up`], up to
    /// `drain_timeout_ms`): the commit of each that is not complete, up to what is finished,
    /// the users of the answered attempts included.
    fn give_up(&self, partitions: &[i32]) -> Vec<(i32, i64, String)> {
        let (positions, answered) = self.watermarks.give_up(partitions, self.drain_timeout);
        if !answered {
            tracing::warn!(
                destination = self.destination,
                waited_ms = self.drain_timeout.as_millis() as u64,
                "Backfill requests holding users of revoked partitions are still on the wire after drain_timeout_ms; the partitions go anyway, and their next owner sends those users again."
            );
        }
        let mut runs = self.runs();
        let runs: Vec<_> = partitions.iter().map(|p| (*p, runs.remove(p))).collect();
        let metadata = self.running();
        positions
            .into_iter()
            .filter_map(|position| {
                let (_, run) = runs.iter().find(|(p, _)| *p == position.partition)?;
                let run = run.as_ref().filter(|run| run.phase != Phase::Complete)?;
                let offset = run.commit_offset(position.oldest);
                Some((position.partition, offset, metadata.clone()))
            })
            .collect()
    }
}

/// Commits `positions` (`partition, offset, metadata`) of `topic`. Blocks.
pub fn commit<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    positions: &[(i32, i64, String)],
) -> KafkaResult<()> {
    if positions.is_empty() {
        return Ok(());
    }
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for (partition, offset, metadata) in positions {
        let mut element = list.add_partition(topic, *partition);
        element.set_metadata(metadata);
        element.set_offset(Offset::Offset(*offset))?;
    }
    consumer.commit(&list, CommitMode::Sync)
}

/// The changelog consumer in `group`: `read_committed` (the qualifier writes the changelog
/// in transactions), no automatic commits; a backfill's group rebalances cooperatively, so a
/// worker joining or leaving moves only the partitions that change owner.
pub fn consumer(
    kafka: &KafkaSettings,
    group: &str,
    context: ResyncContext,
) -> KafkaResult<ChangelogConsumer> {
    let announce = context.announce;
    let mut config = kafka.consumer_config(&format!("delivery-resync-{}", context.destination));
    config
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    if announce {
        config.set("partition.assignment.strategy", "cooperative-sticky");
    }
    config.create_with_context(context)
}

/// Whether every partition of the changelog is complete for `group`, and since when (the
/// latest completion). Blocks.
pub fn group_complete<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
) -> KafkaResult<Option<i64>> {
    let metadata = consumer.fetch_metadata(Some(topic), KAFKA_TIMEOUT)?;
    let mut list = TopicPartitionList::new();
    for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
        list.add_partition(topic, partition.id());
    }
    if list.count() == 0 {
        return Ok(None);
    }
    let committed = consumer.committed_offsets(list, KAFKA_TIMEOUT)?;
    let mut latest = i64::MIN;
    for element in committed.elements() {
        match Marker::parse(element.metadata()) {
            Marker::Complete { at_unix_ms } => latest = latest.max(at_unix_ms),
            _ => return Ok(None),
        }
    }
    Ok(Some(latest))
}

impl ClientContext for ResyncContext {}

telemetry::hand_over_rebalances!(ResyncContext);

impl commits::Handover for ResyncContext {
    /// A revoked partition is given up as the pipeline's are (`consumer::rebalance`): the
    /// lanes drop its queued users, the attempts on the wire holding its users are waited for
    /// (up to `drain_timeout_ms`), and what is finished then is committed, their users the
    /// partner accepted included. Its next owner resumes there and does not send them again.
    fn revoked(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        // Waited for and committed before the partitions go, off the runtime's way (see
        // `off_the_runtime`).
        off_the_runtime(|| {
            let positions = self.give_up(&partitions);
            if let Err(error) = commit(consumer, &self.topic, &positions) {
                tracing::warn!(destination = self.destination, %error, "Cannot commit the backfill's revoked partitions; their next owner sends from the last commit.");
            }
        });
    }

    /// Assigned partitions are taken at the starts their runs begin from (explicit offsets:
    /// see `telemetry::commits`); those with nothing to read wait paused.
    fn assigned(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        let taken = off_the_runtime(|| self.open(consumer, &partitions)).and_then(|opened| {
            let mut starts = TopicPartitionList::with_capacity(opened.len());
            for &(partition, start, _) in &opened {
                starts.add_partition_offset(&self.topic, partition, Offset::Offset(start))?;
            }
            commits::take_assigned(consumer, &starts)?;
            let idle: Vec<i32> = opened
                .iter()
                .filter(|(_, _, phase)| matches!(phase, Phase::Settling | Phase::Complete))
                .map(|&(p, _, _)| p)
                .collect();
            if idle.is_empty() {
                Ok(())
            } else {
                consumer.pause(&self.list(&idle))
            }
        });
        if let Err(error) = taken {
            *self.fatal.lock().unwrap_or_else(PoisonError::into_inner) = Some(format!(
                "cannot read the commits or ends of assigned changelog partitions: {error}"
            ));
            // The resync stops; the group goes on with librdkafka's own start meanwhile.
            let _ = commits::take_assigned(consumer, assigned);
        }
    }
}
