//! The test harness for segment-relay's integration and end-to-end tests.
//!
//! - [`kafka`]: the real broker (a test fails loudly when there is none), and topics and
//!   consumer groups unique to each test, so tests run in parallel without seeing each other.
//! - [`service`]: run a service binary with a config, wait for `/readyz`, scrape `/metrics`,
//!   stop it with SIGTERM or `kill -9`.
//! - [`receiver`]: a real HTTPS endpoint (certificates made at test time) that records every
//!   request and whose status and delay can change during a test.
//! - [`scrape`]: the one Prometheus-text parser: select, sum, histogram quantiles (also
//!   `relay-bench metrics`, which bench.sh and demo.sh call).
//! - [`fuzz`]: proptest fuzzing seeded from committed corpora; `FUZZ_CASES` selects the long
//!   run.
//! - [`ledger`]: the exact ledger of a run — every committed change delivered,
//!   dead-lettered or reported coalesced, else missing (also the `relay-ledger` command).
//! - [`wait_until`], [`wait_for`]: wait on a condition with a deadline instead of sleeping.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

pub mod fuzz;
pub mod kafka;
pub mod ledger;
pub mod receiver;
pub mod scrape;
pub mod service;

use std::time::{Duration, Instant};

/// Polls `check` every 50 ms until it returns true; panics naming `what` after `timeout`.
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(what, timeout, &mut check, |&done| done).await;
}

/// Polls `probe` every 50 ms until `done` holds for its value, and returns that value; after
/// `timeout`, panics naming `what` and the last value seen.
pub async fn wait_for<T, F, Fut>(
    what: &str,
    timeout: Duration,
    mut probe: F,
    done: impl Fn(&T) -> bool,
) -> T
where
    T: std::fmt::Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = T>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let value = probe().await;
        if done(&value) {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}; last seen: {value:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A name no other test (in this run or an earlier one against the same broker) uses.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!(
        "{prefix}-{}-{}-{nanos:x}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
