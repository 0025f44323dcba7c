//! segment-relay delivery: consumes segment status changes from Kafka, batches them per
//! partner destination and POSTs them as signed JSON over HTTPS, at least once, in order per
//! user, with retries, a dead-letter topic and a circuit breaker per destination.
//!
//! One file per stage of an event's way through the service:
//! [`config`] → [`consumer`] → [`router`] → [`batcher`] → [`payload`] → [`auth`] →
//! [`sender`] → [`dead_letter`], with [`offsets`] deciding what may be committed.

pub mod audit;
pub mod auth;
pub mod batcher;
pub mod catch_up;
pub mod check_connect;
pub mod circuit;
pub mod coalesced;
pub mod config;
pub mod consumer;
pub mod dead_letter;
pub mod delivery_log;
pub mod lane;
pub mod metrics;
pub mod offsets;
pub mod order;
pub mod payload;
pub mod render;
pub mod replay;
pub mod resync;
pub mod router;
pub mod sender;
pub mod service;
pub mod tls;
pub mod tls_explain;

/// Every Kafka producer delivery builds writes with `acks=all` and idempotence, whatever its
/// own tuning; a file that creates a producer must be listed here to be checked.
#[cfg(test)]
mod producer_settings {
    use rdkafka::producer::BaseProducer;
    use telemetry::KafkaSettings;

    /// The files that create a producer (they use rdkafka's producer module), each with the
    /// config its producer is built from.
    fn producers(kafka: &KafkaSettings) -> Vec<(&'static str, rdkafka::ClientConfig)> {
        vec![
            (
                "dead_letter.rs",
                crate::dead_letter::DeadLetterWriter::client_config(kafka),
            ),
            (
                "delivery_log.rs",
                crate::delivery_log::DeliveryLog::client_config(kafka),
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
