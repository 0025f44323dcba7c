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
    use rdkafka::producer::BaseProducer;
    use telemetry::KafkaSettings;

    use crate::processor::{Topology, transactional_producer_config};

    /// The files that create a producer (they use rdkafka's producer module), each with the
    /// config its producer is built from.
    fn producers(kafka: &KafkaSettings) -> Vec<(&'static str, rdkafka::ClientConfig)> {
        let topology = Topology {
            group_id: "qualifier".to_owned(),
            events_topic: "trait-events".to_owned(),
            status_topic: "segment-status".to_owned(),
            status_batch_topic: "segment-status-batch".to_owned(),
            changelog_topic: "qualifier-changelog".to_owned(),
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
                "processor.rs",
                transactional_producer_config(kafka, &topology),
            ),
        ]
    }

    #[test]
    fn every_producer_is_acks_all_and_idempotent() {
        let kafka = KafkaSettings::from_lookup(|_| None).unwrap();
        for (file, config) in producers(&kafka) {
            assert_eq!(config.get("acks"), Some("all"), "{file}: acks");
            assert_eq!(
                config.get("enable.idempotence"),
                Some("true"),
                "{file}: enable.idempotence"
            );
            // librdkafka refuses settings that contradict idempotence (e.g. acks=1,
            // max.in.flight above 5) when the producer is created, which needs no broker.
            if let Err(e) = config.create::<BaseProducer>() {
                panic!("{file}: librdkafka refuses the producer settings: {e}");
            }
        }
    }

    #[test]
    fn every_file_creating_a_producer_is_checked() {
        let kafka = KafkaSettings::from_lookup(|_| None).unwrap();
        let checked: Vec<&str> = producers(&kafka).into_iter().map(|(f, _)| f).collect();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut creating = rs_files(&src)
            .into_iter()
            // This file names a producer only to check that librdkafka accepts the settings.
            .filter(|path| *path != src.join("lib.rs"))
            .filter(|path| {
                std::fs::read_to_string(path)
                    .unwrap()
                    .contains("rdkafka::producer")
            })
            .map(|path| path.strip_prefix(&src).unwrap().display().to_string())
            .collect::<Vec<_>>();
        creating.sort();
        assert_eq!(
            creating, checked,
            "a file creates a producer: list its config in producers() above"
        );
    }

    /// Every `.rs` file under `dir`.
    fn rs_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut files = Vec::new();
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                files.extend(rs_files(&path));
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
        files
    }
}
