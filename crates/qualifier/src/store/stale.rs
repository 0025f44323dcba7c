//! The users a store queues for re-evaluation when the definitions in force change: those last
//! evaluated under others, read from their records without decoding them.

use std::sync::Arc;

use super::record::scan_for_staleness;
use super::{Entry, PartitionStore};

impl PartitionStore {
    /// Queues every user last evaluated under another definitions fingerprint (opted-out
    /// markers have nothing to evaluate) for re-evaluation, replacing any earlier queue: the
    /// users it held are among these.
    pub fn mark_stale(&mut self, fingerprint: u64) {
        self.stale = self
            .users
            .iter()
            .filter(|(user_id, entry)| self.is_stale(user_id, entry, fingerprint))
            .map(|(user_id, _)| user_id.clone())
            .collect();
        self.stale.shrink_to_fit();
    }

    /// The next queued user still stale under `fingerprint` (a live event may have evaluated
    /// them meanwhile, or the inactivity timer forgotten them).
    pub fn next_stale(&mut self, fingerprint: u64) -> Option<Arc<str>> {
        while let Some(user) = self.stale.pop() {
            if let Some(entry) = self.users.get(&user)
                && self.is_stale(&user, entry, fingerprint)
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

    /// Whether a held user has something to evaluate (not opted out) and was last evaluated
    /// under definitions other than `fingerprint`.
    fn is_stale(&self, user_id: &str, entry: &Entry, fingerprint: u64) -> bool {
        let (opted_out, evaluated_under) = match self.unsettled.get(user_id) {
            Some(user) => (user.state.opted_out, user.state.definitions_fingerprint),
            None => scan_for_staleness(&entry.state),
        };
        !opted_out && evaluated_under != fingerprint
    }
}
