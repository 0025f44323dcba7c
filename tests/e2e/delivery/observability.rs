//! Every documented metric is exported and moves as the work says; the batch lane delivers.

use std::time::Duration;

use model::Origin;
use testkit::receiver::Receiver;
use testkit::service::metric_value;

use super::{DeliveryTest, T0, change, destination, update};

#[tokio::test]
async fn every_documented_metric_is_exported_and_moves() {
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(60, &receiver, ", retry_backoff_ms: 5")]);
    let service = test.start(&config, &[]).await;

    let before = service.metrics().await;
    for series in [
        r#"delivery_events_total{destination="60",outcome="delivered"} 0"#,
        r#"delivery_events_total{destination="60",outcome="dead_lettered"} 0"#,
        r#"delivery_requests_total{destination="60",outcome="timeout"} 0"#,
        r#"delivery_requests_total{destination="60",outcome="tls"} 0"#,
        r#"delivery_retries_total{destination="60"} 0"#,
        r#"delivery_queue_depth{destination="60"} 0"#,
        r#"delivery_in_flight_requests{destination="60"} 0"#,
        r#"delivery_circuit_open{destination="60"} 0"#,
        r#"delivery_oauth_token_requests_total{destination="60",outcome="ok"} 0"#,
        "delivery_decode_errors_total 0",
    ] {
        assert!(
            before.contains(series),
            "missing `{series}` before any traffic"
        );
    }

    receiver.script([testkit::receiver::Response::status(500)]);
    test.produce(
        &test.topic,
        &[update(
            "u1",
            &[6],
            &[],
            vec![change(14356, true, T0), change(12176, false, T0)],
        )],
    )
    .await;
    let mut batch_update = update("u2", &[], &[], vec![change(14356, true, T0)]);
    batch_update.origin = Origin::Batch as i32;
    test.produce(&test.batch_topic, &[batch_update]).await;
    test.produce_raw("junk", b"\x08").await;

    testkit::wait_until(
        "metrics after one retry, one batch-lane event and one decode error",
        Duration::from_secs(20),
        || async {
            let m = service.metrics().await;
            let value = |series: &str| metric_value(&m, series).unwrap_or(-1.0);
            value(r#"delivery_events_total{destination="60",outcome="delivered"}"#) == 2.0
                // Two updates carrying three changes, none replaced within a batch.
                && value(r#"delivery_changes_total{destination="60",outcome="delivered"}"#) == 3.0
                && value(r#"delivery_changes_total{destination="60",outcome="coalesced"}"#) == 0.0
                && value(r#"delivery_changes_total{destination="60",outcome="dead_lettered"}"#)
                    == 0.0
                && value(r#"delivery_requests_total{destination="60",outcome="success"}"#) == 2.0
                && value(r#"delivery_requests_total{destination="60",outcome="http_status"}"#)
                    == 1.0
                && value(r#"delivery_retries_total{destination="60"}"#) == 1.0
                && value(r#"delivery_request_duration_seconds_count{destination="60"}"#) == 3.0
                // By how they were sent: u1's two changes in real time, u2's from the batch lane.
                && value(r#"delivery_end_to_end_latency_seconds_count{destination="60",path="real_time"}"#) == 2.0
                && value(r#"delivery_end_to_end_latency_seconds_count{destination="60",path="batch"}"#) == 1.0
                && value(r#"delivery_batch_users_count{destination="60"}"#) == 2.0
                && value(r#"delivery_batch_bytes_count{destination="60"}"#) == 2.0
                && value(r#"delivery_queue_depth{destination="60"}"#) == 0.0
                && value("delivery_decode_errors_total") == 1.0
                && m.contains("delivery_committed_offset{")
        },
    )
    .await;
    // librdkafka reports lag every 5 s.
    testkit::wait_until(
        "consumer lag per partition",
        Duration::from_secs(15),
        || async {
            service.metrics().await.contains(&format!(
                r#"delivery_consumer_lag{{partition="0",topic="{}"}} 0"#,
                test.topic
            ))
        },
    )
    .await;
    let m = service.metrics().await;
    // End-to-end latency counts from the change's time (2016): it lands in the last bucket.
    assert_eq!(
        metric_value(
            &m,
            r#"delivery_end_to_end_latency_seconds_bucket{destination="60",path="real_time",le="80"}"#
        ),
        Some(0.0)
    );
    // Committed offsets, summed over the 2 partitions: the real-time topic's update and the
    // undecodable message, and the batch topic's update.
    let committed = |m: &str, topic: &str| -> f64 {
        (0..2)
            .filter_map(|p| {
                metric_value(
                    m,
                    &format!(r#"delivery_committed_offset{{partition="{p}",topic="{topic}"}}"#),
                )
            })
            .sum()
    };
    testkit::wait_for(
        "committed offsets 2 (real time) and 1 (batch)",
        Duration::from_secs(10),
        || async {
            let m = service.metrics().await;
            (committed(&m, &test.topic), committed(&m, &test.batch_topic))
        },
        |&offsets| offsets == (2.0, 1.0),
    )
    .await;
}
