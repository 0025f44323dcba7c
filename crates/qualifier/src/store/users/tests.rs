//! The users table against a map of the same users: every id found, at its entry, after any
//! mix of inserts and removes.

use std::collections::HashMap;

use proptest::prelude::*;
use prost::encoding::encoded_len_varint;

use super::{Entry, Users};
use crate::store::timers::Due;

fn entry(user_id: &str, mark: u8) -> Entry {
    Entry::new(user_id, &[mark], Due::new(Some(i64::from(mark))))
}

fn mark(entry: &Entry) -> u8 {
    entry.held()[0]
}

#[derive(Debug, Clone)]
enum Step {
    Insert(u8, u8),
    Remove(u8),
}

fn step() -> impl Strategy<Value = Step> {
    // Few ids, so that most inserts replace and most removes find their user.
    prop_oneof![
        3 => (0u8..48, any::<u8>()).prop_map(|(user, mark)| Step::Insert(user, mark)),
        2 => (0u8..48).prop_map(Step::Remove),
    ]
}

/// An id of `user`: some as long as the longest ids, whose length takes two bytes to write.
fn id(user: u8) -> String {
    match user % 3 {
        0 => format!(
            "user-{user}-{}",
            "x".repeat(crate::evaluate::MAX_ID_BYTES - 10)
        ),
        _ => format!("user-{user}"),
    }
}

/// Every user of `model` is found, with their entry, and no other.
fn same_users(users: &Users, model: &HashMap<String, u8>) -> Result<(), TestCaseError> {
    prop_assert_eq!(users.len(), model.len());
    prop_assert_eq!(users.is_empty(), model.is_empty());
    for user in 0u8..48 {
        let id = id(user);
        let found = users.get(&id);
        match model.get(&id) {
            Some(mark_held) => {
                let found = found.expect("a stored user is found");
                prop_assert_eq!(found.user_id(), id.as_str());
                prop_assert_eq!(mark(found), *mark_held);
                let hashed: Vec<&str> = users.hashed(users.hash(&id)).map(Entry::user_id).collect();
                prop_assert_eq!(hashed, [id.as_str()], "found by the hash of their id");
                // A position is filed under their hash: theirs, or one whose hash shares its
                // 7 bits and comes first.
                let filed = users.filed_under(users.hash(&id)).expect("filed");
                prop_assert!((filed as usize) < users.len(), "a position in the entries");
                // Their allocation: the id's field (its key first), then the mark.
                let at = users.position(&id).expect("stored") as u32;
                let id_field = 1 + encoded_len_varint(id.len() as u64) + id.len();
                prop_assert_eq!(users.allocation_len(at), id_field + 1);
                prop_assert_eq!(users.allocation_ends(at), 0x0a ^ mark_held);
            }
            None => prop_assert!(found.is_none(), "{id} was removed or never stored"),
        }
    }
    let mut listed: Vec<(String, u8)> = users
        .iter()
        .map(|entry| (entry.user_id().to_owned(), mark(entry)))
        .collect();
    let mut expected: Vec<(String, u8)> =
        model.iter().map(|(id, &mark)| (id.clone(), mark)).collect();
    listed.sort_unstable();
    expected.sort_unstable();
    prop_assert_eq!(listed, expected, "iter lists every user once");
    Ok(())
}

proptest! {
    #[test]
    fn the_users_are_found_as_a_map_finds_them(steps in prop::collection::vec(step(), 1..400)) {
        let mut users = Users::default();
        let mut model: HashMap<String, u8> = HashMap::new();
        for step in steps {
            match step {
                Step::Insert(user, marked) => {
                    let id = id(user);
                    let replaced = users.insert(entry(&id, marked));
                    prop_assert_eq!(replaced.as_ref().map(mark), model.insert(id, marked));
                }
                Step::Remove(user) => {
                    let id = id(user);
                    let removed = users.remove(&id);
                    prop_assert_eq!(removed.as_ref().map(Entry::user_id), model.contains_key(&id).then_some(id.as_str()));
                    prop_assert_eq!(removed.as_ref().map(mark), model.remove(&id));
                }
            }
            same_users(&users, &model)?;
        }
    }
}

#[test]
fn a_changed_entry_is_read_back_and_iter_mut_reaches_every_user() {
    let mut users = Users::default();
    for user in 0..100u8 {
        users.insert(entry(&format!("user-{user}"), user));
    }
    users.get_mut("user-7").unwrap().set_held(&[200]);
    let held = users.get_mut("user-8").unwrap();
    assert_eq!(held.user_id(), "user-8");
    held.set_held(&[201, 7]);
    assert_eq!(mark(users.get("user-7").unwrap()), 200);
    assert_eq!(users.get("user-8").unwrap().held(), [201, 7]);
    for entry in users.iter_mut() {
        let marked = mark(entry).wrapping_add(1);
        entry.set_held(&[marked]);
    }
    assert_eq!(mark(users.get("user-0").unwrap()), 1);
    assert_eq!(mark(users.get("user-7").unwrap()), 201);
    assert!(users.get("user-100").is_none());
}

#[test]
fn a_place_in_the_table_is_four_bytes_and_an_entry_twenty_four() {
    // What the module's memory figures rest on.
    assert_eq!(size_of::<u32>() + size_of::<Entry>(), 28);
}

/// An entry is its id's field 1 and the record: for an id that is not empty, the changelog
/// record's bytes as they are.
#[test]
fn an_entry_is_the_id_field_then_the_record() {
    for id in [
        "",
        "u",
        "user-7",
        &"y".repeat(crate::evaluate::MAX_ID_BYTES),
    ] {
        let record = [0x12, 0x01, 0x08];
        let entry = Entry::new(id, &record, Due::new(None));
        let mut expected = Vec::new();
        prost::encoding::string::encode(1, &id.to_owned(), &mut expected);
        let start = expected.len();
        expected.extend_from_slice(&record);
        assert_eq!(entry.held_start(), start, "{id:?}");
        assert_eq!(entry.held(), record);
        assert_eq!(entry.user_id(), id);
        assert_eq!(&entry.into_bytes()[..], expected);
        let bare = Entry::id_only(id, Due::new(None));
        assert_eq!((bare.user_id(), bare.held()), (id, &[][..]));
    }
}

/// The entries grow by a quarter at a time: at any count, at most a fifth of their places (and
/// the 64 of the smallest growth) are empty, wherever the count falls against a power of two.
#[test]
fn the_entries_take_at_most_a_quarter_more_places_than_users() {
    let mut users = Users::default();
    for user in 0..200_000u32 {
        users.insert(entry(&format!("user-{user}"), 0));
        let (len, places) = (users.len(), users.held.capacity());
        assert!(
            places <= len + len / 4 + super::GROWN_AT_LEAST,
            "{places} places for {len} users"
        );
    }
}
