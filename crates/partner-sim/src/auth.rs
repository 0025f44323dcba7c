//! Checking what a partner checks: the HMAC signature of the body, and OAuth 2.0 bearer
//! tokens this simulator issued itself (client-credentials token endpoint).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};

use crate::config::Algorithm;
use crate::contract::Violation;

/// Base64 of HMAC(key, message): what a correct signature header carries.
pub fn signature(algorithm: Algorithm, key: &[u8], message: &[u8]) -> String {
    fn mac<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8]) -> String {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return String::new();
        };
        mac.update(message);
        STANDARD.encode(mac.finalize().into_bytes())
    }
    match algorithm {
        Algorithm::Md5 => mac::<Hmac<md5::Md5>>(key, message),
        Algorithm::Sha1 => mac::<Hmac<sha1::Sha1>>(key, message),
        Algorithm::Sha256 => mac::<Hmac<sha2::Sha256>>(key, message),
    }
}

/// Whether `given` is the signature of `message` (compared in constant time by the MAC).
pub fn verify(algorithm: Algorithm, key: &[u8], message: &[u8], given: &str) -> bool {
    fn check<M: Mac + hmac::digest::KeyInit>(key: &[u8], message: &[u8], given: &[u8]) -> bool {
        let Ok(mut mac) = <M as hmac::digest::KeyInit>::new_from_slice(key) else {
            return false;
        };
        mac.update(message);
        mac.verify_slice(given).is_ok()
    }
    let Ok(given) = STANDARD.decode(given.trim()) else {
        return false;
    };
    match algorithm {
        Algorithm::Md5 => check::<Hmac<md5::Md5>>(key, message, &given),
        Algorithm::Sha1 => check::<Hmac<sha1::Sha1>>(key, message, &given),
        Algorithm::Sha256 => check::<Hmac<sha2::Sha256>>(key, message, &given),
    }
}

/// Tokens issued by one endpoint's token path, with their expiry.
#[derive(Debug, Default)]
pub struct TokenIssuer {
    issued: Mutex<HashMap<String, Instant>>,
}

impl TokenIssuer {
    pub fn issue(&self, ttl: Duration) -> String {
        let token = format!("{:032x}", fastrand::u128(..));
        self.issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token.clone(), Instant::now() + ttl);
        token
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), Violation> {
        let Some(token) = authorization.and_then(|v| v.strip_prefix("Bearer ")) else {
            return Err(Violation::MissingBearer);
        };
        let issued = self
            .issued
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match issued.get(token.trim()) {
            None => Err(Violation::UnknownBearer),
            Some(expires) if Instant::now() >= *expires => Err(Violation::ExpiredBearer),
            Some(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_contract_known_answer_vector() {
        let expected = "+wFdR/afZNoVqtGl8/e1KJ4ykPU=";
        assert_eq!(
            signature(
                Algorithm::Sha1,
                b"sample_partner_private_key",
                b"POST message content"
            ),
            expected
        );
        assert!(verify(
            Algorithm::Sha1,
            b"sample_partner_private_key",
            b"POST message content",
            expected
        ));
        assert!(!verify(
            Algorithm::Sha1,
            b"sample_partner_private_key",
            b"POST message content!",
            expected
        ));
        assert!(!verify(
            Algorithm::Sha256,
            b"sample_partner_private_key",
            b"POST message content",
            expected
        ));
        assert!(!verify(Algorithm::Sha1, b"k", b"m", "not base64 ***"));
    }

    #[test]
    fn bearer_tokens_must_be_issued_and_fresh() {
        let issuer = TokenIssuer::default();
        let fresh = issuer.issue(Duration::from_secs(60));
        let stale = issuer.issue(Duration::ZERO);
        assert_eq!(issuer.check(Some(&format!("Bearer {fresh}"))), Ok(()));
        assert_eq!(
            issuer.check(Some(&format!("Bearer {stale}"))),
            Err(Violation::ExpiredBearer)
        );
        assert_eq!(
            issuer.check(Some("Bearer made-up")),
            Err(Violation::UnknownBearer)
        );
        assert_eq!(
            issuer.check(Some(&format!("Basic {fresh}"))),
            Err(Violation::MissingBearer)
        );
        assert_eq!(issuer.check(None), Err(Violation::MissingBearer));
    }
}
