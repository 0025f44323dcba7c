//! `delivery render`'s topic input: the messages at a topic position, read and checked as
//! delivery reads them.

use std::time::Duration;

use anyhow::Context as _;
use rdkafka::Message as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use telemetry::KafkaSettings;

use super::SourcedUpdate;

/// Updates read from a topic position, and what was read there that delivery would not send.
#[derive(Debug, Default)]
pub struct TopicRead {
    pub updates: Vec<SourcedUpdate>,
    pub not_sent: Vec<String>,
}

/// Reads the messages at offsets `offset .. offset + count` of `topic`'s `partition`, as
/// delivery reads them (`read_committed`, decoded and checked). Blocks.
pub fn read_topic(
    kafka: &KafkaSettings,
    topic: &str,
    partition: i32,
    offset: i64,
    count: u64,
) -> anyhow::Result<TopicRead> {
    let partitions = kafka
        .require_topics(&[topic])
        .map_err(anyhow::Error::msg)?
        .first()
        .copied()
        .unwrap_or(0);
    if partition < 0 || partition as usize >= partitions {
        anyhow::bail!(
            "--partition {partition}: topic `{topic}` has partitions 0 to {}",
            partitions.saturating_sub(1)
        );
    }
    let probe: BaseConsumer = kafka
        .client_config("segment-relay-render")
        .create()
        .context("cannot create a Kafka client")?;
    let (low, high) = probe
        .fetch_watermarks(topic, partition, Duration::from_secs(10))
        .with_context(|| format!("cannot read the offsets of {topic}/{partition}"))?;
    if low == high {
        anyhow::bail!(
            "--offset {offset}: {topic}/{partition} holds no message now (its next offset is {high})"
        );
    }
    if offset < low || offset >= high {
        anyhow::bail!(
            "--offset {offset}: {topic}/{partition} holds offsets {low} to {} now",
            high - 1
        );
    }
    let end = offset
        .saturating_add(i64::try_from(count).unwrap_or(i64::MAX))
        .min(high);
    let mut read = TopicRead::default();
    kafka
        .read_ranges(
            topic,
            &[(partition, rdkafka::Offset::Offset(offset), end)],
            false,
            Duration::from_secs(30),
            |message| {
                let at = message.offset();
                match crate::consumer::decode(message.payload().unwrap_or_default()) {
                    Ok(update) => read.updates.push(SourcedUpdate {
                        update,
                        position: Some((partition, at)),
                    }),
                    Err(reason) => read.not_sent.push(format!(
                        "{topic}/{partition}@{at}: {reason}: delivery dead-letters it as undecodable"
                    )),
                }
            },
        )
        .with_context(|| format!("cannot read {topic}/{partition} at offsets {offset} to {}", end - 1))?;
    let found = read.updates.len() + read.not_sent.len();
    if (found as i64) < end - offset {
        read.not_sent.push(format!(
            "{} of the offsets {offset} to {} hold no message (transaction markers, or aborted writes)",
            end - offset - found as i64,
            end - 1
        ));
    }
    Ok(read)
}
