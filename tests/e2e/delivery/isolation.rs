//! A failing destination never holds back another, its changes wait in Kafka (not in memory,
//! not in the dead-letter topic), and it catches up by itself, in per-user order, when it
//! answers again — also across a restart. Permanent answers, 429 and `Retry-After`, and an
//! endless response body.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use testkit::receiver::{Receiver, Response};
use testkit::service::metric_value;

use super::{DeliveryTest, change, destination, entries, json, update};

/// `users` users with `per_user` (< 60) changes each of segment 14356, alternating 1 and 0,
/// produced now (so no change is older than `max_backlog_age`). The changes' times are
/// whole seconds of one minute, ascending per user, so their `DateTime`s order them.
fn alternating(users: usize, per_user: usize) -> Vec<model::SegmentStatusUpdate> {
    assert!(per_user < 60);
    let produced = telemetry::clock::unix_ms();
    let base = produced - produced % 60_000;
    let mut updates = Vec::new();
    for step in 0..per_user {
        for u in 0..users {
            let mut next = update(
                &format!("u{u}"),
                &[],
                &[],
                vec![change(
                    14356,
                    step.is_multiple_of(2),
                    base + 1_000 * step as i64,
                )],
            );
            next.produced_unix_ms = produced;
            updates.push(next);
        }
    }
    updates
}

/// Per user, the `DateTime`s of segment 14356 the receiver got, in arrival order.
fn arrivals(receiver: &Receiver) -> HashMap<String, Vec<(String, String)>> {
    let mut per_user: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for request in receiver.requests().iter().filter(|r| r.status == 200) {
        for user in json(&request.body)["Users"].as_array().unwrap() {
            for segment in user["Segments"].as_array().unwrap() {
                per_user
                    .entry(user["AAM_UUID"].as_str().unwrap().to_owned())
                    .or_default()
                    .push((
                        segment["DateTime"].as_str().unwrap().to_owned(),
                        segment["Status"].as_str().unwrap().to_owned(),
                    ));
            }
        }
    }
    per_user
}

/// The status of a user's last change in [`alternating`].
fn final_status(per_user: usize) -> &'static str {
    if (per_user - 1).is_multiple_of(2) {
        "1"
    } else {
        "0"
    }
}

/// Whether every user's last arrival is their final status (the last change produced).
fn all_final(receiver: &Receiver, users: usize, per_user: usize) -> bool {
    let last_status = final_status(per_user);
    let last_time = arrivals_of_final_second(per_user);
    let per_user_arrivals = arrivals(receiver);
    (0..users).all(|u| {
        per_user_arrivals
            .get(&format!("u{u}"))
            .and_then(|seen| seen.last())
            .is_some_and(|(time, status)| status == last_status && time.contains(&last_time))
    })
}

/// Waits until every user's last arrival at `receiver` is their final status.
async fn wait_all_final(
    receiver: &Receiver,
    what: &str,
    timeout: Duration,
    users: usize,
    per_user: usize,
) {
    testkit::wait_until(what, timeout, || {
        let done = all_final(receiver, users, per_user);
        async move { done }
    })
    .await;
}

/// The `:SS ` seconds field of the last change's `DateTime` (see [`alternating`]).
fn arrivals_of_final_second(per_user: usize) -> String {
    format!(":{:02} ", per_user - 1)
}

/// Waits until every user's last arrival at `receiver` is their final status, then checks
/// that no change arrived after a newer one.
async fn all_final_in_order(
    receiver: &Receiver,
    what: &str,
    timeout: Duration,
    users: usize,
    per_user: usize,
) {
    wait_all_final(receiver, what, timeout, users, per_user).await;
    assert_caught_up_in_order(receiver, users, per_user);
}

/// Every user's last status arrived last, and no change arrived after a newer one.
fn assert_caught_up_in_order(receiver: &Receiver, users: usize, per_user: usize) {
    let per_user_arrivals = arrivals(receiver);
    let last_status = final_status(per_user);
    for u in 0..users {
        let name = format!("u{u}");
        let seen = per_user_arrivals
            .get(&name)
            .unwrap_or_else(|| panic!("{name} never arrived"));
        assert!(
            seen.windows(2).all(|w| w[0].0 < w[1].0),
            "{name}: a change arrived after a newer one (or twice): {seen:?}"
        );
        assert_eq!(
            seen.last().unwrap().1,
            last_status,
            "{name} ends with a stale status: {seen:?}"
        );
    }
}

/// Two destinations of `test`: one whose partner answers `status` to everything (`failing`:
/// its id and tuning), and a healthy one; their receivers and the config naming them.
async fn failing_and_healthy(
    test: &DeliveryTest,
    status: u16,
    failing: (u64, &str),
    healthy: (u64, &str),
) -> (Receiver, Receiver, std::path::PathBuf) {
    let failing_receiver = Receiver::start().await;
    failing_receiver.respond(status, Duration::ZERO);
    let healthy_receiver = Receiver::start().await;
    let config = test.config(&[
        destination(failing.0, &failing_receiver, failing.1),
        destination(healthy.0, &healthy_receiver, healthy.1),
    ]);
    (failing_receiver, healthy_receiver, config)
}

#[tokio::test]
async fn a_failing_destination_waits_in_kafka_and_catches_up_in_order_while_the_other_keeps_its_pace()
 {
    let test = DeliveryTest::new(2).await;
    // Tiny queues, one lane: the failing destination's lane fills at once.
    let (failing, healthy, config) = failing_and_healthy(
        &test,
        503,
        (
            70,
            ", retry_backoff_ms: 10, max_in_flight: 1, queue_capacity: 5, \
             backoff: { initial_ms: 100, max_ms: 400 }, batch: { max_users: 5, linger_ms: 20 }",
        ),
        (
            71,
            ", max_in_flight: 1, queue_capacity: 5, batch: { max_users: 5, linger_ms: 20 }",
        ),
    )
    .await;
    let service = test.start(&config, &[]).await;
    let (users, per_user) = (40, 6);
    let started = Instant::now();
    test.produce(&test.topic, &alternating(users, per_user))
        .await;

    // The healthy destination gets every user's final status, without waiting for the other.
    wait_all_final(
        &healthy,
        "every user's final status at the healthy destination",
        Duration::from_secs(30),
        users,
        per_user,
    )
    .await;
    let healthy_done = started.elapsed();
    assert_caught_up_in_order(&healthy, users, per_user);
    // The failing one is behind: its changes wait in Kafka, counted.
    let series = |name: &str| format!(r#"{name}{{destination="70",topic="{}"}}"#, test.topic);
    testkit::wait_for(
        "a backlog reported for the failing destination",
        Duration::from_secs(10),
        || async {
            metric_value(
                &service.metrics().await,
                &series("delivery_backlog_messages"),
            )
        },
        |n| n.is_some_and(|n| n > 0.0),
    )
    .await;
    // The shared consumer committed past it: everything was read and the healthy one is done.
    testkit::wait_for(
        "the shared group committed to the end",
        Duration::from_secs(10),
        || async { test.committed(2).values().sum::<i64>() },
        |&n| n == (users * per_user) as i64,
    )
    .await;
    let m = service.metrics().await;
    assert!(
        metric_value(&m, r#"delivery_backoffs_total{destination="70"}"#).unwrap() >= 1.0,
        "the failing batch waited and was tried again"
    );
    assert_eq!(
        metric_value(
            &m,
            r#"delivery_events_total{destination="70",outcome="dead_lettered"}"#
        ),
        Some(0.0),
        "a transient failure never dead-letters"
    );

    // The partner answers again: it receives everything it missed, in per-user order.
    failing.respond(200, Duration::ZERO);
    all_final_in_order(
        &failing,
        "every user's final status at the recovered destination",
        Duration::from_secs(60),
        users,
        per_user,
    )
    .await;
    testkit::wait_for(
        "no backlog left",
        Duration::from_secs(15),
        || async {
            metric_value(
                &service.metrics().await,
                &series("delivery_backlog_messages"),
            )
        },
        |n| *n == Some(0.0),
    )
    .await;
    assert!(
        metric_value(
            &service.metrics().await,
            r#"delivery_catch_up_messages_total{destination="70"}"#
        )
        .unwrap()
            > 0.0,
        "what the recovered destination missed was read a second time, by its catch-up reader, and counted"
    );
    eprintln!("healthy destination done after {healthy_done:?} with the other failing");
}

#[tokio::test]
async fn a_restart_while_behind_resumes_the_backlog_from_the_committed_position() {
    let test = DeliveryTest::new(2).await;
    let (failing, healthy, config) = failing_and_healthy(
        &test,
        500,
        (
            72,
            ", retry_backoff_ms: 10, max_in_flight: 1, queue_capacity: 2, \
             backoff: { initial_ms: 200, max_ms: 200 }, batch: { max_users: 2, linger_ms: 20 }",
        ),
        (73, ""),
    )
    .await;
    let mut service = test.start(&config, &[]).await;
    let (users, per_user) = (30, 2);
    test.produce(&test.topic, &alternating(users, per_user))
        .await;
    wait_all_final(
        &healthy,
        "every user's final status at the healthy destination",
        Duration::from_secs(30),
        users,
        per_user,
    )
    .await;
    testkit::wait_for(
        "the shared group committed to the end, past the failing destination's backlog",
        Duration::from_secs(10),
        || async { test.committed(2).values().sum::<i64>() },
        |&n| n == (users * per_user) as i64,
    )
    .await;
    let before = arrivals(&failing).len();
    assert_eq!(before, 0, "the failing destination accepted nothing yet");
    service.kill9().await;

    failing.respond(200, Duration::ZERO);
    let _service = test.start(&config, &[]).await;
    all_final_in_order(
        &failing,
        "the backlog delivered after the restart",
        Duration::from_secs(60),
        users,
        per_user,
    )
    .await;
}

#[tokio::test]
async fn a_permanent_answer_is_dead_lettered_after_one_retry_and_the_destination_moves_on() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.script([Response::status(422), Response::status(422)]);
    let config = test.config(&[destination(74, &receiver, ", retry_backoff_ms: 10")]);
    let _service = test.start(&config, &[]).await;
    let mut first = alternating(1, 1);
    first[0].user_id = "refused".to_owned();
    test.produce(&test.topic, &first).await;
    let records = test.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(
        (
            records[0].error_class(),
            records[0].error.as_str(),
            records[0].attempts
        ),
        (model::ErrorClass::HttpStatus, "HTTP 422", 2)
    );
    test.produce(&test.topic, &alternating(1, 1)).await;
    let requests = receiver.wait_for_requests(3, Duration::from_secs(20)).await;
    assert_eq!(
        entries(requests.iter().skip(2).map(|r| json(&r.body))),
        [("u0".to_owned(), "14356".to_owned(), "1".to_owned())]
    );
}

/// A transiently failing batch waits, unless its changes are older than the destination's
/// `max_backlog_age_s`: then it is dead-lettered with its last failure, before the input's
/// retention could drop it unseen. The limit is exported for the near-expiry alert.
#[tokio::test]
async fn a_change_older_than_max_backlog_age_is_dead_lettered_the_others_wait() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(503, Duration::ZERO);
    let config = test.config(&[destination(
        75,
        &receiver,
        ", max_backlog_age_s: 60, retry_backoff_ms: 10, backoff: { initial_ms: 100, max_ms: 200 }",
    )]);
    let service = test.start(&config, &[]).await;
    let mut old = alternating(1, 1);
    old[0].user_id = "old".to_owned();
    old[0].produced_unix_ms = telemetry::clock::unix_ms() - 120_000;
    test.produce(&test.topic, &old).await;
    let records = test.dead_letters(1, Duration::from_secs(20)).await;
    assert_eq!(
        (
            records[0].updates[0].user_id.as_str(),
            records[0].error_class(),
            records[0].error.as_str()
        ),
        ("old", model::ErrorClass::HttpStatus, "HTTP 503")
    );
    // A fresh change at the same failing partner waits: tried again and again, never
    // dead-lettered.
    test.produce(&test.topic, &alternating(1, 1)).await;
    let series = |name: &str| format!(r#"{name}{{destination="75"}}"#);
    testkit::wait_until(
        "the fresh batch tried again a few times",
        Duration::from_secs(20),
        || async {
            metric_value(&service.metrics().await, &series("delivery_backoffs_total"))
                .is_some_and(|n| n >= 5.0)
        },
    )
    .await;
    let text = service.metrics().await;
    assert_eq!(
        metric_value(
            &text,
            r#"delivery_events_total{destination="75",outcome="dead_lettered"}"#
        ),
        Some(1.0),
        "only the old change is dead-lettered"
    );
    assert_eq!(
        metric_value(&text, &series("delivery_max_backlog_age_seconds")),
        Some(60.0)
    );
}

#[tokio::test]
async fn retry_after_pauses_the_destination_and_a_429_never_opens_the_circuit() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.script([
        Response::status(429).header("Retry-After", "2"),
        Response::status(429).header("Retry-After", "1"),
    ]);
    let config = test.config(&[destination(
        75,
        &receiver,
        ", retry_backoff_ms: 10, circuit: { failure_threshold: 1, cooldown_ms: 60000 }",
    )]);
    let service = test.start(&config, &[]).await;
    test.produce(&test.topic, &alternating(1, 1)).await;
    let requests = receiver.wait_for_requests(3, Duration::from_secs(30)).await;
    let gap = |a: usize, b: usize| requests[b].received_at - requests[a].received_at;
    assert!(
        gap(0, 1) >= Duration::from_millis(1_900),
        "Retry-After: 2 honoured: {:?}",
        gap(0, 1)
    );
    assert!(
        gap(1, 2) >= Duration::from_millis(900),
        "Retry-After: 1 honoured: {:?}",
        gap(1, 2)
    );
    assert_eq!(requests[2].status, 200);
    let m = service.metrics().await;
    assert_eq!(
        metric_value(&m, r#"delivery_circuit_open{destination="75"}"#),
        Some(0.0)
    );
    assert_eq!(
        metric_value(
            &m,
            r#"delivery_events_total{destination="75",outcome="dead_lettered"}"#
        ),
        Some(0.0)
    );
}

#[tokio::test]
async fn a_partner_response_body_is_read_up_to_64_kib_and_no_further() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond_with(Response::status(200).endless_body());
    let config = test.config(&[destination(76, &receiver, ", timeout_ms: 3000")]);
    let service = test.start(&config, &[]).await;
    test.produce(&test.topic, &alternating(1, 1)).await;
    testkit::wait_for(
        "the batch delivered although the answer never ends",
        Duration::from_secs(15),
        || async {
            metric_value(
                &service.metrics().await,
                r#"delivery_events_total{destination="76",outcome="delivered"}"#,
            )
        },
        |n| *n == Some(1.0),
    )
    .await;
    assert_eq!(receiver.requests().len(), 1, "no timeout, no retry");
}

#[tokio::test]
async fn a_failing_destination_holds_no_more_than_the_queue_budget_and_detaches_when_it_is_full() {
    let test = DeliveryTest::new(2).await;
    // Lanes that would take every change (100,000 places), a budget of 1 MiB for both
    // destinations: the failing one fills the budget, then holds more than its share of a
    // full budget, and detaches.
    let (failing, healthy, config) = failing_and_healthy(
        &test,
        503,
        (
            70,
            ", retry_backoff_ms: 10, max_in_flight: 1, queue_capacity: 100000, \
             backoff: { initial_ms: 100, max_ms: 400 }, circuit: { cooldown_ms: 500 }, \
             batch: { max_users: 200, linger_ms: 20 }",
        ),
        (71, ", max_in_flight: 1, queue_capacity: 100000"),
    )
    .await;
    let mut yaml = std::fs::read_to_string(&config).unwrap();
    yaml.push_str("queue_budget_mb: 1\n");
    std::fs::write(&config, yaml).unwrap();
    let service = test.start(&config, &[]).await;
    let (users, per_user) = (2_000, 10);
    test.produce_many(&test.topic, &alternating(users, per_user))
        .await;

    all_final_in_order(
        &healthy,
        "every user's final status at the healthy destination",
        Duration::from_secs(60),
        users,
        per_user,
    )
    .await;
    testkit::wait_for(
        "the shared group committed to the end",
        Duration::from_secs(15),
        || async { test.committed(2).values().sum::<i64>() },
        |&n| n == (users * per_user) as i64,
    )
    .await;
    // What the lanes hold now is the failing destination's: it took more than its share while
    // the budget had room (the budget is shared, not split), and no more than the budget.
    let m = service.metrics().await;
    let budget = metric_value(&m, "delivery_queue_budget_bytes").unwrap();
    assert_eq!(budget, f64::from(1 << 20));
    let queued = metric_value(&m, "delivery_queued_bytes").unwrap();
    let held = metric_value(&m, r#"delivery_queue_depth{destination="70"}"#).unwrap();
    eprintln!("the failing destination holds {held} changes, {queued} bytes");
    assert!(
        queued > budget / 2.0 && queued <= budget + 4_096.0,
        "the failing destination holds {queued} bytes with a budget of {budget}"
    );
    assert!(
        held < (users * per_user / 2) as f64,
        "the failing destination holds {held} of the {} changes",
        users * per_user
    );
    assert!(
        metric_value(&m, r#"delivery_detaches_total{destination="70"}"#).unwrap() >= 1.0,
        "the failing destination detached"
    );

    failing.respond(200, Duration::ZERO);
    all_final_in_order(
        &failing,
        "every user's final status at the recovered destination",
        Duration::from_secs(90),
        users,
        per_user,
    )
    .await;
    testkit::wait_for(
        "every byte given back",
        Duration::from_secs(10),
        || async { metric_value(&service.metrics().await, "delivery_queued_bytes") },
        |n| *n == Some(0.0),
    )
    .await;
}
