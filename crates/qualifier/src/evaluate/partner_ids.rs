//! ID syncs: a user's partner ids kept within their limits, and the targeted updates an
//! added or evicted id causes.

use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate, UserState};

use super::updates::{effective_origin, next_sequence};
use crate::config::UserLimits;

/// What an ID sync did to the user's ids.
#[derive(Debug, Default)]
pub(super) struct Synced {
    /// The id is new for the user (not merely synced again).
    added: Option<(u64, String)>,
    /// Ids evicted to stay within the limits, by data partner.
    evicted: Vec<PartnerIds>,
}

/// Adds `uuid` as the user's newest id at `data_partner_id`; an id or data partner synced
/// again becomes the newest. Past `limits`, the id (or data partner) synced longest ago is
/// evicted.
pub(super) fn add_partner_id(
    partner_ids: &mut Vec<PartnerIds>,
    data_partner_id: u64,
    uuid: &str,
    limits: UserLimits,
) -> Synced {
    let mut synced = Synced::default();
    if uuid.is_empty() {
        return synced;
    }
    let mut entry = match partner_ids
        .iter()
        .position(|p| p.data_partner_id == data_partner_id)
    {
        Some(i) => partner_ids.remove(i),
        None => PartnerIds {
            data_partner_id,
            partner_uuids: Vec::new(),
        },
    };
    let uuids = &mut entry.partner_uuids;
    match uuids.iter().position(|u| u == uuid) {
        Some(i) => {
            let again = uuids.remove(i);
            uuids.push(again);
        }
        None => {
            uuids.push(uuid.to_owned());
            synced.added = Some((data_partner_id, uuid.to_owned()));
        }
    }
    let excess = uuids.len().saturating_sub(limits.partner_ids);
    if excess > 0 {
        synced.evicted.push(PartnerIds {
            data_partner_id,
            partner_uuids: uuids.drain(..excess).collect(),
        });
    }
    partner_ids.push(entry);
    let excess = partner_ids.len().saturating_sub(limits.data_partners);
    synced.evicted.extend(partner_ids.drain(..excess));
    synced
}

/// The targeted updates of an ID sync: each evicted id leaves the user's segments (0s dated
/// now), and a new id gets the user's memberships (1s dated when the user qualified).
pub(super) fn partner_id_updates(
    state: &mut UserState,
    synced: Synced,
    origin: Origin,
    now: i64,
) -> Vec<SegmentStatusUpdate> {
    let mut updates = Vec::new();
    if state.memberships.is_empty() {
        return updates;
    }
    for evicted in synced.evicted {
        let time = now.max(state.last_change_unix_ms);
        state.last_change_unix_ms = time;
        let changes = state
            .memberships
            .iter()
            .map(|m| SegmentChange::unsegmented(m.segment_id, ChangeReason::PartnerIdEvicted, time))
            .collect();
        updates.push(targeted_update(state, evicted, changes, origin, now));
    }
    if let Some((data_partner_id, uuid)) = synced.added {
        let changes = state
            .memberships
            .iter()
            .map(|m| SegmentChange {
                reason: ChangeReason::PartnerIdSynced as i32,
                ..SegmentChange::qualified(m.segment_id, m.since_unix_ms)
            })
            .collect();
        let ids = PartnerIds {
            data_partner_id,
            partner_uuids: vec![uuid],
        };
        updates.push(targeted_update(state, ids, changes, origin, now));
    }
    updates
}

/// An update for the ids in `ids` only (`only_data_partner_id`).
pub(super) fn targeted_update(
    state: &mut UserState,
    ids: PartnerIds,
    changes: Vec<SegmentChange>,
    origin: Origin,
    now: i64,
) -> SegmentStatusUpdate {
    SegmentStatusUpdate {
        user_id: state.user_id.clone(),
        regions: state.regions.clone(),
        only_data_partner_id: Some(ids.data_partner_id),
        partner_ids: vec![ids],
        changes,
        origin: effective_origin(origin) as i32,
        produced_unix_ms: now,
        sequence: next_sequence(state, now),
    }
}
