//! `delivery replay`: re-sends a destination's dead letters through the normal path (batcher,
//! signing, retry; a batch that fails again is dead-lettered again), filtered by the time they
//! were dead-lettered. The dead-letter topic is read from its start to the end it had when the
//! replay began; nothing is committed, so a replay can be repeated.

use std::sync::Arc;

use anyhow::Context as _;
use model::{DeadLetterRecord, ErrorClass};
use prost::Message as _;
use rdkafka::Message as _;
use telemetry::KafkaSettings;
use tokio::sync::mpsc;

use crate::batcher::RoutedEvent;
use crate::config::DeliveryConfig;
use crate::lane::{Lane, LaneHasher};
use crate::service::{build_shared, require_topics};

/// What a replay did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead-letter records for the destination within the time window.
    pub records: u64,
    /// Updates re-sent.
    pub events: u64,
    pub delivered: u64,
    pub dead_lettered_again: u64,
    /// Records that hold no update to re-send (the update was too large for a record and is
    /// kept by its input position): `topic/partition@offset: why`.
    pub not_resent: Vec<String>,
}

/// Re-sends the dead letters of `destination_id` written within `[since, until]` (ms since
/// the Unix epoch, both optional).
pub async fn replay(
    config: &DeliveryConfig,
    kafka: &KafkaSettings,
    destination_id: u64,
    since_unix_ms: Option<i64>,
    until_unix_ms: Option<i64>,
) -> anyhow::Result<ReplayReport> {
    let index = config
        .destinations
        .iter()
        .position(|d| d.id == destination_id)
        .with_context(|| {
            format!("--destination {destination_id}: no such destination in the config")
        })?;
    let dlq_topic = config.kafka.dlq_topic.clone();
    require_topics(kafka, &[&dlq_topic]).await?;
    let metrics = crate::metrics::Metrics::register(&prometheus::Registry::new())?;
    let shared = build_shared(config, kafka, &metrics)?;
    let sender = shared.senders[index].clone();

    let lanes: Vec<_> = (0..sender.config.max_in_flight)
        .map(|_| {
            let (tx, rx) = mpsc::channel(sender.config.queue_capacity);
            let lane = Lane {
                events: rx,
                sender: sender.clone(),
                dead_letters: shared.dead_letters.clone(),
                watermarks: None,
                input_topic: Arc::from(dlq_topic.as_str()),
                hold_transient: false,
                priority: crate::sender::Priority::Batch,
            };
            (tx, tokio::spawn(lane.run()))
        })
        .collect();

    // Read the dead letters on a blocking thread and hand them to the lanes.
    let (records_tx, mut records_rx) = mpsc::channel::<DeadLetterRecord>(1024);
    let kafka = kafka.clone();
    let reader =
        tokio::task::spawn_blocking(move || read_dead_letters(&kafka, &dlq_topic, &records_tx));

    let mut report = ReplayReport {
        records: 0,
        events: 0,
        delivered: 0,
        dead_lettered_again: 0,
        not_resent: Vec::new(),
    };
    let hasher = LaneHasher::default();
    while let Some(record) = records_rx.recv().await {
        let in_window = since_unix_ms.is_none_or(|t| record.dead_lettered_unix_ms >= t)
            && until_unix_ms.is_none_or(|t| record.dead_lettered_unix_ms <= t);
        if record.destination_id != destination_id
            || !in_window
            || record.error_class() == ErrorClass::Undecodable
        {
            continue;
        }
        report.records += 1;
        if record.updates.is_empty() {
            let position = record.source.as_ref().map_or_else(
                || "no position".to_owned(),
                |s| format!("{}/{}@{}", s.topic, s.partition, s.offset),
            );
            report
                .not_resent
                .push(format!("{position}: {}", record.error));
            continue;
        }
        for update in record.updates {
            let update = Arc::new(update);
            let lane = &lanes[LaneHasher::lane(hasher.user(&update.user_id), lanes.len())].0;
            sender.metrics.queue_depth.inc();
            lane.send(RoutedEvent {
                update,
                source: None,
            })
            .await
            .context("a replay lane stopped")?;
            report.events += 1;
        }
    }
    reader.await.context("the dead-letter reader panicked")??;
    for (tx, task) in lanes {
        drop(tx);
        task.await.context("a replay lane panicked")?;
    }
    report.delivered = sender.metrics.delivered.get();
    report.dead_lettered_again = sender.metrics.dead_lettered.get();
    Ok(report)
}

/// Sends every dead-letter record of `topic`, from its start to its current end, to `out`.
fn read_dead_letters(
    kafka: &KafkaSettings,
    topic: &str,
    out: &mpsc::Sender<DeadLetterRecord>,
) -> anyhow::Result<()> {
    kafka.read_to_end(topic, None, |message| {
        match DeadLetterRecord::decode(message.payload().unwrap_or_default()) {
            Ok(record) => {
                // The receiver only goes away when the replay failed; the error is reported there.
                let _ = out.blocking_send(record);
            }
            Err(error) => {
                tracing::warn!(topic, %error, "Skipping an undecodable dead-letter record.")
            }
        }
    })?;
    Ok(())
}
