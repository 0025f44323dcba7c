//! The shared service runtime (today exercised through the qualifier's shell): admin
//! endpoints, readiness once Kafka answers, clean exit on SIGTERM, and a clear refusal of bad
//! Kafka settings. Delivery's own tests cover the same for delivery.

use std::time::Duration;

use testkit::kafka;
use testkit::service::{ServiceBuilder, metric_value};

async fn serves_admin_endpoints_and_stops_on_sigterm(binary: &str) {
    kafka::require_broker();
    let mut service = ServiceBuilder::new(binary).spawn();
    service.wait_ready(Duration::from_secs(30)).await;

    let health = reqwest::get(service.admin_url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let metrics = service.metrics().await;
    let rss = metric_value(&metrics, "process_resident_memory_bytes")
        .unwrap_or_else(|| panic!("no process_resident_memory_bytes in:\n{metrics}"));
    assert!(rss > 0.0);

    service.terminate();
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "{binary} exited with {status} on SIGTERM; log:\n{}",
        service.log()
    );
}

#[tokio::test]
async fn qualifier_serves_admin_endpoints_and_stops_on_sigterm() {
    serves_admin_endpoints_and_stops_on_sigterm("qualifier").await;
}

#[tokio::test]
async fn bad_kafka_settings_stop_start_up_naming_the_variable() {
    let mut service = ServiceBuilder::new("qualifier")
        .env("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
        .env("KAFKA_SASL_MECHANISM", "PLAIN")
        .spawn();
    let status = service.wait_exit(Duration::from_secs(10)).await;
    assert!(!status.success());
    let log = service.log();
    assert!(
        log.contains("KAFKA_SASL_USERNAME: required with SASL"),
        "{log}"
    );
    assert!(!log.contains("panicked"), "{log}");
}
