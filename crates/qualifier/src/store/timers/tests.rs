//! The timer index with a horizon: only near timers indexed, none missed as the clock moves.

use proptest::prelude::*;

use super::{HORIZON_MS, STEP_MS};
use crate::store::tests::{settle, user};
use crate::store::{PartitionStore, Store};

const HOUR: i64 = 3_600_000;

fn indexed(store: &PartitionStore) -> usize {
    store.timers.len()
}

#[test]
fn a_timer_past_the_horizon_is_indexed_by_the_pass_that_reaches_it() {
    let mut store = PartitionStore::at(0, 0);
    store.put(user("near"), Some(1_000));
    store.put(user("far"), Some(2 * HOUR));
    store.put(user("none"), None);
    settle(&mut store);
    assert_eq!(indexed(&store), 1, "only the timer before the horizon");
    assert_eq!(store.due(1_000, 10).collect::<Vec<_>>(), ["near"]);
    // Within half a horizon of the start, the horizon stays where it is.
    store.advance_horizon(HORIZON_MS / 2 - 1);
    assert_eq!(indexed(&store), 1);
    // Once the clock is within a horizon of `far`'s timer, the pass indexes it.
    store.advance_horizon(2 * HOUR - HORIZON_MS / 2);
    assert_eq!(indexed(&store), 2);
    assert_eq!(store.due(2 * HOUR, 10).collect::<Vec<_>>(), ["near", "far"]);
    // Put back due far away again: out of the index, and not due.
    let (far, due) = store.take("far").unwrap();
    assert_eq!(due, Some(2 * HOUR));
    store.put(far, Some(100 * HOUR));
    settle(&mut store);
    assert_eq!(indexed(&store), 1);
    assert_eq!(store.due_count(2 * HOUR), 1);
    // Forgetting a user whose timer is not indexed is no error; nor is a clock going back.
    store.remove("far");
    store.advance_horizon(0);
    assert_eq!(store.due(2 * HOUR, 10).collect::<Vec<_>>(), ["near"]);
}

#[test]
fn the_first_advance_drops_the_timers_past_the_horizon() {
    let mut store = PartitionStore::default();
    store.put(user("near"), Some(1_000));
    store.put(user("far"), Some(2 * HOUR));
    settle(&mut store);
    assert_eq!(indexed(&store), 2, "no horizon yet: every timer");
    store.advance_horizon(0);
    assert_eq!(indexed(&store), 1);
    store.advance_horizon(2 * HOUR);
    assert_eq!(store.due(2 * HOUR, 10).collect::<Vec<_>>(), ["near", "far"]);
}

#[test]
fn the_processors_questions_move_the_horizon_first() {
    let mut store = Store::default();
    let mut partition = PartitionStore::at(0, 0);
    partition.put(user("far"), Some(2 * HOUR));
    settle(&mut partition);
    store.partitions.insert(3, partition);
    assert_eq!(store.due_count(2 * HOUR - 1), 0);
    assert_eq!(store.due_count(2 * HOUR), 1);
    assert_eq!(store.due(2 * HOUR, 10), [(3, "far".to_owned())]);
}

fn horizon(store: &PartitionStore) -> i64 {
    store
        .timers
        .horizon
        .expect("a store made by `at` has a horizon")
}

#[test]
fn the_partitions_pass_in_turn_each_on_a_grid_of_its_own() {
    let start = 1_700_000_000_123;
    let mut stores: Vec<PartitionStore> = (0..6).map(|p| PartitionStore::at(start, p)).collect();
    // When each partition's horizon moved (its pass), the clock read by the loop's turns:
    // about a second apart, never on the dot.
    let mut passes: Vec<Vec<i64>> = vec![Vec::new(); stores.len()];
    let mut now = start;
    let mut random = fastrand::Rng::with_seed(7);
    while now < start + 2 * HOUR {
        now += random.i64(700..1_300);
        for (store, passes) in stores.iter_mut().zip(&mut passes) {
            let before = horizon(store);
            store.advance_horizon(now);
            let after = horizon(store);
            if after != before {
                passes.push(now);
                assert!(
                    after > now + STEP_MS && after <= now + HORIZON_MS,
                    "{now} {after}"
                );
            }
        }
    }
    for (partition, passes) in passes.iter().enumerate() {
        assert!(passes.len() >= 23, "partition {partition}: {passes:?}");
        // Five minutes apart, counted from the first: the lateness of a turn does not add up.
        for (k, pass) in passes.iter().enumerate() {
            let late = pass - passes[0] - k as i64 * STEP_MS;
            assert!(
                (-1_300..1_300).contains(&late),
                "partition {partition}, pass {k}: {late} ms off"
            );
        }
    }
    // No two partitions pass within 20 s of each other.
    let mut all: Vec<i64> = passes.concat();
    all.sort_unstable();
    for pair in all.windows(2) {
        assert!(pair[1] - pair[0] >= 20_000, "passes at {pair:?}");
    }
}

#[test]
fn a_stalled_loop_finds_its_horizon_ahead_again_on_its_grid() {
    let mut store = PartitionStore::at(0, 4);
    let first = horizon(&store);
    assert_eq!(first, HORIZON_MS - 141_600, "partition 4's phase");
    store.put(user("due-in-the-stall"), Some(HOUR + 1));
    settle(&mut store);
    assert_eq!(indexed(&store), 0);
    store.advance_horizon(HOUR);
    let after = horizon(&store);
    assert!(
        after > HOUR + STEP_MS && after <= HOUR + HORIZON_MS,
        "{after}"
    );
    assert_eq!((after - first) % STEP_MS, 0, "on the grid");
    assert_eq!(
        store.due(HOUR + 1, 10).collect::<Vec<_>>(),
        ["due-in-the-stall"]
    );
}

/// What the store is told, in the order the processor tells it.
#[derive(Debug, Clone)]
enum Step {
    /// A user put (after a take, if held) due at `now` plus this (`None`: no timer).
    Put(u8, Option<i64>),
    /// A user taken and not put back (forgotten at the transaction's end).
    Drop(u8),
    /// A user forgotten (a tombstone).
    Remove(u8),
    /// The clock moves on by this much; the transaction ends, the horizon is advanced and the
    /// due users are read.
    Tick(i64),
}

fn step() -> impl Strategy<Value = Step> {
    // Dues from just past to hours ahead, across many horizons.
    let due = prop_oneof![
        1 => Just(None),
        4 => (-HOUR..10 * HOUR).prop_map(Some),
        2 => (0..HORIZON_MS).prop_map(Some),
    ];
    prop_oneof![
        6 => (0..40_u8, due).prop_map(|(user, due)| Step::Put(user, due)),
        1 => (0..40_u8).prop_map(Step::Drop),
        1 => (0..40_u8).prop_map(Step::Remove),
        3 => (0..2 * HORIZON_MS).prop_map(Step::Tick),
    ]
}

proptest! {
    /// Whatever users are put, taken, forgotten and however the clock moves, the users due
    /// are exactly those whose entry's due has come, earliest first — as if every timer were
    /// indexed.
    #[test]
    fn the_users_due_are_those_whose_time_has_come(
        start in 0..HOUR,
        partition in 0..64_i32,
        steps in proptest::collection::vec(step(), 1..200),
    ) {
        let mut store = PartitionStore::at(start, partition);
        let mut now = start;
        for step in steps {
            match step {
                Step::Put(n, due) => {
                    let id = format!("user-{n}");
                    let state = match store.take(&id) {
                        Some((state, _)) => state,
                        None => user(&id),
                    };
                    store.put(state, due.map(|d| now + d));
                }
                Step::Drop(user) => {
                    let _ = store.take(&format!("user-{user}"));
                }
                Step::Remove(user) => store.remove(&format!("user-{user}")),
                Step::Tick(by) => {
                    settle(&mut store);
                    now += by;
                    store.advance_horizon(now);
                    let mut expected: Vec<(i64, &str)> = store
                        .users
                        .iter()
                        .filter_map(|entry| entry.due.get().map(|due| (due, entry.user_id())))
                        .filter(|&(due, _)| due <= now)
                        .collect();
                    expected.sort_unstable();
                    let due: Vec<&str> = store.due(now, usize::MAX).collect();
                    let mut by_time: Vec<(i64, &str)> = due
                        .iter()
                        .map(|&id| (store.users.get(id).unwrap().due.get().unwrap(), id))
                        .collect();
                    prop_assert!(by_time.is_sorted_by_key(|&(due, _)| due), "earliest first");
                    by_time.sort_unstable();
                    prop_assert_eq!(by_time, expected);
                }
            }
        }
    }
}
