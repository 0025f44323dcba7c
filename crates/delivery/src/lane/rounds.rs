//! The rounds of attempts at one batch that fails transiently: what its failures add up to,
//! and how long the lane waits before the next round.

use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::Backoff;
use crate::sender::{Failure, jittered};

/// One batch's rounds. The wait between them is a capped exponential backoff, jittered, unless
/// the round's failure names its own end (a `Retry-After`, the circuit's cool-down).
///
/// The backoff doubles only after a round that sent requests of its own. A round the circuit
/// turned away (its cool-down, or another lane's probe in flight) learned nothing new about the
/// partner, and the circuit already paces those: doubling on them let an outage of a few
/// probes grow every waiting lane's backoff to its cap, so the first failed request after the
/// partner came back waited up to 1.5 × `backoff.max`. When the destination recovers (its
/// circuit closes) the backoff starts again from `backoff.initial`: the outage it grew in is
/// over.
#[derive(Debug)]
pub(super) struct Rounds {
    config: Backoff,
    /// The backoff the next failed round waits (jittered).
    backoff: Duration,
    /// The attempts of the rounds so far and when the first was made.
    earlier: Option<(u32, i64)>,
    /// Changes each time the destination recovers (`DestinationSender::recoveries`).
    recoveries: watch::Receiver<u64>,
}

impl Rounds {
    pub(super) fn new(config: Backoff, recoveries: watch::Receiver<u64>) -> Self {
        Self {
            config,
            backoff: config.initial,
            earlier: None,
            recoveries,
        }
    }

    /// The attempts made in earlier rounds: the delivery log numbers this round's after them.
    pub(super) fn earlier_attempts(&self) -> u32 {
        self.earlier.map_or(0, |(attempts, _)| attempts)
    }

    /// Takes a failed round's `failure` and returns it counting the attempts of every round
    /// since the first (what the dead letter and the log record say), with the wait before
    /// the next round.
    pub(super) fn failed(&mut self, mut failure: Failure) -> (Failure, Duration) {
        let sent = failure.attempts > 0;
        if let Some((attempts, first_unix_ms)) = self.earlier {
            failure.attempts += attempts;
            failure.first_attempt_unix_ms = first_unix_ms;
        }
        self.earlier = Some((failure.attempts, failure.first_attempt_unix_ms));
        let wait = failure.not_before.map_or_else(
            || jittered(self.backoff),
            |t| t.saturating_duration_since(Instant::now()),
        );
        if sent {
            self.backoff = (self.backoff * 2).min(self.config.max);
        }
        (failure, wait)
    }

    /// Waits `wait`, or until the destination recovers (it may have while the round was
    /// sent): then the next round goes at once, and the backoff starts again from
    /// `backoff.initial`.
    pub(super) async fn wait(&mut self, wait: Duration) {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            // An error only once the sender is gone, which this lane holds: not a recovery.
            Ok(()) = self.recoveries.changed() => self.backoff = self.config.initial,
        }
    }
}

#[cfg(test)]
mod tests;
