//! Consumer lag per assigned partition, for both services' input consumers: how many messages
//! of a partition are still ahead of the consumer group. Read from librdkafka's statistics
//! (`statistics.interval.ms`), which the client already keeps, so it costs nothing per event
//! and no request to the brokers: a consumer's context hands each statistics report to
//! [`ConsumerLag::observe`], which sets a gauge per assigned partition and removes the series
//! of partitions this process no longer owns (after a rebalance they are another member's to
//! report, and a stale series would sum into the group's lag twice).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Mutex, PoisonError};

use prometheus::IntGaugeVec;
use rdkafka::statistics::{Partition, Statistics};
use rdkafka::{Offset, TopicPartitionList};

/// `statistics.interval.ms` for a consumer whose context calls [`ConsumerLag::observe`]: the
/// gauge is at most this old (while the consumer is polled; the reports come with the polls).
pub const STATISTICS_INTERVAL_MS: &str = "5000";

/// The lag gauge of one input topic, labelled `topic` and `partition`.
#[derive(Debug)]
pub struct ConsumerLag {
    gauge: IntGaugeVec,
    topic: String,
    /// Partitions with a series now, so that those no longer assigned can be removed.
    shown: Mutex<BTreeSet<i32>>,
    /// The group's commit of each partition as of its assignment ([`ConsumerLag::assigned`]).
    commits: Mutex<BTreeMap<i32, i64>>,
}

impl ConsumerLag {
    /// `gauge` has the labels `topic` and `partition`, in that order.
    pub fn new(gauge: IntGaugeVec, topic: impl Into<String>) -> Self {
        Self {
            gauge,
            topic: topic.into(),
            shown: Mutex::new(BTreeSet::new()),
            commits: Mutex::new(BTreeMap::new()),
        }
    }

    /// The group's commits of partitions just assigned (`telemetry::commits::read_commits`).
    /// librdkafka's statistics know a commit only from a fetch of its own, which a consumer
    /// assigned at explicit offsets never makes; until this consumer commits or consumes, the
    /// position of such a partition is its commit.
    pub fn assigned(&self, commits: &TopicPartitionList) {
        let mut known = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
        for commit in commits.elements_for_topic(&self.topic) {
            match commit.offset() {
                Offset::Offset(offset) => known.insert(commit.partition(), offset),
                _ => known.remove(&commit.partition()),
            };
        }
    }

    /// Sets the lag of every assigned partition of the topic that the report knows an end and
    /// a position for, and removes the series of partitions no longer assigned.
    pub fn observe(&self, statistics: &Statistics) {
        let mut shown = self.shown.lock().unwrap_or_else(PoisonError::into_inner);
        let partitions = statistics
            .topics
            .get(&self.topic)
            .map(|topic| &topic.partitions);
        let assigned: BTreeSet<i32> = partitions
            .into_iter()
            .flatten()
            .filter(|&(&id, partition)| id >= 0 && partition.desired && !partition.unknown)
            .map(|(&id, _)| id)
            .collect();
        for &gone in shown.difference(&assigned) {
            // Absent only if it was never set; nothing to remove then.
            let _ = self
                .gauge
                .remove_label_values(&[self.topic.as_str(), &gone.to_string()]);
        }
        shown.retain(|id| assigned.contains(id));
        let mut commits = self.commits.lock().unwrap_or_else(PoisonError::into_inner);
        commits.retain(|id, _| assigned.contains(id));
        for (&id, partition) in partitions.into_iter().flatten() {
            if !assigned.contains(&id) {
                continue;
            }
            let commit = commits.get(&id).copied().unwrap_or(-1);
            // Unknown until the first fetch (or offset query) answers: the series appears then.
            if let Some(lag) = partition_lag(partition, commit) {
                self.gauge
                    .with_label_values(&[self.topic.as_str(), &id.to_string()])
                    .set(lag);
                shown.insert(id);
            }
        }
    }
}

/// Messages of a partition still ahead of a `read_committed` consumer, from one statistics
/// report; `None` while its end is not known yet.
///
/// The end is the last stable offset (what a `read_committed` reader can reach; the high
/// watermark when the broker did not say). The position is the later of two, whichever is known:
/// - the stored offset, the last message handed to the application plus one (librdkafka stores
///   it on every message unless `enable.auto.offset.store` is off). The qualifier commits its
///   input offsets through its transactional producer, which this consumer's statistics never
///   see, so this is the qualifier's position;
/// - the committed offset, as of the group's last commit by this consumer or, at assignment,
///   by anyone (`commit`, from [`ConsumerLag::assigned`]; below 0 when none): delivery stores
///   nothing and commits what its destinations finished, so its lag counts what is not done
///   yet, as KEDA's does.
///
/// Neither known (a new group that consumed nothing): both services then start at the
/// partition's earliest offset (`auto.offset.reset=earliest`), so the whole partition is ahead.
pub fn partition_lag(partition: &Partition, commit: i64) -> Option<i64> {
    let end = if partition.ls_offset >= 0 {
        partition.ls_offset
    } else {
        partition.hi_offset
    };
    if end < 0 {
        return None;
    }
    let position = partition
        .stored_offset
        .max(partition.committed_offset)
        .max(commit);
    let position = if position >= 0 {
        position
    } else {
        partition.lo_offset.max(0)
    };
    Some((end - position).max(0))
}

#[cfg(test)]
mod tests {
    use prometheus::Opts;
    use rdkafka::statistics::Topic;

    use super::*;

    const INVALID: i64 = -1001;

    fn partition(lo: i64, ls: i64, hi: i64, stored: i64, committed: i64) -> Partition {
        Partition {
            desired: true,
            fetch_state: "active".to_owned(),
            lo_offset: lo,
            ls_offset: ls,
            hi_offset: hi,
            stored_offset: stored,
            committed_offset: committed,
            ..Partition::default()
        }
    }

    fn report(topic: &str, partitions: &[(i32, Partition)]) -> Statistics {
        let mut statistics = Statistics::default();
        statistics.topics.insert(
            topic.to_owned(),
            Topic {
                topic: topic.to_owned(),
                partitions: partitions.iter().cloned().collect(),
                ..Topic::default()
            },
        );
        statistics
    }

    fn series(gauge: &IntGaugeVec) -> Vec<(String, i64)> {
        let mut all: Vec<(String, i64)> = prometheus::core::Collector::collect(gauge)
            .iter()
            .flat_map(|family| family.get_metric().to_vec())
            .map(|metric| {
                let labels: Vec<String> = metric
                    .get_label()
                    .iter()
                    .map(|l| format!("{}={}", l.name(), l.value()))
                    .collect();
                (labels.join(","), metric.get_gauge().get_value() as i64)
            })
            .collect();
        all.sort();
        all
    }

    #[test]
    fn lag_counts_from_the_later_of_stored_and_committed() {
        // The qualifier: consumed up to 70 (stored), its transactions' commits unseen (40).
        assert_eq!(partition_lag(&partition(0, 100, 100, 70, 40), -1), Some(30));
        // Delivery: nothing stored, committed what its destinations finished.
        assert_eq!(
            partition_lag(&partition(0, 100, 100, INVALID, 40), -1),
            Some(60)
        );
        // Up to date.
        assert_eq!(
            partition_lag(&partition(0, 100, 100, 100, 100), -1),
            Some(0)
        );
    }

    #[test]
    fn a_read_committed_consumer_counts_to_the_last_stable_offset() {
        // An open transaction holds messages 90..100 back: they cannot be read yet.
        assert_eq!(
            partition_lag(&partition(0, 90, 100, 80, INVALID), -1),
            Some(10)
        );
        // The broker did not say: the high watermark.
        assert_eq!(
            partition_lag(&partition(0, INVALID, 100, 80, INVALID), -1),
            Some(20)
        );
    }

    #[test]
    fn a_group_without_a_position_is_behind_by_the_whole_partition() {
        assert_eq!(
            partition_lag(&partition(25, 100, 100, INVALID, INVALID), -1),
            Some(75)
        );
    }

    #[test]
    fn an_unknown_end_is_no_lag() {
        assert_eq!(
            partition_lag(&partition(INVALID, INVALID, INVALID, INVALID, 5), -1),
            None
        );
    }

    /// Assigned at an explicit offset, librdkafka never fetched the commit: the commit read at
    /// the assignment is the position until this consumer stores or commits a later one.
    #[test]
    fn the_commit_read_at_the_assignment_counts_until_a_later_position() {
        let gauge = IntGaugeVec::new(Opts::new("lag", "lag"), &["topic", "partition"]).unwrap();
        let lag = ConsumerLag::new(gauge.clone(), "in");
        let mut commits = TopicPartitionList::new();
        commits
            .add_partition_offset("in", 0, Offset::Offset(20))
            .unwrap();
        commits.add_partition("in", 1); // no commit
        commits
            .add_partition_offset("other", 0, Offset::Offset(3))
            .unwrap();
        lag.assigned(&commits);
        let none = partition(0, 20, 20, INVALID, INVALID);
        lag.observe(&report("in", &[(0, none.clone()), (1, none.clone())]));
        assert_eq!(
            series(&gauge),
            [
                ("partition=0,topic=in".to_owned(), 0),
                ("partition=1,topic=in".to_owned(), 20)
            ]
        );
        // Consumed further, or revoked and assigned again without a commit: it no longer counts.
        lag.observe(&report("in", &[(0, partition(0, 30, 30, 25, INVALID))]));
        let mut again = TopicPartitionList::new();
        again.add_partition("in", 0);
        lag.assigned(&again);
        lag.observe(&report(
            "in",
            &[(0, none), (1, partition(0, 20, 20, 20, INVALID))],
        ));
        assert_eq!(
            series(&gauge),
            [
                ("partition=0,topic=in".to_owned(), 20),
                ("partition=1,topic=in".to_owned(), 0)
            ]
        );
    }

    #[test]
    fn a_partition_no_longer_assigned_loses_its_series() {
        let gauge = IntGaugeVec::new(Opts::new("lag", "lag"), &["topic", "partition"]).unwrap();
        let lag = ConsumerLag::new(gauge.clone(), "in");
        let other = ConsumerLag::new(gauge.clone(), "other");
        other.observe(&report("other", &[(0, partition(0, 5, 5, 1, INVALID))]));
        lag.observe(&report(
            "in",
            &[
                (0, partition(0, 10, 10, 4, INVALID)),
                (1, partition(0, 7, 7, INVALID, 7)),
                // librdkafka's internal "unassigned" partition.
                (-1, partition(0, 9, 9, INVALID, INVALID)),
            ],
        ));
        assert_eq!(
            series(&gauge),
            [
                ("partition=0,topic=in".to_owned(), 6),
                ("partition=0,topic=other".to_owned(), 4),
                ("partition=1,topic=in".to_owned(), 0)
            ]
        );
        // Partition 0 went to another member: librdkafka still reports it, undesired.
        let mut revoked = partition(0, 12, 12, INVALID, 4);
        revoked.desired = false;
        lag.observe(&report(
            "in",
            &[(0, revoked), (1, partition(0, 9, 9, INVALID, 7))],
        ));
        assert_eq!(
            series(&gauge),
            [
                ("partition=0,topic=other".to_owned(), 4),
                ("partition=1,topic=in".to_owned(), 2)
            ]
        );
        // The topic is gone from the report altogether (unsubscribed).
        lag.observe(&Statistics::default());
        assert_eq!(series(&gauge), [("partition=0,topic=other".to_owned(), 4)]);
    }
}
