//! Secrets (HMAC keys, the rotation's previous key, OAuth client secrets) and the bearer
//! tokens a token endpoint issued never appear in the logs — at `RUST_LOG=trace`, with the
//! HTTP and TLS libraries' own debug output —, in `/metrics`, in dead letters or in error
//! text, on the paths that succeed and on the ones that fail.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use model::ErrorClass;
use testkit::receiver::{Receiver, Response};
use testkit::service::{ServiceBuilder, metric_value};

use super::oauth::test_ca_bundle;
use super::{DeliveryTest, T0, change, destination, update};

fn token(value: &str, token_type: &str) -> Response {
    Response::status(200).json(format!(
        r#"{{"access_token":"{value}","token_type":"{token_type}","expires_in":3600}}"#
    ))
}

/// A destination entry whose `ca_file` trusts both the partner and its token endpoint.
fn oauth_destination(id: u64, partner: &Receiver, tokens: &Receiver, secret_env: &str) -> String {
    let ca = test_ca_bundle(&[partner, tokens]);
    destination(
        id,
        partner,
        &format!(
            ", retry_backoff_ms: 10, auth: {{ oauth2: {{ token_url: \"{}\", client_id: relay, client_secret_env: {secret_env} }} }}",
            tokens.url("/oauth2/token")
        ),
    )
    .replace(
        &partner.ca_file().display().to_string(),
        &ca.display().to_string(),
    )
}

fn hmac_sha256(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    STANDARD.encode(mac.finalize().into_bytes())
}

#[tokio::test]
async fn no_secret_or_token_reaches_trace_logs_metrics_dead_letters_or_error_text() {
    let test = DeliveryTest::new(1).await;
    let run = testkit::unique_name("s");
    let hmac_key = format!("hmac-current-key-{run}");
    let hmac_previous_key = format!("hmac-previous-key-{run}");
    let secrets = [62, 63, 64].map(|id| format!("client-secret-{id}-{run}"));
    let [token_a, token_b, token_rejected, token_c] =
        ["a", "b", "rejected", "c"].map(|t| format!("bearer-token-{t}-{run}"));

    // 61: HMAC with a rotation's two keys; the partner fails every attempt (dead letter).
    let hmac_partner = Receiver::start().await;
    hmac_partner.respond(500, Duration::ZERO);
    // 62: OAuth; the partner refuses the first token (401), so a second one is issued, and
    // then accepts the batch.
    let (partner_62, tokens_62) = (Receiver::start().await, Receiver::start().await);
    tokens_62.script([token(&token_a, "bearer")]);
    tokens_62.respond_with(token(&token_b, "bearer"));
    partner_62.script([Response::status(401)]);
    // 63: OAuth; the token endpoint answers with a token that is not a bearer token (a token
    // error, dead-lettered without any request to the partner).
    let (partner_63, tokens_63) = (Receiver::start().await, Receiver::start().await);
    tokens_63.respond_with(token(&token_rejected, "mac"));
    // 64: OAuth; a good token, but the partner fails every attempt (dead letter).
    let (partner_64, tokens_64) = (Receiver::start().await, Receiver::start().await);
    tokens_64.respond_with(token(&token_c, "bearer"));
    partner_64.respond(503, Duration::ZERO);

    let destinations = [
        destination(
            61,
            &hmac_partner,
            ", retry_backoff_ms: 10, auth: { hmac: { key_env: HMAC_KEY, previous_key_env: HMAC_PREVIOUS_KEY } }",
        ),
        oauth_destination(62, &partner_62, &tokens_62, "SECRET_62"),
        oauth_destination(63, &partner_63, &tokens_63, "SECRET_63"),
        oauth_destination(64, &partner_64, &tokens_64, "SECRET_64"),
    ];
    let config = test.config(&destinations);
    let env = [
        ("RUST_LOG", "trace"),
        ("LOG_FORMAT", "json"),
        ("HMAC_KEY", hmac_key.as_str()),
        ("HMAC_PREVIOUS_KEY", hmac_previous_key.as_str()),
        ("SECRET_62", secrets[0].as_str()),
        ("SECRET_63", secrets[1].as_str()),
        ("SECRET_64", secrets[2].as_str()),
    ];
    let mut service = test.start(&config, &env).await;
    let sent = update("u1", &[6], &["p-1"], vec![change(14356, true, T0)]);
    test.produce(&test.topic, std::slice::from_ref(&sent)).await;

    let mut records = test.dead_letters(3, Duration::from_secs(30)).await;
    records.sort_by_key(|r| r.destination_id);
    let classes: Vec<_> = records
        .iter()
        .map(|r| (r.destination_id, r.error_class(), r.error.as_str()))
        .collect();
    assert_eq!(
        classes,
        [
            (61, ErrorClass::HttpStatus, "HTTP 500"),
            (
                63,
                ErrorClass::Auth,
                r#"token response is not a bearer token: token_type "mac" (expected `bearer`)"#
            ),
            (64, ErrorClass::HttpStatus, "HTTP 503"),
        ]
    );
    let delivered = partner_62
        .wait_for_requests(2, Duration::from_secs(20))
        .await;
    testkit::wait_until(
        "62 delivered, 61/63/64 dead-lettered",
        Duration::from_secs(10),
        || async {
            let metrics = service.metrics().await;
            let events = |id: u64, outcome: &str| {
                metric_value(
                    &metrics,
                    &format!(r#"delivery_events_total{{destination="{id}",outcome="{outcome}"}}"#),
                )
            };
            events(62, "delivered") == Some(1.0)
                && [61, 63, 64]
                    .iter()
                    .all(|&id| events(id, "dead_lettered") == Some(1.0))
        },
    )
    .await;
    let metrics = service.metrics().await;

    // The secrets were really in use, so their absence below means something.
    let signed = &hmac_partner.requests()[0];
    assert_eq!(
        signed.header("x-signature"),
        Some(hmac_sha256(&hmac_key, &signed.body).as_str())
    );
    assert_eq!(
        signed.header("x-signature-previous"),
        Some(hmac_sha256(&hmac_previous_key, &signed.body).as_str())
    );
    let bearer = |token: &str| format!("Bearer {token}");
    assert_eq!(
        delivered
            .iter()
            .map(|r| (r.status, r.header("authorization").map(str::to_owned)))
            .collect::<Vec<_>>(),
        [(401, Some(bearer(&token_a))), (200, Some(bearer(&token_b)))]
    );
    assert!(partner_63.requests().is_empty(), "no token, no request");
    assert_eq!(
        partner_64.requests()[0].header("authorization"),
        Some(bearer(&token_c).as_str())
    );
    let basics: Vec<String> = secrets
        .iter()
        .map(|secret| STANDARD.encode(format!("relay:{secret}")))
        .collect();
    for (tokens, basic) in [&tokens_62, &tokens_63, &tokens_64].iter().zip(&basics) {
        assert_eq!(
            tokens.requests()[0].header("authorization"),
            Some(format!("Basic {basic}").as_str())
        );
    }

    // Error text of the other entry points: a config error, and a replay that fails again.
    let bad_config = test.config(
        &destinations
            .iter()
            .map(|d| d.replace("user_dpid: 20915", "user_dpid: 20915, timeout_ms: 0"))
            .collect::<Vec<_>>(),
    );
    let mut check = ServiceBuilder::new("delivery")
        .arg("check-config")
        .arg(bad_config.to_str().unwrap());
    for (key, value) in env {
        check = check.env(key, value);
    }
    let mut check = check.spawn();
    assert!(!check.wait_exit(Duration::from_secs(10)).await.success());
    let config_errors = check.log();
    assert!(
        config_errors.contains("destinations[3].timeout_ms: must be between"),
        "{config_errors}"
    );

    let mut replay = ServiceBuilder::new("delivery")
        .arg("--config")
        .arg(config.to_str().unwrap())
        .arg("replay")
        .arg("--destination")
        .arg("64");
    for (key, value) in env {
        replay = replay.env(key, value);
    }
    let mut replay = replay.spawn();
    let replayed = replay.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(replayed.code(), Some(3), "{}", replay.log());
    let replay_output = replay.log();
    assert!(
        replay_output.contains("1 dead-lettered again"),
        "{replay_output}"
    );

    service.terminate();
    assert!(service.wait_exit(Duration::from_secs(30)).await.success());
    let log = service.log();
    // The trace output really is there, the HTTP and TLS stacks' included.
    for target in [
        "delivery::",
        "reqwest::",
        "hyper_util::",
        "h2::",
        "rustls::",
        "rdkafka::",
    ] {
        assert!(
            log.lines()
                .any(|line| line.contains(&format!(r#""target":"{target}"#))),
            "no log line from {target}"
        );
    }
    assert!(log.contains(r#""level":"TRACE""#));
    assert!(replay_output.contains(r#""level":"TRACE""#));

    let dead_letters = format!("{records:?}");
    let mut forbidden = vec![
        hmac_key.clone(),
        hmac_previous_key.clone(),
        token_a.clone(),
        token_b.clone(),
        token_rejected.clone(),
        token_c.clone(),
    ];
    forbidden.extend(secrets.iter().cloned());
    forbidden.extend(basics);
    for (place, text) in [
        ("the delivery log at trace", &log),
        ("/metrics", &metrics),
        ("the dead letters", &dead_letters),
        ("check-config's errors", &config_errors),
        ("the replay's output at trace", &replay_output),
    ] {
        for secret in &forbidden {
            assert!(
                !text.contains(secret.as_str()),
                "`{secret}` appears in {place}"
            );
        }
    }
}
