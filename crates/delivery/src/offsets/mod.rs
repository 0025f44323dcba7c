//! Which input offsets may be committed. An offset is committable only when every attached
//! destination that needed its event has it delivered or dead-lettered; a destination that
//! fell behind and reads the partition on its own (see `catch_up`) holds only its own
//! position, written into the commit's metadata so the next owner resumes it there.
//! Committing anything past these could lose an event in a crash; committing less only
//! re-sends (at-least-once).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::batcher::EventSource;

mod detached;
mod metadata;
mod pending;
mod sending;
#[cfg(test)]
mod tests;

pub use detached::CatchUp;
use metadata::commit_position;
pub use metadata::{MAX_COMMIT_METADATA, parse_positions};
use pending::{drop_finished, finish_pending, mark_finished};
pub use sending::Sending;

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
    /// Per partition, the attempts on the wire holding events of it (see [`Sending`]).
    sending: HashMap<i32, u32>,
    /// Partitions being given up ([`Self::start_revoking`]): no longer owned, their events
    /// make no further attempt, but the attempts on the wire still finish theirs.
    revoking: HashMap<i32, PartitionState>,
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

impl WatermarkTable {
    pub fn new(destination_ids: Vec<u64>) -> Self {
        Self {
            partitions: HashMap::new(),
            next_generation: 0,
            readers: vec![false; destination_ids.len()],
            ids: destination_ids,
            sending: HashMap::new(),
            revoking: HashMap::new(),
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

    /// Stops tracking a revoked partition at once; returns what to commit for it.
    pub fn revoke(&mut self, partition: i32) -> Option<CommitPosition> {
        self.start_revoking(partition);
        self.finish_revoking(partition)
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

    /// `destination` finished the event; ignored if that assignment is gone. The lanes finish
    /// their batches with [`Self::finish_all`]; this one-at-a-time form, a binary search per
    /// event, is the reference the tests hold `finish_all` to.
    #[cfg(test)]
    pub fn finish(&mut self, source: EventSource, destination: usize) {
        let Some(state) = self.finishing(source.assignment) else {
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

    /// `destination` finished these events, a batch's in the order its lane took them: as
    /// [`Self::finish`] for each, with one lookup per run of events of one assignment. A run's
    /// offsets come ascending (a lane takes a partition's events in order), so each is
    /// searched for from the one before it on, among the few offsets of the destination's
    /// other lanes between them, and the finished prefix is dropped once per run: a binary
    /// search of all the destination's unfinished offsets per event was 2 % of a drain's CPU.
    pub fn finish_all(
        &mut self,
        sources: impl IntoIterator<Item = EventSource>,
        destination: usize,
    ) {
        let mut sources = sources.into_iter().peekable();
        while let Some(first) = sources.next() {
            let assignment = first.assignment;
            let mut state = self.finishing(assignment);
            let mut from = 0;
            let mut next = Some(first);
            while let Some(source) = next {
                if let Some(state) = state.as_deref_mut() {
                    if source.catch_up {
                        if let Some(reader) = state.reader(destination) {
                            reader.watermark.finish(source.offset);
                        }
                    } else if let Some(pending) = state.pending.get_mut(destination) {
                        from = mark_finished(pending, from, source.offset);
                    }
                }
                next = sources.next_if(|s| s.assignment == assignment);
            }
            if let Some(pending) = state.and_then(|s| s.pending.get_mut(destination)) {
                drop_finished(pending);
            }
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
