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

mod heartbeat;

pub use heartbeat::{Heartbeat, Waiter, Waiting};

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

#[cfg(test)]
mod tests;
