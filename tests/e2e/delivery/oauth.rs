//! OAuth 2.0 client credentials exactly as the contract says.

use std::time::Duration;

use base64::Engine as _;
use testkit::receiver::{Receiver, Response};
use testkit::service::metric_value;

use super::{DeliveryTest, T0, change, destination, update};

fn token(value: &str, expires_in: Option<u64>) -> Response {
    let expires = expires_in
        .map(|s| format!(r#","expires_in":{s}"#))
        .unwrap_or_default();
    Response::status(200).json(format!(
        r#"{{"access_token":"{value}","token_type":"bearer"{expires}}}"#
    ))
}

fn oauth(tokens: &Receiver) -> String {
    format!(
        ", auth: {{ oauth2: {{ token_url: \"{}\", client_id: relay-client, client_secret_env: OAUTH_SECRET }} }}",
        tokens.url("/oauth2/token")
    )
}

#[tokio::test]
async fn one_token_serves_many_batches_and_a_401_fetches_a_new_one_for_the_retry() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start().await;
    // The token endpoint is a receiver of its own; the destination trusts both CAs.
    let tokens = Receiver::start().await;
    tokens.respond_with(token("tok-1", None));
    let ca = test_ca_bundle(&[&partner, &tokens]);
    let entry = destination(
        20,
        &partner,
        &format!("{}, retry_backoff_ms: 10", oauth(&tokens)),
    )
    .replace(
        &partner.ca_file().display().to_string(),
        &ca.display().to_string(),
    );
    let config = test.config(&[entry]);
    let service = test.start(&config, &[("OAUTH_SECRET", "s3cr3t")]).await;

    for (i, user) in ["u1", "u2", "u3"].into_iter().enumerate() {
        test.produce(
            &test.topic,
            &[update(user, &[], &[], vec![change(14356, true, T0)])],
        )
        .await;
        partner
            .wait_for_requests(i + 1, Duration::from_secs(20))
            .await;
    }
    let token_requests = tokens.requests();
    assert_eq!(token_requests.len(), 1, "one token for many batches");
    let request = &token_requests[0];
    assert_eq!(request.method, "POST");
    let basic = base64::engine::general_purpose::STANDARD.encode("relay-client:s3cr3t");
    assert_eq!(
        request.header("authorization"),
        Some(format!("Basic {basic}").as_str())
    );
    assert_eq!(
        request.header("content-type"),
        Some("application/x-www-form-urlencoded;charset=UTF-8")
    );
    assert_eq!(&request.body[..], b"grant_type=client_credentials");
    assert!(
        partner
            .requests()
            .iter()
            .all(|r| r.header("authorization") == Some("Bearer tok-1"))
    );

    // The partner refuses the token: it is dropped, a new one is fetched, the retry succeeds.
    partner.script([Response::status(401)]);
    tokens.respond_with(token("tok-2", None));
    test.produce(
        &test.topic,
        &[update("u4", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let requests = partner.wait_for_requests(5, Duration::from_secs(20)).await;
    assert_eq!(
        (requests[3].status, requests[3].header("authorization")),
        (401, Some("Bearer tok-1"))
    );
    assert_eq!(
        (requests[4].status, requests[4].header("authorization")),
        (200, Some("Bearer tok-2"))
    );
    assert_eq!(tokens.requests().len(), 2);
    testkit::wait_until(
        "token requests counted",
        Duration::from_secs(10),
        || async {
            let metrics = service.metrics().await;
            metric_value(
                &metrics,
                r#"delivery_oauth_token_requests_total{destination="20",outcome="ok"}"#,
            ) == Some(2.0)
                && metric_value(
                    &metrics,
                    r#"delivery_events_total{destination="20",outcome="delivered"}"#,
                ) == Some(4.0)
        },
    )
    .await;
    assert!(
        !service.log().contains("s3cr3t") && !service.log().contains("tok-1"),
        "secrets never logged"
    );
}

#[tokio::test]
async fn a_token_is_refreshed_before_it_expires() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start().await;
    let tokens = Receiver::start().await;
    tokens.respond_with(token("short-lived", Some(1)));
    let ca = test_ca_bundle(&[&partner, &tokens]);
    let entry = destination(21, &partner, &oauth(&tokens)).replace(
        &partner.ca_file().display().to_string(),
        &ca.display().to_string(),
    );
    let config = test.config(&[entry]);
    let _service = test.start(&config, &[("OAUTH_SECRET", "s")]).await;

    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    partner.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(tokens.requests().len(), 1);
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    test.produce(
        &test.topic,
        &[update("u2", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    partner.wait_for_requests(2, Duration::from_secs(20)).await;
    assert_eq!(
        tokens.requests().len(),
        2,
        "expired token replaced before use"
    );
    assert!(partner.requests().iter().all(|r| r.status == 200));
}

/// One PEM file trusting every given receiver.
pub(super) fn test_ca_bundle(receivers: &[&Receiver]) -> std::path::PathBuf {
    let pem: String = receivers
        .iter()
        .map(|r| r.ca_pem().to_owned())
        .collect::<Vec<_>>()
        .join("\n");
    let path = std::env::temp_dir().join(format!("{}.pem", testkit::unique_name("ca-bundle")));
    std::fs::write(&path, pem).unwrap();
    path
}

#[tokio::test]
async fn every_bad_token_response_is_a_clear_error_the_batch_retried_then_dead_lettered() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start().await;
    let tokens = Receiver::start().await;
    // Two token requests per batch (the attempt and its retry), each answered badly.
    tokens.script([
        Response::status(200).body("text/html", "<html>sign in</html>"),
        Response::status(200).json(r#"{"token_type":"bearer","expires_in":60}"#),
        Response::status(200).json(r#"{"access_token":"","token_type":"bearer"}"#),
        Response::status(200).json(r#"{"access_token":"tok-mac-1","token_type":"mac"}"#),
        Response::status(500).json(r#"{"error":"server_error"}"#),
        Response::status(401).json(r#"{"error":"invalid_client"}"#),
    ]);
    tokens.respond_with(token("tok-good", None));
    let ca = test_ca_bundle(&[&partner, &tokens]);
    let entry = destination(
        22,
        &partner,
        &format!("{}, retry_backoff_ms: 10", oauth(&tokens)),
    )
    .replace(
        &partner.ca_file().display().to_string(),
        &ca.display().to_string(),
    );
    let config = test.config(&[entry]);
    let service = test
        .start(
            &config,
            &[("OAUTH_SECRET", "bad-token-s3cret"), ("LOG_FORMAT", "json")],
        )
        .await;

    for (n, expected) in [
        "token response has no `access_token` string",
        r#"token response is not a bearer token: token_type "mac" (expected `bearer`)"#,
        "token endpoint answered HTTP 401 (expected 200 with a bearer token)",
    ]
    .into_iter()
    .enumerate()
    {
        let sent = update(&format!("u{n}"), &[], &[], vec![change(14356, true, T0)]);
        test.produce(&test.topic, std::slice::from_ref(&sent)).await;
        let records = test.dead_letters(n + 1, Duration::from_secs(20)).await;
        let record = &records[n];
        assert_eq!(
            (record.error_class(), record.error.as_str(), record.attempts),
            (model::ErrorClass::Auth, expected, 2)
        );
        assert_eq!(record.updates, [sent]);
    }
    assert!(partner.requests().is_empty(), "no token, no request");
    assert_eq!(tokens.requests().len(), 6);

    // The endpoint answers properly again: the next batch goes out with its token.
    test.produce(
        &test.topic,
        &[update("u9", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let delivered = partner.wait_for_requests(1, Duration::from_secs(20)).await;
    assert_eq!(
        (delivered[0].status, delivered[0].header("authorization")),
        (200, Some("Bearer tok-good"))
    );
    testkit::wait_until("token requests counted", Duration::from_secs(10), || async {
        let metrics = service.metrics().await;
        let requests = |outcome: &str| {
            metric_value(
                &metrics,
                &format!(
                    r#"delivery_oauth_token_requests_total{{destination="22",outcome="{outcome}"}}"#
                ),
            )
        };
        requests("error") == Some(6.0) && requests("ok") == Some(1.0)
    })
    .await;

    // Each failure was logged once, as a WARN naming the destination and the reason.
    let log = service.log();
    let warnings: Vec<String> = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|line| {
            line["level"] == "WARN"
                && line["destination"] == 22
                && line["message"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("No OAuth token"))
        })
        .map(|line| line["error"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(
        warnings,
        [
            "token response is not a JSON object (content type `text/html`)",
            "token response has no `access_token` string",
            "token response has an empty `access_token`",
            r#"token response is not a bearer token: token_type "mac" (expected `bearer`)"#,
            "token endpoint answered HTTP 500 (expected 200 with a bearer token)",
            "token endpoint answered HTTP 401 (expected 200 with a bearer token)",
        ]
    );
    assert!(!log.contains("panicked"), "{log}");
    let basic = base64::engine::general_purpose::STANDARD.encode("relay-client:bad-token-s3cret");
    for secret in ["bad-token-s3cret", basic.as_str(), "tok-mac-1", "tok-good"] {
        assert!(!log.contains(secret), "`{secret}` logged");
    }
}
