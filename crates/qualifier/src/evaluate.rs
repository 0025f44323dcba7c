//! One user, one step: an event or a due timer → the user's new state and the changes of
//! segment status it causes (1 qualified; 0 by rule, ttl, inactivity or opt-out). Pure: the
//! time is a parameter, so every rule about time is tested without waiting.

use model::pb::{Membership, TraitHistory, trait_event};
use model::{
    ChangeReason, Origin, PartnerIds, SegmentChange, SegmentStatusUpdate, TraitEvent, UserState,
};

use crate::config::{Definitions, UserLimits};
use crate::rules::TraitTimes;

/// What a step did to a user.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    /// The user's state afterwards; `None` = forget the user (a changelog tombstone).
    pub state: Option<UserState>,
    /// Whether `state` differs from before (the changelog needs a record).
    pub state_changed: bool,
    /// The changes of segment status, if any.
    pub update: Option<SegmentStatusUpdate>,
    /// Updates for some of the user's partner ids only (see
    /// `SegmentStatusUpdate::only_data_partner_id`), published after `update`: an ID sync's
    /// new id gets the user's memberships, an evicted id its 0s.
    pub targeted: Vec<SegmentStatusUpdate>,
    /// The event was ignored (the user opted out earlier).
    pub ignored: bool,
    /// The user was erased: their delivery log records dated up to this time (ms since the
    /// Unix epoch) must become unreadable.
    pub erased_at: Option<i64>,
    /// When the user must be evaluated again without an event (`None`: never). Never later
    /// than [`next_due`] of the new state, possibly earlier (after an event that did not
    /// evaluate every segment): an early timer costs one evaluation that changes nothing.
    pub due: Option<i64>,
}

/// Why an event cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("user_id is empty")]
    NoUser,
    #[error("user_id is {0} bytes long, more than the {MAX_ID_BYTES} allowed")]
    UserIdTooLong(usize),
    #[error("partner_uuid is {0} bytes long, more than the {MAX_ID_BYTES} allowed")]
    PartnerUuidTooLong(usize),
    #[error("the event has no trait realization, id sync or opt-out")]
    Empty,
}

/// A user's trait histories as the rules see them: only realizations alive under the trait's
/// time-to-live.
struct LiveView<'a> {
    state: &'a UserState,
    definitions: &'a Definitions,
}

impl TraitTimes for LiveView<'_> {
    fn live_times(&self, trait_id: u64, now: i64) -> &[i64] {
        let Ok(index) = self
            .state
            .traits
            .binary_search_by_key(&trait_id, |h| h.trait_id)
        else {
            return &[];
        };
        let history = &self.state.traits[index];
        let times = history.times_unix_ms.as_slice();
        match self.definitions.traits.get(&trait_id).map(|t| t.ttl_ms) {
            Some(ttl) if ttl > 0 => {
                &times[times.partition_point(|&t| t <= now.saturating_sub(ttl))..]
            }
            _ => times,
        }
    }
}

/// Evaluates users; holds the rule programs' scratch stack so evaluations allocate nothing
/// for it.
#[derive(Debug, Default)]
pub struct Evaluator {
    stack: Vec<bool>,
}

/// The longest user id and partner id, in bytes. Ids are copied into every status update,
/// changelog record and partner request of the user: an id near Kafka's 1 MB message limit
/// would make those records too large to produce, and the transaction that carries them
/// could never commit (the process would restart into the same event for ever).
pub const MAX_ID_BYTES: usize = 512;

/// Whether an event can be applied at all (checked before the user's state is touched).
pub fn validate(event: &TraitEvent) -> Result<(), InvalidEvent> {
    if event.user_id.is_empty() {
        return Err(InvalidEvent::NoUser);
    }
    if event.user_id.len() > MAX_ID_BYTES {
        return Err(InvalidEvent::UserIdTooLong(event.user_id.len()));
    }
    if let Some(trait_event::Event::IdSync(sync)) = &event.event
        && sync.partner_uuid.len() > MAX_ID_BYTES
    {
        return Err(InvalidEvent::PartnerUuidTooLong(sync.partner_uuid.len()));
    }
    if event.event.is_none() {
        return Err(InvalidEvent::Empty);
    }
    Ok(())
}

impl Evaluator {
    /// Applies `event` to the user's state (`None` for a user not seen before) at `now`.
    /// `due` is the user's timer ([`next_due`] of the last step): while it lies ahead, no time
    /// boundary has passed since the user was last evaluated, so only the segments whose
    /// rules use the event's trait can change and only those are evaluated; otherwise (and
    /// for a new user) every segment is.
    pub fn on_event(
        &mut self,
        definitions: &Definitions,
        state: Option<UserState>,
        due: Option<i64>,
        event: &TraitEvent,
        now: i64,
    ) -> Result<Step, InvalidEvent> {
        validate(event)?;
        let kind = event.event.as_ref().ok_or(InvalidEvent::Empty)?;
        let erasing = matches!(kind, trait_event::Event::Forget(_));
        if !erasing && state.as_ref().is_some_and(|s| s.opted_out) {
            return Ok(Step {
                state,
                state_changed: false,
                update: None,
                ignored: true,
                due: None,
                ..Step::default()
            });
        }
        // A user with no realization and no membership yet (new, or known only by an ID sync):
        // only the segments that hold for nobody's traits and those using this event's trait
        // can make them a member.
        let blank = state
            .as_ref()
            .is_none_or(|s| s.traits.is_empty() && s.memberships.is_empty());
        let evaluate_all = !blank && due.is_none_or(|due| due <= now);
        let mut state = state.unwrap_or_else(|| UserState {
            user_id: event.user_id.clone(),
            ..UserState::default()
        });
        let origin = event.origin();
        match kind {
            trait_event::Event::OptOut(opt_out) => {
                let time = opt_out.time_unix_ms.min(now);
                let changes = state
                    .memberships
                    .iter()
                    .map(|m| SegmentChange::unsegmented(m.segment_id, ChangeReason::OptOut, time))
                    .collect();
                let update = build_update(&mut state, changes, origin, now);
                let marker = UserState {
                    user_id: state.user_id,
                    opted_out: true,
                    opted_out_unix_ms: time,
                    last_sequence: state.last_sequence,
                    last_change_unix_ms: state.last_change_unix_ms,
                    ..UserState::default()
                };
                Ok(Step {
                    state: Some(marker),
                    state_changed: true,
                    update,
                    due: None,
                    ..Step::default()
                })
            }
            trait_event::Event::Forget(forget) => {
                let time = if forget.time_unix_ms > 0 {
                    forget.time_unix_ms.min(now)
                } else {
                    now
                };
                let changes = state
                    .memberships
                    .iter()
                    .map(|m| SegmentChange::unsegmented(m.segment_id, ChangeReason::Erased, time))
                    .collect();
                let update = build_update(&mut state, changes, origin, now);
                Ok(Step {
                    state: None,
                    state_changed: true,
                    update,
                    erased_at: Some(time.max(state.last_change_unix_ms)),
                    due: None,
                    ..Step::default()
                })
            }
            trait_event::Event::IdSync(sync) => {
                let seen = if sync.time_unix_ms > 0 {
                    sync.time_unix_ms.min(now)
                } else {
                    now
                };
                state.last_seen_unix_ms = state.last_seen_unix_ms.max(seen);
                let synced = add_partner_id(
                    &mut state.partner_ids,
                    sync.data_partner_id,
                    &sync.partner_uuid,
                    definitions.limits,
                );
                let targeted = partner_id_updates(&mut state, synced, origin, now);
                // Nothing is evaluated: a timer already set (even one that is due now) still
                // stands, since a later last-seen only moves the inactivity boundary later.
                let due = due.or_else(|| next_due(definitions, &state, now));
                Ok(Step {
                    state: Some(state),
                    state_changed: true,
                    update: None,
                    targeted,
                    due,
                    ..Step::default()
                })
            }
            trait_event::Event::TraitRealization(realization) => {
                let time = realization.time_unix_ms.min(now);
                state.last_seen_unix_ms = state.last_seen_unix_ms.max(time);
                if let Some(region) = realization.region
                    && state.regions.len() < definitions.limits.regions
                    && let Err(at) = state.regions.binary_search(&region)
                {
                    state.regions.insert(at, region);
                }
                if definitions.retention.contains_key(&realization.trait_id) {
                    insert_time(&mut state.traits, realization.trait_id, time);
                }
                let first_segments;
                // Every segment that can hold is evaluated: the user is now evaluated under
                // these definitions.
                if evaluate_all || blank {
                    state.definitions_fingerprint = definitions.fingerprint;
                }
                let affected = if evaluate_all {
                    prune(definitions, &mut state, now);
                    None
                } else if blank {
                    // Every other rule reads no realization: it holds exactly when it holds
                    // for nobody's traits (a 66 µs evaluation of every rule cut to a few).
                    prune_trait(definitions, &mut state, realization.trait_id, now);
                    let mut segments: Vec<usize> = definitions
                        .segments_by_trait
                        .get(&realization.trait_id)
                        .map_or(&[][..], Vec::as_slice)
                        .iter()
                        .chain(&definitions.hold_when_empty)
                        .copied()
                        .collect();
                    segments.sort_unstable();
                    segments.dedup();
                    first_segments = segments;
                    Some(first_segments.as_slice())
                } else {
                    // No time boundary passed since the user was last evaluated, so no other
                    // trait's realizations aged out: only this trait can hold too many.
                    prune_trait(definitions, &mut state, realization.trait_id, now);
                    Some(
                        definitions
                            .segments_by_trait
                            .get(&realization.trait_id)
                            .map_or(&[][..], Vec::as_slice),
                    )
                };
                let changes = self.evaluate(
                    definitions,
                    &mut state,
                    now,
                    ChangeReason::Rule,
                    time,
                    affected,
                );
                let update = build_update(&mut state, changes, origin, now);
                let due = match due {
                    // Boundaries of other traits are unchanged: the old timer, or this
                    // realization's own boundaries if they come first.
                    // (A membership this event made has its first refresh ahead too.)
                    Some(due) if !evaluate_all && !blank => {
                        let (ttl, windows) = trait_horizons(definitions, realization.trait_id);
                        Some(
                            boundaries(ttl, windows, time)
                                .filter(|&b| b > now)
                                .chain(first_refresh(definitions, &state))
                                .fold(due, i64::min),
                        )
                    }
                    _ => next_due(definitions, &state, now),
                };
                Ok(Step {
                    state: Some(state),
                    state_changed: true,
                    update,
                    due,
                    ..Step::default()
                })
            }
        }
    }

    /// Re-evaluates a user whose timer is due at `now`: trait realizations that aged out of
    /// their time-to-live or a rule's window (reason ttl), or inactivity (every segment ends,
    /// reason inactive, and the user is forgotten).
    pub fn on_timer(&mut self, definitions: &Definitions, state: UserState, now: i64) -> Step {
        self.reevaluate(definitions, state, now, ChangeReason::Ttl)
    }

    /// Re-evaluates every segment for a user last evaluated under other definitions (a rule
    /// changed or was removed, a time-to-live changed): the 0s it causes have reason rule
    /// (a removed segment's members get theirs too).
    pub fn on_definitions_changed(
        &mut self,
        definitions: &Definitions,
        state: UserState,
        now: i64,
    ) -> Step {
        self.reevaluate(definitions, state, now, ChangeReason::Rule)
    }

    /// Every segment evaluated for `state` at `now` (or the user forgotten, if inactive).
    fn reevaluate(
        &mut self,
        definitions: &Definitions,
        mut state: UserState,
        now: i64,
        reason_for_0: ChangeReason,
    ) -> Step {
        if state.opted_out {
            return Step {
                state: Some(state),
                state_changed: false,
                update: None,
                due: None,
                ..Step::default()
            };
        }
        let inactive_at = state
            .last_seen_unix_ms
            .saturating_add(definitions.inactivity_ms);
        if now >= inactive_at {
            let changes = state
                .memberships
                .iter()
                .map(|m| {
                    SegmentChange::unsegmented(m.segment_id, ChangeReason::Inactive, inactive_at)
                })
                .collect();
            let update = build_update(&mut state, changes, Origin::Realtime, now);
            return Step {
                state: None,
                state_changed: true,
                update,
                due: None,
                ..Step::default()
            };
        }
        let before = state.clone();
        prune(definitions, &mut state, now);
        let mut changes = self.evaluate(definitions, &mut state, now, reason_for_0, now, None);
        refresh(definitions, &mut state, now, &mut changes);
        state.definitions_fingerprint = definitions.fingerprint;
        let update = build_update(&mut state, changes, Origin::Realtime, now);
        let state_changed = state != before;
        let due = next_due(definitions, &state, now);
        Step {
            state: Some(state),
            state_changed,
            update,
            due,
            ..Step::default()
        }
    }

    /// Evaluates the `affected` segments (indices; `None` = every segment); returns the
    /// changes and updates the memberships. Memberships of segments no longer defined end with
    /// reason `rule`.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &mut self,
        definitions: &Definitions,
        state: &mut UserState,
        now: i64,
        reason_for_0: ChangeReason,
        time: i64,
        affected: Option<&[usize]>,
    ) -> Vec<SegmentChange> {
        let mut changes = Vec::new();
        let mut qualified = Vec::new();
        let segments: Box<dyn Iterator<Item = &crate::config::SegmentDef>> = match affected {
            Some(indices) => Box::new(indices.iter().map(|&i| &definitions.segments[i])),
            None => Box::new(definitions.segments.iter()),
        };
        for segment in segments {
            let view = LiveView { state, definitions };
            let holds = segment.program.evaluate(&view, now, &mut self.stack);
            let member = state.memberships.iter().any(|m| m.segment_id == segment.id);
            if holds && !member {
                qualified.push(segment.id);
                changes.push(SegmentChange::qualified(segment.id, time));
            } else if !holds && member {
                changes.push(SegmentChange::unsegmented(segment.id, reason_for_0, time));
            }
        }
        state.memberships.retain(|m| {
            let defined = definitions.segment_index.contains_key(&m.segment_id);
            let still = defined && !changes.iter().any(|c| c.segment_id == m.segment_id);
            if !defined {
                changes.push(SegmentChange::unsegmented(
                    m.segment_id,
                    ChangeReason::Rule,
                    time,
                ));
            }
            still
        });
        state
            .memberships
            .extend(qualified.into_iter().map(|segment_id| Membership {
                segment_id,
                since_unix_ms: time,
                refreshed_unix_ms: 0,
            }));
        changes
    }
}

/// Re-publishes the 1 of each membership whose `refresh_after` came (and that this step did
/// not change anyway), dated `now`.
fn refresh(
    definitions: &Definitions,
    state: &mut UserState,
    now: i64,
    changes: &mut Vec<SegmentChange>,
) {
    if !definitions.refreshing {
        return;
    }
    for membership in &mut state.memberships {
        let Some(period) = refresh_period(definitions, membership.segment_id) else {
            continue;
        };
        if next_refresh(&state.user_id, membership, period) <= now
            && !changes
                .iter()
                .any(|c| c.segment_id == membership.segment_id)
        {
            changes.push(SegmentChange {
                reason: ChangeReason::Refresh as i32,
                ..SegmentChange::qualified(membership.segment_id, now)
            });
            membership.refreshed_unix_ms = now;
        }
    }
}

/// The earliest [`next_refresh`] among the user's memberships.
fn first_refresh(definitions: &Definitions, state: &UserState) -> Option<i64> {
    if !definitions.refreshing {
        return None;
    }
    state
        .memberships
        .iter()
        .filter_map(|m| {
            let period = refresh_period(definitions, m.segment_id)?;
            Some(next_refresh(&state.user_id, m, period))
        })
        .min()
}

fn refresh_period(definitions: &Definitions, segment_id: u64) -> Option<i64> {
    let &index = definitions.segment_index.get(&segment_id)?;
    definitions.segments[index].refresh_ms
}

/// When a membership's 1 is re-published next: `period` after the later of when the user
/// qualified and its last refresh, plus up to a tenth of the period chosen by user and
/// segment, so that members who qualified in the same second do not all refresh together.
fn next_refresh(user_id: &str, membership: &Membership, period: i64) -> i64 {
    let spread = period / 10;
    let offset = if spread > 0 {
        let hash = crate::config::fnv1a(
            crate::config::fnv1a(crate::config::FNV_OFFSET, user_id.as_bytes()),
            &membership.segment_id.to_le_bytes(),
        );
        (hash % spread as u64) as i64
    } else {
        0
    };
    membership
        .since_unix_ms
        .max(membership.refreshed_unix_ms)
        .saturating_add(period)
        .saturating_add(offset)
}

/// Update sequences per millisecond of the hybrid clock (see [`next_sequence`]).
const SEQUENCES_PER_MS: u64 = 1024;

/// The user's next update sequence: one past the last, and at least the wall clock in units of
/// 1/1024 ms, so a user forgotten (inactivity) and seen again starts above every sequence they
/// had, and a rebalance to a host whose clock is behind still counts up.
fn next_sequence(state: &mut UserState, now: i64) -> u64 {
    let clock = u64::try_from(now)
        .unwrap_or(0)
        .saturating_mul(SEQUENCES_PER_MS);
    state.last_sequence = state.last_sequence.saturating_add(1).max(clock);
    state.last_sequence
}

fn build_update(
    state: &mut UserState,
    changes: Vec<SegmentChange>,
    origin: Origin,
    now: i64,
) -> Option<SegmentStatusUpdate> {
    if changes.is_empty() {
        return None;
    }
    let sequence = next_sequence(state, now);
    // No change is dated before the user's previous one (a late event after an expiry).
    let mut changes = changes;
    for change in &mut changes {
        if change.time_unix_ms < state.last_change_unix_ms {
            change.time_unix_ms = state.last_change_unix_ms;
            if let Some(membership) = state
                .memberships
                .iter_mut()
                .find(|m| m.segment_id == change.segment_id)
            {
                membership.since_unix_ms = change.time_unix_ms;
            }
        }
    }
    if let Some(latest) = changes.iter().map(|c| c.time_unix_ms).max() {
        state.last_change_unix_ms = state.last_change_unix_ms.max(latest);
    }
    Some(SegmentStatusUpdate {
        user_id: state.user_id.clone(),
        regions: state.regions.clone(),
        partner_ids: state.partner_ids.clone(),
        changes,
        origin: effective_origin(origin) as i32,
        produced_unix_ms: now,
        sequence,
        only_data_partner_id: None,
    })
}

/// What an ID sync did to the user's ids.
#[derive(Debug, Default)]
struct Synced {
    /// The id is new for the user (not merely synced again).
    added: Option<(u64, String)>,
    /// Ids evicted to stay within the limits, by data partner.
    evicted: Vec<PartnerIds>,
}

/// Adds `uuid` as the user's newest id at `data_partner_id`; an id or data partner synced
/// again becomes the newest. Past `limits`, the id (or data partner) synced longest ago is
/// evicted.
fn add_partner_id(
    partner_ids: &mut Vec<PartnerIds>,
    data_partner_id: u64,
    uuid: &str,
    limits: UserLimits,
) -> Synced {
    let mut synced = Synced::default();
    if uuid.is_empty() {
        return synced;
    }
    let mut entry = match partner_ids
        .iter()
        .position(|p| p.data_partner_id == data_partner_id)
    {
        Some(i) => partner_ids.remove(i),
        None => PartnerIds {
            data_partner_id,
            partner_uuids: Vec::new(),
        },
    };
    let uuids = &mut entry.partner_uuids;
    match uuids.iter().position(|u| u == uuid) {
        Some(i) => {
            let again = uuids.remove(i);
            uuids.push(again);
        }
        None => {
            uuids.push(uuid.to_owned());
            synced.added = Some((data_partner_id, uuid.to_owned()));
        }
    }
    let excess = uuids.len().saturating_sub(limits.partner_ids);
    if excess > 0 {
        synced.evicted.push(PartnerIds {
            data_partner_id,
            partner_uuids: uuids.drain(..excess).collect(),
        });
    }
    partner_ids.push(entry);
    let excess = partner_ids.len().saturating_sub(limits.data_partners);
    synced.evicted.extend(partner_ids.drain(..excess));
    synced
}

/// The targeted updates of an ID sync: each evicted id leaves the user's segments (0s dated
/// now), and a new id gets the user's memberships (1s dated when the user qualified).
fn partner_id_updates(
    state: &mut UserState,
    synced: Synced,
    origin: Origin,
    now: i64,
) -> Vec<SegmentStatusUpdate> {
    let mut updates = Vec::new();
    if state.memberships.is_empty() {
        return updates;
    }
    for evicted in synced.evicted {
        let time = now.max(state.last_change_unix_ms);
        state.last_change_unix_ms = time;
        let changes = state
            .memberships
            .iter()
            .map(|m| SegmentChange::unsegmented(m.segment_id, ChangeReason::PartnerIdEvicted, time))
            .collect();
        updates.push(targeted_update(state, evicted, changes, origin, now));
    }
    if let Some((data_partner_id, uuid)) = synced.added {
        let changes = state
            .memberships
            .iter()
            .map(|m| SegmentChange {
                reason: ChangeReason::PartnerIdSynced as i32,
                ..SegmentChange::qualified(m.segment_id, m.since_unix_ms)
            })
            .collect();
        let ids = PartnerIds {
            data_partner_id,
            partner_uuids: vec![uuid],
        };
        updates.push(targeted_update(state, ids, changes, origin, now));
    }
    updates
}

/// An update for the ids in `ids` only (`only_data_partner_id`).
fn targeted_update(
    state: &mut UserState,
    ids: PartnerIds,
    changes: Vec<SegmentChange>,
    origin: Origin,
    now: i64,
) -> SegmentStatusUpdate {
    SegmentStatusUpdate {
        user_id: state.user_id.clone(),
        regions: state.regions.clone(),
        only_data_partner_id: Some(ids.data_partner_id),
        partner_ids: vec![ids],
        changes,
        origin: effective_origin(origin) as i32,
        produced_unix_ms: now,
        sequence: next_sequence(state, now),
    }
}

/// Changes of an event without an origin go to the real-time topic.
fn effective_origin(origin: Origin) -> Origin {
    if origin == Origin::Unspecified {
        Origin::Realtime
    } else {
        origin
    }
}

/// Adds a realization, keeping the histories in ascending trait id (rules find a trait by
/// binary search; [`normalize`] restores that order for states written before it was kept).
fn insert_time(traits: &mut Vec<TraitHistory>, trait_id: u64, time: i64) {
    let index = match traits.binary_search_by_key(&trait_id, |h| h.trait_id) {
        Ok(i) => i,
        Err(i) => {
            traits.insert(
                i,
                TraitHistory {
                    trait_id,
                    times_unix_ms: Vec::new(),
                },
            );
            i
        }
    };
    let times = &mut traits[index].times_unix_ms;
    let at = times.partition_point(|&t| t <= time);
    times.insert(at, time);
}

/// Keeps only what the rules can still use: realizations within the trait's time-to-live,
/// at most the newest `count` the rules can tell apart; nothing of traits no rule uses.
fn prune(definitions: &Definitions, state: &mut UserState, now: i64) {
    state
        .traits
        .retain_mut(|history| prune_history(definitions, history, now));
}

/// [`prune`] of one trait's history only.
fn prune_trait(definitions: &Definitions, state: &mut UserState, trait_id: u64, now: i64) {
    if let Ok(index) = state.traits.binary_search_by_key(&trait_id, |h| h.trait_id)
        && !prune_history(definitions, &mut state.traits[index], now)
    {
        state.traits.remove(index);
    }
}

/// Drops what the rules can no longer use from one history; whether anything is left.
fn prune_history(definitions: &Definitions, history: &mut TraitHistory, now: i64) -> bool {
    let Some(keep) = definitions.retention.get(&history.trait_id) else {
        return false;
    };
    let times = &mut history.times_unix_ms;
    if let Some(horizon) = keep.horizon_ms {
        let dead = times.partition_point(|&t| t <= now.saturating_sub(horizon));
        times.drain(..dead);
    }
    let excess = times.len().saturating_sub(keep.count as usize);
    times.drain(..excess);
    !times.is_empty()
}

/// Puts a state read from the changelog in the order this version keeps: trait histories in
/// ascending trait id.
pub fn normalize(state: &mut UserState) {
    if !state.traits.is_sorted_by_key(|h| h.trait_id) {
        state.traits.sort_by_key(|h| h.trait_id);
    }
}

/// What makes a realization of `trait_id` matter to the rules over time: the trait's
/// time-to-live (0: none) and the rule windows over it.
fn trait_horizons(definitions: &Definitions, trait_id: u64) -> (i64, &[i64]) {
    let ttl = definitions.traits.get(&trait_id).map_or(0, |d| d.ttl_ms);
    let windows = definitions
        .windows
        .get(&trait_id)
        .map_or(&[][..], Vec::as_slice);
    (ttl, windows)
}

/// The moments a realization at `t` matters, given its trait's [`trait_horizons`]: when it
/// leaves the time-to-live and each rule window.
fn boundaries(ttl: i64, windows: &[i64], t: i64) -> impl Iterator<Item = i64> + '_ {
    (ttl > 0)
        .then_some(t.saturating_add(ttl))
        .into_iter()
        .chain(windows.iter().map(move |w| t.saturating_add(*w)))
}

/// When this user must be evaluated again without a new event: the first moment after `now`
/// at which a realization leaves its time-to-live or a rule's window, or the user becomes
/// inactive. `None` for an opted-out marker (kept forever).
pub fn next_due(definitions: &Definitions, state: &UserState, now: i64) -> Option<i64> {
    if state.opted_out {
        return None;
    }
    let mut due = state
        .last_seen_unix_ms
        .saturating_add(definitions.inactivity_ms);
    // A refresh that came is due at once (an event may have been evaluated past it).
    if let Some(refresh) = first_refresh(definitions, state) {
        due = due.min(refresh);
    }
    for history in &state.traits {
        let (ttl, windows) = trait_horizons(definitions, history.trait_id);
        for &t in &history.times_unix_ms {
            for boundary in boundaries(ttl, windows, t) {
                if boundary > now && boundary < due {
                    due = boundary;
                }
            }
        }
    }
    Some(due)
}

#[cfg(test)]
mod tests;
