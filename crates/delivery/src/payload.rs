//! A batch → the JSON body a partner receives (`model::partner`), and the `Idempotency-Key`
//! that stays the same when the same batch is sent again.

use model::partner::{PartnerRequest, PartnerUser, write_request};
use sha2::{Digest, Sha256};

use crate::batcher::DestinationBatch;

/// Writes the body of `batch` into `out` (cleared first). `User_count` is the number of
/// `Users` entries: one per user and synced partner id.
pub fn write_body(batch: &DestinationBatch, process_time_unix_ms: i64, out: &mut Vec<u8>) {
    let destination = batch.destination();
    let mut users = Vec::with_capacity(batch.entry_count());
    for user in &batch.users {
        let latest = batch.latest(user);
        let partner_uuids = batch.partner_uuids(user, destination.data_partner);
        let entry = |data_partner_uuid| PartnerUser {
            aam_uuid: &latest.user_id,
            data_partner_uuid,
            regions: &latest.regions,
            segments: &user.segments,
        };
        if partner_uuids.is_empty() {
            users.push(entry(""));
        } else {
            users.extend(partner_uuids.iter().map(|p| entry(p.as_str())));
        }
    }
    let request = PartnerRequest {
        process_time_unix_ms,
        user_dpid: destination.user_dpid,
        client_id: &destination.client_id,
        destination_id: destination.id,
        users: &users,
    };
    // Serializing borrowed strings and numbers into a Vec cannot fail.
    if let Err(error) = write_request(&request, out) {
        unreachable!("serializing a partner body failed: {error}");
    }
}

/// A key derived from what the batch carries (the input topic and positions of its events, or
/// for replayed events their content) and the destination: a retry, or a re-send of the same
/// events after a restart, carries the same key, so a partner can drop the duplicate.
pub fn idempotency_key(batch: &DestinationBatch, input_topic: &str) -> String {
    let mut hash = Sha256::new();
    hash.update(batch.destination().id.to_be_bytes());
    hash.update(input_topic.as_bytes());
    hash.update([0]);
    for event in &batch.events {
        match &event.source {
            Some(source) => {
                hash.update(source.assignment.partition.to_be_bytes());
                hash.update(source.offset.to_be_bytes());
            }
            None => {
                hash.update(event.update.user_id.as_bytes());
                for change in &event.update.changes {
                    hash.update(change.segment_id.to_be_bytes());
                    hash.update(change.status.to_be_bytes());
                    hash.update(change.time_unix_ms.to_be_bytes());
                }
            }
        }
    }
    let digest = hash.finalize();
    let mut key = [0_u8; 32];
    // 16 bytes fill the 32 hex digits exactly: the lengths match, so this cannot fail.
    let _ = hex::encode_to_slice(&digest[..16], &mut key);
    key.iter().copied().map(char::from).collect()
}
