//! The store's timer index: which users are due for evaluation, earliest first.
//!
//! Only the timers due before a *horizon*, [`HORIZON_MS`] ahead of the clock, are indexed: the
//! rest live in their users' entries alone. Most timers are days away (a ttl, a window, the
//! 120-day inactivity) and move with every event of their user, so indexing them all cost a
//! B-tree entry per user (~40 B in its nodes) and a B-tree update for most events. When the
//! clock comes within half a horizon of it, the horizon moves one horizon ahead of the clock
//! and a scan of the partition's users indexes those now due before it: one pass over the map
//! every five minutes. A timer is never missed: every timer due before the horizon is in the
//! index, put there by the scan or by the put that set it, and [`Timers::due`] is only asked
//! about times before the horizon.

use std::collections::BTreeSet;
use std::sync::Arc;

/// How far ahead of the clock the index holds every timer.
pub(super) const HORIZON_MS: i64 = 10 * 60 * 1000;

/// When a user is due for evaluation. Timers are ordered by time, then by the address of the
/// user's id: the store holds one id per user, shared by the map and the timer, so the address
/// names the user. Users active in the same millisecond share a time, and ordering those by
/// the ids themselves would read each compared id's allocation, a cache miss per comparison in
/// a store of a million users (memcmp was ~9 % of the qualifier at 1M users). Users due at
/// the same time come in no particular order.
#[derive(Debug)]
struct Timer {
    due: i64,
    user: Arc<str>,
}

impl Timer {
    fn key(&self) -> (i64, *const u8) {
        (self.due, Arc::as_ptr(&self.user).cast::<u8>())
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
    /// Every timer due before this is in the index. `None` until [`Timers::advance`] is first
    /// called: then every timer is.
    horizon: Option<i64>,
}

impl Timers {
    /// Whether a timer due at `due` belongs in the index.
    fn indexed(&self, due: i64) -> bool {
        self.horizon.is_none_or(|horizon| due < horizon)
    }

    /// Indexes a user's timer, if due before the horizon (`user`: the id the store holds).
    pub(super) fn insert(&mut self, due: Option<i64>, user: &Arc<str>) {
        if let Some(due) = due.filter(|&due| self.indexed(due)) {
            self.index.insert(Timer {
                due,
                user: user.clone(),
            });
        }
    }

    /// Removes a user's timer, if it is indexed (`user`: the id the store holds, which the
    /// timer holds too).
    pub(super) fn remove(&mut self, due: Option<i64>, user: &Arc<str>) {
        if let Some(due) = due.filter(|&due| self.indexed(due)) {
            let removed = self.index.remove(&Timer {
                due,
                user: user.clone(),
            });
            debug_assert!(removed, "a user's timer is found by the id the store holds");
        }
    }

    /// Moves a user's timer from `from` to `to`.
    pub(super) fn moved(&mut self, from: Option<i64>, to: Option<i64>, user: &Arc<str>) {
        if from != to {
            self.remove(from, user);
            self.insert(to, user);
        }
    }

    /// The users due at `now`, earliest first, at most `limit`. Complete for a `now` before
    /// the horizon, which [`Timers::advance`] keeps at least half a horizon ahead.
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

    /// Whether [`Timers::advance`] at `now` would move the horizon (it is unset, or `now` is
    /// within half a horizon of it).
    pub(super) fn needs_advance(&self, now: i64) -> bool {
        self.horizon
            .is_none_or(|horizon| now >= horizon.saturating_sub(HORIZON_MS / 2))
    }

    /// Moves the horizon to [`HORIZON_MS`] after `now`, indexing the timers of `held` (every
    /// user the store holds: their due and id) due between the old horizon and the new one.
    /// The first call drops the timers past the new horizon instead. A horizon never moves
    /// back (the clock may): what it covers stays indexed.
    pub(super) fn advance<'a>(
        &mut self,
        now: i64,
        held: impl Iterator<Item = (Option<i64>, &'a Arc<str>)>,
    ) {
        let horizon = now.saturating_add(HORIZON_MS);
        match self.horizon.replace(horizon) {
            None => self.index.retain(|timer| timer.due < horizon),
            // The timers before the old horizon are indexed already.
            Some(old) if old < horizon => {
                for (due, user) in held {
                    self.insert(due.filter(|&due| due >= old), user);
                }
            }
            Some(old) => self.horizon = Some(old),
        }
    }

    /// Timers indexed (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests;
