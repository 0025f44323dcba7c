//! The order table: what supersedes what, and when entries go.

use model::{ChangeReason, SegmentChange, SegmentStatusUpdate};

use super::*;
use crate::update::Update;

fn update(user: &str, segments: &[u64], sequence: u64) -> Update {
    Update::new(&SegmentStatusUpdate {
        user_id: user.to_owned(),
        changes: segments
            .iter()
            .map(|&s| SegmentChange::unsegmented(s, ChangeReason::OptOut, 1))
            .collect(),
        sequence,
        ..SegmentStatusUpdate::default()
    })
}

fn order() -> Order {
    let order = Order::with_generation(Duration::ZERO);
    order.assign(0);
    order
}

#[test]
fn an_onboarded_change_older_than_a_routed_real_time_one_is_superseded() {
    let order = order();
    assert_eq!(
        order.route(Topic::RealTime, 0, &update("u", &[10], 20)),
        Superseded::new()
    );
    // Older on the other topic: superseded; only the segment the newer change was about.
    assert_eq!(
        order.route(Topic::Batch, 0, &update("u", &[11, 10], 19)),
        [1]
    );
    // Newer on the other topic, another user, or no sequence: sent.
    assert!(
        order
            .route(Topic::Batch, 0, &update("u", &[10], 21))
            .is_empty()
    );
    assert!(
        order
            .route(Topic::Batch, 0, &update("v", &[10], 5))
            .is_empty()
    );
    assert!(
        order
            .route(Topic::Batch, 0, &update("u", &[10], 0))
            .is_empty()
    );
    // And the other way round: real time older than a routed onboarded change.
    assert_eq!(
        order.route(Topic::RealTime, 0, &update("u", &[10], 20)),
        [0]
    );
    // Within one topic, order is the topic's: an older sequence is not superseded there.
    assert!(
        order
            .route(Topic::Batch, 0, &update("x", &[10], 30))
            .is_empty()
    );
    assert!(
        order
            .route(Topic::Batch, 0, &update("x", &[10], 29))
            .is_empty()
    );
}

#[test]
fn a_catch_up_reader_asks_without_recording() {
    let order = order();
    order.route(Topic::RealTime, 0, &update("u", &[10], 20));
    assert_eq!(order.check(Topic::Batch, 0, &update("u", &[10], 19)), [0]);
    assert!(
        order
            .check(Topic::RealTime, 0, &update("w", &[10], 30))
            .is_empty()
    );
    assert!(
        order
            .route(Topic::Batch, 0, &update("w", &[10], 29))
            .is_empty(),
        "w was not recorded"
    );
}

#[test]
fn entries_go_only_once_the_other_topic_passed_its_end_read_after_sealing() {
    let order = order();
    order.route(Topic::RealTime, 0, &update("u", &[10], 20));
    assert_eq!(order.held(), 1);
    // Not sealed yet: nothing goes, whatever the position.
    order.passed(Topic::Batch, 0, i64::MAX);
    assert_eq!(order.held(), 1);
    // Sealed (the real-time entries wait for the batch topic), but no end read yet.
    assert_eq!(order.seal(Topic::Batch), [0]);
    order.passed(Topic::Batch, 0, i64::MAX);
    assert_eq!(order.held(), 1);
    order.set_target(Topic::Batch, 0, 100);
    // The wrong topic's position, or one short of the end: still held.
    order.passed(Topic::RealTime, 0, 1_000);
    order.passed(Topic::Batch, 0, 99);
    assert_eq!(order.route(Topic::Batch, 0, &update("u", &[10], 19)), [0]);
    order.passed(Topic::Batch, 0, 100);
    // The batch entry of sequence 19 was never recorded (superseded); the real-time one went.
    assert_eq!(order.held(), 0);
    assert!(
        order
            .route(Topic::Batch, 0, &update("u", &[10], 19))
            .is_empty()
    );
}

#[test]
fn a_newer_entry_of_the_same_pair_outlives_an_older_generation() {
    let order = order();
    order.route(Topic::RealTime, 0, &update("u", &[10], 20));
    order.seal(Topic::Batch);
    order.set_target(Topic::Batch, 0, 100);
    // A newer change of the pair, in the next generation.
    order.route(Topic::RealTime, 0, &update("u", &[10], 30));
    order.passed(Topic::Batch, 0, 100);
    assert_eq!(order.route(Topic::Batch, 0, &update("u", &[10], 25)), [0]);
}

#[test]
fn a_revoked_partition_forgets_and_an_unowned_one_supersedes_nothing() {
    let order = order();
    order.route(Topic::RealTime, 0, &update("u", &[10], 20));
    order.revoke(0);
    assert_eq!(order.held(), 0);
    assert!(
        order
            .route(Topic::Batch, 0, &update("u", &[10], 19))
            .is_empty()
    );
}
