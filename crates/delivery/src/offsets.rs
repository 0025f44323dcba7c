//! Which input offsets may be committed. An offset is committable only when every destination
//! that needed its event has it delivered or dead-lettered; the watermark of a partition is
//! the offset after the longest finished prefix. Committing anything past it could lose an
//! event in a crash; committing less only re-sends (at-least-once).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::batcher::EventSource;

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
/// events), the destinations' catch-up readers, the lanes (finish them) and the rebalance
/// callback (drops revoked partitions). One short lock per message and per batch.
#[derive(Debug, Clone, Default)]
pub struct Watermarks {
    inner: Arc<Mutex<WatermarkTable>>,
}

impl Watermarks {
    pub fn lock(&self) -> MutexGuard<'_, WatermarkTable> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug, Default)]
pub struct WatermarkTable {
    partitions: HashMap<i32, PartitionState>,
    next_generation: u64,
    /// Destinations whose catch-up reader runs (claimed and released under this lock, so a
    /// detach never finds a reader that is just stopping).
    readers: std::collections::HashSet<u64>,
}

/// One owned partition: the shared consumer's watermark and the destinations that fell
/// behind it and read the partition on their own from a position of their own.
#[derive(Debug)]
struct PartitionState {
    generation: u64,
    shared: OffsetWatermark,
    /// The next offset the shared consumer routes: everything before it was handed to every
    /// attached destination that needed it.
    routed_to: i64,
    detached: Vec<DetachedReader>,
}

/// A destination reading one partition on its own (its lanes were full, or its position
/// was restored detached after a restart or rebalance).
#[derive(Debug)]
struct DetachedReader {
    destination: u64,
    /// Where it started reading: its position until an event of its own is finished.
    start: i64,
    /// The next offset it reads.
    read_to: i64,
    watermark: OffsetWatermark,
    /// Caught up with the shared consumer: it reads no more; once its events are finished
    /// the destination is attached again.
    draining: bool,
}

impl DetachedReader {
    /// Everything before this offset is finished for the destination.
    fn position(&self) -> i64 {
        self.watermark.committable().unwrap_or(self.start)
    }
}

/// What a catch-up reader does with the message it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Hand it to the destination (if it maps it); it was tracked.
    Deliver(PartitionAssignment),
    /// Already handled: ignore it.
    Skip,
    /// The shared consumer has not routed it yet: the destination is attached again from
    /// here on, and the reader stops reading the partition.
    Attached,
    /// The partition is not ours any more, or the destination is not detached there: stop
    /// reading it.
    Stop,
}

/// A partition's offset to commit for the shared consumer, with the positions of the
/// destinations behind it in the commit's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitPosition {
    pub partition: i32,
    pub offset: i64,
    pub metadata: String,
}

/// Kafka keeps at most `offset.metadata.max.bytes` (default 4096) of metadata per
/// committed offset.
pub const MAX_COMMIT_METADATA: usize = 4_000;
const METADATA_PREFIX: &str = "sr1";

impl WatermarkTable {
    /// Starts tracking a newly assigned partition: the shared consumer starts reading at
    /// `committed`, and each `(destination, position)` of `detached` reads on its own from
    /// its position. Returns the assignment.
    pub fn assign(
        &mut self,
        partition: i32,
        committed: i64,
        detached: &[(u64, i64)],
    ) -> PartitionAssignment {
        self.next_generation += 1;
        self.partitions.insert(
            partition,
            PartitionState {
                generation: self.next_generation,
                shared: OffsetWatermark::default(),
                routed_to: committed,
                detached: detached
                    .iter()
                    .filter(|&&(_, position)| position < committed)
                    .map(|&(destination, position)| DetachedReader {
                        destination,
                        start: position,
                        read_to: position,
                        watermark: OffsetWatermark::default(),
                        draining: false,
                    })
                    .collect(),
            },
        );
        PartitionAssignment {
            partition,
            generation: self.next_generation,
        }
    }

    /// Stops tracking a revoked partition; returns what to commit for it.
    pub fn revoke(&mut self, partition: i32) -> Option<CommitPosition> {
        let state = self.partitions.remove(&partition)?;
        commit_position(partition, &state)
    }

    /// Registers an event the shared consumer read; removes from `targets` the destinations
    /// that read this partition on their own (they get it from their reader). `id_of` gives a
    /// target's destination id. `None` if the partition is not owned (an event fetched just
    /// before a revocation).
    pub fn track(
        &mut self,
        partition: i32,
        offset: i64,
        targets: &mut Vec<usize>,
        id_of: impl Fn(usize) -> u64,
    ) -> Option<PartitionAssignment> {
        let state = self.partitions.get_mut(&partition)?;
        if !state.detached.is_empty() {
            targets.retain(|&t| {
                let id = id_of(t);
                !state
                    .detached
                    .iter()
                    .any(|r| r.destination == id && !r.draining)
            });
        }
        state
            .shared
            .track(offset, u32::try_from(targets.len()).unwrap_or(u32::MAX));
        state.routed_to = offset + 1;
        Some(PartitionAssignment {
            partition,
            generation: state.generation,
        })
    }

    /// The shared consumer could not hand the event at `offset` to `destination` (its lanes
    /// are full): the destination reads the partition on its own from `offset` on. Returns
    /// whether it was attached until now (so its reader must be told to read the partition).
    pub fn detach(
        &mut self,
        assignment: PartitionAssignment,
        offset: i64,
        destination: u64,
    ) -> bool {
        let Some(state) = self.current(assignment) else {
            return false;
        };
        state.shared.finish(offset);
        match state
            .detached
            .iter_mut()
            .find(|r| r.destination == destination)
        {
            Some(reader) => {
                // Caught up a moment ago and still finishing what it read: it reads again
                // from here (its position stays at its unfinished events).
                let was_draining = reader.draining;
                reader.draining = false;
                reader.read_to = offset;
                if reader.watermark.in_progress() == 0 {
                    reader.start = offset.min(reader.position());
                }
                was_draining
            }
            None => {
                state.detached.push(DetachedReader {
                    destination,
                    start: offset,
                    read_to: offset,
                    watermark: OffsetWatermark::default(),
                    draining: false,
                });
                true
            }
        }
    }

    /// A catch-up reader of `destination` read the event at `offset`; `needed` when the
    /// destination maps it.
    pub fn catch_up(
        &mut self,
        assignment: PartitionAssignment,
        destination: u64,
        offset: i64,
        needed: bool,
    ) -> CatchUp {
        let Some(state) = self.current(assignment) else {
            return CatchUp::Stop;
        };
        let routed_to = state.routed_to;
        let Some(reader) = state
            .detached
            .iter_mut()
            .find(|r| r.destination == destination && !r.draining)
        else {
            return CatchUp::Stop;
        };
        if offset < reader.read_to {
            // Read before (fetched again after the reader was told to read from here).
            return CatchUp::Skip;
        }
        if offset >= routed_to {
            reader.draining = true;
            return CatchUp::Attached;
        }
        reader.watermark.track(offset, u32::from(needed));
        reader.read_to = offset + 1;
        CatchUp::Deliver(assignment)
    }

    /// A catch-up reader reached the end of the partition, with `next` the offset it would
    /// read next: if the shared consumer is no further, the destination is attached again.
    pub fn caught_up(
        &mut self,
        assignment: PartitionAssignment,
        destination: u64,
        next: i64,
    ) -> bool {
        let Some(state) = self.current(assignment) else {
            return true;
        };
        let routed_to = state.routed_to;
        match state
            .detached
            .iter_mut()
            .find(|r| r.destination == destination && !r.draining)
        {
            Some(reader) if next.max(reader.read_to) >= routed_to => {
                reader.draining = true;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// A destination finished the event; ignored if that assignment is gone. `catch_up` when
    /// the event came from the destination's own reader.
    pub fn finish(&mut self, source: EventSource, destination: u64) {
        let Some(state) = self.current(source.assignment) else {
            return;
        };
        if source.catch_up {
            if let Some(reader) = state
                .detached
                .iter_mut()
                .find(|r| r.destination == destination)
            {
                reader.watermark.finish(source.offset);
            }
        } else {
            state.shared.finish(source.offset);
        }
    }

    fn current(&mut self, assignment: PartitionAssignment) -> Option<&mut PartitionState> {
        self.partitions
            .get_mut(&assignment.partition)
            .filter(|s| s.generation == assignment.generation)
    }

    /// Whether the assignment is still ours (else its events need not be sent: the new owner
    /// reads them again from the committed offset).
    pub fn is_current(&self, assignment: PartitionAssignment) -> bool {
        self.partitions
            .get(&assignment.partition)
            .is_some_and(|s| s.generation == assignment.generation)
    }

    /// What to commit for every owned partition with finished events. Destinations that
    /// caught up and finished what they read are attached again here.
    pub fn committable(&mut self) -> Vec<CommitPosition> {
        let mut positions = Vec::with_capacity(self.partitions.len());
        for (&partition, state) in &mut self.partitions {
            state
                .detached
                .retain(|r| !(r.draining && r.watermark.in_progress() == 0));
            positions.extend(commit_position(partition, state));
        }
        positions
    }

    /// The partitions `destination` reads on its own, with their assignment and the offset
    /// to read next.
    pub fn detached_partitions(&self, destination: u64) -> Vec<(PartitionAssignment, i64)> {
        self.partitions
            .iter()
            .flat_map(|(&partition, state)| {
                state
                    .detached
                    .iter()
                    .filter(move |r| r.destination == destination && !r.draining)
                    .map(move |r| {
                        (
                            PartitionAssignment {
                                partition,
                                generation: state.generation,
                            },
                            r.read_to,
                        )
                    })
            })
            .collect()
    }

    /// Claims the catch-up reader of `destination`: true when none runs, and the caller
    /// must start one.
    pub fn claim_reader(&mut self, destination: u64) -> bool {
        self.readers.insert(destination)
    }

    /// A reader with no partitions left stops, unless a detach happened meanwhile: true
    /// when it may stop.
    pub fn release_reader(&mut self, destination: u64) -> bool {
        let idle = !self.partitions.values().any(|s| {
            s.detached
                .iter()
                .any(|r| r.destination == destination && !r.draining)
        });
        if idle {
            self.readers.remove(&destination);
        }
        idle
    }

    /// A reader that could not start gives its claim back.
    pub fn unclaim_reader(&mut self, destination: u64) {
        self.readers.remove(&destination);
    }

    /// Destinations detached somewhere without a running reader.
    pub fn unread_destinations(&self) -> Vec<u64> {
        let mut ids = self.detached_destinations();
        ids.retain(|id| !self.readers.contains(id));
        ids
    }

    /// Every destination id that reads some partition on its own.
    pub fn detached_destinations(&self) -> Vec<u64> {
        let mut ids: Vec<u64> = self
            .partitions
            .values()
            .flat_map(|s| {
                s.detached
                    .iter()
                    .filter(|r| !r.draining)
                    .map(|r| r.destination)
            })
            .collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Input messages `destination` has not finished yet among those the shared consumer
    /// has read: its backlog (in messages, some of which it may not map).
    pub fn backlog(&self, destination: u64) -> i64 {
        self.partitions
            .values()
            .flat_map(|s| {
                s.detached
                    .iter()
                    .filter(move |r| r.destination == destination)
                    .map(move |r| s.routed_to.saturating_sub(r.position()).max(0))
            })
            .sum()
    }

    /// Events read but not finished, over all owned partitions.
    pub fn in_progress(&self) -> usize {
        self.partitions
            .values()
            .map(|s| {
                s.shared.in_progress()
                    + s.detached
                        .iter()
                        .map(|r| r.watermark.in_progress())
                        .sum::<usize>()
            })
            .sum()
    }
}

/// The shared consumer's committable offset, with the positions of the destinations behind
/// it as metadata (`sr1;<destination>@<offset>;…`), so a restart or the partition's next
/// owner resumes each of them where it was. When the metadata would pass Kafka's limit, the
/// offset is held back to the first position left out (those destinations then re-send from
/// there, with every other one: duplicates, never a loss).
fn commit_position(partition: i32, state: &PartitionState) -> Option<CommitPosition> {
    let mut offset = state.shared.committable()?;
    let mut behind: Vec<(i64, u64)> = state
        .detached
        .iter()
        .map(|r| (r.position(), r.destination))
        .filter(|&(position, _)| position < offset)
        .collect();
    behind.sort_unstable();
    let mut metadata = String::from(METADATA_PREFIX);
    for (position, destination) in behind {
        let entry = format!(";{destination}@{position}");
        if metadata.len() + entry.len() > MAX_COMMIT_METADATA {
            offset = position;
            break;
        }
        metadata.push_str(&entry);
    }
    Some(CommitPosition {
        partition,
        offset,
        metadata,
    })
}

/// The destinations' positions in a commit's metadata. Metadata that is not ours (empty, or
/// written by another tool) holds none; a malformed entry of ours is an error, since
/// ignoring it would skip that destination's backlog.
pub fn parse_positions(metadata: &str) -> Result<Vec<(u64, i64)>, String> {
    let Some(rest) = metadata.strip_prefix(METADATA_PREFIX) else {
        return Ok(Vec::new());
    };
    rest.split(';')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .split_once('@')
                .and_then(|(d, o)| Some((d.parse().ok()?, o.parse().ok()?)))
                .ok_or_else(|| {
                    format!("bad destination position `{entry}` in commit metadata `{metadata}`")
                })
        })
        .collect()
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

    fn shared(assignment: PartitionAssignment, offset: i64) -> EventSource {
        EventSource {
            assignment,
            offset,
            catch_up: false,
        }
    }

    fn own(assignment: PartitionAssignment, offset: i64) -> EventSource {
        EventSource {
            assignment,
            offset,
            catch_up: true,
        }
    }

    /// Destination index `i` has id `100 + i`.
    fn id_of(index: usize) -> u64 {
        100 + index as u64
    }

    fn commits(table: &mut WatermarkTable) -> Vec<(i32, i64, String)> {
        let mut all: Vec<_> = table
            .committable()
            .into_iter()
            .map(|c| (c.partition, c.offset, c.metadata))
            .collect();
        all.sort();
        all
    }

    #[test]
    fn late_completions_of_a_revoked_assignment_are_ignored() {
        let mut table = WatermarkTable::default();
        table.assign(3, 100, &[]);
        let old = table.track(3, 100, &mut vec![0], id_of).unwrap();
        assert_eq!(table.revoke(3), None);
        assert_eq!(table.track(3, 101, &mut vec![0], id_of), None, "not owned");
        table.assign(3, 100, &[]);
        let new = table.track(3, 100, &mut vec![0], id_of).unwrap();
        assert!(!table.is_current(old) && table.is_current(new));
        table.finish(shared(old, 100), 100);
        assert!(commits(&mut table).is_empty());
        table.finish(shared(new, 100), 100);
        assert_eq!(commits(&mut table), [(3, 101, "sr1".to_owned())]);
    }

    /// The life of a destination that falls behind: detached at the offset its lane had no
    /// room for, its position in the commit's metadata while the shared consumer moves on,
    /// read by its own reader, attached again once it reaches the shared consumer and
    /// finished what it read.
    #[test]
    fn a_detached_destination_keeps_its_position_and_attaches_again() {
        let mut table = WatermarkTable::default();
        let a = table.assign(0, 10, &[]);
        // Offset 10 goes to destinations 0 and 1; 1's lane is full.
        let mut targets = vec![0, 1];
        assert_eq!(table.track(0, 10, &mut targets, id_of), Some(a));
        assert!(table.detach(a, 10, 101), "newly detached");
        assert!(!table.detach(a, 10, 101), "only once");
        assert_eq!(table.detached_partitions(101), [(a, 10)]);
        // The shared consumer skips 101 from now on.
        let mut targets = vec![0, 1];
        table.track(0, 11, &mut targets, id_of);
        assert_eq!(targets, [0], "101 is read by its own reader");
        table.finish(shared(a, 10), 100);
        table.finish(shared(a, 11), 100);
        assert_eq!(
            commits(&mut table),
            [(0, 12, "sr1;101@10".to_owned())],
            "the shared consumer commits past 101's backlog, which the metadata keeps"
        );
        assert_eq!(table.backlog(101), 2);
        // 101's reader reads 10 and 11 (both mapped), finishes 10.
        assert_eq!(table.catch_up(a, 101, 10, true), CatchUp::Deliver(a));
        assert_eq!(
            table.catch_up(a, 101, 10, true),
            CatchUp::Skip,
            "read before"
        );
        assert_eq!(table.catch_up(a, 101, 11, true), CatchUp::Deliver(a));
        table.finish(own(a, 10), 101);
        assert_eq!(commits(&mut table), [(0, 12, "sr1;101@11".to_owned())]);
        // 12 is not routed yet: 101 attaches again there and reads no more.
        assert_eq!(table.catch_up(a, 101, 12, true), CatchUp::Attached);
        assert!(table.detached_partitions(101).is_empty());
        let mut targets = vec![0, 1];
        table.track(0, 12, &mut targets, id_of);
        assert_eq!(targets, [0, 1], "the shared consumer serves 101 again");
        // Until 11 is finished, 101's position stays in the metadata.
        table.finish(shared(a, 12), 100);
        table.finish(shared(a, 12), 101);
        assert_eq!(commits(&mut table), [(0, 13, "sr1;101@11".to_owned())]);
        table.finish(own(a, 11), 101);
        assert_eq!(commits(&mut table), [(0, 13, "sr1".to_owned())]);
        assert_eq!(table.backlog(101), 0);
        assert!(table.release_reader(101));
    }

    #[test]
    fn a_restored_position_detaches_the_destination_and_a_reader_at_the_end_attaches() {
        let mut table = WatermarkTable::default();
        let destinations = parse_positions("sr1;101@5;102@9").unwrap();
        let a = table.assign(0, 8, &destinations);
        assert_eq!(table.detached_partitions(101), [(a, 5)]);
        assert!(
            table.detached_partitions(102).is_empty(),
            "a position at or past the commit is not behind"
        );
        assert_eq!(table.unread_destinations(), [101]);
        assert!(table.claim_reader(101));
        assert!(!table.claim_reader(101), "one reader per destination");
        assert!(table.unread_destinations().is_empty());
        assert!(!table.caught_up(a, 101, 7), "7 < 8: behind");
        assert!(!table.release_reader(101), "still detached");
        assert!(table.caught_up(a, 101, 8));
        assert!(table.release_reader(101));
    }

    #[test]
    fn an_unrouted_mapped_event_is_finished_and_unmapped_catch_up_events_do_not_wait() {
        let mut table = WatermarkTable::default();
        let a = table.assign(0, 0, &[]);
        table.track(0, 0, &mut vec![0], id_of);
        table.detach(a, 0, 100);
        for offset in 1..5 {
            let mut targets = vec![];
            table.track(0, offset, &mut targets, id_of);
        }
        assert_eq!(commits(&mut table), [(0, 5, "sr1;100@0".to_owned())]);
        assert_eq!(table.catch_up(a, 100, 0, true), CatchUp::Deliver(a));
        for offset in 1..5 {
            assert_eq!(table.catch_up(a, 100, offset, false), CatchUp::Deliver(a));
        }
        assert_eq!(commits(&mut table), [(0, 5, "sr1;100@0".to_owned())]);
        table.finish(own(a, 0), 100);
        assert_eq!(
            commits(&mut table),
            [(0, 5, "sr1".to_owned())],
            "read to the end and finished: no longer behind"
        );
    }

    #[test]
    fn metadata_past_kafkas_limit_holds_the_commit_back_instead_of_dropping_a_position() {
        let mut table = WatermarkTable::default();
        let a = table.assign(0, 0, &[]);
        for offset in 0..1_000 {
            let mut targets = vec![offset as usize];
            table.track(0, offset, &mut targets, |i| 1_000_000 + i as u64);
            table.detach(a, offset, 1_000_000 + offset as u64);
        }
        let commit = table.committable().pop().unwrap();
        assert!(commit.metadata.len() <= MAX_COMMIT_METADATA);
        let kept = parse_positions(&commit.metadata).unwrap();
        assert!(kept.len() < 1_000);
        assert_eq!(
            commit.offset,
            kept.len() as i64,
            "every destination left out is at or past the committed offset"
        );
        assert!(kept.iter().all(|&(_, p)| p < commit.offset));
    }

    #[test]
    fn positions_in_metadata_round_trip_and_foreign_metadata_holds_none() {
        assert_eq!(parse_positions("sr1;7@3;8@4").unwrap(), [(7, 3), (8, 4)]);
        assert_eq!(parse_positions("sr1").unwrap(), []);
        assert_eq!(parse_positions("").unwrap(), []);
        assert_eq!(parse_positions("written by another tool").unwrap(), []);
        assert!(parse_positions("sr1;7@").is_err());
        assert!(parse_positions("sr1;x@3").is_err());
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
