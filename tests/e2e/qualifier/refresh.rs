//! `refresh_after`: a membership still active is published again (reason refresh) after
//! every period, without an event; a segment that opts out of it, and a user who left, are not.

use std::time::{Duration, Instant};

use model::{ChangeReason, SegmentStatus};

use super::{QualifierTest, changes, no_more, now, post, trait_event, updates};

const RULES: &str = "refresh_after: 2s\ntraits: [{ id: 1, ttl: 0 }, { id: 2, ttl: 3s }]\nsegments:\n  - { id: 100, rule: T1 }\n  - { id: 200, rule: T1, refresh_after: 0 }\n  - { id: 300, rule: T2 }\n";

#[tokio::test]
async fn active_memberships_refresh_every_period_without_an_event() {
    let test = QualifierTest::new(1).await;
    let q = test.start(&test.definitions(RULES), "a").await;
    let reader = test.reader(&test.status);
    let (status, body) = post(
        &q.ingest,
        &[
            trait_event("u1", 1, &now(), None),
            trait_event("u2", 2, &now(), None),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let started = Instant::now();
    let first = updates(&reader, 2, Duration::from_secs(20)).await;
    assert_eq!(
        changes(&first[0]),
        [
            (100, SegmentStatus::Active, ChangeReason::Qualified),
            (200, SegmentStatus::Active, ChangeReason::Qualified)
        ]
    );
    // u2's 300 ends (ttl 3 s) after its first refresh at 2–2.2 s: one refresh, then the 0.
    // u1's 100 refreshes at 2–2.2 s and again 2–2.2 s later; 200 never does.
    let mut seen = Vec::new();
    while seen.len() < 4 {
        let update = updates(&reader, 1, Duration::from_secs(10)).await.remove(0);
        seen.push((update.user_id.clone(), changes(&update), started.elapsed()));
    }
    let refresh = |user: &str, segment| {
        (
            user.to_owned(),
            vec![(segment, SegmentStatus::Active, ChangeReason::Refresh)],
        )
    };
    let got: Vec<_> = seen
        .iter()
        .map(|(u, c, _)| (u.clone(), c.clone()))
        .collect();
    assert!(got.contains(&refresh("u2", 300)), "{seen:?}");
    assert_eq!(
        got.iter().filter(|g| **g == refresh("u1", 100)).count(),
        2,
        "{seen:?}"
    );
    assert!(
        got.contains(&(
            "u2".to_owned(),
            vec![(300, SegmentStatus::Inactive, ChangeReason::Ttl)]
        )),
        "{seen:?}"
    );
    let u1: Vec<Duration> = seen.iter().filter(|s| s.0 == "u1").map(|s| s.2).collect();
    assert!(
        u1[0] >= Duration::from_millis(1_800) && u1[1] - u1[0] >= Duration::from_millis(1_900),
        "{seen:?}"
    );
    // u2 left 300: nothing more for them; u1 goes on refreshing.
    let next = updates(&reader, 1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(
        (next.user_id.as_str(), changes(&next)),
        ("u1", refresh("u1", 100).1)
    );
    drop(q);
    no_more(&reader, Duration::from_millis(500)).await;
}
