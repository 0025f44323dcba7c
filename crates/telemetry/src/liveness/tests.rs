//! Liveness: beats, waits, bounded waits, panics, the test-only stall, the settings and the
//! beat-age gauge, each on a hand-moved clock.

use super::*;

fn clock() -> &'static AtomicU64 {
    Box::leak(Box::new(AtomicU64::new(1_000)))
}

fn advance(clock: &AtomicU64, by: Duration) {
    clock.fetch_add(millis(by), Ordering::Relaxed);
}

#[test]
fn a_part_that_stops_beating_fails_after_its_threshold() {
    let clock = clock();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), None);
    let part = liveness.heartbeat("consumer[status]");
    for _ in 0..10 {
        advance(clock, Duration::from_secs(20));
        part.beat();
        assert_eq!(liveness.check(), vec![], "beating every 20 s is live");
    }
    advance(clock, Duration::from_secs(30));
    assert_eq!(liveness.check(), vec![], "at the threshold: still live");
    advance(clock, Duration::from_millis(1_500));
    assert_eq!(
        liveness.check(),
        vec![Stuck {
            part: "consumer[status]".to_owned(),
            reason: "no progress for 31.5 s (threshold 30.0 s)".to_owned()
        }]
    );
    part.beat();
    assert_eq!(liveness.check(), vec![], "live again once it beats");
}

/// Found by the three-broker chaos run (`cluster_two_down`): librdkafka's
/// `send_offsets_to_transaction`, given 30 s, never returned, and the qualifier, waiting
/// "on the broker", stayed live with its input standing still.
#[test]
fn a_bounded_wait_that_outlives_its_bound_is_stuck() {
    let clock = clock();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), None);
    let processing = liveness.heartbeat("processing");
    let call = processing.waiting_at_most(Duration::from_secs(30));
    advance(clock, Duration::from_secs(59));
    assert_eq!(
        liveness.check(),
        vec![],
        "within the bound and the threshold after it"
    );
    advance(clock, Duration::from_secs(2));
    assert_eq!(
        liveness.check(),
        vec![Stuck {
            part: "processing".to_owned(),
            reason: "no progress for 31.0 s (threshold 30.0 s)".to_owned()
        }]
    );
    drop(call);
    assert_eq!(liveness.check(), vec![], "the call returned: it beat");
    // The bound ends with its wait: a later unbounded wait is not aged by it.
    let idle = processing.waiting();
    advance(clock, Duration::from_secs(600));
    assert_eq!(liveness.check(), vec![]);
    drop(idle);
}

#[test]
fn a_waiting_part_is_live_however_long_it_waits() {
    let clock = clock();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), None);
    let lane = liveness.heartbeat("lane");
    let waiter = lane.waiter();
    {
        let _idle = lane.waiting();
        let _nested = waiter.waiting();
        advance(clock, Duration::from_secs(3_600));
        assert_eq!(liveness.check(), vec![]);
    }
    // The wait's end counts as a beat; the threshold runs from there.
    advance(clock, Duration::from_secs(30));
    assert_eq!(liveness.check(), vec![]);
    advance(clock, Duration::from_secs(1));
    assert_eq!(liveness.check().len(), 1);
}

#[test]
fn a_part_stopped_on_purpose_is_forgotten() {
    let clock = clock();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), None);
    drop(liveness.heartbeat("lane"));
    liveness.must_run("ingest").finish();
    advance(clock, Duration::from_secs(3_600));
    assert_eq!(liveness.check(), vec![]);
}

#[test]
fn a_part_that_must_run_and_stopped_fails() {
    let liveness = Liveness::with_clock(clock(), Duration::from_secs(30), None);
    drop(liveness.must_run("ingest"));
    assert_eq!(
        liveness.check(),
        vec![Stuck {
            part: "ingest".to_owned(),
            reason: "stopped, but must run as long as the process does".to_owned()
        }]
    );
}

#[tokio::test]
async fn a_task_that_panicked_fails() {
    let liveness = Liveness::with_clock(clock(), Duration::from_secs(30), None);
    let part = liveness.heartbeat("lane[7]");
    let task = tokio::spawn(async move {
        part.beat();
        panic!("a bug in the lane");
    });
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(
        liveness.check(),
        vec![Stuck {
            part: "lane[7]".to_owned(),
            reason: "panicked".to_owned()
        }]
    );
}

#[test]
fn the_test_stall_parks_the_named_part_after_its_delay() {
    let clock = clock();
    let stall = TestStall::parse("consumer@5").unwrap();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), Some(stall));
    let other = liveness.heartbeat("lane[1]");
    let (beats_tx, beats) = std::sync::mpsc::channel();
    let consumer = liveness.heartbeat("consumer[status]");
    std::thread::spawn(move || {
        loop {
            consumer.beat();
            if beats_tx.send(()).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    });
    beats.recv().unwrap();
    advance(clock, Duration::from_secs(5));
    // The loop beats once more at most, then never again.
    let mut after = 0;
    while beats.recv_timeout(Duration::from_millis(500)).is_ok() {
        after += 1;
        assert!(after < 1_000, "the stalled part kept beating");
    }
    advance(clock, Duration::from_secs(31));
    other.beat();
    let stuck = liveness.check();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(stuck[0].part, "consumer[status]");
}

#[tokio::test]
async fn the_test_stall_of_a_task_awaits_for_ever() {
    let clock = clock();
    let stall = TestStall::parse("consumer[status]@5").unwrap();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), Some(stall));
    let consumer = liveness.heartbeat("consumer[status]");
    let batch = liveness.heartbeat("consumer[status-batch]");
    consumer.beat_in_task().await;
    advance(clock, Duration::from_secs(5));
    batch.beat_in_task().await;
    let stalled = tokio::time::timeout(Duration::from_millis(200), consumer.beat_in_task());
    assert!(stalled.await.is_err(), "the stalled part's beat returned");
    advance(clock, Duration::from_secs(31));
    batch.beat_in_task().await;
    let stuck = liveness.check();
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(stuck[0].part, "consumer[status]");
}

#[test]
fn settings_are_validated_with_the_fix() {
    let lookup = |pairs: &'static [(&'static str, &'static str)]| {
        move |name: &str| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    };
    let live = Liveness::from_lookup(lookup(&[])).unwrap();
    assert_eq!(live.stall_after(), DEFAULT_STALL_AFTER);
    assert!(live.inner.test_stall.is_none());
    let live = Liveness::from_lookup(lookup(&[
        (STALL_AFTER_ENV, "5"),
        (TEST_STALL_ENV, "processing@2"),
    ]))
    .unwrap();
    assert_eq!(live.stall_after(), Duration::from_secs(5));
    assert_eq!(
        live.inner.test_stall,
        Some(TestStall {
            part_prefix: "processing".to_owned(),
            after: Duration::from_secs(2)
        })
    );
    let problems =
        Liveness::from_lookup(lookup(&[(STALL_AFTER_ENV, "0"), (TEST_STALL_ENV, "soon")]))
            .unwrap_err();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with(
            "LIVENESS_STALL_AFTER_SECONDS=0: must be whole seconds between 1 and 3600"
        )
    );
    assert!(
        problems[1].starts_with("SEGMENT_RELAY_TEST_ONLY_STALL=soon: expected `<part>@<seconds>`")
    );
}

#[test]
fn the_beat_age_gauge_reports_each_beating_part() {
    let clock = clock();
    let liveness = Liveness::with_clock(clock, Duration::from_secs(30), None);
    let consumer = liveness.heartbeat("consumer");
    let lane = liveness.heartbeat("lane");
    let _ingest = liveness.must_run("ingest");
    let _idle = lane.waiting();
    advance(clock, Duration::from_millis(2_500));
    consumer.beat();
    advance(clock, Duration::from_secs(4));
    let families = liveness.collect();
    let samples: Vec<(String, f64)> = families[0]
        .get_metric()
        .iter()
        .map(|m| {
            (
                m.get_label()[0].value().to_owned(),
                m.get_gauge().get_value(),
            )
        })
        .collect();
    assert_eq!(
        samples,
        vec![("consumer".to_owned(), 4.0), ("lane".to_owned(), 0.0)]
    );
}
