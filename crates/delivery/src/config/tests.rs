use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<DeliveryConfig, ConfigError> {
    DeliveryConfig::parse(Path::new("destinations.yaml"), text, &|name| match name {
        "ACME_KEY" => Some("k1".to_owned()),
        "ACME_OLD_KEY" => Some("k0".to_owned()),
        "OAUTH_ID" => Some("client".to_owned()),
        "OAUTH_SECRET" => Some("s3cret".to_owned()),
        _ => None,
    })
}

const EXAMPLE: &str = r#"
defaults:
  timeout_ms: 3000
  retries: 1
  success_codes: [200]
  batch: { max_users: 1000, max_bytes: 1048576, linger_ms: 250 }
  max_in_flight: 4
destinations:
  - id: 423
    name: acme-dsp
    url: https://partner.example.com/aam
    client_id: "74323"
    user_dpid: 20915
    data_partner: 1234
    segments: { "14356": "14356", "12176": "99" }
    auth:
      hmac: { key_env: ACME_KEY, header: X-Signature, algorithm: sha1,
              previous_key_env: ACME_OLD_KEY, previous_header: X-Signature-Previous }
    allow_insecure_http: false
    rate_limit_rps: 0
    gzip: false
  - id: 424
    url: https://other.example.com/in
    client_id: 5
    user_dpid: 20914
    segments: { 14356: 7 }
    batch: { linger_ms: 50 }
    max_in_flight: 2
    auth:
      oauth2: { token_url: https://other.example.com/oauth2/token, client_id_env: OAUTH_ID, client_secret_env: OAUTH_SECRET }
"#;

#[test]
fn the_documented_example_parses_with_defaults_and_overrides() {
    let config = parse(EXAMPLE).unwrap();
    assert_eq!(config.kafka.group_id, "delivery");
    assert_eq!(config.kafka.topic, "segment-status");
    assert_eq!(
        config.kafka.batch_topic.as_deref(),
        Some("segment-status-batch")
    );
    assert_eq!(config.kafka.dlq_topic, "segment-status-dlq");

    let acme = &config.destinations[0];
    assert_eq!(
        (acme.id, acme.name.as_str(), acme.user_dpid),
        (423, "acme-dsp", 20915)
    );
    assert_eq!(acme.client_id, "74323");
    assert_eq!(acme.data_partner, Some(1234));
    assert_eq!(acme.segments[&12176].as_ref(), "99");
    assert_eq!(acme.timeout, Duration::from_millis(3000));
    assert_eq!(acme.retries, 1);
    assert_eq!(acme.success_codes, [200]);
    assert_eq!(acme.max_in_flight, 4);
    assert_eq!(acme.rate_limit_rps, None);
    let AuthConfig::Hmac(hmac) = &acme.auth else {
        panic!("hmac expected")
    };
    assert_eq!(hmac.algorithm, HmacAlgorithm::Sha1);
    assert_eq!(hmac.key.expose(), "k1");
    assert_eq!(
        hmac.previous
            .as_ref()
            .map(|(k, h)| (k.expose(), h.as_str())),
        Some(("k0", "X-Signature-Previous"))
    );

    let other = &config.destinations[1];
    assert_eq!(other.name, "424");
    assert_eq!(other.client_id, "5");
    assert_eq!(other.segments[&14356].as_ref(), "7");
    assert_eq!(other.batch.linger, Duration::from_millis(50));
    assert_eq!(other.batch.max_users, 1000, "inherited from defaults");
    assert_eq!(other.max_in_flight, 2);
    let AuthConfig::OAuth2(oauth) = &other.auth else {
        panic!("oauth2 expected")
    };
    assert_eq!(oauth.client_id, "client");
    assert_eq!(oauth.client_secret.expose(), "s3cret");
    assert!(
        !format!("{config:?}").contains("s3cret"),
        "secrets never print"
    );
}

#[test]
fn every_problem_is_reported_with_file_key_and_fix() {
    let error = parse(
        r#"
destinations:
  - id: 1
    url: http://partner.example.com/aam
    user_dpid: 20915
    segments: { "x": "1", "2": "" }
    timeout_ms: 0
    auth: { hmac: { key_env: MISSING, algorithm: sha512 } }
  - id: 1
    client_id: a
    user_dpid: 1
    url: https://ok.example.com
    segments: { 1: 1 }
    success_codes: []
"#,
    )
    .unwrap_err();
    let text = error.to_string();
    for expected in [
        "destinations.yaml: invalid configuration",
        "destinations[0].url: must be https (set `allow_insecure_http: true` to allow http), got `http://partner.example.com/aam`",
        "destinations[0].client_id: required",
        "destinations[0].segments: `x` is not one of our segment ids",
        "destinations[0].segments.2: the partner's Segment_ID must not be empty",
        "destinations[0].timeout_ms: must be between 1 and 600000 ms, got 0",
        "destinations[0].auth.hmac.key_env: environment variable `MISSING` is not set or empty",
        "destinations[0].auth.hmac.algorithm: must be md5, sha1 or sha256, got `sha512`",
        "destinations[1].id: 1 is already the id of destinations[0]",
        "destinations[1].success_codes: must list HTTP statuses",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert_eq!(error.problems.len(), 9, "{text}");
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let error = parse("destinations: []\nretry: 3\n")
        .unwrap_err()
        .to_string();
    assert!(error.contains("retry"), "{error}");
    let error = parse(
        "destinations:\n  - { id: 1, url: https://a.example, client_id: a, user_dpid: 1, segments: {1: 1}, timout_ms: 5 }\n",
    )
    .unwrap_err()
    .to_string();
    assert!(error.contains("timout_ms"), "{error}");
}

#[test]
fn http_is_allowed_only_when_asked_for() {
    let config = parse(
        "destinations:\n  - { id: 1, url: http://127.0.0.1:9/x, allow_insecure_http: true, client_id: a, user_dpid: 1, segments: {1: 1} }\n",
    )
    .unwrap();
    assert_eq!(config.destinations[0].url.scheme(), "http");
    assert!(config.destinations[0].allow_insecure_http);
}

#[test]
fn secrets_can_come_from_files() {
    let dir = std::env::temp_dir().join(format!("delivery-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("key"), "from-file\n").unwrap();
    let text = format!(
        "destinations:\n  - {{ id: 1, url: https://a.example, client_id: a, user_dpid: 1, segments: {{1: 1}}, auth: {{ hmac: {{ key_file: {} }} }} }}\n",
        dir.join("key").display()
    );
    let config = parse(&text).unwrap();
    let AuthConfig::Hmac(hmac) = &config.destinations[0].auth else {
        panic!()
    };
    assert_eq!(hmac.key.expose(), "from-file");
    assert_eq!(
        hmac.algorithm,
        HmacAlgorithm::Sha256,
        "sha256 is the default"
    );
    assert_eq!(hmac.header, "X-Signature");
    std::fs::remove_dir_all(&dir).unwrap();
}
