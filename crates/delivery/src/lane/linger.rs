//! When a lane's batch is due: `linger` after the oldest change it holds.
//!
//! The linger counts from a change's time (its trait event's), so the time it spent on its way
//! (the qualifier's transaction, the consumer's fetch) comes out of the linger instead of adding
//! to it. A lane's updates come from several input partitions, each as late as its own
//! transaction: counted from the batch's first update alone, an older one that joined the batch
//! waited past its own linger. Each update added may now bring the deadline forward, so none
//! waits in a batch longer than `linger` after it happened, as the partner contract says. In
//! short climbs this changed no end-to-end p99 (docs/BENCHMARKS.md): within a linger, the
//! input's lateness varies little.

use std::time::Duration;

use tokio::time::Instant;

use crate::batcher::RoutedEvent;

/// Updates written to the input topic more than a minute (or one linger, if longer) after their
/// newest change are late by then: they linger from the write, as batches always did. Within
/// it, a change is on its way in real time, however slowly (a busy qualifier, a backlog after a
/// restart), and lingers from the change.
const LATE_AFTER_MS: i64 = 60_000;

/// The deadline of one batch.
#[derive(Debug)]
pub(super) struct Linger {
    linger: Duration,
    /// [`late_after`] of `linger`.
    late_after: i64,
    /// When the batch opened, on both clocks: the deadline is an `Instant`, change times are
    /// Unix milliseconds. Read once per batch.
    opened: Instant,
    opened_unix_ms: i64,
    /// The oldest origin (see [`origin`]) of the batch's updates; `None` while it holds
    /// only updates of unknown write time.
    origin: Option<i64>,
}

impl Linger {
    /// The deadline of a batch that `first` opens now.
    pub(super) fn open(first: &RoutedEvent, linger: Duration) -> Self {
        Self::open_at(first, linger, Instant::now(), telemetry::clock::unix_ms())
    }

    fn open_at(
        first: &RoutedEvent,
        linger: Duration,
        opened: Instant,
        opened_unix_ms: i64,
    ) -> Self {
        let late_after = late_after(linger);
        Self {
            linger,
            late_after,
            opened,
            opened_unix_ms,
            origin: origin(first, late_after),
        }
    }

    /// When the batch is due.
    pub(super) fn deadline(&self) -> Instant {
        self.opened + left(self.origin, self.linger, self.opened_unix_ms)
    }

    /// The origin of `event`, to [`Self::hold`] once it is in the batch.
    pub(super) fn origin_of(&self, event: &RoutedEvent) -> Option<i64> {
        origin(event, self.late_after)
    }

    /// Counts an update of `origin` now in the batch: the batch's new deadline if it is older
    /// than every update the batch held, so the batch is due sooner.
    pub(super) fn hold(&mut self, origin: Option<i64>) -> Option<Instant> {
        let origin = origin?;
        if self.origin.is_some_and(|oldest| oldest <= origin) {
            return None;
        }
        self.origin = Some(origin);
        Some(self.deadline())
    }
}

/// When an update is late when written, for `linger`: [`LATE_AFTER_MS`], or one linger if
/// longer (ms).
fn late_after(linger: Duration) -> i64 {
    i64::try_from(linger.as_millis())
        .unwrap_or(i64::MAX)
        .max(LATE_AFTER_MS)
}

/// When `event`'s linger starts, in Unix ms: its newest change's time (a targeted update's:
/// when it was made), if the update was written to the input topic within `late_after` ms of
/// it ([`late_after`]); else the write (a change already late when written, so late events
/// still gather into batches; one stamped after its write, by a clock ahead). `None` for an
/// update of unknown write time (catch-up, replay, resync: old by design, their batches fill
/// anyway), which waits the whole linger.
fn origin(event: &RoutedEvent, late_after: i64) -> Option<i64> {
    let written = event.source.and_then(|s| s.written_unix_ms)?;
    // A targeted update counts from when it was made (`Update::newest_change_unix_ms`):
    // counted from the qualifying dates it restates, every batch one joined went at once.
    let changed = event.update.newest_change_unix_ms();
    Some(match changed {
        Some(changed) if changed <= written && written - changed <= late_after => changed,
        _ => written,
    })
}

/// What is left of `linger` at `now_unix_ms` for a batch whose oldest update is of `origin`.
fn left(origin: Option<i64>, linger: Duration, now_unix_ms: i64) -> Duration {
    let Some(origin) = origin else {
        return linger;
    };
    let age = u64::try_from(now_unix_ms.saturating_sub(origin)).unwrap_or(0);
    linger.saturating_sub(Duration::from_millis(age))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use model::{SegmentChange, SegmentStatusUpdate};
    use tokio::time::Instant;

    use super::{Linger, late_after, left, origin};
    use crate::batcher::{EventSource, RoutedEvent};
    use crate::offsets::PartitionAssignment;

    const LINGER: Duration = Duration::from_millis(250);
    const NOW: i64 = 1_000_000;

    /// An update with changes at `times`, written at `written` (`None`: not known).
    fn event(times: &[i64], written: Option<i64>) -> RoutedEvent {
        RoutedEvent {
            held: Default::default(),
            update: crate::update::Update::new(&SegmentStatusUpdate {
                user_id: "u1".to_owned(),
                changes: times
                    .iter()
                    .map(|&time| SegmentChange::qualified(1, time))
                    .collect(),
                ..SegmentStatusUpdate::default()
            }),
            source: Some(EventSource {
                assignment: PartitionAssignment {
                    partition: 0,
                    generation: 0,
                },
                offset: 0,
                catch_up: false,
                written_unix_ms: written,
            }),
        }
    }

    /// A targeted update (for data partner 9's ids) restating a membership of `qualified`,
    /// made at `produced` and written at `written`.
    fn targeted(qualified: i64, produced: i64, written: i64) -> RoutedEvent {
        let mut event = event(&[], Some(written));
        event.update = crate::update::Update::new(&SegmentStatusUpdate {
            user_id: "u1".to_owned(),
            changes: vec![SegmentChange::qualified(1, qualified)],
            produced_unix_ms: produced,
            only_data_partner_id: Some(9),
            ..SegmentStatusUpdate::default()
        });
        event
    }

    /// What is left of the linger at `NOW` for a batch that this update opens.
    fn left_for(times: &[i64], written: Option<i64>) -> Duration {
        left(
            origin(&event(times, written), late_after(LINGER)),
            LINGER,
            NOW,
        )
    }

    #[test]
    fn a_real_time_change_lingers_from_its_own_time() {
        // Changed 180 ms ago, written 60 ms after it: 70 ms of the linger are left.
        assert_eq!(
            left_for(&[NOW - 180], Some(NOW - 120)),
            Duration::from_millis(70)
        );
        // The newest change of the update counts.
        assert_eq!(
            left_for(&[NOW - 900, NOW - 100], Some(NOW - 90)),
            Duration::from_millis(150)
        );
        // On its way longer than the linger (a busy qualifier): none left, it goes with what
        // is queued; so does one 50 s on its way, still within a minute of happening.
        assert_eq!(left_for(&[NOW - 300], Some(NOW - 50)), Duration::ZERO);
        assert_eq!(left_for(&[NOW - 50_000], Some(NOW - 10)), Duration::ZERO);
    }

    #[test]
    fn a_change_late_when_written_lingers_from_the_write() {
        // Happened hours (or just over a minute) before it was written: from the write.
        assert_eq!(
            left_for(&[NOW - 60_050], Some(NOW - 40)),
            Duration::from_millis(210)
        );
        assert_eq!(
            left_for(&[NOW - 3_600_000], Some(NOW - 50)),
            Duration::from_millis(200)
        );
        // Stamped after it was written (a clock ahead): from the write too.
        assert_eq!(left_for(&[NOW + 500], Some(NOW)), LINGER);
        // No change at all (no panic): from the write.
        assert_eq!(left_for(&[], Some(NOW - 10)), Duration::from_millis(240));
    }

    #[test]
    fn a_targeted_update_lingers_from_when_it_was_made() {
        // Restating a membership of 30 s ago, made 20 ms ago: 230 ms left, not none.
        let restated = targeted(NOW - 30_000, NOW - 20, NOW - 10);
        assert_eq!(
            left(origin(&restated, late_after(LINGER)), LINGER, NOW),
            Duration::from_millis(230)
        );
        // Joining a batch opened 50 ms after its change, it does not send the batch at once.
        let opened = Instant::now();
        let mut batch = Linger::open_at(&event(&[NOW - 50], Some(NOW - 40)), LINGER, opened, NOW);
        let origin = batch.origin_of(&restated);
        assert_eq!(batch.hold(origin), None);
        assert_eq!(batch.deadline(), opened + Duration::from_millis(200));
    }

    #[test]
    fn an_update_of_unknown_write_time_waits_the_whole_linger() {
        assert_eq!(left_for(&[NOW - 3_600_000], None), LINGER);
        let mut replayed = event(&[NOW - 100], None);
        replayed.source = None;
        assert_eq!(
            left(origin(&replayed, late_after(LINGER)), LINGER, NOW),
            LINGER
        );
    }

    /// A batch is due a linger after the oldest change it holds: an older update added brings
    /// the deadline forward, a newer one or one of unknown write time does not.
    #[test]
    fn a_batch_is_due_a_linger_after_its_oldest_change() {
        let opened = Instant::now();
        let ms = Duration::from_millis;
        // Opened by a change 50 ms old: due in 200 ms.
        let mut batch = Linger::open_at(&event(&[NOW - 50], Some(NOW - 40)), LINGER, opened, NOW);
        assert_eq!(batch.deadline(), opened + ms(200));
        // A newer change, and an update of unknown write time: no sooner.
        let newer = batch.origin_of(&event(&[NOW - 10], Some(NOW - 5)));
        assert_eq!(batch.hold(newer), None);
        let caught_up = batch.origin_of(&event(&[NOW - 5_000], None));
        assert_eq!(batch.hold(caught_up), None);
        assert_eq!(batch.deadline(), opened + ms(200));
        // One 170 ms old (its partition's transaction was slower): due 80 ms after the batch
        // opened, not 200.
        let older = batch.origin_of(&event(&[NOW - 170], Some(NOW - 20)));
        assert_eq!(batch.hold(older), Some(opened + ms(80)));
        assert_eq!(batch.deadline(), opened + ms(80));
        // One past its linger already: due at once.
        let late = batch.origin_of(&event(&[NOW - 400], Some(NOW - 30)));
        assert_eq!(batch.hold(late), Some(opened));
        // A batch opened by an update of unknown write time waits the whole linger, unless a
        // real-time change joins it.
        let mut batch = Linger::open_at(&event(&[NOW - 100], None), LINGER, opened, NOW);
        assert_eq!(batch.deadline(), opened + LINGER);
        let real_time = batch.origin_of(&event(&[NOW - 100], Some(NOW - 50)));
        assert_eq!(batch.hold(real_time), Some(opened + ms(150)));
    }
}
