//! The destinations that fell behind and read a partition on their own: detaching one, what
//! its catch-up reader does with each message, attaching it again when it caught up, its
//! reader's claim, and its backlog.

use super::{DetachedReader, OffsetWatermark, PartitionAssignment, WatermarkTable, finish_pending};

/// What a catch-up reader does with the message it read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUp {
    /// Hand it to the destination (if it maps it); it was tracked.
    Deliver(PartitionAssignment),
    /// Hand it to the destination (if it maps it), and read no more of the partition: the
    /// shared consumer routed nothing after it, so it serves the destination from the next
    /// offset on. The hand-over must happen under the table's lock, before the shared
    /// consumer can route that next offset, or a user's changes could swap places.
    Last(PartitionAssignment),
    /// Already handled: ignore it.
    Skip,
    /// The shared consumer has not routed it yet: the destination is attached again from
    /// here on, and the reader stops reading the partition.
    Attached,
    /// The partition is not ours any more, or the destination is not detached there: stop
    /// reading it.
    Stop,
}

impl WatermarkTable {
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
        // Level with the shared consumer: attach here rather than wait to read past it (or to
        // see the partition's end), which a reader behind the same fetches as the shared
        // consumer rarely does while the producer writes (a transaction every few ms).
        if routed_to == Some(offset + 1) {
            reader.draining = true;
            return CatchUp::Last(assignment);
        }
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
}
