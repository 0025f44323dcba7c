//! `destinations.yaml` validation: the README's own example, every problem reported with file, key
//! and fix, https-only URLs, secrets kept out of output, and the mappings that are refused.

use std::path::Path;
use std::time::Duration;

use super::*;

fn parse(text: &str) -> Result<DeliveryConfig, ConfigError> {
    DeliveryConfig::parse(Path::new("destinations.yaml"), text, &|name| match name {
        "ACME_KEY" => Some("k1".to_owned()),
        "ACME_OLD_KEY" => Some("k0".to_owned()),
        "OTHER_CLIENT_ID" => Some("client".to_owned()),
        "OTHER_CLIENT_SECRET" | "OAUTH_SECRET" => Some("s3cret".to_owned()),
        _ => None,
    })
}

/// The line just above the README's `destinations.yaml` example, so this test finds the
/// block the README shows instead of a copy that can drift from it.
const README_MARKER: &str =
    "<!-- destinations.yaml example: tested by crates/delivery/src/config/tests.rs -->";

/// The fenced `yaml` block right after [`README_MARKER`] in `readme`.
fn readme_example(readme: &str) -> Result<&str, String> {
    let (_, after) = readme
        .split_once(README_MARKER)
        .ok_or_else(|| format!("README.md has no `{README_MARKER}` line"))?;
    let block = after
        .trim_start_matches(['\r', '\n'])
        .strip_prefix("```yaml\n")
        .ok_or_else(|| format!("README.md: no ```yaml block right after `{README_MARKER}`"))?;
    let end = block
        .find("\n```")
        .ok_or("README.md: the destinations.yaml example's ```yaml block is not closed")?;
    Ok(&block[..=end])
}

#[test]
fn the_documented_example_parses_with_defaults_and_overrides() {
    let example = readme_example(include_str!("../../../../README.md")).unwrap();
    let config = parse(example).unwrap_or_else(|e| {
        panic!("README.md's destinations.yaml example does not validate:\n{e}")
    });
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
fn the_readme_example_is_found_only_right_after_its_marker() {
    let good = format!("text\n{README_MARKER}\n```yaml\ndestinations: []\n```\nmore\n");
    assert_eq!(readme_example(&good).unwrap(), "destinations: []\n");
    for bad in [
        "```yaml\ndestinations: []\n```\n".to_owned(),
        format!("{README_MARKER}\ntext\n```yaml\ndestinations: []\n```\n"),
        format!("{README_MARKER}\n```yaml\ndestinations: []\n"),
    ] {
        assert!(readme_example(&bad).is_err(), "{bad}");
    }
}

/// Without `queue_budget_mb` the budget is 16 MiB, or 40 KiB per destination from 410 on;
/// a budget written down is the budget, whatever the destinations.
#[test]
fn the_default_queue_budget_grows_with_the_destinations_and_a_written_one_wins() {
    let file = |destinations: usize, budget: &str| {
        let mut yaml = format!("{budget}destinations:\n");
        for id in 1..=destinations {
            yaml += &format!(
                "  - {{ id: {id}, url: https://a.example, client_id: a, user_dpid: 1, segments: {{1: 1}} }}\n"
            );
        }
        parse(&yaml).unwrap().queue_budget_bytes
    };
    assert_eq!(file(1, ""), 16 << 20);
    assert_eq!(file(409, ""), 16 << 20);
    assert_eq!(file(1_000, ""), 1_000 * (40 << 10));
    assert_eq!(file(1_000, "queue_budget_mb: 16\n"), 16 << 20);
    assert_eq!(file(1, "queue_budget_mb: 64\n"), 64 << 20);
}

/// The README's `kafka:` and `defaults:` blocks show the values a file without them gets, so a
/// reader can take them for the defaults.
#[test]
fn the_readme_example_shows_the_built_in_defaults() {
    let readme = parse(readme_example(include_str!("../../../../README.md")).unwrap()).unwrap();
    let bare = parse(
        "destinations:\n  - { id: 423, url: https://a.example, client_id: a, user_dpid: 1, segments: {1: 1} }\n",
    )
    .unwrap();
    assert_eq!(readme.kafka, bare.kafka);
    assert_eq!(readme.queue_budget_bytes, bare.queue_budget_bytes);
    assert_eq!(bare.queue_budget_bytes, 16 << 20);
    let (shown, built_in) = (&readme.destinations[0], &bare.destinations[0]);
    assert_eq!(
        (shown.timeout, shown.retries, shown.retry_backoff),
        (built_in.timeout, built_in.retries, built_in.retry_backoff)
    );
    assert_eq!(
        (&shown.success_codes, &shown.permanent_codes),
        (&built_in.success_codes, &built_in.permanent_codes)
    );
    assert_eq!(
        (shown.backoff, shown.max_backlog_age, shown.batch),
        (built_in.backoff, built_in.max_backlog_age, built_in.batch)
    );
    assert_eq!(
        (
            shown.max_in_flight,
            shown.queue_capacity,
            shown.detach_after
        ),
        (
            built_in.max_in_flight,
            built_in.queue_capacity,
            built_in.detach_after
        )
    );
    assert_eq!(
        (shown.circuit, shown.delivery_log),
        (built_in.circuit, built_in.delivery_log)
    );
    assert_eq!(
        (
            shown.dangerous_allow_http,
            shown.rate_limit_rps,
            shown.gzip,
            shown.backfill
        ),
        (
            built_in.dangerous_allow_http,
            built_in.rate_limit_rps,
            built_in.gzip,
            built_in.backfill
        )
    );
}

#[test]
fn every_problem_is_reported_with_file_key_and_fix() {
    let error = parse(
        r#"
queue_budget_mb: 0
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
        "destinations[0].url: must be https (set `dangerous_allow_http: true` on the destination to allow plain http, for tests only), got `http://partner.example.com/aam`",
        "destinations[0].client_id: required",
        "destinations[0].segments: `x` is not one of our segment ids",
        "destinations[0].segments.2: the partner's Segment_ID must not be empty",
        "destinations[0].timeout_ms: must be between 1 and 600000 ms, got 0",
        "destinations[0].auth.hmac.key_env: environment variable `MISSING` is not set or empty",
        "destinations[0].auth.hmac.algorithm: must be md5, sha1 or sha256, got `sha512`",
        "destinations[1].id: 1 is already the id of destinations[0]",
        "destinations[1].success_codes: must list HTTP statuses",
        "queue_budget_mb: must be between 1 and 65536 (MiB), got 0",
    ] {
        assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
    }
    assert_eq!(error.problems.len(), 10, "{text}");
}

#[test]
fn two_of_our_segments_behind_one_partner_segment_id_are_refused_naming_both() {
    let error = parse(
        "destinations:\n  - { id: 423, name: acme-dsp, url: https://a.example, client_id: a, user_dpid: 1, segments: { 14356: \"14356\", 12176: \"99\", 500: \"99\", 501: 99 } }\n  - { id: 424, url: https://b.example, client_id: b, user_dpid: 1, segments: { 1: \"99\", 2: \"x\" }, auth: { oauth2: { token_url: https://b.example/t, client_id: c, client_secret_env: OAUTH_SECRET } } }\n  - { id: 425, url: https://c.example, client_id: c, user_dpid: 1, segments: { 7: \"s\", 8: \"s\" } }\n",
    )
    .unwrap_err();
    let fix = "map each Segment_ID from one segment of ours";
    assert_eq!(error.problems.len(), 2, "{error}");
    for (problem, expected) in error.problems.iter().zip([
        "destinations[0].segments: our segments 500, 501 and 12176 all map to the partner's Segment_ID `99` in destination 423 (acme-dsp), so",
        "destinations[2].segments: our segments 7 and 8 both map to the partner's Segment_ID `s` in destination 425, so",
    ]) {
        assert!(
            problem.starts_with(expected) && problem.contains(fix),
            "{problem}"
        );
    }
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
        "destinations:\n  - { id: 1, url: http://127.0.0.1:9/x, dangerous_allow_http: true, client_id: a, user_dpid: 1, segments: {1: 1} }\n",
    )
    .unwrap();
    assert_eq!(config.destinations[0].url.scheme(), "http");
    assert!(config.destinations[0].dangerous_allow_http);
}

#[test]
fn the_old_allow_insecure_http_key_is_refused_naming_its_new_name() {
    for value in ["true", "false"] {
        let error = parse(&format!(
            "destinations:\n  - {{ id: 1, url: https://a.example, allow_insecure_http: {value}, client_id: a, user_dpid: 1, segments: {{1: 1}} }}\n"
        ))
        .unwrap_err();
        assert_eq!(error.problems.len(), 1, "{error}");
        assert!(
            error.problems[0].starts_with(
                "destinations[0].allow_insecure_http: this key was renamed to `dangerous_allow_http`"
            ),
            "{error}"
        );
    }
}

#[test]
fn the_token_endpoint_must_be_https_too_unless_the_destination_allows_http() {
    let oauth = |url: &str, extra: &str| {
        format!(
            "destinations:\n  - {{ id: 1, url: {url}, client_id: a, user_dpid: 1, segments: {{1: 1}}{extra}, auth: {{ oauth2: {{ token_url: http://idp.example/token, client_id: c, client_secret_env: OAUTH_SECRET }} }} }}\n"
        )
    };
    let error = parse(&oauth("https://a.example", "")).unwrap_err();
    assert_eq!(
        error.problems,
        [
            "destinations[0].auth.oauth2.token_url: must be https (set `dangerous_allow_http: true` on the destination to allow plain http, for tests only), got `http://idp.example/token`"
        ]
    );
    let error = parse(
        &oauth("https://a.example", "").replace("http://idp.example/token", "ftp://idp.example/t"),
    )
    .unwrap_err();
    assert!(
        error.problems[0].contains("token_url: must be an https URL"),
        "{error}"
    );
    let config = parse(&oauth("http://a.example", ", dangerous_allow_http: true")).unwrap();
    let AuthConfig::OAuth2(oauth) = &config.destinations[0].auth else {
        panic!("oauth2 expected")
    };
    assert_eq!(oauth.token_url.scheme(), "http");
}

#[test]
fn urls_with_credentials_are_refused_without_printing_them() {
    let error = parse(
        "destinations:\n  - { id: 1, url: \"https://relay:pa55word@a.example/in\", client_id: a, user_dpid: 1, segments: {1: 1}, auth: { oauth2: { token_url: \"https://relay:t0ken@idp.example/token\", client_id: c, client_secret_env: OAUTH_SECRET } } }\n",
    )
    .unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("destinations[0].url: must not contain a user name or password, got `https://a.example/in`"),
        "{text}"
    );
    assert!(
        text.contains("destinations[0].auth.oauth2.token_url: must not contain a user name or password, got `https://idp.example/token`"),
        "{text}"
    );
    assert!(
        !text.contains("pa55word") && !text.contains("t0ken"),
        "{text}"
    );
}

#[test]
fn secrets_never_appear_in_debug_output_or_config_errors() {
    let env = |name: &str| match name {
        "KEY" => Some("hmac-current-9f8e7d".to_owned()),
        "OLD_KEY" => Some("hmac-previous-6c5b4a".to_owned()),
        "SECRET" => Some("client-secret-3d2c1b".to_owned()),
        _ => None,
    };
    let good = "destinations:\n  - { id: 1, url: https://a.example, client_id: a, user_dpid: 1, segments: {1: 1}, auth: { hmac: { key_env: KEY, previous_key_env: OLD_KEY } } }\n  - { id: 2, url: https://b.example, client_id: b, user_dpid: 1, segments: {1: 1}, auth: { oauth2: { token_url: https://idp.example/t, client_id: c, client_secret_env: SECRET } } }\n";
    let config = DeliveryConfig::parse(Path::new("d.yaml"), good, &env).unwrap();
    let secrets = [
        "hmac-current-9f8e7d",
        "hmac-previous-6c5b4a",
        "client-secret-3d2c1b",
    ];
    let debug = format!("{config:?} {:#?}", config.destinations);
    for secret in secrets {
        assert!(!debug.contains(secret), "{secret} in {debug}");
    }
    // Every other problem of the same destinations: the errors name keys, never values.
    let bad = good
        .replace("https://a.example", "http://a.example")
        .replace("segments: {1: 1}", "segments: {x: 1}");
    let error = DeliveryConfig::parse(Path::new("d.yaml"), &bad, &env).unwrap_err();
    assert!(error.problems.len() >= 3, "{error}");
    let text = format!("{error} {error:?}");
    for secret in secrets {
        assert!(!text.contains(secret), "{secret} in {text}");
    }
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

#[test]
fn a_secret_written_inline_by_mistake_is_not_echoed_by_the_parse_error() {
    // `key:` is not a key of delivery's hmac (secrets come from `key_env`/`key_file`), but
    // partner-sim accepts it, so an operator may well write it.
    let error = parse(
        "destinations:\n  - { id: 1, url: https://a.example, client_id: a, user_dpid: 1, segments: {1: 1}, auth: { hmac: { key: inline-hmac-secret-5f4e } } }\n",
    )
    .unwrap_err();
    let text = format!("{error} {error:?}");
    assert!(
        text.contains("destinations.yaml: invalid configuration"),
        "{text}"
    );
    assert!(
        text.contains("line 2") && text.contains("unknown field `key`"),
        "{text}"
    );
    assert!(!text.contains("inline-hmac-secret-5f4e"), "{text}");
}

#[test]
fn backfill_is_off_unless_a_destination_asks_for_it() {
    let config = parse(
        "destinations:\n  - { id: 1, url: https://a.example, client_id: a, user_dpid: 1, segments: {1: 1}, backfill: true }\n  - { id: 2, url: https://b.example, client_id: b, user_dpid: 1, segments: {1: 1} }\n",
    )
    .unwrap();
    assert!(config.destinations[0].backfill);
    assert!(!config.destinations[1].backfill);
    let error = parse(
        "destinations:\n  - { id: 1, url: https://a.example, client_id: a, user_dpid: 1, segments: {1: 1}, backfill: yes please }\n",
    )
    .unwrap_err();
    assert!(
        error.to_string().contains("invalid boolean at line 2"),
        "{error}"
    );
}
