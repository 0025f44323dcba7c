//! A table of values that each hold their user's id, found by it: the table keeps no id of its
//! own. The store's decoded states (`UserState` holds its `user_id`) are kept this way, so
//! that keeping one does not copy its user's id (see `store/users.rs`: the store holds each
//! user's id once, in its map, where it used to share it among its tables).

use std::hash::BuildHasher as _;

use hashbrown::HashTable;
use hashbrown::hash_table::Entry;

/// A value that holds its user's id.
pub(super) trait Keyed {
    /// The id's bytes.
    fn id(&self) -> &[u8];
}

#[derive(Debug)]
pub(super) struct ByOwnId<T> {
    table: HashTable<T>,
    hasher: foldhash::fast::RandomState,
}

impl<T> Default for ByOwnId<T> {
    fn default() -> Self {
        Self {
            table: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        }
    }
}

impl<T: Keyed> ByOwnId<T> {
    /// The hash the table files a user under.
    pub(super) fn hash(&self, user_id: &(impl AsRef<[u8]> + ?Sized)) -> u64 {
        self.hasher.hash_one(user_id.as_ref())
    }

    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    pub(super) fn get(&self, user_id: &(impl AsRef<[u8]> + ?Sized)) -> Option<&T> {
        self.table.find(self.hash(user_id), is(user_id.as_ref()))
    }

    pub(super) fn contains(&self, user_id: &(impl AsRef<[u8]> + ?Sized)) -> bool {
        self.get(user_id).is_some()
    }

    pub(super) fn get_mut(&mut self, user_id: &(impl AsRef<[u8]> + ?Sized)) -> Option<&mut T> {
        let hash = self.hash(user_id);
        self.table.find_mut(hash, is(user_id.as_ref()))
    }

    pub(super) fn remove(&mut self, user_id: &(impl AsRef<[u8]> + ?Sized)) -> Option<T> {
        let hash = self.hash(user_id);
        let found = self.table.find_entry(hash, is(user_id.as_ref()));
        Some(found.ok()?.remove().0)
    }

    /// Stores `value` under its user's id: the value it replaced, if any.
    pub(super) fn insert(&mut self, value: T) -> Option<T> {
        let hasher = &self.hasher;
        let hash = hasher.hash_one(value.id());
        let place = self
            .table
            .entry(hash, is(value.id()), |held| hasher.hash_one(held.id()));
        match place {
            Entry::Occupied(mut place) => Some(std::mem::replace(place.get_mut(), value)),
            Entry::Vacant(place) => {
                place.insert(value);
                None
            }
        }
    }

    /// A value whose user's id has the hash `hash` ([`Self::hash`]) and that `accepts`, if
    /// any: found without the id.
    pub(super) fn find_hashed(&self, hash: u64, accepts: impl Fn(&T) -> bool) -> Option<&T> {
        self.table.find(hash, hashed(&self.hasher, hash, accepts))
    }

    /// [`Self::find_hashed`], removed.
    pub(super) fn remove_hashed(&mut self, hash: u64, accepts: impl Fn(&T) -> bool) -> Option<T> {
        let found = self
            .table
            .find_entry(hash, hashed(&self.hasher, hash, accepts));
        Some(found.ok()?.remove().0)
    }

    /// Every value, taken out; the table keeps its allocation.
    pub(super) fn drain(&mut self) -> impl Iterator<Item = T> + '_ {
        self.table.drain()
    }

    pub(super) fn values(&self) -> impl Iterator<Item = &T> {
        self.table.iter()
    }
}

/// Whether a value is the one of id `id`.
fn is<T: Keyed>(id: &[u8]) -> impl Fn(&T) -> bool + '_ {
    move |value| value.id() == id
}

/// Whether a value's id has the hash `hash` and `accepts` takes it: a table's tag is only seven
/// bits of the hash, so the value's id is hashed again.
fn hashed<'a, T: Keyed>(
    hasher: &'a foldhash::fast::RandomState,
    hash: u64,
    accepts: impl Fn(&T) -> bool + 'a,
) -> impl Fn(&T) -> bool + 'a {
    move |value| accepts(value) && hasher.hash_one(value.id()) == hash
}

#[cfg(test)]
impl<T: Keyed> std::ops::Index<&str> for ByOwnId<T> {
    type Output = T;

    fn index(&self, user_id: &str) -> &T {
        self.get(user_id).expect("the user is held")
    }
}

#[cfg(test)]
mod tests;
