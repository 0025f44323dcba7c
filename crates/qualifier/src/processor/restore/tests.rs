//! The restore gathers a user's trait histories from their trait parts (`model::changelog`),
//! read through librdkafka's mock cluster: the records of two transactions, as written.

use model::changelog::part_key;
use model::{TraitHistory, TraitPart, UserState};
use prost::Message as _;
use std::path::Path;
use testkit::kafka::{MockCluster, produce_keyed};

use super::*;

const NOW: i64 = 1_764_324_000_000;

fn history(trait_id: u64, times: &[i64]) -> TraitHistory {
    TraitHistory {
        trait_id,
        times_unix_ms: times.to_vec(),
    }
}

/// A part of generation 1 (`None`: a tombstone).
fn part(times: Option<&[i64]>) -> Option<Vec<u8>> {
    times.map(|times| {
        TraitPart {
            generation: 1,
            history: Some(history(0, times)),
        }
        .encode_to_vec()
    })
}

fn apart(user: &str, last_seen: i64) -> Option<Vec<u8>> {
    Some(
        UserState {
            user_id: user.to_owned(),
            traits_apart: true,
            traits_generation: 1,
            last_seen_unix_ms: last_seen,
            ..UserState::default()
        }
        .encode_to_vec(),
    )
}

/// Writes `records` to a one-partition changelog of a mock cluster and restores it under
/// definitions of traits `traits` (YAML's list) and one segment: the partition's store, and the
/// records the restore read.
fn restored(records: &[(Vec<u8>, Option<Vec<u8>>)], traits: &str) -> (PartitionStore, u64) {
    let cluster = MockCluster::new(1).unwrap();
    cluster.create_topic("changelog", 1, 1).unwrap();
    let brokers = cluster.bootstrap_servers();
    let keyed: Vec<(&[u8], Option<&[u8]>)> = records
        .iter()
        .map(|(key, payload)| (key.as_slice(), payload.as_deref()))
        .collect();
    produce_keyed(&brokers, "changelog", &keyed);
    let kafka =
        KafkaSettings::from_lookup(|name| (name == "KAFKA_BROKERS").then(|| brokers.clone()))
            .unwrap();
    let yaml = format!("traits: {traits}\nsegments:\n- {{ id: 100, rule: \"T101\" }}\n");
    let definitions = Definitions::parse(Path::new("restore.yaml"), &yaml).unwrap();
    let read = IntCounter::new("read", "records read").unwrap();
    let mut stores = restore(&kafka, "changelog", &[0], &definitions, &read).unwrap();
    (stores.remove(&0).unwrap(), read.get())
}

#[test]
fn a_restore_gathers_the_histories_of_a_record_from_its_trait_parts() {
    let whole = UserState {
        user_id: "w".to_owned(),
        traits: vec![history(101, &[NOW - 5])],
        last_seen_unix_ms: NOW - 5,
        ..UserState::default()
    };
    let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = vec![
        // u1's first transaction writes every history, the second one new and one removed.
        (part_key("u1", 103), part(Some(&[NOW - 30]))),
        (part_key("u1", 101), part(Some(&[NOW - 20]))),
        (b"u1".to_vec(), apart("u1", NOW - 20)),
        (part_key("u1", 102), part(Some(&[NOW - 10]))),
        (part_key("u1", 103), part(None)),
        (b"u1".to_vec(), apart("u1", NOW - 10)),
        // A user whose record holds its histories, a part of it left from before.
        (part_key("w", 102), part(Some(&[NOW - 40]))),
        (b"w".to_vec(), Some(whole.encode_to_vec())),
        // A part of a user with no record after it: dropped.
        (part_key("o", 101), part(Some(&[NOW - 1]))),
    ];
    let (mut store, read) = restored(
        &records,
        "[{ id: 101, ttl: 30d }, { id: 102 }, { id: 103 }]",
    );
    assert_eq!(read, records.len() as u64);
    assert_eq!(store.len(), 2, "u1 and w; no user for the orphan part");
    let u1 = store.stored("u1").unwrap();
    assert_eq!(
        u1.traits,
        [history(101, &[NOW - 20]), history(102, &[NOW - 10])],
        "the first transaction's 101, the second's 102, 103 removed"
    );
    assert_eq!(u1.last_seen_unix_ms, NOW - 10);
    assert_eq!(store.stored("w").unwrap(), whole, "no part taken");
}

#[test]
fn a_restored_partition_holds_its_users_packed_and_reads_them_back_whole() {
    // Enough users for the store's dictionary (its first 64 KiB of records) and more, each
    // written twice: the restore keeps the second.
    let user = |i: i64, seen: i64| UserState {
        user_id: format!("user-{i}"),
        traits: (0..i % 5 + 6)
            .map(|t| {
                let times: Vec<i64> = (0..6).map(|d| seen - t * 1_000 - d * 86_400_000).collect();
                history(101 + t as u64, &times)
            })
            .collect(),
        last_seen_unix_ms: seen,
        definitions_fingerprint: 0x5eed_5eed_5eed_5eed,
        ..UserState::default()
    };
    let users: Vec<UserState> = (0..3_000).map(|i| user(i, NOW - i)).collect();
    let records: Vec<(Vec<u8>, Option<Vec<u8>>)> = (0..3_000)
        .map(|i| user(i, NOW - 50_000))
        .chain(users.iter().cloned())
        .map(|u| (u.user_id.clone().into_bytes(), Some(u.encode_to_vec())))
        .collect();
    let traits: Vec<String> = (101..=110).map(|id| format!("{{ id: {id} }}")).collect();
    let (mut store, _) = restored(&records, &format!("[{}]", traits.join(", ")));
    assert_eq!(store.len(), users.len());
    let plain: usize = users
        .iter()
        .map(|u| u.encoded_len() - u.user_id.len() - 2)
        .sum();
    assert!(
        store.held_bytes() * 2 < plain,
        "{} B held of {plain}",
        store.held_bytes()
    );
    for user in users.iter().step_by(97) {
        assert_eq!(store.stored(&user.user_id).as_ref(), Some(user));
    }
}
