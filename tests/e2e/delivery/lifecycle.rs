//! Bad input and bad config, and a clean stop.

use std::time::Duration;

use model::ErrorClass;
use rdkafka::mocking::MockCluster;
use testkit::receiver::Receiver;
use testkit::service::{ServiceBuilder, metric_value};

use super::{DeliveryTest, T0, change, destination, entries, json, update};

#[tokio::test]
async fn a_poison_message_is_dead_lettered_and_counted_and_processing_continues() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(11, &receiver, "")]);
    test.produce_raw("bad-user", b"\xff\xfe not protobuf").await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let service = test.start(&config, &[]).await;

    let request = receiver
        .wait_for_requests(1, Duration::from_secs(20))
        .await
        .remove(0);
    assert_eq!(
        entries([json(&request.body)]),
        [("u1".into(), "14356".into(), "1".into())]
    );
    let records = test.dead_letters(1, Duration::from_secs(20)).await;
    let record = &records[0];
    assert_eq!(record.error_class(), ErrorClass::Undecodable);
    assert_eq!(record.raw, b"\xff\xfe not protobuf");
    let source = record.source.as_ref().unwrap();
    assert_eq!(
        (source.topic.as_str(), source.partition, source.offset),
        (test.topic.as_str(), 0, 0)
    );
    testkit::wait_until(
        "decode error counted, both offsets committed",
        Duration::from_secs(10),
        || async {
            metric_value(&service.metrics().await, "delivery_decode_errors_total") == Some(1.0)
                && test.committed(1).get(&0) == Some(&2)
        },
    )
    .await;
}

#[tokio::test]
async fn sigterm_drains_in_flight_batches_commits_and_exits_0() {
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    // Slow partner: batches are in flight when SIGTERM arrives.
    receiver.respond(200, Duration::from_millis(800));
    let config = test.config(&[destination(12, &receiver, ", max_in_flight: 2")]);
    let mut service = test.start(&config, &[]).await;
    let updates: Vec<_> = (0..20)
        .map(|i| update(&format!("u{i}"), &[], &[], vec![change(14356, true, T0)]))
        .collect();
    test.produce(&test.topic, &updates).await;
    receiver.wait_for_requests(1, Duration::from_secs(20)).await;
    // SIGTERM stops fetching: first let the consumer take all 20 (queued or finished), so
    // what is checked is the drain, not how fast the two partitions were fetched.
    testkit::wait_until("all 20 updates fetched", Duration::from_secs(20), || {
        let service = &service;
        async move {
            let m = service.metrics().await;
            let queued = metric_value(&m, r#"delivery_queue_depth{destination="12"}"#);
            let done = metric_value(
                &m,
                r#"delivery_events_total{destination="12",outcome="delivered"}"#,
            );
            queued.unwrap_or(0.0) + done.unwrap_or(0.0) >= 20.0
        }
    })
    .await;

    service.terminate();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        service.log()
    );
    let delivered = entries(
        receiver
            .requests()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| json(&r.body)),
    );
    let mut users: Vec<_> = delivered.iter().map(|(u, _, _)| u.clone()).collect();
    users.sort();
    users.dedup();
    assert_eq!(users.len(), 20, "every event was delivered before exit");
    let committed: i64 = test.committed(2).values().sum();
    assert_eq!(committed, 20, "every offset was committed before exit");
}

/// A consumer that cannot leave its group in time (the broker takes a minute to answer once
/// everything is committed) does not hold the process: SIGTERM still ends in exit 0 within
/// the close bound, and the commit made before stays.
#[tokio::test]
async fn a_consumer_that_cannot_leave_its_group_in_time_does_not_hold_the_exit() {
    let cluster = MockCluster::new(1).unwrap();
    let test = DeliveryTest::on_mock_cluster(&cluster, 1);
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(13, &receiver, "")]);
    let mut service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    testkit::wait_until(
        "the update delivered and committed",
        Duration::from_secs(30),
        || async {
            let gauge = format!(
                r#"delivery_committed_offset{{partition="0",topic="{}"}}"#,
                test.topic
            );
            metric_value(&service.metrics().await, &gauge) == Some(1.0)
        },
    )
    .await;
    assert_eq!(test.committed(1).get(&0), Some(&1));

    cluster
        .broker_round_trip_time(1, Duration::from_secs(60))
        .unwrap();
    service.terminate();
    let status = service.wait_exit(Duration::from_secs(25)).await;
    let log = service.log();
    assert!(status.success(), "exit status {status}; log:\n{log}");
    assert!(
        log.contains("The Kafka consumer did not close in time"),
        "the slow close is said: {log}"
    );
}

#[tokio::test]
async fn bad_config_stops_start_up_naming_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("destinations.yaml");
    std::fs::write(
        &path,
        "destinations:\n  - { id: 1, url: http://partner.example.com/in, client_id: a, user_dpid: 1, segments: { 1: 1 } }\n",
    )
    .unwrap();
    let mut service = ServiceBuilder::new("delivery")
        .arg("--config")
        .arg(path.to_str().unwrap())
        .spawn();
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = service.log();
    assert!(
        log.contains(&format!("{}: invalid configuration", path.display())),
        "{log}"
    );
    assert!(
        log.contains(
            "destinations[0].url: must be https (set `dangerous_allow_http: true` on the destination to allow plain http, for tests only)"
        ),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");

    // check-config prints the same, and accepts a good file.
    let mut check = ServiceBuilder::new("delivery")
        .arg("check-config")
        .arg(path.to_str().unwrap())
        .spawn();
    assert!(!check.wait_exit(Duration::from_secs(10)).await.success());
    assert!(
        check.log().contains("destinations[0].url"),
        "{}",
        check.log()
    );
    std::fs::write(&path, "destinations:\n  - { id: 1, url: https://partner.example.com/in, client_id: a, user_dpid: 1, segments: { 1: 1 } }\n").unwrap();
    let mut check = ServiceBuilder::new("delivery")
        .arg("check-config")
        .arg(path.to_str().unwrap())
        .spawn();
    assert!(
        check.wait_exit(Duration::from_secs(10)).await.success(),
        "{}",
        check.log()
    );
}

#[tokio::test]
async fn a_changed_config_is_applied_and_a_broken_one_is_rejected() {
    let test = DeliveryTest::new(1).await;
    let first = Receiver::start().await;
    let second = Receiver::start().await;
    let config = test.config(&[destination(13, &first, "")]);
    let service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    first.wait_for_requests(1, Duration::from_secs(20)).await;

    // Add a second destination: new events reach both.
    let both = test.config(&[destination(13, &first, ""), destination(14, &second, "")]);
    std::fs::copy(&both, &config).unwrap();
    // Applied by both pipelines (real-time and batch) before the next change is produced.
    testkit::wait_until("reload applied", Duration::from_secs(20), || {
        let applied = service.log().matches("Destination added").count() == 2;
        async move { applied }
    })
    .await;
    test.produce(
        &test.topic,
        &[update("u2", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let at_second = second.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(
        entries([json(&at_second[0].body)]),
        [("u2".into(), "14356".into(), "1".into())]
    );
    first.wait_for_requests(2, Duration::from_secs(20)).await;

    // A broken file is rejected; the running config stays in force.
    std::fs::write(&config, "destinations: [ { id: 15, url: http://x } ]\n").unwrap();
    testkit::wait_until("rejection logged", Duration::from_secs(20), || {
        let rejected = service
            .log()
            .contains("The changed config is invalid and was rejected");
        async move { rejected }
    })
    .await;
    test.produce(
        &test.topic,
        &[update("u3", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    second.wait_for_requests(2, Duration::from_secs(20)).await;
    assert!(
        service.log().contains("destinations[0].url: must be https"),
        "{}",
        service.log()
    );
}

#[tokio::test]
async fn a_reload_that_adds_removes_or_changes_one_destination_leaves_the_others_running() {
    let test = DeliveryTest::new(2).await;
    let (kept, moved_from, moved_to, removed, added) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    // 81's partner is down: u1 waits in its lane, retried.
    moved_from.respond(503, Duration::ZERO);
    let config = test.config(&[
        destination(80, &kept, ""),
        destination(
            81,
            &moved_from,
            ", retry_backoff_ms: 10, max_backlog_age_s: 3600",
        ),
        destination(82, &removed, ""),
    ]);
    let service = test.start(&config, &[]).await;
    let mut u1 = update("u1", &[], &[], vec![change(14356, true, T0)]);
    u1.produced_unix_ms = telemetry::clock::unix_ms();
    test.produce(&test.topic, &[u1.clone()]).await;
    for receiver in [&kept, &moved_from, &removed] {
        receiver.wait_for_requests(1, Duration::from_secs(20)).await;
    }
    let requests_before = kept.requests().len();

    // 80 unchanged, 81 moves to another URL, 82 is removed, 83 is added.
    let next = test.config(&[
        destination(80, &kept, ""),
        destination(
            81,
            &moved_to,
            ", retry_backoff_ms: 10, max_backlog_age_s: 3600",
        ),
        destination(83, &added, ""),
    ]);
    std::fs::copy(&next, &config).unwrap();
    // Applied by both pipelines (real-time and batch) before the next change is produced.
    testkit::wait_until("the reload applied", Duration::from_secs(20), || {
        let applied = service.log().matches("Destination added").count() == 2;
        async move { applied }
    })
    .await;
    let moved_from_tries = moved_from.requests().len();
    test.produce(
        &test.topic,
        &[update("u2", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let got = added.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(
        entries([json(&got[0].body)]),
        [("u2".into(), "14356".into(), "1".into())],
        "an added destination gets the changes from then on"
    );
    // The changed destination restarts from its position: what waited under its old config
    // (u1) reaches its new URL, and so does u2, each once.
    testkit::wait_until("u1 and u2 at 81's new URL", Duration::from_secs(30), || {
        // Two users (on two partitions): their order between them is free.
        let mut users: Vec<String> = entries(moved_to.requests().iter().map(|r| json(&r.body)))
            .into_iter()
            .map(|(user, _, _)| user)
            .collect();
        users.sort();
        async move { users == ["u1", "u2"] }
    })
    .await;
    kept.wait_for_requests(requests_before + 1, Duration::from_secs(20))
        .await;
    assert!(
        moved_from.requests().len() <= moved_from_tries + 1,
        "81's old URL is left (at most the try in flight at the reload)"
    );
    assert_eq!(removed.requests().len(), 1, "82 was removed");
    // Nothing drained or rejoined the group: the partitions were assigned once, never revoked.
    let log = service.log();
    for applied in [
        "Destination changed",
        "Destination removed",
        "Destination added",
    ] {
        assert!(log.contains(applied), "{applied}: {log}");
    }
    assert!(!log.contains("Partitions revoked"), "{log}");
    assert!(!log.contains("Draining"), "{log}");
}

#[tokio::test]
async fn an_input_message_too_large_to_dead_letter_whole_is_kept_by_position_and_processing_continues()
 {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(16, &receiver, "")]);
    // Nearly the 1 MB a producer may write: its dead-letter record (the bytes plus the
    // record's own fields) would pass the limit, and the writer retried it for ever.
    let huge = vec![0xff_u8; 999_900];
    test.produce_raw("big", &huge).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let service = test.start(&config, &[]).await;

    let request = receiver
        .wait_for_requests(1, Duration::from_secs(20))
        .await
        .remove(0);
    assert_eq!(
        entries([json(&request.body)]),
        [("u1".into(), "14356".into(), "1".into())]
    );
    let record = test
        .dead_letters(1, Duration::from_secs(20))
        .await
        .remove(0);
    assert_eq!(record.error_class(), ErrorClass::Undecodable);
    assert!(record.raw.is_empty(), "the bytes are left out");
    assert!(
        record
            .error
            .contains("the message (999900 bytes) is too large to keep in the dead-letter record"),
        "{}",
        record.error
    );
    let source = record.source.as_ref().unwrap();
    assert_eq!(
        (source.topic.as_str(), source.partition, source.offset),
        (test.topic.as_str(), 0, 0)
    );
    testkit::wait_until(
        "decode error counted, both offsets committed",
        Duration::from_secs(10),
        || async {
            metric_value(&service.metrics().await, "delivery_decode_errors_total") == Some(1.0)
                && test.committed(1).get(&0) == Some(&2)
        },
    )
    .await;
    assert!(!service.log().contains("panicked"), "{}", service.log());
}

#[tokio::test]
async fn a_user_too_large_for_any_batch_is_dead_lettered_unsent_and_the_others_are_delivered() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(
        17,
        &receiver,
        ", data_partner: 1234, batch: { max_bytes: 2048, linger_ms: 50 }, circuit: { failure_threshold: 1, cooldown_ms: 60000 }",
    )]);
    // 40 synced ids: 40 `Users` entries, far more than 2048 bytes for this one user.
    let ids: Vec<String> = (0..40).map(|i| format!("partner-id-{i:04}")).collect();
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    let big = update("big", &[6], &ids, vec![change(14356, true, T0)]);
    test.produce(
        &test.topic,
        &[
            big.clone(),
            update("u1", &[], &["p1"], vec![change(14356, true, T0)]),
        ],
    )
    .await;
    let service = test.start(&config, &[]).await;

    let record = test
        .dead_letters(1, Duration::from_secs(20))
        .await
        .remove(0);
    assert_eq!(record.error_class(), ErrorClass::Oversized);
    assert_eq!(record.destination_id, 17);
    assert_eq!(record.attempts, 0);
    assert_eq!(record.updates, [big], "the update itself, for replay");
    assert!(
        record
            .error
            .contains("more than the destination's batch.max_bytes (2048): raise it"),
        "{}",
        record.error
    );
    testkit::wait_until(
        "u1 delivered, big dead-lettered, both offsets committed",
        Duration::from_secs(20),
        || async {
            let m = service.metrics().await;
            metric_value(
                &m,
                r#"delivery_events_total{destination="17",outcome="delivered"}"#,
            ) == Some(1.0)
                && metric_value(
                    &m,
                    r#"delivery_events_total{destination="17",outcome="dead_lettered"}"#,
                ) == Some(1.0)
                && test.committed(1).get(&0) == Some(&2)
        },
    )
    .await;
    // Never sent: the partner saw only u1, and the circuit (cut off after one failure) is
    // still closed.
    let requests = receiver.requests();
    assert_eq!(
        entries(requests.iter().map(|r| json(&r.body))),
        [("u1".into(), "14356".into(), "1".into())]
    );
    let m = service.metrics().await;
    assert_eq!(
        metric_value(&m, r#"delivery_circuit_open{destination="17"}"#),
        Some(0.0)
    );
}
