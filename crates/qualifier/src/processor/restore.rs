//! Restoring a partition's users from the changelog when this process gains it, and dropping
//! them when it loses it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use model::UserState;
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::{ClientContext, Message};
use telemetry::{KafkaSettings, Waiter};

use super::{SharedDefinitions, Topology, current, lock};
use crate::config::Definitions;
use crate::evaluate::{next_due, normalize};
use crate::metrics::Metrics;
use crate::store::{PartitionStore, Store};

/// Restores assigned partitions from the changelog and drops revoked ones; librdkafka's
/// statistics feed the lag gauge.
pub(super) struct RebalanceContext {
    pub(super) kafka: KafkaSettings,
    pub(super) topology: Topology,
    pub(super) store: Arc<Mutex<Store>>,
    pub(super) definitions: SharedDefinitions,
    pub(super) metrics: Metrics,
    pub(super) lag: telemetry::ConsumerLag,
    /// A restore takes as long as the changelog is large: the processing loop waits, it is
    /// not stuck.
    pub(super) waiter: Waiter,
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
pub(super) fn restore(
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
