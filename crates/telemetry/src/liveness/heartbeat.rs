//! What a part of the service holds: its [`Heartbeat`], the [`Waiter`] that declares waits
//! from callbacks, and the [`Waiting`] guard of a wait in progress.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use super::{EXITED, Inner, PANICKED, Part, TEST_STALL_ENV, millis};

/// One part's heartbeat. Dropped while its thread unwinds a panic, it fails liveness for
/// good; dropped otherwise, the part is gone (it stopped on purpose) — unless it came from
/// [`Liveness::must_run`](super::Liveness::must_run) and was not [`finish`](Heartbeat::finish)ed.
#[derive(Debug)]
pub struct Heartbeat {
    pub(super) part: Arc<Part>,
    pub(super) clock: &'static AtomicU64,
    /// When the test-only stall strikes (`u64::MAX`: never).
    pub(super) stall_at_ms: u64,
    pub(super) liveness: std::sync::Weak<Inner>,
    pub(super) must_run: bool,
    pub(super) finished: bool,
}

impl Heartbeat {
    /// The part made progress: call once per loop iteration of a thread. No allocation, lock
    /// or log.
    #[inline]
    pub fn beat(&self) {
        let now = self.clock.load(Ordering::Relaxed);
        if now >= self.stall_at_ms {
            self.announce_stall();
            loop {
                std::thread::park();
            }
        }
        self.part.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// [`Heartbeat::beat`] for a loop that is an async task: the test-only stall awaits for
    /// ever (as a deadlocked `.await` would) instead of blocking a thread of the runtime, which
    /// may be its only one, with the admin server on it.
    #[inline]
    pub async fn beat_in_task(&self) {
        let now = self.clock.load(Ordering::Relaxed);
        if now >= self.stall_at_ms {
            self.announce_stall();
            std::future::pending::<()>().await;
        }
        self.part.last_beat_ms.store(now, Ordering::Relaxed);
    }

    /// The part waits, until the guard is dropped, for something a restart would not make
    /// come sooner (input while idle, a slow or failing partner, the broker, a changelog
    /// restore): it is not stuck meanwhile. The guard beats when dropped.
    #[must_use = "the wait ends when the guard is dropped"]
    pub fn waiting(&self) -> Waiting {
        self.waiter().waiting()
    }

    /// [`Heartbeat::waiting`] for a call with a timeout of its own, `bound`: should it not
    /// return by then (a client library that ignores its timeout), the part ages from the
    /// bound on and `/livez` fails once that age passes the part's threshold, where an
    /// unbounded wait would hide the hang for ever.
    #[must_use = "the wait ends when the guard is dropped"]
    pub fn waiting_at_most(&self, bound: Duration) -> Waiting {
        let until = self
            .clock
            .load(Ordering::Relaxed)
            .saturating_add(millis(bound));
        self.part.wait_bound_ms.store(until, Ordering::Relaxed);
        let mut waiting = self.waiting();
        waiting.bounded = true;
        waiting
    }

    /// A handle that can only declare waits, for callbacks that run inside the part's loop
    /// (e.g. a Kafka rebalance callback restoring state).
    pub fn waiter(&self) -> Waiter {
        Waiter {
            part: self.part.clone(),
            clock: self.clock,
        }
    }

    /// The part stopped on purpose (e.g. at shutdown).
    pub fn finish(mut self) {
        self.finished = true;
    }

    #[cold]
    #[inline(never)]
    fn announce_stall(&self) {
        tracing::warn!(part = %self.part.name, "{TEST_STALL_ENV}: this part stalls now, on purpose.");
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.part.state.store(PANICKED, Ordering::Relaxed);
            return;
        }
        if self.must_run && !self.finished {
            self.part.state.store(EXITED, Ordering::Relaxed);
            return;
        }
        if let Some(inner) = self.liveness.upgrade() {
            inner
                .parts
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|p| !Arc::ptr_eq(p, &self.part));
        }
    }
}

/// Declares waits of a part (see [`Heartbeat::waiting`]).
#[derive(Debug, Clone)]
pub struct Waiter {
    part: Arc<Part>,
    clock: &'static AtomicU64,
}

impl Waiter {
    /// See [`Heartbeat::waiting`].
    #[must_use = "the wait ends when the guard is dropped"]
    pub fn waiting(&self) -> Waiting {
        self.part.waits.fetch_add(1, Ordering::Relaxed);
        Waiting {
            part: self.part.clone(),
            clock: self.clock,
            bounded: false,
        }
    }
}

/// A wait in progress; it ends (and the part beats) when dropped.
#[derive(Debug)]
pub struct Waiting {
    part: Arc<Part>,
    clock: &'static AtomicU64,
    bounded: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.bounded {
            self.part.wait_bound_ms.store(u64::MAX, Ordering::Relaxed);
        }
        self.part
            .last_beat_ms
            .store(self.clock.load(Ordering::Relaxed), Ordering::Relaxed);
        self.part.waits.fetch_sub(1, Ordering::Relaxed);
    }
}
