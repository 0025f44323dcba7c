//! Each failure a partner connection meets, in plain words: rustls errors built as rustls
//! reports them, then the same failures from real connections (the sender's partner client, as
//! the sender makes them) to receivers presenting each kind of bad certificate.

use std::sync::Arc;

use rustls::pki_types::{ServerName, UnixTime};
use rustls::{CertificateError, OtherError};
use testkit::receiver::{Receiver, Tls};

use super::{explain_connect_error, explain_tls_error};

fn certificate(error: CertificateError) -> rustls::Error {
    rustls::Error::InvalidCertificate(error)
}

fn explained(error: rustls::Error) -> String {
    explain_tls_error(&error).unwrap_or_else(|| panic!("no explanation for {error:?}"))
}

#[test]
fn an_expired_certificate_says_when_it_expired() {
    // 2021-01-01T00:00:00Z, checked 2026-03-01T12:00:00Z.
    let words = explained(certificate(CertificateError::ExpiredContext {
        time: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_772_366_400)),
        not_after: UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_609_459_200)),
    }));
    assert!(
        words.contains("expired at 2021-01-01T00:00:00Z (checked at 2026-03-01T12:00:00Z)")
            && words.contains("must renew"),
        "{words}"
    );
    assert!(explained(certificate(CertificateError::Expired)).contains("has expired"));
}

#[test]
fn a_name_mismatch_names_the_name_asked_and_the_names_in_the_certificate() {
    let words = explained(certificate(CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("127.0.0.1").unwrap(),
        // As webpki lists them.
        presented: vec![
            "DnsName(\"partner.example.com\")".to_owned(),
            "DnsName(\"*.partner.example.com\")".to_owned(),
            "IpAddress(10.0.0.1)".to_owned(),
        ],
    }));
    assert!(
        words.contains(
            "we asked for `127.0.0.1`, the certificate is for `partner.example.com`, `*.partner.example.com`, `10.0.0.1`"
        ),
        "{words}"
    );
    let words = explained(certificate(CertificateError::NotValidForNameContext {
        expected: ServerName::try_from("partner.example.com").unwrap(),
        presented: Vec::new(),
    }));
    assert!(words.contains("no host name at all"), "{words}");
}

#[test]
fn an_unknown_issuer_says_to_set_ca_file_to_the_issuing_ca() {
    let words = explained(certificate(CertificateError::UnknownIssuer));
    assert!(
        words.contains(
            "set the destination's `ca_file` to the PEM certificate of the CA that issued"
        ),
        "{words}"
    );
}

#[test]
fn a_ca_used_as_the_server_certificate_says_what_it_is_and_how_to_issue_a_server_certificate() {
    // How rustls passes webpki's error on: `Other(OtherError(CaUsedAsEndEntity))`.
    let error = certificate(CertificateError::Other(OtherError(Arc::new(
        webpki::Error::CaUsedAsEndEntity,
    ))));
    assert!(error.to_string().contains("CaUsedAsEndEntity"), "{error}");
    let words = explained(error);
    for expected in [
        "presents a CA certificate (basicConstraints CA:TRUE) as its own server certificate",
        "-addext basicConstraints=critical,CA:TRUE",
        "-addext subjectAltName=DNS:HOST -addext basicConstraints=CA:FALSE",
        "keep ca.pem as `ca_file`",
    ] {
        assert!(words.contains(expected), "missing `{expected}` in: {words}");
    }
}

#[test]
fn a_rustls_error_inside_an_io_error_is_found_as_tokio_rustls_reports_it() {
    let io = std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        certificate(CertificateError::UnknownIssuer),
    );
    assert!(explain_tls_error(&io).is_some_and(|w| w.contains("`ca_file`")));
    // Under another error, as a source.
    let wrapped = anyhow::Error::new(io).context("TLS handshake");
    assert!(explain_tls_error(wrapped.as_ref()).is_some());
}

#[test]
fn a_server_not_speaking_tls_and_a_refused_handshake_are_explained() {
    let corrupt = rustls::Error::InvalidMessage(rustls::InvalidMessage::InvalidContentType);
    assert!(explained(corrupt).contains("does not speak TLS"));
    let alert = rustls::Error::AlertReceived(rustls::AlertDescription::HandshakeFailure);
    assert!(explained(alert).contains("client certificate"));
}

#[test]
fn what_is_not_a_tls_failure_gets_no_tls_words() {
    let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    assert_eq!(explain_tls_error(&refused), None);
    assert_eq!(
        explain_tls_error(&rustls::Error::General("whatever".into())),
        None
    );
}

#[test]
fn connection_failures_are_explained_with_what_to_check() {
    for (kind, expected) in [
        (std::io::ErrorKind::ConnectionRefused, "connection refused"),
        (std::io::ErrorKind::TimedOut, "no answer within"),
        (std::io::ErrorKind::HostUnreachable, "unreachable"),
    ] {
        let words = explain_connect_error(&std::io::Error::from(kind))
            .unwrap_or_else(|| panic!("{kind:?} not explained"));
        assert!(words.contains(expected), "{kind:?}: {words}");
    }
    assert_eq!(
        explain_connect_error(&std::io::Error::other("something else")),
        None
    );
}

/// The error of a real request, made with the sender's partner client trusting `receiver`'s
/// CA; it must be classed a TLS failure.
async fn request_error(receiver: &Receiver) -> crate::sender::RequestError {
    let destination = crate::sender::one_destination(&format!(
        "url: \"{}\", ca_file: \"{}\"",
        receiver.url("/aam"),
        receiver.ca_file().display()
    ));
    let (error, class) = crate::sender::bare_post_error(&destination).await;
    assert_eq!(class, model::ErrorClass::Tls, "{error:?}");
    error
}

#[tokio::test]
async fn the_sender_s_own_tls_failures_are_explained_through_its_client_s_error_chain() {
    for (tls, expected) in [
        (Tls::Expired, "expired at 2021-01-01T00:00:00Z"),
        (
            Tls::OtherName("partner.example.com".to_owned()),
            "we asked for `127.0.0.1`, the certificate is for `partner.example.com`",
        ),
        (Tls::SelfSigned, "set the destination's `ca_file`"),
        (
            Tls::CaAsServer,
            "presents a CA certificate (basicConstraints CA:TRUE)",
        ),
    ] {
        let receiver = Receiver::start_with(tls.clone()).await;
        let error = request_error(&receiver).await;
        let words = explain_tls_error(&error)
            .unwrap_or_else(|| panic!("{tls:?}: not explained: {error:?}"));
        assert!(words.contains(expected), "{tls:?}: {words}");
        assert!(receiver.requests().is_empty());
    }
}
