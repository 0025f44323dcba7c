//! The embedded state store: the users of each owned input partition, in memory, with a timer
//! index of when each must be evaluated again. Its durable copy is the compacted changelog
//! topic (one partition per input partition), from which a partition is restored when this
//! process gains it.
//!
//! Each user is kept encoded, as the bytes of their changelog record less the user id, and
//! decoded only while an event or timer of theirs is evaluated: a decoded [`UserState`] holds
//! every trait history, membership and its user id in allocations of their own, several times
//! the record's size. The user id is held once, shared by the map and the timer index.
//!
//! A user put back during a transaction stays decoded until its end ([`PartitionStore::settle`]),
//! so that however many of their events it holds they are encoded once, and stays decoded
//! through the next transaction too, so that a user active in one transaction after another
//! is not decoded again each time: a Zipf-heavy user's record is tens of KB. What is kept
//! decoded is bounded by two transactions' users.
//!
//! When the steps that changed a user say which trait histories they touched (an event's step
//! touches its own trait's only), the user's new record is spliced from the one they were
//! taken from: the other histories' bytes copied, only the touched ones encoded. A busy user's
//! record is then not encoded whole in every transaction they are in.

use std::collections::{BTreeSet, HashMap, hash_map};
use std::sync::Arc;

use model::UserState;
use prost::encoding::{
    DecodeContext, WireType, bool, decode_key, encode_key, encode_varint, int64, message, string,
    uint32, uint64,
};
use prost::{DecodeError, Message};

use crate::evaluate::Histories;

/// At most this many decoded states let go are kept per partition for their allocations
/// ([`PartitionStore::spare`]), each of at most [`SPARE_TRAITS`] trait histories: what the
/// spares hold stays under ~1 MB per partition. A Zipf-heavy user's state, thousands of
/// histories, is not kept: such a user is nearly always still decoded when taken again.
const SPARE_STATES: usize = 256;
const SPARE_TRAITS: usize = 64;
/// A user with more trait histories changed than this in one transaction is encoded whole.
const MAX_CHANGED_HISTORIES: usize = 16;

/// One stored user: their changelog record without its user id (field 1, the first prost
/// writes: the id and these bytes are the record) and when their timer is due. Empty while the
/// user is in [`PartitionStore::unsettled`].
#[derive(Debug)]
struct Entry {
    state: Box<[u8]>,
    due: Option<i64>,
}

/// The users of one input partition.
#[derive(Debug, Default)]
pub struct PartitionStore {
    users: HashMap<Arc<str>, Entry, foldhash::fast::RandomState>,
    timers: BTreeSet<(i64, Arc<str>)>,
    /// Users to re-evaluate under the definitions in force (see [`Self::mark_stale`]), taken
    /// from the end. About 16 bytes per user while a sweep runs; empty otherwise.
    stale: Vec<Arc<str>>,
    /// Users put back in the open transaction, decoded (see [`Self::settle`]), with the record
    /// they were taken from, if what changed since is known.
    unsettled: HashMap<Arc<str>, (UserState, Option<Base>), foldhash::fast::RandomState>,
    /// The records of users taken out and not yet put back (a user taken and not put back is
    /// forgotten: cleared at [`Self::settle`]).
    taken: HashMap<Arc<str>, Base, foldhash::fast::RandomState>,
    /// Users put back in the transaction before and not taken since, decoded: their entry
    /// holds these states' bytes.
    warm: HashMap<Arc<str>, UserState, foldhash::fast::RandomState>,
    /// Where states are encoded before they are copied into an allocation of their size.
    buffer: Vec<u8>,
    /// Decoded states of users let go (encoded, no longer warm), kept for their allocations: a
    /// user decoded into one refills its vectors instead of growing new ones, history by
    /// history, an element at a time (a fifth of the processing loop at 20,000 events/s).
    spare: Vec<UserState>,
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
        let (id, entry) = self.remove_entry(user_id)?;
        let (state, base) = if let Some((state, base)) = self.unsettled.remove(user_id) {
            self.warm.remove(user_id);
            (state, base)
        } else if let Some(state) = self.warm.remove(user_id) {
            // The entry holds the warm state's record.
            (state, Some(Base::new(entry.state)))
        } else {
            let mut state = self.spare.pop().unwrap_or_default();
            // The store holds only what `encode` wrote from a `UserState`: prost's encoding,
            // read back (tested below), so this cannot fail on any input.
            decode_into(&mut state, &entry.state).expect("the store decodes the states it encoded");
            user_id.clone_into(&mut state.user_id);
            (state, Some(Base::new(entry.state)))
        };
        if let Some(base) = base {
            self.taken.insert(id, base);
        }
        Some((state, entry.due))
    }

    /// Forgets a user (a changelog tombstone).
    pub fn remove(&mut self, user_id: &str) {
        self.remove_entry(user_id);
        self.forget_decoded(user_id);
    }

    /// Drops what the store holds of the user besides their entry: their decoded state (the
    /// open transaction's, the one before's) and the record they were taken from.
    fn forget_decoded(&mut self, user_id: &str) {
        self.unsettled.remove(user_id);
        self.warm.remove(user_id);
        self.taken.remove(user_id);
    }

    fn remove_entry(&mut self, user_id: &str) -> Option<(Arc<str>, Entry)> {
        let (user_id, entry) = self.users.remove_entry(user_id)?;
        if let Some(due) = entry.due {
            self.timers.remove(&(due, user_id.clone()));
        }
        Some((user_id, entry))
    }

    /// Writes a user's changelog record into `buf` (the bytes prost writes for their state);
    /// `false` for a user the store does not hold.
    pub fn write_record(&self, user_id: &str, buf: &mut Vec<u8>) -> bool {
        let Some(entry) = self.users.get(user_id) else {
            return false;
        };
        if let Some((state, _)) = self.unsettled.get(user_id) {
            state.encode_raw(buf);
            return true;
        }
        if !user_id.is_empty() {
            encode_key(1, WireType::LengthDelimited, buf);
            encode_varint(user_id.len() as u64, buf);
            buf.extend_from_slice(user_id.as_bytes());
        }
        buf.extend_from_slice(&entry.state);
        true
    }

    /// Puts a user back (after [`Self::take`]) with the time their timer is due (`None`: no
    /// timer), decoded until [`Self::settle`], any of their trait histories changed.
    pub fn put(&mut self, state: UserState, due: Option<i64>) {
        self.put_changed(state, due, Histories::Any);
    }

    /// [`Self::put`], saying which trait histories changed since [`Self::take`]: at
    /// [`Self::settle`] only those are encoded, the others' bytes copied from the record the
    /// user was taken from.
    pub fn put_changed(&mut self, state: UserState, due: Option<i64>, histories: Histories) {
        let base = self
            .taken
            .remove(state.user_id.as_str())
            .and_then(|base| base.changed(histories));
        let user_id = self.insert(&state.user_id, Box::default(), due);
        self.unsettled.insert(user_id, (state, base));
    }

    /// Stores a user encoded at once (a restore: holding every user decoded until the end would
    /// take several times the memory).
    pub fn put_encoded(&mut self, mut state: UserState, due: Option<i64>) {
        let user_id = std::mem::take(&mut state.user_id);
        let encoded = self.encode(&state, None);
        self.forget_decoded(&user_id);
        self.insert(&user_id, encoded, due);
    }

    /// Encodes the users put back since the last call (at the end of each transaction), and
    /// keeps them decoded until the next call; those of the call before are let go, some kept
    /// as spares to decode other users into.
    pub fn settle(&mut self) {
        let mut unsettled = std::mem::take(&mut self.unsettled);
        self.taken.clear();
        let room = SPARE_STATES - self.spare.len();
        self.spare.extend(
            self.warm
                .drain()
                .map(|(_, state)| state)
                .filter(|state| state.traits.len() <= SPARE_TRAITS)
                .take(room),
        );
        for (user_id, (mut state, base)) in unsettled.drain() {
            let id = std::mem::take(&mut state.user_id);
            let encoded = self.encode(&state, base.as_ref());
            state.user_id = id;
            if let Some(entry) = self.users.get_mut(&user_id) {
                entry.state = encoded;
                self.warm.insert(user_id, state);
            }
        }
        // Its allocation is reused by the next transaction.
        self.unsettled = unsettled;
    }

    /// `state` encoded into an allocation of its size (its user id is left empty: the map
    /// key holds it): from `base`, the record it was taken from, where that can be done, else
    /// whole. The same bytes either way (checked in debug builds, so by every test).
    fn encode(&mut self, state: &UserState, base: Option<&Base>) -> Box<[u8]> {
        self.buffer.clear();
        let spliced = base.is_some_and(|base| base.splice(state, &mut self.buffer).is_some());
        if !spliced {
            self.buffer.clear();
            state.encode_raw(&mut self.buffer);
        }
        debug_assert_eq!(
            self.buffer,
            state.encode_to_vec(),
            "the record spliced from the one taken differs from the state's"
        );
        Box::from(self.buffer.as_slice())
    }

    /// Stores a user's entry and timer; the id the store holds for them.
    fn insert(&mut self, user_id: &str, state: Box<[u8]>, due: Option<i64>) -> Arc<str> {
        let entry = Entry { state, due };
        // One probe of the map: a user is put back after a take, absent.
        match self.users.entry(Arc::from(user_id)) {
            hash_map::Entry::Vacant(vacant) => {
                let user_id = vacant.key().clone();
                if let Some(due) = due {
                    self.timers.insert((due, user_id.clone()));
                }
                vacant.insert(entry);
                user_id
            }
            // Put again without a take: the old timer goes, the id held stays.
            hash_map::Entry::Occupied(mut held) => {
                let user_id = held.key().clone();
                if let Some(old) = held.get().due {
                    self.timers.remove(&(old, user_id.clone()));
                }
                if let Some(due) = due {
                    self.timers.insert((due, user_id.clone()));
                }
                held.insert(entry);
                user_id
            }
        }
    }

    /// Users whose timer is due at `now`, earliest first, at most `limit`.
    pub fn due(&self, now: i64, limit: usize) -> impl Iterator<Item = &str> {
        self.timers
            .iter()
            .take_while(move |(due, _)| *due <= now)
            .take(limit)
            .map(|(_, user)| &**user)
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
            Some((state, _)) => (state.opted_out, state.definitions_fingerprint),
            None => scan_for_staleness(&entry.state),
        };
        !opted_out && evaluated_under != fingerprint
    }
}

/// The record a user was taken from, and which of their trait histories changed since.
#[derive(Debug)]
struct Base {
    record: Box<[u8]>,
    /// The trait ids whose histories changed, ascending, at most [`MAX_CHANGED_HISTORIES`].
    changed: Vec<u64>,
}

impl Base {
    fn new(record: Box<[u8]>) -> Self {
        Self {
            record,
            changed: Vec::new(),
        }
    }

    /// With `histories` changed too; `None` when the record is of no more use (any history
    /// may have changed, or too many did).
    fn changed(mut self, histories: Histories) -> Option<Self> {
        match histories {
            Histories::Any => return None,
            Histories::Untouched => {}
            Histories::One(trait_id) => {
                if let Err(at) = self.changed.binary_search(&trait_id) {
                    if self.changed.len() == MAX_CHANGED_HISTORIES {
                        return None;
                    }
                    self.changed.insert(at, trait_id);
                }
            }
        }
        Some(self)
    }

    /// Writes `state` as prost's `encode_raw` would: the histories of unchanged traits copied
    /// from the record (field 2 comes first in it, a history per entry, in trait id order),
    /// the changed ones and every other field encoded. `None` when the record's histories are
    /// not the state's but for the changed ones (what is written is then of no use).
    fn splice(&self, state: &UserState, buf: &mut Vec<u8>) -> Option<()> {
        let UserState {
            user_id,
            traits,
            regions,
            partner_ids,
            memberships,
            last_seen_unix_ms,
            opted_out,
            opted_out_unix_ms,
            last_sequence,
            last_change_unix_ms,
            definitions_fingerprint,
        } = state;
        if !user_id.is_empty() {
            string::encode(1, user_id, buf);
        }
        let record = &self.record[..];
        let changed = |trait_id: &u64| self.changed.binary_search(trait_id).is_ok();
        let mut entries = HistoryEntries { record, at: 0 };
        // The record's bytes still to be copied: consecutive unchanged entries, copied at once.
        let mut run = 0..0;
        for history in traits {
            if changed(&history.trait_id) {
                buf.extend_from_slice(&record[run.clone()]);
                run = 0..0;
                message::encode(2, history, buf);
                continue;
            }
            // This trait's entry; those before it must be of changed traits (removed since).
            let entry = loop {
                let (trait_id, entry) = entries.next()?;
                if trait_id == history.trait_id {
                    break entry;
                }
                if !changed(&trait_id) {
                    return None;
                }
            };
            if run.end != entry.start {
                buf.extend_from_slice(&record[run]);
                run = entry.start..entry.start;
            }
            run.end = entry.end;
        }
        buf.extend_from_slice(&record[run]);
        // The entries left must all be of changed traits (removed since).
        if entries.any(|(trait_id, _)| !changed(&trait_id)) {
            return None;
        }
        uint32::encode_packed(3, regions, buf);
        message::encode_repeated(4, partner_ids, buf);
        message::encode_repeated(5, memberships, buf);
        if *last_seen_unix_ms != 0 {
            int64::encode(6, last_seen_unix_ms, buf);
        }
        if *opted_out {
            bool::encode(7, opted_out, buf);
        }
        if *opted_out_unix_ms != 0 {
            int64::encode(8, opted_out_unix_ms, buf);
        }
        if *last_sequence != 0 {
            uint64::encode(9, last_sequence, buf);
        }
        if *last_change_unix_ms != 0 {
            int64::encode(10, last_change_unix_ms, buf);
        }
        if *definitions_fingerprint != 0 {
            uint64::encode(11, definitions_fingerprint, buf);
        }
        Some(())
    }
}

/// The trait history entries (field 2) at the front of a record: each one's trait id and
/// where its bytes (key, length and message) lie.
struct HistoryEntries<'a> {
    record: &'a [u8],
    at: usize,
}

impl Iterator for HistoryEntries<'_> {
    type Item = (u64, std::ops::Range<usize>);

    fn next(&mut self) -> Option<Self::Item> {
        const HISTORY_KEY: u8 = 2 << 3 | WireType::LengthDelimited as u8;
        const TRAIT_ID_KEY: u8 = 1 << 3 | WireType::Varint as u8;
        let start = self.at;
        let mut rest = self.record.get(start..)?;
        if rest.first() != Some(&HISTORY_KEY) {
            return None;
        }
        rest = &rest[1..];
        let len = usize::try_from(varint(&mut rest)?).ok()?;
        let message = rest.get(..len)?;
        let end = self.record.len() - rest.len() + len;
        let trait_id = match message.split_first() {
            Some((&TRAIT_ID_KEY, mut id)) => varint(&mut id)?,
            _ => 0,
        };
        self.at = end;
        Some((trait_id, start..end))
    }
}

/// Decodes `encoded` into `state` as `UserState::decode` would, keeping `state`'s allocations:
/// its trait histories and partner ids are refilled in place (prost's own decoding pushes a
/// new one for each), and its other vectors cleared, as prost clears them, not freed.
fn decode_into(state: &mut UserState, mut encoded: &[u8]) -> Result<(), DecodeError> {
    const TRAITS: u32 = 2;
    const PARTNER_IDS: u32 = 4;
    let mut traits = std::mem::take(&mut state.traits);
    let mut partner_ids = std::mem::take(&mut state.partner_ids);
    state.clear();
    let (mut trait_count, mut partner_count) = (0, 0);
    let mut fields = || {
        while !encoded.is_empty() {
            let ctx = DecodeContext::default();
            match decode_key(&mut encoded)? {
                (TRAITS, wire_type) => {
                    merge_into_slot(wire_type, &mut traits, &mut trait_count, &mut encoded, ctx)?;
                }
                (PARTNER_IDS, wire_type) => merge_into_slot(
                    wire_type,
                    &mut partner_ids,
                    &mut partner_count,
                    &mut encoded,
                    ctx,
                )?,
                (tag, wire_type) => state.merge_field(tag, wire_type, &mut encoded, ctx)?,
            }
        }
        Ok(())
    };
    let decoded = fields();
    traits.truncate(trait_count);
    partner_ids.truncate(partner_count);
    state.traits = traits;
    state.partner_ids = partner_ids;
    decoded
}

/// Decodes the next of a repeated message field into `slots[*used]`, cleared, or a new slot.
fn merge_into_slot<M: Message + Default>(
    wire_type: WireType,
    slots: &mut Vec<M>,
    used: &mut usize,
    encoded: &mut &[u8],
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    if *used == slots.len() {
        slots.push(M::default());
    }
    let slot = &mut slots[*used];
    slot.clear();
    prost::encoding::message::merge(wire_type, slot, encoded, ctx)?;
    *used += 1;
    Ok(())
}

/// `UserState`'s `opted_out` (field 7) and `definitions_fingerprint` (field 11), read by
/// walking the record's fields without decoding the rest; proto3 leaves a field at its default
/// out.
fn scan_for_staleness(mut bytes: &[u8]) -> (bool, u64) {
    const OPTED_OUT: u64 = 7;
    const DEFINITIONS_FINGERPRINT: u64 = 11;
    let (mut opted_out, mut fingerprint) = (false, 0);
    while let Some(key) = varint(&mut bytes) {
        let (field, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => {
                let Some(value) = varint(&mut bytes) else {
                    break;
                };
                match field {
                    OPTED_OUT => opted_out = value != 0,
                    DEFINITIONS_FINGERPRINT => fingerprint = value,
                    _ => {}
                }
                0
            }
            1 => 8,
            2 => match varint(&mut bytes) {
                Some(len) => usize::try_from(len).unwrap_or(usize::MAX),
                None => break,
            },
            5 => 4,
            _ => break,
        };
        let Some(rest) = bytes.get(skip..) else {
            break;
        };
        bytes = rest;
    }
    (opted_out, fingerprint)
}

/// Reads a protobuf varint off the front of `bytes`.
fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut value = 0_u64;
    for (i, &byte) in bytes.iter().enumerate().take(10) {
        value |= u64::from(byte & 0x7f) << (7 * i);
        if byte < 0x80 {
            *bytes = &bytes[i + 1..];
            return Some(value);
        }
    }
    None
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

    /// A user with every kind of field set, the two the sweep reads after the others.
    fn full(id: &str, opted_out: bool, fingerprint: u64) -> UserState {
        UserState {
            user_id: id.to_owned(),
            traits: vec![model::pb::TraitHistory {
                trait_id: 300,
                times_unix_ms: vec![1_700_000_000_000, -5],
            }],
            regions: vec![1, 200_000],
            partner_ids: vec![model::PartnerIds {
                data_partner_id: 9,
                partner_uuids: vec!["p".repeat(200)],
            }],
            memberships: vec![model::pb::Membership {
                segment_id: u64::MAX,
                since_unix_ms: 1,
                refreshed_unix_ms: 2,
            }],
            last_seen_unix_ms: i64::MAX,
            opted_out,
            opted_out_unix_ms: -1,
            last_sequence: 1 << 40,
            last_change_unix_ms: 7,
            definitions_fingerprint: fingerprint,
        }
    }

    #[test]
    fn a_stored_user_is_their_changelog_record_and_comes_back_whole() {
        let mut store = PartitionStore::default();
        let state = full("a", false, 0xfeed_beef_dead_cafe);
        let record = |store: &PartitionStore| {
            let mut record = Vec::new();
            store.write_record("a", &mut record).then_some(record)
        };
        // Put back in a transaction, taken again, settled at its end; and as a restore puts.
        store.put(state.clone(), Some(5));
        assert_eq!(record(&store), Some(state.encode_to_vec()));
        assert_eq!(store.take("a"), Some((state.clone(), Some(5))));
        store.put(state.clone(), Some(5));
        store.settle();
        assert!(store.unsettled.is_empty());
        assert_eq!(record(&store), Some(state.encode_to_vec()));
        // Kept decoded through the next transaction, then only encoded, the decoded state kept
        // spare and decoded into when the user is taken again.
        assert!(store.warm.contains_key("a"));
        store.settle();
        assert!(store.warm.is_empty());
        assert_eq!(store.spare.len(), 1);
        assert_eq!(record(&store), Some(state.encode_to_vec()));
        assert_eq!(store.take("a"), Some((state.clone(), Some(5))));
        assert!(store.spare.is_empty());
        assert_eq!(record(&store), None);
        store.put_encoded(state.clone(), Some(5));
        assert_eq!(record(&store), Some(state.encode_to_vec()));
        assert_eq!(store.take("a"), Some((state, Some(5))));
        assert_eq!(store.due_count(i64::MAX), 0);
    }

    /// A user with more of everything than [`full`]: longer histories, more traits, partner ids
    /// and memberships.
    fn bigger(id: &str) -> UserState {
        let mut state = full(id, false, 4);
        state.traits = (1..=4)
            .map(|trait_id| model::pb::TraitHistory {
                trait_id,
                times_unix_ms: (0..20 * trait_id as i64).collect(),
            })
            .collect();
        state.partner_ids.push(model::PartnerIds {
            data_partner_id: 10,
            partner_uuids: vec!["q".into(), "r".into()],
        });
        state.memberships.extend(state.memberships.clone());
        state.regions.push(300_000);
        state
    }

    /// A user of five histories (trait ids 10–50), every other field set.
    fn five_histories() -> UserState {
        UserState {
            traits: (1..=5)
                .map(|t| model::pb::TraitHistory {
                    trait_id: t * 10,
                    times_unix_ms: vec![t as i64, 1_700_000_000_000 + t as i64],
                })
                .collect(),
            ..full("", false, 1)
        }
    }

    fn history(trait_id: u64, times: &[i64]) -> model::pb::TraitHistory {
        model::pb::TraitHistory {
            trait_id,
            times_unix_ms: times.to_vec(),
        }
    }

    #[test]
    fn a_record_spliced_from_the_one_taken_is_the_state_encoded_whole() {
        let before = five_histories();
        let record: Box<[u8]> = before.encode_to_vec().into();
        type Change = fn(&mut UserState);
        let cases: [(&[u64], Change); 8] = [
            (&[30], |s| s.traits[2].times_unix_ms.push(1_800_000_000_000)),
            (&[10], |s| drop(s.traits.remove(0))),
            (&[50], |s| drop(s.traits.pop())),
            (&[25], |s| s.traits.insert(2, history(25, &[7]))),
            (&[0, 60], |s| {
                s.traits.insert(0, history(0, &[]));
                s.traits.push(history(60, &[-1]));
            }),
            (&[20, 40], |s| {
                s.traits[1].times_unix_ms.clear();
                s.traits[3].times_unix_ms = vec![i64::MIN];
            }),
            (&[], |s| {
                s.last_seen_unix_ms -= 1;
                s.memberships.clear();
                s.user_id = "u".into();
            }),
            (&[10, 20, 30, 40, 50], |s| s.traits.clear()),
        ];
        for (changed, change) in cases {
            let mut after = before.clone();
            change(&mut after);
            let base = Base {
                record: record.clone(),
                changed: changed.to_vec(),
            };
            let mut spliced = Vec::new();
            assert_eq!(base.splice(&after, &mut spliced), Some(()), "{changed:?}");
            assert_eq!(spliced, after.encode_to_vec(), "{changed:?}");
        }
        // A history changed but not said to be: its old bytes are copied. So the step's word
        // must be right (`evaluate`'s tests check it is).
        let mut after = before.clone();
        after.traits[2].times_unix_ms.push(1);
        let base = Base {
            record: record.clone(),
            changed: vec![40],
        };
        let mut spliced = Vec::new();
        assert_eq!(base.splice(&after, &mut spliced), Some(()));
        assert_ne!(spliced, after.encode_to_vec());
        // One gone but not said to be: no splice.
        after = before.clone();
        after.traits.remove(1);
        assert_eq!(base.splice(&after, &mut Vec::new()), None);
    }

    #[test]
    fn what_changed_is_gathered_in_order_and_too_much_is_encoding_the_user_whole() {
        let mut base = Some(Base::new(Box::default()));
        for trait_id in (1..=MAX_CHANGED_HISTORIES as u64).rev() {
            base = base.and_then(|b| b.changed(Histories::One(trait_id)));
            base = base.and_then(|b| b.changed(Histories::One(trait_id)));
            base = base.and_then(|b| b.changed(Histories::Untouched));
        }
        let base = base.expect("as many as may be changed, each twice");
        assert!(base.changed.is_sorted());
        assert_eq!(base.changed.len(), MAX_CHANGED_HISTORIES);
        assert!(base.changed(Histories::One(1_000)).is_none());
        assert!(Base::new(Box::default()).changed(Histories::Any).is_none());
    }

    #[test]
    fn a_user_put_back_with_what_changed_is_encoded_from_their_record() {
        let mut store = PartitionStore::default();
        store.put(
            UserState {
                user_id: "u".into(),
                ..five_histories()
            },
            Some(9),
        );
        store.settle();
        // Two events in one transaction, each changing one history; then one in the next,
        // the user still decoded; then one after they were let go (decoded again).
        for (round, trait_id) in [(0, 30), (0, 35), (1, 10), (3, 50)] {
            for _ in 0..round {
                store.settle();
            }
            let (mut state, due) = store.take("u").unwrap();
            // As an event adds a realization: to its trait's history, a new one in id order.
            match state.traits.binary_search_by_key(&trait_id, |h| h.trait_id) {
                Ok(i) => state.traits[i].times_unix_ms.push(round),
                Err(i) => state.traits.insert(i, history(trait_id, &[round])),
            }
            store.put_changed(state.clone(), due, Histories::One(trait_id));
            assert!(
                store.unsettled["u"].1.is_some(),
                "spliced from the record taken"
            );
            if round > 0 || trait_id == 35 {
                store.settle();
                let mut record = Vec::new();
                assert!(store.write_record("u", &mut record));
                assert_eq!(record, state.encode_to_vec());
            }
        }
        // Any history may have changed: encoded whole.
        let (state, due) = store.take("u").unwrap();
        store.put_changed(state, due, Histories::Any);
        assert!(store.unsettled["u"].1.is_none());
        // Taken and not put back (forgotten): its record is not kept past the transaction.
        store.settle();
        store.take("u").unwrap();
        assert_eq!(store.taken.len(), 1);
        store.settle();
        assert!(store.taken.is_empty());
    }

    #[test]
    fn spares_are_kept_up_to_their_number_and_only_of_ordinary_size() {
        let with_traits = |id: &str, count: u64| UserState {
            traits: (1..=count)
                .map(|trait_id| model::pb::TraitHistory {
                    trait_id,
                    times_unix_ms: vec![1],
                })
                .collect(),
            ..user(id)
        };
        let mut store = PartitionStore::default();
        store.put(with_traits("ordinary", SPARE_TRAITS as u64), None);
        store.put(with_traits("heavy", SPARE_TRAITS as u64 + 1), None);
        store.settle();
        store.settle();
        assert_eq!(store.spare.len(), 1);
        assert_eq!(store.spare[0].traits.len(), SPARE_TRAITS);
        for i in 0..SPARE_STATES + 10 {
            store.put(user(&i.to_string()), None);
        }
        store.settle();
        store.settle();
        assert_eq!(store.spare.len(), SPARE_STATES);
    }

    #[test]
    fn a_state_decoded_into_a_spare_is_the_state_prost_decodes() {
        let shapes = [
            UserState::default(),
            user("plain"),
            full("u", false, 1),
            full("o", true, 2),
            bigger("b"),
        ];
        for spare in &shapes {
            for wanted in &shapes {
                let encoded = wanted.encode_to_vec();
                let mut state = spare.clone();
                decode_into(&mut state, &encoded).unwrap();
                assert_eq!(&state, wanted, "decoded into a spare {spare:?}");
                // Cut short: an error or what was read before the cut, as prost; no panic.
                for end in 0..encoded.len() {
                    let mut state = spare.clone();
                    let cut = &encoded[..end];
                    match (decode_into(&mut state, cut), UserState::decode(cut)) {
                        (Ok(()), Ok(decoded)) => assert_eq!(state, decoded),
                        (Err(_), Err(_)) => {}
                        (ours, prost) => panic!("cut at {end}: {ours:?} against {prost:?}"),
                    }
                }
            }
        }
    }

    #[test]
    fn staleness_is_read_from_the_record_as_decoding_it_would() {
        for (opted_out, fingerprint) in [(false, 0), (false, 1), (true, 1), (false, u64::MAX)] {
            let encoded = full("u", opted_out, fingerprint).encode_to_vec();
            assert_eq!(scan_for_staleness(&encoded), (opted_out, fingerprint));
            // From the decoded state before the transaction settles, then off the record.
            let mut store = PartitionStore::default();
            store.put(full("u", opted_out, fingerprint), None);
            for _ in 0..2 {
                store.mark_stale(fingerprint);
                assert_eq!(store.stale_count(), 0);
                store.mark_stale(fingerprint ^ 1);
                assert_eq!(store.stale_count(), usize::from(!opted_out));
                store.settle();
            }
            assert!(store.unsettled.is_empty());
        }
        // Cut short or garbled: whatever was read before the damage, no panic.
        let encoded = full("u", true, 3).encode_to_vec();
        for end in 0..encoded.len() {
            scan_for_staleness(&encoded[..end]);
        }
        assert_eq!(scan_for_staleness(&[0xff; 12]), (false, 0));
    }

    #[test]
    fn a_user_put_again_without_a_take_keeps_one_timer() {
        let mut store = PartitionStore::default();
        store.put(user("a"), Some(10));
        store.put(user("a"), Some(20));
        assert_eq!(store.due_count(15), 0);
        assert_eq!(store.due(20, 10).collect::<Vec<_>>(), ["a"]);
        store.put(user("a"), None);
        assert_eq!(store.due_count(i64::MAX), 0);
        store.remove("a");
        assert!(store.is_empty());
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
        assert_eq!(swept, [Arc::from("old-1")]);
        assert_eq!(store.stale_count(), 0);
    }
}
