//! The API token every `/v1` request must carry in `X-KVI-Token`.

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq;

use super::TOKEN_ENV;
use crate::error::{AgentError, AgentErrorKind};

/// The shortest token accepted: a guessable token would defeat the point.
pub const MIN_TOKEN_LEN: usize = 16;

/// Where the token comes from, for `check-config` (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenSource {
    /// The value of `KVI_AGENT_TOKEN`.
    Environment,
    /// A file, from `KVI_AGENT_TOKEN=file://PATH` or `server.token_file`.
    File(PathBuf),
    /// Generated at start and printed (`--demo` only).
    Generated,
}

impl fmt::Display for TokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenSource::Environment => write!(f, "the value of {TOKEN_ENV}"),
            TokenSource::File(path) => write!(f, "the file {}", path.display()),
            TokenSource::Generated => f.write_str("generated at start"),
        }
    }
}

/// The API token. `Debug` never shows it; [`matches`](Self::matches) compares in constant time.
#[derive(Clone)]
pub struct ApiToken {
    token: SecretString,
    source: TokenSource,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl ApiToken {
    /// The token from `KVI_AGENT_TOKEN` (read with `env`: a value, or `file://PATH`), else from
    /// `token_file`. Neither is an error.
    pub fn resolve(
        env: impl Fn(&str) -> Option<String>,
        token_file: Option<&Path>,
    ) -> Result<Self, AgentError> {
        match (env(TOKEN_ENV), token_file) {
            (Some(value), _) => match value.strip_prefix("file://") {
                Some(path) => Self::from_file(Path::new(path)),
                None => Self::new(value, TokenSource::Environment),
            },
            (None, Some(path)) => Self::from_file(path),
            (None, None) => Err(AgentError::new(
                AgentErrorKind::Token,
                format!(
                    "no API token: set {TOKEN_ENV} (a value, or file://PATH) or server.token_file"
                ),
            )),
        }
    }

    /// A random token of 32 hex digits, for `--demo`.
    pub fn generate() -> Self {
        let bytes: [u8; 16] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        ApiToken {
            token: SecretString::from(token),
            source: TokenSource::Generated,
        }
    }

    /// `value` as the token, when it is long enough (surrounding white space is dropped).
    pub fn new(value: impl Into<String>, source: TokenSource) -> Result<Self, AgentError> {
        let value = value.into();
        let trimmed = value.trim();
        if trimmed.len() < MIN_TOKEN_LEN || !trimmed.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(AgentError::new(
                AgentErrorKind::Token,
                format!(
                    "the API token from {source} must be at least {MIN_TOKEN_LEN} printable ASCII characters without spaces"
                ),
            ));
        }
        Ok(ApiToken {
            token: SecretString::from(trimmed.to_owned()),
            source,
        })
    }

    fn from_file(path: &Path) -> Result<Self, AgentError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            AgentError::new(
                AgentErrorKind::Token,
                format!("cannot read the API token file {}", path.display()),
            )
            .with_source(e)
        })?;
        Self::new(text, TokenSource::File(path.to_owned()))
    }

    /// Where the token came from.
    pub fn source(&self) -> &TokenSource {
        &self.source
    }

    /// The token, to print in `--demo` or hand to a test client.
    pub fn expose(&self) -> &str {
        self.token.expose_secret()
    }

    /// Whether `candidate` is the token. Constant time in the bytes compared (`subtle`); a
    /// candidate of another length is refused at once, which tells only the length.
    pub fn matches(&self, candidate: &[u8]) -> bool {
        self.token
            .expose_secret()
            .as_bytes()
            .ct_eq(candidate)
            .into()
    }
}
