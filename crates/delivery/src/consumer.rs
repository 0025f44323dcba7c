//! One input topic → the destinations' lanes. Reads in consumer group `delivery`
//! (`read_committed`, no auto-commit), decodes and validates each update, routes it, tracks
//! its offset until every destination that needed it is done, and commits the watermarks.
//! Undecodable input is dead-lettered with its position and counted, never a crash.
//!
//! The shared consumer never waits for a destination. When a destination's lane is full
//! (it is slow, failing or down), the destination *detaches* from that partition at that
//! offset: the shared consumer skips it from there on, and the destination's own catch-up
//! reader (`catch_up`) reads the partition from its position into the same lanes, at the
//! destination's pace. Its position is stored in the metadata of the shared group's commit
//! (see `offsets`), so its backlog waits in Kafka — not in memory, not in the dead-letter
//! topic — across restarts and rebalances. When the reader reaches the shared consumer it
//! attaches again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use model::{SegmentStatus, SegmentStatusUpdate, SourcePosition};
use prost::Message as _;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use telemetry::{Heartbeat, KafkaSettings, Waiter};
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batcher::{EventSource, RoutedEvent};
use crate::catch_up::{CatchUpReader, CatchUpReaders, ReaderTarget};
use crate::config::KafkaConfig;
use crate::dead_letter::DeadLetterWriter;
use crate::lane::{Lane, LaneHasher};
use crate::metrics::Metrics;
use crate::offsets::{CommitPosition, Watermarks, parse_positions};
use crate::order::{Order, Topic};
use crate::router::Router;
use crate::sender::{DestinationSender, Priority};

/// Rebalance, commit and statistics callbacks: revoked partitions are committed up to their
/// watermark (with the positions of the destinations behind it) and dropped (their queued
/// events are skipped by the lanes); assigned ones start a new watermark, with the
/// destinations that were behind at the last commit detached from their positions;
/// librdkafka's statistics feed the lag gauges.
struct PipelineContext {
    topic: String,
    watermarks: Watermarks,
    /// Why the pipeline cannot go on (the positions of an assigned partition could not be
    /// read: going on would skip the backlog of the destinations behind).
    fatal: std::sync::Mutex<Option<String>>,
    /// The senders whose `rate_limit_rps` this pipeline shares out by owned partitions (the
    /// real-time pipeline's; none for the batch one).
    rate_senders: std::sync::Mutex<Vec<Arc<DestinationSender>>>,
    /// The input topic's partition count, as of the last rebalance.
    total_partitions: std::sync::atomic::AtomicUsize,
    /// Which input topic this is (the real-time one shares out the rate limits), and the
    /// order table shared with the other one (none without a batch topic).
    side: Topic,
    order: Option<Order>,
    /// The batch pipeline's consumer, which this (real-time) pipeline's rebalances assign.
    follower: Option<Follower>,
    kafka: KafkaSettings,
    /// `delivery_consumer_lag` of this input topic, from librdkafka's statistics.
    lag: telemetry::ConsumerLag,
    /// Rebalance callbacks wait for the broker (committed offsets, metadata, the order
    /// table's ends): the pipeline's loop is not stuck meanwhile.
    waiter: Option<Waiter>,
}

impl PipelineContext {
    /// Gives every rate-limited destination this worker's share, after a rebalance.
    fn share_rate(&self, consumer: &BaseConsumer<Self>) {
        if self.side != Topic::RealTime {
            return;
        }
        match consumer.fetch_metadata(Some(&self.topic), Duration::from_secs(10)) {
            Ok(metadata) => self.total_partitions.store(
                metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len()),
                std::sync::atomic::Ordering::Relaxed,
            ),
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "Cannot read the partition count; the last one known stands.");
            }
        }
        self.apply_rate_share();
    }

    /// Sets each rate-limited sender's share from the owned and total partition counts.
    fn apply_rate_share(&self) {
        if self.side != Topic::RealTime {
            return;
        }
        let owned = self.watermarks.lock().owned();
        let total = self
            .total_partitions
            .load(std::sync::atomic::Ordering::Relaxed);
        let senders = self
            .rate_senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for sender in senders.iter().filter(|s| s.config.rate_limit_rps.is_some()) {
            sender.set_rate_share(owned, total);
        }
    }
}

impl PipelineContext {
    fn fail(&self, reason: String) {
        tracing::error!(topic = %self.topic, %reason, "Input pipeline cannot go on.");
        *self
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }
}

/// A commit request for `positions` of `topic`, metadata included.
fn commit_list(topic: &str, positions: &[CommitPosition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for position in positions {
        let mut element = list.add_partition(topic, position.partition);
        element.set_metadata(&position.metadata);
        let _ = element.set_offset(Offset::Offset(position.offset));
    }
    list
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.observe(&statistics);
    }
}

impl PipelineContext {
    fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for &partition in partitions {
            list.add_partition(&self.topic, partition);
        }
        list
    }

    /// Commits revoked partitions up to their watermark (with the positions of the
    /// destinations behind it) and drops them.
    fn revoke<C: Consumer<Self>>(&self, consumer: &C, partitions: &[i32]) {
        let positions: Vec<CommitPosition> = {
            let mut table = self.watermarks.lock();
            partitions.iter().filter_map(|&p| table.revoke(p)).collect()
        };
        if !positions.is_empty()
            && let Err(error) =
                consumer.commit(&commit_list(&self.topic, &positions), CommitMode::Sync)
        {
            tracing::warn!(topic = %self.topic, %error, "Cannot commit revoked partitions; their new owner re-sends from the last commit.");
        }
        tracing::info!(topic = %self.topic, partitions = partitions.len(), "Partitions revoked.");
    }

    /// Reads the last commit of assigned partitions (where the shared consumer starts, and
    /// which destinations were behind it, from where) and starts their watermarks. Returns the
    /// commits, or `None` when they cannot be read (the pipeline then fails).
    fn assign<C: Consumer<Self>>(
        &self,
        consumer: &C,
        partitions: &[i32],
    ) -> Option<TopicPartitionList> {
        let committed =
            match consumer.committed_offsets(self.list(partitions), Duration::from_secs(30)) {
                Ok(committed) => committed,
                Err(error) => {
                    self.fail(format!(
                        "cannot read the committed positions of assigned partitions: {error}"
                    ));
                    return None;
                }
            };
        let mut table = self.watermarks.lock();
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let detached = match parse_positions(element.metadata()) {
                Ok(detached) => detached,
                Err(reason) => {
                    self.fail(format!("partition {}: {reason}", element.partition()));
                    return None;
                }
            };
            if !detached.is_empty() {
                tracing::info!(topic = %self.topic, partition = element.partition(), behind = %element.metadata(), "Destinations restored behind the shared consumer; their readers catch up.");
            }
            table.assign(element.partition(), offset, &detached);
        }
        drop(table);
        tracing::info!(topic = %self.topic, partitions = partitions.len(), "Partitions assigned.");
        Some(committed)
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let _rebalancing = self.waiter.as_ref().map(Waiter::waiting);
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        self.revoke(consumer, &partitions);
        if let Some(follower) = &self.follower {
            follower.revoke(&partitions);
        }
        if let Some(order) = &self.order {
            partitions.iter().for_each(|&p| order.revoke(p));
        }
        self.share_rate(consumer);
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(assigned) = rebalance else {
            return;
        };
        let _rebalancing = self.waiter.as_ref().map(Waiter::waiting);
        let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        if let Some(order) = &self.order {
            partitions.iter().for_each(|&p| order.assign(p));
        }
        let Some(committed) = self.assign(consumer, &partitions) else {
            return;
        };
        if let Some(follower) = &self.follower
            && let Some(batch) = follower.assign(&partitions)
        {
            // The order table first: the batch consumer routes as soon as it reads.
            if let Some(order) = &self.order
                && let Err(error) =
                    self.restore_order(consumer, order, &follower.topic(), &committed, &batch)
            {
                self.fail(format!(
                    "cannot restore the order table of assigned partitions: {error}"
                ));
            }
            follower.read(&batch);
        }
        self.share_rate(consumer);
    }
}

/// Which input a pipeline reads.
#[derive(Debug)]
pub enum Role {
    /// `segment-status`, in the consumer group; its rebalances also assign the batch
    /// pipeline's consumer, when there is one.
    RealTime { follower: Option<Follower> },
    /// `segment-status-batch`, assigned by the real-time pipeline.
    Batch,
}

/// What every input pipeline shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub senders: Vec<Arc<DestinationSender>>,
    /// The delivery log writer (`None`: `kafka.delivery_log_topic` is `""`).
    pub log: Option<Arc<crate::delivery_log::DeliveryLog>>,
    pub dead_letters: Arc<DeadLetterWriter>,
    pub metrics: Metrics,
    /// Per-user order across the two input topics (none without a batch topic).
    pub order: Option<Order>,
    /// Where the pipelines and their lanes register heartbeats (`/livez`); `None` in the
    /// one-shot commands, which no probe watches.
    pub liveness: Option<telemetry::Liveness>,
}

/// After a destination had to detach, how long a full lane of it detaches it at once — as
/// long as it has taken no batch since, or its requests are slow (see [`Lagging`]).
const LAGGING: Duration = Duration::from_secs(30);

/// A destination that had to detach: until [`LAGGING`] after that, a full lane of it detaches
/// it at once — unless it took a batch since and its requests are not slow
/// ([`DestinationSender::is_slow`]). A failing destination (timing out, waiting out a
/// backoff) takes no batch, and a partner answering just under its timeout is slow: they
/// leave every partition without holding the others back again. A healthy one that was stuck
/// behind one long request takes its next batch moments later and is waited for again, as
/// when all keep up: in a drain it would otherwise leave and rejoin partitions for 30 s, each
/// time read a second time by a catch-up reader started anew.
#[derive(Debug, Clone, Copy)]
struct Lagging {
    until: tokio::time::Instant,
    /// The destination's progress mark when it detached.
    progress: u64,
}

impl Lagging {
    /// `progress`: the destination's progress mark now; `slow`: whether its requests are slow.
    fn still_stuck(self, now: tokio::time::Instant, progress: u64, slow: bool) -> bool {
        now < self.until && (progress == self.progress || slow)
    }
}

/// A commit sent, and the broker's answer.
type CommitOutcome = (Vec<CommitPosition>, Result<(), KafkaError>);

/// One input topic, its consumer and its lanes.
pub struct InputPipeline {
    topic: Arc<str>,
    consumer: Arc<StreamConsumer<PipelineContext>>,
    watermarks: Watermarks,
    router: Router,
    /// The destinations, by a slot that stays theirs for the pipeline's life (a destination
    /// removed by a config reload leaves an empty slot; one added takes a new slot).
    slots: Vec<Option<Arc<DestinationSender>>>,
    /// Per slot, its lanes' queues, and the lane tasks' abort handles.
    lanes: Vec<Vec<mpsc::Sender<RoutedEvent>>>,
    lane_aborts: Vec<Vec<tokio::task::AbortHandle>>,
    /// Per slot: when the destination last had to detach (a full lane detaches it at once
    /// while it is still stuck: it would hold the others back again on every partition).
    lagging: Vec<Option<Lagging>>,
    lane_hasher: LaneHasher,
    lane_tasks: JoinSet<()>,
    /// New destination lists from config reloads.
    changes: mpsc::UnboundedReceiver<Vec<Arc<DestinationSender>>>,
    changes_tx: mpsc::UnboundedSender<Vec<Arc<DestinationSender>>>,
    /// The destinations' catch-up readers (started when a destination detaches).
    readers: CatchUpReaders,
    kafka: KafkaSettings,
    group_id: String,
    shared: Shared,
    commit_interval: Duration,
    drain_timeout: Duration,
    /// What the broker confirmed as committed, per partition.
    committed: HashMap<i32, (i64, String)>,
    /// The commit on its way (a blocking call on its own thread, so the gauge moves only
    /// when the broker confirmed it, and a failed one is simply sent again).
    committing: Option<tokio::task::JoinHandle<CommitOutcome>>,
    /// Set once the pipeline drained (see [`Follower`]).
    drained: tokio::sync::watch::Sender<bool>,
    /// Beats once per turn of [`InputPipeline::run`]'s loop (`/livez`: `consumer[<topic>]`).
    heartbeat: Option<Heartbeat>,
}

impl std::fmt::Debug for InputPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputPipeline")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Why an input message is not a usable update.
pub(crate) fn decode(payload: &[u8]) -> Result<SegmentStatusUpdate, String> {
    let update = SegmentStatusUpdate::decode(payload)
        .map_err(|e| format!("not a SegmentStatusUpdate: {e}"))?;
    if update.user_id.is_empty() {
        return Err("user_id is empty".to_owned());
    }
    if update.changes.is_empty() {
        return Err("no changes".to_owned());
    }
    if let Some(change) = update
        .changes
        .iter()
        .find(|c| c.status() == SegmentStatus::Unspecified)
    {
        return Err(if change.status == 0 {
            format!("segment {}: status is unspecified", change.segment_id)
        } else {
            format!(
                "segment {}: unknown status {} (written by a newer version?)",
                change.segment_id, change.status
            )
        });
    }
    Ok(update)
}

impl InputPipeline {
    /// Starts the consumer of `topic` (the real-time one subscribes in `group_id`; the batch
    /// one waits to be assigned, see [`Follower`]) and the lanes of every destination. The
    /// real-time pipeline's partitions also decide each worker's share of the destinations'
    /// rate limits.
    pub fn start(
        kafka: &KafkaSettings,
        config: &KafkaConfig,
        topic: &str,
        group_id: &str,
        shared: Shared,
        role: Role,
    ) -> Result<Self, KafkaError> {
        let watermarks = Watermarks::new(shared.senders.iter().map(|s| s.config.id).collect());
        let (side, follower) = match role {
            Role::RealTime { follower } => (Topic::RealTime, follower),
            Role::Batch => (Topic::Batch, None),
        };
        // The loop turns at least once per commit interval, even with nothing to read.
        let heartbeat = shared.liveness.as_ref().map(|liveness| {
            liveness.heartbeat_within(
                format!("consumer[{topic}]"),
                liveness.stall_after().max(config.commit_interval * 2),
            )
        });
        let context = PipelineContext {
            waiter: heartbeat.as_ref().map(Heartbeat::waiter),
            topic: topic.to_owned(),
            watermarks: watermarks.clone(),
            fatal: std::sync::Mutex::new(None),
            rate_senders: std::sync::Mutex::new(shared.senders.clone()),
            total_partitions: std::sync::atomic::AtomicUsize::new(0),
            side,
            order: shared.order.clone(),
            follower,
            kafka: kafka.clone(),
            lag: telemetry::ConsumerLag::new(shared.metrics.consumer_lag.clone(), topic),
        };
        let consumer: StreamConsumer<PipelineContext> = kafka
            .client_config(&format!("delivery-{topic}"))
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set(
                "session.timeout.ms",
                config.session_timeout.as_millis().to_string(),
            )
            // A member learns of a rebalance at its next heartbeat: keep that short.
            .set(
                "heartbeat.interval.ms",
                (config.session_timeout / 5)
                    .as_millis()
                    .min(3_000)
                    .to_string(),
            )
            .set(
                "statistics.interval.ms",
                telemetry::lag::STATISTICS_INTERVAL_MS,
            )
            // librdkafka pre-fetches up to 64 MB (and 100,000 messages a partition) per
            // consumer by default, in fetch responses of up to 50 MB; the lanes' queues already
            // buffer thousands of updates, so a few MB keep fetching ahead without holding half
            // of the memory budget in raw messages.
            .set("queued.max.messages.kbytes", "8192")
            .set("queued.min.messages", "10000")
            .set("fetch.max.bytes", "4194304")
            .create_with_context(context)?;
        if side == Topic::RealTime {
            consumer.subscribe(&[topic])?;
        }

        let input_topic: Arc<str> = Arc::from(topic);
        // Every destination's backlog series exists (at 0) from start-up on.
        for sender in &shared.senders {
            let labels = [sender.config.id.to_string(), topic.to_owned()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            shared
                .metrics
                .backlog_messages
                .with_label_values(&labels)
                .set(0);
            shared.metrics.backlog_age.with_label_values(&labels).set(0);
        }
        let (changes_tx, changes) = mpsc::unbounded_channel();
        let mut pipeline = Self {
            topic: input_topic,
            consumer: Arc::new(consumer),
            watermarks,
            router: Router::new(&[]),
            slots: Vec::new(),
            lanes: Vec::new(),
            lane_aborts: Vec::new(),
            lagging: Vec::new(),
            lane_hasher: LaneHasher::default(),
            lane_tasks: JoinSet::new(),
            changes,
            changes_tx,
            readers: CatchUpReaders::default(),
            kafka: kafka.clone(),
            group_id: group_id.to_owned(),
            shared,
            commit_interval: config.commit_interval,
            drain_timeout: config.drain_timeout,
            committed: HashMap::new(),
            committing: None,
            drained: tokio::sync::watch::Sender::new(false),
            heartbeat,
        };
        for sender in pipeline.shared.senders.clone() {
            pipeline.slots.push(Some(sender.clone()));
            let slot = pipeline.slots.len() - 1;
            pipeline.spawn_lanes(slot, &sender);
        }
        pipeline.rebuild_router();
        Ok(pipeline)
    }

    /// The batch pipeline's consumer, for the real-time pipeline to assign.
    pub fn follower(&self) -> Follower {
        Follower {
            consumer: self.consumer.clone(),
            drained: self.drained.subscribe(),
        }
    }

    fn side(&self) -> Topic {
        self.consumer.context().side
    }

    /// The changes of `update` that a newer change from the other input topic supersedes
    /// are not routed: they are counted and reported for the destinations this consumer
    /// serves on `partition` (those reading it on their own do so when they read it).
    fn without_superseded(
        &mut self,
        update: SegmentStatusUpdate,
        partition: i32,
        targets: &mut Vec<usize>,
    ) -> Option<SegmentStatusUpdate> {
        let Some(order) = &self.shared.order else {
            return Some(update);
        };
        let superseded = order.route(self.side(), partition, &update);
        if superseded.is_empty() {
            return Some(update);
        }
        self.router.route(&update, targets);
        self.watermarks.lock().served(partition, targets);
        let served = targets.iter().filter_map(|&d| self.slots[d].as_deref());
        crate::order::strip(update, &superseded, served)
    }

    /// Where to send the destination list of a reloaded config: the pipeline applies it
    /// without stopping (see [`Self::reconfigure`]).
    pub fn reconfigurer(&self) -> mpsc::UnboundedSender<Vec<Arc<DestinationSender>>> {
        self.changes_tx.clone()
    }

    /// Starts the lanes of `slot` for `sender` (replacing any it had).
    fn spawn_lanes(&mut self, slot: usize, sender: &Arc<DestinationSender>) {
        let capacity = sender.config.queue_capacity;
        let mut queues = Vec::with_capacity(sender.config.max_in_flight);
        let mut aborts = Vec::with_capacity(sender.config.max_in_flight);
        for lane in 0..sender.config.max_in_flight {
            let (tx, rx) = mpsc::channel(capacity);
            // A lane's own work between waits is a batch's linger and writing its body.
            let heartbeat = self.shared.liveness.as_ref().map(|liveness| {
                liveness.heartbeat_within(
                    format!("lane[{}/{}/{lane}]", sender.config.id, self.topic),
                    liveness.stall_after() + sender.config.batch.linger,
                )
            });
            aborts.push(
                self.lane_tasks.spawn(
                    Lane {
                        events: rx,
                        sender: sender.clone(),
                        dead_letters: self.shared.dead_letters.clone(),
                        watermarks: Some((self.watermarks.clone(), slot)),
                        input_topic: self.topic.clone(),
                        hold_transient: true,
                        priority: if self.side() == Topic::RealTime {
                            Priority::RealTime
                        } else {
                            Priority::Batch
                        },
                        outcomes: None,
                        heartbeat,
                    }
                    .run(),
                ),
            );
            queues.push(tx);
        }
        if slot == self.lanes.len() {
            self.lanes.push(queues);
            self.lane_aborts.push(aborts);
            self.lagging.push(None);
        } else {
            self.lanes[slot] = queues;
            self.lane_aborts[slot] = aborts;
            self.lagging[slot] = None;
        }
    }

    fn rebuild_router(&mut self) {
        let configs: Vec<Option<Arc<crate::config::DestinationConfig>>> = self
            .slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.config.clone()))
            .collect();
        self.router = Router::over(configs.iter().map(Option::as_ref));
    }

    /// Stops a slot's reader and lanes at once (what they held is accounted for by the
    /// caller: forgotten, or read again from the destination's position).
    async fn stop_slot(&mut self, slot: usize) {
        self.readers.stop_one(slot).await;
        self.watermarks.lock().release_claim(slot);
        for abort in self.lane_aborts[slot].drain(..) {
            abort.abort();
        }
        self.lanes[slot].clear();
    }

    /// Applies a reloaded config's destinations without stopping the others: a removed one
    /// stops (nothing is owed to it: what it held leaves the commit and the metadata); a
    /// changed one restarts with its new config from its position (what it held is read
    /// again by its reader, so nothing is lost: at most sent twice); an added one starts
    /// with the changes from now on. Unchanged destinations go on untouched.
    async fn reconfigure(&mut self, senders: Vec<Arc<DestinationSender>>) {
        for slot in 0..self.slots.len() {
            let Some(old) = self.slots[slot].clone() else {
                continue;
            };
            match senders.iter().find(|s| s.config.id == old.config.id) {
                Some(new) if Arc::ptr_eq(new, &old) => {}
                Some(new) => {
                    self.stop_slot(slot).await;
                    let held = self.watermarks.lock().restart_destination(slot);
                    old.metrics.queue_depth.sub(held as i64);
                    self.slots[slot] = Some(new.clone());
                    self.spawn_lanes(slot, new);
                    tracing::info!(topic = %self.topic, destination = new.config.id, resent = held, "Destination changed: it restarts with its new config from its position; the others go on.");
                }
                None => {
                    self.stop_slot(slot).await;
                    let held = self.watermarks.lock().remove_destination(slot);
                    old.metrics.queue_depth.sub(held as i64);
                    self.slots[slot] = None;
                    tracing::info!(topic = %self.topic, destination = old.config.id, dropped = held, "Destination removed; the others go on.");
                }
            }
        }
        for sender in &senders {
            let known = self
                .slots
                .iter()
                .flatten()
                .any(|s| s.config.id == sender.config.id);
            if !known {
                let slot = self.watermarks.lock().add_destination(sender.config.id);
                debug_assert_eq!(slot, self.slots.len());
                self.slots.push(Some(sender.clone()));
                self.spawn_lanes(slot, sender);
                tracing::info!(topic = %self.topic, destination = sender.config.id, "Destination added: it gets the changes from now on; the others go on.");
            }
        }
        self.rebuild_router();
        self.report_backlogs();
        // New and changed senders take this worker's share of their rate limit.
        let context = self.consumer.context();
        *context
            .rate_senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = senders;
        context.apply_rate_share();
    }

    /// Runs until `shutdown`, then drains: stops fetching, lets the lanes send what they hold
    /// (up to the drain timeout), commits what is finished and leaves the group. Fails when
    /// a lane stopped (a bug: its partitions would freeze) or the positions of an assigned
    /// partition could not be read; the process then exits and its partitions move.
    pub async fn run(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut targets = Vec::new();
        let consumer = self.consumer.clone();
        let failure = loop {
            if let Some(heartbeat) = &self.heartbeat {
                heartbeat.beat_in_task().await;
            }
            tokio::select! {
                () = shutdown.cancelled() => break None,
                _ = commit_tick.tick() => {
                    self.commit().await;
                    // Destinations restored detached at an assignment, or whose reader
                    // could not start, get one.
                    let unread = self.watermarks.lock().unread_destinations();
                    for destination in unread {
                        self.start_reader(destination);
                    }
                    if let Some(reason) = self.fatal() {
                        break Some(reason);
                    }
                }
                Some(senders) = self.changes.recv() => self.reconfigure(senders).await,
                Some(ended) = self.lane_tasks.join_next() => {
                    let reason = match ended {
                        // A lane of a removed or changed destination, stopped on purpose.
                        Err(error) if error.is_cancelled() => continue,
                        Err(error) if error.is_panic() => format!("a destination lane panicked: {error}"),
                        _ => "a destination lane stopped".to_owned(),
                    };
                    break Some(reason);
                }
                message = consumer.recv() => match message {
                    Ok(message) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        match decode(message.payload().unwrap_or_default()) {
                            Ok(update) => {
                                if let Err(reason) = self.route(update, partition, offset, &mut targets).await {
                                    break Some(reason);
                                }
                            }
                            Err(reason) => {
                                let key = message.key().unwrap_or_default().to_vec();
                                let payload = message.payload().unwrap_or_default().to_vec();
                                drop(message);
                                self.dead_letter_undecodable(partition, offset, &key, &payload, reason).await;
                            }
                        }
                    }
                    Err(error) => {
                        tracing::warn!(topic = %self.topic, %error, "Kafka consumer error.");
                    }
                },
            }
        };
        let topic = self.topic.clone();
        // Bounded by the drain timeout, and mostly waiting for the partners.
        let _draining = self.heartbeat.as_ref().map(Heartbeat::waiting);
        self.drain().await;
        match failure {
            Some(reason) => Err(anyhow::anyhow!("input {topic}: {reason}")),
            None => Ok(()),
        }
    }

    fn fatal(&self) -> Option<String> {
        self.consumer
            .context()
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Hands the update to every destination that maps it and reads this partition with the
    /// shared consumer. A destination whose lane stays full for its `detach_after` detaches
    /// from the partition here (and, for [`LAGGING`] after that, while it takes no batch or
    /// is slow, on a full lane at once), so a slow or failing destination holds the others
    /// back once, briefly; a busy but healthy one takes its next batch within that time, and
    /// everyone waits for it (backpressure, as when all keep up).
    async fn route(
        &mut self,
        update: SegmentStatusUpdate,
        partition: i32,
        offset: i64,
        targets: &mut Vec<usize>,
    ) -> Result<(), String> {
        let Some(update) = self.without_superseded(update, partition, targets) else {
            self.watermarks
                .lock()
                .track(partition, offset, &mut Vec::new());
            return Ok(());
        };
        self.router.route(&update, targets);
        let Some(assignment) = self.watermarks.lock().track(partition, offset, targets) else {
            return Ok(()); // fetched just before the partition was revoked; its new owner reads it
        };
        if targets.is_empty() {
            return Ok(());
        }
        let source = Some(EventSource {
            assignment,
            offset,
            catch_up: false,
        });
        let user_hash = self.lane_hasher.user(&update.user_id);
        let update = Arc::new(update);
        for &destination in targets.iter() {
            let lanes = &self.lanes[destination];
            let Some(sender) = &self.slots[destination] else {
                continue;
            };
            let lane = &lanes[LaneHasher::lane(user_hash, lanes.len())];
            let event = RoutedEvent {
                update: update.clone(),
                source,
            };
            let sent = match lane.try_send(event) {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(event)) => {
                    // Wait for room while the destination takes batches (busy: everyone
                    // waits for it, as when all keep up); stuck (no batch taken within its
                    // `stuck_after`) or detached a moment ago: detach, and the others go on.
                    let now = tokio::time::Instant::now();
                    let lagging = self.lagging[destination].is_some_and(|l| {
                        l.still_stuck(now, sender.progress_mark(), sender.is_slow())
                    });
                    let mut pending = Some(event);
                    while !lagging && let Some(event) = pending.take() {
                        let waiting_since = sender.progress_mark();
                        // Backpressure from a busy partner: a wait, not a stall.
                        let _backpressure = self.heartbeat.as_ref().map(Heartbeat::waiting);
                        match tokio::time::timeout(sender.stuck_after(), lane.reserve()).await {
                            Ok(Ok(permit)) => permit.send(event),
                            Ok(Err(_closed)) => {
                                return Err(format!(
                                    "the lane of destination {} stopped",
                                    sender.config.id
                                ));
                            }
                            Err(_) => {
                                pending = Some(event);
                                if sender.progress_mark() == waiting_since {
                                    break;
                                }
                            }
                        }
                    }
                    if pending.is_none() {
                        Ok(())
                    } else {
                        self.lagging[destination] = Some(Lagging {
                            until: now + LAGGING,
                            progress: sender.progress_mark(),
                        });
                        if self
                            .watermarks
                            .lock()
                            .detach(assignment, offset, destination)
                        {
                            sender.metrics.detaches.inc();
                            tracing::info!(topic = %self.topic, destination = sender.config.id, partition, offset, "Destination cannot keep up; it reads this partition on its own from here, and the others go on.");
                            self.start_reader(destination);
                        }
                        continue;
                    }
                }
                Err(TrySendError::Closed(_)) => Err(()),
            };
            match sent {
                Ok(()) => sender.metrics.queue_depth.inc(),
                Err(()) => {
                    return Err(format!(
                        "the lane of destination {} stopped",
                        sender.config.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Makes sure destination `index`'s catch-up reader runs and reads its detached
    /// partitions.
    fn start_reader(&mut self, index: usize) {
        let Some(sender) = self.slots[index].clone() else {
            return;
        };
        let id = sender.config.id;
        let claimed = self.watermarks.lock().claim_reader(index);
        let topic = self.topic.clone();
        let kafka = &self.kafka;
        let order = self.shared.order.clone().map(|o| (o, self.side()));
        let make = || {
            CatchUpReader::new(
                kafka,
                &self.group_id,
                topic.clone(),
                ReaderTarget {
                    index,
                    sender,
                    lanes: self.lanes[index].clone(),
                    lane_hasher: self.lane_hasher.clone(),
                    order: order.clone(),
                },
                self.watermarks.clone(),
            )
        };
        if let Err(error) = self.readers.ensure(index, claimed, make) {
            self.watermarks.lock().release_claim(index);
            tracing::error!(topic = %self.topic, destination = id, %error, "Cannot start a catch-up reader; retrying at the next commit interval. The destination's position is kept.");
        }
    }

    async fn dead_letter_undecodable(
        &mut self,
        partition: i32,
        offset: i64,
        key: &[u8],
        payload: &[u8],
        reason: String,
    ) {
        self.shared.metrics.decode_errors.inc();
        tracing::warn!(topic = %self.topic, partition, offset, %reason, "Undecodable input message; dead-lettering it.");
        let source = SourcePosition {
            topic: self.topic.to_string(),
            partition,
            offset,
        };
        let _broker = self.heartbeat.as_ref().map(Heartbeat::waiting);
        self.shared
            .dead_letters
            .write_undecodable(source, key, payload, reason)
            .await;
        self.watermarks
            .lock()
            .track(partition, offset, &mut Vec::new());
    }

    /// Commits every owned partition's position that moved since the last confirmed commit;
    /// one commit at a time, in the background. The committed-offset gauge moves when the
    /// broker confirmed; a failed commit is sent again at the next tick.
    async fn commit(&mut self) {
        self.readers.prune();
        self.report_backlogs();
        self.maintain_order();
        if let Some(running) = &self.committing {
            if !running.is_finished() {
                return;
            }
            self.finish_commit().await;
        }
        let positions = self.moved_positions();
        if positions.is_empty() {
            return;
        }
        let consumer = self.consumer.clone();
        let list = commit_list(&self.topic, &positions);
        self.committing = Some(tokio::task::spawn_blocking(move || {
            let result = consumer.commit(&list, CommitMode::Sync);
            (positions, result)
        }));
    }

    /// The order table's upkeep, at every commit tick: the other topic's entries that waited
    /// for this topic's position go; generations of the other topic that collected long
    /// enough are sealed, and this topic's end is read for them (after sealing, off the
    /// pipeline's task).
    fn maintain_order(&self) {
        let Some(order) = &self.shared.order else {
            return;
        };
        let side = self.side();
        let positions = self.watermarks.lock().lowest_positions();
        // Partitions without a position yet (no commit, nothing read): their start is their
        // low watermark, read below.
        let mut unread: Vec<i32> = Vec::new();
        for (partition, position) in positions {
            match position {
                Some(position) => order.passed(side, partition, position),
                None => unread.push(partition),
            }
        }
        let sealed = order.seal(side);
        let waiting = order.waiting_for(side);
        unread.retain(|p| waiting.contains(p) && !sealed.contains(p));
        if !sealed.is_empty() || !unread.is_empty() {
            let (consumer, order, topic) =
                (self.consumer.clone(), order.clone(), self.topic.clone());
            let watermarks = self.watermarks.clone();
            tokio::task::spawn_blocking(move || {
                for partition in sealed.iter().chain(&unread) {
                    match consumer.fetch_watermarks(&topic, *partition, Duration::from_secs(10)) {
                        Ok((low, end)) => {
                            if sealed.contains(partition) {
                                order.set_target(side, *partition, end);
                            }
                            // Still nothing read there: everything before its start is passed
                            // (an empty partition holds nothing older).
                            if watermarks.lock().lowest_position(*partition).is_none() {
                                order.passed(side, *partition, low);
                            }
                        }
                        // A generation without a target waits for the next tick.
                        Err(error) => {
                            tracing::warn!(%topic, partition, %error, "Cannot read the ends of a partition for the order table; trying again at the next tick.");
                        }
                    }
                }
            });
        }
        if side == Topic::RealTime {
            self.shared
                .metrics
                .order_pairs
                .set(i64::try_from(order.held()).unwrap_or(i64::MAX));
        }
    }

    /// Every destination's backlog on this topic: input messages it has not finished while
    /// behind, and the age of what its reader holds.
    fn report_backlogs(&self) {
        let now = telemetry::clock::unix_ms();
        let table = self.watermarks.lock();
        for (index, sender) in self
            .slots
            .iter()
            .enumerate()
            .filter_map(|(i, s)| Some((i, s.as_ref()?)))
        {
            let labels = [sender.config.id.to_string(), self.topic.to_string()];
            let labels = [labels[0].as_str(), labels[1].as_str()];
            self.shared
                .metrics
                .backlog_messages
                .with_label_values(&labels)
                .set(table.backlog(index));
            self.shared
                .metrics
                .backlog_age
                .with_label_values(&labels)
                .set(table.backlog_age_ms(index, now) / 1000);
        }
    }

    /// The positions that differ from what the broker confirmed.
    fn moved_positions(&self) -> Vec<CommitPosition> {
        self.watermarks
            .lock()
            .committable()
            .into_iter()
            .filter(|p| {
                self.committed
                    .get(&p.partition)
                    .is_none_or(|(o, m)| *o != p.offset || *m != p.metadata)
            })
            .collect()
    }

    /// Waits for the commit on its way and records what the broker confirmed.
    async fn finish_commit(&mut self) {
        let Some(running) = self.committing.take() else {
            return;
        };
        match running.await {
            Ok((positions, Ok(()))) => self.confirmed(positions),
            Ok((_, Err(error))) => {
                tracing::warn!(topic = %self.topic, %error, "Offset commit failed; retrying at the next interval.");
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "Offset commit task failed; retrying at the next interval.")
            }
        }
    }

    fn confirmed(&mut self, positions: Vec<CommitPosition>) {
        for position in positions {
            self.shared
                .metrics
                .committed_offset
                .with_label_values(&[&*self.topic, &position.partition.to_string()])
                .set(position.offset);
            self.committed
                .insert(position.partition, (position.offset, position.metadata));
        }
    }

    /// The last commit, on the way out: waits for the one on its way, then commits what moved.
    async fn final_commit(&mut self) {
        self.finish_commit().await;
        let positions = self.moved_positions();
        if positions.is_empty() {
            return;
        }
        match self
            .consumer
            .commit(&commit_list(&self.topic, &positions), CommitMode::Sync)
        {
            Ok(()) => self.confirmed(positions),
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "Final offset commit failed; the new owner re-sends from the last commit.")
            }
        }
    }

    async fn drain(mut self) {
        tracing::info!(topic = %self.topic, "Draining: no more fetching; sending what is queued.");
        // The readers hold queues of the lanes: they stop first. Closing the queues then
        // makes every lane send its last batch and stop.
        self.readers.stop().await;
        self.lanes.clear();
        self.lane_aborts.clear();
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while self.lane_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let unfinished = self.watermarks.lock().in_progress();
            tracing::warn!(topic = %self.topic, unfinished, "Drain timeout passed; committing what is finished. The rest is re-sent after restart.");
            self.lane_tasks.abort_all();
        }
        self.final_commit().await;
        // The batch pipeline drains before this one leaves the group (which lets the batch
        // partitions go too).
        if let Some(follower) = &self.consumer.context().follower {
            let mut drained = follower.drained.clone();
            let _ = tokio::time::timeout(self.drain_timeout, drained.wait_for(|d| *d)).await;
        }
        if self.side() == Topic::RealTime {
            self.consumer.unsubscribe();
        } else if let Err(error) = self.consumer.unassign() {
            tracing::warn!(topic = %self.topic, %error, "Cannot unassign the batch partitions.");
        }
        self.drained.send_replace(true);
        tracing::info!(topic = %self.topic, "Drained.");
    }
}

mod follower;
#[cfg(test)]
mod tests;

pub use follower::Follower;
