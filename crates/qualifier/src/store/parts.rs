//! The trait parts (`model::changelog`) a store writes: tombstones only. This release writes
//! every user's histories in their record; a user a restore gathered from parts (a later
//! release wrote them) is written whole as they change, and their parts are tombstoned before
//! that record, as a forgotten user's are: the changelog goes back to whole records. The
//! parts are those the record the user was taken from names, which the store keeps for such a
//! user whatever changed (`record.rs`, `Base::with_changed`).

use model::changelog::write_part_key;
use model::pb::TraitHistory;

use super::record::{Base, parted_trait_ids};

/// Writes the tombstones of a user's parts, into a key buffer it keeps.
#[derive(Debug, Default)]
pub(super) struct PartTombstones {
    key: Vec<u8>,
}

impl PartTombstones {
    /// A user forgotten: the parts the record they were taken from names, if any.
    pub(super) fn forgotten<E>(
        &mut self,
        user_id: &str,
        base: Option<&Base>,
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        match base {
            Some(base) => self.write(user_id, parted_trait_ids(&base.record), write),
            None => Ok(()),
        }
    }

    /// A user gathered from parts, written whole: the parts the record they were taken from
    /// names (without one, those of the histories they hold).
    pub(super) fn rewritten<E>(
        &mut self,
        user_id: &str,
        base: Option<&Base>,
        traits: &[TraitHistory],
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        match base {
            Some(base) => self.write(user_id, parted_trait_ids(&base.record), write),
            None => self.write(user_id, traits.iter().map(|h| h.trait_id), write),
        }
    }

    /// Hands `write` a tombstone for `user_id`'s part of each of `trait_ids`.
    fn write<E>(
        &mut self,
        user_id: &str,
        trait_ids: impl IntoIterator<Item = u64>,
        write: &mut impl FnMut(&[u8], Option<&[u8]>) -> Result<(), E>,
    ) -> Result<(), E> {
        for trait_id in trait_ids {
            write_part_key(&mut self.key, user_id, trait_id);
            write(&self.key, None)?;
        }
        Ok(())
    }
}
