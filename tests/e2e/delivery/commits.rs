//! Offset commits the broker refuses for a while (librdkafka's mock cluster refuses them on
//! demand; the shared broker cannot be made to).

use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use testkit::receiver::Receiver;
use testkit::service::{Service, metric_value};

use super::{DeliveryTest, T0, change, destination, entries, json, update};

/// How many offset commits in a row the broker refuses: at one commit per 100 ms commit
/// interval, several seconds of refusals.
const REFUSALS: usize = 50;

/// What delivery says it committed (`delivery_committed_offset`) and what the broker holds
/// for its group, on partition 0.
async fn committed(test: &DeliveryTest, delivery: &Service) -> (Option<f64>, Option<i64>) {
    let series = format!(
        r#"delivery_committed_offset{{partition="0",topic="{}"}}"#,
        test.topic
    );
    let gauge = metric_value(&delivery.metrics().await, &series);
    (gauge, test.committed(1).get(&0).copied())
}

/// Delivered users, in order of arrival.
fn delivered(receiver: &Receiver) -> usize {
    entries(receiver.requests().iter().map(|r| json(&r.body))).len()
}

fn refusals_logged(delivery: &Service) -> usize {
    delivery.log().matches("Offset commit failed").count()
}

/// A commit the broker refuses (an error librdkafka does not retry by itself) is sent again
/// until the broker takes it, and `delivery_committed_offset` moves only when the broker
/// confirmed a commit: while the broker refuses, it still says what the broker holds.
#[tokio::test]
async fn a_refused_offset_commit_is_sent_again_and_the_gauge_moves_only_when_confirmed() {
    let cluster = MockCluster::new(1).unwrap();
    let test = DeliveryTest::on_mock_cluster(&cluster, 1);
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(61, &receiver, "")]);
    let delivery = test.start(&config, &[]).await;
    let updates: Vec<_> = (0..20)
        .map(|i| update(&format!("u{i}"), &[], &[], vec![change(14356, true, T0)]))
        .collect();

    test.produce(&test.topic, &updates[..10]).await;
    testkit::wait_for(
        "the first 10 updates committed, by the broker and the gauge",
        Duration::from_secs(30),
        || committed(&test, &delivery),
        |&now| now == (Some(10.0), Some(10)),
    )
    .await;

    cluster.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE; REFUSALS],
    );
    test.produce(&test.topic, &updates[10..]).await;
    testkit::wait_until(
        "the next 10 updates delivered and a commit of them refused",
        Duration::from_secs(30),
        || {
            let done = delivered(&receiver) >= 20 && refusals_logged(&delivery) >= 1;
            async move { done }
        },
    )
    .await;
    let while_refused = committed(&test, &delivery).await;
    // Every commit sent so far was refused, so nothing else may have moved either.
    let refused = refusals_logged(&delivery);
    assert!(
        refused < REFUSALS,
        "all {REFUSALS} refusals were used up before the check: raise REFUSALS"
    );
    assert_eq!(
        while_refused,
        (Some(10.0), Some(10)),
        "(gauge, broker) while the broker refused {refused} commits of offset 20"
    );

    testkit::wait_for(
        "the next 10 updates committed once the broker takes commits again",
        Duration::from_secs(30),
        || committed(&test, &delivery),
        |&now| now == (Some(20.0), Some(20)),
    )
    .await;
    assert_eq!(delivered(&receiver), 20, "each update delivered once");
    assert_eq!(
        refusals_logged(&delivery),
        REFUSALS,
        "each refusal logged once, then the commit went through"
    );
}
