//! Bad input against the real binary: events too large to process, slow and wrong clients of
//! the ingest API.

use std::time::Duration;

use model::{ChangeReason, SegmentStatus};
use prost::Message as _;
use rdkafka::Message as _;
use testkit::service::metric_value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::{QualifierTest, changes, now, post, trait_event, updates};

const RULES: &str = "traits: [{ id: 1 }]\nsegments: [{ id: 100, rule: T1 }]\n";

#[tokio::test]
async fn an_event_with_a_huge_user_id_is_dead_lettered_and_the_qualifier_keeps_going() {
    let test = QualifierTest::new(1).await;
    let mut q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.status);
    // Straight to Kafka (the ingest API refuses it): a 900 KB user id. Its status update and
    // changelog record would pass Kafka's 1 MB limit, fail the transaction, and the restart
    // would read the same event again, for ever.
    let huge = super::trait_realization("u".repeat(900_000));
    testkit::kafka::producer()
        .send(
            rdkafka::producer::FutureRecord::to(&test.events)
                .key("huge")
                .payload(&huge.encode_to_vec()),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let (status, _) = post(&q.ingest, &[trait_event("w1", 1, &now(), None)]).await;
    assert_eq!(status, 202);
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(update.user_id, "w1");
    assert_eq!(
        changes(&update),
        [(100, SegmentStatus::Active, ChangeReason::Qualified)]
    );

    let dlq = test.reader(&test.dlq);
    let message = tokio::time::timeout(Duration::from_secs(20), dlq.recv())
        .await
        .expect("a dead letter")
        .unwrap();
    let record = model::DeadLetterRecord::decode(message.payload().unwrap()).unwrap();
    assert_eq!(message.key(), Some(&b"huge"[..]));
    assert_eq!(record.error_class(), model::ErrorClass::Undecodable);
    assert_eq!(
        record.error,
        "user_id is 900000 bytes long, more than the 512 allowed"
    );
    assert_eq!(
        record.raw,
        huge.encode_to_vec(),
        "small enough to keep whole"
    );
    let m = q.service.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"qualifier_events_total{outcome="invalid",type="trait"}"#
        ),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, "qualifier_transactions_failed_total"),
        Some(0.0)
    );

    // The ingest API refuses such an id with the line and the reason.
    let (status, body) = post(&q.ingest, &[trait_event(&"v".repeat(513), 1, &now(), None)]).await;
    assert_eq!(status, 400);
    assert_eq!(
        body["errors"][0]["error"],
        "`user`: 513 bytes long, more than the 512 allowed"
    );
    q.service.terminate();
    let exit = q.service.wait_exit(Duration::from_secs(20)).await;
    assert!(exit.success(), "exit {exit}; log:\n{}", q.service.log());
}

/// Reads what the server sends until it closes the connection.
async fn read_all(stream: &mut TcpStream) -> String {
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    String::from_utf8_lossy(&raw).into_owned()
}

#[tokio::test]
async fn slow_and_wrong_clients_get_a_clear_error_nothing_is_produced_and_others_are_served() {
    let test = QualifierTest::new(1).await;
    let q = test
        .start_with(
            &test.definitions(RULES),
            "a",
            &[("INGEST_READ_TIMEOUT_MS", "1500")],
        )
        .await;
    let events = test.reader(&test.events);
    let addr = q
        .ingest
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let started = tokio::time::Instant::now();

    // Ten clients send their headers, part of the body, and stall; ten stall in the headers.
    let event = trait_event("slow", 1, &now(), None);
    let mut stalled_bodies = Vec::new();
    let mut stalled_heads = Vec::new();
    for _ in 0..10 {
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        let head = format!(
            "POST /v1/events HTTP/1.1\r\nHost: q\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
            event.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        stream.write_all(&event.as_bytes()[..20]).await.unwrap();
        stalled_bodies.push(stream);
        let mut stream = TcpStream::connect(&addr).await.unwrap();
        stream
            .write_all(b"POST /v1/events HTTP/1.1\r\nHo")
            .await
            .unwrap();
        stalled_heads.push(stream);
    }

    // Meanwhile a normal client is served at once, and a wrong content type is told the fix.
    let (status, body) = post(&q.ingest, &[trait_event("fast", 1, &now(), None)]).await;
    assert_eq!((status, body), (202, serde_json::json!({"accepted": 1})));
    let wrong = reqwest::Client::new()
        .post(&q.ingest)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(trait_event("form", 1, &now(), None))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 415);
    let wrong: serde_json::Value = wrong.json().await.unwrap();
    assert!(
        wrong["error"]
            .as_str()
            .unwrap()
            .contains("send events as `application/json`"),
        "{wrong}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "the normal request waited for the slow clients: {:?}",
        started.elapsed()
    );

    for mut stream in stalled_bodies {
        let answer = read_all(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.contains("the body did not arrive within 1500 ms"),
            "{answer}"
        );
    }
    for mut stream in stalled_heads {
        let answer = tokio::time::timeout(Duration::from_secs(10), read_all(&mut stream))
            .await
            .expect("a client stalling its headers is disconnected");
        assert!(!answer.contains("202"), "{answer}");
    }
    assert!(started.elapsed() >= Duration::from_millis(1500));

    // Only the normal request's event reached the topic.
    let message = tokio::time::timeout(Duration::from_secs(10), events.recv())
        .await
        .expect("the accepted event")
        .unwrap();
    assert_eq!(message.key(), Some(&b"fast"[..]));
    super::no_more_messages(&events, Duration::from_secs(2)).await;
    let m = q.service.metrics().await;
    assert_eq!(
        metric_value(&m, r#"qualifier_ingest_requests_total{code="408"}"#),
        Some(10.0)
    );
    assert_eq!(
        metric_value(&m, r#"qualifier_ingest_requests_total{code="415"}"#),
        Some(1.0)
    );
    assert_eq!(
        metric_value(&m, r#"qualifier_ingest_requests_total{code="202"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn an_undecodable_changelog_record_is_skipped_on_restore_not_read_as_forgetting_the_user() {
    let test = QualifierTest::new(1).await;
    let definitions = test.definitions(RULES);
    let mut q = test.start(&definitions, "a").await;
    let reader = test.reader(&test.status);
    post(&q.ingest, &[trait_event("c1", 1, &now(), None)]).await;
    updates(&reader, 1, Duration::from_secs(20)).await;
    q.service.terminate();
    assert!(q.service.wait_exit(Duration::from_secs(20)).await.success());

    // A corrupt record becomes the user's latest on the changelog.
    testkit::kafka::producer()
        .send(
            rdkafka::producer::FutureRecord::to(&test.changelog)
                .key("c1")
                .partition(0)
                .payload(&b"\xff\xff corrupt"[..]),
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    let q = test.start(&definitions, "a").await;
    // c1 is still a member of 100: another T1 changes nothing. (Read as a tombstone, c1 was
    // forgotten and qualified again.)
    post(&q.ingest, &[trait_event("c1", 1, &now(), None)]).await;
    post(&q.ingest, &[trait_event("c2", 1, &now(), None)]).await;
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        update.user_id, "c2",
        "c1 qualified twice: its state was lost"
    );
    super::no_more(&reader, Duration::from_secs(2)).await;
    assert!(
        q.service
            .log()
            .contains("An undecodable changelog record was skipped."),
        "{}",
        q.service.log()
    );
}
