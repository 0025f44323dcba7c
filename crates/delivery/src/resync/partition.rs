//! One changelog partition through a resync: the main pass reads it from where the resync
//! group left it (or its beginning) to the end offset it had when the run started; once the
//! lanes finished every user read, a converge pass reads what was written since, up to the
//! partition's end at that moment — again, until a pass finds nothing new or
//! [`CONVERGE_PASSES`] passes ran. Then it is complete, and its commit says so in the
//! metadata (see [`Marker`]). Pure: the engine feeds it records and offsets.
//!
//! The main pass reads its range twice: first the keys only, to learn each user's last record
//! in it, then the records, routing only those — what compaction leaves, also in the part of
//! the log the cleaner has not compacted yet, where a user may have many records. So a user
//! gets their state once, not each state they went through, and a tombstone drops every
//! earlier record of its user. The index costs about 30 bytes per user of the partitions being
//! read, and is dropped when the main pass is read. Within a converge pass (short), a newer
//! record of a user replaces an earlier one of the same chunk. A user's trait parts (records
//! of their trait histories: `model::changelog`) hold no membership and are passed over.

use std::collections::HashMap;
use std::hash::BuildHasher as _;

use model::changelog::is_part;

use crate::resync::view::{Record, decode};

/// Converge passes at most after the main pass (each reads what was written during the one
/// before; a busy partition never runs dry).
pub const CONVERGE_PASSES: u32 = 3;

/// Where a partition's resync stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Reading the main pass's keys, to learn each user's last record in it.
    Indexing,
    /// Reading records up to the pass's end.
    Reading,
    /// Read to the pass's end (the partition is paused); waiting for the lanes to finish
    /// every user routed, before the next pass looks for newer records.
    Settling,
    /// Done, and committed with the complete marker (or found so).
    Complete,
}

/// A fetched changelog record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    /// `None`: a tombstone.
    pub payload: Option<Vec<u8>>,
}

/// What becomes of a fetched record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Take {
    /// A key for the main pass's index.
    Index,
    /// Part of the current pass.
    Read,
    /// Past the current pass's end: kept for the next pass.
    Hold,
    /// Read before (fetched again), or the partition is complete.
    Ignore,
}

/// After a pass settled, given the partition's end now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Read the records written since, up to this end.
    Pass {
        target: i64,
    },
    Complete,
}

/// A record read and not yet routed: `None` once a newer record of the same user in the same
/// chunk replaced it, or when it is not a user state.
type ChunkEntry = (i64, Option<(String, Record)>);

/// One partition's resync: its phase and pass, what was read and routed, and the records
/// waiting for the next pass.
#[derive(Debug)]
pub struct PartitionRun {
    pub phase: Phase,
    /// Where the main pass starts (it is read again from here after indexing).
    start: i64,
    /// While indexing: the next offset to index.
    indexed_to: i64,
    /// The main pass's last offset of each key (by hash), until the main pass is read.
    index: HashMap<u64, i64>,
    /// The main pass's last record, while it is read again: once it is read, the pass is
    /// (the consumer's position is stale right after the seek back to the start).
    last_record: Option<i64>,
    index_hasher: foldhash::fast::FixedState,
    /// 0: the main pass; 1..=[`CONVERGE_PASSES`]: converge passes.
    pub pass: u32,
    /// The end (exclusive) of the current pass.
    pub target: i64,
    /// The next offset to read: every record before it was read (or was before the start).
    pub next: i64,
    /// The offset after the last record routed (tracked by the watermarks).
    pub routed_to: i64,
    chunk: Vec<ChunkEntry>,
    /// Position in `chunk` of each user's latest record.
    latest: HashMap<String, usize>,
    /// Fetched past the pass's end while it settles: the next pass starts with them.
    held: Vec<Fetched>,
}

impl PartitionRun {
    /// A partition to read from `start` to `end` (exclusive) in the main pass.
    pub fn new(start: i64, end: i64) -> Self {
        Self {
            phase: if start >= end {
                Phase::Settling
            } else {
                Phase::Indexing
            },
            start,
            indexed_to: start,
            index: HashMap::new(),
            last_record: None,
            index_hasher: foldhash::fast::FixedState::with_seed(0x0069_6e64_6578),
            pass: 0,
            target: end,
            next: start,
            routed_to: start,
            chunk: Vec::new(),
            latest: HashMap::new(),
            held: Vec::new(),
        }
    }

    /// A partition whose resync is already complete.
    pub fn complete(at: i64) -> Self {
        let mut run = Self::new(at, at);
        run.phase = Phase::Complete;
        run
    }

    /// What becomes of the fetched record at `offset`.
    pub fn classify(&self, offset: i64) -> Take {
        let after_held = self.held.last().map_or(self.next, |h| h.offset + 1);
        match self.phase {
            Phase::Complete => Take::Ignore,
            Phase::Indexing if offset >= self.indexed_to && offset < self.target => Take::Index,
            Phase::Indexing => Take::Ignore,
            _ if offset < self.next.max(after_held) => Take::Ignore,
            Phase::Reading if offset < self.target && self.held.is_empty() => Take::Read,
            Phase::Reading | Phase::Settling => Take::Hold,
        }
    }

    /// Notes the key of the record at `offset` in the main pass's index.
    pub fn index(&mut self, offset: i64, key: Option<&[u8]>) {
        self.indexed_to = offset + 1;
        self.last_record = Some(offset);
        if let Some(key) = key.filter(|key| !is_part(key)) {
            self.index.insert(self.index_hasher.hash_one(key), offset);
        }
    }

    /// Whether every key of the main pass was indexed (`position`: the consumer's, if known).
    pub fn is_indexed(&self, position: Option<i64>) -> bool {
        self.phase == Phase::Indexing
            && (self.indexed_to >= self.target || position.is_some_and(|p| p >= self.target))
    }

    /// Ends the indexing: the main pass is read from its start, which is returned (the
    /// consumer seeks there) — `None` when it holds no record (only transaction markers).
    pub fn start_reading(&mut self) -> Option<i64> {
        if self.last_record.is_none() {
            self.phase = Phase::Settling;
            return None;
        }
        self.phase = Phase::Reading;
        Some(self.start)
    }

    /// Whether the current pass is read: its last record (main pass), or everything before
    /// its end (`position`: the consumer's, if known; offsets without a record are
    /// transaction markers).
    pub fn is_read(&self, position: Option<i64>) -> bool {
        if self.phase != Phase::Reading {
            return false;
        }
        match self.last_record {
            Some(last) => self.next > last,
            None => self.next >= self.target || position.is_some_and(|p| p >= self.target),
        }
    }

    /// Adds a record of the current pass to the chunk, unless a later record of its user is in
    /// the main pass (a newer record of a user replaces their earlier one: a tombstone drops
    /// what came before). An error says why the record is not a user state; it is skipped.
    pub fn read(&mut self, record: Fetched) -> Result<(), String> {
        self.next = record.offset + 1;
        if record.key.as_deref().is_some_and(is_part) {
            self.chunk.push((record.offset, None));
            return Ok(());
        }
        let superseded = record
            .key
            .as_deref()
            .and_then(|key| self.index.get(&self.index_hasher.hash_one(key)))
            .is_some_and(|&last| last > record.offset);
        if superseded {
            self.chunk.push((record.offset, None));
            return Ok(());
        }
        match decode(record.key.as_deref(), record.payload.as_deref()) {
            Ok((user, state)) => {
                if let Some(&earlier) = self.latest.get(&user) {
                    self.chunk[earlier].1 = None;
                }
                self.latest.insert(user.clone(), self.chunk.len());
                self.chunk.push((record.offset, Some((user, state))));
                Ok(())
            }
            Err(error) => {
                self.chunk.push((record.offset, None));
                Err(error)
            }
        }
    }

    /// Keeps a record fetched past the current pass's end for the next pass.
    pub fn hold(&mut self, record: Fetched) {
        self.held.push(record);
    }

    /// Records read and not routed yet.
    pub fn chunk_len(&self) -> usize {
        self.chunk.len()
    }

    /// The chunk to route, in offset order, and empties it.
    pub fn flush(&mut self) -> Vec<ChunkEntry> {
        self.latest.clear();
        if let Some(&(last, _)) = self.chunk.last() {
            self.routed_to = last + 1;
        }
        std::mem::take(&mut self.chunk)
    }

    /// The pass's end was reached (every record before `target` was returned): the partition
    /// settles. Call after the chunk was flushed.
    pub fn reach(&mut self) {
        if self.phase == Phase::Reading {
            self.phase = Phase::Settling;
            self.index = HashMap::new();
            self.last_record = None;
        }
    }

    /// Whether the lanes finished everything routed (`lowest`: the partition's lowest
    /// unfinished position from the watermarks) and the pass can be closed.
    pub fn is_settled(&self, lowest: i64) -> bool {
        self.phase == Phase::Settling && self.chunk.is_empty() && lowest >= self.routed_to
    }

    /// The offset to commit: every record before it is finished (`lowest` as above).
    pub fn commit_offset(&self, lowest: i64) -> i64 {
        if self.is_settled(lowest) || self.phase == Phase::Complete {
            self.target
        } else {
            lowest
        }
    }

    /// Closes a settled pass, `end` being the partition's end now: another pass when records
    /// were written since and passes are left, else complete.
    pub fn after_settled(&mut self, end: i64) -> Next {
        if end <= self.target || self.pass >= CONVERGE_PASSES {
            self.phase = Phase::Complete;
            return Next::Complete;
        }
        self.pass += 1;
        // Offsets before the old end that returned no record were transaction markers.
        self.next = self.next.max(self.target);
        self.target = end;
        self.phase = Phase::Reading;
        Next::Pass { target: end }
    }

    /// The held records the current pass reads (the others stay held).
    pub fn take_held(&mut self) -> Vec<Fetched> {
        let target = self.target;
        let (now, later) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|r| r.offset < target);
        self.held = later;
        now
    }
}

/// What a resync group's commit metadata says about its partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marker {
    /// Nothing of ours (no commit, or a commit without our metadata).
    None,
    /// In progress, in a run started at this time (ms since the Unix epoch).
    Running { started_unix_ms: i64 },
    /// Complete since this time (ms since the Unix epoch).
    Complete { at_unix_ms: i64 },
}

impl Marker {
    /// The marker in a commit's metadata; anything else is [`Marker::None`].
    pub fn parse(metadata: &str) -> Self {
        let number = |rest: &str| rest.parse::<i64>().ok();
        if let Some(at) = metadata.strip_prefix("complete:").and_then(number) {
            Self::Complete { at_unix_ms: at }
        } else if let Some(started) = metadata.strip_prefix("running:").and_then(number) {
            Self::Running {
                started_unix_ms: started,
            }
        } else {
            Self::None
        }
    }

    /// The commit metadata (`running:<ms>` or `complete:<ms>`; `""` for none).
    pub fn metadata(self) -> String {
        match self {
            Self::None => String::new(),
            Self::Running { started_unix_ms } => format!("running:{started_unix_ms}"),
            Self::Complete { at_unix_ms } => format!("complete:{at_unix_ms}"),
        }
    }
}

#[cfg(test)]
mod tests;
