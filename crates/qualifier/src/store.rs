//! The embedded state store: the users of each owned input partition, in memory, with a timer
//! index of when each must be evaluated again. Its durable copy is the compacted changelog
//! topic (one partition per input partition), from which a partition is restored when this
//! process gains it.
//!
//! Each user is kept encoded, as the bytes of their changelog record, their id first, in one
//! allocation (with their histories in, also for a user whose histories the changelog holds in
//! trait parts: `store/parts.rs`), and decoded while an event or timer of theirs is evaluated: a
//! decoded [`UserState`] holds every trait history, membership and its user id in allocations
//! of their own, several times the record's size. No other table shares the id in the record's
//! allocation: where one needs an id it has its own (a decoded state its `user_id`; the timer
//! index a copy for a timer due within the next ten minutes, `store/timers.rs`, the other
//! timers being only in the map; a user taken out a copy until put back: `store/users.rs`). A
//! user put back stays decoded until the transaction's end ([`PartitionStore::settle`]), so
//! that however many of their events it holds they are encoded once, and after it while their
//! record's bytes fit a budget (`store/warm.rs`), so that a busy user is not decoded again in
//! each transaction they are in (their record is tens of KB).
//!
//! A user not kept decoded has their record held compressed if it is long (`store/packed.rs`):
//! zstd, with a dictionary made of the partition's first records, about halves a Zipf-heavy
//! user's. A warm user's record stays as it is: it is the base their next record is spliced from.
//!
//! When the steps that changed a user say which trait histories they touched (an event's step
//! touches its own trait's only), the user's new record is spliced from the one they were
//! taken from: the other histories' bytes copied, only the touched ones encoded. A busy user's
//! record is then not encoded whole in every transaction they are in. Where a busy user's
//! history entries lie is kept with their decoded state (`store/record.rs`, `Index`), so the
//! touched entries are found by a binary search, not a walk over thousands.

use std::collections::HashSet;

use model::UserState;
use prost::Message as _;
use prost::encoding::string;

use crate::evaluate::Histories;

mod keyed;
mod owned;
mod packed;
mod parts;
mod record;
mod restored;
mod stale;
mod timers;
mod users;
mod warm;

use keyed::{ByOwnId, Keyed};
pub use owned::{LOOKED_UP_TOGETHER, Store};
use packed::Packer;
pub use parts::{APART_OVER, Layout};
use parts::{Encoded, PartWriter, Written};
use record::{Base, Indexes, decode_into, encode_indexed, index_entries, shrink_oversized};
pub use restored::decode_reusing;
use timers::{Due, Timers};
use users::{Entry, Users};
use warm::{INDEXED_OVER, Warm};

/// A user with more trait histories changed than this in one transaction is encoded whole.
///
/// It takes more than that many of their events in one transaction, so what either way costs
/// is bounded per event: the ids are kept in order, each inserted with a move of those after
/// it (at most 8 KB, ~4 KB on average), and a whole encoding is shared by over a thousand
/// events. With 16, the Zipf-heavy users (thousands of histories, records of tens of KB) were
/// encoded whole often enough at 40,000 events/s and above to cost the climb its top step
/// (docs/BENCHMARKS.md, "Busy users' changed histories tracked up to 1,024").
const MAX_CHANGED_HISTORIES: usize = 1024;

/// A user taken out of the store (see [`PartitionStore::taken`]).
#[derive(Debug)]
struct Taken {
    /// Their entry with only their id, due when the timer the index holds for them is: what
    /// goes back into the map when they are put back.
    entry: Entry,
    base: Option<Base>,
    /// Their state changed earlier in the open transaction (they were taken from
    /// [`PartitionStore::unsettled`]).
    changed: bool,
}

impl Keyed for Taken {
    fn id(&self) -> &[u8] {
        self.entry.id()
    }
}

/// A user put back in the open transaction (see [`PartitionStore::unsettled`]).
#[derive(Debug)]
struct Unsettled {
    state: UserState,
    /// The record they were taken from, if what changed since is known.
    base: Option<Base>,
    /// Their state changed in the transaction: [`PartitionStore::settle`] writes their
    /// changelog record.
    changed: bool,
}

impl Keyed for Unsettled {
    fn id(&self) -> &[u8] {
        self.state.user_id.as_bytes()
    }
}

/// The users of one input partition.
#[derive(Debug, Default)]
pub struct PartitionStore {
    /// By id, packed side by side (`store/users.rs`).
    users: Users,
    /// The timers due before the horizon ([`Timers`]); the others are only in `users`.
    timers: Timers,
    /// Users to re-evaluate under the definitions in force (see [`Self::mark_stale`]), each by
    /// their id's hash in `users`, taken from the end. 8 bytes per user while a sweep runs;
    /// empty otherwise.
    stale: Vec<u64>,
    /// Users put back in the open transaction, decoded (see [`Self::settle`]), by the id their
    /// states hold.
    unsettled: ByOwnId<Unsettled>,
    /// The users taken out and not yet put back: the record each was taken from when it can be
    /// of use, and when their timer is due. The id goes back into the map when the user is put
    /// back, and the timer stays in the index meanwhile: it moves only if the user is put back
    /// due at another time (a new event seldom moves the earliest expiry). A user taken and
    /// not put back is forgotten, timer and all, at [`Self::settle`], which writes their
    /// tombstone.
    taken: ByOwnId<Taken>,
    /// Users put back in earlier transactions and not taken since, decoded: their entry holds
    /// these states' bytes (see [`Self::settle`]); and states let go, to decode others into.
    warm: Warm,
    /// The bytes of the records decoded by takes since [`Self::decoded_bytes`].
    decoded: u64,
    /// Users the store did not hold whose step forgot them in the open transaction (an
    /// erasure of an unknown user): a tombstone each at [`Self::settle`].
    forgotten: Vec<Box<str>>,
    /// The records forgotten users were taken from, for the trait parts they name (see
    /// [`Self::forget`]).
    retired: Vec<(Box<str>, Base)>,
    /// Where states are encoded before they are copied into an allocation of their size.
    buffer: Vec<u8>,
    /// Where the history entries of the record [`Self::encode`] last wrote lie, and of one it
    /// spliced from that was not indexed.
    indexes: Indexes,
    /// Writes trait parts and their tombstones (see [`Self::settle`]).
    parts: PartWriter,
    /// Compresses the records of users not kept decoded (`store/packed.rs`).
    packer: Packer,
    /// The bytes of the records in `users`, as held (packed or not).
    held: usize,
    /// Users a restore stored without their timer, set at its end (`store/restored.rs`).
    undated: HashSet<Box<str>>,
    /// The trait parts a restore applies to a user's record (`store/restored.rs`), kept for
    /// its allocation.
    gathered: Vec<(u64, Option<model::pb::TraitHistory>)>,
}

impl PartitionStore {
    /// An empty store of input partition `partition` whose timer index holds only the timers
    /// due before the horizon from `now` (see `store/timers.rs`); `default()` indexes every
    /// timer until its first [`Self::advance_horizon`].
    pub fn at(now: i64, partition: i32) -> Self {
        let mut store = Self {
            timers: Timers::phased(partition),
            ..Self::default()
        };
        store.advance_horizon(now);
        store
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Takes a user out for an update, with their timer (put them back with
    /// [`PartitionStore::put`]).
    pub fn take(&mut self, user_id: &str) -> Option<(UserState, Option<i64>)> {
        let entry = self.users.remove(user_id)?;
        self.held -= entry.held().len();
        let due = entry.due;
        let (state, taken) = if let Some(unsettled) = self.unsettled.remove(user_id) {
            self.warm.take(user_id);
            // The entry holds only the id.
            let taken = Taken {
                entry,
                base: unsettled.base,
                changed: unsettled.changed,
            };
            (unsettled.state, taken)
        } else {
            let start = entry.held_start();
            let (state, base) = match self.warm.take(user_id) {
                // The entry holds the warm state's record, after the id.
                Some((state, index)) => (state, Base::within(entry.into_bytes(), start, index)),
                None => {
                    let (record, start) = self.packer.unpack(entry.into_bytes(), start);
                    let plain = &record[start..];
                    let mut state = self.warm.spare(plain.len());
                    self.decoded += plain.len() as u64;
                    // The store holds only what `encode` wrote from a `UserState`: prost's
                    // encoding, read back (tested below), so this cannot fail on any input.
                    decode_into(&mut state, plain)
                        .expect("the store decodes the states it encoded");
                    user_id.clone_into(&mut state.user_id);
                    (state, Base::within(record, start, Vec::new()))
                }
            };
            let taken = Taken {
                entry: Entry::id_only(user_id, due),
                base: Some(base),
                changed: false,
            };
            (state, taken)
        };
        self.taken.insert(taken);
        Some((state, due.get()))
    }

    /// Forgets a user (a changelog tombstone).
    pub fn remove(&mut self, user_id: &str) {
        if let Some(entry) = self.users.remove(user_id) {
            self.held -= entry.held().len();
            self.timers.remove(entry.due.get(), user_id);
        }
        self.forget_decoded(user_id);
    }

    /// Drops what the store holds of the user besides their entry: their decoded state (the
    /// open transaction's, the one before's) and, if they are taken, the record they were
    /// taken from and their timer.
    fn forget_decoded(&mut self, user_id: &str) {
        self.unsettled.remove(user_id);
        self.warm.take(user_id);
        if let Some(taken) = self.taken.remove(user_id) {
            self.timers.remove(taken.entry.due.get(), user_id);
        }
    }

    /// Puts a user back (after [`Self::take`]) with the time their timer is due (`None`: no
    /// timer), decoded until [`Self::settle`], any of their trait histories changed.
    pub fn put(&mut self, state: UserState, due: Option<i64>) {
        self.put_changed(state, due, Histories::Any, true);
    }

    /// [`Self::put`], saying which trait histories changed since [`Self::take`]: at
    /// [`Self::settle`] only those are encoded, the others' bytes copied from the record the
    /// user was taken from. `changed`: the state differs from the one taken, so
    /// [`Self::settle`] writes the user's changelog record.
    pub fn put_changed(
        &mut self,
        state: UserState,
        due: Option<i64>,
        histories: Histories,
        changed: bool,
    ) {
        // The record taken is kept for a user gathered from trait parts: it names the parts.
        let rebase = |base: Base| base.with_changed(histories, state.traits_apart);
        let (entry, base, timer, changed) = match self.taken.remove(&state.user_id) {
            Some(taken) => {
                let (timer, mut entry) = (taken.entry.due.get(), taken.entry);
                entry.due = Due::new(due);
                (
                    entry,
                    taken.base.and_then(rebase),
                    timer,
                    changed || taken.changed,
                )
            }
            None => {
                let entry = Entry::id_only(&state.user_id, Due::new(due));
                (entry, None, None, changed)
            }
        };
        self.insert(&state.user_id, entry, timer);
        self.unsettled.insert(Unsettled {
            state,
            base,
            changed,
        });
    }

    /// Writes a tombstone for a user forgotten by a step at [`Self::settle`] (a user taken and
    /// not put back gets one anyway; this is for one the store did not hold), and the
    /// tombstones of any trait parts of theirs, also if they come back in the transaction.
    pub fn forget(&mut self, user_id: &str) {
        match self.taken.get_mut(user_id) {
            Some(taken) => self
                .retired
                .extend(taken.base.take().map(|b| (user_id.into(), b))),
            None => self.forgotten.push(Box::from(user_id)),
        }
    }

    /// The bytes of the records decoded since the last call: users taken who were not kept
    /// decoded.
    pub fn decoded_bytes(&mut self) -> u64 {
        std::mem::take(&mut self.decoded)
    }

    /// The bytes of the users' records as the store holds them (packed or not:
    /// `store/packed.rs`).
    pub fn held_bytes(&self) -> usize {
        self.held
    }

    /// The bytes of the records of the users kept decoded between transactions.
    pub fn warm_bytes(&self) -> usize {
        self.warm.bytes()
    }

    /// Encodes the users put back since the last call (at the end of each transaction), and
    /// keeps them decoded; those of earlier calls stay decoded while their records take at most
    /// `warm_budget` bytes in all, the longest untaken let go first, some kept as spares to
    /// decode other users into. Hands `write` each changelog record the
    /// transaction makes: (key, record), `None` for a tombstone (a user forgotten), the
    /// tombstones first. It stops at `write`'s first error (the transaction then fails, and
    /// the store is restored from the changelog).
    ///
    /// `layout` says how a changed user's record is written: with their histories in, or
    /// for a busy user with them apart, in trait parts written before it (`store/parts.rs`).
    pub fn settle<E>(
        &mut self,
        layout: Layout,
        warm_budget: usize,
        mut write: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut unsettled = std::mem::take(&mut self.unsettled);
        for (user_id, base) in self.retired.drain(..) {
            self.parts.forgotten(&user_id, Some(&base), &mut write)?;
        }
        for taken in self.taken.drain() {
            let user_id = taken.entry.user_id();
            self.timers.remove(taken.entry.due.get(), user_id);
            self.parts
                .forgotten(user_id, taken.base.as_ref(), &mut write)?;
            write(user_id.as_bytes(), None)?;
        }
        for user_id in self.forgotten.drain(..) {
            write(user_id.as_bytes(), None)?;
        }
        for mut user in unsettled.drain() {
            let written = match user.changed {
                true => layout.write_as(&mut user.state, user.base.is_some()),
                false => Written::Unchanged,
            };
            let id = std::mem::take(&mut user.state.user_id);
            // The record: the id (field 1, which prost writes first), then the stored bytes.
            self.buffer.clear();
            if !id.is_empty() {
                string::encode(1, &id, &mut self.buffer);
            }
            let id_len = self.buffer.len();
            self.encode(&mut user.state, user.base.as_ref());
            user.state.user_id = id;
            if let Some(entry) = self.users.get_mut(&user.state.user_id) {
                self.held -= entry.held().len();
                entry.set_held(&self.buffer[id_len..]);
                self.held += entry.held().len();
                let (base, bytes) = (user.base.as_ref(), &self.buffer[..]);
                let index = &self.indexes.written;
                let record = Encoded {
                    bytes,
                    id_len,
                    index,
                };
                let user_id = &user.state.user_id;
                self.parts
                    .settled(user_id, &user.state, written, base, record, &mut write)?;
                // A busy user's index is kept with their state; the one their record had
                // takes its place, to be written next.
                let index = match index.len() > INDEXED_OVER + 1 {
                    true => {
                        let mut spare = user.base.map(|b| b.index).unwrap_or_default();
                        spare.clear();
                        let mut index = std::mem::replace(&mut self.indexes.written, spare);
                        // Counted by its allocation: not one a bigger user's record grew.
                        shrink_oversized(&mut index, 0);
                        index
                    }
                    false => Vec::new(),
                };
                let bytes = entry.held().len();
                self.warm.keep(user.state, bytes, index);
            }
        }
        self.end_warm_transaction(warm_budget);
        // Its allocation is reused by the next transaction.
        self.unsettled = unsettled;
        Ok(())
    }

    /// `state` encoded, appended to [`Self::buffer`] (its user id left empty: the entry holds
    /// it), from `base`, the record it was taken from, where it can be, else whole; where its
    /// history entries lie in `self.indexes.written`. The same bytes and index either way
    /// (checked in debug builds, by every test).
    fn encode(&mut self, state: &mut UserState, base: Option<&Base>) {
        let start = self.buffer.len();
        let indexes = &mut self.indexes;
        let spliced = base.and_then(|base| base.splice(state, &mut self.buffer, indexes));
        if spliced.is_none() {
            self.buffer.truncate(start);
            encode_indexed(state, &mut self.buffer, &mut self.indexes.written);
        }
        debug_assert_eq!(
            self.buffer[start..],
            state.encode_to_vec(),
            "the record spliced from the one taken differs from the state's"
        );
        debug_assert!(
            {
                let mut walked = Vec::new();
                index_entries(&self.buffer[start..], &mut walked);
                walked == self.indexes.written
            },
            "the spliced record's index is not where its histories lie"
        );
    }

    /// Stores the entry of user `user_id` and moves their timer to the entry's due (`timer`:
    /// when the timer the index holds for the user is due, if they were taken).
    fn insert(&mut self, user_id: &str, entry: Entry, timer: Option<i64>) {
        let due = entry.due.get();
        self.held += entry.held().len();
        // One probe of the map: a user is put back after a take, absent. Put again without a
        // take, the entry replaces theirs, and their timer moves from its due.
        let timer = match self.users.insert(entry) {
            Some(replaced) => {
                self.held -= replaced.held().len();
                replaced.due.get()
            }
            None => timer,
        };
        self.timers.moved(timer, due, user_id);
    }

    /// Users whose timer is due at `now`, earliest first, at most `limit` (called between
    /// transactions, after [`Self::advance_horizon`] at `now`: a user taken and not yet put
    /// back would be listed too).
    pub fn due(&self, now: i64, limit: usize) -> impl Iterator<Item = &str> {
        self.timers.due(now, limit)
    }

    pub fn due_count(&self, now: i64) -> usize {
        self.timers.due_count(now)
    }

    /// Keeps the timer index complete for the next five minutes at least from `now` (see
    /// `store/timers.rs`): every five minutes, a pass over the users.
    pub fn advance_horizon(&mut self, now: i64) {
        let Some(old) = self.timers.advance(now) else {
            return;
        };
        // A user's id is read only if their timer comes in.
        let stored = self.users.iter();
        let taken = self.taken.values().map(|taken| &taken.entry);
        for entry in stored.chain(taken) {
            let due = entry.due.get();
            if self.timers.comes_in(due, old) {
                self.timers.insert(due, entry.user_id());
            }
        }
    }
}

#[cfg(test)]
mod tests;
