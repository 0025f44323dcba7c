//! Liveness: is any long-running part of the service stuck, so that a restart would help?
//!
//! Each loop that must keep turning (the qualifier's processing thread, delivery's consumer
//! loops and lanes) holds a [`Heartbeat`] and calls [`Heartbeat::beat`] once per iteration:
//! one relaxed load of a coarse clock and one relaxed store. `/livez` answers 503, naming the
//! part and for how long, when a part has not beaten for its threshold, or when a part
//! panicked (its heartbeat was dropped while unwinding) or one that must run for the life of
//! the process stopped ([`Liveness::must_run`]).
//!
//! A wait that a restart would not shorten is declared with [`Heartbeat::waiting`]: a lane
//! with nothing to send, a partner that is slow, failing or behind an open circuit, the
//! broker being down, a changelog being restored. While a part waits, it is not stuck,
//! however long that takes: restarting it would only make a restart storm. What is left is
//! the part's own code between such waits (a deadlock, an endless loop, a blocking call
//! without a timeout), which takes milliseconds when healthy.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{GaugeVec, Opts};

/// The default of `LIVENESS_STALL_AFTER_SECONDS`. Outside declared waits a healthy loop turns
/// in milliseconds (the qualifier's polls every 100 ms, delivery's consumer at least once per
/// commit interval, 1 s by default): 30 s leaves a wide margin for CPU throttling at the pods'
/// 1-CPU limit and a cold start, and with the manifests' probes (3 failures, 10 s apart) a stuck
/// process is restarted within about a minute, well before librdkafka's `max.poll.interval.ms`
/// (5 min) would hand its partitions to another member.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(30);

/// The environment variable that sets [`Liveness`]'s threshold.
pub const STALL_AFTER_ENV: &str = "LIVENESS_STALL_AFTER_SECONDS";

/// The environment variable of the test-only stall (see [`TestStall`]).
pub const TEST_STALL_ENV: &str = "SEGMENT_RELAY_TEST_ONLY_STALL";

/// Milliseconds since the process's first use of the clock, advanced every 100 ms by a thread
/// of its own: a beat reads it instead of the system clock.
static COARSE_MS: AtomicU64 = AtomicU64::new(0);
const TICK: Duration = Duration::from_millis(100);

fn process_clock() -> &'static AtomicU64 {
    static TICKER: OnceLock<()> = OnceLock::new();
    TICKER.get_or_init(|| {
        let epoch = Instant::now();
        let spawned = std::thread::Builder::new()
            .name("liveness-clock".to_owned())
            .spawn(move || {
                loop {
                    std::thread::sleep(TICK);
                    let ms = u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                    COARSE_MS.store(ms, Ordering::Relaxed);
                }
            });
        if let Err(error) = spawned {
            // Without the clock no part ever looks stale: liveness cannot fail, the service runs.
            tracing::error!(%error, "Cannot start the liveness clock; /livez cannot detect a stuck part.");
        }
    });
    &COARSE_MS
}

/// A deliberate stall for tests: the named part stops (its thread parks for good) at its first
/// beat after a delay. Read once, from `SEGMENT_RELAY_TEST_ONLY_STALL=<part>@<seconds>` (the
/// part's name or a prefix of it), at start-up; nothing a service receives can set it. It
/// exists so the end-to-end tests can prove that a stuck part gets the process restarted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestStall {
    pub part_prefix: String,
    pub after: Duration,
}

impl TestStall {
    /// Parses the variable's value; the error names the variable and the fix.
    pub fn parse(value: &str) -> Result<Self, String> {
        let invalid = || {
            format!(
                "{TEST_STALL_ENV}={value}: expected `<part>@<seconds>`, e.g. `processing@5` (for tests only; unset it in production)"
            )
        };
        let (part, seconds) = value.rsplit_once('@').ok_or_else(invalid)?;
        let seconds: u64 = seconds.trim().parse().map_err(|_| invalid())?;
        if part.trim().is_empty() {
            return Err(invalid());
        }
        Ok(Self {
            part_prefix: part.trim().to_owned(),
            after: Duration::from_secs(seconds),
        })
    }
}

/// The registry of a service's heartbeats, shared with the admin server's `/livez`.
#[derive(Debug, Clone)]
pub struct Liveness {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    clock: &'static AtomicU64,
    stall_after: Duration,
    parts: Mutex<Vec<Arc<Part>>>,
    test_stall: Option<TestStall>,
    beat_age: GaugeVec,
}

const RUNNING: u8 = 0;
const PANICKED: u8 = 1;
const EXITED: u8 = 2;

#[derive(Debug)]
struct Part {
    name: String,
    /// `None`: the part does not beat; only its exit is watched.
    stall_after_ms: Option<u64>,
    last_beat_ms: AtomicU64,
    /// Waits in progress ([`Heartbeat::waiting`]); the part is not stuck while above zero.
    waits: AtomicU32,
    /// When a bounded wait in progress ([`Heartbeat::waiting_at_most`]) passed its bound
    /// (clock ms; `u64::MAX`: no bounded wait): from then on the part ages as if it beat
    /// then — a call that does not return by its own timeout is stuck after all.
    wait_bound_ms: AtomicU64,
    state: AtomicU8,
}

/// Why liveness fails: one line per stuck or dead part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stuck {
    pub part: String,
    pub reason: String,
}

impl std::fmt::Display for Stuck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.part, self.reason)
    }
}

impl Liveness {
    /// Parts that do not beat within `stall_after` are stuck (see [`Liveness::from_lookup`]
    /// for the service's setting).
    pub fn new(stall_after: Duration, test_stall: Option<TestStall>) -> Self {
        Self::with_clock(process_clock(), stall_after, test_stall)
    }

    /// The same, reading `clock` (milliseconds) instead of the process's coarse clock: tests
    /// move it by hand.
    pub fn with_clock(
        clock: &'static AtomicU64,
        stall_after: Duration,
        test_stall: Option<TestStall>,
    ) -> Self {
        let beat_age = beat_age_gauge();
        Self {
            inner: Arc::new(Inner {
                clock,
                stall_after,
                parts: Mutex::new(Vec::new()),
                test_stall,
                beat_age,
            }),
        }
    }

    /// Reads `LIVENESS_STALL_AFTER_SECONDS` (1–3600, default 30) and the test-only
    /// `SEGMENT_RELAY_TEST_ONLY_STALL` from `lookup`; every problem names the variable and
    /// the fix.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let stall_after = match lookup(STALL_AFTER_ENV).map(|v| v.trim().to_owned()) {
            None => DEFAULT_STALL_AFTER,
            Some(v) if v.is_empty() => DEFAULT_STALL_AFTER,
            Some(v) => match v.parse::<u64>() {
                Ok(seconds @ 1..=3600) => Duration::from_secs(seconds),
                _ => {
                    problems.push(format!(
                        "{STALL_AFTER_ENV}={v}: must be whole seconds between 1 and 3600 (how long a part may go without progress before /livez fails), e.g. {STALL_AFTER_ENV}=30"
                    ));
                    DEFAULT_STALL_AFTER
                }
            },
        };
        let test_stall = match lookup(TEST_STALL_ENV).filter(|v| !v.trim().is_empty()) {
            None => None,
            Some(v) => TestStall::parse(&v).map_err(|p| problems.push(p)).ok(),
        };
        if problems.is_empty() {
            Ok(Self::new(stall_after, test_stall))
        } else {
            Err(problems)
        }
    }

    /// The threshold parts registered with [`Liveness::heartbeat`] get.
    pub fn stall_after(&self) -> Duration {
        self.inner.stall_after
    }

    /// A part that beats at least every [`Liveness::stall_after`].
    pub fn heartbeat(&self, name: impl Into<String>) -> Heartbeat {
        self.heartbeat_within(name, self.inner.stall_after)
    }

    /// A part that beats at least every `stall_after` (e.g. a loop woken by a timer slower
    /// than the default threshold).
    pub fn heartbeat_within(&self, name: impl Into<String>, stall_after: Duration) -> Heartbeat {
        let name = name.into();
        let stall_at_ms = match &self.inner.test_stall {
            Some(stall) if name.starts_with(&stall.part_prefix) => {
                tracing::warn!(part = %name, after_s = stall.after.as_secs(), "{TEST_STALL_ENV} is set: this part will stall on purpose. For tests only.");
                self.now_ms() + millis(stall.after)
            }
            _ => u64::MAX,
        };
        Heartbeat {
            part: self.register(name, Some(millis(stall_after))),
            clock: self.inner.clock,
            stall_at_ms,
            liveness: Arc::downgrade(&self.inner),
            must_run: false,
            finished: false,
        }
    }

    /// A part that does not beat but must run as long as the process does: dropping the
    /// returned guard without [`Heartbeat::finish`] (the part returned early, or panicked)
    /// fails liveness.
    pub fn must_run(&self, name: impl Into<String>) -> Heartbeat {
        Heartbeat {
            part: self.register(name.into(), None),
            clock: self.inner.clock,
            stall_at_ms: u64::MAX,
            liveness: Arc::downgrade(&self.inner),
            must_run: true,
            finished: false,
        }
    }

    fn register(&self, name: String, stall_after_ms: Option<u64>) -> Arc<Part> {
        let part = Arc::new(Part {
            name,
            stall_after_ms,
            last_beat_ms: AtomicU64::new(self.now_ms()),
            waits: AtomicU32::new(0),
            wait_bound_ms: AtomicU64::new(u64::MAX),
            state: AtomicU8::new(RUNNING),
        });
        self.inner
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(part.clone());
        part
    }

    fn now_ms(&self) -> u64 {
        self.inner.clock.load(Ordering::Relaxed)
    }

    /// The stuck and dead parts now; empty when the service is live.
    pub fn check(&self) -> Vec<Stuck> {
        let now = self.now_ms();
        let parts = self
            .inner
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        parts
            .iter()
            .filter_map(|part| {
                let reason = match part.state.load(Ordering::Relaxed) {
                    PANICKED => "panicked".to_owned(),
                    EXITED => "stopped, but must run as long as the process does".to_owned(),
                    _ => {
                        let limit = part.stall_after_ms?;
                        let age = part.age_ms(now)?;
                        if age <= limit {
                            return None;
                        }
                        format!(
                            "no progress for {:.1} s (threshold {:.1} s)",
                            age as f64 / 1000.0,
                            limit as f64 / 1000.0
                        )
                    }
                };
                Some(Stuck {
                    part: part.name.clone(),
                    reason,
                })
            })
            .collect()
    }
}

impl Part {
    /// Milliseconds since the last beat; `None` while the part waits legitimately (a bounded
    /// wait past its bound ages from the bound).
    fn age_ms(&self, now: u64) -> Option<u64> {
        if self.waits.load(Ordering::Relaxed) > 0 {
            let bound = self.wait_bound_ms.load(Ordering::Relaxed);
            return (now > bound).then(|| now - bound);
        }
        Some(now.saturating_sub(self.last_beat_ms.load(Ordering::Relaxed)))
    }
}

/// `liveness_beat_age_seconds{part}`.
fn beat_age_gauge() -> GaugeVec {
    GaugeVec::new(
        Opts::new(
            "liveness_beat_age_seconds",
            "Seconds since each long-running part of the service last beat (0 while it waits on something a restart would not help: idle, a partner, the broker); /livez fails when one passes its threshold.",
        ),
        &["part"],
    )
    .unwrap_or_else(|e| unreachable!("constant metric options are valid: {e}"))
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Collector for Liveness {
    fn desc(&self) -> Vec<&Desc> {
        self.inner.beat_age.desc()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let now = self.now_ms();
        // A gauge of its own per scrape: concurrent scrapes cannot see each other's half.
        let gauge = beat_age_gauge();
        for part in self
            .inner
            .parts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|p| p.stall_after_ms.is_some())
        {
            let age = part.age_ms(now).unwrap_or(0);
            gauge
                .with_label_values(&[&part.name])
                .set(age as f64 / 1000.0);
        }
        gauge.collect()
    }
}

/// One part's heartbeat. Dropped while its thread unwinds a panic, it fails liveness for
/// good; dropped otherwise, the part is gone (it stopped on purpose) — unless it came from
/// [`Liveness::must_run`] and was not [`finish`](Heartbeat::finish)ed.
#[derive(Debug)]
pub struct Heartbeat {
    part: Arc<Part>,
    clock: &'static AtomicU64,
    /// When the test-only stall strikes (`u64::MAX`: never).
    stall_at_ms: u64,
    liveness: std::sync::Weak<Inner>,
    must_run: bool,
    finished: bool,
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

#[cfg(test)]
mod tests {
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
        assert!(problems[0].starts_with(
            "LIVENESS_STALL_AFTER_SECONDS=0: must be whole seconds between 1 and 3600"
        ));
        assert!(
            problems[1]
                .starts_with("SEGMENT_RELAY_TEST_ONLY_STALL=soon: expected `<part>@<seconds>`")
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
}
