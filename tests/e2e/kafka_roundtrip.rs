//! The protobuf contract survives the real broker: what a producer writes is what a
//! consumer reads, byte for byte, in order per user.

use std::collections::HashMap;
use std::time::Duration;

use model::{ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer;
use rdkafka::producer::FutureRecord;
use testkit::kafka;

fn update(user: usize, seq: usize) -> SegmentStatusUpdate {
    let active = seq.is_multiple_of(2);
    let time = 1_469_636_242_000 + i64::try_from(seq).unwrap();
    SegmentStatusUpdate {
        user_id: format!("user-{user}"),
        regions: vec![6, 7],
        partner_ids: vec![PartnerIds {
            data_partner_id: 1234,
            partner_uuids: vec![format!("p-{user}-a"), format!("p-{user}-b")],
        }],
        changes: vec![if active {
            SegmentChange::qualified(14356, time)
        } else {
            SegmentChange::unsegmented(14356, ChangeReason::Ttl, time)
        }],
        origin: Origin::Realtime as i32,
        produced_unix_ms: 1_469_636_242_500,
        sequence: 1_469_636_242_500 * 1024 + u64::try_from(seq).unwrap(),
        only_data_partner_id: None,
    }
}

#[tokio::test]
async fn segment_status_updates_round_trip_through_the_broker_byte_identical() {
    const USERS: usize = 20;
    const PER_USER: usize = 10;
    let topic = kafka::unique_topic("roundtrip", 3).await;
    let producer = kafka::producer();

    let mut sent: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    for seq in 0..PER_USER {
        for user in 0..USERS {
            let update = update(user, seq);
            let bytes = update.encode_to_vec();
            producer
                .send(
                    FutureRecord::to(&topic)
                        .key(&update.user_id)
                        .payload(&bytes),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
            sent.entry(update.user_id).or_default().push(bytes);
        }
    }

    let consumer = kafka::consumer(&testkit::unique_name("roundtrip"));
    consumer.subscribe(&[&topic]).unwrap();
    let mut received: HashMap<String, Vec<Vec<u8>>> = HashMap::new();
    let mut count = 0;
    while count < USERS * PER_USER {
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("only {count} of {} messages came back", USERS * PER_USER))
            .unwrap();
        let key = String::from_utf8(message.key().unwrap().to_vec()).unwrap();
        let payload = message.payload().unwrap().to_vec();
        let decoded = SegmentStatusUpdate::decode(payload.as_slice()).unwrap();
        assert_eq!(decoded.user_id, key, "the key is the user id");
        received.entry(key).or_default().push(payload);
        count += 1;
    }

    // Byte-identical, and in order per user (one user, one partition).
    assert_eq!(received, sent);
}
