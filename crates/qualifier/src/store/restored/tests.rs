//! A restore's users spliced from trait parts are the users `model::changelog::Gatherer`
//! gathers from the same records, whatever the order of parts, records, generations and
//! tombstones; and their timers are set at the restore's end from the state as stored.

use model::changelog::{Gatherer, Key, part_key};
use model::pb::{TraitHistory, TraitPart};
use proptest::prelude::*;

use super::*;
use crate::store::tests::gather_with_orphans;

/// Restores `records` (key, value; `None` a tombstone) into a store as `processor/restore.rs`
/// does: a record with its histories apart by [`PartitionStore::put_gathered`], any other
/// whole, each user's timer due at their last activity (for the test to see it set).
pub(in crate::store) fn restore_log(records: &[(Vec<u8>, Option<Vec<u8>>)]) -> PartitionStore {
    let (mut gatherer, mut store) = (Gatherer::default(), PartitionStore::default());
    let mut state = UserState::default();
    for (key, value) in records {
        match (Key::parse(key).expect("a changelog key"), value) {
            (Key::Part { user, trait_id }, part) => {
                let part = part.as_deref().map(|p| TraitPart::decode(p).unwrap());
                gatherer.part(user, trait_id, part);
            }
            (Key::User(user), None) => {
                gatherer.forget(user);
                store.remove(user);
            }
            (Key::User(_), Some(record)) => {
                decode_reusing(&mut state, record).unwrap();
                if state.traits_apart {
                    let parts = gatherer.parts_of(&state);
                    store.put_gathered(&mut state, parts);
                } else {
                    gatherer.forget(&state.user_id);
                    let due = Some(state.last_seen_unix_ms);
                    store.put_encoded(&mut state, due);
                }
            }
        }
    }
    store.date_gathered(|state| Some(state.last_seen_unix_ms));
    store
}

/// Each user of `records` is stored as gathered, with their timer set (due at their last
/// activity); none other is.
fn assert_restored_as_gathered(records: &[(Vec<u8>, Option<Vec<u8>>)]) {
    let mut store = restore_log(records);
    // The reference: each user gathered by `Gatherer::user` on the state gathered at their
    // previous record.
    let (users, _) = gather_with_orphans(records);
    assert_eq!(store.len(), users.len());
    for (id, user) in users {
        let held = store.stored(&id);
        assert_eq!(held.as_ref(), Some(&user), "{id}");
        let due = store.take(&id).map(|(_, due)| due);
        assert_eq!(due, Some(Some(user.last_seen_unix_ms)), "{id}'s timer");
    }
}

fn history(trait_id: u64, times: &[i64]) -> TraitHistory {
    TraitHistory {
        trait_id,
        times_unix_ms: times.to_vec(),
    }
}

fn part(
    user: &str,
    trait_id: u64,
    generation: u64,
    times: Option<&[i64]>,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let value = times.map(|times| {
        TraitPart {
            generation,
            // The key's trait id counts, not the history's.
            history: Some(history(0, times)),
        }
        .encode_to_vec()
    });
    (part_key(user, trait_id), value)
}

fn record(
    user: &str,
    apart: bool,
    generation: u64,
    seen: i64,
    traits: Vec<TraitHistory>,
) -> (Vec<u8>, Option<Vec<u8>>) {
    let state = UserState {
        user_id: user.to_owned(),
        traits,
        last_seen_unix_ms: seen,
        traits_apart: apart,
        traits_generation: generation,
        memberships: vec![model::pb::Membership {
            segment_id: 7,
            since_unix_ms: seen,
            refreshed_unix_ms: 0,
        }],
        ..UserState::default()
    };
    (user.as_bytes().to_vec(), Some(state.encode_to_vec()))
}

#[test]
fn a_busy_users_versions_are_spliced_from_the_last_and_their_timer_set_once() {
    let mut records = Vec::new();
    // A first generation of 40 histories, then a version per transaction: one history
    // changed twice (the later part counts), one removed, one added before the others.
    records.extend((1..=40).map(|t| part("u", t, 1, Some(&[t as i64]))));
    records.push(record("u", true, 1, 100, Vec::new()));
    records.push(part("u", 7, 1, Some(&[70])));
    records.push(part("u", 7, 1, Some(&[71, 72])));
    records.push(part("u", 40, 1, None));
    records.push(part("u", 0, 1, Some(&[1])));
    records.push(record("u", true, 1, 200, Vec::new()));
    // A part of another generation (a writer that went back to whole records) is not taken.
    records.push(part("u", 8, 9, Some(&[80])));
    records.push(record("u", true, 1, 300, Vec::new()));
    let mut store = restore_log(&records);
    let u = store.stored("u").unwrap();
    let mut expected: Vec<_> = (1..40).map(|t| history(t, &[t as i64])).collect();
    expected.insert(0, history(0, &[1]));
    expected[7] = history(7, &[71, 72]);
    assert_eq!(u.traits, expected);
    assert_eq!((u.last_seen_unix_ms, u.traits_apart), (300, true));
    assert_eq!(
        store.due(i64::MAX, 10).collect::<Vec<_>>(),
        ["u"],
        "in the timer index"
    );
    assert_eq!(
        store.take("u").unwrap().1,
        Some(300),
        "dated at the end, from the last"
    );
    assert_restored_as_gathered(&records);

    // A new generation starts over; a whole record takes no part and drops those read.
    records.push(part("u", 3, 2, Some(&[3])));
    records.push(record("u", true, 2, 400, Vec::new()));
    assert_eq!(
        restore_log(&records).stored("u").unwrap().traits,
        [history(3, &[3])]
    );
    records.push(part("u", 5, 2, Some(&[5])));
    records.push(record("u", false, 2, 500, vec![history(9, &[9])]));
    records.push(record("u", true, 2, 600, Vec::new()));
    assert!(restore_log(&records).stored("u").unwrap().traits.is_empty());
    assert_restored_as_gathered(&records);
}

#[test]
fn a_user_forgotten_before_the_restores_end_gets_no_timer() {
    let mut records = vec![
        part("u", 1, 1, Some(&[1])),
        record("u", true, 1, 100, Vec::new()),
    ];
    records.push((b"u".to_vec(), None));
    let store = restore_log(&records);
    assert!(store.is_empty());
    assert_eq!(store.due(i64::MAX, 10).count(), 0);
    // Back, whole: the timer is the record's, one.
    records.push(record("u", false, 0, 200, vec![history(1, &[1])]));
    let mut store = restore_log(&records);
    assert_eq!(store.due(i64::MAX, 10).collect::<Vec<_>>(), ["u"]);
    assert_eq!(store.take("u").unwrap().1, Some(200));
    // Gathered, forgotten and back whole before the end, which dates them again: their one
    // timer moves (the index names a user by the id the store holds now, not the one gathered).
    let mut store = PartitionStore::default();
    let mut state = UserState::default();
    decode_reusing(&mut state, records[1].1.as_deref().unwrap()).unwrap();
    store.put_gathered(&mut state, std::iter::empty());
    store.remove("u");
    decode_reusing(&mut state, records[3].1.as_deref().unwrap()).unwrap();
    store.put_encoded(&mut state, Some(200));
    store.date_gathered(|_| Some(999));
    assert_eq!(store.due(i64::MAX, 10).collect::<Vec<_>>(), ["u"]);
    assert_eq!(store.take("u").unwrap().1, Some(999));
}

/// A record of the generated logs: a part, a user record (apart or whole), or a tombstone.
#[derive(Debug, Clone)]
enum Step {
    Part {
        user: bool,
        trait_id: u64,
        generation: u64,
        times: Option<Vec<i64>>,
    },
    Record {
        user: bool,
        apart: bool,
        generation: u64,
        traits: Vec<u64>,
    },
    Tombstone {
        user: bool,
    },
}

fn step() -> impl Strategy<Value = Step> {
    let times = proptest::option::of(proptest::collection::vec(0_i64..1_000, 0..3));
    prop_oneof![
        5 => (any::<bool>(), 0_u64..8, 1_u64..3, times).prop_map(|(user, trait_id, generation, times)| {
            Step::Part { user, trait_id, generation, times }
        }),
        3 => (any::<bool>(), prop::bool::weighted(0.8), 1_u64..3, proptest::collection::btree_set(0_u64..8, 0..3))
            .prop_map(|(user, apart, generation, traits)| Step::Record { user, apart, generation, traits: traits.into_iter().collect() }),
        1 => any::<bool>().prop_map(|user| Step::Tombstone { user }),
    ]
}

proptest! {
    /// Whatever the changelog holds, in whatever order, a restore's users are as gathered.
    #[test]
    fn a_restore_splices_users_as_the_gatherer_gathers_them(steps in proptest::collection::vec(step(), 0..40)) {
        let name = |user: bool| if user { "a" } else { "b" };
        let records: Vec<_> = steps
            .into_iter()
            .enumerate()
            .map(|(seen, step)| match step {
                Step::Part { user, trait_id, generation, times } => {
                    part(name(user), trait_id, generation, times.as_deref())
                }
                Step::Record { user, apart, generation, traits } => {
                    // A record apart holds no histories as written; one here that does is
                    // gathered over anyway.
                    let traits = traits.iter().map(|&t| history(t, &[seen as i64])).collect();
                    record(name(user), apart, generation, seen as i64, traits)
                }
                Step::Tombstone { user } => (name(user).as_bytes().to_vec(), None),
            })
            .collect();
        assert_restored_as_gathered(&records);
    }
}
