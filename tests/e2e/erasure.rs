//! Right to erasure end to end: `qualifier forget` (and the ingest `forget` event) sends every
//! partner id a 0 for each membership, then the qualifier keeps nothing of the user and their
//! delivery log records can no longer be read; a user who comes back starts afresh.

use std::time::Duration;

use testkit::receiver::Receiver;

use crate::delivery::delivery_log::delivery_log;
use crate::pipeline::{Pipeline, RULES, entries, entry, id_sync, wait_entries};
use crate::qualifier::{now, trait_event};

/// `delivery log --user USER --json` on the pipeline's log topic: the records, as JSON.
async fn log_records(pipeline: &Pipeline, user: &str) -> Vec<serde_json::Value> {
    let (code, out, err) = delivery_log(&pipeline.delivery_test, &["--json", "--user", user]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str::<serde_json::Value>(&out)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

#[tokio::test]
async fn forget_sends_the_0s_then_erases_the_user_and_their_delivery_log() {
    let (ours, others) = (Receiver::start().await, Receiver::start().await);
    let pipeline = Pipeline::start(
        RULES,
        &[(1, &ours, ", data_partner: 1234"), (2, &others, "")],
    )
    .await;
    pipeline
        .post(&[
            trait_event("u1", 1, &now(), Some(6)),
            id_sync("u1", 1234, "a"),
            trait_event("u2", 1, &now(), None),
        ])
        .await;
    // u1's and u2's 1s, then the 1s for u1's id "a".
    wait_entries(&ours, 6).await;
    let logged = testkit::wait_for(
        "u1's records in the delivery log",
        Duration::from_secs(20),
        || log_records(&pipeline, "u1"),
        |records| records.len() >= 3,
    )
    .await;
    assert!(logged.len() >= 3, "{logged:?}");

    let (code, out, err) = pipeline
        .qualifier_test
        .command(&["forget", "--user", "u1"])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("asked to forget u1"), "{out}");
    // The ingest API takes the same request.
    pipeline
        .post(&[r#"{"type":"forget","user":"u2"}"#.to_owned()])
        .await;

    // Every partner id gets the 0s: "a" at data partner 1234's destination, "" elsewhere.
    let got = wait_entries(&ours, 10).await;
    let zeros: Vec<_> = got.iter().filter(|e| e.3 == "0").cloned().collect();
    assert_eq!(
        zeros
            .iter()
            .filter(|e| e.0 == "u1")
            .cloned()
            .collect::<Vec<_>>(),
        [entry("u1", "a", "14356", "0"), entry("u1", "a", "99", "0")]
    );
    assert_eq!(zeros.iter().filter(|e| e.0 == "u2").count(), 2);
    let elsewhere = testkit::wait_for(
        "the 0s at the other destination",
        Duration::from_secs(20),
        || async { entries(&others.requests()) },
        |got| got.iter().filter(|e| e.3 == "0").count() >= 4,
    )
    .await;
    assert!(
        elsewhere.contains(&entry("u1", "", "14356", "0")),
        "{elsewhere:?}"
    );

    // Nothing is kept about u1: the changelog's last word is a tombstone.
    let (code, shown, err) = pipeline
        .qualifier_test
        .command(&["show", "--user", "u1", "--json"])
        .await;
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["status"], "forgotten");
    assert_eq!(shown["partner_ids"], serde_json::json!([]));
    // Their delivery log records, the erasure's own 0s included, can no longer be read (the
    // 0s are logged after the tombstone: wait until they are surely written).
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        log_records(&pipeline, "u1").await,
        Vec::<serde_json::Value>::new()
    );
    assert_eq!(
        log_records(&pipeline, "u2").await,
        Vec::<serde_json::Value>::new()
    );

    // u1 comes back: a new user, without the erased id, visible in the log again.
    pipeline.post(&[trait_event("u1", 1, &now(), None)]).await;
    let got = wait_entries(&ours, 12).await;
    assert_eq!(
        got[10..],
        [entry("u1", "", "14356", "1"), entry("u1", "", "99", "1")]
    );
    let back = testkit::wait_for(
        "u1's new records",
        Duration::from_secs(20),
        || log_records(&pipeline, "u1"),
        |records| !records.is_empty(),
    )
    .await;
    assert!(
        back.iter()
            .all(|r| r["outcome"] == "delivered" && r["partner_uuids"] == serde_json::json!([])),
        "{back:?}"
    );
}
