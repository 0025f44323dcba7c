//! The requests out, per partition, so that giving a partition up can wait for their answers.
//! Its new owner sends again from the commit: were a request of the old owner still out (or
//! its retry still to come), a user's newer change could reach the partner before it, and the
//! partner would take the older status last.
//!
//! A lane claims its batch's partitions just before sending and releases them once the send
//! returned: the attempts, the retry's jitter, a rate limit's token and a pause the first
//! attempt's 429 asks for are inside; a pause already set is waited out before the claim, and
//! the backoff between rounds after the release. A revocation waits at most `drain_timeout_ms`.

use super::{WatermarkTable, Watermarks};
use crate::batcher::DestinationBatch;

/// The partitions whose events one lane's request holds, from [`Sending::claim`] until
/// [`Sending::release`] (or until dropped). Without watermarks (a replay) it does nothing.
#[derive(Debug)]
pub struct Sending {
    table: Option<Watermarks>,
    partitions: Vec<i32>,
}

impl Sending {
    pub fn new(table: Option<&Watermarks>) -> Self {
        Self {
            table: table.cloned(),
            partitions: Vec::new(),
        }
    }

    /// Drops the batch's events of partitions revoked meanwhile (they belong to their new
    /// owner now) and counts the rest's partitions as being sent, under one lock: a
    /// revocation either finds this request out and waits for it, or comes first and the
    /// request holds nothing of its partitions.
    pub fn claim(&mut self, batch: &mut DestinationBatch) {
        self.release();
        let Some(watermarks) = &self.table else {
            return;
        };
        let mut table = watermarks.lock();
        batch.retain(|e| e.source.is_none_or(|s| table.is_current(s.assignment)));
        for source in batch.events.iter().filter_map(|e| e.source) {
            let partition = source.assignment.partition;
            if self.partitions.last() != Some(&partition) && !self.partitions.contains(&partition) {
                self.partitions.push(partition);
            }
        }
        for &partition in &self.partitions {
            *table.sending.entry(partition).or_default() += 1;
        }
    }

    /// The request was answered, or given up.
    pub fn release(&mut self) {
        let Some(watermarks) = self.table.as_ref().filter(|_| !self.partitions.is_empty()) else {
            return;
        };
        let mut table = watermarks.lock();
        for partition in self.partitions.drain(..) {
            if let Some(count) = table.sending.get_mut(&partition) {
                *count -= 1;
                if *count == 0 {
                    table.sending.remove(&partition);
                }
            }
        }
    }
}

impl Drop for Sending {
    fn drop(&mut self) {
        self.release();
    }
}

impl WatermarkTable {
    /// Whether a request holding events of one of `partitions` is out.
    pub fn is_sending(&self, partitions: &[i32]) -> bool {
        partitions.iter().any(|p| self.sending.contains_key(p))
    }
}
