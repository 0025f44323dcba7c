//! A partition's users by id: their entries side by side in one vector, and a table of each
//! user's position in it (four bytes) by the hash of their id.
//!
//! A map of (id, entry) slots keeps a slot of 40 B for every place in its table, and its table
//! is between 44 % and 88 % full (hashbrown doubles it past seven eighths): at 124,734 users a
//! partition, 2^18 slots, ~86 B a user. Here a place in the table is 4 B and the entries are
//! packed in the vector (docs/BENCHMARKS.md, "A partition's users packed side by side"). A
//! lookup reads the table, then the user's place in the vector: one more cache line than a
//! map's slot. The users of a batch of events are looked up ahead of their takes, all together
//! (`store/owned.rs`, `Store::look_up`), so that these misses overlap. A user removed leaves
//! their place to the last user, whose position in the table is written again.
//!
//! An entry is 24 B: one allocation holding the user's id and their record, and when their
//! timer is due ([`Entry`]). The id is held once, there: the store's other tables do not share
//! it. The decoded states hold ids of their own (`store/keyed.rs`), the timer index copies the
//! ids of the few users due within ten minutes (`store/timers.rs`), and a user taken out has a
//! copy while taken. An id of its own, shared as an `Arc<str>`, was an allocation of its
//! length and 16 B of counters, and 16 B of the entry's place: at the Zipf-heavy fixture
//! (~11-character ids) the heap is ~40 B a user smaller without it (docs/BENCHMARKS.md, "Each
//! user's id in their record's allocation").

use std::hash::BuildHasher as _;
use std::ops::Range;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry as Place;
use prost::encoding::{decode_varint, encode_varint, encoded_len_varint};

use super::timers::Due;

/// One stored user: their id and their changelog record less the id, in one allocation, and
/// when their timer is due. The allocation starts with the id as the record's field 1 (tag,
/// length, bytes: what prost writes first, so that a record whose id is not empty is the
/// allocation's bytes as they are), then the record as held: plain, or packed
/// (`store/packed.rs`). Only the id while the user is in [`super::PartitionStore::unsettled`].
#[derive(Debug)]
pub(super) struct Entry {
    bytes: Box<[u8]>,
    pub(super) due: Due,
}

impl Entry {
    /// The entry of `user_id`, whose record as held is `held`.
    pub(super) fn new(user_id: &str, held: &[u8], due: Due) -> Self {
        let id = user_id.as_bytes();
        let field = 1 + encoded_len_varint(id.len() as u64) + id.len();
        let mut bytes = Vec::with_capacity(field + held.len());
        bytes.push(ID_KEY);
        encode_varint(id.len() as u64, &mut bytes);
        bytes.extend_from_slice(id);
        bytes.extend_from_slice(held);
        Self {
            bytes: bytes.into_boxed_slice(),
            due,
        }
    }

    /// The entry of `user_id` with no record (a user put back in the open transaction).
    pub(super) fn id_only(user_id: &str, due: Due) -> Self {
        Self::new(user_id, &[], due)
    }

    /// The entry's allocation: the id, then the record as held from [`Entry::held_start`].
    pub(super) fn into_bytes(self) -> Box<[u8]> {
        self.bytes
    }

    /// The id's bytes.
    pub(super) fn id(&self) -> &[u8] {
        &self.bytes[id_range(&self.bytes)]
    }

    /// The id as text: it was written from a `&str`.
    pub(super) fn user_id(&self) -> &str {
        std::str::from_utf8(self.id()).expect("an entry's id was written from text")
    }

    /// Where the record as held starts in the entry's allocation.
    pub(super) fn held_start(&self) -> usize {
        id_range(&self.bytes).end
    }

    /// The record as held (plain or packed).
    pub(super) fn held(&self) -> &[u8] {
        &self.bytes[self.held_start()..]
    }

    /// Holds `held` as the user's record (the allocation made again, the id copied).
    pub(super) fn set_held(&mut self, held: &[u8]) {
        let id_field = &self.bytes[..self.held_start()];
        let mut bytes = Vec::with_capacity(id_field.len() + held.len());
        bytes.extend_from_slice(id_field);
        bytes.extend_from_slice(held);
        self.bytes = bytes.into_boxed_slice();
    }

    /// The allocation, to be changed in place from [`Entry::held_start`] on (`store/packed.rs`
    /// packs a record this way): its id must stay.
    pub(super) fn bytes_mut(&mut self) -> &mut Box<[u8]> {
        &mut self.bytes
    }
}

/// Field 1's key: its number, and the wire type of a length and bytes (`(1 << 3) | 2`).
const ID_KEY: u8 = 0x0a;

/// Where the id lies in an entry's allocation: after the field's key and length.
fn id_range(bytes: &[u8]) -> Range<usize> {
    debug_assert_eq!(bytes[0], ID_KEY, "an entry starts with its id's field");
    let mut rest = &bytes[1..];
    // An entry starts with the id field `Entry::new` wrote: read back, it cannot fail.
    let len = decode_varint(&mut rest).expect("an entry starts with its id's length");
    let start = bytes.len() - rest.len();
    start..start + usize::try_from(len).expect("an id's length fits memory")
}

#[derive(Debug, Default)]
pub(super) struct Users {
    /// Each user's position in `held`, by the hash of their id.
    table: HashTable<u32>,
    held: Vec<Entry>,
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
        self.hash_id(user_id.as_bytes())
    }

    /// [`Self::hash`] of an id's bytes.
    pub(super) fn hash_id(&self, id: &[u8]) -> u64 {
        self.hasher.hash_one(id)
    }

    /// The user's position in `held`.
    fn position(&self, user_id: &str) -> Option<usize> {
        let found = self
            .table
            .find(self.hash(user_id), holds(&self.held, user_id.as_bytes()))?;
        Some(*found as usize)
    }

    /// The first position the table files under `hash`, if any: the table read, not the
    /// entries. Most often the position of the user whose id has the hash, if stored; but the
    /// table tells positions apart by 7 bits of their hash, and one of another user may come
    /// first, or match for a user not stored.
    pub(super) fn filed_under(&self, hash: u64) -> Option<u32> {
        self.table.find(hash, |_| true).copied()
    }

    /// The length of the allocation of the entry at `at` (a position the table holds): the
    /// entry read.
    pub(super) fn allocation_len(&self, at: u32) -> usize {
        self.held[at as usize].bytes.len()
    }

    /// The first byte of the allocation of the entry at `at` XOR its last: both read.
    pub(super) fn allocation_ends(&self, at: u32) -> u8 {
        let bytes = &self.held[at as usize].bytes;
        bytes[0] ^ bytes[bytes.len() - 1]
    }

    pub(super) fn get(&self, user_id: &str) -> Option<&Entry> {
        Some(&self.held[self.position(user_id)?])
    }

    /// The user's entry, to change: what it holds from [`Entry::held_start`] on, and its due.
    pub(super) fn get_mut(&mut self, user_id: &str) -> Option<&mut Entry> {
        let at = self.position(user_id)?;
        Some(&mut self.held[at])
    }

    /// Stores `entry` for the user whose id it holds: the entry it replaced.
    pub(super) fn insert(&mut self, entry: Entry) -> Option<Entry> {
        let (held, hasher) = (&mut self.held, &self.hasher);
        let hash = hasher.hash_one(entry.id());
        let place = self.table.entry(hash, holds(held, entry.id()), |&at| {
            hasher.hash_one(held[at as usize].id())
        });
        match place {
            Place::Occupied(place) => {
                let stored = &mut held[*place.get() as usize];
                Some(std::mem::replace(stored, entry))
            }
            Place::Vacant(place) => {
                place.insert(position(held.len()));
                make_room(held);
                held.push(entry);
                None
            }
        }
    }

    /// Removes the user and returns their entry. The last user takes their place in `held`.
    pub(super) fn remove(&mut self, user_id: &str) -> Option<Entry> {
        let hash = self.hash(user_id);
        let found = self
            .table
            .find_entry(hash, holds(&self.held, user_id.as_bytes()))
            .ok()?;
        let at = found.remove().0 as usize;
        let held = &self.held;
        let last = held.len() - 1;
        if at != last {
            let hash = self.hash_id(held[last].id());
            let moved = self.table.find_mut(hash, |&other| other as usize == last);
            // Every user in `held` has their position in the table, under their id's hash.
            *moved.expect("the last user's position is in the table") = position(at);
        }
        Some(self.held.swap_remove(at))
    }

    /// The users whose id has the hash `hash` ([`Self::hash`]): one at most, but for two ids
    /// of the same 64-bit hash.
    pub(super) fn hashed(&self, hash: u64) -> impl Iterator<Item = &Entry> {
        self.table
            .iter_hash(hash)
            .map(|&at| &self.held[at as usize])
            .filter(move |entry| self.hash_id(entry.id()) == hash)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.held.iter()
    }

    pub(super) fn iter_mut(&mut self) -> impl Iterator<Item = &mut Entry> {
        self.held.iter_mut()
    }
}

/// Makes room for one more user in `held` when it is full: a quarter more places, not twice as
/// many. A vector that doubles leaves up to half of its places empty, and where a partition's
/// count falls against a power of two decides how many: at 1M light users (~158,000 a
/// partition, 2^18 places of 40 B then) ~26 B a user, and taking turns the RSS after a restore
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
fn holds<'a>(held: &'a [Entry], user_id: &'a [u8]) -> impl Fn(&u32) -> bool + 'a {
    move |&at| held[at as usize].id() == user_id
}

/// A position in `held` as the table keeps it. A partition holds far fewer than 2^32 users: its
/// entries alone would take 96 GiB.
fn position(at: usize) -> u32 {
    u32::try_from(at).expect("a partition holds fewer than 2^32 users")
}

#[cfg(test)]
mod tests;
