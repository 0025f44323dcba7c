//! The table of values found by the id they hold, against a map by id; and a value found by
//! its id's hash alone.

use std::collections::HashMap;

use proptest::prelude::*;

use super::{ByOwnId, Keyed};

#[derive(Debug, Clone, PartialEq)]
struct Held {
    id: String,
    mark: u8,
}

impl Keyed for Held {
    fn id(&self) -> &[u8] {
        self.id.as_bytes()
    }
}

fn held(id: &str, mark: u8) -> Held {
    Held {
        id: id.to_owned(),
        mark,
    }
}

proptest! {
    /// Any mix of inserts and removes leaves the table holding what a map by id would.
    #[test]
    fn the_values_are_found_as_a_map_finds_them(
        steps in prop::collection::vec((any::<bool>(), 0..40u8, any::<u8>()), 0..300),
    ) {
        let mut table = ByOwnId::default();
        let mut model: HashMap<String, u8> = HashMap::new();
        for (insert, user, mark) in steps {
            let id = format!("user-{user}");
            if insert {
                let replaced = table.insert(held(&id, mark)).map(|h| h.mark);
                prop_assert_eq!(replaced, model.insert(id, mark));
            } else {
                prop_assert_eq!(table.remove(&id).map(|h| h.mark), model.remove(&id));
            }
            prop_assert_eq!(table.len(), model.len());
        }
        for user in 0..40u8 {
            let id = format!("user-{user}");
            prop_assert_eq!(table.get(&id).map(|h| h.mark), model.get(&id).copied());
            prop_assert_eq!(table.contains(&id), model.contains_key(&id));
        }
        let mut drained: Vec<(String, u8)> = table.drain().map(|h| (h.id, h.mark)).collect();
        let mut expected: Vec<(String, u8)> = model.into_iter().collect();
        drained.sort();
        expected.sort();
        prop_assert_eq!(drained, expected);
        prop_assert_eq!(table.len(), 0);
    }
}

/// A value found by its id's hash alone is the one whose id has that hash, though other values
/// share the table's tag of it (seven bits of the hash: among 100,000 values, many do).
#[test]
fn a_value_found_by_hash_is_the_one_with_that_hash() {
    let mut table = ByOwnId::default();
    let ids: Vec<String> = (0..100_000).map(|i| format!("user-{i}")).collect();
    for id in &ids {
        table.insert(held(id, 0));
    }
    for id in &ids {
        let hash = table.hash(id);
        let found = table.find_hashed(hash, |_| true).map(|h| h.id.as_str());
        assert_eq!(found, Some(id.as_str()), "found by the hash of {id}");
    }
    let hash = table.hash("user-7");
    assert!(table.find_hashed(hash, |h| h.mark == 1).is_none());
    let removed = table.remove_hashed(hash, |h| h.mark == 0).map(|h| h.id);
    assert_eq!(removed.as_deref(), Some("user-7"));
    assert!(!table.contains("user-7"));
    assert_eq!(table.len(), ids.len() - 1);
}
