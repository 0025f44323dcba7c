//! The hand-written encoder writes what prost would for the same record, and a batch's records
//! are its users' records, each keyed by its user.

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
    let mut buf = Vec::new();
    let user = PartnerUser {
        aam_uuid: "u1",
        data_partner_uuid: "",
        regions,
        segments,
    };
    encode_user(
        &mut buf,
        &user,
        423,
        partner_uuids.iter().map(String::as_str),
    );
    encode_attempt(&mut buf, &context(report, 7));
    buf
}

/// A first attempt the partner accepted with `response`.
fn delivered(response: &[u8]) -> AttemptReport<'_> {
    AttemptReport {
        attempt: 1,
        http_status: Some(200),
        class: ErrorClass::Unspecified,
        error: "",
        response,
        delivered: true,
    }
}

fn context<'a>(report: &'a AttemptReport<'a>, batch_users: u32) -> RecordContext<'a> {
    RecordContext {
        process_time_unix_ms: 1_469_636_262_000,
        idempotency_key: "0a1b",
        report,
        worker: "delivery-0",
        time_unix_ms: 1_469_636_263_000,
        batch_users,
    }
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

    let bytes = encoded(&segments[..1], &[], &[], &delivered(b""));
    let record = DeliveryLogRecord::decode(bytes.as_slice()).unwrap();
    assert!(record.delivered && record.error.is_empty() && record.partner_uuids.is_empty());
    assert_eq!(bytes, record.encode_to_vec());
}

#[test]
fn a_batch_makes_one_record_per_user_keyed_by_the_user() {
    use crate::batcher::tests::{change, destination, update};
    let mut batch = crate::batcher::DestinationBatch::new(destination(", data_partner: 1234"));
    batch.keep_log();
    let t0 = 1_469_636_242_000;
    for event in [
        update("u1", &[6], &[], vec![change(14356, true, t0)]),
        update(
            "user-two",
            &[],
            &["p1", "p2"],
            vec![change(12176, false, t0 + 1)],
        ),
        // The same user again: their latest update, one record.
        update("u1", &[6, 7], &[], vec![change(500, true, t0 + 2)]),
        // An empty id is left out of the record (proto3), and so is it from the key.
        update("", &[], &[], vec![change(500, true, t0 + 3)]),
    ] {
        batch.add(event).unwrap();
    }
    let users = batch.log_users().unwrap();
    let delivered = delivered(b"{}");
    let mut attempt = Vec::new();
    encode_attempt(&mut attempt, &context(&delivered, 3));
    let mut records = Vec::new();
    users.each_record(&attempt, |key, payload| {
        records.push((
            String::from_utf8(key.to_vec()).unwrap(),
            DeliveryLogRecord::decode(payload).unwrap(),
        ));
    });
    let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["u1", "user-two", ""]);
    for (key, record) in &records {
        assert_eq!(&record.user_id, key);
        assert_eq!(record.destination_id, 423);
        assert_eq!(record.batch_users, 3);
        assert!(record.delivered && record.response == b"{}");
    }
    let (_, u1) = &records[0];
    let segment_ids: Vec<&str> = u1
        .segments
        .iter()
        .map(|s| s.partner_segment_id.as_str())
        .collect();
    assert_eq!(segment_ids, ["14356", "500"]);
    assert_eq!(u1.regions, [6, 7]);
    assert!(u1.partner_uuids.is_empty(), "no synced id");
    assert_eq!(records[1].1.partner_uuids, ["p1", "p2"]);
    assert_eq!(records[1].1.segments[0].partner_segment_id, "99");
}

/// Only failures come back from the broker (`delivery.report.only.error`): records it took
/// are not counted as dropped, and those it refused still are.
#[test]
fn records_the_broker_refuses_are_counted_as_dropped_and_the_rest_are_not() {
    use crate::batcher::tests::{change, destination, update};
    use rdkafka::mocking::MockCluster;
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use std::time::Duration;
    use telemetry::prometheus::IntCounter;

    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("delivery-log", 3, 1).unwrap();
    let kafka = telemetry::KafkaSettings::from_lookup(|name| {
        (name == "KAFKA_BROKERS").then(|| cluster.bootstrap_servers())
    })
    .unwrap();
    let records = IntCounter::new("records", "records").unwrap();
    let dropped = IntCounter::new("dropped", "dropped").unwrap();
    let log = DeliveryLog::new(&kafka, "delivery-log", records.clone(), dropped.clone()).unwrap();
    let mut batch = crate::batcher::DestinationBatch::new(destination(""));
    batch.keep_log();
    for user in ["u1", "u2", "u3"] {
        batch
            .add(update(user, &[], &[], vec![change(14356, true, 1)]))
            .unwrap();
    }
    let users = batch.log_users().unwrap();
    let report = delivered(b"");

    log.record(users, 1, "k", &report);
    log.flush(Duration::from_secs(10));
    assert_eq!((records.get(), dropped.get()), (3, 0), "all taken");

    // A refusal the producer does not retry: each record's report says so.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 100],
    );
    log.record(users, 1, "k", &report);
    log.flush(Duration::from_secs(10));
    assert_eq!((records.get(), dropped.get()), (6, 3), "three refused");
}
