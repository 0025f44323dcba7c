//! `delivery replay`: re-sends a destination's dead letters through the normal path (batcher,
//! signing, retry; a batch that fails again is dead-lettered again), filtered by the time they
//! were dead-lettered. The dead-letter topic is read from its start to the end it had when the
//! replay began; nothing is committed, so a replay can be repeated.
//!
//! A change older than one of the same user and segment is not re-sent: the input topics are
//! read from a minute before the oldest dead letter's update to their end (the newer change
//! was delivered, is on its way, or is dead-lettered too and re-sent instead), and the dead
//! letters themselves are compared. Each change skipped is named in the report. Reading the
//! input costs time in proportion to what it received since the oldest dead letter.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use model::{DeadLetterRecord, ErrorClass, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::{Message as _, Offset};
use telemetry::KafkaSettings;
use tokio::sync::mpsc;

use crate::batcher::RoutedEvent;
use crate::config::{DeliveryConfig, DestinationConfig};
use crate::lane::{Lane, lane_of};
use crate::service::{build_shared, require_topics};
use crate::update::Update;

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
    /// Changes not re-sent because a newer change of the same user and segment exists (in the
    /// input topics, or among the dead letters): one line each, naming where.
    pub superseded: Vec<String>,
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
    let mut topics = vec![dlq_topic.as_str()];
    topics.extend(config.kafka.delivery_log_topic.as_deref());
    require_topics(kafka, &topics).await?;
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
                outcomes: None,
                heartbeat: None,
            };
            (tx, tokio::spawn(lane.run()))
        })
        .collect();

    // Read the destination's dead letters in the window on a blocking thread.
    let (records_tx, mut records_rx) = mpsc::channel::<DeadLetterRecord>(1024);
    let reader = {
        let kafka = kafka.clone();
        tokio::task::spawn_blocking(move || read_dead_letters(&kafka, &dlq_topic, &records_tx))
    };
    let mut report = ReplayReport {
        records: 0,
        events: 0,
        delivered: 0,
        dead_lettered_again: 0,
        not_resent: Vec::new(),
        superseded: Vec::new(),
    };
    let mut updates = Vec::new();
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
        updates.extend(record.updates);
    }
    reader.await.context("the dead-letter reader panicked")??;

    // A change older than one of the same user and segment — in the input topics (delivered,
    // on its way, or dead-lettered too) or among these dead letters — is not sent again.
    let mut topics = vec![config.kafka.topic.clone()];
    topics.extend(config.kafka.batch_topic.clone());
    let newest = {
        let (kafka, wanted) = (kafka.clone(), Newest::wanted(&updates, &sender.config));
        tokio::task::spawn_blocking(move || wanted.read_inputs(&kafka, &topics))
            .await
            .context("the input reader panicked")??
    };
    for update in updates {
        let Some(update) = newest.without_superseded(update, &mut report.superseded) else {
            continue;
        };
        let update = Update::from(update);
        let lane = &lanes[lane_of(&update, lanes.len())].0;
        sender.metrics.queue_depth.inc();
        lane.send(RoutedEvent {
            held: Default::default(),
            update,
            source: None,
        })
        .await
        .context("a replay lane stopped")?;
        report.events += 1;
    }
    for (tx, task) in lanes {
        drop(tx);
        task.await.context("a replay lane panicked")?;
    }
    report.delivered = sender.metrics.delivered.get();
    report.dead_lettered_again = sender.metrics.dead_lettered.get();
    Ok(report)
}

/// How far back, before the oldest dead letter's update was produced, the input topics are
/// read for newer changes (the qualifier hosts' clocks).
const CLOCK_SKEW_MS: i64 = 60_000;

/// The newest sequence known per (user, segment) of the dead letters to re-send, and where
/// it was seen.
#[derive(Debug, Default)]
struct Newest {
    by_pair: HashMap<(String, u64), (u64, String)>,
    /// The oldest update among the dead letters (ms since the Unix epoch).
    since_unix_ms: i64,
}

impl Newest {
    /// The pairs of the dead letters (with a sequence) that the destination maps, with the
    /// newest of them among the dead letters themselves.
    fn wanted(updates: &[SegmentStatusUpdate], destination: &DestinationConfig) -> Self {
        let mut newest = Self {
            since_unix_ms: i64::MAX,
            ..Self::default()
        };
        for update in updates.iter().filter(|u| u.sequence > 0) {
            newest.since_unix_ms = newest.since_unix_ms.min(update.produced_unix_ms);
            for change in update
                .changes
                .iter()
                .filter(|c| destination.segments.contains_key(&c.segment_id))
            {
                newest.note(&update.user_id, change.segment_id, update.sequence, || {
                    "a later dead letter".to_owned()
                });
            }
        }
        newest
    }

    fn note(&mut self, user: &str, segment: u64, sequence: u64, place: impl FnOnce() -> String) {
        let entry = self
            .by_pair
            .entry((user.to_owned(), segment))
            .or_insert((0, String::new()));
        if sequence > entry.0 {
            *entry = (sequence, place());
        }
    }

    /// Reads the input topics from a minute before the oldest dead letter's update to their
    /// current end, noting the newer changes of the wanted pairs. Blocks.
    fn read_inputs(mut self, kafka: &KafkaSettings, topics: &[String]) -> anyhow::Result<Self> {
        if self.by_pair.is_empty() {
            return Ok(self);
        }
        let from = Offset::Offset((self.since_unix_ms - CLOCK_SKEW_MS).max(0));
        for topic in topics {
            let ranges: Vec<_> = kafka
                .partition_ends(topic)
                .with_context(|| format!("cannot read the ends of input topic {topic}"))?
                .into_iter()
                .map(|(partition, end)| (partition, from, end))
                .collect();
            kafka
                .read_ranges(
                    topic,
                    &ranges,
                    true,
                    Duration::from_secs(1_800),
                    |message| {
                        let Ok(update) =
                            crate::consumer::decode(message.payload().unwrap_or_default())
                        else {
                            return;
                        };
                        // A targeted update supersedes nothing (see `only_data_partner_id`).
                        if update.only_data_partner_id.is_some() {
                            return;
                        }
                        for change in &update.changes {
                            if self
                                .by_pair
                                .contains_key(&(update.user_id.clone(), change.segment_id))
                            {
                                let (partition, offset) = (message.partition(), message.offset());
                                self.note(
                                    &update.user_id,
                                    change.segment_id,
                                    update.sequence,
                                    || format!("{topic}/{partition}@{offset}"),
                                );
                            }
                        }
                    },
                )
                .with_context(|| format!("cannot read input topic {topic} for newer changes"))?;
        }
        Ok(self)
    }

    /// `update` without its changes that a newer one supersedes (each noted in `superseded`);
    /// `None` when none is left.
    fn without_superseded(
        &self,
        mut update: SegmentStatusUpdate,
        superseded: &mut Vec<String>,
    ) -> Option<SegmentStatusUpdate> {
        if update.sequence > 0 {
            let user = update.user_id.clone();
            update.changes.retain(|change| {
                let Some((newest, place)) = self.by_pair.get(&(user.clone(), change.segment_id)) else {
                    return true;
                };
                if *newest <= update.sequence {
                    return true;
                }
                superseded.push(format!(
                    "user {user} segment {} status {}: a newer change of the same user and segment is at {place}",
                    change.segment_id,
                    u8::from(change.status() == model::SegmentStatus::Active),
                ));
                false
            });
        }
        (!update.changes.is_empty()).then_some(update)
    }
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
