//! A changed or removed rule reaches every stored user without an event of theirs: after a
//! reload, and after a restart with other definitions (the restore finds users evaluated
//! under other rules).

use std::collections::BTreeSet;
use std::time::Duration;

use model::{ChangeReason, SegmentStatus, SegmentStatusUpdate};
use testkit::service::metric_value;

use super::{QualifierTest, now, post, trait_event, updates};

const BEFORE: &str = "traits: [{ id: 1 }, { id: 2 }]\nsegments:\n  - { id: 100, rule: T1 }\n  - { id: 200, rule: T1 }\n  - { id: 300, rule: T2 }\n";
/// 100's rule changed, 200 removed, 400 new.
const AFTER: &str = "traits: [{ id: 1 }, { id: 2 }]\nsegments:\n  - { id: 100, rule: T2 }\n  - { id: 300, rule: T2 }\n  - { id: 400, rule: T1 }\n";
/// 400 removed again.
const LATER: &str = "traits: [{ id: 1 }, { id: 2 }]\nsegments:\n  - { id: 100, rule: T2 }\n  - { id: 300, rule: T2 }\n";

type Change = (String, u64, SegmentStatus, ChangeReason);

fn flat(updates: &[SegmentStatusUpdate]) -> BTreeSet<Change> {
    updates
        .iter()
        .flat_map(|u| {
            u.changes
                .iter()
                .map(|c| (u.user_id.clone(), c.segment_id, c.status(), c.reason()))
        })
        .collect()
}

fn change(user: &str, segment: u64, active: bool) -> Change {
    let (status, reason) = if active {
        (SegmentStatus::Active, ChangeReason::Qualified)
    } else {
        (SegmentStatus::Inactive, ChangeReason::Rule)
    };
    (user.to_owned(), segment, status, reason)
}

#[tokio::test]
async fn a_rule_change_reaches_every_member_after_a_reload_and_after_a_restart() {
    let test = QualifierTest::new(2).await;
    let path = test.definitions(BEFORE);
    let q = test.start(&path, "a").await;
    let reader = test.reader(&test.status);
    let (status, body) = post(
        &q.ingest,
        &[
            trait_event("u1", 1, &now(), None),
            trait_event("u2", 1, &now(), None),
            trait_event("u2", 2, &now(), None),
        ],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    updates(&reader, 3, Duration::from_secs(20)).await;

    std::fs::write(&path, AFTER).unwrap();
    let swept = updates(&reader, 2, Duration::from_secs(30)).await;
    assert_eq!(
        flat(&swept),
        BTreeSet::from([
            change("u1", 100, false),
            change("u1", 200, false),
            change("u1", 400, true),
            change("u2", 200, false),
            change("u2", 400, true),
        ])
    );
    let metrics = testkit::wait_for(
        "the sweep's metrics",
        Duration::from_secs(10),
        || q.service.metrics(),
        |m| metric_value(m, "qualifier_sweep_users_total") == Some(2.0),
    )
    .await;
    assert_eq!(
        metric_value(&metrics, "qualifier_sweep_pending_users"),
        Some(0.0)
    );
    super::no_more(&reader, Duration::from_secs(2)).await;

    // Stopped, edited, started: the restore finds both users evaluated under other rules.
    drop(q);
    std::fs::write(&path, LATER).unwrap();
    let _q = test.start(&path, "a").await;
    let swept = updates(&reader, 2, Duration::from_secs(30)).await;
    assert_eq!(
        flat(&swept),
        BTreeSet::from([change("u1", 400, false), change("u2", 400, false)])
    );
}
