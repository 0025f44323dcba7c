//! A destination's tunable keys (timeouts, retries, batching, lanes, circuit): its own
//! value, else `defaults:`'s, else the built-in default, each checked against its range.

use std::time::Duration;

use super::raw::{RawBackoff, RawBatch, RawCircuit, RawTuning};
use super::{Backoff, BatchLimits, CircuitConfig, Problems};

pub(super) struct Tuning {
    pub(super) timeout: Duration,
    pub(super) retries: u32,
    pub(super) retry_backoff: Duration,
    pub(super) success_codes: Vec<u16>,
    pub(super) permanent_codes: Vec<u16>,
    pub(super) backoff: Backoff,
    pub(super) max_backlog_age: Duration,
    pub(super) batch: BatchLimits,
    pub(super) max_in_flight: usize,
    pub(super) queue_capacity: usize,
    pub(super) detach_after: Duration,
    pub(super) circuit: CircuitConfig,
    pub(super) delivery_log: bool,
}

/// `value` of `key`, with a problem added when it is outside `range` (`unit` follows the
/// bounds in the message, e.g. `" ms"`).
pub(super) fn checked_range(
    problems: &mut Problems,
    key: &str,
    value: u64,
    range: std::ops::RangeInclusive<u64>,
    unit: &str,
) -> u64 {
    if !range.contains(&value) {
        problems.add(
            key,
            format!(
                "must be between {} and {}{unit}, got {value}",
                range.start(),
                range.end()
            ),
        );
    }
    value
}

/// A destination's value for a tunable key, else `defaults:`'s, else the built-in default.
pub(super) fn validate_tuning(
    key: &str,
    own: &RawTuning,
    defaults: &RawTuning,
    problems: &mut Problems,
) -> Tuning {
    let batch = |f: fn(&RawBatch) -> Option<u64>| {
        own.batch
            .as_ref()
            .and_then(f)
            .or_else(|| defaults.batch.as_ref().and_then(f))
    };
    let backoff = |f: fn(&RawBackoff) -> Option<u64>| {
        own.backoff
            .as_ref()
            .and_then(f)
            .or_else(|| defaults.backoff.as_ref().and_then(f))
    };
    let circuit = |f: fn(&RawCircuit) -> Option<u64>| {
        own.circuit
            .as_ref()
            .and_then(f)
            .or_else(|| defaults.circuit.as_ref().and_then(f))
    };
    let mut in_range =
        |name: &str, value: u64, range: std::ops::RangeInclusive<u64>, unit: &str| {
            checked_range(problems, &format!("{key}.{name}"), value, range, unit)
        };

    let timeout_ms = in_range(
        "timeout_ms",
        own.timeout_ms.or(defaults.timeout_ms).unwrap_or(3_000),
        1..=600_000,
        " ms",
    );
    let retries = in_range(
        "retries",
        own.retries.or(defaults.retries).unwrap_or(1).into(),
        0..=10,
        "",
    );
    let retry_backoff_ms = in_range(
        "retry_backoff_ms",
        own.retry_backoff_ms
            .or(defaults.retry_backoff_ms)
            .unwrap_or(200),
        0..=60_000,
        " ms",
    );
    let backoff_initial_ms = in_range(
        "backoff.initial_ms",
        backoff(|b| b.initial_ms).unwrap_or(1_000),
        1..=600_000,
        " ms",
    );
    let backoff_max_ms = in_range(
        "backoff.max_ms",
        backoff(|b| b.max_ms).unwrap_or(60_000),
        1..=3_600_000,
        " ms",
    );
    let max_backlog_age_s = in_range(
        "max_backlog_age_s",
        own.max_backlog_age_s
            .or(defaults.max_backlog_age_s)
            .unwrap_or(3 * 86_400),
        1..=30 * 86_400,
        " s",
    );
    let max_users = in_range(
        "batch.max_users",
        batch(|b| b.max_users.map(|v| v as u64)).unwrap_or(1_000),
        1..=100_000,
        "",
    );
    let max_bytes = in_range(
        "batch.max_bytes",
        batch(|b| b.max_bytes.map(|v| v as u64)).unwrap_or(1 << 20),
        1_024..=(64 << 20),
        " bytes",
    );
    let linger_ms = in_range(
        "batch.linger_ms",
        batch(|b| b.linger_ms).unwrap_or(250),
        0..=60_000,
        " ms",
    );
    let max_in_flight = in_range(
        "max_in_flight",
        own.max_in_flight.or(defaults.max_in_flight).unwrap_or(4) as u64,
        1..=256,
        "",
    );
    let queue_capacity = in_range(
        "queue_capacity",
        own.queue_capacity
            .or(defaults.queue_capacity)
            .unwrap_or(2_000) as u64,
        1..=10_000_000,
        "",
    );
    let detach_after_ms = in_range(
        "detach_after_ms",
        own.detach_after_ms
            .or(defaults.detach_after_ms)
            .unwrap_or(250),
        0..=60_000,
        " ms",
    );
    let failure_threshold = in_range(
        "circuit.failure_threshold",
        circuit(|c| c.failure_threshold.map(u64::from)).unwrap_or(5),
        1..=1_000_000,
        "",
    );
    let cooldown_ms = in_range(
        "circuit.cooldown_ms",
        circuit(|c| c.cooldown_ms).unwrap_or(30_000),
        1..=3_600_000,
        " ms",
    );

    let success_codes = own
        .success_codes
        .clone()
        .or_else(|| defaults.success_codes.clone())
        .unwrap_or_else(|| vec![200]);
    if success_codes.is_empty() || success_codes.iter().any(|c| !(100..=599).contains(c)) {
        problems.add(
            &format!("{key}.success_codes"),
            format!("must list HTTP statuses (100–599), e.g. `[200]`; got {success_codes:?}"),
        );
    }

    if backoff_max_ms < backoff_initial_ms {
        problems.add(
            &format!("{key}.backoff.max_ms"),
            format!(
                "must be at least backoff.initial_ms ({backoff_initial_ms}), got {backoff_max_ms}"
            ),
        );
    }
    let permanent_codes = own
        .permanent_codes
        .clone()
        .or_else(|| defaults.permanent_codes.clone())
        .unwrap_or_else(|| vec![400, 413, 422]);
    if permanent_codes.iter().any(|c| !(100..=599).contains(c)) {
        problems.add(
            &format!("{key}.permanent_codes"),
            format!(
                "must list HTTP statuses (100–599), e.g. `[400, 413, 422]`; got {permanent_codes:?}"
            ),
        );
    }
    if let Some(code) = permanent_codes.iter().find(|c| success_codes.contains(c)) {
        problems.add(
            &format!("{key}.permanent_codes"),
            format!(
                "{code} is also a success code: a status is either success or permanent failure"
            ),
        );
    }
    if permanent_codes.contains(&429) {
        problems.add(
            &format!("{key}.permanent_codes"),
            "429 cannot be permanent: it asks to retry later (Retry-After is honoured)",
        );
    }

    Tuning {
        timeout: Duration::from_millis(timeout_ms),
        retries: u32::try_from(retries).unwrap_or(1),
        retry_backoff: Duration::from_millis(retry_backoff_ms),
        success_codes,
        permanent_codes,
        backoff: Backoff {
            initial: Duration::from_millis(backoff_initial_ms),
            max: Duration::from_millis(backoff_max_ms),
        },
        max_backlog_age: Duration::from_secs(max_backlog_age_s),
        batch: BatchLimits {
            max_users: usize::try_from(max_users).unwrap_or(1_000),
            max_bytes: usize::try_from(max_bytes).unwrap_or(1 << 20),
            linger: Duration::from_millis(linger_ms),
        },
        max_in_flight: usize::try_from(max_in_flight).unwrap_or(4),
        queue_capacity: usize::try_from(queue_capacity).unwrap_or(2_000),
        detach_after: Duration::from_millis(detach_after_ms),
        circuit: CircuitConfig {
            failure_threshold: u32::try_from(failure_threshold).unwrap_or(5),
            cooldown: Duration::from_millis(cooldown_ms),
        },
        delivery_log: own.delivery_log.or(defaults.delivery_log).unwrap_or(true),
    }
}
