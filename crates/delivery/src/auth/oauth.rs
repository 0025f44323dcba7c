use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use prometheus::IntCounter;
use reqwest::header::HeaderValue;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::OAuthConfig;
use crate::sender::error_chain;

/// Why no token could be had. Never carries the secret, the token or the response body, so
/// it can be logged, dead-lettered and shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token request failed: {0}")]
    Request(String),
    #[error("token endpoint answered HTTP {0} (expected 200 with a bearer token)")]
    Status(u16),
    #[error("token response is not a JSON object (content type `{0}`)")]
    NotJson(String),
    #[error("token response has no `access_token` string")]
    MissingAccessToken,
    #[error("token response has an empty `access_token`")]
    EmptyAccessToken,
    #[error(
        "token response's `access_token` has characters not allowed in an HTTP header (visible ASCII only)"
    )]
    UnusableAccessToken,
    #[error("token response has no `token_type` string (expected `bearer`)")]
    MissingTokenType,
    #[error("token response is not a bearer token: token_type {0:?} (expected `bearer`)")]
    NotBearer(String),
    #[error("token response's `expires_in` is not a whole number of seconds")]
    BadExpiresIn,
    #[error("token response is larger than {} bytes", MAX_TOKEN_RESPONSE_BYTES)]
    TooLarge,
}

/// A successful token response (`spec/outbound-contract.md` §4): `access_token` and
/// `token_type` (`bearer`, any case) required, `expires_in` optional.
#[derive(Debug, PartialEq, Eq)]
struct TokenResponse {
    access_token: String,
    expires_in: Option<u64>,
}

impl TokenResponse {
    /// Checks a 2xx answer's body. Each way it can be wrong is its own error, naming the field
    /// but never quoting the body (it holds the token).
    fn parse(content_type: &str, body: &[u8]) -> Result<Self, TokenError> {
        let not_json = || TokenError::NotJson(printable(content_type, 64));
        let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(body) else {
            return Err(not_json());
        };
        let access_token = match fields.remove("access_token") {
            Some(serde_json::Value::String(token)) => token,
            _ => return Err(TokenError::MissingAccessToken),
        };
        if access_token.is_empty() {
            return Err(TokenError::EmptyAccessToken);
        }
        // It goes into `Authorization: Bearer …`; a value that header cannot carry would fail
        // every request later, with a less clear error.
        if !access_token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::UnusableAccessToken);
        }
        match fields.get("token_type") {
            Some(serde_json::Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
            Some(serde_json::Value::String(kind)) => {
                return Err(TokenError::NotBearer(printable(kind, 16)));
            }
            _ => return Err(TokenError::MissingTokenType),
        }
        let expires_in = match fields.get("expires_in") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::Number(n)) => Some(n.as_u64().ok_or(TokenError::BadExpiresIn)?),
            // Some servers send it as a string.
            Some(serde_json::Value::String(s)) => {
                Some(s.trim().parse().map_err(|_| TokenError::BadExpiresIn)?)
            }
            Some(_) => return Err(TokenError::BadExpiresIn),
        };
        Ok(Self {
            access_token,
            expires_in,
        })
    }
}

/// At most `max` characters of a value the token endpoint chose, for an error message.
fn printable(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect();
    if text.chars().count() > max {
        out.push('…');
    }
    out
}

struct CachedToken {
    value: Arc<str>,
    /// When to fetch a new one (ahead of `expires_in`); `None` = until the partner says 401.
    refresh_at: Option<Instant>,
}

/// The token is a bearer credential: `Debug` (of the token source, the sender, …) hides it.
impl std::fmt::Debug for CachedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedToken")
            .field("value", &"***")
            .field("refresh_at", &self.refresh_at)
            .finish()
    }
}

/// OAuth 2.0 client-credentials tokens for one destination: cached and shared by all its
/// requests, refreshed ahead of `expires_in`, fetched by one request at a time (the lock is
/// held while fetching, so concurrent callers wait for that one answer instead of asking too).
#[derive(Debug)]
pub struct OAuthTokenSource {
    config: OAuthConfig,
    client: reqwest::Client,
    timeout: Duration,
    cached: Mutex<Option<CachedToken>>,
    requests_ok: IntCounter,
    requests_failed: IntCounter,
}

impl OAuthTokenSource {
    pub fn new(
        config: OAuthConfig,
        client: reqwest::Client,
        timeout: Duration,
        requests_ok: IntCounter,
        requests_failed: IntCounter,
    ) -> Self {
        Self {
            config,
            client,
            timeout,
            cached: Mutex::new(None),
            requests_ok,
            requests_failed,
        }
    }

    /// A valid token: the cached one, or a new one.
    pub async fn token(&self) -> Result<Arc<str>, TokenError> {
        let mut cached = self.cached.lock().await;
        if let Some(token) = cached.as_ref()
            && token.refresh_at.is_none_or(|at| Instant::now() < at)
        {
            return Ok(token.value.clone());
        }
        let fetched = self.fetch().await;
        match &fetched {
            Ok(_) => self.requests_ok.inc(),
            Err(_) => self.requests_failed.inc(),
        }
        let token = fetched?;
        let value = token.value.clone();
        *cached = Some(token);
        Ok(value)
    }

    /// The partner refused `token` (401): drop it, unless another request already replaced it.
    pub async fn invalidate(&self, token: &Arc<str>) {
        let mut cached = self.cached.lock().await;
        if cached
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(&c.value, token))
        {
            *cached = None;
        }
    }

    async fn fetch(&self) -> Result<CachedToken, TokenError> {
        let basic = STANDARD.encode(format!(
            "{}:{}",
            self.config.client_id,
            self.config.client_secret.expose()
        ));
        let mut authorization = HeaderValue::from_str(&format!("Basic {basic}"))
            .map_err(|_| TokenError::Request("cannot build the Authorization header".into()))?;
        // Sensitive: the HTTP stack never prints it and HTTP/2 never indexes it.
        authorization.set_sensitive(true);
        let mut response = self
            .client
            .post(self.config.token_url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body("grant_type=client_credentials")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| TokenError::Request(error_chain(&e.without_url())))?;
        let status = response.status();
        if !status.is_success() {
            return Err(TokenError::Status(status.as_u16()));
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| TokenError::Request(error_chain(&e.without_url())))?
        {
            if body.len() + chunk.len() > MAX_TOKEN_RESPONSE_BYTES {
                return Err(TokenError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let token = TokenResponse::parse(&content_type, &body)?;
        Ok(CachedToken {
            value: Arc::from(token.access_token),
            refresh_at: token
                .expires_in
                .and_then(|secs| refresh_at(Instant::now(), secs)),
        })
    }
}

/// The largest token response read (a token is a few KiB at most).
const MAX_TOKEN_RESPONSE_BYTES: usize = 64 * 1024;

/// When to fetch a new token for one that expires `expires_in` seconds after `now`: a tenth
/// of its lifetime ahead, at most a minute ahead. `None` (until the partner answers 401) when
/// that lies beyond what the clock can represent.
fn refresh_at(now: Instant, expires_in: u64) -> Option<Instant> {
    let lifetime = Duration::from_secs(expires_in);
    now.checked_add(lifetime.saturating_sub((lifetime / 10).min(Duration::from_secs(60))))
}

#[cfg(test)]
mod tests {
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
            parse(r#"{"access_token":"abc.def-1","token_type":"Bearer","expires_in":3600}"#)
                .unwrap(),
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
                while !String::from_utf8_lossy(&request).ends_with("grant_type=client_credentials")
                {
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
            (500, "application/json", r#"{"error":"server_error"}"#.to_owned(), "token endpoint answered HTTP 500"),
            (401, "application/json", r#"{"error":"invalid_client"}"#.to_owned(), "token endpoint answered HTTP 401"),
            (200, "text/html", "<h1>login</h1>".to_owned(), "not a JSON object (content type `text/html`)"),
            (200, "application/json", r#"{"token_type":"bearer"}"#.to_owned(), "no `access_token`"),
            (200, "application/json", r#"{"access_token":"","token_type":"bearer"}"#.to_owned(), "empty `access_token`"),
            (200, "application/json", r#"{"access_token":"tok-9","token_type":"mac"}"#.to_owned(), "not a bearer token"),
            (200, "application/json", r#"{"access_token":"tok-9","token_type":"bearer","expires_in":18446744073709551615}"#.to_owned(), ""),
            (200, "application/json", format!(r#"{{"access_token":"{}","token_type":"bearer"}}"#, "a".repeat(70_000)), "larger than 65536 bytes"),
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
}
