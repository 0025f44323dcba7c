//! The consumer-group state some waits need (the waiting itself is `testkit::wait_for`).

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use testkit::kafka;

/// The consumer group's state as the coordinator describes it, and how many partitions each
/// member was assigned.
#[derive(Debug)]
pub struct GroupAssignment {
    pub state: String,
    pub partitions_per_member: Vec<usize>,
}

impl GroupAssignment {
    /// True when the group is done rebalancing and each of exactly `members` members holds
    /// at least one partition.
    pub fn settled_with(&self, members: usize) -> bool {
        self.state == "Stable"
            && self.partitions_per_member.len() == members
            && self.partitions_per_member.iter().all(|&n| n > 0)
    }
}

/// Describes `group` (state and each member's assignment).
pub fn group_assignment(group: &str) -> GroupAssignment {
    let client: BaseConsumer = kafka::client_config().create().unwrap();
    let list = client
        .fetch_group_list(Some(group), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot describe the consumer group {group}: {e}"));
    let Some(info) = list.groups().iter().find(|g| g.name() == group) else {
        return GroupAssignment {
            state: "Unknown".to_owned(),
            partitions_per_member: Vec::new(),
        };
    };
    GroupAssignment {
        state: info.state().to_owned(),
        partitions_per_member: info
            .members()
            .iter()
            .map(|m| m.assignment().map_or(0, assigned_partitions))
            .collect(),
    }
}

/// Waits until `members` processes share `group`'s partitions, each holding some: what a test
/// of work split between processes needs before it produces.
pub async fn group_settled(group: &str, members: usize, timeout: Duration) {
    testkit::wait_for(
        &format!("{members} members of {group} to hold partitions"),
        timeout,
        || async { group_assignment(group) },
        |assignment| assignment.settled_with(members),
    )
    .await;
}

/// How many partitions a consumer-protocol assignment holds: version (i16), then per topic a
/// name (i16 length, bytes) and partitions (i32 count, i32 each), then user data. A malformed
/// one counts as none.
fn assigned_partitions(bytes: &[u8]) -> usize {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (bytes.get(..n)?, bytes.get(n..)?);
        *bytes = rest;
        Some(head)
    }
    fn count(bytes: &[u8]) -> Option<usize> {
        let mut rest = bytes;
        take(&mut rest, 2)?; // version
        let topics = i32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?);
        let mut partitions = 0;
        for _ in 0..topics.max(0) {
            let name = i16::from_be_bytes(take(&mut rest, 2)?.try_into().ok()?);
            take(&mut rest, usize::try_from(name).ok()?)?;
            let n =
                usize::try_from(i32::from_be_bytes(take(&mut rest, 4)?.try_into().ok()?)).ok()?;
            take(&mut rest, n.checked_mul(4)?)?;
            partitions += n;
        }
        Some(partitions)
    }
    count(bytes).unwrap_or(0)
}
