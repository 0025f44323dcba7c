//! A stored user's record (their changelog record less the user id): decoded into a spare
//! state, spliced from the record a user was taken from, and read for staleness without
//! decoding.

use std::ops::Range;

use model::UserState;
use model::pb::TraitHistory;
use prost::encoding::{DecodeContext, WireType, decode_key, decode_varint, message, string};
use prost::{DecodeError, Message};

use super::MAX_CHANGED_HISTORIES;
use crate::evaluate::Histories;

/// The record a user was taken from, and which of their trait histories changed since.
#[derive(Debug)]
pub(super) struct Base {
    /// The record, from `start` on, in the allocation it was held in (an `Entry`'s): not copied.
    bytes: Box<[u8]>,
    start: usize,
    /// Where the record's history entries lie ([`Index`]), or empty: a splice then walks the
    /// record for them.
    pub(super) index: Vec<usize>,
    /// The trait ids whose histories changed, ascending, at most [`MAX_CHANGED_HISTORIES`].
    pub(super) changed: Vec<u64>,
    /// Any history may have changed, or too many did: nothing is spliced from the record,
    /// kept only for the trait parts it names (`store/parts.rs`).
    pub(super) any: bool,
}

/// Where the entries of a record [`Base::splice`] did not have indexed lie, and where those of
/// the one it writes do: kept by the store, so that a splice allocates nothing.
#[derive(Debug, Default)]
pub(super) struct Indexes {
    pub(super) taken: Vec<usize>,
    pub(super) written: Vec<usize>,
}

impl Base {
    /// The record in `bytes` from `start` on; `index`: where its entries lie, or empty.
    pub(super) fn within(bytes: Box<[u8]>, start: usize, index: Vec<usize>) -> Self {
        Self {
            bytes,
            start,
            index,
            changed: Vec::new(),
            any: false,
        }
    }

    pub(super) fn record(&self) -> &[u8] {
        &self.bytes[self.start..]
    }

    /// With `histories` changed too; `None` when the record is of no more use: any history
    /// may have changed, or too many did, and it is not to be `kept` for its trait parts.
    pub(super) fn with_changed(mut self, histories: Histories, kept: bool) -> Option<Self> {
        let any = match histories {
            Histories::Any => true,
            Histories::Untouched => false,
            Histories::One(trait_id) => match self.changed.binary_search(&trait_id) {
                Ok(_) => false,
                Err(_) if self.changed.len() == MAX_CHANGED_HISTORIES => true,
                Err(at) => {
                    self.changed.insert(at, trait_id);
                    false
                }
            },
        };
        if any || self.any {
            self.any = true;
            self.changed = Vec::new();
            return kept.then_some(self);
        }
        Some(self)
    }

    /// Writes `state` as prost's `encode_raw` would: the histories of unchanged traits copied
    /// from the record (field 2 comes first in it, a history per entry, in trait id order),
    /// the changed ones and every other field encoded; `indexes.written`, where the histories
    /// written lie (after the user id's field, if any). `None` when the record's histories
    /// are not as many as the state's but for the changed ones (what is written is then of no
    /// use).
    ///
    /// The changed histories' entries are found by a binary search of the record's index, and
    /// the entries between them copied whole: a busy user's thousands of entries are not
    /// walked again at each splice (22 % of the qualifier's CPU at 30,000 events/s, when they
    /// were).
    pub(super) fn splice(
        &self,
        state: &mut UserState,
        buf: &mut Vec<u8>,
        indexes: &mut Indexes,
    ) -> Option<()> {
        if self.any {
            return None;
        }
        let starts = match self.index.is_empty() {
            true => {
                index_entries(self.record(), &mut indexes.taken);
                &indexes.taken
            }
            false => &self.index,
        };
        let taken = Index::of(self.record(), starts);
        let written = &mut indexes.written;
        encode_with(state, buf, |traits, buf| {
            self.write_histories(taken, traits, buf, written)
        })
    }

    /// `traits` as `UserState`'s field 2: the unchanged ones' entries copied from the record
    /// (`taken`), the changed ones encoded; `written`, where they lie. `None` as for
    /// [`Self::splice`].
    fn write_histories(
        &self,
        taken: Index<'_>,
        traits: &[TraitHistory],
        buf: &mut Vec<u8>,
        written: &mut Vec<usize>,
    ) -> Option<()> {
        let at = buf.len();
        written.clear();
        // Exactly: a kept index's allocation counts against the warm budget.
        written.reserve_exact(taken.len() + self.changed.len() + 1);
        // Copies the taken entries `from..to`, and where they now lie.
        let copy = |from: usize, to: usize, buf: &mut Vec<u8>, written: &mut Vec<usize>| {
            let (start, end) = (taken.starts[from], taken.starts[to]);
            let moved = buf.len() - at;
            written.extend(taken.starts[from..to].iter().map(|s| s - start + moved));
            buf.extend_from_slice(&taken.record[start..end]);
        };
        // The first taken entry not yet copied or passed over.
        let mut next = 0;
        for &trait_id in &self.changed {
            let found = taken.find(trait_id);
            let entry = found.unwrap_or_else(|i| i);
            copy(next, entry, buf, written);
            next = entry + usize::from(found.is_ok());
            if let Ok(i) = traits.binary_search_by_key(&trait_id, |h| h.trait_id) {
                written.push(buf.len() - at);
                message::encode(2, &traits[i], buf);
            }
        }
        copy(next, taken.len(), buf, written);
        written.push(buf.len() - at);
        // A history gone or added but not said to be leaves the count wrong.
        (written.len() - 1 == traits.len()).then_some(())
    }
}

/// Where a record's trait history entries lie: `starts[i]` is where the `i`th begins, and
/// the last of `starts` where the histories end (the record's other fields begin).
#[derive(Debug, Clone, Copy)]
pub(super) struct Index<'a> {
    record: &'a [u8],
    starts: &'a [usize],
}

impl<'a> Index<'a> {
    /// `starts` as [`index_entries`] built it from `record`.
    pub(super) fn of(record: &'a [u8], starts: &'a [usize]) -> Self {
        debug_assert!(
            !starts.is_empty(),
            "an index holds at least where the histories end"
        );
        Self { record, starts }
    }

    /// How many entries there are.
    pub(super) fn len(self) -> usize {
        self.starts.len() - 1
    }

    /// The record indexed.
    pub(super) fn record(self) -> &'a [u8] {
        self.record
    }

    /// Where the histories end.
    pub(super) fn end(self) -> usize {
        self.starts[self.len()]
    }

    /// Where the `i`th entry lies.
    pub(super) fn entry(self, i: usize) -> Range<usize> {
        self.starts[i]..self.starts[i + 1]
    }

    /// The trait id of the entry starting at `start`.
    fn trait_id_at(self, start: usize) -> u64 {
        let mut entries = HistoryEntries {
            record: self.record,
            at: start,
        };
        entries.next().map_or(0, |(trait_id, _)| trait_id)
    }

    /// The entry of `trait_id`, or where it would be (the entries are in trait id order).
    pub(super) fn find(self, trait_id: u64) -> Result<usize, usize> {
        self.starts[..self.len()].binary_search_by(|&start| self.trait_id_at(start).cmp(&trait_id))
    }

    /// Each entry's trait id and where it lies, in order.
    pub(super) fn iter(self) -> impl Iterator<Item = (u64, Range<usize>)> + 'a {
        (0..self.len()).map(move |i| (self.trait_id_at(self.starts[i]), self.entry(i)))
    }
}

/// Fills `starts` with where the trait history entries at the front of `record` lie ([`Index`]).
pub(super) fn index_entries(record: &[u8], starts: &mut Vec<usize>) {
    starts.clear();
    let mut end = 0;
    for (_, entry) in HistoryEntries::of(record) {
        starts.push(entry.start);
        end = entry.end;
    }
    starts.push(end);
}

/// Writes `state` as prost's `encode_raw` would, and where its histories lie in `written`
/// ([`Index`], after the user id's field, if any): the index a walk of the record would build,
/// without the walk (which added a quarter to a whole encoding of a user of a thousand
/// histories in the criterion bench).
pub(super) fn encode_indexed(state: &mut UserState, buf: &mut Vec<u8>, written: &mut Vec<usize>) {
    let encoded = encode_with(state, buf, |traits, buf| {
        let at = buf.len();
        written.clear();
        written.reserve_exact(traits.len() + 1);
        for history in traits {
            written.push(buf.len() - at);
            message::encode(2, history, buf);
        }
        written.push(buf.len() - at);
        Some(())
    });
    debug_assert!(encoded.is_some());
}

/// Writes `state` as prost's `encode_raw` would, its histories (field 2) by `histories`:
/// prost writes fields in number order, so the user id's comes before them and every other
/// field after. `None` when `histories` writes none.
fn encode_with(
    state: &mut UserState,
    buf: &mut Vec<u8>,
    histories: impl FnOnce(&[TraitHistory], &mut Vec<u8>) -> Option<()>,
) -> Option<()> {
    if !state.user_id.is_empty() {
        string::encode(1, &state.user_id, buf);
    }
    histories(&state.traits, buf)?;
    // Every other field as prost writes it: the state without the id and histories
    // written above (taking them out and back moves no bytes).
    let user_id = std::mem::take(&mut state.user_id);
    let traits = std::mem::take(&mut state.traits);
    state.encode_raw(buf);
    state.user_id = user_id;
    state.traits = traits;
    Some(())
}

/// The trait history entries (field 2) at the front of a record: each one's trait id and
/// where its bytes (key, length and message) lie.
pub(super) struct HistoryEntries<'a> {
    record: &'a [u8],
    at: usize,
}

impl<'a> HistoryEntries<'a> {
    /// The entries of `record` (less the user id, or after it).
    pub(super) fn of(record: &'a [u8]) -> Self {
        Self { record, at: 0 }
    }
}

impl Iterator for HistoryEntries<'_> {
    type Item = (u64, Range<usize>);

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
pub(super) fn decode_into(state: &mut UserState, mut encoded: &[u8]) -> Result<(), DecodeError> {
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
                    let (slots, used) = (&mut traits, &mut trait_count);
                    merge_into_slot(slots, used, &mut encoded, |slot, encoded| {
                        merge_history(slot, wire_type, encoded, ctx)
                    })?;
                }
                (PARTNER_IDS, wire_type) => {
                    let (slots, used) = (&mut partner_ids, &mut partner_count);
                    merge_into_slot(slots, used, &mut encoded, |slot, encoded| {
                        message::merge(wire_type, slot, encoded, ctx)
                    })?;
                }
                (tag, wire_type) => state.merge_field(tag, wire_type, &mut encoded, ctx)?,
            }
        }
        Ok(())
    };
    let decoded = fields();
    traits.truncate(trait_count);
    partner_ids.truncate(partner_count);
    // A spare that held a busy user's state keeps what a smaller one needs: kept decoded, its
    // state would take far more than its record says (`store/warm.rs` counts the record).
    shrink_oversized(&mut traits, 16);
    state.traits = traits;
    state.partner_ids = partner_ids;
    decoded
}

/// Decodes the next of a repeated message field into `slots[*used]`, cleared, or a new slot,
/// by `merge`.
fn merge_into_slot<M: Message + Default>(
    slots: &mut Vec<M>,
    used: &mut usize,
    encoded: &mut &[u8],
    merge: impl FnOnce(&mut M, &mut &[u8]) -> Result<(), DecodeError>,
) -> Result<(), DecodeError> {
    if *used == slots.len() {
        slots.push(M::default());
    }
    let slot = &mut slots[*used];
    slot.clear();
    merge(slot, encoded)?;
    *used += 1;
    Ok(())
}

/// Merges a `TraitHistory` message off the front of `encoded` into `history`, as prost's
/// `message::merge` would, but for its packed times: their vector is grown once, to their
/// count, where prost grows it as it pushes them (to 4, 8, 16...: 7 % of the criterion bench
/// of a stored user of 20 histories with 1 to 15 times each, taken, put back and settled).
fn merge_history(
    history: &mut TraitHistory,
    wire_type: WireType,
    encoded: &mut &[u8],
    ctx: DecodeContext,
) -> Result<(), DecodeError> {
    const TIMES: u32 = 2;
    // Where a length runs past the bytes, prost's own merge from there says so.
    let mut at = *encoded;
    prost::encoding::check_wire_type(WireType::LengthDelimited, wire_type)?;
    let len = usize::try_from(decode_varint(&mut at)?).unwrap_or(usize::MAX);
    let Some((mut fields, rest)) = at.split_at_checked(len) else {
        return message::merge(wire_type, history, encoded, ctx);
    };
    *encoded = rest;
    while !fields.is_empty() {
        match decode_key(&mut fields)? {
            (TIMES, WireType::LengthDelimited) => {
                let mut at = fields;
                let len = usize::try_from(decode_varint(&mut at)?).unwrap_or(usize::MAX);
                let Some((mut packed, rest)) = at.split_at_checked(len) else {
                    let wire_type = WireType::LengthDelimited;
                    return history.merge_field(TIMES, wire_type, &mut fields, ctx);
                };
                fields = rest;
                // A varint's last byte is the one under 0x80.
                let count = packed.iter().filter(|&&byte| byte < 0x80).count();
                history.times_unix_ms.reserve(count);
                while !packed.is_empty() {
                    // As prost reads an int64: the varint's bits.
                    history
                        .times_unix_ms
                        .push(decode_varint(&mut packed)? as i64);
                }
            }
            (tag, wire_type) => history.merge_field(tag, wire_type, &mut fields, ctx.clone())?,
        }
    }
    // As for the state's histories (`decode_into`): a slot keeps what this history needs.
    shrink_oversized(&mut history.times_unix_ms, 4);
    Ok(())
}

/// Gives back what `vec` holds past twice its length and `slack`: a state kept decoded is
/// counted by its record, and a vector handed down from a bigger user would take far more.
pub(super) fn shrink_oversized<T>(vec: &mut Vec<T>, slack: usize) {
    if vec.capacity() > 2 * vec.len() + slack {
        vec.shrink_to_fit();
    }
}

/// `UserState`'s `opted_out` (field 7) and `definitions_fingerprint` (field 11), read without
/// decoding the record ([`scan_flag_and_number`]).
pub(super) fn scan_for_staleness(bytes: &[u8]) -> (bool, u64) {
    const OPTED_OUT: u64 = 7;
    const DEFINITIONS_FINGERPRINT: u64 = 11;
    scan_flag_and_number(bytes, OPTED_OUT, DEFINITIONS_FINGERPRINT)
}

/// `UserState`'s `traits_apart` (field 12) and `traits_generation` (field 13), read without
/// decoding the record ([`scan_flag_and_number`]).
pub(super) fn scan_apart(bytes: &[u8]) -> (bool, u64) {
    const TRAITS_APART: u64 = 12;
    const TRAITS_GENERATION: u64 = 13;
    scan_flag_and_number(bytes, TRAITS_APART, TRAITS_GENERATION)
}

/// A record's bool field `flag` and integer field `number`, read by walking its fields without
/// decoding the rest; proto3 leaves a field at its default (false, 0) out.
fn scan_flag_and_number(bytes: &[u8], flag: u64, number: u64) -> (bool, u64) {
    let (mut set, mut value) = (false, 0);
    scan_varints(bytes, |field, read| {
        if field == flag {
            set = read != 0;
        } else if field == number {
            value = read;
        }
    });
    (set, value)
}

/// The trait ids of a record's histories if it has `traits_apart` (the state was gathered from
/// trait parts, whose keys these are), else none.
pub(super) fn parted_trait_ids(record: &[u8]) -> impl Iterator<Item = u64> + '_ {
    let (apart, _) = scan_apart(record);
    HistoryEntries::of(if apart { record } else { &[] }).map(|(trait_id, _)| trait_id)
}

/// Hands `each` the field number and value of every varint field of a record, walking its
/// fields without decoding the rest; proto3 leaves a field at its default out.
fn scan_varints(mut bytes: &[u8], mut each: impl FnMut(u64, u64)) {
    while let Some(key) = varint(&mut bytes) {
        let (field, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => {
                let Some(value) = varint(&mut bytes) else {
                    break;
                };
                each(field, value);
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
}

/// Reads a protobuf varint off the front of `bytes` as prost's reader does (`None` where it
/// errs), those of one or two bytes without calling it: the lengths and trait ids a walk over a
/// busy user's history entries reads, two per entry, are nearly all that short, and the call
/// was ~7 % of a restore of Zipf-heavy users (docs/BENCHMARKS.md, "Restoring busy users by
/// splicing").
#[inline]
pub(super) fn varint(bytes: &mut &[u8]) -> Option<u64> {
    let read: &[u8] = bytes;
    match *read {
        [first, ref rest @ ..] if first < 0x80 => {
            *bytes = rest;
            Some(u64::from(first))
        }
        [first, second, ref rest @ ..] if second < 0x80 => {
            *bytes = rest;
            Some(u64::from(first & 0x7f) | u64::from(second) << 7)
        }
        _ => decode_varint(bytes).ok(),
    }
}
