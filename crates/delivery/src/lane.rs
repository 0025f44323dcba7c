//! One lane of one destination: a bounded queue feeding a batcher and at most one request in
//! flight. A user always goes through the same lane of a destination (by hash of the user id),
//! so with `max_in_flight` lanes sending in parallel a user's changes still reach the partner
//! in order — retries included, since a lane sends nothing new until its batch is finished.

use std::sync::Arc;
use std::time::Duration;

use model::ErrorClass;
use prometheus::local::LocalHistogram;
use tokio::sync::mpsc;

use crate::batcher::{DestinationBatch, LatestUpdate, RoutedEvent};
use crate::config::DestinationConfig;
use crate::dead_letter::DeadLetterWriter;
use crate::delivery_log::AttemptReport;
use crate::metrics::SendPath;
use crate::offsets::{Sending, Watermarks};
use crate::payload::{idempotency_key, write_body};
use crate::sender::{DestinationSender, Failure};
use crate::update::Update;

mod linger;
mod rounds;
use linger::Linger;
use rounds::Rounds;

/// The most queued events a lane takes at once (see [`Lane::receive`]).
const RECEIVE: usize = 32;

/// The lane of `lanes` the user of `update` goes through, by their id's hash: seeded once per
/// process, so a user keeps their lane while it runs — all per-user order needs — without
/// SipHash's cost per event.
pub fn lane_of(update: &Update, lanes: usize) -> usize {
    (update.user_hash() % lanes as u64) as usize
}

#[derive(Debug)]
pub struct Lane {
    pub events: mpsc::Receiver<RoutedEvent>,
    pub sender: Arc<DestinationSender>,
    pub dead_letters: Arc<DeadLetterWriter>,
    /// The input's watermarks and this destination's index in them (`None` when replaying
    /// dead letters, which have no offsets).
    pub watermarks: Option<(Watermarks, usize)>,
    /// The input topic, part of the idempotency key.
    pub input_topic: Arc<str>,
    /// Transient failures wait and try again (delivery), or dead-letter the batch after its
    /// attempts (`delivery replay`).
    pub hold_transient: bool,
    /// Real time, or the batch lane that yields the rate limit to it.
    pub priority: crate::sender::Priority,
    /// Where a resync counts its own users by outcome (it shares the destination's sender,
    /// whose metrics count every path); `None` elsewhere.
    pub outcomes: Option<Arc<crate::resync::progress::Progress>>,
    /// Beats once per batch (`/livez`: `lane[<destination>/<topic>/<n>]`); waiting for
    /// input, the partner or the broker is not being stuck. `None` outside the service.
    pub heartbeat: Option<telemetry::Heartbeat>,
}

impl Lane {
    /// Runs until the queue is closed and drained: the last batch is sent before returning.
    pub async fn run(mut self) {
        let destination = self.sender.config.clone();
        let linger = destination.batch.linger;
        let mut batch = DestinationBatch::new(destination);
        if self.sender.log.is_some() {
            batch.keep_log();
        }
        let mut sending = Sending::new(self.watermarks.as_ref().map(|(w, _)| w));
        // Events taken from the queue and not batched yet, the next one last.
        let mut received: Vec<RoutedEvent> = Vec::new();
        loop {
            let first = match received.pop() {
                Some(event) => event,
                None => {
                    // An idle lane holds no buffer: a thousand destinations' lanes would.
                    received = Vec::new();
                    let idle = self.waiting();
                    self.receive(&mut received).await;
                    drop(idle);
                    match received.pop() {
                        Some(event) => event,
                        None => return,
                    }
                }
            };
            if let Some(heartbeat) = &self.heartbeat {
                heartbeat.beat_in_task().await;
            }
            self.sender.note_progress();
            let mut lingering = Linger::open(&first, linger);
            let _fits_an_empty_batch = batch.add(first);
            let mut closed = false;
            // One timer for the batch, moved when an older change joins it: made anew for
            // every event, it cost a look-up of the runtime's handle (a shared count taken and
            // given back) per event.
            let linger_ends = tokio::time::sleep_until(lingering.deadline());
            tokio::pin!(linger_ends);
            while !batch.is_full() {
                let Some(event) = received.pop() else {
                    tokio::select! {
                        biased;
                        () = self.receive(&mut received) => {
                            if received.is_empty() {
                                closed = true;
                                break;
                            }
                            continue;
                        }
                        () = &mut linger_ends => break,
                    }
                };
                let origin = lingering.origin_of(&event);
                if let Err(event) = batch.add(event) {
                    received.push(event);
                    break;
                }
                if let Some(sooner) = lingering.hold(origin) {
                    linger_ends.as_mut().reset(sooner);
                }
            }
            self.finish_batch(&mut batch, &mut sending).await;
            if closed && received.is_empty() {
                return;
            }
        }
    }

    /// Takes up to [`RECEIVE`] queued events into `received` (empty: none come, the queue is
    /// closed), the next one last, and reads each one's update once, all together.
    ///
    /// The consumer wrote the updates a while ago, on another core: the first read of each in
    /// [`DestinationBatch::add`] was a miss to memory, 4 % of a 20-destination drain. Read one
    /// after another here, with nothing waiting on them, the misses overlap. Taken one by one,
    /// each event also took the queue's lock to give its place back.
    async fn receive(&mut self, received: &mut Vec<RoutedEvent>) {
        debug_assert!(received.is_empty());
        if self.events.recv_many(received, RECEIVE).await > 0 {
            received.reverse();
            let read = received.iter().fold(0, |all, e| all ^ e.update.touch());
            std::hint::black_box(read);
        }
    }

    /// A wait of this lane's (see [`telemetry::Heartbeat::waiting`]), until dropped.
    fn waiting(&self) -> Option<telemetry::Waiting> {
        self.heartbeat.as_ref().map(telemetry::Heartbeat::waiting)
    }

    /// Sends the batch (or dead-letters it), then finishes its events' offsets.
    /// `sending` is the lane's, used again for every batch (see `offsets::Sending`).
    async fn finish_batch(&self, batch: &mut DestinationBatch, sending: &mut Sending) {
        let queued = batch.events.len();
        sending.claim(batch);
        let metrics = &self.sender.metrics;
        if !batch.is_empty() {
            match self.deliver(batch, sending).await {
                Ok(()) => {
                    let now = telemetry::clock::unix_ms();
                    let mut sent = 0;
                    // Counted here and added to the shared histograms once per batch (when
                    // dropped): observed one by one, each change delivered took four atomic
                    // operations on them.
                    let mut latencies: [Option<LocalHistogram>; 4] = Default::default();
                    for user in &batch.users {
                        let segments = batch.segments(user);
                        sent += segments.len();
                        let path = self.send_path(user.latest_update);
                        let latency = latencies[path as usize]
                            .get_or_insert_with(|| metrics.end_to_end_latency(path).local());
                        let restated = self.restated_at(user.latest_update);
                        for segment in segments {
                            let changed = restated
                                .map_or(segment.time_unix_ms, |at| at.max(segment.time_unix_ms));
                            let latency_ms = now.saturating_sub(changed).max(0);
                            latency.observe(latency_ms as f64 / 1000.0);
                        }
                    }
                    drop(latencies); // flushed
                    metrics.delivered.inc_by(batch.events.len() as u64);
                    metrics.changes_delivered.inc_by(sent as u64);
                    if let Some(outcomes) = &self.outcomes {
                        outcomes.delivered(batch.events.len() as u64);
                    }
                    metrics
                        .changes_coalesced
                        .inc_by(batch.coalesced.len() as u64);
                    crate::coalesced::record(batch);
                }
                Err(failure) if batch.is_empty() => {
                    // Every event's partition moved to another owner while the batch waited.
                    tracing::debug!(destination = self.sender.config.id, error = %failure.error, "A waiting batch's partitions were revoked; their new owner sends them.");
                }
                Err(failure) => {
                    tracing::warn!(
                        destination = self.sender.config.id,
                        events = batch.events.len(),
                        attempts = failure.attempts,
                        error_class = failure.class.as_str_name(),
                        error = %failure.error,
                        "Batch not delivered; its events go to the dead-letter topic."
                    );
                    let _broker = self.waiting();
                    self.dead_letters
                        .write_failed_batch(
                            self.sender.config.id,
                            &self.input_topic,
                            &batch.events,
                            &failure,
                        )
                        .await;
                    metrics.dead_lettered.inc_by(batch.events.len() as u64);
                    if let Some(outcomes) = &self.outcomes {
                        outcomes.dead_lettered(batch.events.len() as u64);
                    }
                    // The record holds the events whole: the changes coalesced within the
                    // batch are dead-lettered too.
                    let changes = batch.change_count() + batch.coalesced.len();
                    metrics.changes_dead_lettered.inc_by(changes as u64);
                }
            }
        }
        let mut events = batch.take_events();
        crate::budget::release(&mut events);
        if let Some((_, destination)) = &self.watermarks {
            // The accepted attempt lets go only now: a revocation waiting for it commits
            // its events.
            sending.finish(events.iter().filter_map(|e| e.source), *destination);
        }
        metrics.queue_depth.sub(queued as i64);
        // Each update's count is read first, one after another, so the misses overlap:
        // dropped one by one, each decrement (an atomic operation) waited for its own line
        // (1.8 % of a drain).
        std::hint::black_box(events.iter().map(|e| e.update.holders()).sum::<usize>());
        drop(events);
    }

    /// When `update` was made, if it restates memberships the user already had — a targeted
    /// update (a newly synced partner id getting them) or a resync's — rather than changes:
    /// their `DateTime` is when the user qualified, long before, and their end-to-end latency
    /// counts from when they were made instead.
    fn restated_at(&self, update: LatestUpdate) -> Option<i64> {
        (self.outcomes.is_some() || update.targeted).then_some(update.produced_unix_ms)
    }

    /// How the user's changes in this batch were sent (by their latest event).
    fn send_path(&self, update: LatestUpdate) -> SendPath {
        if self.watermarks.is_none() {
            return SendPath::Replay;
        }
        if update.catch_up {
            SendPath::CatchUp
        } else if update.origin == model::Origin::Batch {
            SendPath::Batch
        } else {
            SendPath::RealTime
        }
    }

    /// Sends the batch until the partner accepts it, or the failure is permanent. A
    /// transient failure (timeout, connection, TLS, 5xx, 429, …) pauses the lane with capped
    /// exponential backoff (or as long as the partner's `Retry-After` / the circuit's
    /// cool-down says; see [`Rounds`]) and tries again: the batch waits here, the lane's
    /// queue fills, and the destination's later events wait in Kafka (see `consumer`). Only a
    /// change older than `max_backlog_age` gives up on a transient failure. Replays
    /// (`hold_transient` false) give up after one round of attempts, as before.
    /// `sending` (claimed) holds the batch's input partitions while an attempt is on the wire
    /// (see `offsets::Sending`), and after the one the partner accepted until
    /// [`Self::finish_batch`] finishes its events; the batch is claimed again before each
    /// round, and at once when a partition was revoked before an attempt.
    async fn deliver(
        &self,
        batch: &mut DestinationBatch,
        sending: &mut Sending,
    ) -> Result<(), Failure> {
        let destination = &self.sender.config;
        let metrics = &self.sender.metrics;
        let mut rounds = Rounds::new(destination.backoff, self.sender.recoveries());
        loop {
            let failure = if batch.is_oversized() {
                oversized(batch, destination)
            } else {
                let mut body = Vec::with_capacity(batch.body_bytes());
                let process_time = telemetry::clock::unix_ms();
                write_body(batch, process_time, &mut body);
                let key = idempotency_key(batch, &self.input_topic);
                metrics.batch_users.observe(batch.users.len() as f64);
                metrics.batch_bytes.observe(body.len() as f64);
                let earlier_attempts = rounds.earlier_attempts();
                let logged = self.sender.log.as_ref().zip(batch.log_users());
                let mut on_attempt = |report: &AttemptReport<'_>| {
                    if let Some((log, users)) = &logged {
                        let report = AttemptReport {
                            attempt: earlier_attempts + report.attempt,
                            ..*report
                        };
                        log.record(users, destination.id, process_time, &key, &report);
                    }
                };
                // The partner's answer, its rate limit, an open circuit: waits a restart would
                // not shorten.
                let partner = self.waiting();
                let sent = self
                    .sender
                    .send(body, &key, self.priority, &mut on_attempt, sending)
                    .await;
                drop(partner);
                match sent {
                    Ok(()) => return Ok(()),
                    Err(failure) if sending.refused() => {
                        // Those events are their new owner's now; the rest go at once.
                        sending.claim(batch);
                        if batch.is_empty() {
                            return Err(failure);
                        }
                        continue;
                    }
                    Err(failure) => failure,
                }
            };
            // The record of a batch tried in several rounds counts every attempt.
            let (failure, wait) = rounds.failed(failure);
            if failure.permanent || !self.hold_transient {
                return Err(failure);
            }
            let oldest_ms = batch
                .events
                .iter()
                .map(|e| e.update.produced_unix_ms())
                .min()
                .unwrap_or(i64::MAX);
            let age = Duration::from_millis(
                telemetry::clock::unix_ms().saturating_sub(oldest_ms).max(0) as u64,
            );
            if age > destination.max_backlog_age {
                tracing::warn!(
                    destination = destination.id,
                    age_s = age.as_secs(),
                    max_backlog_age_s = destination.max_backlog_age.as_secs(),
                    "A failing batch waited longer than max_backlog_age; it is dead-lettered so retention cannot drop it unseen."
                );
                return Err(failure);
            }
            metrics.backoffs.inc();
            tracing::debug!(
                destination = destination.id,
                wait_ms = wait.as_millis() as u64,
                error_class = failure.class.as_str_name(),
                "Batch failed transiently; waiting before the next attempt."
            );
            let backoff_wait = self.waiting();
            rounds.wait(wait).await;
            drop(backoff_wait);
            sending.claim(batch);
            if batch.is_empty() {
                return Err(failure);
            }
        }
    }
}

/// Why a batch over `max_bytes` is dead-lettered without a request: a partner sized its
/// limit for a reason, and a request it refuses would also count against the destination's
/// circuit, cutting off users who fit.
fn oversized(batch: &DestinationBatch, destination: &DestinationConfig) -> Failure {
    let now = telemetry::clock::unix_ms();
    Failure {
        class: ErrorClass::Oversized,
        error: format!(
            "the user's entries alone make a {}-byte body, more than the destination's batch.max_bytes ({}): raise it if the partner accepts larger requests, then replay",
            batch.body_bytes(),
            destination.batch.max_bytes
        ),
        attempts: 0,
        first_attempt_unix_ms: now,
        last_attempt_unix_ms: now,
        permanent: true,
        not_before: None,
    }
}
