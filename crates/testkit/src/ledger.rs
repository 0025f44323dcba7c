//! The exact ledger: every status change the qualifier committed for a destination is
//! accounted for as delivered (partner-sim accepted it), dead-lettered (its record is in the
//! dead-letter topic) or coalesced (delivery's `--coalesced-report` says it replaced that very
//! change by a later one of the same user and segment in a delivered batch). Anything else is missing, and missing
//! always fails. The demo, the chaos runs and the end-to-end benchmark judge a run with it.
//!
//! A change is (user, partner `Segment_ID`, status, `DateTime` in seconds): what both the
//! status topic and the partner's body carry. Everything is counted per change, as multisets:
//! a change accepted twice is one delivery and one duplicate, and a duplicate of one change
//! never stands in for the loss of another.

use std::collections::HashMap;
use std::fmt::Write as _;

mod inputs;
mod qualifier_output;

pub use inputs::{
    accepted, coalesced, coalesced_in_reports, committed, dead_letter_classes, dead_letters,
    violations,
};
pub use qualifier_output::{OutputDiff, QualifierDuplicates, compare_output, qualifier_duplicates};

/// (user, partner segment id, active, `DateTime` seconds).
pub type Change = (String, String, bool, i64);
/// How many times each change was seen.
pub type Changes = HashMap<Change, u64>;

/// What the ledger needs of a destination: its id, partner-sim's path for it, and its
/// segment mapping (our id → the partner's `Segment_ID`).
#[derive(Debug, Clone)]
pub struct Destination {
    pub id: u64,
    pub path: String,
    /// The data partner whose ids it gets: it gets targeted updates for that one only.
    pub data_partner: Option<u64>,
    pub segments: HashMap<u64, String>,
}

/// One change as the qualifier committed it, in topic order per partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Committed {
    pub user: String,
    pub segment: u64,
    pub active: bool,
    pub time_unix_ms: i64,
    /// Set for a targeted update's change (`only_data_partner_id`).
    pub only_data_partner: Option<u64>,
    /// A status the user already had, said again (reason refresh): not a step of their history.
    pub restatement: bool,
}

/// A run's inputs could not be read: the ledger cannot judge it, and says which input.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InputError(pub String);

fn seconds(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(1000)
}

/// The committed changes `destination` must receive.
pub fn expected(changes: &[Committed], destination: &Destination) -> Changes {
    let mut out = Changes::new();
    for change in changes {
        if change
            .only_data_partner
            .is_some_and(|only| destination.data_partner != Some(only))
        {
            continue;
        }
        if let Some(theirs) = destination.segments.get(&change.segment) {
            *out.entry((
                change.user.clone(),
                theirs.clone(),
                change.active,
                seconds(change.time_unix_ms),
            ))
            .or_default() += 1;
        }
    }
    out
}

/// One destination's line of the ledger.
#[derive(Debug, Default, Clone)]
pub struct Line {
    pub id: u64,
    pub path: String,
    /// Changes the qualifier committed for this destination.
    pub committed: u64,
    /// Committed changes the partner accepted (each counted once).
    pub delivered: u64,
    /// Committed changes not accepted but in the dead-letter topic.
    pub dead_lettered: u64,
    /// Committed changes neither accepted nor dead-lettered that delivery reported coalesced.
    pub coalesced: u64,
    /// Copies beyond one of a change, among what the partner accepted and the DLQ holds.
    pub duplicates: u64,
    /// Coalesced reports beyond what the committed changes needed: a change reported coalesced
    /// that was also delivered, dead-lettered or coalesced again — a range read twice
    /// (at-least-once after a crash, rebalance or broker outage) and batched differently.
    pub recoalesced: u64,
    /// Committed changes neither accepted, nor dead-lettered, nor reported coalesced.
    pub missing: u64,
    /// Accepted, dead-lettered or coalesced but never committed (out of nowhere).
    pub unexpected: u64,
    /// partner-sim's per-user order violations at this destination's endpoint.
    pub out_of_order: u64,
    /// partner-sim's contract violations at this destination's endpoint.
    pub violations: u64,
    /// After `delivery replay`: changes the partner accepted during the replay.
    pub replayed: Option<u64>,
    /// After `delivery replay`: committed changes the partner still has not accepted (and
    /// that delivery did not report coalesced).
    pub missing_at_partner: Option<u64>,
    /// A few missing changes, to look up in the logs.
    pub missing_examples: Vec<Change>,
}

impl Line {
    /// Out-of-order changes beyond what re-processing explains. A range read twice may bring
    /// an older change after a newer one (then the newer one again): either a re-sent change (a
    /// duplicate) or one the first reading coalesced away and the second, batching differently,
    /// sends for the first time (a re-coalesced report). In one pass, out of order is a bug.
    pub fn out_of_order_beyond_resends(&self) -> u64 {
        self.out_of_order
            .saturating_sub(self.duplicates + self.recoalesced)
    }

    /// What fails a run: anything missing, unexpected, out of order or against the contract.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        let name = format!("destination {} ({})", self.id, self.path);
        if self.missing > 0 {
            out.push(format!(
                "{name}: {} committed changes were neither delivered, nor dead-lettered, nor reported coalesced, e.g. {:?}",
                self.missing, self.missing_examples
            ));
        }
        if let Some(missing) = self.missing_at_partner.filter(|&m| m > 0) {
            out.push(format!(
                "{name}: after the replay, {missing} committed changes are still not at the partner"
            ));
        }
        if self.unexpected > 0 {
            out.push(format!(
                "{name}: {} changes reached the partner or the DLQ that were never committed",
                self.unexpected
            ));
        }
        if self.out_of_order > 0 {
            out.push(format!(
                "{name}: partner-sim saw {} changes older than one it had accepted for the same user and segment",
                self.out_of_order
            ));
        }
        if self.violations > 0 {
            out.push(format!(
                "{name}: partner-sim saw {} contract violations",
                self.violations
            ));
        }
        out
    }
}

fn count(m: &Changes, k: &Change) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

/// Compares, for one destination, the committed changes with what the partner accepted, the
/// DLQ holds and delivery reported coalesced — change by change.
pub fn line(
    destination: &Destination,
    expected: &Changes,
    accepted: &Changes,
    dlq: &Changes,
    coalesced: &Changes,
) -> Line {
    Line {
        id: destination.id,
        path: destination.path.clone(),
        ..tally(expected, accepted, dlq, coalesced)
    }
}

/// The counts of [`line`], without the destination's name.
fn tally(expected: &Changes, accepted: &Changes, dlq: &Changes, coalesced: &Changes) -> Line {
    let mut line = Line::default();
    for (change, &want) in expected {
        let (a, d, c) = (
            count(accepted, change),
            count(dlq, change),
            count(coalesced, change),
        );
        let delivered = want.min(a);
        let dead = (want - delivered).min(d);
        let merged = (want - delivered - dead).min(c);
        let missing = want - delivered - dead - merged;
        line.committed += want;
        line.delivered += delivered;
        line.dead_lettered += dead;
        line.coalesced += merged;
        line.missing += missing;
        line.duplicates += (a - delivered) + (d - dead);
        line.recoalesced += c - merged;
        if missing > 0 && line.missing_examples.len() < 5 {
            line.missing_examples.push(change.clone());
        }
    }
    for seen in [accepted, dlq, coalesced] {
        for (change, &n) in seen {
            if !expected.contains_key(change) {
                line.unexpected += n;
            }
        }
    }
    line
}

/// Every destination's line of a run: committed against accepted (an endpoint partner-sim
/// does not serve is an error), dead-lettered and coalesced, with partner-sim's order and
/// contract violations.
pub fn lines(
    destinations: &[Destination],
    committed: &[Committed],
    accepted: &HashMap<String, Changes>,
    dlq: &HashMap<u64, Changes>,
    coalesced: &HashMap<u64, Changes>,
    violations: &HashMap<String, (u64, u64)>,
) -> Result<Vec<Line>, InputError> {
    let empty = Changes::new();
    destinations
        .iter()
        .map(|d| {
            let missing_endpoint = |document: &str| {
                InputError(format!(
                    "partner-sim's {document} has no endpoint {} (destination {})",
                    d.path, d.id
                ))
            };
            let at = accepted
                .get(&d.path)
                .ok_or_else(|| missing_endpoint("/accepted"))?;
            let mut line = self::line(
                d,
                &expected(committed, d),
                at,
                dlq.get(&d.id).unwrap_or(&empty),
                coalesced.get(&d.id).unwrap_or(&empty),
            );
            (line.out_of_order, line.violations) = *violations
                .get(&d.path)
                .ok_or_else(|| missing_endpoint("/stats"))?;
            Ok(line)
        })
        .collect()
}

/// Adds the effect of `delivery replay`: `before` and `after` are the partner's accepted
/// changes around it.
pub fn add_replay(
    line: &mut Line,
    expected: &Changes,
    before: &Changes,
    after: &Changes,
    coalesced: &Changes,
) {
    line.replayed = Some(
        after
            .iter()
            .map(|(k, &n)| n.saturating_sub(count(before, k)))
            .sum(),
    );
    line.missing_at_partner = Some(tally(expected, after, &Changes::new(), coalesced).missing);
}

/// The table of a ledger's lines, one per destination.
pub fn render(lines: &[Line]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "  {:<14} {:>9} {:>9} {:>9} {:>13} {:>7} {:>10} {:>10} {:>12} {:>10} {:>8} {:>18} {:>12}",
        "destination",
        "committed",
        "delivered",
        "coalesced",
        "dead-lettered",
        "missing",
        "duplicates",
        "unexpected",
        "out-of-order",
        "violations",
        "replayed",
        "missing at partner",
        "re-coalesced",
    );
    let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
    for l in lines {
        let _ = writeln!(
            out,
            "  {:<14} {:>9} {:>9} {:>9} {:>13} {:>7} {:>10} {:>10} {:>12} {:>10} {:>8} {:>18} {:>12}",
            format!("{} {}", l.id, l.path),
            l.committed,
            l.delivered,
            l.coalesced,
            l.dead_lettered,
            l.missing,
            l.duplicates,
            l.unexpected,
            l.out_of_order,
            l.violations,
            opt(l.replayed),
            opt(l.missing_at_partner),
            l.recoalesced,
        );
        if !l.missing_examples.is_empty() {
            let _ = writeln!(out, "    missing, e.g.: {:?}", l.missing_examples);
        }
    }
    out
}

#[cfg(test)]
mod tests;
