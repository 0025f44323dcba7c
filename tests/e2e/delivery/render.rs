//! `delivery render`, the real binary: the requests it prints for updates given as JSON on
//! stdin carry a signature that verifies over the printed body with the configured key
//! (checked with the hmac crate directly), an OAuth destination shows a placeholder and no
//! secret, and an unmapped update prints nothing. Rendered from a topic position, the request
//! is the one the running service then sends the partner for that message: same headers, same
//! Idempotency-Key, same body but for `ProcessTime`.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use testkit::kafka;
use testkit::receiver::Receiver;
use testkit::service::binary;

use super::{DeliveryTest, T0, change, destination, update};

const KEY: &str = "render-e2e-key";
const SECRET: &str = "render-e2e-oauth-s3cret";

fn hmac_sha256(key: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()).unwrap();
    mac.update(body);
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// One printed request: the request line, the headers (name, value) and the body.
#[derive(Debug)]
struct Printed {
    request_line: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Printed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The requests of `render`'s stdout: head, blank line, body (one line), blank line between.
fn parse(stdout: &str) -> Vec<Printed> {
    let blocks: Vec<&str> = stdout.trim_end_matches('\n').split("\n\n").collect();
    assert!(
        blocks.len().is_multiple_of(2),
        "head and body in turn:\n{stdout}"
    );
    blocks
        .chunks(2)
        .map(|pair| {
            let mut lines = pair[0].lines();
            let request_line = lines.next().unwrap().to_owned();
            let headers = lines
                .map(|line| {
                    let (name, value) = line
                        .split_once(": ")
                        .unwrap_or_else(|| panic!("not a header: {line}"));
                    (name.to_owned(), value.to_owned())
                })
                .collect();
            Printed {
                request_line,
                headers,
                body: pair[1].to_owned(),
            }
        })
        .collect()
}

async fn render(config: &Path, args: &[&str], stdin: &str) -> (i32, String, String) {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new(binary("delivery"))
        .arg("--config")
        .arg(config)
        .arg("render")
        .args(args)
        .env("RENDER_KEY", KEY)
        .env("OAUTH_SECRET", SECRET)
        .env("KAFKA_BROKERS", &kafka::settings().brokers)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().await.unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

fn write_config(dir: &Path, destinations: &str) -> std::path::PathBuf {
    let path = dir.join("destinations.yaml");
    std::fs::write(&path, format!("destinations:\n{destinations}")).unwrap();
    path
}

#[tokio::test]
async fn render_prints_requests_whose_signature_verifies_and_an_oauth_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        "  - { id: 423, name: acme, url: \"https://partner.example.com/aam\", client_id: \"74323\", user_dpid: 20915, \
         segments: { 14356: \"14356\", 12176: \"99\" }, batch: { max_users: 2 }, auth: { hmac: { key_env: RENDER_KEY } } }\n\
         \x20 - { id: 500, url: \"https://other.example.com/in\", client_id: \"1\", user_dpid: 1, segments: { 777: \"7\" }, \
         auth: { oauth2: { token_url: \"https://idp.example.com/token\", client_id: relay, client_secret_env: OAUTH_SECRET } } }\n",
    );
    let stdin = [
        r#"{"user_id":"u1","regions":[7],"changes":[{"segment_id":14356,"status":"ACTIVE","reason":"QUALIFIED","time_unix_ms":1469636242000}]}"#,
        r#"{"user_id":"u2","changes":[{"segment_id":12176,"status":"INACTIVE","time_unix_ms":1469636242000}]}"#,
        r#"{"user_id":"u3","changes":[{"segment_id":14356,"status":"ACTIVE","time_unix_ms":1469636242000}]}"#,
        r#"{"user_id":"u4","changes":[{"segment_id":777,"status":"ACTIVE","time_unix_ms":1469636242000}]}"#,
    ]
    .join("\n");

    let (code, stdout, stderr) = render(&config, &["--destination", "423"], &stdin).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let requests = parse(&stdout);
    // max_users 2: u1 and u2, then u3; u4 is not mapped by 423.
    assert_eq!(requests.len(), 2, "{stdout}");
    for request in &requests {
        assert_eq!(request.request_line, "POST https://partner.example.com/aam");
        assert_eq!(
            request.header("x-signature"),
            Some(hmac_sha256(KEY, request.body.as_bytes()).as_str()),
            "the signature verifies over the printed body:\n{stdout}"
        );
        assert_ne!(
            request.header("x-signature"),
            Some(
                hmac_sha256(
                    KEY,
                    request
                        .body
                        .replace("u1", "u9")
                        .replace("u3", "u9")
                        .as_bytes()
                )
                .as_str()
            ),
            "a changed body does not verify"
        );
        assert_eq!(request.header("content-type"), Some("application/json"));
        assert_eq!(
            request.header("content-length"),
            Some(request.body.len().to_string().as_str())
        );
        assert!(request.header("idempotency-key").is_some());
        assert_eq!(request.header("authorization"), None);
    }
    let users = |request: &Printed| {
        let body: serde_json::Value = serde_json::from_str(&request.body).unwrap();
        body["Users"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u["AAM_UUID"].as_str().unwrap().to_owned())
            .collect::<Vec<_>>()
    };
    assert_eq!(users(&requests[0]), ["u1", "u2"]);
    assert_eq!(users(&requests[1]), ["u3"]);
    assert!(
        stderr.contains(
            "not sent: update of user u4: none of its segments is mapped by destination 423"
        ),
        "{stderr}"
    );
    assert!(!stdout.contains(KEY) && !stderr.contains(KEY));

    // The OAuth destination: a placeholder for the token, never the secret.
    let (code, stdout, stderr) = render(&config, &["--destination", "500"], &stdin).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let requests = parse(&stdout);
    assert_eq!(requests.len(), 1, "{stdout}");
    assert_eq!(
        requests[0].header("authorization"),
        Some("Bearer <fetched at send time>")
    );
    assert_eq!(users(&requests[0]), ["u4"]);
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));

    // Nothing mapped: nothing printed, and stderr says so.
    let (code, stdout, stderr) = render(
        &config,
        &["--destination", "500"],
        stdin.lines().next().unwrap(),
    )
    .await;
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout, "");
    assert!(
        stderr.contains("nothing would be sent to destination 500"),
        "{stderr}"
    );

    // An unknown destination lists the ids; invalid JSON names its line.
    let (code, _, stderr) = render(&config, &["--destination", "9"], &stdin).await;
    assert_eq!(code, 1);
    assert!(
        stderr.contains(
            "--destination 9: no destination with this id in the config; its ids are 423, 500"
        ),
        "{stderr}"
    );
    let broken = format!(
        "{stdin}\n{{\"user_id\": \"u5\", \"changes\": [{{\"segment_id\": 14356, \"status\": \"YES\"}}]}}\n"
    );
    let (code, stdout, stderr) = render(&config, &["--destination", "423"], &broken).await;
    assert_eq!(code, 1);
    assert_eq!(stdout, "");
    assert!(stderr.contains("stdin: line 5, column "), "{stderr}");
    assert!(
        stderr.contains(r#"status must be one of "ACTIVE", "INACTIVE", got "YES""#),
        "{stderr}"
    );
}

#[tokio::test]
async fn render_from_a_topic_position_prints_the_request_the_service_then_sends() {
    let test = DeliveryTest::new(1).await;
    let partner = Receiver::start().await;
    let config = test.config(&[destination(
        423,
        &partner,
        ", max_in_flight: 1, auth: { hmac: { key_env: RENDER_KEY } }",
    )]);
    let positions = test
        .produce(
            &test.topic,
            &[
                update("u0", &[], &[], vec![change(777, true, T0)]),
                update(
                    "u1",
                    &[6, 7],
                    &[],
                    vec![change(14356, true, T0), change(12176, false, T0)],
                ),
            ],
        )
        .await;
    let (partition, offset) = positions[1];

    let (code, stdout, stderr) = render(
        &config,
        &[
            "--destination",
            "423",
            "--topic",
            &test.topic,
            "--partition",
            &partition.to_string(),
            "--offset",
            &offset.to_string(),
        ],
        "",
    )
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let rendered = parse(&stdout);
    assert_eq!(rendered.len(), 1, "{stdout}");
    let rendered = &rendered[0];
    assert_eq!(
        rendered.request_line,
        format!("POST {}", partner.url("/aam"))
    );
    assert_eq!(
        rendered.header("x-signature"),
        Some(hmac_sha256(KEY, rendered.body.as_bytes()).as_str())
    );
    let body: serde_json::Value = serde_json::from_str(&rendered.body).unwrap();
    assert_eq!(body["Users"][0]["AAM_UUID"], "u1");
    assert_eq!(body["Users"][0]["Segments"][1]["Segment_ID"], "99");
    assert!(partner.requests().is_empty(), "render sends nothing");

    // The service sends what render printed: the same headers (but the signature, which
    // covers ProcessTime, and `host`, which HTTP/2 carries as `:authority`), the same
    // Idempotency-Key, the same body but for ProcessTime.
    let service = test.start(&config, &[("RENDER_KEY", KEY)]).await;
    let sent = partner.wait_for_requests(1, Duration::from_secs(30)).await;
    drop(service);
    let sent = &sent[0];
    assert_eq!(sent.method.as_str(), "POST");
    assert_eq!(sent.path, "/aam");
    for (name, value) in &rendered.headers {
        if name == "x-signature" || name == "host" {
            continue;
        }
        assert_eq!(
            sent.header(name),
            Some(value.as_str()),
            "header `{name}`: rendered `{value}`, sent {:?}",
            sent.header(name)
        );
    }
    let mut sent_names: Vec<_> = sent.headers.keys().map(|n| n.as_str().to_owned()).collect();
    let mut rendered_names: Vec<_> = rendered
        .headers
        .iter()
        .map(|(n, _)| n.clone())
        .filter(|n| n != "host")
        .collect();
    sent_names.sort();
    rendered_names.sort();
    assert_eq!(
        sent_names, rendered_names,
        "every header the partner got is printed"
    );
    let mut sent_body: serde_json::Value = serde_json::from_slice(&sent.body).unwrap();
    let mut rendered_body = body;
    sent_body["ProcessTime"] = serde_json::Value::Null;
    rendered_body["ProcessTime"] = serde_json::Value::Null;
    assert_eq!(sent_body, rendered_body);
    assert_eq!(
        sent.header("x-signature"),
        Some(hmac_sha256(KEY, &sent.body).as_str())
    );
}
