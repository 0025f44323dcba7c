//! The waits between a failing batch's rounds, on tokio's paused clock.

use std::time::Duration;

use model::ErrorClass;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Rounds;
use crate::config::Backoff;
use crate::sender::Failure;

const S: Duration = Duration::from_secs(1);

/// Rounds with a backoff of 1 s doubling to 60 s, and what tells them of recoveries.
fn rounds_with_recoveries() -> (Rounds, watch::Sender<u64>) {
    let (recovered, recoveries) = watch::channel(0_u64);
    let backoff = Backoff {
        initial: S,
        max: 60 * S,
    };
    (Rounds::new(backoff, recoveries), recovered)
}

fn rounds() -> Rounds {
    // The sender is dropped: no recovery ever (a closed channel is not one).
    rounds_with_recoveries().0
}

/// A round that failed after `attempts` requests of its own (0: the circuit turned it away),
/// first tried at `first_unix_ms`.
fn failure(attempts: u32, first_unix_ms: i64, not_before: Option<Instant>) -> Failure {
    Failure {
        class: if attempts == 0 {
            ErrorClass::CircuitOpen
        } else {
            ErrorClass::HttpStatus
        },
        error: String::new(),
        attempts,
        first_attempt_unix_ms: first_unix_ms,
        last_attempt_unix_ms: first_unix_ms,
        permanent: false,
        not_before,
    }
}

/// The wait after a round that sent requests of its own.
fn after_own_round(rounds: &mut Rounds) -> Duration {
    rounds.failed(failure(2, 0, None)).1
}

/// Whether `wait` is `base` jittered (×0.5–1.5).
fn jittered_from(wait: Duration, base: Duration) -> bool {
    wait >= base / 2 && wait <= base * 3 / 2
}

#[test]
fn the_backoff_doubles_after_each_round_that_sent_requests_up_to_its_cap() {
    let mut rounds = rounds();
    for base in [1, 2, 4, 8, 16, 32, 60, 60] {
        let wait = after_own_round(&mut rounds);
        assert!(
            jittered_from(wait, base * S),
            "{wait:?}: not {base} s jittered"
        );
    }
}

#[test]
fn the_failure_of_every_round_counts_all_their_attempts_from_the_first() {
    let mut rounds = rounds();
    assert_eq!(rounds.earlier_attempts(), 0);
    let (first, _) = rounds.failed(failure(2, 1_000, None));
    assert_eq!((first.attempts, first.first_attempt_unix_ms), (2, 1_000));
    assert_eq!(
        rounds.earlier_attempts(),
        2,
        "the log numbers round 2's from 3"
    );
    let (turned_away, _) = rounds.failed(failure(0, 5_000, None));
    assert_eq!(
        (turned_away.attempts, turned_away.first_attempt_unix_ms),
        (2, 1_000)
    );
    let (third, _) = rounds.failed(failure(2, 9_000, None));
    assert_eq!((third.attempts, third.first_attempt_unix_ms), (4, 1_000));
    assert_eq!(rounds.earlier_attempts(), 4);
}

/// Five rounds the circuit turned away (another lane's probe in flight) between two that
/// failed: the second waits what the first's doubling set, 2 s, not 64 s.
#[tokio::test(start_paused = true)]
async fn rounds_the_circuit_turned_away_do_not_grow_the_backoff() {
    let mut rounds = rounds();
    after_own_round(&mut rounds);
    for _ in 0..5 {
        let (_, wait) = rounds.failed(failure(0, 0, None));
        assert!(
            jittered_from(wait, 2 * S),
            "{wait:?}: a probe in flight, the lane looks again after its backoff"
        );
    }
    // The cool-down: the wait is until it ends, and the backoff stays too.
    let until = Instant::now() + 7 * S;
    let (_, wait) = rounds.failed(failure(0, 0, Some(until)));
    assert_eq!(wait, 7 * S, "until the circuit's probe");
    let wait = after_own_round(&mut rounds);
    assert!(jittered_from(wait, 2 * S), "{wait:?}: not 2 s jittered");
}

/// The destination recovers while a lane waits at the cap: the wait ends then, and the
/// lane's next failed round waits 1 s (jittered), not 60.
#[tokio::test(start_paused = true)]
async fn a_recovery_ends_the_wait_and_starts_the_backoff_again() {
    let (mut rounds, recovered) = rounds_with_recoveries();
    for _ in 0..8 {
        after_own_round(&mut rounds);
    }
    let wait = after_own_round(&mut rounds);
    assert!(jittered_from(wait, 60 * S), "{wait:?}: at the cap");
    let began = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(3 * S).await;
        recovered.send_modify(|n| *n += 1);
        // Kept until the test is done: a dropped sender is not a recovery.
        tokio::time::sleep(3_600 * S).await;
    });
    rounds.wait(wait).await;
    assert_eq!(
        began.elapsed(),
        3 * S,
        "the wait ends when the circuit closes"
    );
    let wait = after_own_round(&mut rounds);
    assert!(jittered_from(wait, S), "{wait:?}: not 1 s jittered");
}

/// A recovery seen while the round was being sent ends the wait at once; without one the
/// lane waits the whole time.
#[tokio::test(start_paused = true)]
async fn a_recovery_during_the_round_ends_the_wait_at_once() {
    let (mut rounds, recovered) = rounds_with_recoveries();
    let began = Instant::now();
    rounds.wait(5 * S).await;
    assert_eq!(began.elapsed(), 5 * S, "no recovery: the whole wait");
    recovered.send_modify(|n| *n += 1);
    let began = Instant::now();
    rounds.wait(5 * S).await;
    assert_eq!(began.elapsed(), Duration::ZERO);
}
