//! `register_all`: every handle is exported with the values the service records through its
//! own copy, and a name registered twice is refused.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGauge, Opts};

use super::*;

fn names_and_values(registry: &Registry) -> Vec<(String, f64)> {
    registry
        .gather()
        .iter()
        .map(|family| {
            let metric = &family.get_metric()[0];
            let value = match family.get_field_type() {
                prometheus::proto::MetricType::COUNTER => metric.get_counter().get_value(),
                prometheus::proto::MetricType::GAUGE => metric.get_gauge().get_value(),
                _ => metric.get_histogram().get_sample_count() as f64,
            };
            (family.name().to_owned(), value)
        })
        .collect()
}

#[test]
fn every_handle_is_exported_with_what_the_service_records() {
    let registry = Registry::new();
    let events = IntCounterVec::new(Opts::new("t_events_total", "Events."), &["type"]).unwrap();
    let users = IntGauge::new("t_users", "Users.").unwrap();
    let duration = Histogram::with_opts(HistogramOpts::new("t_duration_seconds", "Time.")).unwrap();
    register_all(&registry, &[&events, &users, &duration]).unwrap();
    events.with_label_values(&["trait"]).inc_by(3);
    users.set(7);
    duration.observe(0.5);
    duration.observe(1.5);
    assert_eq!(
        names_and_values(&registry),
        vec![
            ("t_duration_seconds".to_owned(), 2.0),
            ("t_events_total".to_owned(), 3.0),
            ("t_users".to_owned(), 7.0),
        ]
    );
}

#[test]
fn a_name_registered_twice_is_refused() {
    let registry = Registry::new();
    let users = IntGauge::new("t_users", "Users.").unwrap();
    let again = IntGauge::new("t_users", "Users.").unwrap();
    let error = register_all(&registry, &[&users, &again]).unwrap_err();
    assert!(matches!(error, prometheus::Error::AlreadyReg), "{error:?}");
}
