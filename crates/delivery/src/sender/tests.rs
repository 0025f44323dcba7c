//! When a destination counts as slow, how `Retry-After` reads, which destinations share a
//! client, how a real failed connection is classed, and that a failed send holds no input
//! partition.

use std::time::{Duration, UNIX_EPOCH};

use super::{DestinationSender, parse_retry_after};

#[test]
fn a_destination_is_slow_from_its_first_slow_answer_until_a_quick_one() {
    let yaml = "kafka: { topic: status, dlq_topic: status-dlq, group_id: g }\n\
                destinations:\n\
                  - { id: 1, url: https://a.example/x, client_id: acme, user_dpid: 1, timeout_ms: 3000, segments: { 1: \"1\" } }\n";
    let config =
        crate::config::DeliveryConfig::parse(std::path::Path::new("slow.yaml"), yaml, &|_| None)
            .unwrap();
    let metrics = crate::metrics::Metrics::register(&prometheus::Registry::new()).unwrap();
    let destination = config.destinations[0].clone();
    let sender = DestinationSender::new(
        destination.clone(),
        metrics.destination(destination.id, destination.max_backlog_age),
        None,
    )
    .unwrap();
    let ms = Duration::from_millis;
    assert!(sender.is_slow(), "no answer yet: cannot be told from stuck");
    for _ in 0..10 {
        sender.note_request_time(ms(50));
    }
    assert!(!sender.is_slow(), "answers in 50 ms");
    sender.note_request_time(ms(2_800));
    assert!(
        sender.is_slow(),
        "its first answer after 2.8 s of a 3 s timeout"
    );
    sender.note_request_time(ms(50));
    assert!(!sender.is_slow(), "one long request, then quick again");
    sender.note_request_time(ms(900));
    assert!(!sender.is_slow(), "900 ms: under a third of its timeout");
    sender.note_request_time(ms(1_000));
    assert!(sender.is_slow(), "1 s: a third of its timeout");
}

#[test]
fn retry_after_is_seconds_or_an_http_date_capped_at_an_hour() {
    // Sun, 06 Nov 1994 08:49:37 GMT (RFC 9110's example).
    let now = UNIX_EPOCH + Duration::from_secs(784_111_777);
    assert_eq!(
        parse_retry_after("120", now),
        Some(Duration::from_secs(120))
    );
    assert_eq!(parse_retry_after(" 2 ", now), Some(Duration::from_secs(2)));
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        parse_retry_after("Sun, 06 Nov 1994 08:49:00 GMT", now),
        Some(Duration::ZERO),
        "a date in the past: no wait"
    );
    assert_eq!(
        parse_retry_after("86400", now),
        Some(Duration::from_secs(3_600)),
        "capped at one hour"
    );
    assert_eq!(parse_retry_after("soon", now), None);
    assert_eq!(parse_retry_after("-5", now), None);
}

/// Destinations whose TLS and connection settings are equal share one HTTPS client (a
/// thousand destinations of one partner must not hold a thousand root stores); any difference
/// gets its own. (A timeout no other test uses keeps the process-wide cache to this test.)
#[test]
fn destinations_with_the_same_connection_settings_share_one_https_client() {
    let yaml = "kafka: { topic: status, dlq_topic: status-dlq, group_id: g }\n\
                destinations:\n\
                  - { id: 1, url: https://a.example/x, client_id: acme, user_dpid: 1, timeout_ms: 2917, segments: { 1: \"1\" } }\n\
                  - { id: 2, url: https://b.example/y, client_id: other, user_dpid: 1, timeout_ms: 2917, segments: { 1: \"1\" } }\n\
                  - { id: 3, url: https://a.example/x, client_id: acme, user_dpid: 1, timeout_ms: 2918, segments: { 1: \"1\" } }\n";
    let config =
        crate::config::DeliveryConfig::parse(std::path::Path::new("clients.yaml"), yaml, &|_| None)
            .unwrap();
    let built = |i: usize| {
        super::request::shared_clients(&config.destinations[i])
            .unwrap()
            .1
    };
    assert!(built(0), "the first of its settings");
    assert!(!built(1), "another partner, the same settings: shared");
    assert!(built(2), "another timeout: a client of its own");
    assert!(!built(0) && !built(2));
}

/// Nothing listening is a connection failure; a partner that accepts the connection and never
/// answers is a timeout, after the destination's `timeout_ms` (the classes of the dead letter
/// and of `delivery_requests_total`'s outcome).
#[tokio::test]
async fn a_refused_connection_is_a_connect_failure_and_a_silent_partner_a_timeout() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let (error, class) = crate::sender::bare_post_error(&crate::sender::one_destination(&format!(
        "url: \"https://127.0.0.1:{port}/x\", timeout_ms: 2911"
    )))
    .await;
    assert_eq!(class, model::ErrorClass::Connect, "{error:?}");

    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((connection, _)) = silent.accept().await {
            held.push(connection);
        }
    });
    let started = std::time::Instant::now();
    let (error, class) = crate::sender::bare_post_error(&crate::sender::one_destination(&format!(
        "url: \"https://127.0.0.1:{port}/x\", timeout_ms: 311"
    )))
    .await;
    assert_eq!(class, model::ErrorClass::Timeout, "{error:?}");
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
}

/// A failed send lets its batch's input partitions go (its batch waits out a backoff, or is
/// dead-lettered, and a revocation must not wait for that); only the attempt the partner
/// accepted stays held, until the lane finished its events (`offsets::Sending::finish`).
#[tokio::test]
async fn a_failed_send_holds_no_partition() {
    use crate::batcher::tests::{change, update};
    use crate::batcher::{DestinationBatch, EventSource};
    use crate::offsets::{Sending, Watermarks};

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let config = crate::sender::one_destination(&format!(
        "url: \"https://127.0.0.1:{port}/x\", retries: 1, retry_backoff_ms: 10"
    ));
    let metrics = crate::metrics::Metrics::register(&prometheus::Registry::new()).unwrap();
    let sender = DestinationSender::new(
        config.clone(),
        metrics.destination(1, config.max_backlog_age),
        None,
    )
    .unwrap();
    let watermarks = Watermarks::new(vec![1]);
    let assignment = watermarks.lock().assign(0, Some(0), &[]);
    watermarks.lock().track(0, 0, &mut vec![0]);
    let mut batch = DestinationBatch::new(config);
    let mut event = update("u", &[], &[], vec![change(1, true, 0)]);
    event.source = Some(EventSource {
        assignment,
        offset: 0,
        catch_up: false,
        written_unix_ms: None,
    });
    batch.add(event).unwrap();
    let mut sending = Sending::new(Some(&watermarks));
    sending.claim(&mut batch);

    let sent = sender
        .send(
            b"[]".to_vec(),
            "key",
            super::Priority::RealTime,
            &mut |_| {},
            &mut sending,
        )
        .await;
    let failure = sent.expect_err("nothing listens on the port");
    assert_eq!(failure.attempts, 2, "{}", failure.error);
    assert!(!sending.refused());
    assert!(
        !watermarks.lock().is_sending(&[0]),
        "the failed send still holds its partition"
    );
}
