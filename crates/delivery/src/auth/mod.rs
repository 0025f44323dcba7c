//! How a destination knows a request is ours: an HMAC signature of the body, or an OAuth 2.0
//! bearer token (client credentials). docs/PARTNER-CONTRACT.md, "Signed requests (HMAC)" and
//! "OAuth 2.0 client credentials".

mod hmac;
mod oauth;

pub use self::hmac::{HmacSigner, sign};
pub use self::oauth::{OAuthTokenSource, TokenError};

/// A destination's authentication, built from its validated config.
#[derive(Debug)]
pub enum Auth {
    None,
    Hmac(HmacSigner),
    OAuth2(OAuthTokenSource),
}
