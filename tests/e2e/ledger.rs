//! `relay-ledger`, the judge of `make demo` and `make bench`, against its known-bad cases on the
//! real broker and a real partner-sim: a lost non-final change fails the run even though a
//! later change of the same user and segment arrived; it passes only once delivery reports it
//! coalesced (delivery's `--coalesced-report`); an input it cannot read stops it instead of
//! reading as zero.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use model::{ChangeReason, Origin, SegmentChange, SegmentStatusUpdate};
use prost::Message as _;
use rdkafka::producer::FutureRecord;
use testkit::kafka;
use testkit::service::{ServiceBuilder, binary, free_port};

/// 2016-07-27T16:17:22Z.
const T0: i64 = 1_469_636_242_000;

async fn relay_ledger(config: &Path, partner_sim: &str, report: &Path) -> (i32, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::process::Command::new(binary("relay-ledger"))
        .arg("--config")
        .arg(config)
        .arg("--partner-sim")
        .arg(partner_sim)
        .arg("--coalesced-report")
        .arg(report)
        .env("KAFKA_BROKERS", &kafka::settings().brokers)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&stdout),
        String::from_utf8_lossy(&stderr)
    );
    (status.code().unwrap_or(-1), text)
}

#[tokio::test]
async fn relay_ledger_fails_a_lost_change_and_an_unreadable_input() {
    kafka::require_broker();
    let status_topic = kafka::unique_topic("ledger-status", 1).await;
    let batch_topic = kafka::unique_topic("ledger-status-batch", 1).await;
    let dlq_topic = kafka::unique_topic("ledger-dlq", 1).await;
    // u1 qualifies for 14356, then leaves it 5 s later: two committed changes.
    let producer = kafka::producer();
    for change in [
        SegmentChange::qualified(14356, T0),
        SegmentChange::unsegmented(14356, ChangeReason::Rule, T0 + 5_000),
    ] {
        let update = SegmentStatusUpdate {
            user_id: "u1".to_owned(),
            changes: vec![change],
            origin: Origin::Realtime as i32,
            produced_unix_ms: T0,
            ..SegmentStatusUpdate::default()
        };
        producer
            .send(
                FutureRecord::to(&status_topic)
                    .key("u1")
                    .payload(&update.encode_to_vec()),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let sim_config = dir.path().join("partner-sim.yaml");
    std::fs::write(&sim_config, "endpoints:\n  - { path: /acme }\n").unwrap();
    let (sim_port, ca) = (free_port(), dir.path().join("ca.pem"));
    let mut sim = ServiceBuilder::new("partner-sim")
        .arg("--config")
        .arg(sim_config.to_str().unwrap())
        .arg("--listen")
        .arg(format!("127.0.0.1:{sim_port}"))
        .arg("--ca-out")
        .arg(ca.to_str().unwrap())
        .spawn();
    sim.wait_ready(Duration::from_secs(30)).await;
    let partner_sim = sim.admin_url("");

    // Only the later change reaches the partner: the 1 is lost, not coalesced.
    let client = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap())
        .build()
        .unwrap();
    let body = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"1","Users":[{"AAM_UUID":"u1","DataPartner_UUID":"","Segments":[{"Segment_ID":"14356","Status":"0","DateTime":"Wed Jul 27 16:17:27 UTC 2016"}]}]}"#;
    let answer = client
        .post(format!("https://127.0.0.1:{sim_port}/acme"))
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", "k1")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status(), 200, "partner-sim refused the body");

    let config = dir.path().join("destinations.yaml");
    std::fs::write(
        &config,
        format!(
            "kafka: {{ topic: {status_topic}, batch_topic: {batch_topic}, dlq_topic: {dlq_topic} }}\n\
             destinations:\n  - {{ id: 423, url: \"https://127.0.0.1:{sim_port}/acme\", client_id: \"74323\", \
             user_dpid: 20915, segments: {{ 14356: \"14356\" }} }}\n"
        ),
    )
    .unwrap();
    // delivery's coalesced-change report: on, and nothing coalesced.
    let log = dir.path().join("coalesced.jsonl");
    std::fs::write(&log, "").unwrap();

    let (code, output) = relay_ledger(&config, &partner_sim, &log).await;
    assert_eq!(
        code, 1,
        "a lost non-final change must fail the run:\n{output}"
    );
    assert!(
        output.contains(
            "1 committed changes were neither delivered, nor dead-lettered, nor reported coalesced"
        ) && output.contains("\"u1\", \"14356\", true, 1469636242"),
        "the failure must name the lost change:\n{output}"
    );

    // Delivery reports that it merged the 1 into the 0 of the same batch: the run balances.
    std::fs::write(
        &log,
        format!(
            "{{\"destination\":423,\"user\":\"u1\",\"segment\":\"14356\",\"status\":1,\"time_unix_ms\":{T0}}}\n"
        ),
    )
    .unwrap();
    let (code, output) = relay_ledger(&config, &partner_sim, &log).await;
    assert_eq!(code, 0, "a coalesced change is accounted for:\n{output}");

    // Inputs it cannot read: no report (delivery ran without one), partner-sim not answering.
    let (code, output) = relay_ledger(
        &config,
        &partner_sim,
        &dir.path().join("never-written.jsonl"),
    )
    .await;
    assert!(
        code == 2 && output.contains("cannot read the coalesced-change report"),
        "a missing report must stop the ledger ({code}):\n{output}"
    );
    let (code, output) =
        relay_ledger(&config, &format!("http://127.0.0.1:{}", free_port()), &log).await;
    assert!(
        code == 2 && output.contains("partner-sim: GET"),
        "an unreachable partner-sim must stop the ledger ({code}):\n{output}"
    );
}
