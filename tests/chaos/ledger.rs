//! The yardstick of every fault run: per destination, the status changes the qualifier
//! committed (read back `read_committed` from the status topic) against what partner-sim
//! accepted plus what sits in the dead-letter topic.
//!
//! A change is (user, partner `Segment_ID`, status, `DateTime` in seconds) — what both the
//! status topic and the partner's body carry. Counts are multisets: a change the partner
//! accepted twice is one delivery and one duplicate. Duplicates are reported, never an
//! error; a missing change always is.
//!
//! The contract (`spec/outbound-contract.md` §2) sends, within one batch, only the latest
//! status per (user, segment): a change followed in the same batch by a later one for the
//! same user and segment is *superseded*, not lost. The partner cannot see batches, so the
//! ledger counts a committed change that is neither accepted nor dead-lettered as superseded
//! only when a later change of the same user and segment was accepted or dead-lettered;
//! otherwise — in particular for the last change of every user and segment — it is missing.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use model::{DeadLetterRecord, SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use telemetry::KafkaSettings;

use crate::system::{DESTINATIONS, Destination};

/// (user, partner segment id, active, `DateTime` seconds).
pub type Change = (String, String, bool, i64);
pub type Changes = HashMap<Change, u64>;

/// One change as the qualifier committed it, in topic order per partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Committed {
    pub user: String,
    pub segment: u64,
    pub active: bool,
    pub time_unix_ms: i64,
}

fn read_topic(settings: &KafkaSettings, topic: &str) -> Vec<Vec<u8>> {
    let mut payloads = Vec::new();
    settings
        .read_to_end(topic, None, |message| {
            payloads.push(message.payload().unwrap_or_default().to_vec());
        })
        .unwrap_or_else(|e| panic!("cannot read {topic} back: {e}"));
    payloads
}

/// Every change in `topic` (`read_committed`), in order per partition.
pub async fn committed(settings: &KafkaSettings, topic: &str) -> Vec<Committed> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        read_topic(&settings, &topic)
            .iter()
            .flat_map(|bytes| {
                let update = SegmentStatusUpdate::decode(bytes.as_slice())
                    .unwrap_or_else(|e| panic!("undecodable update in {topic}: {e}"));
                update.changes.into_iter().map(move |c| Committed {
                    user: update.user_id.clone(),
                    segment: c.segment_id,
                    active: c.status == SegmentStatus::Active as i32,
                    time_unix_ms: c.time_unix_ms,
                })
            })
            .collect()
    })
    .await
    .unwrap()
}

/// What the qualifier's output shows of exactly-once: the same change committed twice, and
/// a status repeated for a user and segment (1 then 1 again, or 0 then 0) — a re-processed
/// input would show as either.
#[derive(Debug, Default)]
pub struct QualifierDuplicates {
    pub identical: u64,
    pub repeated_status: u64,
}

pub fn qualifier_duplicates(changes: &[Committed]) -> QualifierDuplicates {
    let mut seen = HashMap::new();
    let mut last: HashMap<(&str, u64), bool> = HashMap::new();
    let mut out = QualifierDuplicates::default();
    for change in changes {
        if seen.insert(change, ()).is_some() {
            out.identical += 1;
        }
        if last.insert((&change.user, change.segment), change.active) == Some(change.active) {
            out.repeated_status += 1;
        }
    }
    out
}

fn seconds(unix_ms: i64) -> i64 {
    unix_ms.div_euclid(1000)
}

/// The committed changes `destination` must receive: per (user, partner segment), the
/// statuses and `DateTime`s in commit order.
pub type Expected = HashMap<(String, String), Vec<(bool, i64)>>;

pub fn expected(changes: &[Committed], destination: &Destination) -> Expected {
    let mut out = Expected::new();
    for change in changes {
        if let Some(theirs) = destination.partner_segment(change.segment) {
            out.entry((change.user.clone(), theirs.to_owned()))
                .or_default()
                .push((change.active, seconds(change.time_unix_ms)));
        }
    }
    out
}

/// How the committed changes of one destination were received.
#[derive(Debug, Default)]
struct Reception {
    /// Reached the partner or the DLQ (each committed change counted once).
    reached: u64,
    superseded: u64,
    missing: u64,
    missing_examples: Vec<Change>,
}

/// Walks each (user, segment) history from its end: a change found in `received` is
/// reached; one not found is superseded if a later one was reached, else missing.
fn receive(expected: &Expected, received: &dyn Fn(&Change) -> u64) -> Reception {
    let mut out = Reception::default();
    for ((user, segment), history) in expected {
        let mut used: HashMap<Change, u64> = HashMap::new();
        let mut later_reached = false;
        for &(active, time) in history.iter().rev() {
            let change = (user.clone(), segment.clone(), active, time);
            let seen = used.entry(change.clone()).or_default();
            if *seen < received(&change) {
                *seen += 1;
                out.reached += 1;
                later_reached = true;
            } else if later_reached {
                out.superseded += 1;
            } else {
                out.missing += 1;
                if out.missing_examples.len() < 5 {
                    out.missing_examples.push(change);
                }
            }
        }
    }
    out
}

fn multiset(expected: &Expected) -> Changes {
    let mut out = Changes::new();
    for ((user, segment), history) in expected {
        for &(active, time) in history {
            *out.entry((user.clone(), segment.clone(), active, time))
                .or_default() += 1;
        }
    }
    out
}

/// Dead-lettered changes per destination id.
pub async fn dead_letters(settings: &KafkaSettings, topic: &str) -> HashMap<u64, Changes> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut out: HashMap<u64, Changes> = HashMap::new();
        for bytes in read_topic(&settings, &topic) {
            let record = DeadLetterRecord::decode(bytes.as_slice())
                .unwrap_or_else(|e| panic!("undecodable dead letter in {topic}: {e}"));
            let destination = DESTINATIONS
                .iter()
                .find(|d| d.id == record.destination_id)
                .unwrap_or_else(|| {
                    panic!(
                        "dead letter for unknown destination {}",
                        record.destination_id
                    )
                });
            let changes = out.entry(destination.id).or_default();
            for update in record.updates {
                for change in update.changes {
                    if let Some(theirs) = destination.partner_segment(change.segment_id) {
                        *changes
                            .entry((
                                update.user_id.clone(),
                                theirs.to_owned(),
                                change.status == SegmentStatus::Active as i32,
                                seconds(change.time_unix_ms),
                            ))
                            .or_default() += 1;
                    }
                }
            }
        }
        out
    })
    .await
    .unwrap()
}

/// Dead-letter records per destination id and error class name (e.g. `circuit_open`).
pub async fn dead_letter_classes(
    settings: &KafkaSettings,
    topic: &str,
) -> BTreeMap<(u64, String), u64> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut out = BTreeMap::new();
        for bytes in read_topic(&settings, &topic) {
            let record = DeadLetterRecord::decode(bytes.as_slice()).unwrap();
            let class = model::ErrorClass::try_from(record.error_class)
                .map(|c| {
                    c.as_str_name()
                        .trim_start_matches("ERROR_CLASS_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|_| record.error_class.to_string());
            *out.entry((record.destination_id, class)).or_default() += 1;
        }
        out
    })
    .await
    .unwrap()
}

/// What partner-sim's `/accepted` says, per endpoint path.
pub fn accepted(document: &serde_json::Value) -> HashMap<String, Changes> {
    let mut out = HashMap::new();
    let endpoints = document["endpoints"]
        .as_object()
        .unwrap_or_else(|| panic!("partner-sim /accepted has no endpoints: {document}"));
    for (path, endpoint) in endpoints {
        let mut changes = Changes::new();
        for entry in endpoint["changes"].as_array().unwrap() {
            let field = |i: usize| &entry[i];
            changes.insert(
                (
                    field(0).as_str().unwrap().to_owned(),
                    field(1).as_str().unwrap().to_owned(),
                    field(2).as_u64().unwrap() == 1,
                    field(3).as_i64().unwrap(),
                ),
                field(4).as_u64().unwrap(),
            );
        }
        out.insert(path.clone(), changes);
    }
    out
}

/// One destination's line of the ledger.
#[derive(Debug, Default, Clone)]
pub struct Line {
    pub id: u64,
    pub path: &'static str,
    /// Changes the qualifier committed for this destination.
    pub committed: u64,
    /// Committed changes the partner accepted (each counted once).
    pub delivered: u64,
    /// Changes in the dead-letter topic for this destination (copies included).
    pub dead_lettered: u64,
    /// Committed changes replaced, within their batch, by a later status of the same user and
    /// segment (the contract's "latest status wins").
    pub superseded: u64,
    /// Copies beyond one of a change, among what the partner accepted and the DLQ holds.
    pub duplicates: u64,
    /// Committed changes neither accepted, nor dead-lettered, nor superseded.
    pub missing: u64,
    /// Accepted by the partner or dead-lettered but never committed (out of nowhere).
    pub unexpected: u64,
    /// After `delivery replay`: changes the partner accepted during the replay.
    pub replayed: Option<u64>,
    /// After `delivery replay`: committed changes the partner still has not accepted (and
    /// that no later accepted change supersedes).
    pub missing_at_partner: Option<u64>,
    /// A few missing changes, to look up in the logs.
    pub missing_examples: Vec<Change>,
}

fn count(m: &Changes, k: &Change) -> u64 {
    m.get(k).copied().unwrap_or(0)
}

/// Compares, for one destination, committed (`expected`) against accepted plus dead-lettered.
pub fn line(
    destination: &Destination,
    expected: &Expected,
    accepted: &Changes,
    dlq: &Changes,
) -> Line {
    let reception = receive(expected, &|k| count(accepted, k) + count(dlq, k));
    let delivered = receive(expected, &|k| count(accepted, k));
    let committed = multiset(expected);
    let mut line = Line {
        id: destination.id,
        path: destination.path,
        committed: committed.values().sum(),
        delivered: delivered.reached,
        dead_lettered: dlq.values().sum(),
        superseded: reception.superseded,
        missing: reception.missing,
        missing_examples: reception.missing_examples,
        ..Line::default()
    };
    let mut keys: HashSet<&Change> = accepted.keys().collect();
    keys.extend(dlq.keys());
    for change in keys {
        let received = count(accepted, change) + count(dlq, change);
        match committed.get(change) {
            Some(&want) => line.duplicates += received.saturating_sub(want),
            None => line.unexpected += received,
        }
    }
    line
}

/// Adds the effect of `delivery replay`: `before` and `after` are the partner's accepted
/// changes around the replay.
pub fn add_replay(line: &mut Line, expected: &Expected, before: &Changes, after: &Changes) {
    line.replayed = Some(
        after
            .iter()
            .map(|(k, &n)| n.saturating_sub(count(before, k)))
            .sum(),
    );
    line.missing_at_partner = Some(receive(expected, &|k| count(after, k)).missing);
}

/// The whole ledger of a scenario.
#[derive(Debug, Default)]
pub struct Ledger {
    pub scenario: String,
    pub changes: usize,
    pub qualifier: QualifierDuplicates,
    pub lines: Vec<Line>,
    /// Further figures of the scenario (load, outage, RSS, …), printed under the table.
    pub notes: Vec<String>,
}

impl Ledger {
    pub fn missing(&self) -> u64 {
        self.lines
            .iter()
            .map(|l| l.missing + l.missing_at_partner.unwrap_or(0))
            .sum()
    }

    pub fn line(&self, id: u64) -> &Line {
        self.lines.iter().find(|l| l.id == id).unwrap()
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "ledger {}: the qualifier committed {} status changes; exactly-once: {} identical re-commits, {} repeated statuses",
            self.scenario, self.changes, self.qualifier.identical, self.qualifier.repeated_status
        );
        let _ = writeln!(
            out,
            "  {:<12} {:>9} {:>9} {:>13} {:>10} {:>10} {:>7} {:>8} {:>16} {:>10}",
            "destination",
            "committed",
            "delivered",
            "dead-lettered",
            "superseded",
            "duplicates",
            "missing",
            "replayed",
            "missing at partner",
            "unexpected"
        );
        for l in &self.lines {
            let opt = |v: Option<u64>| v.map_or_else(|| "-".to_owned(), |v| v.to_string());
            let _ = writeln!(
                out,
                "  {:<12} {:>9} {:>9} {:>13} {:>10} {:>10} {:>7} {:>8} {:>18} {:>10}",
                format!("{} {}", l.id, l.path),
                l.committed,
                l.delivered,
                l.dead_lettered,
                l.superseded,
                l.duplicates,
                l.missing,
                opt(l.replayed),
                opt(l.missing_at_partner),
                l.unexpected
            );
            if !l.missing_examples.is_empty() {
                let _ = writeln!(out, "    missing, e.g.: {:?}", l.missing_examples);
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        out
    }
}

/// Reads everything back and builds the ledger (without replay).
pub async fn build(
    scenario: &str,
    settings: &KafkaSettings,
    status_topic: &str,
    dlq_topic: &str,
    accepted_document: &serde_json::Value,
) -> (Ledger, Vec<Committed>) {
    let changes = committed(settings, status_topic).await;
    let dlq = dead_letters(settings, dlq_topic).await;
    let accepted = accepted(accepted_document);
    let empty = Changes::new();
    let lines = DESTINATIONS
        .iter()
        .map(|d| {
            line(
                d,
                &expected(&changes, d),
                accepted.get(d.path).unwrap_or(&empty),
                dlq.get(&d.id).unwrap_or(&empty),
            )
        })
        .collect();
    let ledger = Ledger {
        scenario: scenario.to_owned(),
        changes: changes.len(),
        qualifier: qualifier_duplicates(&changes),
        lines,
        notes: Vec::new(),
    };
    (ledger, changes)
}

/// Known answers of the arithmetic above; run before any scenario, so a wrong yardstick
/// fails the run instead of passing it.
pub fn self_check() {
    let d = DESTINATIONS[0];
    let change = |user: &str, active, time| (user.to_owned(), "a-1".to_owned(), active, time);
    let history = |user: &str, h: &[(bool, i64)]| ((user.to_owned(), "a-1".to_owned()), h.to_vec());
    let expected: Expected = [
        // u1: accepted twice. u2: dead-lettered. u3: its 1 superseded by its 0 (same batch).
        // u4: its last change lost, the one before delivered. u5: the same change committed
        // twice, received once: the later one reached, the earlier one counts as superseded.
        history("u1", &[(true, 100)]),
        history("u2", &[(true, 100)]),
        history("u3", &[(true, 100), (false, 101)]),
        history("u4", &[(true, 100), (false, 107)]),
        history("u5", &[(true, 100), (true, 100)]),
    ]
    .into_iter()
    .collect();
    let accepted: Changes = [
        (change("u1", true, 100), 2),
        (change("u3", false, 101), 1),
        (change("u4", true, 100), 1),
        (change("u5", true, 100), 1),
        (change("u9", true, 100), 1),
    ]
    .into_iter()
    .collect();
    let dlq: Changes = [(change("u2", true, 100), 1)].into_iter().collect();
    let mut l = line(&d, &expected, &accepted, &dlq);
    assert_eq!(
        (
            l.committed,
            l.delivered,
            l.dead_lettered,
            l.superseded,
            l.duplicates,
            l.missing,
            l.unexpected
        ),
        (8, 4, 1, 2, 1, 1, 1),
        "ledger arithmetic: {l:?}"
    );
    let mut after = accepted.clone();
    after.insert(change("u2", true, 100), 1);
    add_replay(&mut l, &expected, &accepted, &after);
    assert_eq!((l.replayed, l.missing_at_partner), (Some(1), Some(1)));

    let committed = |user: &str, active, time_unix_ms| Committed {
        user: user.to_owned(),
        segment: 1,
        active,
        time_unix_ms,
    };
    let q = qualifier_duplicates(&[
        committed("u1", true, 1),
        committed("u1", false, 2),
        committed("u1", false, 3),
        committed("u2", true, 1),
        committed("u2", true, 1),
    ]);
    assert_eq!((q.identical, q.repeated_status), (1, 2));
}
