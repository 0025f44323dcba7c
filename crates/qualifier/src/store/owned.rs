//! The partitions this process owns, each a [`PartitionStore`], and what is asked of them all at
//! once: users, bytes held, timers due, users queued for re-evaluation, users looked up ahead
//! of their events.

use std::collections::HashMap;

use super::PartitionStore;
use super::users::Users;

/// The most users [`Store::look_up`] reads at once: what it reads of them (their table slots,
/// entries and first and last bytes: ~40 KB of cache lines at most) stays in the processor's
/// cache while they are taken.
pub const LOOKED_UP_TOGETHER: usize = 128;

/// The partitions this process owns.
#[derive(Debug, Default)]
pub struct Store {
    pub partitions: HashMap<i32, PartitionStore>,
}

impl Store {
    pub fn users(&self) -> usize {
        self.partitions.values().map(PartitionStore::len).sum()
    }

    /// [`PartitionStore::held_bytes`] of every partition.
    pub fn held_bytes(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionStore::held_bytes)
            .sum()
    }

    /// Timers due at `now`, in every partition (the horizons advanced to `now` first).
    pub fn due_count(&mut self, now: i64) -> usize {
        self.advance_horizons(now);
        self.partitions.values().map(|p| p.due_count(now)).sum()
    }

    /// [`PartitionStore::advance_horizon`] for every partition.
    fn advance_horizons(&mut self, now: i64) {
        for partition in self.partitions.values_mut() {
            partition.advance_horizon(now);
        }
    }

    /// Users queued for re-evaluation under new definitions, in every partition.
    pub fn stale_count(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionStore::stale_count)
            .sum()
    }

    /// (partition, user) pairs due at `now`, at most `limit` in all (the horizons advanced to
    /// `now` first).
    pub fn due(&mut self, now: i64, limit: usize) -> Vec<(i32, String)> {
        self.advance_horizons(now);
        let mut out = Vec::new();
        for (&partition, store) in &self.partitions {
            let room = limit.saturating_sub(out.len());
            out.extend(
                store
                    .due(now, room)
                    .map(|user| (partition, user.to_owned())),
            );
        }
        out
    }

    /// Reads what taking each user will read first, of the first [`LOOKED_UP_TOGETHER`] given
    /// as (partition, id): their place in the table, their entry, and the first and last bytes
    /// of their allocation. Returns a byte made of what it read, for `black_box`: the reads are
    /// what counts. A take reads these one after another, each a cache miss at 1M users and
    /// more that waits on the one before; here they are read in three passes over the users,
    /// the table's slots first, then the entries, then the allocations, so that nothing a pass
    /// reads waits on another read of that pass, and the processor has many misses under way
    /// at once. A user found by 7 bits of their hash only, or not stored, costs reads of no use.
    pub fn look_up<'k>(&self, users: impl IntoIterator<Item = (i32, &'k [u8])>) -> u8 {
        let mut found: [Option<(&Users, u32)>; LOOKED_UP_TOGETHER] = [None; LOOKED_UP_TOGETHER];
        let mut count = 0;
        for (partition, id) in users.into_iter().take(LOOKED_UP_TOGETHER) {
            let Some(store) = self.partitions.get(&partition) else {
                continue;
            };
            let users = &store.users;
            found[count] = users.filed_under(users.hash_id(id)).map(|at| (users, at));
            count += 1;
        }
        let found = || found[..count].iter().flatten();
        let mut read = 0;
        for (users, at) in found() {
            read ^= users.allocation_len(*at);
        }
        let mut read = read as u8;
        for (users, at) in found() {
            read ^= users.allocation_ends(*at);
        }
        read
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::user;

    #[test]
    fn a_look_up_reads_the_users_of_owned_partitions_up_to_its_number() {
        let mut store = Store::default();
        for (partition, id) in [(0, "a"), (1, "bb")] {
            let mut owned = PartitionStore::default();
            owned.put(user(id), None);
            store.partitions.insert(partition, owned);
        }
        store.partitions.insert(2, PartitionStore::default());
        // Put back in the open transaction, each entry holds their id only: its key, its
        // length, its bytes. A partition of one user files no other under their hash.
        let a = 3 ^ 0x0a ^ b'a'; // the allocation's length, then its first and last bytes
        let bb = 4 ^ 0x0a ^ b'b';
        let users = [(0, &b"a"[..]), (1, b"bb"), (2, b"a"), (7, b"a")];
        assert_eq!(store.look_up(users), a ^ bb);
        assert_eq!(store.look_up([(1, &b"bb"[..])]), bb);
        // Partition 2 holds nobody, partition 7 is not owned: nothing read.
        assert_eq!(store.look_up([(2, &b"a"[..]), (7, b"a")]), 0);
        let past = std::iter::repeat_n((2, &b"a"[..]), LOOKED_UP_TOGETHER);
        let past = past.chain([(0, &b"a"[..])]);
        assert_eq!(store.look_up(past), 0, "past its number");
    }
}
