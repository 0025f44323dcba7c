//! Which destinations an update goes to: every destination whose segment mapping contains at
//! least one of the update's segments.

use std::collections::HashMap;
use std::sync::Arc;

use model::SegmentStatusUpdate;

use crate::config::DestinationConfig;

/// Our segment id → the indices (into the destination list) of the destinations mapping it.
#[derive(Debug)]
pub struct Router {
    by_segment: HashMap<u64, Vec<usize>>,
    /// Scratch space reused between updates, so routing allocates nothing per event.
    seen: Vec<bool>,
}

impl Router {
    pub fn new(destinations: &[Arc<DestinationConfig>]) -> Self {
        Self::over(destinations.iter().map(Some))
    }

    /// A router over destination slots, some of them empty (a destination removed by a
    /// config reload keeps its index, and gets nothing).
    pub fn over<'a>(slots: impl Iterator<Item = Option<&'a Arc<DestinationConfig>>>) -> Self {
        let mut by_segment: HashMap<u64, Vec<usize>> = HashMap::new();
        let mut count = 0;
        for (index, destination) in slots.enumerate() {
            count = index + 1;
            for &segment in destination.iter().flat_map(|d| d.segments.keys()) {
                by_segment.entry(segment).or_default().push(index);
            }
        }
        Self {
            by_segment,
            seen: vec![false; count],
        }
    }

    /// Fills `out` with the distinct destinations `update` goes to, in destination order of
    /// first mention.
    pub fn route(&mut self, update: &SegmentStatusUpdate, out: &mut Vec<usize>) {
        out.clear();
        for change in &update.changes {
            if let Some(destinations) = self.by_segment.get(&change.segment_id) {
                for &d in destinations {
                    if !std::mem::replace(&mut self.seen[d], true) {
                        out.push(d);
                    }
                }
            }
        }
        for &d in out.iter() {
            self.seen[d] = false;
        }
    }
}
