//! A qualifier joining its group while another works through a backlog: the partitions that
//! stay with the running instance keep their users (no restore), and every event is still
//! processed exactly once.

use std::collections::HashMap;
use std::time::Duration;

use prost::Message as _;
use rdkafka::producer::FutureRecord;
use testkit::service::metric_value;

use super::QualifierTest;

const RULES: &str = "traits: [{ id: 1 }]\nsegments: [{ id: 100, rule: T1 }]\n";
const PARTITIONS: i32 = 4;
/// Events in the backlog, one user each, produced `BURST` at a time.
const EVENTS: usize = 200_000;
const BURST: usize = 2_000;

/// Restores the instance made (`qualifier_restore_duration_seconds` observes one per restore).
async fn restores(qualifier: &super::Qualifier) -> f64 {
    let metrics = qualifier.service.metrics().await;
    metric_value(&metrics, "qualifier_restore_duration_seconds_count").unwrap_or(0.0)
}

/// Input partitions the instance gave up (`qualifier_partitions_revoked_total` of `topic`).
async fn revoked(qualifier: &super::Qualifier, topic: &str) -> Option<f64> {
    let metrics = qualifier.service.metrics().await;
    metric_value(
        &metrics,
        &format!(r#"qualifier_partitions_revoked_total{{topic="{topic}"}}"#),
    )
}

/// The `n`th event: a realization of trait 1, now, by a user of its own.
fn event(n: usize) -> model::TraitEvent {
    let mut event = super::trait_realization(format!("join-user-{n}"));
    if let Some(model::pb::trait_event::Event::TraitRealization(realization)) = &mut event.event {
        realization.time_unix_ms = telemetry::clock::unix_ms();
    }
    event
}

/// The lines of a qualifier's log about partitions changing hands.
fn rebalances(log: &str) -> String {
    let lines = log
        .lines()
        .filter(|l| l.contains("Partitions") || l.contains("partitions"));
    lines.collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn an_instance_joining_under_load_leaves_the_others_partitions_in_place() {
    let test = QualifierTest::new(PARTITIONS).await;
    let definitions = test.definitions(RULES);
    // A backlog, so that the first instance is likely still working through it when the second
    // joins (on this machine it was, in every run).
    let producer = testkit::kafka::producer();
    for burst in 0..EVENTS / BURST {
        let mut deliveries = Vec::with_capacity(BURST);
        for n in burst * BURST..(burst + 1) * BURST {
            let event = event(n);
            let payload = event.encode_to_vec();
            let record = FutureRecord::to(&test.events)
                .key(&event.user_id)
                .payload(&payload);
            deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
        }
        for delivery in deliveries {
            delivery.await.unwrap().unwrap();
        }
    }
    let a = test.start(&definitions, "a").await;
    testkit::wait_for(
        "the first instance to take its partitions",
        Duration::from_secs(40),
        || restores(&a),
        |restored| *restored >= 1.0,
    )
    .await;
    let before = restores(&a).await;
    let b = test.start(&definitions, "b").await;
    testkit::wait_for(
        "both instances to have processed every event",
        Duration::from_secs(90),
        || async { test.committed_input(PARTITIONS) },
        |committed| *committed == EVENTS as i64,
    )
    .await;
    // The second instance restored what it took; the first let it go and restored nothing:
    // under the eager protocol it gave up all four partitions and restored the two it got back.
    assert!(
        restores(&b).await >= 1.0,
        "the second instance restored nothing: it took no partitions"
    );
    assert_eq!(
        restores(&a).await,
        before,
        "the first instance restored partitions again when the second joined; its rebalances:\n{}",
        rebalances(&a.service.log())
    );
    // The first instance gave up the two partitions that moved, the second none.
    let (first, second) = (
        revoked(&a, &test.events).await,
        revoked(&b, &test.events).await,
    );
    assert_eq!(first, Some(2.0), "{}", rebalances(&a.service.log()));
    assert_eq!(second, Some(0.0));

    // Exactly once: each user qualified once, whichever instance had their partition (what the
    // first one had not committed of a moved partition, its new owner did, not both).
    let reader = test.reader(&test.status);
    let updates = super::updates(&reader, EVENTS, Duration::from_secs(30)).await;
    super::no_more(&reader, Duration::from_secs(3)).await;
    let mut per_user: HashMap<&str, usize> = HashMap::new();
    for update in &updates {
        *per_user.entry(update.user_id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = per_user.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        twice.is_empty(),
        "users qualified more than once: {twice:?}"
    );
    assert_eq!(per_user.len(), EVENTS);
}
