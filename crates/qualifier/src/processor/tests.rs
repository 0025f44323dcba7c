//! The qualifier's protobuf inputs, fuzzed through the code the processor runs on them:
//! `decode_event` then one evaluation for input events, `UserState::decode` then the timer
//! path for changelog records; and forward compatibility (unknown fields decode).

use std::path::Path;
use std::time::Duration;

use model::pb::{IdSync, OptOut, PartnerIds, TraitHistory, TraitRealization, trait_event};
use model::{Origin, UserState};
use proptest::prelude::*;
use testkit::fuzz::{length_delimited, with_unknown_fields};
use testkit::kafka::MockCluster;

use super::*;
use crate::evaluate::next_due;

const NOW: i64 = 1_764_324_000_000;

/// Parsed once: the properties run thousands of cases.
static DEFINITIONS: std::sync::LazyLock<Definitions> = std::sync::LazyLock::new(|| {
    Definitions::parse(
        Path::new("fuzz.yaml"),
        "traits: [{ id: 101, ttl: 30d }, { id: 102, ttl: 0 }, { id: 103, ttl: 2s }]\n\
         segments:\n\
         - { id: 100, rule: \"T101\" }\n\
         - { id: 200, rule: \"T101 >= 2 WITHIN 7d AND NOT T103\" }\n\
         - { id: 300, rule: \"T102 OR (T103 WITHIN 1s)\" }\n",
    )
    .unwrap()
});

/// Kafka's default limit on one record (key and value) that the processor produces.
const MAX_RECORD_BYTES: usize = 1_000_000;

/// `decode_event` into a fresh event, and into one that held another event before (as the
/// processor's kept event has): both must give the same.
fn decode(payload: &[u8]) -> Result<(TraitEvent, EventKind), (EventKind, String)> {
    let mut fresh = TraitEvent::default();
    let decoded = decode_event(payload, &mut fresh);
    let mut used = TraitEvent {
        user_id: "held-before".repeat(50),
        origin: Origin::Batch as i32,
        event: Some(trait_event::Event::IdSync(IdSync {
            data_partner_id: 7,
            partner_uuid: "p".repeat(100),
            time_unix_ms: NOW,
        })),
    };
    assert_eq!(decode_event(payload, &mut used), decoded);
    if decoded.is_ok() {
        assert_eq!(used, fresh, "decoded into an event used before");
    }
    decoded.map(|kind| (fresh, kind))
}

/// What the processor does with an input message's value, checked: decoding never panics or
/// hangs; a decoded event is valid, evaluates (new user and known user), and makes records
/// Kafka accepts.
fn check_event(payload: &[u8]) -> Result<(), TestCaseError> {
    let defs = &*DEFINITIONS;
    let decoded = testkit::fuzz::within(Duration::from_secs(1), "decoding an event", || {
        decode(payload)
    });
    let Ok((event, kind)) = decoded else {
        return Ok(());
    };
    // Every kind but `Unknown` decodes (a right-to-erasure `forget` too).
    prop_assert!(kind != EventKind::Unknown);
    let mut evaluator = Evaluator::default();
    let known = UserState {
        user_id: event.user_id.clone(),
        traits: vec![TraitHistory {
            trait_id: 101,
            times_unix_ms: vec![NOW - 5_000, NOW - 1_000],
        }],
        memberships: vec![model::pb::Membership {
            segment_id: 100,
            since_unix_ms: NOW - 5_000,
            refreshed_unix_ms: 0,
        }],
        last_seen_unix_ms: NOW - 1_000,
        ..UserState::default()
    };
    for (state, due) in [(None, None), (Some(known), Some(NOW + 1))] {
        let step = evaluator.on_event(defs, state, due, &event, NOW);
        prop_assert!(step.is_ok(), "a valid event was refused: {:?}", step);
        let step = step.unwrap_or_else(|_| unreachable!());
        let key = event.user_id.len();
        if let Some(update) = &step.update {
            prop_assert_eq!(&update.user_id, &event.user_id);
            prop_assert!(key + update.encoded_len() < MAX_RECORD_BYTES);
        }
        if let Some(state) = &step.state {
            prop_assert!(key + state.encoded_len() < MAX_RECORD_BYTES);
            let _ = next_due(defs, state, NOW);
        }
    }
    Ok(())
}

/// What restoring a changelog record does, checked: decoding, the user's next timer and the
/// timer's evaluation never panic or hang.
fn check_state(payload: &[u8]) -> Result<(), TestCaseError> {
    let defs = &*DEFINITIONS;
    let decoded = testkit::fuzz::within(Duration::from_secs(1), "decoding a state", || {
        UserState::decode(payload)
    });
    let Ok(state) = decoded else {
        return Ok(());
    };
    let mut evaluator = Evaluator::default();
    for now in [NOW, i64::MIN, i64::MAX] {
        if let Some(due) = next_due(defs, &state, now) {
            let step = evaluator.on_timer(defs, state.clone(), due.max(now));
            if let Some(update) = &step.update {
                prop_assert!(!update.changes.is_empty());
            }
        }
    }
    Ok(())
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    testkit::fuzz::corpus(env!("CARGO_MANIFEST_DIR"), target)
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    corpus(target).into_iter().map(|(_, bytes)| bytes).collect()
}

#[test]
fn every_event_and_state_in_the_corpora_is_handled() {
    for (name, bytes) in corpus("trait_event") {
        if let Err(failure) = check_event(&bytes) {
            panic!("trait_event/{name}: {failure}");
        }
    }
    for (name, bytes) in corpus("user_state") {
        if let Err(failure) = check_state(&bytes) {
            panic!("user_state/{name}: {failure}");
        }
    }
    // Seeds that must keep their verdict.
    let verdict = |name: &str| {
        decode(
            &std::fs::read(
                testkit::fuzz::corpus_dir(env!("CARGO_MANIFEST_DIR"), "trait_event").join(name),
            )
            .unwrap(),
        )
    };
    assert_eq!(
        verdict("trait-realization.bin").map(|(_, kind)| kind.label()),
        Ok("trait")
    );
    assert_eq!(
        verdict("unknown-fields-nested.bin").map(|(_, kind)| kind.label()),
        Ok("trait")
    );
    assert_eq!(
        verdict("no-event.bin").unwrap_err(),
        (
            EventKind::Unknown,
            "the event has no trait realization, id sync or opt-out".to_owned()
        )
    );
    assert_eq!(
        verdict("long-user-id.bin").unwrap_err(),
        (
            EventKind::Trait,
            "user_id is 600 bytes long, more than the 512 allowed".to_owned()
        )
    );
    assert!(
        verdict("truncated-length.bin")
            .unwrap_err()
            .1
            .starts_with("not a TraitEvent")
    );
}

proptest! {
    #![proptest_config(testkit::fuzz::config())]

    /// Fuzzing the decoding of `trait-events` messages (arbitrary bytes, mutated seeds).
    #[test]
    fn fuzz_trait_event_decoding(payload in testkit::fuzz::bytes(seeds("trait_event"))) {
        check_event(&payload)?;
    }

    /// Fuzzing the decoding of `qualifier-changelog` records (arbitrary bytes, mutated seeds).
    #[test]
    fn fuzz_changelog_decoding(payload in testkit::fuzz::bytes(seeds("user_state"))) {
        check_state(&payload)?;
    }
}

fn events() -> Vec<TraitEvent> {
    let event = |event| TraitEvent {
        user_id: "u1".into(),
        origin: Origin::Realtime as i32,
        event: Some(event),
    };
    vec![
        event(trait_event::Event::TraitRealization(TraitRealization {
            trait_id: 101,
            time_unix_ms: NOW,
            region: Some(6),
        })),
        event(trait_event::Event::IdSync(IdSync {
            data_partner_id: 1234,
            partner_uuid: "p-1".into(),
            time_unix_ms: NOW,
        })),
        event(trait_event::Event::OptOut(OptOut { time_unix_ms: NOW })),
        event(trait_event::Event::Forget(model::pb::Forget {
            time_unix_ms: NOW,
        })),
    ]
}

#[test]
fn events_from_a_newer_producer_decode_with_their_unknown_fields_skipped() {
    for event in events() {
        let bytes = event.encode_to_vec();
        // Unknown fields after the event, and inside its nested message.
        let (field, nested) = match event.event.as_ref().unwrap() {
            trait_event::Event::TraitRealization(m) => (3, m.encode_to_vec()),
            trait_event::Event::IdSync(m) => (4, m.encode_to_vec()),
            trait_event::Event::OptOut(m) => (5, m.encode_to_vec()),
            trait_event::Event::Forget(m) => (6, m.encode_to_vec()),
        };
        let mut inner = TraitEvent {
            event: None,
            ..event.clone()
        }
        .encode_to_vec();
        inner.extend(length_delimited(field, &with_unknown_fields(&nested)));
        for newer in [with_unknown_fields(&bytes), with_unknown_fields(&inner)] {
            let (decoded, _) = decode(&newer).unwrap();
            assert_eq!(decoded, event);
        }
    }
}

#[test]
fn changelog_records_from_a_newer_qualifier_restore_with_their_unknown_fields_skipped() {
    let state = UserState {
        user_id: "u1".into(),
        traits: vec![TraitHistory {
            trait_id: 101,
            times_unix_ms: vec![NOW - 1, NOW],
        }],
        regions: vec![6],
        partner_ids: vec![PartnerIds {
            data_partner_id: 1234,
            partner_uuids: vec!["p-1".into()],
        }],
        memberships: vec![model::pb::Membership {
            segment_id: 100,
            since_unix_ms: NOW,
            refreshed_unix_ms: 0,
        }],
        last_seen_unix_ms: NOW,
        opted_out: false,
        opted_out_unix_ms: 0,
        last_sequence: 42,
        last_change_unix_ms: NOW,
        definitions_fingerprint: 7,
        traits_apart: false,
        traits_generation: 2,
    };
    let mut newer = with_unknown_fields(&state.encode_to_vec());
    // And a trait history written with an extra field.
    let history = with_unknown_fields(&state.traits[0].encode_to_vec());
    newer.extend(length_delimited(2, &history));
    let decoded = UserState::decode(newer.as_slice()).unwrap();
    let mut expected = state.clone();
    expected.traits.push(state.traits[0].clone());
    assert_eq!(decoded, expected);
}

/// A mock cluster with the processor's topics, `events` holding `u1`'s event (no event at all:
/// the processor dead-letters it), and its bootstrap servers.
fn mock_cluster() -> (MockCluster, String) {
    let cluster = MockCluster::new(1).unwrap();
    for topic in ["events", "status", "status-batch", "changelog", "dlq"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    testkit::kafka::produce_one(&brokers, "events", "u1", b"\xffno event");
    (cluster, brokers)
}

/// The topics, group and transactional id of the mock clusters' processors.
fn topology() -> Topology {
    Topology {
        group_id: "qualifier".to_owned(),
        events_topic: "events".to_owned(),
        status_topic: "status".to_owned(),
        status_batch_topic: "status-batch".to_owned(),
        changelog_topic: "changelog".to_owned(),
        changelog_trait_parts: false,
        warm_state_bytes: 1 << 20,
        dlq_topic: "dlq".to_owned(),
        delivery_log_topic: None,
        transactional_id: "qualifier-0".to_owned(),
    }
}

/// A processor of `mock_cluster`'s topics in group `qualifier`, started (its producer
/// initialized), with its metrics and health.
fn mock_processor(brokers: &str) -> (Processor, Metrics, telemetry::Health) {
    let definitions: SharedDefinitions = Arc::new(RwLock::new(Arc::new(DEFINITIONS.clone())));
    mock_processor_with(brokers, definitions)
}

/// [`mock_processor`] under `definitions`, which the test may change as a reload does.
fn mock_processor_with(
    brokers: &str,
    definitions: SharedDefinitions,
) -> (Processor, Metrics, telemetry::Health) {
    let kafka =
        KafkaSettings::from_lookup(|name| (name == "KAFKA_BROKERS").then(|| brokers.to_owned()))
            .unwrap();
    let topology = topology();
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let health = telemetry::Health::new("starting");
    let processor = Processor::start(
        &kafka,
        topology,
        definitions,
        metrics.clone(),
        health.liveness(),
    )
    .unwrap();
    (processor, metrics, health)
}

/// `processor` running on a thread of its own until the token is cancelled.
fn running(
    processor: Processor,
    health: telemetry::Health,
) -> (
    CancellationToken,
    std::thread::JoinHandle<Result<(), KafkaError>>,
) {
    let shutdown = CancellationToken::new();
    let run = std::thread::spawn({
        let shutdown = shutdown.clone();
        move || processor.run(&shutdown, &health)
    });
    (shutdown, run)
}

/// A coordinator that answers the first requests for the group's commits `NOT_COORDINATOR`
/// (it moved: its broker restarted) delays the assigned partition and never leaves it unread
/// (librdkafka #5586, see `telemetry::commits`): the event on it is processed, here
/// dead-lettered since it is no event.
#[test]
fn an_assigned_partition_is_processed_though_the_coordinator_moved() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let (cluster, brokers) = mock_cluster();
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
    );
    let (processor, _, health) = mock_processor(&brokers);
    let (shutdown, run) = running(processor, health);
    let dead_lettered = testkit::kafka::first_key(&brokers, "dlq", Duration::from_secs(20));
    shutdown.cancel();
    let ended = run.join().unwrap();
    assert_eq!(
        dead_lettered.as_deref(),
        Some(&b"u1"[..]),
        "nothing dead-lettered within 20 s; processing ended {ended:?}"
    );
}

/// A `send_offsets_to_transaction` that outlives its bound (the broker answers after 1 s, the
/// bound is 300 ms: librdkafka's own hang, docs/RELIABILITY.md cluster item 9, is not
/// reproducible) fails its transaction, and the producer is given up for a new one without an
/// abort: processing goes on (a later event is dead-lettered) and the run does not end.
#[test]
fn a_send_offsets_that_outlives_its_bound_costs_the_producer_not_the_processing() {
    let (cluster, brokers) = mock_cluster();
    let (mut processor, metrics, health) = mock_processor(&brokers);
    processor.offsets_bound = Duration::from_millis(300);
    cluster
        .broker_round_trip_time(1, Duration::from_secs(1))
        .unwrap();
    let (shutdown, run) = running(processor, health);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while metrics.transactions_failed.get() == 0 && std::time::Instant::now() < deadline {
        assert!(
            !run.is_finished(),
            "processing ended before a transaction failed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        metrics.transactions_failed.get() > 0,
        "the slow send_offsets_to_transaction did not fail its transaction in 30 s"
    );
    cluster.broker_round_trip_time(1, Duration::ZERO).unwrap();
    testkit::kafka::produce_one(&brokers, "events", "u2", b"\xffno event");
    let processed = testkit::kafka::has_key(&brokers, "dlq", b"u2", Duration::from_secs(30));
    shutdown.cancel();
    let ended = run.join().unwrap();
    assert!(
        processed,
        "the event after the failed transaction not dead-lettered in 30 s; processing ended {ended:?}"
    );
    ended.unwrap();
}

/// Input events counted so far (`qualifier_events_total`, every type and outcome).
fn events_counted(metrics: &Metrics) -> u64 {
    use prometheus::core::Collector;
    metrics
        .events
        .collect()
        .iter()
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

/// Waits (up to 30 s) until `n` input events are counted; how many transactions had ended
/// then.
fn transactions_ended_once_counted(metrics: &Metrics, n: u64) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while events_counted(metrics) < n && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ended = metrics.transaction_duration.get_sample_count();
    assert_eq!(events_counted(metrics), n, "events counted within 30 s");
    ended
}

/// A transaction's commit runs while the next transaction's events are evaluated. The
/// transaction coordinator answers each request after 2 s, the partitions' leader (and the
/// group's coordinator) at once. The event produced once the first is evaluated is taken and
/// evaluated (here dead-lettered, as the first) while the first transaction still commits: no
/// transaction has ended yet when it is counted. Before, it waited in the consumer for that
/// commit (then one transaction had ended), and then for its own.
#[test]
fn the_next_transactions_events_are_evaluated_while_the_last_one_commits() {
    use rdkafka::mocking::MockCoordinator;

    let cluster = MockCluster::new(2).unwrap();
    for topic in ["events", "status", "status-batch", "changelog", "dlq"] {
        cluster.create_topic(topic, 1, 1).unwrap();
        cluster.partition_leader(topic, 0, Some(1)).unwrap();
    }
    cluster
        .coordinator(MockCoordinator::Group("qualifier".to_owned()), 1)
        .unwrap();
    cluster
        .coordinator(MockCoordinator::Transaction("qualifier-0".to_owned()), 2)
        .unwrap();
    let brokers = cluster.bootstrap_servers();
    testkit::kafka::produce_one(&brokers, "events", "u1", b"\xffno event");
    let (processor, metrics, health) = mock_processor(&brokers);
    cluster
        .broker_round_trip_time(2, Duration::from_secs(2))
        .unwrap();
    let (shutdown, run) = running(processor, health);
    let counted = |n: u64| transactions_ended_once_counted(&metrics, n);
    assert_eq!(counted(1), 0);
    testkit::kafka::produce_one(&brokers, "events", "u2", b"\xffno event");
    let ended_before_the_second = counted(2);
    let committed = testkit::kafka::has_key(&brokers, "dlq", b"u2", Duration::from_secs(30));
    // Events that come while transactions commit, each realized as it is produced: each
    // qualifies its user at the event's own time, not at a clock read before it came.
    let mut sent = std::collections::BTreeMap::new();
    for i in 0..12 {
        let user = format!("r{i}");
        let time = telemetry::clock::unix_ms();
        let event = TraitEvent {
            user_id: user.clone(),
            origin: Origin::Realtime as i32,
            event: Some(trait_event::Event::TraitRealization(TraitRealization {
                trait_id: 101,
                time_unix_ms: time,
                region: None,
            })),
        };
        testkit::kafka::produce_one(&brokers, "events", &user, &event.encode_to_vec());
        sent.insert(user, time);
        std::thread::sleep(Duration::from_millis(300));
    }
    let qualified = committed_changes(&brokers, "status", sent.len(), Duration::from_secs(60));
    shutdown.cancel();
    let ended = run.join().unwrap();
    assert_eq!(
        ended_before_the_second, 0,
        "the second event was evaluated only after the first transaction's commit"
    );
    assert!(
        committed,
        "the second event's dead letter was not committed within 30 s"
    );
    assert_eq!(
        qualified, sent,
        "(user, the time of their change to segment 100)"
    );
    ended.unwrap();
}

/// An event taken while the last transaction commits is evaluated under the definitions in
/// force when it was taken. The first transaction's commit is refused six times
/// (`COORDINATOR_LOAD_IN_PROGRESS`, which librdkafka retries after 0.1 s, doubling to 1 s):
/// it takes ~3.5 s. Meanwhile the definitions change as a reload does — segment 400 (`T101`)
/// in place of segment 100 (`T101`) — and an event realizing trait 101 comes. Its user
/// qualifies for 400 alone. Read once per turn of the loop, before the overlap, the
/// definitions were those of before the change, and the user qualified for 100.
#[test]
fn an_event_taken_while_the_last_transaction_commits_is_evaluated_under_the_new_definitions() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let (cluster, brokers) = mock_cluster();
    cluster.request_errors(
        RDKafkaApiKey::EndTxn,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 6],
    );
    let definitions: SharedDefinitions = Arc::new(RwLock::new(Arc::new(DEFINITIONS.clone())));
    let (processor, metrics, health) = mock_processor_with(&brokers, definitions.clone());
    let (shutdown, run) = running(processor, health);
    let counted = |n: u64| transactions_ended_once_counted(&metrics, n);
    assert_eq!(counted(1), 0);
    // Its transaction made (the leader answers at once) and committing.
    std::thread::sleep(Duration::from_millis(300));
    let reloaded = Definitions::parse(
        Path::new("reloaded.yaml"),
        "traits: [{ id: 101, ttl: 30d }]\nsegments: [{ id: 400, rule: \"T101\" }]\n",
    )
    .unwrap();
    *definitions.write().unwrap() = Arc::new(reloaded);
    let event = TraitEvent {
        user_id: "r1".to_owned(),
        origin: Origin::Realtime as i32,
        event: Some(trait_event::Event::TraitRealization(TraitRealization {
            trait_id: 101,
            time_unix_ms: telemetry::clock::unix_ms(),
            region: None,
        })),
    };
    testkit::kafka::produce_one(&brokers, "events", "r1", &event.encode_to_vec());
    let ended_before_it = counted(2);
    let mut segments = Vec::new();
    testkit::kafka::read_committed(&brokers, "status", Duration::from_secs(30), |key, value| {
        let update = model::SegmentStatusUpdate::decode(value.unwrap_or_default()).unwrap();
        if key == b"r1" {
            segments.extend(update.changes.iter().map(|c| c.segment_id));
        }
        !segments.is_empty()
    });
    shutdown.cancel();
    let ended = run.join().unwrap();
    assert_eq!(
        ended_before_it, 0,
        "the event came after the first commit, so the overlap was not tried"
    );
    assert_eq!(segments, [400], "the segments r1 qualified for");
    ended.unwrap();
}

/// The user and time of the first change of each of the first `count` committed status updates
/// on partition 0 of `topic`, read for at most `within`.
fn committed_changes(
    brokers: &str,
    topic: &str,
    count: usize,
    within: Duration,
) -> std::collections::BTreeMap<String, i64> {
    let mut read = std::collections::BTreeMap::new();
    testkit::kafka::read_committed(brokers, topic, within, |key, value| {
        let update = model::SegmentStatusUpdate::decode(value.unwrap_or_default()).unwrap();
        let user = String::from_utf8_lossy(key).into_owned();
        read.insert(user, update.changes[0].time_unix_ms);
        read.len() == count
    });
    read
}

/// Records staged in the outbox reach the producer in the order they were staged, each with
/// its topic, key, value (or none), partition and timestamp, and the outbox is empty after.
#[test]
fn staged_records_are_sent_in_order_as_they_were_staged() {
    use rdkafka::{Offset, TopicPartitionList};

    use super::outbox::{Outbox, To};

    let cluster = MockCluster::new(1).unwrap();
    for topic in ["status", "status-batch", "changelog", "dlq", "delivery-log"] {
        cluster.create_topic(topic, 3, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let mut topology = topology();
    topology.delivery_log_topic = Some("delivery-log".to_owned());
    let producer: KeyedProducer =
        KeyPartitioner::configure(rdkafka::ClientConfig::new().set("bootstrap.servers", &brokers))
            .create_with_context(KeyPlaced::default())
            .unwrap();
    let mut outbox = Outbox::default();
    outbox.encoded(To::Status, b"u1", |bytes| bytes.extend_from_slice(b"one"));
    outbox.record(To::Changelog(2), b"u1", Some(b"state of u1"));
    outbox.record(To::Changelog(2), b"u2", None);
    outbox.tombstone_at(To::DeliveryLog, b"u3", 1_700_000_000_123);
    outbox.encoded(To::StatusBatch, b"u4", |bytes| {
        bytes.extend_from_slice(b"four")
    });
    outbox.record(To::DeadLetters, b"", Some(b"raw"));
    outbox.encoded(To::Status, b"u1", |bytes| bytes.extend_from_slice(b"two"));
    outbox.send(&producer, &topology).unwrap();
    assert!(outbox.is_empty());
    producer.flush(Duration::from_secs(10)).unwrap();

    let reader: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "outbox-test")
        .create()
        .unwrap();
    let mut all = TopicPartitionList::new();
    for topic in ["status", "status-batch", "changelog", "dlq", "delivery-log"] {
        for partition in 0..3 {
            all.add_partition_offset(topic, partition, Offset::Beginning)
                .unwrap();
        }
    }
    reader.assign(&all).unwrap();
    let mut read = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while read.len() < 7 && std::time::Instant::now() < deadline {
        if let Some(Ok(message)) = reader.poll(Duration::from_millis(100)) {
            read.push((
                message.topic().to_owned(),
                message.partition(),
                message.offset(),
                String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
                message
                    .payload()
                    .map(|p| String::from_utf8_lossy(p).into_owned()),
                message.timestamp().to_millis(),
            ));
        }
    }
    read.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
    let status_partition = read.iter().find(|r| r.0 == "status").map(|r| r.1).unwrap();
    let summary: Vec<_> = read
        .iter()
        .map(|(topic, partition, _, key, value, _)| {
            let partition = (topic == "changelog").then_some(*partition);
            (topic.as_str(), partition, key.as_str(), value.as_deref())
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("changelog", Some(2), "u1", Some("state of u1")),
            ("changelog", Some(2), "u2", None),
            ("delivery-log", None, "u3", None),
            ("dlq", None, "", Some("raw")),
            ("status", None, "u1", Some("one")),
            ("status", None, "u1", Some("two")),
            ("status-batch", None, "u4", Some("four")),
        ]
    );
    // The user's two updates on one partition, in the order staged.
    assert!(
        read.iter()
            .filter(|r| r.0 == "status")
            .all(|r| r.1 == status_partition)
    );
    let tombstone = read.iter().find(|r| r.0 == "delivery-log").unwrap();
    assert_eq!(tombstone.5, Some(1_700_000_000_123));
}
