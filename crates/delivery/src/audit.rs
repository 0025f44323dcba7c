//! `delivery audit`: how many updates each destination should have received (the input topics
//! read to their end and routed as delivery routes them) and how many were dead-lettered for
//! it. With the delivered counts from `/metrics`, an operator (or `make demo`) can check that
//! every routed change was delivered or dead-lettered.

use std::collections::BTreeMap;

use model::DeadLetterRecord;
use prost::Message as _;
use rdkafka::Message as _;
use telemetry::KafkaSettings;

use crate::config::DeliveryConfig;
use crate::router::Router;
use crate::update::Decoder;

/// Counts per destination id.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditCounts {
    /// Updates on the input topics that route to the destination.
    pub routed: u64,
    /// Updates in the destination's dead-letter records.
    pub dead_lettered: u64,
}

/// Counts, per destination id, routed and dead-lettered updates.
pub fn audit(
    config: &DeliveryConfig,
    kafka: &KafkaSettings,
) -> anyhow::Result<BTreeMap<u64, AuditCounts>> {
    let mut router = Router::new(&config.destinations);
    let mut counts: BTreeMap<u64, AuditCounts> = config
        .destinations
        .iter()
        .map(|d| (d.id, AuditCounts::default()))
        .collect();
    let mut targets = Vec::new();
    let mut decoder = Decoder::default();
    let mut topics = vec![config.kafka.topic.as_str()];
    topics.extend(config.kafka.batch_topic.as_deref());
    for topic in topics {
        kafka.read_to_end(topic, None, |message| {
            let payload = message.payload().unwrap_or_default();
            if let Ok(update) = decoder.decode(payload) {
                router.route(&update, &mut targets);
                for &d in &targets {
                    if let Some(c) = counts.get_mut(&config.destinations[d].id) {
                        c.routed += 1;
                    }
                }
            }
        })?;
    }
    kafka.read_to_end(&config.kafka.dlq_topic, None, |message| {
        if let Ok(record) = DeadLetterRecord::decode(message.payload().unwrap_or_default())
            && let Some(c) = counts.get_mut(&record.destination_id)
        {
            c.dead_lettered += record.updates.len() as u64;
        }
    })?;
    Ok(counts)
}
