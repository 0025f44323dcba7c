//! A status update as the lanes hold it: one allocation, its fields one after another.
//!
//! prost decodes a `SegmentStatusUpdate` into seven allocations (the struct's `Arc`, the user
//! id, regions, the partner ids, each data partner's ids and each id, the changes). A lane
//! reads them milliseconds after the consumer wrote them, once other lanes have run: each was
//! a cache miss of its own (perf annotate: four fifths of `DestinationBatch::add`'s samples on
//! three loads, the update's user id, its partner ids and their ids), and each was freed on a
//! thread other than the one that made it. Here the update is one buffer, read front to back.
//!
//! The consumer decodes the wire format straight into this form ([`Decoder`]), and orders and
//! routes the packed update.

use std::hash::BuildHasher as _;
use std::sync::{Arc, LazyLock};

use model::{Origin, PartnerIds, SegmentChange, SegmentStatus, SegmentStatusUpdate};

pub use decode::{DecodeError, Decoder};

mod decode;

/// The packed update, shared by the lanes of every destination it goes to.
///
/// Layout, little-endian: a header of [`HEADER`] bytes (produced time, sequence, the targeted
/// data partner, origin, whether it is targeted, then the counts of changes and regions, the
/// user id's length and the count of data partners, then the user id's hash), the changes ([`CHANGE`] bytes each), the
/// regions (4 bytes each), the user id, then each data partner's id, count of ids and ids
/// (each a 4-byte length and its bytes).
#[derive(Clone, PartialEq, Eq)]
pub struct Update(Arc<[u8]>);

const HEADER: usize = 56;

/// Hashes user ids for [`Update::user_hash`]: seeded once per process, so a user keeps their
/// hash (and lane) while it runs, and ids cannot be picked to collide.
static USER_HASHER: LazyLock<foldhash::fast::FixedState> =
    LazyLock::new(|| foldhash::fast::FixedState::with_seed(fastrand::u64(..)));
const CHANGE: usize = 24;

/// One segment's new status for the user (`SegmentChange`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    pub segment_id: u64,
    /// `SegmentStatus` as on the wire.
    pub status: i32,
    /// `ChangeReason` as on the wire.
    pub reason: i32,
    pub time_unix_ms: i64,
}

impl Change {
    /// Status 1 (active) for the partner; anything else is 0.
    pub fn active(&self) -> bool {
        self.status == SegmentStatus::Active as i32
    }
}

impl Update {
    /// Packs `update`.
    pub fn new(update: &SegmentStatusUpdate) -> Self {
        let head = Head {
            produced_unix_ms: update.produced_unix_ms,
            sequence: update.sequence,
            only_data_partner_id: update.only_data_partner_id,
            origin: update.origin,
        };
        let mut bytes = Vec::new();
        pack(
            &mut bytes,
            &head,
            update.changes.iter().map(|c| Change {
                segment_id: c.segment_id,
                status: c.status,
                reason: c.reason,
                time_unix_ms: c.time_unix_ms,
            }),
            update.regions.iter().copied(),
            update.user_id.as_bytes(),
            update.partner_ids.iter().map(|p| {
                let ids = p.partner_uuids.iter().map(String::as_bytes);
                (p.data_partner_id, ids)
            }),
        );
        Self(Arc::from(bytes))
    }

    pub fn produced_unix_ms(&self) -> i64 {
        i64::from_le_bytes(self.array(0))
    }

    pub fn sequence(&self) -> u64 {
        u64::from_le_bytes(self.array(8))
    }

    /// When its oldest change happened (see [`Self::change_times`]).
    pub fn oldest_change_unix_ms(&self) -> Option<i64> {
        self.change_times().min()
    }

    /// When its newest change happened (see [`Self::change_times`]).
    pub fn newest_change_unix_ms(&self) -> Option<i64> {
        self.change_times().max()
    }

    /// Its changes' times; a targeted update's is when it was made: it restates memberships
    /// the user already had, dated when they qualified. Latencies and the linger count from it.
    fn change_times(&self) -> impl Iterator<Item = i64> + '_ {
        let restated = self.only_data_partner_id().map(|_| self.produced_unix_ms());
        let changes = restated
            .is_none()
            .then(|| self.changes().map(|c| c.time_unix_ms));
        restated.into_iter().chain(changes.into_iter().flatten())
    }

    /// Set on a targeted update: for this data partner's destinations and ids only.
    pub fn only_data_partner_id(&self) -> Option<u64> {
        (self.u32_at(28) != 0).then(|| u64::from_le_bytes(self.array(16)))
    }

    /// The origin; an unknown one reads as unspecified (as prost's accessor has it).
    pub fn origin(&self) -> Origin {
        Origin::try_from(i32::from_le_bytes(self.array(24))).unwrap_or_default()
    }

    pub fn user_id(&self) -> &str {
        // Written from a `String`: always UTF-8.
        std::str::from_utf8(self.user_key()).unwrap_or_default()
    }

    /// The user id's bytes, to hash and compare: [`Self::user_id`] checks them for UTF-8 each
    /// time (2 % of a drain's CPU when a batch looked its users up by it).
    pub fn user_key(&self) -> &[u8] {
        let start = self.user_start();
        &self.0[start..start + self.u32_at(40)]
    }

    /// The hash of the user id's bytes, made once as the update is packed: the user's lane
    /// of each destination ([`crate::lane::lane_of`]) and their place in a batch's index by
    /// id come from it. Hashed again by each destination's batch, the id was 1.2 % of a
    /// drain's CPU.
    pub fn user_hash(&self) -> u64 {
        u64::from_le_bytes(self.array(48))
    }

    /// Reads a byte of each cache line the update lies in, and returns them xor-ed: to have
    /// them in the cache before they are needed (see `Lane::receive`).
    pub fn touch(&self) -> u8 {
        let last = self.0.last().copied().unwrap_or(0);
        self.0.iter().step_by(64).fold(last, |all, &b| all ^ b)
    }

    /// How many hold the update (its `Arc`'s count); read to have the count in the cache
    /// before it is given back.
    pub fn holders(&self) -> usize {
        Arc::strong_count(&self.0)
    }

    /// The changes, in their order in the update.
    pub fn changes(&self) -> impl ExactSizeIterator<Item = Change> + Clone + '_ {
        let end = HEADER + CHANGE * self.u32_at(32);
        self.0[HEADER..end].chunks_exact(CHANGE).map(|c| Change {
            segment_id: u64::from_le_bytes(array(c, 0)),
            time_unix_ms: i64::from_le_bytes(array(c, 8)),
            status: i32::from_le_bytes(array(c, 16)),
            reason: i32::from_le_bytes(array(c, 20)),
        })
    }

    /// The regions the user was seen in (`AAM_Regions`).
    pub fn regions(&self) -> impl ExactSizeIterator<Item = u32> + '_ {
        let start = self.regions_start();
        self.0[start..start + 4 * self.u32_at(36)]
            .chunks_exact(4)
            .map(|r| u32::from_le_bytes(array(r, 0)))
    }

    /// The user's ids at `data_partner` (none when the destination names none, or the user
    /// has none there); the first entry of the data partner, as the qualifier writes one.
    pub fn partner_uuids(&self, data_partner: Option<u64>) -> PartnerUuids<'_> {
        data_partner
            .and_then(|wanted| self.partners().find(|(id, _)| *id == wanted))
            .map_or(
                PartnerUuids {
                    bytes: &self.0,
                    at: 0,
                    left: 0,
                },
                |(_, uuids)| uuids,
            )
    }

    /// Each data partner's entry: its id and the user's ids there.
    fn partners(&self) -> impl Iterator<Item = (u64, PartnerUuids<'_>)> {
        let mut at = self.user_start() + self.u32_at(40);
        (0..self.u32_at(44)).map(move |_| {
            let id = u64::from_le_bytes(self.array(at));
            let uuids = PartnerUuids {
                bytes: &self.0,
                at: at + 12,
                left: self.u32_at(at + 8),
            };
            at = uuids.clone().end();
            (id, uuids)
        })
    }

    /// The bytes it holds on the heap, with the `Arc`'s counts.
    pub fn heap_bytes(&self) -> usize {
        2 * size_of::<usize>() + self.0.len()
    }

    /// The update as prost has it: for dead letters, replays and tests.
    pub fn to_proto(&self) -> SegmentStatusUpdate {
        let partner_ids = self
            .partners()
            .map(|(data_partner_id, uuids)| PartnerIds {
                data_partner_id,
                partner_uuids: uuids.map(str::to_owned).collect(),
            })
            .collect();
        SegmentStatusUpdate {
            user_id: self.user_id().to_owned(),
            regions: self.regions().collect(),
            partner_ids,
            changes: self
                .changes()
                .map(|c| SegmentChange {
                    segment_id: c.segment_id,
                    status: c.status,
                    reason: c.reason,
                    time_unix_ms: c.time_unix_ms,
                })
                .collect(),
            origin: i32::from_le_bytes(self.array(24)),
            produced_unix_ms: self.produced_unix_ms(),
            sequence: self.sequence(),
            only_data_partner_id: self.only_data_partner_id(),
        }
    }

    fn regions_start(&self) -> usize {
        HEADER + CHANGE * self.u32_at(32)
    }

    fn user_start(&self) -> usize {
        self.regions_start() + 4 * self.u32_at(36)
    }

    fn u32_at(&self, at: usize) -> usize {
        u32::from_le_bytes(self.array(at)) as usize
    }

    fn array<const N: usize>(&self, at: usize) -> [u8; N] {
        array(&self.0, at)
    }
}

/// The header's fields but the counts.
#[derive(Debug, Default)]
struct Head {
    produced_unix_ms: i64,
    sequence: u64,
    only_data_partner_id: Option<u64>,
    origin: i32,
}

/// Writes an update's packed bytes into `bytes` (cleared first): the one layout of [`Update`],
/// for [`Update::new`] and the [`Decoder`].
fn pack<'a, Ids>(
    bytes: &mut Vec<u8>,
    head: &Head,
    changes: impl ExactSizeIterator<Item = Change>,
    regions: impl ExactSizeIterator<Item = u32>,
    user_id: &[u8],
    partners: impl ExactSizeIterator<Item = (u64, Ids)> + Clone,
) where
    Ids: ExactSizeIterator<Item = &'a [u8]>,
{
    let strings: usize = partners
        .clone()
        .map(|(_, ids)| 12 + ids.map(|id| 4 + id.len()).sum::<usize>())
        .sum();
    bytes.clear();
    bytes.reserve(HEADER + CHANGE * changes.len() + 4 * regions.len() + user_id.len() + strings);
    bytes.extend_from_slice(&head.produced_unix_ms.to_le_bytes());
    bytes.extend_from_slice(&head.sequence.to_le_bytes());
    bytes.extend_from_slice(&head.only_data_partner_id.unwrap_or(0).to_le_bytes());
    bytes.extend_from_slice(&head.origin.to_le_bytes());
    bytes.extend_from_slice(&u32::from(head.only_data_partner_id.is_some()).to_le_bytes());
    for count in [changes.len(), regions.len(), user_id.len(), partners.len()] {
        bytes.extend_from_slice(&len32(count).to_le_bytes());
    }
    bytes.extend_from_slice(&USER_HASHER.hash_one(user_id).to_le_bytes());
    for change in changes {
        bytes.extend_from_slice(&change.segment_id.to_le_bytes());
        bytes.extend_from_slice(&change.time_unix_ms.to_le_bytes());
        bytes.extend_from_slice(&change.status.to_le_bytes());
        bytes.extend_from_slice(&change.reason.to_le_bytes());
    }
    for region in regions {
        bytes.extend_from_slice(&region.to_le_bytes());
    }
    bytes.extend_from_slice(user_id);
    for (data_partner_id, ids) in partners {
        bytes.extend_from_slice(&data_partner_id.to_le_bytes());
        bytes.extend_from_slice(&len32(ids.len()).to_le_bytes());
        for id in ids {
            bytes.extend_from_slice(&len32(id.len()).to_le_bytes());
            bytes.extend_from_slice(id);
        }
    }
}

impl From<SegmentStatusUpdate> for Update {
    fn from(update: SegmentStatusUpdate) -> Self {
        Self::new(&update)
    }
}

impl std::fmt::Debug for Update {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.to_proto().fmt(f)
    }
}

/// A user's ids at one data partner, from [`Update::partner_uuids`].
#[derive(Debug, Clone)]
pub struct PartnerUuids<'a> {
    bytes: &'a [u8],
    at: usize,
    left: usize,
}

impl<'a> Iterator for PartnerUuids<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let len = u32::from_le_bytes(array(self.bytes, self.at)) as usize;
        let start = self.at + 4;
        self.at = start + len;
        // Written from a `String`: always UTF-8.
        Some(std::str::from_utf8(&self.bytes[start..start + len]).unwrap_or_default())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left, Some(self.left))
    }
}

impl PartnerUuids<'_> {
    /// Where the entry ends: past its last id. By the ids' lengths alone: read as `&str`, each
    /// was checked for UTF-8 only to be stepped over (1 % of a drain, in finding a data
    /// partner's entry).
    fn end(self) -> usize {
        (0..self.left).fold(self.at, |at, _| {
            at + 4 + u32::from_le_bytes(array(self.bytes, at)) as usize
        })
    }
}

impl ExactSizeIterator for PartnerUuids<'_> {}

/// `N` bytes of `bytes` from `at`.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

/// A count or length as the layout stores it: a Kafka message is far smaller than 4 GiB, so
/// every one fits.
fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests;
