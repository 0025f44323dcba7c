//! partner-sim as a partner sees it: a request that keeps the contract is accepted; each kind
//! of violation is answered 400 and counted by reason; tokens are issued and checked.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use partner_sim::auth::signature;
use partner_sim::config::{Algorithm, SimConfig};
use partner_sim::server::Simulator;

const BODY: &str = r#"{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"1","Users":[{"AAM_UUID":"u1","DataPartner_UUID":"","Segments":[{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}]}]}"#;

async fn start(yaml: &str) -> (Arc<Simulator>, String) {
    start_with(yaml, &prometheus::Registry::new()).await
}

/// [`start`], its metrics in `registry`.
async fn start_with(yaml: &str, registry: &prometheus::Registry) -> (Arc<Simulator>, String) {
    let config: SimConfig = {
        let dir = std::env::temp_dir().join(format!(
            "partner-sim-{}-{}.yaml",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::write(&dir, yaml).unwrap();
        SimConfig::load(&dir).unwrap()
    };
    let simulator = Simulator::new(config, registry).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = simulator.router();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (simulator, base)
}

fn post(url: &str, body: &str) -> reqwest::RequestBuilder {
    reqwest::Client::new()
        .post(url)
        .header("Content-Type", "application/json")
        .header("Idempotency-Key", format!("{:x}", fastrand::u64(..)))
        .body(body.to_owned())
}

async fn violation(request: reqwest::RequestBuilder) -> String {
    let response = request.send().await.unwrap();
    assert_eq!(response.status(), 400);
    response.json::<serde_json::Value>().await.unwrap()["violation"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn hmac_endpoint_accepts_good_requests_and_names_each_violation() {
    let (sim, base) = start("endpoints:\n  - { path: /acme, destination_id: 423, auth: { hmac: { key: k3y, header: X-Signature, algorithm: sha1 } } }\n").await;
    let url = format!("{base}/acme");
    let good = signature(Algorithm::Sha1, b"k3y", BODY.as_bytes());
    assert_eq!(
        post(&url, BODY)
            .header("X-Signature", &good)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    assert_eq!(violation(post(&url, BODY)).await, "missing_signature");
    assert_eq!(
        violation(post(&url, BODY).header("X-Signature", "AAAA")).await,
        "bad_signature"
    );
    let signed = |body: &str| {
        post(&url, body).header(
            "X-Signature",
            signature(Algorithm::Sha1, b"k3y", body.as_bytes()),
        )
    };
    assert_eq!(
        violation(signed(
            &BODY.replace(r#""User_count":"1""#, r#""User_count":"2""#)
        ))
        .await,
        "user_count_mismatch"
    );
    assert_eq!(
        violation(signed(
            &BODY.replace(r#""User_DPID":"20915""#, r#""User_DPID":20915"#)
        ))
        .await,
        "wrong_type"
    );
    assert_eq!(
        violation(signed(
            &BODY.replace("Wed Jul 27 16:17:22 UTC 2016", "2016-07-27 16:17:22")
        ))
        .await,
        "bad_date"
    );
    assert_eq!(
        violation(signed(&BODY.replace(
            r#""AAM_Destination_Id":"423""#,
            r#""AAM_Destination_Id":"424""#
        )))
        .await,
        "wrong_destination"
    );
    let no_key = reqwest::Client::new()
        .post(&url)
        .header("Content-Type", "application/json")
        .header("X-Signature", &good)
        .body(BODY);
    assert_eq!(violation(no_key).await, "missing_idempotency_key");

    let stats = sim.stats();
    let acme = &stats["endpoints"]["/acme"];
    assert_eq!(acme["accepted"], 1);
    assert_eq!(acme["rejected"], 7);
    assert_eq!(acme["users"], 1);
    assert_eq!(acme["segments"]["1"], 1);
    for reason in [
        "missing_signature",
        "bad_signature",
        "user_count_mismatch",
        "wrong_type",
        "bad_date",
        "wrong_destination",
        "missing_idempotency_key",
    ] {
        assert_eq!(acme["violations"][reason], 1, "{reason}");
    }
    // Only the accepted request is on the partner's side of a ledger.
    assert_eq!(
        sim.accepted()["endpoints"]["/acme"]["changes"],
        serde_json::json!([["u1", "14356", 1, 1_469_636_242, 1]])
    );
}

#[tokio::test]
async fn oauth_endpoint_issues_tokens_and_refuses_missing_unknown_and_expired_ones() {
    let (sim, base) = start(
        "endpoints:\n  - { path: /o, auth: { oauth2: { client_id: relay, client_secret: s3cret, token_path: /o/token, token_ttl_s: 1 } } }\n",
    )
    .await;
    let client = reqwest::Client::new();
    let token_request = |secret: &str| {
        client
            .post(format!("{base}/o/token"))
            .basic_auth("relay", Some(secret))
            .header(
                "Content-Type",
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body("grant_type=client_credentials")
    };
    assert_eq!(token_request("wrong").send().await.unwrap().status(), 401);
    let response: serde_json::Value = token_request("s3cret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(response["token_type"], "bearer");
    assert_eq!(response["expires_in"], 1);
    let token = response["access_token"].as_str().unwrap().to_owned();

    let url = format!("{base}/o");
    assert_eq!(
        post(&url, BODY)
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(violation(post(&url, BODY)).await, "missing_bearer");
    assert_eq!(
        violation(post(&url, BODY).bearer_auth("made-up")).await,
        "unknown_bearer"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(
        violation(post(&url, BODY).bearer_auth(&token)).await,
        "expired_bearer"
    );
    let o = &sim.stats()["endpoints"]["/o"];
    assert_eq!(
        (o["token_requests"].as_u64(), o["token_rejected"].as_u64()),
        (Some(2), Some(1))
    );
}

#[tokio::test]
async fn duplicates_and_order_violations_are_recorded() {
    let registry = prometheus::Registry::new();
    let (sim, base) = start_with("endpoints:\n  - { path: /p }\n", &registry).await;
    let url = format!("{base}/p");
    let send = |key: &'static str, body: String| {
        reqwest::Client::new()
            .post(&url)
            .header("Content-Type", "application/json")
            .header("Idempotency-Key", key)
            .body(body)
            .send()
    };
    assert_eq!(send("a", BODY.to_owned()).await.unwrap().status(), 200);
    assert_eq!(
        send("a", BODY.to_owned()).await.unwrap().status(),
        200,
        "a duplicate is still a 200"
    );
    let older = BODY.replace(
        "Wed Jul 27 16:17:22 UTC 2016",
        "Wed Jul 27 16:17:21 UTC 2016",
    );
    assert_eq!(send("b", older).await.unwrap().status(), 200);
    // Two entries in one request, both inactive.
    let entry = r#"{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}"#;
    let inactive = BODY.replace(
        entry,
        &[entry, &entry.replace("14356", "14357")]
            .join(",")
            .replace(r#""Status":"1""#, r#""Status":"0""#),
    );
    assert_eq!(send("c", inactive).await.unwrap().status(), 200);
    let p = &sim.stats()["endpoints"]["/p"];
    assert_eq!(p["duplicates"], 1);
    assert_eq!(p["order_violations"], 1);
    assert_eq!(p["segments"], serde_json::json!({"1": 2, "0": 2}));
    // The metric counts the same entries as the stats: the duplicate's not again.
    let segments = |status: &str| -> f64 {
        registry
            .gather()
            .iter()
            .filter(|family| family.name() == "partner_sim_segments_total")
            .flat_map(|family| family.get_metric())
            .filter(|metric| {
                metric
                    .get_label()
                    .iter()
                    .any(|l| l.name() == "endpoint" && l.value() == "/p")
                    && metric
                        .get_label()
                        .iter()
                        .any(|l| l.name() == "status" && l.value() == status)
            })
            .map(|metric| metric.get_counter().get_value())
            .sum()
    };
    assert_eq!((segments("1"), segments("0")), (2.0, 2.0));
    // A re-send counts its entries again: the ledger sees it as a duplicate.
    assert_eq!(
        sim.accepted()["endpoints"]["/p"]["changes"],
        serde_json::json!([
            ["u1", "14356", 0, 1_469_636_242, 1],
            ["u1", "14356", 1, 1_469_636_241, 1],
            ["u1", "14356", 1, 1_469_636_242, 2],
            ["u1", "14357", 0, 1_469_636_242, 1]
        ])
    );
}

#[tokio::test]
async fn injected_errors_follow_the_configured_rate() {
    let (sim, base) =
        start("endpoints:\n  - { path: /f, behaviour: { error_rate: 1.0, error_status: 502 } }\n")
            .await;
    assert_eq!(
        post(&format!("{base}/f"), BODY)
            .send()
            .await
            .unwrap()
            .status(),
        502
    );
    assert_eq!(sim.stats()["endpoints"]["/f"]["injected_errors"], 1);
    assert_eq!(
        sim.accepted()["endpoints"]["/f"]["changes"],
        serde_json::json!([]),
        "a failed request accepted nothing"
    );
}

#[tokio::test]
async fn a_change_sent_for_each_partner_id_of_a_user_is_accepted_once_per_request() {
    let (sim, base) = start("endpoints:\n  - { path: /p }\n").await;
    let entry = |partner_uuid: &str| {
        format!(
            r#"{{"AAM_UUID":"u1","DataPartner_UUID":"{partner_uuid}","Segments":[{{"Segment_ID":"14356","Status":"1","DateTime":"Wed Jul 27 16:17:22 UTC 2016"}}]}}"#
        )
    };
    let body = format!(
        r#"{{"ProcessTime":"Wed Jul 27 16:17:42 UTC 2016","User_DPID":"20915","Client_ID":"74323","AAM_Destination_Id":"423","User_count":"2","Users":[{},{}]}}"#,
        entry("idfa-1"),
        entry("idfa-2")
    );
    assert_eq!(
        post(&format!("{base}/p"), &body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        sim.stats()["endpoints"]["/p"]["violations"],
        serde_json::json!({}),
        "{}",
        sim.stats()
    );
    // One change, sent in two entries of one request: one acceptance, not a duplicate.
    assert_eq!(
        sim.accepted()["endpoints"]["/p"]["changes"],
        serde_json::json!([["u1", "14356", 1, 1_469_636_242, 1]])
    );
}
