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

use std::collections::{BTreeSet, HashMap, hash_map};
use std::sync::Arc;

use model::UserState;
use prost::encoding::{DecodeContext, WireType, decode_key, encode_key, encode_varint};
use prost::{DecodeError, Message};

/// At most this many decoded states let go are kept per partition for their allocations
/// ([`PartitionStore::spare`]), each of at most [`SPARE_TRAITS`] trait histories: what the
/// spares hold stays under ~1 MB per partition. A Zipf-heavy user's state, thousands of
/// histories, is not kept: such a user is nearly always still decoded when taken again.
const SPARE_STATES: usize = 256;
const SPARE_TRAITS: usize = 64;

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
    /// Users put back in the open transaction, decoded (see [`Self::settle`]).
    unsettled: HashMap<Arc<str>, UserState, foldhash::fast::RandomState>,
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
        let entry = self.remove_entry(user_id)?;
        if let Some(state) = self.forget_decoded(user_id) {
            return Some((state, entry.due));
        }
        let mut state = self.spare.pop().unwrap_or_default();
        // The store holds only what `encode` wrote from a `UserState`: prost's encoding, read
        // back (tested below), so this cannot fail on any input.
        decode_into(&mut state, &entry.state).expect("the store decodes the states it encoded");
        user_id.clone_into(&mut state.user_id);
        Some((state, entry.due))
    }

    /// Forgets a user (a changelog tombstone).
    pub fn remove(&mut self, user_id: &str) {
        self.remove_entry(user_id);
        self.forget_decoded(user_id);
    }

    /// Drops the user's decoded state (the open transaction's, else the one before's).
    fn forget_decoded(&mut self, user_id: &str) -> Option<UserState> {
        let unsettled = self.unsettled.remove(user_id);
        let warm = self.warm.remove(user_id);
        unsettled.or(warm)
    }

    fn remove_entry(&mut self, user_id: &str) -> Option<Entry> {
        let (user_id, entry) = self.users.remove_entry(user_id)?;
        if let Some(due) = entry.due {
            self.timers.remove(&(due, user_id));
        }
        Some(entry)
    }

    /// Writes a user's changelog record into `buf` (the bytes prost writes for their state);
    /// `false` for a user the store does not hold.
    pub fn write_record(&self, user_id: &str, buf: &mut Vec<u8>) -> bool {
        let Some(entry) = self.users.get(user_id) else {
            return false;
        };
        if let Some(state) = self.unsettled.get(user_id) {
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
    /// timer), decoded until [`Self::settle`].
    pub fn put(&mut self, state: UserState, due: Option<i64>) {
        let user_id = self.insert(&state.user_id, Box::default(), due);
        self.unsettled.insert(user_id, state);
    }

    /// Stores a user encoded at once (a restore: holding every user decoded until the end would
    /// take several times the memory).
    pub fn put_encoded(&mut self, mut state: UserState, due: Option<i64>) {
        let user_id = std::mem::take(&mut state.user_id);
        let encoded = self.encode(&state);
        self.forget_decoded(&user_id);
        self.insert(&user_id, encoded, due);
    }

    /// Encodes the users put back since the last call (at the end of each transaction), and
    /// keeps them decoded until the next call; those of the call before are let go, some kept
    /// as spares to decode other users into.
    pub fn settle(&mut self) {
        let mut unsettled = std::mem::take(&mut self.unsettled);
        let room = SPARE_STATES - self.spare.len();
        self.spare.extend(
            self.warm
                .drain()
                .map(|(_, state)| state)
                .filter(|state| state.traits.len() <= SPARE_TRAITS)
                .take(room),
        );
        for (user_id, mut state) in unsettled.drain() {
            let id = std::mem::take(&mut state.user_id);
            let encoded = self.encode(&state);
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
    /// key holds it).
    fn encode(&mut self, state: &UserState) -> Box<[u8]> {
        self.buffer.clear();
        state.encode_raw(&mut self.buffer);
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
            Some(state) => (state.opted_out, state.definitions_fingerprint),
            None => scan_for_staleness(&entry.state),
        };
        !opted_out && evaluated_under != fingerprint
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
