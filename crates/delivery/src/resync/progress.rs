//! How far a resync got: users read from the changelog, sent (handed to the destination's
//! lanes), delivered (in a batch the partner accepted) and dead-lettered, and partitions
//! done. The lanes count outcomes here because a backfill shares the destination's sender with
//! live traffic, whose metrics count both; `sent` and `delivered` are also the metric
//! `delivery_resync_users_total`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use prometheus::IntCounter;

use crate::metrics::Metrics;

/// The counts of one resync (atomics: the lanes count from their own tasks).
#[derive(Debug)]
pub struct Progress {
    read: AtomicU64,
    sent: AtomicU64,
    delivered: AtomicU64,
    dead_lettered: AtomicU64,
    partitions: AtomicU64,
    partitions_done: AtomicU64,
    sent_total: IntCounter,
    delivered_total: IntCounter,
}

/// The counts at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub read: u64,
    pub sent: u64,
    pub delivered: u64,
    pub dead_lettered: u64,
    pub partitions: u64,
    pub partitions_done: u64,
}

impl Progress {
    /// Counts for `destination`, reported to `metrics` too.
    pub fn new(metrics: &Metrics, destination: u64) -> Self {
        let (sent_total, delivered_total) = metrics.resync_users(destination);
        Self {
            read: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
            partitions: AtomicU64::new(0),
            partitions_done: AtomicU64::new(0),
            sent_total,
            delivered_total,
        }
    }

    /// Changelog records read.
    pub fn read(&self, records: u64) {
        self.read.fetch_add(records, Ordering::Relaxed);
    }

    /// Users handed to the lanes.
    pub fn sent(&self, users: u64) {
        self.sent.fetch_add(users, Ordering::Relaxed);
        self.sent_total.inc_by(users);
    }

    /// Users in a batch the partner accepted.
    pub fn delivered(&self, users: u64) {
        self.delivered.fetch_add(users, Ordering::Relaxed);
        self.delivered_total.inc_by(users);
    }

    /// Users in a batch that was dead-lettered.
    pub fn dead_lettered(&self, users: u64) {
        self.dead_lettered.fetch_add(users, Ordering::Relaxed);
    }

    /// Partitions this run reads (or found complete).
    pub fn partitions(&self, partitions: u64) {
        self.partitions.fetch_add(partitions, Ordering::Relaxed);
    }

    /// A partition is complete.
    pub fn partition_done(&self) {
        self.partitions_done.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            read: self.read.load(Ordering::Relaxed),
            sent: self.sent.load(Ordering::Relaxed),
            delivered: self.delivered.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            partitions: self.partitions.load(Ordering::Relaxed),
            partitions_done: self.partitions_done.load(Ordering::Relaxed),
        }
    }
}

/// One progress line: the counts of `now`, and the rate of users read since `before`,
/// `elapsed` ago.
pub fn line(destination: u64, now: Snapshot, before: Snapshot, elapsed: Duration) -> String {
    let rate = (now.read - before.read.min(now.read)) as f64 / elapsed.as_secs_f64().max(0.001);
    let dead_lettered = if now.dead_lettered > 0 {
        format!(", {} dead-lettered", now.dead_lettered)
    } else {
        String::new()
    };
    format!(
        "resync of destination {destination}: {} users read, {} sent, {} delivered{dead_lettered}; {}/{} partitions done; {rate:.0} users/s",
        now.read, now.sent, now.delivered, now.partitions_done, now.partitions
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_progress_line_names_every_count_and_the_rate() {
        let before = Snapshot {
            read: 1_000,
            ..Snapshot::default()
        };
        let now = Snapshot {
            read: 5_000,
            sent: 3_000,
            delivered: 2_500,
            dead_lettered: 0,
            partitions: 6,
            partitions_done: 2,
        };
        assert_eq!(
            line(423, now, before, Duration::from_secs(2)),
            "resync of destination 423: 5000 users read, 3000 sent, 2500 delivered; 2/6 partitions done; 2000 users/s"
        );
        let failing = Snapshot {
            dead_lettered: 7,
            ..now
        };
        assert!(line(423, failing, now, Duration::from_secs(2)).contains(", 7 dead-lettered;"));
    }

    #[test]
    fn outcomes_reach_the_metric() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        let progress = Progress::new(&metrics, 423);
        progress.sent(3);
        progress.delivered(2);
        progress.dead_lettered(1);
        let (sent, delivered) = metrics.resync_users(423);
        assert_eq!((sent.get(), delivered.get()), (3, 2));
        assert_eq!(progress.snapshot().dead_lettered, 1);
    }
}
