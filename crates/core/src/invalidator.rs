//! What an event means for the cache: the [`Invalidator`] trait and its outcome.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::cache::CacheError;
use crate::event::{Event, KeyVaultEventType};

/// Decides what an event means for the cache and carries it out.
///
/// Implementations must be idempotent: the job delivers at least once, so the same event can
/// arrive several times.
#[async_trait]
pub trait Invalidator: Send + Sync {
    /// Acts on one event.
    async fn handle(&self, event: &Event) -> Result<Outcome, InvalidationError>;
}

#[async_trait]
impl<I: Invalidator + ?Sized> Invalidator for std::sync::Arc<I> {
    async fn handle(&self, event: &Event) -> Result<Outcome, InvalidationError> {
        (**self).handle(event).await
    }
}

#[async_trait]
impl<I: Invalidator + ?Sized> Invalidator for Box<I> {
    async fn handle(&self, event: &Event) -> Result<Outcome, InvalidationError> {
        (**self).handle(event).await
    }
}

/// What an [`Invalidator`] did with an event.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// These cache keys were invalidated.
    Invalidated {
        /// The cache keys, after name mapping.
        keys: Vec<String>,
    },
    /// Nothing to do, and why.
    Ignored(IgnoreReason),
}

/// Why an event was ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum IgnoreReason {
    /// Not a Key Vault event.
    NotKeyVault,
    /// An Event Grid subscription validation handshake (for webhooks, not queues).
    SubscriptionValidation,
    /// Event Grid says the subscription was deleted.
    SubscriptionDeleted,
    /// A Key Vault event type this invalidator is not configured for.
    EventTypeNotHandled(KeyVaultEventType),
    /// From a vault not on the allow-list (`None`: the event named no vault).
    VaultNotAllowed(Option<String>),
}

impl fmt::Display for IgnoreReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IgnoreReason::NotKeyVault => f.write_str("not a Key Vault event"),
            IgnoreReason::SubscriptionValidation => {
                f.write_str("Event Grid subscription validation (answered by webhooks, not queues)")
            }
            IgnoreReason::SubscriptionDeleted => f.write_str("Event Grid subscription deleted"),
            IgnoreReason::EventTypeNotHandled(t) => write!(f, "event type {t} is not handled"),
            IgnoreReason::VaultNotAllowed(Some(vault)) => {
                write!(f, "vault `{vault}` is not on the allow-list")
            }
            IgnoreReason::VaultNotAllowed(None) => {
                f.write_str("the event names no vault and an allow-list is set")
            }
        }
    }
}

/// Why an [`Invalidator`] failed.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
#[non_exhaustive]
pub struct InvalidationError {
    /// What happened.
    pub message: String,
    /// Whether retrying later can help (the job abandons and retries) or not (it dead-letters).
    pub retryable: bool,
    /// Wait at least this long before the retry: the backend's `Retry-After`, when it gave one.
    /// The job's pause before it abandons is the longer of this (up to its backoff's `max`)
    /// and its backoff.
    pub retry_after: Option<Duration>,
    /// The underlying error.
    #[source]
    pub source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl InvalidationError {
    /// A failure that may clear up.
    pub fn retryable(message: impl Into<String>) -> Self {
        InvalidationError {
            message: message.into(),
            retryable: true,
            retry_after: None,
            source: None,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        InvalidationError {
            message: message.into(),
            retryable: false,
            retry_after: None,
            source: None,
        }
    }
}

impl From<CacheError> for InvalidationError {
    fn from(error: CacheError) -> Self {
        InvalidationError {
            message: error.to_string(),
            retryable: error.retryable,
            retry_after: error.retry_after,
            source: Some(Box::new(error)),
        }
    }
}
