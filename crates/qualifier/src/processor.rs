//! The exactly-once loop: consume `trait-events` → update users → produce status updates and
//! changelog records → commit the input offsets, all in one Kafka transaction; timers (ttl,
//! windows, inactivity) are processed in the same transactions. It runs on a thread of its
//! own: librdkafka's transaction calls block.
//!
//! When this process gains a partition, the rebalance callback restores the partition's users
//! from the changelog before any of its events are processed. A transaction that cannot be
//! committed (e.g. the broker is down) is aborted, and the process does in place what a restart
//! would: it replaces its transactional producer if that one is fenced (the coordinator aborts
//! a transaction that outlives its timeout), restores its partitions' users from the changelog
//! and seeks the input back to the committed offsets — the in-memory state ran ahead of what
//! Kafka has. It retries until the broker answers, so an outage needs no restart.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::{Duration, Instant};

use model::{DeadLetterRecord, ErrorClass, Origin, SourcePosition, TraitEvent, UserState};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedMessage;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, PurgeConfig};
use rdkafka::{ClientContext, Message, Offset, TopicPartitionList};
use telemetry::{Health, Heartbeat, KafkaSettings, Liveness, Waiter};
use tokio_util::sync::CancellationToken;

use crate::config::Definitions;
use crate::evaluate::{Evaluator, Step, next_due, normalize};
use crate::metrics::{HotCounters, Metrics};
use crate::store::{PartitionStore, Store};

/// Topics, group and transactional identity.
#[derive(Debug, Clone)]
pub struct Topology {
    pub group_id: String,
    pub events_topic: String,
    pub status_topic: String,
    pub status_batch_topic: String,
    pub changelog_topic: String,
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

fn lock(store: &Mutex<Store>) -> MutexGuard<'_, Store> {
    store.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Restores assigned partitions from the changelog and drops revoked ones; librdkafka's
/// statistics feed the lag gauge.
struct RebalanceContext {
    kafka: KafkaSettings,
    topology: Topology,
    store: Arc<Mutex<Store>>,
    definitions: SharedDefinitions,
    metrics: Metrics,
    lag: telemetry::ConsumerLag,
    /// A restore takes as long as the changelog is large: the processing loop waits, it is
    /// not stuck.
    waiter: Waiter,
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
            for element in partitions.elements() {
                store.partitions.remove(&element.partition());
            }
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
        let _restoring = self.waiter.waiting();
        let wanted: Vec<i32> = partitions
            .elements()
            .iter()
            .map(|e| e.partition())
            .collect();
        let started = Instant::now();
        match restore(
            &self.kafka,
            &self.topology.changelog_topic,
            &wanted,
            &current(&self.definitions),
        ) {
            Ok(restored) => {
                let mut store = lock(&self.store);
                let users: usize = restored.values().map(PartitionStore::len).sum();
                store.partitions.extend(restored);
                self.metrics.users.set(store.users() as i64);
                self.metrics
                    .restore_duration
                    .observe(started.elapsed().as_secs_f64());
                tracing::info!(partitions = ?wanted, users, ms = started.elapsed().as_millis() as u64, "Partitions assigned and restored from the changelog.");
            }
            Err(error) => {
                // Processing these partitions without their state would publish wrong changes.
                tracing::error!(%error, partitions = ?wanted, "Cannot restore partitions from the changelog; exiting so a restart can retry.");
                std::process::exit(70);
            }
        }
    }
}

/// Reads the changelog partitions from their start to their end into stores.
fn restore(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: &[i32],
    definitions: &Definitions,
) -> Result<HashMap<i32, PartitionStore>, KafkaError> {
    // The latest record per user wins; a tombstone (no payload) forgets the user.
    let mut latest: HashMap<i32, HashMap<String, Option<UserState>>> = HashMap::new();
    kafka.read_to_end(topic, Some(partitions), |message| {
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

/// An input message's value → its event and type (the `type` label of
/// `qualifier_events_total`), or the type and why it cannot be applied (it is dead-lettered).
/// Fields this version does not know are skipped, so a newer producer's events still decode.
pub fn decode_event(payload: &[u8]) -> Result<(TraitEvent, &'static str), (&'static str, String)> {
    let event =
        TraitEvent::decode(payload).map_err(|e| ("unknown", format!("not a TraitEvent: {e}")))?;
    let kind = match &event.event {
        Some(model::pb::trait_event::Event::TraitRealization(_)) => "trait",
        Some(model::pb::trait_event::Event::IdSync(_)) => "id_sync",
        Some(model::pb::trait_event::Event::OptOut(_)) => "opt_out",
        Some(model::pb::trait_event::Event::Forget(_)) => "forget",
        None => "unknown",
    };
    match crate::evaluate::validate(&event) {
        Ok(()) => Ok((event, kind)),
        Err(invalid) => Err((kind, invalid.to_string())),
    }
}

/// The transactional producer, initialized: a previous producer with the same transactional
/// id (a killed incarnation, or this process's own fenced one) is fenced and what it left
/// open is aborted.
fn transactional_producer(
    kafka: &KafkaSettings,
    topology: &Topology,
) -> Result<BaseProducer, KafkaError> {
    let producer: BaseProducer = transactional_producer_config(kafka, topology).create()?;
    producer.init_transactions(TRANSACTION_TIMEOUT)?;
    Ok(producer)
}

/// The transactional producer's settings: acks=all and idempotent
/// ([`KafkaSettings::producer_config`], which transactions require anyway).
pub fn transactional_producer_config(
    kafka: &KafkaSettings,
    topology: &Topology,
) -> rdkafka::ClientConfig {
    let mut config = kafka.producer_config("qualifier");
    config
        .set("transactional.id", &topology.transactional_id)
        .set("linger.ms", "5")
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

/// An input message, detached from the consumer so a batch can be collected.
struct Input {
    message: OwnedMessage,
}

/// The processing loop and what it owns.
pub struct Processor {
    kafka: KafkaSettings,
    consumer: BaseConsumer<RebalanceContext>,
    producer: BaseProducer,
    topology: Topology,
    store: Arc<Mutex<Store>>,
    definitions: SharedDefinitions,
    metrics: Metrics,
    counters: HotCounters,
    evaluator: Evaluator,
    /// Users whose state changed in the open transaction: their changelog record is written
    /// once, at its end, however many of their events it holds.
    changed: HashMap<i32, HashSet<String>>,
    /// Reused for encoding changelog records.
    buffer: Vec<u8>,
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

// Under a backlog a transaction takes up to this many events: its commit (a round trip to the
// coordinator and markers on every partition, ~100 ms on a busy machine) is paid once per batch.
const MAX_BATCH: usize = 10_000;
const MAX_TIMERS_PER_TRANSACTION: usize = 5_000;
/// Re-evaluating users after the definitions changed takes at most this much of a
/// transaction, so live events keep their latency (about 20,000 users per second when idle).
const SWEEP_BUDGET: Duration = Duration::from_millis(20);
const TRANSACTION_TIMEOUT: Duration = Duration::from_secs(30);
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
        let context = RebalanceContext {
            kafka: kafka.clone(),
            topology: topology.clone(),
            store: store.clone(),
            definitions: definitions.clone(),
            metrics: metrics.clone(),
            lag: telemetry::ConsumerLag::new(metrics.consumer_lag.clone(), &topology.events_topic),
            waiter: heartbeat.waiter(),
        };
        let consumer: BaseConsumer<RebalanceContext> = kafka
            .client_config("qualifier")
            .set("group.id", &topology.group_id)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "2000")
            .set(
                "statistics.interval.ms",
                telemetry::lag::STATISTICS_INTERVAL_MS,
            )
            .create_with_context(context)?;
        consumer.subscribe(&[&topology.events_topic])?;
        Ok(Self {
            kafka: kafka.clone(),
            consumer,
            producer,
            topology,
            store,
            definitions,
            counters: HotCounters::new(&metrics),
            metrics,
            evaluator: Evaluator::default(),
            changed: HashMap::new(),
            buffer: Vec::new(),
            heartbeat,
        })
    }

    /// Runs until `shutdown`; returns an error when a transaction failed.
    pub fn run(mut self, shutdown: &CancellationToken, health: &Health) -> Result<(), KafkaError> {
        health.set_ready();
        let mut fingerprint = current(&self.definitions).fingerprint;
        while !shutdown.is_cancelled() {
            self.heartbeat.beat();
            let inputs = self.poll_batch();
            let now = telemetry::clock::unix_ms();
            let definitions = current(&self.definitions);
            let in_force = definitions.fingerprint;
            let (due, stale) = {
                let mut store = lock(&self.store);
                if in_force != fingerprint {
                    for partition in store.partitions.values_mut() {
                        partition.mark_stale(in_force);
                    }
                    tracing::info!(
                        users = store.stale_count(),
                        "The definitions changed: every user is re-evaluated in the background."
                    );
                    fingerprint = in_force;
                }
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
            let started = Instant::now();
            if let Err(error) = self.transaction(&definitions, inputs, due, now) {
                self.metrics.transactions_failed.inc();
                tracing::warn!(%error, "A Kafka transaction failed; aborting it and rewinding state and input to what Kafka has.");
                health.set_not_ready(format!("recovering from a failed transaction: {error}"));
                // What the failed transaction changed is rewound with the store.
                self.changed.clear();
                // Retrying until the broker answers: a restart would not make it answer sooner.
                let _recovering = self.heartbeat.waiting();
                self.recover(shutdown)?;
                health.set_ready();
                continue;
            }
            self.metrics
                .transaction_duration
                .observe(started.elapsed().as_secs_f64());
            self.metrics.users.set(lock(&self.store).users() as i64);
        }
        tracing::info!("Processing stopped.");
        self.consumer.unsubscribe();
        Ok(())
    }

    /// After a failed transaction: aborts it, then replaces the users of the assigned
    /// partitions with the changelog's and seeks the input back to the committed offsets, so
    /// the events of the aborted transaction are processed again. Retries every second while
    /// the broker does not answer; returns a fatal error, or `Ok` once rewound (or shut down).
    fn recover(&mut self, shutdown: &CancellationToken) -> Result<(), KafkaError> {
        // Until rewound, nothing polled may be processed against the state that ran ahead:
        // without its partitions in the store, `poll_batch` drops every message. (Rebalance
        // callbacks run only inside `poll`, so none interleaves with the recovery.)
        let assigned: Vec<i32> = lock(&self.store).partitions.keys().copied().collect();
        lock(&self.store).partitions.clear();
        let mut aborted = false;
        let mut attempts = 0_u32;
        while !shutdown.is_cancelled() {
            let step = if aborted {
                self.rewind(&assigned)
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
                self.producer = producer;
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
        let restored = restore(
            &self.kafka,
            &self.topology.changelog_topic,
            &still,
            &current(&self.definitions),
        )?;
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
        self.metrics.users.set(store.users() as i64);
        Ok(())
    }

    /// Up to `MAX_BATCH` messages: waits up to 100 ms for the first, then takes what is there.
    fn poll_batch(&self) -> Vec<Input> {
        let mut inputs = Vec::new();
        let mut timeout = Duration::from_millis(100);
        while inputs.len() < MAX_BATCH {
            match self.consumer.poll(timeout) {
                Some(Ok(message)) => inputs.push(Input {
                    message: message.detach(),
                }),
                Some(Err(error)) => {
                    tracing::warn!(%error, "Kafka consumer error.");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
        // A rebalance during the polls may have taken partitions away: their events are the
        // new owner's now.
        let store = lock(&self.store);
        inputs.retain(|i| store.partitions.contains_key(&i.message.partition()));
        inputs
    }

    fn transaction(
        &mut self,
        definitions: &Definitions,
        inputs: Vec<Input>,
        due: Vec<(i32, String)>,
        now: i64,
    ) -> Result<(), KafkaError> {
        self.producer.begin_transaction()?;
        let mut offsets: HashMap<i32, i64> = HashMap::new();
        for input in &inputs {
            let partition = input.message.partition();
            offsets.insert(partition, input.message.offset() + 1);
            self.process_event(definitions, input, now)?;
        }
        for (partition, user) in due {
            let state = lock(&self.store)
                .partitions
                .get_mut(&partition)
                .and_then(|p| p.take(&user));
            if let Some((state, _)) = state {
                let started = Instant::now();
                let step = self.evaluator.on_timer(definitions, state, now);
                self.metrics
                    .eval_duration
                    .observe(started.elapsed().as_secs_f64());
                self.publish(partition, &user, step)?;
            }
        }
        self.sweep(definitions, now)?;
        self.write_changelog()?;
        if !offsets.is_empty() {
            let mut list = TopicPartitionList::new();
            for (partition, offset) in offsets {
                list.add_partition_offset(
                    &self.topology.events_topic,
                    partition,
                    Offset::Offset(offset),
                )?;
            }
            let group = self
                .consumer
                .group_metadata()
                .ok_or(KafkaError::Global(RDKafkaErrorCode::State))?;
            // Bounded: librdkafka (2.12.1) was seen never returning from this call after a
            // broker outage (docs/RELIABILITY.md); past its timeout the part is stuck.
            let _broker = self.heartbeat.waiting_at_most(TRANSACTION_TIMEOUT);
            self.producer
                .send_offsets_to_transaction(&list, &group, TRANSACTION_TIMEOUT)?;
        }
        // Up to its timeout when the broker is slow or away: a wait, not a stall.
        let _broker = self.heartbeat.waiting_at_most(TRANSACTION_TIMEOUT);
        self.producer.commit_transaction(TRANSACTION_TIMEOUT)
    }

    /// Re-evaluates users queued because the definitions changed, for at most
    /// [`SWEEP_BUDGET`]: their 1s and 0s go out with this transaction.
    fn sweep(&mut self, definitions: &Definitions, now: i64) -> Result<(), KafkaError> {
        let started = Instant::now();
        let partitions: Vec<i32> = lock(&self.store).partitions.keys().copied().collect();
        for partition in partitions {
            while started.elapsed() < SWEEP_BUDGET {
                let taken = {
                    let mut store = lock(&self.store);
                    let Some(owned) = store.partitions.get_mut(&partition) else {
                        break;
                    };
                    let Some(user) = owned.next_stale(definitions.fingerprint) else {
                        break;
                    };
                    owned.take(&user).map(|(state, _)| (user, state))
                };
                let Some((user, state)) = taken else {
                    continue;
                };
                let step = self
                    .evaluator
                    .on_definitions_changed(definitions, state, now);
                self.metrics.swept.inc();
                self.publish(partition, &user, step)?;
            }
        }
        let pending = lock(&self.store).stale_count();
        self.metrics.sweep_pending.set(pending as i64);
        Ok(())
    }

    fn process_event(
        &mut self,
        definitions: &Definitions,
        input: &Input,
        now: i64,
    ) -> Result<(), KafkaError> {
        let message = &input.message;
        let partition = message.partition();
        // Rejected before the user is taken out of the store: an invalid event must not cost
        // the user their state.
        let (event, kind) = match decode_event(message.payload().unwrap_or_default()) {
            Ok(decoded) => decoded,
            Err((kind, error)) => return self.dead_letter(message, kind, error),
        };
        let state = lock(&self.store)
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.take(&event.user_id));
        let (state, due) = state.map_or((None, None), |(state, due)| (Some(state), due));
        let started = Instant::now();
        let step = self
            .evaluator
            .on_event(definitions, state, due, &event, now);
        self.metrics
            .eval_duration
            .observe(started.elapsed().as_secs_f64());
        match step {
            Ok(step) => {
                let outcome = if step.ignored { "ignored" } else { "applied" };
                self.counters.event(kind, outcome);
                self.publish(partition, &event.user_id, step)
            }
            Err(invalid) => self.dead_letter(message, kind, invalid.to_string()),
        }
    }

    /// Produces a step's update, puts the user back in the store with their timer, and notes
    /// a changed state for the transaction's changelog records.
    fn publish(&mut self, partition: i32, user: &str, step: Step) -> Result<(), KafkaError> {
        for update in step.update.iter().chain(&step.targeted) {
            let topic = if update.origin() == Origin::Batch {
                &self.topology.status_batch_topic
            } else {
                &self.topology.status_topic
            };
            for change in &update.changes {
                self.counters.change(change);
            }
            update.encode_raw(&mut self.buffer);
            let sent = send(
                &self.producer,
                BaseRecord::to(topic).key(user).payload(&self.buffer),
            );
            self.buffer.clear();
            sent?;
        }
        if let (Some(at), Some(topic)) = (step.erased_at, &self.topology.delivery_log_topic) {
            // `delivery log` hides the user's records dated up to the tombstone's timestamp.
            send(
                &self.producer,
                BaseRecord::<str, [u8]>::to(topic).key(user).timestamp(at),
            )?;
        }
        if step.state_changed {
            let changed = self.changed.entry(partition).or_default();
            if !changed.contains(user) {
                changed.insert(user.to_owned());
            }
        }
        if let Some(state) = step.state
            && let Some(store) = lock(&self.store).partitions.get_mut(&partition)
        {
            store.put(state, step.due);
        }
        Ok(())
    }

    /// One changelog record per user whose state changed in this transaction: their state as
    /// it is now, or a tombstone for a user the store forgot.
    fn write_changelog(&mut self) -> Result<(), KafkaError> {
        let store = self.store.clone();
        let store = lock(&store);
        for (partition, users) in &mut self.changed {
            // A partition no longer owned is its new owner's to write (no tombstone from here).
            let Some(owned) = store.partitions.get(partition) else {
                users.clear();
                continue;
            };
            for user in users.drain() {
                let state = owned.get(&user);
                let mut record: BaseRecord<'_, str, Vec<u8>> =
                    BaseRecord::to(&self.topology.changelog_topic)
                        .key(user.as_str())
                        .partition(*partition);
                if let Some(state) = state {
                    self.buffer.clear();
                    state.encode_raw(&mut self.buffer);
                    record = record.payload(&self.buffer);
                }
                send(&self.producer, record)?;
            }
        }
        self.buffer.clear();
        Ok(())
    }

    /// Keeps an input event that cannot be applied, in the same transaction.
    fn dead_letter(
        &mut self,
        message: &OwnedMessage,
        kind: &str,
        error: String,
    ) -> Result<(), KafkaError> {
        self.counters.event(kind, "invalid");
        tracing::warn!(topic = message.topic(), partition = message.partition(), offset = message.offset(), %error, "Invalid input event; dead-lettering it.");
        let now = telemetry::clock::unix_ms();
        let mut record = DeadLetterRecord {
            error_class: ErrorClass::Undecodable as i32,
            error,
            first_attempt_unix_ms: now,
            last_attempt_unix_ms: now,
            dead_lettered_unix_ms: now,
            source: Some(SourcePosition {
                topic: message.topic().to_owned(),
                partition: message.partition(),
                offset: message.offset(),
            }),
            raw: message.payload().unwrap_or_default().to_vec(),
            ..DeadLetterRecord::default()
        };
        let key = record.fit_undecodable(message.key().unwrap_or_default());
        let payload = record.encode_to_vec();
        send(
            &self.producer,
            BaseRecord::to(&self.topology.dlq_topic)
                .key(key)
                .payload(&payload),
        )
    }
}

/// Enqueues a record, waiting while librdkafka's queue is full.
fn send<K, P>(producer: &BaseProducer, mut record: BaseRecord<'_, K, P>) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized,
    P: rdkafka::message::ToBytes + ?Sized,
{
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                producer.poll(Duration::from_millis(20));
                record = returned;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

#[cfg(test)]
mod tests;
