//! The OAuth token source against its contract: which token responses are accepted or refused
//! (and that a refusal never echoes the secret), caching until shortly before expiry, and a
//! real token endpoint on a local socket.

use std::time::Duration;

use prometheus::IntCounter;
use telemetry::Secret;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

fn parse(body: &str) -> Result<TokenResponse, TokenError> {
    TokenResponse::parse("application/json", body.as_bytes())
}

#[test]
fn a_bearer_token_in_any_case_with_or_without_expiry() {
    assert_eq!(
        parse(r#"{"access_token":"abc.def-1","token_type":"Bearer","expires_in":3600}"#).unwrap(),
        TokenResponse {
            access_token: "abc.def-1".to_owned(),
            expires_in: Some(3600)
        }
    );
    assert_eq!(
        parse(r#"{"access_token":"t","token_type":"BEARER","scope":"x"}"#)
            .unwrap()
            .expires_in,
        None
    );
    assert_eq!(
        parse(r#"{"access_token":"t","token_type":"bearer","expires_in":"60"}"#)
            .unwrap()
            .expires_in,
        Some(60)
    );
}

#[test]
fn every_malformed_response_is_its_own_clear_error_without_the_body() {
    let cases: &[(&str, &str)] = &[
        (
            r#"{"token_type":"bearer"}"#,
            "token response has no `access_token` string",
        ),
        (
            r#"{"access_token":42,"token_type":"bearer"}"#,
            "no `access_token` string",
        ),
        (
            r#"{"access_token":"","token_type":"bearer"}"#,
            "token response has an empty `access_token`",
        ),
        (
            r#"{"access_token":"two words","token_type":"bearer"}"#,
            "characters not allowed in an HTTP header",
        ),
        (
            r#"{"access_token":"tok-secret-1"}"#,
            "token response has no `token_type` string (expected `bearer`)",
        ),
        (
            r#"{"access_token":"tok-secret-1","token_type":"mac"}"#,
            r#"not a bearer token: token_type "mac" (expected `bearer`)"#,
        ),
        (
            r#"{"access_token":"tok-secret-1","token_type":"bearer","expires_in":-5}"#,
            "`expires_in` is not a whole number",
        ),
        (
            r#"{"access_token":"tok-secret-1","token_type":"bearer","expires_in":[1]}"#,
            "`expires_in` is not a whole number",
        ),
        (
            "<html>tok-secret-1</html>",
            "token response is not a JSON object (content type `application/json`)",
        ),
        (r#"["tok-secret-1"]"#, "not a JSON object"),
        ("", "not a JSON object"),
    ];
    for (body, expected) in cases {
        let error = parse(body).expect_err(body).to_string();
        assert!(
            error.contains(expected),
            "{body}: `{error}` lacks `{expected}`"
        );
        assert!(!error.contains("tok-secret-1"), "{body}: {error}");
    }
}

#[test]
fn a_long_or_odd_token_type_is_shortened_in_the_message() {
    let error = parse(&format!(
        r#"{{"access_token":"t","token_type":"{}\n"}}"#,
        "x".repeat(100)
    ))
    .unwrap_err()
    .to_string();
    assert!(
        error.contains(&format!("\"{}…\"", "x".repeat(16))),
        "{error}"
    );
}

#[test]
fn an_expiry_beyond_the_clock_means_no_timed_refresh_instead_of_a_panic() {
    let now = Instant::now();
    assert_eq!(refresh_at(now, u64::MAX), None);
    assert_eq!(refresh_at(now, 3600), Some(now + Duration::from_secs(3540)));
    assert_eq!(refresh_at(now, 100), Some(now + Duration::from_secs(90)));
    assert_eq!(refresh_at(now, 0), Some(now));
}

/// A plain-HTTP token endpoint on loopback answering every request with `status`,
/// `content_type` and `body`; returns its URL and the requests it read.
async fn token_endpoint(
    status: u16,
    content_type: &'static str,
    body: String,
) -> (reqwest::Url, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = reqwest::Url::parse(&format!(
        "http://{}/oauth2/token",
        listener.local_addr().unwrap()
    ))
    .unwrap();
    let (requests, received) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else {
                return;
            };
            let mut request = Vec::new();
            let mut buffer = [0; 4096];
            // The token request is small: headers and `grant_type=client_credentials`.
            while !String::from_utf8_lossy(&request).ends_with("grant_type=client_credentials") {
                match socket.read(&mut buffer).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buffer[..n]),
                }
            }
            let _ = requests.send(String::from_utf8_lossy(&request).into_owned());
            let answer = format!(
                "HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(answer.as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    (url, received)
}

fn source(token_url: reqwest::Url) -> (OAuthTokenSource, IntCounter, IntCounter) {
    let (ok, failed) = (
        IntCounter::new("ok", "ok").unwrap(),
        IntCounter::new("failed", "failed").unwrap(),
    );
    let source = OAuthTokenSource::new(
        OAuthConfig {
            token_url,
            client_id: "relay".to_owned(),
            client_secret: Secret::new("client-secret-77"),
        },
        reqwest::Client::new(),
        Duration::from_secs(5),
        ok.clone(),
        failed.clone(),
    );
    (source, ok, failed)
}

#[tokio::test]
async fn a_good_answer_is_fetched_once_with_basic_auth_and_then_cached() {
    let (url, mut requests) = token_endpoint(
        200,
        "application/json",
        r#"{"access_token":"tok-1","token_type":"bearer","expires_in":3600}"#.to_owned(),
    )
    .await;
    let (source, ok, failed) = source(url);
    assert_eq!(&*source.token().await.unwrap(), "tok-1");
    assert_eq!(&*source.token().await.unwrap(), "tok-1");
    assert_eq!(
        (ok.get(), failed.get()),
        (1, 0),
        "one request, cached after"
    );
    let debug = format!("{source:?} {source:#?}");
    assert!(
        !debug.contains("tok-1") && !debug.contains("client-secret-77"),
        "{debug}"
    );
    let request = requests.recv().await.unwrap().to_ascii_lowercase();
    assert!(request.starts_with("post /oauth2/token "), "{request}");
    // base64("relay:client-secret-77")
    assert!(
        request.contains("authorization: basic cmvsyxk6y2xpzw50lxnly3jldc03nw=="),
        "{request}"
    );
}

#[tokio::test]
async fn a_bad_answer_is_an_error_counted_and_never_cached() {
    let cases = [
        (
            500,
            "application/json",
            r#"{"error":"server_error"}"#.to_owned(),
            "token endpoint answered HTTP 500",
        ),
        (
            401,
            "application/json",
            r#"{"error":"invalid_client"}"#.to_owned(),
            "token endpoint answered HTTP 401",
        ),
        (
            200,
            "text/html",
            "<h1>login</h1>".to_owned(),
            "not a JSON object (content type `text/html`)",
        ),
        (
            200,
            "application/json",
            r#"{"token_type":"bearer"}"#.to_owned(),
            "no `access_token`",
        ),
        (
            200,
            "application/json",
            r#"{"access_token":"","token_type":"bearer"}"#.to_owned(),
            "empty `access_token`",
        ),
        (
            200,
            "application/json",
            r#"{"access_token":"tok-9","token_type":"mac"}"#.to_owned(),
            "not a bearer token",
        ),
        (
            200,
            "application/json",
            r#"{"access_token":"tok-9","token_type":"bearer","expires_in":18446744073709551615}"#
                .to_owned(),
            "",
        ),
        (
            200,
            "application/json",
            format!(
                r#"{{"access_token":"{}","token_type":"bearer"}}"#,
                "a".repeat(70_000)
            ),
            "larger than 65536 bytes",
        ),
    ];
    for (status, content_type, body, expected) in cases {
        let (url, _requests) = token_endpoint(status, content_type, body.clone()).await;
        let (source, ok, failed) = source(url);
        if expected.is_empty() {
            // A lifetime beyond the clock is a good token, kept until a 401.
            assert_eq!(&*source.token().await.unwrap(), "tok-9");
            continue;
        }
        for attempt in 1..=2 {
            let error = source.token().await.expect_err(&body).to_string();
            assert!(
                error.contains(expected),
                "{body}: `{error}` lacks `{expected}`"
            );
            assert!(
                !error.contains("client-secret-77") && !error.contains("tok-9"),
                "{error}"
            );
            assert_eq!(
                (ok.get(), failed.get()),
                (0, attempt),
                "{body}: asked again, counted"
            );
        }
    }
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_request_error() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (source, _, failed) =
        source(reqwest::Url::parse(&format!("http://127.0.0.1:{port}/token")).unwrap());
    let error = source.token().await.unwrap_err();
    assert!(matches!(error, TokenError::Request(_)), "{error}");
    assert!(!error.to_string().contains("127.0.0.1"), "no URL: {error}");
    assert_eq!(failed.get(), 1);
}
