//! The attempts on the wire, per partition, so that giving a partition up can wait for their
//! answers. Its new owner sends again from the commit: were an attempt of the old owner still
//! unanswered (or its retry still to come), a user's newer change could reach the partner
//! before it, and the partner would take the older status last.
//!
//! A lane [claims](Sending::claim) its batch before building the body: the events of revoked
//! partitions go, and the batch's partitions are noted. The send then holds them for each
//! attempt ([`Sending::hold`]) and lets them go ([`Sending::let_go`]) while it
//! waits (a retry's jitter, a pause the partner asked for, a rate token). A revocation waits
//! only for attempts on the wire (at most `timeout_ms` each; `drain_timeout_ms` at most in
//! all); one that comes first makes the next attempt stop unmade, and the lane claims again.
//! The attempt the partner accepted is held until its lane finished its events
//! ([`Sending::finish`]), and a revoked partition's state is kept meanwhile
//! ([`WatermarkTable::start_revoking`]): its commit then counts them, and the new owner does
//! not send them again.

use std::time::{Duration, Instant};

use super::{
    CommitPosition, PartitionAssignment, PartitionState, WatermarkTable, Watermarks,
    commit_position,
};
use crate::batcher::{DestinationBatch, EventSource};

/// One lane's batch's input partitions, and whether an attempt holds them now; the lane
/// keeps one for all its batches. Without watermarks (a replay) it holds nothing and refuses
/// nothing.
#[derive(Debug)]
pub struct Sending {
    table: Option<Watermarks>,
    assignments: Vec<PartitionAssignment>,
    held: bool,
    refused: bool,
}

impl Sending {
    pub fn new(table: Option<&Watermarks>) -> Self {
        Self {
            table: table.cloned(),
            assignments: Vec::new(),
            held: false,
            refused: false,
        }
    }

    /// Drops the batch's events of partitions revoked meanwhile (they belong to their new
    /// owner now) and notes the partitions of the rest.
    pub fn claim(&mut self, batch: &mut DestinationBatch) {
        self.let_go();
        self.assignments.clear();
        self.refused = false;
        let Some(watermarks) = &self.table else {
            return;
        };
        let table = watermarks.lock();
        batch.retain(|e| e.source.is_none_or(|s| table.is_current(s.assignment)));
        drop(table);
        for source in batch.events.iter().filter_map(|e| e.source) {
            let assignment = source.assignment;
            if self.assignments.last() != Some(&assignment)
                && !self.assignments.contains(&assignment)
            {
                self.assignments.push(assignment);
            }
        }
    }

    /// Whether the last [`Self::hold`] found a partition revoked: the send stopped before
    /// its attempt, and the batch is to be claimed again.
    pub fn refused(&self) -> bool {
        self.refused
    }

    /// The send is about to make an attempt: holds the batch's input partitions, or says
    /// `false` when one of them was revoked meanwhile (the attempt is not made). Under the
    /// table's lock, so a revocation either finds the attempt holding its partition and waits
    /// for it, or comes first and the attempt is not made.
    pub fn hold(&mut self) -> bool {
        let Some(watermarks) = self.table.as_ref().filter(|_| !self.held) else {
            return true;
        };
        let mut table = watermarks.lock();
        if !self.assignments.iter().all(|&a| table.is_current(a)) {
            self.refused = true;
            return false;
        }
        for assignment in &self.assignments {
            *table.sending.entry(assignment.partition).or_default() += 1;
        }
        self.held = true;
        true
    }

    /// The send is about to wait (a retry's jitter, a pause the partner asked for, a rate
    /// token), or failed: the batch's input partitions are not held meanwhile.
    pub fn let_go(&mut self) {
        let Some(watermarks) = self.table.as_ref().filter(|_| self.held) else {
            return;
        };
        release(&self.assignments, &mut watermarks.lock());
        self.held = false;
    }

    /// The batch is done (delivered, dead-lettered or given up): `destination` finished its
    /// events (see [`WatermarkTable::finish_all`]), and the attempt the partner accepted lets
    /// go, under one lock. A revocation waiting for that attempt then finds its events
    /// finished as soon as it no longer holds the partition, and commits them.
    pub fn finish(&mut self, sources: impl IntoIterator<Item = EventSource>, destination: usize) {
        let Some(watermarks) = &self.table else {
            return;
        };
        let mut table = watermarks.lock();
        table.finish_all(sources, destination);
        if self.held {
            release(&self.assignments, &mut table);
        }
        drop(table);
        self.held = false;
    }
}

/// One attempt no longer holds `assignments`' partitions.
fn release(assignments: &[PartitionAssignment], table: &mut WatermarkTable) {
    for assignment in assignments {
        if let Some(count) = table.sending.get_mut(&assignment.partition) {
            *count -= 1;
            if *count == 0 {
                table.sending.remove(&assignment.partition);
            }
        }
    }
}

impl Watermarks {
    /// Gives revoked `partitions` up: starts revoking them ([`WatermarkTable::start_revoking`]),
    /// waits up to `wait` until no attempt on the wire holds one, and ends it: what to commit
    /// for each that was owned, the events of the answered attempts included, and whether
    /// every attempt was answered in time. Blocks: a rebalance callback's.
    pub fn give_up(&self, partitions: &[i32], wait: Duration) -> (Vec<CommitPosition>, bool) {
        let mut table = self.lock();
        for &partition in partitions {
            table.start_revoking(partition);
        }
        let started = Instant::now();
        while table.is_sending(partitions) && started.elapsed() < wait {
            drop(table);
            std::thread::sleep(Duration::from_millis(5));
            table = self.lock();
        }
        let answered = !table.is_sending(partitions);
        let positions = partitions
            .iter()
            .filter_map(|&p| table.finish_revoking(p))
            .collect();
        (positions, answered)
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.let_go();
    }
}

impl WatermarkTable {
    /// Whether an attempt holding one of `partitions` is on the wire.
    pub fn is_sending(&self, partitions: &[i32]) -> bool {
        partitions.iter().any(|p| self.sending.contains_key(p))
    }

    /// Starts giving a revoked partition up: it is no longer owned (its queued events are
    /// dropped by the lanes and no attempt holding it is made from here on), but the attempts
    /// on the wire still finish their events, so that [`Self::finish_revoking`], once they
    /// were answered, commits those the partner accepted. Their new owner then does not send
    /// them again. `false` if the partition was not owned.
    pub fn start_revoking(&mut self, partition: i32) -> bool {
        let Some(state) = self.partitions.remove(&partition) else {
            return false;
        };
        self.revoking.insert(partition, state);
        true
    }

    /// Ends giving a partition up (see [`Self::start_revoking`]): what to commit for it.
    pub fn finish_revoking(&mut self, partition: i32) -> Option<CommitPosition> {
        let state = self.revoking.remove(&partition)?;
        commit_position(partition, &state, &self.ids)
    }

    /// The state whose events of `assignment` are finished: an owned partition's, or one's
    /// being given up (the answered attempts on the wire finish theirs).
    pub(super) fn finishing(
        &mut self,
        assignment: PartitionAssignment,
    ) -> Option<&mut PartitionState> {
        let partition = &assignment.partition;
        let state = match self.partitions.get_mut(partition) {
            Some(state) => state,
            None => self.revoking.get_mut(partition)?,
        };
        Some(state).filter(|s| s.generation == assignment.generation)
    }
}
