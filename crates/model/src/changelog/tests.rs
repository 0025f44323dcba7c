//! The changelog's keys, and gathering users from trait parts: in order, compacted or not,
//! across generations, and what is left over.

use super::{Gatherer, Key, PART_MARK, is_part, part_key};
use crate::pb::{TraitHistory, TraitPart, UserState};

#[test]
fn keys_are_user_ids_or_trait_parts() {
    assert_eq!(Key::parse(b"u1"), Some(Key::User("u1")));
    assert_eq!(Key::parse(b""), Some(Key::User("")));
    let key = part_key("u\u{e9}1", 0x0102_0304_0506_07ff);
    assert_eq!(key.len(), "u\u{e9}1".len() + 9);
    assert_eq!(
        Key::parse(&key),
        Some(Key::Part {
            user: "u\u{e9}1",
            trait_id: 0x0102_0304_0506_07ff
        })
    );
    assert_eq!(
        Key::parse(&part_key("", 7)),
        Some(Key::Part {
            user: "",
            trait_id: 7
        })
    );
    // Not UTF-8, and no mark where a part's is.
    assert_eq!(Key::parse(b"\xffu1"), None);
    assert_eq!(Key::parse(&[PART_MARK, 0, 0]), None);
    let mut short = part_key("u1", 7);
    short.pop();
    assert_eq!(Key::parse(&short), None);
    let mut bad_user = part_key("u1", 7);
    bad_user[0] = 0xC3; // a lone lead byte: the user id is not UTF-8
    assert_eq!(Key::parse(&bad_user), None);
    // `is_part` answers as `parse` does, the mark looked at first.
    for key in [
        &key[..],
        &part_key("", 7),
        b"u1",
        b"123456789",
        &short,
        &bad_user,
    ] {
        let parsed = matches!(Key::parse(key), Some(Key::Part { .. }));
        assert_eq!(is_part(key), parsed, "{key:?}");
    }
    assert!(is_part(&key) && !is_part(b"u1"));
}

fn history(trait_id: u64, times: &[i64]) -> TraitHistory {
    TraitHistory {
        trait_id,
        times_unix_ms: times.to_vec(),
    }
}

fn part(generation: u64, times: &[i64]) -> Option<TraitPart> {
    Some(TraitPart {
        generation,
        // The key's trait id counts, not the history's.
        history: Some(history(0, times)),
    })
}

fn apart(user: &str, generation: u64, last_seen: i64) -> UserState {
    UserState {
        user_id: user.to_owned(),
        traits_apart: true,
        traits_generation: generation,
        last_seen_unix_ms: last_seen,
        ..UserState::default()
    }
}

/// A changelog record, as read.
enum Record {
    Part(&'static str, u64, Option<TraitPart>),
    User(UserState),
    Tombstone(&'static str),
}

/// Gathers `records` as a restore does: each user's previous state is what was gathered at
/// their previous record. The users' last states, and the orphans.
fn gather(records: Vec<Record>) -> (Vec<UserState>, (usize, usize)) {
    let mut gatherer = Gatherer::default();
    let mut users: std::collections::BTreeMap<String, UserState> = Default::default();
    for record in records {
        match record {
            Record::Part(user, trait_id, part) => gatherer.part(user, trait_id, part),
            Record::User(mut state) => {
                let previous = users.remove(&state.user_id);
                gatherer.user(&mut state, previous);
                users.insert(state.user_id.clone(), state);
            }
            Record::Tombstone(user) => {
                gatherer.forget(user);
                users.remove(user);
            }
        }
    }
    (users.into_values().collect(), gatherer.orphans())
}

/// Two transactions of one user, as written: the first writes every history, the second one
/// changed history and one removed. Then the same records compacted (the latest of each key).
fn written() -> Vec<Record> {
    vec![
        Record::Part("u1", 30, part(1, &[3])),
        Record::Part("u1", 10, part(1, &[1])),
        Record::Part("u1", 20, part(1, &[2])),
        Record::User(apart("u1", 1, 100)),
        Record::Part("u1", 20, part(1, &[2, 4])),
        Record::Part("u1", 30, None),
        Record::User(apart("u1", 1, 200)),
    ]
}

fn compacted() -> Vec<Record> {
    vec![
        Record::Part("u1", 10, part(1, &[1])),
        Record::Part("u1", 20, part(1, &[2, 4])),
        Record::Part("u1", 30, None),
        Record::User(apart("u1", 1, 200)),
    ]
}

#[test]
fn a_record_with_its_traits_apart_gets_them_the_same_compacted_or_not() {
    let expected = UserState {
        traits: vec![history(10, &[1]), history(20, &[2, 4])],
        ..apart("u1", 1, 200)
    };
    let (users, orphans) = gather(written());
    assert_eq!(users, vec![expected.clone()]);
    assert_eq!(orphans, (0, 0));
    let (users, orphans) = gather(compacted());
    assert_eq!(users, vec![expected]);
    assert_eq!(orphans, (0, 0));
}

#[test]
fn a_record_with_its_traits_inline_takes_no_part() {
    // A writer went back to `traits`: its record holds every history, and the parts left
    // before it (never tombstoned) are not taken, by it or by a later generation.
    let whole = UserState {
        traits: vec![history(40, &[5])],
        traits_generation: 1,
        ..UserState {
            user_id: "u1".to_owned(),
            ..UserState::default()
        }
    };
    let mut records = written();
    records.push(Record::Part("u1", 10, part(1, &[9])));
    records.push(Record::User(whole.clone()));
    let (users, _) = gather(records);
    assert_eq!(users, vec![whole]);

    // The next writer of parts starts generation 2 and writes every history. Compacted, the
    // user's records of generation 1 and the one with its traits inline are gone, superseded
    // by the last: the stale parts of generation 1 (10, 20) are not taken.
    let mut records = compacted();
    records.pop();
    records.push(Record::Part("u1", 40, part(2, &[5, 6])));
    records.push(Record::User(apart("u1", 2, 300)));
    let (users, orphans) = gather(records);
    assert_eq!(
        users,
        vec![UserState {
            traits: vec![history(40, &[5, 6])],
            ..apart("u1", 2, 300)
        }]
    );
    assert_eq!(orphans, (0, 0));
}

#[test]
fn a_record_of_a_new_generation_does_not_keep_the_histories_of_the_last() {
    let mut records = written();
    records.push(Record::Part("u1", 50, part(2, &[7])));
    records.push(Record::User(apart("u1", 2, 300)));
    let (users, _) = gather(records);
    assert_eq!(
        users,
        vec![UserState {
            traits: vec![history(50, &[7])],
            ..apart("u1", 2, 300)
        }]
    );
}

#[test]
fn parts_after_a_users_last_record_or_tombstone_are_orphans_or_dropped() {
    let mut records = written();
    records.push(Record::Tombstone("u1"));
    records.push(Record::Part("u2", 10, part(1, &[1])));
    records.push(Record::Part("u2", 20, None));
    records.push(Record::Part("u3", 10, part(1, &[1])));
    records.push(Record::Tombstone("u3"));
    let (users, orphans) = gather(records);
    assert_eq!(users, Vec::new());
    assert_eq!(
        orphans,
        (1, 2),
        "u2's two parts; u3's went with its tombstone"
    );
}
