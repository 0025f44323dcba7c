//! The qualifier's changelog (`qualifier-changelog`): its two kinds of record, and how a reader
//! gathers a user's state from them.
//!
//! A **user record** is keyed by the user id (UTF-8) and holds their [`UserState`]; a tombstone
//! forgets the user. Its trait histories are in `traits`, unless it has `traits_apart`: then
//! each history is a **trait part**, a record of its own keyed by the user id, the byte 0xFF
//! (never in UTF-8) and the trait id as 8 bytes big-endian, holding a [`TraitPart`]; a
//! tombstone there removes the history. A busy user's new state then costs the changelog the
//! histories that changed, not all of them.
//!
//! A writer of trait parts writes a user's changed parts, and the tombstones of removed ones,
//! before the user record, in the same transaction, and moving a user's histories out of
//! `traits` it starts a new `traits_generation` (one the user never had: see the field) and
//! writes every history. A writer of whole records tombstones the parts of a user it writes
//! whole again, and of one it forgets, before their record. So a user's live parts are all
//! read before their latest record, and a reader ([`Gatherer`]) gives a record with
//! `traits_apart` the histories of its previous record (if that had them apart, in the same
//! generation) with the parts of its generation read since applied, in read order. The result
//! is the same whether the topic was compacted or not. Parts of another generation were left
//! by a writer that went back to `traits`, and are not taken; parts after a user's last record
//! belong to no record (orphans: counted and dropped).

use std::collections::HashMap;

use crate::pb::{TraitHistory, TraitPart, UserState};

/// The byte between the user id and the trait id in a trait part's key.
pub const PART_MARK: u8 = 0xFF;

/// A changelog record's key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key<'a> {
    User(&'a str),
    Part { user: &'a str, trait_id: u64 },
}

impl<'a> Key<'a> {
    /// `None`: neither a user id nor a trait part's key.
    pub fn parse(key: &'a [u8]) -> Option<Self> {
        if let Ok(user) = std::str::from_utf8(key) {
            return Some(Self::User(user));
        }
        let mark = key.len().checked_sub(9)?;
        let (user, rest) = key.split_at(mark);
        let (&PART_MARK, trait_id) = rest.split_first()? else {
            return None;
        };
        Some(Self::Part {
            user: std::str::from_utf8(user).ok()?,
            trait_id: u64::from_be_bytes(trait_id.try_into().ok()?),
        })
    }
}

/// Whether `key` is a trait part's. A user id (UTF-8) never holds the mark, so for one this is
/// a byte's comparison, not a UTF-8 check of the whole key: it runs for every changelog record
/// the qualifier writes (`qualifier_changelog_bytes_total`).
pub fn is_part(key: &[u8]) -> bool {
    let mark = key.len().checked_sub(9).map(|at| key[at]);
    mark == Some(PART_MARK) && matches!(Key::parse(key), Some(Key::Part { .. }))
}

/// The key of `user`'s part of `trait_id`.
pub fn part_key(user: &str, trait_id: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(user.len() + 9);
    write_part_key(&mut key, user, trait_id);
    key
}

/// [`part_key`] into `key` (cleared first), to reuse its allocation.
pub fn write_part_key(key: &mut Vec<u8>, user: &str, trait_id: u64) {
    key.clear();
    key.extend_from_slice(user.as_bytes());
    key.push(PART_MARK);
    key.extend_from_slice(&trait_id.to_be_bytes());
}

/// Gathers users' states from one changelog partition's records, read in offset order: hand it
/// each trait part ([`Self::part`]), user record ([`Self::user`]) and user tombstone
/// ([`Self::forget`]). It holds only the parts read since each user's last record.
#[derive(Debug, Default)]
pub struct Gatherer {
    /// Per user, their parts since their last record, in read order (`None`: a tombstone).
    pending: HashMap<String, Vec<(u64, Option<TraitPart>)>, foldhash::fast::RandomState>,
}

impl Gatherer {
    /// A trait part (`None`: its tombstone).
    pub fn part(&mut self, user: &str, trait_id: u64, part: Option<TraitPart>) {
        match self.pending.get_mut(user) {
            Some(parts) => parts.push((trait_id, part)),
            None => {
                self.pending.insert(user.to_owned(), vec![(trait_id, part)]);
            }
        }
    }

    /// A user record: with `traits_apart`, `state` gets its trait histories, those of
    /// `previous` (the user as gathered at their previous record, if any: its histories are
    /// moved, not copied) when it [`builds_on`] them, with the parts read since applied. Either
    /// way the parts read since are used up.
    pub fn user(&mut self, state: &mut UserState, previous: Option<UserState>) {
        let parts = self.parts_of(state);
        if !state.traits_apart {
            return;
        }
        state.traits = previous
            .filter(|p| builds_on(state, p.traits_apart, p.traits_generation))
            .map(|p| p.traits)
            .unwrap_or_default();
        for (trait_id, history) in parts {
            apply(&mut state.traits, trait_id, history);
        }
    }

    /// The parts read since the last record of `state`'s user, used up: what they do to the
    /// histories of `state` (a user record) in read order, each a trait id and its history
    /// (`None`: removed), a history's own trait id set to its key's. Parts of a generation other
    /// than `state`'s are left out, and a record without `traits_apart` takes none. For a reader
    /// that applies them itself ([`Self::user`] applies them to decoded histories).
    pub fn parts_of(
        &mut self,
        state: &UserState,
    ) -> impl Iterator<Item = (u64, Option<TraitHistory>)> + use<> {
        // A changelog of whole records has no parts: no lookup per record then.
        let parts = if self.pending.is_empty() {
            Vec::new()
        } else {
            self.pending.remove(&state.user_id).unwrap_or_default()
        };
        let (apart, generation) = (state.traits_apart, state.traits_generation);
        parts
            .into_iter()
            .filter(move |_| apart)
            .filter_map(move |(trait_id, part)| match part {
                Some(part) if part.generation != generation => None,
                Some(part) => {
                    let mut history = part.history.unwrap_or_default();
                    history.trait_id = trait_id;
                    Some((trait_id, Some(history)))
                }
                None => Some((trait_id, None)),
            })
    }

    /// A user tombstone, or a record without `traits_apart` (which takes no part): their parts
    /// read since their last record are dropped.
    pub fn forget(&mut self, user: &str) {
        if !self.pending.is_empty() {
            self.pending.remove(user);
        }
    }

    /// The parts read after their user's last record, which no record took: (users, parts).
    pub fn orphans(&self) -> (usize, usize) {
        (
            self.pending.len(),
            self.pending.values().map(Vec::len).sum(),
        )
    }
}

/// Whether the histories of `state` (a user record with `traits_apart`) build on those of the
/// user's previous record, which had `traits_apart` as `previous_apart` and `previous_generation`:
/// when it had them apart too, in the same generation. Else they start empty.
pub fn builds_on(state: &UserState, previous_apart: bool, previous_generation: u64) -> bool {
    previous_apart && previous_generation == state.traits_generation
}

/// Sets (`Some`) or removes (`None`) the history of `trait_id` in `traits` (in ascending trait
/// id), whose own trait id is `trait_id` already.
fn apply(traits: &mut Vec<TraitHistory>, trait_id: u64, history: Option<TraitHistory>) {
    let at = traits.binary_search_by_key(&trait_id, |h| h.trait_id);
    match (at, history) {
        (Ok(at), Some(history)) => traits[at] = history,
        (Err(at), Some(history)) => traits.insert(at, history),
        (Ok(at), None) => {
            traits.remove(at);
        }
        (Err(_), None) => {}
    }
}

#[cfg(test)]
mod tests;
