//! How long a read of a whole topic may take, on the real broker: the qualifier's restore
//! (`read_to_end_while_moving`) goes on as long as records come; a read with a total deadline
//! fails when the deadline passes, moving or not. (That a read which stops moving fails is
//! telemetry's `kafka::tests`, on a mock cluster whose broker answers too slowly.)

use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use testkit::kafka;

const RECORDS: i64 = 8;
/// Each record takes this long to handle: the whole read takes longer than [`STALL`].
const PER_RECORD: Duration = Duration::from_millis(300);
const STALL: Duration = Duration::from_secs(1);

/// A one-partition topic holding [`RECORDS`] committed records.
async fn topic_with_records() -> String {
    let topic = kafka::unique_topic("read-bounds", 1).await;
    let producer: BaseProducer = kafka::client_config().create().unwrap();
    for i in 0..RECORDS {
        let key = i.to_string();
        producer
            .send(BaseRecord::to(&topic).key(&key).payload("x"))
            .unwrap();
    }
    producer.flush(Duration::from_secs(10)).unwrap();
    topic
}

#[tokio::test]
async fn a_restore_read_that_keeps_moving_outlives_its_stall_bound_a_total_deadline_does_not() {
    let topic = topic_with_records().await;
    let (moving, total) = tokio::task::spawn_blocking(move || {
        let kafka = kafka::settings();
        let started = Instant::now();
        let mut read = 0;
        let moving = kafka
            .read_to_end_while_moving(&topic, &[0], STALL, |_| {
                std::thread::sleep(PER_RECORD);
                read += 1;
            })
            .map(|()| (read, started.elapsed()));
        // The same read, bounded in all by the same time: it must fail.
        let total = kafka.read_ranges(
            &topic,
            &[(0, Offset::Beginning, RECORDS)],
            false,
            STALL,
            |_| std::thread::sleep(PER_RECORD),
        );
        (moving, total)
    })
    .await
    .unwrap();
    let (read, took) = moving.expect("a read that moves is not cut short");
    assert_eq!(read, RECORDS);
    assert!(
        took > STALL * 2,
        "the read took {took:?}: it must outlast the bound to show anything"
    );
    assert!(
        matches!(
            total,
            Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut))
        ),
        "a total deadline ends the same read: {total:?}"
    );
}
