//! The users table against a map of the same users: every id found, at its entry, after any
//! mix of inserts and removes.

use std::collections::HashMap;
use std::sync::Arc;

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

/// Every user of `model` is found, with their entry and the id held for them, and no other.
fn same_users(users: &Users, model: &HashMap<String, (Arc<str>, u8)>) -> Result<(), TestCaseError> {
    prop_assert_eq!(users.len(), model.len());
    prop_assert_eq!(users.is_empty(), model.is_empty());
    for user in 0u8..48 {
        let id = format!("user-{user}");
        let found = users
            .get_key_value(&id)
            .map(|(id, e)| (id.clone(), mark(e)));
        match model.get(&id) {
            Some((held, mark)) => {
                let (found_id, found_mark) = found.expect("a stored user is found");
                prop_assert!(Arc::ptr_eq(&found_id, held), "the id first stored is held");
                prop_assert_eq!(found_mark, *mark);
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
        let mut model: HashMap<String, (Arc<str>, u8)> = HashMap::new();
        for step in steps {
            match step {
                Step::Insert(user, marked) => {
                    let id = format!("user-{user}");
                    let (held, replaced) = users.insert(Arc::from(id.as_str()), entry(marked));
                    let before = model.get(&id).cloned();
                    prop_assert_eq!(replaced.as_ref().map(mark), before.as_ref().map(|b| b.1));
                    if let Some((first, _)) = &before {
                        prop_assert!(Arc::ptr_eq(&held, first), "a user stored again keeps their id");
                    }
                    let held = before.map_or(held, |(first, _)| first);
                    model.insert(id, (held, marked));
                }
                Step::Remove(user) => {
                    let id = format!("user-{user}");
                    let removed = users.remove_entry(&id).map(|(held, e)| (held, mark(&e)));
                    match (removed, model.remove(&id)) {
                        (Some((held, got)), Some((first, want))) => {
                            prop_assert!(Arc::ptr_eq(&held, &first));
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
        users.insert(Arc::from(format!("user-{user}")), entry(user));
    }
    users.get_mut("user-7").unwrap().state = Box::from([200]);
    let (id, held) = users.get_key_value_mut("user-8").unwrap();
    assert_eq!(&**id, "user-8");
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
    assert_eq!(size_of::<u32>() + size_of::<(Arc<str>, Entry)>(), 44);
}

/// The entries grow by a quarter at a time: at any count, at most a fifth of their places (and
/// the 64 of the smallest growth) are empty, wherever the count falls against a power of two.
#[test]
fn the_entries_take_at_most_a_quarter_more_places_than_users() {
    let mut users = Users::default();
    for user in 0..200_000u32 {
        users.insert(Arc::from(format!("user-{user}").as_str()), entry(0));
        let (len, places) = (users.len(), users.held.capacity());
        assert!(
            places <= len + len / 4 + super::GROWN_AT_LEAST,
            "{places} places for {len} users"
        );
    }
}
