//! What a resync sends one destination for one changelog record: the user's current
//! memberships of the destination's segments as 1s, each dated when the user qualified (those
//! this run sent the user already are not sent twice) — and, when this run sent the user a 1
//! for a segment that the record no longer holds (the record is newer than the one that 1
//! came from: written while the run went on, or later in a changelog not compacted yet), a 0
//! for that segment, dated now. That 0 is what keeps a partner from ending on a stale 1 after
//! the live 0 (see `resync`). Pure: no Kafka, no clock.

use std::collections::{BTreeSet, HashMap};
use std::hash::BuildHasher as _;

use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate, UserState};
use prost::Message as _;

use crate::config::DestinationConfig;

/// The segments a resync sends: the destination's mapped segments, or the ones asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentFilter {
    segments: BTreeSet<u64>,
}

/// Segments asked for that the destination does not map.
#[derive(Debug, thiserror::Error)]
#[error(
    "--segments: destination {destination} does not map segment(s) {unmapped}; it maps {mapped} (see its `segments:` in the config)"
)]
pub struct UnmappedSegments {
    destination: u64,
    unmapped: String,
    mapped: String,
}

impl SegmentFilter {
    /// Every segment `destination` maps.
    pub fn all(destination: &DestinationConfig) -> Self {
        Self {
            segments: destination.segments.keys().copied().collect(),
        }
    }

    /// Every segment `destination` maps, or only `only` when it is not empty (each must be
    /// one the destination maps).
    pub fn new(destination: &DestinationConfig, only: &[u64]) -> Result<Self, UnmappedSegments> {
        let mapped = Self::all(destination).segments;
        if only.is_empty() {
            return Ok(Self { segments: mapped });
        }
        let unmapped: Vec<String> = only
            .iter()
            .filter(|s| !mapped.contains(s))
            .map(u64::to_string)
            .collect();
        if !unmapped.is_empty() {
            return Err(UnmappedSegments {
                destination: destination.id,
                unmapped: unmapped.join(", "),
                mapped: mapped
                    .iter()
                    .map(u64::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        Ok(Self {
            segments: only.iter().copied().collect(),
        })
    }

    /// Whether the resync sends `segment` (our id).
    pub fn contains(&self, segment: u64) -> bool {
        self.segments.contains(&segment)
    }
}

/// One changelog record, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Record {
    /// The user's state.
    Present(UserState),
    /// An opted-out marker: the user is in nothing.
    OptedOut,
    /// A tombstone (null value): the user was forgotten (inactivity or erasure).
    Forgotten,
}

/// The user id (the record's key) and the record; an error says why the record is not a
/// user state.
pub fn decode(key: Option<&[u8]>, payload: Option<&[u8]>) -> Result<(String, Record), String> {
    let user = key
        .map(String::from_utf8_lossy)
        .filter(|k| !k.is_empty())
        .ok_or("the record has no key (a user id)")?
        .into_owned();
    let Some(payload) = payload else {
        return Ok((user, Record::Forgotten));
    };
    let state = UserState::decode(payload).map_err(|e| format!("not a UserState: {e}"))?;
    Ok(if state.opted_out {
        (user, Record::OptedOut)
    } else {
        (user, Record::Present(state))
    })
}

/// The memberships this run sent a user as 1, so that a newer record can take one back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct SentUser {
    /// (segment, since) of each 1 the partner holds from this run.
    segments: Vec<(u64, i64)>,
    /// The user's ids at the destination's data partner when they were sent (a 0 after the
    /// user was forgotten goes to the same ids).
    partner_ids: Vec<PartnerIds>,
}

/// The users of one partition this run sent 1s, by a 64-bit hash of the user id (about 80
/// bytes per user plus their ids at the destination's data partner). Two users sharing a hash
/// could only cost one of them an extra 0 for a segment they are not in, or a missed repeat
/// of a 1.
#[derive(Debug)]
pub struct SentUsers {
    by_user: HashMap<u64, SentUser>,
    hasher: foldhash::fast::FixedState,
}

impl Default for SentUsers {
    fn default() -> Self {
        Self {
            by_user: HashMap::new(),
            hasher: foldhash::fast::FixedState::with_seed(0x7265_7379_6e63),
        }
    }
}

#[cfg(test)]
impl SentUsers {
    pub fn len(&self) -> usize {
        self.by_user.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_user.is_empty()
    }
}

/// The update a destination gets for `record` of `user`, `None` when there is nothing to
/// send; notes in `sent` what the user now holds from this run.
///
/// - a 1 for each membership of a segment in `filter` (reason qualified, dated
///   `since_unix_ms`), with the user's regions and partner ids — unless this run sent the
///   user that very 1 already (a user's older record read earlier in the run);
/// - a 0 dated `now_unix_ms`, reason rule, for each segment this run sent the user as 1 that
///   is not a membership any more (also after an opt-out or a tombstone).
pub fn view(
    user: &str,
    record: &Record,
    filter: &SegmentFilter,
    data_partner: Option<u64>,
    sent: &mut SentUsers,
    now_unix_ms: i64,
) -> Option<SegmentStatusUpdate> {
    let hash = sent.hasher.hash_one(user);
    let before = sent.by_user.remove(&hash).unwrap_or_default();
    let (regions, partner_ids, current): (_, _, Vec<(u64, i64)>) = match record {
        Record::Present(state) => (
            state.regions.clone(),
            state.partner_ids.clone(),
            state
                .memberships
                .iter()
                .filter(|m| filter.contains(m.segment_id))
                .map(|m| (m.segment_id, m.since_unix_ms))
                .collect(),
        ),
        Record::OptedOut | Record::Forgotten => {
            (Vec::new(), before.partner_ids.clone(), Vec::new())
        }
    };
    let mut changes: Vec<SegmentChange> = current
        .iter()
        .filter(|membership| !before.segments.contains(membership))
        .map(|&(segment, since)| SegmentChange::qualified(segment, since))
        .collect();
    let sends_ones = !changes.is_empty();
    changes.extend(
        before
            .segments
            .iter()
            .filter(|(segment, _)| !current.iter().any(|(s, _)| s == segment))
            .map(|&(segment, _)| {
                SegmentChange::unsegmented(segment, ChangeReason::Rule, now_unix_ms)
            }),
    );
    if !current.is_empty() {
        let partner_ids = if sends_ones {
            partner_ids
                .iter()
                .filter(|p| Some(p.data_partner_id) == data_partner)
                .cloned()
                .collect()
        } else {
            before.partner_ids
        };
        sent.by_user.insert(
            hash,
            SentUser {
                segments: current,
                partner_ids,
            },
        );
    }
    (!changes.is_empty()).then(|| SegmentStatusUpdate {
        user_id: user.to_owned(),
        regions,
        partner_ids,
        changes,
        origin: Origin::Batch as i32,
        produced_unix_ms: now_unix_ms,
        sequence: 0,
        only_data_partner_id: None,
    })
}

#[cfg(test)]
mod tests;
