//! Who may send events: bearer tokens from a tokens file (`--ingest-tokens-file`), one token a
//! line, several valid at once so that a client can move to a new token before the old one is
//! removed. The file is polled like the definitions (a Kubernetes Secret update swaps a
//! symlink) and a valid change applies to the next request; an invalid one is refused with a
//! WARN and the running tokens stay in force.
//!
//! Only SHA-256 digests of the tokens are kept, and a presented token is hashed and compared
//! with every digest in constant time: how long a check takes says nothing about how much of a
//! token was right, and a token is never held where a log line, a `Debug` or an error message
//! could reach it (errors name the line, never its content).

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

use axum::http::HeaderValue;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;
use tokio_util::sync::CancellationToken;

/// Shortest token accepted, in characters: 16 random base64/hex characters are 64+ bits.
pub const MIN_TOKEN_LEN: usize = 16;

/// The valid tokens, as digests. `Debug` prints only how many there are; no `PartialEq`, so
/// that nothing compares them but [`IngestTokens::accepts`].
#[derive(Clone)]
pub struct IngestTokens {
    digests: Vec<[u8; 32]>,
}

impl fmt::Debug for IngestTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IngestTokens({} tokens)", self.digests.len())
    }
}

/// The tokens file and its content as last read. `Debug` prints only the path.
#[derive(Clone)]
pub struct TokensFile {
    pub path: PathBuf,
    content: Vec<u8>,
}

impl fmt::Debug for TokensFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokensFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// A tokens file that cannot be used; every problem at once, none quoting a token.
#[derive(Debug, thiserror::Error)]
pub enum TokensFileError {
    #[error("{path}: cannot read the ingest tokens file: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: invalid ingest tokens file:\n{}", .problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid { path: String, problems: Vec<String> },
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// Characters of an RFC 6750 `b64token`: what an `Authorization: Bearer` header can carry.
fn is_token_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '+' | '/' | '=')
}

impl IngestTokens {
    /// Parses a tokens file: one token a line; blank lines and lines starting with `#` are
    /// ignored; leading and trailing whitespace is dropped. At least one token, each at least
    /// [`MIN_TOKEN_LEN`] characters of `A-Z a-z 0-9 - . _ ~ + / =`.
    pub fn parse(text: &str) -> Result<Self, Vec<String>> {
        let fix = "(make one with e.g. `openssl rand -hex 32`)";
        let mut digests = Vec::new();
        let mut problems = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let token = line.trim();
            if token.is_empty() || token.starts_with('#') {
                continue;
            }
            let length = token.chars().count();
            if token.contains(char::is_whitespace) {
                problems.push(format!(
                    "line {number}: whitespace inside a token: put one token on each line, without spaces"
                ));
            } else if let Some(bad) = token.chars().find(|c| !is_token_char(*c)) {
                let shown = if bad.is_ascii_graphic() {
                    format!("`{bad}`")
                } else {
                    format!("U+{:04X}", u32::from(bad))
                };
                problems.push(format!(
                    "line {number}: the token holds {shown}, which a bearer token cannot carry: use only A-Z a-z 0-9 - . _ ~ + / = {fix}"
                ));
            } else if length < MIN_TOKEN_LEN {
                problems.push(format!(
                    "line {number}: the token is {length} characters long, at least {MIN_TOKEN_LEN} are needed {fix}"
                ));
            } else {
                let digest = digest(token.as_bytes());
                if !digests.contains(&digest) {
                    digests.push(digest);
                }
            }
        }
        if problems.is_empty() && digests.is_empty() {
            problems.push(format!(
                "no token: write one token on a line {fix}; lines starting with # are comments"
            ));
        }
        if problems.is_empty() {
            Ok(Self { digests })
        } else {
            Err(problems)
        }
    }

    /// Reads and parses the tokens file at `path`; also returns the file as read, for
    /// [`watch_tokens`] to see changes from.
    pub fn load(path: &Path) -> Result<(Self, TokensFile), TokensFileError> {
        let content = std::fs::read(path).map_err(|source| TokensFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let tokens = Self::parse_bytes(path, &content)?;
        let file = TokensFile {
            path: path.to_owned(),
            content,
        };
        Ok((tokens, file))
    }

    fn parse_bytes(path: &Path, bytes: &[u8]) -> Result<Self, TokensFileError> {
        let invalid = |problems| TokensFileError::Invalid {
            path: path.display().to_string(),
            problems,
        };
        let text = std::str::from_utf8(bytes).map_err(|_| {
            invalid(vec![
                "not UTF-8 text: write one token on each line".to_owned(),
            ])
        })?;
        Self::parse(text).map_err(invalid)
    }

    /// How many distinct tokens are valid.
    pub fn len(&self) -> usize {
        self.digests.len()
    }

    pub fn is_empty(&self) -> bool {
        self.digests.is_empty()
    }

    /// Whether `token` is one of the valid tokens. Every digest is compared, in constant time.
    pub fn accepts(&self, token: &[u8]) -> bool {
        let presented = digest(token);
        let mut found = subtle::Choice::from(0);
        for digest in &self.digests {
            found |= digest.ct_eq(&presented);
        }
        found.into()
    }
}

/// Why a request was refused: both answer 401, with a different `WWW-Authenticate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header.
    Missing,
    /// A bearer token that is not valid (or a header that cannot hold one).
    Invalid,
}

/// The ingest API's access check: open (no tokens file configured) or the current tokens,
/// replaced while the service runs by [`watch_tokens`].
#[derive(Debug, Clone)]
pub struct IngestAuth {
    tokens: Option<Arc<RwLock<Arc<IngestTokens>>>>,
}

impl IngestAuth {
    /// Every request is accepted.
    pub fn open() -> Self {
        Self { tokens: None }
    }

    /// Requests need one of `tokens`.
    pub fn tokens(tokens: IngestTokens) -> Self {
        Self {
            tokens: Some(Arc::new(RwLock::new(Arc::new(tokens)))),
        }
    }

    pub fn is_open(&self) -> bool {
        self.tokens.is_none()
    }

    /// Checks a request's `Authorization` header.
    pub fn check(&self, authorization: Option<&HeaderValue>) -> Result<(), Refusal> {
        let Some(shared) = &self.tokens else {
            return Ok(());
        };
        let header = authorization.ok_or(Refusal::Missing)?.as_bytes();
        // `Bearer <token>`, the scheme in any case (RFC 9110 §11.1).
        let (scheme, token) = header
            .iter()
            .position(|b| *b == b' ')
            .map(|at| header.split_at(at))
            .ok_or(Refusal::Missing)?;
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(Refusal::Missing);
        }
        let token = token.trim_ascii();
        let tokens = shared
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if tokens.accepts(token) {
            Ok(())
        } else {
            Err(Refusal::Invalid)
        }
    }

    fn replace(&self, new: IngestTokens) {
        if let Some(shared) = &self.tokens {
            *shared.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(new);
        }
    }
}

/// Replaces the tokens of `auth` when the file at `path` changes and the new one is valid;
/// an invalid or empty file is refused with a WARN and the running tokens stay in force.
pub async fn watch_tokens(file: TokensFile, auth: IngestAuth, stop: CancellationToken) {
    let TokensFile {
        path,
        content: mut current,
    } = file;
    while let Some(bytes) = telemetry::watch::file_change(&path, &current, &stop).await {
        match IngestTokens::parse_bytes(&path, &bytes) {
            Ok(tokens) => {
                tracing::info!(file = %path.display(), tokens = tokens.len(), "Ingest tokens reloaded.");
                auth.replace(tokens);
            }
            Err(error) => {
                tracing::warn!(%error, "The changed ingest tokens file is invalid and was refused; the running tokens stay in force.");
            }
        }
        current = bytes;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "0123456789abcdef0123";
    const B: &str = "fedcba9876543210fedc";

    fn header(value: &str) -> HeaderValue {
        HeaderValue::from_str(value).unwrap()
    }

    #[test]
    fn parses_tokens_comments_and_blank_lines() {
        let tokens = IngestTokens::parse(&format!(
            "# ingest clients\n\n  {A}  \n{B}\r\n# old: retired\n{A}\n"
        ))
        .unwrap();
        assert_eq!(tokens.len(), 2);
        assert!(tokens.accepts(A.as_bytes()));
        assert!(tokens.accepts(B.as_bytes()));
        assert!(!tokens.accepts(&A.as_bytes()[..16]));
        assert!(!tokens.accepts(b"# ingest clients"));
        assert!(!tokens.accepts(b""));
    }

    #[test]
    fn reports_every_bad_line_without_quoting_a_token() {
        let text = "short-secret-1\nabcdefghijklmnop qrstuvwxyz\n# fine\nabcdefghijklmnop\"q\n\u{e9}abcdefghijklmnopq\n";
        let problems = IngestTokens::parse(text).unwrap_err();
        assert_eq!(problems.len(), 4, "{problems:#?}");
        assert!(problems[0].starts_with("line 1: the token is 14 characters long, at least 16"));
        assert!(problems[1].starts_with("line 2: whitespace inside a token"));
        assert!(problems[2].starts_with("line 4: the token holds `\"`"));
        assert!(problems[3].starts_with("line 5: the token holds U+00E9"));
        for problem in &problems {
            for secret in ["short-secret", "abcdefghijklmnop", "qrstuvwxyz"] {
                assert!(!problem.contains(secret), "{problem} quotes a token");
            }
        }
    }

    #[test]
    fn an_empty_or_comment_only_file_is_refused() {
        for text in ["", "\n\n", "# only a comment\n   \n"] {
            let problems = IngestTokens::parse(text).unwrap_err();
            assert_eq!(problems.len(), 1);
            assert!(problems[0].starts_with("no token"), "{problems:?}");
        }
    }

    #[test]
    fn a_file_error_names_the_file_and_never_the_token() {
        let path = Path::new("/etc/segment-relay/ingest/tokens");
        let error = IngestTokens::parse_bytes(path, b"tooshort-secret\n").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("/etc/segment-relay/ingest/tokens: invalid ingest tokens file"));
        assert!(text.contains("line 1"));
        assert!(!text.contains("tooshort"));
        let error = IngestTokens::parse_bytes(path, b"\xff\xfe0123456789abcdef\n").unwrap_err();
        assert!(error.to_string().contains("not UTF-8"));
    }

    #[test]
    fn debug_never_prints_a_token() {
        let tokens = IngestTokens::parse(A).unwrap();
        let auth = IngestAuth::tokens(tokens.clone());
        let printed = format!("{tokens:?} {auth:?}");
        assert!(
            !printed.contains(A) && !printed.contains("0123456789"),
            "{printed}"
        );
        assert_eq!(format!("{tokens:?}"), "IngestTokens(1 tokens)");
    }

    #[test]
    fn checks_the_authorization_header() {
        let auth = IngestAuth::tokens(IngestTokens::parse(&format!("{A}\n{B}")).unwrap());
        assert_eq!(auth.check(Some(&header(&format!("Bearer {A}")))), Ok(()));
        assert_eq!(auth.check(Some(&header(&format!("bearer  {B}")))), Ok(()));
        assert_eq!(auth.check(None), Err(Refusal::Missing));
        assert_eq!(auth.check(Some(&header(A))), Err(Refusal::Missing));
        assert_eq!(
            auth.check(Some(&header(&format!("Basic {A}")))),
            Err(Refusal::Missing)
        );
        assert_eq!(
            auth.check(Some(&header(&format!("Bearer {}", &A[..19])))),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            auth.check(Some(&header(&format!("Bearer {A}x")))),
            Err(Refusal::Invalid)
        );
        assert_eq!(auth.check(Some(&header("Bearer "))), Err(Refusal::Invalid));
        assert_eq!(IngestAuth::open().check(None), Ok(()));
    }

    #[test]
    fn replaced_tokens_apply_to_the_next_check() {
        let auth = IngestAuth::tokens(IngestTokens::parse(A).unwrap());
        let copy = auth.clone();
        auth.replace(IngestTokens::parse(B).unwrap());
        assert_eq!(
            copy.check(Some(&header(&format!("Bearer {A}")))),
            Err(Refusal::Invalid)
        );
        assert_eq!(copy.check(Some(&header(&format!("Bearer {B}")))), Ok(()));
    }
}
