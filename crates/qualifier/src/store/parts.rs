//! The trait parts (`model::changelog`) a store writes: tombstones only. This release writes
//! every user's histories in their record; a user a restore gathered from parts (a later
//! release wrote them) is written whole as they change, and their parts are tombstoned before
//! that record, as a forgotten user's are: the changelog goes back to whole records.

use model::changelog::write_part_key;
use model::pb::TraitHistory;

/// Writes the tombstones of a user's parts, into a key buffer it keeps.
#[derive(Debug, Default)]
pub(super) struct PartTombstones {
    key: Vec<u8>,
}

impl PartTombstones {
    /// Hands `write` a tombstone for `user_id`'s part of each of `trait_ids`.
    pub(super) fn write<E>(
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

/// The parts of a user gathered from them who changed: of the histories they hold (`traits`,
/// in ascending trait id), then of those the transaction's events removed (among `touched`, the
/// histories the events changed; a history a timer or sweep removed is not known, and its part
/// is left, never taken again since the user's record is whole).
pub(super) fn held_or_removed<'a>(
    traits: &'a [TraitHistory],
    touched: &'a [u64],
) -> impl Iterator<Item = u64> + 'a {
    let removed = touched
        .iter()
        .filter(|&&id| traits.binary_search_by_key(&id, |h| h.trait_id).is_err());
    traits.iter().map(|h| h.trait_id).chain(removed.copied())
}
