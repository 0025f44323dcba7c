//! The fault scenarios of issue 8. Each starts the whole system on the chaos broker, runs
//! traffic through the ingest API, breaks something, lets the pipeline drain, and returns the
//! ledger after asserting what the scenario proves. Any missing change fails the scenario.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use model::TraitEvent;
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use telemetry::KafkaSettings;
use testkit::service::{Service, metric_value};

use crate::broker::ChaosBroker;
use crate::ledger::{self, Ledger};
use crate::load::{Load, LoadReport};
use crate::system::{
    Destination, FAULTY_ID, FAULTY_PATH, LONGEST_TTL, PARTITIONS, System, SystemSpec, tail,
};

/// Durations and rates of a run: short by default (`cargo test --workspace`), long with
/// `CHAOS_SCALE=long` (`make chaos`).
#[derive(Debug, Clone, Copy)]
pub struct Scale {
    pub name: &'static str,
    /// Events per second into the ingest API.
    pub rate: u32,
    pub users: u32,
    /// How long the load runs.
    pub load: Duration,
    /// How long the faulty partner fails in the isolation scenarios.
    pub isolation_fault: Duration,
    /// How long the broker stays stopped (scenario 1), start-up time not included.
    pub broker_down: Duration,
    /// How long, at most, the pipeline may take to drain after the load.
    pub drain: Duration,
}

impl Scale {
    pub fn from_env() -> Self {
        match std::env::var("CHAOS_SCALE").as_deref() {
            Ok("long") => Self {
                name: "long",
                rate: 500,
                users: 10_000,
                load: Duration::from_secs(90),
                isolation_fault: Duration::from_secs(150),
                broker_down: Duration::from_secs(20),
                drain: Duration::from_secs(300),
            },
            Ok("short") | Err(_) => Self {
                name: "short",
                rate: 200,
                users: 2_000,
                load: Duration::from_secs(24),
                isolation_fault: Duration::from_secs(12),
                // Longer than the ingest API's 15 s produce timeout, so that it must answer
                // 503 even when the broker restarts quickly.
                broker_down: Duration::from_secs(16),
                drain: Duration::from_secs(150),
            },
            Ok(other) => panic!("CHAOS_SCALE: `long` or `short`, got `{other}`"),
        }
    }
}

/// Sum of the end offsets of `topic`'s partitions.
fn end_offsets(settings: &KafkaSettings, topic: &str) -> i64 {
    let consumer: BaseConsumer = settings
        .client_config("segment-relay-chaos")
        .create()
        .unwrap();
    (0..PARTITIONS)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .sum()
}

/// A client of `group` that reads its committed offsets (it never joins the group), and the
/// partitions of `topic` to ask about.
pub fn group_reader(
    settings: &KafkaSettings,
    group: &str,
    topic: &str,
) -> (BaseConsumer, rdkafka::TopicPartitionList) {
    let consumer: BaseConsumer = settings
        .client_config("segment-relay-chaos")
        .set("group.id", group)
        .create()
        .unwrap();
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..PARTITIONS {
        list.add_partition(topic, p);
    }
    (consumer, list)
}

/// Input events the qualifier has not committed yet: end offsets of the events topic minus
/// its group's committed offsets. An error is a broker that cannot say yet (its group
/// coordinator still loading after a restart, `NotCoordinator`): ask again.
pub fn qualifier_lag(settings: &KafkaSettings, topic: &str, group: &str) -> Result<i64, String> {
    let (consumer, list) = group_reader(settings, group, topic);
    let committed = consumer
        .committed_offsets(list, Duration::from_secs(10))
        .map_err(|e| format!("committed offsets of {group}: {e}"))?;
    let mut lag = 0;
    for p in 0..PARTITIONS {
        let end = consumer
            .fetch_watermarks(topic, p, Duration::from_secs(10))
            .map_err(|e| format!("watermarks of {topic}/{p}: {e}"))?
            .1;
        let done = committed
            .find_partition(topic, p)
            .and_then(|e| match e.offset() {
                rdkafka::Offset::Offset(o) => Some(o),
                _ => None,
            })
            .unwrap_or(0);
        lag += end - done;
    }
    Ok(lag)
}

/// Waits until the qualifier committed every input event (a ledger over a qualifier that
/// stopped processing would balance and prove nothing).
async fn wait_qualifier_caught_up(system: &System, settings: &KafkaSettings) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (s, t, g) = (
            settings.clone(),
            system.launch.topics.events.clone(),
            system.launch.qualifier_group.clone(),
        );
        let lag = match tokio::task::spawn_blocking(move || qualifier_lag(&s, &t, &g))
            .await
            .unwrap()
        {
            Ok(0) => return,
            Ok(lag) => format!("{lag} events left"),
            Err(error) => format!("lag unknown ({error})"),
        };
        if Instant::now() >= deadline {
            // What its liveness probe says: a hang inside a bounded call shows there.
            let livez = match reqwest::get(system.qualifier.admin_url("/livez")).await {
                Ok(answer) => format!(
                    "{} {}",
                    answer.status(),
                    answer.text().await.unwrap_or_default()
                ),
                Err(e) => format!("no answer: {e}"),
            };
            panic!(
                "the qualifier did not process its input: {lag} 2 minutes after the load; /livez: {}; its log:\n{}\nits processing thread:\n{}",
                livez.trim(),
                tail(&system.qualifier.log(), 40),
                system.qualifier.stacks("qualifier::processor")
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Waits until the qualifier stopped writing: its timers fire up to the longest TTL after the
/// last event, then the status topic's end must stay put for 3 s.
pub async fn wait_qualifier_quiet(settings: &KafkaSettings, topic: &str) {
    tokio::time::sleep(LONGEST_TTL + Duration::from_secs(1)).await;
    let mut last = -1;
    let mut stable = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while stable < 3 {
        let (s, t) = (settings.clone(), topic.to_owned());
        let now = tokio::task::spawn_blocking(move || end_offsets(&s, &t))
            .await
            .unwrap();
        stable = if now == last { stable + 1 } else { 0 };
        last = now;
        assert!(
            Instant::now() < deadline,
            "the qualifier kept writing to {topic} for 2 minutes after the load"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// After the load: waits for the qualifier to finish, then until every committed change is
/// accepted or dead-lettered (or `drain` passes), and returns the ledger.
pub async fn drain(
    name: &str,
    system: &System,
    settings: &KafkaSettings,
    drain: Duration,
) -> Ledger {
    let topics = &system.launch.topics;
    wait_qualifier_caught_up(system, settings).await;
    wait_qualifier_quiet(settings, &topics.status).await;
    let deadline = Instant::now() + drain;
    loop {
        let partner = system.partner_record().await;
        let (ledger, _) = ledger::build(
            name,
            system.destinations(),
            settings,
            &topics.status,
            &topics.dlq,
            &partner,
            &system.launch.coalesced_reports(),
        )
        .await;
        if ledger.missing() == 0 || Instant::now() > deadline {
            return ledger;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}

/// The checks every scenario makes, after its own.
pub fn assert_balanced(ledger: &Ledger) {
    assert!(ledger.changes > 0, "the run committed no status change");
    for line in &ledger.lines {
        assert!(
            line.committed > 0,
            "nothing was committed for destination {}",
            line.id
        );
        assert_eq!(
            line.missing,
            0,
            "{} committed changes for {} {} were neither accepted by the partner, nor dead-lettered, nor reported coalesced\n{}",
            line.missing,
            line.id,
            line.path,
            ledger.render()
        );
        assert_eq!(
            line.out_of_order_beyond_resends(),
            0,
            "{} changes reached {} {} out of order, more than re-processing explains ({} re-sent, {} re-coalesced)\n{}",
            line.out_of_order,
            line.id,
            line.path,
            line.duplicates,
            line.recoalesced,
            ledger.render()
        );
        assert_eq!(
            line.violations,
            0,
            "partner-sim saw {} contract violations at {} {}\n{}",
            line.violations,
            line.id,
            line.path,
            ledger.render()
        );
        assert_eq!(
            line.unexpected,
            0,
            "{} changes at {} {} were never committed by the qualifier\n{}",
            line.unexpected,
            line.id,
            line.path,
            ledger.render()
        );
    }
}

pub fn load_note(report: &LoadReport, rate: u32) -> String {
    format!("load at {rate} events/s: {}", report.summary())
}

/// Changes a delivery worker delivered, over all destinations.
async fn delivered_by(worker: &Service) -> f64 {
    let text = reqwest::get(worker.admin_url("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    metric_value(&text, "delivery_events_total{outcome=\"delivered\"}").unwrap_or(0.0)
}

/// Scenario 4: `kill -9` of the qualifier, then of one of two delivery workers, each
/// restarted, under load.
pub async fn kill_9(broker: &ChaosBroker, scale: Scale) -> Ledger {
    let settings = broker.settings();
    let mut system = System::start(broker, "kill9", &SystemSpec::default()).await;
    let load = Load::start(&system.launch.ingest, scale.rate, scale.users, 4);
    let mut notes = Vec::new();

    tokio::time::sleep(scale.load / 4).await;
    system.qualifier.kill9().await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.qualifier = system.launch.start_qualifier().await;
    notes.push(format!(
        "qualifier killed at {:.1} s, ready again after {:.1} s",
        load.started.elapsed().as_secs_f64() - killed.elapsed().as_secs_f64(),
        killed.elapsed().as_secs_f64()
    ));

    tokio::time::sleep(scale.load / 4).await;
    // Under load: the worker about to die has been delivering.
    let delivered = delivered_by(&system.workers[0]).await;
    assert!(
        delivered > 0.0,
        "delivery worker 1 delivered nothing before its kill -9: the scenario proves nothing"
    );
    system.workers[0].kill9().await;
    let killed = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    system.workers[0] = system.launch.start_worker().await;
    notes.push(format!(
        "delivery worker 1 of 2 killed at {:.1} s (it had delivered {delivered} changes), ready again after {:.1} s",
        load.started.elapsed().as_secs_f64() - killed.elapsed().as_secs_f64(),
        killed.elapsed().as_secs_f64()
    ));

    let rest = scale.load.saturating_sub(load.started.elapsed());
    tokio::time::sleep(rest).await;
    let report = load.stop().await;
    system.assert_running();
    let mut ledger = drain("kill -9", &system, &settings, scale.drain).await;
    ledger.notes.push(load_note(&report, scale.rate));
    ledger.notes.extend(notes);
    assert_balanced(&ledger);
    assert_eq!(
        (ledger.qualifier.identical, ledger.qualifier.repeated_status),
        (0, 0),
        "the qualifier's output is not exactly-once across its kill -9\n{}",
        ledger.render()
    );
    ledger
}

/// The most changes one worker can have sent to `destinations` and not yet committed: per
/// destination, `max_in_flight` batches of `max_users` users, each with at most one change
/// per mapped segment.
pub fn in_flight_window(destinations: &[Destination], max_in_flight: u64, max_users: u64) -> u64 {
    destinations
        .iter()
        .map(|d| max_in_flight * max_users * d.segments.len() as u64)
        .sum()
}

/// Scenario 5: SIGTERM one of two delivery workers at a time, each restarted before the next.
pub async fn rolling_restart(broker: &ChaosBroker, scale: Scale) -> Ledger {
    let settings = broker.settings();
    let mut system = System::start(broker, "rolling", &SystemSpec::default()).await;
    let load = Load::start(&system.launch.ingest, scale.rate, scale.users, 5);
    let mut notes = Vec::new();
    tokio::time::sleep(scale.load / 4).await;
    for i in 0..system.workers.len() {
        let stopping = Instant::now();
        system.workers[i].terminate();
        let status = system.workers[i].wait_exit(Duration::from_secs(40)).await;
        assert!(
            status.success(),
            "delivery worker {} exited with {status} on SIGTERM; its log:\n{}",
            i + 1,
            tail(&system.workers[i].log(), 40)
        );
        let stopped = stopping.elapsed();
        system.workers[i] = system.launch.start_worker().await;
        notes.push(format!(
            "worker {} of 2: SIGTERM at {:.1} s, exited 0 after {:.1} s, replacement ready after {:.1} s",
            i + 1,
            load.started.elapsed().as_secs_f64() - stopping.elapsed().as_secs_f64(),
            stopped.as_secs_f64(),
            stopping.elapsed().as_secs_f64()
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let rest = scale.load.saturating_sub(load.started.elapsed());
    tokio::time::sleep(rest).await;
    let report = load.stop().await;
    system.assert_running();
    let mut ledger = drain("rolling restart", &system, &settings, scale.drain).await;
    ledger.notes.push(load_note(&report, scale.rate));
    ledger.notes.extend(notes);
    // SystemSpec::default(): max_in_flight 2, max_users 100.
    let window = in_flight_window(system.destinations(), 2, 100);
    let duplicates: u64 = ledger.lines.iter().map(|l| l.duplicates).sum();
    ledger.notes.push(format!(
        "duplicates {duplicates}, bound: one in-flight window of one worker = {window} changes"
    ));
    assert_balanced(&ledger);
    assert!(
        duplicates <= window,
        "a rolling restart re-sent {duplicates} changes, more than one in-flight window ({window})\n{}",
        ledger.render()
    );
    ledger
}

/// Events the ingest API answered `202` that are not in the events `topic`: must be 0.
pub async fn lost_accepted(report: &LoadReport, settings: &KafkaSettings, topic: &str) -> usize {
    let accepted: HashSet<_> = report
        .requests
        .iter()
        .filter(|r| r.status == Some(202))
        .flat_map(|r| r.events.iter().cloned())
        .collect();
    let in_topic = events_in_topic(settings, topic).await;
    accepted.difference(&in_topic).count()
}

/// Every (user, trait, time) in the events topic.
async fn events_in_topic(settings: &KafkaSettings, topic: &str) -> HashSet<(String, u64, i64)> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut out = HashSet::new();
        settings
            .read_to_end(&topic, None, |message| {
                let event = TraitEvent::decode(message.payload().unwrap_or_default()).unwrap();
                if let Some(model::pb::trait_event::Event::TraitRealization(t)) = event.event {
                    out.insert((event.user_id, t.trait_id, t.time_unix_ms));
                }
            })
            .unwrap();
        out
    })
    .await
    .unwrap()
}

/// Scenario 1: the broker is stopped mid-load and started again; nothing is restarted.
pub async fn broker_down(broker: &ChaosBroker, scale: Scale) -> Ledger {
    let settings = broker.settings();
    let mut system = System::start(broker, "broker-down", &SystemSpec::default()).await;
    let load = Load::start(&system.launch.ingest, scale.rate, scale.users, 1);
    tokio::time::sleep(scale.load / 4).await;

    let stop_started = load.started.elapsed();
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.down()).await.unwrap();
    let down_at = Instant::now();
    tokio::time::sleep(scale.broker_down).await;
    let up_at = Instant::now();
    let b = broker.clone();
    tokio::task::spawn_blocking(move || b.up()).await.unwrap();
    let answering = up_at.elapsed();
    tokio::time::sleep(scale.load / 2).await;
    let report = load.stop().await;
    system.assert_running();

    // While the broker was down (with a second's grace for answers already on their way),
    // nothing may have been answered 202.
    let grace = down_at + Duration::from_secs(1);
    let accepted_while_down: Vec<_> = report
        .requests
        .iter()
        .filter(|r| r.status == Some(202) && r.answered_at > grace && r.answered_at < up_at)
        .collect();
    let refused = report
        .requests
        .iter()
        .filter(|r| r.status == Some(503) && r.answered_at > down_at)
        .count();
    let lost_202 = lost_accepted(&report, &settings, &system.launch.topics.events).await;

    let mut ledger = drain("broker down", &system, &settings, scale.drain).await;
    system.assert_running();
    ledger.notes.push(load_note(&report, scale.rate));
    ledger.notes.push(format!(
        "broker stopped at {:.1} s for {} s, answering again {:.1} s after its start; \
         503 answers after the stop: {refused}; 202 answers while down: {}; \
         events answered 202 but not in the topic: {lost_202}; no service restarted",
        stop_started.as_secs_f64(),
        scale.broker_down.as_secs(),
        answering.as_secs_f64(),
        accepted_while_down.len()
    ));
    assert!(
        accepted_while_down.is_empty(),
        "the ingest API answered 202 to {} requests while the broker was down",
        accepted_while_down.len()
    );
    assert!(
        refused > 0,
        "the ingest API never answered 503 while the broker was down"
    );
    assert_eq!(
        lost_202, 0,
        "{lost_202} events answered 202 are not in the events topic"
    );
    assert!(
        report.accepted().1 > 0
            && report
                .requests
                .last()
                .is_some_and(|r| r.status == Some(202)),
        "the ingest API did not accept events again after the broker came back: {}",
        report.summary()
    );
    assert_balanced(&ledger);
    ledger
}

/// Resident set size and its peak (kB) of a process, from `/proc/<pid>/status`.
pub fn rss_kb(pid: u32) -> Option<(u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Scenario 3: the faulty partner answers every request after 2.5 s; delivery has small
/// queues. Memory must stay bounded while the lag grows, and everything arrives after.
pub async fn slow_partner(broker: &ChaosBroker, scale: Scale) -> Ledger {
    /// The most a delivery worker may take; its steady state is well under 100 MiB.
    const RSS_BUDGET_KB: u64 = 256 * 1024;
    let settings = broker.settings();
    let spec = SystemSpec {
        faulty_behaviour: "{ latency_ms: [2500, 2500] }".to_owned(),
        delivery_defaults: "{ batch: { max_users: 50, linger_ms: 100 }, max_in_flight: 2, \
                            queue_capacity: 100, retry_backoff_ms: 100, \
                            circuit: { failure_threshold: 5, cooldown_ms: 2000 } }"
            .to_owned(),
        ..SystemSpec::default()
    };
    // The slow partner takes ~75 changes/s through two workers: a rate that outruns it
    // without a backlog that takes minutes to drain.
    let rate = scale.rate.min(150);
    let mut system = System::start(broker, "slow", &spec).await;
    let pids: Vec<u32> = system.workers.iter().filter_map(Service::pid).collect();
    let rss_at_start: u64 = pids
        .iter()
        .filter_map(|&p| rss_kb(p))
        .map(|r| r.0)
        .max()
        .unwrap_or(0);
    let load = Load::start(&system.launch.ingest, rate, scale.users, 3);
    let faulty_depth = format!("delivery_queue_depth{{destination=\"{}\"}}", FAULTY_ID);
    let (mut peak_lag, mut peak_depth) = (0.0_f64, 0.0_f64);
    while load.started.elapsed() < scale.load {
        let mut lag = 0.0;
        for worker in &system.workers {
            let text = reqwest::get(worker.admin_url("/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            lag += metric_value(&text, "delivery_consumer_lag").unwrap_or(0.0);
            // Behind the partition ends, or (the destination detached) behind on its own.
            lag += metric_value(&text, "delivery_backlog_messages").unwrap_or(0.0);
            peak_depth = peak_depth.max(metric_value(&text, &faulty_depth).unwrap_or(0.0));
        }
        peak_lag = peak_lag.max(lag);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let report = load.stop().await;
    let ledger_started = Instant::now();
    let mut ledger = drain("slow partner", &system, &settings, scale.drain).await;
    system.assert_running();
    let peak_rss = pids
        .iter()
        .filter_map(|&p| rss_kb(p))
        .map(|r| r.1)
        .max()
        .unwrap_or(0);
    ledger.notes.push(load_note(&report, rate));
    ledger.notes.push(format!(
        "{} {} answers in 2.5 s; queue_capacity 100, max_in_flight 2, max_users 50: \
         peak consumer lag + backlog {peak_lag:.0} messages, peak queue depth {peak_depth:.0} changes, \
         drained {:.0} s after the load; delivery RSS {} MiB at start, peak {} MiB (VmHWM; budget {} MiB)",
        FAULTY_ID,
        FAULTY_PATH,
        ledger_started.elapsed().as_secs_f64(),
        rss_at_start / 1024,
        peak_rss / 1024,
        RSS_BUDGET_KB / 1024
    ));
    assert_balanced(&ledger);
    assert!(
        peak_lag > 0.0,
        "the slow partner never made delivery fall behind (peak lag 0): the scenario proves nothing"
    );
    assert!(
        peak_rss > 0 && peak_rss <= RSS_BUDGET_KB,
        "delivery's peak RSS {peak_rss} kB is over the {RSS_BUDGET_KB} kB budget"
    );
    ledger
}
