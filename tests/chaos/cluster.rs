//! The fault scenarios of issue 18, on a three-node cluster (`KAFKA_NODES=3`: every node broker
//! and controller, 3 replicas, `min.insync.replicas=2`): a partition leader killed, the
//! qualifier's transaction coordinator killed mid-transaction, a rolling restart of the three
//! nodes, a node stalled by `SIGSTOP`, and two nodes down at once. Each runs the whole system
//! under steady load through ingest and passes only when
//! - the qualifier's committed output equals, change for change and in order per user, that of
//!   a second qualifier reading the same input uninterrupted after the fault (the reference);
//! - delivery's exact ledger has 0 missing, and the partner's duplicates stay within the
//!   system's in-flight window;
//! - every event answered 202 is in the events topic, and no service exited or was restarted.
//!
//! The rules are [`TIMELESS_DEFINITIONS`]: with traits that expire, the output depends on when
//! an event is processed, and no reference run could be compared change for change.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use telemetry::KafkaSettings;
use testkit::ledger::compare_output;

use crate::broker::ChaosBroker;
use crate::ledger::{self, Ledger};
use crate::load::{Load, LoadReport};
use crate::scenarios::{
    Scale, assert_balanced, drain, group_reader, in_flight_window, load_note, lost_accepted,
    qualifier_lag, wait_qualifier_quiet,
};
use crate::system::{System, SystemSpec, TIMELESS_DEFINITIONS};

/// What a cluster scenario does to the brokers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterFault {
    /// `kill -9` of the node leading most partitions of the events and status topics,
    /// restarted after 30 s.
    LeaderKill,
    /// `kill -9` of the qualifier's transaction coordinator while its transaction is ongoing,
    /// restarted after 30 s.
    CoordinatorKill,
    /// Each node in turn: SIGTERM, start again, wait until every partition is fully replicated.
    RollingRestart,
    /// `SIGSTOP` of the node leading most partitions for 30 s, then `SIGCONT`.
    Stall,
    /// `kill -9` of the two nodes leading most partitions, both restarted after 20 s: below
    /// `min.insync.replicas` (and the controller quorum) meanwhile.
    TwoDown,
}

/// How long a killed or stalled node stays so.
const NODE_OUT: Duration = Duration::from_secs(30);
/// How long the two nodes stay down in [`ClusterFault::TwoDown`].
const TWO_OUT: Duration = Duration::from_secs(20);
/// How long, at most, the cluster may take to have every partition fully replicated again.
const REPLICATION_LIMIT: Duration = Duration::from_secs(180);

impl ClusterFault {
    fn name(self) -> &'static str {
        match self {
            Self::LeaderKill => "leader-kill",
            Self::CoordinatorKill => "coordinator-kill",
            Self::RollingRestart => "rolling-brokers",
            Self::Stall => "stall",
            Self::TwoDown => "two-down",
        }
    }
}

/// What happened during the fault, for the ledger's notes.
struct FaultLog {
    /// When the fault began and when it ended (the last node answering again).
    began: Instant,
    ended: Instant,
    notes: Vec<String>,
}

/// Runs a blocking cluster chore off the async threads.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

fn seconds_since(origin: Instant, at: Instant) -> f64 {
    at.saturating_duration_since(origin).as_secs_f64()
}

async fn inflict(
    broker: &ChaosBroker,
    fault: ClusterFault,
    transactional_id: String,
    topics: [String; 2],
    origin: Instant,
) -> FaultLog {
    let b = broker.clone();
    let busiest = move || {
        let names = [topics[0].as_str(), topics[1].as_str()];
        (b.leaders(&names), b.busiest_leader(&names))
    };
    let b = broker.clone();
    match fault {
        ClusterFault::LeaderKill | ClusterFault::Stall => {
            let (leaders, (node, led)) = blocking(busiest).await;
            let kill = fault == ClusterFault::LeaderKill;
            let began = Instant::now();
            let b2 = b.clone();
            blocking(move || b2.signal(node, if kill { "KILL" } else { "STOP" })).await;
            tokio::time::sleep(NODE_OUT).await;
            let back = Instant::now();
            let b2 = b.clone();
            if kill {
                blocking(move || b2.node_up(node)).await;
            } else {
                blocking(move || b2.signal(node, "CONT")).await;
            }
            let answering = back.elapsed();
            FaultLog {
                began,
                ended: Instant::now(),
                notes: vec![format!(
                    "partition leaders per node before (events + status topics): {leaders:?}; node {node} (leading {led}) {} at {:.1} s for {} s, {} {:.1} s later",
                    if kill {
                        "killed (-9)"
                    } else {
                        "stopped (SIGSTOP)"
                    },
                    seconds_since(origin, began),
                    NODE_OUT.as_secs(),
                    if kill {
                        "restarted, answering"
                    } else {
                        "continued (SIGCONT),"
                    },
                    answering.as_secs_f64()
                )],
            }
        }
        ClusterFault::CoordinatorKill => {
            // Describe until the transaction is seen ongoing, then kill its coordinator at
            // once: under load the qualifier is nearly always inside a transaction. A look that
            // fails (the admin client's 3 s passed on the loaded machine) is one of the ten.
            let (node, state, tries) = blocking(move || {
                let mut tries = 0;
                loop {
                    tries += 1;
                    match b.transaction(&transactional_id) {
                        Ok((node, state)) if state == "Ongoing" || tries == 10 => {
                            b.signal(node, "KILL");
                            return (node, state, tries);
                        }
                        Err(error) if tries == 10 => panic!("{error}"),
                        Ok(_) => {}
                        Err(error) => eprintln!("chaos: look {tries} failed: {error}"),
                    }
                }
            })
            .await;
            let began = Instant::now();
            assert_eq!(
                state, "Ongoing",
                "the qualifier's transaction was never seen ongoing in {tries} looks: the kill did not land mid-transaction"
            );
            tokio::time::sleep(NODE_OUT).await;
            let back = Instant::now();
            let b = broker.clone();
            blocking(move || b.node_up(node)).await;
            FaultLog {
                began,
                ended: Instant::now(),
                notes: vec![format!(
                    "node {node}, the qualifier's transaction coordinator, killed (-9) at {:.1} s with the transaction {state} (look {tries}), restarted after {} s, answering {:.1} s later",
                    seconds_since(origin, began),
                    NODE_OUT.as_secs(),
                    back.elapsed().as_secs_f64()
                )],
            }
        }
        ClusterFault::RollingRestart => {
            let began = Instant::now();
            let mut notes = Vec::new();
            for node in broker.nodes() {
                let b = broker.clone();
                let step = blocking(move || {
                    let stopping = Instant::now();
                    b.node_down(node);
                    let stopped = stopping.elapsed();
                    // What the wait below waits out: the partitions the node's absence
                    // left with fewer in-sync replicas.
                    let under = b.under_replicated();
                    b.node_up(node);
                    let started = stopping.elapsed() - stopped;
                    let replicated = b.wait_fully_replicated(REPLICATION_LIMIT);
                    (stopped, under, started, replicated)
                })
                .await;
                notes.push(format!(
                    "node {node}: SIGTERM, stopped after {:.1} s ({} partitions under-replicated then), started and answering after {:.1} s, every partition in sync {:.1} s later",
                    step.0.as_secs_f64(),
                    step.1.map_or("?".to_owned(), |n| n.to_string()),
                    step.2.as_secs_f64(),
                    step.3.as_secs_f64()
                ));
            }
            FaultLog {
                began,
                ended: Instant::now(),
                notes,
            }
        }
        ClusterFault::TwoDown => {
            let (leaders, _) = blocking(busiest).await;
            let mut by_load: Vec<(i32, usize)> = leaders.into_iter().collect();
            by_load.sort_by_key(|&(node, led)| (std::cmp::Reverse(led), node));
            let pair = [by_load[0].0, by_load[1].0];
            let b2 = b.clone();
            blocking(move || pair.iter().for_each(|&n| b2.signal(n, "KILL"))).await;
            let began = Instant::now();
            tokio::time::sleep(TWO_OUT).await;
            let back = Instant::now();
            // Both at once: one alone has no controller quorum to join.
            let (b1, b2) = (b.clone(), b.clone());
            let first = tokio::task::spawn_blocking(move || b1.node_up(pair[0]));
            let second = tokio::task::spawn_blocking(move || b2.node_up(pair[1]));
            first.await.unwrap();
            second.await.unwrap();
            FaultLog {
                began,
                ended: Instant::now(),
                notes: vec![format!(
                    "nodes {pair:?} (leading most partitions) killed (-9) at {:.1} s for {} s, restarted, answering {:.1} s later",
                    seconds_since(origin, began),
                    TWO_OUT.as_secs(),
                    back.elapsed().as_secs_f64()
                )],
            }
        }
    }
}

/// What the ingest clients saw around the fault: answers by status and the longest time no
/// request was answered 202 (from the last 202 before it to the first after it).
fn ingest_seen(report: &LoadReport, origin: Instant, fault: &FaultLog) -> String {
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for r in report
        .requests
        .iter()
        .filter(|r| r.answered_at >= fault.began && r.sent_at <= fault.ended)
    {
        let key = r.status.map_or("none".to_owned(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
    }
    let mut accepted: Vec<Instant> = report
        .requests
        .iter()
        .filter(|r| r.status == Some(202))
        .map(|r| r.answered_at)
        .collect();
    accepted.sort();
    let (gap, from) = accepted
        .windows(2)
        .map(|w| (w[1] - w[0], w[0]))
        .max()
        .unwrap_or((Duration::ZERO, origin));
    let slowest = report
        .requests
        .iter()
        .filter(|r| r.status == Some(202))
        .map(|r| r.answered_at - r.sent_at)
        .max()
        .unwrap_or_default();
    format!(
        "ingest during the fault: answers {statuses:?}; longest time without a 202: {:.1} s (from {:.1} s); slowest 202: {:.1} s",
        gap.as_secs_f64(),
        seconds_since(origin, from),
        slowest.as_secs_f64()
    )
}

/// WARN and ERROR lines of a service's JSON log, by message (the first few), for the notes.
/// A log it cannot read says so, never "no WARN or ERROR".
fn log_summary(name: &str, log: &str) -> String {
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    let mut read = 0;
    for line in log.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        read += 1;
        let level = event["level"].as_str().unwrap_or_default();
        if level == "WARN" || level == "ERROR" {
            let message: String = event["fields"]["message"]
                .as_str()
                .or_else(|| event["message"].as_str())
                .unwrap_or_default()
                .chars()
                .take(90)
                .collect();
            *counts.entry(format!("{level} {message}")).or_default() += 1;
        }
    }
    if read == 0 {
        return format!("{name}: its log has no JSON line to read");
    }
    if counts.is_empty() {
        return format!("{name}: no WARN or ERROR in {read} log lines");
    }
    let mut by_count: Vec<_> = counts.into_iter().collect();
    by_count.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let top: Vec<String> = by_count
        .iter()
        .take(4)
        .map(|(m, n)| format!("{n}× {m}"))
        .collect();
    format!("{name}: {}", top.join("; "))
}

/// A group's progress, sampled on a thread of its own every 250 ms: the sum of its committed
/// offsets on a topic, and the moments it grew. A sample the cluster cannot answer is skipped.
struct Progress {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Instant>>,
}

impl Progress {
    fn start(settings: &KafkaSettings, group: &str, topic: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let (consumer, list) = group_reader(settings, group, topic);
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut grew = Vec::new();
            let mut last = 0;
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(committed) =
                    consumer.committed_offsets(list.clone(), Duration::from_secs(2))
                {
                    let sum: i64 = committed
                        .elements()
                        .iter()
                        .filter_map(|e| match e.offset() {
                            rdkafka::Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .sum();
                    if sum > last {
                        last = sum;
                        grew.push(Instant::now());
                    }
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            grew
        });
        Self { stop, thread }
    }

    /// Stops sampling; the longest time without growth that ends after `since` (the fault's
    /// start): (when it began, how long).
    fn longest_stall(self, since: Instant) -> (Instant, Duration) {
        self.stop.store(true, Ordering::Relaxed);
        let grew = self.thread.join().unwrap();
        grew.windows(2)
            .filter(|w| w[1] > since)
            .map(|w| (w[1] - w[0], w[0]))
            .max()
            .map_or((since, Duration::ZERO), |(gap, from)| (from, gap))
    }
}

/// "<name> committed nothing for X s (from +a s to +b s; going again Y s after the fault
/// began)".
fn stall_note(
    name: &str,
    (from, gap): (Instant, Duration),
    origin: Instant,
    fault: &FaultLog,
) -> String {
    let to = from + gap;
    let after = to.saturating_duration_since(fault.began).as_secs_f64();
    format!(
        "{name} committed nothing for {:.1} s at most (from {:.1} s to {:.1} s; going again {after:.1} s after the fault began)",
        gap.as_secs_f64(),
        seconds_since(origin, from),
        seconds_since(origin, to)
    )
}

/// What a service went through, by the log lines that mark it (each counted).
const MARKS: [(&str, &str); 9] = [
    ("transactions failed", "A Kafka transaction failed"),
    (
        "producers given up (a send of the offsets hung)",
        "did not return within its bound",
    ),
    (
        "recovered in place",
        "Recovered from the failed transaction",
    ),
    (
        "producer replaced",
        "The transactional producer cannot continue",
    ),
    ("session timeouts", "SESSTMOUT"),
    ("partitions revoked", "Partitions revoked"),
    ("partitions restored", "Partitions assigned and restored"),
    ("offset commits failed", "Offset commit failed"),
    ("revoked without commit", "Cannot commit revoked partitions"),
];

fn marks(name: &str, log: &str) -> String {
    let counted: Vec<String> = MARKS
        .iter()
        .filter_map(|(label, needle)| {
            let n = log.lines().filter(|l| l.contains(needle)).count();
            (n > 0).then(|| format!("{label} {n}"))
        })
        .collect();
    if counted.is_empty() {
        format!("{name} went through: nothing of note")
    } else {
        format!("{name} went through: {}", counted.join(", "))
    }
}

/// The reference: a second qualifier reads the run's input uninterrupted; its committed
/// output, once it has read everything and its output stays put.
async fn reference_output(system: &System, broker: &ChaosBroker) -> Vec<ledger::Committed> {
    let settings = broker.settings();
    let (mut service, topics, group) = system.launch.start_reference_qualifier(broker).await;
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (s, t, g) = (settings.clone(), topics.events.clone(), group.clone());
        if blocking(move || qualifier_lag(&s, &t, &g)).await == Ok(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the reference qualifier did not read the run's input within 3 minutes"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    wait_qualifier_quiet(&settings, &topics.status).await;
    let output = ledger::committed(&settings, &topics.status).await;
    service.terminate();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert!(status.success(), "the reference qualifier exited {status}");
    output
}

/// One cluster scenario: the system under load, `fault`, the load going on after it, then the
/// ledger and the comparison with the reference.
pub async fn cluster_fault(broker: &ChaosBroker, scale: Scale, fault: ClusterFault) -> Ledger {
    assert!(
        broker.is_cluster(),
        "a cluster scenario needs the three-node cluster"
    );
    let settings = broker.settings();
    let spec = SystemSpec {
        definitions: TIMELESS_DEFINITIONS,
        ..SystemSpec::default()
    };
    let mut system = System::start(broker, fault.name(), &spec).await;
    // About two events per user over the run: with traits that never expire, a user's
    // statuses change only on their first few events, and the load should keep changing them.
    let seconds = (scale.load + NODE_OUT).as_secs();
    let users = u32::try_from(u64::from(scale.rate) * seconds / 2).unwrap();
    let load = Load::start(&system.launch.ingest, scale.rate, users, 18);
    let origin = load.started;
    tokio::time::sleep(scale.load / 4).await;

    let topics = [
        system.launch.topics.events.clone(),
        system.launch.topics.status.clone(),
    ];
    let qualifier_progress = Progress::start(
        &settings,
        &system.launch.qualifier_group,
        &system.launch.topics.events,
    );
    let delivery_progress = Progress::start(
        &settings,
        &system.launch.delivery_group,
        &system.launch.topics.status,
    );
    let log = inflict(
        broker,
        fault,
        system.launch.transactional_id(),
        topics,
        origin,
    )
    .await;
    let b = broker.clone();
    let replicated = blocking(move || b.wait_fully_replicated(REPLICATION_LIMIT)).await;
    tokio::time::sleep(scale.load / 2).await;
    let report = load.stop().await;
    system.assert_running();
    let qualifier_stall = qualifier_progress.longest_stall(log.began);
    let delivery_stall = delivery_progress.longest_stall(log.began);

    let seen = ingest_seen(&report, origin, &log);
    let lost_202 = lost_accepted(&report, &settings, &system.launch.topics.events).await;

    let mut ledger = drain(fault.name(), &system, &settings, scale.drain).await;
    system.assert_running();
    let run = ledger::committed(&settings, &system.launch.topics.status).await;
    let reference = reference_output(&system, broker).await;
    let diff = compare_output(&run, &reference);

    ledger.notes.push(load_note(&report, scale.rate));
    ledger.notes.extend(log.notes.iter().cloned());
    ledger.notes.push(seen);
    ledger.notes.push(stall_note(
        "the qualifier (input offsets)",
        qualifier_stall,
        origin,
        &log,
    ));
    ledger.notes.push(stall_note(
        "delivery (status offsets)",
        delivery_stall,
        origin,
        &log,
    ));
    ledger.notes.push(format!(
        "fault over after {:.1} s; every partition fully replicated {:.1} s after that",
        log.ended.duration_since(log.began).as_secs_f64(),
        replicated.as_secs_f64()
    ));
    ledger.notes.push(format!(
        "events answered 202 but not in the events topic: {lost_202}; no service exited or was restarted"
    ));
    ledger.notes.push(format!(
        "qualifier output against an uninterrupted reference run over the same input: {} users, {} changes, {} missing, {} extra, {} users reordered",
        diff.users, diff.changes, diff.missing, diff.extra, diff.reordered
    ));
    // SystemSpec::default(): max_in_flight 2, max_users 100, on each of the workers.
    let window = in_flight_window(system.destinations(), 2, 100) * system.workers.len() as u64;
    let duplicates: u64 = ledger.lines.iter().map(|l| l.duplicates).sum();
    ledger.notes.push(format!(
        "duplicates at the partner {duplicates}, bound: the in-flight window of both workers = {window} changes"
    ));
    let qualifier_log = system.qualifier.log();
    ledger.notes.push(marks("qualifier", &qualifier_log));
    ledger.notes.push(log_summary("qualifier", &qualifier_log));
    for (i, worker) in system.workers.iter().enumerate() {
        let name = format!("delivery {}", i + 1);
        let log = worker.log();
        ledger.notes.push(marks(&name, &log));
        ledger.notes.push(log_summary(&name, &log));
    }

    assert!(
        diff.is_equal(),
        "the qualifier's output differs from an uninterrupted run over the same input: {} missing, {} extra, {} users reordered; e.g. {:#?}\n{}",
        diff.missing,
        diff.extra,
        diff.reordered,
        diff.examples,
        ledger.render()
    );
    assert!(
        diff.changes > 0,
        "the run committed no change: nothing was compared"
    );
    assert_eq!(
        lost_202,
        0,
        "{lost_202} events answered 202 are not in the events topic\n{}",
        ledger.render()
    );
    assert_balanced(&ledger);
    assert_eq!(
        (ledger.qualifier.identical, ledger.qualifier.repeated_status),
        (0, 0),
        "the qualifier's output is not exactly-once across the fault\n{}",
        ledger.render()
    );
    assert!(
        duplicates <= window,
        "the partner got {duplicates} duplicates, more than the in-flight window ({window})\n{}",
        ledger.render()
    );
    assert!(
        report
            .requests
            .last()
            .is_some_and(|r| r.status == Some(202)),
        "the ingest API did not accept events again after the fault: {}",
        report.summary()
    );
    if fault == ClusterFault::TwoDown {
        // Below min.insync.replicas nothing can be acknowledged: every answer in the window
        // (after a grace for answers on their way) is a refusal, and some came.
        let grace = log.began + Duration::from_secs(1);
        let accepted_while_down = report
            .requests
            .iter()
            .filter(|r| {
                r.status == Some(202) && r.sent_at > grace && r.answered_at < log.began + TWO_OUT
            })
            .count();
        let refused = report
            .requests
            .iter()
            .filter(|r| r.status == Some(503) && r.answered_at > log.began)
            .count();
        assert_eq!(
            accepted_while_down, 0,
            "the ingest API answered 202 to {accepted_while_down} requests sent while two of three nodes were down"
        );
        assert!(
            refused > 0,
            "the ingest API never answered 503 while two of three nodes were down"
        );
    }
    ledger
}
