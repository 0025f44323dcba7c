//! The batch pipeline follows the real-time one: its consumer joins no group and is assigned
//! the batch partitions with the numbers the real-time group assigns, so one worker reads both
//! topics of a user (per-user order across them, see `order`). At each assignment, before the
//! batch consumer reads, the order table gets back what the previous owner routed.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::error::KafkaError;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::{PipelineContext, decode_packed};
use crate::offsets::parse_positions;
use crate::order::{Order, Topic};
use crate::update::Decoder;

/// The batch pipeline's consumer. It joins no group: the real-time pipeline's rebalances
/// assign it the batch partitions with the numbers they assign the real-time pipeline (a user
/// is on the same partition number in both topics), so one worker reads both topics of a user
/// and the order table sees both. Its offsets go to the batch group's commits as before.
#[derive(Clone)]
pub struct Follower {
    pub(super) consumer: Arc<StreamConsumer<PipelineContext>>,
    /// Turns true once the batch pipeline drained (the real-time one leaves the group after).
    pub(super) drained: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Follower")
            .field(&self.consumer.context().topic)
            .finish()
    }
}

impl Follower {
    pub(super) fn topic(&self) -> String {
        self.consumer.context().topic.clone()
    }

    pub(super) fn revoke(&self, partitions: &[i32]) {
        if *self.drained.borrow() {
            return; // it committed and let go of its partitions when it drained
        }
        let context = self.consumer.context();
        context.revoke(&*self.consumer, partitions);
        if let Err(error) = self
            .consumer
            .incremental_unassign(&context.list(partitions))
        {
            tracing::warn!(topic = %context.topic, %error, "Cannot unassign revoked batch partitions.");
        }
    }

    /// Takes the batch partitions (their watermarks start from their last commits, which it
    /// returns; `None` when they cannot be read: the batch pipeline then fails). Reading
    /// starts with [`Self::read`].
    pub(super) fn assign(&self, partitions: &[i32]) -> Option<TopicPartitionList> {
        self.consumer.context().assign(&*self.consumer, partitions)
    }

    /// Starts reading the partitions [`Self::assign`] took, from `committed` (explicit
    /// offsets: see `telemetry::commits`).
    pub(super) fn read(&self, committed: &TopicPartitionList) {
        if let Err(error) = telemetry::commits::explicit_starts(committed)
            .and_then(|starts| self.consumer.incremental_assign(&starts))
        {
            self.consumer
                .context()
                .fail(format!("cannot assign batch partitions: {error}"));
            return;
        }
        self.consumer.context().lag.assigned(committed);
    }
}

/// Where a partition's commit says to start: the shared consumer's offset (`None`: no commit
/// yet) and the lowest position of all, with the destinations reading behind.
fn starts(
    element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>,
) -> Option<(i64, i64)> {
    let Offset::Offset(offset) = element.offset() else {
        return None;
    };
    let oldest = parse_positions(element.metadata())
        .unwrap_or_default()
        .iter()
        .map(|&(_, position)| position)
        .fold(offset, i64::min);
    Some((offset, oldest))
}

/// How much earlier than a pending change a change of the other topic may be stamped and
/// still be newer (the qualifier hosts' clocks).
const CLOCK_SKEW_MS: i64 = 60_000;

impl PipelineContext {
    /// Before the newly assigned partitions are read: what the previous owner routed that is
    /// newer than a change still to send from the other topic goes back into the order table
    /// (a newer real-time `0` it delivered before this worker reads an older onboarded `1`).
    /// For each topic with changes still to send, the other topic is read from a minute before
    /// the first of them (by time) up to where its shared consumer starts. Blocks.
    pub(super) fn restore_order(
        &self,
        consumer: &BaseConsumer<Self>,
        order: &Order,
        batch_topic: &str,
        real_time: &TopicPartitionList,
        batch: &TopicPartitionList,
    ) -> Result<(), KafkaError> {
        let started = std::time::Instant::now();
        let mut read = 0_u64;
        let mut decoder = Decoder::default();
        let topics = [
            (Topic::RealTime, self.topic.as_str(), real_time),
            (Topic::Batch, batch_topic, batch),
        ];
        for [
            (_, pending_topic, pending),
            (routed_side, routed_topic, routed),
        ] in [[topics[0], topics[1]], [topics[1], topics[0]]]
        {
            for element in pending.elements() {
                let partition = element.partition();
                let Some((routed_to, _)) = routed
                    .find_partition(routed_topic, partition)
                    .as_ref()
                    .and_then(starts)
                else {
                    continue; // nothing routed there before
                };
                let (low, end) =
                    consumer.fetch_watermarks(pending_topic, partition, Duration::from_secs(10))?;
                // Without a commit, everything the topic holds is still to send.
                let oldest = starts(&element).map_or(low, |(_, oldest)| oldest.max(low));
                if oldest >= end {
                    continue; // nothing to send: everything ahead is newer
                }
                let mut first = 0_i64;
                self.kafka.read_ranges(
                    pending_topic,
                    &[(partition, Offset::Offset(oldest), oldest + 1)],
                    false,
                    Duration::from_secs(30),
                    |m| {
                        first = m.timestamp().to_millis().unwrap_or(0);
                    },
                )?;
                let from = Offset::Offset((first - CLOCK_SKEW_MS).max(0));
                self.kafka.read_ranges(
                    routed_topic,
                    &[(partition, from, routed_to)],
                    true,
                    Duration::from_secs(600),
                    |m| {
                        read += 1;
                        if let Ok(update) =
                            decode_packed(&mut decoder, m.payload().unwrap_or_default())
                        {
                            order.restore(routed_side, partition, &update, end);
                        }
                    },
                )?;
            }
        }
        if read > 0 {
            tracing::info!(topic = %self.topic, messages = read, pairs = order.held(), ms = started.elapsed().as_millis() as u64, "Order table restored for the assigned partitions.");
        }
        Ok(())
    }
}
