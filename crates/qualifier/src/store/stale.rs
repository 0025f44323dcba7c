//! The users a store queues for re-evaluation when the definitions in force change: those last
//! evaluated under others, read from their records without decoding them.

use super::packed::Packer;
use super::record::scan_for_staleness;
use super::{ByOwnId, Entry, PartitionStore, Unsettled};

impl PartitionStore {
    /// Queues every user last evaluated under another definitions fingerprint (opted-out
    /// markers have nothing to evaluate) for re-evaluation, replacing any earlier queue: the
    /// users it held are among these.
    pub fn mark_stale(&mut self, fingerprint: u64) {
        let (users, unsettled, packer) = (&self.users, &self.unsettled, &mut self.packer);
        self.stale = users
            .iter()
            .filter(|entry| is_stale(unsettled, packer, entry, fingerprint))
            .map(|entry| users.hash_id(entry.id()))
            .collect();
        self.stale.shrink_to_fit();
    }

    /// The next queued user still stale under `fingerprint` (a live event may have evaluated
    /// them meanwhile, or the inactivity timer forgotten them).
    ///
    /// The queue holds the users' hashes, not their ids: a user found by their hash is one
    /// whose id has it. Two users of one hash, both stale, are queued twice, and whichever is
    /// found first is re-evaluated first (and so no longer stale when the other is sought).
    pub fn next_stale(&mut self, fingerprint: u64) -> Option<Box<str>> {
        let (users, unsettled, packer) = (&self.users, &self.unsettled, &mut self.packer);
        while let Some(hash) = self.stale.pop() {
            let mut hashed = users.hashed(hash);
            if let Some(entry) =
                hashed.find(|entry| is_stale(unsettled, packer, entry, fingerprint))
            {
                return Some(Box::from(entry.user_id()));
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
    unsettled: &ByOwnId<Unsettled>,
    packer: &mut Packer,
    entry: &Entry,
    fingerprint: u64,
) -> bool {
    let (opted_out, evaluated_under) = match unsettled.get(entry.id()) {
        Some(user) => (user.state.opted_out, user.state.definitions_fingerprint),
        None => scan_for_staleness(packer.read(entry.held())),
    };
    !opted_out && evaluated_under != fingerprint
}
