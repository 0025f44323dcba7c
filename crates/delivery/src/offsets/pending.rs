//! A destination's unfinished offsets of one partition, as the shared consumer handed them
//! over (ascending, each with whether it is finished): marking one finished, and dropping
//! the finished ones at the front.

use std::collections::VecDeque;

/// Marks `offset` finished and drops the finished prefix.
pub(super) fn finish_pending(pending: &mut VecDeque<(i64, bool)>, offset: i64) {
    mark_finished(pending, 0, offset);
    drop_finished(pending);
}

/// Marks `offset` finished in `pending` (ignored if it is not there), looking from index
/// `from` on first; returns where to look for a greater offset.
pub(super) fn mark_finished(
    pending: &mut VecDeque<(i64, bool)>,
    from: usize,
    offset: i64,
) -> usize {
    let found = match pending.get(from) {
        Some(&(at, _)) if at <= offset => search_from(pending, from, offset),
        _ => pending.binary_search_by_key(&offset, |&(o, _)| o),
    };
    match found {
        Ok(i) => {
            pending[i].1 = true;
            i + 1
        }
        Err(i) => i,
    }
}

/// `offset` in `pending` (ascending) at or after `from`, whose offset is at most `offset`:
/// probed 1, 2, 4 … places on, then halved, so a nearby offset costs a few steps.
fn search_from(pending: &VecDeque<(i64, bool)>, from: usize, offset: i64) -> Result<usize, usize> {
    // pending[low] ≤ offset < pending[high] (or high is the end).
    let (mut low, mut step) = (from, 1);
    let mut high = loop {
        match pending.get(low + step) {
            Some(&(at, _)) if at <= offset => {
                low += step;
                step *= 2;
            }
            _ => break (low + step).min(pending.len()),
        }
    };
    while high - low > 1 {
        let middle = low + (high - low) / 2;
        if pending[middle].0 <= offset {
            low = middle;
        } else {
            high = middle;
        }
    }
    if pending[low].0 == offset {
        Ok(low)
    } else {
        Err(low + 1)
    }
}

/// Drops the finished offsets at the front.
pub(super) fn drop_finished(pending: &mut VecDeque<(i64, bool)>) {
    while pending.front().is_some_and(|&(_, done)| done) {
        pending.pop_front();
    }
}
