//! OAuth 2.0 client credentials: a destination's bearer token, fetched from its token
//! endpoint, cached until shortly before it expires, and refetched after a 401.

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

/// A successful token response (docs/PARTNER-CONTRACT.md#oauth-20-client-credentials):
/// `access_token` and `token_type` (`bearer`, any case) required, `expires_in` optional.
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
mod tests;
