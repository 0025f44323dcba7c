//! A changelog whose users have their trait histories apart, a record each (trait parts:
//! `model::changelog`), written here as the next writer will write it: `qualifier show` and a
//! qualifier's restore take each user's histories from their parts, and the qualifier writes
//! a user who changed whole again, their parts tombstoned, with the real binary and broker.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use model::changelog::part_key;
use model::{SegmentStatus, TraitHistory, TraitPart, UserState};
use prost::Message as _;
use rdkafka::Message as _;
use rdkafka::consumer::StreamConsumer;
use rdkafka::producer::FutureRecord;
use testkit::kafka;
use testkit::service::metric_value;

use super::{Qualifier, QualifierTest, changes, no_more, now, post, trait_event, updates};

const RULES: &str = "inactivity: 120d\ntraits: [{ id: 1, ttl: 30d }, { id: 2 }]\nsegments:\n  - { id: 100, rule: \"T1 AND T2\" }\n";

const DAY_MS: i64 = 86_400_000;

/// Writes `key` → `payload` (`None`: a tombstone) to partition 0 of the test's changelog.
async fn put(test: &QualifierTest, key: &[u8], payload: Option<Vec<u8>>) {
    let mut record = FutureRecord::<[u8], Vec<u8>>::to(&test.changelog)
        .partition(0)
        .key(key);
    if let Some(payload) = &payload {
        record = record.payload(payload);
    }
    kafka::producer()
        .send(record, Duration::from_secs(10))
        .await
        .unwrap_or_else(|(e, _)| panic!("produce failed: {e}"));
}

fn part(trait_id: u64, time: i64) -> Option<Vec<u8>> {
    Some(
        TraitPart {
            generation: 1,
            history: Some(TraitHistory {
                trait_id,
                times_unix_ms: vec![time],
            }),
        }
        .encode_to_vec(),
    )
}

/// `qualifier show` prints u1's next timer as the expiry of trait 1 (30 days' time-to-live)
/// realized at `realized`: it took the history from u1's part (else the inactivity timer).
async fn shows_trait_1_expiring(test: &QualifierTest, definitions: &Path, realized: i64) {
    let config = definitions.to_str().unwrap();
    let (code, out, err) = test
        .command(&["show", "--user", "u1", "--config", config])
        .await;
    assert_eq!(code, 0, "{err}");
    let expiry = format!(
        "next timer    {}",
        model::rfc3339_ms(realized + 30 * DAY_MS)
    );
    assert!(out.contains(&expiry), "no `{expiry}` in:\n{out}");
}

/// An event of trait 2 qualifies u1 for "T1 AND T2" (segment 100): the qualifier holds their
/// history of trait 1.
async fn trait_2_qualifies_u1(q: &Qualifier, reader: &StreamConsumer) {
    let (status, body) = post(&q.ingest, &[trait_event("u1", 2, &now(), None)]).await;
    assert_eq!(status, 202, "{body}");
    let got = updates(reader, 1, Duration::from_secs(60)).await;
    assert_eq!(got[0].user_id, "u1");
    assert_eq!(
        changes(&got[0]),
        [(100, SegmentStatus::Active, model::ChangeReason::Qualified)]
    );
}

/// u1 realized trait 1 a minute ago (30 days' time-to-live), in a part of their own; their part
/// of trait 2 was removed. Fails if the parts were not taken: `show` would print the
/// inactivity timer (120 days after last seen) instead of trait 1's expiry, and the event of
/// trait 2 would qualify no one. Fails if the tombstone were not: the restore's sweep would
/// qualify u1 for "T1 AND T2" before any event.
#[tokio::test]
async fn a_users_trait_parts_are_their_histories_to_show_and_to_a_restore() {
    let test = QualifierTest::new(1).await;
    let definitions = test.definitions(RULES);
    let realized = telemetry::clock::unix_ms() - 60_000;
    put(&test, &part_key("u1", 1), part(1, realized)).await;
    put(&test, &part_key("u1", 2), part(2, realized)).await;
    put(&test, &part_key("u1", 2), None).await;
    let record = UserState {
        user_id: "u1".to_owned(),
        traits_apart: true,
        traits_generation: 1,
        last_seen_unix_ms: realized,
        ..UserState::default()
    };
    put(&test, b"u1", Some(record.encode_to_vec())).await;

    shows_trait_1_expiring(&test, &definitions, realized).await;

    let reader = test.reader(&test.status);
    let q = test.start(&definitions, "a").await;
    // Restored and swept (its record was evaluated under no definitions): T1 alone.
    no_more(&reader, Duration::from_secs(3)).await;
    trait_2_qualifies_u1(&q, &reader).await;

    // Written again, u1's record holds the histories, and the parts are tombstoned before it
    // (the changelog goes back to whole records as users change). Fails if the record kept
    // `traits_apart` or a part were left.
    // Each key's latest record, with its place in the partition.
    let latest: HashMap<Vec<u8>, (usize, Option<Vec<u8>>)> = changelog(&test)
        .into_iter()
        .enumerate()
        .map(|(at, (key, value))| (key, (at, value)))
        .collect();
    let (record_at, record) = &latest[b"u1".as_slice()];
    let record = UserState::decode(record.as_deref().unwrap()).unwrap();
    assert!(!record.traits_apart);
    let traits: Vec<u64> = record.traits.iter().map(|h| h.trait_id).collect();
    assert_eq!(traits, [1, 2]);
    for trait_id in [1, 2] {
        let (at, part) = &latest[&part_key("u1", trait_id)];
        assert!(part.is_none(), "trait {trait_id}'s part is not tombstoned");
        assert!(
            at < record_at,
            "trait {trait_id}'s tombstone comes after the record"
        );
    }
}

/// Every record of the test's changelog (partition 0), in order: (key, value).
fn changelog(test: &QualifierTest) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let mut records = Vec::new();
    kafka::settings()
        .read_to_end(&test.changelog, None, |message| {
            let key = message.key().unwrap_or_default().to_vec();
            records.push((key, message.payload().map(<[u8]>::to_vec)));
        })
        .unwrap();
    records
}

/// The test's changelog once `enough` holds of it (panics after 30 s).
async fn changelog_until(
    test: &QualifierTest,
    enough: impl Fn(&[(Vec<u8>, Option<Vec<u8>>)]) -> bool,
) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    let read = || async { changelog(test) };
    testkit::wait_for(
        "the changelog's records",
        Duration::from_secs(30),
        read,
        |r| enough(r),
    )
    .await
}

/// One of u1's changelog records.
enum U1Record<'a> {
    /// A trait part: its trait id and value (`None`: a tombstone).
    Part(u64, Option<&'a [u8]>),
    /// Their record, decoded.
    State(UserState),
}

/// Hands `each` u1's records among `records`, in order.
fn u1_records<'a>(records: &'a [(Vec<u8>, Option<Vec<u8>>)], mut each: impl FnMut(U1Record<'a>)) {
    for (key, value) in records {
        match model::changelog::Key::parse(key) {
            Some(model::changelog::Key::Part {
                user: "u1",
                trait_id,
            }) => each(U1Record::Part(trait_id, value.as_deref())),
            Some(model::changelog::Key::User("u1")) => {
                each(U1Record::State(
                    UserState::decode(value.as_deref().unwrap()).unwrap(),
                ));
            }
            _ => {}
        }
    }
}

/// The trait ids of u1's parts among `records`, in order (a tombstone's negated), and u1's
/// records there, decoded.
fn u1_parts_and_records(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> (Vec<i64>, Vec<UserState>) {
    let (mut parts, mut states) = (Vec::new(), Vec::new());
    u1_records(records, |record| match record {
        U1Record::Part(trait_id, value) => {
            let id = trait_id as i64;
            parts.push(if value.is_some() { id } else { -id });
        }
        U1Record::State(state) => states.push(state),
    });
    (parts, states)
}

/// The bytes of u1's record as a restore stores it, gathered from `records`: their last record
/// with the histories of their parts in, less the user id.
fn u1_stored_bytes(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> usize {
    let mut gatherer = model::changelog::Gatherer::default();
    let mut u1: Option<UserState> = None;
    u1_records(records, |record| match record {
        U1Record::Part(trait_id, value) => {
            let part = value.map(|v| TraitPart::decode(v).unwrap());
            gatherer.part("u1", trait_id, part);
        }
        U1Record::State(mut state) => {
            gatherer.user(&mut state, u1.take());
            u1 = Some(state);
        }
    });
    let mut u1 = u1.expect("u1's record");
    assert!(u1.traits.len() > 32, "{u1:?}");
    u1.user_id.clear();
    u1.encoded_len()
}

/// With `--changelog-trait-parts`, a qualifier writes a user of more than 32 histories as a
/// record without them and a part per history, then only the part of the history an event
/// changed; `qualifier show` and a restore by another process take the histories from the
/// parts. Fails if the user were written whole (no parts, histories in the record), if a later
/// event wrote every part again, or if the parts were not what the reader gathers: `show`
/// would print the inactivity timer, and the restored process would not qualify u1 for
/// "T1 AND T2" on trait 2's event.
#[tokio::test]
async fn a_qualifier_writing_trait_parts_restores_and_shows_what_it_wrote() {
    let test = QualifierTest::new(1).await;
    let mut traits: Vec<String> = (3..=40).map(|id| format!("{{ id: {id} }}")).collect();
    traits.insert(0, "{ id: 1, ttl: 30d }, { id: 2 }".to_owned());
    // A history is kept only for a trait a rule reads: segment 102 reads traits 4 to 40.
    let all: Vec<String> = (4..=40).map(|id| format!("T{id}")).collect();
    let rules = format!(
        "inactivity: 120d\ntraits: [{}]\nsegments:\n  - {{ id: 100, rule: \"T1 AND T2\" }}\n  - {{ id: 101, rule: T3 }}\n  - {{ id: 102, rule: \"{}\" }}\n",
        traits.join(", "),
        all.join(" AND ")
    );
    let definitions = test.definitions(&rules);
    let parts = [("CHANGELOG_TRAIT_PARTS", "true")];
    let reader = test.reader(&test.status);
    let q = test.start_with(&definitions, "a", &parts).await;
    // Traits 1 and 3 to 34: 33 histories, in one request (one transaction, most likely).
    let realized = telemetry::clock::unix_ms() - 60_000;
    let time = model::rfc3339_ms(realized);
    let mut events = vec![trait_event("u1", 1, &time, None)];
    events.extend((3..=34).map(|id| trait_event("u1", id, &time, None)));
    let (status, body) = post(&q.ingest, &events).await;
    assert_eq!(status, 202, "{body}");
    let got = updates(&reader, 1, Duration::from_secs(30)).await;
    assert_eq!(changes(&got[0])[0].0, 101);
    // The request's events may take more than one transaction: until the 33rd part.
    let records =
        changelog_until(&test, |records| u1_parts_and_records(records).0.len() >= 33).await;
    let (written, states) = u1_parts_and_records(&records);
    let last = states.last().expect("u1's record");
    assert!(last.traits_apart && last.traits.is_empty(), "{last:?}");
    let mut expected: Vec<i64> = vec![1];
    expected.extend(3..=34);
    let mut sorted = written.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, expected, "u1's parts: {written:?}");

    // Another event of trait 5: its part alone, then the record.
    let before = changelog(&test).len();
    let (status, body) = post(&q.ingest, &[trait_event("u1", 5, &now(), None)]).await;
    assert_eq!(status, 202, "{body}");
    let after = changelog_until(&test, |records| records.len() >= before + 2).await;
    let (written, states) = u1_parts_and_records(&after[before..]);
    assert_eq!(written, [5], "the parts an event of trait 5 wrote");
    assert_eq!(states.len(), 1);
    // `qualifier_changelog_bytes_total` counted every byte of each kind this process wrote.
    let metrics = q.service.metrics().await;
    for (record, parts) in [("user", false), ("part", true)] {
        let written: usize = after
            .iter()
            .filter(|(key, _)| model::changelog::is_part(key) == parts)
            .map(|(key, value)| key.len() + value.as_ref().map_or(0, Vec::len))
            .sum();
        let selector = format!(r#"qualifier_changelog_bytes_total{{record="{record}"}}"#);
        assert_eq!(
            metric_value(&metrics, &selector),
            Some(written as f64),
            "{record}"
        );
    }
    // u1, in the last transaction, is kept decoded: their record's bytes and a state's size.
    let stored = u1_stored_bytes(&after);
    let warm = metric_value(&metrics, "qualifier_warm_state_bytes").unwrap();
    assert!(
        warm > stored as f64 && warm < stored as f64 + 1024.0,
        "{warm} for {stored}"
    );
    q.service.terminate();

    shows_trait_1_expiring(&test, &definitions, realized).await;

    // Restored by another process, u1 is stored encoded and decoded at their next event.
    let q = test.start_with(&definitions, "b", &parts).await;
    trait_2_qualifies_u1(&q, &reader).await;
    let metrics = q.service.metrics().await;
    assert_eq!(
        metric_value(&metrics, "qualifier_state_decoded_bytes_total"),
        Some(stored as f64)
    );
}
