//! What the qualifier's committed output shows by itself: repeated statuses and re-committed
//! changes (exactly-once), and how it differs from a reference run's over the same input.

use std::collections::{BTreeMap, HashMap};

use super::Committed;

/// What the qualifier's output shows of exactly-once, per user and segment in commit order:
/// a status repeated (1 then 1 again, or 0 then 0), and a change committed again after the
/// history had moved on to another time — how a re-processed input shows (1@t, 0@t2, 1@t).
/// Changes of one instant may legitimately flip back (1@t, 0@t, 1@t: several events of the
/// user stamped with the same millisecond), so only a return to an earlier instant counts.
#[derive(Debug, Default)]
pub struct QualifierDuplicates {
    pub identical: u64,
    pub repeated_status: u64,
    /// A few of them, to look up.
    pub examples: Vec<Committed>,
}

pub fn qualifier_duplicates(changes: &[Committed]) -> QualifierDuplicates {
    /// One (user, segment)'s history so far: its last status, the instant it is at, the
    /// changes of that instant, and those of every earlier instant.
    #[derive(Default)]
    struct History {
        last: Option<bool>,
        instant: Option<i64>,
        current: Vec<bool>,
        earlier: std::collections::HashSet<(bool, i64)>,
    }
    let mut histories: HashMap<(&str, u64), History> = HashMap::new();
    let mut out = QualifierDuplicates::default();
    // A targeted update re-states (or ends) memberships for some partner ids only, and a
    // refresh says again what the user is in: neither is a step of the user's history.
    for change in changes
        .iter()
        .filter(|c| c.only_data_partner.is_none() && !c.restatement)
    {
        let h = histories.entry((&change.user, change.segment)).or_default();
        let mut bad = false;
        if h.last == Some(change.active) {
            out.repeated_status += 1;
            bad = true;
        }
        h.last = Some(change.active);
        if h.instant != Some(change.time_unix_ms) {
            if let Some(instant) = h.instant {
                h.earlier.extend(h.current.drain(..).map(|a| (a, instant)));
            }
            h.instant = Some(change.time_unix_ms);
        }
        if h.earlier.contains(&(change.active, change.time_unix_ms)) {
            out.identical += 1;
            bad = true;
        }
        h.current.push(change.active);
        if bad && out.examples.len() < 5 {
            out.examples.push(change.clone());
        }
    }
    out
}

/// How a run's committed output differs from a reference run's over the same input: the
/// chaos runs on three brokers start, after the faults, a second qualifier that reads the same
/// input uninterrupted, and require equal output. Compared per user, in commit order (a user's
/// changes all live on one partition): each change is (segment, status, time in ms).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OutputDiff {
    /// Users with at least one change in either output.
    pub users: usize,
    /// Changes in the run's output.
    pub changes: usize,
    /// Changes of the reference the run lacks (counted as multisets, per user).
    pub missing: usize,
    /// Changes of the run the reference lacks: duplicates and inventions.
    pub extra: usize,
    /// Users with the same changes as the reference in another order.
    pub reordered: usize,
    /// A few differing users, each with both histories, to look up.
    pub examples: Vec<String>,
}

impl OutputDiff {
    pub fn is_equal(&self) -> bool {
        self.missing == 0 && self.extra == 0 && self.reordered == 0
    }
}

pub fn compare_output(run: &[Committed], reference: &[Committed]) -> OutputDiff {
    type History = Vec<(u64, bool, i64)>;
    fn by_user(changes: &[Committed]) -> BTreeMap<&str, History> {
        let mut out: BTreeMap<&str, History> = BTreeMap::new();
        for c in changes {
            out.entry(&c.user)
                .or_default()
                .push((c.segment, c.active, c.time_unix_ms));
        }
        out
    }
    let (ours, theirs) = (by_user(run), by_user(reference));
    let empty = History::new();
    let mut diff = OutputDiff {
        changes: run.len(),
        ..OutputDiff::default()
    };
    let users: std::collections::BTreeSet<&str> =
        ours.keys().chain(theirs.keys()).copied().collect();
    diff.users = users.len();
    for user in users {
        let (a, b) = (
            ours.get(user).unwrap_or(&empty),
            theirs.get(user).unwrap_or(&empty),
        );
        if a == b {
            continue;
        }
        let mut counts: HashMap<&(u64, bool, i64), i64> = HashMap::new();
        for change in a {
            *counts.entry(change).or_default() += 1;
        }
        for change in b {
            *counts.entry(change).or_default() -= 1;
        }
        let extra: i64 = counts.values().filter(|&&n| n > 0).sum();
        let missing: i64 = -counts.values().filter(|&&n| n < 0).sum::<i64>();
        diff.extra += usize::try_from(extra).unwrap_or(0);
        diff.missing += usize::try_from(missing).unwrap_or(0);
        if extra == 0 && missing == 0 {
            diff.reordered += 1;
        }
        if diff.examples.len() < 5 {
            diff.examples.push(format!(
                "{user}: run {a:?}, reference {b:?} (segment, active, ms)"
            ));
        }
    }
    diff
}
