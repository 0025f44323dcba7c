//! One user, one step: an event or a due timer → the user's new state and the changes of
//! segment status it causes (1 qualified; 0 by rule, ttl, inactivity or opt-out). Pure: the
//! time is a parameter, so every rule about time is tested without waiting.

use model::pb::{Membership, trait_event};
use model::{
    ChangeReason, Origin, SegmentChange, SegmentStatus, SegmentStatusUpdate, TraitEvent, UserState,
};

use crate::config::Definitions;
use crate::rules::TraitTimes;

mod history;
mod partner_ids;
mod updates;

use history::{boundaries, insert_time, prune, prune_trait, trait_horizons};
pub use history::{next_due, normalize};
use partner_ids::{add_partner_id, partner_id_updates};
use updates::{build_update, first_refresh, refresh};

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
    /// Which of the user's trait histories the step may have changed: the store re-encodes
    /// only those and copies the others' bytes from the user's record.
    pub histories: Histories,
}

/// Which trait histories a [`Step`] may have changed. Anything not certain is `Any`, the
/// default: a history wrongly left out would keep its old bytes in the changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Histories {
    #[default]
    Any,
    /// Only this trait's (added to, pruned, or removed).
    One(u64),
    /// None of them.
    Untouched,
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

/// Evaluates users; holds the rule programs' scratch stack, and the list of segments a new
/// user's event evaluates, so evaluations allocate nothing for them.
#[derive(Debug, Default)]
pub struct Evaluator {
    stack: Vec<bool>,
    segments: Vec<usize>,
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
                histories: Histories::Untouched,
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
                    // Where the changelog holds their histories: the store tombstones their
                    // trait parts as it writes the marker.
                    traits_apart: state.traits_apart,
                    traits_generation: state.traits_generation,
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
                    histories: Histories::Untouched,
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
                // The segments a blank user's event evaluates, in a vector kept across events.
                let mut first_segments = std::mem::take(&mut self.segments);
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
                    first_segments.clear();
                    first_segments.extend(
                        definitions
                            .segments_by_trait
                            .get(&realization.trait_id)
                            .map_or(&[][..], Vec::as_slice)
                            .iter()
                            .chain(&definitions.hold_when_empty),
                    );
                    first_segments.sort_unstable();
                    first_segments.dedup();
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
                self.segments = first_segments;
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
                // Every history is pruned when every segment is evaluated; otherwise only
                // this trait's is touched.
                let histories = if evaluate_all {
                    Histories::Any
                } else {
                    Histories::One(realization.trait_id)
                };
                Ok(Step {
                    state: Some(state),
                    state_changed: true,
                    update,
                    due,
                    histories,
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
        let mut visit = |segment: &crate::config::SegmentDef| {
            let view = LiveView { state, definitions };
            let holds = segment.program.evaluate(&view, now, &mut self.stack);
            let member = state.memberships.iter().any(|m| m.segment_id == segment.id);
            if holds && !member {
                changes.push(SegmentChange::qualified(segment.id, time));
            } else if !holds && member {
                changes.push(SegmentChange::unsegmented(segment.id, reason_for_0, time));
            }
        };
        // Two loops rather than one boxed iterator: an allocation per event otherwise.
        match affected {
            Some(indices) => indices
                .iter()
                .for_each(|&i| visit(&definitions.segments[i])),
            None => definitions.segments.iter().for_each(visit),
        }
        // The evaluated segments' changes; those of undefined segments follow.
        let evaluated = changes.len();
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
        state.memberships.extend(
            changes[..evaluated]
                .iter()
                .filter(|c| c.status == SegmentStatus::Active as i32)
                .map(|c| Membership {
                    segment_id: c.segment_id,
                    since_unix_ms: time,
                    refreshed_unix_ms: 0,
                }),
        );
        changes
    }
}

#[cfg(test)]
mod tests;
