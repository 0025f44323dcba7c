//! The yardstick of every fault run: `testkit::ledger`, the exact ledger, over one scenario's
//! topics, partner-sim's record and the delivery processes' coalesced-change reports. Per destination, every change
//! the qualifier committed (read back `read_committed`) must be accepted by partner-sim,
//! dead-lettered, or reported coalesced (`--coalesced-report`) by the process that coalesced it; anything else is
//! missing and fails the scenario. Duplicates are counted apart and never offset a loss.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use telemetry::KafkaSettings;
use testkit::ledger::{self as exact, Destination as LedgerDestination};
pub use testkit::ledger::{Changes, Committed, Line, QualifierDuplicates};

use crate::system::Destination;

fn ledger_destination(d: &Destination) -> LedgerDestination {
    LedgerDestination {
        id: d.id,
        path: d.path.to_owned(),
        data_partner: None,
        segments: d
            .segments
            .iter()
            .map(|(ours, theirs)| (*ours, theirs.clone()))
            .collect(),
    }
}

/// Every change in `topic` (`read_committed`), in order per partition.
pub async fn committed(settings: &KafkaSettings, topic: &str) -> Vec<Committed> {
    let (settings, topic) = (settings.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || exact::committed(&settings, &topic))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("{e}"))
}

/// What partner-sim's `/accepted` says, per endpoint path.
pub fn accepted(document: &serde_json::Value) -> HashMap<String, Changes> {
    exact::accepted(document).unwrap_or_else(|e| panic!("{e}"))
}

/// The coalesced changes every delivery process of the scenario reported, per destination.
pub fn coalesced(reports: &[PathBuf]) -> HashMap<u64, Changes> {
    exact::coalesced_in_reports(reports).unwrap_or_else(|e| panic!("{e}"))
}

/// What partner-sim saw of one scenario: its `/accepted` and `/stats` documents.
#[derive(Debug)]
pub struct PartnerRecord {
    pub accepted: serde_json::Value,
    pub stats: serde_json::Value,
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
    /// Committed changes not accounted for, before and after a replay.
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
        out.push_str(&exact::render(&self.lines));
        for note in &self.notes {
            let _ = writeln!(out, "  {note}");
        }
        out
    }
}

/// Reads everything back and builds the ledger of `destinations` (without replay).
pub async fn build(
    scenario: &str,
    destinations: &[Destination],
    settings: &KafkaSettings,
    status_topic: &str,
    dlq_topic: &str,
    partner: &PartnerRecord,
    coalesced_reports: &[PathBuf],
) -> (Ledger, Vec<Committed>) {
    let destinations: Vec<LedgerDestination> =
        destinations.iter().map(ledger_destination).collect();
    let changes = committed(settings, status_topic).await;
    let dlq = {
        let destinations = destinations.clone();
        let (settings, topic) = (settings.clone(), dlq_topic.to_owned());
        tokio::task::spawn_blocking(move || exact::dead_letters(&settings, &topic, &destinations))
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{e}"))
    };
    let violations = exact::violations(&partner.stats).unwrap_or_else(|e| panic!("{e}"));
    let lines = exact::lines(
        &destinations,
        &changes,
        &accepted(&partner.accepted),
        &dlq,
        &coalesced(coalesced_reports),
        &violations,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let ledger = Ledger {
        scenario: scenario.to_owned(),
        changes: changes.len(),
        qualifier: exact::qualifier_duplicates(&changes),
        lines,
        notes: Vec::new(),
    };
    (ledger, changes)
}
