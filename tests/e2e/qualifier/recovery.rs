//! Exactly-once under kill -9, and partitions moving between processes with their state.

use std::collections::HashMap;
use std::time::Duration;

use model::{SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer;
use testkit::kafka;

use super::{QualifierTest, now, post, trait_event, updates};

const RULES: &str = r#"traits:
  - { id: 1, ttl: 0 }
  - { id: 2, ttl: 0 }
  - { id: 3, ttl: 3s }
segments:
  - { id: 100, rule: "T1 AND NOT T2" }
  - { id: 200, rule: "T1 >= 2" }
  - { id: 300, rule: T3 }
"#;

/// Per user, the sequence of (segment, status) changes in a topic, read to its end.
async fn history(test: &QualifierTest, expected_total: usize) -> HashMap<String, Vec<(u64, i32)>> {
    let reader = test.reader(&test.status);
    let got = updates(&reader, expected_total, Duration::from_secs(60)).await;
    // Nothing beyond the expected total.
    super::no_more(&reader, Duration::from_secs(2)).await;
    let mut out: HashMap<String, Vec<(u64, i32)>> = HashMap::new();
    for update in got {
        out.entry(update.user_id.clone())
            .or_default()
            .extend(update.changes.iter().map(|c| (c.segment_id, c.status)));
    }
    out
}

/// The same input for every user: T1, T1, T2 → 100 on, 200 on, 100 off.
fn script(users: std::ops::Range<usize>) -> Vec<Vec<String>> {
    let t = now();
    [1, 1, 2]
        .iter()
        .map(|&tr| {
            users
                .clone()
                .map(|u| trait_event(&format!("k{u}"), tr, &t, None))
                .collect()
        })
        .collect()
}

#[tokio::test]
async fn kill_9_mid_stream_then_restart_gives_the_output_of_an_uninterrupted_run() {
    const USERS: usize = 150;
    let test = QualifierTest::new(3).await;
    let definitions = test.definitions(RULES);
    let mut first = test.start(&definitions, "a").await;
    let rounds = script(0..USERS);
    let (status, _) = post(&first.ingest, &rounds[0]).await;
    assert_eq!(status, 202);
    // The first round committed before the second is sent, so that the kill right after the
    // second lands with some input committed and some not.
    let round = i64::try_from(USERS).unwrap();
    testkit::wait_for(
        "the first round's input committed",
        Duration::from_secs(30),
        || async { test.committed_input(3) },
        |&committed| committed == round,
    )
    .await;
    let (status, _) = post(&first.ingest, &rounds[1]).await;
    assert_eq!(status, 202);
    // Kill it while the second round is being processed.
    first.service.kill9().await;
    let committed_at_kill = test.committed_input(3);
    assert!(
        committed_at_kill > 0,
        "the kill landed before the qualifier committed any input: nothing to restore"
    );
    assert!(
        committed_at_kill < 2 * round,
        "the kill landed after the qualifier had committed all {} input events ({committed_at_kill} \
         committed), not in the middle of the stream: the test no longer interrupts a \
         transaction (give the second round more events)",
        2 * round
    );
    let second = test.start(&definitions, "a").await;
    let (status, _) = post(&second.ingest, &rounds[2]).await;
    assert_eq!(status, 202);

    // Per user: 100 on + 200 on (rounds 1–2), then 100 off — exactly once each, in order.
    let history = history(&test, USERS * 3).await;
    assert_eq!(history.len(), USERS);
    let on = SegmentStatus::Active as i32;
    let off = SegmentStatus::Inactive as i32;
    for (user, changes) in history {
        assert_eq!(changes, [(100, on), (200, on), (100, off)], "{user}");
    }
}

#[tokio::test]
async fn a_process_that_takes_over_restores_users_and_their_timers_still_fire() {
    const USERS: usize = 30;
    let test = QualifierTest::new(4).await;
    let definitions = test.definitions(RULES);
    let a = test.start(&definitions, "a").await;
    let mut b = test.start(&definitions, "b").await;
    // Both members hold partitions before the users arrive, so both hold users.
    crate::wait::group_settled(&test.group, 2, Duration::from_secs(30)).await;
    let t = now();
    let lines: Vec<String> = (0..USERS)
        .map(|u| trait_event(&format!("x{u}"), 1, &t, None))
        .collect();
    post(&a.ingest, &lines).await;
    let reader = test.reader(&test.status);
    updates(&reader, USERS, Duration::from_secs(30)).await;
    let users = |text: &str| testkit::service::metric_value(text, "qualifier_users").unwrap_or(0.0);
    let (held_a, held_b) = (
        users(&a.service.metrics().await),
        users(&b.service.metrics().await),
    );
    assert!(
        held_a > 0.0 && held_b > 0.0,
        "both hold users: {held_a} and {held_b}"
    );

    // Short-lived memberships, then b leaves: a restores b's users and expires them.
    let t = now();
    let lines: Vec<String> = (0..USERS)
        .map(|u| trait_event(&format!("x{u}"), 3, &t, None))
        .collect();
    post(&a.ingest, &lines).await;
    updates(&reader, USERS, Duration::from_secs(30)).await;
    b.service.terminate();
    assert!(
        b.service.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        b.service.log()
    );

    // T1 stays (ttl 0), so the rest of the users are still there; T3 expires for all.
    let expired = updates(&reader, USERS, Duration::from_secs(30)).await;
    let mut users_expired: Vec<String> = expired.iter().map(|u| u.user_id.clone()).collect();
    users_expired.sort();
    users_expired.dedup();
    assert_eq!(
        users_expired.len(),
        USERS,
        "every user's ttl fired, including those that moved"
    );
    assert!(expired.iter().all(|u| {
        u.changes
            .iter()
            .all(|c| c.segment_id == 300 && c.status() == SegmentStatus::Inactive)
    }));
    testkit::wait_until("a holds every user", Duration::from_secs(10), || async {
        users(&a.service.metrics().await) == USERS as f64
    })
    .await;
    // The restore reported its progress: b's users came from changelog records, and nothing
    // is left pending.
    let text = a.service.metrics().await;
    let metric = |name: &str| testkit::service::metric_value(&text, name);
    assert!(
        metric("qualifier_restore_records_total").is_some_and(|n| n >= held_b),
        "restored at least b's {held_b} users' records: {:?}",
        metric("qualifier_restore_records_total")
    );
    assert_eq!(metric("qualifier_restore_pending_partitions"), Some(0.0));
    // Changes of the moved users were not repeated: one qualification of 100 per user.
    let all = kafka::consumer(&testkit::unique_name("all"));
    all.subscribe(&[&test.status]).unwrap();
    let mut count_100 = 0;
    while let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(3), all.recv()).await {
        let update = SegmentStatusUpdate::decode(message.payload().unwrap()).unwrap();
        count_100 += update
            .changes
            .iter()
            .filter(|c| c.segment_id == 100)
            .count();
    }
    assert_eq!(count_100, USERS);
}
