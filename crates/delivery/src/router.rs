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
        let mut by_segment: HashMap<u64, Vec<usize>> = HashMap::new();
        for (index, destination) in destinations.iter().enumerate() {
            for &segment in destination.segments.keys() {
                by_segment.entry(segment).or_default().push(index);
            }
        }
        Self {
            by_segment,
            seen: vec![false; destinations.len()],
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
