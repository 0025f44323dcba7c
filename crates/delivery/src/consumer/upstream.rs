//! How late updates reach the shared consumer (`delivery_upstream_latency_seconds`): the part
//! of a change's end-to-end latency spent before delivery read it, split at the time the
//! qualifier produced the update. With `delivery_end_to_end_latency_seconds`, it tells the
//! qualifier's and Kafka's share from the worker's own (linger, requests) without a profiler.

use prometheus::local::LocalHistogram;

use crate::metrics::Metrics;
use crate::order::Topic;
use crate::update::Update;

/// The `span` label's values, in the order [`UpstreamLatency`] holds them.
const SPANS: [&str; 3] = ["change_to_produced", "produced_to_read", "change_to_read"];

/// The shared consumer's handles of one input. Observed per update into local copies and
/// added to the shared histograms once per burst of messages ([`Self::flush`]), so that an
/// update read costs no atomic operation.
pub(super) struct UpstreamLatency {
    spans: [LocalHistogram; 3],
}

impl UpstreamLatency {
    pub(super) fn new(metrics: &Metrics, input: Topic) -> Self {
        Self {
            spans: SPANS.map(|span| metrics.upstream_latency(input, span).local()),
        }
    }

    /// `update`, read now (`now_unix_ms`). Its changes' time is that of the oldest; a
    /// targeted update restates memberships the user already had (dated when they
    /// qualified), so its time is when it was made, as in the end-to-end latency. A span a
    /// clock between hosts makes negative counts as 0.
    pub(super) fn read(&self, update: &Update, now_unix_ms: i64) {
        let produced = update.produced_unix_ms();
        let changed = update.oldest_change_unix_ms().unwrap_or(produced);
        let seconds = |from: i64, to: i64| to.saturating_sub(from).max(0) as f64 / 1000.0;
        let [change_to_produced, produced_to_read, change_to_read] = &self.spans;
        change_to_produced.observe(seconds(changed, produced));
        produced_to_read.observe(seconds(produced, now_unix_ms));
        change_to_read.observe(seconds(changed, now_unix_ms));
    }

    /// Adds what was observed since the last flush to the shared histograms.
    pub(super) fn flush(&self) {
        for span in &self.spans {
            span.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use model::{ChangeReason, SegmentChange, SegmentStatusUpdate};
    use prometheus::Registry;

    use super::*;

    fn update(changes_at: &[i64], produced: i64, targeted: bool) -> Update {
        Update::new(&SegmentStatusUpdate {
            user_id: "u1".to_owned(),
            changes: changes_at
                .iter()
                .zip(1..)
                .map(|(&at, segment)| SegmentChange::unsegmented(segment, ChangeReason::Rule, at))
                .collect(),
            produced_unix_ms: produced,
            only_data_partner_id: targeted.then_some(9),
            ..Default::default()
        })
    }

    /// Each span's (count, sum) in `input`'s series.
    fn spans(metrics: &Metrics, input: Topic) -> [(u64, f64); 3] {
        SPANS.map(|span| {
            let h = metrics.upstream_latency(input, span);
            (h.get_sample_count(), h.get_sample_sum())
        })
    }

    #[test]
    fn each_span_counts_from_its_own_start_and_only_once_flushed() {
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let upstream = UpstreamLatency::new(&metrics, Topic::RealTime);
        // Changes at 1,000 and 1,040 (the oldest counts), produced at 1,100, read at 1,350.
        upstream.read(&update(&[1_040, 1_000], 1_100, false), 1_350);
        assert_eq!(
            spans(&metrics, Topic::RealTime)[0].0,
            0,
            "not before a flush"
        );
        upstream.flush();
        let [to_produced, to_read_from_produced, to_read] = spans(&metrics, Topic::RealTime);
        assert_eq!(to_produced.0, 1);
        assert!((to_produced.1 - 0.1).abs() < 1e-9, "{to_produced:?}");
        assert!((to_read_from_produced.1 - 0.25).abs() < 1e-9);
        assert!((to_read.1 - 0.35).abs() < 1e-9);
        assert_eq!(spans(&metrics, Topic::Batch)[2].0, 0);
    }

    #[test]
    fn a_targeted_update_counts_from_when_it_was_made_and_a_clock_behind_counts_0() {
        let metrics = Metrics::register(&Registry::new()).unwrap();
        let upstream = UpstreamLatency::new(&metrics, Topic::RealTime);
        // Qualified days ago, restated at 5,000; this worker's clock reads 4,900.
        upstream.read(&update(&[1], 5_000, true), 4_900);
        upstream.flush();
        for (span, (count, sum)) in SPANS.iter().zip(spans(&metrics, Topic::RealTime)) {
            assert_eq!((count, sum), (1, 0.0), "{span}");
        }
    }
}
