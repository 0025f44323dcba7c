//! In-place recovery after a failed transaction: abort, a new producer, users restored from
//! the changelog and the input rewound to the committed offsets.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{Producer, PurgeConfig};
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::commit::Finished;
use super::{
    MAX_HUNG_PRODUCERS, Processor, RECOVERY_TIMEOUT, is_fatal, lock, transactional_producer,
};

impl Processor {
    /// After a failed transaction: aborts it, then replaces the users of the assigned
    /// partitions with the changelog's and seeks the input back to the committed offsets, so
    /// the events of the aborted transaction are processed again. Retries every second while
    /// the broker does not answer; returns a fatal error (or more than [`MAX_HUNG_PRODUCERS`]
    /// hung producers), or `Ok` once rewound (or shut down). A producer given up in a hung call
    /// is not aborted but replaced, which fences it.
    pub(super) fn recover(&mut self, shutdown: &CancellationToken) -> Result<(), KafkaError> {
        // A commit in flight ends first (committed or not, the rewind below is right), and what
        // was staged for the next transaction goes.
        if let Some(Finished { result: None, .. }) = self.in_flight.finish() {
            self.give_up_producer();
        }
        self.outbox.clear();
        // Until rewound, nothing polled may be processed against the state that ran ahead:
        // without its partitions in the store, `take_events` drops every message. (Rebalance
        // callbacks run only inside `poll`, so none interleaves with the recovery.)
        let assigned: Vec<i32> = lock(&self.store).partitions.keys().copied().collect();
        lock(&self.store).partitions.clear();
        if self.hung.len() > MAX_HUNG_PRODUCERS {
            tracing::error!(
                hung = self.hung.len(),
                "Too many transactional producers hang in librdkafka; stopping so that the process is restarted."
            );
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        let mut aborted = false;
        let mut attempts = 0_u32;
        while !shutdown.is_cancelled() {
            let step = if aborted {
                self.rewind(&assigned)
            } else if self.abandoned() {
                // Its call still hangs: an abort would wait behind it (or be refused as a
                // conflict). The new producer's `init_transactions` fences it and aborts its
                // transaction on the coordinator.
                Ok(())
            } else {
                // The failed transaction's records are to be aborted anyway; librdkafka's abort
                // waits for their delivery reports, which a BaseProducer serves only when polled.
                self.producer
                    .purge(PurgeConfig::default().queue().inflight());
                let _ = self.producer.flush(Duration::from_secs(1));
                match self.producer.abort_transaction(RECOVERY_TIMEOUT) {
                    // No transaction open (it failed before one began): nothing to abort.
                    Err(KafkaError::Transaction(e)) if e.code() == RDKafkaErrorCode::State => {
                        Ok(())
                    }
                    // A commit that timed out is still in progress, and librdkafka allows
                    // nothing but resuming it. Committed or not, the transaction is then over:
                    // the rewind below is right either way (a failed commit is aborted first
                    // on the next attempt).
                    Err(KafkaError::Transaction(e)) if e.code() == RDKafkaErrorCode::Conflict => {
                        self.producer.commit_transaction(RECOVERY_TIMEOUT)
                    }
                    other => other,
                }
            };
            match step {
                Ok(()) if aborted => {
                    tracing::info!(
                        attempts,
                        partitions = ?assigned,
                        "Recovered from the failed transaction: state and input rewound to what Kafka has."
                    );
                    return Ok(());
                }
                // Aborted: a new producer all the same. librdkafka 2.12.1 was seen hanging for
                // ever in the next send_offsets_to_transaction of a producer that had come
                // through an outage (docs/RELIABILITY.md, "Faults on a three-node cluster");
                // a new one fences the old epoch and starts clean, as after a restart.
                Ok(()) => aborted = self.replace_producer(&mut attempts),
                // E.g. the coordinator aborted the transaction (it timed out while the broker
                // was away) and fenced this producer's epoch: a new producer, as a restart
                // would make, fences the old one and starts clean.
                Err(error) if is_fatal(&error) && !aborted => {
                    tracing::warn!(%error, "The transactional producer cannot continue; replacing it.");
                    aborted = self.replace_producer(&mut attempts);
                }
                Err(error) => {
                    attempts += 1;
                    tracing::warn!(%error, attempts, "Cannot recover from the failed transaction yet; retrying in 1 s.");
                    std::thread::sleep(Duration::from_secs(1));
                }
            }
        }
        Ok(())
    }

    /// A new transactional producer in place of the current one (its `init_transactions`
    /// fences the old one's epoch); `false`, after a second's wait, when it cannot be made yet.
    fn replace_producer(&mut self, attempts: &mut u32) -> bool {
        match transactional_producer(&self.kafka, &self.topology) {
            Ok(producer) => {
                self.producer = Arc::new(producer);
                true
            }
            Err(error) => {
                *attempts += 1;
                tracing::warn!(%error, attempts = *attempts, "Cannot create a new transactional producer yet; retrying in 1 s.");
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        }
    }

    /// Restores `partitions` (those still assigned) from the changelog and seeks each to its
    /// committed offset.
    fn rewind(&mut self, partitions: &[i32]) -> Result<(), KafkaError> {
        let assignment = self.consumer.assignment()?;
        let still: Vec<i32> = partitions
            .iter()
            .copied()
            .filter(|&p| {
                assignment
                    .find_partition(&self.topology.events_topic, p)
                    .is_some()
            })
            .collect();
        let mut list = TopicPartitionList::new();
        for &partition in &still {
            list.add_partition(&self.topology.events_topic, partition);
        }
        let committed = self.consumer.committed_offsets(list, RECOVERY_TIMEOUT)?;
        let restored = self.read_changelog(&still)?;
        for element in committed.elements() {
            let offset = match element.offset() {
                Offset::Offset(offset) => Offset::Offset(offset),
                _ => Offset::Beginning,
            };
            self.consumer.seek(
                &self.topology.events_topic,
                element.partition(),
                offset,
                RECOVERY_TIMEOUT,
            )?;
        }
        let mut store = lock(&self.store);
        // A rebalance during the recovery may have assigned (and restored) partitions already.
        for (partition, users) in restored {
            store.partitions.entry(partition).or_insert(users);
        }
        self.metrics.state(&store);
        Ok(())
    }
}
