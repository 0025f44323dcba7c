//! A batch → the JSON body a partner receives (`model::partner`), and the `Idempotency-Key`
//! that stays the same when the same batch is sent again.

use model::partner::write_head;
use sha2::{Digest, Sha256};

use crate::batcher::DestinationBatch;

/// Writes the body of `batch` into `out` (cleared first): the head, then the users' entries
/// as the batch wrote them when each joined. `User_count` is the number of `Users` entries:
/// one per user and synced partner id.
pub fn write_body(batch: &DestinationBatch, process_time_unix_ms: i64, out: &mut Vec<u8>) {
    let destination = batch.destination();
    out.clear();
    write_head(
        process_time_unix_ms,
        destination.user_dpid,
        &destination.client_id,
        destination.id,
        batch.entry_count(),
        out,
    );
    batch.write_users(out);
    out.extend_from_slice(b"]}");
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
                hash.update(event.update.user_key());
                for change in event.update.changes() {
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
