//! Status changes from events and from time: qualify, rule, ttl, inactivity, opt-out.

use std::time::Duration;

use model::{ChangeReason, Origin, PartnerIds, SegmentStatus};
use rdkafka::Message as _;
use testkit::service::metric_value;

use super::{QualifierTest, changes, no_more, now, post, trait_event, updates};

const RULES: &str = r#"inactivity: 120d
traits:
  - { id: 1, ttl: 0 }
  - { id: 2, ttl: 0 }
  - { id: 3, ttl: 2s }
segments:
  - { id: 100, rule: "T1 AND NOT T2" }
  - { id: 300, rule: T3 }
"#;

#[tokio::test]
async fn an_event_qualifies_once_and_a_rule_turning_false_sends_0_reason_rule() {
    let test = QualifierTest::new(3).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.status);

    let (status, body) = post(&q.ingest, &[trait_event("u1", 1, &now(), Some(6))]).await;
    assert_eq!((status, body), (202, serde_json::json!({"accepted": 1})));
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(update.user_id, "u1");
    assert_eq!(
        changes(&update),
        [(100, SegmentStatus::Active, ChangeReason::Qualified)]
    );
    assert_eq!(update.regions, [6]);
    assert_eq!(update.origin(), Origin::Realtime);

    // The same trait again changes nothing.
    post(&q.ingest, &[trait_event("u1", 1, &now(), Some(6))]).await;
    no_more(&reader, Duration::from_secs(2)).await;

    post(&q.ingest, &[trait_event("u1", 2, &now(), None)]).await;
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&update),
        [(100, SegmentStatus::Inactive, ChangeReason::Rule)]
    );
}

#[tokio::test]
async fn ttl_expiry_fires_without_a_new_event_and_a_new_realization_keeps_the_user_in() {
    let test = QualifierTest::new(3).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.status);

    post(&q.ingest, &[trait_event("t1", 3, &now(), None)]).await;
    let qualified = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&qualified),
        [(300, SegmentStatus::Active, ChangeReason::Qualified)]
    );
    // Renew after 1 s: the user stays in until 2 s after the renewal.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let renewed_at = std::time::Instant::now();
    post(&q.ingest, &[trait_event("t1", 3, &now(), None)]).await;
    let expired = updates(&reader, 1, Duration::from_secs(10)).await.remove(0);
    let after = renewed_at.elapsed();
    assert_eq!(
        changes(&expired),
        [(300, SegmentStatus::Inactive, ChangeReason::Ttl)]
    );
    assert!(
        after >= Duration::from_millis(1_800),
        "expired {after:?} after the renewal, before its 2 s ttl"
    );
    assert!(
        after < Duration::from_millis(3_500),
        "expired {after:?} after the renewal: timers fire within ~1 s"
    );
}

#[tokio::test]
async fn inactivity_ends_every_segment_and_forgets_the_user() {
    let test = QualifierTest::new(1).await;
    let q = test
        .start(
            &test.definitions(&RULES.replace("inactivity: 120d", "inactivity: 3s")),
            "a",
        )
        .await;
    let reader = test.reader(&test.status);

    post(&q.ingest, &[trait_event("i1", 1, &now(), None)]).await;
    updates(&reader, 1, Duration::from_secs(20)).await;
    // Due 3 s after the event; the wait is generous because the whole suite shares 2 cores.
    let gone = updates(&reader, 1, Duration::from_secs(30)).await.remove(0);
    assert_eq!(
        changes(&gone),
        [(100, SegmentStatus::Inactive, ChangeReason::Inactive)]
    );
    // The changelog's last record for the user is a tombstone.
    let changelog = test.reader(&test.changelog);
    let mut last_payload = Some(vec![]);
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), changelog.recv()).await
    {
        if message.key() == Some(&b"i1"[..]) {
            last_payload = message.payload().map(<[u8]>::to_vec);
        }
    }
    assert_eq!(last_payload, None, "state dropped");
    testkit::wait_until("users gauge back to 0", Duration::from_secs(5), || async {
        metric_value(&q.service.metrics().await, "qualifier_users") == Some(0.0)
    })
    .await;
}

#[tokio::test]
async fn opt_out_ends_everything_with_every_synced_id_and_later_events_are_ignored() {
    let test = QualifierTest::new(3).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.status);

    let (status, _) = post(
        &q.ingest,
        &[
            r#"{"type":"id_sync","user":"o1","data_partner":1234,"partner_uuid":"p-a"}"#.to_owned(),
            r#"{"type":"id_sync","user":"o1","data_partner":1234,"partner_uuid":"p-b"}"#.to_owned(),
            trait_event("o1", 1, &now(), Some(7)),
        ],
    )
    .await;
    assert_eq!(status, 202);
    let qualified = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        qualified.partner_ids,
        [PartnerIds {
            data_partner_id: 1234,
            partner_uuids: vec!["p-a".into(), "p-b".into()]
        }]
    );
    assert_eq!(qualified.regions, [7]);

    post(
        &q.ingest,
        &[format!(
            r#"{{"type":"opt_out","user":"o1","time":"{}"}}"#,
            now()
        )],
    )
    .await;
    let out = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&out),
        [(100, SegmentStatus::Inactive, ChangeReason::OptOut)]
    );
    assert_eq!(
        out.partner_ids, qualified.partner_ids,
        "every synced id receives the 0"
    );

    post(&q.ingest, &[trait_event("o1", 1, &now(), None)]).await;
    no_more(&reader, Duration::from_secs(2)).await;
    testkit::wait_until(
        "the ignored event counted",
        Duration::from_secs(10),
        || async {
            let m = q.service.metrics().await;
            metric_value(
                &m,
                r#"qualifier_events_total{outcome="ignored",type="trait"}"#,
            ) == Some(1.0)
                && metric_value(
                    &m,
                    r#"qualifier_status_changes_total{reason="opt_out",status="0"}"#,
                ) == Some(1.0)
        },
    )
    .await;
}

#[tokio::test]
async fn an_invalid_kafka_event_is_dead_lettered_and_the_users_state_survives_it() {
    use prost::Message as _;
    let test = QualifierTest::new(1).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.status);
    post(&q.ingest, &[trait_event("v1", 1, &now(), None)]).await;
    updates(&reader, 1, Duration::from_secs(20)).await;

    // Straight to Kafka: a TraitEvent for v1 with no event in it, then garbage.
    let empty = model::TraitEvent {
        user_id: "v1".into(),
        origin: 1,
        event: None,
    }
    .encode_to_vec();
    let producer = testkit::kafka::producer();
    for payload in [empty, b"\xff\xff".to_vec()] {
        producer
            .send(
                rdkafka::producer::FutureRecord::to(&test.events)
                    .key("v1")
                    .payload(&payload),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    // v1 still holds T1: T2 now ends segment 100 (state survived the invalid event).
    post(&q.ingest, &[trait_event("v1", 2, &now(), None)]).await;
    let update = updates(&reader, 1, Duration::from_secs(20)).await.remove(0);
    assert_eq!(
        changes(&update),
        [(100, SegmentStatus::Inactive, ChangeReason::Rule)]
    );

    let dlq = test.reader(&test.dlq);
    let mut records = Vec::new();
    while records.len() < 2 {
        let message = tokio::time::timeout(Duration::from_secs(20), dlq.recv())
            .await
            .expect("two dead letters")
            .unwrap();
        records.push(model::DeadLetterRecord::decode(message.payload().unwrap()).unwrap());
    }
    assert!(
        records
            .iter()
            .all(|r| r.error_class() == model::ErrorClass::Undecodable && r.source.is_some())
    );
    let m = q.service.metrics().await;
    assert_eq!(
        metric_value(
            &m,
            r#"qualifier_events_total{outcome="invalid",type="unknown"}"#
        ),
        Some(2.0)
    );
}
