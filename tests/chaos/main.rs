//! Chaos runs with exact accounting (issues 8 and 18): the real binaries on Kafka of their own
//! — a single node (`127.0.0.1:29092`, state in `.kafka-chaos/`) and a three-node cluster
//! (`127.0.0.1:29192,29194,29196`, state in `.kafka-chaos-cluster/`), started and stopped here
//! with `deploy/local/kafka.sh` — a real HTTPS partner (partner-sim), traffic through the
//! ingest API, and one fault per scenario. Each scenario prints its ledger (see `ledger.rs`);
//! all ledgers of a run also go to `target/chaos-ledger.txt`.
//!
//! ```sh
//! cargo test -p segment-relay-e2e --test chaos                      # short form (make test)
//! CHAOS_SCALE=long cargo test -p segment-relay-e2e --test chaos     # long form (make chaos)
//! cargo test -p segment-relay-e2e --test chaos -- partner_outage    # scenarios whose name contains an argument
//! ```
//!
//! The scenarios run one after another (they stop brokers), with their own harness
//! (`harness = false`): it starts the single node for the scenarios that need it, then the
//! cluster for the cluster scenarios (never both at once), always stops them, and fails the run
//! if a process it started is left behind. The short form runs one cluster scenario
//! (`cluster_leader_kill`) and says which it leaves to the long form. `CHAOS_KAFKA_PORT` moves
//! the single node (default 29092; the controller uses the next port), `CHAOS_CLUSTER_PORT` the
//! cluster (default 29192).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // Test code: a panic is the failure report.

mod broker;
mod cluster;
mod isolation;
mod ledger;
mod load;
mod proxy;
mod scenarios;
mod system;

use std::future::Future;
use std::pin::Pin;
use std::process::ExitCode;
use std::time::Instant;

use broker::ChaosBroker;
use cluster::ClusterFault;
use ledger::Ledger;
use scenarios::Scale;

type Scenario = fn(&'static ChaosBroker, Scale) -> Pin<Box<dyn Future<Output = Ledger> + Send>>;

/// The Kafka a scenario runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// One node: everything of issue 8.
    Node,
    /// The three-node cluster (issue 18).
    Cluster,
}

/// A scenario: name (what the filters match), what it proves, its Kafka, whether the short
/// form runs it, and the run.
type Entry = (&'static str, &'static str, On, bool, Scenario);

/// In the order they run: the single node's (the broker-down scenario last but one, so a
/// broker that does not come back fails as few others as possible), then the cluster's.
const SCENARIOS: [Entry; 16] = [
    (
        "isolation_unavailable",
        "2a. one partner answers 503: the others keep rate and p99, its changes wait in Kafka, it catches up by itself",
        On::Node,
        true,
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Unavailable, 0)),
    ),
    (
        "isolation_hang",
        "2b. one partner never answers within the timeout: the same",
        On::Node,
        true,
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Hang, 0)),
    ),
    (
        "isolation_slow",
        "2c. one partner answers just under the timeout: the same",
        On::Node,
        true,
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Slow, 0)),
    ),
    (
        "isolation_rate_limited",
        "2d. one partner answers 429 with Retry-After: the same",
        On::Node,
        true,
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::RateLimited, 0)),
    ),
    (
        "isolation_tls_failure",
        "2e. one partner's TLS handshake fails: the same",
        On::Node,
        true,
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::TlsFailure, 0)),
    ),
    (
        "isolation_refused",
        "2f. one partner refuses connections: the same",
        On::Node,
        true,
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Refused, 0)),
    ),
    (
        "isolation_one_of_20",
        "2g. one partner of 20 answers 503: the 19 others keep rate and p99, its changes wait in Kafka, it catches up by itself",
        On::Node,
        true,
        |b, s| {
            Box::pin(isolation::isolation(
                b,
                s,
                isolation::Fault::Unavailable,
                17,
            ))
        },
    ),
    (
        "kill_9",
        "4. kill -9 of the qualifier, then of one of two delivery workers, restarted: balanced, exactly-once output",
        On::Node,
        true,
        |b, s| Box::pin(scenarios::kill_9(b, s)),
    ),
    (
        "rolling_restart",
        "5. rolling restart of two delivery workers: zero missing, duplicates within one in-flight window",
        On::Node,
        true,
        |b, s| Box::pin(scenarios::rolling_restart(b, s)),
    ),
    (
        "broker_down",
        "1. broker down mid-load: 503 never 202, services reconnect on their own, balanced",
        On::Node,
        true,
        |b, s| Box::pin(scenarios::broker_down(b, s)),
    ),
    (
        "slow_partner",
        "3. slow partner with small queues: bounded memory, lag grows then drains, nothing dropped",
        On::Node,
        true,
        |b, s| Box::pin(scenarios::slow_partner(b, s)),
    ),
    (
        "cluster_leader_kill",
        "C1. three nodes: kill -9 of the node leading most partitions, back after 30 s: output equal to an uninterrupted run, ledger balanced",
        On::Cluster,
        true,
        |b, s| Box::pin(cluster::cluster_fault(b, s, ClusterFault::LeaderKill)),
    ),
    (
        "cluster_coordinator_kill",
        "C2. three nodes: kill -9 of the qualifier's transaction coordinator mid-transaction, back after 30 s: the same",
        On::Cluster,
        false,
        |b, s| Box::pin(cluster::cluster_fault(b, s, ClusterFault::CoordinatorKill)),
    ),
    (
        "cluster_rolling_restart",
        "C3. three nodes: rolling restart, one node at a time: the same",
        On::Cluster,
        false,
        |b, s| Box::pin(cluster::cluster_fault(b, s, ClusterFault::RollingRestart)),
    ),
    (
        "cluster_stall",
        "C4. three nodes: SIGSTOP of the node leading most partitions for 30 s, then SIGCONT: the same",
        On::Cluster,
        false,
        |b, s| Box::pin(cluster::cluster_fault(b, s, ClusterFault::Stall)),
    ),
    (
        "cluster_two_down",
        "C5. three nodes: two down at once for 20 s (below min.insync.replicas): ingest answers 503, nothing accepted is lost, all resumes",
        On::Cluster,
        false,
        |b, s| Box::pin(cluster::cluster_fault(b, s, ClusterFault::TwoDown)),
    ),
];

/// Child processes of this process that are still running (not zombies).
fn live_children() -> Vec<String> {
    let me = std::process::id().to_string();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| {
            let pid = e.ok()?.file_name().into_string().ok()?;
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // pid (comm) state ppid …
            let after = stat.rsplit_once(')')?.1;
            let mut fields = after.split_whitespace();
            let state = fields.next()?;
            let ppid = fields.next()?;
            (ppid == me && state != "Z").then(|| {
                let comm = stat
                    .split_once('(')
                    .and_then(|(_, r)| r.rsplit_once(')'))
                    .map(|(c, _)| c.to_owned());
                format!("{pid} ({})", comm.unwrap_or_default())
            })
        })
        .collect()
}

/// Waits (up to 5 s) for the processes of a finished scenario to be reaped; the names of
/// those left.
async fn leftovers() -> Vec<String> {
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let left = live_children();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

fn panic_message(error: tokio::task::JoinError) -> String {
    match error.try_into_panic() {
        Ok(payload) => payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "a panic without a message".to_owned()),
        Err(error) => error.to_string(),
    }
}

async fn run(filters: Vec<String>) -> ExitCode {
    let scale = Scale::from_env();
    let matching: Vec<&Entry> = SCENARIOS
        .iter()
        .filter(|(name, ..)| {
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .collect();
    if matching.is_empty() {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, ..)| *name).collect();
        println!("chaos: FAILED: no scenario matches {filters:?}; the scenarios are {names:?}");
        return ExitCode::FAILURE;
    }
    // The short form leaves the slower cluster scenarios to the long one, saying so; a
    // scenario named by a filter always runs.
    let (chosen, left): (Vec<&Entry>, Vec<&Entry>) = matching
        .into_iter()
        .partition(|(_, _, _, short, _)| *short || scale.name == "long" || !filters.is_empty());
    if !left.is_empty() {
        let names: Vec<&str> = left.iter().map(|(name, ..)| *name).collect();
        println!(
            "chaos: {} scale: not run here, only in the long form (make chaos) or when named: {names:?}",
            scale.name
        );
    }
    println!("chaos: {} scale, {} scenario(s)", scale.name, chosen.len());
    let started = Instant::now();
    let mut report = format!(
        "chaos run, {} scale, {}\n\n",
        scale.name,
        load::rfc3339(telemetry::clock::unix_ms())
    );
    let mut failures = Vec::new();
    for (on, broker) in [
        (On::Node, ChaosBroker::from_env()),
        (On::Cluster, ChaosBroker::cluster_from_env()),
    ] {
        let these: Vec<&Entry> = chosen.iter().copied().filter(|e| e.2 == on).collect();
        if these.is_empty() {
            continue;
        }
        let broker: &'static ChaosBroker = Box::leak(Box::new(broker));
        println!(
            "chaos: starting Kafka for {on:?} scenarios on {}",
            broker.brokers()
        );
        if let Err(e) = tokio::task::spawn_blocking(|| broker.start_empty()).await {
            broker.down_quietly();
            println!("chaos: FAILED: {}", panic_message(e));
            return ExitCode::FAILURE;
        }
        for (name, what, _, _, scenario) in these {
            println!("\nchaos: scenario {name} — {what}");
            let began = Instant::now();
            let outcome = tokio::spawn(scenario(broker, scale)).await;
            let took = began.elapsed().as_secs_f64();
            let left = leftovers().await;
            match outcome {
                Ok(ledger) => {
                    println!(
                        "{}chaos: scenario {name}: ok ({took:.0} s)",
                        ledger.render()
                    );
                    report.push_str(&format!(
                        "{name} ({what}): ok, {took:.0} s\n{}\n",
                        ledger.render()
                    ));
                }
                Err(e) => {
                    let message = panic_message(e);
                    println!("chaos: scenario {name}: FAILED ({took:.0} s): {message}");
                    report.push_str(&format!(
                        "{name} ({what}): FAILED, {took:.0} s\n{message}\n\n"
                    ));
                    failures.push((*name).to_owned());
                }
            }
            if !left.is_empty() {
                println!("chaos: scenario {name} left processes running: {left:?}");
                failures.push(format!("{name} (left processes running: {left:?})"));
            }
        }
        tokio::task::spawn_blocking(|| broker.down_quietly())
            .await
            .unwrap();
    }
    let path = testkit::service::target_profile_dir()
        .parent()
        .unwrap()
        .join("chaos-ledger.txt");
    report.push_str(&format!("total {:.0} s\n", started.elapsed().as_secs_f64()));
    if let Err(e) = std::fs::write(&path, &report) {
        println!("chaos: cannot write {}: {e}", path.display());
    }
    println!(
        "\nchaos: {} in {:.0} s; ledgers in {}",
        if failures.is_empty() {
            "all scenarios passed".to_owned()
        } else {
            format!("FAILED: {}", failures.join(", "))
        },
        started.elapsed().as_secs_f64(),
        path.display()
    );
    if failures.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn main() -> ExitCode {
    // `cargo test` passes its own flags (`--nocapture`, `--test-threads`, …); output is never
    // captured here. Other arguments select scenarios by name.
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        for (name, ..) in SCENARIOS {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let filters = args.into_iter().filter(|a| !a.starts_with('-')).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        tokio::select! {
            code = run(filters) => code,
            _ = interrupted() => {
                // Dropping the run kills the services (kill_on_drop); the brokers are ours to stop.
                println!("chaos: interrupted; stopping the chaos brokers");
                ChaosBroker::from_env().down_quietly();
                ChaosBroker::cluster_from_env().down_quietly();
                ExitCode::from(130)
            }
        }
    })
}

async fn interrupted() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).unwrap();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
