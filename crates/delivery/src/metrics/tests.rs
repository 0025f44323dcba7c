//! The exported series: a destination's latency paths appear once used.

use super::*;

/// The series of `delivery_end_to_end_latency_seconds` by path, as a scrape sees them.
fn latency_paths(registry: &Registry) -> Vec<String> {
    let mut paths: Vec<String> = registry
        .gather()
        .iter()
        .filter(|family| family.name() == "delivery_end_to_end_latency_seconds")
        .flat_map(|family| family.get_metric().iter())
        .flat_map(|metric| metric.get_label().iter())
        .filter(|label| label.name() == "path")
        .map(|label| label.value().to_owned())
        .collect();
    paths.sort();
    paths
}

/// A destination exports the latency of a path once a change went that way, not before:
/// four paths of 24 series each for every destination, most of them never used, were
/// half of a thousand-destination worker's 175,000 series.
#[test]
fn a_latency_path_is_exported_once_it_is_used() {
    let registry = Registry::new();
    let metrics = Metrics::register(&registry).unwrap();
    let destination = metrics.destination(7, std::time::Duration::from_secs(60));
    assert!(latency_paths(&registry).is_empty());
    destination
        .end_to_end_latency(SendPath::RealTime)
        .observe(0.2);
    destination
        .clone()
        .end_to_end_latency(SendPath::RealTime)
        .observe(0.3);
    assert_eq!(latency_paths(&registry), ["real_time"]);
    destination
        .end_to_end_latency(SendPath::CatchUp)
        .observe(9.0);
    assert_eq!(latency_paths(&registry), ["catch_up", "real_time"]);
    let count = destination
        .end_to_end_latency(SendPath::RealTime)
        .get_sample_count();
    assert_eq!(count, 2, "the clone observed into the same series");
}
