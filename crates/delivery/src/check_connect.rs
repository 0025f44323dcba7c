//! `delivery check-config --connect`: what each destination's first request would meet on the
//! network, found without sending it. The url's host must resolve, its port accept a
//! connection, and the TLS handshake verify the partner's certificate with the trust the
//! sender uses ([`crate::tls`]); an OAuth destination's token endpoint must issue a token
//! (fetched with the sender's own token client). Every problem is told in plain words with
//! the fix ([`crate::tls_explain`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Url;
use rustls::pki_types::ServerName;
use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;

use crate::auth::{OAuthTokenSource, TokenError};
use crate::config::{AuthConfig, DeliveryConfig, DestinationConfig, OAuthConfig};
use crate::tls_explain::{DNS_FAILURE, explain_connect_error, explain_tls_error};

/// The verdict on one destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DestinationCheck {
    pub id: u64,
    /// The destination's name, or its url when it has none.
    pub label: String,
    /// What is wrong, each in plain words with the fix; empty when all is well.
    pub problems: Vec<String>,
}

impl DestinationCheck {
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// `destination <id> (<name or url>): ok`, or the problems, `; `-separated.
impl fmt::Display for DestinationCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "destination {} ({}): ", self.id, self.label)?;
        if self.is_ok() {
            f.write_str("ok")
        } else {
            f.write_str(&self.problems.join("; "))
        }
    }
}

/// Checks every destination at once; the verdicts come in the config's order.
pub async fn check_all(config: &DeliveryConfig) -> Vec<DestinationCheck> {
    let running: Vec<_> = config
        .destinations
        .iter()
        .map(|destination| {
            let destination = destination.clone();
            tokio::spawn(async move { check(&destination).await })
        })
        .collect();
    let mut checks = Vec::with_capacity(running.len());
    for (task, destination) in running.into_iter().zip(&config.destinations) {
        checks.push(task.await.unwrap_or_else(|error| DestinationCheck {
            id: destination.id,
            label: label(destination),
            problems: vec![format!("the check itself failed: {error}")],
        }));
    }
    checks
}

/// Checks one destination: its url, then its token endpoint if it uses OAuth.
pub async fn check(destination: &DestinationConfig) -> DestinationCheck {
    let mut problems = Vec::new();
    match crate::tls::handshake_config(destination) {
        Err(error) => problems.push(error.to_string()),
        Ok(tls) => {
            let tls = Arc::new(tls);
            if let Err(problem) = reach(&destination.url, &tls, destination.timeout).await {
                problems.push(problem);
            }
            if let AuthConfig::OAuth2(oauth) = &destination.auth
                && let Err(problem) = check_token(destination, oauth, &tls).await
            {
                problems.push(format!("OAuth token endpoint: {problem}"));
            }
        }
    }
    DestinationCheck {
        id: destination.id,
        label: label(destination),
        problems,
    }
}

fn label(destination: &DestinationConfig) -> String {
    if destination.name == destination.id.to_string() {
        destination.url.to_string()
    } else {
        destination.name.clone()
    }
}

/// Reaches the token endpoint (when it is elsewhere than the url), then fetches a token as
/// the sender does; the token itself is dropped unseen.
async fn check_token(
    destination: &DestinationConfig,
    oauth: &OAuthConfig,
    tls: &Arc<rustls::ClientConfig>,
) -> Result<(), String> {
    let endpoint = |url: &Url| {
        (
            url.host_str().map(str::to_owned),
            url.port_or_known_default(),
        )
    };
    if endpoint(&oauth.token_url) != endpoint(&destination.url) {
        reach(&oauth.token_url, tls, destination.timeout).await?;
    }
    let client = crate::sender::http_client(destination).map_err(|e| e.to_string())?;
    let metrics = crate::metrics::Metrics::register(&prometheus::Registry::new())
        .map_err(|e| format!("cannot set up the token client's counters: {e}"))?
        .destination(destination.id, destination.max_backlog_age);
    let tokens = OAuthTokenSource::new(
        oauth.clone(),
        client,
        destination.timeout,
        metrics.oauth_token_ok,
        metrics.oauth_token_error,
    );
    tokens
        .token()
        .await
        .map(drop)
        .map_err(|e| explain_token_error(&e))
}

/// A token failure with what to check. Never the secret: `TokenError` holds none.
fn explain_token_error(error: &TokenError) -> String {
    match error {
        TokenError::Status(400 | 401 | 403) => format!(
            "{error}: it refused our client credentials; check `client_id` and the secret in \
             `client_secret_env` / `client_secret_file`"
        ),
        TokenError::Status(404) => format!("{error}: check `token_url`"),
        TokenError::Request(_) => {
            format!("{error}: check `token_url` and that this machine can reach it")
        }
        _ => format!(
            "{error}: the endpoint must answer 200 with a JSON bearer token (`access_token`, \
             `token_type: bearer`)"
        ),
    }
}

/// Resolves the url's host, connects to its port and, for https, completes a TLS handshake,
/// then closes the connection: no request is sent.
async fn reach(
    url: &Url,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<(), String> {
    let (host, name) = host_and_server_name(url)?;
    let port = url.port_or_known_default().unwrap_or(443);
    let at = format!("{}:{port}", url.host_str().unwrap_or(&host));
    let addresses = match tokio::time::timeout(
        timeout,
        tokio::net::lookup_host((host.as_str(), port)),
    )
    .await
    {
        Err(_) => {
            return Err(format!(
                "`{host}`: no DNS answer within the destination's timeout_ms ({} ms): check this machine's DNS",
                timeout.as_millis()
            ));
        }
        Ok(Err(error)) => return Err(format!("`{host}`: {DNS_FAILURE} ({error})")),
        Ok(Ok(addresses)) => addresses.collect::<Vec<_>>(),
    };
    let stream = connect(&addresses, timeout).await.map_err(|error| {
        let words = explain_connect_error(&error).unwrap_or_else(|| error.to_string());
        format!("{at}: {words}")
    })?;
    if url.scheme() != "https" {
        // `dangerous_allow_http`: nothing to verify.
        return Ok(());
    }
    let connector = tokio_rustls::TlsConnector::from(tls.clone());
    match tokio::time::timeout(timeout, connector.connect(name, stream)).await {
        Err(_) => Err(format!(
            "{at}: the TLS handshake got no answer within the destination's timeout_ms ({} ms): \
             the port may not serve TLS",
            timeout.as_millis()
        )),
        Ok(Err(error)) => {
            let words = explain_tls_error(&error)
                .unwrap_or_else(|| format!("the TLS handshake failed: {error}"));
            Err(format!("{at}: {words}"))
        }
        Ok(Ok(mut stream)) => {
            // close_notify; the partner may hang up first, which is no problem.
            let _ = stream.shutdown().await;
            Ok(())
        }
    }
}

/// Connects to the first address that accepts, within `timeout` each.
async fn connect(
    addresses: &[std::net::SocketAddr],
    timeout: Duration,
) -> Result<TcpStream, std::io::Error> {
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the host name resolves to no address",
    );
    for address in addresses {
        match tokio::time::timeout(timeout, TcpStream::connect(address)).await {
            Ok(Ok(stream)) => return Ok(stream),
            Ok(Err(error)) => last = error,
            Err(_) => last = std::io::Error::from(std::io::ErrorKind::TimedOut),
        }
    }
    Err(last)
}

/// The host to resolve and the name the certificate must hold (a DNS name or an address).
fn host_and_server_name(url: &Url) -> Result<(String, ServerName<'static>), String> {
    let host = url
        .host_str()
        .ok_or_else(|| format!("`{url}` has no host name"))?
        // An IPv6 address is written in brackets in a url.
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_owned();
    let name = ServerName::try_from(host.clone())
        .map_err(|e| format!("`{host}` is not a valid host name: {e}"))?;
    Ok((host, name))
}
