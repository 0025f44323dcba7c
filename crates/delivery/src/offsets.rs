//! Which input offsets may be committed. An offset is committable only when every destination
//! that needed its event has it delivered or dead-lettered; the watermark of a partition is
//! the offset after the longest finished prefix. Committing anything past it could lose an
//! event in a crash; committing less only re-sends (at-least-once).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// The watermark of one partition.
#[derive(Debug, Default)]
pub struct OffsetWatermark {
    /// Tracked offsets not yet below the watermark, ascending, with the number of
    /// destinations still working on each.
    pending: VecDeque<(i64, u32)>,
    /// The next offset to commit (everything below it is finished), if any was finished.
    next: Option<i64>,
}

impl OffsetWatermark {
    /// Registers the event at `offset` (offsets arrive ascending), needed by `destinations`
    /// destinations; 0 means it is finished already (no destination maps it).
    pub fn track(&mut self, offset: i64, destinations: u32) {
        debug_assert!(self.pending.back().is_none_or(|&(last, _)| last < offset));
        self.pending.push_back((offset, destinations));
        self.advance();
    }

    /// One destination finished the event at `offset`. Unknown offsets are ignored (a batch
    /// of a partition that was revoked and assigned again).
    pub fn finish(&mut self, offset: i64) {
        if let Ok(i) = self.pending.binary_search_by_key(&offset, |&(o, _)| o) {
            let remaining = &mut self.pending[i].1;
            *remaining = remaining.saturating_sub(1);
            if i == 0 {
                self.advance();
            }
        }
    }

    fn advance(&mut self) {
        while let Some(&(offset, 0)) = self.pending.front() {
            self.next = Some(offset + 1);
            self.pending.pop_front();
        }
    }

    /// The offset to commit: every event before it is finished.
    pub fn committable(&self) -> Option<i64> {
        self.next
    }

    /// Events read but not finished.
    pub fn in_progress(&self) -> usize {
        self.pending.len()
    }
}

/// A partition of an input topic, as one assignment of it: when a partition is revoked and
/// later assigned again, the new assignment has a new generation, so late completions of the
/// old one cannot move the new one's watermark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PartitionAssignment {
    pub partition: i32,
    pub generation: u64,
}

/// The watermarks of the partitions a consumer owns now, shared by the consumer (tracks
/// events), the destination lanes (finish them) and the rebalance callback (drops revoked
/// partitions). One short lock per message and per batch.
#[derive(Debug, Clone, Default)]
pub struct Watermarks {
    inner: Arc<Mutex<WatermarkTable>>,
}

#[derive(Debug, Default)]
pub struct WatermarkTable {
    partitions: HashMap<i32, (u64, OffsetWatermark)>,
    next_generation: u64,
}

impl Watermarks {
    pub fn lock(&self) -> MutexGuard<'_, WatermarkTable> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WatermarkTable {
    /// Starts tracking a newly assigned partition.
    pub fn assign(&mut self, partition: i32) {
        self.next_generation += 1;
        self.partitions.insert(
            partition,
            (self.next_generation, OffsetWatermark::default()),
        );
    }

    /// Stops tracking a revoked partition; returns its committable offset.
    pub fn revoke(&mut self, partition: i32) -> Option<i64> {
        self.partitions
            .remove(&partition)
            .and_then(|(_, w)| w.committable())
    }

    /// Registers an event of an owned partition; `None` if the partition is not owned (an
    /// event fetched just before a revocation).
    pub fn track(
        &mut self,
        partition: i32,
        offset: i64,
        destinations: u32,
    ) -> Option<PartitionAssignment> {
        let (generation, watermark) = self.partitions.get_mut(&partition)?;
        watermark.track(offset, destinations);
        Some(PartitionAssignment {
            partition,
            generation: *generation,
        })
    }

    /// A destination finished the event; ignored if that assignment is gone.
    pub fn finish(&mut self, assignment: PartitionAssignment, offset: i64) {
        if let Some((generation, watermark)) = self.partitions.get_mut(&assignment.partition)
            && *generation == assignment.generation
        {
            watermark.finish(offset);
        }
    }

    /// Whether the assignment is still ours (else its events need not be sent: the new owner
    /// reads them again from the committed offset).
    pub fn is_current(&self, assignment: PartitionAssignment) -> bool {
        self.partitions
            .get(&assignment.partition)
            .is_some_and(|(g, _)| *g == assignment.generation)
    }

    /// (partition, offset to commit) of every owned partition with finished events.
    pub fn committable(&self) -> impl Iterator<Item = (i32, i64)> + '_ {
        self.partitions
            .iter()
            .filter_map(|(&p, (_, w))| w.committable().map(|o| (p, o)))
    }

    /// Events read but not finished, over all owned partitions.
    pub fn in_progress(&self) -> usize {
        self.partitions.values().map(|(_, w)| w.in_progress()).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn commits_only_the_finished_prefix() {
        let mut w = OffsetWatermark::default();
        w.track(10, 2);
        w.track(11, 1);
        w.track(12, 0);
        assert_eq!(w.committable(), None);
        w.finish(11);
        assert_eq!(w.committable(), None, "10 is not finished");
        w.finish(10);
        assert_eq!(w.committable(), None, "10 needs two destinations");
        w.finish(10);
        assert_eq!(w.committable(), Some(13));
        w.track(13, 0);
        assert_eq!(
            w.committable(),
            Some(14),
            "an unrouted event finishes at once"
        );
        w.finish(99);
        assert_eq!(w.committable(), Some(14));
    }

    #[test]
    fn late_completions_of_a_revoked_assignment_are_ignored() {
        let mut table = WatermarkTable::default();
        table.assign(3);
        let old = table.track(3, 100, 1).unwrap();
        assert_eq!(table.revoke(3), None);
        assert_eq!(table.track(3, 101, 1), None, "not owned");
        table.assign(3);
        let new = table.track(3, 100, 1).unwrap();
        assert!(!table.is_current(old) && table.is_current(new));
        table.finish(old, 100);
        assert_eq!(table.committable().count(), 0);
        table.finish(new, 100);
        assert_eq!(table.committable().collect::<Vec<_>>(), [(3, 101)]);
    }

    proptest! {
        /// Whatever order destinations finish in, the watermark is exactly one past the longest
        /// prefix of fully finished events, never more.
        #[test]
        fn watermark_is_the_finished_prefix(
            needs in proptest::collection::vec(0_u32..4, 1..60),
            order in any::<proptest::sample::Index>(),
            steps in 0_usize..200,
        ) {
            let mut w = OffsetWatermark::default();
            let mut remaining = needs.clone();
            let mut outstanding: Vec<usize> = Vec::new();
            for (i, &n) in needs.iter().enumerate() {
                w.track(i as i64, n);
                outstanding.extend(std::iter::repeat_n(i, n as usize));
            }
            let mut pick = order.index(usize::MAX);
            for _ in 0..steps.min(outstanding.len()) {
                pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                let event = outstanding.swap_remove(pick % outstanding.len());
                remaining[event] -= 1;
                w.finish(event as i64);
                let prefix = remaining.iter().take_while(|&&r| r == 0).count();
                let expected = (prefix > 0).then_some(prefix as i64);
                prop_assert_eq!(w.committable(), expected);
            }
        }
    }
}
