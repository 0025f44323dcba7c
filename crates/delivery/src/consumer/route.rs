//! The shared consumer's way with one update: superseded changes dropped, the rest routed to
//! the lanes of every destination that maps it, and a destination that cannot keep up
//! detached from the partition (its catch-up reader takes over); undecodable input goes to
//! the dead-letter topic.

use std::time::Duration;

use model::SourcePosition;
use telemetry::Heartbeat;
use tokio::sync::mpsc::error::TrySendError;

use super::InputPipeline;
use crate::batcher::{EventSource, RoutedEvent};
use crate::budget::{Held, queued_bytes};
use crate::catch_up::{CatchUpReader, ReaderTarget};
use crate::lane::lane_of;
#[cfg(doc)]
use crate::sender::DestinationSender;
use crate::update::Update;

/// After a destination had to detach, how long a full lane of it detaches it at once — as
/// long as it has taken no batch since, or its requests are slow (see [`Lagging`]).
pub(super) const LAGGING: Duration = Duration::from_secs(30);

/// A destination that had to detach: until [`LAGGING`] after that, a full lane of it detaches
/// it at once — unless it took a batch since and its requests are not slow
/// ([`DestinationSender::is_slow`]). A failing destination (timing out, waiting out a
/// backoff) takes no batch, and a partner answering just under its timeout is slow: they
/// leave every partition without holding the others back again. A healthy one that was stuck
/// behind one long request takes its next batch moments later and is waited for again, as
/// when all keep up: in a drain it would otherwise leave and rejoin partitions for 30 s, each
/// time read a second time by a catch-up reader started anew.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lagging {
    pub(super) until: tokio::time::Instant,
    /// The destination's progress mark when it detached.
    pub(super) progress: u64,
}

impl Lagging {
    /// `progress`: the destination's progress mark now; `slow`: whether its requests are slow.
    pub(super) fn still_stuck(self, now: tokio::time::Instant, progress: u64, slow: bool) -> bool {
        now < self.until && (progress == self.progress || slow)
    }
}

impl InputPipeline {
    /// The changes of `update` that a newer change from the other input topic supersedes
    /// are not routed: they are counted and reported for the destinations this consumer
    /// serves on `partition` (those reading it on their own do so when they read it).
    pub(super) fn without_superseded(
        &mut self,
        update: Update,
        partition: i32,
        targets: &mut Vec<usize>,
    ) -> Option<Update> {
        let Some(order) = &self.shared.order else {
            return Some(update);
        };
        let superseded = order.route(self.side(), partition, &update);
        if superseded.is_empty() {
            return Some(update);
        }
        self.router.route(&update, targets);
        self.watermarks.lock().served(partition, targets);
        let served = targets.iter().filter_map(|&d| self.slots[d].as_deref());
        crate::order::strip(update, &superseded, served)
    }

    /// Hands the update to every destination that maps it and reads this partition with the
    /// shared consumer. A destination whose lane stays full for its `detach_after` detaches
    /// from the partition here (and, for [`LAGGING`] after that, while it takes no batch or
    /// is slow, on a full lane at once), so a slow or failing destination holds the others
    /// back once, briefly; a busy but healthy one takes its next batch within that time, and
    /// everyone waits for it (backpressure, as when all keep up).
    pub(super) async fn route(
        &mut self,
        update: Update,
        partition: i32,
        offset: i64,
        written_unix_ms: Option<i64>,
        targets: &mut Vec<usize>,
    ) -> Result<(), String> {
        let Some(update) = self.without_superseded(update, partition, targets) else {
            self.watermarks
                .lock()
                .track(partition, offset, &mut Vec::new());
            return Ok(());
        };
        self.router.route(&update, targets);
        let Some(assignment) = self.watermarks.lock().track(partition, offset, targets) else {
            return Ok(()); // fetched just before the partition was revoked; its new owner reads it
        };
        if targets.is_empty() {
            return Ok(());
        }
        let source = Some(EventSource {
            assignment,
            offset,
            catch_up: false,
            written_unix_ms,
        });
        let bytes = queued_bytes(&update, targets.len());
        for &destination in targets.iter() {
            let lanes = &self.lanes[destination];
            let (Some(sender), Some(share)) = (&self.slots[destination], &self.shares[destination])
            else {
                continue;
            };
            let lane = &lanes[lane_of(&update, lanes.len())];
            let event = RoutedEvent {
                update: update.clone(),
                source,
                held: Held::default(),
            };
            // A full lane, or a budget that is full while this destination holds more than
            // its share: the same wait for room.
            let tried = if share.admits() {
                lane.try_send(RoutedEvent {
                    held: share.hold(bytes),
                    ..event
                })
            } else {
                Err(TrySendError::Full(event))
            };
            let sent = match tried {
                Ok(()) => Ok(()),
                Err(TrySendError::Full(mut event)) => {
                    event.held = Held::default(); // counted again once it has its place
                    // Wait for room while the destination takes batches (busy: everyone
                    // waits for it, as when all keep up); stuck (no batch taken within its
                    // `stuck_after`) or detached a moment ago: detach, and the others go on.
                    let now = tokio::time::Instant::now();
                    let lagging = self.lagging[destination].is_some_and(|l| {
                        l.still_stuck(now, sender.progress_mark(), sender.is_slow())
                    });
                    let mut pending = Some(event);
                    while !lagging && let Some(event) = pending.take() {
                        let waiting_since = sender.progress_mark();
                        // Backpressure from a busy partner: a wait, not a stall.
                        let _backpressure = self.heartbeat.as_ref().map(Heartbeat::waiting);
                        // Over its share of a full budget, a destination may hold less than
                        // a lane's worth, its lanes lingering on open batches: it takes its
                        // next batch within a linger, and only then can be seen to be stuck.
                        let patience = if share.admits() {
                            sender.stuck_after()
                        } else {
                            sender.stuck_after() + sender.config.batch.linger
                        };
                        let room = async {
                            share.room().await;
                            lane.reserve().await
                        };
                        match tokio::time::timeout(patience, room).await {
                            Ok(Ok(permit)) => permit.send(RoutedEvent {
                                held: share.hold(bytes),
                                ..event
                            }),
                            Ok(Err(_closed)) => {
                                return Err(format!(
                                    "the lane of destination {} stopped",
                                    sender.config.id
                                ));
                            }
                            Err(_) => {
                                pending = Some(event);
                                if sender.progress_mark() == waiting_since {
                                    break;
                                }
                            }
                        }
                    }
                    if pending.is_none() {
                        Ok(())
                    } else {
                        self.lagging[destination] = Some(Lagging {
                            until: now + LAGGING,
                            progress: sender.progress_mark(),
                        });
                        if self
                            .watermarks
                            .lock()
                            .detach(assignment, offset, destination)
                        {
                            sender.metrics.detaches.inc();
                            tracing::info!(topic = %self.topic, destination = sender.config.id, partition, offset, "Destination cannot keep up; it reads this partition on its own from here, and the others go on.");
                            self.start_reader(destination);
                        }
                        continue;
                    }
                }
                Err(TrySendError::Closed(_)) => Err(()),
            };
            match sent {
                Ok(()) => sender.metrics.queue_depth.inc(),
                Err(()) => {
                    return Err(format!(
                        "the lane of destination {} stopped",
                        sender.config.id
                    ));
                }
            }
        }
        Ok(())
    }

    /// Makes sure destination `index`'s catch-up reader runs and reads its detached
    /// partitions.
    pub(super) fn start_reader(&mut self, index: usize) {
        let (Some(sender), Some(share)) = (self.slots[index].clone(), self.shares[index].clone())
        else {
            return;
        };
        let id = sender.config.id;
        let claimed = self.watermarks.lock().claim_reader(index);
        let topic = self.topic.clone();
        let kafka = &self.kafka;
        let order = self.shared.order.clone().map(|o| (o, self.side()));
        let make = || {
            CatchUpReader::new(
                kafka,
                &self.group_id,
                topic.clone(),
                ReaderTarget {
                    index,
                    sender,
                    lanes: self.lanes[index].clone(),
                    share: share.clone(),
                    order: order.clone(),
                },
                self.watermarks.clone(),
            )
        };
        if let Err(error) = self.readers.ensure(index, claimed, make) {
            self.watermarks.lock().release_claim(index);
            tracing::error!(topic = %self.topic, destination = id, %error, "Cannot start a catch-up reader; retrying at the next commit interval. The destination's position is kept.");
        }
    }

    pub(super) async fn dead_letter_undecodable(
        &mut self,
        partition: i32,
        offset: i64,
        key: &[u8],
        payload: &[u8],
        reason: String,
    ) {
        self.shared.metrics.decode_errors.inc();
        tracing::warn!(topic = %self.topic, partition, offset, %reason, "Undecodable input message; dead-lettering it.");
        let source = SourcePosition {
            topic: self.topic.to_string(),
            partition,
            offset,
        };
        let _broker = self.heartbeat.as_ref().map(Heartbeat::waiting);
        self.shared
            .dead_letters
            .write_undecodable(source, key, payload, reason)
            .await;
        self.watermarks
            .lock()
            .track(partition, offset, &mut Vec::new());
    }
}
