//! Against librdkafka's mock cluster: an acknowledged record's future says so, a refused one's
//! says why, and the polling thread lets the producer go.

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

use super::*;

#[tokio::test]
async fn a_record_is_acked_once_the_broker_has_it_and_a_refused_one_fails() {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("t", 2, 1).unwrap();
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", cluster.bootstrap_servers())
        .set("message.timeout.ms", "5000");
    let producer = AckedProducer::new(&config, "test-acks").unwrap();

    let acked = producer.send("t", b"u1", b"one").unwrap();
    assert_eq!(acked.await, Ok(()));

    // A refusal the producer does not retry.
    cluster.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE; 10],
    );
    let refused = producer.send("t", b"u1", b"two").unwrap().await;
    assert!(refused.is_err(), "{refused:?}");
    producer.flush(Duration::from_secs(5)).unwrap();

    // The polling thread keeps the producer only while it polls.
    let weak = Arc::downgrade(&producer.producer);
    drop(producer);
    let dropped_at = std::time::Instant::now();
    while weak.strong_count() > 0 {
        assert!(
            dropped_at.elapsed() < Duration::from_secs(10),
            "the producer is kept alive"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
