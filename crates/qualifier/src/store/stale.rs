//! The users a store queues for re-evaluation when the definitions in force change: those last
//! evaluated under others, read from their records without decoding them.

use std::sync::Arc;

use super::packed::Packer;
use super::record::scan_for_staleness;
use super::{ById, Entry, PartitionStore, Unsettled};

impl PartitionStore {
    /// Queues every user last evaluated under another definitions fingerprint (opted-out
    /// markers have nothing to evaluate) for re-evaluation, replacing any earlier queue: the
    /// users it held are among these.
    pub fn mark_stale(&mut self, fingerprint: u64) {
        let (unsettled, packer) = (&self.unsettled, &mut self.packer);
        self.stale = self
            .users
            .iter()
            .filter(|(user_id, entry)| is_stale(unsettled, packer, user_id, entry, fingerprint))
            .map(|(user_id, _)| user_id.clone())
            .collect();
        self.stale.shrink_to_fit();
    }

    /// The next queued user still stale under `fingerprint` (a live event may have evaluated
    /// them meanwhile, or the inactivity timer forgotten them).
    pub fn next_stale(&mut self, fingerprint: u64) -> Option<Arc<str>> {
        while let Some(user) = self.stale.pop() {
            if let Some(entry) = self.users.get(&user)
                && is_stale(&self.unsettled, &mut self.packer, &user, entry, fingerprint)
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

/// Whether a held user has something to evaluate (not opted out) and was last evaluated under
/// definitions other than `fingerprint`: read from their state if put back in the open
/// transaction (`unsettled`), else from their record (read through `packer`).
fn is_stale(
    unsettled: &ById<Unsettled>,
    packer: &mut Packer,
    user_id: &str,
    entry: &Entry,
    fingerprint: u64,
) -> bool {
    let (opted_out, evaluated_under) = match unsettled.get(user_id) {
        Some(user) => (user.state.opted_out, user.state.definitions_fingerprint),
        None => scan_for_staleness(packer.read(&entry.state)),
    };
    !opted_out && evaluated_under != fingerprint
}
