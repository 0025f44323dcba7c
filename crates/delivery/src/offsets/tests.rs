//! The offset watermark and the watermark table: what may be committed, detached
//! destinations and their positions in the commit metadata, by example and by property.

use proptest::prelude::*;

use super::*;

#[test]
fn commits_only_the_finished_prefix() {
    let mut w = OffsetWatermark::default();
    w.track(10, 2);
    w.track(11, 1);
    w.track(12, 0);
    assert_eq!(w.committable(), None);
    w.finish(11);
    assert_eq!(w.committable(), None, "10 is not finished");
    w.finish(10);
    assert_eq!(w.committable(), None, "10 needs two destinations");
    w.finish(10);
    assert_eq!(w.committable(), Some(13));
    w.track(13, 0);
    assert_eq!(
        w.committable(),
        Some(14),
        "an unrouted event finishes at once"
    );
    w.finish(99);
    assert_eq!(w.committable(), Some(14));
}

fn shared(assignment: PartitionAssignment, offset: i64) -> EventSource {
    EventSource {
        assignment,
        offset,
        catch_up: false,
        written_unix_ms: None,
    }
}

fn own(assignment: PartitionAssignment, offset: i64) -> EventSource {
    EventSource {
        assignment,
        offset,
        catch_up: true,
        written_unix_ms: None,
    }
}

/// Destinations 0 and 1, ids 100 and 101.
fn table() -> WatermarkTable {
    WatermarkTable::new(vec![100, 101])
}

fn commits(table: &mut WatermarkTable) -> Vec<(i32, i64, String)> {
    let mut all: Vec<_> = table
        .committable()
        .into_iter()
        .map(|c| (c.partition, c.offset, c.metadata))
        .collect();
    all.sort();
    all
}

#[test]
fn late_completions_of_a_revoked_assignment_are_ignored() {
    let mut table = table();
    table.assign(3, Some(100), &[]);
    let old = table.track(3, 100, &mut vec![0]).unwrap();
    assert_eq!(table.revoke(3).map(|c| c.offset), Some(100));
    assert_eq!(table.track(3, 101, &mut vec![0]), None, "not owned");
    table.assign(3, Some(100), &[]);
    let new = table.track(3, 100, &mut vec![0]).unwrap();
    assert!(!table.is_current(old) && table.is_current(new));
    table.finish(shared(old, 100), 0);
    assert_eq!(commits(&mut table), [(3, 100, "sr1".to_owned())]);
    table.finish(shared(new, 100), 0);
    assert_eq!(commits(&mut table), [(3, 101, "sr1".to_owned())]);
}

#[test]
fn commits_only_what_every_attached_destination_finished() {
    let mut table = table();
    let a = table.assign(0, None, &[]);
    assert!(commits(&mut table).is_empty(), "nothing known to commit");
    table.track(0, 10, &mut vec![0, 1]);
    table.track(0, 11, &mut vec![1]);
    table.track(0, 12, &mut vec![]);
    assert_eq!(commits(&mut table), [(0, 10, "sr1".to_owned())]);
    table.finish(shared(a, 10), 0);
    table.finish(shared(a, 11), 1);
    assert_eq!(
        commits(&mut table),
        [(0, 10, "sr1".to_owned())],
        "10 still with 1"
    );
    table.finish(shared(a, 10), 1);
    assert_eq!(commits(&mut table), [(0, 13, "sr1".to_owned())]);
    assert_eq!(table.in_progress(), 0);
}

/// The life of a destination that falls behind: detached at the offset its lane had no
/// room for, its position (what it still holds included) in the commit's metadata while
/// the shared consumer commits past it, read by its own reader, attached again once it
/// reaches the shared consumer and finished what it read.
#[test]
fn a_detached_destination_keeps_its_position_and_attaches_again() {
    let mut table = table();
    let a = table.assign(0, Some(9), &[]);
    // 9 went to both; 1 holds it in its (now full) lane. 10: 1's lane is full.
    assert_eq!(table.track(0, 9, &mut vec![0, 1]), Some(a));
    let mut targets = vec![0, 1];
    table.track(0, 10, &mut targets);
    assert!(table.detach(a, 10, 1), "newly detached");
    assert!(!table.detach(a, 10, 1), "only once");
    assert_eq!(table.detached_partitions(1), [(a, 10)]);
    // The shared consumer skips 1 from now on.
    let mut targets = vec![0, 1];
    table.track(0, 11, &mut targets);
    assert_eq!(targets, [0], "1 is read by its own reader");
    for offset in 9..12 {
        table.finish(shared(a, offset), 0);
    }
    assert_eq!(
        commits(&mut table),
        [(0, 12, "sr1;101@9".to_owned())],
        "the shared consumer commits past 1's backlog, which the metadata keeps from the event its lane still holds"
    );
    assert_eq!(table.backlog(1), 3);
    table.finish(shared(a, 9), 1);
    assert_eq!(commits(&mut table), [(0, 12, "sr1;101@10".to_owned())]);
    // 1's reader reads 10 (mapped) and finishes it.
    assert_eq!(table.catch_up(a, 1, 10, None, true), CatchUp::Deliver(a));
    assert_eq!(
        table.catch_up(a, 1, 10, None, true),
        CatchUp::Skip,
        "read before"
    );
    table.finish(own(a, 10), 1);
    assert_eq!(commits(&mut table), [(0, 12, "sr1;101@11".to_owned())]);
    table.note_read(a, 1, Some(5_000));
    assert_eq!(
        table.backlog_age_ms(1, 7_500),
        2_500,
        "what it holds was written at 5 s"
    );
    assert_eq!(table.backlog_age_ms(0, 7_500), 0, "0 keeps up");
    // 11 is the last the shared consumer routed: 1 takes it from its reader, and is attached
    // again from 12 on.
    assert_eq!(
        table.catch_up(a, 1, 11, Some(5_000), true),
        CatchUp::Last(a)
    );
    assert!(table.detached_partitions(1).is_empty());
    assert_eq!(
        table.catch_up(a, 1, 12, None, true),
        CatchUp::Stop,
        "a read that was under way"
    );
    let mut targets = vec![0, 1];
    table.track(0, 12, &mut targets);
    assert_eq!(targets, [0, 1], "the shared consumer serves 1 again");
    // Until 11 is finished, 1's position stays in the metadata.
    table.finish(shared(a, 12), 0);
    table.finish(shared(a, 12), 1);
    assert_eq!(commits(&mut table), [(0, 13, "sr1;101@11".to_owned())]);
    table.finish(own(a, 11), 1);
    assert_eq!(commits(&mut table), [(0, 13, "sr1".to_owned())]);
    assert_eq!(table.backlog(1), 0);
    assert!(table.release_reader(1));
}

/// A reader that reads past the last offset the shared consumer routed (the offsets between
/// were a transaction's marker) attaches at what it read, and leaves it to the shared
/// consumer.
#[test]
fn a_reader_ahead_of_the_shared_consumer_attaches_at_what_it_read() {
    let mut table = table();
    let a = table.assign(0, Some(9), &[]);
    table.track(0, 9, &mut vec![0, 1]);
    assert!(table.detach(a, 9, 1));
    assert_eq!(table.catch_up(a, 1, 11, None, true), CatchUp::Attached);
    assert!(table.detached_partitions(1).is_empty());
    let mut targets = vec![0, 1];
    table.track(0, 11, &mut targets);
    assert_eq!(targets, [0, 1], "the shared consumer serves 1 from 11 on");
}

#[test]
fn a_restored_position_detaches_the_destination_and_a_reader_at_the_end_attaches() {
    let mut table = table();
    let positions = parse_positions("sr1;101@5;100@9;999@1").unwrap();
    let a = table.assign(0, Some(8), &positions);
    assert_eq!(table.detached_partitions(1), [(a, 5)]);
    assert!(
        table.detached_partitions(0).is_empty(),
        "a position at or past the commit is not behind"
    );
    assert_eq!(
        commits(&mut table),
        [(0, 8, "sr1;101@5".to_owned())],
        "a destination no longer configured (999) is dropped"
    );
    assert_eq!(table.unread_destinations(), [1]);
    assert!(table.claim_reader(1));
    assert!(!table.claim_reader(1), "one reader per destination");
    assert!(table.unread_destinations().is_empty());
    assert!(!table.caught_up(a, 1, 7), "7 < 8: behind");
    assert!(!table.release_reader(1), "still detached");
    assert!(table.caught_up(a, 1, 8));
    assert!(table.release_reader(1));
    assert_eq!(commits(&mut table), [(0, 8, "sr1".to_owned())]);
}

#[test]
fn unmapped_events_read_by_a_reader_do_not_hold_its_position() {
    let mut table = table();
    let a = table.assign(0, Some(0), &[]);
    table.track(0, 0, &mut vec![0]);
    table.detach(a, 0, 0);
    for offset in 1..5 {
        table.track(0, offset, &mut vec![]);
    }
    assert_eq!(commits(&mut table), [(0, 5, "sr1;100@0".to_owned())]);
    assert_eq!(table.catch_up(a, 0, 0, None, true), CatchUp::Deliver(a));
    for offset in 1..4 {
        assert_eq!(
            table.catch_up(a, 0, offset, None, false),
            CatchUp::Deliver(a)
        );
    }
    assert_eq!(
        table.catch_up(a, 0, 4, None, false),
        CatchUp::Last(a),
        "4 is the last the shared consumer routed"
    );
    assert_eq!(commits(&mut table), [(0, 5, "sr1;100@0".to_owned())]);
    table.finish(own(a, 0), 0);
    assert_eq!(
        commits(&mut table),
        [(0, 5, "sr1".to_owned())],
        "read to the end and finished: no longer behind"
    );
}

#[test]
fn metadata_past_kafkas_limit_holds_the_commit_back_instead_of_dropping_a_position() {
    let ids: Vec<u64> = (0..1_000).map(|i| 1_000_000 + i).collect();
    let mut table = WatermarkTable::new(ids);
    let a = table.assign(0, Some(0), &[]);
    for offset in 0..1_000 {
        table.track(0, offset, &mut vec![offset as usize]);
        table.detach(a, offset, offset as usize);
    }
    let commit = table.committable().pop().unwrap();
    assert!(commit.metadata.len() <= MAX_COMMIT_METADATA);
    let kept = parse_positions(&commit.metadata).unwrap();
    assert!(kept.len() < 1_000);
    assert_eq!(
        commit.offset,
        kept.len() as i64,
        "every destination left out is at or past the committed offset"
    );
    assert!(kept.iter().all(|&(_, p)| p < commit.offset));
}

#[test]
fn positions_in_metadata_round_trip_and_foreign_metadata_holds_none() {
    assert_eq!(parse_positions("sr1;7@3;8@4").unwrap(), [(7, 3), (8, 4)]);
    assert_eq!(parse_positions("sr1").unwrap(), []);
    assert_eq!(parse_positions("").unwrap(), []);
    assert_eq!(parse_positions("written by another tool").unwrap(), []);
    assert!(parse_positions("sr1;7@").is_err());
    assert!(parse_positions("sr1;x@3").is_err());
}

proptest! {
    /// Whatever order destinations finish in, the watermark is exactly one past the longest
    /// prefix of fully finished events, never more.
    #[test]
    fn watermark_is_the_finished_prefix(
        needs in proptest::collection::vec(0_u32..4, 1..60),
        order in any::<proptest::sample::Index>(),
        steps in 0_usize..200,
    ) {
        let mut w = OffsetWatermark::default();
        let mut remaining = needs.clone();
        let mut outstanding: Vec<usize> = Vec::new();
        for (i, &n) in needs.iter().enumerate() {
            w.track(i as i64, n);
            outstanding.extend(std::iter::repeat_n(i, n as usize));
        }
        let mut pick = order.index(usize::MAX);
        for _ in 0..steps.min(outstanding.len()) {
            pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let event = outstanding.swap_remove(pick % outstanding.len());
            remaining[event] -= 1;
            w.finish(event as i64);
            let prefix = remaining.iter().take_while(|&&r| r == 0).count();
            let expected = (prefix > 0).then_some(prefix as i64);
            prop_assert_eq!(w.committable(), expected);
        }
    }
}

/// An attempt holds its batch's partitions while on the wire: their revocation waits for it
/// (`consumer::rebalance`). An attempt after a revocation is not made, and the batch claimed
/// again sends nothing of the revoked partition.
#[test]
fn an_attempt_holds_its_partitions_and_none_is_made_after_a_revocation() {
    use crate::batcher::DestinationBatch;
    use crate::batcher::tests::{change, destination, update};

    let watermarks = Watermarks::new(vec![100]);
    let (a, b) = {
        let mut table = watermarks.lock();
        (table.assign(1, Some(0), &[]), table.assign(2, Some(0), &[]))
    };
    let sending = |partitions: &[i32]| watermarks.lock().is_sending(partitions);
    let mut batch = DestinationBatch::new(destination(""));
    for (i, (assignment, offset)) in [(a, 0), (b, 0), (a, 1)].into_iter().enumerate() {
        let mut event = update(&format!("u{i}"), &[], &[], vec![change(14356, true, 0)]);
        event.source = Some(shared(assignment, offset));
        batch.add(event).unwrap();
    }

    let mut out = Sending::new(Some(&watermarks));
    out.claim(&mut batch);
    assert_eq!(batch.events.len(), 3);
    assert!(!sending(&[1, 2]), "claimed, no attempt yet");
    assert!(out.hold());
    assert!(sending(&[1]) && sending(&[2]) && !sending(&[3]));

    // Partition 2 is revoked while the attempt is on the wire: it counts until it ends.
    watermarks.lock().revoke(2);
    assert!(sending(&[2]));
    out.let_go();
    assert!(!sending(&[1, 2]));

    // The retry is not made, and holds nothing.
    assert!(!out.hold());
    assert!(out.refused());
    assert!(!sending(&[1]));
    out.claim(&mut batch);
    assert_eq!(
        batch.events.len(),
        2,
        "the revoked partition's event is dropped"
    );
    assert!(!out.refused());
    assert!(out.hold());
    assert!(sending(&[1]) && !sending(&[2]));
    drop(out);
    assert!(!sending(&[1]), "dropped: nothing held");
}

/// A partition given up while an attempt holding its events is on the wire is committed once
/// that attempt is answered and its events finished (the lane lets go only then, under the
/// same lock): its new owner does not send them again. What was queued behind them, never
/// attempted, is not committed, and nothing finished after the partition was given up counts.
#[test]
fn a_revoked_partition_commits_what_its_attempt_on_the_wire_delivered() {
    use crate::batcher::DestinationBatch;
    use crate::batcher::tests::{change, destination, update};

    let watermarks = Watermarks::new(vec![100]);
    let a = watermarks.lock().assign(1, Some(10), &[]);
    for offset in 10..16 {
        watermarks.lock().track(1, offset, &mut vec![0]);
    }
    // 10..13 go out in an attempt; 13..16 wait behind it.
    let mut batch = DestinationBatch::new(destination(""));
    for offset in 10..13 {
        let mut event = update(
            &format!("u{offset}"),
            &[],
            &[],
            vec![change(14356, true, 0)],
        );
        event.source = Some(shared(a, offset));
        batch.add(event).unwrap();
    }
    let mut out = Sending::new(Some(&watermarks));
    out.claim(&mut batch);
    assert!(out.hold());

    assert!(watermarks.lock().start_revoking(1));
    {
        let mut table = watermarks.lock();
        assert!(!table.is_current(a), "given up: no further attempt");
        assert!(
            table.track(1, 16, &mut vec![0]).is_none(),
            "nor read further"
        );
        assert!(
            table.committable().is_empty(),
            "committed by the revocation"
        );
        assert!(table.is_sending(&[1]));
    }
    // Answered: the lane finishes the batch's events and lets go, under one lock.
    out.finish(batch.events.iter().filter_map(|e| e.source), 0);
    let mut table = watermarks.lock();
    assert!(!table.is_sending(&[1]));
    let position = table.finish_revoking(1).map(|p| p.offset);
    assert_eq!(
        position,
        Some(13),
        "the answered attempt's events are committed"
    );

    table.finish_all((13..16).map(|o| shared(a, o)), 0);
    assert_eq!(table.finish_revoking(1), None, "given up for good");
    assert_eq!(table.owned(), 0);
}

proptest! {
    /// A lane's batch finished at once ([`WatermarkTable::finish_all`]: a lookup per run of
    /// one partition, each offset searched for from the one before it) leaves the table as
    /// finishing its events one by one does — also with offsets out of order, unknown ones
    /// and an assignment that is gone, over batches that leave events unfinished between.
    #[test]
    fn a_batch_finished_at_once_leaves_the_table_as_one_by_one(
        targets in proptest::collection::vec(0_u8..4, 1..160),
        taken in proptest::collection::vec(any::<bool>(), 160),
        cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
        swaps in proptest::collection::vec(any::<proptest::sample::Index>(), 0..4),
        strangers in proptest::collection::vec((0_usize..2, 0_i64..200), 0..3),
    ) {
        let (mut one_by_one, mut at_once) = (table(), table());
        let mut assignments = Vec::new();
        for t in [&mut one_by_one, &mut at_once] {
            assignments = vec![t.assign(0, Some(0), &[]), t.assign(1, Some(0), &[])];
        }
        // Offset i/2 of partition i%2, for destination 0, 1, both or neither.
        let mut handed = Vec::new();
        for (i, &to) in targets.iter().enumerate() {
            let (partition, offset) = (i % 2, (i / 2) as i64);
            let to: Vec<usize> = [0, 1].into_iter().filter(|d| to & (1 << d) != 0).collect();
            for t in [&mut one_by_one, &mut at_once] {
                t.track(partition as i32, offset, &mut to.clone());
            }
            if to.contains(&0) && taken[i] {
                handed.push(shared(assignments[partition], offset));
            }
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c.index(handed.len() + 1)).collect();
        cuts.push(handed.len());
        cuts.sort_unstable();
        let gone = PartitionAssignment { partition: 0, generation: 99 };
        let mut start = 0;
        for end in cuts {
            let mut batch = handed[start..end].to_vec();
            start = end;
            for swap in &swaps {
                if batch.len() > 1 {
                    let i = swap.index(batch.len() - 1);
                    batch.swap(i, i + 1);
                }
            }
            for &(at, offset) in &strangers {
                let at = at.min(batch.len());
                batch.insert(at, shared(assignments[at % 2], 1_000 + offset));
                batch.insert(at, shared(gone, offset));
            }
            for &source in &batch {
                one_by_one.finish(source, 0);
            }
            at_once.finish_all(batch, 0);
            for partition in [0, 1] {
                prop_assert_eq!(
                    &one_by_one.partitions[&partition].pending,
                    &at_once.partitions[&partition].pending
                );
            }
            prop_assert_eq!(commits(&mut one_by_one), commits(&mut at_once));
        }
    }
}

#[test]
fn a_batch_of_one_partition_finished_at_once_drops_what_is_finished() {
    let mut table = table();
    let a = table.assign(0, Some(0), &[]);
    for offset in 0..40 {
        table.track(0, offset, &mut vec![0]);
    }
    // Every third one, then the ones between, as two lanes would finish them.
    table.finish_all((0..40).step_by(3).map(|o| shared(a, o)), 0);
    assert_eq!(commits(&mut table), [(0, 1, "sr1".to_owned())]);
    table.finish_all((0..40).filter(|o| o % 3 != 0).map(|o| shared(a, o)), 0);
    assert_eq!(commits(&mut table), [(0, 40, "sr1".to_owned())]);
    assert!(table.partitions[&0].pending[0].is_empty());
}
