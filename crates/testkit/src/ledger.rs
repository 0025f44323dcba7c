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

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use model::{DeadLetterRecord, SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use telemetry::KafkaSettings;

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

fn read_topic(settings: &KafkaSettings, topic: &str) -> Result<Vec<Vec<u8>>, InputError> {
    let mut payloads = Vec::new();
    settings
        .read_to_end(topic, None, |message| {
            payloads.push(message.payload().unwrap_or_default().to_vec());
        })
        .map_err(|e| InputError(format!("cannot read topic {topic}: {e}")))?;
    Ok(payloads)
}

/// Every change in the status topic `topic` (`read_committed`), in order per partition.
pub fn committed(settings: &KafkaSettings, topic: &str) -> Result<Vec<Committed>, InputError> {
    let mut out = Vec::new();
    for bytes in read_topic(settings, topic)? {
        let update = SegmentStatusUpdate::decode(bytes.as_slice())
            .map_err(|e| InputError(format!("an undecodable update in {topic}: {e}")))?;
        out.extend(update.changes.iter().map(|c| Committed {
            user: update.user_id.clone(),
            segment: c.segment_id,
            active: c.status == SegmentStatus::Active as i32,
            time_unix_ms: c.time_unix_ms,
            only_data_partner: update.only_data_partner_id,
            restatement: c.reason() == model::ChangeReason::Refresh,
        }));
    }
    Ok(out)
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

/// Dead-lettered changes per destination id (records of other destinations are an error:
/// something wrote dead letters the ledger cannot place).
pub fn dead_letters(
    settings: &KafkaSettings,
    topic: &str,
    destinations: &[Destination],
) -> Result<HashMap<u64, Changes>, InputError> {
    let mut out: HashMap<u64, Changes> = HashMap::new();
    for bytes in read_topic(settings, topic)? {
        let record = DeadLetterRecord::decode(bytes.as_slice())
            .map_err(|e| InputError(format!("an undecodable dead letter in {topic}: {e}")))?;
        let destination = destinations
            .iter()
            .find(|d| d.id == record.destination_id)
            .ok_or_else(|| {
                InputError(format!(
                    "a dead letter in {topic} for destination {}, which is not configured",
                    record.destination_id
                ))
            })?;
        let changes = out.entry(destination.id).or_default();
        for update in record.updates {
            for change in update.changes {
                if let Some(theirs) = destination.segments.get(&change.segment_id) {
                    *changes
                        .entry((
                            update.user_id.clone(),
                            theirs.clone(),
                            change.status == SegmentStatus::Active as i32,
                            seconds(change.time_unix_ms),
                        ))
                        .or_default() += 1;
                }
            }
        }
    }
    Ok(out)
}

/// Dead-letter records per destination id and error class name (e.g. `circuit_open`).
pub fn dead_letter_classes(
    settings: &KafkaSettings,
    topic: &str,
) -> Result<BTreeMap<(u64, String), u64>, InputError> {
    let mut out = BTreeMap::new();
    for bytes in read_topic(settings, topic)? {
        let record = DeadLetterRecord::decode(bytes.as_slice())
            .map_err(|e| InputError(format!("an undecodable dead letter in {topic}: {e}")))?;
        let class = model::ErrorClass::try_from(record.error_class).map_or_else(
            |_| record.error_class.to_string(),
            |c| {
                c.as_str_name()
                    .trim_start_matches("ERROR_CLASS_")
                    .to_ascii_lowercase()
            },
        );
        *out.entry((record.destination_id, class)).or_default() += 1;
    }
    Ok(out)
}

/// What partner-sim's `/accepted` document says, per endpoint path.
pub fn accepted(document: &serde_json::Value) -> Result<HashMap<String, Changes>, InputError> {
    let bad = |what: &str| InputError(format!("partner-sim /accepted: {what}: {document:.200}"));
    let endpoints = document["endpoints"]
        .as_object()
        .ok_or_else(|| bad("no `endpoints` object"))?;
    let mut out = HashMap::new();
    for (path, endpoint) in endpoints {
        let mut changes = Changes::new();
        let entries = endpoint["changes"]
            .as_array()
            .ok_or_else(|| bad("an endpoint without `changes`"))?;
        for entry in entries {
            let change = (|| {
                Some((
                    (
                        entry[0].as_str()?.to_owned(),
                        entry[1].as_str()?.to_owned(),
                        entry[2].as_u64()? == 1,
                        entry[3].as_i64()?,
                    ),
                    entry[4].as_u64()?,
                ))
            })()
            .ok_or_else(|| bad("a change that is not [user, segment, status, time, count]"))?;
            changes.insert(change.0, change.1);
        }
        out.insert(path.clone(), changes);
    }
    Ok(out)
}

/// Per-endpoint order and contract violations from partner-sim's `/stats`.
pub fn violations(document: &serde_json::Value) -> Result<HashMap<String, (u64, u64)>, InputError> {
    let endpoints = document["endpoints"].as_object().ok_or_else(|| {
        InputError(format!(
            "partner-sim /stats: no `endpoints` object: {document:.200}"
        ))
    })?;
    let mut out = HashMap::new();
    for (path, stats) in endpoints {
        let order = stats["order_violations"].as_u64();
        let contract = stats["violations"].as_object().map(|v| {
            v.values()
                .filter_map(serde_json::Value::as_u64)
                .sum::<u64>()
        });
        match (order, contract) {
            (Some(order), Some(contract)) => out.insert(path.clone(), (order, contract)),
            _ => {
                return Err(InputError(format!(
                    "partner-sim /stats: endpoint {path} lacks order_violations or violations"
                )));
            }
        };
    }
    Ok(out)
}

/// The coalesced changes in one delivery process's report (`delivery --coalesced-report
/// FILE`: a JSON line per change), per destination id. A line that is not such a change is an
/// error, never skipped.
pub fn coalesced(report: &str, name: &str) -> Result<HashMap<u64, Changes>, InputError> {
    let mut out: HashMap<u64, Changes> = HashMap::new();
    for (number, line) in report.lines().enumerate() {
        let change = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|c| {
                Some((
                    c["destination"].as_u64()?,
                    (
                        c["user"].as_str()?.to_owned(),
                        c["segment"].as_str()?.to_owned(),
                        c["status"].as_u64()? == 1,
                        seconds(c["time_unix_ms"].as_i64()?),
                    ),
                ))
            })
            .ok_or_else(|| {
                InputError(format!(
                    "{name}:{}: not a coalesced change (destination, user, segment, status, time_unix_ms): {line:.200}",
                    number + 1
                ))
            })?;
        *out.entry(change.0)
            .or_default()
            .entry(change.1)
            .or_default() += 1;
    }
    Ok(out)
}

/// [`coalesced`] over the reports of every delivery process of a run, added up. A report that
/// does not exist is an error: the process did not write one, and "nothing coalesced" would be
/// a guess.
pub fn coalesced_in_reports(
    reports: &[std::path::PathBuf],
) -> Result<HashMap<u64, Changes>, InputError> {
    if reports.is_empty() {
        return Err(InputError(
            "no coalesced-change report to read (delivery --coalesced-report FILE)".to_owned(),
        ));
    }
    let mut out: HashMap<u64, Changes> = HashMap::new();
    for path in reports {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| {
            InputError(format!(
                "cannot read the coalesced-change report {name} (was delivery run with --coalesced-report {name}?): {e}"
            ))
        })?;
        for (id, changes) in coalesced(&text, &name)? {
            let all = out.entry(id).or_default();
            for (change, n) in changes {
                *all.entry(change).or_default() += n;
            }
        }
    }
    Ok(out)
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
