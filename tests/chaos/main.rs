//! Chaos runs with exact accounting (issue 8): the real binaries on a broker of their own
//! (`127.0.0.1:29092`, state in `.kafka-chaos/`, started and stopped here with
//! `deploy/local/kafka.sh`), a real HTTPS partner (partner-sim), traffic through the ingest
//! API, and one fault per scenario. Each scenario prints its ledger (see `ledger.rs`); all
//! ledgers of a run also go to `target/chaos-ledger.txt`.
//!
//! ```sh
//! cargo test -p segment-relay-e2e --test chaos                      # short form (make test)
//! CHAOS_SCALE=long cargo test -p segment-relay-e2e --test chaos     # long form (make chaos)
//! cargo test -p segment-relay-e2e --test chaos -- partner_outage    # scenarios whose name contains an argument
//! ```
//!
//! The scenarios run one after another (one of them stops the broker), with their own harness
//! (`harness = false`): it starts the broker once, always stops it, and fails the run if a
//! process it started is left behind. `CHAOS_KAFKA_PORT` moves the broker (default 29092; the
//! controller uses the next port).

#![allow(clippy::unwrap_used, clippy::missing_panics_doc)] // Test code: a panic is the failure report.

mod broker;
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
use ledger::Ledger;
use scenarios::Scale;

type Scenario = fn(&'static ChaosBroker, Scale) -> Pin<Box<dyn Future<Output = Ledger> + Send>>;

/// In the order they run: the broker-down scenario last but one, so a broker that does not
/// come back fails as few others as possible.
const SCENARIOS: [(&str, &str, Scenario); 11] = [
    (
        "isolation_unavailable",
        "2a. one partner answers 503: the others keep rate and p99, its changes wait in Kafka, it catches up by itself",
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Unavailable, 0)),
    ),
    (
        "isolation_hang",
        "2b. one partner never answers within the timeout: the same",
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Hang, 0)),
    ),
    (
        "isolation_slow",
        "2c. one partner answers just under the timeout: the same",
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Slow, 0)),
    ),
    (
        "isolation_rate_limited",
        "2d. one partner answers 429 with Retry-After: the same",
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::RateLimited, 0)),
    ),
    (
        "isolation_tls_failure",
        "2e. one partner's TLS handshake fails: the same",
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::TlsFailure, 0)),
    ),
    (
        "isolation_refused",
        "2f. one partner refuses connections: the same",
        |b, s| Box::pin(isolation::isolation(b, s, isolation::Fault::Refused, 0)),
    ),
    (
        "isolation_one_of_20",
        "2g. one partner of 20 answers 503: the 19 others keep rate and p99, its changes wait in Kafka, it catches up by itself",
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
        |b, s| Box::pin(scenarios::kill_9(b, s)),
    ),
    (
        "rolling_restart",
        "5. rolling restart of two delivery workers: zero missing, duplicates within one in-flight window",
        |b, s| Box::pin(scenarios::rolling_restart(b, s)),
    ),
    (
        "broker_down",
        "1. broker down mid-load: 503 never 202, services reconnect on their own, balanced",
        |b, s| Box::pin(scenarios::broker_down(b, s)),
    ),
    (
        "slow_partner",
        "3. slow partner with small queues: bounded memory, lag grows then drains, nothing dropped",
        |b, s| Box::pin(scenarios::slow_partner(b, s)),
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
    let chosen: Vec<_> = SCENARIOS
        .iter()
        .filter(|(name, _, _)| {
            filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()))
        })
        .collect();
    if chosen.is_empty() {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _, _)| *name).collect();
        println!("chaos: FAILED: no scenario matches {filters:?}; the scenarios are {names:?}");
        return ExitCode::FAILURE;
    }
    let broker: &'static ChaosBroker = Box::leak(Box::new(ChaosBroker::from_env()));
    println!(
        "chaos: {} scale, {} scenario(s); starting the chaos broker on {}",
        scale.name,
        chosen.len(),
        broker.brokers()
    );
    let started = Instant::now();
    if let Err(e) = tokio::task::spawn_blocking(|| broker.up()).await {
        broker.down_quietly();
        println!("chaos: FAILED: {}", panic_message(e));
        return ExitCode::FAILURE;
    }
    let mut report = format!(
        "chaos run, {} scale, {}\n\n",
        scale.name,
        load::rfc3339(load::unix_ms())
    );
    let mut failures = Vec::new();
    for (name, what, scenario) in chosen {
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
        for (name, _, _) in SCENARIOS {
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
                // Dropping the run kills the services (kill_on_drop); the broker is ours to stop.
                println!("chaos: interrupted; stopping the chaos broker");
                ChaosBroker::from_env().down_quietly();
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
