//! Where a consumer group's assigned partitions start: read here from the group's commits and
//! given to librdkafka as explicit offsets, instead of leaving it to fetch them after the
//! assignment. librdkafka 2.12.1 sends that fetch to the group coordinator it knows; when the
//! coordinator has just moved (its broker restarted or died) and the whole request is answered
//! `NOT_COORDINATOR`, it never sends it again, and the partitions are never fetched while the
//! consumer polls on, healthy to every probe (librdkafka issue #5586; met in this repository on
//! a fresh broker, whose coordinator did not exist yet). `rd_kafka_committed` returns that
//! error to its caller instead, and [`read_commits`] asks again.

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{Offset, TopicPartitionList};

/// How long a rebalance callback asks for the commits of assigned partitions before it gives
/// up (and its service stops, to be restarted): a coordinator that moved answers within
/// seconds; one that does not answer for this long is not coming back to this client.
pub const PATIENCE: Duration = Duration::from_secs(30);
/// One attempt to read the commits waits at most this long.
const ATTEMPT: Duration = Duration::from_secs(10);
/// Between attempts.
const PAUSE: Duration = Duration::from_millis(500);

/// The group's commits of `partitions` (offset and metadata; a partition without one has
/// [`Offset::Invalid`]), read through `consumer`'s group coordinator and read again while it
/// fails (the coordinator moving or loading, a transaction's offsets not yet stable), for up to
/// `patience`; then the last error. Blocks.
pub fn read_commits<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    partitions: &TopicPartitionList,
    patience: Duration,
) -> KafkaResult<TopicPartitionList> {
    let deadline = Instant::now() + patience;
    let mut attempts = 0_u32;
    loop {
        attempts += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        let error = match consumer.committed_offsets(partitions.clone(), remaining.min(ATTEMPT)) {
            Ok(commits) => match commits.elements().iter().find_map(|e| e.error().err()) {
                None => return Ok(commits),
                Some(error) => error,
            },
            Err(error) => error,
        };
        if Instant::now() + PAUSE >= deadline {
            return Err(error);
        }
        tracing::warn!(%error, attempts, "Cannot read the committed offsets of assigned partitions yet; asking again.");
        std::thread::sleep(PAUSE);
    }
}

/// `commits` as explicit starts: each partition at its commit, one without a commit at its
/// beginning (what `auto.offset.reset=earliest`, set by every group consumer here, gives it);
/// the commits' metadata kept.
pub fn explicit_starts(commits: &TopicPartitionList) -> KafkaResult<TopicPartitionList> {
    let mut starts = TopicPartitionList::with_capacity(commits.count());
    for commit in commits.elements() {
        let offset = match commit.offset() {
            Offset::Offset(offset) => Offset::Offset(offset),
            _ => Offset::Beginning,
        };
        let mut start = starts.add_partition(commit.topic(), commit.partition());
        start.set_offset(offset)?;
        start.set_metadata(commit.metadata());
    }
    Ok(starts)
}

/// Takes `partitions` as the group assigned them in a rebalance callback: incrementally under
/// the cooperative protocol, as the whole assignment under the eager one (as rust-rdkafka's
/// default rebalance callback does).
pub fn take_assigned<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    partitions: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_assign(partitions),
        _ => consumer.assign(partitions),
    }
}

/// Lets revoked `partitions` go in a rebalance callback (see [`take_assigned`]).
fn let_go<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    partitions: &TopicPartitionList,
) -> KafkaResult<()> {
    match consumer.rebalance_protocol() {
        RebalanceProtocol::Cooperative => consumer.incremental_unassign(partitions),
        _ => consumer.unassign(),
    }
}

/// Reads the commits of `assigned` ([`read_commits`]) and takes the partitions at them
/// ([`explicit_starts`], [`take_assigned`]); returns the commits. When they cannot be read, the
/// partitions are taken as given (librdkafka then fetches the commits itself) and the error
/// returned, for the caller to stop on: a consumer that cannot reach its coordinator for
/// `patience` is better restarted than left to that fetch.
pub fn take_at_commits<C: ConsumerContext, K: Consumer<C>>(
    consumer: &K,
    assigned: &TopicPartitionList,
    patience: Duration,
) -> KafkaResult<TopicPartitionList> {
    let read = read_commits(consumer, assigned, patience)
        .and_then(|commits| explicit_starts(&commits).map(|starts| (commits, starts)));
    match read {
        Ok((commits, starts)) => take_assigned(consumer, &starts).map(|()| commits),
        Err(error) => {
            take_assigned(consumer, assigned)?;
            Err(error)
        }
    }
}

/// What a consumer context does when partitions change hands, called by [`rebalance`].
pub trait Handover: ConsumerContext + Sized {
    /// Takes the assigned partitions: with [`take_at_commits`], or at starts of its own with
    /// [`take_assigned`]; it must take them either way (the group waits for it).
    fn assigned(&self, consumer: &BaseConsumer<Self>, assigned: &TopicPartitionList);
    /// Before the revoked partitions are let go (e.g. commits them).
    fn revoked(&self, consumer: &BaseConsumer<Self>, revoked: &TopicPartitionList);
}

/// Implements `ConsumerContext` for a [`Handover`] context: its rebalances go through
/// [`rebalance`]. (A context that overrides more of the trait calls [`rebalance`] itself.)
#[macro_export]
macro_rules! hand_over_rebalances {
    ($context:ty) => {
        impl ::rdkafka::consumer::ConsumerContext for $context {
            fn rebalance(
                &self,
                consumer: &::rdkafka::consumer::BaseConsumer<Self>,
                event: ::rdkafka::types::RDKafkaRespErr,
                partitions: &mut ::rdkafka::TopicPartitionList,
            ) {
                $crate::commits::rebalance(self, consumer, event, partitions);
            }
        }
    };
}

/// A context's `ConsumerContext::rebalance`, in place of rust-rdkafka's default (which assigns
/// without offsets, leaving librdkafka to fetch the commits): assigned partitions go to
/// [`Handover::assigned`]; revoked ones to [`Handover::revoked`], then are let go; a rebalance
/// error is logged and the assignment given up, as the default does.
pub fn rebalance<C: Handover>(
    context: &C,
    consumer: &BaseConsumer<C>,
    event: RDKafkaRespErr,
    partitions: &TopicPartitionList,
) {
    match event {
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
            context.assigned(consumer, partitions);
        }
        RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
            context.revoked(consumer, partitions);
            if let Err(error) = let_go(consumer, partitions) {
                tracing::warn!(%error, "Cannot unassign revoked partitions.");
            }
        }
        error => {
            let code: RDKafkaErrorCode = error.into();
            tracing::error!(error = %KafkaError::Rebalance(code), "Rebalance failed; the assignment is given up.");
            if let Err(error) = let_go(consumer, partitions) {
                tracing::warn!(%error, "Cannot give up the assignment.");
            }
        }
    }
}

#[cfg(test)]
mod tests;
