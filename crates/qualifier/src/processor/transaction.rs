//! One Kafka transaction: input events and due timers evaluated, their status updates,
//! changelog records and dead letters staged in the outbox (while the last transaction
//! commits), then produced in the transaction with the input offsets, and its commit started.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use model::{DeadLetterRecord, ErrorClass, Origin, SourcePosition, TraitEvent};
use prost::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::BorrowedMessage;
use rdkafka::producer::{BaseRecord, Producer};
use rdkafka::{Message, Offset, TopicPartitionList};
use telemetry::partition::KeyedProducer;

use super::commit::Bounded;
use super::outbox::To;
use super::{Input, Processor, SWEEP_BUDGET, TRANSACTION_TIMEOUT, decode_event, lock};
use crate::config::Definitions;
use crate::evaluate::Step;
use crate::metrics::{ChangelogBytes, EventKind, EventOutcome};
use crate::store::{LOOKED_UP_TOGETHER, Layout};

impl Processor {
    /// Begins a transaction of what the outbox holds and the offsets after `inputs`, and starts
    /// its commit ([`InFlight`](super::commit::InFlight)) once the broker has every record.
    pub(super) fn transaction(&mut self, inputs: &[Input<'_>]) -> Result<(), KafkaError> {
        let began = Instant::now();
        self.producer.begin_transaction()?;
        // The input's offsets go to the transaction while its records are handed over: the
        // call's two round trips (AddOffsetsToTxn to the transaction coordinator, then
        // TxnOffsetCommit to the group's) overlap with that and the acknowledgements.
        let offsets = self.send_offsets(inputs)?;
        let produced = self.outbox.send(&self.producer, &self.topology);
        // Waited for even when producing failed: the abort that follows must not race it.
        let sent = offsets.map_or(Ok(()), |call| self.offsets_sent(call));
        produced?;
        sent?;
        {
            // Up to its timeout when the broker is slow or away: a wait, not a stall.
            let _broker = self.heartbeat.waiting_at_most(TRANSACTION_TIMEOUT);
            await_acknowledged(&self.producer, TRANSACTION_TIMEOUT)?;
        }
        self.in_flight.start(&self.producer, began);
        Ok(())
    }

    /// Stages the transaction's last records, after its events': the due timers' updates, the
    /// swept users', and the changelog.
    pub(super) fn stage_rest(
        &mut self,
        definitions: &Definitions,
        due: Vec<(i32, String)>,
        now: i64,
    ) {
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
                self.publish(partition, &user, step);
            }
        }
        self.sweep(definitions, now);
        self.write_changelog();
    }

    /// Starts `send_offsets_to_transaction` for the inputs' next offsets (none: no call) on a
    /// thread of its own, waited for by [`Self::offsets_sent`]: librdkafka 2.12.1 was seen
    /// never returning from it, whatever its timeout, after a broker outage and when the group
    /// coordinator moved (docs/RELIABILITY.md, cluster items 2 and 9).
    fn send_offsets(
        &self,
        inputs: &[Input<'_>],
    ) -> Result<Option<Bounded<Result<(), KafkaError>>>, KafkaError> {
        let mut offsets: HashMap<i32, i64> = HashMap::new();
        for input in inputs {
            offsets.insert(input.message.partition(), input.message.offset() + 1);
        }
        if offsets.is_empty() {
            return Ok(None);
        }
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
        let producer = Arc::clone(&self.producer);
        Ok(Some(Bounded::start(move || {
            producer.send_offsets_to_transaction(&list, &group, TRANSACTION_TIMEOUT)
        })))
    }

    /// Waits for [`Self::send_offsets`]' call until `offsets_bound` after it began. Past the
    /// bound the producer is given up: the transaction fails, and `recover` replaces the
    /// producer without touching it (an abort would wait behind the hung call); the thread and
    /// the producer end when the call does, if ever.
    fn offsets_sent(&mut self, call: Bounded<Result<(), KafkaError>>) -> Result<(), KafkaError> {
        let sent = {
            let _broker = self.heartbeat.waiting_at_most(self.offsets_bound);
            call.wait(self.offsets_bound)
        };
        if let Some(sent) = sent {
            return sent;
        }
        tracing::error!(bound = ?self.offsets_bound, "librdkafka's send_offsets_to_transaction did not return within its bound; giving up this transactional producer for a new one.");
        self.give_up_producer();
        Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
    }

    /// Re-evaluates users queued because the definitions changed, for at most
    /// [`SWEEP_BUDGET`]: their 1s and 0s go out with this transaction.
    fn sweep(&mut self, definitions: &Definitions, now: i64) {
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
                self.publish(partition, &user, step);
            }
        }
        let pending = lock(&self.store).stale_count();
        self.metrics.sweep_pending.set(pending as i64);
    }

    /// Evaluates input events and stages what they produce, in order: [`LOOKED_UP_TOGETHER`]
    /// at a time, their users looked up first ([`Self::look_up`]).
    pub(super) fn process_events(
        &mut self,
        definitions: &Definitions,
        inputs: &[Input<'_>],
        now: i64,
    ) {
        for chunk in inputs.chunks(LOOKED_UP_TOGETHER) {
            self.look_up(chunk);
            for input in chunk {
                self.process_event(definitions, input, now);
            }
        }
    }

    /// Reads where each input's user is stored before any is taken
    /// ([`crate::store::Store::look_up`]), by the event's key: their id, as producers key
    /// events. An event keyed otherwise is only not looked up ahead.
    fn look_up(&self, inputs: &[Input<'_>]) {
        let keys = inputs.iter().filter_map(|input| {
            let message = &input.message;
            Some((message.partition(), message.key()?))
        });
        std::hint::black_box(lock(&self.store).look_up(keys));
    }

    /// Evaluates an input event and stages what it produces.
    pub(super) fn process_event(&mut self, definitions: &Definitions, input: &Input<'_>, now: i64) {
        let mut event = std::mem::take(&mut self.event);
        self.apply_event(definitions, input, &mut event, now);
        self.event = event;
    }

    /// [`Self::process_event`], decoding into `event`.
    fn apply_event(
        &mut self,
        definitions: &Definitions,
        input: &Input<'_>,
        event: &mut TraitEvent,
        now: i64,
    ) {
        let message = &input.message;
        let partition = message.partition();
        // Rejected before the user is taken out of the store: an invalid event must not cost
        // the user their state.
        let kind = match decode_event(message.payload().unwrap_or_default(), event) {
            Ok(kind) => kind,
            Err((kind, error)) => return self.dead_letter(message, kind, error),
        };
        let state = lock(&self.store)
            .partitions
            .get_mut(&partition)
            .and_then(|p| p.take(&event.user_id));
        let (state, due) = state.map_or((None, None), |(state, due)| (Some(state), due));
        let started = Instant::now();
        let step = self.evaluator.on_event(definitions, state, due, event, now);
        self.metrics
            .eval_duration
            .observe(started.elapsed().as_secs_f64());
        match step {
            Ok(step) => {
                let outcome = if step.ignored {
                    EventOutcome::Ignored
                } else {
                    EventOutcome::Applied
                };
                self.counters.event(kind, outcome);
                self.publish(partition, &event.user_id, step)
            }
            Err(invalid) => self.dead_letter(message, kind, invalid.to_string()),
        }
    }

    /// Stages a step's update, and puts the user back in the store with their timer, saying
    /// whether their state changed (their changelog record is written at the transaction's end).
    fn publish(&mut self, partition: i32, user: &str, step: Step) {
        for update in step.update.iter().chain(&step.targeted) {
            let to = if update.origin() == Origin::Batch {
                To::StatusBatch
            } else {
                To::Status
            };
            for change in &update.changes {
                self.counters.change(change);
            }
            self.outbox
                .encoded(to, user.as_bytes(), |bytes| update.encode_raw(bytes));
        }
        if let (Some(at), Some(_)) = (step.erased_at, &self.topology.delivery_log_topic) {
            // `delivery log` hides the user's records dated up to the tombstone's timestamp.
            self.outbox
                .tombstone_at(To::DeliveryLog, user.as_bytes(), at);
        }
        if let Some(store) = lock(&self.store).partitions.get_mut(&partition) {
            match step.state {
                Some(state) => {
                    store.put_changed(state, step.due, step.histories, step.state_changed);
                }
                None if step.state_changed => store.forget(user),
                None => {}
            }
        }
    }

    /// One changelog record per user whose state changed in this transaction: their state as
    /// it is now, or a tombstone for a user the store forgot, staged as the store encodes the
    /// users put back in it, once each (`PartitionStore::settle`). A partition no longer owned
    /// is its new owner's to write.
    fn write_changelog(&mut self) {
        let outbox = &mut self.outbox;
        let layout = match self.topology.changelog_trait_parts {
            true => Layout::Parts {
                now: telemetry::clock::unix_ms(),
            },
            false => Layout::Whole,
        };
        let mut bytes = ChangelogBytes::default();
        let (mut decoded, mut warm) = (0, 0);
        let partitions = &mut lock(&self.store).partitions;
        let warm_budget = self.topology.warm_state_bytes / partitions.len().max(1);
        for (&partition, owned) in partitions.iter_mut() {
            decoded += owned.decoded_bytes();
            let Ok(()) = owned.settle(layout, warm_budget, |key, record| {
                bytes.record(key, record);
                outbox.record(To::Changelog(partition), key, record);
                Ok::<(), Infallible>(())
            });
            warm += owned.warm_bytes();
        }
        bytes.add_to(&self.metrics);
        self.metrics.decoded_bytes.inc_by(decoded);
        self.metrics.warm_bytes.set(warm as i64);
    }

    /// Keeps an input event that cannot be applied, in the same transaction.
    fn dead_letter(&mut self, message: &BorrowedMessage<'_>, kind: EventKind, error: String) {
        self.counters.event(kind, EventOutcome::Invalid);
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
        self.outbox
            .encoded(To::DeadLetters, key, |bytes| record.encode_raw(bytes));
    }
}

/// Enqueues a record, waiting while librdkafka's queue is full.
pub(super) fn send<K, P>(
    producer: &KeyedProducer,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), KafkaError>
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

/// Waits until the broker acknowledged every message produced (serving the delivery reports),
/// for at most `timeout`. `commit_transaction` would wait for them too, but through rdkafka's
/// `flush`, whose every wait is a `poll` of up to 100 ms that runs to its end however soon the
/// acknowledgement comes (rdkafka 0.39): every transaction then took at least 100 ms, and an
/// event waited for that twice on its way (the transaction under way, then its own). Here each
/// look serves the reports at hand without waiting, then sleeps 1 ms (a `poll` of 1 ms spins:
/// it cost the qualifier 3× its CPU per event at 5,000 events/s): the commit follows the last
/// acknowledgement within about a millisecond.
fn await_acknowledged(producer: &KeyedProducer, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        producer.poll(Duration::ZERO);
        if producer.in_flight_count() == 0 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;

    use super::*;

    /// Nothing unacknowledged: it returns at once; a message no broker takes: it gives up at
    /// its bound with the error `commit_transaction`'s own flush gives (so the caller aborts
    /// the transaction as before).
    #[test]
    fn waiting_for_the_acknowledgements_ends_at_once_or_at_its_bound() {
        let producer: KeyedProducer = ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("message.timeout.ms", "60000")
            .create_with_context(Default::default())
            .unwrap();
        let started = Instant::now();
        await_acknowledged(&producer, Duration::from_secs(10)).unwrap();
        assert!(started.elapsed() < Duration::from_secs(1));
        producer
            .send(BaseRecord::<(), [u8]>::to("nowhere").payload(b"x"))
            .map_err(|(error, _)| error)
            .unwrap();
        let started = Instant::now();
        let error = await_acknowledged(&producer, Duration::from_millis(300)).unwrap_err();
        assert_eq!(
            error,
            KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)
        );
        let waited = started.elapsed();
        assert!(
            (Duration::from_millis(300)..Duration::from_secs(5)).contains(&waited),
            "waited {waited:?}"
        );
    }
}
