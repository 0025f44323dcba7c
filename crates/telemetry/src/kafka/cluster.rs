//! What a service asks of the cluster itself, outside its own consumers and producers: that
//! its topics exist, that a broker answers, and bounded `read_committed` reads of a topic from
//! a start to an end (the qualifier's changelog restore, tools).

use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::BorrowedMessage;
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Message, Offset, TopicPartitionList};

use super::KafkaSettings;

/// How long a topic missing from the metadata is asked for again before it counts as missing
/// (a broker's view of a topic created a moment ago lags the controller's).
const UNKNOWN_TOPIC_GRACE: Duration = Duration::from_secs(5);

impl KafkaSettings {
    /// Fails with the fix when a topic a service needs does not exist (consumers do not create
    /// topics, and a typo would otherwise wait forever). Returns each topic's partition count.
    /// Blocks the calling thread.
    pub fn require_topics(&self, topics: &[&str]) -> Result<Vec<usize>, String> {
        let probe: BaseConsumer = self
            .client_config("segment-relay-probe")
            .create()
            .map_err(|e| e.to_string())?;
        // A topic created a moment ago may be missing from one broker's metadata for a while
        // (each broker learns it from the controller on its own): a missing one is asked
        // again for up to `UNKNOWN_TOPIC_GRACE` before it counts as missing.
        topics
            .iter()
            .map(|topic| {
                let asked = std::time::Instant::now();
                loop {
                    let metadata = probe
                        .fetch_metadata(Some(topic), Duration::from_secs(10))
                        .map_err(|e| format!("cannot read metadata of topic `{topic}`: {e}"))?;
                    match metadata.topics().first() {
                        Some(t) if t.error().is_none() && !t.partitions().is_empty() => {
                            return Ok(t.partitions().len());
                        }
                        _ if asked.elapsed() < UNKNOWN_TOPIC_GRACE => {
                            std::thread::sleep(Duration::from_millis(250));
                        }
                        _ => {
                            return Err(format!(
                                "topic `{topic}` does not exist on {}: create it (`make kafka-up` creates the defaults) or point the service at another",
                                self.brokers
                            ));
                        }
                    }
                }
            })
            .collect()
    }

    /// Reads `topic` (only `partitions`, if given) from its start to the end it has now,
    /// `read_committed`, calling `each` with every message; commits nothing. Fails after 120 s
    /// in all. Blocks.
    pub fn read_to_end(
        &self,
        topic: &str,
        partitions: Option<&[i32]>,
        each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), KafkaError> {
        self.read_from_start(
            topic,
            partitions,
            Bound::Total(Duration::from_secs(120)),
            each,
        )
    }

    /// [`Self::read_to_end`] of `partitions`, for a read as long as the topic is large (the
    /// qualifier's changelog restore): no total deadline; it fails (`OperationTimedOut`) only
    /// when `stall` passes without a message read or a partition finished. Blocks.
    pub fn read_to_end_while_moving(
        &self,
        topic: &str,
        partitions: &[i32],
        stall: Duration,
        each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), KafkaError> {
        self.read_from_start(topic, Some(partitions), Bound::Stall(stall), each)
    }

    fn read_from_start(
        &self,
        topic: &str,
        partitions: Option<&[i32]>,
        bound: Bound,
        each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), KafkaError> {
        let consumer = self.reader()?;
        let ranges: Vec<(i32, Offset, i64)> = ends(&consumer, topic, partitions)?
            .into_iter()
            .map(|(partition, end)| (partition, Offset::Beginning, end))
            .collect();
        read_ranges(&consumer, topic, &ranges, bound, each)
    }

    /// The end (next offset) every partition of `topic` has now. Blocks.
    pub fn partition_ends(&self, topic: &str) -> Result<Vec<(i32, i64)>, KafkaError> {
        ends(&self.reader()?, topic, None)
    }

    /// Reads `topic`'s partitions each from a start (an offset, or a time as
    /// `Offset::Offset(ms)` when `by_time`) up to an end offset (exclusive), `read_committed`,
    /// calling `each` with every message; commits nothing. Fails after `deadline`. Blocks.
    pub fn read_ranges(
        &self,
        topic: &str,
        ranges: &[(i32, Offset, i64)],
        by_time: bool,
        deadline: Duration,
        each: impl FnMut(&BorrowedMessage<'_>),
    ) -> Result<(), KafkaError> {
        let consumer = self.reader()?;
        if !by_time {
            return read_ranges(&consumer, topic, ranges, Bound::Total(deadline), each);
        }
        let mut times = TopicPartitionList::new();
        for &(partition, start, _) in ranges {
            times.add_partition_offset(topic, partition, start)?;
        }
        let starts = consumer.offsets_for_times(times, Duration::from_secs(10))?;
        let ranges: Vec<(i32, Offset, i64)> = ranges
            .iter()
            .map(|&(partition, _, end)| {
                let start = starts
                    .find_partition(topic, partition)
                    .map_or(Offset::End, |e| e.offset());
                // No message at or after the time: nothing to read.
                let start = if start == Offset::End {
                    Offset::Offset(end)
                } else {
                    start
                };
                (partition, start, end)
            })
            .collect();
        read_ranges(&consumer, topic, &ranges, Bound::Total(deadline), each)
    }

    /// A consumer for bounded reads. It reads every partition asked for at once, and what
    /// librdkafka holds per queued message (~0.7 KB of bookkeeping, for records of ~100 B in
    /// the qualifier's changelog) made 10,000 a partition ~50 MB: 2,000 is ~0.1 s of a restore.
    fn reader(&self) -> Result<BaseConsumer, KafkaError> {
        self.consumer_config("segment-relay-reader")
            .set("group.id", "segment-relay-reader")
            .set("enable.auto.commit", "false")
            .set("isolation.level", "read_committed")
            .set("queued.min.messages", "2000")
            .create()
    }

    /// Asks the cluster for its metadata: `Ok` once a broker answers within `timeout`. Blocks
    /// the calling thread (use `spawn_blocking` from async code).
    pub fn check_connection(&self, timeout: Duration) -> Result<(), KafkaError> {
        let consumer: BaseConsumer = self.client_config("segment-relay-probe").create()?;
        consumer.fetch_metadata(None, timeout).map(drop)
    }
}

/// The ends of `topic`'s partitions (only `partitions`, if given).
fn ends(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: Option<&[i32]>,
) -> Result<Vec<(i32, i64)>, KafkaError> {
    let all: Vec<i32> = match partitions {
        Some(wanted) => wanted.to_vec(),
        None => {
            let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
            metadata
                .topics()
                .iter()
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect()
        }
    };
    all.into_iter()
        .map(|partition| {
            consumer
                .fetch_watermarks(topic, partition, Duration::from_secs(10))
                .map(|(_, high)| (partition, high))
        })
        .collect()
}

/// A Kafka error librdkafka recovers from by itself (a connection lost, a leader moving or
/// not yet elected, a request timing out), as opposed to one that ends a read (a topic that
/// does not exist, no authorization).
pub fn is_transient(code: RDKafkaErrorCode) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        code,
        C::BrokerTransportFailure
            | C::AllBrokersDown
            | C::OperationTimedOut
            | C::RequestTimedOut
            | C::NetworkException
            | C::NotLeaderForPartition
            | C::LeaderNotAvailable
            | C::NotCoordinator
            | C::CoordinatorNotAvailable
            | C::CoordinatorLoadInProgress
            | C::ReplicaNotAvailable
            | C::NotEnoughReplicas
            | C::FencedLeaderEpoch
            | C::UnknownLeaderEpoch
            | C::OffsetNotAvailable
    )
}

/// How long a read may take.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// At most this long in all.
    Total(Duration),
    /// As long as it moves: at most this long without a message read or a partition finished.
    Stall(Duration),
}

/// [`KafkaSettings::read_ranges`] on a reader: `(partition, start, end)`, end exclusive.
fn read_ranges(
    consumer: &BaseConsumer,
    topic: &str,
    ranges: &[(i32, Offset, i64)],
    bound: Bound,
    mut each: impl FnMut(&BorrowedMessage<'_>),
) -> Result<(), KafkaError> {
    // The partitions not finished and their ends: a few, looked up at every message.
    let mut ends: Vec<(i32, i64)> = Vec::new();
    let mut assignment = TopicPartitionList::new();
    for &(partition, start, end) in ranges {
        if start.to_raw().is_none_or(|s| s < end) && end > 0 {
            ends.push((partition, end));
            assignment.add_partition_offset(topic, partition, start)?;
        }
    }
    if ends.is_empty() {
        return Ok(());
    }
    consumer.assign(&assignment)?;
    let (limit, moving_renews) = match bound {
        Bound::Total(limit) => (limit, false),
        Bound::Stall(limit) => (limit, true),
    };
    let mut since = Instant::now();
    // Whether the read moved since the last poll (a message handed to `each`, a partition
    // finished): the clock is read once a message, not twice (~4 % of a restore of Zipf-heavy
    // users; docs/BENCHMARKS.md, "The restore's reads"). Not less often: `each` may be slow.
    let mut moved = false;
    let end_of = |ends: &[(i32, i64)], partition| ends.iter().position(|&(p, _)| p == partition);
    while !ends.is_empty() {
        let now = Instant::now();
        if moved && moving_renews {
            since = now;
        } else if now.duration_since(since) > limit {
            return Err(KafkaError::Global(RDKafkaErrorCode::OperationTimedOut));
        }
        moved = false;
        let left = ends.len();
        match consumer.poll(Duration::from_millis(500)) {
            // A broker of several down, a leader moving: librdkafka reconnects and fetches
            // from the new leader by itself; the bound limits the wait.
            Some(Err(KafkaError::MessageConsumption(code))) if is_transient(code) => {}
            Some(message) => {
                let message = message?;
                let Some(at) = end_of(&ends, message.partition()) else {
                    continue;
                };
                let end = ends[at].1;
                if message.offset() < end {
                    each(&message);
                    moved = true;
                }
                if message.offset() + 1 >= end {
                    ends.swap_remove(at);
                }
            }
            None => {
                // Aborted records and transaction markers end a partition without a message.
                for element in consumer.position()?.elements() {
                    if let (Offset::Offset(position), Some(at)) =
                        (element.offset(), end_of(&ends, element.partition()))
                        && position >= ends[at].1
                    {
                        ends.swap_remove(at);
                    }
                }
                moved |= ends.len() < left;
            }
        }
    }
    Ok(())
}
