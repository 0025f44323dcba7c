//! The ledger's inputs, read and checked: the committed changes of the status topic, the
//! dead letters, partner-sim's `/accepted` and `/stats`, and delivery's coalesced-change reports.

use std::collections::{BTreeMap, HashMap};

use model::{DeadLetterRecord, SegmentStatus, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::Message as _;
use telemetry::KafkaSettings;

use super::{Changes, Committed, Destination, InputError, seconds};

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
