//! Traffic into the ingest API at a set rate, recording the answer to every request and when
//! it came, so a scenario can tell what was accepted (`202`) and when the API refused (`503`).
//!
//! Events are trait realizations of traits 1 and 2 (45 % each) and 3 (10 %, it never
//! expires), timed "now", for users picked uniformly among `users`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

/// One event as sent: (user, trait, time in ms since the Unix epoch).
pub type SentEvent = (String, u64, i64);

/// One POST and its answer.
#[derive(Debug, Clone)]
pub struct Request {
    pub sent_at: Instant,
    pub answered_at: Instant,
    /// The HTTP status, or `None` when there was no answer (connection refused, timeout).
    pub status: Option<u16>,
    pub events: Vec<SentEvent>,
}

/// Everything the load sent.
#[derive(Debug, Default)]
pub struct LoadReport {
    pub requests: Vec<Request>,
    /// Ticks skipped because every request slot was busy (the API was slow to answer).
    pub skipped_ticks: u64,
}

impl LoadReport {
    fn count(&self, pick: impl Fn(&Request) -> bool) -> (usize, usize) {
        let chosen: Vec<_> = self.requests.iter().filter(|r| pick(r)).collect();
        (chosen.len(), chosen.iter().map(|r| r.events.len()).sum())
    }

    /// (requests, events) answered 202.
    pub fn accepted(&self) -> (usize, usize) {
        self.count(|r| r.status == Some(202))
    }

    /// (requests, events) answered 503.
    pub fn unavailable(&self) -> (usize, usize) {
        self.count(|r| r.status == Some(503))
    }

    /// (requests, events) with no answer.
    pub fn unanswered(&self) -> (usize, usize) {
        self.count(|r| r.status.is_none())
    }

    /// Requests answered anything other than 202, 503 or nothing.
    pub fn other(&self) -> Vec<&Request> {
        self.requests
            .iter()
            .filter(|r| !matches!(r.status, Some(202 | 503) | None))
            .collect()
    }

    pub fn summary(&self) -> String {
        let (ok, ok_events) = self.accepted();
        let (busy, busy_events) = self.unavailable();
        let (none, none_events) = self.unanswered();
        format!(
            "{} requests: {ok} answered 202 ({ok_events} events), {busy} answered 503 ({busy_events} events), \
             {none} unanswered ({none_events} events), {} other; {} ticks skipped",
            self.requests.len(),
            self.other().len(),
            self.skipped_ticks
        )
    }
}

/// A running load; `stop` ends it and returns the report.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<LoadReport>,
    pub started: Instant,
}

/// Requests in flight at most; when all are busy a tick is skipped, so a stalled API slows
/// the load instead of piling up requests.
const SLOTS: usize = 8;
const TICK: Duration = Duration::from_millis(100);

impl Load {
    /// Sends `rate` events per second (in one request per 100 ms) to `ingest`.
    pub fn start(ingest: &str, rate: u32, users: u32, seed: u64) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let ingest = ingest.to_owned();
        let per_tick = usize::try_from((rate / 10).max(1)).unwrap();
        let task = tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .unwrap();
            let slots = Arc::new(Semaphore::new(SLOTS));
            let mut rng = fastrand::Rng::with_seed(seed);
            let mut report = LoadReport::default();
            let mut in_flight = JoinSet::new();
            let mut ticks = tokio::time::interval(TICK);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stopped.changed() => break,
                    _ = ticks.tick() => {}
                }
                while let Some(done) = in_flight.try_join_next() {
                    report.requests.push(done.unwrap());
                }
                let Ok(permit) = slots.clone().try_acquire_owned() else {
                    report.skipped_ticks += 1;
                    continue;
                };
                let now_ms = telemetry::clock::unix_ms();
                let events: Vec<SentEvent> = (0..per_tick)
                    .map(|_| {
                        let user = format!("u{}", rng.u32(0..users));
                        let roll = rng.u32(0..100);
                        let trait_id = if roll < 45 {
                            1
                        } else if roll < 90 {
                            2
                        } else {
                            3
                        };
                        (user, trait_id, now_ms)
                    })
                    .collect();
                let body: Vec<String> = events
                    .iter()
                    .map(|(user, trait_id, time)| {
                        format!(
                            r#"{{"type":"trait","user":"{user}","trait":{trait_id},"time":"{}"}}"#,
                            rfc3339(*time)
                        )
                    })
                    .collect();
                let request = client
                    .post(&ingest)
                    .header("Content-Type", "application/json")
                    .body(format!("[{}]", body.join(",")));
                in_flight.spawn(async move {
                    let sent_at = Instant::now();
                    let status = request.send().await.ok().map(|r| r.status().as_u16());
                    drop(permit);
                    Request {
                        sent_at,
                        answered_at: Instant::now(),
                        status,
                        events,
                    }
                });
            }
            while let Some(done) = in_flight.join_next().await {
                report.requests.push(done.unwrap());
            }
            report.requests.sort_by_key(|r| r.sent_at);
            report
        });
        Self {
            stop,
            task,
            started: Instant::now(),
        }
    }

    /// Stops sending, waits for the answers still due, and returns what was sent.
    pub async fn stop(self) -> LoadReport {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

/// RFC 3339 with milliseconds, UTC.
pub fn rfc3339(unix_ms: i64) -> String {
    let t =
        time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_ms) * 1_000_000).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}
