//! The hand-written encoder writes what prost would for the same record.

use std::sync::Arc;

use model::partner::PartnerSegment;
use model::{DeliveryLogRecord, ErrorClass, LoggedSegment};
use prost::Message as _;

use super::*;

fn encoded(
    segments: &[PartnerSegment],
    partner_uuids: &[String],
    regions: &[u32],
    report: &AttemptReport<'_>,
) -> Vec<u8> {
    let context = RecordContext {
        destination_id: 423,
        process_time_unix_ms: 1_469_636_262_000,
        idempotency_key: "0a1b",
        report,
        worker: "delivery-0",
        time_unix_ms: 1_469_636_263_000,
        batch_users: 7,
    };
    let mut buf = Vec::new();
    encode_record(&mut buf, "u1", segments, partner_uuids, regions, &context);
    buf
}

#[test]
fn records_decode_as_the_proto_message_they_stand_for() {
    let segments = [
        PartnerSegment {
            segment_id: Arc::from("14356"),
            active: true,
            time_unix_ms: 1_469_636_242_000,
        },
        PartnerSegment {
            segment_id: Arc::from("99"),
            active: false,
            // Before 1970: a negative varint, as prost writes it.
            time_unix_ms: -5,
        },
    ];
    let failed = AttemptReport {
        attempt: 2,
        http_status: Some(503),
        class: ErrorClass::HttpStatus,
        error: "HTTP 503",
        response: &[b'x'; 300],
        delivered: false,
    };
    let ids = ["a".to_owned(), String::new()];
    let bytes = encoded(&segments, &ids, &[6, 300], &failed);
    let expected = DeliveryLogRecord {
        user_id: "u1".to_owned(),
        destination_id: 423,
        segments: vec![
            LoggedSegment {
                partner_segment_id: "14356".to_owned(),
                active: true,
                time_unix_ms: 1_469_636_242_000,
            },
            LoggedSegment {
                partner_segment_id: "99".to_owned(),
                active: false,
                time_unix_ms: -5,
            },
        ],
        partner_uuids: ids.to_vec(),
        regions: vec![6, 300],
        process_time_unix_ms: 1_469_636_262_000,
        idempotency_key: "0a1b".to_owned(),
        attempt: 2,
        http_status: 503,
        error_class: ErrorClass::HttpStatus as i32,
        error: "HTTP 503".to_owned(),
        response: vec![b'x'; RESPONSE_BYTES],
        worker: "delivery-0".to_owned(),
        time_unix_ms: 1_469_636_263_000,
        delivered: false,
        batch_users: 7,
    };
    assert_eq!(
        DeliveryLogRecord::decode(bytes.as_slice()).unwrap(),
        expected
    );
    assert_eq!(
        bytes,
        expected.encode_to_vec(),
        "byte for byte what prost writes"
    );

    let delivered = AttemptReport {
        attempt: 1,
        http_status: Some(200),
        class: ErrorClass::Unspecified,
        error: "",
        response: b"",
        delivered: true,
    };
    let bytes = encoded(&segments[..1], &[], &[], &delivered);
    let record = DeliveryLogRecord::decode(bytes.as_slice()).unwrap();
    assert!(record.delivered && record.error.is_empty() && record.partner_uuids.is_empty());
    assert_eq!(bytes, record.encode_to_vec());
}
