//! Per-user order with several requests in flight, and isolation between destinations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testkit::receiver::{Receiver, Response};
use testkit::service::metric_value;

use super::{DeliveryTest, T0, change, destination, json, update};

/// (user, DateTime) of every segment entry of the successful requests, in arrival order.
fn delivered_times(receiver: &Receiver) -> Vec<(String, String)> {
    let mut requests = receiver.requests();
    requests.retain(|r| r.status == 200);
    requests.sort_by_key(|r| r.received_at);
    let mut out = Vec::new();
    for request in requests {
        let body = json(&request.body);
        for user in body["Users"].as_array().unwrap() {
            for segment in user["Segments"].as_array().unwrap() {
                out.push((
                    user["AAM_UUID"].as_str().unwrap().to_owned(),
                    segment["DateTime"].as_str().unwrap().to_owned(),
                ));
            }
        }
    }
    out
}

#[tokio::test]
async fn per_user_order_holds_with_four_requests_in_flight_random_delays_and_retries() {
    const USERS: usize = 24;
    const STEPS: i64 = 8;
    let test = DeliveryTest::new(3).await;
    let receiver = Receiver::start().await;
    let mut rng = 0x2545_f491_4f6c_dd1d_u64;
    receiver.script((0..400).map(|i| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let delay = Duration::from_millis(rng % 120);
        // Every seventh answer fails, so retries are part of the run (with 4 retries a batch
        // cannot fail every attempt: its attempts would all have to land 7 answers apart).
        Response::status(if i % 7 == 3 { 500 } else { 200 }).delay(delay)
    }));
    let config = test.config(&[destination(
        30,
        &receiver,
        ", max_in_flight: 4, retries: 4, retry_backoff_ms: 5, batch: { linger_ms: 20, max_users: 3 }",
    )]);
    let _service = test.start(&config, &[]).await;

    // Each step of a user is one second later than the last: DateTime shows the order.
    for step in 0..STEPS {
        let updates: Vec<_> = (0..USERS)
            .map(|u| {
                update(
                    &format!("user-{u}"),
                    &[],
                    &[],
                    vec![change(14356, step % 2 == 0, T0 + step * 1_000)],
                )
            })
            .collect();
        test.produce(&test.topic, &updates).await;
    }
    let last = T0 + (STEPS - 1) * 1_000;
    let last = model::partner::PartnerDate(last).to_string();
    testkit::wait_until(
        "every user's last change delivered",
        Duration::from_secs(60),
        || {
            let times = delivered_times(&receiver);
            let done = (0..USERS).all(|u| {
                times
                    .iter()
                    .any(|(user, t)| *user == format!("user-{u}") && *t == last)
            });
            async move { done }
        },
    )
    .await;

    let mut previous: HashMap<String, i64> = HashMap::new();
    for (user, time) in delivered_times(&receiver) {
        let step = (0..STEPS)
            .find(|s| model::partner::PartnerDate(T0 + s * 1_000).to_string() == time)
            .unwrap();
        if let Some(&before) = previous.get(&user) {
            assert!(
                step > before,
                "{user}: step {step} delivered after step {before}"
            );
        }
        previous.insert(user, step);
    }
    assert!(
        receiver.requests().iter().any(|r| r.status == 500),
        "the run included retries"
    );
}

#[tokio::test]
async fn a_hanging_destination_does_not_delay_another() {
    let test = DeliveryTest::new(3).await;
    let hanging = Receiver::start().await;
    hanging.respond(200, Duration::from_secs(30));
    let healthy = Receiver::start().await;
    let config = test.config(&[
        destination(40, &hanging, ", retry_backoff_ms: 10"),
        destination(41, &healthy, ""),
    ]);
    let service = test.start(&config, &[]).await;

    // One change every 100 ms; latency is measured from the broker's acknowledgement.
    let mut produced = HashMap::new();
    for i in 0..40 {
        let user = format!("u{i}");
        test.produce(
            &test.topic,
            &[update(&user, &[], &[], vec![change(14356, true, T0)])],
        )
        .await;
        produced.insert(user, Instant::now());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let requests = healthy.wait_for_requests(1, Duration::from_secs(10)).await;
    testkit::wait_until(
        "all 40 users at the healthy destination",
        Duration::from_secs(20),
        || {
            let n: usize = healthy
                .requests()
                .iter()
                .map(|r| json(&r.body)["Users"].as_array().unwrap().len())
                .sum();
            async move { n >= 40 }
        },
    )
    .await;
    drop(requests);
    let mut latencies: Vec<Duration> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for request in healthy.requests() {
        for user in json(&request.body)["Users"].as_array().unwrap() {
            let name = user["AAM_UUID"].as_str().unwrap();
            assert!(
                seen.insert(name.to_owned()),
                "{name} delivered twice: {:?}",
                healthy
                    .requests()
                    .iter()
                    .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                    .collect::<Vec<_>>()
            );
            let sent = produced[name];
            latencies.push(request.received_at.saturating_duration_since(sent));
        }
    }
    latencies.sort();
    let p99 = latencies[(latencies.len() * 99).div_ceil(100) - 1];
    // linger 50 ms + 1 s: a queue shared with the hanging destination would show seconds.
    assert!(
        p99 < Duration::from_millis(1_050),
        "p99 {p99:?}; all: {latencies:?}"
    );
    assert!(
        !hanging.requests().is_empty(),
        "the hanging destination was tried"
    );
    // The hanging partner's requests show in its metrics: in flight, then timed out (3 s).
    let hanging_series = |series: &'static str| {
        let service = &service;
        move || async move { metric_value(&service.metrics().await, series) }
    };
    testkit::wait_for(
        "a request in flight to the hanging destination",
        Duration::from_secs(10),
        hanging_series(r#"delivery_in_flight_requests{destination="40"}"#),
        |n| n.is_some_and(|n| n >= 1.0),
    )
    .await;
    testkit::wait_for(
        "a timed-out request to the hanging destination counted",
        Duration::from_secs(10),
        hanging_series(r#"delivery_requests_total{destination="40",outcome="timeout"}"#),
        |n| n.is_some_and(|n| n >= 1.0),
    )
    .await;
}
