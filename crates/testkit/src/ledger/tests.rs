//! Known answers of the ledger, its known-bad cases first: each must fail a run.

use super::*;

fn change(user: &str, active: bool, time: i64) -> Change {
    (user.to_owned(), "a-1".to_owned(), active, time)
}

fn changes(entries: &[(Change, u64)]) -> Changes {
    entries.iter().cloned().collect()
}

fn destination() -> Destination {
    Destination {
        id: 423,
        path: "/acme".to_owned(),
        data_partner: None,
        segments: [(1, "a-1".to_owned())].into_iter().collect(),
    }
}

#[test]
fn a_dropped_non_final_change_is_missing_unless_delivery_reported_it_coalesced() {
    // u1 qualified, then left: only the 0 reached the partner.
    let expected = changes(&[(change("u1", true, 100), 1), (change("u1", false, 107), 1)]);
    let accepted = changes(&[(change("u1", false, 107), 1)]);
    let none = Changes::new();
    let lost = line(&destination(), &expected, &accepted, &none, &none);
    assert_eq!((lost.delivered, lost.coalesced, lost.missing), (1, 0, 1));
    assert_eq!(lost.missing_examples, vec![change("u1", true, 100)]);
    assert_eq!(lost.problems().len(), 1, "{:?}", lost.problems());
    assert!(
        lost.problems()[0].contains("neither delivered, nor dead-lettered, nor reported coalesced")
    );

    let reported = changes(&[(change("u1", true, 100), 1)]);
    let merged = line(&destination(), &expected, &accepted, &none, &reported);
    assert_eq!(
        (merged.delivered, merged.coalesced, merged.missing),
        (1, 1, 0)
    );
    assert!(merged.problems().is_empty(), "{:?}", merged.problems());
}

#[test]
fn a_duplicate_never_offsets_a_loss() {
    // Two changes committed, two accepted: but one of them twice and the other never.
    let expected = changes(&[(change("u1", true, 100), 1), (change("u2", true, 100), 1)]);
    let accepted = changes(&[(change("u1", true, 100), 2)]);
    let none = Changes::new();
    let l = line(&destination(), &expected, &accepted, &none, &none);
    assert_eq!(
        (l.committed, l.delivered, l.duplicates, l.missing),
        (2, 1, 1, 1)
    );
    assert!(!l.problems().is_empty());
}

#[test]
fn the_same_change_committed_twice_needs_two_receptions() {
    let expected = changes(&[(change("u1", true, 100), 2)]);
    let accepted = changes(&[(change("u1", true, 100), 1)]);
    let none = Changes::new();
    let l = line(&destination(), &expected, &accepted, &none, &none);
    assert_eq!((l.delivered, l.missing), (1, 1));
}

#[test]
fn delivered_dead_lettered_coalesced_and_unexpected_are_told_apart() {
    let expected = changes(&[
        (change("u1", true, 100), 1),
        (change("u2", true, 100), 1),
        (change("u3", true, 100), 1),
        (change("u3", false, 101), 1),
    ]);
    let accepted = changes(&[
        (change("u1", true, 100), 2),
        (change("u3", false, 101), 1),
        (change("u9", true, 100), 1),
    ]);
    let dlq = changes(&[(change("u2", true, 100), 1)]);
    let coalesced = changes(&[(change("u3", true, 100), 1), (change("u8", true, 5), 1)]);
    let l = line(&destination(), &expected, &accepted, &dlq, &coalesced);
    assert_eq!(
        (
            l.committed,
            l.delivered,
            l.dead_lettered,
            l.coalesced,
            l.duplicates,
            l.missing,
            l.unexpected
        ),
        (4, 2, 1, 1, 1, 0, 2)
    );
    assert_eq!(
        l.problems().len(),
        1,
        "unexpected changes fail the run: {:?}",
        l.problems()
    );
}

#[test]
fn a_replay_that_leaves_a_dead_letter_at_the_dlq_is_missing_at_the_partner() {
    let expected = changes(&[(change("u1", true, 100), 1), (change("u2", true, 100), 1)]);
    let before = Changes::new();
    let after = changes(&[(change("u1", true, 100), 1)]);
    let dlq = changes(&[(change("u1", true, 100), 1), (change("u2", true, 100), 1)]);
    let none = Changes::new();
    let mut l = line(&destination(), &expected, &before, &dlq, &none);
    assert_eq!(l.missing, 0);
    add_replay(&mut l, &expected, &before, &after, &none);
    assert_eq!((l.replayed, l.missing_at_partner), (Some(1), Some(1)));
    assert!(!l.problems().is_empty());
}

#[test]
fn out_of_order_changes_pass_in_chaos_only_as_re_sends() {
    let resent = Line {
        out_of_order: 2,
        duplicates: 2,
        ..Line::default()
    };
    assert_eq!(resent.out_of_order_beyond_resends(), 0);
    // A change coalesced by the first reading, sent for the first time by the second.
    let rebatched = Line {
        out_of_order: 2,
        duplicates: 1,
        recoalesced: 1,
        ..Line::default()
    };
    assert_eq!(rebatched.out_of_order_beyond_resends(), 0);
    let reordered = Line {
        out_of_order: 2,
        duplicates: 1,
        ..Line::default()
    };
    assert_eq!(reordered.out_of_order_beyond_resends(), 1);
}

#[test]
fn a_change_delivered_and_also_reported_coalesced_was_read_twice() {
    let expected = changes(&[(change("u1", false, 102), 1), (change("u1", true, 103), 1)]);
    let accepted = changes(&[(change("u1", false, 102), 1), (change("u1", true, 103), 2)]);
    let coalesced = changes(&[(change("u1", false, 102), 1)]);
    let l = line(
        &destination(),
        &expected,
        &accepted,
        &Changes::new(),
        &coalesced,
    );
    assert_eq!(
        (
            l.delivered,
            l.coalesced,
            l.recoalesced,
            l.duplicates,
            l.missing
        ),
        (2, 0, 1, 1, 0)
    );
}

#[test]
fn order_and_contract_violations_fail_a_run() {
    let l = Line {
        out_of_order: 1,
        violations: 2,
        ..Line::default()
    };
    assert_eq!(l.problems().len(), 2);
}

#[test]
fn coalesced_changes_are_read_from_delivery_reports() {
    let report = "{\"destination\":423,\"user\":\"u1\",\"segment\":\"a-1\",\"status\":1,\"time_unix_ms\":100999}\n";
    let got = coalesced(report, "w1.jsonl").unwrap();
    assert_eq!(got[&423], changes(&[(change("u1", true, 100), 1)]));
    assert!(
        coalesced("", "w1.jsonl").unwrap().is_empty(),
        "an empty report: nothing coalesced"
    );
}

#[test]
fn a_report_that_is_missing_or_garbled_is_an_error_not_zero() {
    let error = coalesced("{\"destination\":423,\"user\":\"u1\"}\n", "w1.jsonl").unwrap_err();
    assert!(
        error.0.contains("w1.jsonl:1: not a coalesced change"),
        "{error}"
    );
    let missing = std::path::PathBuf::from("/nonexistent/w9.jsonl");
    let error = coalesced_in_reports(&[missing]).unwrap_err();
    assert!(
        error
            .0
            .contains("cannot read the coalesced-change report /nonexistent/w9.jsonl"),
        "{error}"
    );
    assert!(coalesced_in_reports(&[]).is_err());
}

#[test]
fn a_partner_document_without_its_fields_is_an_error() {
    assert!(accepted(&serde_json::json!({})).is_err());
    assert!(
        accepted(&serde_json::json!({"endpoints": {"/a": {"changes": [["u", "s", 1]]}}})).is_err()
    );
    let good = serde_json::json!({"endpoints": {"/a": {"changes": [["u1", "a-1", 1, 100, 2]]}}});
    assert_eq!(
        accepted(&good).unwrap()["/a"],
        changes(&[(change("u1", true, 100), 2)])
    );
    assert!(violations(&serde_json::json!({"endpoints": {"/a": {}}})).is_err());
    let stats = serde_json::json!({"endpoints": {"/a": {"order_violations": 1, "violations": {"body": 2, "auth": 1}}}});
    assert_eq!(violations(&stats).unwrap()["/a"], (1, 3));
}

fn committed(user: &str, active: bool, time_unix_ms: i64) -> Committed {
    in_segment(user, 1, active, time_unix_ms)
}

fn in_segment(user: &str, segment: u64, active: bool, time_unix_ms: i64) -> Committed {
    Committed {
        user: user.to_owned(),
        segment,
        active,
        time_unix_ms,
        only_data_partner: None,
        restatement: false,
    }
}

#[test]
fn a_targeted_change_is_expected_only_at_its_data_partners_destinations() {
    let targeted = Committed {
        only_data_partner: Some(7),
        ..committed("u1", true, 1_000)
    };
    let changes = [committed("u1", true, 1_000), targeted];
    let mut ours = destination();
    ours.data_partner = Some(7);
    assert_eq!(expected(&changes, &ours).values().sum::<u64>(), 2);
    ours.data_partner = Some(8);
    assert_eq!(expected(&changes, &ours).values().sum::<u64>(), 1);
    assert_eq!(expected(&changes, &destination()).values().sum::<u64>(), 1);
    // Re-stating a membership for a new partner id is not a reprocessed input.
    let duplicates = qualifier_duplicates(&changes);
    assert_eq!((duplicates.identical, duplicates.repeated_status), (0, 0));
    let untargeted = [committed("u1", true, 1_000), committed("u1", true, 1_000)];
    assert_eq!(qualifier_duplicates(&untargeted).repeated_status, 1);
    let refreshed = [
        committed("u1", true, 1_000),
        Committed {
            restatement: true,
            ..committed("u1", true, 2_000)
        },
    ];
    assert_eq!(qualifier_duplicates(&refreshed).repeated_status, 0);
}

#[test]
fn a_reprocessed_input_shows_in_the_qualifier_output() {
    // u1: re-committed after its history moved on (1@1, 0@2, then 1@1 again).
    // u2: the same change twice in a row (a repeated status).
    let q = qualifier_duplicates(&[
        committed("u1", true, 1),
        committed("u1", false, 2),
        committed("u1", true, 1),
        committed("u2", true, 1),
        committed("u2", true, 1),
    ]);
    assert_eq!((q.identical, q.repeated_status), (1, 1), "{q:?}");
    assert_eq!(
        q.examples,
        vec![committed("u1", true, 1), committed("u2", true, 1)]
    );
}

#[test]
fn changes_of_one_instant_may_flip_back() {
    // Three events of u1 stamped with the same millisecond: 1, 0, 1 all at t = 5; then 0 at 9.
    let q = qualifier_duplicates(&[
        committed("u1", true, 5),
        committed("u1", false, 5),
        committed("u1", true, 5),
        committed("u1", false, 9),
        committed("u2", true, 5),
    ]);
    assert_eq!((q.identical, q.repeated_status), (0, 0), "{q:?}");
}

#[test]
fn a_run_differing_from_its_reference_fails_by_a_missing_a_doubled_or_a_reordered_change() {
    let reference = vec![
        in_segment("u1", 4, true, 100),
        in_segment("u2", 1, true, 150),
        in_segment("u1", 4, false, 200),
        in_segment("u1", 1, true, 200),
    ];
    let same = compare_output(&reference, &reference);
    assert!(same.is_equal(), "{same:?}");
    assert_eq!((same.users, same.changes), (2, 4));

    // Lost: u1's 0 in segment 4.
    let mut lost = reference.clone();
    lost.remove(2);
    let diff = compare_output(&lost, &reference);
    assert_eq!((diff.missing, diff.extra, diff.reordered), (1, 0, 0));
    assert!(!diff.is_equal());
    assert!(diff.examples[0].starts_with("u1:"), "{:?}", diff.examples);

    // Committed twice (a re-processed input); a doubled change never offsets a lost one.
    let mut doubled = lost.clone();
    doubled.push(in_segment("u2", 1, true, 150));
    let diff = compare_output(&doubled, &reference);
    assert_eq!((diff.missing, diff.extra, diff.reordered), (1, 1, 0));

    // The same changes, another order for one user.
    let mut swapped = reference.clone();
    swapped.swap(2, 3);
    let diff = compare_output(&swapped, &reference);
    assert_eq!((diff.missing, diff.extra, diff.reordered), (0, 0, 1));

    // A user only one side has.
    let diff = compare_output(&reference[..1], &reference[1..2]);
    assert_eq!((diff.users, diff.missing, diff.extra), (2, 1, 1));
}
