//! The users table against a map of the same users: every id found, at its entry, after any
//! mix of inserts and removes.

use std::borrow::Cow;
use std::collections::HashMap;

use proptest::prelude::*;

use super::Users;
use crate::store::Entry;
use crate::store::timers::Due;

fn entry(mark: u8) -> Entry {
    Entry {
        state: Box::from([mark]),
        due: Due::new(Some(i64::from(mark))),
    }
}

fn mark(entry: &Entry) -> u8 {
    entry.state[0]
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

/// Where an id held lies: a user's id is held once, by one allocation.
type Held = *const u8;

/// Every user of `model` is found, with their entry and the id held for them, and no other.
fn same_users(users: &Users, model: &HashMap<String, (Held, u8)>) -> Result<(), TestCaseError> {
    prop_assert_eq!(users.len(), model.len());
    prop_assert_eq!(users.is_empty(), model.is_empty());
    for user in 0u8..48 {
        let id = format!("user-{user}");
        let found = users
            .get_key_value(&id)
            .map(|(id, e)| (id.as_ptr(), mark(e)));
        match model.get(&id) {
            Some((held, mark)) => {
                let (found_id, found_mark) = found.expect("a stored user is found");
                prop_assert_eq!(found_id, *held, "the id first stored is held");
                prop_assert_eq!(found_mark, *mark);
                let hashed: Vec<&str> = users.hashed(users.hash(&id)).map(|(id, _)| id).collect();
                prop_assert_eq!(hashed, [id.as_str()], "found by the hash of their id");
            }
            None => prop_assert!(found.is_none(), "{id} was removed or never stored"),
        }
    }
    let mut listed: Vec<(String, u8)> = users
        .iter()
        .map(|(id, entry)| (id.to_string(), mark(entry)))
        .collect();
    let mut expected: Vec<(String, u8)> = model
        .iter()
        .map(|(id, &(_, mark))| (id.clone(), mark))
        .collect();
    listed.sort_unstable();
    expected.sort_unstable();
    prop_assert_eq!(listed, expected, "iter lists every user once");
    Ok(())
}

proptest! {
    #[test]
    fn the_users_are_found_as_a_map_finds_them(steps in prop::collection::vec(step(), 1..400)) {
        let mut users = Users::default();
        let mut model: HashMap<String, (Held, u8)> = HashMap::new();
        for step in steps {
            match step {
                Step::Insert(user, marked) => {
                    let id = format!("user-{user}");
                    // Borrowed and owned ids by turns: either is stored for a new user.
                    let given = match marked % 2 {
                        0 => Cow::Borrowed(id.as_str()),
                        _ => Cow::Owned(id.clone()),
                    };
                    let (held, replaced) = users.insert(given, entry(marked));
                    prop_assert_eq!(held, id.as_str());
                    let held = held.as_ptr();
                    prop_assert_ne!(held, id.as_ptr(), "the id is the store's own");
                    let before = model.get(&id).cloned();
                    prop_assert_eq!(replaced.as_ref().map(mark), before.as_ref().map(|b| b.1));
                    if let Some((first, _)) = &before {
                        prop_assert_eq!(held, *first, "a user stored again keeps their id");
                    }
                    let held = before.map_or(held, |(first, _)| first);
                    model.insert(id, (held, marked));
                }
                Step::Remove(user) => {
                    let id = format!("user-{user}");
                    let removed = users.remove_entry(&id).map(|(held, e)| (held, mark(&e)));
                    match (removed, model.remove(&id)) {
                        (Some((held, got)), Some((first, want))) => {
                            prop_assert_eq!(held.as_ptr(), first);
                            prop_assert_eq!(got, want);
                        }
                        (None, None) => {}
                        (got, want) => prop_assert!(false, "removed {got:?}, held {want:?}"),
                    }
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
        users.insert(Cow::Owned(format!("user-{user}")), entry(user));
    }
    users.get_mut("user-7").unwrap().state = Box::from([200]);
    let (id, held) = users.get_key_value_mut("user-8").unwrap();
    assert_eq!(id, "user-8");
    held.state = Box::from([201]);
    assert_eq!(mark(users.get("user-7").unwrap()), 200);
    assert_eq!(mark(users.get("user-8").unwrap()), 201);
    for (_, entry) in users.iter_mut() {
        entry.state = Box::from([mark(entry).wrapping_add(1)]);
    }
    assert_eq!(mark(users.get("user-0").unwrap()), 1);
    assert_eq!(mark(users.get("user-7").unwrap()), 201);
    assert!(users.get("user-100").is_none());
}

#[test]
fn a_place_in_the_table_is_four_bytes_and_an_entry_forty() {
    // What the module's memory figures rest on.
    assert_eq!(size_of::<u32>() + size_of::<(Box<str>, Entry)>(), 44);
}

/// The entries grow by a quarter at a time: at any count, at most a fifth of their places (and
/// the 64 of the smallest growth) are empty, wherever the count falls against a power of two.
#[test]
fn the_entries_take_at_most_a_quarter_more_places_than_users() {
    let mut users = Users::default();
    for user in 0..200_000u32 {
        users.insert(Cow::Owned(format!("user-{user}")), entry(0));
        let (len, places) = (users.len(), users.held.capacity());
        assert!(
            places <= len + len / 4 + super::GROWN_AT_LEAST,
            "{places} places for {len} users"
        );
    }
}
