//! Which input offsets may be committed. An offset is committable only when every attached
//! destination that needed its event has it delivered or dead-lettered; a destination that
//! fell behind and reads the partition on its own (see `catch_up`) holds only its own
//! position, written into the commit's metadata so the next owner resumes it there.
//! Committing anything past these could lose an event in a crash; committing less only
//! re-sends (at-least-once).

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

    /// Destination hand-overs not finished yet (events that need several count several).
    pub fn unfinished(&self) -> usize {
        self.pending.iter().map(|&(_, n)| n as usize).sum()
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
/// Destinations are named by their index in the pipeline's destination list; their ids
/// appear only in commit metadata.
#[derive(Debug, Clone)]
pub struct Watermarks {
    inner: Arc<Mutex<WatermarkTable>>,
}

impl Watermarks {
    /// A table for destinations with these ids (by index).
    pub fn new(destination_ids: Vec<u64>) -> Self {
        Self {
            inner: Arc::new(Mutex::new(WatermarkTable::new(destination_ids))),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, WatermarkTable> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Debug)]
pub struct WatermarkTable {
    partitions: HashMap<i32, PartitionState>,
    next_generation: u64,
    /// Per destination, whether its catch-up reader runs (claimed and released under this
    /// lock, so a detach never finds a reader that is just stopping).
    readers: Vec<bool>,
    ids: Vec<u64>,
}

/// One owned partition: per destination, the offsets the shared consumer handed to it and
/// it has not finished; and the destinations that fell behind and read the partition on
/// their own from a position of their own.
#[derive(Debug)]
struct PartitionState {
    generation: u64,
    /// The next offset the shared consumer routes: everything before it was handed to every
    /// attached destination that needed it. `None` until the first event when the group
    /// had no committed offset.
    routed_to: Option<i64>,
    /// By destination index: offsets handed over by the shared consumer, ascending, with
    /// whether they are finished (finished ones leave from the front).
    pending: Vec<VecDeque<(i64, bool)>>,
    detached: Vec<DetachedReader>,
}

impl PartitionState {
    /// The oldest offset destination `d` was handed by the shared consumer and has not
    /// finished.
    fn oldest_pending(&self, d: usize) -> Option<i64> {
        self.pending.get(d).and_then(|p| p.front()).map(|&(o, _)| o)
    }

    fn reader(&mut self, d: usize) -> Option<&mut DetachedReader> {
        self.detached.iter_mut().find(|r| r.destination == d)
    }

    fn is_reading(&self, d: usize) -> bool {
        self.detached
            .iter()
            .any(|r| r.destination == d && !r.draining)
    }
}

/// A destination reading one partition on its own (its lanes were full, or its position
/// was restored detached after a restart or rebalance).
#[derive(Debug)]
struct DetachedReader {
    destination: usize,
    /// Where it started reading: its position until an event of its own is finished.
    start: i64,
    /// The next offset it reads.
    read_to: i64,
    watermark: OffsetWatermark,
    /// Caught up with the shared consumer: it reads no more; once its events are finished
    /// the destination is attached again.
    draining: bool,
    /// The timestamp (ms) of the last message it read: while it waits for room in the
    /// lanes, the age of what waits.
    last_read_ms: Option<i64>,
}

impl DetachedReader {
    /// Everything it read before this offset is finished.
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
    /// Every event before it is finished for every destination, also those reading behind
    /// (the lowest of `offset` and their positions).
    pub oldest: i64,
}

/// Kafka keeps at most `offset.metadata.max.bytes` (default 4096) of metadata per
/// committed offset.
pub const MAX_COMMIT_METADATA: usize = 4_000;
const METADATA_PREFIX: &str = "sr1";

impl WatermarkTable {
    pub fn new(destination_ids: Vec<u64>) -> Self {
        Self {
            partitions: HashMap::new(),
            next_generation: 0,
            readers: vec![false; destination_ids.len()],
            ids: destination_ids,
        }
    }

    /// Starts tracking a newly assigned partition: the shared consumer starts reading at
    /// `committed`, and each `(destination id, position)` of `detached` behind it reads on
    /// its own from its position (ids no longer configured are dropped: nothing is owed to
    /// a removed destination). Returns the assignment.
    pub fn assign(
        &mut self,
        partition: i32,
        committed: Option<i64>,
        detached: &[(u64, i64)],
    ) -> PartitionAssignment {
        self.next_generation += 1;
        let readers = detached
            .iter()
            .filter(|&&(_, position)| committed.is_some_and(|c| position < c))
            .filter_map(|&(id, position)| {
                let destination = self.ids.iter().position(|&i| i == id)?;
                Some(DetachedReader {
                    destination,
                    start: position,
                    read_to: position,
                    watermark: OffsetWatermark::default(),
                    draining: false,
                    last_read_ms: None,
                })
            })
            .collect();
        self.partitions.insert(
            partition,
            PartitionState {
                generation: self.next_generation,
                routed_to: committed,
                pending: (0..self.ids.len()).map(|_| VecDeque::new()).collect(),
                detached: readers,
            },
        );
        PartitionAssignment {
            partition,
            generation: self.next_generation,
        }
    }

    /// A destination added by a config reload: index `ids.len()`, attached everywhere from
    /// the shared consumer's position on (it gets the changes from now on).
    pub fn add_destination(&mut self, id: u64) -> usize {
        self.ids.push(id);
        self.readers.push(false);
        for state in self.partitions.values_mut() {
            state.pending.push(VecDeque::new());
        }
        self.ids.len() - 1
    }

    /// Forgets a destination removed by a config reload: nothing is owed to it any more, so
    /// what it held no longer holds the commit back, and its positions leave the metadata.
    /// Returns the events it held (handed over and not finished).
    pub fn remove_destination(&mut self, destination: usize) -> usize {
        let mut held = 0;
        for state in self.partitions.values_mut() {
            if let Some(pending) = state.pending.get_mut(destination) {
                held += pending.iter().filter(|&&(_, done)| !done).count();
                pending.clear();
            }
            held += state
                .detached
                .iter()
                .filter(|r| r.destination == destination)
                .map(|r| r.watermark.unfinished())
                .sum::<usize>();
            state.detached.retain(|r| r.destination != destination);
        }
        held
    }

    /// A destination whose config changed starts over with its new config from its
    /// position: on every partition where it held events or read behind, it is detached
    /// from the oldest of those (they are sent again, by its new lanes), and its reader
    /// starts when the new lanes run. Returns the events it held.
    pub fn restart_destination(&mut self, destination: usize) -> usize {
        let mut held = 0;
        for state in self.partitions.values_mut() {
            let pending = state.oldest_pending(destination);
            if let Some(queue) = state.pending.get_mut(destination) {
                held += queue.iter().filter(|&&(_, done)| !done).count();
                queue.clear();
            }
            let reader = state
                .detached
                .iter()
                .position(|r| r.destination == destination)
                .map(|i| state.detached.remove(i));
            held += reader.as_ref().map_or(0, |r| r.watermark.unfinished());
            let position = match (pending, reader.map(|r| r.position())) {
                (Some(p), Some(r)) => Some(p.min(r)),
                (p, r) => p.or(r),
            };
            if let Some(start) = position {
                state.detached.push(DetachedReader {
                    destination,
                    start,
                    read_to: start,
                    watermark: OffsetWatermark::default(),
                    draining: false,
                    last_read_ms: None,
                });
            }
        }
        held
    }

    /// How many partitions are owned now.
    pub fn owned(&self) -> usize {
        self.partitions.len()
    }

    /// Stops tracking a revoked partition; returns what to commit for it.
    pub fn revoke(&mut self, partition: i32) -> Option<CommitPosition> {
        let state = self.partitions.remove(&partition)?;
        commit_position(partition, &state, &self.ids)
    }

    /// Registers an event the shared consumer read, for the destinations in `targets` (by
    /// index); removes from `targets` those that read this partition on their own (they get
    /// it from their reader). `None` if the partition is not owned (an event fetched just
    /// before a revocation).
    pub fn track(
        &mut self,
        partition: i32,
        offset: i64,
        targets: &mut Vec<usize>,
    ) -> Option<PartitionAssignment> {
        let state = self.partitions.get_mut(&partition)?;
        if !state.detached.is_empty() {
            targets.retain(|&d| !state.is_reading(d));
        }
        for &d in targets.iter() {
            if let Some(pending) = state.pending.get_mut(d) {
                pending.push_back((offset, false));
            }
        }
        state.routed_to = Some(offset + 1);
        Some(PartitionAssignment {
            partition,
            generation: state.generation,
        })
    }

    /// Keeps in `targets` the destinations the shared consumer serves on `partition` (not
    /// those reading it on their own).
    pub fn served(&self, partition: i32, targets: &mut Vec<usize>) {
        match self.partitions.get(&partition) {
            Some(state) => targets.retain(|&d| !state.is_reading(d)),
            None => targets.clear(),
        }
    }

    /// The shared consumer could not hand the event at `offset` to `destination` (its lanes
    /// are full): the destination reads the partition on its own from `offset` on (what it
    /// was handed before stays in its lanes and in its position). Returns whether it was
    /// attached until now (so its reader must be told to read the partition).
    pub fn detach(
        &mut self,
        assignment: PartitionAssignment,
        offset: i64,
        destination: usize,
    ) -> bool {
        let Some(state) = self.current(assignment) else {
            return false;
        };
        if let Some(pending) = state.pending.get_mut(destination) {
            finish_pending(pending, offset);
        }
        match state.reader(destination) {
            Some(reader) => {
                // Caught up a moment ago and still finishing what it read: it reads again
                // from here (its position stays at its unfinished events).
                let was_draining = reader.draining;
                reader.draining = false;
                reader.read_to = offset;
                was_draining
            }
            None => {
                state.detached.push(DetachedReader {
                    destination,
                    start: offset,
                    read_to: offset,
                    watermark: OffsetWatermark::default(),
                    draining: false,
                    last_read_ms: None,
                });
                true
            }
        }
    }

    /// A catch-up reader of `destination` read the event at `offset` (written at
    /// `timestamp_ms`); `needed` when the destination maps it.
    pub fn catch_up(
        &mut self,
        assignment: PartitionAssignment,
        destination: usize,
        offset: i64,
        timestamp_ms: Option<i64>,
        needed: bool,
    ) -> CatchUp {
        let Some(state) = self.current(assignment) else {
            return CatchUp::Stop;
        };
        let routed_to = state.routed_to;
        let Some(reader) = state.reader(destination).filter(|r| !r.draining) else {
            return CatchUp::Stop;
        };
        if offset < reader.read_to {
            // Read before (fetched again after the reader was told to read from here).
            return CatchUp::Skip;
        }
        if routed_to.is_none_or(|r| offset >= r) {
            reader.draining = true;
            return CatchUp::Attached;
        }
        reader.watermark.track(offset, u32::from(needed));
        reader.read_to = offset + 1;
        reader.last_read_ms = timestamp_ms.or(reader.last_read_ms);
        CatchUp::Deliver(assignment)
    }

    /// A catch-up reader of `destination` holds a message written at `timestamp_ms` (and may
    /// wait for room before it hands it over): the age of its backlog counts from there.
    pub fn note_read(
        &mut self,
        assignment: PartitionAssignment,
        destination: usize,
        timestamp_ms: Option<i64>,
    ) {
        if let Some(reader) = self
            .current(assignment)
            .and_then(|s| s.reader(destination))
            .filter(|r| !r.draining)
        {
            reader.last_read_ms = timestamp_ms.or(reader.last_read_ms);
        }
    }

    /// A catch-up reader reached the end of the partition, with `next` the offset it would
    /// read next: if the shared consumer is no further, the destination is attached again.
    /// True when the reader should stop reading the partition.
    pub fn caught_up(
        &mut self,
        assignment: PartitionAssignment,
        destination: usize,
        next: i64,
    ) -> bool {
        let Some(state) = self.current(assignment) else {
            return true;
        };
        let routed_to = state.routed_to;
        match state.reader(destination).filter(|r| !r.draining) {
            Some(reader) if routed_to.is_none_or(|r| next.max(reader.read_to) >= r) => {
                reader.draining = true;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// `destination` finished the event; ignored if that assignment is gone.
    pub fn finish(&mut self, source: EventSource, destination: usize) {
        let Some(state) = self.current(source.assignment) else {
            return;
        };
        if source.catch_up {
            if let Some(reader) = state.reader(destination) {
                reader.watermark.finish(source.offset);
            }
        } else if let Some(pending) = state.pending.get_mut(destination) {
            finish_pending(pending, source.offset);
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

    /// What to commit for every owned partition. Destinations that caught up and finished
    /// what they read are attached again here.
    pub fn committable(&mut self) -> Vec<CommitPosition> {
        let mut positions = Vec::with_capacity(self.partitions.len());
        for (&partition, state) in &mut self.partitions {
            state
                .detached
                .retain(|r| !(r.draining && r.watermark.in_progress() == 0));
            positions.extend(commit_position(partition, state, &self.ids));
        }
        positions
    }

    /// Per owned partition, the lowest position of all (every event before it is finished
    /// for every destination, also those reading behind); `None` before the first event of a
    /// partition without a commit.
    pub fn lowest_positions(&mut self) -> Vec<(i32, Option<i64>)> {
        let mut positions: Vec<(i32, Option<i64>)> =
            self.partitions.keys().map(|&p| (p, None)).collect();
        for position in self.committable() {
            if let Some(slot) = positions.iter_mut().find(|(p, _)| *p == position.partition) {
                slot.1 = Some(position.oldest);
            }
        }
        positions
    }

    /// [`Self::lowest_positions`] of one partition.
    pub fn lowest_position(&self, partition: i32) -> Option<i64> {
        let state = self.partitions.get(&partition)?;
        commit_position(partition, state, &self.ids).map(|p| p.oldest)
    }

    /// The partitions `destination` reads on its own, with their assignment and the offset
    /// to read next.
    pub fn detached_partitions(&self, destination: usize) -> Vec<(PartitionAssignment, i64)> {
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
    pub fn claim_reader(&mut self, destination: usize) -> bool {
        self.readers
            .get_mut(destination)
            .is_some_and(|running| !std::mem::replace(running, true))
    }

    /// A reader with no partitions left stops, unless a detach happened meanwhile: true
    /// when it may stop.
    pub fn release_reader(&mut self, destination: usize) -> bool {
        let idle = !self.partitions.values().any(|s| s.is_reading(destination));
        if idle && let Some(running) = self.readers.get_mut(destination) {
            *running = false;
        }
        idle
    }

    /// A reader that could not start gives its claim back.
    pub fn release_claim(&mut self, destination: usize) {
        if let Some(running) = self.readers.get_mut(destination) {
            *running = false;
        }
    }

    /// Destinations detached somewhere without a running reader.
    pub fn unread_destinations(&self) -> Vec<usize> {
        (0..self.ids.len())
            .filter(|&d| !self.readers[d] && self.partitions.values().any(|s| s.is_reading(d)))
            .collect()
    }

    /// Input messages `destination` has not finished yet among those the shared consumer
    /// has read, on the partitions where it is behind: its backlog (in messages, some of
    /// which it may not map).
    pub fn backlog(&self, destination: usize) -> i64 {
        self.partitions
            .values()
            .filter_map(|s| {
                let reader = s.detached.iter().find(|r| r.destination == destination)?;
                let position = s
                    .oldest_pending(destination)
                    .map_or(reader.position(), |o| o.min(reader.position()));
                Some(s.routed_to?.saturating_sub(position).max(0))
            })
            .sum()
    }

    /// How long ago (ms) the message `destination`'s reader holds or last read was written,
    /// on its most-behind partition: the age of its backlog (0 when it keeps up).
    pub fn backlog_age_ms(&self, destination: usize, now_ms: i64) -> i64 {
        self.partitions
            .values()
            .flat_map(|s| {
                s.detached
                    .iter()
                    .filter(|r| r.destination == destination && !r.draining)
            })
            .filter_map(|r| r.last_read_ms)
            .map(|t| (now_ms - t).max(0))
            .max()
            .unwrap_or(0)
    }

    /// Events handed to destinations and not finished, over all owned partitions.
    pub fn in_progress(&self) -> usize {
        self.partitions
            .values()
            .map(|s| {
                s.pending
                    .iter()
                    .map(|p| p.iter().filter(|&&(_, done)| !done).count())
                    .sum::<usize>()
                    + s.detached
                        .iter()
                        .map(|r| r.watermark.in_progress())
                        .sum::<usize>()
            })
            .sum()
    }
}

/// Marks `offset` finished and drops the finished prefix.
fn finish_pending(pending: &mut VecDeque<(i64, bool)>, offset: i64) {
    if let Ok(i) = pending.binary_search_by_key(&offset, |&(o, _)| o) {
        pending[i].1 = true;
    }
    while pending.front().is_some_and(|&(_, done)| done) {
        pending.pop_front();
    }
}

/// The shared consumer's committable offset, with the positions of the destinations behind
/// it as metadata (`sr1;<destination>@<offset>;…`), so a restart or the partition's next
/// owner resumes each of them where it was. When the metadata would pass Kafka's limit, the
/// offset is held back to the first position left out (those destinations then re-send from
/// there, with every other one: duplicates, never a loss).
fn commit_position(partition: i32, state: &PartitionState, ids: &[u64]) -> Option<CommitPosition> {
    // Attached destinations hold the offset back with what they were handed and have not
    // finished; a destination behind holds only its own position.
    let mut offset = state.routed_to?;
    let mut behind: Vec<(i64, u64)> = Vec::new();
    for (d, &id) in ids.iter().enumerate() {
        let pending = state.oldest_pending(d);
        match state.detached.iter().find(|r| r.destination == d) {
            None => offset = pending.map_or(offset, |o| o.min(offset)),
            Some(reader) => {
                let position = pending.map_or(reader.position(), |o| o.min(reader.position()));
                behind.push((position, id));
            }
        }
    }
    behind.retain(|&(position, _)| position < offset);
    behind.sort_unstable();
    let oldest = behind.first().map_or(offset, |&(position, _)| position);
    let mut metadata = String::from(METADATA_PREFIX);
    for (position, id) in behind {
        let entry = format!(";{id}@{position}");
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
        oldest,
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

    /// Destinations 0 and 1, ids 100 and 101.
    fn table() -> WatermarkTable {
        WatermarkTable::new(vec![100, 101])
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
        let mut table = table();
        table.assign(3, Some(100), &[]);
        let old = table.track(3, 100, &mut vec![0]).unwrap();
        assert_eq!(table.revoke(3).map(|c| c.offset), Some(100));
        assert_eq!(table.track(3, 101, &mut vec![0]), None, "not owned");
        table.assign(3, Some(100), &[]);
        let new = table.track(3, 100, &mut vec![0]).unwrap();
        assert!(!table.is_current(old) && table.is_current(new));
        table.finish(shared(old, 100), 0);
        assert_eq!(commits(&mut table), [(3, 100, "sr1".to_owned())]);
        table.finish(shared(new, 100), 0);
        assert_eq!(commits(&mut table), [(3, 101, "sr1".to_owned())]);
    }

    #[test]
    fn commits_only_what_every_attached_destination_finished() {
        let mut table = table();
        let a = table.assign(0, None, &[]);
        assert!(commits(&mut table).is_empty(), "nothing known to commit");
        table.track(0, 10, &mut vec![0, 1]);
        table.track(0, 11, &mut vec![1]);
        table.track(0, 12, &mut vec![]);
        assert_eq!(commits(&mut table), [(0, 10, "sr1".to_owned())]);
        table.finish(shared(a, 10), 0);
        table.finish(shared(a, 11), 1);
        assert_eq!(
            commits(&mut table),
            [(0, 10, "sr1".to_owned())],
            "10 still with 1"
        );
        table.finish(shared(a, 10), 1);
        assert_eq!(commits(&mut table), [(0, 13, "sr1".to_owned())]);
        assert_eq!(table.in_progress(), 0);
    }

    /// The life of a destination that falls behind: detached at the offset its lane had no
    /// room for, its position (what it still holds included) in the commit's metadata while
    /// the shared consumer commits past it, read by its own reader, attached again once it
    /// reaches the shared consumer and finished what it read.
    #[test]
    fn a_detached_destination_keeps_its_position_and_attaches_again() {
        let mut table = table();
        let a = table.assign(0, Some(9), &[]);
        // 9 went to both; 1 holds it in its (now full) lane. 10: 1's lane is full.
        assert_eq!(table.track(0, 9, &mut vec![0, 1]), Some(a));
        let mut targets = vec![0, 1];
        table.track(0, 10, &mut targets);
        assert!(table.detach(a, 10, 1), "newly detached");
        assert!(!table.detach(a, 10, 1), "only once");
        assert_eq!(table.detached_partitions(1), [(a, 10)]);
        // The shared consumer skips 1 from now on.
        let mut targets = vec![0, 1];
        table.track(0, 11, &mut targets);
        assert_eq!(targets, [0], "1 is read by its own reader");
        for offset in 9..12 {
            table.finish(shared(a, offset), 0);
        }
        assert_eq!(
            commits(&mut table),
            [(0, 12, "sr1;101@9".to_owned())],
            "the shared consumer commits past 1's backlog, which the metadata keeps from the event its lane still holds"
        );
        assert_eq!(table.backlog(1), 3);
        table.finish(shared(a, 9), 1);
        assert_eq!(commits(&mut table), [(0, 12, "sr1;101@10".to_owned())]);
        // 1's reader reads 10 and 11 (both mapped), finishes 10.
        assert_eq!(table.catch_up(a, 1, 10, None, true), CatchUp::Deliver(a));
        assert_eq!(
            table.catch_up(a, 1, 10, None, true),
            CatchUp::Skip,
            "read before"
        );
        assert_eq!(
            table.catch_up(a, 1, 11, Some(5_000), true),
            CatchUp::Deliver(a)
        );
        table.finish(own(a, 10), 1);
        assert_eq!(commits(&mut table), [(0, 12, "sr1;101@11".to_owned())]);
        assert_eq!(
            table.backlog_age_ms(1, 7_500),
            2_500,
            "what it read last was written at 5 s"
        );
        assert_eq!(table.backlog_age_ms(0, 7_500), 0, "0 keeps up");
        // 12 is not routed yet: 1 attaches again there and reads no more.
        assert_eq!(table.catch_up(a, 1, 12, None, true), CatchUp::Attached);
        assert!(table.detached_partitions(1).is_empty());
        let mut targets = vec![0, 1];
        table.track(0, 12, &mut targets);
        assert_eq!(targets, [0, 1], "the shared consumer serves 1 again");
        // Until 11 is finished, 1's position stays in the metadata.
        table.finish(shared(a, 12), 0);
        table.finish(shared(a, 12), 1);
        assert_eq!(commits(&mut table), [(0, 13, "sr1;101@11".to_owned())]);
        table.finish(own(a, 11), 1);
        assert_eq!(commits(&mut table), [(0, 13, "sr1".to_owned())]);
        assert_eq!(table.backlog(1), 0);
        assert!(table.release_reader(1));
    }

    #[test]
    fn a_restored_position_detaches_the_destination_and_a_reader_at_the_end_attaches() {
        let mut table = table();
        let positions = parse_positions("sr1;101@5;100@9;999@1").unwrap();
        let a = table.assign(0, Some(8), &positions);
        assert_eq!(table.detached_partitions(1), [(a, 5)]);
        assert!(
            table.detached_partitions(0).is_empty(),
            "a position at or past the commit is not behind"
        );
        assert_eq!(
            commits(&mut table),
            [(0, 8, "sr1;101@5".to_owned())],
            "a destination no longer configured (999) is dropped"
        );
        assert_eq!(table.unread_destinations(), [1]);
        assert!(table.claim_reader(1));
        assert!(!table.claim_reader(1), "one reader per destination");
        assert!(table.unread_destinations().is_empty());
        assert!(!table.caught_up(a, 1, 7), "7 < 8: behind");
        assert!(!table.release_reader(1), "still detached");
        assert!(table.caught_up(a, 1, 8));
        assert!(table.release_reader(1));
        assert_eq!(commits(&mut table), [(0, 8, "sr1".to_owned())]);
    }

    #[test]
    fn unmapped_events_read_by_a_reader_do_not_hold_its_position() {
        let mut table = table();
        let a = table.assign(0, Some(0), &[]);
        table.track(0, 0, &mut vec![0]);
        table.detach(a, 0, 0);
        for offset in 1..5 {
            table.track(0, offset, &mut vec![]);
        }
        assert_eq!(commits(&mut table), [(0, 5, "sr1;100@0".to_owned())]);
        assert_eq!(table.catch_up(a, 0, 0, None, true), CatchUp::Deliver(a));
        for offset in 1..5 {
            assert_eq!(
                table.catch_up(a, 0, offset, None, false),
                CatchUp::Deliver(a)
            );
        }
        assert_eq!(commits(&mut table), [(0, 5, "sr1;100@0".to_owned())]);
        table.finish(own(a, 0), 0);
        assert_eq!(
            commits(&mut table),
            [(0, 5, "sr1".to_owned())],
            "read to the end and finished: no longer behind"
        );
    }

    #[test]
    fn metadata_past_kafkas_limit_holds_the_commit_back_instead_of_dropping_a_position() {
        let ids: Vec<u64> = (0..1_000).map(|i| 1_000_000 + i).collect();
        let mut table = WatermarkTable::new(ids);
        let a = table.assign(0, Some(0), &[]);
        for offset in 0..1_000 {
            table.track(0, offset, &mut vec![offset as usize]);
            table.detach(a, offset, offset as usize);
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
