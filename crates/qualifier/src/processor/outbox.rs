//! A transaction's records, made before it begins: the events of the next transaction are
//! evaluated while the last one commits (see `commit.rs`), and a transactional producer takes
//! records only inside a transaction. They are kept as bytes in one buffer, reused, and handed
//! to the producer once the transaction has begun.

use std::ops::Range;

use rdkafka::error::KafkaError;
use rdkafka::producer::BaseRecord;
use telemetry::partition::KeyedProducer;

use super::Topology;
use super::transaction::send;

/// Which topic a staged record goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum To {
    Status,
    StatusBatch,
    /// A tombstone hiding an erased user's delivery log records up to its timestamp.
    DeliveryLog,
    DeadLetters,
    /// Written to the input event's partition number, as the restore reads it back.
    Changelog(i32),
}

#[derive(Debug)]
struct Staged {
    to: To,
    /// The key's bytes in the buffer; the value's follow it up to `end` (`None`: a tombstone).
    key: Range<usize>,
    end: Option<usize>,
    timestamp: Option<i64>,
}

/// The records staged for the next transaction, in the order they were made.
#[derive(Debug, Default)]
pub(super) struct Outbox {
    bytes: Vec<u8>,
    records: Vec<Staged>,
}

/// A buffer over this is given back down to it, or to twice what the last transaction staged if
/// more: a transaction of busy users' whole records can stage tens of MB once, and transactions
/// that do it every time keep their buffer.
const KEPT_BYTES: usize = 16 << 20;

impl Outbox {
    /// Stages a record whose value `value` writes (appends) into the buffer.
    pub(super) fn encoded(&mut self, to: To, key: &[u8], value: impl FnOnce(&mut Vec<u8>)) {
        let key = self.key(key);
        value(&mut self.bytes);
        self.push(to, key, Some(self.bytes.len()), None);
    }

    /// Stages a record of `value` (`None`: a tombstone).
    pub(super) fn record(&mut self, to: To, key: &[u8], value: Option<&[u8]>) {
        let key = self.key(key);
        let end = value.map(|value| {
            self.bytes.extend_from_slice(value);
            self.bytes.len()
        });
        self.push(to, key, end, None);
    }

    /// Stages a tombstone dated `timestamp` (ms since the Unix epoch).
    pub(super) fn tombstone_at(&mut self, to: To, key: &[u8], timestamp: i64) {
        let key = self.key(key);
        self.push(to, key, None, Some(timestamp));
    }

    pub(super) fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Hands the staged records to `producer` (inside its transaction), in order, and empties
    /// the outbox; on an error the rest are dropped: the transaction is aborted.
    pub(super) fn send(
        &mut self,
        producer: &KeyedProducer,
        topology: &Topology,
    ) -> Result<(), KafkaError> {
        let sent = self.records.iter().try_for_each(|staged| {
            let topic = match staged.to {
                To::Status => &topology.status_topic,
                To::StatusBatch => &topology.status_batch_topic,
                To::DeliveryLog => topology.delivery_log_topic.as_deref().unwrap_or_default(),
                To::DeadLetters => &topology.dlq_topic,
                To::Changelog(_) => &topology.changelog_topic,
            };
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(topic).key(&self.bytes[staged.key.clone()]);
            if let Some(end) = staged.end {
                record = record.payload(&self.bytes[staged.key.end..end]);
            }
            if let To::Changelog(partition) = staged.to {
                record = record.partition(partition);
            }
            if let Some(timestamp) = staged.timestamp {
                record = record.timestamp(timestamp);
            }
            send(producer, record)
        });
        self.clear();
        sent
    }

    /// Drops what is staged (the transaction it was for will not be made).
    pub(super) fn clear(&mut self) {
        let staged = self.bytes.len();
        self.bytes.clear();
        self.records.clear();
        self.bytes.shrink_to(KEPT_BYTES.max(2 * staged));
    }

    fn key(&mut self, key: &[u8]) -> Range<usize> {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(key);
        start..self.bytes.len()
    }

    fn push(&mut self, to: To, key: Range<usize>, end: Option<usize>, timestamp: Option<i64>) {
        self.records.push(Staged {
            to,
            key,
            end,
            timestamp,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::{KEPT_BYTES, Outbox, To};

    /// A buffer grown past `KEPT_BYTES` is kept while transactions stage as much, and given
    /// back once one stages less.
    #[test]
    fn a_big_buffer_is_kept_while_it_is_used_and_given_back_after() {
        let mut outbox = Outbox::default();
        let big = vec![7_u8; 20 << 20];
        for _ in 0..2 {
            outbox.record(To::Changelog(0), b"busy", Some(&big));
            outbox.clear();
            assert!(outbox.is_empty());
            assert!(outbox.bytes.capacity() >= big.len(), "shrunk though in use");
        }
        outbox.record(To::Status, b"u", Some(b"small"));
        outbox.clear();
        assert!(
            outbox.bytes.capacity() <= KEPT_BYTES,
            "kept after a small transaction"
        );
    }
}
