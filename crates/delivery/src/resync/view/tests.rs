//! What a resync sends for one changelog record, checked against known users and mappings.

use std::path::Path;

use model::SegmentStatus;
use model::pb::Membership;

use super::*;
use crate::config::DeliveryConfig;

const NOW: i64 = 1_800_000_000_000;

/// Destination 423 maps 14356 and 12176 (data partner 1234); 501 is not mapped.
fn destination() -> std::sync::Arc<DestinationConfig> {
    let config = DeliveryConfig::parse(
        Path::new("destinations.yaml"),
        "destinations:\n  - { id: 423, url: https://a.example, client_id: a, user_dpid: 1, data_partner: 1234, segments: { 14356: \"14356\", 12176: \"99\" } }\n",
        &|_| None,
    )
    .unwrap();
    config.destinations[0].clone()
}

fn state(user: &str, memberships: &[(u64, i64)]) -> Record {
    Record::Present(UserState {
        user_id: user.to_owned(),
        regions: vec![6, 7],
        partner_ids: vec![
            PartnerIds {
                data_partner_id: 1234,
                partner_uuids: vec!["idfa-1".to_owned()],
            },
            PartnerIds {
                data_partner_id: 99,
                partner_uuids: vec!["other".to_owned()],
            },
        ],
        memberships: memberships
            .iter()
            .map(|&(segment_id, since_unix_ms)| Membership {
                segment_id,
                since_unix_ms,
                ..Membership::default()
            })
            .collect(),
        ..UserState::default()
    })
}

/// (segment, status 1/0, time) of each change.
fn changes(update: &SegmentStatusUpdate) -> Vec<(u64, u8, i64)> {
    update
        .changes
        .iter()
        .map(|c| {
            (
                c.segment_id,
                u8::from(c.status() == SegmentStatus::Active),
                c.time_unix_ms,
            )
        })
        .collect()
}

fn all_segments() -> SegmentFilter {
    SegmentFilter::new(&destination(), &[]).unwrap()
}

#[test]
fn a_user_gets_a_1_for_each_mapped_membership_dated_when_they_qualified() {
    let mut sent = SentUsers::default();
    let record = state("u1", &[(14356, 1_000), (501, 2_000), (12176, 3_000)]);
    let update = view("u1", &record, &all_segments(), Some(1234), &mut sent, NOW).unwrap();
    assert_eq!(changes(&update), [(14356, 1, 1_000), (12176, 1, 3_000)]);
    assert!(
        update
            .changes
            .iter()
            .all(|c| c.reason() == ChangeReason::Qualified)
    );
    assert_eq!(update.user_id, "u1");
    assert_eq!(update.regions, [6, 7]);
    assert_eq!(update.partner_ids.len(), 2, "the state's ids, all of them");
    assert_eq!(update.origin(), Origin::Batch);
    assert_eq!((update.sequence, update.produced_unix_ms), (0, NOW));
    assert_eq!(update.only_data_partner_id, None);
    assert_eq!(sent.len(), 1);
}

#[test]
fn a_user_in_no_segment_the_destination_maps_gets_nothing() {
    let mut sent = SentUsers::default();
    let record = state("u2", &[(501, 2_000)]);
    assert_eq!(
        view("u2", &record, &all_segments(), Some(1234), &mut sent, NOW),
        None
    );
    assert!(sent.is_empty());
}

#[test]
fn listed_segments_narrow_what_is_sent_and_an_unmapped_one_is_an_error_naming_it() {
    let only = SegmentFilter::new(&destination(), &[12176]).unwrap();
    let mut sent = SentUsers::default();
    let record = state("u1", &[(14356, 1_000), (12176, 3_000)]);
    let update = view("u1", &record, &only, None, &mut sent, NOW).unwrap();
    assert_eq!(changes(&update), [(12176, 1, 3_000)]);

    let error = SegmentFilter::new(&destination(), &[14356, 501, 7])
        .unwrap_err()
        .to_string();
    assert!(
        error.contains("destination 423 does not map segment(s) 501, 7")
            && error.contains("it maps 12176, 14356"),
        "{error}"
    );
}

#[test]
fn opted_out_markers_and_tombstones_of_users_not_sent_anything_are_skipped() {
    let mut sent = SentUsers::default();
    for record in [Record::OptedOut, Record::Forgotten] {
        assert_eq!(
            view("u3", &record, &all_segments(), Some(1234), &mut sent, NOW),
            None
        );
    }
    assert!(sent.is_empty());
}

#[test]
fn a_newer_record_without_a_membership_this_run_sent_gets_a_0_dated_now() {
    let mut sent = SentUsers::default();
    let filter = all_segments();
    let first = state("u1", &[(14356, 1_000), (12176, 3_000)]);
    view("u1", &first, &filter, Some(1234), &mut sent, NOW).unwrap();

    // 12176 ended while the run went on: a 0 for it; 14356 was sent already.
    let newer = state("u1", &[(14356, 1_000)]);
    let update = view("u1", &newer, &filter, Some(1234), &mut sent, NOW + 5).unwrap();
    assert_eq!(changes(&update), [(12176, 0, NOW + 5)]);
    assert_eq!(update.changes[0].reason(), ChangeReason::Rule);
    assert_eq!(update.partner_ids.len(), 2, "the current state's ids");

    // Taken back once: the same record again sends nothing.
    assert_eq!(
        view("u1", &newer, &filter, Some(1234), &mut sent, NOW + 9),
        None
    );

    // Back in 12176 since a new time: a 1 with that time.
    let back = state("u1", &[(14356, 1_000), (12176, 4_000)]);
    let update = view("u1", &back, &filter, Some(1234), &mut sent, NOW + 10).unwrap();
    assert_eq!(changes(&update), [(12176, 1, 4_000)]);

    // Out of everything: a 0 for each 1 the partner holds from this run.
    let update = view(
        "u1",
        &state("u1", &[(501, 2_000)]),
        &filter,
        Some(1234),
        &mut sent,
        NOW + 11,
    )
    .unwrap();
    assert_eq!(
        changes(&update),
        [(14356, 0, NOW + 11), (12176, 0, NOW + 11)]
    );
    assert!(sent.is_empty(), "nothing is held as 1 any more");
}

#[test]
fn a_user_read_twice_unchanged_is_sent_once() {
    let mut sent = SentUsers::default();
    let filter = all_segments();
    let record = state("u1", &[(14356, 1_000)]);
    assert!(view("u1", &record, &filter, None, &mut sent, NOW).is_some());
    assert_eq!(view("u1", &record, &filter, None, &mut sent, NOW + 1), None);
}

#[test]
fn a_user_forgotten_or_opted_out_after_their_1_gets_a_0_at_the_ids_it_went_to() {
    for last in [Record::Forgotten, Record::OptedOut] {
        let mut sent = SentUsers::default();
        let filter = all_segments();
        view(
            "u1",
            &state("u1", &[(14356, 1_000)]),
            &filter,
            Some(1234),
            &mut sent,
            NOW,
        )
        .unwrap();
        let update = view("u1", &last, &filter, Some(1234), &mut sent, NOW + 1).unwrap();
        assert_eq!(changes(&update), [(14356, 0, NOW + 1)]);
        assert_eq!(
            update.partner_ids,
            [PartnerIds {
                data_partner_id: 1234,
                partner_uuids: vec!["idfa-1".to_owned()]
            }],
            "only the destination's data partner's ids are kept"
        );
        assert!(update.regions.is_empty());
    }
}

#[test]
fn other_users_are_not_affected_by_one_users_history() {
    let mut sent = SentUsers::default();
    let filter = all_segments();
    view(
        "u1",
        &state("u1", &[(14356, 1_000)]),
        &filter,
        None,
        &mut sent,
        NOW,
    );
    let update = view("u2", &state("u2", &[]), &filter, None, &mut sent, NOW);
    assert_eq!(update, None);
}

#[test]
fn records_decode_by_key_and_value() {
    let present = UserState {
        user_id: "u1".to_owned(),
        ..UserState::default()
    };
    let opted_out = UserState {
        user_id: "u1".to_owned(),
        opted_out: true,
        ..UserState::default()
    };
    let key = Some(b"u1".as_slice());
    assert_eq!(
        decode(key, Some(&present.encode_to_vec())),
        Ok(("u1".to_owned(), Record::Present(present)))
    );
    assert_eq!(
        decode(key, Some(&opted_out.encode_to_vec())),
        Ok(("u1".to_owned(), Record::OptedOut))
    );
    assert_eq!(decode(key, None), Ok(("u1".to_owned(), Record::Forgotten)));
    assert!(
        decode(key, Some(&[0xff, 0xff]))
            .unwrap_err()
            .contains("not a UserState")
    );
    assert!(decode(None, None).unwrap_err().contains("no key"));
}
