//! Per-user order across the two input topics. A user's changes travel `segment-status`
//! (real time) or `segment-status-batch` (onboarded data), each in order, but the two are read
//! by two pipelines: an onboarded `1` read late could reach a partner after a newer real-time
//! `0`. The qualifier gives every update a `sequence`, increasing per user across both topics;
//! this table keeps, per owned partition (a user is on the same partition number in both) and
//! per topic, the newest sequence routed for each (user, segment), and a change older than one
//! already routed from the *other* topic is superseded: it is not sent, to any destination —
//! the newer one reaches each of them (the same segment routes to the same destinations).
//!
//! Entries do not live for ever. One is needed only while the other topic may still yield an
//! older change of that (user, segment); such a change was committed before the entry's own
//! change could be read, so it lies below the other topic's end at that moment. Entries are
//! kept in generations: a generation is sealed, the other topic's end is read *after* that
//! (see [`Order::seal`] / [`Order::set_target`]), and the generation goes once the other
//! pipeline's commit position — which also counts its destinations reading behind — passed
//! that end ([`Order::passed`]). So the table holds a few seconds of traffic, unless one
//! topic is read far behind the other.
//!
//! Keys are 64-bit hashes of (user, segment): two pairs sharing one would make the older one
//! look superseded by the other's change; at a million live pairs the odds are below 1 in
//! 10^7. Updates without a sequence (0: from a qualifier before sequences) are neither
//! recorded nor superseded.

use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasher as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::update::Update;

/// Which input topic a change came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    RealTime = 0,
    Batch = 1,
}

impl Topic {
    /// The `input` label of the metrics that tell the two apart.
    pub fn label(self) -> &'static str {
        match self {
            Self::RealTime => "real_time",
            Self::Batch => "batch",
        }
    }

    fn other(self) -> Self {
        match self {
            Self::RealTime => Self::Batch,
            Self::Batch => Self::RealTime,
        }
    }
}

/// How long a generation collects entries before it is sealed.
const GENERATION: Duration = Duration::from_secs(2);

/// The table, shared by the real-time and batch pipelines of one worker (and the catch-up
/// readers, which only ask).
#[derive(Debug, Clone)]
pub struct Order {
    inner: Arc<Mutex<Partitions>>,
    hasher: foldhash::fast::FixedState,
    generation: Duration,
}

impl Default for Order {
    fn default() -> Self {
        Self::with_generation(GENERATION)
    }
}

#[derive(Debug, Default)]
struct Partitions {
    partitions: HashMap<i32, PartitionOrder>,
}

#[derive(Debug, Default)]
struct PartitionOrder {
    /// (user, segment) hash → the newest sequence routed from each topic (0: none kept).
    newest: HashMap<u64, [u64; 2], foldhash::fast::FixedState>,
    /// Per topic, its entries by age; the last one is open (collecting) unless sealed.
    generations: [VecDeque<Generation>; 2],
    /// Whether a topic's entries are in `newest`. They go there only once the other topic
    /// routes a change (it must be compared with them): until then, and again once they are
    /// all gone, they are only listed in their generations — with an idle batch topic, the
    /// real-time path pays a hash and a push per change, not a map's insert and removal.
    indexed: [bool; 2],
}

#[derive(Debug)]
struct Generation {
    entries: Vec<(u64, u64)>,
    opened: Instant,
    sealed: bool,
    /// The other topic's end, read after sealing: once the other pipeline's commit position
    /// passed it, these entries can go.
    until: Option<i64>,
}

impl Generation {
    fn open() -> Self {
        Self {
            entries: Vec::new(),
            opened: Instant::now(),
            sealed: false,
            until: None,
        }
    }
}

/// The positions, in an update's `changes`, of the changes that a newer one from the other
/// topic supersedes (empty, without allocating, in the usual case).
pub type Superseded = Vec<usize>;

impl Order {
    fn with_generation(generation: Duration) -> Self {
        Self {
            inner: Arc::default(),
            hasher: foldhash::fast::FixedState::with_seed(fastrand::u64(..)),
            generation,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Partitions> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn key(&self, user_key: &[u8], segment_id: u64) -> u64 {
        self.hasher.hash_one((user_key, segment_id))
    }

    /// The shared consumer of `topic` read `update`: which of its changes are superseded; the
    /// others are recorded as routed.
    pub fn route(&self, topic: Topic, partition: i32, update: &Update) -> Superseded {
        self.compare(topic, partition, update, true)
    }

    /// A catch-up reader of `topic` read `update` again: which of its changes are superseded
    /// (nothing is recorded: the shared consumer recorded them when it read them first).
    pub fn check(&self, topic: Topic, partition: i32, update: &Update) -> Superseded {
        self.compare(topic, partition, update, false)
    }

    fn compare(&self, topic: Topic, partition: i32, update: &Update, record: bool) -> Superseded {
        let mut superseded = Superseded::new();
        let sequence = update.sequence();
        if sequence == 0 {
            return superseded;
        }
        // A targeted update reaches some destinations only: it must not make the others drop
        // an older change they never saw superseded.
        let record = record && update.only_data_partner_id().is_none();
        let mut partitions = self.lock();
        let Some(order) = partitions.partitions.get_mut(&partition) else {
            return superseded;
        };
        order.index(topic.other());
        let other = topic.other() as usize;
        let user_key = update.user_key();
        for (index, change) in update.changes().enumerate() {
            let key = self.key(user_key, change.segment_id);
            if order.newest(key)[other] > sequence {
                superseded.push(index);
            } else if record {
                order.record(topic, key, sequence);
            }
        }
        superseded
    }

    /// The worker owns `partition` (of both topics) from now on: it starts empty.
    pub fn assign(&self, partition: i32) {
        self.lock()
            .partitions
            .insert(partition, PartitionOrder::default());
    }

    /// The worker no longer owns `partition`.
    pub fn revoke(&self, partition: i32) {
        self.lock().partitions.remove(&partition);
    }

    /// Seals the generations of the topic other than `topic` that collected long enough, and
    /// returns the partitions with a sealed generation still without a target: the caller
    /// then reads `topic`'s end of each and gives it to [`Self::set_target`].
    pub fn seal(&self, topic: Topic) -> Vec<i32> {
        let other = topic.other() as usize;
        let mut sealed = Vec::new();
        let generation = self.generation;
        for (&partition, order) in &mut self.lock().partitions {
            let generations = &mut order.generations[other];
            if let Some(open) = generations.back_mut()
                && !open.sealed
                && !open.entries.is_empty()
                && open.opened.elapsed() >= generation
            {
                open.sealed = true;
            }
            // Also those whose end could not be read last time.
            if generations.iter().any(|g| g.sealed && g.until.is_none()) {
                sealed.push(partition);
            }
        }
        sealed
    }

    /// The partitions where entries of the other topic wait for `topic`'s position.
    pub fn waiting_for(&self, topic: Topic) -> Vec<i32> {
        let other = topic.other() as usize;
        self.lock()
            .partitions
            .iter()
            .filter(|(_, o)| o.generations[other].iter().any(|g| g.sealed))
            .map(|(&p, _)| p)
            .collect()
    }

    /// `end`: `topic`'s end of `partition`, read after [`Self::seal`] returned it. The sealed
    /// generations of the other topic without a target get it.
    pub fn set_target(&self, topic: Topic, partition: i32, end: i64) {
        let other = topic.other() as usize;
        if let Some(order) = self.lock().partitions.get_mut(&partition) {
            for generation in &mut order.generations[other] {
                if generation.sealed && generation.until.is_none() {
                    generation.until = Some(end);
                }
            }
        }
    }

    /// `topic`'s commit position of `partition` (everything before it is finished for every
    /// destination, also those reading behind): the other topic's entries waiting for it go.
    pub fn passed(&self, topic: Topic, partition: i32, position: i64) {
        let other = topic.other() as usize;
        let mut partitions = self.lock();
        let Some(order) = partitions.partitions.get_mut(&partition) else {
            return;
        };
        while let Some(front) = order.generations[other].front()
            && front.until.is_some_and(|until| until <= position)
        {
            let Some(generation) = order.generations[other].pop_front() else {
                break;
            };
            if !order.indexed[other] {
                continue;
            }
            for (key, sequence) in generation.entries {
                if let Some(newest) = order.newest.get_mut(&key)
                    && newest[other] == sequence
                {
                    newest[other] = 0;
                    if *newest == [0, 0] {
                        order.newest.remove(&key);
                    }
                }
            }
        }
        // All gone (from the map too): back to listing only.
        if order.generations[other].is_empty() {
            order.indexed[other] = false;
        }
    }

    /// Records `update` as routed from `topic` by the partition's previous owner (read again
    /// at an assignment, see `consumer`'s `restore_order`); the entries wait until the other
    /// topic's commit position passes `until`, its end when this worker took the partition.
    pub fn restore(&self, topic: Topic, partition: i32, update: &Update, until: i64) {
        let sequence = update.sequence();
        if sequence == 0 {
            return;
        }
        let mut partitions = self.lock();
        let Some(order) = partitions.partitions.get_mut(&partition) else {
            return;
        };
        let mine = topic as usize;
        let generations = &mut order.generations[mine];
        if generations
            .back()
            .is_none_or(|g| !g.sealed || g.until != Some(until))
        {
            generations.push_back(Generation {
                sealed: true,
                until: Some(until),
                ..Generation::open()
            });
        }
        let user_key = update.user_key();
        for change in update.changes() {
            let key = self.key(user_key, change.segment_id);
            if order.indexed[mine] {
                raise(&mut order.newest, mine, key, sequence);
            }
            if let Some(restored) = order.generations[mine].back_mut() {
                restored.entries.push((key, sequence));
            }
        }
    }

    /// Entries held (indexed pairs, and changes only listed), for the gauge.
    pub fn held(&self) -> usize {
        self.lock()
            .partitions
            .values()
            .map(|o| {
                let listed: usize = [Topic::RealTime, Topic::Batch]
                    .iter()
                    .filter(|&&t| !o.indexed[t as usize])
                    .flat_map(|&t| &o.generations[t as usize])
                    .map(|g| g.entries.len())
                    .sum();
                o.newest.len() + listed
            })
            .sum()
    }
}

/// Takes the `superseded` changes out of `update`, counting and reporting each for every one of
/// `destinations` that maps its segment; `None` when no change is left.
pub fn strip<'a>(
    packed: Update,
    superseded: &[usize],
    destinations: impl Iterator<Item = &'a crate::sender::DestinationSender> + Clone,
) -> Option<Update> {
    // Rare (an update of one topic overtaken by the other's): unpacked, stripped, packed again.
    let mut update = packed.to_proto();
    for &index in superseded {
        let change = &update.changes[index];
        for sender in destinations.clone().filter(|s| {
            s.config.takes(&packed) && s.config.segments.contains_key(&change.segment_id)
        }) {
            sender.metrics.changes_superseded.inc();
            crate::coalesced::record_superseded(&sender.config, &update.user_id, change);
        }
    }
    let mut index = 0;
    update.changes.retain(|_| {
        let keep = !superseded.contains(&index);
        index += 1;
        keep
    });
    (!update.changes.is_empty()).then(|| Update::new(&update))
}

impl PartitionOrder {
    /// The newest sequences routed of a pair, from each topic (0: none kept).
    fn newest(&self, key: u64) -> [u64; 2] {
        self.newest.get(&key).copied().unwrap_or([0, 0])
    }

    /// Puts `topic`'s listed entries into the map, when they are not there yet.
    fn index(&mut self, topic: Topic) {
        let side = topic as usize;
        if self.indexed[side] {
            return;
        }
        for generation in &self.generations[side] {
            for &(key, sequence) in &generation.entries {
                raise(&mut self.newest, side, key, sequence);
            }
        }
        self.indexed[side] = true;
    }

    fn record(&mut self, topic: Topic, key: u64, sequence: u64) {
        let side = topic as usize;
        if self.indexed[side] {
            raise(&mut self.newest, side, key, sequence);
        }
        let generations = &mut self.generations[side];
        if generations.back().is_none_or(|g| g.sealed) {
            generations.push_back(Generation::open());
        }
        if let Some(open) = generations.back_mut() {
            open.entries.push((key, sequence));
        }
    }
}

/// The newest sequence of the pair `key` routed from topic `side` is at least `sequence`.
fn raise(
    newest: &mut HashMap<u64, [u64; 2], foldhash::fast::FixedState>,
    side: usize,
    key: u64,
    sequence: u64,
) {
    let pair = newest.entry(key).or_insert([0, 0]);
    pair[side] = pair[side].max(sequence);
}

#[cfg(test)]
mod tests;
