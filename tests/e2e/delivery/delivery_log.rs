//! The delivery log: one record per (user, destination, request attempt) on its topic, and
//! `delivery log --user` printing them — what a partner got for a user and what it answered.

use std::time::Duration;

use testkit::receiver::{Receiver, Response};
use testkit::service::{binary, metric_value, run_to_end};

use super::{DeliveryTest, T0, change, destination, update};

/// `delivery log` with `args` on `test`'s log topic: (exit code, stdout, stderr).
pub async fn delivery_log(test: &DeliveryTest, args: &[&str]) -> (i32, String, String) {
    run_to_end(
        tokio::process::Command::new(binary("delivery"))
            .args(["log", "--topic", &test.log_topic])
            .args(args)
            .env("KAFKA_BROKERS", &testkit::kafka::settings().brokers),
    )
    .await
}

#[tokio::test]
async fn every_attempt_is_logged_per_user_with_the_partners_answer() {
    let test = DeliveryTest::new(2).await;
    let (logged, unlogged) = (Receiver::start().await, Receiver::start().await);
    logged.script([
        Response::status(503).body("text/plain", "busy, try later"),
        Response::status(200).json(r#"{"accepted":1}"#),
    ]);
    let config = test.config(&[
        destination(7, &logged, ", retry_backoff_ms: 10, data_partner: 1234"),
        destination(8, &unlogged, ", delivery_log: false"),
    ]);
    let service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update(
            "u1",
            &[6],
            &["p-1"],
            vec![change(14356, true, T0), change(12176, false, T0)],
        )],
    )
    .await;
    logged.wait_for_requests(2, Duration::from_secs(20)).await;
    unlogged.wait_for_requests(1, Duration::from_secs(20)).await;
    test.produce(
        &test.topic,
        &[update("u2", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    logged.wait_for_requests(3, Duration::from_secs(20)).await;

    let (code, out, err) = testkit::wait_for(
        "u1's two attempts in the delivery log",
        Duration::from_secs(20),
        || delivery_log(&test, &["--user", "u1", "--json"]),
        |(_, out, _)| {
            serde_json::from_str::<serde_json::Value>(out)
                .is_ok_and(|v| v.as_array().is_some_and(|a| a.len() >= 2))
        },
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    let records = records.as_array().unwrap();
    assert_eq!(records.len(), 2, "destination 8 logs nothing: {out}");
    let (first, second) = (&records[0], &records[1]);
    assert_eq!(first["destination"], 7);
    assert_eq!(first["attempt"], 1);
    assert_eq!(first["outcome"], "HTTP 503");
    assert_eq!(first["response"], "busy, try later");
    assert_eq!(second["attempt"], 2);
    assert_eq!(second["outcome"], "delivered");
    assert_eq!(second["http_status"], 200);
    assert_eq!(second["response"], r#"{"accepted":1}"#);
    assert_eq!(
        first["idempotency_key"], second["idempotency_key"],
        "one batch, two attempts"
    );
    assert_eq!(second["partner_uuids"], serde_json::json!(["p-1"]));
    assert_eq!(second["regions"], serde_json::json!([6]));
    assert_eq!(
        second["segments"],
        serde_json::json!([
            {"segment_id": "14356", "status": "1", "date_time": "2016-07-27T16:17:22.000Z"},
            {"segment_id": "99", "status": "0", "date_time": "2016-07-27T16:17:22.000Z"},
        ])
    );
    // The key the partner saw is the one logged.
    let requests = logged.requests();
    assert_eq!(
        requests[1].header("idempotency-key"),
        second["idempotency_key"].as_str()
    );

    // The table, newest last; filters by destination and time.
    let (code, table, err) = delivery_log(&test, &["--user", "u1"]).await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("time"), "{table}");
    assert!(
        lines[1].contains("HTTP 503") && lines[2].contains("delivered"),
        "{table}"
    );
    assert!(
        lines[2].contains("14356=1 99=0") && lines[2].contains("p-1"),
        "{table}"
    );
    let (_, none, _) = delivery_log(&test, &["--user", "u1", "--destination", "8"]).await;
    assert_eq!(none, "no delivery log records for u1\n");
    let (_, later, _) =
        delivery_log(&test, &["--user", "u1", "--since", "2099-01-01T00:00:00Z"]).await;
    assert_eq!(later, "no delivery log records for u1\n");
    let (_, other, _) = delivery_log(&test, &["--user", "u2", "--json"]).await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&other)
            .unwrap()
            .as_array()
            .unwrap()
            .len(),
        1,
        "u2's request went through at once: {other}"
    );

    let metrics = service.metrics().await;
    assert_eq!(
        metric_value(&metrics, "delivery_log_records_total"),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(
        metric_value(&metrics, "delivery_log_dropped_total"),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_tls_failure_is_logged_in_plain_words() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start_with(testkit::receiver::Tls::CaAsServer).await;
    let config = test.config(&[destination(
        9,
        &partner,
        ", retry_backoff_ms: 10, backoff: { initial_ms: 100, max_ms: 100 }",
    )]);
    let _service = test.start(&config, &[]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let (code, out, err) = testkit::wait_for(
        "u1's failed attempts in the delivery log",
        Duration::from_secs(20),
        || delivery_log(&test, &["--user", "u1", "--json"]),
        |(_, out, _)| out.contains("\"attempt\": 2"),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    let records: serde_json::Value = serde_json::from_str(&out).unwrap();
    let first = &records[0];
    let outcome = first["outcome"].as_str().unwrap();
    assert!(outcome.starts_with("tls: "), "{outcome}");
    assert!(
        outcome.contains(
            "presents a CA certificate (basicConstraints CA:TRUE) as its own server certificate"
        ),
        "{outcome}"
    );
    assert_eq!(first["http_status"], serde_json::Value::Null);
    assert!(partner.requests().is_empty());
}
