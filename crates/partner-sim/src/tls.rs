//! The server's certificate: given as files, or made at start (a CA of its own and a
//! certificate for `localhost` and `127.0.0.1` signed by it; the CA is written out for clients
//! to trust).

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// A fresh CA and server certificate: (CA PEM, certificate PEM, key PEM).
pub fn generate() -> anyhow::Result<(String, String, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "partner-sim CA");
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;
    let key = KeyPair::generate()?;
    let certificate = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
        .signed_by(&key, &ca)?;
    Ok((ca.pem(), certificate.pem(), key.serialize_pem()))
}
