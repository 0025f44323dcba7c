//! One changelog partition through a resync: its passes, checked against known records.

use model::UserState;
use prost::Message as _;

use super::*;

fn record(offset: i64, user: &str, payload: Option<UserState>) -> Fetched {
    Fetched {
        offset,
        key: Some(user.as_bytes().to_vec()),
        payload: payload.map(|s| s.encode_to_vec()),
    }
}

/// A run past its indexing (of no key: as in a converge pass, only the chunk dedupes, and
/// the pass ends at its end offset).
fn reading(start: i64, end: i64) -> PartitionRun {
    let mut run = PartitionRun::new(start, end);
    run.start_reading();
    run.phase = Phase::Reading;
    run
}

fn state(user: &str) -> Option<UserState> {
    Some(UserState {
        user_id: user.to_owned(),
        ..UserState::default()
    })
}

#[test]
fn the_main_pass_is_indexed_then_read_from_its_start() {
    let mut run = PartitionRun::new(10, 20);
    assert_eq!(run.phase, Phase::Indexing);
    assert_eq!(run.classify(9), Take::Ignore);
    assert_eq!(run.classify(10), Take::Index);
    assert_eq!(run.classify(20), Take::Ignore, "read again after indexing");
    run.index(10, Some(b"u1"));
    assert_eq!(run.classify(10), Take::Ignore, "indexed already");
    assert!(!run.is_indexed(None));
    assert!(
        run.is_indexed(Some(20)),
        "offsets 11..20 returned no record"
    );
    run.index(15, Some(b"u2"));
    run.index(19, Some(b"u1"));
    assert!(run.is_indexed(None));
    assert_eq!(run.start_reading(), Some(10));
    assert_eq!(run.classify(10), Take::Read);
    // Right after the seek the consumer's position is stale: the pass is read once its
    // last record is.
    assert!(!run.is_read(Some(20)));
    for offset in [10, 15, 19] {
        run.read(record(offset, "u1", state("u1"))).unwrap();
    }
    assert!(run.is_read(None));
}

#[test]
fn a_main_pass_without_records_settles_without_reading() {
    let mut run = PartitionRun::new(10, 12); // two transaction markers
    assert!(run.is_indexed(Some(12)));
    assert_eq!(run.start_reading(), None);
    assert_eq!(run.phase, Phase::Settling);
    assert!(run.is_settled(10));
    assert_eq!(run.commit_offset(10), 12);
}

#[test]
fn records_of_the_pass_are_read_later_ones_held_and_earlier_ones_ignored() {
    let mut run = reading(10, 20);
    assert_eq!(run.classify(9), Take::Ignore);
    assert_eq!(run.classify(10), Take::Read);
    run.read(record(10, "u1", state("u1"))).unwrap();
    assert_eq!(run.classify(10), Take::Ignore, "fetched again");
    assert_eq!(run.classify(19), Take::Read);
    assert_eq!(
        run.classify(20),
        Take::Hold,
        "written after the run started"
    );
    run.reach();
    assert_eq!(run.phase, Phase::Settling);
    assert_eq!(run.classify(15), Take::Hold);
    run.hold(record(20, "u2", state("u2")));
    assert_eq!(run.classify(20), Take::Ignore, "held already");
    run.phase = Phase::Complete;
    assert_eq!(run.classify(30), Take::Ignore);
}

#[test]
fn an_empty_range_settles_at_once() {
    let run = PartitionRun::new(7, 7);
    assert_eq!(run.phase, Phase::Settling);
    assert!(run.is_settled(7));
    assert_eq!(run.commit_offset(7), 7);
}

#[test]
fn only_each_users_last_record_of_the_main_pass_is_routed() {
    let records = [
        record(0, "u1", state("u1")),
        record(1, "u2", state("u2")),
        record(2, "u1", None), // u1 was forgotten
        record(3, "u2", state("u2")),
        record(4, "u3", state("u3")),
    ];
    let mut run = PartitionRun::new(0, 5);
    for r in &records {
        run.index(r.offset, r.key.as_deref());
    }
    run.start_reading();
    for r in records {
        run.read(r).unwrap();
    }
    let chunk = run.flush();
    let routed: Vec<(i64, Option<(&str, bool)>)> = chunk
        .iter()
        .map(|(offset, entry)| {
            let entry = entry
                .as_ref()
                .map(|(u, r)| (u.as_str(), *r == Record::Forgotten));
            (*offset, entry)
        })
        .collect();
    assert_eq!(
        routed,
        [
            (0, None),
            (1, None),
            (2, Some(("u1", true))),
            (3, Some(("u2", false))),
            (4, Some(("u3", false))),
        ],
        "earlier records are not routed; every offset is still tracked"
    );
}

#[test]
fn a_newer_record_of_a_user_in_the_chunk_drops_the_earlier_one() {
    let mut run = reading(0, 10);
    run.read(record(0, "u1", state("u1"))).unwrap();
    run.read(record(1, "u2", state("u2"))).unwrap();
    run.read(record(2, "u1", None)).unwrap(); // u1 was forgotten
    assert!(
        run.read(Fetched {
            offset: 3,
            key: Some(b"u3".to_vec()),
            payload: Some(vec![0xff, 0xff]),
        })
        .unwrap_err()
        .contains("not a UserState")
    );
    let chunk = run.flush();
    let users: Vec<(i64, Option<&str>)> = chunk
        .iter()
        .map(|(offset, entry)| (*offset, entry.as_ref().map(|(u, _)| u.as_str())))
        .collect();
    assert_eq!(
        users,
        [(0, None), (1, Some("u2")), (2, Some("u1")), (3, None)],
        "u1's earlier record is not routed; every offset is still tracked"
    );
    assert_eq!(
        chunk[2].1.as_ref().map(|(_, r)| r),
        Some(&Record::Forgotten)
    );
    assert_eq!(run.routed_to, 4);
    assert_eq!(run.chunk_len(), 0);
}

#[test]
fn a_pass_settles_once_everything_routed_is_finished() {
    let mut run = reading(0, 10);
    run.read(record(4, "u1", state("u1"))).unwrap();
    run.flush();
    assert!(!run.is_settled(5), "still reading");
    run.reach();
    assert!(!run.is_settled(4), "offset 4 is not finished");
    assert_eq!(run.commit_offset(4), 4);
    assert!(run.is_settled(5));
    // Offsets 5..10 held no record (transaction markers): the pass's end is committable.
    assert_eq!(run.commit_offset(5), 10);
}

#[test]
fn converge_passes_run_while_records_were_written_and_at_most_three_times() {
    let mut run = reading(0, 10);
    run.reach();
    assert_eq!(run.after_settled(14), Next::Pass { target: 14 });
    assert_eq!((run.phase, run.pass, run.next), (Phase::Reading, 1, 10));
    run.reach();
    assert_eq!(run.after_settled(15), Next::Pass { target: 15 });
    run.reach();
    assert_eq!(run.after_settled(16), Next::Pass { target: 16 });
    run.reach();
    assert_eq!(
        run.after_settled(17),
        Next::Complete,
        "the third converge pass is the last, even if more was written"
    );
    assert_eq!(run.phase, Phase::Complete);

    let mut quiet = reading(0, 10);
    quiet.reach();
    assert_eq!(
        quiet.after_settled(10),
        Next::Complete,
        "nothing written since"
    );
    assert_eq!(quiet.pass, 0);
}

#[test]
fn held_records_open_the_next_pass() {
    let mut run = reading(0, 10);
    run.reach();
    for offset in [10, 12, 15] {
        run.hold(record(offset, "u1", state("u1")));
    }
    assert_eq!(run.after_settled(13), Next::Pass { target: 13 });
    let now: Vec<i64> = run.take_held().iter().map(|r| r.offset).collect();
    assert_eq!(now, [10, 12]);
    assert_eq!(
        run.classify(16),
        Take::Hold,
        "after a held record: held too"
    );
    assert_eq!(run.classify(15), Take::Ignore, "held already");
}

#[test]
fn the_commit_metadata_says_whether_a_partition_is_complete() {
    for marker in [
        Marker::Complete {
            at_unix_ms: 1_800_000_000_000,
        },
        Marker::Running {
            started_unix_ms: 1_700_000_000_000,
        },
        Marker::None,
    ] {
        assert_eq!(Marker::parse(&marker.metadata()), marker);
    }
    assert_eq!(
        Marker::parse("complete:1800000000000").metadata(),
        "complete:1800000000000"
    );
    for other in ["", "sr1;423@5", "complete:", "complete:soon", "running"] {
        assert_eq!(Marker::parse(other), Marker::None, "{other:?}");
    }
}

/// A user's trait parts (their trait histories, in records of their own) are passed over:
/// tracked, not routed, not errors, and no user is taken for one, a tombstone of one included.
#[test]
fn trait_parts_are_passed_over() {
    let part = model::TraitPart {
        generation: 1,
        history: Some(model::TraitHistory {
            trait_id: 7,
            times_unix_ms: vec![1],
        }),
    };
    let part_record = |offset, payload: Option<Vec<u8>>| Fetched {
        offset,
        key: Some(model::changelog::part_key("u1", 7)),
        payload,
    };
    let records = vec![
        part_record(0, Some(part.encode_to_vec())),
        record(
            1,
            "u1",
            Some(UserState {
                traits_apart: true,
                ..state("u1").unwrap()
            }),
        ),
        part_record(2, None),
    ];
    let mut run = PartitionRun::new(0, 3);
    for r in &records {
        run.index(r.offset, r.key.as_deref());
    }
    assert_eq!(run.index.len(), 1, "only u1's record is indexed");
    run.start_reading();
    for r in records {
        run.read(r).unwrap();
    }
    let chunk = run.flush();
    let routed: Vec<(i64, Option<&str>)> = chunk
        .iter()
        .map(|(offset, entry)| (*offset, entry.as_ref().map(|(u, _)| u.as_str())))
        .collect();
    assert_eq!(routed, [(0, None), (1, Some("u1")), (2, None)]);
}
