//! Restoring a partition's users from the changelog when this process gains it (queued by the
//! rebalance callback, read by the processing loop), and dropping them when it loses it.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use model::changelog::{Gatherer, Key};
use model::{TraitPart, UserState};
use prometheus::IntCounter;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message, TopicPartitionList};
use telemetry::{KafkaSettings, Waiter, commits};

use super::commit::InFlight;
use super::{Processor, current, lock};
use crate::config::Definitions;
use crate::evaluate::{next_due, normalize};
use crate::metrics::Metrics;
use crate::store::{PartitionStore, Store, decode_reusing};

/// Takes assigned partitions at their commits (read here, see `telemetry::commits`) and queues
/// them for [`Processor::restore_pending`]; drops revoked ones; librdkafka's statistics feed
/// the lag gauge. Reading the commits is its only I/O, and it would otherwise happen right
/// after the assignment anyway; the restore is left to the loop.
pub(super) struct RebalanceContext {
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) pending: Pending,
    pub(super) metrics: Metrics,
    pub(super) lag: telemetry::ConsumerLag,
    /// `qualifier_partitions_revoked_total` of the input topic.
    pub(super) revocations: IntCounter,
    /// Declares the wait for the commits (the processing loop's, whose `poll` runs the callback).
    pub(super) waiter: Waiter,
    /// Why the commits of assigned partitions could not be read: the loop stops on it.
    pub(super) failed: Mutex<Option<KafkaError>>,
    /// The processor's last transaction, whose commit ends before partitions are let go.
    pub(super) in_flight: InFlight,
    /// Set when partitions are revoked: the loop drops a transaction made meanwhile.
    pub(super) revoked: AtomicBool,
}

/// Assigned partitions whose users are not restored yet.
pub(super) type Pending = Arc<Mutex<BTreeSet<i32>>>;

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.lag.observe(&statistics);
    }
}

telemetry::hand_over_rebalances!(RebalanceContext);

impl commits::Handover for RebalanceContext {
    fn assigned(&self, consumer: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        let _commits = self.waiter.waiting();
        match commits::take_at_commits(consumer, partitions, commits::PATIENCE) {
            Ok(commits) => self.lag.assigned(&commits),
            Err(error) => {
                // Processing from a start librdkafka may never fetch would stall unseen.
                tracing::error!(%error, "Cannot read the committed offsets of assigned partitions; stopping so that a restart retries.");
                *lock(&self.failed) = Some(error);
            }
        }
        let mut pending = lock(&self.pending);
        pending.extend(partitions.elements().iter().map(|e| e.partition()));
        self.metrics.restore_pending.set(pending.len() as i64);
    }

    fn revoked(&self, _: &BaseConsumer<Self>, partitions: &TopicPartitionList) {
        {
            // What the last transaction wrote for these partitions is committed (or known to
            // have failed) before their next owner may restore them.
            let _commit = self.waiter.waiting();
            self.in_flight.settle();
        }
        self.revoked.store(true, Ordering::Relaxed);
        self.revocations.inc_by(partitions.count() as u64);
        let mut store = lock(&self.store);
        let mut pending = lock(&self.pending);
        for element in partitions.elements() {
            store.partitions.remove(&element.partition());
            pending.remove(&element.partition());
        }
        self.metrics.state(&store);
        self.metrics.restore_pending.set(pending.len() as i64);
        tracing::info!(
            partitions = partitions.count(),
            "Partitions revoked; their users were dropped."
        );
    }
}

impl Processor {
    /// Restores the partitions assigned since the last call from the changelog, before any
    /// of their events (already polled, or still to come) is processed: the loop calls it
    /// after each batch of polls. It blocks the loop as long as the read takes, which moves on
    /// while records come and fails after [`RESTORE_STALL`] without one; the error goes up to
    /// the service, which stops. So does the error of a rebalance that could not read the
    /// assigned partitions' commits.
    pub(super) fn restore_pending(&mut self) -> Result<(), KafkaError> {
        if let Some(error) = lock(&self.consumer.context().failed).take() {
            return Err(error);
        }
        let wanted: Vec<i32> = {
            let pending = lock(&self.pending);
            if pending.is_empty() {
                return Ok(());
            }
            pending.iter().copied().collect()
        };
        let _restoring = self.heartbeat.waiting();
        let started = Instant::now();
        tracing::info!(partitions = ?wanted, "Partitions assigned; restoring their users from the changelog.");
        let restored = self.read_changelog(&wanted).inspect_err(|error| {
            // Processing these partitions without their state would publish wrong changes.
            tracing::error!(%error, partitions = ?wanted, "Cannot restore partitions from the changelog; stopping so that a restart retries.");
        })?;
        let mut store = lock(&self.store);
        let users: usize = restored.values().map(PartitionStore::len).sum();
        store.partitions.extend(restored);
        self.metrics.state(&store);
        let mut pending = lock(&self.pending);
        // No rebalance ran meanwhile (callbacks run only inside `poll`).
        pending.clear();
        self.metrics.restore_pending.set(0);
        let elapsed = started.elapsed();
        self.metrics.restore_duration.observe(elapsed.as_secs_f64());
        tracing::info!(partitions = ?wanted, users, ms = elapsed.as_millis() as u64, "Partitions restored from the changelog.");
        Ok(())
    }

    /// `partitions`' users from the changelog, under the definitions in force (a restore, or
    /// the rewind after a failed transaction).
    pub(super) fn read_changelog(
        &self,
        partitions: &[i32],
    ) -> Result<HashMap<i32, PartitionStore>, KafkaError> {
        restore(
            &self.kafka,
            &self.topology.changelog_topic,
            partitions,
            &current(&self.definitions),
            &self.metrics.restore_records,
        )
    }
}

/// A restore fails after this long without a changelog record read (the broker away): it is
/// as long as the changelog is large, and only a read that stopped moving is an error.
const RESTORE_STALL: Duration = Duration::from_secs(120);
/// A restore logs its progress this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Reads the changelog partitions from their start to their end into stores, counting the
/// records read in `records` and logging the progress every [`PROGRESS_EVERY`]. Blocks.
fn restore(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    definitions: &Definitions,
    records: &IntCounter,
) -> Result<HashMap<i32, PartitionStore>, KafkaError> {
    // Timers are set from the start's clock: one set earlier than need be fires and finds
    // nothing to do.
    let now = telemetry::clock::unix_ms();
    let restoring = |partition| Restoring {
        topic,
        partition,
        definitions,
        now,
        store: PartitionStore::at(now, partition),
        gatherer: Gatherer::default(),
    };
    // Found by one cheap lookup per record.
    let mut reading: HashMap<i32, Restoring<'_>, foldhash::fast::RandomState> =
        partitions.iter().map(|&p| (p, restoring(p))).collect();
    let started = Instant::now();
    let mut logged = started;
    let mut read = 0_u64;
    // Every record is decoded into this one (see `decode_reusing`).
    let mut state = UserState::default();
    kafka.read_to_end_while_moving(topic, partitions, RESTORE_STALL, |message| {
        read += 1;
        records.inc();
        if read.is_multiple_of(1024) && logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(
                topic,
                ?partitions,
                records = read,
                seconds = started.elapsed().as_secs(),
                "Restoring partitions from the changelog."
            );
        }
        reading
            .entry(message.partition())
            .or_insert_with_key(|&p| restoring(p))
            .record(message, &mut state);
    })?;
    let stores = reading.into_iter().map(|(partition, mut restored)| {
        restored.finish();
        (partition, restored.store)
    });
    Ok(stores.collect())
}

/// One changelog partition being restored into a store.
struct Restoring<'a> {
    topic: &'a str,
    partition: i32,
    definitions: &'a Definitions,
    /// The restore's start.
    now: i64,
    store: PartitionStore,
    gatherer: Gatherer,
}

impl Restoring<'_> {
    /// Takes one record: each record replaces the user's earlier one, a tombstone (no payload)
    /// forgets them: the latest wins. A record whose histories are apart gets them from its
    /// trait parts (see `model::changelog`), spliced into its previous record's bytes, and its
    /// timer at the end (`store/restored.rs`). The record is decoded into `state` (see
    /// `decode_reusing`).
    fn record(&mut self, message: &BorrowedMessage<'_>, state: &mut UserState) {
        let (topic, store, gatherer) = (self.topic, &mut self.store, &mut self.gatherer);
        let key = message.key().unwrap_or_default();
        if let Some(Key::Part { user, trait_id }) = Key::parse(key) {
            match message.payload().map(TraitPart::decode).transpose() {
                Ok(part) => gatherer.part(user, trait_id, part),
                // The history's previous part (if any) stands, as a user's record would.
                Err(error) => {
                    tracing::error!(topic, partition = message.partition(), offset = message.offset(), user, trait_id, %error, "An undecodable trait part was skipped.");
                }
            }
            return;
        }
        let Some(payload) = message.payload() else {
            let user = String::from_utf8_lossy(key);
            gatherer.forget(&user);
            store.remove(&user);
            return;
        };
        match decode_reusing(state, payload) {
            // Only a record with its histories apart builds on the previous one, and takes
            // the parts read since (the others' are dropped).
            Ok(()) if state.traits_apart => {
                let parts = gatherer.parts_of(state);
                store.put_gathered(state, parts);
            }
            Ok(()) => {
                gatherer.forget(&state.user_id);
                normalize(state);
                let due = next_due(self.definitions, state, self.now);
                store.put_encoded(state, due);
            }
            Err(error) => {
                // Not a tombstone: forgetting the user would end their segments silently.
                // Their previous record (if any) stands.
                tracing::error!(topic, partition = message.partition(), offset = message.offset(), %error, "An undecodable changelog record was skipped.");
            }
        }
    }

    /// Ends the partition's restore: its orphan parts dropped (and said), timers set, records
    /// packed, stale users queued.
    fn finish(&mut self) {
        let (users, parts) = self.gatherer.orphans();
        if parts > 0 {
            // A writer writes a user's parts before their record: these belong to no record.
            tracing::warn!(
                topic = self.topic,
                partition = self.partition,
                users,
                parts,
                "Trait parts read after their user's last record were dropped."
            );
        }
        let (definitions, now) = (self.definitions, self.now);
        self.store
            .date_gathered(|state| next_due(definitions, state, now));
        self.store.pack_cold();
        // Users last evaluated under other definitions (this process's differ from their last
        // owner's) are re-evaluated in the background.
        self.store.mark_stale(definitions.fingerprint);
    }
}

#[cfg(test)]
mod tests;
