//! The positions of the destinations behind, in the metadata of the shared group's commit:
//! written at each commit (within Kafka's limit), read back at each assignment.

use super::{CommitPosition, PartitionState};

/// Kafka keeps at most `offset.metadata.max.bytes` (default 4096) of metadata per
/// committed offset.
pub const MAX_COMMIT_METADATA: usize = 4_000;
const METADATA_PREFIX: &str = "sr1";

/// The shared consumer's committable offset, with the positions of the destinations behind
/// it as metadata (`sr1;<destination>@<offset>;…`), so a restart or the partition's next
/// owner resumes each of them where it was. When the metadata would pass Kafka's limit, the
/// offset is held back to the first position left out (those destinations then re-send from
/// there, with every other one: duplicates, never a loss).
pub(super) fn commit_position(
    partition: i32,
    state: &PartitionState,
    ids: &[u64],
) -> Option<CommitPosition> {
    // Attached destinations hold the offset back with what they were handed and have not
    // finished; a destination behind holds only its own position.
    let mut offset = state.routed_to?;
    let mut behind: Vec<(i64, u64)> = Vec::new();
    for (d, &id) in ids.iter().enumerate() {
        let pending = state.oldest_pending(d);
        match state.detached.iter().find(|r| r.destination == d) {
            None => offset = pending.map_or(offset, |o| o.min(offset)),
            Some(reader) => {
                let position = pending.map_or(reader.position(), |o| o.min(reader.position()));
                behind.push((position, id));
            }
        }
    }
    behind.retain(|&(position, _)| position < offset);
    behind.sort_unstable();
    let oldest = behind.first().map_or(offset, |&(position, _)| position);
    let mut metadata = String::from(METADATA_PREFIX);
    for (position, id) in behind {
        let entry = format!(";{id}@{position}");
        if metadata.len() + entry.len() > MAX_COMMIT_METADATA {
            offset = position;
            break;
        }
        metadata.push_str(&entry);
    }
    Some(CommitPosition {
        partition,
        offset,
        metadata,
        oldest,
    })
}

/// The destinations' positions in a commit's metadata. Metadata that is not ours (empty, or
/// written by another tool) holds none; a malformed entry of ours is an error, since
/// ignoring it would skip that destination's backlog.
pub fn parse_positions(metadata: &str) -> Result<Vec<(u64, i64)>, String> {
    let Some(rest) = metadata.strip_prefix(METADATA_PREFIX) else {
        return Ok(Vec::new());
    };
    rest.split(';')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .split_once('@')
                .and_then(|(d, o)| Some((d.parse().ok()?, o.parse().ok()?)))
                .ok_or_else(|| {
                    format!("bad destination position `{entry}` in commit metadata `{metadata}`")
                })
        })
        .collect()
}
