//! The partner's side of the ledger, kept off the request path: an accepted request is
//! answered at once, and its changes are recorded (every change, the users, duplicates, order)
//! by a thread of its own, in the order the requests were accepted. Recorded inline, under the
//! endpoint's lock in the async handler, it stalled every request for ~0.3 s at a time at some
//! steps of a benchmark, all endpoints at once (most likely the growth of its maps of millions
//! of changes): the end-to-end p99 measured the simulator, not the sender. `/stats` and
//! `/accepted` answer once every request answered before them is recorded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{PoisonError, Weak};
use std::time::{Duration, Instant};

use foldhash::HashSet;

use super::{AcceptedChange, EndpointStats, Metrics, Simulator};
use crate::contract::ReceivedBody;

/// How long `/stats` and `/accepted` wait for the recording of what was accepted before them.
const SETTLE_BOUND: Duration = Duration::from_secs(60);

/// One accepted request, to record.
struct Accepted {
    path: String,
    key: String,
    received: ReceivedBody,
}

/// The recording thread's end of the queue.
pub(super) struct Queue(mpsc::Receiver<Accepted>);

/// The queue of accepted requests, and how many were queued and recorded.
pub(super) struct Recorder {
    queue: mpsc::Sender<Accepted>,
    queued: AtomicU64,
    recorded: AtomicU64,
}

impl Recorder {
    /// A recorder whose thread is not started yet ([`Self::spawn`]), and the thread's end of
    /// its queue.
    pub(super) fn new() -> (Self, Queue) {
        let (queue, accepted) = mpsc::channel();
        let recorder = Self {
            queue,
            queued: AtomicU64::new(0),
            recorded: AtomicU64::new(0),
        };
        (recorder, Queue(accepted))
    }

    /// Starts the thread that records what `simulator`'s endpoints accept; it holds the
    /// simulator weakly, and ends once it is dropped.
    pub(super) fn spawn(simulator: Weak<Simulator>, queue: Queue) -> std::io::Result<()> {
        let work = move || {
            while let Ok(request) = queue.0.recv() {
                let Some(sim) = simulator.upgrade() else {
                    return;
                };
                if let Some(endpoint) = sim.endpoints.get(&request.path) {
                    let mut stats = endpoint
                        .stats
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    record(
                        &sim.metrics,
                        &request.path,
                        &mut stats,
                        &request.key,
                        request.received,
                    );
                }
                sim.recorder.recorded.fetch_add(1, Ordering::Release);
            }
        };
        std::thread::Builder::new()
            .name("record".to_owned())
            .spawn(work)
            .map(drop)
    }

    /// Queues an accepted request of the endpoint at `path` for recording.
    pub(super) fn accepted(&self, path: &str, key: &str, received: ReceivedBody) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        let request = Accepted {
            path: path.to_owned(),
            key: key.to_owned(),
            received,
        };
        if self.queue.send(request).is_err() {
            // The thread ended: only while the simulator is dropped.
            self.recorded.fetch_add(1, Ordering::Release);
        }
    }

    /// Waits until every request accepted so far is recorded (at most [`SETTLE_BOUND`]).
    pub(super) fn settle(&self) {
        let queued = self.queued.load(Ordering::Acquire);
        let deadline = Instant::now() + SETTLE_BOUND;
        while self.recorded.load(Ordering::Acquire) < queued && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Counts and keeps an accepted request's changes in its endpoint's stats.
fn record(
    metrics: &Metrics,
    path: &str,
    stats: &mut EndpointStats,
    key: &str,
    received: ReceivedBody,
) {
    stats.requests += 1;
    stats.accepted += 1;
    // A user with several partner ids has one entry each, all carrying the same changes: a
    // change counts once per request, so only a re-sent request makes a duplicate.
    let mut in_request = HashSet::default();
    for user in &received.users {
        for segment in &user.segments {
            let seen = (
                user.aam_uuid.as_str(),
                segment.segment_id.as_str(),
                segment.active,
                segment.time,
            );
            if in_request.insert(seen) {
                let change = AcceptedChange {
                    user: user.aam_uuid.clone(),
                    segment: segment.segment_id.clone(),
                    active: segment.active,
                    time: segment.time,
                };
                *stats.accepted_changes.entry(change).or_default() += 1;
            }
        }
    }
    if !stats.keys.insert(key.to_owned()) {
        // A re-send of a batch already accepted: counted, not recorded again.
        stats.duplicates += 1;
        metrics.duplicates.with_label_values(&[path]).inc();
        return;
    }
    let (active_before, inactive_before) = (stats.segments_active, stats.segments_inactive);
    for user in received.users {
        stats.users += 1;
        if !stats.distinct_users.contains(&user.aam_uuid) {
            stats.distinct_users.insert(user.aam_uuid.clone());
        }
        for segment in user.segments {
            if segment.active {
                stats.segments_active += 1;
            } else {
                stats.segments_inactive += 1;
            }
            let slot = (
                user.aam_uuid.clone(),
                user.data_partner_uuid.clone(),
                segment.segment_id,
            );
            let last = stats.last_time.entry(slot).or_insert(segment.time);
            if segment.time < *last {
                stats.order_violations += 1;
                metrics.order_violations.with_label_values(&[path]).inc();
            } else {
                *last = segment.time;
            }
        }
    }
    // Counted once per request and status, not per segment: each count looks its labels up.
    for (status, before, now) in [
        ("1", active_before, stats.segments_active),
        ("0", inactive_before, stats.segments_inactive),
    ] {
        if now > before {
            metrics
                .segments
                .with_label_values(&[path, status])
                .inc_by(now - before);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::config::SimConfig;

    const BODY: &str = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"1","Users":[{"AAM_UUID":"u1","DataPartner_UUID":"","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;

    /// An accepted request is answered while its endpoint's stats are held by someone else
    /// (its recording waits for them), and is in `/stats` and `/accepted` once they are free.
    /// Recorded inline, its answer waited for them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_request_is_answered_while_its_recording_waits() {
        let file = std::env::temp_dir().join(format!(
            "partner-sim-record-{}-{}.yaml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(
            &file,
            "endpoints:\n  - { path: /acme, destination_id: 423 }\n",
        )
        .unwrap();
        let config = SimConfig::load(&file).unwrap();
        let sim = Simulator::new(config, &prometheus::Registry::new()).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/acme", listener.local_addr().unwrap());
        let app = sim.router();
        tokio::spawn(async move { axum::serve(listener, app).await });

        let held = sim.endpoints["/acme"].stats.lock().unwrap();
        // Sent from a runtime of its own: a handler blocked on the lock (as it was) holds up
        // a worker of the server's, and may hold up the tasks it woke.
        let answer = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                reqwest::Client::new()
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("Idempotency-Key", "k1")
                    .body(BODY)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
                    .map(|answer| answer.status().as_u16())
                    .map_err(|e| e.to_string())
            })
        })
        .join()
        .unwrap();
        drop(held);
        assert_eq!(
            answer,
            Ok(200),
            "the request waited for its endpoint's stats"
        );
        let stats = &sim.stats()["endpoints"]["/acme"];
        assert_eq!(
            (&stats["requests"], &stats["accepted"]),
            (&1.into(), &1.into())
        );
        let changes = &sim.accepted()["endpoints"]["/acme"]["changes"];
        assert_eq!(
            changes,
            &serde_json::json!([["u1", "14356", 1, 1469636242, 1]])
        );
    }
}
