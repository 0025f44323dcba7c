//! Delivery's input decoding, fuzzed through the path a message takes: `decode`, routing,
//! a destination batch and the partner body; forward compatibility (unknown fields); what
//! the pipeline does when one of its lanes ends; and that a rebalance callback waiting for the
//! broker leaves the worker to the other tasks.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use model::{ChangeReason, Origin, PartnerIds, SegmentChange};
use proptest::prelude::*;
use prost::Message as _;
use rdkafka::ClientContext;
use testkit::fuzz::{length_delimited, with_unknown_fields};

use super::route::LAGGING;
use super::*;
use crate::batcher::{DestinationBatch, RoutedEvent};
use crate::config::{DeliveryConfig, DestinationConfig};
use crate::metrics::Metrics;
use crate::payload::write_body;

static DESTINATIONS: std::sync::LazyLock<Vec<Arc<DestinationConfig>>> = std::sync::LazyLock::new(
    || {
        let yaml = "destinations:\n\
          - { id: 423, url: https://a.example/aam, client_id: \"74323\", user_dpid: 20915, data_partner: 1234, \
              segments: { 14356: \"14356\", 12176: \"99\" } }\n\
          - { id: 424, url: https://b.example/aam, client_id: \"x\", user_dpid: 20914, \
              segments: { 12176: \"12176\", 1: \"one\" }, batch: { max_users: 2, max_bytes: 1024 } }\n";
        DeliveryConfig::parse(Path::new("fuzz.yaml"), yaml, &|_| None)
            .unwrap()
            .destinations
    },
);

/// What the consumer does with a message's value, checked: decoding never panics or hangs;
/// a decoded update is valid, routes, batches, and makes a body that is JSON of exactly the
/// size the batch computed.
fn check_update(payload: &[u8]) -> Result<(), TestCaseError> {
    let decoded = testkit::fuzz::within(Duration::from_secs(1), "decoding an update", || {
        decode_packed(&mut Decoder::default(), payload)
    });
    let Ok(update) = decoded else {
        return Ok(());
    };
    prop_assert!(!update.user_id().is_empty());
    prop_assert!(update.changes().len() > 0);
    let known =
        |status| SegmentStatus::try_from(status).is_ok_and(|s| s != SegmentStatus::Unspecified);
    prop_assert!(update.changes().all(|c| known(c.status)));
    let mut router = Router::new(&DESTINATIONS);
    let mut targets = Vec::new();
    router.route(&update, &mut targets);
    for &destination in &targets {
        let mut batch = DestinationBatch::new(DESTINATIONS[destination].clone());
        // An empty batch always takes the event.
        let taken = batch.add(RoutedEvent {
            held: Default::default(),
            update: update.clone(),
            source: None,
        });
        prop_assert!(taken.is_ok());
        let mut body = Vec::new();
        write_body(&batch, 1_469_636_242_000, &mut body);
        prop_assert_eq!(body.len(), batch.body_bytes());
        let json: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| TestCaseError::fail(format!("body is not JSON: {e}")))?;
        prop_assert!(json["Users"].as_array().is_some_and(|u| !u.is_empty()));
    }
    Ok(())
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    testkit::fuzz::corpus(env!("CARGO_MANIFEST_DIR"), "segment_status_update")
}

#[test]
fn every_update_in_the_corpus_is_handled() {
    for (name, bytes) in corpus() {
        if let Err(failure) = check_update(&bytes) {
            panic!("segment_status_update/{name}: {failure}");
        }
    }
    let verdict = |name: &str| {
        let path = testkit::fuzz::corpus_dir(env!("CARGO_MANIFEST_DIR"), "segment_status_update")
            .join(name);
        decode(&std::fs::read(path).unwrap())
    };
    assert!(verdict("update.bin").is_ok());
    assert!(verdict("unknown-fields-nested.bin").is_ok());
    assert_eq!(
        verdict("unknown-enum-values.bin").unwrap_err(),
        "segment 14356: unknown status 7 (written by a newer version?)"
    );
    assert_eq!(verdict("no-changes.bin").unwrap_err(), "no changes");
    assert_eq!(verdict("empty-user.bin").unwrap_err(), "user_id is empty");
    assert_eq!(
        verdict("unspecified-status.bin").unwrap_err(),
        "segment 14356: status is unspecified"
    );
    assert!(
        verdict("garbage.bin")
            .unwrap_err()
            .starts_with("not a SegmentStatusUpdate")
    );
}

proptest! {
    #![proptest_config(testkit::fuzz::config())]

    /// Fuzzing the decoding of `segment-status` messages (arbitrary bytes, mutated seeds).
    #[test]
    fn fuzz_segment_status_update_decoding(
        payload in testkit::fuzz::bytes(corpus().into_iter().map(|(_, b)| b).collect())
    ) {
        check_update(&payload)?;
    }
}

#[test]
fn updates_from_a_newer_qualifier_decode_with_their_unknown_fields_skipped() {
    let update = SegmentStatusUpdate {
        user_id: "u1".into(),
        regions: vec![6, 7],
        partner_ids: vec![PartnerIds {
            data_partner_id: 1234,
            partner_uuids: vec!["p-1".into()],
        }],
        changes: vec![
            SegmentChange::qualified(14356, 1_469_636_242_000),
            SegmentChange::unsegmented(12176, ChangeReason::Ttl, 1_469_636_242_000),
        ],
        origin: Origin::Realtime as i32,
        produced_unix_ms: 1_469_636_242_000,
        sequence: 1_469_636_242_000 * 1024,
        only_data_partner_id: None,
    };
    // Unknown fields at the top level…
    let top = with_unknown_fields(&update.encode_to_vec());
    assert_eq!(decode(&top).unwrap(), update);
    // …and inside a change and a partner id entry (repeated nested messages).
    let mut nested = SegmentStatusUpdate {
        changes: vec![update.changes[0]],
        partner_ids: Vec::new(),
        ..update.clone()
    }
    .encode_to_vec();
    nested.extend(length_delimited(
        4,
        &with_unknown_fields(&update.changes[1].encode_to_vec()),
    ));
    nested.extend(length_delimited(
        3,
        &with_unknown_fields(&update.partner_ids[0].encode_to_vec()),
    ));
    assert_eq!(decode(&nested).unwrap(), update);
    // A reason this version does not know is kept as it is: partners get the status only.
    let mut future_reason = update.clone();
    future_reason.changes[0].reason = 9;
    assert_eq!(
        decode(&future_reason.encode_to_vec()).unwrap(),
        future_reason
    );
    // A status it does not know is never read as "inactive": the update is refused.
    let mut future_status = update.clone();
    future_status.changes[0].status = 9;
    assert_eq!(
        decode(&future_status.encode_to_vec()).unwrap_err(),
        "segment 14356: unknown status 9 (written by a newer version?)"
    );
}

/// A pipeline over input `status` of a mock cluster, with one destination (never sent to: no
/// input is produced) whose lanes run.
fn pipeline_on(cluster: &rdkafka::mocking::MockCluster<'_, impl ClientContext>) -> InputPipeline {
    for topic in ["status", "status-dlq"] {
        cluster.create_topic(topic, 1, 1).unwrap();
    }
    let brokers = cluster.bootstrap_servers();
    let kafka =
        KafkaSettings::from_lookup(|name| (name == "KAFKA_BROKERS").then(|| brokers.clone()))
            .unwrap();
    let yaml = "kafka: { topic: status, batch_topic: \"\", dlq_topic: status-dlq, group_id: lanes, commit_interval_ms: 100, drain_timeout_ms: 5000 }\n\
                destinations:\n\
                  - { id: 423, url: https://a.example/aam, client_id: x, user_dpid: 1, segments: { 14356: \"14356\" } }\n";
    let config = DeliveryConfig::parse(Path::new("lanes.yaml"), yaml, &|_| None).unwrap();
    let metrics = Metrics::register(&prometheus::Registry::new()).unwrap();
    let shared = crate::service::build_shared(&config, &kafka, &metrics).unwrap();
    InputPipeline::start(
        &kafka,
        &config.kafka,
        &config.kafka.topic,
        &config.kafka.group_id,
        shared,
        super::Role::RealTime { follower: None },
    )
    .unwrap()
}

/// How `pipeline.run` ended within 30 s, its token cancelled after `cancel_after` if given.
async fn run_ended(pipeline: InputPipeline, cancel_after: Option<Duration>) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    if let Some(after) = cancel_after {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            shutdown.cancel();
        });
    }
    tokio::time::timeout(Duration::from_secs(30), pipeline.run(shutdown))
        .await
        .expect("the pipeline still ran after 30 s")
}

/// A lane that panics fails the pipeline (the process then goes unready and exits, and its
/// partitions move), instead of leaving its partitions frozen behind a dead lane.
#[tokio::test]
async fn a_lane_that_panics_fails_the_pipeline() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let mut pipeline = pipeline_on(&cluster);
    pipeline
        .lane_tasks
        .spawn(async { panic!("lane of destination 423 broke") });
    let error = run_ended(pipeline, None).await.unwrap_err().to_string();
    assert!(
        error.starts_with("input status: a destination lane panicked: ")
            && error.contains("lane of destination 423 broke"),
        "{error}"
    );
}

/// A lane that stops without being told to fails the pipeline, as a panicking one does.
#[tokio::test]
async fn a_lane_that_stops_fails_the_pipeline() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let mut pipeline = pipeline_on(&cluster);
    pipeline.lane_tasks.spawn(async {});
    let error = run_ended(pipeline, None).await.unwrap_err().to_string();
    assert_eq!(error, "input status: a destination lane stopped");
}

/// A lane stopped on purpose (aborted, as a config reload stops the lanes of a removed or
/// changed destination) is no failure: the pipeline runs on until shut down, then ends `Ok`.
#[tokio::test]
async fn a_lane_stopped_on_purpose_does_not_fail_the_pipeline() {
    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let pipeline = pipeline_on(&cluster);
    pipeline.lane_aborts[0][0].abort();
    run_ended(pipeline, Some(Duration::from_secs(1)))
        .await
        .expect("the pipeline ran on past the aborted lane");
}

#[test]
fn a_detached_destination_stays_held_while_stuck_or_slow_and_for_30_s_at_most() {
    let now = tokio::time::Instant::now();
    let lagging = Lagging {
        until: now + LAGGING,
        progress: 7,
    };
    assert!(
        lagging.still_stuck(now, 7, false),
        "no batch taken since: held"
    );
    assert!(
        !lagging.still_stuck(now, 8, false),
        "took a batch and answers quickly: waited for again"
    );
    assert!(
        lagging.still_stuck(now, 8, true),
        "took a batch, but answers just under its timeout: held"
    );
    assert!(
        !lagging.still_stuck(now + LAGGING, 7, true),
        "never longer than LAGGING"
    );
}

#[test]
fn a_targeted_update_routes_to_its_data_partners_destinations_only() {
    let update = |only_data_partner_id| {
        Update::new(&model::SegmentStatusUpdate {
            user_id: "u".to_owned(),
            changes: vec![SegmentChange::qualified(12176, 1)],
            only_data_partner_id,
            ..Default::default()
        })
    };
    let mut router = Router::new(&DESTINATIONS);
    let mut targets = Vec::new();
    router.route(&update(None), &mut targets);
    assert_eq!(targets, [0, 1]);
    router.route(&update(Some(1234)), &mut targets);
    assert_eq!(targets, [0]);
    assert!(DESTINATIONS[0].takes(&update(Some(1234))));
    assert!(!DESTINATIONS[1].takes(&update(Some(1234))));
    router.route(&update(Some(99)), &mut targets);
    assert!(targets.is_empty());
}

/// A rebalance callback that waits for the broker runs on the Tokio worker polling the
/// consumer: the runtime's other tasks (lanes, `/livez`) go on meanwhile, even with one worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn a_callback_waiting_for_the_broker_leaves_the_worker_to_the_other_tasks() {
    use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
    let ticks = Arc::new(AtomicU32::new(0));
    let ticker = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                ticks.fetch_add(1, Relaxed);
            }
        }
    });
    // On the only worker, as the pipeline's task is: a blocking wait there, until the other
    // task ticked three times (or 5 s passed).
    let ticked = tokio::spawn({
        let ticks = ticks.clone();
        async move {
            off_the_runtime(|| {
                let before = ticks.load(Relaxed);
                let deadline = std::time::Instant::now() + Duration::from_secs(5);
                while ticks.load(Relaxed) < before + 3 && std::time::Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(1));
                }
                ticks.load(Relaxed) - before
            })
        }
    })
    .await
    .unwrap();
    ticker.abort();
    assert!(
        ticked >= 3,
        "the other task stood still while the callback waited ({ticked} ticks in 5 s)"
    );
}

/// A coordinator that answers the first requests for the group's commits `NOT_COORDINATOR`
/// (it moved: its broker restarted) delays the assigned partition and never leaves it unread
/// (librdkafka #5586, see `telemetry::commits`): the message on it is handled, here
/// dead-lettered since it is no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_partition_is_read_though_the_coordinator_moved() {
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

    let cluster = rdkafka::mocking::MockCluster::new(1).unwrap();
    let pipeline = pipeline_on(&cluster);
    let brokers = cluster.bootstrap_servers();
    testkit::kafka::produce_one(&brokers, "status", "u1", b"no update");
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
    );
    let shutdown = CancellationToken::new();
    let run = tokio::spawn(pipeline.run(shutdown.clone()));
    let dead_lettered = tokio::task::spawn_blocking(move || {
        testkit::kafka::first_key(&brokers, "status-dlq", Duration::from_secs(20))
    })
    .await
    .unwrap();
    shutdown.cancel();
    let ended = run.await.unwrap();
    assert_eq!(
        dead_lettered.as_deref(),
        Some(&b"u1"[..]),
        "nothing dead-lettered within 20 s; the pipeline ended {ended:?}"
    );
}
