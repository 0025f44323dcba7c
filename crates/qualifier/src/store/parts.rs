//! The trait parts (`model::changelog`) a store writes.
//!
//! With [`Layout::Parts`], a user with more than [`APART_OVER`] trait histories is written as
//! a record without histories and a part per history: moving them apart, every history in a
//! new generation; after that, only the parts of the histories that changed (tombstones for
//! those gone). A busy user's record, tens of KB, is then not written again in every
//! transaction they are in. A user stays apart once moved (no churn around the threshold).
//!
//! With [`Layout::Whole`], the one earlier releases write, every record holds its histories:
//! a user who had them apart is written whole as they change, and their parts are tombstoned
//! before that record, as a forgotten user's are. So switching back returns the changelog to
//! whole records as its users change. The parts to tombstone are those the record the user was
//! taken from names, which the store keeps for such a user whatever changed (`record.rs`,
//! `Base::with_changed`): in memory an apart user's record holds their histories, the same
//! ones their live parts hold.

use std::ops::Range;

use model::UserState;
use model::changelog::write_part_key;
use model::pb::TraitHistory;
use prost::encoding::uint64;

use super::record::{Base, HistoryEntries, Index, parted_trait_ids};

/// A user with more trait histories than this is written apart under [`Layout::Parts`]. The
/// prototype of 2026-12-04 split at 32 (docs/BENCHMARKS.md): under it a record is a few KB at
/// most, and a part per history would cost the changelog more records than it saves bytes.
pub const APART_OVER: usize = 32;

/// How [`super::PartitionStore::settle`] writes a changed user's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Every record holds its histories (what every release before trait parts reads).
    Whole,
    /// Busy users' histories in trait parts; `now` (ms) starts a user's generation.
    Parts { now: i64 },
}

/// How a user put back is written at the end of the transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Written {
    /// Not at all: their state did not change.
    Unchanged,
    /// Their record with their histories in.
    Whole,
    /// Their record with their histories in, after the tombstones of their parts.
    Rewritten,
    /// Apart: their record without histories, after their parts; every history's when they
    /// start a `fresh` generation, else those that changed.
    Apart { fresh: bool },
}

impl Layout {
    /// How a user whose state changed is written, their `traits_apart` and
    /// `traits_generation` set for it. `based`: the store holds the record they were taken
    /// from (for a user apart, it names their parts: see the header).
    pub(super) fn write_as(self, state: &mut UserState, based: bool) -> Written {
        let was_apart = state.traits_apart;
        let now = match self {
            Layout::Whole => {
                state.traits_apart = false;
                return if was_apart {
                    Written::Rewritten
                } else {
                    Written::Whole
                };
            }
            Layout::Parts { now } => now,
        };
        if was_apart && based {
            return Written::Apart { fresh: false };
        }
        if !was_apart && state.traits.len() <= APART_OVER {
            return Written::Whole;
        }
        // A generation the user never had: their clock's, or past their last one. (A user
        // apart without the record they were taken from is not in production: the store keeps
        // it for them. Their parts written again in a new generation are still read right.)
        let clock = u64::try_from(now).unwrap_or(0);
        state.traits_apart = true;
        state.traits_generation = state.traits_generation.saturating_add(1).max(clock);
        Written::Apart { fresh: true }
    }
}

/// A user's whole record as [`super::PartitionStore::settle`] encoded it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Encoded<'a> {
    pub(super) bytes: &'a [u8],
    /// The user id's field: the bytes before the histories (prost writes fields in number
    /// order).
    pub(super) id_len: usize,
    /// Where the histories' entries after it lie ([`Index`]).
    pub(super) index: &'a [usize],
}

/// Writes a user's trait parts, and the record of a user written apart, into buffers it keeps.
#[derive(Debug, Default)]
pub(super) struct PartWriter {
    key: Vec<u8>,
    value: Vec<u8>,
}

impl PartWriter {
    /// Hands `write` the records of a user put back, as `written` says: `record` is their
    /// whole record; `base` the record they were taken from.
    pub(super) fn settled<E>(
        &mut self,
        user_id: &str,
        state: &UserState,
        written: Written,
        base: Option<&Base>,
        record: Encoded<'_>,
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        match written {
            Written::Unchanged => Ok(()),
            Written::Whole => write(user_id.as_bytes(), Some(record.bytes)),
            Written::Rewritten => {
                self.rewritten(user_id, base, &state.traits, write)?;
                write(user_id.as_bytes(), Some(record.bytes))
            }
            Written::Apart { fresh } => {
                let since = if fresh { None } else { base };
                let generation = state.traits_generation;
                self.apart(user_id, generation, record, since, write)
            }
        }
    }

    /// A user forgotten: tombstones of the parts the record they were taken from names, if any.
    pub(super) fn forgotten<E>(
        &mut self,
        user_id: &str,
        base: Option<&Base>,
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        match base {
            Some(base) => self.tombstones(user_id, parted_trait_ids(base.record()), write),
            None => Ok(()),
        }
    }

    /// A user who had their histories apart, written whole: tombstones of the parts the
    /// record they were taken from names (without one, those of the histories they hold).
    fn rewritten<E>(
        &mut self,
        user_id: &str,
        base: Option<&Base>,
        traits: &[TraitHistory],
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        match base {
            Some(_) => self.forgotten(user_id, base, write),
            None => self.tombstones(user_id, traits.iter().map(|h| h.trait_id), write),
        }
    }

    /// A user written apart in `generation`: their parts, then their record without
    /// histories. `since`: the record they were taken from, if their parts of `generation` are
    /// its histories; without it, every history gets a part (a new generation).
    fn apart<E>(
        &mut self,
        user_id: &str,
        generation: u64,
        record: Encoded<'_>,
        since: Option<&Base>,
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let (id, entries) = record.bytes.split_at(record.id_len);
        let index = Index::of(entries, record.index);
        changed_parts(since, index, |trait_id, entry| {
            write_part_key(&mut self.key, user_id, trait_id);
            let Some(entry) = entry else {
                return write(&self.key, None);
            };
            // A `TraitPart`: the generation, then the history as the record holds it (field 2
            // in both).
            self.value.clear();
            if generation != 0 {
                uint64::encode(1, &generation, &mut self.value);
            }
            self.value.extend_from_slice(&entries[entry]);
            write(&self.key, Some(&self.value))
        })?;
        self.value.clear();
        self.value.extend_from_slice(id);
        self.value.extend_from_slice(&entries[index.end()..]);
        write(user_id.as_bytes(), Some(&self.value))
    }

    /// Hands `write` a tombstone for `user_id`'s part of each of `trait_ids`.
    fn tombstones<E>(
        &mut self,
        user_id: &str,
        trait_ids: impl IntoIterator<Item = u64>,
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        for trait_id in trait_ids {
            write_part_key(&mut self.key, user_id, trait_id);
            write(&self.key, None)?;
        }
        Ok(())
    }
}

/// Hands `each` the parts of a user's record (`now`, its entries indexed) that differ from
/// `since`, in trait id order: (trait id, where its history entry lies, `None` for a history
/// gone). Without `since` every history; from a `since` that says which histories changed,
/// those (each found by a binary search: a busy user's thousands of entries are not walked);
/// else every history whose bytes differ.
fn changed_parts<E>(
    since: Option<&Base>,
    now: Index<'_>,
    mut each: impl FnMut(u64, Option<Range<usize>>) -> Result<(), E>,
) -> Result<(), E> {
    let Some(since) = since else {
        return now
            .iter()
            .try_for_each(|(trait_id, at)| each(trait_id, Some(at)));
    };
    if !since.any {
        for &trait_id in &since.changed {
            each(trait_id, now.find(trait_id).ok().map(|i| now.entry(i)))?;
        }
        return Ok(());
    }
    let entries = now.record();
    let mut now = now.iter().peekable();
    let mut before = HistoryEntries::of(since.record()).peekable();
    loop {
        match (before.peek().cloned(), now.peek().cloned()) {
            (None, None) => return Ok(()),
            (Some((gone, _)), None) => {
                before.next();
                each(gone, None)?;
            }
            (Some((gone, _)), Some((next, _))) if gone < next => {
                before.next();
                each(gone, None)?;
            }
            (Some((was, old)), Some((next, at))) if was == next => {
                before.next();
                now.next();
                if since.record()[old] != entries[at.clone()] {
                    each(next, Some(at))?;
                }
            }
            (_, Some((next, at))) => {
                now.next();
                each(next, Some(at))?;
            }
        }
    }
}
