//! URLs, secrets and auth of a destination: https-only URLs without credentials, secrets
//! from `*_env` or `*_file`, and the `hmac` and `oauth2` blocks.

use std::path::Path;

use telemetry::Secret;

use super::raw::{RawHmac, RawOauth};
use super::{HmacAlgorithm, HmacConfig, OAuthConfig, Problems, Sources};

/// An `https://` URL, or `http://` when the destination sets `dangerous_allow_http`. A URL
/// must not carry credentials (`https://user:password@…`): they would bypass `auth` and the
/// secret handling, and reach logs and error messages with the URL. Error messages print the
/// URL without them.
pub(super) fn parse_url(
    key: &str,
    url: Option<&str>,
    dangerous_allow_http: bool,
    problems: &mut Problems,
) -> reqwest::Url {
    let fallback =
        || reqwest::Url::parse("https://invalid.invalid/").unwrap_or_else(|_| unreachable!());
    let Some(text) = url else {
        problems.add(key, "required (example: `https://partner.example.com/aam`)");
        return fallback();
    };
    let url = match reqwest::Url::parse(text) {
        Ok(url) => url,
        Err(e) => {
            // The text itself is not echoed: an unparsable URL may still hold a password.
            problems.add(
                key,
                format!("not a URL ({e}); example: `https://partner.example.com/aam`"),
            );
            return fallback();
        }
    };
    if !url.username().is_empty() || url.password().is_some() {
        problems.add(
            key,
            format!(
                "must not contain a user name or password, got `{}`; put credentials in `auth` (from `*_env` or `*_file`)",
                without_credentials(&url)
            ),
        );
        return fallback();
    }
    match url.scheme() {
        "https" => url,
        "http" if dangerous_allow_http => url,
        "http" => {
            problems.add(
                key,
                format!(
                    "must be https (set `dangerous_allow_http: true` on the destination to allow plain http, for tests only), got `{url}`"
                ),
            );
            fallback()
        }
        _ => {
            problems.add(key, format!("must be an https URL, got `{url}`"));
            fallback()
        }
    }
}

fn without_credentials(url: &reqwest::Url) -> reqwest::Url {
    let mut url = url.clone();
    // Only URLs that cannot have credentials refuse these, and those have none to remove.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url
}

/// A secret from `<name>_env` (an environment variable) or `<name>_file` (a file, e.g. a
/// Kubernetes secret mount; a trailing newline is dropped).
fn secret(
    key: &str,
    name: &str,
    from_env: Option<&str>,
    from_file: Option<&Path>,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> Option<Secret> {
    match (from_env, from_file) {
        (Some(_), Some(_)) => {
            problems.add(
                &format!("{key}.{name}_env"),
                format!("set either `{name}_env` or `{name}_file`, not both"),
            );
            None
        }
        (Some(var), None) => match (sources.env)(var).filter(|v| !v.is_empty()) {
            Some(value) => Some(Secret::new(value)),
            None => {
                problems.add(
                    &format!("{key}.{name}_env"),
                    format!("environment variable `{var}` is not set or empty"),
                );
                None
            }
        },
        (None, Some(path)) => match sources.files.read(path).map(String::from_utf8) {
            Ok(Ok(value)) if !value.trim().is_empty() => {
                Some(Secret::new(value.trim_end_matches(['\r', '\n'])))
            }
            Ok(Err(_)) => {
                problems.add(
                    &format!("{key}.{name}_file"),
                    format!("`{}` is not UTF-8 text", path.display()),
                );
                None
            }
            Ok(Ok(_)) => {
                problems.add(
                    &format!("{key}.{name}_file"),
                    format!("`{}` is empty", path.display()),
                );
                None
            }
            Err(e) => {
                problems.add(
                    &format!("{key}.{name}_file"),
                    format!("cannot read `{}`: {e}", path.display()),
                );
                None
            }
        },
        (None, None) => None,
    }
}

pub(super) fn validate_hmac(
    key: &str,
    raw: RawHmac,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> HmacConfig {
    let signing_key = secret(
        key,
        "key",
        raw.key_env.as_deref(),
        raw.key_file.as_deref(),
        sources,
        problems,
    );
    if signing_key.is_none() && raw.key_env.is_none() && raw.key_file.is_none() {
        problems.add(
            &format!("{key}.key_env"),
            "required: the environment variable (or `key_file`) holding the shared secret key",
        );
    }
    let algorithm = match raw
        .algorithm
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("sha256") => HmacAlgorithm::Sha256,
        Some("sha1") => HmacAlgorithm::Sha1,
        Some("md5") => HmacAlgorithm::Md5,
        Some(other) => {
            problems.add(
                &format!("{key}.algorithm"),
                format!("must be md5, sha1 or sha256, got `{other}`"),
            );
            HmacAlgorithm::Sha256
        }
    };
    let header = raw.header.unwrap_or_else(|| "X-Signature".to_owned());
    check_header_name(&format!("{key}.header"), &header, problems);
    let previous_key = secret(
        key,
        "previous_key",
        raw.previous_key_env.as_deref(),
        raw.previous_key_file.as_deref(),
        sources,
        problems,
    );
    let previous = match (previous_key, raw.previous_header) {
        (Some(previous_key), header) => {
            let header = header.unwrap_or_else(|| "X-Signature-Previous".to_owned());
            check_header_name(&format!("{key}.previous_header"), &header, problems);
            Some((previous_key, header))
        }
        (None, Some(_)) => {
            if raw.previous_key_env.is_none() && raw.previous_key_file.is_none() {
                problems.add(
                    &format!("{key}.previous_header"),
                    "set only with `previous_key_env` or `previous_key_file`",
                );
            }
            None
        }
        (None, None) => None,
    };
    HmacConfig {
        key: signing_key.unwrap_or_else(|| Secret::new("")),
        header,
        algorithm,
        previous,
    }
}

fn check_header_name(key: &str, header: &str, problems: &mut Problems) {
    if reqwest::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
        problems.add(key, format!("`{header}` is not a valid HTTP header name"));
    }
}

pub(super) fn validate_oauth(
    key: &str,
    raw: RawOauth,
    dangerous_allow_http: bool,
    sources: &mut Sources<'_>,
    problems: &mut Problems,
) -> OAuthConfig {
    let token_url = parse_url(
        &format!("{key}.token_url"),
        raw.token_url.as_deref(),
        dangerous_allow_http,
        problems,
    );
    let client_id = match (
        raw.client_id,
        secret(
            key,
            "client_id",
            raw.client_id_env.as_deref(),
            raw.client_id_file.as_deref(),
            sources,
            problems,
        ),
    ) {
        (Some(_), Some(_)) => {
            problems.add(
                &format!("{key}.client_id"),
                "set one of `client_id`, `client_id_env`, `client_id_file`",
            );
            String::new()
        }
        (Some(id), None) => id,
        (None, Some(id)) => id.expose().to_owned(),
        (None, None) => {
            if raw.client_id_env.is_none() && raw.client_id_file.is_none() {
                problems.add(
                    &format!("{key}.client_id"),
                    "required: `client_id`, `client_id_env` or `client_id_file`",
                );
            }
            String::new()
        }
    };
    let client_secret = secret(
        key,
        "client_secret",
        raw.client_secret_env.as_deref(),
        raw.client_secret_file.as_deref(),
        sources,
        problems,
    );
    if client_secret.is_none()
        && raw.client_secret_env.is_none()
        && raw.client_secret_file.is_none()
    {
        problems.add(&format!("{key}.client_secret_env"), "required: the environment variable (or `client_secret_file`) holding the client secret");
    }
    OAuthConfig {
        token_url,
        client_id,
        client_secret: client_secret.unwrap_or_else(|| Secret::new("")),
    }
}
