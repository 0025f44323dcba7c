//! Known-answer vectors (bytes worked out by hand from the protobuf encoding rules, not by
//! running the encoder) and round trips for the topic messages.

use proptest::prelude::*;
use prost::Message;

use crate::pb::{
    self, ChangeReason, DeadLetterRecord, ErrorClass, Origin, PartnerIds, SegmentChange,
    SegmentStatus, SegmentStatusUpdate, SourcePosition, TraitEvent, UserState,
};

/// 2016-07-27T16:17:22Z, the reference's example time, in ms.
const JUL_27_2016_MS: i64 = 1_469_636_242_000;

fn example_update() -> SegmentStatusUpdate {
    SegmentStatusUpdate {
        user_id: "u1".into(),
        regions: vec![6, 7],
        partner_ids: vec![PartnerIds {
            data_partner_id: 1234,
            partner_uuids: vec!["p1".into()],
        }],
        changes: vec![SegmentChange {
            segment_id: 14356,
            status: SegmentStatus::Active as i32,
            reason: ChangeReason::Qualified as i32,
            time_unix_ms: JUL_27_2016_MS,
        }],
        origin: Origin::Realtime as i32,
        produced_unix_ms: 0,
        sequence: 0,
        only_data_partner_id: None,
    }
}

#[test]
fn segment_status_update_known_answer() {
    // 0a 02 "u1" | 12 02 06 07 (packed regions) | 1a 07 {08 d2 09, 12 02 "p1"} |
    // 22 0e {08 94 70, 10 01, 18 01, 20 <varint 1469636242000>} | 28 01 (origin realtime)
    let expected =
        hex::decode("0a027531120206071a0708d20912027031220e0894701001180120d0d495e9e22a2801")
            .unwrap();
    assert_eq!(example_update().encode_to_vec(), expected);
    assert_eq!(
        SegmentStatusUpdate::decode(expected.as_slice()).unwrap(),
        example_update()
    );
}

#[test]
fn trait_event_known_answer() {
    let event = TraitEvent {
        user_id: "u1".into(),
        origin: Origin::Batch as i32,
        event: Some(pb::trait_event::Event::TraitRealization(
            pb::TraitRealization {
                trait_id: 101,
                time_unix_ms: JUL_27_2016_MS,
                region: Some(6),
            },
        )),
    };
    let expected = hex::decode("0a02753110021a0b086510d0d495e9e22a1806").unwrap();
    assert_eq!(event.encode_to_vec(), expected);
    assert_eq!(TraitEvent::decode(expected.as_slice()).unwrap(), event);
}

#[test]
fn missing_status_decodes_as_unspecified_not_inactive() {
    // A change written without a status must not read as "inactive" (wire "0").
    let change = SegmentChange::decode(&[0x08, 0x01][..]).unwrap();
    assert_eq!(change.status(), SegmentStatus::Unspecified);
    assert_eq!(change.reason(), ChangeReason::Unspecified);
}

#[test]
fn garbage_is_an_error_not_a_panic() {
    for bytes in [&[0xff_u8][..], &[0x0a, 0x05, 0x75][..], &[0x22, 0x80][..]] {
        assert!(SegmentStatusUpdate::decode(bytes).is_err(), "{bytes:02x?}");
    }
}

#[test]
fn dead_letter_and_state_round_trip() {
    let record = DeadLetterRecord {
        updates: vec![example_update()],
        destination_id: 423,
        attempts: 2,
        error_class: ErrorClass::Timeout as i32,
        error: "no response within 3000 ms".into(),
        first_attempt_unix_ms: JUL_27_2016_MS,
        last_attempt_unix_ms: JUL_27_2016_MS + 3_100,
        dead_lettered_unix_ms: JUL_27_2016_MS + 6_200,
        source: Some(SourcePosition {
            topic: "segment-status".into(),
            partition: 3,
            offset: 42,
        }),
        raw: vec![],
    };
    let bytes = record.encode_to_vec();
    assert_eq!(DeadLetterRecord::decode(bytes.as_slice()).unwrap(), record);

    let state = UserState {
        user_id: "u1".into(),
        traits: vec![pb::TraitHistory {
            trait_id: 101,
            times_unix_ms: vec![1, 2, 3],
        }],
        regions: vec![6],
        partner_ids: vec![],
        memberships: vec![pb::Membership {
            segment_id: 14356,
            since_unix_ms: 2,
            refreshed_unix_ms: 5,
        }],
        last_seen_unix_ms: 3,
        opted_out: false,
        opted_out_unix_ms: 0,
        last_sequence: 1_469_636_242_000 * 1024 + 3,
        last_change_unix_ms: 2,
        definitions_fingerprint: 0x9747_b28c,
        traits_apart: false,
        traits_generation: 3,
    };
    assert_eq!(
        UserState::decode(state.encode_to_vec().as_slice()).unwrap(),
        state
    );
}

proptest! {
    #[test]
    fn segment_status_update_round_trips(update in crate::strategies::any_status_update()) {
        let bytes = update.encode_to_vec();
        prop_assert_eq!(bytes.len(), update.encoded_len());
        let decoded = SegmentStatusUpdate::decode(bytes.as_slice()).unwrap();
        prop_assert_eq!(&decoded, &update);
        // Re-encoding is byte-identical: what a consumer forwards is what the producer wrote.
        prop_assert_eq!(decoded.encode_to_vec(), bytes);
    }
}

#[test]
fn a_dead_letter_of_a_huge_message_fits_under_the_limit_and_says_what_was_left_out() {
    let record = |raw: Vec<u8>| DeadLetterRecord {
        error_class: ErrorClass::Undecodable as i32,
        error: "not a SegmentStatusUpdate".into(),
        source: Some(SourcePosition {
            topic: "segment-status".into(),
            partition: 1,
            offset: 7,
        }),
        raw,
        ..DeadLetterRecord::default()
    };
    // Small enough: kept whole.
    let mut small = record(vec![0xff; 1000]);
    assert_eq!(small.fit_undecodable(b"user-1"), b"user-1");
    assert_eq!(small.raw.len(), 1000);
    assert_eq!(small.error, "not a SegmentStatusUpdate");

    // Just over the limit with its key: the bytes are left out, the position stays.
    let mut big = record(vec![0xff; crate::MAX_DEAD_LETTER_BYTES - 20]);
    let key = big.fit_undecodable(b"user-1");
    assert_eq!(key, b"user-1");
    assert!(big.raw.is_empty());
    assert!(key.len() + big.encoded_len() <= crate::MAX_DEAD_LETTER_BYTES);
    assert!(
        big.error.contains(&format!(
            "the message ({} bytes) is too large",
            crate::MAX_DEAD_LETTER_BYTES - 20
        )),
        "{}",
        big.error
    );
    assert_eq!(big.source.as_ref().map(|s| s.offset), Some(7));

    // A huge key is not kept either.
    let long_key = vec![b'k'; crate::MAX_DEAD_LETTER_KEY_BYTES + 1];
    let mut keyed = record(vec![1, 2, 3]);
    assert!(keyed.fit_undecodable(&long_key).is_empty());
    assert_eq!(keyed.raw, [1, 2, 3]);
    assert!(
        keyed.error.contains("the key (1025 bytes) is too long"),
        "{}",
        keyed.error
    );
}

#[test]
fn printed_times_have_three_fractional_digits_and_survive_any_input() {
    assert_eq!(
        crate::rfc3339_ms(1_469_636_242_250),
        "2016-07-27T16:17:22.250Z"
    );
    assert_eq!(
        crate::rfc3339_ms(1_469_636_242_000),
        "2016-07-27T16:17:22.000Z"
    );
    assert_eq!(
        crate::rfc3339_ms(i64::MAX),
        format!("{} ms since 1970", i64::MAX)
    );
}

#[test]
fn written_times_read_back_to_the_millisecond_and_bad_ones_say_what_was_expected() {
    for ms in [0, 1_469_636_242_250, 1_469_636_242_000] {
        assert_eq!(crate::unix_ms_from_rfc3339(&crate::rfc3339_ms(ms)), Ok(ms));
    }
    assert_eq!(
        crate::unix_ms_from_rfc3339("2016-07-27T18:17:22.25+02:00"),
        Ok(1_469_636_242_250)
    );
    let bad = crate::unix_ms_from_rfc3339("27/07/2016").unwrap_err();
    assert!(
        bad.starts_with("not an RFC 3339 time like 2026-11-28T10:00:00Z ("),
        "{bad}"
    );
}
