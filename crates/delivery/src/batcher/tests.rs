//! Golden payloads and batch limits. The bodies are compared as exact strings: what the
//! partner receives, byte for byte.

use std::path::Path;
use std::sync::Arc;

use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate};
use proptest::prelude::*;

use super::*;
use crate::config::{DeliveryConfig, DestinationConfig};
use crate::payload::{idempotency_key, write_body};

/// 2016-07-27T16:17:22Z.
const T0: i64 = 1_469_636_242_000;

pub(crate) fn destination(extra: &str) -> Arc<DestinationConfig> {
    let yaml = format!(
        "destinations:\n  - {{ id: 423, url: https://p.example/aam, client_id: \"74323\", user_dpid: 20915, \
         segments: {{ 14356: \"14356\", 12176: \"99\", 500: \"500\" }}{extra} }}\n"
    );
    DeliveryConfig::parse(Path::new("test.yaml"), &yaml, &|_| None)
        .unwrap()
        .destinations
        .remove(0)
}

pub(crate) fn change(segment_id: u64, active: bool, time_unix_ms: i64) -> SegmentChange {
    if active {
        SegmentChange::qualified(segment_id, time_unix_ms)
    } else {
        SegmentChange::unsegmented(segment_id, ChangeReason::Rule, time_unix_ms)
    }
}

pub(crate) fn update(
    user: &str,
    regions: &[u32],
    partner_ids: &[&str],
    changes: Vec<SegmentChange>,
) -> RoutedEvent {
    let partner_ids = if partner_ids.is_empty() {
        vec![]
    } else {
        vec![PartnerIds {
            data_partner_id: 1234,
            partner_uuids: partner_ids.iter().map(|s| (*s).to_owned()).collect(),
        }]
    };
    RoutedEvent {
        held: Default::default(),
        update: Update::new(&SegmentStatusUpdate {
            user_id: user.to_owned(),
            regions: regions.to_vec(),
            partner_ids,
            changes,
            origin: Origin::Realtime as i32,
            produced_unix_ms: T0,
            sequence: 0,
            only_data_partner_id: None,
        }),
        source: None,
    }
}

fn body(batch: &DestinationBatch) -> String {
    let mut out = Vec::new();
    write_body(batch, T0 + 20_000, &mut out);
    assert_eq!(
        out.len(),
        batch.body_bytes(),
        "size accounting must match the body"
    );
    String::from_utf8(out).unwrap()
}

#[test]
fn golden_body_strings_everywhere_regions_omitted_when_empty() {
    let mut batch = DestinationBatch::new(destination(""));
    batch
        .add(update(
            "u1",
            &[6, 7],
            &[],
            vec![change(14356, true, T0), change(12176, false, T0)],
        ))
        .unwrap();
    batch
        .add(update(
            "u2",
            &[],
            &[],
            vec![change(14356, true, T0 - 1_000), change(777, true, T0)],
        ))
        .unwrap();
    assert_eq!(
        body(&batch),
        concat!(
            r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"2","Users":["#,
            r#"{"AAM_UUID":"u1","DataPartner_UUID":"","AAM_Regions":["6","7"],"Segments":["#,
            r#"{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"},"#,
            r#"{"Segment_ID":"99","Status":"0","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]},"#,
            r#"{"AAM_UUID":"u2","DataPartner_UUID":"","Segments":["#,
            r#"{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:21 UTC 2016"}]}]}"#,
        ),
        "unmapped segment 777 is left out; segment ids are the destination's"
    );
}

#[test]
fn golden_body_one_entry_per_synced_partner_id() {
    let mut batch = DestinationBatch::new(destination(", data_partner: 1234"));
    batch
        .add(update(
            "u1",
            &[],
            &["p-a", "p-b"],
            vec![change(14356, false, 1_467_821_862_000)],
        ))
        .unwrap();
    batch
        .add(update("u2", &[3], &[], vec![change(14356, true, T0)]))
        .unwrap();
    assert_eq!(batch.entry_count(), 3);
    assert_eq!(
        body(&batch),
        concat!(
            r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"3","Users":["#,
            r#"{"AAM_UUID":"u1","DataPartner_UUID":"p-a","Segments":[{"Segment_ID":"14356","Status":"0","DateTime":"Wed Jul 06 16:17:42 UTC 2016"}]},"#,
            r#"{"AAM_UUID":"u1","DataPartner_UUID":"p-b","Segments":[{"Segment_ID":"14356","Status":"0","DateTime":"Wed Jul 06 16:17:42 UTC 2016"}]},"#,
            r#"{"AAM_UUID":"u2","DataPartner_UUID":"","AAM_Regions":["3"],"Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#,
        )
    );
}

#[test]
fn latest_status_per_user_and_segment_wins_within_a_batch() {
    let mut batch = DestinationBatch::new(destination(""));
    batch
        .add(update(
            "u1",
            &[6],
            &[],
            vec![change(14356, true, T0), change(12176, true, T0)],
        ))
        .unwrap();
    batch
        .add(update("u2", &[], &[], vec![change(14356, true, T0)]))
        .unwrap();
    batch
        .add(update(
            "u1",
            &[6, 9],
            &[],
            vec![change(14356, false, T0 + 1_000)],
        ))
        .unwrap();
    // A later status of our 12176 (their 99): the partner sees one status for Segment_ID 99.
    batch
        .add(update(
            "u1",
            &[6, 9],
            &[],
            vec![change(12176, false, T0 + 2_000)],
        ))
        .unwrap();
    assert_eq!(batch.users.len(), 2);
    assert_eq!(batch.events.len(), 4);
    assert_eq!(
        body(&batch),
        concat!(
            r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"2","Users":["#,
            r#"{"AAM_UUID":"u1","DataPartner_UUID":"","AAM_Regions":["6","9"],"Segments":["#,
            r#"{"Segment_ID":"14356","Status":"0","DateTime":"Wed Jul 27 16:17:23 UTC 2016"},"#,
            r#"{"Segment_ID":"99","Status":"0","DateTime":"Wed Jul 27 16:17:24 UTC 2016"}]},"#,
            r#"{"AAM_UUID":"u2","DataPartner_UUID":"","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#,
        )
    );
}

/// What the batch says it coalesced: (user, their segment, status, time).
fn coalesced(batch: &DestinationBatch) -> Vec<(String, String, bool, i64)> {
    batch
        .coalesced
        .iter()
        .map(|c| {
            let user = &batch.users[c.user];
            (
                batch.latest(user).user_id().to_owned(),
                batch.segments(user)[c.segment].segment_id.to_string(),
                c.active,
                c.time_unix_ms,
            )
        })
        .collect()
}

#[test]
fn every_replaced_change_is_reported_coalesced_and_nothing_else() {
    let mut batch = DestinationBatch::new(destination(""));
    let events = [
        update(
            "u1",
            &[],
            &[],
            vec![change(14356, true, T0), change(12176, true, T0)],
        ),
        update("u2", &[], &[], vec![change(14356, true, T0)]),
        update("u1", &[], &[], vec![change(14356, false, T0 + 1_000)]),
        // A later status of our 12176 (their 99): it replaces u1's first one.
        update("u1", &[], &[], vec![change(12176, false, T0 + 2_000)]),
        update("u1", &[], &[], vec![change(14356, true, T0 + 3_000)]),
    ];
    for event in events {
        batch.add(event).unwrap();
    }
    assert_eq!(
        coalesced(&batch),
        vec![
            ("u1".to_owned(), "14356".to_owned(), true, T0),
            ("u1".to_owned(), "99".to_owned(), true, T0),
            ("u1".to_owned(), "14356".to_owned(), false, T0 + 1_000),
        ]
    );
    // Each change given is either in the body or coalesced: 6 = 3 segments sent + 3 replaced.
    let sent = batch.change_count();
    assert_eq!(sent + batch.coalesced.len(), 6);
    batch.take_events();
    assert!(
        batch.coalesced.is_empty(),
        "a new batch starts with nothing coalesced"
    );
}

#[test]
fn an_event_handed_back_to_the_next_batch_coalesces_nothing_in_this_one() {
    let mut batch = DestinationBatch::new(destination(
        ", data_partner: 1234, batch: { max_bytes: 1024 }",
    ));
    batch
        .add(update("u1", &[], &[], vec![change(14356, true, T0)]))
        .unwrap();
    // The same segment again, with partner ids that make u1's entries too big for this batch.
    let ids: Vec<String> = (0..10).map(|i| format!("partner-id-{i:0>90}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let handed_back = batch.add(update(
        "u1",
        &[],
        &ids,
        vec![change(14356, false, T0 + 1_000)],
    ));
    assert!(
        handed_back.is_err(),
        "the test needs an event that does not fit"
    );
    assert!(
        batch.coalesced.is_empty(),
        "u1's 1 was not replaced in this batch: {:?}",
        coalesced(&batch)
    );
    assert!(
        body(&batch).contains(r#""Status":"1""#) && !body(&batch).contains("partner-id"),
        "the body is as before the event: {}",
        body(&batch)
    );
}

#[test]
fn a_user_changing_over_and_over_fills_the_batch_with_replaced_entries_never_the_body() {
    let mut batch = DestinationBatch::new(destination(", batch: { max_bytes: 1024 }"));
    batch.keep_log();
    let mut changes = 0;
    while !batch.is_full() && changes < 100 {
        let active = changes % 2 == 0;
        batch
            .add(update(
                "u1",
                &[],
                &[],
                vec![change(14356, active, T0 + changes)],
            ))
            .unwrap();
        changes += 1;
    }
    // Each add leaves ~130 bytes of u1's replaced entries: a body's worth (1,024) in 8.
    assert!((7..=9).contains(&changes), "{changes} changes filled it");
    assert_eq!(batch.users.len(), 1);
    let last = T0 + changes - 1;
    let expected_status = if (changes - 1) % 2 == 0 { "1" } else { "0" };
    let text = body(&batch);
    assert_eq!(text.matches("AAM_UUID").count(), 1, "one entry: {text}");
    assert!(
        text.contains(&format!(r#""Status":"{expected_status}""#)),
        "{text}"
    );
    assert_eq!(batch.segments(&batch.users[0])[0].time_unix_ms, last);
    // And one delivery log record, of the latest status.
    assert_eq!(batch.log_users().unwrap().len(), 1);
}

#[test]
fn max_users_closes_the_batch() {
    let mut batch = DestinationBatch::new(destination(", batch: { max_users: 2 }"));
    assert!(
        batch
            .add(update("u1", &[], &[], vec![change(14356, true, T0)]))
            .is_ok()
    );
    assert!(
        batch
            .add(update("u2", &[], &[], vec![change(14356, true, T0)]))
            .is_ok()
    );
    assert!(batch.is_full());
    assert!(
        batch
            .add(update("u1", &[], &[], vec![change(14356, false, T0)]))
            .is_ok(),
        "a known user fits"
    );
    assert!(
        batch
            .add(update("u3", &[], &[], vec![change(14356, true, T0)]))
            .is_err()
    );
    assert_eq!(batch.take_events().len(), 3);
    assert!(batch.is_empty());
    assert!(
        batch
            .add(update("u3", &[], &[], vec![change(14356, true, T0)]))
            .is_ok()
    );
}

#[test]
fn idempotency_key_depends_on_the_events_only() {
    let make = |users: &[&str]| {
        let mut batch = DestinationBatch::new(destination(""));
        for user in users {
            batch
                .add(update(user, &[], &[], vec![change(14356, true, T0)]))
                .unwrap();
        }
        batch
    };
    let key = idempotency_key(&make(&["a", "b"]), "segment-status");
    assert_eq!(key.len(), 32);
    assert_eq!(key, idempotency_key(&make(&["a", "b"]), "segment-status"));
    assert_ne!(key, idempotency_key(&make(&["a", "c"]), "segment-status"));
    assert_ne!(
        key,
        idempotency_key(&make(&["a", "b"]), "segment-status-batch")
    );
}

#[test]
fn idempotency_key_is_the_first_16_bytes_of_a_sha256_in_lowercase_hex() {
    // sha256(423 as u64 BE ‖ "segment-status" ‖ 0 ‖ (3 as i32 BE ‖ 42 as i64 BE) ‖ (3 ‖ 43)),
    // its first 16 bytes, computed outside Rust (Python's hashlib).
    let mut batch = DestinationBatch::new(destination(""));
    for (user, offset) in [("a", 42), ("b", 43)] {
        let mut event = update(user, &[], &[], vec![change(14356, true, T0)]);
        event.source = Some(EventSource {
            assignment: PartitionAssignment {
                partition: 3,
                generation: 1,
            },
            offset,
            catch_up: false,
            written_unix_ms: None,
        });
        batch.add(event).unwrap();
    }
    assert_eq!(
        idempotency_key(&batch, "segment-status"),
        "f7321bb9d09c4791f3f9aeeb783d5947"
    );
}

#[test]
fn digits_counts_the_decimal_digits_of_zero_to_u64_max() {
    assert_eq!(digits(0), 1);
    assert_eq!(digits(9), 1);
    assert_eq!(digits(10), 2);
    assert_eq!(digits(99), 2);
    assert_eq!(digits(100), 3);
    assert_eq!(digits(u64::MAX), 20);
}

proptest! {
    /// Whatever the events, the accounted size equals the body's length, and no batch of two
    /// or more users passes max_bytes.
    #[test]
    fn accounted_size_is_exact_and_limits_hold(
        events in proptest::collection::vec(
            (0_usize..6, "[a-z\"\\\\\u{1}é]{0,12}", proptest::collection::vec(0_u32..300, 0..3),
             proptest::collection::vec("[a-z0-9]{0,6}", 0..3),
             proptest::collection::vec((prop_oneof![Just(14356_u64), Just(12176), Just(500), Just(1)], any::<bool>(), prop_oneof![0_i64..4_102_444_799_000, any::<i64>()]), 1..4)),
            1..40),
        max_bytes in 1_024_usize..4_096,
    ) {
        let destination = destination(&format!(", data_partner: 1234, batch: {{ max_users: 5, max_bytes: {max_bytes} }}"));
        let mut batch = DestinationBatch::new(destination);
        for (user, suffix, regions, partner_ids, changes) in events {
            let partner_ids: Vec<&str> = partner_ids.iter().map(String::as_str).collect();
            let changes = changes.into_iter().map(|(s, a, t)| change(s, a, t)).collect();
            let event = update(&format!("user-{user}{suffix}"), &regions, &partner_ids, changes);
            if let Err(event) = batch.add(event) {
                let text = body(&batch);
                prop_assert!(batch.users.len() <= 5);
                prop_assert!(text.len() <= max_bytes || batch.users.len() == 1);
                batch.take_events();
                prop_assert!(batch.add(event).is_ok());
            }
            let text = body(&batch);
            prop_assert!(text.len() <= max_bytes || batch.users.len() == 1);
            // Over the limit (one user alone) is what the lane dead-letters instead of sending.
            prop_assert_eq!(batch.is_oversized(), text.len() > max_bytes);
            let parsed: serde_json::Value = serde_json::from_str(&text).unwrap();
            prop_assert_eq!(parsed["User_count"].as_str().unwrap().parse::<usize>().unwrap(), parsed["Users"].as_array().unwrap().len());
        }
    }
}

#[test]
fn a_targeted_update_never_shares_a_request_with_another_update_of_its_user() {
    let destination = destination(", data_partner: 1234");
    let targeted = |ids: &[&str], active: bool| {
        let mut event = update("u1", &[], ids, vec![change(14356, active, T0)]);
        let mut inner = event.update.to_proto();
        inner.only_data_partner_id = Some(1234);
        event.update = inner.into();
        event
    };
    let mut batch = DestinationBatch::new(destination.clone());
    batch
        .add(update(
            "u1",
            &[],
            &["a", "b"],
            vec![change(14356, true, T0)],
        ))
        .unwrap();
    // Merged, the evicted id's 0 would go to "a" and "b" (or "x" miss it).
    assert!(batch.add(targeted(&["x"], false)).is_err());
    batch
        .add(update("u2", &[], &["c"], vec![change(14356, true, T0)]))
        .unwrap();
    let mut next = DestinationBatch::new(destination);
    next.add(targeted(&["x"], false)).unwrap();
    assert!(
        next.add(update("u1", &[], &["a"], vec![change(12176, true, T0)]))
            .is_err()
    );
    assert!(body(&next).contains(r#""DataPartner_UUID":"x""#));
    assert_eq!(next.entry_count(), 1);
}

#[test]
fn a_user_keeps_what_the_lane_needs_of_their_latest_update() {
    let mut batch = DestinationBatch::new(destination(""));
    batch
        .add(update("u1", &[], &[], vec![change(14356, true, T0)]))
        .unwrap();
    let first = batch.users[0].latest_update;
    assert_eq!(
        (
            first.origin,
            first.produced_unix_ms,
            first.targeted,
            first.catch_up
        ),
        (Origin::Realtime, T0, false, false)
    );
    // A later update of the user, onboarded and read by the catch-up reader, stands for them.
    let mut later = update("u1", &[], &[], vec![change(500, true, T0 + 5)]);
    let mut inner = later.update.to_proto();
    inner.origin = Origin::Batch as i32;
    inner.produced_unix_ms = T0 + 7;
    later.update = inner.into();
    later.source = Some(EventSource {
        assignment: crate::offsets::PartitionAssignment {
            partition: 0,
            generation: 0,
        },
        offset: 3,
        catch_up: true,
        written_unix_ms: None,
    });
    batch.add(later).unwrap();
    assert_eq!(batch.users.len(), 1);
    let latest = batch.users[0].latest_update;
    assert_eq!(
        (latest.origin, latest.produced_unix_ms, latest.catch_up),
        (Origin::Batch, T0 + 7, true)
    );
    // A targeted update goes to a batch of its own, and says so.
    let mut targeted = DestinationBatch::new(destination(""));
    let mut event = update("u2", &[], &[], vec![change(500, true, T0)]);
    let mut inner = event.update.to_proto();
    inner.only_data_partner_id = Some(1234);
    event.update = inner.into();
    targeted.add(event).unwrap();
    assert!(targeted.users[0].latest_update.targeted);
}
