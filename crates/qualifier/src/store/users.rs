//! A partition's users by id: their entries side by side in one vector, and a table of each
//! user's position in it (four bytes) by the hash of their id.
//!
//! A map of (id, entry) slots keeps a slot of 40 B for every place in its table, and its table
//! is between 44 % and 88 % full (hashbrown doubles it past seven eighths): at 124,734 users a
//! partition, 2^18 slots, ~86 B a user. Here a place in the table is 4 B and the entries are
//! packed in the vector: ~52 B a user at that count, and it swings less with where the count
//! falls against a power of two (docs/BENCHMARKS.md, "A partition's users packed side by
//! side"). A lookup reads the table, then the user's place in the vector: one more cache line
//! than a map's slot. A user removed leaves their place to the last user, whose position in
//! the table is written again.
//!
//! The map holds each user's id, once: an allocation of the id's length. The store's other
//! tables do not share it. The decoded states hold ids of their own (`store/keyed.rs`), and the
//! timer index copies the ids of the few users due within ten minutes (`store/timers.rs`).
//! Shared, it was an `Arc<str>`, whose counters made each id's allocation 16 B longer: ~16 B a
//! user (docs/BENCHMARKS.md, "Each user's id held once").

use std::borrow::Cow;
use std::hash::BuildHasher as _;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Place;

use super::Entry;

#[derive(Debug, Default)]
pub(super) struct Users {
    /// Each user's position in `held`, by the hash of their id.
    table: HashTable<u32>,
    held: Vec<(Box<str>, Entry)>,
    hasher: foldhash::fast::RandomState,
}

impl Users {
    pub(super) fn len(&self) -> usize {
        self.held.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// The hash the table files a user under ([`Self::hashed`]).
    pub(super) fn hash(&self, user_id: &str) -> u64 {
        self.hasher.hash_one(user_id)
    }

    /// The user's position in `held`.
    fn position(&self, user_id: &str) -> Option<usize> {
        let found = self
            .table
            .find(self.hash(user_id), holds(&self.held, user_id))?;
        Some(*found as usize)
    }

    pub(super) fn get(&self, user_id: &str) -> Option<&Entry> {
        self.get_key_value(user_id).map(|(_, entry)| entry)
    }

    /// The user's entry and the id the store holds for them.
    pub(super) fn get_key_value(&self, user_id: &str) -> Option<(&str, &Entry)> {
        let (id, entry) = &self.held[self.position(user_id)?];
        Some((id, entry))
    }

    pub(super) fn get_mut(&mut self, user_id: &str) -> Option<&mut Entry> {
        self.get_key_value_mut(user_id).map(|(_, entry)| entry)
    }

    /// The user's entry, with the id the store holds for them, to change.
    pub(super) fn get_key_value_mut(&mut self, user_id: &str) -> Option<(&str, &mut Entry)> {
        let at = self.position(user_id)?;
        let (id, entry) = &mut self.held[at];
        Some((id, entry))
    }

    /// Stores `entry` for the user: the id the store holds for them and the entry it
    /// replaced. A new user's id is `user_id`, allocated if borrowed; a user held already keeps
    /// the id held.
    pub(super) fn insert(&mut self, user_id: Cow<'_, str>, entry: Entry) -> (&str, Option<Entry>) {
        let (held, hasher) = (&mut self.held, &self.hasher);
        let hash = hasher.hash_one(&*user_id);
        let place = self.table.entry(hash, holds(held, &user_id), |&at| {
            hasher.hash_one(&*held[at as usize].0)
        });
        match place {
            Place::Occupied(place) => {
                let (id, stored) = &mut held[*place.get() as usize];
                (id, Some(std::mem::replace(stored, entry)))
            }
            Place::Vacant(place) => {
                place.insert(position(held.len()));
                make_room(held);
                held.push((user_id.into_owned().into_boxed_str(), entry));
                let (id, _) = held.last().expect("just pushed");
                (id, None)
            }
        }
    }

    /// Removes the user: the id the store held for them and their entry. The last user takes
    /// their place in `held`.
    pub(super) fn remove_entry(&mut self, user_id: &str) -> Option<(Box<str>, Entry)> {
        let hash = self.hash(user_id);
        let found = self
            .table
            .find_entry(hash, holds(&self.held, user_id))
            .ok()?;
        let at = found.remove().0 as usize;
        let held = &self.held;
        let last = held.len() - 1;
        if at != last {
            let hash = self.hash(&held[last].0);
            let moved = self.table.find_mut(hash, |&other| other as usize == last);
            // Every user in `held` has their position in the table, under their id's hash.
            *moved.expect("the last user's position is in the table") = position(at);
        }
        Some(self.held.swap_remove(at))
    }

    /// The users whose id has the hash `hash` ([`Self::hash`]): one at most, but for two ids
    /// of the same 64-bit hash.
    pub(super) fn hashed(&self, hash: u64) -> impl Iterator<Item = (&str, &Entry)> {
        self.table
            .iter_hash(hash)
            .map(|&at| &self.held[at as usize])
            .filter(move |(id, _)| self.hash(id) == hash)
            .map(|(id, entry)| (&**id, entry))
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.held.iter().map(|(id, entry)| (&**id, entry))
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = (&str, &mut Entry)> {
        self.held.iter_mut().map(|(id, entry)| (&**id, entry))
    }
}

/// Makes room for one more user in `held` when it is full: a quarter more places, not twice as
/// many. A vector that doubles leaves up to half of its places empty, 40 B each, and where a
/// partition's count falls against a power of two decides how many: at 1M light users
/// (~158,000 a partition, 2^18 places) ~26 B a user, and taking turns the RSS after a restore
/// fell ~10 B a user (docs/BENCHMARKS.md, "A partition's entries grown by a quarter"). Grown by
/// a quarter, at most a fifth of the places are empty. The growths copy the entries about five
/// times over in all where doubling copies them about twice: once per growth, not per insert.
fn make_room<T>(held: &mut Vec<T>) {
    if held.len() == held.capacity() {
        held.reserve_exact(held.len() / 4 + GROWN_AT_LEAST);
    }
}

/// The fewest places `held` grows by.
const GROWN_AT_LEAST: usize = 64;

/// Whether a position in the table is `user_id`'s.
fn holds<'a>(held: &'a [(Box<str>, Entry)], user_id: &'a str) -> impl Fn(&u32) -> bool + 'a {
    move |&at| &*held[at as usize].0 == user_id
}

/// A position in `held` as the table keeps it. A partition holds far fewer than 2^32 users: its
/// entries alone would take 160 GiB.
fn position(at: usize) -> u32 {
    u32::try_from(at).expect("a partition holds fewer than 2^32 users")
}

#[cfg(test)]
mod tests;
