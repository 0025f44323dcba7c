//! Partner ids through the whole pipeline (qualifier → Kafka → delivery → partner): a newly
//! synced id gets the user's memberships, an evicted one its 0s, only at its data partner's
//! destinations; and a user at every limit still fits Kafka and reaches the partner.

use std::time::Duration;

use model::UserState;
use prost::Message as _;
use rdkafka::Message as _;
use testkit::receiver::Receiver;

use crate::delivery::json;
use crate::pipeline::{Pipeline, entries, entry, id_sync, wait_entries};
use crate::qualifier::{now, post, trait_event};
use testkit::service::metric_value;

/// Both segments hold for anyone who realized trait 1.
const RULES: &str =
    "traits: [{ id: 1 }]\nsegments: [{ id: 14356, rule: T1 }, { id: 12176, rule: T1 }]\n";

#[tokio::test]
async fn a_synced_partner_id_gets_the_users_memberships_and_an_evicted_one_its_0s() {
    let (ours, others) = (Receiver::start().await, Receiver::start().await);
    let pipeline = Pipeline::start(
        &format!("max_partner_ids: 2\n{RULES}"),
        &[
            (1, &ours, ", data_partner: 1234"),
            (2, &others, ", data_partner: 99"),
        ],
    )
    .await;
    pipeline.post(&[trait_event("u1", 1, &now(), None)]).await;
    let first = [entry("u1", "", "14356", "1"), entry("u1", "", "99", "1")];
    assert_eq!(wait_entries(&ours, 2).await, first);
    // The ids come 3 s after the user qualified: their 1s are dated then, but delivering them
    // takes no 3 s (their end-to-end latency counts from when they were made).
    tokio::time::sleep(Duration::from_secs(3)).await;

    pipeline.post(&[id_sync("u1", 1234, "a")]).await;
    pipeline.post(&[id_sync("u1", 1234, "b")]).await;
    // The same id again tells no one anything.
    pipeline.post(&[id_sync("u1", 1234, "a")]).await;
    // Past max_partner_ids: "b" (synced longest ago, as "a" came again) is evicted.
    pipeline.post(&[id_sync("u1", 1234, "c")]).await;
    let got = wait_entries(&ours, 10).await;
    assert_eq!(
        got,
        [
            first.to_vec(),
            vec![entry("u1", "a", "14356", "1"), entry("u1", "a", "99", "1")],
            vec![entry("u1", "b", "14356", "1"), entry("u1", "b", "99", "1")],
            vec![entry("u1", "b", "14356", "0"), entry("u1", "b", "99", "0")],
            vec![entry("u1", "c", "14356", "1"), entry("u1", "c", "99", "1")],
        ]
        .concat()
    );
    // Another data partner's destination got the user's changes, none of the targeted ones.
    assert_eq!(entries(&others.requests()), first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(entries(&ours.requests()).len(), 10, "nothing more");
    assert_eq!(entries(&others.requests()).len(), 2, "nothing more");
    let metrics = pipeline.delivery_metrics().await;
    let series = |suffix: &str| {
        metric_value(
            &metrics,
            &format!("delivery_end_to_end_latency_seconds_{suffix}"),
        )
        .unwrap_or_else(|| panic!("no {suffix} in {metrics}"))
    };
    assert_eq!(
        series(r#"bucket{destination="1",path="real_time",le="3"}"#),
        series(r#"count{destination="1",path="real_time"}"#),
        "a segment entry took more than 3 s from its change to the partner"
    );
}

#[tokio::test]
async fn a_user_at_every_limit_round_trips_through_the_changelog_and_the_partner() {
    // 14356 is the one the destination maps.
    const SEGMENTS: u64 = 500;
    let segments: String = (1..SEGMENTS)
        .chain([14356])
        .map(|id| format!("  - {{ id: {id}, rule: T1 }}\n"))
        .collect();
    let rules = format!("traits: [{{ id: 1 }}]\nsegments:\n{segments}");
    let receiver = Receiver::start().await;
    let pipeline = Pipeline::start(&rules, &[(1, &receiver, ", data_partner: 1")]).await;
    // More of everything than the defaults keep: 17 data partners × 17 ids of the longest
    // length, 65 regions, every segment.
    let mut lines: Vec<String> = (1..=65)
        .map(|region| trait_event("u1", 1, &now(), Some(region)))
        .collect();
    for data_partner in 1..=17u64 {
        for n in 0..17 {
            let uuid = format!("{data_partner:02}-{n:02}-{}", "x".repeat(506));
            lines.push(id_sync("u1", data_partner, &uuid));
        }
    }
    pipeline.post(&lines).await;

    // The changelog holds the capped user.
    let state = testkit::wait_for(
        "the user's changelog record at every limit",
        Duration::from_secs(60),
        || async { last_state(&pipeline.qualifier_test.changelog, "u1") },
        |state| {
            state.as_ref().is_some_and(|s| {
                s.partner_ids.len() == 16
                    && s.partner_ids.iter().all(|p| p.partner_uuids.len() == 16)
                    && s.partner_ids[0].data_partner_id == 2
            })
        },
    )
    .await
    .unwrap();
    assert_eq!(state.regions, (1..=64).collect::<Vec<u32>>());
    assert_eq!(state.memberships.len(), SEGMENTS as usize);
    assert!(
        state.encoded_len() < 900_000,
        "{} bytes",
        state.encoded_len()
    );
    // The destination of data partner 1 got the user's 1, a 1 for each of its 17 ids, a 0
    // for the first when the 17th came, and a 0 for the other 16 when the 17th data partner
    // evicted data partner 1; never more than 16 ids in a request.
    let got = wait_entries(&receiver, 1 + 17 + 1 + 16).await;
    for request in receiver.requests() {
        let body = json(&request.body);
        assert!(body["Users"].as_array().unwrap().len() <= 16);
        assert!(body["Users"][0]["AAM_Regions"].as_array().unwrap().len() <= 64);
    }
    let zeros = got.iter().filter(|e| e.3 == "0").count();
    assert_eq!(
        zeros, 17,
        "each of data partner 1's ids left the segment once"
    );

    // A restarted qualifier restores the user and can still write them: an opt-out ends all
    // 500 memberships in one update that names every kept id.
    drop(pipeline.qualifier);
    let restarted = pipeline
        .qualifier_test
        .start(&pipeline.qualifier_test.definitions(&rules), "b")
        .await;
    let opt_out = format!(r#"{{"type":"opt_out","user":"u1","time":"{}"}}"#, now());
    let (status, body) = post(&restarted.ingest, &[opt_out]).await;
    assert_eq!(status, 202, "{body}");
    let reader = pipeline
        .qualifier_test
        .reader(&pipeline.qualifier_test.status);
    let opted_out = loop {
        let update = crate::qualifier::updates(&reader, 1, Duration::from_secs(60))
            .await
            .remove(0);
        if update.changes.first().map(|c| c.reason()) == Some(model::ChangeReason::OptOut) {
            break update;
        }
    };
    assert_eq!(opted_out.changes.len(), SEGMENTS as usize);
    assert_eq!(opted_out.partner_ids.len(), 16);
    assert_eq!(opted_out.regions.len(), 64);
}

/// The last changelog record of `user` (`None`: none yet, or a tombstone).
fn last_state(topic: &str, user: &str) -> Option<UserState> {
    let mut last = None;
    testkit::kafka::settings()
        .read_to_end(topic, None, |message| {
            if message.key() == Some(user.as_bytes()) {
                last = message.payload().map(|p| UserState::decode(p).unwrap());
            }
        })
        .unwrap();
    last
}
