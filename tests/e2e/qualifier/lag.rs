//! `qualifier_consumer_lag_messages` from the real binary: a series per partition this process
//! is assigned, falling to 0 once it consumed what was written while it was away, and gone for
//! a partition a rebalance gave to another instance.

use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::FutureRecord;

use super::QualifierTest;

const RULES: &str = "traits: [{ id: 1 }]\nsegments: [{ id: 100, rule: T1 }]\n";
const EVENTS: i64 = 40;

/// The process's lag series for `topic`: (partition, messages), sorted.
fn lag_series(metrics: &str, topic: &str) -> Vec<(String, f64)> {
    let prefix = "qualifier_consumer_lag_messages{partition=\"";
    let mut found: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|line| {
            let rest = line.strip_prefix(prefix)?;
            let (partition, rest) = rest.split_once('"')?;
            let value = rest.strip_prefix(&format!(",topic=\"{topic}\"}} "))?;
            Some((partition.to_owned(), value.trim().parse().ok()?))
        })
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

#[tokio::test]
async fn the_lag_gauge_covers_assigned_partitions_only_and_falls_to_zero() {
    let test = QualifierTest::new(2).await;
    // Written while no qualifier runs: its group has not consumed any of them.
    let producer = testkit::kafka::producer();
    for i in 0..EVENTS {
        let event = super::trait_realization(format!("lag-user-{i}"));
        producer
            .send(
                FutureRecord::to(&test.events)
                    .key(&event.user_id)
                    .payload(&event.encode_to_vec()),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }

    let definitions = test.definitions(RULES);
    let a = test.start(&definitions, "a").await;
    testkit::wait_for(
        "the only qualifier to consume every event and show no lag on both partitions",
        Duration::from_secs(40),
        || async {
            (
                test.committed_input(2),
                lag_series(&a.service.metrics().await, &test.events),
            )
        },
        |(committed, lag)| {
            *committed == EVENTS && *lag == [("0".to_owned(), 0.0), ("1".to_owned(), 0.0)]
        },
    )
    .await;

    // A second instance joins the group: each keeps the series of its own partition only.
    let b = test.start(&definitions, "b").await;
    testkit::wait_for(
        "the two qualifiers to show one partition each",
        Duration::from_secs(40),
        || async {
            (
                lag_series(&a.service.metrics().await, &test.events),
                lag_series(&b.service.metrics().await, &test.events),
            )
        },
        |(on_a, on_b)| {
            let mut both: Vec<&String> = on_a.iter().chain(on_b).map(|(p, _)| p).collect();
            both.sort();
            on_a.len() == 1
                && on_b.len() == 1
                && both == ["0", "1"]
                && on_a.iter().chain(on_b).all(|(_, lag)| *lag == 0.0)
        },
    )
    .await;
}
