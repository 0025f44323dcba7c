//! Every check a partner makes of a data request before accepting it: method, content type,
//! idempotency key, gzip, the HMAC signature or OAuth bearer token, the body's contract.

use std::io::Read as _;

use axum::http::{HeaderMap, Method};

use super::{Endpoint, header};
use crate::auth::verify;
use crate::config::AuthConfig;
use crate::contract::{Rejection, Violation, check_body};

/// Every check a partner makes before accepting a request.
pub(super) fn check(
    endpoint: &Endpoint,
    method: &Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<crate::contract::ReceivedBody, Rejection> {
    let fail = |violation, detail: &str| Rejection {
        violation,
        detail: detail.to_owned(),
    };
    if method != Method::POST {
        return Err(fail(Violation::NotPost, "data must be POSTed"));
    }
    if header(headers, "content-type").map(|v| v.split(';').next().unwrap_or("").trim())
        != Some("application/json")
    {
        return Err(fail(
            Violation::BadContentType,
            "Content-Type must be application/json",
        ));
    }
    if header(headers, "idempotency-key").is_none_or(str::is_empty) {
        return Err(fail(
            Violation::MissingIdempotencyKey,
            "Idempotency-Key header missing",
        ));
    }
    let json: std::borrow::Cow<'_, [u8]> = if header(headers, "content-encoding") == Some("gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(body)
            .read_to_end(&mut out)
            .map_err(|_| fail(Violation::BadGzip, "body is not valid gzip"))?;
        out.into()
    } else {
        body.into()
    };
    match &endpoint.config.auth {
        Some(AuthConfig::Hmac(hmac)) => {
            let given = header(headers, &hmac.header)
                .ok_or_else(|| fail(Violation::MissingSignature, "signature header missing"))?;
            let key = endpoint.hmac_key.as_deref().unwrap_or_default();
            if !verify(hmac.algorithm, key, &json, given) {
                return Err(fail(
                    Violation::BadSignature,
                    "signature does not match the body",
                ));
            }
        }
        Some(AuthConfig::Oauth2(_)) => {
            endpoint
                .tokens
                .check(header(headers, "authorization"))
                .map_err(|v| fail(v, "bearer token missing, unknown or expired"))?;
        }
        None => {}
    }
    let received = check_body(&json)?;
    if let Some(expected) = endpoint.config.destination_id
        && received.destination_id != expected.to_string()
    {
        return Err(fail(
            Violation::WrongDestination,
            "AAM_Destination_Id is not this endpoint's",
        ));
    }
    Ok(received)
}
