//! The partner body's measures and entries: the exact JSON length of its header, a user's
//! entry and a segment (so a batch closes before it would pass `max_bytes`), and a user's
//! `Users` entries written as they join the batch.

use model::partner::{PartnerUser, write_user};

use crate::config::DestinationConfig;
use crate::update::PartnerUuids;

/// Length of `"…"` with JSON escapes, as serde_json writes it.
fn json_str_bytes(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
            0..=0x1f => 6,
            _ => 1,
        })
        .sum::<usize>()
}

/// The decimal digits of `n` (`0` has one).
pub(super) fn digits(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |log| log as usize + 1)
}

/// `ProcessTime` (now) is 28 characters (`Wed Jul 27 16:17:22 UTC 2016`) until year 9999. A
/// segment's `DateTime`, whose time comes from the input and may be anything, is measured by
/// writing it.
pub(crate) const DATE_BYTES: usize = 28;

/// `{"ProcessTime":"…","User_DPID":"…","Client_ID":"…","AAM_Destination_Id":"…","User_count":"","Users":[]}`
/// without the digits of `User_count`.
pub(super) fn header_bytes(destination: &DestinationConfig) -> usize {
    r#"{"ProcessTime":"","User_DPID":"","Client_ID":,"AAM_Destination_Id":"","User_count":"","Users":[]}"#.len()
        + DATE_BYTES
        + digits(destination.user_dpid)
        + json_str_bytes(&destination.client_id)
        + digits(destination.id)
}

/// A user's entry in the body without its two strings (each measured with its quotes).
pub(crate) const ENTRY_FRAME_BYTES: usize =
    r#"{"AAM_UUID":,"DataPartner_UUID":,"Segments":[]}"#.len();
/// A segment in the body without its `Segment_ID` (measured with its quotes) and `DateTime`.
pub(crate) const SEGMENT_FRAME_BYTES: usize = r#"{"Segment_ID":,"Status":"1","DateTime":""}"#.len();

/// Writes `user`'s `Users` entries (one per id of theirs at the destination's data partner,
/// or one with `""` when they have none; commas between) and returns their number.
pub(super) fn write_entries(
    out: &mut Vec<u8>,
    user: &PartnerUser<'_>,
    partner_uuids: PartnerUuids<'_>,
) -> usize {
    let count = partner_uuids.len();
    if count == 0 {
        write_user(user, out);
        return 1;
    }
    for (i, uuid) in partner_uuids.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_user(
            &PartnerUser {
                data_partner_uuid: uuid,
                ..*user
            },
            out,
        );
    }
    count
}
