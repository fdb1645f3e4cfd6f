//! What can go wrong when a webhook is configured and bound.

use std::fmt;

use keyvault_invalidator_core::{SourceError, SourceErrorKind};

/// A webhook that could not be set up: a configuration mistake, an unreadable certificate, an
/// address that cannot be bound.
///
/// Never holds a shared secret or a token: messages name the setting that was wrong, not its
/// value.
#[derive(Debug, thiserror::Error)]
#[error("{kind}: {message}")]
pub struct WebhookError {
    kind: WebhookErrorKind,
    message: String,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The classes of [`WebhookError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum WebhookErrorKind {
    /// The configuration cannot work (no authentication, plain HTTP on a public address, a
    /// malformed setting). Fix the configuration.
    InvalidConfig,
    /// The certificate or key file could not be read or used.
    Tls,
    /// The listen address could not be bound (in use, not permitted). May clear up when the
    /// other listener goes away.
    Bind,
}

impl fmt::Display for WebhookErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WebhookErrorKind::InvalidConfig => "invalid webhook configuration",
            WebhookErrorKind::Tls => "webhook TLS setup failed",
            WebhookErrorKind::Bind => "webhook could not listen",
        })
    }
}

impl WebhookError {
    pub(crate) fn new(kind: WebhookErrorKind, message: impl Into<String>) -> Self {
        WebhookError {
            kind,
            message: message.into(),
            source: None,
        }
    }

    pub(crate) fn invalid_config(message: impl Into<String>) -> Self {
        Self::new(WebhookErrorKind::InvalidConfig, message)
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> WebhookErrorKind {
        self.kind
    }

    /// Whether trying again later may succeed: only a [`Bind`](WebhookErrorKind::Bind) failure
    /// (the address may be freed); a configuration or certificate mistake stays.
    pub fn is_retryable(&self) -> bool {
        self.kind == WebhookErrorKind::Bind
    }
}

impl From<WebhookError> for SourceError {
    fn from(error: WebhookError) -> Self {
        let kind = if error.is_retryable() {
            SourceErrorKind::Transient
        } else {
            SourceErrorKind::Fatal
        };
        SourceError::new(kind, error.to_string()).with_source(error)
    }
}
