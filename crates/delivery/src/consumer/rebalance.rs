//! The pipeline's librdkafka context: the rebalance callbacks (commit revoked partitions,
//! start the watermarks of assigned ones, assign the batch pipeline's consumer), the rate
//! limits shared out by owned partitions, and the statistics behind the lag gauges.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use telemetry::{KafkaSettings, Waiter, commits};

use super::Follower;
use super::commit::commit_list;
use crate::offsets::{Watermarks, parse_positions};
use crate::order::{Order, Topic};
use crate::sender::DestinationSender;

/// Rebalance, commit and statistics callbacks: revoked partitions are dropped (their queued
/// events are skipped by the lanes), wait for the attempts on the wire that hold their
/// events, and are committed up to their watermark, the events of those attempts the partner
/// accepted included (with the positions of the destinations behind it); assigned ones start
/// a new watermark, with the destinations that were behind at the last commit detached from
/// their positions; librdkafka's statistics feed the lag gauges.
pub(super) struct PipelineContext {
    pub(super) topic: String,
    pub(super) watermarks: Watermarks,
    /// Why the pipeline cannot go on (the positions of an assigned partition could not be
    /// read: going on would skip the backlog of the destinations behind).
    pub(super) fatal: std::sync::Mutex<Option<String>>,
    /// The senders whose `rate_limit_rps` this pipeline shares out by owned partitions (the
    /// real-time pipeline's; none for the batch one).
    pub(super) rate_senders: std::sync::Mutex<Vec<Arc<DestinationSender>>>,
    /// The input topic's partition count, as of the last rebalance.
    pub(super) total_partitions: std::sync::atomic::AtomicUsize,
    /// Which input topic this is (the real-time one shares out the rate limits), and the
    /// order table shared with the other one (none without a batch topic).
    pub(super) side: Topic,
    pub(super) order: Option<Order>,
    /// The batch pipeline's consumer, which this (real-time) pipeline's rebalances assign.
    pub(super) follower: Option<Follower>,
    pub(super) kafka: KafkaSettings,
    /// `delivery_consumer_lag` of this input topic, from librdkafka's statistics.
    pub(super) lag: telemetry::ConsumerLag,
    /// `delivery_partitions_revoked_total` of this input topic.
    pub(super) revocations: prometheus::IntCounter,
    /// Rebalance callbacks wait for the broker (committed offsets, metadata, the order
    /// table's ends): the pipeline's loop is not stuck meanwhile.
    pub(super) waiter: Option<Waiter>,
    /// Set once the pipeline drained: an assignment that arrives while the consumer leaves
    /// the group (a join still under way at SIGTERM) is not read, since nothing will be
    /// fetched from it, and no rebalance waits for the broker any more.
    pub(super) closing: std::sync::atomic::AtomicBool,
    /// How long revoked partitions wait for the attempts on the wire that hold their events.
    pub(super) drain_timeout: Duration,
}

impl PipelineContext {
    /// Gives every rate-limited destination this worker's share, after a rebalance.
    pub(super) fn share_rate(&self, consumer: &BaseConsumer<Self>) {
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
    pub(super) fn apply_rate_share(&self) {
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
    pub(super) fn closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// From here on the consumer is leaving its group (see `closing`).
    pub(super) fn start_closing(&self) {
        self.closing
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn fail(&self, reason: String) {
        tracing::error!(topic = %self.topic, %reason, "Input pipeline cannot go on.");
        *self
            .fatal
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(reason);
    }
}

impl ClientContext for PipelineContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.observe(&statistics);
    }
}

impl PipelineContext {
    pub(super) fn list(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut list = TopicPartitionList::with_capacity(partitions.len());
        for &partition in partitions {
            list.add_partition(&self.topic, partition);
        }
        list
    }

    /// Drops revoked partitions, waits for the attempts on the wire that hold their events, and
    /// commits them up to their watermark (with the positions of the destinations behind it):
    /// what those attempts delivered is finished by then, and their new owner does not send it
    /// again.
    ///
    /// The wait is for attempts on the wire that hold events of revoked `partitions` (see
    /// `offsets::Sending`), up to `drain_timeout`. Their new owner sends again from the commit
    /// what they did not deliver, and must not send a user's newer change before the partner
    /// answered this worker's attempt of an older one. Revoked, the partitions' events make no
    /// further attempt here (no retry, nothing queued), so only attempts already on the wire
    /// are waited for. Not while leaving the group: the drain waited for everything already.
    pub(super) fn revoke<C: Consumer<Self>>(&self, consumer: &C, partitions: &[i32]) {
        let closing = self.closing();
        let wait = if closing {
            Duration::ZERO
        } else {
            self.drain_timeout
        };
        let (positions, answered) = self.watermarks.give_up(partitions, wait);
        if !answered && !closing {
            tracing::warn!(topic = %self.topic, waited_ms = self.drain_timeout.as_millis() as u64, "Attempts holding events of revoked partitions are still on the wire after drain_timeout_ms; the partitions go anyway, and their new owner may send a user's newer change before the partner answered one of these.");
        }
        if !positions.is_empty()
            && let Err(error) =
                consumer.commit(&commit_list(&self.topic, &positions), CommitMode::Sync)
        {
            tracing::warn!(topic = %self.topic, %error, "Cannot commit revoked partitions; their new owner re-sends from the last commit.");
        }
        // `owned`: what this worker holds now (a rebalance moves only some partitions).
        let owned = self.watermarks.lock().owned();
        tracing::info!(topic = %self.topic, partitions = partitions.len(), owned, "Partitions revoked.");
    }

    /// Reads the last commit of assigned partitions (where the shared consumer starts, and
    /// which destinations were behind it, from where) and starts their watermarks. Returns the
    /// commits, or `None` when they cannot be read (the pipeline then fails).
    pub(super) fn assign<C: Consumer<Self>>(
        &self,
        consumer: &C,
        partitions: &[i32],
    ) -> Option<TopicPartitionList> {
        match commits::read_commits(consumer, &self.list(partitions), commits::PATIENCE) {
            Ok(committed) => self.start(&committed).then_some(committed),
            Err(error) => {
                self.fail_to_read(&error);
                None
            }
        }
    }

    fn fail_to_read(&self, error: &rdkafka::error::KafkaError) {
        self.fail(format!(
            "cannot read the committed positions of assigned partitions: {error}"
        ));
    }

    /// Starts the watermarks of assigned partitions from their commits (`false`, and the
    /// pipeline fails, when a commit's metadata is malformed).
    fn start(&self, committed: &TopicPartitionList) -> bool {
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
                    return false;
                }
            };
            if !detached.is_empty() {
                tracing::info!(topic = %self.topic, partition = element.partition(), behind = %element.metadata(), "Destinations restored behind the shared consumer; their readers catch up.");
            }
            table.assign(element.partition(), offset, &detached);
        }
        let owned = table.owned();
        drop(table);
        tracing::info!(topic = %self.topic, partitions = committed.count(), owned, "Partitions assigned.");
        true
    }
}

telemetry::hand_over_rebalances!(PipelineContext);

/// Assigned partitions are taken at explicit offsets, their commits read here (see
/// `telemetry::commits`).
impl commits::Handover for PipelineContext {
    fn revoked(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList) {
        let _rebalancing = self.waiter.as_ref().map(Waiter::waiting);
        self.revocations.inc_by(revoked.count() as u64);
        let partitions: Vec<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        // The revoked partitions are committed before this returns and librdkafka lets them
        // go, so their next owner starts where this one stopped, and only once the partner
        // answered this one's attempts holding their events: the wait and the commit stay
        // synchronous, off the runtime's way (see `off_the_runtime`).
        off_the_runtime(|| {
            self.revoke(consumer, &partitions);
            if let Some(follower) = &self.follower {
                follower.revoke(&partitions);
            }
            if let Some(order) = &self.order {
                partitions.iter().for_each(|&p| order.revoke(p));
            }
            if !self.closing() {
                self.share_rate(consumer);
            }
        });
    }

    fn assigned(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        if self.closing() {
            tracing::info!(topic = %self.topic, partitions = assigned.count(), "Partitions assigned while leaving the group; not read.");
            if let Err(error) = commits::take_assigned(consumer, assigned) {
                tracing::warn!(topic = %self.topic, %error, "Cannot take the partitions assigned while leaving the group.");
            }
            return;
        }
        let _rebalancing = self.waiter.as_ref().map(Waiter::waiting);
        let partitions: Vec<i32> = assigned.elements().iter().map(|e| e.partition()).collect();
        if let Some(order) = &self.order {
            partitions.iter().for_each(|&p| order.assign(p));
        }
        // Reading the commits, the partition count and the order table waits for the broker.
        off_the_runtime(|| {
            // Unreadable commits stop the pipeline (`fail`); the group goes on with
            // librdkafka's own start meanwhile.
            let committed = match commits::take_at_commits(consumer, assigned, commits::PATIENCE) {
                Ok(committed) if self.start(&committed) => committed,
                Ok(_) => return,
                Err(error) => return self.fail_to_read(&error),
            };
            self.lag.assigned(&committed);
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
        });
    }
}

/// Runs `call`, which waits for the broker, on the thread where librdkafka runs a consumer's
/// rebalance callbacks: the thread that polls it. Here that is a Tokio worker, the one running
/// the pipeline's task (`StreamConsumer::recv` polls inside the task), so a synchronous commit
/// there would stall every other task queued on that worker (lanes sending to partners, the
/// other pipeline, `/livez`) for as long as the broker takes. On the multi-thread runtime the
/// worker first hands its queue of tasks to another thread (`block_in_place`), and `call`
/// holds up only this pipeline, which has to wait for it anyway: librdkafka gives up revoked
/// partitions only once the callback returned, and the commit must be done by then. Where
/// there is no worker to free (a current-thread runtime, as in unit tests, or outside any
/// runtime, as when a consumer closes) it runs in place, as before.
pub(crate) fn off_the_runtime<T>(call: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) if runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(call)
        }
        _ => call(),
    }
}
