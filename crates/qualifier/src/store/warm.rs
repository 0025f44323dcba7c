//! The users the store keeps decoded between transactions: those put back in the last one, and
//! those of earlier ones while their records' bytes (and a state's own size each) stay within a
//! budget, the longest untaken let go first.
//!
//! A user's state is decoded from their record when they are taken, and a busy user's record
//! is tens of KB. With only the last transaction's users kept, a user active every few
//! transactions (short ones: a transaction commits as soon as its input is drained) was
//! decoded afresh each time: after a climb had grown the busy users' histories, decoding took
//! over a third of the qualifier's CPU at half the rate (docs/BENCHMARKS.md). A decoded state
//! takes about four times its record's bytes.
//!
//! The states let go are kept as spares, some of them, for their allocations: a user decoded
//! into one refills its vectors instead of growing new ones, history by history, an element at
//! a time (a fifth of the processing loop at 20,000 events/s). A few busy users' states are
//! kept as spares of their own, for the busy users the budget has no room for: decoding one of
//! thousands of histories into a new state allocated a vector per history, 12 % of the
//! qualifier's CPU at 30,000 events/s after a climb.

use std::collections::VecDeque;

use model::UserState;

use super::keyed::{ByOwnId, Keyed};

/// At most this many decoded states let go are kept per partition as spares, each of at most
/// [`SPARE_TRAITS`] trait histories: what the spares hold stays under ~1 MB per partition. A
/// Zipf-heavy user's state, thousands of histories, is not kept: it would hold its allocations
/// for an ordinary user.
pub(super) const SPARE_STATES: usize = 256;
pub(super) const SPARE_TRAITS: usize = 64;

/// At most this many decoded states of busy users (records over [`BUSY_RECORD`] bytes, of at
/// most [`BUSY_SPARE_TRAITS`] trait histories) are kept per partition as spares for busy users:
/// ~3 MB at most (a decoded history takes ~80 B).
pub(super) const BUSY_SPARES: usize = 4;
pub(super) const BUSY_SPARE_TRAITS: usize = 8192;

/// A record longer than this is a busy user's: decoded into a busy user's spare, and their
/// state let go kept as one.
pub(super) const BUSY_RECORD: usize = 2048;

/// What a state kept counts besides its record's bytes and its index's: its own size.
pub(super) const KEPT_SIZE: usize = size_of::<Kept>();

/// A state's record is indexed ([`super::record::Index`]) while kept if it holds more than this
/// many histories: a walk over fewer is cheap, and an index is an allocation.
pub(super) const INDEXED_OVER: usize = 32;

/// A state kept decoded: where its record's history entries lie (for a busy user), what it
/// counts against the budget (its record's bytes, its index's, and its own size: an empty
/// record's state is not free) and the transaction it was put back in.
#[derive(Debug)]
struct Kept {
    state: UserState,
    index: Vec<usize>,
    bytes: usize,
    generation: u64,
}

impl Keyed for Kept {
    fn id(&self) -> &[u8] {
        self.state.user_id.as_bytes()
    }
}

impl Kept {
    /// Its record's length.
    fn record(&self) -> usize {
        self.bytes - KEPT_SIZE - index_bytes(&self.index)
    }
}

/// What an index kept counts: its allocation.
fn index_bytes(index: &Vec<usize>) -> usize {
    index.capacity() * size_of::<usize>()
}

#[derive(Debug, Default)]
pub(super) struct Warm {
    /// By the user id their states hold.
    kept: ByOwnId<Kept>,
    /// Users in the order they were put back, each by their id's hash in `kept` with its
    /// transaction: an entry whose user was taken since (and so is not kept, or kept from a
    /// later transaction) is stale and skipped. Two users of one hash kept from one transaction
    /// have an entry each, and either is let go for either.
    order: VecDeque<(u64, u64)>,
    /// What the states kept count in all.
    bytes: usize,
    /// The open transaction.
    generation: u64,
    spares: Vec<UserState>,
    busy_spares: Vec<UserState>,
}

impl Warm {
    /// The user's decoded state and their record's index (empty if not kept), if kept: it is
    /// theirs to change now, no longer kept.
    pub(super) fn take(&mut self, user_id: &str) -> Option<(UserState, Vec<usize>)> {
        let kept = self.kept.remove(user_id)?;
        self.bytes -= kept.bytes;
        Some((kept.state, kept.index))
    }

    /// The bytes the states kept count.
    pub(super) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Keeps a state put back in the open transaction, whose record is `record` bytes long,
    /// with where its history entries lie (`index`, empty for not known).
    pub(super) fn keep(&mut self, state: UserState, record: usize, index: Vec<usize>) {
        let (generation, bytes) = (self.generation, record + index_bytes(&index) + KEPT_SIZE);
        let hash = self.kept.hash(&state.user_id);
        self.order.push_back((hash, generation));
        self.bytes += bytes;
        let kept = Kept {
            state,
            index,
            bytes,
            generation,
        };
        if let Some(replaced) = self.kept.insert(kept) {
            self.bytes -= replaced.bytes;
        }
    }

    /// A state to decode a user whose record is `record` bytes long into: a spare (a busy
    /// user's for a long record), else a new one.
    pub(super) fn spare(&mut self, record: usize) -> UserState {
        let spares = match record > BUSY_RECORD {
            true => &mut self.busy_spares,
            false => &mut self.spares,
        };
        spares.pop().unwrap_or_default()
    }

    /// Keeps a state let go as a spare, if there is room for one of its kind and size.
    fn spare_away(&mut self, kept: Kept) {
        let record = kept.record();
        let histories = kept.state.traits.len();
        let (spares, room, most) = match record > BUSY_RECORD {
            true => (&mut self.busy_spares, BUSY_SPARES, BUSY_SPARE_TRAITS),
            false => (&mut self.spares, SPARE_STATES, SPARE_TRAITS),
        };
        if spares.len() < room && histories <= most {
            spares.push(kept.state);
        }
    }

    /// Ends the open transaction: lets go of the states of earlier ones, longest kept first,
    /// until what the states kept count is at most `budget` (the open transaction's are kept
    /// whatever their bytes), some kept as spares, and hands `let_go` each user let go, with
    /// their record's length.
    pub(super) fn end_transaction(&mut self, budget: usize, mut let_go: impl FnMut(&str, usize)) {
        while self.bytes > budget
            && self
                .order
                .front()
                .is_some_and(|(_, generation)| *generation < self.generation)
        {
            let (hash, generation) = self.order.pop_front().expect("just looked");
            let kept = self
                .kept
                .remove_hashed(hash, |k| k.generation == generation);
            if let Some(kept) = kept {
                self.bytes -= kept.bytes;
                let_go(&kept.state.user_id, kept.record());
                self.spare_away(kept);
            }
        }
        // The stale entries are at most as many as the puts since the last sweep: swept when
        // they outnumber the states kept, a put costs a constant share of one.
        if self.order.len() > 2 * self.kept.len() + 1024 {
            let kept = &self.kept;
            self.order.retain(|&(hash, generation)| {
                kept.find_hashed(hash, |k| k.generation == generation)
                    .is_some()
            });
        }
        self.generation += 1;
    }
}

impl Warm {
    /// Whether the user is kept (`user_id`: their id, or its bytes).
    pub(super) fn contains(&self, user_id: &(impl AsRef<[u8]> + ?Sized)) -> bool {
        self.kept.contains(user_id)
    }
}

#[cfg(test)]
impl Warm {
    pub(super) fn len(&self) -> usize {
        self.kept.len()
    }

    /// What the states kept count, counted again.
    pub(super) fn counted(&self) -> usize {
        let bytes = self.kept.values().map(|kept| kept.bytes).sum();
        assert_eq!(self.bytes, bytes, "the bytes kept are not counted right");
        bytes
    }

    /// The index kept with a user's state, if kept.
    pub(super) fn index(&self, user_id: &str) -> Option<&[usize]> {
        self.kept.get(user_id).map(|kept| &kept.index[..])
    }

    pub(super) fn index_capacity(&self, user_id: &str) -> usize {
        self.kept.get(user_id).expect("kept").index.capacity()
    }

    pub(super) fn spares(&self) -> &[UserState] {
        &self.spares
    }

    pub(super) fn busy_spares(&self) -> &[UserState] {
        &self.busy_spares
    }

    /// Entries in the order of puts, stale ones included.
    pub(super) fn queued(&self) -> usize {
        self.order.len()
    }
}
