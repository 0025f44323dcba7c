//! One input topic → the destinations' lanes. Reads in consumer group `delivery`
//! (`read_committed`, no auto-commit), decodes and validates each update, routes it, tracks
//! its offset until every destination that needed it is done, and commits the watermarks.
//! Undecodable input is dead-lettered with its position and counted, never a crash.

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
use telemetry::KafkaSettings;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::batcher::{EventSource, RoutedEvent};
use crate::config::KafkaConfig;
use crate::dead_letter::DeadLetterWriter;
use crate::lane::{Lane, LaneHasher};
use crate::metrics::Metrics;
use crate::offsets::Watermarks;
use crate::router::Router;
use crate::sender::DestinationSender;

/// Rebalance and statistics callbacks: revoked partitions are committed up to their watermark
/// and dropped (their queued events are skipped by the lanes); assigned ones start a new
/// watermark; librdkafka's statistics feed the lag gauges.
struct PipelineContext {
    topic: String,
    watermarks: Watermarks,
    metrics: Metrics,
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.topic) else {
            return;
        };
        for (partition, stats) in &topic.partitions {
            if *partition >= 0 && stats.consumer_lag >= 0 {
                self.metrics
                    .consumer_lag
                    .with_label_values(&[self.topic.as_str(), &partition.to_string()])
                    .set(stats.consumer_lag);
            }
        }
    }
}

impl ConsumerContext for PipelineContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(partitions) = rebalance else {
            return;
        };
        let mut commit = TopicPartitionList::new();
        {
            let mut table = self.watermarks.lock();
            for element in partitions.elements() {
                if let Some(offset) = table.revoke(element.partition()) {
                    let _ = commit.add_partition_offset(
                        element.topic(),
                        element.partition(),
                        Offset::Offset(offset),
                    );
                }
            }
        }
        if commit.count() > 0
            && let Err(error) = consumer.commit(&commit, CommitMode::Sync)
        {
            tracing::warn!(%error, "Cannot commit revoked partitions; their new owner re-sends from the last commit.");
        }
        tracing::info!(topic = %self.topic, partitions = partitions.count(), "Partitions revoked.");
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        let mut table = self.watermarks.lock();
        for element in partitions.elements() {
            table.assign(element.partition());
        }
        tracing::info!(topic = %self.topic, partitions = partitions.count(), "Partitions assigned.");
    }
}

/// What every input pipeline shares.
#[derive(Debug, Clone)]
pub struct Shared {
    pub senders: Vec<Arc<DestinationSender>>,
    pub dead_letters: Arc<DeadLetterWriter>,
    pub metrics: Metrics,
}

/// One input topic, its consumer and its lanes.
pub struct InputPipeline {
    topic: Arc<str>,
    consumer: StreamConsumer<PipelineContext>,
    watermarks: Watermarks,
    router: Router,
    /// Per destination, its lanes' queues.
    lanes: Vec<Vec<mpsc::Sender<RoutedEvent>>>,
    lane_hasher: LaneHasher,
    lane_tasks: JoinSet<()>,
    shared: Shared,
    commit_interval: Duration,
    drain_timeout: Duration,
    committed: HashMap<i32, i64>,
}

impl std::fmt::Debug for InputPipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InputPipeline")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Why an input message is not a usable update.
fn decode(payload: &[u8]) -> Result<SegmentStatusUpdate, String> {
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
    /// Subscribes to `topic` and starts the lanes of every destination.
    pub fn start(
        kafka: &KafkaSettings,
        config: &KafkaConfig,
        topic: &str,
        group_id: &str,
        shared: Shared,
    ) -> Result<Self, KafkaError> {
        let watermarks = Watermarks::default();
        let context = PipelineContext {
            topic: topic.to_owned(),
            watermarks: watermarks.clone(),
            metrics: shared.metrics.clone(),
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
            .set("statistics.interval.ms", "5000")
            // librdkafka pre-fetches up to 64 MB (and 100,000 messages a partition) per
            // consumer by default, in fetch responses of up to 50 MB; the lanes' queues already
            // buffer thousands of updates, so a few MB keep fetching ahead without holding half
            // of the memory budget in raw messages.
            .set("queued.max.messages.kbytes", "8192")
            .set("queued.min.messages", "10000")
            .set("fetch.max.bytes", "4194304")
            .create_with_context(context)?;
        consumer.subscribe(&[topic])?;

        let input_topic: Arc<str> = Arc::from(topic);
        let mut lane_tasks = JoinSet::new();
        let lanes = shared
            .senders
            .iter()
            .map(|sender| {
                let capacity = sender.config.queue_capacity;
                (0..sender.config.max_in_flight)
                    .map(|_| {
                        let (tx, rx) = mpsc::channel(capacity);
                        lane_tasks.spawn(
                            Lane {
                                events: rx,
                                sender: sender.clone(),
                                dead_letters: shared.dead_letters.clone(),
                                watermarks: Some(watermarks.clone()),
                                input_topic: input_topic.clone(),
                            }
                            .run(),
                        );
                        tx
                    })
                    .collect()
            })
            .collect();
        let destinations: Vec<_> = shared.senders.iter().map(|s| s.config.clone()).collect();
        Ok(Self {
            topic: input_topic,
            consumer,
            watermarks,
            router: Router::new(&destinations),
            lanes,
            lane_hasher: LaneHasher::default(),
            lane_tasks,
            shared,
            commit_interval: config.commit_interval,
            drain_timeout: config.drain_timeout,
            committed: HashMap::new(),
        })
    }

    /// Runs until `shutdown`, then drains: stops fetching, lets the lanes send what they hold
    /// (up to the drain timeout), commits what is finished and leaves the group.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut commit_tick = tokio::time::interval(self.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut targets = Vec::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = commit_tick.tick() => self.commit(CommitMode::Async),
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let (partition, offset) = (message.partition(), message.offset());
                        match decode(message.payload().unwrap_or_default()) {
                            Ok(update) => self.route(update, partition, offset, &mut targets).await,
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
        }
        self.drain().await;
    }

    async fn route(
        &mut self,
        update: SegmentStatusUpdate,
        partition: i32,
        offset: i64,
        targets: &mut Vec<usize>,
    ) {
        self.router.route(&update, targets);
        let needed = u32::try_from(targets.len()).unwrap_or(u32::MAX);
        let Some(assignment) = self.watermarks.lock().track(partition, offset, needed) else {
            return; // fetched just before the partition was revoked; its new owner reads it
        };
        if targets.is_empty() {
            return;
        }
        let source = Some(EventSource { assignment, offset });
        let user_hash = self.lane_hasher.user(&update.user_id);
        let update = Arc::new(update);
        for &destination in targets.iter() {
            let lanes = &self.lanes[destination];
            let lane = &lanes[LaneHasher::lane(user_hash, lanes.len())];
            self.shared.senders[destination].metrics.queue_depth.inc();
            // A full queue makes the consumer wait: backpressure rather than loss.
            if lane
                .send(RoutedEvent {
                    update: update.clone(),
                    source,
                })
                .await
                .is_err()
            {
                tracing::error!(
                    destination = self.shared.senders[destination].config.id,
                    "A destination lane stopped; its events will be re-read after a restart."
                );
            }
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
        self.shared
            .dead_letters
            .write_undecodable(source, key, payload, reason)
            .await;
        self.watermarks.lock().track(partition, offset, 0);
    }

    /// Commits every owned partition's watermark that moved since the last commit.
    fn commit(&mut self, mode: CommitMode) {
        let mut list = TopicPartitionList::new();
        {
            let table = self.watermarks.lock();
            for (partition, offset) in table.committable() {
                if self.committed.get(&partition) != Some(&offset) {
                    let _ =
                        list.add_partition_offset(&self.topic, partition, Offset::Offset(offset));
                }
            }
        }
        if list.count() == 0 {
            return;
        }
        match self.consumer.commit(&list, mode) {
            Ok(()) => {
                for element in list.elements() {
                    if let Offset::Offset(offset) = element.offset() {
                        self.committed.insert(element.partition(), offset);
                        self.shared
                            .metrics
                            .committed_offset
                            .with_label_values(&[&*self.topic, &element.partition().to_string()])
                            .set(offset);
                    }
                }
            }
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "Offset commit failed; retrying at the next interval.")
            }
        }
    }

    async fn drain(mut self) {
        tracing::info!(topic = %self.topic, "Draining: no more fetching; sending what is queued.");
        // Closing the queues makes every lane send its last batch and stop.
        self.lanes.clear();
        let drained = tokio::time::timeout(self.drain_timeout, async {
            while self.lane_tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let unfinished = self.watermarks.lock().in_progress();
            tracing::warn!(topic = %self.topic, unfinished, "Drain timeout passed; committing what is finished. The rest is re-sent after restart.");
            self.lane_tasks.abort_all();
        }
        self.commit(CommitMode::Sync);
        self.consumer.unsubscribe();
        tracing::info!(topic = %self.topic, "Drained.");
    }
}

#[cfg(test)]
mod tests;
