//! Optional TLS on the ingest port (`--ingest-tls-cert` / `--ingest-tls-key`, PEM files):
//! rustls with ring, TLS 1.2 and 1.3, HTTP/1.1. The certificate and key files are polled like
//! the config: a renewed pair (cert-manager rewriting a Secret) is used for the next handshake,
//! and a pair that cannot be used is refused with a WARN while the running one stays in force.

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use telemetry::watch::Files;
use tokio_util::sync::CancellationToken;

/// A certificate and key that cannot be served.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct CertificateError {
    file: String,
    problem: String,
}

/// Where the ingest certificate and its key are read from.
#[derive(Debug, Clone)]
pub struct CertificateFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertificateFiles {
    /// Reads and checks the pair: the certificate chain (leaf first), a private key (PKCS#8,
    /// PKCS#1 or SEC1) of a type ring signs with, and that the key belongs to the leaf. What
    /// was read of both files is recorded in `read`, the snapshot a reload is watched from.
    pub fn load(&self, read: &mut Files) -> Result<Arc<CertifiedKey>, CertificateError> {
        let error = |path: &Path, problem: String| CertificateError {
            file: path.display().to_string(),
            problem,
        };
        let cert_pem = read.read(&self.cert).map_err(|e| {
            error(
                &self.cert,
                format!("cannot read the ingest TLS certificate: {e}"),
            )
        })?;
        let chain = CertificateDer::pem_slice_iter(&cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| error(&self.cert, format!("not PEM certificates: {e}")))?;
        if chain.is_empty() {
            return Err(error(
                &self.cert,
                "no `BEGIN CERTIFICATE` block: give the server certificate (then its intermediates) in PEM".to_owned(),
            ));
        }
        let key_pem = read
            .read(&self.key)
            .map_err(|e| error(&self.key, format!("cannot read the ingest TLS key: {e}")))?;
        // The key's bytes never reach a message: only what kind of problem it has.
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| {
            error(
                &self.key,
                "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".to_owned(),
            )
        })?;
        let provider = rustls::crypto::ring::default_provider();
        let certified = CertifiedKey::from_der(chain, key, &provider).map_err(|e| {
            error(
                &self.key,
                format!(
                    "cannot serve this key with the certificate {}: {e}",
                    self.cert.display()
                ),
            )
        })?;
        Ok(Arc::new(certified))
    }
}

/// The certificate every handshake presents, replaced while the service runs.
struct CurrentCertificate(RwLock<Arc<CertifiedKey>>);

impl std::fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCertificate")
    }
}

impl std::fmt::Debug for IngestTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngestTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ResolvesServerCert for CurrentCertificate {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.0
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// TLS for the ingest port: the acceptor, and what keeps its certificate current. `Debug`
/// prints the files only (never the key).
#[derive(Clone)]
pub struct IngestTls {
    files: CertificateFiles,
    /// Both files as the running pair was read from them.
    loaded: Files,
    current: Arc<CurrentCertificate>,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl IngestTls {
    /// Loads the pair (an error stops start-up) and builds the server config.
    pub fn load(files: CertificateFiles) -> Result<Self, CertificateError> {
        let mut loaded = Files::default();
        let certified = files.load(&mut loaded)?;
        let current = Arc::new(CurrentCertificate(RwLock::new(certified)));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(rustls::ALL_VERSIONS)
            .map_err(|e| CertificateError {
                file: files.cert.display().to_string(),
                problem: format!("cannot build the TLS config: {e}"),
            })?
            .with_no_client_auth()
            .with_cert_resolver(current.clone());
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Self {
            files,
            loaded,
            current,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }

    pub fn acceptor(&self) -> &tokio_rustls::TlsAcceptor {
        &self.acceptor
    }

    /// Reloads the pair whenever the certificate or the key file changes. Until `stop`.
    pub async fn watch(self, stop: CancellationToken) {
        let mut current = self.loaded.clone();
        while let Some(seen) = current.changed(&stop).await {
            // File reads, off the async threads.
            let files = self.files.clone();
            let loaded = tokio::task::spawn_blocking(move || {
                let mut read = Files::default();
                (files.load(&mut read), read)
            })
            .await;
            let Ok((loaded, read)) = loaded else {
                tracing::warn!(file = %self.files.cert.display(), "The ingest TLS certificate could not be reloaded (its reading task failed); the running one stays in force.");
                current = seen;
                continue;
            };
            match loaded {
                Ok(certified) => {
                    tracing::info!(file = %self.files.cert.display(), "Ingest TLS certificate reloaded.");
                    *self
                        .current
                        .0
                        .write()
                        .unwrap_or_else(PoisonError::into_inner) = certified;
                    current = read;
                }
                Err(error) => {
                    tracing::warn!(%error, "The changed ingest TLS certificate cannot be used and was refused; the running one stays in force.");
                    current = seen;
                }
            }
        }
    }
}
