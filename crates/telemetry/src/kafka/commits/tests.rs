//! `telemetry::commits` on librdkafka's mock cluster: the starts, the commits asked again
//! while the coordinator moves, and librdkafka #5586 itself (its own fetch never reads).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use super::{explicit_starts, read_commits};

fn list(entries: &[(i32, Offset, &str)]) -> TopicPartitionList {
    let mut list = TopicPartitionList::new();
    for &(partition, offset, metadata) in entries {
        let mut element = list.add_partition("t", partition);
        element.set_offset(offset).unwrap();
        element.set_metadata(metadata);
    }
    list
}

fn offsets(list: &TopicPartitionList) -> Vec<(i32, Offset, String)> {
    list.elements()
        .iter()
        .map(|e| (e.partition(), e.offset(), e.metadata().to_owned()))
        .collect()
}

#[test]
fn each_partition_starts_at_its_commit_or_without_one_at_its_beginning() {
    let commits = list(&[
        (0, Offset::Offset(42), "d1=7"),
        (1, Offset::Invalid, ""),
        (2, Offset::Offset(0), ""),
    ]);
    let starts = explicit_starts(&commits).unwrap();
    assert_eq!(
        offsets(&starts),
        vec![
            (0, Offset::Offset(42), "d1=7".to_owned()),
            (1, Offset::Beginning, String::new()),
            (2, Offset::Offset(0), String::new()),
        ]
    );
}

/// A group consumer of the mock cluster with `partition`'s commit at `offset`.
fn committed(
    cluster: &MockCluster<'_, rdkafka::producer::DefaultProducerContext>,
    offset: i64,
) -> BaseConsumer {
    cluster.create_topic("t", 2, 1).unwrap();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "commits-test")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer
        .commit(&list(&[(0, Offset::Offset(offset), "m")]), CommitMode::Sync)
        .unwrap();
    consumer
}

#[test]
fn commits_are_read_again_while_the_coordinator_answers_not_coordinator() {
    let cluster = MockCluster::new(1).unwrap();
    let consumer = committed(&cluster, 17);
    let wanted = list(&[(0, Offset::Invalid, ""), (1, Offset::Invalid, "")]);
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
    );
    let commits = read_commits(&consumer, &wanted, Duration::from_secs(30)).unwrap();
    assert_eq!(
        offsets(&commits),
        vec![
            (0, Offset::Offset(17), "m".to_owned()),
            (1, Offset::Invalid, String::new()),
        ]
    );
}

/// What the test above asks again through: the error reaches the caller (so that one proves
/// the asking again), and past its patience `read_commits` returns it.
#[test]
fn past_its_patience_the_coordinators_error_is_returned() {
    let cluster = MockCluster::new(1).unwrap();
    let consumer = committed(&cluster, 17);
    let wanted = list(&[(0, Offset::Invalid, "")]);
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 1000],
    );
    let result = read_commits(&consumer, &wanted, Duration::from_secs(2));
    assert!(
        result
            .as_ref()
            .is_err_and(|e| e.to_string().contains("Not coordinator")),
        "{:?}",
        result.map(|l| offsets(&l))
    );
}

/// A group consumer whose rebalances go through `telemetry::commits` (as the services'
/// contexts do) or, with `explicit: false`, through rust-rdkafka's default (librdkafka fetches
/// the commits itself).
struct Group {
    explicit: bool,
}

impl rdkafka::ClientContext for Group {}

crate::hand_over_rebalances!(Group);

impl super::Handover for Group {
    fn assigned(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList) {
        if self.explicit {
            super::take_at_commits(consumer, assigned, super::PATIENCE).unwrap();
        } else {
            super::take_assigned(consumer, assigned).unwrap();
        }
    }

    fn revoked(&self, _: &BaseConsumer<Self>, _: &TopicPartitionList) {}
}

/// Whether a group consumer reads the one message of a topic within 10 s, while the
/// coordinator answers its first three OffsetFetch requests `NOT_COORDINATOR`.
fn reads_through_a_moved_coordinator(explicit: bool) -> bool {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 1, 1).unwrap();
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .create()
        .unwrap();
    producer
        .send(BaseRecord::to("t").key("k").payload("v"))
        .unwrap();
    producer.flush(Duration::from_secs(10)).unwrap();
    let consumer: BaseConsumer<Group> = ClientConfig::new()
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("group.id", "moved-coordinator")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create_with_context(Group { explicit })
        .unwrap();
    cluster.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_COORDINATOR; 3],
    );
    consumer.subscribe(&["t"]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100)) {
            return true;
        }
    }
    false
}

#[test]
fn partitions_taken_at_their_commits_are_read_though_the_coordinator_moved() {
    assert!(reads_through_a_moved_coordinator(true));
}

#[test]
fn librdkafkas_own_fetch_of_the_commits_never_reads_them() {
    assert!(!reads_through_a_moved_coordinator(false));
}
