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
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_core::Stream as _;
use model::{SegmentStatus, SegmentStatusUpdate};
use rdkafka::Message;
use rdkafka::consumer::{Consumer, MessageStream, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use telemetry::{Heartbeat, KafkaSettings};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batcher::RoutedEvent;
use crate::budget::{QueueBudget, Share};
use crate::catch_up::CatchUpReaders;
use crate::config::KafkaConfig;
use crate::dead_letter::DeadLetterWriter;
use crate::metrics::Metrics;
use crate::offsets::Watermarks;
use crate::order::{Order, Topic};
use crate::router::Router;
use crate::sender::DestinationSender;
use crate::update::{Decoder, Update};

mod commit;
mod destinations;
mod follower;
mod rebalance;
mod route;
#[cfg(test)]
mod tests;
mod upstream;

use commit::{CommitOutcome, EndReads};
pub use follower::Follower;
use rebalance::PipelineContext;
pub(crate) use rebalance::off_the_runtime;
use route::Lagging;
use upstream::UpstreamLatency;

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
    /// The bytes all lanes may hold (`queue_budget_mb`), shared by every destination.
    pub budget: Arc<QueueBudget>,
    /// Where the pipelines and their lanes register heartbeats (`/livez`); `None` in the
    /// one-shot commands, which no probe watches.
    pub liveness: Option<telemetry::Liveness>,
}

/// One input topic, its consumer and its lanes.
pub struct InputPipeline {
    topic: Arc<str>,
    consumer: Arc<StreamConsumer<PipelineContext>>,
    watermarks: Watermarks,
    /// Reads each input message into the packed form the lanes take.
    decoder: Decoder,
    /// How late the updates read come (`delivery_upstream_latency_seconds`).
    upstream: UpstreamLatency,
    router: Router,
    /// The destinations, by a slot that stays theirs for the pipeline's life (a destination
    /// removed by a config reload leaves an empty slot; one added takes a new slot).
    slots: Vec<Option<Arc<DestinationSender>>>,
    /// Per slot, its lanes' queues, and the lane tasks' abort handles.
    lanes: Vec<Vec<mpsc::Sender<RoutedEvent>>>,
    /// Per slot, the destination's share of the worker's queue budget (`None`: removed).
    shares: Vec<Option<Arc<Share>>>,
    lane_aborts: Vec<Vec<tokio::task::AbortHandle>>,
    /// Per slot: when the destination last had to detach (a full lane detaches it at once
    /// while it is still stuck: it would hold the others back again on every partition).
    lagging: Vec<Option<Lagging>>,
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
    /// The order table's reads of partition ends on their way ([`Self::maintain_order`]).
    end_reads: EndReads,
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

/// The most input messages taken one after another, when fetched already, before the loop
/// looks at its other work (the commit tick, shutdown, reconfiguration, lanes that stopped):
/// looking at those between every two messages cost a lock or two per message.
const BURST: usize = 64;

/// The update an input message holds, unpacked; or why it is not a usable one. For the
/// tools and tests: the pipeline reads with [`decode_packed`].
pub(crate) fn decode(payload: &[u8]) -> Result<SegmentStatusUpdate, String> {
    decode_packed(&mut Decoder::default(), payload).map(|update| update.to_proto())
}

/// The update an input message holds, packed for the lanes; or why it is not a usable one.
pub(crate) fn decode_packed(decoder: &mut Decoder, payload: &[u8]) -> Result<Update, String> {
    let update = decoder
        .decode(payload)
        .map_err(|e| format!("not a SegmentStatusUpdate: {e}"))?;
    if update.user_key().is_empty() {
        return Err("user_id is empty".to_owned());
    }
    if update.changes().len() == 0 {
        return Err("no changes".to_owned());
    }
    // An unknown number reads as unspecified (as prost's accessor has it).
    if let Some(change) = update.changes().find(|c| {
        SegmentStatus::try_from(c.status).unwrap_or_default() == SegmentStatus::Unspecified
    }) {
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
            closing: std::sync::atomic::AtomicBool::new(false),
            drain_timeout: config.drain_timeout,
            rate_senders: std::sync::Mutex::new(shared.senders.clone()),
            total_partitions: std::sync::atomic::AtomicUsize::new(0),
            side,
            order: shared.order.clone(),
            follower,
            kafka: kafka.clone(),
            lag: telemetry::ConsumerLag::new(shared.metrics.consumer_lag.clone(), topic),
            revocations: shared
                .metrics
                .partitions_revoked
                .with_label_values(&[topic]),
        };
        let consumer: StreamConsumer<PipelineContext> = kafka
            .consumer_config(&format!("delivery-{topic}"))
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
            // A worker joining or leaving moves only the partitions that change owner. Under the
            // eager protocol every rebalance took every partition from every worker: each waited
            // for all its attempts on the wire, then read its queued events again.
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "statistics.interval.ms",
                telemetry::lag::STATISTICS_INTERVAL_MS,
            )
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
            decoder: Decoder::default(),
            upstream: UpstreamLatency::new(&shared.metrics, side),
            router: Router::new(&[]),
            slots: Vec::new(),
            lanes: Vec::new(),
            shares: Vec::new(),
            lane_aborts: Vec::new(),
            lagging: Vec::new(),
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
            end_reads: EndReads::default(),
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

    /// Where to send the destination list of a reloaded config: the pipeline applies it
    /// without stopping (see [`Self::reconfigure`]).
    pub fn reconfigurer(&self) -> mpsc::UnboundedSender<Vec<Arc<DestinationSender>>> {
        self.changes_tx.clone()
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
        // One stream for the pipeline's life: `recv` makes one per message, registering its
        // waker slot (a lock) and removing it again.
        let mut messages = consumer.stream();
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
                Some(message) = std::future::poll_fn(|cx| Pin::new(&mut messages).poll_next(cx)) => {
                    let taken = self.take_fetched(message, &mut messages, &mut targets).await;
                    self.upstream.flush();
                    if let Err(reason) = taken {
                        break Some(reason);
                    }
                }
            }
        };
        // The drain closes the consumer: this handle must not be the one that does it here.
        drop(messages);
        drop(consumer);
        let topic = self.topic.clone();
        // Bounded by the drain timeout, and mostly waiting for the partners.
        let _draining = self.heartbeat.as_ref().map(Heartbeat::waiting);
        self.drain().await;
        match failure {
            Some(reason) => Err(anyhow::anyhow!("input {topic}: {reason}")),
            None => Ok(()),
        }
    }

    /// Routes `message`, then the messages fetched already after it, up to [`BURST`], before
    /// the loop looks at its other work again; the reason when the pipeline must stop.
    async fn take_fetched(
        &mut self,
        mut message: KafkaResult<BorrowedMessage<'_>>,
        messages: &mut MessageStream<'_, PipelineContext>,
        targets: &mut Vec<usize>,
    ) -> Result<(), String> {
        for _ in 1..BURST {
            self.take(message, targets).await?;
            // Polled once: no wait, and a waker that does nothing (the loop's own poll sets
            // the task's again when the queue is empty).
            let mut now = Context::from_waker(Waker::noop());
            match Pin::new(&mut *messages).poll_next(&mut now) {
                Poll::Ready(Some(next)) => message = next,
                _ => return Ok(()),
            }
        }
        self.take(message, targets).await
    }

    /// Routes one input message, or dead-letters it when it is no update.
    async fn take(
        &mut self,
        message: KafkaResult<BorrowedMessage<'_>>,
        targets: &mut Vec<usize>,
    ) -> Result<(), String> {
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "Kafka consumer error.");
                return Ok(());
            }
        };
        let (partition, offset) = (message.partition(), message.offset());
        let written = message.timestamp().to_millis();
        match decode_packed(&mut self.decoder, message.payload().unwrap_or_default()) {
            Ok(update) => {
                self.upstream.read(&update, telemetry::clock::unix_ms());
                self.route(update, partition, offset, written, targets)
                    .await
            }
            Err(reason) => {
                let key = message.key().unwrap_or_default().to_vec();
                let payload = message.payload().unwrap_or_default().to_vec();
                drop(message);
                self.dead_letter_undecodable(partition, offset, &key, &payload, reason)
                    .await;
                Ok(())
            }
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
}
