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

proptest! {
    #[test]
    fn dates_agree_with_the_time_crate(secs in 0_i64..253_402_300_799) {
        let format = time::macros::format_description!(
            "[weekday repr:short] [month repr:short] [day] [hour]:[minute]:[second] UTC [year]"
        );
        let expected = time::OffsetDateTime::from_unix_timestamp(secs).unwrap().format(&format).unwrap();
        prop_assert_eq!(PartnerDate(secs * 1000 + 999).to_string(), expected);
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
    assert_eq!(String::from_utf8(body).unwrap(), expected);
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
    let request = PartnerRequest {
        process_time_unix_ms: 0,
        user_dpid: 1,
        client_id: "c\u{1}",
        destination_id: 2,
        users: &users,
    };
    let mut body = Vec::new();
    write_request(&request, &mut body).unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(parsed["Client_ID"], "c\u{1}");
    assert_eq!(parsed["Users"][0]["AAM_UUID"], "u\n1");
    assert_eq!(parsed["Users"][0]["DataPartner_UUID"], "p\\1");
    assert_eq!(parsed["Users"][0]["Segments"][0]["Segment_ID"], "a\"b");
}

#[test]
fn formatted_len_is_the_length_of_the_formatted_date() {
    for ms in [
        0,
        1_469_636_242_000,
        -1,
        -62_135_596_800_000, // year 1
        -62_167_219_200_001, // year -1 (0 is 1 BC)
        253_402_300_799_999, // 9999-12-31T23:59:59.999
        253_402_300_800_000, // year 10000
        i64::MAX,
        i64::MIN,
    ] {
        let date = PartnerDate(ms);
        assert_eq!(date.formatted_len(), date.to_string().len(), "{ms}: {date}");
    }
}
