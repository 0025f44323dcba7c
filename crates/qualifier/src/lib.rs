//! segment-relay qualifier: evaluates segment rules over users' trait events and publishes
//! every change of segment status, exactly once within Kafka.

pub mod config;
pub mod evaluate;
pub mod events;
pub mod ingest;
pub mod metrics;
pub mod processor;
pub mod rules;
pub mod service;
pub mod show;
pub mod store;
pub mod topics;

/// Every Kafka producer the qualifier builds writes with `acks=all` and idempotence, whatever
/// its own tuning; a file that creates a producer must be listed here to be checked.
#[cfg(test)]
mod producer_settings {
    use telemetry::KafkaSettings;

    use crate::processor::{Topology, transactional_producer_config};

    /// The files that create a producer (they use rdkafka's producer module, or make an
    /// `AckedProducer`), each with the config its producer is built from.
    fn producers(kafka: &KafkaSettings) -> Vec<(&'static str, rdkafka::ClientConfig)> {
        let topology = Topology {
            group_id: "qualifier".to_owned(),
            events_topic: "trait-events".to_owned(),
            status_topic: "segment-status".to_owned(),
            status_batch_topic: "segment-status-batch".to_owned(),
            changelog_topic: "qualifier-changelog".to_owned(),
            changelog_trait_parts: false,
            warm_state_bytes: 0,
            dlq_topic: "segment-status-dlq".to_owned(),
            delivery_log_topic: None,
            transactional_id: "qualifier-0".to_owned(),
        };
        vec![
            (
                "ingest.rs",
                crate::ingest::EventWriter::client_config(kafka),
            ),
            (
                "processor/mod.rs",
                transactional_producer_config(kafka, &topology),
            ),
            // These use (and recovery replaces) the transactional producer of `mod.rs`.
            (
                "processor/commit.rs",
                transactional_producer_config(kafka, &topology),
            ),
            (
                "processor/outbox.rs",
                transactional_producer_config(kafka, &topology),
            ),
            (
                "processor/recovery.rs",
                transactional_producer_config(kafka, &topology),
            ),
            (
                "processor/transaction.rs",
                transactional_producer_config(kafka, &topology),
            ),
        ]
    }

    /// A busy transaction coordinator (the last commit's markers still being written) is asked
    /// again after 10 ms, not librdkafka's default 100 ms, which the transaction's events
    /// would all wait for.
    #[test]
    fn the_transactional_producer_asks_a_busy_coordinator_again_soon() {
        let kafka = KafkaSettings::from_lookup(|_| None).unwrap();
        for (file, config) in producers(&kafka).into_iter().skip(1) {
            assert_eq!(config.get("retry.backoff.ms"), Some("10"), "{file}");
        }
    }

    /// Busy users' changelog records are KBs, written in every transaction they are in.
    #[test]
    fn the_transactional_producer_compresses_what_it_writes() {
        let kafka = KafkaSettings::from_lookup(|_| None).unwrap();
        for (file, config) in producers(&kafka).into_iter().skip(1) {
            assert_eq!(config.get("compression.type"), Some("lz4"), "{file}");
        }
    }

    #[test]
    fn every_producer_writes_with_acks_all_and_idempotence() {
        let kafka = KafkaSettings::from_lookup(|_| None).unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        testkit::kafka::assert_producers_safe(&src, &producers(&kafka));
    }
}
