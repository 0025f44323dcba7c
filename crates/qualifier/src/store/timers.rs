//! The store's timer index: which users are due for evaluation, earliest first.
//!
//! Only the timers due before a *horizon*, five to ten minutes ahead of the clock, are indexed:
//! the rest live in their users' entries alone. Most timers are days away (a ttl, a window, the
//! 120-day inactivity) and move with every event of their user, so indexing them all cost a
//! B-tree entry per user (~40 B in its nodes) and a B-tree update for most events. When the
//! clock comes within five minutes of the horizon, the horizon moves on by five minutes (more
//! after a stall: it stays over five minutes ahead) and a scan of the partition's users
//! indexes those now due before it: one pass over the map every five minutes. A timer is never
//! missed: every timer due before the horizon is in the index, put there by the scan or by the
//! put that set it, and [`Timers::due`] is only asked about times before the horizon.
//!
//! A process restores its partitions together, and a pass over a partition of 1.6M users takes
//! ~12 ms: were their horizons set alike, every partition would pass in the same turn of the
//! processing loop, one pause of ~75 ms every five minutes at 10M users. So each partition's
//! horizons keep to a grid of its own, five minutes apart and offset by its number
//! ([`Timers::phased`]): the partitions pass in turn, tens of seconds apart.

use std::borrow::Borrow;
use std::collections::BTreeSet;
use std::hash::BuildHasher as _;

/// How far ahead of the clock the index holds every timer.
pub(super) const HORIZON_MS: i64 = 10 * 60 * 1000;

/// How often the horizon moves (and the pass runs): half a horizon, so the index always holds
/// at least the next five minutes.
const STEP_MS: i64 = HORIZON_MS / 2;

/// When a stored user's timer is due, in 8 bytes where an `Option<i64>` takes 16: a user's
/// entry (id and record, `store/users.rs`) is 40 bytes instead of 48.
#[derive(Debug, Clone, Copy)]
pub(super) struct Due(i64);

impl Due {
    /// No timer. No real time is this far back (292 million years before 1970).
    const NONE: i64 = i64::MIN;

    pub(super) fn new(due: Option<i64>) -> Self {
        Self(due.map_or(Self::NONE, |due| due.max(Self::NONE + 1)))
    }

    pub(super) fn get(self) -> Option<i64> {
        (self.0 != Self::NONE).then_some(self.0)
    }
}

/// When a user is due for evaluation, with a copy of their id: the index holds only the timers
/// due within the next ten minutes, few of a partition's users, and a timer moved takes the
/// removed one's copy. Timers are ordered by time, then by a hash of the id, then by the id:
/// users active in the same millisecond share a time, and ordering those by the ids alone
/// would read each compared id's allocation, a cache miss per comparison in a store of a
/// million users (memcmp was ~9 % of the qualifier at 1M users). Users due at the same time
/// come in no particular order.
#[derive(Debug)]
struct Timer {
    due: i64,
    hash: u64,
    user: Box<str>,
}

/// What a timer is ordered and found by: a timer, or the one sought (found without copying
/// the id sought, through `Borrow<dyn Key>`).
trait Key {
    fn key(&self) -> (i64, u64, &str);
}

impl Key for Timer {
    fn key(&self) -> (i64, u64, &str) {
        (self.due, self.hash, &self.user)
    }
}

impl Key for (i64, u64, &str) {
    fn key(&self) -> (i64, u64, &str) {
        *self
    }
}

impl<'a> Borrow<dyn Key + 'a> for Timer {
    fn borrow(&self) -> &(dyn Key + 'a) {
        self
    }
}

impl PartialEq for dyn Key + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for dyn Key + '_ {}

impl PartialOrd for dyn Key + '_ {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for dyn Key + '_ {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

impl PartialEq for Timer {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Timer {}

impl PartialOrd for Timer {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timer {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The timers of one partition's users due before the horizon.
#[derive(Debug, Default)]
pub(super) struct Timers {
    index: BTreeSet<Timer>,
    /// Hashes the timers' ids, the same in every process: the order of timers due together
    /// does not depend on the run.
    hasher: foldhash::fast::FixedState,
    /// Every timer due before this is in the index. `None` until [`Timers::advance`] is first
    /// called: then every timer is.
    horizon: Option<i64>,
    /// How much earlier than [`HORIZON_MS`] after the clock the first horizon lies, under a
    /// step: where this partition's grid of horizons is.
    phase: i64,
}

impl Timers {
    /// The index of input partition `partition`, whose horizons keep to a grid offset from
    /// other partitions': by the golden ratio's fraction of a step per partition number, so
    /// that any run of partition numbers spreads over the step (partitions 0 to 5: 0, 185, 71,
    /// 256, 142 and 27 s into it).
    pub(super) fn phased(partition: i32) -> Self {
        let partition = i64::from(partition.unsigned_abs());
        Self {
            phase: partition * STEP_MS * 618 / 1000 % STEP_MS,
            ..Self::default()
        }
    }

    /// Whether a timer due at `due` belongs in the index.
    fn indexed(&self, due: i64) -> bool {
        self.horizon.is_none_or(|horizon| due < horizon)
    }

    /// Indexes a user's timer, if due before the horizon.
    pub(super) fn insert(&mut self, due: Option<i64>, user: &str) {
        self.moved(None, due, user);
    }

    /// Removes a user's timer, if it is indexed.
    pub(super) fn remove(&mut self, due: Option<i64>, user: &str) {
        self.moved(due, None, user);
    }

    /// Moves a user's timer from `from` to `to` (`None`: no timer), indexed while due before
    /// the horizon. A timer moved keeps its copy of the id: a copy is made only for a user's
    /// timer coming into the index.
    pub(super) fn moved(&mut self, from: Option<i64>, to: Option<i64>, user: &str) {
        let (from, to) = (
            from.filter(|&due| self.indexed(due)),
            to.filter(|&due| self.indexed(due)),
        );
        // The id is hashed only for a timer the index holds or takes in: most puts move a
        // timer days away, or none.
        if from == to {
            return;
        }
        let hash = self.hasher.hash_one(user);
        let removed = from.map(|due| {
            let sought: &dyn Key = &(due, hash, user);
            let removed = self.index.take(sought);
            debug_assert!(
                removed.is_some(),
                "an indexed timer is found by its time and id"
            );
            removed
        });
        if let Some(due) = to {
            let user = match removed.flatten() {
                Some(timer) => timer.user,
                None => Box::from(user),
            };
            self.index.insert(Timer { due, hash, user });
        }
    }

    /// The users due at `now`, earliest first, at most `limit`. Complete for a `now` before
    /// the horizon, which [`Timers::advance`] keeps more than half a horizon ahead.
    pub(super) fn due(&self, now: i64, limit: usize) -> impl Iterator<Item = &str> {
        debug_assert!(
            self.indexed(now),
            "asked past the horizon: advance it first"
        );
        self.index
            .iter()
            .take_while(move |timer| timer.due <= now)
            .take(limit)
            .map(|timer| &*timer.user)
    }

    pub(super) fn due_count(&self, now: i64) -> usize {
        self.due(now, usize::MAX).count()
    }

    /// Whether [`Timers::advance`] at `now` moves the horizon (it is unset, or `now` is within
    /// a step of it).
    fn needs_advance(&self, now: i64) -> bool {
        self.horizon
            .is_none_or(|horizon| now >= horizon.saturating_sub(STEP_MS))
    }

    /// Moves the horizon on by whole steps to the first more than a step after `now` (the
    /// first horizon: [`HORIZON_MS`] after `now`, less the phase). The first call drops the
    /// timers past its horizon; a later one returns the old horizon: the caller then indexes
    /// the timers of every user the store holds due between it and the new one
    /// ([`Timers::comes_in`]). Does nothing unless [`Timers::needs_advance`]: a horizon never
    /// moves back (the clock may), and what it covers stays indexed.
    pub(super) fn advance(&mut self, now: i64) -> Option<i64> {
        if !self.needs_advance(now) {
            return None;
        }
        match self.horizon {
            None => {
                let horizon = now.saturating_add(HORIZON_MS - self.phase);
                self.horizon = Some(horizon);
                self.index.retain(|timer| timer.due < horizon);
                None
            }
            Some(old) => {
                // `now` is at least `old` less a step: one step at least, more after a stall.
                let steps = now.saturating_sub(old).saturating_add(STEP_MS) / STEP_MS + 1;
                self.horizon = Some(old.saturating_add(steps.saturating_mul(STEP_MS)));
                Some(old)
            }
        }
    }

    /// Whether a timer due at `due` comes into the index with an advance from the horizon
    /// `old` ([`Timers::advance`]): the timers before it are indexed already.
    pub(super) fn comes_in(&self, due: Option<i64>, old: i64) -> bool {
        due.is_some_and(|due| due >= old && self.indexed(due))
    }

    /// Timers indexed (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests;
