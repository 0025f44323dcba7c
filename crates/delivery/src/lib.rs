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
pub mod budget;
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
pub mod update;

/// Every Kafka producer delivery builds writes with `acks=all` and idempotence, whatever its
/// own tuning; a file that creates a producer must be listed here to be checked.
#[cfg(test)]
mod producer_settings {
    use telemetry::KafkaSettings;

    /// The files that create a producer (they use rdkafka's producer module, or make an
    /// `AckedProducer`), each with the config its producer is built from.
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
    fn every_producer_writes_with_acks_all_and_idempotence() {
        let kafka = KafkaSettings::from_lookup(|_| None).unwrap();
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        testkit::kafka::assert_producers_safe(&src, &producers(&kafka));
    }
}
