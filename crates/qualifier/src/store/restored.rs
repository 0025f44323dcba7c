//! What a restore stores and reads back: users stored as their records are read from the
//! changelog, encoded at once, and read back as stored. A record whose histories are apart is
//! spliced from the user's previous one and the trait parts read since, without decoding the
//! previous one or encoding its histories again; such a user's timer is set once, at the
//! restore's end.

use model::UserState;
use model::changelog::builds_on;
use model::pb::TraitHistory;
use prost::Message as _;
use prost::encoding::message;

use super::PartitionStore;
use super::record::{HistoryEntries, decode_into, scan_apart};
use super::timers::Due;
use super::users::Entry;

impl PartitionStore {
    /// Stores a user encoded at once (a restore: holding every user decoded until the end would
    /// take several times the memory), not compressed: a restore packs its users at its end
    /// ([`Self::pack_cold`]), once each, not each of their records it reads. A state gathered
    /// from trait parts keeps `traits_apart` while it holds its histories, so that the restore
    /// takes them as the previous ones of the user's next record; [`Self::settle`] writes it
    /// with its histories in. `state` is left as it was, to decode the next user into
    /// ([`decode_reusing`]).
    pub fn put_encoded(&mut self, state: &mut UserState, due: Option<i64>) {
        let user_id = std::mem::take(&mut state.user_id);
        self.buffer.clear();
        state.encode_raw(&mut self.buffer);
        let entry = Entry::new(&user_id, &self.buffer, Due::new(due));
        self.forget_decoded(&user_id);
        self.insert(&user_id, entry, None);
        state.user_id = user_id;
    }

    /// Stores a user whose record (`state`, decoded) has `traits_apart`, with the histories
    /// `model::changelog::Gatherer::user` would gather for it: those of the user's previous
    /// record where it [`builds_on`] them, with `parts` (`Gatherer::parts_of`) applied. The
    /// previous record's entries are copied, only the parts encoded: a busy user's record,
    /// tens of KB, comes back in a version per transaction they were in, and decoding the
    /// previous one and encoding it whole again for each was most of a restore of Zipf-heavy
    /// users (docs/BENCHMARKS.md, "Restoring busy users by splicing"). Their timer is set at
    /// the restore's end ([`Self::date_gathered`]), once, not at each version. `state` is left
    /// as it was but for its histories, to decode the next user into.
    pub fn put_gathered(
        &mut self,
        state: &mut UserState,
        parts: impl Iterator<Item = (u64, Option<TraitHistory>)>,
    ) {
        // The last of a trait's parts decides its history: in trait id order, the last read
        // first of each (a stable sort of them reversed), the others dropped.
        let mut changes = std::mem::take(&mut self.gathered);
        changes.clear();
        changes.extend(parts);
        #[cfg(debug_assertions)]
        let read = changes.clone();
        changes.reverse();
        changes.sort_by_key(|&(trait_id, _)| trait_id);
        changes.dedup_by_key(|&mut (trait_id, _)| trait_id);
        let id = std::mem::take(&mut state.user_id);
        state.traits.clear();
        let (users, packer, buffer) = (&self.users, &mut self.packer, &mut self.buffer);
        let previous = users
            .get(&id)
            .map(|entry| packer.read(entry.held()))
            .unwrap_or_default();
        // The histories first (the id is the entry's, written before them by `Entry::new`, and
        // prost writes them before the other fields), then the other fields, found after them
        // in the previous record: whether the histories build on it is known once they are
        // passed (one walk of them, not two).
        buffer.clear();
        let end = write_gathered(previous, &changes, buffer);
        let (apart, generation) = scan_apart(&previous[end..]);
        if !builds_on(state, apart, generation) {
            buffer.clear();
            write_gathered(&[], &changes, buffer);
        }
        // The other fields: `state` holds neither its id nor histories now.
        state.encode_raw(buffer);
        #[cfg(debug_assertions)]
        self.check_gathered(&id, state, &read);
        let entry = Entry::new(&id, &self.buffer, Due::new(None));
        self.forget_decoded(&id);
        self.insert(&id, entry, None);
        if !self.undated.contains(id.as_str()) {
            self.undated.insert(Box::from(id.as_str()));
        }
        state.user_id = id;
        self.gathered = changes;
    }

    /// Sets the timers of the users [`Self::put_gathered`] stored (those not forgotten since),
    /// each from their state as stored, by `due`: at a restore's end, once per user.
    pub fn date_gathered(&mut self, due: impl Fn(&UserState) -> Option<i64>) {
        let mut state = UserState::default();
        for user_id in std::mem::take(&mut self.undated) {
            let Some(entry) = self.users.get_mut(&user_id) else {
                continue;
            };
            let record = self.packer.read(entry.held());
            decode_into(&mut state, record).expect("the store decodes the states it encoded");
            let (from, to) = (entry.due.get(), due(&state));
            entry.due = Due::new(to);
            self.timers.moved(from, entry.due.get(), &user_id);
        }
        self.gathered = Vec::new();
    }

    /// A held user's state as stored, decoded.
    pub fn stored(&mut self, user_id: &str) -> Option<UserState> {
        let entry = self.users.get(user_id)?;
        let record = self.packer.read(entry.held());
        let mut state = UserState::default();
        decode_into(&mut state, record).expect("the store decodes the states it encoded");
        user_id.clone_into(&mut state.user_id);
        Some(state)
    }

    /// Checks that what [`Self::put_gathered`] wrote (in [`Self::buffer`]) is what
    /// `Gatherer::user` gathers: the previous record decoded, the parts `read` applied in
    /// order, encoded whole.
    #[cfg(debug_assertions)]
    fn check_gathered(
        &mut self,
        user_id: &str,
        state: &UserState,
        read: &[(u64, Option<TraitHistory>)],
    ) {
        let mut gathered = state.clone();
        let mut gatherer = model::changelog::Gatherer::default();
        gathered.user_id = user_id.to_owned();
        for (trait_id, history) in read {
            let part = history.clone().map(|history| model::TraitPart {
                generation: state.traits_generation,
                history: Some(history),
            });
            gatherer.part(user_id, *trait_id, part);
        }
        gatherer.user(&mut gathered, self.stored(user_id));
        gathered.user_id.clear();
        assert_eq!(
            self.buffer,
            gathered.encode_to_vec(),
            "the record spliced from trait parts differs from the one gathered"
        );
    }
}

/// Writes the histories (field 2) of `previous` (a record less its id, or empty) with
/// `changes` (trait id and history, `None` for removed; ascending, one each) applied: the
/// entries of unchanged traits copied in runs, the changed ones encoded. Where the histories
/// of `previous` end.
fn write_gathered(
    previous: &[u8],
    changes: &[(u64, Option<TraitHistory>)],
    buffer: &mut Vec<u8>,
) -> usize {
    let mut entries = HistoryEntries::of(previous).peekable();
    // Where the run of entries not yet copied starts, and the last entry passed ends.
    let (mut copied, mut end) = (0, 0);
    for (trait_id, history) in changes {
        while let Some((_, entry)) = entries.next_if(|(id, _)| id < trait_id) {
            end = entry.end;
        }
        buffer.extend_from_slice(&previous[copied..end]);
        copied = end;
        if let Some((_, entry)) = entries.next_if(|(id, _)| id == trait_id) {
            // Replaced or removed: not copied.
            (copied, end) = (entry.end, entry.end);
        }
        if let Some(history) = history {
            message::encode(2, history, buffer);
        }
    }
    for (_, entry) in entries {
        end = entry.end;
    }
    buffer.extend_from_slice(&previous[copied..end]);
    end
}

/// Decodes a changelog record into `state` as `UserState::decode` would, reusing `state`'s
/// allocations: a restore decodes every record into one state, not into a new one each (its
/// restores of the standard fixture took 3.48–3.73 s against 3.80–3.88; no change in memory
/// was measured).
pub fn decode_reusing(state: &mut UserState, record: &[u8]) -> Result<(), prost::DecodeError> {
    decode_into(state, record)
}

#[cfg(test)]
mod tests;
