//! The ingest contract, onboarding, reloads, metrics.

use std::time::Duration;

use model::{ChangeReason, Origin, SegmentStatus};
use testkit::service::{ServiceBuilder, metric_value};

use super::{QualifierTest, changes, no_more, now, post, trait_event, updates};

const RULES: &str = "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 100, rule: T1 }]\n";

#[tokio::test]
async fn an_invalid_line_rejects_the_whole_request_with_line_numbers() {
    let test = QualifierTest::new(1).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.events);

    let (status, body) = post(
        &q.ingest,
        &[
            trait_event("u1", 1, &now(), None),
            r#"{"type":"trait","user":"u2","trait":1,"time":"later"}"#.to_owned(),
            "{".to_owned(),
        ],
    )
    .await;
    assert_eq!(status, 400);
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(
        errors
            .iter()
            .map(|e| e["line"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [2, 3]
    );
    assert!(
        errors[0]["error"].as_str().unwrap().contains("RFC 3339"),
        "{body}"
    );
    no_more(&reader, Duration::from_secs(2)).await;

    // A JSON array works too; 202 means the broker has them.
    let array = format!(
        "[{}, {}]",
        trait_event("u1", 1, &now(), None),
        trait_event("u2", 2, &now(), None)
    );
    let response = reqwest::Client::new()
        .post(&q.ingest)
        .body(array)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    assert_eq!(
        response.json::<serde_json::Value>().await.unwrap(),
        serde_json::json!({"accepted": 2})
    );
    let mut got = 0;
    while got < 2 {
        tokio::time::timeout(Duration::from_secs(10), reader.recv())
            .await
            .expect("acknowledged events are on the topic")
            .unwrap();
        got += 1;
    }

    let too_big = "x".repeat(11 << 20);
    // The server answers 413 from the declared length and closes the connection without
    // reading the body: the client may see the answer, or a reset while it is still writing.
    // The server's counter below is the proof either way.
    match reqwest::Client::new()
        .post(&q.ingest)
        .body(too_big)
        .send()
        .await
    {
        Ok(response) => assert_eq!(response.status(), 413),
        Err(error) => assert!(
            error.is_request() || error.is_body(),
            "unexpected client error: {error:?}"
        ),
    }
    let m = q.service.metrics().await;
    assert_eq!(
        metric_value(&m, r#"qualifier_ingest_requests_total{code="400"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, r#"qualifier_ingest_requests_total{code="202"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, r#"qualifier_ingest_requests_total{code="413"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn onboarded_events_come_out_on_the_batch_topic_with_origin_batch() {
    let test = QualifierTest::new(1).await;
    let _q = test.start(&test.definitions(RULES), "a").await;
    let batch = test.reader(&test.status_batch);
    let realtime = test.reader(&test.status);
    let file = test.definitions(RULES).with_file_name("onboard.ndjson");
    std::fs::write(
        &file,
        format!(
            "{}\n{}\n",
            trait_event("b1", 1, &now(), None),
            trait_event("b2", 1, &now(), None)
        ),
    )
    .unwrap();

    let mut onboard = ServiceBuilder::new("qualifier")
        .arg("onboard")
        .arg(file.to_str().unwrap())
        .env("KAFKA_EVENTS_TOPIC", &test.events)
        .spawn();
    assert!(
        onboard.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        onboard.log()
    );
    assert!(
        onboard.log().contains("onboarded 2 events"),
        "{}",
        onboard.log()
    );
    let got = updates(&batch, 2, Duration::from_secs(20)).await;
    assert!(got.iter().all(|u| u.origin() == Origin::Batch
        && changes(u) == [(100, SegmentStatus::Active, ChangeReason::Qualified)]));
    no_more(&realtime, Duration::from_secs(1)).await;
}

#[tokio::test]
async fn definitions_reload_a_new_segment_and_reject_a_broken_file() {
    let test = QualifierTest::new(1).await;
    let path = test.definitions(RULES);
    let q = test.start(&path, "a").await;
    let reader = test.reader(&test.status);

    std::fs::write(&path, "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 100, rule: T1 }, { id: 200, rule: T2 }]\n").unwrap();
    testkit::wait_until("reload logged", Duration::from_secs(20), || {
        let done = q.service.log().contains("Definitions reloaded.");
        async move { done }
    })
    .await;
    post(&q.ingest, &[trait_event("r1", 2, &now(), None)]).await;
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&update),
        [(200, SegmentStatus::Active, ChangeReason::Qualified)]
    );

    std::fs::write(
        &path,
        "traits: [{ id: 1 }]\nsegments: [{ id: 100, rule: \"T1 AND (\" }]\n",
    )
    .unwrap();
    testkit::wait_until("rejection logged", Duration::from_secs(20), || {
        let done = q
            .service
            .log()
            .contains("The changed definitions file is invalid and was rejected");
        async move { done }
    })
    .await;
    post(&q.ingest, &[trait_event("r2", 2, &now(), None)]).await;
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&update),
        [(200, SegmentStatus::Active, ChangeReason::Qualified)],
        "the old definitions stay"
    );

    let mut check = ServiceBuilder::new("qualifier")
        .arg("check-config")
        .arg(path.to_str().unwrap())
        .spawn();
    assert!(!check.wait_exit(Duration::from_secs(10)).await.success());
    assert!(
        check.log().contains("segment 100 (line 2"),
        "{}",
        check.log()
    );
}

#[tokio::test]
async fn every_documented_metric_is_exported() {
    let test = QualifierTest::new(1).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    post(&q.ingest, &[trait_event("m1", 1, &now(), None)]).await;
    testkit::wait_until(
        "metrics after one qualification",
        Duration::from_secs(20),
        || async {
            let m = q.service.metrics().await;
            let value = |s: &str| metric_value(&m, s).unwrap_or(-1.0);
            value(r#"qualifier_ingest_requests_total{code="202"}"#) == 1.0
                && value(r#"qualifier_events_total{outcome="applied",type="trait"}"#) == 1.0
                && value(r#"qualifier_status_changes_total{reason="qualified",status="1"}"#) == 1.0
                && value("qualifier_eval_duration_seconds_count") >= 1.0
                && value("qualifier_users") == 1.0
                && value("qualifier_expiry_due") == 0.0
                && value("qualifier_restore_duration_seconds_count") >= 1.0
                && value("qualifier_transaction_duration_seconds_count") >= 1.0
                && value("qualifier_transactions_failed_total") == 0.0
        },
    )
    .await;
}

#[tokio::test]
async fn serves_admin_endpoints_and_stops_on_sigterm() {
    let test = QualifierTest::new(1).await;
    let mut q = test.start(&test.definitions(RULES), "a").await;
    assert_eq!(
        reqwest::get(q.service.admin_url("/healthz"))
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        reqwest::get(q.service.admin_url("/readyz"))
            .await
            .unwrap()
            .status(),
        200
    );
    let rss = metric_value(&q.service.metrics().await, "process_resident_memory_bytes").unwrap();
    assert!(rss > 0.0);
    q.service.terminate();
    let status = q.service.wait_exit(Duration::from_secs(20)).await;
    assert!(status.success(), "exit {status}; log:\n{}", q.service.log());
}

#[tokio::test]
async fn bad_kafka_settings_and_bad_definitions_stop_start_up_with_the_fix() {
    let test = QualifierTest::new(1).await;
    let path = test.definitions(RULES);
    let mut service = ServiceBuilder::new("qualifier")
        .arg("--config")
        .arg(path.to_str().unwrap())
        .env("KAFKA_INSTANCE_ID", "a")
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("KAFKA_SASL_MECHANISM", "PLAIN")
        .spawn();
    assert!(!service.wait_exit(Duration::from_secs(10)).await.success());
    assert!(
        service
            .log()
            .contains("KAFKA_SASL_USERNAME: required with SASL"),
        "{}",
        service.log()
    );

    std::fs::write(
        &path,
        "traits: [{ id: 1 }]\nsegments: [{ id: 7, rule: T1 OR T9 }]\n",
    )
    .unwrap();
    let mut service = ServiceBuilder::new("qualifier")
        .arg("--config")
        .arg(path.to_str().unwrap())
        .spawn();
    assert!(!service.wait_exit(Duration::from_secs(10)).await.success());
    let log = service.log();
    assert!(
        log.contains("invalid definitions") && log.contains("segment 7 (line 2): rule uses T9"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}

/// An ingest port another process holds stops the start-up, naming the setting: the process
/// does not run ready and deaf. Fails if the qualifier starts anyway (before: it ran, ready,
/// its ingest task ended and only `/livez` said so).
#[tokio::test]
async fn an_ingest_port_in_use_stops_start_up_naming_the_setting() {
    let test = QualifierTest::new(1).await;
    let definitions = test.definitions(RULES);
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = held.local_addr().unwrap().to_string();
    let mut service = test
        .builder(&definitions, "a")
        .env("INGEST_ADDR", &addr)
        .spawn();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    let log = service.log();
    assert!(!status.success(), "{log}");
    assert!(
        log.contains(&format!(
            "cannot listen on INGEST_ADDR (--ingest-addr) {addr}"
        )),
        "{log}"
    );
    drop(held);
}
