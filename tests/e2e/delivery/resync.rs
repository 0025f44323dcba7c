//! `delivery resync` and `backfill: true`, the real binary: a compacted changelog of
//! `UserState`s written here (as the qualifier writes it: key = user id), the real broker, a
//! real HTTPS receiver. The partner gets exactly the current memberships of the destination's
//! segments (dated when the user qualified, with their partner ids) and nothing for opted-out,
//! forgotten or unmapped users; a Ctrl-C'd run resumes from the group's commits and a finished
//! one says so; a membership that ends while a resync runs is taken back with a 0; a backfill
//! sends once, also across a restart, and a worker that gives a backfill's partition up while
//! a request holding its users is out commits what that request delivered.

use std::collections::HashMap;
use std::time::Duration;

use model::pb::Membership;
use model::{PartnerIds, UserState};
use rdkafka::consumer::Consumer as _;
use rdkafka::producer::{FutureProducer, FutureRecord};
use testkit::kafka;
use testkit::receiver::{Receiver, Response};
use testkit::service::{Service, ServiceBuilder, metric_value};

use super::{DeliveryTest, T0, destination, json, map_segments, text};

/// A compacted changelog topic of this test.
struct Changelog {
    topic: String,
    producer: FutureProducer,
}

impl Changelog {
    async fn new(partitions: i32) -> Self {
        let topic = testkit::unique_name("changelog");
        kafka::create_topic(&topic, partitions, &[("cleanup.policy", "compact")]).await;
        Self {
            topic,
            producer: kafka::producer(),
        }
    }

    /// A changelog of 40 users (`<prefix>00` …), each in segment 14356, and their ids.
    async fn with_users(partitions: i32, prefix: &str) -> (Self, Vec<String>) {
        let changelog = Self::new(partitions).await;
        let users: Vec<String> = (0..40).map(|i| format!("{prefix}{i:02}")).collect();
        for id in &users {
            changelog
                .put(id, Some(&user(id, &[(14356, T0)], &[])))
                .await;
        }
        (changelog, users)
    }

    /// Writes the user's state (`None`: a tombstone).
    async fn put(&self, user: &str, state: Option<&UserState>) {
        let payload = state.map(prost::Message::encode_to_vec);
        let mut record = FutureRecord::<str, Vec<u8>>::to(&self.topic).key(user);
        if let Some(payload) = &payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
    }
}

/// A user in `memberships` (segment, since), with `ids` at data partner 1234.
fn user(id: &str, memberships: &[(u64, i64)], ids: &[&str]) -> UserState {
    UserState {
        user_id: id.to_owned(),
        regions: vec![7],
        partner_ids: if ids.is_empty() {
            Vec::new()
        } else {
            vec![PartnerIds {
                data_partner_id: 1234,
                partner_uuids: ids.iter().map(|s| (*s).to_owned()).collect(),
            }]
        },
        memberships: memberships
            .iter()
            .map(|&(segment_id, since_unix_ms)| Membership {
                segment_id,
                since_unix_ms,
                ..Membership::default()
            })
            .collect(),
        last_seen_unix_ms: T0,
        ..UserState::default()
    }
}

/// `delivery --config C resync --destination D --changelog-topic T <args>`, started.
fn resync(
    config: &std::path::Path,
    destination: u64,
    changelog: &Changelog,
    args: &[&str],
) -> Service {
    let mut builder = ServiceBuilder::new("delivery")
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("resync")
        .arg("--destination")
        .arg(destination.to_string())
        .arg("--changelog-topic")
        .arg(changelog.topic.as_str());
    for arg in args {
        builder = builder.arg(*arg);
    }
    builder.spawn()
}

/// Runs a resync to its end: its exit code and output.
async fn resync_to_end(
    config: &std::path::Path,
    destination: u64,
    changelog: &Changelog,
    args: &[&str],
) -> (Option<i32>, String) {
    let mut run = resync(config, destination, changelog, args);
    let status = run.wait_exit(Duration::from_secs(60)).await;
    (status.code(), run.log())
}

/// (user, DataPartner_UUID, Segment_ID, Status, DateTime) of every segment entry the receiver
/// accepted, in arrival order.
fn received(receiver: &Receiver) -> Vec<(String, String, String, String, String)> {
    let bodies = receiver
        .requests()
        .iter()
        .filter(|r| r.status == 200)
        .map(|r| json(&r.body))
        .collect::<Vec<_>>();
    map_segments(bodies, |user, segment| {
        (
            text(user, "AAM_UUID"),
            text(user, "DataPartner_UUID"),
            text(segment, "Segment_ID"),
            text(segment, "Status"),
            text(segment, "DateTime"),
        )
    })
}

fn entry(
    user: &str,
    id: &str,
    segment: &str,
    status: &str,
    date: &str,
) -> (String, String, String, String, String) {
    (
        user.to_owned(),
        id.to_owned(),
        segment.to_owned(),
        status.to_owned(),
        date.to_owned(),
    )
}

/// The resync group's committed offsets of `topic`, by partition.
fn committed(group: &str, topic: &str, partitions: i32) -> HashMap<i32, (i64, String)> {
    let consumer = kafka::consumer(group);
    let mut list = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        list.add_partition(topic, p);
    }
    consumer
        .committed_offsets(list, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            rdkafka::Offset::Offset(o) => Some((e.partition(), (o, e.metadata().to_owned()))),
            _ => None,
        })
        .collect()
}

/// Fails without the resync: nothing reaches the receiver. Fails if opted-out markers,
/// tombstones, superseded records or unmapped segments were sent (`received` would differ),
/// or if the membership's own DateTime or the partner ids were not used.
#[tokio::test]
async fn resync_sends_exactly_the_current_memberships_with_their_dates_and_ids() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(71, &receiver, ", data_partner: 1234")]);
    let changelog = Changelog::new(3).await;
    let s = |k: i64| T0 + k * 1_000;
    changelog
        .put(
            "u1",
            Some(&user("u1", &[(14356, s(1)), (12176, s(2))], &["idfa-1"])),
        )
        .await;
    changelog
        .put("u2", Some(&user("u2", &[(501, s(3)), (14356, s(4))], &[])))
        .await;
    changelog
        .put("u3", Some(&user("u3", &[(501, s(5))], &["idfa-3"])))
        .await;
    let opted_out = UserState {
        user_id: "u4".to_owned(),
        opted_out: true,
        opted_out_unix_ms: T0,
        ..UserState::default()
    };
    changelog.put("u4", Some(&opted_out)).await;
    changelog
        .put("u5", Some(&user("u5", &[(14356, s(6))], &[])))
        .await;
    changelog.put("u5", None).await; // forgotten since
    changelog
        .put(
            "u6",
            Some(&user("u6", &[(14356, s(7)), (12176, s(8))], &[])),
        )
        .await;
    changelog
        .put("u6", Some(&user("u6", &[(12176, s(8))], &[])))
        .await; // left 14356 since

    let (code, output) = resync_to_end(&config, 71, &changelog, &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains(
            "resync of destination 71 complete: 8 users read, 3 sent, 3 delivered, 0 dead-lettered"
        ),
        "{output}"
    );
    let mut got = received(&receiver);
    got.sort();
    assert_eq!(
        got,
        [
            entry("u1", "idfa-1", "14356", "1", "Wed Jul 27 16:17:23 UTC 2016"),
            entry("u1", "idfa-1", "99", "1", "Wed Jul 27 16:17:24 UTC 2016"),
            entry("u2", "", "14356", "1", "Wed Jul 27 16:17:26 UTC 2016"),
            entry("u6", "", "99", "1", "Wed Jul 27 16:17:30 UTC 2016"),
        ]
    );
    // Every partition is committed complete in the resync's own group.
    let group = format!("{}-resync-71", test.group);
    let commits = committed(&group, &changelog.topic, 3);
    assert_eq!(commits.len(), 3, "{commits:?}");
    assert!(
        commits.values().all(|(_, m)| m.starts_with("complete:")),
        "{commits:?}"
    );

    // A segment the destination does not map is refused by name; nothing is sent.
    let (code, output) = resync_to_end(&config, 71, &changelog, &["--segments", "14356,501"]).await;
    assert_eq!(code, Some(1), "{output}");
    assert!(
        output.contains("destination 71 does not map segment(s) 501"),
        "{output}"
    );
}

/// Fails without resuming from the group's commits (the second run would read all 40 users
/// again), without the complete marker (the third run would not say so), or without a
/// bounded, committed stop on SIGINT (exit code, or users missing at the partner).
#[tokio::test]
async fn a_resync_interrupted_by_ctrl_c_resumes_where_it_stopped_then_says_it_is_complete() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(200, Duration::from_millis(400));
    let config = test.config(&[destination(
        72,
        &receiver,
        ", max_in_flight: 1, batch: { max_users: 4, linger_ms: 20 }",
    )]);
    let (changelog, users) = Changelog::with_users(1, "r").await;

    let mut first = resync(&config, 72, &changelog, &[]);
    receiver.wait_for_requests(2, Duration::from_secs(30)).await;
    let pid = first.pid().unwrap();
    let killed = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = first.wait_exit(Duration::from_secs(30)).await;
    assert_eq!(status.code(), Some(130), "{}", first.log());
    assert!(
        first.log().contains("resync of destination 72 interrupted"),
        "{}",
        first.log()
    );
    let group = format!("{}-resync-72", test.group);
    let (stopped_at, metadata) = committed(&group, &changelog.topic, 1)[&0].clone();
    assert!(
        stopped_at > 0 && stopped_at < 40 && metadata.starts_with("running:"),
        "{stopped_at} {metadata}"
    );
    let delivered_first: usize = received(&receiver).len();
    assert!(
        delivered_first >= stopped_at as usize,
        "every committed user was delivered"
    );

    receiver.respond(200, Duration::ZERO);
    let (code, output) = resync_to_end(&config, 72, &changelog, &[]).await;
    assert_eq!(code, Some(0), "{output}");
    let rest = 40 - stopped_at;
    assert!(
        output.contains(&format!(
            "resync of destination 72 complete: {rest} users read, {rest} sent, {rest} delivered"
        )),
        "the second run reads only what the first did not finish:\n{output}"
    );
    let mut got: Vec<String> = received(&receiver).into_iter().map(|e| e.0).collect();
    got.sort();
    got.dedup();
    assert_eq!(got, users, "every user reached the partner");

    let before = receiver.requests().len();
    let (code, output) = resync_to_end(&config, 72, &changelog, &[]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("resync of destination 72 is already complete as of 20"),
        "{output}"
    );
    assert_eq!(receiver.requests().len(), before, "nothing sent again");

    let (code, output) = resync_to_end(&config, 72, &changelog, &["--restart"]).await;
    assert_eq!(code, Some(0), "{output}");
    assert!(
        output.contains("complete: 40 users read, 40 sent, 40 delivered"),
        "--restart sends everything again:\n{output}"
    );
}

/// Fails without the converge pass: the partner would end on the stale 1 of a user whose
/// membership ended while the resync ran.
#[tokio::test]
async fn a_membership_that_ends_while_a_resync_runs_is_taken_back_with_a_0() {
    let test = DeliveryTest::new(1).await;
    let receiver = Receiver::start().await;
    receiver.respond(200, Duration::from_millis(1_000));
    let config = test.config(&[destination(
        73,
        &receiver,
        ", max_in_flight: 1, batch: { max_users: 5, linger_ms: 20 }",
    )]);
    let changelog = Changelog::new(1).await;
    let users: Vec<String> = (0..10).map(|i| format!("c{i}")).collect();
    for id in &users {
        changelog
            .put(id, Some(&user(id, &[(14356, T0)], &[])))
            .await;
    }

    let mut run = resync(&config, 73, &changelog, &[]);
    let first = receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    let gone = json(&first[0].body)["Users"][0]["AAM_UUID"]
        .as_str()
        .unwrap()
        .to_owned();
    // The user leaves 14356 while their 1 is on its way (the qualifier writes the new state
    // and the live 0, which delivery may send before the resync's 1 arrives).
    changelog.put(&gone, Some(&user(&gone, &[], &[]))).await;
    let status = run.wait_exit(Duration::from_secs(60)).await;
    assert!(status.success(), "{}", run.log());

    let theirs: Vec<(String, String)> = received(&receiver)
        .into_iter()
        .filter(|e| e.0 == gone)
        .map(|e| (e.3, e.4))
        .collect();
    let statuses: Vec<&str> = theirs.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(statuses, ["1", "0"], "{}: {theirs:?}", run.log());
    assert_eq!(theirs[0].1, "Wed Jul 27 16:17:22 UTC 2016");
    assert!(
        !theirs[1].1.ends_with("2016"),
        "the 0 is dated now, not when the user qualified: {}",
        theirs[1].1
    );
    // The others keep their single 1.
    let ones = received(&receiver)
        .into_iter()
        .filter(|e| e.0 != gone && e.3 == "1")
        .count();
    assert_eq!(ones, 9);
}

/// Fails without `backfill: true` (nothing reaches the receiver), without the complete
/// marker (the restarted service would send everything again), or without the reload hook
/// (the destination a reload adds would get nothing).
#[tokio::test]
async fn a_backfill_destination_gets_every_membership_once_across_a_restart() {
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    let config = test.config(&[destination(74, &receiver, ", backfill: true")]);
    let changelog = Changelog::new(3).await;
    for i in 0..12 {
        let id = format!("b{i:02}");
        let memberships: &[(u64, i64)] = if i % 3 == 0 {
            &[(501, T0)]
        } else {
            &[(14356, T0), (12176, T0 + 1_000)]
        };
        changelog.put(&id, Some(&user(&id, memberships, &[]))).await;
    }
    let env = [("KAFKA_CHANGELOG_TOPIC", changelog.topic.as_str())];

    let mut service = test.start(&config, &env).await;
    testkit::wait_until("the backfill to complete", Duration::from_secs(30), || {
        let log = service.log();
        async move { log.contains("Backfill of destination complete.") }
    })
    .await;
    let mut got: Vec<(String, String, String)> = received(&receiver)
        .into_iter()
        .map(|e| (e.0, e.2, e.3))
        .collect();
    got.sort();
    let expected: Vec<(String, String, String)> = (0..12)
        .filter(|i| i % 3 != 0)
        .flat_map(|i| {
            let id = format!("b{i:02}");
            [
                (id.clone(), "14356".to_owned(), "1".to_owned()),
                (id, "99".to_owned(), "1".to_owned()),
            ]
        })
        .collect();
    let mut expected = expected;
    expected.sort();
    assert_eq!(got, expected);
    assert_eq!(
        metric_value(
            &service.metrics().await,
            r#"delivery_resync_users_total{destination="74",outcome="delivered"}"#
        ),
        Some(8.0)
    );
    assert!(service.log().contains("Backfill of partition complete."));
    service.terminate();
    assert!(service.wait_exit(Duration::from_secs(30)).await.success());

    let requests = receiver.requests().len();
    let restarted = test.start(&config, &env).await;
    testkit::wait_until(
        "the restarted backfill to find itself complete",
        Duration::from_secs(30),
        || {
            let log = restarted.log();
            async move { log.contains("Backfill of destination was complete already") }
        },
    )
    .await;
    assert_eq!(receiver.requests().len(), requests, "nothing sent again");

    // A destination a config reload adds gets its backfill from the running service.
    let added = Receiver::start().await;
    let reloaded = test.config(&[
        destination(74, &receiver, ", backfill: true"),
        destination(75, &added, ", backfill: true"),
    ]);
    std::fs::write(&config, std::fs::read(&reloaded).unwrap()).unwrap();
    testkit::wait_until(
        "the added destination's backfill to complete",
        Duration::from_secs(20),
        || {
            // The restarted service's only completion is 75's (74's was complete already).
            let log = restarted.log();
            async move { log.contains("Backfill of destination complete.") }
        },
    )
    .await;
    assert_eq!(received(&added).len(), 16, "8 users, 2 segments each");
    assert_eq!(receiver.requests().len(), requests, "74 got nothing again");
}

/// A backfill worker that gives a partition up while a request holding its users is out waits
/// for the answer and commits what it delivered: the worker that takes the partition over does
/// not send those users again. The first request lingers for a second, so it holds the users of
/// both partitions, whichever one the joining worker gets. Fails if the revocation commits the
/// position from before the answer (the new owner sends that partition's users again), or if
/// the joining worker took no partition that was still being backfilled (nothing was raced).
#[tokio::test]
async fn a_backfill_partition_given_up_while_a_request_is_out_is_committed_with_what_it_delivered()
{
    let test = DeliveryTest::new(2).await;
    let receiver = Receiver::start().await;
    receiver.script([Response::status(200).delay(Duration::from_secs(8))]);
    let config = test.config(&[destination(
        76,
        &receiver,
        ", backfill: true, timeout_ms: 20000, max_in_flight: 1, batch: { linger_ms: 1000 }",
    )]);
    let (changelog, users) = Changelog::with_users(2, "g").await;
    let env = [("KAFKA_CHANGELOG_TOPIC", changelog.topic.as_str())];
    let _a = test.start(&config, &env).await;
    receiver.wait_for_requests(1, Duration::from_secs(30)).await;
    let b = test.start(&config, &env).await;
    let group = format!("{}-backfill-76", test.group);
    testkit::wait_until(
        "both backfill partitions committed complete",
        Duration::from_secs(60),
        || {
            let commits = committed(&group, &changelog.topic, 2);
            let complete = commits.len() == 2
                && commits
                    .values()
                    .all(|(_, marker)| marker.starts_with("complete:"));
            async move { complete }
        },
    )
    .await;
    assert!(
        b.log().contains("Backfill of partition starts."),
        "the joining worker took over a partition still being backfilled: {}",
        b.log()
    );
    super::assert_each_accepted_once(&receiver, users.len());
}
