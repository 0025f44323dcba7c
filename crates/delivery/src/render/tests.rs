//! `render` against the config and the updates a test controls: the signature it prints is
//! the signature of the body it prints, an unmapped update renders nothing, an OAuth
//! destination shows the placeholder and never a secret, and the batch limits split requests
//! as the service's batcher does.

use std::path::Path;

use model::SegmentStatusUpdate;

use super::{
    BEARER_PLACEHOLDER, RenderError, RenderedRequest, SourcedUpdate, parse_updates, render,
};
use crate::auth::sign;
use crate::config::{DeliveryConfig, HmacAlgorithm};

/// 2016-07-27T16:17:22Z.
const T0: i64 = 1_469_636_242_000;

const HMAC_KEY: &str = "render-test-key";
const OAUTH_SECRET: &str = "render-test-oauth-s3cret";

fn config(extra: &str) -> DeliveryConfig {
    let yaml = format!(
        "destinations:\n\
         \x20 - {{ id: 423, name: acme, url: \"https://partner.example.com:8443/aam\", client_id: \"74323\", user_dpid: 20915, segments: {{ 14356: \"14356\", 12176: \"99\" }}, auth: {{ hmac: {{ key_env: KEY, algorithm: sha1 }} }}{extra} }}\n\
         \x20 - {{ id: 500, url: \"https://other.example.com/in\", client_id: \"1\", user_dpid: 1, segments: {{ 777: \"7\" }}, auth: {{ oauth2: {{ token_url: \"https://idp.example.com/token\", client_id: relay, client_secret_env: SECRET }} }} }}\n"
    );
    let env = |name: &str| match name {
        "KEY" => Some(HMAC_KEY.to_owned()),
        "SECRET" => Some(OAUTH_SECRET.to_owned()),
        _ => None,
    };
    DeliveryConfig::parse(Path::new("render.yaml"), &yaml, &env).unwrap()
}

fn updates(json: &str) -> Vec<SourcedUpdate> {
    parse_updates(json, "test", T0)
        .unwrap()
        .into_iter()
        .map(|update| SourcedUpdate {
            update,
            position: None,
        })
        .collect()
}

fn one_update(user: &str, segment: u64) -> String {
    format!(
        r#"{{"user_id":"{user}","changes":[{{"segment_id":{segment},"status":"ACTIVE","reason":"QUALIFIED","time_unix_ms":{T0}}}]}}"#
    )
}

/// The printed request split back into its header lines and its body, as a reader of the
/// output would.
fn printed(request: &RenderedRequest) -> (Vec<(String, String)>, String) {
    let text = request.to_string();
    let (head, body) = text
        .split_once("\n\n")
        .expect("a blank line before the body");
    let headers = head
        .lines()
        .skip(1)
        .map(|line| {
            let (name, value) = line.split_once(": ").expect("`name: value`");
            (name.to_owned(), value.to_owned())
        })
        .collect();
    (headers, body.to_owned())
}

#[test]
fn the_printed_signature_is_the_hmac_of_the_printed_body_and_a_tampered_body_does_not_verify() {
    let rendering = render(
        &config(""),
        423,
        "dlq",
        updates(&one_update("u1", 14356)),
        T0,
    )
    .unwrap();
    assert_eq!(rendering.requests.len(), 1);
    let request = &rendering.requests[0];
    let text = request.to_string();
    assert!(
        text.starts_with("POST https://partner.example.com:8443/aam\n"),
        "{text}"
    );
    let (headers, body) = printed(request);
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("no `{name}` header in:\n{text}"))
    };
    assert_eq!(
        header("x-signature"),
        sign(HmacAlgorithm::Sha1, HMAC_KEY.as_bytes(), body.as_bytes())
    );
    let tampered = body.replacen("14356", "14357", 1);
    assert_ne!(tampered, body);
    assert_ne!(
        header("x-signature"),
        sign(
            HmacAlgorithm::Sha1,
            HMAC_KEY.as_bytes(),
            tampered.as_bytes()
        ),
        "a changed body must not verify"
    );
    assert_eq!(header("content-type"), "application/json");
    assert_eq!(header("host"), "partner.example.com:8443");
    assert_eq!(header("content-length"), body.len().to_string());
    assert_eq!(header("idempotency-key").len(), 32);
    // The body is the contract's, with ProcessTime now.
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["AAM_Destination_Id"], "423");
    assert_eq!(json["ProcessTime"], "Wed Jul 27 16:17:22 UTC 2016");
    assert_eq!(json["Users"][0]["Segments"][0]["Segment_ID"], "14356");
    assert!(!text.contains(HMAC_KEY));
}

#[test]
fn an_update_the_destination_does_not_map_renders_nothing_and_says_so() {
    let rendering = render(&config(""), 423, "dlq", updates(&one_update("u1", 777)), T0).unwrap();
    assert!(rendering.requests.is_empty());
    assert_eq!(rendering.not_sent.len(), 1);
    assert!(
        rendering.not_sent[0]
            .contains("update of user u1: none of its segments is mapped by destination 423"),
        "{:?}",
        rendering.not_sent
    );
    // The other destination maps it.
    let rendering = render(&config(""), 500, "dlq", updates(&one_update("u1", 777)), T0).unwrap();
    assert_eq!(rendering.requests.len(), 1);
}

#[test]
fn oauth_shows_the_placeholder_and_never_a_secret() {
    let rendering = render(&config(""), 500, "dlq", updates(&one_update("u1", 777)), T0).unwrap();
    let request = &rendering.requests[0];
    assert_eq!(request.header("authorization"), Some(BEARER_PLACEHOLDER));
    assert_eq!(BEARER_PLACEHOLDER, "Bearer <fetched at send time>");
    let text = format!("{request}{request:?}");
    assert!(!text.contains(OAUTH_SECRET), "{text}");
    assert!(!text.contains("x-signature"), "{text}");
}

#[test]
fn the_batch_limits_split_the_requests_as_the_batcher_does() {
    let json = [
        one_update("u1", 14356),
        one_update("u2", 14356),
        one_update("u1", 12176),
    ]
    .join("\n");
    let rendering = render(
        &config(", batch: { max_users: 1 }"),
        423,
        "dlq",
        updates(&json),
        T0,
    )
    .unwrap();
    let users: Vec<_> = rendering
        .requests
        .iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            body["Users"]
                .as_array()
                .unwrap()
                .iter()
                .map(|u| u["AAM_UUID"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    // One user per request, in order: u1's second change comes after u2's, in a third.
    assert_eq!(users, [["u1"], ["u2"], ["u1"]]);
    // Every request signs its own body.
    for request in &rendering.requests {
        assert_eq!(
            request.header("x-signature"),
            Some(sign(HmacAlgorithm::Sha1, HMAC_KEY.as_bytes(), &request.body).as_str())
        );
    }
}

#[test]
fn gzip_shows_the_signed_json_and_the_compressed_length() {
    let rendering = render(
        &config(", gzip: true"),
        423,
        "dlq",
        updates(&one_update("u1", 14356)),
        T0,
    )
    .unwrap();
    let request = &rendering.requests[0];
    assert_eq!(request.header("content-encoding"), Some("gzip"));
    let sent = crate::sender::gzip(&request.body).len();
    assert_eq!(
        request.header("content-length"),
        Some(sent.to_string().as_str())
    );
    assert!(request.body.starts_with(b"{\"ProcessTime\""));
}

#[test]
fn a_topic_position_goes_into_the_idempotency_key_as_the_service_s() {
    let update = parse_updates(&one_update("u1", 14356), "test", T0)
        .unwrap()
        .remove(0);
    let at = |offset| SourcedUpdate {
        update: update.clone(),
        position: Some((0, offset)),
    };
    let key = |input: Vec<SourcedUpdate>| {
        render(&config(""), 423, "status", input, T0)
            .unwrap()
            .requests[0]
            .header("idempotency-key")
            .unwrap()
            .to_owned()
    };
    assert_eq!(key(vec![at(5)]), key(vec![at(5)]));
    assert_ne!(key(vec![at(5)]), key(vec![at(6)]));
}

#[test]
fn an_unknown_destination_lists_the_configured_ids() {
    let error = render(&config(""), 99, "dlq", Vec::new(), T0).unwrap_err();
    assert!(matches!(error, RenderError::UnknownDestination { .. }));
    assert_eq!(
        error.to_string(),
        "--destination 99: no destination with this id in the config; its ids are 423, 500"
    );
}

#[test]
fn json_comes_as_lines_or_as_an_array_with_every_field_of_the_proto() {
    let line = r#"{"user_id":"u1","regions":[3,7],"partner_ids":[{"data_partner_id":1234,"partner_uuids":["p1","p2"]}],"changes":[{"segment_id":14356,"status":"INACTIVE","reason":"TTL","time_unix_ms":5}],"origin":"BATCH","produced_unix_ms":9,"sequence":42}"#;
    let from_lines = parse_updates(&format!("{line}\n\n{line}\n"), "test", T0).unwrap();
    let from_array = parse_updates(&format!("[\n{line},\n{line}\n]"), "test", T0).unwrap();
    assert_eq!(from_lines, from_array);
    assert_eq!(from_lines.len(), 2);
    let update: &SegmentStatusUpdate = &from_lines[0];
    assert_eq!(update.regions, [3, 7]);
    assert_eq!(update.partner_ids[0].partner_uuids, ["p1", "p2"]);
    assert_eq!(update.changes[0].status(), model::SegmentStatus::Inactive);
    assert_eq!(update.changes[0].reason(), model::ChangeReason::Ttl);
    assert_eq!(update.origin(), model::Origin::Batch);
    assert_eq!((update.produced_unix_ms, update.sequence), (9, 42));
}

#[test]
fn invalid_json_names_the_line() {
    let good = one_update("u1", 14356);
    let error = parse_updates(
        &format!("{good}\n{good}\n{{\"user_id\": \"u3\", \"changes\": [}}\n"),
        "stdin",
        T0,
    )
    .unwrap_err()
    .to_string();
    assert!(error.starts_with("stdin: line 3, column "), "{error}");

    let bad_status = good.replace("ACTIVE", "ON");
    let error = parse_updates(&format!("{good}\n{bad_status}"), "stdin", T0)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("stdin: line 2, column ")
            && error.contains(r#"status must be one of "ACTIVE", "INACTIVE", got "ON""#),
        "{error}"
    );

    let error = parse_updates(
        &format!("{good}\n{}", good.replace("\"reason\"", "\"raeson\"")),
        "in.json",
        T0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        error.contains("line 2") && error.contains("unknown field `raeson`"),
        "{error}"
    );

    let error = parse_updates(
        &format!("{good}\n\n{}", r#"{"user_id":"","changes":[]}"#),
        "stdin",
        T0,
    )
    .unwrap_err()
    .to_string();
    assert_eq!(
        error,
        "stdin: update 2 (line 3): user_id is empty; delivery would dead-letter it as undecodable"
    );
}
