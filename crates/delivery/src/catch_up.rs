//! A destination's own reader of the input, for the partitions where it fell behind the
//! shared consumer (its lanes were full: it is slow, failing or down). It reads each such
//! partition from the destination's position, hands the updates the destination maps to the
//! destination's lanes (the same lanes, so per-user order holds), waiting for room as long as
//! it takes — only this destination waits — and stops reading a partition once it reaches
//! the shared consumer, which then serves the destination again. A reader without
//! partitions left stops; the pipeline starts a new one when the destination detaches again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Message, Offset, TopicPartitionList};
use telemetry::KafkaSettings;
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::batcher::{EventSource, RoutedEvent};
use crate::budget::{Share, queued_bytes};
use crate::lane::lane_of;
use crate::offsets::{CatchUp, PartitionAssignment, Watermarks};
use crate::order::{Order, Topic};
use crate::sender::DestinationSender;
use crate::update::{Decoder, Update};

/// The running readers of one input pipeline, by destination index.
#[derive(Debug, Default)]
pub struct CatchUpReaders {
    running: HashMap<usize, Handle>,
}

#[derive(Debug)]
struct Handle {
    wake: Arc<Notify>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl CatchUpReaders {
    /// Wakes destination `index`'s reader so it reads its newly detached partitions, or, when
    /// the table says none runs (`claimed`), starts one with `make`.
    pub fn ensure(
        &mut self,
        index: usize,
        claimed: bool,
        make: impl FnOnce() -> KafkaResult<CatchUpReader>,
    ) -> KafkaResult<()> {
        if !claimed {
            if let Some(handle) = self.running.get(&index) {
                handle.wake.notify_one();
            }
            return Ok(());
        }
        let reader = make()?;
        let handle = Handle {
            wake: reader.wake.clone(),
            stop: reader.stop.clone(),
            task: tokio::spawn(reader.run()),
        };
        self.running.insert(index, handle);
        Ok(())
    }

    /// Forgets the readers that stopped.
    pub fn prune(&mut self) {
        self.running.retain(|_, handle| !handle.task.is_finished());
    }

    /// Stops destination `index`'s reader, if one runs, and waits for it.
    pub async fn stop_one(&mut self, index: usize) {
        if let Some(handle) = self.running.remove(&index) {
            handle.stop.cancel();
            let _ = handle.task.await;
        }
    }

    /// Stops every reader and waits for them (they hold queues of the lanes).
    pub async fn stop(&mut self) {
        for handle in self.running.values() {
            handle.stop.cancel();
        }
        for (_, handle) in self.running.drain() {
            let _ = handle.task.await;
        }
    }
}

/// One destination's reader of one input topic.
pub struct CatchUpReader {
    consumer: StreamConsumer,
    /// Reads each message into the packed form the lanes take.
    decoder: Decoder,
    /// The destination's index in the pipeline's list.
    destination: usize,
    topic: Arc<str>,
    sender: Arc<DestinationSender>,
    lanes: Vec<mpsc::Sender<RoutedEvent>>,
    /// The destination's share of the worker's queue budget.
    share: Arc<Share>,
    /// Per-user order across the input topics, and which one this reader reads.
    order: Option<(Order, Topic)>,
    watermarks: Watermarks,
    /// The partitions it reads, as which assignment.
    assigned: HashMap<i32, PartitionAssignment>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl std::fmt::Debug for CatchUpReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CatchUpReader")
            .field("topic", &self.topic)
            .field("destination", &self.id())
            .finish_non_exhaustive()
    }
}

/// The destination a reader serves: its index in the pipeline's list, its sender, and the
/// queues of its lanes (a user takes the lane the shared consumer gives them: [`lane_of`]).
#[derive(Debug)]
pub struct ReaderTarget {
    pub index: usize,
    pub sender: Arc<DestinationSender>,
    pub lanes: Vec<mpsc::Sender<RoutedEvent>>,
    pub share: Arc<Share>,
    /// Asked whether a newer change came on the other input topic (none: one input topic).
    pub order: Option<(Order, Topic)>,
}

impl CatchUpReader {
    pub fn new(
        kafka: &KafkaSettings,
        group_id: &str,
        topic: Arc<str>,
        target: ReaderTarget,
        watermarks: Watermarks,
    ) -> KafkaResult<Self> {
        let ReaderTarget {
            index: destination,
            sender,
            lanes,
            share,
            order,
        } = target;
        // Assigned partitions by the pipeline, never subscribed and never committing (the
        // destination's position goes into the shared group's commit metadata); the group id
        // only routes librdkafka's events to the consumer queue, and names the reader in
        // broker logs.
        let consumer: StreamConsumer = kafka
            .consumer_config(&format!("delivery-catch-up-{}", sender.config.id))
            .set(
                "group.id",
                format!("{group_id}.catch-up.{}", sender.config.id),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "true")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            // It reads behind: it prefetches less still.
            .set("queued.max.messages.kbytes", "2048")
            .set("queued.min.messages", "2000")
            .set("fetch.max.bytes", "2097152")
            .create()?;
        Ok(Self {
            consumer,
            decoder: Decoder::default(),
            destination,
            topic,
            sender,
            lanes,
            share,
            order,
            watermarks,
            assigned: HashMap::new(),
            wake: Arc::new(Notify::new()),
            stop: CancellationToken::new(),
        })
    }

    fn id(&self) -> u64 {
        self.sender.config.id
    }

    async fn run(mut self) {
        let id = self.id();
        tracing::info!(topic = %self.topic, destination = id, "Catch-up reader started.");
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.sync();
        loop {
            tokio::select! {
                biased;
                () = self.stop.cancelled() => break,
                () = self.wake.notified() => self.sync(),
                _ = tick.tick() => {
                    self.sync();
                    if self.assigned.is_empty() && self.watermarks.lock().release_reader(self.destination) {
                        break;
                    }
                }
                message = self.consumer.recv() => match message {
                    Ok(message) => {
                        let partition = message.partition();
                        let offset = message.offset();
                        let timestamp = message.timestamp().to_millis();
                        let payload = message.payload().unwrap_or_default();
                        let update = crate::consumer::decode_packed(&mut self.decoder, payload).ok();
                        drop(message);
                        if !self.handle(partition, offset, timestamp, update).await {
                            break;
                        }
                    }
                    Err(KafkaError::PartitionEOF(partition)) => self.at_end(partition),
                    Err(error) => tracing::warn!(topic = %self.topic, destination = id, %error, "Kafka error in a catch-up reader."),
                },
            }
        }
        tracing::info!(topic = %self.topic, destination = id, "Catch-up reader stopped.");
    }

    /// Reads exactly the partitions the table says the destination is detached from, each
    /// from its position.
    fn sync(&mut self) {
        let wanted = self.watermarks.lock().detached_partitions(self.destination);
        let mut remove = TopicPartitionList::new();
        self.assigned.retain(|&partition, assignment| {
            let keep = wanted.iter().any(|(a, _)| a == assignment);
            if !keep {
                remove.add_partition(&self.topic, partition);
            }
            keep
        });
        self.unassign(&remove);
        let mut add = TopicPartitionList::new();
        for &(assignment, from) in &wanted {
            if !self.assigned.contains_key(&assignment.partition) {
                let _ = add.add_partition_offset(
                    &self.topic,
                    assignment.partition,
                    Offset::Offset(from),
                );
                self.assigned.insert(assignment.partition, assignment);
            }
        }
        if add.count() > 0
            && let Err(error) = self.consumer.incremental_assign(&add)
        {
            tracing::warn!(topic = %self.topic, destination = self.id(), %error, "Cannot read detached partitions; retrying.");
            for element in add.elements() {
                self.assigned.remove(&element.partition());
            }
        }
    }

    fn unassign(&self, partitions: &TopicPartitionList) {
        if partitions.count() > 0
            && let Err(error) = self.consumer.incremental_unassign(partitions)
        {
            tracing::warn!(topic = %self.topic, destination = self.id(), %error, "Cannot stop reading a partition.");
        }
    }

    fn stop_reading(&mut self, partition: i32) {
        if self.assigned.remove(&partition).is_some() {
            let mut list = TopicPartitionList::new();
            list.add_partition(&self.topic, partition);
            self.unassign(&list);
        }
    }

    /// Whether a lane of the destination is full, or the queue budget is full and the
    /// destination holds more than its share: no room.
    fn full(&self) -> bool {
        self.lanes.iter().any(|lane| lane.capacity() == 0) || !self.share.admits()
    }

    /// Waits until every lane of the destination has room: the reader goes on only as fast as
    /// the destination takes its changes, so it never attaches again (reaching the shared
    /// consumer) while its lanes are full — it would hold the others back at once. False
    /// when the reader must stop.
    async fn wait_for_room(&self) -> bool {
        while self.full() {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
                () = self.stop.cancelled() => return false,
            }
        }
        true
    }

    /// One message read; false when the reader must stop (shutdown, or the lanes are gone).
    async fn handle(
        &mut self,
        partition: i32,
        offset: i64,
        timestamp: Option<i64>,
        update: Option<Update>,
    ) -> bool {
        let Some(&assignment) = self.assigned.get(&partition) else {
            return true;
        };
        self.sender.metrics.catch_up_reads.inc();
        self.watermarks
            .lock()
            .note_read(assignment, self.destination, timestamp);
        if !self.wait_for_room().await {
            return false;
        }
        // Undecodable input is the shared consumer's to dead-letter: not needed here.
        let update = update
            .filter(|u| {
                self.sender.config.takes(u)
                    && u.changes()
                        .any(|c| self.sender.config.segments.contains_key(&c.segment_id))
            })
            .and_then(|u| self.without_superseded(partition, u));
        // A place in the destination's lane first (waiting here is the point: only this
        // destination waits), so the event goes in under the table's lock with the decision.
        let permit = match &update {
            Some(u) => {
                let lane = &self.lanes[lane_of(u, self.lanes.len())];
                tokio::select! {
                    permit = lane.reserve() => match permit {
                        Ok(permit) => Some(permit),
                        Err(_closed) => return false,
                    },
                    () = self.stop.cancelled() => return false,
                }
            }
            None => None,
        };
        let mut table = self.watermarks.lock();
        let decision = table.catch_up(
            assignment,
            self.destination,
            offset,
            timestamp,
            update.is_some(),
        );
        match decision {
            CatchUp::Deliver(assignment) | CatchUp::Last(assignment) => {
                if let (Some(update), Some(permit)) = (update, permit) {
                    self.sender.metrics.queue_depth.inc();
                    permit.send(RoutedEvent {
                        held: self.share.hold(queued_bytes(&update, 1)),
                        update,
                        source: Some(EventSource {
                            assignment,
                            offset,
                            catch_up: true,
                            written_unix_ms: None,
                        }),
                    });
                }
                drop(table);
                if matches!(decision, CatchUp::Last(_)) {
                    self.attached_again(partition, offset + 1);
                }
            }
            CatchUp::Skip => {}
            CatchUp::Attached => {
                drop((table, permit));
                self.attached_again(partition, offset);
            }
            CatchUp::Stop => {
                drop((table, permit));
                self.stop_reading(partition);
            }
        }
        true
    }

    fn attached_again(&mut self, partition: i32, from: i64) {
        tracing::info!(topic = %self.topic, destination = self.id(), partition, offset = from, "Destination caught up on this partition; the shared consumer serves it again.");
        self.stop_reading(partition);
    }

    /// `update` without the changes a newer one from the other input topic supersedes (they
    /// are counted and reported for this destination); `None` when none is left.
    fn without_superseded(&self, partition: i32, update: Update) -> Option<Update> {
        let Some((order, topic)) = &self.order else {
            return Some(update);
        };
        let superseded = order.check(*topic, partition, &update);
        if superseded.is_empty() {
            return Some(update);
        }
        crate::order::strip(update, &superseded, std::iter::once(&*self.sender))
    }

    /// The reader reached the end of `partition`: attach again if the shared consumer is
    /// no further.
    fn at_end(&mut self, partition: i32) {
        let Some(&assignment) = self.assigned.get(&partition) else {
            return;
        };
        if self.full() {
            return; // attaching now would fill the shared consumer's way; the next end will do
        }
        let next = self
            .consumer
            .position()
            .ok()
            .and_then(|list| {
                list.find_partition(&self.topic, partition)
                    .and_then(|e| match e.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    })
            })
            .unwrap_or(0);
        if self
            .watermarks
            .lock()
            .caught_up(assignment, self.destination, next)
        {
            self.attached_again(partition, next);
        }
    }
}
