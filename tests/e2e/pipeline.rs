//! A qualifier and a delivery worker wired together on the real broker, with real HTTPS
//! receivers as partners: for behaviour that spans both services.

use std::time::Duration;

use testkit::receiver::{Receiver, RecordedRequest};
use testkit::service::Service;

use crate::delivery::{DeliveryTest, json, map_segments, text};
use crate::qualifier::{QualifierTest, post};

/// Both segments hold for anyone who realized trait 1.
pub const RULES: &str =
    "traits: [{ id: 1 }]\nsegments: [{ id: 14356, rule: T1 }, { id: 12176, rule: T1 }]\n";

/// One `Users` entry's segments: (AAM_UUID, DataPartner_UUID, Segment_ID, Status).
type Entry = (String, String, String, String);

pub fn entries(requests: &[RecordedRequest]) -> Vec<Entry> {
    map_segments(requests.iter().map(|r| json(&r.body)), |user, segment| {
        (
            text(user, "AAM_UUID"),
            text(user, "DataPartner_UUID"),
            text(segment, "Segment_ID"),
            text(segment, "Status"),
        )
    })
}

pub fn entry(user: &str, partner_uuid: &str, segment: &str, status: &str) -> Entry {
    (
        user.to_owned(),
        partner_uuid.to_owned(),
        segment.to_owned(),
        status.to_owned(),
    )
}

pub fn id_sync(user: &str, data_partner: u64, uuid: &str) -> String {
    format!(
        r#"{{"type":"id_sync","user":"{user}","data_partner":{data_partner},"partner_uuid":"{uuid}"}}"#
    )
}

/// A qualifier and a delivery worker reading its output.
pub struct Pipeline {
    pub qualifier_test: QualifierTest,
    pub qualifier: crate::qualifier::Qualifier,
    pub delivery_test: DeliveryTest,
    /// Kept running for the pipeline's life.
    delivery: Service,
}

impl Pipeline {
    /// `destinations`: (id, receiver, extra YAML) of each destination.
    pub async fn start(rules: &str, destinations: &[(u64, &Receiver, &str)]) -> Self {
        let qualifier_test = QualifierTest::new(1).await;
        let mut delivery_test = DeliveryTest::new(1).await;
        // Erasures make the user's delivery log records unreadable.
        let qualifier = qualifier_test
            .start_with(
                &qualifier_test.definitions(rules),
                "a",
                &[("KAFKA_DELIVERY_LOG_TOPIC", &delivery_test.log_topic)],
            )
            .await;
        delivery_test.topic = qualifier_test.status.clone();
        delivery_test.batch_topic = qualifier_test.status_batch.clone();
        let config = delivery_test.config(
            &destinations
                .iter()
                .map(|(id, receiver, extra)| crate::delivery::destination(*id, receiver, extra))
                .collect::<Vec<_>>(),
        );
        let delivery = delivery_test.start(&config, &[]).await;
        Self {
            qualifier_test,
            qualifier,
            delivery_test,
            delivery,
        }
    }

    /// The delivery worker's `/metrics`.
    pub async fn delivery_metrics(&self) -> String {
        self.delivery.metrics().await
    }

    pub async fn post(&self, lines: &[String]) {
        let (status, body) = post(&self.qualifier.ingest, lines).await;
        assert_eq!(status, 202, "{body}");
    }
}

/// Waits until `receiver` got at least `n` segment entries; returns them all.
pub async fn wait_entries(receiver: &Receiver, n: usize) -> Vec<Entry> {
    testkit::wait_for(
        &format!("{n} segment entries at the partner"),
        Duration::from_secs(30),
        || async { entries(&receiver.requests()) },
        |got| got.len() >= n,
    )
    .await
}
