//! The exactly-once loop: consume `trait-events` → update users → produce status updates and
//! changelog records → commit the input offsets, all in one Kafka transaction; timers (ttl,
//! windows, inactivity) are processed in the same transactions. It runs on a thread of its
//! own: librdkafka's transaction calls block. While a transaction commits (on a thread of its
//! own, `commit.rs`), the loop takes and evaluates the next one's events, staging their records
//! (`outbox.rs`) until that one begins.
//!
//! When this process gains a partition, the rebalance callback queues it and the loop restores
//! the partition's users from the changelog before any of its events are processed. A
//! transaction that cannot be committed (e.g. the broker is down) is aborted, and the process
//! does in place what a restart would: it replaces its transactional producer if that one is
//! fenced (the coordinator aborts a transaction that outlives its timeout), restores its
//! partitions' users from the changelog and seeks the input back to the committed offsets — the
//! in-memory state ran ahead of what Kafka has. It retries until the broker answers, so an
//! outage needs no restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::Duration;

use model::TraitEvent;
use prost::Message as _;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::Producer;
use telemetry::partition::{KeyPartitioner, KeyPlaced, KeyedProducer};
use telemetry::{Health, Heartbeat, KafkaSettings, Liveness};
use tokio_util::sync::CancellationToken;

use crate::config::Definitions;
use crate::evaluate::Evaluator;
use crate::metrics::{EventKind, HotCounters, Metrics};
use crate::store::Store;

mod commit;
mod outbox;
mod recovery;
mod restore;
mod transaction;

use commit::{COMMIT_BOUND, Finished, InFlight};
use outbox::Outbox;

use restore::{Pending, RebalanceContext};

/// Topics, group and transactional identity, and how the changelog is written and the store
/// keeps users between transactions.
#[derive(Debug, Clone)]
pub struct Topology {
    pub group_id: String,
    pub events_topic: String,
    pub status_topic: String,
    pub status_batch_topic: String,
    pub changelog_topic: String,
    /// Busy users' trait histories are written to the changelog in trait parts
    /// (`--changelog-trait-parts`; see `store/parts.rs`).
    pub changelog_trait_parts: bool,
    /// Bytes of records (and a state's size each, and a busy user's index of their record) whose
    /// users the store keeps decoded between transactions (`--warm-state-bytes`; see
    /// `store/warm.rs`), shared by the partitions owned.
    pub warm_state_bytes: usize,
    pub dlq_topic: String,
    /// Delivery's log topic, where an erased user's records are made unreadable (a tombstone
    /// per erasure); `None`: not erased there.
    pub delivery_log_topic: Option<String>,
    /// Stable per process (e.g. the pod name): a restarted process with the same id aborts
    /// what its previous incarnation left open, instead of waiting for the timeout.
    pub transactional_id: String,
}

/// The definitions in force; replaced when `segments.yaml` changes.
pub type SharedDefinitions = Arc<RwLock<Arc<Definitions>>>;

fn current(definitions: &SharedDefinitions) -> Arc<Definitions> {
    definitions
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An input message's value decoded into `event` (cleared first: the processor keeps one event
/// across messages, so that its user id's allocation is reused) → its type (the `type` label of
/// `qualifier_events_total`), or the type and why it cannot be applied (it is dead-lettered).
/// Fields this version does not know are skipped, so a newer producer's events still decode.
pub fn decode_event(
    payload: &[u8],
    event: &mut TraitEvent,
) -> Result<EventKind, (EventKind, String)> {
    event.clear();
    event
        .merge(payload)
        .map_err(|e| (EventKind::Unknown, format!("not a TraitEvent: {e}")))?;
    let kind = match &event.event {
        Some(model::pb::trait_event::Event::TraitRealization(_)) => EventKind::Trait,
        Some(model::pb::trait_event::Event::IdSync(_)) => EventKind::IdSync,
        Some(model::pb::trait_event::Event::OptOut(_)) => EventKind::OptOut,
        Some(model::pb::trait_event::Event::Forget(_)) => EventKind::Forget,
        None => EventKind::Unknown,
    };
    match crate::evaluate::validate(event) {
        Ok(()) => Ok(kind),
        Err(invalid) => Err((kind, invalid.to_string())),
    }
}

/// The transactional producer, initialized: a previous producer with the same transactional
/// id (a killed incarnation, or this process's own fenced one) is fenced and what it left
/// open is aborted.
fn transactional_producer(
    kafka: &KafkaSettings,
    topology: &Topology,
) -> Result<KeyedProducer, KafkaError> {
    let producer: KeyedProducer =
        transactional_producer_config(kafka, topology).create_with_context(KeyPlaced::default())?;
    producer.init_transactions(TRANSACTION_TIMEOUT)?;
    Ok(producer)
}

/// The transactional producer's settings: acks=all and idempotent
/// ([`KafkaSettings::producer_config`], which transactions require anyway); status records
/// placed by their user ([`KeyPartitioner`]: librdkafka's default placement, cheaper).
pub fn transactional_producer_config(
    kafka: &KafkaSettings,
    topology: &Topology,
) -> rdkafka::ClientConfig {
    let mut config = kafka.producer_config("qualifier");
    KeyPartitioner::configure(&mut config)
        .set("transactional.id", &topology.transactional_id)
        .set("linger.ms", "5")
        // The changelog records of busy users are KBs of packed history, written again in
        // every transaction they are in: compressed, the broker stores, replicates and serves
        // about a third of the bytes (a full e2e climb: 1.5 GB of changelog against 4.4).
        .set("compression.type", "lz4")
        // A transaction begun right after the last commit may find the coordinator still
        // writing that one's markers: AddPartitionsToTxn answers CONCURRENT_TRANSACTIONS (3
        // times in 5 s at 10,000 events/s, with 100 ms transactions; more as they got
        // shorter), and librdkafka asks again after retry.backoff.ms, 100 ms by default, held
        // up with it every event of the transaction; Java's producer waits 20 ms here. Other
        // retries back off exponentially from it up to retry.backoff.max.ms (1 s).
        .set("retry.backoff.ms", "10")
        // A crashed process's open transaction blocks read_committed readers until this
        // passes (unless it restarts with the same transactional id first). It also bounds
        // each produce (librdkafka lowers message.timeout.ms and socket.timeout.ms to it): a
        // transaction held up longer by a broker fault fails, is aborted and redone in place.
        .set("transaction.timeout.ms", "10000");
    config
}

/// A transaction error no retry can mend: the producer is unusable (e.g. fenced by a newer
/// process with the same transactional id).
fn is_fatal(error: &KafkaError) -> bool {
    matches!(error, KafkaError::Transaction(e) if e.is_fatal())
}

/// An input message, borrowed from the consumer for its transaction: not copied out of
/// librdkafka's fetch buffers (a copy was three allocations per event: payload, key, topic).
struct Input<'c> {
    message: BorrowedMessage<'c>,
}

/// The processing loop and what it owns.
pub struct Processor {
    kafka: KafkaSettings,
    /// Shared with the processing loop, which borrows a transaction's input messages from it.
    consumer: Arc<BaseConsumer<RebalanceContext>>,
    /// Shared with the thread `send_offsets_to_transaction` runs on ([`Self::send_offsets`]).
    producer: Arc<KeyedProducer>,
    /// How long `send_offsets_to_transaction` is waited for before its producer is given up.
    offsets_bound: Duration,
    /// Producers given up while their call hung ([`Self::abandoned`]); an entry that still
    /// upgrades hangs still.
    hung: Vec<Weak<KeyedProducer>>,
    topology: Topology,
    store: Arc<Mutex<Store>>,
    /// Assigned partitions to restore before their events are processed.
    pending: Pending,
    definitions: SharedDefinitions,
    metrics: Metrics,
    counters: HotCounters,
    evaluator: Evaluator,
    /// The next transaction's records, made while the last one commits.
    outbox: Outbox,
    /// The last transaction's commit (shared with the rebalance callbacks).
    in_flight: InFlight,
    /// Each input event is decoded into this one (see [`decode_event`]).
    event: TraitEvent,
    /// Beats once per loop iteration (`/livez`: the `processing` part).
    heartbeat: Heartbeat,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("topology", &self.topology)
            .finish_non_exhaustive()
    }
}

/// With no transaction in flight and no event at hand, the loop waits this long for one.
const POLL_WAIT: Duration = Duration::from_millis(100);
/// While a transaction commits, the loop looks for new events at least this often.
const COMMIT_LOOK: Duration = Duration::from_millis(2);
// Under a backlog a transaction takes up to this many events: its commit (a round trip to the
// coordinator and markers on every partition, ~100 ms on a busy machine) is paid once per batch.
const MAX_BATCH: usize = 10_000;
const MAX_TIMERS_PER_TRANSACTION: usize = 5_000;
/// Re-evaluating users after the definitions changed takes at most this much of a
/// transaction, so live events keep their latency (about 20,000 users per second when idle).
const SWEEP_BUDGET: Duration = Duration::from_millis(20);
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
/// `send_offsets_to_transaction` is given up this long after it was called: librdkafka enforces
/// its own timeout well within it, unless the call hangs (docs/RELIABILITY.md, cluster item 9).
const OFFSETS_BOUND: Duration = Duration::from_secs(35);
/// More producers than this hung at once and the processor stops (the pod is restarted):
/// each holds a thread and librdkafka's threads and buffers.
const MAX_HUNG_PRODUCERS: usize = 3;
/// Per attempt while recovering from a failed transaction: short, so that the recovery
/// finishes soon after the broker is back.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(5);

impl Processor {
    /// Creates the transactional producer (fencing a previous incarnation) and subscribes.
    pub fn start(
        kafka: &KafkaSettings,
        topology: Topology,
        definitions: SharedDefinitions,
        metrics: Metrics,
        liveness: &Liveness,
    ) -> Result<Self, KafkaError> {
        let producer = transactional_producer(kafka, &topology)?;
        let heartbeat = liveness.heartbeat("processing");
        let store = Arc::new(Mutex::new(Store::default()));
        let pending = Pending::default();
        let in_flight = InFlight::default();
        let context = RebalanceContext {
            in_flight: in_flight.clone(),
            revoked: AtomicBool::new(false),
            store: store.clone(),
            pending: pending.clone(),
            metrics: metrics.clone(),
            lag: telemetry::ConsumerLag::new(metrics.consumer_lag.clone(), &topology.events_topic),
            revocations: metrics
                .partitions_revoked
                .with_label_values(&[topology.events_topic.as_str()]),
            waiter: heartbeat.waiter(),
            failed: Mutex::new(None),
        };
        let consumer: BaseConsumer<RebalanceContext> = kafka
            .consumer_config("qualifier")
            .set("group.id", &topology.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            // A process joining or leaving the group moves only the partitions that change
            // owner. Under the eager protocol every rebalance took every partition from every
            // process, and each restored all of its users again (~6 s per million).
            .set("partition.assignment.strategy", "cooperative-sticky")
            .set(
                "statistics.interval.ms",
                telemetry::lag::STATISTICS_INTERVAL_MS,
            )
            .create_with_context(context)?;
        consumer.subscribe(&[&topology.events_topic])?;
        Ok(Self {
            kafka: kafka.clone(),
            consumer: Arc::new(consumer),
            producer: Arc::new(producer),
            offsets_bound: OFFSETS_BOUND,
            hung: Vec::new(),
            topology,
            store,
            pending,
            definitions,
            counters: HotCounters::new(&metrics),
            metrics,
            evaluator: Evaluator::default(),
            outbox: Outbox::default(),
            in_flight,
            event: TraitEvent::default(),
            heartbeat,
        })
    }

    /// Runs until `shutdown`; returns an error when the transactions cannot go on or a
    /// restore failed.
    pub fn run(mut self, shutdown: &CancellationToken, health: &Health) -> Result<(), KafkaError> {
        health.set_ready();
        let mut fingerprint = current(&self.definitions).fingerprint;
        let consumer = Arc::clone(&self.consumer);
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            self.consumer
                .context()
                .revoked
                .store(false, Ordering::Relaxed);
            let mut inputs = Vec::new();
            // While the last transaction commits, this one's events are taken and evaluated as
            // they come: an event waits for one commit, not for one and then its own work.
            while inputs.len() < MAX_BATCH && self.in_flight.running(COMMIT_LOOK) {
                self.heartbeat.beat();
                let taken = self.take_events(&consumer, &mut inputs, Duration::ZERO)?;
                self.evaluate_events(&inputs[taken..], &mut fingerprint);
            }
            if let Err(error) = self.committed() {
                drop(inputs);
                self.failed(&error, shutdown, health)?;
                continue;
            }
            // Then those that came meanwhile; with none at all, the first is waited for.
            let wait = if inputs.is_empty() {
                POLL_WAIT
            } else {
                Duration::ZERO
            };
            let taken = self.take_events(&consumer, &mut inputs, wait)?;
            self.evaluate_events(&inputs[taken..], &mut fingerprint);
            let definitions = self.in_force(&mut fingerprint);
            let now = telemetry::clock::unix_ms();
            let (due, stale) = {
                let mut store = lock(&self.store);
                self.metrics.expiry_due.set(store.due_count(now) as i64);
                self.metrics.sweep_pending.set(store.stale_count() as i64);
                (
                    store.due(now, MAX_TIMERS_PER_TRANSACTION),
                    store.stale_count(),
                )
            };
            if inputs.is_empty() && due.is_empty() && stale == 0 {
                continue;
            }
            self.stage_rest(&definitions, due, now);
            let staged = !(inputs.is_empty() && self.outbox.is_empty());
            if staged && self.consumer.context().revoked.load(Ordering::Relaxed) {
                // Events of partitions this process no longer owns may be staged, and their
                // offsets would be committed: the work is dropped and redone from the commits,
                // which restores the partitions kept too. Rare: the poll that hands a revocation
                // over returns nothing, and in every join tried (tests/e2e/qualifier/rebalance.rs,
                // light load or a backlog) it came before anything of the next transaction.
                tracing::info!(
                    "Partitions were revoked while a transaction was made; redoing it from the committed offsets."
                );
                drop(inputs);
                let _recovering = self.heartbeat.waiting();
                self.recover(shutdown)?;
                continue;
            }
            if let Err(error) = self.transaction(&inputs) {
                self.failed(&error, shutdown, health)?;
            }
        }
        if let Err(error) = self.committed() {
            tracing::warn!(%error, "The last transaction did not commit; its events are processed again by the partitions' next owner.");
        }
        tracing::info!("Processing stopped.");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// Waits for the last transaction's commit, if it is in flight: `Ok` when there was none
    /// or it committed.
    fn committed(&mut self) -> Result<(), KafkaError> {
        let finished = {
            // Up to its bound when the broker is slow or away: a wait, not a stall.
            let _broker = self.heartbeat.waiting_at_most(COMMIT_BOUND);
            self.in_flight.finish()
        };
        let Some(Finished { took, result }) = finished else {
            return Ok(());
        };
        let Some(result) = result else {
            tracing::error!(bound = ?COMMIT_BOUND, "librdkafka's commit_transaction did not return within its bound; giving up this transactional producer for a new one.");
            self.give_up_producer();
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        };
        result?;
        self.metrics
            .transaction_duration
            .observe(took.as_secs_f64());
        self.metrics.state(&lock(&self.store));
        Ok(())
    }

    /// After a transaction failed: counted, and state and input rewound ([`Self::recover`]).
    fn failed(
        &mut self,
        error: &KafkaError,
        shutdown: &CancellationToken,
        health: &Health,
    ) -> Result<(), KafkaError> {
        self.metrics.transactions_failed.inc();
        tracing::warn!(%error, "A Kafka transaction failed; aborting it and rewinding state and input to what Kafka has.");
        health.set_not_ready(format!("recovering from a failed transaction: {error}"));
        // Retrying until the broker answers: a restart would not make it answer sooner.
        let _recovering = self.heartbeat.waiting();
        self.recover(shutdown)?;
        health.set_ready();
        Ok(())
    }

    /// The current producer hangs in a call it was given up in: [`Self::abandoned`] from now.
    fn give_up_producer(&mut self) {
        self.hung.retain(|producer| producer.strong_count() > 0);
        self.hung.push(Arc::downgrade(&self.producer));
    }

    /// The current producer was given up in a hung call: `recover` replaces it without
    /// touching it.
    fn abandoned(&self) -> bool {
        self.hung
            .iter()
            .any(|given_up| std::ptr::eq(given_up.as_ptr(), Arc::as_ptr(&self.producer)))
    }

    /// The definitions in force; when they changed since `fingerprint`, every user is marked
    /// to be evaluated again (`store/stale.rs`) and `fingerprint` moves on.
    fn in_force(&self, fingerprint: &mut u64) -> Arc<Definitions> {
        let definitions = current(&self.definitions);
        if definitions.fingerprint != *fingerprint {
            let mut store = lock(&self.store);
            for partition in store.partitions.values_mut() {
                partition.mark_stale(definitions.fingerprint);
            }
            tracing::info!(
                users = store.stale_count(),
                "The definitions changed: every user is re-evaluated in the background."
            );
            *fingerprint = definitions.fingerprint;
        }
        definitions
    }

    /// Takes the messages at hand (waiting up to `wait` for the first) into `inputs`, up to
    /// `MAX_BATCH` in all, keeping those of partitions owned; returns where the new ones start.
    /// Partitions the polls assigned are restored first; an error is a restore that failed.
    fn take_events<'c>(
        &mut self,
        consumer: &'c BaseConsumer<RebalanceContext>,
        inputs: &mut Vec<Input<'c>>,
        wait: Duration,
    ) -> Result<usize, KafkaError> {
        let taken = inputs.len();
        let mut timeout = wait;
        while inputs.len() < MAX_BATCH {
            match consumer.poll(timeout) {
                Some(Ok(message)) => inputs.push(Input { message }),
                Some(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error.");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
        self.restore_pending()?;
        // A rebalance during the polls may have taken partitions away: their events are the
        // new owner's now.
        let mut kept = taken;
        {
            let store = lock(&self.store);
            for i in taken..inputs.len() {
                if store
                    .partitions
                    .contains_key(&inputs[i].message.partition())
                {
                    inputs.swap(kept, i);
                    kept += 1;
                }
            }
        }
        inputs.truncate(kept);
        Ok(taken)
    }

    /// Evaluates `inputs`, staging what they produce, under the definitions in force and at
    /// the clock's time right after they were taken, not as they were before the commit they
    /// came during: an event's own time is then not ahead of the clock (the evaluation takes it
    /// to have happened no later than that), and an event sent after a reload meets its rules.
    fn evaluate_events(&mut self, inputs: &[Input<'_>], fingerprint: &mut u64) {
        if inputs.is_empty() {
            return;
        }
        let definitions = self.in_force(fingerprint);
        let now = telemetry::clock::unix_ms();
        self.process_events(&definitions, inputs, now);
    }
}

#[cfg(test)]
mod tests;
