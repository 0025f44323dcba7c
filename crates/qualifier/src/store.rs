//! The embedded state store: the users of each owned input partition, in memory, with a timer
//! index of when each must be evaluated again. Its durable copy is the compacted changelog
//! topic (one partition per input partition), from which a partition is restored when this
//! process gains it.

use std::collections::{BTreeSet, HashMap};

use model::UserState;

/// The users of one input partition.
#[derive(Debug, Default)]
pub struct PartitionStore {
    users: HashMap<String, (UserState, Option<i64>)>,
    timers: BTreeSet<(i64, String)>,
    /// Users to re-evaluate under the definitions in force (see [`Self::mark_stale`]), taken
    /// from the end. About 40 bytes per user while a sweep runs; empty otherwise.
    stale: Vec<String>,
}

impl PartitionStore {
    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Takes a user out for an update, with their timer (put them back with
    /// [`PartitionStore::put`]).
    pub fn take(&mut self, user_id: &str) -> Option<(UserState, Option<i64>)> {
        let (state, due) = self.users.remove(user_id)?;
        if let Some(due) = due {
            self.timers.remove(&(due, user_id.to_owned()));
        }
        Some((state, due))
    }

    /// A user's state, left in place.
    pub fn get(&self, user_id: &str) -> Option<&UserState> {
        self.users.get(user_id).map(|(state, _)| state)
    }

    /// Stores a user with the time its timer is due (`None`: no timer).
    pub fn put(&mut self, state: UserState, due: Option<i64>) {
        if let Some(due) = due {
            self.timers.insert((due, state.user_id.clone()));
        }
        self.users.insert(state.user_id.clone(), (state, due));
    }

    /// Users whose timer is due at `now`, earliest first, at most `limit`.
    pub fn due(&self, now: i64, limit: usize) -> impl Iterator<Item = &str> {
        self.timers
            .iter()
            .take_while(move |(due, _)| *due <= now)
            .take(limit)
            .map(|(_, user)| user.as_str())
    }

    pub fn due_count(&self, now: i64) -> usize {
        self.timers
            .iter()
            .take_while(|(due, _)| *due <= now)
            .count()
    }

    /// Queues every user last evaluated under another definitions fingerprint (opted-out
    /// markers have nothing to evaluate) for re-evaluation, replacing any earlier queue: the
    /// users it held are among these.
    pub fn mark_stale(&mut self, fingerprint: u64) {
        self.stale = self
            .users
            .values()
            .filter(|(state, _)| !state.opted_out && state.definitions_fingerprint != fingerprint)
            .map(|(state, _)| state.user_id.clone())
            .collect();
        self.stale.shrink_to_fit();
    }

    /// The next queued user still stale under `fingerprint` (a live event may have evaluated
    /// them meanwhile, or the inactivity timer forgotten them).
    pub fn next_stale(&mut self, fingerprint: u64) -> Option<String> {
        while let Some(user) = self.stale.pop() {
            if self
                .users
                .get(&user)
                .is_some_and(|(state, _)| state.definitions_fingerprint != fingerprint)
            {
                return Some(user);
            }
        }
        self.stale = Vec::new();
        None
    }

    pub fn stale_count(&self) -> usize {
        self.stale.len()
    }
}

/// The partitions this process owns.
#[derive(Debug, Default)]
pub struct Store {
    pub partitions: HashMap<i32, PartitionStore>,
}

impl Store {
    pub fn users(&self) -> usize {
        self.partitions.values().map(PartitionStore::len).sum()
    }

    pub fn due_count(&self, now: i64) -> usize {
        self.partitions.values().map(|p| p.due_count(now)).sum()
    }

    /// Users queued for re-evaluation under new definitions, in every partition.
    pub fn stale_count(&self) -> usize {
        self.partitions
            .values()
            .map(PartitionStore::stale_count)
            .sum()
    }

    /// (partition, user) pairs due at `now`, at most `limit` in all.
    pub fn due(&self, now: i64, limit: usize) -> Vec<(i32, String)> {
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserState {
        UserState {
            user_id: id.to_owned(),
            ..UserState::default()
        }
    }

    #[test]
    fn timers_follow_their_users() {
        let mut store = PartitionStore::default();
        store.put(user("a"), Some(30));
        store.put(user("b"), Some(10));
        store.put(user("c"), None);
        assert_eq!(store.due(30, 10).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(store.due(30, 1).collect::<Vec<_>>(), ["b"]);
        let (b, due) = store.take("b").unwrap();
        assert_eq!(due, Some(10));
        store.put(b, Some(50));
        assert_eq!(store.due(30, 10).collect::<Vec<_>>(), ["a"]);
        assert_eq!(store.due_count(60), 2);
        assert_eq!(store.len(), 3);
        assert!(store.take("zzz").is_none());
    }

    #[test]
    fn a_sweep_queues_users_of_other_definitions_and_skips_those_evaluated_meanwhile() {
        let mut store = PartitionStore::default();
        let fingerprinted = |id: &str, fingerprint| UserState {
            definitions_fingerprint: fingerprint,
            ..user(id)
        };
        store.put(fingerprinted("old-1", 1), None);
        store.put(fingerprinted("old-2", 1), None);
        store.put(fingerprinted("new", 2), None);
        store.put(
            UserState {
                opted_out: true,
                ..user("marker")
            },
            None,
        );
        store.mark_stale(2);
        assert_eq!(store.stale_count(), 2);
        // old-2 was evaluated by a live event before its turn.
        let (_, due) = store.take("old-2").unwrap();
        store.put(fingerprinted("old-2", 2), due);
        let mut swept = Vec::new();
        while let Some(user) = store.next_stale(2) {
            let (state, due) = store.take(&user).unwrap();
            store.put(
                UserState {
                    definitions_fingerprint: 2,
                    ..state
                },
                due,
            );
            swept.push(user);
        }
        assert_eq!(swept, ["old-1"]);
        assert_eq!(store.stale_count(), 0);
    }
}
