//! proptest strategies for the wire types, shared by the crates' tests (feature `proptest`).

use proptest::prelude::*;

use crate::{PartnerIds, SegmentChange, SegmentStatusUpdate};

/// Any `SegmentStatusUpdate` the wire can carry: any strings, any enum numbers (known or not),
/// none to several changes, partner ids and regions, targeted or not.
pub fn any_status_update() -> impl Strategy<Value = SegmentStatusUpdate> {
    let change = (any::<u64>(), any::<i32>(), any::<i32>(), any::<i64>()).prop_map(
        |(segment_id, status, reason, time_unix_ms)| SegmentChange {
            segment_id,
            status,
            reason,
            time_unix_ms,
        },
    );
    let partner = (any::<u64>(), prop::collection::vec(".{0,40}", 0..4)).prop_map(
        |(data_partner_id, partner_uuids)| PartnerIds {
            data_partner_id,
            partner_uuids,
        },
    );
    (
        ".{0,40}",
        prop::collection::vec(any::<u32>(), 0..8),
        prop::collection::vec(partner, 0..4),
        prop::collection::vec(change, 0..6),
        any::<i32>(),
        any::<i64>(),
        any::<u64>(),
        any::<Option<u64>>(),
    )
        .prop_map(
            |(user_id, regions, partner_ids, changes, origin, produced, sequence, only)| {
                SegmentStatusUpdate {
                    user_id,
                    regions,
                    partner_ids,
                    changes,
                    origin,
                    produced_unix_ms: produced,
                    sequence,
                    only_data_partner_id: only,
                }
            },
        )
}
