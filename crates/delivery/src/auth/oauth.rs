use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use prometheus::IntCounter;
use serde::Deserialize;
use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::config::OAuthConfig;

/// Why no token could be had. Never carries the secret, the token or the response body.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token request failed: {0}")]
    Request(String),
    #[error("token endpoint answered HTTP {0}")]
    Status(u16),
    #[error("token response is not a bearer token (token_type `{0}`)")]
    NotBearer(String),
    #[error("token response is not JSON with `access_token` and `token_type`")]
    BadResponse,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    token_type: String,
    expires_in: Option<u64>,
}

#[derive(Debug)]
struct CachedToken {
    value: Arc<str>,
    /// When to fetch a new one (ahead of `expires_in`); `None` = until the partner says 401.
    refresh_at: Option<Instant>,
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
        let response = self
            .client
            .post(self.config.token_url.clone())
            .header(reqwest::header::AUTHORIZATION, format!("Basic {basic}"))
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded;charset=UTF-8",
            )
            .body("grant_type=client_credentials")
            .timeout(self.timeout)
            .send()
            .await
            .map_err(|e| TokenError::Request(e.without_url().to_string()))?;
        let status = response.status();
        if !status.is_success() {
            return Err(TokenError::Status(status.as_u16()));
        }
        let body = response
            .bytes()
            .await
            .map_err(|e| TokenError::Request(e.without_url().to_string()))?;
        let token: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| TokenError::BadResponse)?;
        if !token.token_type.eq_ignore_ascii_case("bearer") {
            return Err(TokenError::NotBearer(token.token_type));
        }
        if token.access_token.is_empty() {
            return Err(TokenError::BadResponse);
        }
        // Refresh ahead of expiry: by a tenth of the lifetime, at most a minute.
        let refresh_at = token.expires_in.map(|secs| {
            let lifetime = Duration::from_secs(secs);
            Instant::now() + lifetime.saturating_sub((lifetime / 10).min(Duration::from_secs(60)))
        });
        Ok(CachedToken {
            value: Arc::from(token.access_token),
            refresh_at,
        })
    }
}
