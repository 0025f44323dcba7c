//! HMAC request signing: the signature of the exact body bytes in the destination's header
//! and, during a key rotation, a second one with the previous key in a header of its own.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderName, HeaderValue};

use crate::config::{HmacAlgorithm, HmacConfig};

/// Standard Base64 (with padding) of HMAC(key, message).
pub fn sign(algorithm: HmacAlgorithm, key: &[u8], message: &[u8]) -> String {
    fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> String {
        let mut mac = <M as hmac::digest::KeyInit>::new_from_slice(key)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(message);
        STANDARD.encode(mac.finalize().into_bytes())
    }
    match algorithm {
        HmacAlgorithm::Md5 => mac::<Hmac<md5::Md5>>(key, message),
        HmacAlgorithm::Sha1 => mac::<Hmac<sha1::Sha1>>(key, message),
        HmacAlgorithm::Sha256 => mac::<Hmac<sha2::Sha256>>(key, message),
    }
}

/// Signs request bodies for one destination: the signature of the exact body bytes (the
/// uncompressed JSON) in the configured header, and during a key rotation a second signature
/// with the previous key in its own header, so the partner can switch at its own pace.
#[derive(Debug)]
pub struct HmacSigner {
    config: HmacConfig,
    header: HeaderName,
    previous_header: Option<HeaderName>,
}

impl HmacSigner {
    pub fn new(config: HmacConfig) -> Self {
        // Header names were validated with the config.
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .unwrap_or(HeaderName::from_static("x-signature"));
        let previous_header = config.previous.as_ref().map(|(_, name)| {
            HeaderName::from_bytes(name.as_bytes())
                .unwrap_or(HeaderName::from_static("x-signature-previous"))
        });
        Self {
            config,
            header,
            previous_header,
        }
    }

    /// The signature headers for `body`.
    pub fn headers(&self, body: &[u8]) -> impl Iterator<Item = (HeaderName, HeaderValue)> + '_ {
        let value = |key: &str| {
            let signature = sign(self.config.algorithm, key.as_bytes(), body);
            // Base64 is always a valid header value.
            HeaderValue::from_str(&signature).unwrap_or(HeaderValue::from_static(""))
        };
        let current = (self.header.clone(), value(self.config.key.expose()));
        let previous = self
            .config
            .previous
            .as_ref()
            .zip(self.previous_header.as_ref())
            .map(|((key, _), header)| (header.clone(), value(key.expose())));
        std::iter::once(current).chain(previous)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_known_answer_vector() {
        // docs/PARTNER-CONTRACT.md, "Signed requests (HMAC)": the reference's own example.
        assert_eq!(
            sign(
                HmacAlgorithm::Sha1,
                b"sample_partner_private_key",
                b"POST message content"
            ),
            "+wFdR/afZNoVqtGl8/e1KJ4ykPU="
        );
    }

    #[test]
    fn rfc_2104_and_4231_vectors() {
        // RFC 2104 (MD5) test case 2, RFC 2202 (SHA-1) test case 2, RFC 4231 (SHA-256) test
        // case 2: key "Jefe", data "what do ya want for nothing?" — as Base64.
        let (key, data) = (b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            sign(HmacAlgorithm::Md5, key, data),
            "dQx4PmqwtQPqqG4xCl23OA==" /* 750c783e…a5db738 */
        );
        assert_eq!(
            sign(HmacAlgorithm::Sha1, key, data),
            "7/zfauXrL6LSdBbV8YTfnCWafHk="
        );
        assert_eq!(
            sign(HmacAlgorithm::Sha256, key, data),
            "W9zBRr9gdU5qBCQmCJV1x1oAPwidJzmDnexYuWTsOEM="
        );
    }
}
