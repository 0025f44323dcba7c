//! The hand-written encoder writes what prost would for the same record; an attempt's records
//! hold each user in the partition their id goes to, and `delivery log --user` finds them there,
//! as it finds the records keyed by user written before.

use std::sync::Arc;

use model::partner::PartnerSegment;
use model::{DeliveryLogAttempt, DeliveryLogRecord, ErrorClass, LoggedSegment};
use prost::Message as _;

use super::read::{Found, Query};
use super::*;

const U1: &str = "u1";

/// The user's part, and the whole record of an attempt to destination 423 with only them.
fn encoded(
    segments: &[PartnerSegment],
    partner_uuids: &[String],
    regions: &[u32],
    report: &AttemptReport<'_>,
) -> (Vec<u8>, Vec<u8>) {
    let user = PartnerUser {
        aam_uuid: U1,
        data_partner_uuid: "",
        regions,
        segments,
    };
    let mut users = PreparedUsers::default();
    let uuids = partner_uuids.iter().map(String::as_str);
    let mut part = Vec::new();
    encode_user(&mut part, &user, uuids.clone());
    users.bytes = part.clone();
    users.parts.push(UserPart {
        start: 0,
        end: part.len(),
        hash: telemetry::partition::key_hash(U1.as_bytes()),
    });
    let mut attempt = Vec::new();
    encode_attempt(&mut attempt, &context(report, 7));
    let mut records = Vec::new();
    users.each_record(
        1,
        RECORD_USER_BYTES,
        &attempt,
        |partition, payload, parts| {
            assert_eq!((partition, parts), (0, 1));
            records.push(payload.to_vec());
        },
    );
    assert_eq!(records.len(), 1);
    (part, records.remove(0))
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
        destination_id: 423,
        process_time_unix_ms: 1_469_636_262_000,
        idempotency_key: "0a1b",
        report,
        worker: "delivery-0",
        time_unix_ms: 1_469_636_263_000,
        batch_users,
    }
}

#[test]
fn records_decode_as_the_proto_messages_they_stand_for() {
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
    let (part, bytes) = encoded(&segments, &ids, &[6, 300], &failed);
    let user = DeliveryLogRecord {
        user_id: U1.to_owned(),
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
        ..Default::default()
    };
    assert_eq!(part, user.encode_to_vec(), "the user's part, byte for byte");
    let expected = DeliveryLogAttempt {
        users: vec![user.clone()],
        destination_id: 423,
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
        DeliveryLogAttempt::decode(bytes.as_slice()).unwrap(),
        expected
    );
    assert_eq!(
        bytes,
        expected.encode_to_vec(),
        "byte for byte what prost writes"
    );
    // The proto's promise: a user's part followed by the attempt's fields is their record.
    let mut attempt = Vec::new();
    encode_attempt(&mut attempt, &context(&failed, 7));
    let record = DeliveryLogRecord::decode([part, attempt].concat().as_slice()).unwrap();
    assert_eq!(
        (
            record.user_id.as_str(),
            record.destination_id,
            record.attempt
        ),
        (U1, 423, 2)
    );
    assert_eq!(
        (record.segments, record.response.len()),
        (user.segments, RESPONSE_BYTES)
    );

    let (_, bytes) = encoded(&segments[..1], &[], &[], &delivered(b""));
    let record = DeliveryLogAttempt::decode(bytes.as_slice()).unwrap();
    assert!(
        record.delivered && record.error.is_empty() && record.users[0].partner_uuids.is_empty()
    );
    assert_eq!(bytes, record.encode_to_vec());
}

/// What `delivery log --user` finds for `user` in `records` (partition, payload; no key), in
/// order.
fn found(user: &str, records: &[(i32, Vec<u8>)]) -> Vec<read::Entry> {
    let query = Query {
        user: user.to_owned(),
        destination: None,
        since_unix_ms: None,
    };
    let mut found = Found::new(&query);
    for (offset, (partition, payload)) in records.iter().enumerate() {
        found.message(None, Some(payload), Some(1), (*partition, offset as i64));
    }
    found.entries
}

#[test]
fn an_attempt_makes_one_record_per_partition_its_users_go_to() {
    use crate::batcher::tests::{change, destination, update};
    let mut batch = crate::batcher::DestinationBatch::new(destination(", data_partner: 1234"));
    batch.keep_log();
    let t0 = 1_469_636_242_000;
    let others: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    batch
        .add(update(U1, &[6], &[], vec![change(14356, true, t0)]))
        .unwrap();
    batch
        .add(update(
            "user-two",
            &[],
            &["p1", "p2"],
            vec![change(12176, false, t0 + 1)],
        ))
        .unwrap();
    for other in &others {
        batch
            .add(update(other, &[], &[], vec![change(500, true, t0)]))
            .unwrap();
    }
    // The same user again: their latest update, one part.
    batch
        .add(update(U1, &[6, 7], &[], vec![change(500, true, t0 + 2)]))
        .unwrap();
    // An empty id is left out of the part (proto3), and goes where an empty key does.
    batch
        .add(update("", &[], &[], vec![change(500, true, t0 + 3)]))
        .unwrap();
    let users = batch.log_users().unwrap();
    assert_eq!(users.len(), 43);
    let delivered = delivered(b"{}");
    let mut attempt = Vec::new();
    encode_attempt(&mut attempt, &context(&delivered, 43));
    const PARTITIONS: u32 = 4;
    let mut records = Vec::new();
    let mut placed = Vec::new();
    users.each_record(
        PARTITIONS,
        RECORD_USER_BYTES,
        &attempt,
        |partition, payload, parts| {
            let record = DeliveryLogAttempt::decode(payload).unwrap();
            assert_eq!(record.users.len(), parts);
            assert_eq!((record.destination_id, record.batch_users), (423, 43));
            assert!(record.delivered && record.response == b"{}");
            for user in &record.users {
                // Where the user's erasure goes, and where `delivery log --user` reads first.
                let goes_to = telemetry::partition::key_partitions(user.user_id.as_bytes(), 4)[0];
                assert_eq!(
                    partition, goes_to,
                    "{} is in partition {partition}",
                    user.user_id
                );
                placed.push(user.user_id.clone());
            }
            records.push((partition, payload.to_vec()));
        },
    );
    let partitions: Vec<i32> = records.iter().map(|r| r.0).collect();
    assert_eq!(
        partitions,
        [0, 1, 2, 3],
        "one record per partition, in order"
    );
    placed.sort();
    let mut all: Vec<String> = others.clone();
    all.extend([U1.to_owned(), "user-two".to_owned(), String::new()]);
    all.sort();
    assert_eq!(placed, all, "each user once");

    let u1 = found(U1, &records);
    assert_eq!(u1.len(), 1, "u1 once");
    let segment_ids: Vec<&str> = u1[0]
        .segments
        .iter()
        .map(|s| s.segment_id.as_str())
        .collect();
    assert_eq!(segment_ids, ["14356", "500"]);
    assert_eq!(
        (u1[0].regions.as_slice(), u1[0].destination),
        (&[6, 7][..], 423)
    );
    assert!(u1[0].partner_uuids.is_empty(), "no synced id");
    assert_eq!(
        (u1[0].idempotency_key.as_str(), u1[0].batch_users),
        ("0a1b", 43)
    );
    let two = found("user-two", &records);
    assert_eq!(two[0].partner_uuids, ["p1", "p2"]);
    assert_eq!(two[0].segments[0].segment_id, "99");
    // A user whose id is within another's ("user-1" in "user-10") is only themselves.
    assert_eq!(found("user-1", &records).len(), 1);
    assert!(found("user-", &records).is_empty());

    // A partition's part beyond the cap goes in more records, each user whole.
    let mut split = Vec::new();
    users.each_record(1, 200, &attempt, |_, payload, parts| {
        let record = DeliveryLogAttempt::decode(payload).unwrap();
        assert_eq!(record.users.len(), parts);
        assert!(
            payload.len() <= 200 + 40 + attempt.len(),
            "{} bytes",
            payload.len()
        );
        split.push(record.users.len());
    });
    assert!(split.len() > 1, "{split:?}");
    assert_eq!(split.iter().sum::<usize>(), 43);
}

#[test]
fn the_log_reads_the_records_keyed_by_user_and_an_erasure_hides_the_earlier_ones() {
    let report = delivered(b"{}");
    let segment = |time_unix_ms| {
        [PartnerSegment {
            segment_id: Arc::from("14356"),
            active: true,
            time_unix_ms,
        }]
    };
    let older = segment(10);
    let newer = segment(30);
    // A record of the layout before attempts: the user's part then the attempt's fields.
    let keyed = |segments: &[PartnerSegment]| {
        let user = PartnerUser {
            aam_uuid: U1,
            data_partner_uuid: "",
            regions: &[],
            segments,
        };
        let mut bytes = Vec::new();
        encode_user(&mut bytes, &user, []);
        encode_attempt(&mut bytes, &context(&report, 1));
        bytes
    };
    let query = Query {
        user: U1.to_owned(),
        destination: None,
        since_unix_ms: None,
    };
    let mut log = Found::new(&query);
    let key = Some(U1.as_bytes());
    log.message(key, Some(&keyed(&older)), Some(11), (0, 0));
    log.message(
        None,
        Some(&encoded(&older, &[], &[], &report).1),
        Some(12),
        (0, 1),
    );
    // Another user's record, and a record without them, are not theirs.
    log.message(
        Some(b"u2".as_slice()),
        Some(&keyed(&older)),
        Some(13),
        (0, 2),
    );
    assert_eq!(log.entries.len(), 2, "the keyed record and the attempt's");
    assert_eq!(log.entries[0].destination, 423);
    // Erased at 20: what was sent of changes up to 20 goes, also when logged after.
    log.message(key, None, Some(20), (0, 3));
    log.message(
        None,
        Some(&encoded(&older, &[], &[], &report).1),
        Some(21),
        (0, 4),
    );
    log.message(
        None,
        Some(&encoded(&newer, &[], &[], &report).1),
        Some(31),
        (0, 5),
    );
    log.message(key, Some(&keyed(&newer)), Some(32), (0, 6));
    let offsets: Vec<i64> = log.entries.iter().map(|e| e.offset).collect();
    assert_eq!(offsets, [5, 6]);
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
    let log = DeliveryLog::start(&kafka, "delivery-log", records.clone(), dropped.clone()).unwrap();
    let mut batch = crate::batcher::DestinationBatch::new(destination(""));
    batch.keep_log();
    for user in ["u1", "u2", "u3"] {
        batch
            .add(update(user, &[], &[], vec![change(14356, true, 1)]))
            .unwrap();
    }
    let users = batch.log_users().unwrap();
    let report = delivered(b"");

    log.record(users, 423, 1, "k", &report);
    log.flush(Duration::from_secs(10));
    assert_eq!((records.get(), dropped.get()), (3, 0), "all taken");
    assert_eq!(log.partitions.load(Ordering::Relaxed), 3);

    // A refusal the producer does not retry: each record's report says so.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 100],
    );
    log.record(users, 423, 1, "k", &report);
    log.flush(Duration::from_secs(10));
    assert_eq!((records.get(), dropped.get()), (6, 3), "three refused");
}

/// A log topic given more partitions while delivery runs (a real broker): the writer reads the
/// new count (every minute in the service, sooner here) and places each user's part by it,
/// in the partition where an erasure's tombstone and `delivery log --user` look.
#[test]
fn a_topic_given_more_partitions_has_users_placed_by_the_new_count() {
    use crate::batcher::tests::{change, destination, update};
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    use rdkafka::{Message as _, Offset, TopicPartitionList};
    use std::time::{Duration, Instant};
    use telemetry::prometheus::IntCounter;

    testkit::kafka::require_broker();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let topic = runtime.block_on(testkit::kafka::unique_topic("delivery-log", 1));
    let kafka = testkit::kafka::settings();
    let records = IntCounter::new("records", "records").unwrap();
    let dropped = IntCounter::new("dropped", "dropped").unwrap();
    let refresh = Duration::from_millis(200);
    let log = DeliveryLog::start_refreshing(&kafka, &topic, records, dropped, refresh).unwrap();
    assert_eq!(log.partitions.load(Ordering::Relaxed), 1);

    let admin: AdminClient<DefaultClientContext> =
        testkit::kafka::client_config().create().unwrap();
    let added = runtime
        .block_on(admin.create_partitions(&[NewPartitions::new(&topic, 4)], &AdminOptions::new()))
        .unwrap();
    assert!(added.iter().all(Result::is_ok), "{added:?}");
    let asked = Instant::now();
    while log.partitions.load(Ordering::Relaxed) != 4 {
        assert!(
            asked.elapsed() < Duration::from_secs(30),
            "the writer still places users by {} partitions",
            log.partitions.load(Ordering::Relaxed)
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut batch = crate::batcher::DestinationBatch::new(destination(""));
    batch.keep_log();
    let users: Vec<String> = (0..40).map(|i| format!("user-{i}")).collect();
    for user in &users {
        batch
            .add(update(user, &[], &[], vec![change(14356, true, 1)]))
            .unwrap();
    }
    log.record(batch.log_users().unwrap(), 423, 1, "k", &delivered(b""));
    log.flush(Duration::from_secs(10));

    let consumer: BaseConsumer = testkit::kafka::client_config()
        .set("group.id", testkit::unique_name("delivery-log-read"))
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..4 {
        partitions
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let mut placed: Vec<(String, i32)> = Vec::new();
    let reading = Instant::now();
    while placed.len() < users.len() && reading.elapsed() < Duration::from_secs(30) {
        let Some(message) = consumer.poll(Duration::from_millis(500)) else {
            continue;
        };
        let message = message.unwrap();
        let attempt = DeliveryLogAttempt::decode(message.payload().unwrap()).unwrap();
        placed.extend(
            attempt
                .users
                .into_iter()
                .map(|u| (u.user_id, message.partition())),
        );
    }
    placed.sort();
    let mut expected: Vec<(String, i32)> = users
        .iter()
        .map(|u| {
            (
                u.clone(),
                telemetry::partition::librdkafka_partition(u.as_bytes(), 4),
            )
        })
        .collect();
    expected.sort();
    assert_eq!(
        placed, expected,
        "each user once, in their id's partition of four"
    );
    assert!(
        expected.iter().any(|&(_, p)| p != 0),
        "some users' ids go past the first partition"
    );
}
