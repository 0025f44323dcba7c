//! The status updates a step publishes: refreshed 1s of memberships, the user's update
//! sequence, and the update built from a step's changes.

use model::pb::Membership;
use model::{ChangeReason, Origin, SegmentChange, SegmentStatusUpdate, UserState};

use crate::config::Definitions;

/// Re-publishes the 1 of each membership whose `refresh_after` came (and that this step did
/// not change anyway), dated `now`.
pub(super) fn refresh(
    definitions: &Definitions,
    state: &mut UserState,
    now: i64,
    changes: &mut Vec<SegmentChange>,
) {
    if !definitions.refreshing {
        return;
    }
    for membership in &mut state.memberships {
        let Some(period) = refresh_period(definitions, membership.segment_id) else {
            continue;
        };
        if next_refresh(&state.user_id, membership, period) <= now
            && !changes
                .iter()
                .any(|c| c.segment_id == membership.segment_id)
        {
            changes.push(SegmentChange {
                reason: ChangeReason::Refresh as i32,
                ..SegmentChange::qualified(membership.segment_id, now)
            });
            membership.refreshed_unix_ms = now;
        }
    }
}

/// The earliest [`next_refresh`] among the user's memberships.
pub(super) fn first_refresh(definitions: &Definitions, state: &UserState) -> Option<i64> {
    if !definitions.refreshing {
        return None;
    }
    state
        .memberships
        .iter()
        .filter_map(|m| {
            let period = refresh_period(definitions, m.segment_id)?;
            Some(next_refresh(&state.user_id, m, period))
        })
        .min()
}

pub(super) fn refresh_period(definitions: &Definitions, segment_id: u64) -> Option<i64> {
    let &index = definitions.segment_index.get(&segment_id)?;
    definitions.segments[index].refresh_ms
}

/// When a membership's 1 is re-published next: `period` after the later of when the user
/// qualified and its last refresh, plus up to a tenth of the period chosen by user and
/// segment, so that members who qualified in the same second do not all refresh together.
pub(super) fn next_refresh(user_id: &str, membership: &Membership, period: i64) -> i64 {
    let spread = period / 10;
    let offset = if spread > 0 {
        let hash = crate::config::fnv1a(
            crate::config::fnv1a(crate::config::FNV_OFFSET, user_id.as_bytes()),
            &membership.segment_id.to_le_bytes(),
        );
        (hash % spread as u64) as i64
    } else {
        0
    };
    membership
        .since_unix_ms
        .max(membership.refreshed_unix_ms)
        .saturating_add(period)
        .saturating_add(offset)
}

/// Update sequences per millisecond of the hybrid clock (see [`next_sequence`]).
pub(super) const SEQUENCES_PER_MS: u64 = 1024;

/// The user's next update sequence: one past the last, and at least the wall clock in units of
/// 1/1024 ms, so a user forgotten (inactivity) and seen again starts above every sequence they
/// had, and a rebalance to a host whose clock is behind still counts up.
pub(super) fn next_sequence(state: &mut UserState, now: i64) -> u64 {
    let clock = u64::try_from(now)
        .unwrap_or(0)
        .saturating_mul(SEQUENCES_PER_MS);
    state.last_sequence = state.last_sequence.saturating_add(1).max(clock);
    state.last_sequence
}

pub(super) fn build_update(
    state: &mut UserState,
    changes: Vec<SegmentChange>,
    origin: Origin,
    now: i64,
) -> Option<SegmentStatusUpdate> {
    if changes.is_empty() {
        return None;
    }
    let sequence = next_sequence(state, now);
    // No change is dated before the user's previous one (a late event after an expiry).
    let mut changes = changes;
    for change in &mut changes {
        if change.time_unix_ms < state.last_change_unix_ms {
            change.time_unix_ms = state.last_change_unix_ms;
            if let Some(membership) = state
                .memberships
                .iter_mut()
                .find(|m| m.segment_id == change.segment_id)
            {
                membership.since_unix_ms = change.time_unix_ms;
            }
        }
    }
    if let Some(latest) = changes.iter().map(|c| c.time_unix_ms).max() {
        state.last_change_unix_ms = state.last_change_unix_ms.max(latest);
    }
    Some(SegmentStatusUpdate {
        user_id: state.user_id.clone(),
        regions: state.regions.clone(),
        partner_ids: state.partner_ids.clone(),
        changes,
        origin: effective_origin(origin) as i32,
        produced_unix_ms: now,
        sequence,
        only_data_partner_id: None,
    })
}

/// Changes of an event without an origin go to the real-time topic.
pub(super) fn effective_origin(origin: Origin) -> Origin {
    if origin == Origin::Unspecified {
        Origin::Realtime
    } else {
        origin
    }
}
