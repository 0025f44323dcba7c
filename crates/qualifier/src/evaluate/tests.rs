//! Time-dependent behaviour at its boundaries, with time as a parameter.

use std::path::Path;

use model::pb::{IdSync, OptOut, TraitRealization, trait_event};

use super::*;
use model::{PartnerIds, SegmentStatus};

const S: i64 = 1_000;

fn definitions(text: &str) -> Definitions {
    Definitions::parse(Path::new("test.yaml"), text).unwrap()
}

fn realization(user: &str, trait_id: u64, time: i64, region: Option<u32>) -> TraitEvent {
    TraitEvent {
        user_id: user.to_owned(),
        origin: Origin::Realtime as i32,
        event: Some(trait_event::Event::TraitRealization(TraitRealization {
            trait_id,
            time_unix_ms: time,
            region,
        })),
    }
}

/// Applies `event` at `now` with every segment evaluated (no timer known for the user).
fn apply(
    evaluator: &mut Evaluator,
    defs: &Definitions,
    state: Option<UserState>,
    event: &TraitEvent,
    now: i64,
) -> Step {
    evaluator.on_event(defs, state, None, event, now).unwrap()
}

fn changes(step: &Step) -> Vec<(u64, SegmentStatus, ChangeReason, i64)> {
    step.update
        .as_ref()
        .map(|u| {
            u.changes
                .iter()
                .map(|c| (c.segment_id, c.status(), c.reason(), c.time_unix_ms))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn qualifies_once_and_a_repeat_changes_nothing() {
    let defs = definitions("traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 100 * S, Some(6)),
        100 * S,
    );
    assert_eq!(
        changes(&step),
        [(10, SegmentStatus::Active, ChangeReason::Qualified, 100 * S)]
    );
    assert_eq!(step.update.as_ref().unwrap().regions, [6]);
    let again = apply(
        &mut evaluator,
        &defs,
        step.state,
        &realization("u", 1, 101 * S, Some(6)),
        101 * S,
    );
    assert_eq!(again.update, None);
}

#[test]
fn a_rule_turning_false_sends_0_reason_rule() {
    let defs = definitions(
        "traits: [{ id: 1 }, { id: 2 }]\nsegments: [{ id: 10, rule: T1 AND NOT T2 }]\n",
    );
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, None),
        10 * S,
    );
    let step = apply(
        &mut evaluator,
        &defs,
        step.state,
        &realization("u", 2, 11 * S, None),
        11 * S,
    );
    assert_eq!(
        changes(&step),
        [(10, SegmentStatus::Inactive, ChangeReason::Rule, 11 * S)]
    );
}

#[test]
fn ttl_expiry_fires_from_the_timer_at_its_boundary() {
    let defs = definitions("traits: [{ id: 1, ttl: 2s }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, None),
        10 * S,
    );
    let state = step.state.unwrap();
    assert_eq!(next_due(&defs, &state, 10 * S), Some(12 * S));
    let early = evaluator.on_timer(&defs, state.clone(), 12 * S - 1);
    assert_eq!(early.update, None, "alive until exactly 2 s");
    let expired = evaluator.on_timer(&defs, state, 12 * S);
    assert_eq!(
        changes(&expired),
        [(10, SegmentStatus::Inactive, ChangeReason::Ttl, 12 * S)]
    );
    assert!(
        expired.state.as_ref().unwrap().traits.is_empty(),
        "the dead realization is pruned"
    );
}

#[test]
fn a_new_realization_before_expiry_keeps_the_user_in() {
    let defs = definitions("traits: [{ id: 1, ttl: 2s }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, None),
        10 * S,
    );
    let step = apply(
        &mut evaluator,
        &defs,
        step.state,
        &realization("u", 1, 11 * S, None),
        11 * S,
    );
    assert_eq!(step.update, None);
    let state = step.state.unwrap();
    assert_eq!(
        next_due(&defs, &state, 11 * S),
        Some(12 * S),
        "the old realization's boundary"
    );
    assert_eq!(
        evaluator.on_timer(&defs, state.clone(), 12 * S).update,
        None,
        "still in: the newer one lives"
    );
    assert_eq!(next_due(&defs, &state, 12 * S), Some(13 * S));
    let out = evaluator.on_timer(&defs, state, 13 * S);
    assert_eq!(
        changes(&out),
        [(10, SegmentStatus::Inactive, ChangeReason::Ttl, 13 * S)]
    );
}

#[test]
fn frequency_and_recency_at_their_boundaries() {
    let defs = definitions(
        "traits: [{ id: 1, ttl: 0 }]\nsegments: [{ id: 10, rule: T1 >= 3 WITHIN 10s }]\n",
    );
    let mut evaluator = Evaluator::default();
    let mut state = None;
    for (i, t) in [0, 4 * S, 9 * S].into_iter().enumerate() {
        let step = apply(
            &mut evaluator,
            &defs,
            state,
            &realization("u", 1, t, None),
            t,
        );
        if i < 2 {
            assert_eq!(step.update, None, "{} realizations are not 3", i + 1);
        } else {
            assert_eq!(
                changes(&step),
                [(10, SegmentStatus::Active, ChangeReason::Qualified, 9 * S)]
            );
        }
        state = step.state;
    }
    let state = state.unwrap();
    // The first realization leaves the 10 s window at exactly t = 10 s.
    assert_eq!(next_due(&defs, &state, 9 * S), Some(10 * S));
    assert_eq!(
        evaluator.on_timer(&defs, state.clone(), 10 * S - 1).update,
        None
    );
    let out = evaluator.on_timer(&defs, state, 10 * S);
    assert_eq!(
        changes(&out),
        [(10, SegmentStatus::Inactive, ChangeReason::Ttl, 10 * S)]
    );
}

#[test]
fn inactivity_ends_every_segment_and_forgets_the_user() {
    let defs = definitions(
        "inactivity: 3s\ntraits: [{ id: 1, ttl: 0 }, { id: 2, ttl: 0 }]\nsegments: [{ id: 10, rule: T1 }, { id: 11, rule: T2 }]\n",
    );
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, None),
        10 * S,
    );
    let step = apply(
        &mut evaluator,
        &defs,
        step.state,
        &realization("u", 2, 11 * S, None),
        11 * S,
    );
    let state = step.state.unwrap();
    assert_eq!(next_due(&defs, &state, 11 * S), Some(14 * S));
    let out = evaluator.on_timer(&defs, state, 14 * S);
    assert_eq!(
        changes(&out),
        [
            (10, SegmentStatus::Inactive, ChangeReason::Inactive, 14 * S),
            (11, SegmentStatus::Inactive, ChangeReason::Inactive, 14 * S)
        ]
    );
    assert_eq!(out.state, None);
    assert!(out.state_changed);
}

#[test]
fn opt_out_ends_everything_keeps_a_marker_and_ignores_later_events() {
    let defs = definitions("traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, Some(3)),
        10 * S,
    );
    let sync = TraitEvent {
        user_id: "u".into(),
        origin: 0,
        event: Some(trait_event::Event::IdSync(IdSync {
            data_partner_id: 7,
            partner_uuid: "p7".into(),
            time_unix_ms: 0,
        })),
    };
    let mut step = apply(&mut evaluator, &defs, step.state, &sync, 11 * S);
    assert_eq!(step.update, None, "an id sync alone changes no segment");
    // Their histories in trait parts (`store/parts.rs`), which the store tombstones as it
    // writes the marker: the marker says where they are.
    let state = step.state.as_mut().unwrap();
    (state.traits_apart, state.traits_generation) = (true, 17);
    let opt_out = TraitEvent {
        user_id: "u".into(),
        origin: 0,
        event: Some(trait_event::Event::OptOut(OptOut {
            time_unix_ms: 12 * S,
        })),
    };
    let step = apply(&mut evaluator, &defs, step.state, &opt_out, 12 * S);
    assert_eq!(
        changes(&step),
        [(10, SegmentStatus::Inactive, ChangeReason::OptOut, 12 * S)]
    );
    let update = step.update.as_ref().unwrap();
    assert_eq!(
        update.partner_ids,
        [PartnerIds {
            data_partner_id: 7,
            partner_uuids: vec!["p7".into()]
        }],
        "every synced id gets the 0"
    );
    let marker = step.state.clone().unwrap();
    assert!(
        marker.opted_out
            && (marker.traits_apart, marker.traits_generation) == (true, 17)
            && marker.traits.is_empty()
            && marker.memberships.is_empty()
            && marker.partner_ids.is_empty()
    );
    assert_eq!(next_due(&defs, &marker, 12 * S), None);
    let later = apply(
        &mut evaluator,
        &defs,
        step.state,
        &realization("u", 1, 13 * S, None),
        13 * S,
    );
    assert!(later.ignored && later.update.is_none() && !later.state_changed);
}

#[test]
fn retention_keeps_only_what_rules_can_use() {
    let defs = definitions(
        "traits: [{ id: 1, ttl: 0 }, { id: 5 }]\nsegments: [{ id: 10, rule: T1 >= 2 }]\n",
    );
    let mut evaluator = Evaluator::default();
    let mut state = None;
    for t in 0..10 {
        state = apply(
            &mut evaluator,
            &defs,
            state,
            &realization("u", 1, t * S, None),
            t * S,
        )
        .state;
        state = apply(
            &mut evaluator,
            &defs,
            state,
            &realization("u", 5, t * S, None),
            t * S,
        )
        .state;
    }
    let state = state.unwrap();
    assert_eq!(state.traits.len(), 1, "trait 5 is used by no rule");
    assert_eq!(
        state.traits[0].times_unix_ms,
        [7 * S, 8 * S, 9 * S],
        ">= 2 needs the newest 3"
    );
}

mod partial_evaluation {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn a_passed_boundary_makes_the_next_event_evaluate_every_segment() {
        let defs = definitions(
            "traits: [{ id: 1 }, { id: 2, ttl: 1s }]\nsegments: [{ id: 10, rule: T2 }, { id: 11, rule: T1 }]\n",
        );
        let mut evaluator = Evaluator::default();
        let step = apply(
            &mut evaluator,
            &defs,
            None,
            &realization("u", 2, 10 * S, None),
            10 * S,
        );
        let state = step.state.unwrap();
        let due = next_due(&defs, &state, 10 * S);
        assert_eq!(due, Some(11 * S));
        // The T2 timer has not run yet when a T1 event arrives at 12 s: segment 10 must end too.
        let step = evaluator
            .on_event(
                &defs,
                Some(state.clone()),
                due,
                &realization("u", 1, 12 * S, None),
                12 * S,
            )
            .unwrap();
        assert_eq!(
            changes(&step),
            [
                (10, SegmentStatus::Inactive, ChangeReason::Rule, 12 * S),
                (11, SegmentStatus::Active, ChangeReason::Qualified, 12 * S)
            ]
        );
        // With the timer still ahead, only T1's segments are evaluated.
        let step = evaluator
            .on_event(
                &defs,
                Some(state),
                Some(11 * S),
                &realization("u", 1, 10 * S + 500, None),
                10 * S + 500,
            )
            .unwrap();
        assert_eq!(
            changes(&step),
            [(
                11,
                SegmentStatus::Active,
                ChangeReason::Qualified,
                10 * S + 500
            )]
        );
    }

    /// What a step says of the user's trait histories holds: none changed but the one it
    /// names (the store copies the others' bytes from the user's record).
    fn histories_as_claimed(before: Option<&UserState>, step: &Step) -> bool {
        let traits =
            |state: Option<&UserState>, except: Option<u64>| -> Vec<model::pb::TraitHistory> {
                state
                    .map_or(&[][..], |s| &s.traits)
                    .iter()
                    .filter(|h| Some(h.trait_id) != except)
                    .cloned()
                    .collect()
            };
        let after = step.state.as_ref();
        match step.histories {
            Histories::Any => true,
            Histories::Untouched => traits(before, None) == traits(after, None),
            Histories::One(t) => traits(before, Some(t)) == traits(after, Some(t)),
        }
    }

    fn rule(parts: &[(u8, u64)]) -> String {
        let conditions: Vec<String> = parts
            .iter()
            .map(|&(kind, t)| match kind % 5 {
                0 => format!("T{t}"),
                1 => format!("NOT T{t}"),
                2 => format!("T{t} >= 2"),
                3 => format!("T{t} < 2"),
                _ => format!("T{t} WITHIN 2s"),
            })
            .collect();
        format!("T{} OR ({})", parts[0].1, conditions.join(" AND "))
    }

    proptest! {
        /// Evaluating only the segments that use the event's trait (the user's timer lies
        /// ahead) gives exactly what evaluating every segment gives, whatever the rules,
        /// ttls and the order of events and timers; and each step changes no trait history
        /// but those it says it may have.
        #[test]
        fn matches_evaluating_every_segment(
            rules in proptest::collection::vec(proptest::collection::vec((0_u8..5, 1_u64..6), 1..4), 1..8),
            ttls in proptest::collection::vec(prop_oneof![Just("0"), Just("1s"), Just("3s")], 5),
            events in proptest::collection::vec((1_u64..6, 0_i64..2_500, any::<bool>()), 1..40),
        ) {
            let traits: Vec<String> = ttls.iter().enumerate().map(|(i, ttl)| format!("{{ id: {}, ttl: {ttl} }}", i + 1)).collect();
            let segments: Vec<String> = rules.iter().enumerate().map(|(i, parts)| format!("{{ id: {}, rule: \"{}\" }}", i + 1, rule(parts))).collect();
            let defs = definitions(&format!("traits: [{}]\nsegments: [{}]\n", traits.join(", "), segments.join(", ")));
            let (mut full, mut partial) = (Evaluator::default(), Evaluator::default());
            let (mut state_full, mut state_partial): (Option<UserState>, Option<UserState>) = (None, None);
            let mut now = 1_000_000;
            // The user's timer, as the store keeps it: the step's.
            let mut due: Option<i64> = None;
            for (trait_id, dt, fire_timers_first) in events {
                now += dt;
                if fire_timers_first {
                    // The processor's timer pass: every due timer, at its due time.
                    while let Some(at) = due.filter(|&d| d <= now) {
                        let before = state_partial.clone();
                        let a = full.on_timer(&defs, state_full.take().unwrap(), at);
                        let b = partial.on_timer(&defs, state_partial.take().unwrap(), at);
                        prop_assert_eq!(&a.update, &b.update);
                        prop_assert!(histories_as_claimed(before.as_ref(), &b), "{:?}", b.histories);
                        state_full = a.state;
                        state_partial = b.state;
                        due = b.due;
                        prop_assert_eq!(due, state_partial.as_ref().and_then(|s| next_due(&defs, s, at)));
                    }
                }
                let event = realization("u", trait_id, now, None);
                let (before_full, before) = (state_full.clone(), state_partial.clone());
                let a = full.on_event(&defs, state_full.take(), None, &event, now).unwrap();
                let b = partial.on_event(&defs, state_partial.take(), due, &event, now).unwrap();
                prop_assert!(histories_as_claimed(before_full.as_ref(), &a), "{:?}", a.histories);
                prop_assert!(histories_as_claimed(before.as_ref(), &b), "{:?}", b.histories);
                prop_assert_eq!(a.update.as_ref().map(|u| &u.changes), b.update.as_ref().map(|u| &u.changes));
                prop_assert_eq!(&a.state, &b.state);
                state_full = a.state;
                state_partial = b.state;
                // The step's timer (as the store keeps it): never later than the exact one.
                let exact = state_partial.as_ref().and_then(|s| next_due(&defs, s, now));
                prop_assert!(b.due.is_some_and(|d| exact.is_some_and(|e| d <= e)) || b.due == exact, "timer {:?} after the exact {:?}", b.due, exact);
                due = b.due;
            }
        }
    }
}

/// A user known only by an ID sync has no realization and no membership: their first trait
/// event must still reach the segments that hold for nobody's traits (`NOT T2` here), not only
/// those using the event's trait — with the timer of the ID sync lying ahead.
#[test]
fn the_first_trait_event_after_an_id_sync_reaches_segments_that_hold_without_realizations() {
    let defs = definitions(
        "traits: [{ id: 1 }, { id: 2 }, { id: 3 }]\nsegments:\n  - { id: 10, rule: \"T1 OR NOT T2\" }\n  - { id: 11, rule: \"T3\" }\n",
    );
    assert_eq!(defs.hold_when_empty, vec![0]);
    let mut evaluator = Evaluator::default();
    let sync = TraitEvent {
        user_id: "u".into(),
        origin: Origin::Realtime as i32,
        event: Some(trait_event::Event::IdSync(IdSync {
            data_partner_id: 1234,
            partner_uuid: "p".into(),
            time_unix_ms: 10 * S,
        })),
    };
    let synced = evaluator
        .on_event(&defs, None, None, &sync, 10 * S)
        .unwrap();
    assert!(synced.due.is_some_and(|d| d > 11 * S));
    let step = evaluator
        .on_event(
            &defs,
            synced.state,
            synced.due,
            &realization("u", 3, 11 * S, None),
            11 * S,
        )
        .unwrap();
    assert_eq!(
        changes(&step),
        [
            (10, SegmentStatus::Active, ChangeReason::Qualified, 11 * S),
            (11, SegmentStatus::Active, ChangeReason::Qualified, 11 * S),
        ]
    );
}

/// The sequence orders a user's updates across both status topics: it rises with every update,
/// also within one millisecond and on a host whose clock is behind, is kept by the opt-out
/// marker, and starts above everything the user had after inactivity forgot them.
#[test]
fn update_sequences_rise_per_user_across_time_forgetting_and_opt_out() {
    let defs = definitions(
        "inactivity: 3s\ntraits: [{ id: 1, ttl: 0 }, { id: 2, ttl: 0 }]\nsegments: [{ id: 10, rule: T1 }, { id: 11, rule: T2 }]\n",
    );
    let mut evaluator = Evaluator::default();
    let sequence = |step: &Step| step.update.as_ref().map(|u| u.sequence).unwrap();
    let first = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, None),
        10 * S,
    );
    assert_eq!(
        sequence(&first),
        10 * S as u64 * 1024,
        "the clock sets the first one"
    );
    // The same millisecond, then a clock 5 s behind (another host after a rebalance).
    let second = apply(
        &mut evaluator,
        &defs,
        first.state.clone(),
        &realization("u", 2, 10 * S, None),
        10 * S,
    );
    assert_eq!(sequence(&second), sequence(&first) + 1);
    let behind = evaluator.on_timer(&defs, second.state.clone().unwrap(), 5 * S);
    assert_eq!(behind.update, None);
    let second_sequence = sequence(&second);
    let state = second.state.unwrap();
    assert_eq!(state.last_sequence, second_sequence, "kept in the state");
    // Inactivity forgets the user; seen again later, they start above what they had.
    let gone = evaluator.on_timer(&defs, state, 14 * S);
    let last = sequence(&gone);
    assert!(last > second_sequence);
    assert_eq!(gone.state, None);
    let back = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 15 * S, None),
        15 * S,
    );
    assert!(sequence(&back) > last);
    // The opt-out's update gets one, and the marker keeps it.
    let opt_out = TraitEvent {
        user_id: "u".into(),
        origin: 0,
        event: Some(trait_event::Event::OptOut(OptOut {
            time_unix_ms: 15 * S,
        })),
    };
    let out = apply(&mut evaluator, &defs, back.state.clone(), &opt_out, 15 * S);
    assert_eq!(sequence(&out), sequence(&back) + 1);
    assert_eq!(out.state.as_ref().unwrap().last_sequence, sequence(&out));
}

/// A realization that arrives after the expiry it predates (the qualifier was behind) brings
/// the user back in, dated at the expiry, not before it: a partner never sees a user's changes
/// go back in time.
#[test]
fn a_late_event_is_never_dated_before_the_users_previous_change() {
    let defs = definitions("traits: [{ id: 1, ttl: 6s }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let first = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 10 * S, None),
        10 * S,
    );
    let expired = evaluator.on_timer(&defs, first.state.unwrap(), 16 * S);
    assert_eq!(
        changes(&expired),
        [(10, SegmentStatus::Inactive, ChangeReason::Ttl, 16 * S)]
    );
    // Realized at 13 s, read at 18 s: still live (until 19 s), so the user is back in.
    let late = apply(
        &mut evaluator,
        &defs,
        expired.state,
        &realization("u", 1, 13 * S, None),
        18 * S,
    );
    assert_eq!(
        changes(&late),
        [(10, SegmentStatus::Active, ChangeReason::Qualified, 16 * S)]
    );
    let state = late.state.unwrap();
    assert_eq!(state.memberships[0].since_unix_ms, 16 * S);
    assert_eq!(state.last_change_unix_ms, 16 * S);
}

fn id_sync(user: &str, data_partner_id: u64, uuid: &str, time: i64) -> TraitEvent {
    TraitEvent {
        user_id: user.to_owned(),
        origin: Origin::Realtime as i32,
        event: Some(trait_event::Event::IdSync(IdSync {
            data_partner_id,
            partner_uuid: uuid.to_owned(),
            time_unix_ms: time,
        })),
    }
}

/// A targeted update as (data partner, its ids, [(segment, active, reason, time)]).
type Targeted = (u64, Vec<String>, Vec<(u64, bool, ChangeReason, i64)>);

fn targeted(step: &Step) -> Vec<Targeted> {
    step.targeted
        .iter()
        .map(|u| {
            assert_eq!(
                u.partner_ids.len(),
                1,
                "one data partner per targeted update"
            );
            let ids = &u.partner_ids[0];
            assert_eq!(u.only_data_partner_id, Some(ids.data_partner_id));
            let changes = u
                .changes
                .iter()
                .map(|c| {
                    let active = c.status() == SegmentStatus::Active;
                    (c.segment_id, active, c.reason(), c.time_unix_ms)
                })
                .collect();
            (ids.data_partner_id, ids.partner_uuids.clone(), changes)
        })
        .collect()
}

#[test]
fn a_new_partner_id_gets_the_memberships_the_user_already_has() {
    let defs = definitions("traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let member = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 100 * S, None),
        100 * S,
    );
    let synced = apply(
        &mut evaluator,
        &defs,
        member.state,
        &id_sync("u", 7, "a", 0),
        200 * S,
    );
    assert_eq!(synced.update, None);
    assert_eq!(
        targeted(&synced),
        [(
            7,
            vec!["a".to_owned()],
            vec![(10, true, ChangeReason::PartnerIdSynced, 100 * S)]
        )]
    );
    let sequence = synced.targeted[0].sequence;
    // The same id again: nothing new to tell anyone.
    let again = apply(
        &mut evaluator,
        &defs,
        synced.state,
        &id_sync("u", 7, "a", 0),
        300 * S,
    );
    assert!(again.targeted.is_empty());
    // Later updates carry the id and a higher sequence.
    let left = evaluator
        .on_timer(&defs, again.state.unwrap(), 100 * S + defs.inactivity_ms)
        .update
        .unwrap();
    assert_eq!(left.partner_ids[0].partner_uuids, ["a"]);
    assert!(left.sequence > sequence);
    assert_eq!(left.only_data_partner_id, None);
}

#[test]
fn a_user_without_memberships_gets_no_targeted_update() {
    let defs = definitions("traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let step = apply(
        &mut Evaluator::default(),
        &defs,
        None,
        &id_sync("u", 7, "a", 0),
        S,
    );
    assert!(step.targeted.is_empty());
    assert_eq!(step.state.unwrap().partner_ids[0].partner_uuids, ["a"]);
}

#[test]
fn ids_past_the_limit_evict_the_oldest_which_leaves_every_segment() {
    let defs = definitions(
        "max_partner_ids: 2\nmax_data_partners: 2\ntraits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n",
    );
    let mut evaluator = Evaluator::default();
    let mut state = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 100 * S, None),
        100 * S,
    )
    .state;
    for (i, uuid) in ["a", "b"].iter().enumerate() {
        state = apply(
            &mut evaluator,
            &defs,
            state,
            &id_sync("u", 7, uuid, 0),
            (101 + i as i64) * S,
        )
        .state;
    }
    // "a" synced again is the newest: "b" is evicted by "c".
    state = apply(
        &mut evaluator,
        &defs,
        state,
        &id_sync("u", 7, "a", 0),
        103 * S,
    )
    .state;
    let step = apply(
        &mut evaluator,
        &defs,
        state,
        &id_sync("u", 7, "c", 0),
        104 * S,
    );
    assert_eq!(
        targeted(&step),
        [
            (
                7,
                vec!["b".to_owned()],
                vec![(10, false, ChangeReason::PartnerIdEvicted, 104 * S)]
            ),
            (
                7,
                vec!["c".to_owned()],
                vec![(10, true, ChangeReason::PartnerIdSynced, 100 * S)]
            ),
        ]
    );
    assert!(step.targeted[0].sequence < step.targeted[1].sequence);
    let state = step.state;
    assert_eq!(
        state.as_ref().unwrap().partner_ids[0].partner_uuids,
        ["a", "c"]
    );
    // A third data partner evicts the one synced longest ago, with all its ids.
    let state = apply(
        &mut evaluator,
        &defs,
        state,
        &id_sync("u", 8, "x", 0),
        105 * S,
    )
    .state;
    let step = apply(
        &mut evaluator,
        &defs,
        state,
        &id_sync("u", 9, "y", 0),
        106 * S,
    );
    let evicted = &targeted(&step)[0];
    assert_eq!(
        (evicted.0, evicted.1.as_slice()),
        (7, &["a".to_owned(), "c".to_owned()][..])
    );
    let kept: Vec<u64> = step
        .state
        .unwrap()
        .partner_ids
        .iter()
        .map(|p| p.data_partner_id)
        .collect();
    assert_eq!(kept, [8, 9]);
}

#[test]
fn regions_past_the_limit_are_not_kept() {
    let defs =
        definitions("max_regions: 2\ntraits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let mut state = None;
    for region in [5, 3, 9, 1] {
        state = apply(
            &mut evaluator,
            &defs,
            state,
            &realization("u", 1, S, Some(region)),
            S,
        )
        .state;
    }
    assert_eq!(state.unwrap().regions, [3, 5]);
}

fn forget(user: &str, time: i64) -> TraitEvent {
    TraitEvent {
        user_id: user.to_owned(),
        origin: Origin::Realtime as i32,
        event: Some(trait_event::Event::Forget(model::pb::Forget {
            time_unix_ms: time,
        })),
    }
}

#[test]
fn forget_sends_0_to_every_partner_id_then_erases_everything_even_an_opt_out() {
    let defs = definitions("traits: [{ id: 1 }]\nsegments: [{ id: 10, rule: T1 }]\n");
    let mut evaluator = Evaluator::default();
    let member = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 100 * S, Some(6)),
        100 * S,
    );
    let synced = apply(
        &mut evaluator,
        &defs,
        member.state,
        &id_sync("u", 7, "a", 0),
        101 * S,
    );
    let erased = apply(
        &mut evaluator,
        &defs,
        synced.state,
        &forget("u", 0),
        102 * S,
    );
    assert_eq!(
        changes(&erased),
        [(10, SegmentStatus::Inactive, ChangeReason::Erased, 102 * S)]
    );
    assert_eq!(
        erased.update.as_ref().unwrap().partner_ids[0].partner_uuids,
        ["a"]
    );
    assert_eq!((erased.state, erased.state_changed), (None, true));
    assert_eq!((erased.erased_at, erased.due), (Some(102 * S), None));

    // An opted-out user's marker goes too: a later event starts a new user.
    let opt_out = TraitEvent {
        event: Some(trait_event::Event::OptOut(OptOut {
            time_unix_ms: 200 * S,
        })),
        ..forget("v", 0)
    };
    let marker = apply(&mut evaluator, &defs, None, &opt_out, 200 * S).state;
    assert!(marker.as_ref().unwrap().opted_out);
    let erased = apply(&mut evaluator, &defs, marker, &forget("v", 0), 201 * S);
    assert!(!erased.ignored && erased.state.is_none() && erased.update.is_none());
    assert_eq!(erased.erased_at, Some(201 * S));
    let back = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("v", 1, 202 * S, None),
        202 * S,
    );
    assert_eq!(
        changes(&back),
        [(10, SegmentStatus::Active, ChangeReason::Qualified, 202 * S)]
    );
}

#[test]
fn refresh_after_republishes_active_memberships_spread_within_a_tenth_of_the_period() {
    let defs = definitions(
        "inactivity: 1000d\nrefresh_after: 10s\ntraits: [{ id: 1, ttl: 0 }, { id: 2, ttl: 0 }]\nsegments:\n  - { id: 10, rule: T1 }\n  - { id: 20, rule: T1, refresh_after: 0 }\n  - { id: 30, rule: T2, refresh_after: 20s }\n",
    );
    let mut evaluator = Evaluator::default();
    let step = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("u", 1, 100 * S, None),
        100 * S,
    );
    let due = step.due.unwrap();
    assert!((110 * S..111 * S).contains(&due), "{due}");
    let refreshed = evaluator.on_timer(&defs, step.state.unwrap(), due);
    // 20 never refreshes; 30 is not a membership.
    assert_eq!(
        changes(&refreshed),
        [(10, SegmentStatus::Active, ChangeReason::Refresh, due)]
    );
    assert!(refreshed.state_changed);
    let next = refreshed.due.unwrap();
    assert!((due + 10 * S..due + 11 * S).contains(&next), "{next}");
    // Nothing more before then.
    let state = refreshed.state.unwrap();
    let early = evaluator.on_timer(&defs, state.clone(), next - 1);
    assert_eq!(early.update, None);
    // Another user refreshes at another moment within the spread.
    let other = apply(
        &mut evaluator,
        &defs,
        None,
        &realization("v", 1, 100 * S, None),
        100 * S,
    );
    assert_ne!(other.due, Some(due));
}
