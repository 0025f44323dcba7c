//! The bytes a worker's lanes may hold, shared by every destination (`queue_budget_mb`).
//!
//! A destination queues what it needs while the budget has room. When the budget is full, a
//! destination holding less than its equal share (the budget over the destinations, each
//! counted once per input topic) still queues, and one holding more waits — and if it is
//! stuck, detaches, as on a full lane (see `consumer::route`). So a thousand destinations cost
//! the budget, not a thousand lanes' capacity; a stuck destination cannot take the room the others need, since they always have
//! their share; and the lanes hold at most twice the budget (the budget, plus what
//! destinations below their share add to a full one).
//!
//! An update counts from the moment it is queued until the event leaves the lane (sent,
//! dead-lettered, revoked or dropped with the lane): each event carries a [`Held`] that gives
//! its bytes back when it is dropped, so no path can forget to.

use std::mem::size_of;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};

use model::partner::PartnerSegment;
use tokio::sync::Notify;

use crate::batcher::{BatchUser, DATE_BYTES, ENTRY_FRAME_BYTES, RoutedEvent, SEGMENT_FRAME_BYTES};
use crate::update::Update;

/// The built-in `queue_budget_mb` of a worker with up to 409 destinations.
pub const DEFAULT_MB: u64 = 16;
/// Without `queue_budget_mb`, the budget is at least this much per destination. In a drain a
/// destination's lanes batch about what they hold, and 16 MiB over 1,000 destinations left each
/// room for ~10 users a request: 2.3 times the requests of 40 KiB each, and ~30 % more CPU per
/// change (docs/BENCHMARKS.md).
pub const DEFAULT_KIB_PER_DESTINATION: u64 = 40;

/// The budget, in bytes, of a worker with `destinations` and no `queue_budget_mb`.
pub fn default_bytes(destinations: usize) -> u64 {
    let per_destination = (DEFAULT_KIB_PER_DESTINATION << 10).saturating_mul(destinations as u64);
    (DEFAULT_MB << 20).max(per_destination)
}

/// The budget of one worker: every lane of every destination on both input topics.
#[derive(Debug)]
pub struct QueueBudget {
    capacity: AtomicUsize,
    queued: AtomicUsize,
    /// Destinations holding a share: each live [`Share`].
    shares: AtomicUsize,
    /// Set by someone waiting for room: the next release wakes them.
    waiting: AtomicBool,
    room: Notify,
}

impl QueueBudget {
    pub fn new(capacity_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            capacity: AtomicUsize::new(capacity_bytes),
            queued: AtomicUsize::new(0),
            shares: AtomicUsize::new(0),
            waiting: AtomicBool::new(false),
            room: Notify::new(),
        })
    }

    /// A reloaded config's budget: applies to what is queued from now on.
    pub fn set_capacity(&self, bytes: usize) {
        self.capacity.store(bytes, SeqCst);
        self.wake();
    }

    pub fn capacity(&self) -> usize {
        self.capacity.load(SeqCst)
    }

    /// The bytes the lanes hold now.
    pub fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// A new destination's (or a restarted one's) share.
    pub fn share(self: &Arc<Self>) -> Arc<Share> {
        self.shares.fetch_add(1, SeqCst); // the others' equal share shrinks: nobody to wake
        Arc::new(Share {
            budget: self.clone(),
            queued: AtomicUsize::new(0),
        })
    }

    /// What each destination may hold however full the budget is.
    fn equal_share(&self) -> usize {
        self.capacity() / self.shares.load(SeqCst).max(1)
    }

    fn wake(&self) {
        if self.waiting.load(SeqCst) && self.waiting.swap(false, SeqCst) {
            self.room.notify_waiters();
        }
    }
}

/// One destination's part of the budget (of one input topic's lanes).
#[derive(Debug)]
pub struct Share {
    budget: Arc<QueueBudget>,
    queued: AtomicUsize,
}

impl Share {
    /// Whether the destination may queue another update now: the budget has room, or the
    /// destination holds less than its equal share.
    pub fn admits(&self) -> bool {
        let budget = &self.budget;
        budget.queued() < budget.capacity() || self.queued() < budget.equal_share()
    }

    /// The bytes this destination's lanes hold now.
    pub fn queued(&self) -> usize {
        self.queued.load(SeqCst)
    }

    /// Resolves once [`Share::admits`] (at once if it does now).
    pub async fn room(&self) {
        loop {
            let notified = self.budget.room.notified();
            let mut notified = std::pin::pin!(notified);
            // Registered before the flag and the check: a release after the check wakes it.
            notified.as_mut().enable();
            self.budget.waiting.store(true, SeqCst);
            if self.admits() {
                return;
            }
            notified.await;
        }
    }

    /// Counts `bytes` against the budget until the returned [`Held`] is dropped.
    pub fn hold(self: &Arc<Self>, bytes: usize) -> Held {
        self.queued.fetch_add(bytes, SeqCst);
        self.budget.queued.fetch_add(bytes, SeqCst);
        Held {
            share: Some(self.clone()),
            bytes,
        }
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        self.budget.shares.fetch_sub(1, SeqCst);
        self.budget.wake(); // the others' equal share grew
    }
}

/// Bytes counted against a destination's share while an event is queued; given back when
/// dropped. [`Held::default`] counts nothing (replays and resyncs have lanes of their own).
#[derive(Debug, Default)]
pub struct Held {
    share: Option<Arc<Share>>,
    bytes: usize,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(share) = self.share.take() {
            share.release(self.bytes);
        }
    }
}

impl Share {
    fn release(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, SeqCst);
        self.budget.queued.fetch_sub(bytes, SeqCst);
        self.budget.wake();
    }
}

/// Gives back what `events` hold at once, one release per run of events of one share, rather
/// than one per event as each is dropped: the budget's count is a cache line every lane and
/// the consumer write, and a batch's events are a lane's, of one share.
pub fn release(events: &mut [RoutedEvent]) {
    let mut run: Option<(Arc<Share>, usize)> = None;
    for event in events {
        let Some(share) = event.held.share.take() else {
            continue;
        };
        let bytes = event.held.bytes;
        match &mut run {
            Some((current, total)) if Arc::ptr_eq(current, &share) => *total += bytes,
            _ => {
                if let Some((done, total)) = run.replace((share, bytes)) {
                    done.release(total);
                }
            }
        }
    }
    if let Some((share, total)) = run {
        share.release(total);
    }
}

/// What queuing `update` for one destination costs: the update itself divided among the
/// `sharing` destinations it goes to (they hold one copy), and for each of them what its event
/// brings about until it leaves the lane: the event in the lane's queue and in the batch, its
/// user in the batch with their entries in the request body and their part of the delivery log
/// records (written as the user joins the batch), and its entries in the offsets tracker and
/// the order table. An estimate of the heap, from the packed update's size (see
/// [`Update::heap_bytes`]) and the shape of a partner request.
///
/// Counting the update and its events alone missed more than half of it: a 100-destination
/// drain held ~4 MB of RSS per MiB counted, the batch users and request bodies the most of the
/// rest (a `heaptrack` profile of that drain: docs/BENCHMARKS.md).
pub fn queued_bytes(update: &Update, sharing: usize) -> usize {
    let user_id = update.user_key().len();
    let changes = update.changes().len();
    let batched = size_of::<BatchUser>()
        + changes * size_of::<PartnerSegment>()
        + BATCH_INDEX_ENTRY
        + BODY_ENTRY
        + user_id
        + changes * BODY_SEGMENT
        + LOG_ENTRY
        + user_id
        + changes * LOG_SEGMENT;
    2 * size_of::<RoutedEvent>() + batched + TRACKED + update.heap_bytes() / sharing.max(1)
}

/// A user's slot in a batch's index by user id (a hash table of positions, with its slack).
const BATCH_INDEX_ENTRY: usize = 16;
/// A user's entry in the body besides their id and segments, with a 36-character partner id,
/// the strings' quotes and a comma (88 bytes).
const BODY_ENTRY: usize = ENTRY_FRAME_BYTES + 2 + 2 + 36 + 1;
/// One segment in the body, with an id of seven characters, its quotes, the partner's date and
/// a comma (80 bytes).
const BODY_SEGMENT: usize = SEGMENT_FRAME_BYTES + 7 + 2 + DATE_BYTES + 1;
/// The user's part of their delivery log record besides their id and segments, with a
/// 36-character partner id (`delivery_log::PreparedUsers`; counted with the log off too).
const LOG_ENTRY: usize = 2 + 3 + 2 + 36 + 4;
/// One segment in the user's part of their delivery log record, with an id of seven
/// characters and a time of six varint bytes.
const LOG_SEGMENT: usize = 2 + 2 + 7 + 2 + 1 + 6;
/// The event's entry in the offsets tracker and in the order table (16 bytes each).
const TRACKED: usize = 32;

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use model::{SegmentChange, SegmentStatusUpdate};

    use super::*;

    #[test]
    fn a_full_budget_admits_only_destinations_below_their_equal_share() {
        let budget = QueueBudget::new(1_000);
        let (busy, quiet) = (budget.share(), budget.share());
        let held = busy.hold(900);
        assert!(busy.admits() && quiet.admits(), "room left");
        let more = busy.hold(200);
        assert_eq!(budget.queued(), 1_100);
        assert!(!busy.admits(), "full, and busy holds 1,100 of its 500");
        assert!(quiet.admits(), "quiet holds nothing of its 500");
        let quiet_held = quiet.hold(499);
        assert!(quiet.admits(), "499 of 500");
        let last = quiet.hold(1);
        assert!(!quiet.admits(), "its whole share");
        // Everything comes back when the events go, however they go.
        drop((held, more, quiet_held, last));
        assert_eq!((budget.queued(), busy.queued(), quiet.queued()), (0, 0, 0));
        assert!(busy.admits());
    }

    #[test]
    fn a_batch_of_events_gives_back_what_each_holds_once() {
        let budget = QueueBudget::new(1_000);
        let (first, second) = (budget.share(), budget.share());
        let update = Update::new(&SegmentStatusUpdate::default());
        let event = |held| RoutedEvent {
            update: update.clone(),
            source: None,
            held,
        };
        let mut events = vec![
            event(first.hold(100)),
            event(first.hold(200)),
            event(Held::default()),
            event(second.hold(50)),
            event(first.hold(7)),
        ];
        let _kept = first.hold(1);
        assert_eq!(
            (budget.queued(), first.queued(), second.queued()),
            (358, 308, 50)
        );
        release(&mut events[..2]);
        assert_eq!(
            (budget.queued(), first.queued(), second.queued()),
            (58, 8, 50)
        );
        release(&mut events);
        assert_eq!(
            (budget.queued(), first.queued(), second.queued()),
            (1, 1, 0)
        );
        // Dropped afterwards, the events give back nothing more.
        drop(events);
        assert_eq!(
            (budget.queued(), first.queued(), second.queued()),
            (1, 1, 0)
        );
    }

    #[test]
    fn the_equal_share_follows_the_destinations_there_are() {
        let budget = QueueBudget::new(1_000);
        let first = budget.share();
        let _full = first.hold(1_000);
        let second = budget.share();
        let _below = second.hold(400);
        assert!(second.admits(), "400 of 500");
        let third = budget.share();
        assert!(!second.admits(), "400 of 333");
        drop(third);
        assert!(second.admits(), "400 of 500 again");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_destination_goes_on_when_room_is_given_back() {
        let budget = QueueBudget::new(1_000);
        let (busy, other) = (budget.share(), budget.share());
        let held = busy.hold(600);
        let other_held = other.hold(600);
        assert!(!busy.admits());
        let waiting = tokio::spawn({
            let busy = busy.clone();
            async move { busy.room().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "no room: it waits");
        drop(other_held); // 600 of 1,000 queued: room
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken by the release")
            .unwrap();
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_destination_goes_on_when_a_destination_leaves_and_its_share_grows() {
        let budget = QueueBudget::new(1_000);
        let (first, second, third) = (budget.share(), budget.share(), budget.share());
        let _full = first.hold(600);
        let _held = second.hold(400); // 400 of 333: over its share of a full budget
        let waiting = tokio::spawn({
            let second = second.clone();
            async move { second.room().await }
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiting.is_finished(), "over its share: it waits");
        drop(third); // 400 of 500 now
        tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("woken when the share grew")
            .unwrap();
    }

    #[test]
    fn an_update_costs_its_heap_divided_among_the_destinations_sharing_it() {
        let update = SegmentStatusUpdate {
            user_id: "u".repeat(100),
            changes: vec![SegmentChange::qualified(1, 0); 4],
            ..SegmentStatusUpdate::default()
        };
        let alone = queued_bytes(&Update::new(&update), 1);
        let shared = queued_bytes(&Update::new(&update), 2);
        // Each destination's own: its events, the batch user with four segments, the body.
        let own = shared - (alone - shared);
        assert!(own >= 2 * size_of::<RoutedEvent>() + size_of::<BatchUser>() + 100 + 4 * 43);
        assert!(alone - own >= 100 + 4 * 24, "the update");
        assert_eq!((alone - own) / 2, shared - own);
        let bigger = SegmentStatusUpdate {
            user_id: "u".repeat(1_000),
            ..update
        };
        // The id is in the update (shared) and in the destination's body and log records (its
        // own).
        let bigger = Update::new(&bigger);
        assert_eq!(queued_bytes(&bigger, 1) - alone, 3 * 900);
        assert_eq!(queued_bytes(&bigger, 2) - shared, 900 / 2 + 2 * 900);
    }
}
