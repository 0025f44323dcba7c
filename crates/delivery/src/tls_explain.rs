//! A failed connection to a partner in plain words, with the fix: what rustls, webpki and the
//! socket report (`invalid peer certificate: Other(OtherError(CaUsedAsEndEntity))`) is exact
//! but tells an operator neither what is wrong nor what to change.
//!
//! Used by `check-config --connect`, by the sender's WARN line on a TLS failure and by
//! anything else that reports one. Cheap: it walks the error's source chain and formats a
//! string, nothing more.

use std::error::Error as StdError;
use std::io::ErrorKind;

use rustls::CertificateError;
use rustls::pki_types::UnixTime;

/// What a TLS failure in `error`'s source chain (a `rustls::Error`, also inside an
/// `std::io::Error`, as hyper → rustls, reqwest and tokio-rustls report it) means and how to
/// fix it, in one sentence. `None` when the chain holds no TLS failure this knows.
pub fn explain_tls_error(error: &(dyn StdError + 'static)) -> Option<String> {
    chain(error).find_map(rustls_error).and_then(explain_rustls)
}

/// What a connection failure in `error`'s source chain (refused, timed out, unreachable, a
/// host name that does not resolve) means and how to fix it. `None` for anything else.
pub fn explain_connect_error(error: &(dyn StdError + 'static)) -> Option<String> {
    for e in chain(error) {
        if let Some(io) = e.downcast_ref::<std::io::Error>()
            && let Some(explained) = explain_io(io.kind())
        {
            return Some(explained);
        }
        // hyper-util names a failed resolution in its connect error's text only.
        if e.to_string().starts_with("dns error") {
            return Some(DNS_FAILURE.to_owned());
        }
    }
    None
}

/// The words for a host name that does not resolve.
pub const DNS_FAILURE: &str = "the url's host name does not resolve (DNS): check it for typos, \
     and that this machine's DNS can resolve the partner's names";

fn explain_io(kind: ErrorKind) -> Option<String> {
    let words = match kind {
        ErrorKind::ConnectionRefused => {
            "connection refused: nothing listens on that host and port; check the url's port, \
             and that the partner's server is up"
        }
        ErrorKind::TimedOut => {
            "no answer within the destination's timeout_ms: the host is down, or a firewall \
             drops the packets; check that this machine may reach it (egress rules, the \
             partner's allow-list of our addresses)"
        }
        ErrorKind::HostUnreachable | ErrorKind::NetworkUnreachable => {
            "the host is unreachable from this machine (no route): check the url's host and \
             this machine's network"
        }
        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted => {
            "the partner's side closed the connection at once: a firewall or proxy may refuse \
             us, or the port serves something else"
        }
        _ => return None,
    };
    Some(words.to_owned())
}

/// `error` and its causes. An `io::Error`'s `source()` skips the error it wraps (the source
/// of that one comes next), and hyper-rustls wraps rustls' error in two: the chain goes into
/// the wrapped error instead.
fn chain<'a>(
    error: &'a (dyn StdError + 'static),
) -> impl Iterator<Item = &'a (dyn StdError + 'static)> {
    std::iter::successors(Some(error), |&e| match e.downcast_ref::<std::io::Error>() {
        Some(io) => match io.get_ref() {
            Some(inner) => Some(inner as &(dyn StdError + 'static)),
            None => e.source(),
        },
        None => e.source(),
    })
}

fn rustls_error<'a>(error: &'a (dyn StdError + 'static)) -> Option<&'a rustls::Error> {
    error.downcast_ref::<rustls::Error>()
}

fn explain_rustls(error: &rustls::Error) -> Option<String> {
    match error {
        rustls::Error::InvalidCertificate(certificate) => explain_certificate(certificate),
        rustls::Error::AlertReceived(alert) => Some(format!(
            "the partner's server ended the TLS handshake (alert {alert:?}): it may require a \
             client certificate (delivery presents none) or a TLS version or cipher suite we do \
             not offer (TLS 1.2 and 1.3); ask the partner what their server requires"
        )),
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => Some(
            "the server at the url's host and port does not speak TLS (a plain HTTP server, or \
             another protocol?): check the url's port; a plain-HTTP test server needs an \
             http:// url and `dangerous_allow_http: true`"
                .to_owned(),
        ),
        rustls::Error::PeerIncompatible(_) => Some(
            "the partner's server and delivery have no TLS version or cipher suite in common \
             (delivery offers TLS 1.2 and 1.3 with current cipher suites): the partner must \
             enable TLS 1.2 or later"
                .to_owned(),
        ),
        rustls::Error::NoCertificatesPresented => Some(
            "the partner's server presented no certificate: it must serve one for the url's \
             host name"
                .to_owned(),
        ),
        _ => None,
    }
}

fn explain_certificate(error: &CertificateError) -> Option<String> {
    let words = match error {
        CertificateError::Expired => {
            "the partner's certificate has expired: the partner must renew it (or, if it is not \
             expired, this machine's clock is wrong)"
                .to_owned()
        }
        CertificateError::ExpiredContext { time, not_after } => format!(
            "the partner's certificate expired at {} (checked at {}): the partner must renew \
             it (or, if that is still ahead, this machine's clock is wrong)",
            rfc3339(*not_after),
            rfc3339(*time)
        ),
        CertificateError::NotValidYet => "the partner's certificate is not valid yet: this \
             machine's clock is behind, or the partner installed it too early"
            .to_owned(),
        CertificateError::NotValidYetContext { time, not_before } => format!(
            "the partner's certificate is valid only from {} (checked at {}): this machine's \
             clock is behind, or the partner installed it too early",
            rfc3339(*not_before),
            rfc3339(*time)
        ),
        CertificateError::NotValidForName => "the partner's certificate is not for the url's \
             host name: use the name the certificate is for in the url, or have the partner \
             add the url's host to the certificate's subjectAltName"
            .to_owned(),
        CertificateError::NotValidForNameContext {
            expected,
            presented,
        } => not_valid_for_name(&expected.to_str(), presented),
        CertificateError::UnknownIssuer => "the partner's certificate is issued by a CA this \
             machine does not trust (neither a system root nor in `ca_file`): set the \
             destination's `ca_file` to the PEM certificate of the CA that issued the partner's \
             certificate (ask the partner for it)"
            .to_owned(),
        CertificateError::BadSignature => "a certificate of the partner's chain is not signed \
             by the key of its issuer: the partner's chain is broken, or `ca_file` holds \
             another CA of the same name"
            .to_owned(),
        CertificateError::Revoked => "the partner's certificate has been revoked: the partner \
             must install a new one"
            .to_owned(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "the partner's certificate is not for TLS servers (its extendedKeyUsage lacks \
             serverAuth): the partner must issue one for serverAuth"
                .to_owned()
        }
        CertificateError::BadEncoding => "the partner's certificate is not valid DER: the \
             partner must fix the certificate its server presents"
            .to_owned(),
        CertificateError::Other(other) => {
            return explain_webpki(other.0.downcast_ref::<webpki::Error>()?);
        }
        _ => return None,
    };
    Some(words)
}

fn not_valid_for_name(expected: &str, presented: &[String]) -> String {
    let names = if presented.is_empty() {
        "no host name at all (it has no subjectAltName)".to_owned()
    } else {
        presented
            .iter()
            .map(|name| format!("`{}`", presented_name(name)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "the partner's certificate is not for the host name in the url: we asked for \
         `{expected}`, the certificate is for {names}; use one of its names in the url, or have \
         the partner add `{expected}` to the certificate's subjectAltName"
    )
}

/// A name as webpki lists it (`DnsName("a.example")`, `IpAddress(10.0.0.1)`), without the
/// kind.
fn presented_name(name: &str) -> &str {
    let dns = name
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"));
    let ip = || {
        name.strip_prefix("IpAddress(")
            .and_then(|n| n.strip_suffix(')'))
    };
    dns.or_else(ip).unwrap_or(name)
}

/// What rustls reports only as `CertificateError::Other`.
fn explain_webpki(error: &webpki::Error) -> Option<String> {
    let words = match error {
        webpki::Error::CaUsedAsEndEntity => {
            "the partner's server presents a CA certificate (basicConstraints CA:TRUE) as its \
             own server certificate, which rustls refuses; typically a self-signed certificate, \
             also given as `ca_file` (`openssl req -x509` marks it CA:TRUE by default). Fix: \
             make a CA (`openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem \
             -days 3650 -subj /CN=partner-ca -addext basicConstraints=critical,CA:TRUE`), issue \
             the server a certificate signed by it (`openssl req -x509 -newkey rsa:2048 -nodes \
             -keyout server.key -out server.pem -days 365 -subj /CN=HOST -CA ca.pem -CAkey \
             ca.key -addext subjectAltName=DNS:HOST -addext basicConstraints=CA:FALSE`, HOST \
             being the url's host; `subjectAltName=IP:ADDRESS` for a url with an IP address), \
             serve server.pem and server.key, and keep ca.pem as `ca_file` (OpenSSL 3)"
        }
        webpki::Error::EndEntityUsedAsCa => {
            "the partner's chain has a server certificate (basicConstraints CA:FALSE) where \
             the issuing CA should be: the certificate that signs the server's must be a CA \
             (basicConstraints CA:TRUE); `ca_file` must be that CA, not a server certificate"
        }
        webpki::Error::UnsupportedCertVersion => {
            "the partner's certificate is X.509 version 1, which rustls refuses: the partner \
             must issue a version 3 certificate (any `-addext` makes openssl write one)"
        }
        _ => return None,
    };
    Some(words.to_owned())
}

/// `time` as RFC 3339 (UTC), or its seconds since the epoch if out of range.
fn rfc3339(time: UnixTime) -> String {
    let seconds = time.as_secs();
    i64::try_from(seconds)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{seconds} s after 1970"))
}

#[cfg(test)]
mod tests;
