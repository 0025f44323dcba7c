//! Which destinations an update goes to: every destination whose segment mapping contains at
//! least one of the update's segments (of a targeted update: only those of its data partner).

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::sync::Arc;

use crate::config::DestinationConfig;
use crate::update::Update;

/// Our segment id → the indices (into the destination list) of the destinations mapping it.
#[derive(Debug)]
pub struct Router {
    /// Looked up once per change: foldhash, not the default SipHash (the ids are ours). Each
    /// segment's destinations lie in `destinations`, one run per segment: a vector of its own
    /// per segment was a second place in memory to read per change.
    by_segment: HashMap<u64, Range<usize>, foldhash::fast::RandomState>,
    destinations: Vec<usize>,
    /// Each slot's data partner, for targeted updates (`only_data_partner_id`).
    data_partners: Vec<Option<u64>>,
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
        let mut mapping: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        let mut data_partners = Vec::new();
        for (index, destination) in slots.enumerate() {
            data_partners.push(destination.and_then(|d| d.data_partner));
            for &segment in destination.iter().flat_map(|d| d.segments.keys()) {
                mapping.entry(segment).or_default().push(index);
            }
        }
        let mut by_segment = HashMap::default();
        let mut destinations = Vec::new();
        for (segment, mapped) in mapping {
            let start = destinations.len();
            destinations.extend(mapped);
            by_segment.insert(segment, start..destinations.len());
        }
        Self {
            seen: vec![false; data_partners.len()],
            by_segment,
            destinations,
            data_partners,
        }
    }

    /// Fills `out` with the distinct destinations `update` goes to, in destination order of
    /// first mention.
    pub fn route(&mut self, update: &Update, out: &mut Vec<usize>) {
        out.clear();
        let only_data_partner_id = update.only_data_partner_id();
        for change in update.changes() {
            if let Some(run) = self.by_segment.get(&change.segment_id) {
                for &d in &self.destinations[run.clone()] {
                    if only_data_partner_id.is_some_and(|only| self.data_partners[d] != Some(only))
                    {
                        continue;
                    }
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
