//! What goes into one request to one destination: the events of a batch, one entry per user
//! with the latest status per (user, partner segment), and the exact size of the JSON body
//! they will make, so a batch closes before it would pass `max_bytes` or `max_users`.
//!
//! Each user's `Users` entries, and their part of their delivery log records, are written as
//! the user joins the batch, while their update is in the cache; sending the batch copies
//! them. Written from the updates when the batch was sent (after the lane had waited for the
//! partner while other lanes ran) they were cache misses: a 20-destination drain took 1.15×
//! the CPU.
//!
//! A change replaced within the batch by a later status of the same user and partner segment
//! (the contract's "latest status wins") is *coalesced*: the batch keeps a record of each, so
//! that delivery can account for every change it was given — sent, dead-lettered, or merged
//! into a later one — and a change that is none of these is a loss someone can see.

use std::ops::Range;
use std::sync::Arc;

use model::partner::{PartnerSegment, PartnerUser};

use crate::config::DestinationConfig;
use crate::delivery_log::PreparedUsers;
use crate::offsets::PartitionAssignment;
use crate::update::Update;

mod body;
pub(crate) use body::{DATE_BYTES, ENTRY_FRAME_BYTES, SEGMENT_FRAME_BYTES};
use body::{digits, header_bytes, write_entries};

/// Where an event was read from, so its offset can be finished once the batch is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventSource {
    pub assignment: PartitionAssignment,
    pub offset: i64,
    /// Read by the destination's own catch-up reader, not the shared consumer.
    pub catch_up: bool,
    /// When the update was written to the input topic (the message's timestamp), where a
    /// batch's linger may count from (see `lane`); `None` where that is not known or not
    /// wanted (catch-up reads, replays, resyncs: old by design, their batches fill anyway).
    pub written_unix_ms: Option<i64>,
}

/// An update on its way to one destination.
#[derive(Debug)]
pub struct RoutedEvent {
    pub update: Update,
    /// `None` for replayed dead letters, which have no input offset.
    pub source: Option<EventSource>,
    /// Its bytes in the worker's queue budget, given back when the event is dropped.
    pub held: crate::budget::Held,
}

/// One user in a batch: their latest update (regions and synced ids come from it; see
/// [`DestinationBatch::latest`]) and their changed segments, latest status per partner
/// `Segment_ID`, in order of first change.
#[derive(Debug)]
pub struct BatchUser {
    /// Position of the user's latest event in [`DestinationBatch::events`].
    latest: usize,
    /// Where this user's segments lie in [`DestinationBatch::segments`].
    segments: Range<usize>,
    /// Where this user's `Users` entries (one per partner id, commas between) lie in
    /// [`DestinationBatch::rendered`].
    rendered: Range<usize>,
    /// Number of `Users` entries: one per partner id, at least one.
    entries: usize,
    pub latest_update: LatestUpdate,
}

/// What the lane needs of a user's latest update once the batch is sent (the latency's send
/// path and start), copied as the user joins: read from the update after the request, it was
/// a cache miss per user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatestUpdate {
    pub produced_unix_ms: i64,
    pub origin: model::Origin,
    /// For some of the user's partner ids only (`only_data_partner_id`).
    pub targeted: bool,
    /// Read by the destination's catch-up reader.
    pub catch_up: bool,
}

/// A change the batch replaced by a later status of the same user and partner segment: it is
/// not sent, and the later one stands for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalescedChange {
    /// Position of the user in [`DestinationBatch::users`].
    pub user: usize,
    /// Position of the segment (the one that replaced it) in the user's `segments`.
    pub segment: usize,
    /// The replaced change's status and time.
    pub active: bool,
    pub time_unix_ms: i64,
}

/// The batch a destination lane is filling.
#[derive(Debug)]
pub struct DestinationBatch {
    destination: Arc<DestinationConfig>,
    pub events: Vec<RoutedEvent>,
    pub users: Vec<BatchUser>,
    /// Position in `users` by user id. Holds positions, not the updates: another `Arc` clone
    /// per event was an atomic on a cache line the other lanes share (perf: a third of `add`).
    /// By [`index_hash`].
    index: hashbrown::HashTable<usize>,
    /// Changes replaced within this batch; reused across batches, so it allocates only while
    /// it grows past its largest batch.
    pub coalesced: Vec<CoalescedChange>,
    users_bytes: usize,
    entries: usize,
    header_bytes: usize,
    /// The users' entries, as written when each joined; a user's earlier entries, replaced
    /// by a later update of theirs, stay until the batch is sent ([`Self::replaced_bytes`]).
    rendered: Vec<u8>,
    /// The users' part of their delivery log records, when the destination keeps the log.
    log: Option<PreparedUsers>,
    /// The users' segments, each user's in one run ([`BatchUser::segments`]); a user's earlier
    /// run, replaced by a later update of theirs, stays until the batch is sent. One vector
    /// for the batch, not one per user: that was an allocation and a free per user.
    segments: Vec<PartnerSegment>,
    /// The regions of the user being added, read out of their update (reused).
    regions: Vec<u32>,
    /// How long the last batch's vectors grew: the next batch reserves as much when its first
    /// event comes, rather than growing (and copying) step by step, yet an idle destination
    /// holds none of them.
    last: BatchSizes,
}

/// The lengths a batch's vectors reached, for the next batch to reserve.
#[derive(Debug, Default, Clone, Copy)]
struct BatchSizes {
    events: usize,
    rendered: usize,
    segments: usize,
    log: crate::delivery_log::PreparedSizes,
}

impl DestinationBatch {
    pub fn new(destination: Arc<DestinationConfig>) -> Self {
        let header_bytes = header_bytes(&destination);
        Self {
            destination,
            events: Vec::new(),
            users: Vec::new(),
            index: hashbrown::HashTable::new(),
            coalesced: Vec::new(),
            users_bytes: 0,
            entries: 0,
            header_bytes,
            rendered: Vec::new(),
            log: None,
            segments: Vec::new(),
            regions: Vec::new(),
            last: BatchSizes::default(),
        }
    }

    /// Writes each user's part of their delivery log records as they join (see
    /// [`PreparedUsers`]).
    pub fn keep_log(&mut self) {
        self.log = Some(PreparedUsers::default());
    }

    /// The users' part of their delivery log records, if the batch keeps them.
    pub fn log_users(&self) -> Option<&PreparedUsers> {
        self.log.as_ref()
    }

    /// The `Users` entries of the batch's users, in order, as the body has them: each user's
    /// entries, a comma between users.
    pub fn write_users(&self, out: &mut Vec<u8>) {
        for (i, user) in self.users.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(&self.rendered[user.rendered.clone()]);
        }
    }

    pub fn destination(&self) -> &Arc<DestinationConfig> {
        &self.destination
    }

    /// The user's segments: their latest status per partner `Segment_ID`, in order of first
    /// change.
    pub fn segments(&self, user: &BatchUser) -> &[PartnerSegment] {
        &self.segments[user.segments.clone()]
    }

    /// The changes the batch sends: each user's latest status per partner `Segment_ID` (those
    /// replaced within the batch are in [`Self::coalesced`]).
    pub fn change_count(&self) -> usize {
        self.users.iter().map(|u| u.segments.len()).sum()
    }

    /// The user's latest update in this batch.
    pub fn latest(&self, user: &BatchUser) -> &Update {
        &self.events[user.latest].update
    }

    /// The user's position in `users`, by the hash of their id's bytes.
    fn find(&self, hash: u64, user_key: &[u8]) -> Option<usize> {
        self.index
            .find(hash, |&i| {
                self.latest(&self.users[i]).user_key() == user_key
            })
            .copied()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }

    /// The exact length of the JSON body this batch makes.
    pub fn body_bytes(&self) -> usize {
        self.header_bytes + digits(self.entries as u64) + self.users_bytes
    }

    /// Number of `Users` entries (users × their partner ids): `User_count`.
    pub fn entry_count(&self) -> usize {
        self.entries
    }

    /// Whether the batch passes `max_bytes`: it then holds one user (a batch with others never
    /// takes a user that would pass it) whom no request within the limit can carry.
    pub fn is_oversized(&self) -> bool {
        self.body_bytes() > self.destination.batch.max_bytes
    }

    /// Whether the batch reached a limit and should be sent now — or holds a body's worth of
    /// replaced entries (a few users changing over and over within one linger).
    pub fn is_full(&self) -> bool {
        let limits = &self.destination.batch;
        self.users.len() >= limits.max_users
            || self.body_bytes() >= limits.max_bytes
            || self.replaced_bytes() >= limits.max_bytes
    }

    /// The bytes of entries replaced by a later update of their user: what `rendered` holds
    /// besides the users' entries (`users_bytes`, which counts the commas between users too).
    fn replaced_bytes(&self) -> usize {
        self.rendered.len() + self.users.len().saturating_sub(1) - self.users_bytes
    }

    /// Adds `event` unless that would pass `max_users` or `max_bytes`: then it is handed back,
    /// to go into the next batch once this one is sent. An empty batch always takes it: a user
    /// whose entries alone pass `max_bytes` makes a batch over the limit ([`Self::is_oversized`]),
    /// which is dead-lettered instead of sent.
    pub fn add(&mut self, event: RoutedEvent) -> Result<(), RoutedEvent> {
        let limits = self.destination.batch;
        let hash = index_hash(&event.update);
        let existing = self.find(hash, event.update.user_key());
        // A targeted update is for some of the user's ids only: merged with another update of
        // the user, its changes would reach the other ids (or its ids miss its changes).
        if let Some(i) = existing
            && (event.update.only_data_partner_id().is_some()
                || self.latest(&self.users[i]).only_data_partner_id().is_some())
        {
            return Err(event);
        }
        if self.events.is_empty() {
            self.reserve_as_last();
        }
        let position = existing.unwrap_or(self.users.len());
        let coalesced_before = self.coalesced.len();
        let mut replaced = |segment: usize, old: &PartnerSegment| {
            self.coalesced.push(CoalescedChange {
                user: position,
                segment,
                active: old.active,
                time_unix_ms: old.time_unix_ms,
            });
        };
        // The user's segments after this update: a new run at the end of `segments`, from
        // their earlier run if they have one.
        let run_start = self.segments.len();
        let (old_bytes, old_entries) = match existing {
            Some(i) => {
                let user = &self.users[i];
                self.segments.extend_from_within(user.segments.clone());
                (user.rendered.len(), user.entries)
            }
            None => (0, 0),
        };
        merge_segments(
            &self.destination,
            &mut self.segments,
            run_start,
            &event.update,
            &mut replaced,
        );
        let candidate = &self.segments[run_start..];
        let user_id = event.update.user_id();
        let partner_uuids = event.update.partner_uuids(self.destination.data_partner);
        self.regions.clear();
        self.regions.extend(event.update.regions());
        let user = PartnerUser {
            aam_uuid: user_id,
            data_partner_uuid: "",
            regions: &self.regions,
            segments: candidate,
        };
        let start = self.rendered.len();
        let new_entries = write_entries(&mut self.rendered, &user, partner_uuids.clone());
        let new_bytes = self.rendered.len() - start;
        // A new user after others needs the comma before their entries.
        let comma = usize::from(existing.is_none() && !self.users.is_empty());
        let users_bytes = self.users_bytes - old_bytes + new_bytes + comma;
        let entries = self.entries - old_entries + new_entries;
        if !self.is_empty() {
            let users_after = self.users.len() + usize::from(existing.is_none());
            let body_after = self.header_bytes + digits(entries as u64) + users_bytes;
            if users_after > limits.max_users || body_after > limits.max_bytes {
                // The event goes into the next batch: it replaced nothing in this one.
                self.coalesced.truncate(coalesced_before);
                self.rendered.truncate(start);
                self.segments.truncate(run_start);
                return Err(event);
            }
        }
        if let Some(log) = &mut self.log {
            log.put(position, &user, partner_uuids);
        }
        let user = BatchUser {
            latest: self.events.len(),
            segments: run_start..self.segments.len(),
            rendered: start..start + new_bytes,
            entries: new_entries,
            latest_update: LatestUpdate {
                produced_unix_ms: event.update.produced_unix_ms(),
                origin: event.update.origin(),
                targeted: event.update.only_data_partner_id().is_some(),
                catch_up: event.source.is_some_and(|s| s.catch_up),
            },
        };
        match existing {
            Some(i) => self.users[i] = user,
            None => {
                let (users, events) = (&self.users, &self.events);
                self.index.insert_unique(hash, users.len(), |&i| {
                    index_hash(&events[users[i].latest].update)
                });
                self.users.push(user);
            }
        }
        self.users_bytes = users_bytes;
        self.entries = entries;
        self.events.push(event);
        Ok(())
    }

    /// Empties the batch for reuse, returning its events.
    pub fn take_events(&mut self) -> Vec<RoutedEvent> {
        self.users.clear();
        self.index.clear();
        self.coalesced.clear();
        self.users_bytes = 0;
        self.entries = 0;
        self.last = BatchSizes {
            events: self.events.len(),
            rendered: self.rendered.len(),
            segments: self.segments.len(),
            log: self
                .log
                .as_ref()
                .map(PreparedUsers::sizes)
                .unwrap_or_default(),
        };
        // Not kept across batches: a thousand idle destinations would each hold their largest.
        self.rendered = Vec::new();
        self.segments = Vec::new();
        if let Some(log) = &mut self.log {
            *log = PreparedUsers::default();
        }
        std::mem::take(&mut self.events)
    }

    /// Reserves what the last batch used and an eighth more, as a new batch's first event
    /// comes: batches that close at `max_users` differ a little in their bytes, and one just
    /// past the last grew its vectors to twice, copying what they held.
    fn reserve_as_last(&mut self) {
        let last = self.last;
        self.events.reserve(with_margin(last.events));
        self.rendered.reserve(with_margin(last.rendered));
        self.segments.reserve(with_margin(last.segments));
        if let Some(log) = &mut self.log {
            log.reserve(last.log.map(with_margin));
        }
    }

    /// Keeps only the events `keep` accepts, rebuilding the users from them (used when a
    /// partition was revoked while its events waited).
    pub fn retain(&mut self, mut keep: impl FnMut(&RoutedEvent) -> bool) {
        if self.events.iter().all(&mut keep) {
            return;
        }
        let events = self.take_events();
        for event in events.into_iter().filter(|e| keep(e)) {
            // Fewer events than before: they fit (and a targeted update never shared the
            // batch with another update of its user).
            let _fits = self.add(event);
        }
    }
}

/// `n` and an eighth more.
fn with_margin(n: usize) -> usize {
    n + n / 8
}

/// A user's place in a batch's index by id: their id's hash ([`Update::user_hash`]), made once
/// per update, with its halves swapped: the users of one lane share the low bits, which the
/// index would otherwise start every search from.
fn index_hash(update: &Update) -> u64 {
    update.user_hash().rotate_left(32)
}

/// Applies `update`'s mapped changes to the user's segments, `segments[run_start..]`: the latest
/// status per partner segment wins, keeping the position of its first change; `replaced` hears
/// of every change it overwrites (by its position in the run).
fn merge_segments(
    destination: &DestinationConfig,
    segments: &mut Vec<PartnerSegment>,
    run_start: usize,
    update: &Update,
    replaced: &mut impl FnMut(usize, &PartnerSegment),
) {
    for change in update.changes() {
        let Some(their_id) = destination.segments.get(&change.segment_id) else {
            continue;
        };
        let active = change.active();
        let run = &mut segments[run_start..];
        match run.iter().position(|s| s.segment_id == *their_id) {
            Some(position) => {
                let segment = &mut run[position];
                replaced(position, segment);
                segment.active = active;
                segment.time_unix_ms = change.time_unix_ms;
            }
            None => segments.push(PartnerSegment {
                segment_id: their_id.clone(),
                active,
                time_unix_ms: change.time_unix_ms,
            }),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
