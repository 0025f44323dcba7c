//! Where the qualifier's changelog bytes go: each record split by what its bytes hold, so that
//! the benchmark's memory target is printed with what the state is made of, not only its size.

use model::changelog::is_part;
use model::pb::TraitHistory;
use model::{TraitPart, UserState};
use prost::Message as _;
use prost::encoding::{encoded_len_varint, message, string};

/// The bytes of changelog records (the latest of each key), by what they hold. Each part counts
/// its fields' tags and lengths with it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StateBytes {
    /// The user id's field in a user record.
    pub ids: u64,
    /// The trait histories' realization times, as varints.
    pub times: u64,
    /// The rest of the trait histories: each one's tag and length, trait id and times' tag and
    /// length, as in a user record (a trait part's history field is the same bytes).
    pub histories: u64,
    /// What a busy user's histories kept in trait parts cost beyond the histories: each part's
    /// key (their user id again, and the trait id) and generation.
    pub parts: u64,
    pub memberships: u64,
    pub partner_ids: u64,
    /// Every other field of a user record (last seen, sequence, fingerprint, …).
    pub other: u64,
}

impl StateBytes {
    /// The record `value` of changelog key `key`: a user's, or a trait part's (the key says).
    pub fn of_record(key: &[u8], value: &[u8]) -> Result<Self, String> {
        if is_part(key) {
            let part = TraitPart::decode(value).map_err(|e| format!("a trait part: {e}"))?;
            let mut bytes = Self::default();
            if let Some(history) = &part.history {
                bytes.add_history(2, history);
            }
            bytes.parts = key.len() as u64 + rest(value.len(), bytes.total())?;
            return Ok(bytes);
        }
        let user = UserState::decode(value).map_err(|e| format!("a user record: {e}"))?;
        let mut bytes = Self::default();
        if !user.user_id.is_empty() {
            bytes.ids = string::encoded_len(1, &user.user_id) as u64;
        }
        for history in &user.traits {
            bytes.add_history(2, history);
        }
        bytes.partner_ids = message::encoded_len_repeated(4, &user.partner_ids) as u64;
        bytes.memberships = message::encoded_len_repeated(5, &user.memberships) as u64;
        bytes.other = rest(value.len(), bytes.total())?;
        Ok(bytes)
    }

    pub fn total(&self) -> u64 {
        self.ids
            + self.times
            + self.histories
            + self.parts
            + self.memberships
            + self.partner_ids
            + self.other
    }

    pub fn add(&mut self, other: &Self) {
        self.ids += other.ids;
        self.times += other.times;
        self.histories += other.histories;
        self.parts += other.parts;
        self.memberships += other.memberships;
        self.partner_ids += other.partner_ids;
        self.other += other.other;
    }

    pub fn subtract(&mut self, other: &Self) {
        self.ids -= other.ids;
        self.times -= other.times;
        self.histories -= other.histories;
        self.parts -= other.parts;
        self.memberships -= other.memberships;
        self.partner_ids -= other.partner_ids;
        self.other -= other.other;
    }

    /// Per user, in bytes, one decimal: what `state-size` prints after its totals.
    pub fn per_user(&self, users: usize) -> String {
        let each = |bytes: u64| bytes as f64 / users.max(1) as f64;
        format!(
            "ids {:.1} · histories {:.1} (times {:.1}, the rest their framing and trait ids) · \
             trait parts' keys and generations {:.1} · memberships {:.1} · partner ids {:.1} · \
             other fields {:.1}",
            each(self.ids),
            each(self.times + self.histories),
            each(self.times),
            each(self.parts),
            each(self.memberships),
            each(self.partner_ids),
            each(self.other)
        )
    }

    /// One `TraitHistory` in field `field`, tag and length included.
    fn add_history(&mut self, field: u32, history: &TraitHistory) {
        let times: usize = (history.times_unix_ms.iter())
            .map(|&t| encoded_len_varint(t as u64))
            .sum();
        self.times += times as u64;
        self.histories += (message::encoded_len(field, history) - times) as u64;
    }
}

/// What a record's `len` bytes hold beyond the `counted` ones; an error when those add up to
/// more than the record (a field counted twice, or counted wrongly).
fn rest(len: usize, counted: u64) -> Result<u64, String> {
    (len as u64)
        .checked_sub(counted)
        .ok_or_else(|| format!("its parts count {counted} bytes, more than the record's {len}"))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use model::changelog::part_key;
    use model::pb::{Membership, PartnerIds};

    use super::*;

    /// A history of trait 7 realized twice; times of 6 varint bytes each (1.7e12 < 2^42).
    fn history() -> TraitHistory {
        TraitHistory {
            trait_id: 7,
            times_unix_ms: vec![1_700_000_000_000, 1_700_000_000_500],
        }
    }

    #[test]
    fn a_user_records_bytes_are_split_by_what_they_hold_and_add_up_to_it() {
        let user = UserState {
            user_id: "u1".to_owned(),
            traits: vec![history()],
            regions: vec![3],
            partner_ids: vec![PartnerIds {
                data_partner_id: 3,
                partner_uuids: vec!["ab".to_owned()],
            }],
            memberships: vec![Membership {
                segment_id: 9,
                since_unix_ms: 1_700_000_000_000,
                refreshed_unix_ms: 0,
            }],
            last_seen_unix_ms: 1_700_000_000_500,
            ..UserState::default()
        };
        let record = user.encode_to_vec();
        let bytes = StateBytes::of_record(b"u1", &record).unwrap();
        // Worked out by hand: the id's tag, length and 2 bytes; two 6-byte times; the
        // history's tag and length, trait id's tag and value, times' tag and length (6); the
        // membership's tag, length, two tags, 1 + 6 bytes of values (11); the partner ids'
        // tag, length, tag, value, tag, length, 2 bytes (8); regions (3) and last seen (7).
        let expected = StateBytes {
            ids: 4,
            times: 12,
            histories: 6,
            parts: 0,
            memberships: 11,
            partner_ids: 8,
            other: 10,
        };
        assert_eq!(bytes, expected);
        assert_eq!(bytes.total(), record.len() as u64);
    }

    #[test]
    fn a_trait_parts_history_counts_as_in_a_user_record_and_its_key_and_generation_apart() {
        let part = TraitPart {
            generation: 5,
            history: Some(history()),
        };
        let (key, value) = (part_key("u1", 7), part.encode_to_vec());
        let bytes = StateBytes::of_record(&key, &value).unwrap();
        let expected = StateBytes {
            times: 12,
            histories: 6,
            // The key (2 + 9 bytes) and the generation's tag and value.
            parts: 13,
            ..StateBytes::default()
        };
        assert_eq!(bytes, expected);
        assert_eq!(bytes.total(), (key.len() + value.len()) as u64);
    }

    #[test]
    fn what_is_not_a_changelog_record_or_counts_past_one_is_an_error() {
        assert!(StateBytes::of_record(b"u1", &[0xFF, 0xFF]).is_err());
        assert!(StateBytes::of_record(&part_key("u1", 7), &[0x12, 0x09]).is_err());
        assert_eq!(rest(5, 3), Ok(2));
        assert!(rest(3, 5).unwrap_err().contains("more than the record's 3"));
    }

    #[test]
    fn totals_follow_each_keys_latest_record() {
        let one = StateBytes::of_record(&part_key("u1", 7), &TraitPart::default().encode_to_vec());
        let (one, mut all) = (one.unwrap(), StateBytes::default());
        all.add(&one);
        all.add(&one);
        all.subtract(&one);
        assert_eq!(all, one);
        let per_user = all.per_user(2);
        assert!(
            per_user.starts_with("ids 0.0 · histories 0.0 (times 0.0"),
            "{per_user}"
        );
        assert!(
            per_user.contains("keys and generations 5.5 ·"),
            "{per_user}"
        );
    }
}
