//! TLS towards partners: a certificate that does not verify is refused before any data is
//! sent; redirects are not followed; the only way to plain HTTP is `dangerous_allow_http`,
//! which is warned about at every start.

use std::collections::BTreeMap;
use std::time::Duration;

use model::ErrorClass;
use testkit::receiver::{Receiver, Response, Tls};
use testkit::service::{ServiceBuilder, metric_value};

use super::oauth::test_ca_bundle;
use super::{DeliveryTest, T0, change, destination, update};

#[tokio::test]
async fn expired_other_name_and_self_signed_certificates_are_refused_and_never_get_the_data() {
    let test = DeliveryTest::new(1).await;
    // Each destination trusts its receiver's CA (`ca_file`); only the valid one verifies.
    let expired = Receiver::start_with(Tls::Expired).await;
    let other_name = Receiver::start_with(Tls::OtherName("partner.example.com".into())).await;
    let self_signed = Receiver::start_with(Tls::SelfSigned).await;
    let valid = Receiver::start_with(Tls::Valid).await;
    // An OAuth destination whose token endpoint's certificate does not verify: the client
    // secret must not be sent to it, and the partner must not be sent the data.
    let oauth_partner = Receiver::start().await;
    let bad_tokens = Receiver::start_with(Tls::SelfSigned).await;
    let ca = test_ca_bundle(&[&oauth_partner, &bad_tokens]);
    let oauth_entry = destination(
        35,
        &oauth_partner,
        &format!(
            ", retry_backoff_ms: 5, auth: {{ oauth2: {{ token_url: \"{}\", client_id: relay, client_secret_env: OAUTH_SECRET }} }}",
            bad_tokens.url("/oauth2/token")
        ),
    )
    .replace(
        &oauth_partner.ca_file().display().to_string(),
        &ca.display().to_string(),
    );
    let config = test.config(&[
        // The dangerous switch allows http:// URLs; it never relaxes https verification.
        destination(
            30,
            &expired,
            ", retry_backoff_ms: 5, dangerous_allow_http: true",
        ),
        destination(31, &expired, ", retry_backoff_ms: 5"),
        destination(32, &other_name, ", retry_backoff_ms: 5"),
        destination(33, &self_signed, ", retry_backoff_ms: 5"),
        destination(34, &valid, ", retry_backoff_ms: 5"),
        oauth_entry,
    ]);
    let service = test
        .start(&config, &[("OAUTH_SECRET", "tls-test-secret")])
        .await;
    let sent = update("u1", &[], &[], vec![change(14356, true, T0)]);
    test.produce(&test.topic, std::slice::from_ref(&sent)).await;

    let records: BTreeMap<u64, _> = test
        .dead_letters(5, Duration::from_secs(30))
        .await
        .into_iter()
        .map(|r| (r.destination_id, r))
        .collect();
    assert_eq!(
        records.keys().copied().collect::<Vec<_>>(),
        [30, 31, 32, 33, 35],
        "every refused destination dead-lettered its batch, the valid one did not"
    );
    for (id, fragment) in [
        (30, "expired"),
        (31, "expired"),
        (32, "not valid for name"),
        (33, "unknownissuer"),
    ] {
        let record = &records[&id];
        assert_eq!(record.error_class(), ErrorClass::Tls, "{}", record.error);
        assert!(
            record.error.to_ascii_lowercase().contains(fragment),
            "destination {id}: {}",
            record.error
        );
        assert_eq!(record.attempts, 2);
        assert_eq!(record.updates, std::slice::from_ref(&sent));
    }
    assert_eq!(records[&35].error_class(), ErrorClass::Auth);
    assert!(
        records[&35].error.contains("token request failed")
            && !records[&35].error.contains("tls-test-secret"),
        "{}",
        records[&35].error
    );

    for (name, receiver) in [
        ("expired", &expired),
        ("other name", &other_name),
        ("self-signed", &self_signed),
        ("oauth partner", &oauth_partner),
        ("untrusted token endpoint", &bad_tokens),
    ] {
        assert!(
            receiver.requests().is_empty(),
            "{name}: a refused peer must receive nothing"
        );
    }
    let delivered = valid.wait_for_requests(1, Duration::from_secs(10)).await;
    assert_eq!(delivered[0].status, 200);

    testkit::wait_until(
        "the metrics of every destination",
        Duration::from_secs(10),
        || async {
            let metrics = service.metrics().await;
            let requests = |id: u64, outcome: &str| {
                metric_value(
                    &metrics,
                    &format!(
                        r#"delivery_requests_total{{destination="{id}",outcome="{outcome}"}}"#
                    ),
                )
            };
            let refused =
                |id| requests(id, "tls") == Some(2.0) && requests(id, "success") == Some(0.0);
            [30, 31, 32, 33].into_iter().all(refused)
                && requests(34, "success") == Some(1.0)
                && requests(35, "tls") == Some(0.0)
                && metric_value(
                    &metrics,
                    r#"delivery_oauth_token_requests_total{destination="35",outcome="error"}"#,
                ) == Some(2.0)
        },
    )
    .await;
}

#[tokio::test]
async fn redirects_are_not_followed_a_3xx_is_a_failed_attempt() {
    let test = DeliveryTest::new(1).await;
    // 307 keeps the method and body: followed, it would hand the signed batch to a URL
    // nobody configured, here over plain HTTP.
    let plain = Receiver::start_with(Tls::None).await;
    let to_plain = Receiver::start().await;
    to_plain.respond_with(Response::status(307).header("Location", &plain.url("/taken")));
    // 302 turns a followed POST into a GET without the body: had its 200 counted, the batch
    // would be "delivered" without the partner ever receiving it.
    let moved = Receiver::start().await;
    moved.script([Response::status(302).header("Location", &moved.url("/landing"))]);
    let config = test.config(&[
        destination(
            36,
            &to_plain,
            ", retry_backoff_ms: 5, auth: { hmac: { key_env: KEY } }",
        ),
        destination(37, &moved, ", retry_backoff_ms: 5"),
    ]);
    let service = test.start(&config, &[("KEY", "redirect-key")]).await;
    let sent = update("u1", &[], &[], vec![change(14356, true, T0)]);
    test.produce(&test.topic, std::slice::from_ref(&sent)).await;

    let records = test.dead_letters(1, Duration::from_secs(30)).await;
    assert_eq!(records[0].destination_id, 36);
    assert_eq!(records[0].error_class(), ErrorClass::HttpStatus);
    assert_eq!(records[0].error, "HTTP 307");
    assert_eq!(records[0].updates, [sent]);
    assert_eq!(to_plain.requests().len(), 2, "first attempt and one retry");
    assert!(plain.requests().is_empty(), "nothing may follow a redirect");

    let requests = moved.wait_for_requests(2, Duration::from_secs(10)).await;
    let seen: Vec<_> = requests
        .iter()
        .map(|r| (r.method.as_str().to_owned(), r.path.clone(), r.status))
        .collect();
    assert_eq!(
        seen,
        [
            ("POST".to_owned(), "/aam".to_owned(), 302),
            ("POST".to_owned(), "/aam".to_owned(), 200)
        ],
        "the retry POSTs the body to the configured URL again"
    );
    assert_eq!(requests[0].body, requests[1].body);
    testkit::wait_until(
        "the 302 counted as a failed attempt",
        Duration::from_secs(10),
        || async {
            let metrics = service.metrics().await;
            metric_value(
                &metrics,
                r#"delivery_requests_total{destination="37",outcome="http_status"}"#,
            ) == Some(1.0)
                && metric_value(
                    &metrics,
                    r#"delivery_events_total{destination="37",outcome="delivered"}"#,
                ) == Some(1.0)
        },
    )
    .await;
}

#[tokio::test]
async fn dangerous_allow_http_is_warned_at_every_start_for_each_destination_that_sets_it() {
    let test = DeliveryTest::new(1).await;
    let plain = Receiver::start_with(Tls::None).await;
    let https = Receiver::start().await;
    let config = test.config(&[
        // `destination()` adds a ca_file, which a plain-HTTP destination simply does not use.
        destination(38, &plain, ", dangerous_allow_http: true"),
        destination(39, &https, ""),
    ]);
    let warning = |log: &str, id: u64| {
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .any(|line| {
                line["level"] == "WARN"
                    && line["destination"] == id
                    && line["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("dangerous_allow_http is set"))
            })
    };
    for start in 1..=2 {
        let service = test.start(&config, &[("LOG_FORMAT", "json")]).await;
        let log = service.log();
        assert!(warning(&log, 38), "start {start}: no WARN for 38:\n{log}");
        assert!(!warning(&log, 39), "start {start}: WARN for 39:\n{log}");
        if start == 1 {
            // The switch does what it says: this destination gets plain HTTP.
            test.produce(
                &test.topic,
                &[update("u1", &[], &[], vec![change(14356, true, T0)])],
            )
            .await;
            let received = plain.wait_for_requests(1, Duration::from_secs(20)).await;
            assert_eq!(received[0].status, 200);
            https.wait_for_requests(1, Duration::from_secs(20)).await;
        }
        service.terminate();
        let mut service = service;
        assert!(service.wait_exit(Duration::from_secs(20)).await.success());
    }
}

#[tokio::test]
async fn the_old_allow_insecure_http_key_and_an_http_token_url_stop_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("destinations.yaml");
    std::fs::write(
        &path,
        "destinations:\n  - { id: 1, url: http://partner.example.com/in, allow_insecure_http: true, client_id: a, user_dpid: 1, segments: { 1: 1 } }\n  - { id: 2, url: https://partner.example.com/in, client_id: a, user_dpid: 1, segments: { 1: 1 }, auth: { oauth2: { token_url: http://idp.example.com/token, client_id: c, client_secret_env: SECRET } } }\n",
    )
    .unwrap();
    let mut service = ServiceBuilder::new("delivery")
        .arg("--config")
        .arg(path.to_str().unwrap())
        .env("SECRET", "start-up-secret")
        .spawn();
    assert!(!service.wait_exit(Duration::from_secs(10)).await.success());
    let log = service.log();
    for expected in [
        format!("{}: invalid configuration", path.display()),
        "destinations[0].allow_insecure_http: this key was renamed to `dangerous_allow_http`"
            .to_owned(),
        "destinations[0].url: must be https (set `dangerous_allow_http: true` on the destination"
            .to_owned(),
        "destinations[1].auth.oauth2.token_url: must be https (set `dangerous_allow_http: true` on the destination"
            .to_owned(),
    ] {
        assert!(log.contains(&expected), "missing `{expected}` in:\n{log}");
    }
    assert!(
        !log.contains("start-up-secret") && !log.contains("panicked"),
        "{log}"
    );
}
