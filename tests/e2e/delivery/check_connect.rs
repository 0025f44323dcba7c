//! `delivery check-config --connect`, the real binary against real HTTPS endpoints: one line
//! per destination, `ok` or the problem in plain words with the fix (a CA certificate served
//! as the server's, a certificate for another name, a closed port, an expired or untrusted
//! certificate, a token endpoint refusing our credentials), exit 1 on any problem, and not
//! one request sent to a partner. The running service's WARN on a TLS failure carries the same
//! plain words.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use testkit::receiver::{Receiver, Response, Tls};
use testkit::service::{binary, free_port};

use super::oauth::test_ca_bundle;
use super::{DeliveryTest, T0, change, destination, update};

const SECRET: &str = "check-connect-s3cret";

/// A destination entry for `url` trusting `ca_file`, with `extra` keys.
fn entry(id: u64, url: &str, ca_file: &Path, extra: &str) -> String {
    format!(
        "  - {{ id: {id}, url: \"{url}\", ca_file: \"{}\", client_id: \"74323\", user_dpid: 20915, \
         segments: {{ 14356: \"14356\" }}{extra} }}\n",
        ca_file.display()
    )
}

fn write_config(dir: &Path, entries: &[String]) -> PathBuf {
    let path = dir.join(format!("{}.yaml", testkit::unique_name("destinations")));
    std::fs::write(&path, format!("destinations:\n{}", entries.concat())).unwrap();
    path
}

async fn check_connect(config: &Path) -> (i32, String, String) {
    let Output {
        status,
        stdout,
        stderr,
    } = tokio::process::Command::new(binary("delivery"))
        .arg("check-config")
        .arg("--connect")
        .arg(config)
        .env("OAUTH_SECRET", SECRET)
        .output()
        .await
        .unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The line `destination <id> (…): …` of the output.
fn line_of(stdout: &str, id: u64) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with(&format!("destination {id} (")))
        .unwrap_or_else(|| panic!("no line for destination {id} in:\n{stdout}"))
}

#[tokio::test]
async fn check_connect_tells_each_destination_s_problem_in_plain_words_and_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = Receiver::start().await;
    let ca_as_server = Receiver::start_with(Tls::CaAsServer).await;
    let other_name = Receiver::start_with(Tls::OtherName("partner.example.com".into())).await;
    let expired = Receiver::start_with(Tls::Expired).await;
    let self_signed = Receiver::start_with(Tls::SelfSigned).await;
    // A token endpoint that issues tokens, and one that refuses our client credentials.
    let tokens = Receiver::start().await;
    tokens.respond_with(
        Response::status(200).json(r#"{"access_token":"tok-1","token_type":"bearer"}"#),
    );
    let refusing_tokens = Receiver::start().await;
    refusing_tokens.respond_with(Response::status(401).json(r#"{"error":"invalid_client"}"#));
    let oauth = |tokens: &Receiver| {
        format!(
            ", auth: {{ oauth2: {{ token_url: \"{}\", client_id: relay, client_secret_env: OAUTH_SECRET }} }}",
            tokens.url("/oauth2/token")
        )
    };
    let closed = format!("https://127.0.0.1:{}/aam", free_port());
    let config = write_config(
        dir.path(),
        &[
            entry(1, &good.url("/aam"), &good.ca_file(), ", name: acme"),
            entry(2, &ca_as_server.url("/aam"), &ca_as_server.ca_file(), ""),
            entry(3, &other_name.url("/aam"), &other_name.ca_file(), ""),
            entry(4, &closed, &good.ca_file(), ""),
            entry(5, &expired.url("/aam"), &expired.ca_file(), ""),
            entry(6, &self_signed.url("/aam"), &self_signed.ca_file(), ""),
            entry(
                7,
                &good.url("/aam"),
                &test_ca_bundle(&[&good, &tokens]),
                &oauth(&tokens),
            ),
            entry(
                8,
                &good.url("/aam"),
                &test_ca_bundle(&[&good, &refusing_tokens]),
                &oauth(&refusing_tokens),
            ),
        ],
    );

    let (code, stdout, stderr) = check_connect(&config).await;
    assert_eq!(code, 1, "a destination has a problem:\n{stdout}\n{stderr}");
    assert!(
        stdout.starts_with(&format!("{}: ok\n", config.display())),
        "{stdout}"
    );
    assert_eq!(line_of(&stdout, 1), "destination 1 (acme): ok");
    assert_eq!(
        line_of(&stdout, 7),
        format!("destination 7 ({}): ok", good.url("/aam"))
    );
    for (id, expected) in [
        (
            2,
            vec![
                "presents a CA certificate (basicConstraints CA:TRUE) as its own server certificate",
                "issue the server a certificate signed by it",
                "-addext subjectAltName=DNS:HOST -addext basicConstraints=CA:FALSE",
                "keep ca.pem as `ca_file`",
            ],
        ),
        (
            3,
            vec![
                "not for the host name in the url: we asked for `127.0.0.1`, the certificate is for `partner.example.com`",
            ],
        ),
        (
            4,
            vec![
                "connection refused: nothing listens on that host and port",
                "check the url's port",
            ],
        ),
        (
            5,
            vec![
                "the partner's certificate expired at 2021-01-01T00:00:00Z",
                "must renew it",
            ],
        ),
        (
            6,
            vec![
                "issued by a CA this machine does not trust",
                "set the destination's `ca_file`",
            ],
        ),
        (
            8,
            vec![
                "OAuth token endpoint: token endpoint answered HTTP 401",
                "check `client_id` and the secret in `client_secret_env`",
            ],
        ),
    ] {
        let line = line_of(&stdout, id);
        for fragment in expected {
            assert!(
                line.contains(fragment),
                "destination {id}: missing `{fragment}` in:\n{line}"
            );
        }
    }
    assert_eq!(
        stdout.lines().count(),
        9,
        "the file's line, then one per destination:\n{stdout}"
    );
    assert!(!format!("{stdout}{stderr}").contains(SECRET));

    // Nothing was sent to any partner; the token endpoints were asked for a token.
    for (name, receiver) in [
        ("good", &good),
        ("CA as server", &ca_as_server),
        ("other name", &other_name),
        ("expired", &expired),
        ("self-signed", &self_signed),
    ] {
        assert!(receiver.requests().is_empty(), "{name} received a request");
    }
    assert_eq!(tokens.requests().len(), 1);
    assert_eq!(tokens.requests()[0].path, "/oauth2/token");

    // All well: every line ok, exit 0.
    let config = write_config(
        dir.path(),
        &[
            entry(1, &good.url("/aam"), &good.ca_file(), ", name: acme"),
            entry(
                7,
                &good.url("/aam"),
                &test_ca_bundle(&[&good, &tokens]),
                &oauth(&tokens),
            ),
        ],
    );
    let (code, stdout, stderr) = check_connect(&config).await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert_eq!(line_of(&stdout, 1), "destination 1 (acme): ok");
    assert!(line_of(&stdout, 7).ends_with(": ok"), "{stdout}");
}

#[tokio::test]
async fn the_sender_s_warn_on_a_tls_failure_explains_it_in_plain_words() {
    let test = DeliveryTest::new(1).await;
    let ca_as_server = Receiver::start_with(Tls::CaAsServer).await;
    let config = test.config(&[destination(424, &ca_as_server, ", retry_backoff_ms: 5")]);
    let service = test.start(&config, &[("LOG_FORMAT", "json")]).await;
    test.produce(
        &test.topic,
        &[update("u1", &[], &[], vec![change(14356, true, T0)])],
    )
    .await;
    let explained = |log: &str| {
        log.lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|line| {
                line["level"] == "WARN"
                    && line["destination"] == 424
                    && line["message"] == "Request to partner failed."
                    && line["outcome"] == "tls"
            })
            .and_then(|line| line["explanation"].as_str().map(str::to_owned))
    };
    let explanation = testkit::wait_for(
        "the WARN of the refused handshake",
        Duration::from_secs(30),
        || async { explained(&service.log()) },
        Option::is_some,
    )
    .await
    .unwrap_or_default();
    assert!(
        explanation.contains(
            "presents a CA certificate (basicConstraints CA:TRUE) as its own server certificate"
        ),
        "{explanation}"
    );
    assert!(ca_as_server.requests().is_empty());
}
