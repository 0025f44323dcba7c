//! What a destination's HTTPS connections trust: the system roots plus the destination's
//! `ca_file`, verified by rustls itself (no setting turns verification off).
//!
//! The sender's batches go through hyper's client with the rustls config of
//! [`handshake_config`]: the certificates of [`ca_file_certificates`] plus the system roots,
//! the ring provider, TLS 1.2 and 1.3, and the ALPN offer `h2`, `http/1.1`. `check-config
//! --connect` must send nothing, so it runs the handshake alone with the same config: a verdict
//! of the check is the verdict of the sender. (OAuth token requests go through reqwest 0.12 with
//! `rustls-tls-native-roots`, given the same certificates: the same trust, versions and offer.)

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;

use crate::config::DestinationConfig;
use crate::sender::SenderBuildError;

/// The certificates of the destination's `ca_file` (PEM; none without one), trusted besides
/// the system roots.
pub fn ca_file_certificates(
    config: &DestinationConfig,
) -> Result<Vec<CertificateDer<'static>>, SenderBuildError> {
    let Some(path) = &config.ca_file else {
        return Ok(Vec::new());
    };
    let ca_error = |reason: String| SenderBuildError::CaFile {
        id: config.id,
        path: path.display().to_string(),
        reason,
    };
    let pem = config
        .ca_pem
        .as_deref()
        .ok_or_else(|| ca_error("not read with the config".to_owned()))?;
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(format!("not PEM certificates: {e}")))
}

/// The rustls client config of a handshake with the destination, trusting what the sender's
/// HTTPS client trusts (see the module comment).
pub fn handshake_config(
    config: &DestinationConfig,
) -> Result<rustls::ClientConfig, SenderBuildError> {
    let mut roots = rustls::RootCertStore::empty();
    for certificate in ca_file_certificates(config)? {
        roots
            .add(certificate)
            .map_err(|e| SenderBuildError::CaFile {
                id: config.id,
                path: config
                    .ca_file
                    .as_ref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                reason: format!("a certificate rustls cannot use as a trust root: {e}"),
            })?;
    }
    // As reqwest does: system certificates that do not parse are skipped (stores often hold
    // ancient ones).
    let (_added, _skipped) =
        roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(rustls::ALL_VERSIONS)
        .map_err(|e| SenderBuildError::Tls(config.id, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(tls)
}
