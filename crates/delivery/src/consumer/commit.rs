//! What a pipeline does at every commit tick (commit the positions that moved, in the
//! background; the order table's upkeep; the backlog gauges) and on its way out (drain the
//! lanes, the last commit, leave the group).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::{Offset, TopicPartitionList};

use super::{InputPipeline, off_the_runtime};
use crate::offsets::CommitPosition;
use crate::order::Topic;

/// A commit sent, and the broker's answer.
pub(super) type CommitOutcome = (Vec<CommitPosition>, Result<(), KafkaError>);

/// A commit request for `positions` of `topic`, metadata included.
pub(super) fn commit_list(topic: &str, positions: &[CommitPosition]) -> TopicPartitionList {
    let mut list = TopicPartitionList::with_capacity(positions.len());
    for position in positions {
        let mut element = list.add_partition(topic, position.partition);
        element.set_metadata(&position.metadata);
        let _ = element.set_offset(Offset::Offset(position.offset));
    }
    list
}

impl InputPipeline {
    /// Commits every owned partition's position that moved since the last confirmed commit;
    /// one commit at a time, in the background. The committed-offset gauge moves when the
    /// broker confirmed; a failed commit is sent again at the next tick.
    pub(super) async fn commit(&mut self) {
        self.readers.prune();
        self.report_backlogs();
        self.report_budget();
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
    /// pipeline's task; while such a read is on its way, sealing waits for a later tick).
    pub(super) fn maintain_order(&mut self) {
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
        if side == Topic::RealTime {
            self.shared
                .metrics
                .order_pairs
                .set(i64::try_from(order.held()).unwrap_or(i64::MAX));
        }
        if self.end_reads.busy() {
            return;
        }
        let sealed = order.seal(side);
        let waiting = order.waiting_for(side);
        unread.retain(|p| waiting.contains(p) && !sealed.contains(p));
        if sealed.is_empty() && unread.is_empty() {
            return;
        }
        let (consumer, order, topic) = (self.consumer.clone(), order.clone(), self.topic.clone());
        let watermarks = self.watermarks.clone();
        let failures = self.end_reads.failures.clone();
        self.end_reads.running = Some(tokio::task::spawn_blocking(move || {
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
                        let failed = failures.succeeded();
                        if failed > 0 {
                            tracing::info!(%topic, failed, "The ends of partitions for the order table are read again.");
                        }
                    }
                    // A generation without a target waits for the next tick. While a broker
                    // is away this fails at every tick: said once until a read succeeds.
                    Err(error) if failures.failed() => {
                        tracing::warn!(%topic, partition, %error, "Cannot read the ends of a partition for the order table; trying again at every tick, said again only after a read succeeds.");
                    }
                    Err(error) => {
                        tracing::debug!(%topic, partition, %error, "Cannot read the ends of a partition for the order table.");
                    }
                }
            }
        }));
    }

    /// The worker's queue budget and what its lanes hold (both pipelines report the same
    /// figures: the budget is the worker's).
    fn report_budget(&self) {
        let (metrics, budget) = (&self.shared.metrics, &self.shared.budget);
        metrics
            .queue_budget
            .set(i64::try_from(budget.capacity()).unwrap_or(i64::MAX));
        metrics
            .queued_bytes
            .set(i64::try_from(budget.queued()).unwrap_or(i64::MAX));
    }

    /// Every destination's backlog on this topic: input messages it has not finished while
    /// behind, and the age of what its reader holds.
    pub(super) fn report_backlogs(&self) {
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
    pub(super) fn moved_positions(&self) -> Vec<CommitPosition> {
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
    pub(super) async fn finish_commit(&mut self) {
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

    pub(super) fn confirmed(&mut self, positions: Vec<CommitPosition>) {
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
    pub(super) async fn final_commit(&mut self) {
        self.finish_commit().await;
        let positions = self.moved_positions();
        if positions.is_empty() {
            return;
        }
        let list = commit_list(&self.topic, &positions);
        match off_the_runtime(|| self.consumer.commit(&list, CommitMode::Sync)) {
            Ok(()) => self.confirmed(positions),
            Err(error) => {
                tracing::warn!(topic = %self.topic, %error, "Final offset commit failed; the new owner re-sends from the last commit.")
            }
        }
    }

    pub(super) async fn drain(mut self) {
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
        self.consumer.context().start_closing();
        if self.side() == Topic::RealTime {
            self.consumer.unsubscribe();
        } else if let Err(error) = self.consumer.unassign() {
            tracing::warn!(topic = %self.topic, %error, "Cannot unassign the batch partitions.");
        }
        self.drained.send_replace(true);
        tracing::info!(topic = %self.topic, "Drained.");
        let (topic, consumer) = (self.topic.clone(), self.consumer.clone());
        drop(self);
        close(&topic, consumer).await;
    }
}

/// How long the consumer may take to leave the group and close once its pipeline drained.
const CLOSE_BOUND: Duration = Duration::from_secs(10);

/// Closes the consumer (librdkafka's close, which dropping the last handle runs: it leaves
/// the group, running the rebalance callbacks, whose commit waits for the broker) on a
/// thread of its own, once the other handles (a background task's) are let go, and waits for
/// it at most [`CLOSE_BOUND`]. A close can wait on the broker for longer than a pod's grace
/// period (a busy or unanswering coordinator); by then every offset is committed, so the
/// process goes on to exit, and the group hands the partitions on after
/// `session_timeout_ms`. Neither a Tokio worker nor a blocking-pool thread, which the
/// runtime waits for at exit, is held by it.
async fn close<C: Send + Sync + 'static>(topic: &str, consumer: std::sync::Arc<C>) {
    let (closed, done) = tokio::sync::oneshot::channel();
    let closing = std::thread::Builder::new()
        .name("consumer-close".to_owned())
        .spawn(move || {
            let mut consumer = consumer;
            loop {
                match std::sync::Arc::try_unwrap(consumer) {
                    Ok(last) => break drop(last),
                    Err(shared) => consumer = shared,
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = closed.send(());
        });
    if let Err(error) = closing {
        // The consumer went with the thread's closure: it closed in place.
        tracing::warn!(%topic, %error, "Cannot start a thread to close the consumer on; closed it in place.");
        return;
    }
    if tokio::time::timeout(CLOSE_BOUND, done).await.is_err() {
        tracing::warn!(%topic, bound_s = CLOSE_BOUND.as_secs(), "The Kafka consumer did not close in time; exiting without it (every offset is committed; the group hands its partitions on after session_timeout_ms).");
    }
}

/// The order table's reads of partition ends: one batch at a time (while a broker is away each
/// read waits up to 10 s, and a batch a tick would pile up on the blocking threads), their
/// failures said once per run of them.
#[derive(Debug, Default)]
pub(super) struct EndReads {
    running: Option<tokio::task::JoinHandle<()>>,
    failures: Arc<FailureRun>,
}

impl EndReads {
    /// A batch of reads is on its way.
    fn busy(&self) -> bool {
        self.running.as_ref().is_some_and(|r| !r.is_finished())
    }
}

/// Failures in a row of a repeated attempt, counted so that a run of them is said once.
#[derive(Debug, Default)]
pub(super) struct FailureRun(AtomicU64);

impl FailureRun {
    /// One more failure: whether it is the first of its run.
    pub(super) fn failed(&self) -> bool {
        self.0.fetch_add(1, Ordering::Relaxed) == 0
    }

    /// A success: how many failures in a row it ended (0: none).
    pub(super) fn succeeded(&self) -> u64 {
        self.0.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of failures is said once, at its first; the success that ends it says how many
    /// there were, and the next failure starts a new run.
    #[test]
    fn a_run_of_failures_is_said_at_its_first_and_counted_at_its_end() {
        let run = FailureRun::default();
        assert_eq!(run.succeeded(), 0);
        assert!(run.failed());
        assert!(!run.failed());
        assert!(!run.failed());
        assert_eq!(run.succeeded(), 3);
        assert_eq!(run.succeeded(), 0);
        assert!(run.failed());
    }

    /// Busy while a batch of reads runs, not once it ended.
    #[tokio::test]
    async fn the_end_reads_are_busy_until_their_batch_ends() {
        let mut reads = EndReads::default();
        assert!(!reads.busy());
        let (release, released) = std::sync::mpsc::channel::<()>();
        reads.running = Some(tokio::task::spawn_blocking(move || {
            let _ = released.recv();
        }));
        assert!(reads.busy());
        release.send(()).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while reads.busy() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!reads.busy(), "still busy 5 s after its batch ended");
    }
}
