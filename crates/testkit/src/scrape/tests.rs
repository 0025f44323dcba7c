//! Known answers of the metrics-text parser, the selector and the histogram quantile.

use super::*;

/// Two delivery workers' scrapes of the end-to-end latency histogram, as the prometheus crate
/// writes them (`le` last), concatenated as bench.sh concatenates them.
const TWO_WORKERS: &str = r#"# HELP delivery_end_to_end_latency_seconds Trait event time to the partner's 200.
# TYPE delivery_end_to_end_latency_seconds histogram
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="0.1"} 10
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="0.2"} 20
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="0.4"} 30
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="+Inf"} 30
delivery_end_to_end_latency_seconds_sum{destination="423",path="real_time"} 4.5
delivery_end_to_end_latency_seconds_count{destination="423",path="real_time"} 30
delivery_end_to_end_latency_seconds_bucket{destination="424",path="real_time",le="0.1"} 0
delivery_end_to_end_latency_seconds_bucket{destination="424",path="real_time",le="0.2"} 10
delivery_end_to_end_latency_seconds_bucket{destination="424",path="real_time",le="0.4"} 10
delivery_end_to_end_latency_seconds_bucket{destination="424",path="real_time",le="+Inf"} 10
# HELP delivery_events_total Users delivered or dead-lettered.
# TYPE delivery_events_total counter
delivery_events_total{destination="423",outcome="delivered"} 7
delivery_events_total{destination="423",outcome="dead_lettered"} 0
delivery_events_total{destination="424",outcome="delivered"} 5
# HELP delivery_end_to_end_latency_seconds Trait event time to the partner's 200.
# TYPE delivery_end_to_end_latency_seconds histogram
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="0.1"} 0
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="0.2"} 0
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="0.4"} 0
delivery_end_to_end_latency_seconds_bucket{destination="423",path="real_time",le="+Inf"} 0
delivery_events_total{destination="423",outcome="delivered"} 3
qualifier_users 12
qualifier_users_total 99
"#;

fn scrape(text: &str) -> Scrape {
    Scrape::parse(text).unwrap()
}

fn sel(text: &str) -> Selector {
    Selector::parse(text).unwrap()
}

/// The estimate `h` gives for `q`, which must be one.
fn estimate(h: &Histogram, q: f64) -> f64 {
    match h.quantile(q) {
        Ok(Quantile::Estimate(value)) => value,
        other => panic!("q {q}: {other:?}"),
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

fn histogram(buckets: &[(f64, f64)]) -> Histogram {
    Histogram::new(buckets.to_vec()).unwrap()
}

#[test]
fn parses_labels_with_escaped_quotes_commas_and_backslashes() {
    let s = scrape("m{a=\"x,\\\"y\\\"\",b=\"c\\\\d\",c=\"line\\nbreak\",} 2 1700000000000\n");
    assert_eq!(
        s.samples,
        vec![Sample {
            name: "m".into(),
            labels: vec![
                ("a".into(), "x,\"y\"".into()),
                ("b".into(), "c\\d".into()),
                ("c".into(), "line\nbreak".into()),
            ],
            value: 2.0,
        }]
    );
    // A comma inside a quoted value does not split the labels.
    assert_eq!(s.sum(&sel(r#"m{a="x,\"y\""}"#)), Ok(2.0));
}

#[test]
fn parses_special_values_and_skips_comments() {
    let s = scrape(
        "# TYPE g gauge\n\ng{x=\"1\"} +Inf\ng{x=\"2\"} -Inf\ng{x=\"3\"} NaN\ng{x=\"4\"} 1.5e3\n",
    );
    let values: Vec<f64> = s.samples.iter().map(|s| s.value).collect();
    assert_eq!(values[..2], [f64::INFINITY, f64::NEG_INFINITY]);
    assert!(values[2].is_nan());
    assert_eq!(values[3], 1500.0);
}

#[test]
fn a_line_it_cannot_read_is_an_error_naming_the_line() {
    for (text, problem) in [
        ("ok 1\nbroken{a=\"1\" 2\n", "labels not separated by `,`"),
        (
            "ok 1\nbroken{a=\"1} 2\n",
            "a label value without its closing quote",
        ),
        ("ok 1\nbroken five\n", "the value is not a number"),
        (
            "ok 1\nbroken{a=\"\\t\"} 1\n",
            "an unknown escape in a label value",
        ),
        ("ok 1\nbroken{a=\"1\",a=\"2\"} 1\n", "a label given twice"),
        ("ok 1\n{a=\"1\"} 1\n", "no metric name"),
    ] {
        match Scrape::parse(text) {
            Err(ScrapeError::Syntax {
                line, problem: p, ..
            }) => {
                assert_eq!((line, p), (2, problem), "{text}");
            }
            other => panic!("{text}: {other:?}"),
        }
    }
}

#[test]
fn a_selector_matches_the_exact_name_and_the_listed_labels_in_any_order() {
    let s = scrape(TWO_WORKERS);
    // Every destination and both workers.
    assert_eq!(
        s.sum(&sel(r#"delivery_events_total{outcome="delivered"}"#)),
        Ok(15.0)
    );
    assert_eq!(
        s.sum(&sel(
            r#"delivery_events_total{outcome="delivered",destination="423"}"#
        )),
        Ok(10.0)
    );
    assert_eq!(s.sum(&sel("delivery_events_total")), Ok(15.0));
    // Not a prefix: qualifier_users_total is another metric.
    assert_eq!(s.sum(&sel("qualifier_users")), Ok(12.0));
}

#[test]
fn a_missing_series_is_an_error_not_zero() {
    let s = scrape(TWO_WORKERS);
    assert_eq!(
        s.sum(&sel(r#"delivery_events_total{outcome="delivred"}"#)),
        Err(ScrapeError::Missing {
            selector: r#"delivery_events_total{outcome="delivred"}"#.into(),
            samples: s.samples.len(),
        })
    );
    // A failed scrape (curl printed nothing).
    assert!(matches!(
        scrape("").sum(&sel("qualifier_users")),
        Err(ScrapeError::Missing { samples: 0, .. })
    ));
    assert!(matches!(
        scrape("").histogram(&sel("delivery_end_to_end_latency_seconds")),
        Err(ScrapeError::Missing { samples: 0, .. })
    ));
    // A series registered at 0 is there: 0, not an error.
    assert_eq!(
        s.sum(&sel(r#"delivery_events_total{outcome="dead_lettered"}"#)),
        Ok(0.0)
    );
}

#[test]
fn bad_selectors_are_refused() {
    for text in ["", "{a=\"1\"}", "m{a=1}", "m{a=\"1\"} 2", "m{a=\"1\""] {
        assert!(
            matches!(Selector::parse(text), Err(ScrapeError::Selector { .. })),
            "{text}"
        );
    }
}

#[test]
fn a_histogram_is_summed_bucket_by_bucket_over_label_sets_and_scrapes() {
    let s = scrape(TWO_WORKERS);
    let all = s
        .histogram(&sel("delivery_end_to_end_latency_seconds"))
        .unwrap();
    assert_eq!(
        all,
        histogram(&[(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (f64::INFINITY, 40.0)])
    );
    let one = s
        .histogram(&sel(
            r#"delivery_end_to_end_latency_seconds{destination="424"}"#,
        ))
        .unwrap();
    assert_eq!(one.count(), 10.0);
}

#[test]
fn quantiles_interpolate_within_the_bucket_like_histogram_quantile() {
    let h = histogram(&[(0.1, 10.0), (0.2, 30.0), (0.4, 40.0), (f64::INFINITY, 40.0)]);
    // rank 20: in (0.1, 0.2], 10 below, 20 in it: 0.1 + 0.1 × 10/20.
    assert!(close(estimate(&h, 0.5), 0.15), "{}", estimate(&h, 0.5));
    // rank 39.6: in (0.2, 0.4], 30 below, 10 in it: 0.2 + 0.2 × 9.6/10.
    assert!(close(estimate(&h, 0.99), 0.392), "{}", estimate(&h, 0.99));
    assert_eq!(h.quantile(0.99).unwrap().to_string(), "0.392");
    // rank 5: in the first bucket, whose lower bound is 0.
    assert!(close(estimate(&h, 0.125), 0.05), "{}", estimate(&h, 0.125));
    // rank 40 exactly at the top of (0.2, 0.4].
    assert!(close(estimate(&h, 1.0), 0.4), "{}", estimate(&h, 1.0));
}

#[test]
fn a_rank_in_the_inf_bucket_is_above_the_highest_bound() {
    let h = histogram(&[(0.1, 1.0), (10.24, 2.0), (f64::INFINITY, 10.0)]);
    assert_eq!(h.quantile(0.5), Ok(Quantile::Above(10.24)));
    assert_eq!(h.quantile(0.5).unwrap().to_string(), ">10.24");
    // Only a +Inf bucket: above 0.
    assert_eq!(
        histogram(&[(f64::INFINITY, 3.0)]).quantile(0.5),
        Ok(Quantile::Above(0.0))
    );
}

#[test]
fn an_empty_histogram_has_no_quantile() {
    let s = scrape(TWO_WORKERS);
    // Registered, never observed: destination 423 of the second worker alone is all zeros,
    // which the first worker's 423 is not; a destination with no observation at all:
    let empty = histogram(&[(0.1, 0.0), (f64::INFINITY, 0.0)]);
    assert_eq!(empty.quantile(0.99), Ok(Quantile::Empty));
    assert_eq!(empty.quantile(0.99).unwrap().to_string(), "-");
    let h = s
        .histogram(&sel("delivery_end_to_end_latency_seconds"))
        .unwrap();
    assert_eq!(h.since(&h).unwrap().quantile(0.5), Ok(Quantile::Empty));
}

#[test]
fn since_counts_the_observations_in_between() {
    let before = histogram(&[(0.1, 10.0), (0.2, 10.0), (f64::INFINITY, 10.0)]);
    let after = histogram(&[(0.1, 10.0), (0.2, 20.0), (f64::INFINITY, 20.0)]);
    let between = after.since(&before).unwrap();
    assert_eq!(
        between,
        histogram(&[(0.1, 0.0), (0.2, 10.0), (f64::INFINITY, 10.0)])
    );
    // All ten in (0.1, 0.2]: the median is its middle.
    assert!(close(estimate(&between, 0.5), 0.15));
    // A restart in between: the counts went down.
    assert!(before.since(&after).is_err());
}

#[test]
fn a_histogram_with_no_series_in_the_earlier_scrape_observed_everything_since() {
    let now = scrape(TWO_WORKERS);
    let latency = sel("delivery_end_to_end_latency_seconds");
    // The earlier scrape ran before any change was delivered: the series did not exist yet.
    let before = scrape("delivery_events_total{destination=\"423\",outcome=\"delivered\"} 0\n");
    assert_eq!(
        now.histogram_since(&before, &latency).unwrap(),
        now.histogram(&latency).unwrap()
    );
    // With the series there, only what came after it counts.
    let between = now.histogram_since(&now, &latency).unwrap();
    assert_eq!(between.quantile(0.5), Ok(Quantile::Empty));
    // An earlier scrape that read nothing failed: not an empty histogram.
    assert!(matches!(
        now.histogram_since(&scrape(""), &latency),
        Err(ScrapeError::Missing { samples: 0, .. })
    ));
}

#[test]
fn histograms_that_cannot_be_added_or_read_are_errors() {
    let mismatched = scrape(
        "h_bucket{a=\"1\",le=\"0.1\"} 1\nh_bucket{a=\"1\",le=\"+Inf\"} 1\n\
         h_bucket{a=\"2\",le=\"0.2\"} 1\nh_bucket{a=\"2\",le=\"+Inf\"} 1\n",
    );
    assert!(matches!(
        mismatched.histogram(&sel("h")),
        Err(ScrapeError::Histogram { .. })
    ));
    let no_inf = scrape("h_bucket{le=\"0.1\"} 1\n");
    assert!(matches!(
        no_inf.histogram(&sel("h")),
        Err(ScrapeError::Histogram { .. })
    ));
    let decreasing = scrape("h_bucket{le=\"0.1\"} 5\nh_bucket{le=\"+Inf\"} 4\n");
    assert!(matches!(
        decreasing.histogram(&sel("h")),
        Err(ScrapeError::Histogram { .. })
    ));
    assert!(matches!(
        scrape(TWO_WORKERS).histogram(&sel(r#"delivery_end_to_end_latency_seconds{le="0.1"}"#)),
        Err(ScrapeError::Histogram { .. })
    ));
    let h = histogram(&[(f64::INFINITY, 1.0)]);
    assert!(h.quantile(1.5).is_err() && h.quantile(-0.1).is_err());
}

#[test]
fn plus_adds_two_histograms_bucket_by_bucket_and_refuses_other_bounds() {
    let a = histogram(&[(0.1, 1.0), (0.2, 3.0), (f64::INFINITY, 4.0)]);
    let b = histogram(&[(0.1, 0.0), (0.2, 5.0), (f64::INFINITY, 6.0)]);
    assert_eq!(
        a.plus(&b).unwrap(),
        histogram(&[(0.1, 1.0), (0.2, 8.0), (f64::INFINITY, 10.0)])
    );
    let other = histogram(&[(0.5, 1.0), (f64::INFINITY, 1.0)]);
    assert!(a.plus(&other).is_err());
}
