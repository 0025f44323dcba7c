//! Timeouts, non-success statuses, retry, dead letters and the circuit breaker.

use std::time::Duration;

use model::ErrorClass;
use testkit::receiver::{Receiver, Response};
use testkit::service::metric_value;

use super::{DeliveryTest, T0, change, destination, update};

#[tokio::test]
async fn a_500_then_200_is_delivered_by_the_retry_with_the_same_idempotency_key() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.script([Response::status(500)]);
    let config = test.config(&[destination(7, &receiver, ", retry_backoff_ms: 10")]);
    let service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;

    let requests = receiver.wait_for_requests(2, Duration::from_secs(20)).await;
    assert_eq!(
        requests.iter().map(|r| r.status).collect::<Vec<_>>(),
        [500, 200]
    );
    assert_eq!(requests[0].body, requests[1].body);
    assert_eq!(
        requests[0].header("idempotency-key"),
        requests[1].header("idempotency-key")
    );
    testkit::wait_until(
        "delivered after one retry",
        Duration::from_secs(10),
        || async {
            let metrics = service.metrics().await;
            metric_value(
                &metrics,
                r#"delivery_events_total{destination="7",outcome="delivered"}"#,
            ) == Some(1.0)
                && metric_value(&metrics, r#"delivery_retries_total{destination="7"}"#) == Some(1.0)
                && metric_value(
                    &metrics,
                    r#"delivery_requests_total{destination="7",outcome="http_status"}"#,
                ) == Some(1.0)
                && metric_value(
                    &metrics,
                    r#"delivery_requests_total{destination="7",outcome="success"}"#,
                ) == Some(1.0)
        },
    )
    .await;
    // Exactly one retry: once the event is committed, delivery is done with it, and nothing
    // else arrived.
    testkit::wait_for(
        "the delivered event committed",
        Duration::from_secs(10),
        || async { test.committed(1) },
        |committed| committed.get(&0) == Some(&1),
    )
    .await;
    assert_eq!(receiver.requests().len(), 2);
}

#[tokio::test]
async fn a_201_is_a_failure_by_default_and_the_events_are_dead_lettered_after_one_retry() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(201, Duration::ZERO);
    let config = test.config(&[destination(8, &receiver, ", retry_backoff_ms: 10")]);
    let service = test.start(&config, &[]).await;
    let sent = update("u1", &[6], &[], vec![change(14356, true, T0)]);
    test.produce(&test.topic, std::slice::from_ref(&sent)).await;

    let records = test.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(receiver.requests().len(), 2, "first attempt and one retry");
    let record = &records[0];
    assert_eq!(record.destination_id, 8);
    assert_eq!(record.attempts, 2);
    assert_eq!(record.error_class(), ErrorClass::HttpStatus);
    assert_eq!(record.error, "HTTP 201");
    assert_eq!(record.updates, [sent]);
    testkit::wait_until(
        "dead-lettered and committed",
        Duration::from_secs(10),
        || async {
            metric_value(
                &service.metrics().await,
                r#"delivery_events_total{destination="8",outcome="dead_lettered"}"#,
            ) == Some(1.0)
                && test.committed(1).get(&0) == Some(&1)
        },
    )
    .await;
}

#[tokio::test]
async fn a_partner_slower_than_the_timeout_gets_one_retry_then_the_events_are_dead_lettered() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(200, Duration::from_millis(3_500));
    let config = test.config(&[destination(9, &receiver, ", retry_backoff_ms: 10")]);
    let service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;

    let records = test.dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(records[0].error_class(), ErrorClass::Timeout);
    assert_eq!(records[0].attempts, 2);
    assert!(
        records[0].last_attempt_unix_ms - records[0].first_attempt_unix_ms >= 6_000,
        "two 3 s timeouts"
    );
    let metrics = service.metrics().await;
    assert_eq!(
        metric_value(
            &metrics,
            r#"delivery_requests_total{destination="9",outcome="timeout"}"#
        ),
        Some(2.0)
    );
    assert_eq!(
        metric_value(&metrics, r#"delivery_retries_total{destination="9"}"#),
        Some(1.0)
    );
}

#[tokio::test]
async fn the_circuit_opens_after_sustained_failure_and_closes_after_a_good_probe() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(503, Duration::ZERO);
    let config = test.config(&[destination(
        10,
        &receiver,
        ", retries: 0, circuit: { failure_threshold: 2, cooldown_ms: 1500 }",
    )]);
    let service = test.start(&config, &[]).await;
    let circuit = r#"delivery_circuit_open{destination="10"}"#;
    assert_eq!(metric_value(&service.metrics().await, circuit), Some(0.0));

    // Two failed batches open the circuit.
    for user in ["u1", "u2"] {
        test.produce(
            &test.topic,
            &[update(user, &[], &[], vec![change(14356, true, T0)])],
        )
        .await;
        receiver
            .wait_for_requests(if user == "u1" { 1 } else { 2 }, Duration::from_secs(20))
            .await;
    }
    testkit::wait_until("circuit open", Duration::from_secs(10), || async {
        metric_value(&service.metrics().await, circuit) == Some(1.0)
    })
    .await;
    // While open, a batch goes straight to the dead letters without a request.
    test.produce(
        &test.topic,
        &[update("u3", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let records = test.dead_letters(3, Duration::from_secs(20)).await;
    assert_eq!(records[2].error_class(), ErrorClass::CircuitOpen);
    assert_eq!(records[2].attempts, 0);
    assert_eq!(receiver.requests().len(), 2);

    // After the cool-down, a probe that succeeds closes it.
    receiver.respond(200, Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1_600)).await;
    test.produce(
        &test.topic,
        &[update("u4", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    receiver.wait_for_requests(3, Duration::from_secs(20)).await;
    testkit::wait_until("circuit closed", Duration::from_secs(10), || async {
        metric_value(&service.metrics().await, circuit) == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn an_untrusted_certificate_is_a_tls_failure_and_never_sends_the_body() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start().await;
    let stranger = Receiver::start().await;
    // Trust another receiver's CA only: the partner's certificate does not verify.
    let entry = destination(15, &partner, ", retry_backoff_ms: 5").replace(
        &partner.ca_file().display().to_string(),
        &stranger.ca_file().display().to_string(),
    );
    let config = test.config(&[entry]);
    let service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;

    let records = test.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(
        records[0].error_class(),
        ErrorClass::Tls,
        "{}",
        records[0].error
    );
    assert!(partner.requests().is_empty());
    assert_eq!(
        metric_value(
            &service.metrics().await,
            r#"delivery_requests_total{destination="15",outcome="tls"}"#
        ),
        Some(2.0)
    );
}
