//! Trait histories: realizations kept in order and pruned to what the rules can use, and
//! when a user is due for evaluation again without a new event.

use model::UserState;
use model::pb::TraitHistory;

use super::updates::first_refresh;
use crate::config::Definitions;

/// Adds a realization, keeping the histories in ascending trait id (rules find a trait by
/// binary search; [`normalize`] restores that order for states written before it was kept).
pub(super) fn insert_time(traits: &mut Vec<TraitHistory>, trait_id: u64, time: i64) {
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
pub(super) fn prune(definitions: &Definitions, state: &mut UserState, now: i64) {
    state
        .traits
        .retain_mut(|history| prune_history(definitions, history, now));
}

/// [`prune`] of one trait's history only.
pub(super) fn prune_trait(
    definitions: &Definitions,
    state: &mut UserState,
    trait_id: u64,
    now: i64,
) {
    if let Ok(index) = state.traits.binary_search_by_key(&trait_id, |h| h.trait_id)
        && !prune_history(definitions, &mut state.traits[index], now)
    {
        state.traits.remove(index);
    }
}

/// Drops what the rules can no longer use from one history; whether anything is left.
pub(super) fn prune_history(
    definitions: &Definitions,
    history: &mut TraitHistory,
    now: i64,
) -> bool {
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
pub(super) fn trait_horizons(definitions: &Definitions, trait_id: u64) -> (i64, &[i64]) {
    let ttl = definitions.traits.get(&trait_id).map_or(0, |d| d.ttl_ms);
    let windows = definitions
        .windows
        .get(&trait_id)
        .map_or(&[][..], Vec::as_slice);
    (ttl, windows)
}

/// The moments a realization at `t` matters, given its trait's [`trait_horizons`]: when it
/// leaves the time-to-live and each rule window.
pub(super) fn boundaries(ttl: i64, windows: &[i64], t: i64) -> impl Iterator<Item = i64> + '_ {
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
