//! `delivery replay`: re-sends a destination's dead letters through the normal path (batcher,
//! signing, retry; a batch that fails again is dead-lettered again), filtered by the time they
//! were dead-lettered. The dead-letter topic is read from its start to the end it had when the
//! replay began; nothing is committed, so a replay can be repeated.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use model::{DeadLetterRecord, ErrorClass};
use prost::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Message, Offset, TopicPartitionList};
use telemetry::KafkaSettings;
use tokio::sync::mpsc;

use crate::batcher::RoutedEvent;
use crate::config::DeliveryConfig;
use crate::lane::{Lane, lane_of};
use crate::service::{build_shared, require_topics};

/// What a replay did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayReport {
    /// Dead-letter records for the destination within the time window.
    pub records: u64,
    /// Updates re-sent.
    pub events: u64,
    pub delivered: u64,
    pub dead_lettered_again: u64,
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
    };
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
        for update in record.updates {
            let update = Arc::new(update);
            let lane = &lanes[lane_of(&update.user_id, lanes.len())].0;
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

/// Sends every record of `topic`, from the start to its current end, to `out`.
fn read_dead_letters(
    kafka: &KafkaSettings,
    topic: &str,
    out: &mpsc::Sender<DeadLetterRecord>,
) -> anyhow::Result<()> {
    let consumer: BaseConsumer = kafka
        .client_config("delivery-replay")
        .set("group.id", "delivery-replay")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut ends = HashMap::new();
    let mut assignment = TopicPartitionList::new();
    for &partition in &partitions {
        let (low, high) = consumer.fetch_watermarks(topic, partition, Duration::from_secs(10))?;
        if high > low {
            ends.insert(partition, high);
            assignment.add_partition_offset(topic, partition, Offset::Beginning)?;
        }
    }
    consumer.assign(&assignment)?;
    while !ends.is_empty() {
        let Some(message) = consumer.poll(Duration::from_secs(10)) else {
            anyhow::bail!(
                "no dead letters arrived for 10 s while {} partitions were unread",
                ends.len()
            );
        };
        let message = message?;
        let partition = message.partition();
        match DeadLetterRecord::decode(message.payload().unwrap_or_default()) {
            Ok(record) => {
                if out.blocking_send(record).is_err() {
                    return Ok(());
                }
            }
            Err(error) => {
                tracing::warn!(topic, partition, offset = message.offset(), %error, "Skipping an undecodable dead-letter record.")
            }
        }
        if ends
            .get(&partition)
            .is_some_and(|&end| message.offset() + 1 >= end)
        {
            ends.remove(&partition);
        }
    }
    Ok(())
}
