//! Golden bodies and date vectors for the partner contract (docs/PARTNER-CONTRACT.md#the-body).

use std::sync::Arc;

use proptest::prelude::*;

use super::*;

fn segment(id: &str, active: bool, time_unix_ms: i64) -> PartnerSegment {
    PartnerSegment {
        segment_id: Arc::from(id),
        active,
        time_unix_ms,
    }
}

#[test]
fn dates_match_the_reference_format() {
    for (ms, expected) in [
        (1_469_636_242_000, "Wed Jul 27 16:17:22 UTC 2016"),
        (1_469_636_262_999, "Wed Jul 27 16:17:42 UTC 2016"),
        // The day is zero-padded to two digits.
        (1_467_821_862_000, "Wed Jul 06 16:17:42 UTC 2016"),
        (0, "Thu Jan 01 00:00:00 UTC 1970"),
        (951_782_400_000, "Tue Feb 29 00:00:00 UTC 2000"),
        (4_102_444_799_000, "Thu Dec 31 23:59:59 UTC 2099"),
        // Before the epoch: the second still rounds down.
        (-1, "Wed Dec 31 23:59:59 UTC 1969"),
    ] {
        assert_eq!(PartnerDate(ms).to_string(), expected, "{ms}");
    }
}

/// The partner format of `secs`, written by the `time` crate.
fn reference_date(secs: i64) -> String {
    let format = time::macros::format_description!(
        "[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] UTC [year]"
    );
    time::OffsetDateTime::from_unix_timestamp(secs)
        .unwrap()
        .format(&format)
        .unwrap()
}

proptest! {
    #[test]
    fn dates_agree_with_the_time_crate(secs in 0_i64..253_402_300_799) {
        let expected = reference_date(secs);
        prop_assert_eq!(PartnerDate(secs * 1000 + 999).to_string(), expected);
    }

    /// Each thread keeps the last date it wrote: dates written one after another, within a
    /// second, a day and across days, back and forth, read as each alone.
    #[test]
    fn dates_in_a_row_agree_with_the_time_crate(
        start in 4_000_000_i64..253_398_000_000,
        steps in proptest::collection::vec(
            (prop_oneof![Just(0_i64), -2_i64..3, -200_000_i64..200_000], 0_i64..1000),
            1..40,
        ),
    ) {
        let mut secs = start;
        for (step, ms) in steps {
            secs += step;
            let expected = reference_date(secs);
            prop_assert_eq!(PartnerDate(secs * 1000 + ms).to_string(), expected);
        }
    }
}

#[test]
fn body_is_the_reference_shape_with_strings_everywhere() {
    let first = [
        segment("14356", true, 1_469_636_242_000),
        segment("12176", false, 1_469_636_242_000),
    ];
    let second = [segment("10329", true, 1_469_636_241_000)];
    let users = [
        PartnerUser {
            aam_uuid: "19393572368547369350319949416899715727",
            data_partner_uuid: "4250948725049857",
            regions: &[6, 7],
            segments: &first,
        },
        PartnerUser {
            aam_uuid: "0578240750487542456854736923319946899715232",
            data_partner_uuid: "",
            regions: &[],
            segments: &second,
        },
    ];
    let request = PartnerRequest {
        process_time_unix_ms: 1_469_636_262_000,
        user_dpid: 20915,
        client_id: "74323",
        destination_id: 423,
        users: &users,
    };
    let mut body = b"left over from the last batch".to_vec();
    write_request(&request, &mut body).unwrap();
    let expected = concat!(
        r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","#,
        r#""AAM_Destination_Id":"423","User_count":"2","Users":["#,
        r#"{"AAM_UUID":"19393572368547369350319949416899715727","DataPartner_UUID":"4250948725049857","#,
        r#""AAM_Regions":["6","7"],"Segments":["#,
        r#"{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"},"#,
        r#"{"Segment_ID":"12176","Status":"0","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]},"#,
        r#"{"AAM_UUID":"0578240750487542456854736923319946899715232","DataPartner_UUID":"","#,
        r#""Segments":[{"Segment_ID":"10329","Status":"1","DateTime":"Wed Jul 27 16:17:21 UTC 2016"}]}]}"#,
    );
    assert_eq!(
        pieces(&request),
        body,
        "the body written in pieces is the same"
    );
    assert_eq!(String::from_utf8(body).unwrap(), expected);
}

/// The body of `request` from [`write_head`], [`write_user`] and `]}`.
fn pieces(request: &PartnerRequest<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    write_head(
        request.process_time_unix_ms,
        request.user_dpid,
        request.client_id,
        request.destination_id,
        request.users.len(),
        &mut out,
    );
    for (i, user) in request.users.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_user(user, &mut out);
    }
    out.extend_from_slice(b"]}");
    out
}

#[test]
fn strings_are_escaped() {
    let segments = [segment("a\"b", true, 0)];
    let users = [PartnerUser {
        aam_uuid: "u\n1",
        data_partner_uuid: "p\\1",
        regions: &[],
        segments: &segments,
    }];
    let mut request = PartnerRequest {
        process_time_unix_ms: 0,
        user_dpid: 1,
        client_id: "c\u{1}",
        destination_id: 2,
        users: &users,
    };
    let mut body = Vec::new();
    write_request(&request, &mut body).unwrap();
    assert_eq!(
        pieces(&request),
        body,
        "the body written in pieces is the same"
    );
    // A `ProcessTime` past year 9999 is written the long way, in pieces too.
    let mut far = Vec::new();
    request.process_time_unix_ms = 300_000_000_000_000;
    write_request(&request, &mut far).unwrap();
    assert_eq!(pieces(&request), far);
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["Client_ID"], "c\u{1}");
    assert_eq!(parsed["Users"][0]["AAM_UUID"], "u\n1");
    assert_eq!(parsed["Users"][0]["DataPartner_UUID"], "p\\1");
    assert_eq!(parsed["Users"][0]["Segments"][0]["Segment_ID"], "a\"b");
}

#[test]
fn a_date_of_any_year_is_formatted_in_28_characters_or_the_long_way() {
    for (ms, fixed) in [
        (0, true),
        (1_469_636_242_000, true),
        (-1, true),
        (-62_135_596_800_000, false), // year 1
        (-62_167_219_200_001, false), // year -1 (0 is 1 BC)
        (253_402_300_799_999, true),  // 9999-12-31T23:59:59.999
        (253_402_300_800_000, false), // year 10000
        (i64::MAX, false),
        (i64::MIN, false),
    ] {
        let date = PartnerDate(ms).to_string();
        assert_eq!(date.len() == 28, fixed, "{ms}: {date}");
        assert!(date.len() >= 24 && date.contains(" UTC "), "{ms}: {date}");
    }
}

proptest! {
    /// The entries written by hand are the bytes serde writes, for any strings (escapes
    /// included), regions and times (far dates included).
    #[test]
    fn the_body_in_pieces_is_the_reference_body(
        users in proptest::collection::vec(
            (
                any::<String>(),
                any::<String>(),
                proptest::collection::vec(any::<u32>(), 0..3),
                proptest::collection::vec((any::<String>(), any::<bool>(), any::<i64>()), 0..3),
            ),
            1..4,
        ),
        process_time in any::<i64>(),
        client_id in any::<String>(),
    ) {
        let segments: Vec<Vec<PartnerSegment>> = users
            .iter()
            .map(|(_, _, _, s)| s.iter().map(|(id, active, time)| segment(id, *active, *time)).collect())
            .collect();
        let entries: Vec<PartnerUser<'_>> = users
            .iter()
            .zip(&segments)
            .map(|((id, uuid, regions, _), segments)| PartnerUser {
                aam_uuid: id,
                data_partner_uuid: uuid,
                regions,
                segments,
            })
            .collect();
        let request = PartnerRequest {
            process_time_unix_ms: process_time,
            user_dpid: 20915,
            client_id: &client_id,
            destination_id: 423,
            users: &entries,
        };
        let mut reference = Vec::new();
        write_request(&request, &mut reference).unwrap();
        prop_assert_eq!(pieces(&request), reference);
    }
}
