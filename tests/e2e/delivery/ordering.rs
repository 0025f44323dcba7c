//! Per-user order with several requests in flight, and isolation between destinations.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testkit::receiver::{Receiver, Response};
use testkit::service::metric_value;

use super::{DeliveryTest, T0, change, destination, json, map_segments, sequenced, text, update};

/// (user, DateTime) of every segment entry of the successful requests, in arrival order.
fn delivered_times(receiver: &Receiver) -> Vec<(String, String)> {
    let mut requests = receiver.requests();
    requests.retain(|r| r.status == 200);
    requests.sort_by_key(|r| r.received_at);
    map_segments(requests.iter().map(|r| json(&r.body)), |user, segment| {
        (text(user, "AAM_UUID"), text(segment, "DateTime"))
    })
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

/// Ten users: `prefix0` … `prefix9`.
fn users(prefix: &'static str) -> impl Iterator<Item = String> {
    (0..10).map(move |i| format!("{prefix}{i}"))
}

/// `delivery_changes_total{outcome="superseded"}` of `destination` at `service`.
async fn superseded(service: &testkit::service::Service, destination: u64) -> Option<f64> {
    metric_value(
        &service.metrics().await,
        &format!(r#"delivery_changes_total{{destination="{destination}",outcome="superseded"}}"#),
    )
}

/// (user, Status) of every segment entry the partner accepted, in arrival order.
fn accepted_statuses(receiver: &Receiver) -> Vec<(String, String)> {
    let mut requests = receiver.requests();
    requests.retain(|r| r.status == 200);
    requests.sort_by_key(|r| r.received_at);
    super::entries(requests.iter().map(|r| json(&r.body)))
        .into_iter()
        .map(|(user, _, status)| (user, status))
        .collect()
}

/// Item 6 of the isolation issue: an onboarded `1` older than a real-time `0` (an opt-out)
/// that the partner already has is never sent after it, and the other way round; newer
/// changes on either topic, and users only on one, go through. What is held back is counted.
#[tokio::test]
async fn a_change_older_than_one_from_the_other_topic_is_never_sent_after_it() {
    use model::Origin::{Batch, Realtime};
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(61, &receiver, ", batch: { linger_ms: 20 }")]);
    let service = test.start(&config, &[]).await;

    // Real time first: `late-*` opt out (sequence 20); `early-*` get a batch 1 (sequence 30).
    let opt_outs: Vec<_> = users("late-")
        .map(|u| sequenced(&u, false, 20, Realtime))
        .collect();
    test.produce(&test.topic, &opt_outs).await;
    let onboarded: Vec<_> = users("early-")
        .map(|u| sequenced(&u, true, 30, Batch))
        .collect();
    test.produce(&test.batch_topic, &onboarded).await;
    testkit::wait_until(
        "the opt-outs and the onboarded 1s delivered",
        Duration::from_secs(30),
        || {
            let n = accepted_statuses(&receiver).len();
            async move { n == 20 }
        },
    )
    .await;
    // Then the older ones from the other topics: an onboarded 1 older than the opt-out, a
    // real-time 0 older than the onboarded 1 — and the controls: a newer batch change, and
    // users the other topic never mentioned.
    let stale_batch: Vec<_> = users("late-")
        .map(|u| sequenced(&u, true, 10, Batch))
        .collect();
    let stale_real_time: Vec<_> = users("early-")
        .map(|u| sequenced(&u, false, 25, Realtime))
        .collect();
    let newer: Vec<_> = users("late-")
        .take(3)
        .map(|u| sequenced(&u, true, 40, Batch))
        .collect();
    let fresh: Vec<_> = users("only-")
        .map(|u| sequenced(&u, true, 5, Batch))
        .collect();
    test.produce(&test.batch_topic, &stale_batch).await;
    test.produce(&test.topic, &stale_real_time).await;
    test.produce(&test.batch_topic, &newer).await;
    test.produce(&test.batch_topic, &fresh).await;
    testkit::wait_until(
        "the newer and fresh changes delivered",
        Duration::from_secs(30),
        || {
            let n = accepted_statuses(&receiver).len();
            async move { n >= 33 }
        },
    )
    .await;
    // Everything the consumers read is finished (committed), so nothing more is coming.
    testkit::wait_until(
        "every input message committed",
        Duration::from_secs(30),
        || {
            let done = test.committed(2).values().sum::<i64>() == 20
                && test
                    .committed_in(&test.batch_topic, 2)
                    .values()
                    .sum::<i64>()
                    == 33;
            async move { done }
        },
    )
    .await;
    let statuses = accepted_statuses(&receiver);
    assert_eq!(statuses.len(), 33, "{statuses:?}");
    let of = |user: &str| -> Vec<&str> {
        statuses
            .iter()
            .filter(|(u, _)| u == user)
            .map(|(_, s)| s.as_str())
            .collect()
    };
    for (i, user) in users("late-").enumerate() {
        // The opt-out, then (for three of them) the newer 1: never the older onboarded 1.
        let expected: &[&str] = if i < 3 { &["0", "1"] } else { &["0"] };
        assert_eq!(of(&user), expected, "{user}: {statuses:?}");
    }
    for user in users("early-").chain(users("only-")) {
        assert_eq!(of(&user), ["1"], "{user}: {statuses:?}");
    }
    assert_eq!(
        superseded(&service, 61).await,
        Some(20.0),
        "10 onboarded 1s and 10 real-time 0s superseded"
    );
}

/// The batch topic must have the real-time topic's partition count (a user is on the same
/// partition number in both): otherwise delivery does not start, and says how to fix it.
#[tokio::test]
async fn a_batch_topic_with_another_partition_count_stops_start_up_with_the_fix() {
    let mut test = DeliveryTest::new(2).await;
    test.batch_topic = testkit::kafka::unique_topic("status-batch", 3).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(62, &receiver, "")]);
    let mut service = testkit::service::ServiceBuilder::new("delivery")
        .arg("--config")
        .arg(config.to_str().unwrap())
        .env("KAFKA_BROKERS", testkit::kafka::settings().brokers)
        .spawn();
    let status = service.wait_exit(Duration::from_secs(30)).await;
    assert!(!status.success());
    let log = service.log();
    assert!(
        log.contains(&format!(
            "kafka.batch_topic: `{}` has 3 partitions and kafka.topic `{}` has 2: they must be equal",
            test.batch_topic, test.topic
        )),
        "{log}"
    );
}

/// The order across topics survives a restart: the worker that delivered a real-time `0` is
/// gone before the older onboarded `1` is read, and its successor — whose table starts empty
/// — reads back what was routed before and still does not send the `1`.
#[tokio::test]
async fn a_restart_between_a_real_time_0_and_an_older_onboarded_1_still_holds_the_1_back() {
    use model::Origin::{Batch, Realtime};
    let mut test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    let destinations = [destination(63, &receiver, ", batch: { linger_ms: 20 }")];
    // The first worker reads another (empty) batch topic: the onboarded 1s wait unread.
    let batch_topic = std::mem::replace(
        &mut test.batch_topic,
        testkit::kafka::unique_topic("status-batch-unread", 2).await,
    );
    let first_config = test.config(&destinations);
    test.batch_topic = batch_topic;
    let config = test.config(&destinations);

    let first = test.start(&first_config, &[]).await;
    let opt_outs: Vec<_> = users("late-")
        .map(|u| sequenced(&u, false, 20, Realtime))
        .collect();
    test.produce(&test.topic, &opt_outs).await;
    testkit::wait_until(
        "the opt-outs delivered and committed",
        Duration::from_secs(30),
        || {
            let done = accepted_statuses(&receiver).len() == 10
                && test.committed(2).values().sum::<i64>() == 10;
            async move { done }
        },
    )
    .await;
    first.terminate();
    let mut first = first;
    assert!(
        first.wait_exit(Duration::from_secs(30)).await.success(),
        "{}",
        first.log()
    );

    let stale: Vec<_> = users("late-")
        .map(|u| sequenced(&u, true, 10, Batch))
        .collect();
    let fresh: Vec<_> = users("only-")
        .map(|u| sequenced(&u, true, 5, Batch))
        .collect();
    test.produce(&test.batch_topic, &stale).await;
    test.produce(&test.batch_topic, &fresh).await;
    let second = test.start(&config, &[]).await;
    testkit::wait_until(
        "the onboarded input finished",
        Duration::from_secs(30),
        || {
            let done = test
                .committed_in(&test.batch_topic, 2)
                .values()
                .sum::<i64>()
                == 20
                && accepted_statuses(&receiver).len() >= 20;
            async move { done }
        },
    )
    .await;
    let statuses = accepted_statuses(&receiver);
    let late_ones: Vec<_> = statuses
        .iter()
        .filter(|(u, s)| u.starts_with("late-") && s == "1")
        .collect();
    assert!(
        late_ones.is_empty(),
        "older onboarded 1s sent after the opt-outs: {late_ones:?}\n{}",
        second.log()
    );
    assert_eq!(statuses.len(), 20, "{statuses:?}");
    assert_eq!(superseded(&second, 63).await, Some(10.0),);
    assert!(
        second
            .log()
            .contains("Order table restored for the assigned partitions."),
        "{}",
        second.log()
    );
}

/// The order table holds a few seconds of traffic, not all of it: with the batch topic idle
/// (never written, no commit), the real-time pairs go once the batch topic's end is passed.
#[tokio::test]
async fn the_order_table_empties_while_the_other_topic_is_idle() {
    use model::Origin::Realtime;
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(64, &receiver, ", batch: { linger_ms: 20 }")]);
    let service = test.start(&config, &[]).await;
    let updates: Vec<_> = users("u-")
        .map(|u| sequenced(&u, true, 7, Realtime))
        .collect();
    test.produce(&test.topic, &updates).await;
    let pairs = || {
        let service = &service;
        async move { metric_value(&service.metrics().await, "delivery_order_pairs") }
    };
    testkit::wait_until("the pairs recorded", Duration::from_secs(30), || async {
        pairs().await.is_some_and(|n| n > 0.0)
    })
    .await;
    testkit::wait_until("the pairs gone again", Duration::from_secs(30), || async {
        pairs().await == Some(0.0)
    })
    .await;
    assert_eq!(accepted_statuses(&receiver).len(), 10);
}
