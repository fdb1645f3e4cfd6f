//! The agent's error: one struct with a kind, the cause kept in the source chain.

use std::error::Error as StdError;
use std::fmt;

/// Why the agent could not start or run.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct AgentError {
    kind: AgentErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn StdError + Send + Sync>>,
}

/// The classes of [`AgentError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AgentErrorKind {
    /// The configuration file or an environment override is invalid (the message names the key).
    Config,
    /// The API token could not be read, or is unusable.
    Token,
    /// The listen address could not be bound.
    Bind,
    /// The secret provider or the transport could not be set up.
    Setup,
}

impl fmt::Display for AgentErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AgentErrorKind::Config => "invalid configuration",
            AgentErrorKind::Token => "unusable API token",
            AgentErrorKind::Bind => "cannot listen",
            AgentErrorKind::Setup => "cannot set up",
        })
    }
}

impl AgentError {
    /// An error of `kind`.
    pub fn new(kind: AgentErrorKind, message: impl Into<String>) -> Self {
        AgentError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps the underlying error.
    pub fn with_source(mut self, source: impl StdError + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// The class of failure.
    pub fn kind(&self) -> AgentErrorKind {
        self.kind
    }

    /// Whether starting again unchanged may succeed: only a bind failure (the port may be
    /// freed); configuration and token errors need a fix first.
    pub fn is_retryable(&self) -> bool {
        matches!(self.kind, AgentErrorKind::Bind)
    }

    pub(crate) fn config(message: impl Into<String>) -> Self {
        Self::new(AgentErrorKind::Config, message)
    }
}
