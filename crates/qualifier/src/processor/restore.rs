//! Restoring a partition's users from the changelog when this process gains it, and dropping
//! them when it loses it. The rebalance callback only queues a gained partition; the
//! processing loop restores it on a thread of its own — a large changelog takes as long as
//! it takes, while the loop keeps polling (staying in the group) and processing its other
//! partitions — and processes its input once its users are in the store. No input of a partition is
//! processed before then: `poll_batch` drops the events of partitions the store does not hold,
//! and the restored partition is sought back to its committed offset.

use std::collections::{BTreeSet, HashMap};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use model::UserState;
use prometheus::IntCounter;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message};
use telemetry::KafkaSettings;

use super::{Processor, current, lock};
use crate::config::Definitions;
use crate::evaluate::{next_due, normalize};
use crate::metrics::Metrics;
use crate::store::{PartitionStore, Store};

/// A restore fails when the changelog read makes no progress (no record read, no partition
/// finished) for this long; a large partition takes as long as it needs while it moves.
pub(super) const RESTORE_STALL: Duration = Duration::from_secs(120);
/// A restore logs its progress at most this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Why processing stopped.
#[derive(Debug, thiserror::Error)]
pub enum ProcessingError {
    #[error(transparent)]
    Kafka(#[from] KafkaError),
    /// Processing the partitions without their users would publish wrong changes; a restart
    /// retries.
    #[error("cannot restore partitions {partitions:?} from the changelog `{topic}`")]
    Restore {
        topic: String,
        partitions: Vec<i32>,
        #[source]
        source: Box<KafkaError>,
    },
    #[error("cannot start a thread to restore partitions {partitions:?}")]
    RestoreThread {
        partitions: Vec<i32>,
        #[source]
        source: std::io::Error,
    },
    #[error("the restore of partitions {0:?} ended without a result (its thread panicked)")]
    RestoreLost(Vec<i32>),
}

/// Assigned partitions whose users are not in the store yet, shared by the rebalance callback
/// (which queues and drops them) and the processing loop (which restores them).
#[derive(Debug, Default)]
pub(super) struct Pending {
    /// Assigned; no restore of them started yet.
    queued: BTreeSet<i32>,
    /// Bumped whenever partitions are revoked: a restore started before may hold users of a
    /// partition that another process owned (and changed) in between, so it is not installed.
    generation: u64,
}

pub(super) type SharedPending = Arc<Mutex<Pending>>;

fn pending(pending: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    pending.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Queues assigned partitions for a restore and drops revoked ones; librdkafka's statistics
/// feed the lag gauge.
pub(super) struct RebalanceContext {
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) pending: SharedPending,
    pub(super) metrics: Metrics,
    pub(super) lag: telemetry::ConsumerLag,
}

impl ClientContext for RebalanceContext {
    fn stats(&self, statistics: rdkafka::statistics::Statistics) {
        self.lag.observe(&statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            let mut store = lock(&self.store);
            let mut pending = pending(&self.pending);
            for element in partitions.elements() {
                store.partitions.remove(&element.partition());
                pending.queued.remove(&element.partition());
            }
            pending.generation += 1;
            self.metrics.users.set(store.users() as i64);
            tracing::info!(
                partitions = partitions.count(),
                "Partitions revoked; their users were dropped."
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(partitions) = rebalance else {
            return;
        };
        // Not paused: librdkafka fetches their events meanwhile and `poll_batch` drops them;
        // the restored partitions are sought back to their committed offsets. (Pausing them
        // and resuming before that seek failed the e2e takeover test in 2 of 4 runs, cause not
        // found.)
        let mut pending = pending(&self.pending);
        pending
            .queued
            .extend(partitions.elements().iter().map(|e| e.partition()));
        tracing::info!(partitions = ?pending.queued, "Partitions assigned; restoring their users from the changelog.");
    }
}

/// A restore running on a thread of its own.
pub(super) struct Restoring {
    partitions: Vec<i32>,
    /// [`Pending::generation`] when it started.
    generation: u64,
    started: Instant,
    result: Receiver<Result<HashMap<i32, PartitionStore>, KafkaError>>,
}

impl Processor {
    /// Installs a finished restore (its users into the store, its partitions sought to their
    /// committed offsets) and starts one for the queued partitions when none runs. Fails when a
    /// restore could not finish: the service stops, and a restart retries.
    pub(super) fn restore_assigned(&mut self) -> Result<(), ProcessingError> {
        if let Some(restoring) = self.restoring.take() {
            match restoring.result.try_recv() {
                Err(TryRecvError::Empty) => self.restoring = Some(restoring),
                Err(TryRecvError::Disconnected) => {
                    return Err(ProcessingError::RestoreLost(restoring.partitions));
                }
                Ok(Err(source)) => {
                    return Err(ProcessingError::Restore {
                        topic: self.topology.changelog_topic.clone(),
                        partitions: restoring.partitions,
                        source: Box::new(source),
                    });
                }
                Ok(Ok(restored)) => self.install(restoring, restored)?,
            }
        }
        let mut pending = pending(&self.pending);
        let waiting =
            pending.queued.len() + self.restoring.as_ref().map_or(0, |r| r.partitions.len());
        self.metrics.restore_pending.set(waiting as i64);
        if self.restoring.is_some() || pending.queued.is_empty() {
            return Ok(());
        }
        let partitions: Vec<i32> = std::mem::take(&mut pending.queued).into_iter().collect();
        let (sender, result) = std::sync::mpsc::channel();
        let (kafka, topic, definitions, records) = (
            self.kafka.clone(),
            self.topology.changelog_topic.clone(),
            current(&self.definitions),
            self.metrics.restore_records.clone(),
        );
        let wanted = partitions.clone();
        std::thread::Builder::new()
            .name("qualifier-restore".to_owned())
            .spawn(move || {
                let restored = restore(&kafka, &topic, &wanted, &definitions, &records);
                let _ = sender.send(restored);
            })
            .map_err(|source| ProcessingError::RestoreThread {
                partitions: partitions.clone(),
                source,
            })?;
        self.restoring = Some(Restoring {
            partitions,
            generation: pending.generation,
            started: Instant::now(),
            result,
        });
        Ok(())
    }

    /// Puts a finished restore's users into the store and seeks its partitions to their
    /// committed offsets; a restore that a revocation overtook is dropped and its partitions
    /// still assigned are queued again.
    fn install(
        &mut self,
        restoring: Restoring,
        restored: HashMap<i32, PartitionStore>,
    ) -> Result<(), KafkaError> {
        if pending(&self.pending).generation != restoring.generation {
            let assignment = self.consumer.assignment()?;
            let mut pending = pending(&self.pending);
            for &partition in &restoring.partitions {
                if assignment
                    .find_partition(&self.topology.events_topic, partition)
                    .is_some()
                {
                    pending.queued.insert(partition);
                }
            }
            tracing::info!(partitions = ?restoring.partitions, "A rebalance overtook the restore; the partitions still assigned are restored again.");
            return Ok(());
        }
        // The seek discards what was fetched (and dropped) while they were restored.
        if let Err(error) = self.seek_committed(&restoring.partitions) {
            tracing::warn!(%error, partitions = ?restoring.partitions, "Cannot seek the restored partitions to their committed offsets; restoring them again.");
            pending(&self.pending)
                .queued
                .extend(restoring.partitions.iter().copied());
            return Ok(());
        }
        let mut store = lock(&self.store);
        let users: usize = restored.values().map(PartitionStore::len).sum();
        store.partitions.extend(restored);
        self.metrics.users.set(store.users() as i64);
        let elapsed = restoring.started.elapsed();
        self.metrics.restore_duration.observe(elapsed.as_secs_f64());
        tracing::info!(partitions = ?restoring.partitions, users, ms = elapsed.as_millis() as u64, "Partitions restored from the changelog; processing their input.");
        Ok(())
    }
}

/// Reads the changelog partitions from their start to their end into stores, counting the
/// records read in `records` and logging its progress every [`PROGRESS_EVERY`]. Fails when
/// the read makes no progress for [`RESTORE_STALL`]. Blocks.
pub(super) fn restore(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    definitions: &Definitions,
    records: &IntCounter,
) -> Result<HashMap<i32, PartitionStore>, KafkaError> {
    // The latest record per user wins; a tombstone (no payload) forgets the user.
    let mut latest: HashMap<i32, HashMap<String, Option<UserState>>> = HashMap::new();
    let started = Instant::now();
    let mut logged = started;
    let mut read = 0_u64;
    kafka.read_to_end_while_moving(topic, partitions, RESTORE_STALL, |message| {
        read += 1;
        records.inc();
        if read.is_multiple_of(1024) && logged.elapsed() >= PROGRESS_EVERY {
            logged = Instant::now();
            tracing::info!(topic, ?partitions, records = read, seconds = started.elapsed().as_secs(), "Restoring partitions from the changelog.");
        }
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let state = match message.payload().map(UserState::decode) {
            None => None,
            Some(Ok(state)) => Some(state),
            Some(Err(error)) => {
                // Not a tombstone: forgetting the user would end their segments silently.
                // Their previous record (if any) stands.
                tracing::error!(topic, partition = message.partition(), offset = message.offset(), %error, "An undecodable changelog record was skipped.");
                return;
            }
        };
        latest
            .entry(message.partition())
            .or_default()
            .insert(key, state);
    })?;
    let now = telemetry::clock::unix_ms();
    let mut stores: HashMap<i32, PartitionStore> = partitions
        .iter()
        .map(|&p| (p, PartitionStore::default()))
        .collect();
    for (partition, users) in latest {
        let store = stores.entry(partition).or_default();
        for mut state in users.into_values().flatten() {
            normalize(&mut state);
            let due = next_due(definitions, &state, now);
            store.put(state, due);
        }
        // Users last evaluated under other definitions (this process's differ from their last
        // owner's) are re-evaluated in the background.
        store.mark_stale(definitions.fingerprint);
    }
    Ok(stores)
}
