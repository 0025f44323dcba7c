//! The destinations' slots in a pipeline: their lanes started and stopped, the router over
//! them, and a reloaded config's destinations applied without stopping the others.

use std::sync::Arc;

use rdkafka::consumer::Consumer as _;
use tokio::sync::mpsc;

use super::InputPipeline;
use crate::lane::Lane;
use crate::order::Topic;
use crate::router::Router;
use crate::sender::{DestinationSender, Priority};

impl InputPipeline {
    /// Starts the lanes of `slot` for `sender` (replacing any it had).
    pub(super) fn spawn_lanes(&mut self, slot: usize, sender: &Arc<DestinationSender>) {
        let capacity = sender.config.queue_capacity;
        let mut queues = Vec::with_capacity(sender.config.max_in_flight);
        let mut aborts = Vec::with_capacity(sender.config.max_in_flight);
        for lane in 0..sender.config.max_in_flight {
            let (tx, rx) = mpsc::channel(capacity);
            // A lane's own work between waits is a batch's linger and writing its body.
            let heartbeat = self.shared.liveness.as_ref().map(|liveness| {
                liveness.heartbeat_within(
                    format!("lane[{}/{}/{lane}]", sender.config.id, self.topic),
                    liveness.stall_after() + sender.config.batch.linger,
                )
            });
            aborts.push(
                self.lane_tasks.spawn(
                    Lane {
                        events: rx,
                        sender: sender.clone(),
                        dead_letters: self.shared.dead_letters.clone(),
                        watermarks: Some((self.watermarks.clone(), slot)),
                        input_topic: self.topic.clone(),
                        hold_transient: true,
                        priority: if self.side() == Topic::RealTime {
                            Priority::RealTime
                        } else {
                            Priority::Batch
                        },
                        outcomes: None,
                        heartbeat,
                    }
                    .run(),
                ),
            );
            queues.push(tx);
        }
        let share = Some(self.shared.budget.share());
        if slot == self.lanes.len() {
            self.lanes.push(queues);
            self.shares.push(share);
            self.lane_aborts.push(aborts);
            self.lagging.push(None);
        } else {
            self.lanes[slot] = queues;
            self.shares[slot] = share;
            self.lane_aborts[slot] = aborts;
            self.lagging[slot] = None;
        }
    }

    pub(super) fn rebuild_router(&mut self) {
        let configs: Vec<Option<Arc<crate::config::DestinationConfig>>> = self
            .slots
            .iter()
            .map(|s| s.as_ref().map(|s| s.config.clone()))
            .collect();
        self.router = Router::over(configs.iter().map(Option::as_ref));
    }

    /// Stops a slot's reader and lanes at once (what they held is accounted for by the
    /// caller: forgotten, or read again from the destination's position).
    pub(super) async fn stop_slot(&mut self, slot: usize) {
        self.readers.stop_one(slot).await;
        self.watermarks.lock().release_claim(slot);
        for abort in self.lane_aborts[slot].drain(..) {
            abort.abort();
        }
        self.lanes[slot].clear();
    }

    /// Applies a reloaded config's destinations without stopping the others: a removed one
    /// stops (nothing is owed to it: what it held leaves the commit and the metadata); a
    /// changed one restarts with its new config from its position (what it held is read
    /// again by its reader, so nothing is lost: at most sent twice); an added one starts
    /// with the changes from now on. Unchanged destinations go on untouched.
    pub(super) async fn reconfigure(&mut self, senders: Vec<Arc<DestinationSender>>) {
        for slot in 0..self.slots.len() {
            let Some(old) = self.slots[slot].clone() else {
                continue;
            };
            match senders.iter().find(|s| s.config.id == old.config.id) {
                Some(new) if Arc::ptr_eq(new, &old) => {}
                Some(new) => {
                    self.stop_slot(slot).await;
                    let held = self.watermarks.lock().restart_destination(slot);
                    old.metrics.queue_depth.sub(held as i64);
                    self.slots[slot] = Some(new.clone());
                    self.spawn_lanes(slot, new);
                    tracing::info!(topic = %self.topic, destination = new.config.id, resent = held, "Destination changed: it restarts with its new config from its position; the others go on.");
                }
                None => {
                    self.stop_slot(slot).await;
                    let held = self.watermarks.lock().remove_destination(slot);
                    old.metrics.queue_depth.sub(held as i64);
                    self.slots[slot] = None;
                    self.shares[slot] = None;
                    tracing::info!(topic = %self.topic, destination = old.config.id, dropped = held, "Destination removed; the others go on.");
                }
            }
        }
        for sender in &senders {
            let known = self
                .slots
                .iter()
                .flatten()
                .any(|s| s.config.id == sender.config.id);
            if !known {
                let slot = self.watermarks.lock().add_destination(sender.config.id);
                debug_assert_eq!(slot, self.slots.len());
                self.slots.push(Some(sender.clone()));
                self.spawn_lanes(slot, sender);
                tracing::info!(topic = %self.topic, destination = sender.config.id, "Destination added: it gets the changes from now on; the others go on.");
            }
        }
        self.rebuild_router();
        self.report_backlogs();
        // New and changed senders take this worker's share of their rate limit.
        let context = self.consumer.context();
        *context
            .rate_senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = senders;
        context.apply_rate_share();
    }
}
