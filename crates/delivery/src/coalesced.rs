//! The coalesced-change report: with `--coalesced-report FILE`, each change that a delivered
//! batch replaced by a later status of the same user and partner segment (the contract sends the
//! latest one) is appended to FILE as a JSON line:
//! `{"destination":423,"user":"u1","segment":"14356","status":1,"time_unix_ms":…}`.
//!
//! It exists so a ledger (`relay-ledger`, the chaos runs) can tell a coalesced change from a
//! lost one, change by change. It is a file of its own, not log lines: a ledger needs every
//! line whatever the log format and filter are, and turning it on must not change the
//! process's logging (a DEBUG directive for it raised the filter's level for everything else).
//! Off by default; when off it costs one check per delivered batch.

use std::fs::File;
use std::io::{BufWriter, Write as _};
use std::path::Path;
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::batcher::DestinationBatch;

static REPORT: OnceLock<Report> = OnceLock::new();

#[derive(Debug)]
struct Report {
    file: Mutex<BufWriter<File>>,
    path: String,
}

/// Opens (creates, or appends to: a restarted worker keeps its predecessor's lines) the report
/// file of this process. An empty file says "on, and nothing coalesced yet".
pub fn install(path: &Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    let report = Report {
        file: Mutex::new(BufWriter::new(file)),
        path: path.display().to_string(),
    };
    if REPORT.set(report).is_err() {
        tracing::warn!("The coalesced-change report was already open; the second one is ignored.");
    }
    Ok(())
}

/// Appends a change that was not sent to `destination` because a newer change of the same
/// user and segment came on the other input topic (see `order`): for a ledger, it is
/// replaced like a coalesced one.
pub(crate) fn record_superseded(
    destination: &crate::config::DestinationConfig,
    user_id: &str,
    change: &model::SegmentChange,
) {
    let Some(report) = REPORT.get() else {
        return;
    };
    let Some(segment) = destination.segments.get(&change.segment_id) else {
        return;
    };
    let mut file = report.file.lock().unwrap_or_else(PoisonError::into_inner);
    let active = change.status() == model::SegmentStatus::Active;
    let written = write_line(
        &mut file,
        destination.id,
        user_id,
        segment,
        active,
        change.time_unix_ms,
    )
    .and_then(|()| file.flush());
    if let Err(error) = written {
        tracing::error!(file = %report.path, %error, "Cannot write the coalesced-change report: a ledger reading it will count this change as missing.");
    }
}

/// Appends the coalesced changes of a delivered batch, written through before the batch's
/// offsets are finished: a worker killed before that re-sends (and re-reports) the batch.
pub(crate) fn record(batch: &DestinationBatch) {
    let Some(report) = REPORT.get() else {
        return;
    };
    if batch.coalesced.is_empty() {
        return;
    }
    let destination = batch.destination().id;
    let mut file = report.file.lock().unwrap_or_else(PoisonError::into_inner);
    let mut written = Ok(());
    for change in &batch.coalesced {
        let user = &batch.users[change.user];
        let segment = &batch.segments(user)[change.segment].segment_id;
        let user = batch.latest(user).user_id();
        written = write_line(
            &mut file,
            destination,
            user,
            segment,
            change.active,
            change.time_unix_ms,
        );
        if written.is_err() {
            break;
        }
    }
    if let Err(error) = written.and_then(|()| file.flush()) {
        tracing::error!(file = %report.path, %error, "Cannot write the coalesced-change report: a ledger reading it will count these changes as missing.");
    }
}

/// One line of the report: `{"destination":…,"user":…,"segment":…,"status":0|1,"time_unix_ms":…}`.
fn write_line(
    file: &mut BufWriter<File>,
    destination: u64,
    user: &str,
    segment: &str,
    active: bool,
    time_unix_ms: i64,
) -> std::io::Result<()> {
    let line = serde_json::json!({
        "destination": destination,
        "user": user,
        "segment": segment,
        "status": u8::from(active),
        "time_unix_ms": time_unix_ms,
    });
    serde_json::to_writer(&mut *file, &line).map_err(std::io::Error::from)?;
    file.write_all(b"\n")
}
