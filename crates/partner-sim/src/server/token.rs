//! The client-credentials token endpoint of an OAuth endpoint: checks the client's
//! credentials and the form, issues a token, counts both outcomes.

use std::sync::PoisonError;
use std::time::Duration;

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::json;

use super::{Endpoint, Simulator, header};
use crate::config::AuthConfig;

/// The client-credentials token endpoint of an OAuth endpoint.
pub(super) fn token(
    sim: &Simulator,
    endpoint: &Endpoint,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Response {
    let Some(AuthConfig::Oauth2(oauth)) = &endpoint.config.auth else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let path = endpoint.config.path.as_str();
    let expected = base64::engine::general_purpose::STANDARD.encode(format!(
        "{}:{}",
        oauth.client_id,
        endpoint.oauth_secret.as_deref().unwrap_or_default()
    ));
    let problem = if method != Method::POST {
        Some((StatusCode::METHOD_NOT_ALLOWED, "POST the token request"))
    } else if header(headers, "authorization") != Some(&format!("Basic {expected}")) {
        Some((StatusCode::UNAUTHORIZED, "invalid client credentials"))
    } else if !header(headers, "content-type")
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"))
    {
        Some((
            StatusCode::BAD_REQUEST,
            "Content-Type must be application/x-www-form-urlencoded",
        ))
    } else if body != b"grant_type=client_credentials" {
        Some((
            StatusCode::BAD_REQUEST,
            "body must be grant_type=client_credentials",
        ))
    } else {
        None
    };
    let mut stats = endpoint
        .stats
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    stats.token_requests += 1;
    if let Some((status, error)) = problem {
        stats.token_rejected += 1;
        sim.metrics
            .token_requests
            .with_label_values(&[path, "rejected"])
            .inc();
        return (
            status,
            axum::Json(json!({"error": "invalid_request", "error_description": error})),
        )
            .into_response();
    }
    sim.metrics
        .token_requests
        .with_label_values(&[path, "issued"])
        .inc();
    let token = endpoint
        .tokens
        .issue(Duration::from_secs(oauth.token_ttl_s));
    axum::Json(
        json!({"access_token": token, "token_type": "bearer", "expires_in": oauth.token_ttl_s}),
    )
    .into_response()
}
