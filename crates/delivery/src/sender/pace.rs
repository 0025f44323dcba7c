//! A destination's pace: its share of `rate_limit_rps` (real time first, the batch lane only
//! while no real-time send waits for a token) and the pauses a partner asks for (429 with
//! `Retry-After`).

use std::sync::Arc;
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::{DestinationSender, Priority};

/// Counts a real-time send as waiting for a token while it lives.
struct RealTimeWaiting<'a>(&'a DestinationSender);

impl<'a> RealTimeWaiting<'a> {
    fn enter(sender: &'a DestinationSender) -> Self {
        sender
            .real_time_waiting
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(sender)
    }
}

impl Drop for RealTimeWaiting<'_> {
    fn drop(&mut self) {
        let left = self
            .0
            .real_time_waiting
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        if left == 1 {
            self.0.real_time_served.notify_waiters();
        }
    }
}

impl DestinationSender {
    /// Waits for a rate-limit token: a real-time send in turn, a batch send only at a moment
    /// when no real-time send is waiting (it checks without queueing, so it never holds a
    /// place ahead of real time).
    pub(super) async fn take_token(&self, limiter: &DefaultDirectRateLimiter, priority: Priority) {
        if priority == Priority::RealTime {
            let _waiting = RealTimeWaiting::enter(self);
            limiter.until_ready().await;
            return;
        }
        loop {
            // Registered before the check, so a wake-up between the two is not missed.
            let served = self.real_time_served.notified();
            if self
                .real_time_waiting
                .load(std::sync::atomic::Ordering::Acquire)
                > 0
            {
                served.await;
                continue;
            }
            match limiter.check() {
                Ok(()) => return,
                Err(not_until) => {
                    let now =
                        governor::clock::Clock::now(&governor::clock::DefaultClock::default());
                    tokio::time::sleep(not_until.wait_time_from(now)).await;
                }
            }
        }
    }

    /// Takes this worker's share of the destination's `rate_limit_rps`: `owned` of the
    /// real-time input's `total` partitions (at least one request per second), so N workers
    /// together keep to the figure. No-op without a rate limit.
    pub fn set_rate_share(&self, owned: usize, total: usize) {
        let Some(rps) = self.config.rate_limit_rps else {
            return;
        };
        let share = if total == 0 {
            rps.get()
        } else {
            let share = u64::from(rps.get()) * owned as u64;
            u32::try_from(share.div_ceil(total as u64)).unwrap_or(u32::MAX)
        };
        let share = std::num::NonZeroU32::new(share).unwrap_or(std::num::NonZeroU32::MIN);
        tracing::info!(
            destination = self.config.id,
            rate_limit_rps = rps.get(),
            share = share.get(),
            owned,
            total,
            "Rate limit shared by owned partitions."
        );
        *self
            .rate_limiter
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) =
            Some(Arc::new(RateLimiter::direct(Quota::per_second(share))));
    }

    /// The end of a pause the partner asked for, if it is still ahead.
    pub(super) fn paused_until(&self) -> Option<Instant> {
        let until = *self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        until.filter(|&u| u > Instant::now())
    }

    /// Waits out a pause the partner asked for (every lane of the destination honours it).
    pub(super) async fn wait_while_paused(&self) {
        while let Some(until) = self.paused_until() {
            tokio::time::sleep_until(until).await;
        }
    }

    /// Pauses the destination for `wait` (never shortens a longer pause already set).
    pub(super) fn pause(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut paused = self
            .paused_until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if paused.is_none_or(|p| p < until) {
            *paused = Some(until);
        }
    }
}
