//! The partitions this process owns, each a [`PartitionStore`], and what is asked of them all at
//! once: users, bytes held, timers due, users queued for re-evaluation.

use std::collections::HashMap;

use super::PartitionStore;

/// The partitions this process owns.
#[derive(Debug, Default)]
pub struct Store {
    pub partitions: HashMap<i32, PartitionStore>,
}

impl Store {
    pub fn users(&self) -> usize {
        self.partitions.values().map(PartitionStore::len).sum()
    }

    /// [`PartitionStore::held_bytes`] of every partition.
    pub fn held_bytes(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionStore::held_bytes)
            .sum()
    }

    /// Timers due at `now`, in every partition (the horizons advanced to `now` first).
    pub fn due_count(&mut self, now: i64) -> usize {
        self.advance_horizons(now);
        self.partitions.values().map(|p| p.due_count(now)).sum()
    }

    /// [`PartitionStore::advance_horizon`] for every partition.
    fn advance_horizons(&mut self, now: i64) {
        for partition in self.partitions.values_mut() {
            partition.advance_horizon(now);
        }
    }

    /// Users queued for re-evaluation under new definitions, in every partition.
    pub fn stale_count(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionStore::stale_count)
            .sum()
    }

    /// (partition, user) pairs due at `now`, at most `limit` in all (the horizons advanced to
    /// `now` first).
    pub fn due(&mut self, now: i64, limit: usize) -> Vec<(i32, String)> {
        self.advance_horizons(now);
        let mut out = Vec::new();
        for (&partition, store) in &self.partitions {
            let room = limit.saturating_sub(out.len());
            out.extend(
                store
                    .due(now, room)
                    .map(|user| (partition, user.to_owned())),
            );
        }
        out
    }
}
