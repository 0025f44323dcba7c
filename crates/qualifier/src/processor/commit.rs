//! Calls into librdkafka that may block for long, each on a thread of its own, waited for up to
//! a bound: `send_offsets_to_transaction` (seen never returning, docs/RELIABILITY.md), and a
//! transaction's commit, which runs while the loop takes and evaluates the next transaction's
//! events ([`InFlight`]).

use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use telemetry::partition::KeyedProducer;

use super::{TRANSACTION_TIMEOUT, lock};

/// How long a commit is waited for before its producer is given up (as a hung
/// `send_offsets_to_transaction`'s is): librdkafka's own timeout for it,
/// [`TRANSACTION_TIMEOUT`], ends it well within that, unless the call hangs.
pub(super) const COMMIT_BOUND: Duration = Duration::from_secs(35);

/// A call running on a thread of its own, waited for at most a bound from when it began; left
/// to finish alone (or never) when it outlives the bound.
pub(super) struct Bounded<T> {
    began: Instant,
    /// `None` when no thread could be started (said in the log): the call was not made.
    result: Option<std::sync::mpsc::Receiver<T>>,
}

impl<T: Send + 'static> Bounded<T> {
    pub(super) fn start(call: impl FnOnce() -> T + Send + 'static) -> Self {
        let (done, result) = std::sync::mpsc::sync_channel(1);
        let spawned = std::thread::Builder::new()
            .name("bounded-call".to_owned())
            .spawn(move || {
                // The receiver is gone when the bound passed: nothing waits for the result.
                let _ = done.send(call());
            });
        if let Err(error) = &spawned {
            tracing::warn!(%error, "Cannot start a thread for a bounded call.");
        }
        Self {
            began: Instant::now(),
            result: spawned.ok().map(|_| result),
        }
    }

    /// The call's result if it returns within `bound` of when it began, `None` past it (or
    /// when it was not made).
    pub(super) fn wait(mut self, bound: Duration) -> Option<T> {
        self.wait_for(bound, bound).flatten()
    }

    /// Waits up to `wait` for the call: `None` while it runs within its bound; then its result,
    /// or `Some(None)` past the bound (or when it was not made, or its thread died).
    fn wait_for(&mut self, wait: Duration, bound: Duration) -> Option<Option<T>> {
        let Some(result) = &self.result else {
            return Some(None);
        };
        let left = bound.saturating_sub(self.began.elapsed());
        match result.recv_timeout(wait.min(left)) {
            Ok(value) => Some(Some(value)),
            Err(RecvTimeoutError::Timeout) if wait < left => None,
            Err(_) => Some(None),
        }
    }
}

/// How a transaction's commit ended.
#[derive(Debug)]
pub(super) struct Finished {
    /// From the transaction's begin to the commit's end.
    pub(super) took: Duration,
    /// `None`: it outlived [`COMMIT_BOUND`], and its producer is to be given up.
    pub(super) result: Option<Result<(), KafkaError>>,
}

#[derive(Default)]
enum Slot {
    #[default]
    Idle,
    Committing {
        began: Instant,
        call: Bounded<Result<(), KafkaError>>,
    },
    Finished(Finished),
}

/// The last transaction's commit, run on a thread of its own while the loop takes and
/// evaluates the next transaction's events (their records wait in the `Outbox`: a transactional
/// producer takes records only inside a transaction). Shared with the rebalance callbacks,
/// which wait for it before partitions change hands: what the transaction wrote for a
/// partition is committed, or known to have failed, before another process may restore it.
#[derive(Clone, Default)]
pub(super) struct InFlight(Arc<Mutex<Slot>>);

impl InFlight {
    /// Starts committing `producer`'s transaction, begun at `began`. The last commit must have
    /// been [`Self::finish`]ed.
    pub(super) fn start(&self, producer: &Arc<KeyedProducer>, began: Instant) {
        let producer = Arc::clone(producer);
        let call = Bounded::start(move || producer.commit_transaction(TRANSACTION_TIMEOUT));
        let mut slot = lock(&self.0);
        debug_assert!(matches!(*slot, Slot::Idle), "a commit started over another");
        *slot = Slot::Committing { began, call };
    }

    /// Whether a commit is in flight still, after waiting up to `wait` for it to end.
    pub(super) fn running(&self, wait: Duration) -> bool {
        self.wait(wait);
        matches!(*lock(&self.0), Slot::Committing { .. })
    }

    /// Waits for the commit in flight to end (up to its bound), keeping how it ended for
    /// [`Self::finish`].
    pub(super) fn settle(&self) {
        self.wait(COMMIT_BOUND);
    }

    /// How the commit started last ended, waiting for it (up to its bound) if it is in
    /// flight; `None` when none was started since the last call.
    pub(super) fn finish(&self) -> Option<Finished> {
        match std::mem::take(&mut *lock(&self.0)) {
            Slot::Idle => None,
            Slot::Finished(finished) => Some(finished),
            Slot::Committing { began, call } => {
                let result = call.wait(COMMIT_BOUND);
                Some(Finished {
                    took: began.elapsed(),
                    result,
                })
            }
        }
    }

    fn wait(&self, wait: Duration) {
        let mut slot = lock(&self.0);
        let Slot::Committing { began, call } = &mut *slot else {
            return;
        };
        if let Some(result) = call.wait_for(wait, COMMIT_BOUND) {
            let took = began.elapsed();
            *slot = Slot::Finished(Finished { took, result });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call that returns within its bound gives its result; one that outlives it is given up
    /// at the bound, counted from when it began (the work done meanwhile included), not
    /// waited for (its thread finishes alone).
    #[test]
    fn a_bounded_call_gives_its_result_or_is_given_up_at_its_bound() {
        assert_eq!(Bounded::start(|| 7).wait(Duration::from_secs(5)), Some(7));
        let (finished, finish) = std::sync::mpsc::channel();
        let started = Instant::now();
        let call = Bounded::start(move || {
            std::thread::sleep(Duration::from_secs(3));
            finished.send(()).unwrap();
        });
        std::thread::sleep(Duration::from_millis(600));
        let outlived = call.wait(Duration::from_millis(800));
        let waited = started.elapsed();
        assert_eq!(outlived, None);
        // Counted from the wait instead, it would have ended at 1.4 s.
        assert!(
            (Duration::from_millis(800)..Duration::from_millis(1300)).contains(&waited),
            "waited {waited:?} in all"
        );
        finish.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
