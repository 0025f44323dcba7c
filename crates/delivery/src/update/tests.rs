//! The packed update reads back exactly what it was made of, for any update.

use model::{Origin, PartnerIds, SegmentChange, SegmentStatusUpdate};
use proptest::prelude::*;

use super::{Change, Update};

proptest! {
    #[test]
    fn a_packed_update_reads_back_what_it_was_made_of(update in model::strategies::any_status_update()) {
        let packed = Update::new(&update);
        prop_assert_eq!(packed.to_proto(), update.clone());
        prop_assert_eq!(packed.user_id(), update.user_id.as_str());
        prop_assert_eq!(packed.user_key(), update.user_id.as_bytes());
        prop_assert_eq!(packed.regions().collect::<Vec<_>>(), update.regions.clone());
        prop_assert_eq!(packed.changes().len(), update.changes.len());
        for (change, expected) in packed.changes().zip(&update.changes) {
            prop_assert_eq!(change.segment_id, expected.segment_id);
            prop_assert_eq!(change.status, expected.status);
            prop_assert_eq!(change.reason, expected.reason);
            prop_assert_eq!(change.time_unix_ms, expected.time_unix_ms);
        }
        prop_assert_eq!(packed.produced_unix_ms(), update.produced_unix_ms);
        prop_assert_eq!(packed.sequence(), update.sequence);
        prop_assert_eq!(packed.only_data_partner_id(), update.only_data_partner_id);
        prop_assert_eq!(packed.origin(), update.origin());
        for partner in &update.partner_ids {
            // The first entry of a data partner is the one read.
            let first = update
                .partner_ids
                .iter()
                .find(|p| p.data_partner_id == partner.data_partner_id)
                .map(|p| p.partner_uuids.clone());
            let read: Vec<String> =
                packed.partner_uuids(Some(partner.data_partner_id)).map(str::to_owned).collect();
            prop_assert_eq!(Some(read), first);
        }
        prop_assert_eq!(packed.partner_uuids(None).count(), 0);
        prop_assert_eq!(packed.heap_bytes(), 16 + packed.0.len());
    }
}

#[test]
fn a_data_partner_without_an_entry_has_no_ids_and_statuses_read_as_the_partner_sees_them() {
    let packed = Update::new(&SegmentStatusUpdate {
        user_id: "u1".to_owned(),
        partner_ids: vec![PartnerIds {
            data_partner_id: 7,
            partner_uuids: vec!["p-1".to_owned(), String::new()],
        }],
        changes: vec![
            SegmentChange::qualified(4, 1_000),
            SegmentChange::unsegmented(5, model::ChangeReason::Ttl, 2_000),
        ],
        origin: Origin::Batch as i32,
        ..SegmentStatusUpdate::default()
    });
    assert_eq!(packed.partner_uuids(Some(8)).len(), 0);
    assert_eq!(
        packed.partner_uuids(Some(7)).collect::<Vec<_>>(),
        ["p-1", ""]
    );
    assert_eq!(packed.origin(), Origin::Batch);
    assert_eq!(packed.only_data_partner_id(), None);
    let changes: Vec<Change> = packed.changes().collect();
    assert!(changes[0].active() && !changes[1].active());
    assert_eq!(changes[1].reason, model::ChangeReason::Ttl as i32);
}

/// A user's hash is their id's, whatever else their update holds (their lane and their place
/// in a batch come from it), and different ids hash apart.
#[test]
fn the_user_hash_is_the_ids_alone() {
    let update = |user: &str, segment: u64, time: i64| {
        Update::new(&SegmentStatusUpdate {
            user_id: user.to_owned(),
            changes: vec![SegmentChange::qualified(segment, time)],
            regions: vec![segment as u32],
            ..SegmentStatusUpdate::default()
        })
    };
    assert_eq!(
        update("u1", 4, 1_000).user_hash(),
        update("u1", 5, 2_000).user_hash()
    );
    let hashes: std::collections::HashSet<u64> = (0..1_000)
        .map(|i| update(&format!("user-{i}"), 4, 1_000).user_hash())
        .collect();
    assert_eq!(hashes.len(), 1_000, "1,000 ids, 1,000 hashes");
}
