//! Cuts off a destination that keeps failing: after `failure_threshold` failed batches in a
//! row no request is sent for `cooldown` (the batches wait; see `lane`); then one probe batch
//! is let through, and its outcome closes the circuit or opens it again.

use std::sync::{Mutex, PoisonError};

use prometheus::IntGauge;
use tokio::time::Instant;

use crate::config::CircuitConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// The cool-down passed and one probe batch is on its way.
    Probing,
}

#[derive(Debug)]
pub struct Circuit {
    config: CircuitConfig,
    state: Mutex<State>,
    open_gauge: IntGauge,
}

impl Circuit {
    pub fn new(config: CircuitConfig, open_gauge: IntGauge) -> Self {
        open_gauge.set(0);
        Self {
            config,
            state: Mutex::new(State::Closed {
                consecutive_failures: 0,
            }),
            open_gauge,
        }
    }

    /// Whether a batch may be sent now (when it may, its outcome must be recorded).
    pub fn allow(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        match *state {
            State::Closed { .. } => true,
            State::Open { until } if Instant::now() >= until => {
                *state = State::Probing;
                true
            }
            State::Open { .. } | State::Probing => false,
        }
    }

    /// When the next probe may go, while the circuit is open.
    pub fn open_until(&self) -> Option<Instant> {
        match *self.state.lock().unwrap_or_else(PoisonError::into_inner) {
            State::Open { until } => Some(until),
            State::Closed { .. } | State::Probing => None,
        }
    }

    /// Returns true when this success closed an open circuit.
    pub fn record_success(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let was_open = !matches!(*state, State::Closed { .. });
        *state = State::Closed {
            consecutive_failures: 0,
        };
        self.open_gauge.set(0);
        was_open
    }

    /// Returns true when this failure opened the circuit.
    pub fn record_failure(&self) -> bool {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let open = match *state {
            State::Closed {
                consecutive_failures,
            } => {
                let failures = consecutive_failures + 1;
                if failures < self.config.failure_threshold {
                    *state = State::Closed {
                        consecutive_failures: failures,
                    };
                    return false;
                }
                true
            }
            State::Probing => true,
            State::Open { .. } => false,
        };
        if open {
            *state = State::Open {
                until: Instant::now() + self.config.cooldown,
            };
            self.open_gauge.set(1);
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_the_threshold_probes_after_cooldown_and_closes_on_success() {
        let gauge = IntGauge::new("g", "g").unwrap();
        let circuit = Circuit::new(
            CircuitConfig {
                failure_threshold: 3,
                cooldown: Duration::from_secs(30),
            },
            gauge.clone(),
        );
        assert!(circuit.allow());
        assert!(!circuit.record_failure());
        assert!(!circuit.record_failure());
        circuit.record_success();
        assert!(
            !circuit.record_failure() && !circuit.record_failure(),
            "a success resets the count"
        );
        assert!(circuit.record_failure(), "third failure in a row opens");
        assert_eq!(gauge.get(), 1);
        assert!(!circuit.allow());

        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(circuit.allow(), "one probe after the cool-down");
        assert!(!circuit.allow(), "only one");
        assert!(circuit.record_failure(), "a failed probe opens it again");
        assert!(!circuit.allow());

        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(circuit.allow());
        assert!(circuit.record_success(), "a good probe closes it");
        assert_eq!(gauge.get(), 0);
        assert!(circuit.allow() && circuit.allow());
    }
}
