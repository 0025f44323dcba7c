//! The consumer-lag gauge both services export (`telemetry::lag`), against the real broker:
//! a consumer that has not taken its partitions' messages shows them as lag, one that took
//! them shows 0, and a partition taken away loses its series.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::producer::FutureRecord;
use rdkafka::statistics::Statistics;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use telemetry::ConsumerLag;
use telemetry::prometheus::{IntGaugeVec, Opts};
use testkit::kafka;

struct LagContext {
    lag: ConsumerLag,
    topic: String,
    /// What the last statistics said of the topic's partitions: a failure shows it.
    last: Mutex<String>,
}

impl ClientContext for LagContext {
    fn stats(&self, statistics: Statistics) {
        self.lag.observe(&statistics);
        let partitions = statistics.topics.get(&self.topic).map(|topic| {
            topic
                .partitions
                .values()
                .map(|p| {
                    format!(
                        "{}: desired {} unknown {} {} lo {} ls {} hi {} stored {} committed {}",
                        p.partition,
                        p.desired,
                        p.unknown,
                        p.fetch_state,
                        p.lo_offset,
                        p.ls_offset,
                        p.hi_offset,
                        p.stored_offset,
                        p.committed_offset
                    )
                })
                .collect::<Vec<_>>()
                .join("; ")
        });
        // Never a panic here: it would unwind into librdkafka and abort the whole test binary.
        *self.last.lock().unwrap_or_else(PoisonError::into_inner) =
            partitions.unwrap_or_else(|| "no such topic".to_owned());
    }
}

impl LagContext {
    /// What the last statistics said of the topic's partitions (a copy: an assertion's message
    /// holding the lock would poison it as it panics).
    fn last(&self) -> String {
        self.last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl ConsumerContext for LagContext {}

/// The gauge's series for `topic`, by partition, sorted.
fn lag_of(gauge: &IntGaugeVec, topic: &str) -> Vec<(String, i64)> {
    let mut found: Vec<(String, i64)> = telemetry::prometheus::core::Collector::collect(gauge)
        .iter()
        .flat_map(|family| family.get_metric().to_vec())
        .filter(|m| {
            m.get_label()
                .iter()
                .any(|l| l.name() == "topic" && l.value() == topic)
        })
        .map(|m| {
            let partition = m
                .get_label()
                .iter()
                .find(|l| l.name() == "partition")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            (partition, m.get_gauge().get_value() as i64)
        })
        .collect();
    found.sort();
    found
}

/// Serves the consumer's events (its statistics among them) until the gauge shows `expected`.
fn poll_until(
    consumer: &BaseConsumer<LagContext>,
    gauge: &IntGaugeVec,
    topic: &str,
    what: &str,
    expected: &[(&str, i64)],
) {
    let expected: Vec<(String, i64)> = expected.iter().map(|&(p, v)| (p.to_owned(), v)).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(Ok(message)) = consumer.poll(Duration::from_millis(100)) {
            panic!(
                "a message reached the main queue, so the test consumed it: {:?}",
                rdkafka::Message::offset(&message)
            );
        }
        let shown = lag_of(gauge, topic);
        if shown == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the lag gauge shows {shown:?}, expected {expected:?}; the last statistics: {}",
            consumer.context().last()
        );
    }
}

#[tokio::test]
async fn lag_shows_what_is_not_consumed_and_only_for_assigned_partitions() {
    let topic = kafka::unique_topic("lag", 2).await;
    let producer = kafka::producer();
    // 30 messages on partition 0, 12 on partition 1.
    for (partition, count) in [(0, 30), (1, 12)] {
        for i in 0..count {
            producer
                .send(
                    FutureRecord::to(&topic)
                        .partition(partition)
                        .key("user")
                        .payload(&format!("message {i}")),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
        }
    }

    let gauge = IntGaugeVec::new(
        Opts::new("test_consumer_lag", "lag"),
        &["topic", "partition"],
    )
    .unwrap();
    // Set up as the qualifier's consumer is: offsets stored as messages are taken, committed
    // elsewhere (here: never).
    let consumer: Arc<BaseConsumer<LagContext>> = Arc::new(
        kafka::client_config()
            .set("group.id", testkit::unique_name("lag"))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest")
            .set("isolation.level", "read_committed")
            .set("statistics.interval.ms", "100")
            .create_with_context(LagContext {
                lag: ConsumerLag::new(gauge.clone(), &topic),
                topic: topic.clone(),
                last: Mutex::default(),
            })
            .unwrap(),
    );
    // Each partition's messages go to a queue of its own, which the test takes from when it
    // chooses; the main queue serves the statistics.
    let queues: Vec<_> = (0..2)
        .map(|p| consumer.split_partition_queue(&topic, p).unwrap())
        .collect();
    // From the beginning, as `auto.offset.reset=earliest` starts a group that committed
    // nothing. Not left to the group's committed offsets: librdkafka then fetches them first,
    // and on a broker whose group coordinator does not exist yet (a fresh one: this test may
    // be the first to use a group) that fetch fails and is never retried, so the partitions
    // are never fetched (librdkafka issue #5586; seen after `make kafka-reset`, and on CI).
    let mut assignment = TopicPartitionList::new();
    for partition in [0, 1] {
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();

    poll_until(
        &consumer,
        &gauge,
        &topic,
        "assigned, nothing consumed yet",
        &[("0", 30), ("1", 12)],
    );

    // Partition 0's messages are taken; partition 1's still wait.
    let mut taken = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while taken < 30 {
        assert!(
            Instant::now() < deadline,
            "only {taken} of 30 messages read; the last statistics: {}",
            consumer.context().last()
        );
        consumer.poll(Duration::ZERO);
        if let Some(message) = queues[0].poll(Duration::from_millis(100)) {
            message.unwrap();
            taken += 1;
        }
    }
    poll_until(
        &consumer,
        &gauge,
        &topic,
        "partition 0 consumed",
        &[("0", 0), ("1", 12)],
    );

    // Partition 1 is taken away (as by a rebalance): its series goes, partition 0's stays.
    let mut revoked = TopicPartitionList::new();
    revoked.add_partition(&topic, 1);
    consumer.incremental_unassign(&revoked).unwrap();
    poll_until(
        &consumer,
        &gauge,
        &topic,
        "partition 1 unassigned",
        &[("0", 0)],
    );
    consumer.unassign().unwrap();
    poll_until(&consumer, &gauge, &topic, "everything unassigned", &[]);
}
