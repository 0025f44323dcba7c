//! The event counters count each (type, outcome) under its own documented labels.

use prometheus::Registry;

use super::*;

#[test]
fn each_event_kind_and_outcome_counts_under_its_own_labels() {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let counters = HotCounters::new(&metrics);
    // A different count per pair, so a pair counted under another's labels shows.
    let mut expected = Vec::new();
    for (i, kind) in EventKind::ALL.into_iter().enumerate() {
        for (j, outcome) in EventOutcome::ALL.into_iter().enumerate() {
            let times = 1 + i * EventOutcome::ALL.len() + j;
            for _ in 0..times {
                counters.event(kind, outcome);
            }
            expected.push((kind.label(), outcome.label(), times as u64));
        }
    }
    for (kind, outcome, times) in expected {
        assert_eq!(
            metrics.events.with_label_values(&[kind, outcome]).get(),
            times,
            "qualifier_events_total{{type=\"{kind}\", outcome=\"{outcome}\"}}"
        );
    }
    let labels: Vec<&str> = EventKind::ALL.iter().map(|k| k.label()).collect();
    assert_eq!(labels, ["trait", "id_sync", "opt_out", "forget", "unknown"]);
    let outcomes: Vec<&str> = EventOutcome::ALL.iter().map(|o| o.label()).collect();
    assert_eq!(outcomes, ["applied", "ignored", "invalid"]);
}
